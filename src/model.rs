//! Architecture inference: a PyTorch `state_dict` (see [`crate::weights`]) becomes a
//! [`Plan`]. Depth and widths come from tensor names and shapes, so any member of a
//! supported family loads:
//!
//! - CIFAR ResNets, both He et al.'s (option-A shortcuts) and ImageNet-style blocks
//!   (BasicBlock or Bottleneck, projection shortcuts): `conv1 bn1 layerL.i.* linear`.
//!   A block whose shape changes uses `shortcut.{0,1}` when present, else option A.
//! - CIFAR DenseNet-BC: `conv1 denseD.i.{bn1,conv1,bn2,conv2} transT.{bn,conv} bn linear`,
//!   new channels first in each concatenation.
//! - The "DenseNet-Fast" variant in `../shared/data` (`conv0 bn0 blockB.layerL.conv
//!   transT.{conv,bn} fc`): no BN inside layers, new channels last, raw 0..255 input.
//!   It is the DenseNet lowering with other settings, not a separate path.
//!
//! Batch norm that follows a convolution is folded into it; batch norm that precedes
//! one (DenseNet pre-activation) becomes the convolution's [`PreAct`].

use crate::plan::{Buffer, Conv, ExitRule, Gate, Head, Op, Plan, PreAct, Stage, View};
use crate::weights::Weights;
use crate::{Error, Result};

/// Per-channel input normalisation on the 0..1 pixel scale: `x = (p/255 − mean)/std`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Normalize {
    /// Per-channel mean (R, G, B) on the 0..1 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) on the 0..1 scale; positive.
    pub std: [f32; 3],
}

/// CIFAR-10 training-set statistics, used when a file states no normalisation.
pub const CIFAR10_NORMALIZE: Normalize = Normalize {
    mean: [0.4914, 0.4822, 0.4465],
    std: [0.2470, 0.2435, 0.2616],
};

/// A network ready to run: its [`Plan`] (stages, gates, head, FLOPs), the input
/// normalisation it expects, and where it came from.
///
/// ```
/// let model = dgate_rt::model::Model::from_weights(&dgate_rt::zoo::random("resnet20", 0)?)?;
/// assert_eq!(model.plan.classes, 10);
/// assert_eq!(model.plan.stages.len(), 3);
/// # Ok::<(), dgate_rt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Model {
    /// The lowered network; gate thresholds live in `plan.gates[k].threshold`.
    pub plan: Plan,
    /// Input normalisation: from the file's metadata, else CIFAR-10 statistics.
    pub normalize: Normalize,
    /// Where the normalisation came from (`metadata`, `default`, `flag`, ...).
    pub normalize_source: String,
    /// Backbone parameters (gates excluded), as PyTorch counts them.
    pub params: u64,
    /// Where the weights came from (a path, or the name given to [`Model::from_bytes`]).
    pub file: String,
}

impl Model {
    /// Loads a safetensors file and infers its architecture. Errors name the file and,
    /// where one is at fault, the tensor.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Model> {
        Model::from_weights(&Weights::load(path)?)
    }

    /// Like [`Model::load`], from a safetensors image already in memory; `name` stands
    /// for the file in error messages.
    pub fn from_bytes(bytes: &[u8], name: &str) -> Result<Model> {
        Model::from_weights(&Weights::from_bytes(bytes, name)?)
    }

    /// Infers the architecture of parsed weights (see the [module docs](self)), folds
    /// batch norm and attaches any gates (`gates.K.*` with their metadata).
    pub fn from_weights(w: &Weights) -> Result<Model> {
        let eps = match w.metadata.get("bn_eps") {
            Some(s) => s.trim().parse::<f32>().map_err(|_| Error::Architecture {
                file: w.file.clone(),
                msg: format!("metadata bn_eps = {s:?} is not a number"),
            })?,
            None => 1e-5,
        };
        let mut b = Builder {
            w,
            eps,
            buffers: Vec::new(),
            params: 0,
        };
        let (mut plan, raw_input) = if w.contains("conv1.weight")
            && w.contains("layer1.0.conv1.weight")
        {
            (b.resnet()?, false)
        } else if w.contains("conv1.weight") && w.contains("dense1.0.conv1.weight") {
            (b.densenet_bc()?, false)
        } else if w.contains("conv0.weight") && w.contains("block1.layer0.conv.weight") {
            (b.densenet_fast()?, true)
        } else {
            let mut names: Vec<&String> = w.tensors.keys().collect();
            names.sort();
            let first: Vec<&str> = names.iter().take(4).map(|s| s.as_str()).collect();
            return Err(Error::Architecture {
                file: w.file.clone(),
                msg: format!(
                    "expected `conv1.weight` with `layer1.0.conv1.weight` (ResNet) or `dense1.0.conv1.weight` \
                     (DenseNet-BC), or `conv0.weight` with `block1.layer0.conv.weight` (DenseNet-Fast); \
                     the file has {} tensors, starting {first:?}",
                    names.len()
                ),
            });
        };
        plan.buffers = b.buffers.clone();
        // The same network with one launch and one pass over a stage-1 sized tensor
        // fewer per stride-1 projection (ResNet-50/101/152's first block).
        plan.fuse_projection_shortcuts();
        let params = b.params;
        attach_gates(w, &mut plan)?;
        let (normalize, normalize_source) = read_normalize(w, raw_input)?;
        Ok(Model {
            plan,
            normalize,
            normalize_source,
            params,
            file: w.file.clone(),
        })
    }
}

fn parse_list<T: std::str::FromStr>(file: &str, key: &str, s: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim().parse::<T>().map_err(|_| Error::Architecture {
                file: file.into(),
                msg: format!("metadata {key} = {s:?}: `{}` is not a number", x.trim()),
            })
        })
        .collect()
}

fn read_normalize(w: &Weights, raw_input: bool) -> Result<(Normalize, String)> {
    match (
        w.metadata.get("normalize_mean"),
        w.metadata.get("normalize_std"),
    ) {
        (Some(m), Some(s)) => {
            let m: Vec<f32> = parse_list(&w.file, "normalize_mean", m)?;
            let s: Vec<f32> = parse_list(&w.file, "normalize_std", s)?;
            if m.len() != 3 || s.len() != 3 || s.iter().any(|&x| x <= 0.0) {
                return Err(Error::Architecture {
                    file: w.file.clone(),
                    msg: "normalize_mean and normalize_std need 3 values each, std > 0".into(),
                });
            }
            Ok((
                Normalize {
                    mean: [m[0], m[1], m[2]],
                    std: [s[0], s[1], s[2]],
                },
                "metadata".into(),
            ))
        }
        _ if raw_input => Ok((
            Normalize {
                mean: [0.0; 3],
                std: [1.0 / 255.0; 3],
            },
            "raw 0..255 pixels (DenseNet-Fast)".into(),
        )),
        _ => Ok((CIFAR10_NORMALIZE, "default (CIFAR-10 statistics)".into())),
    }
}

/// Gates `gates.K.{weight,bias}` with metadata `gate_after` (1-based stage numbers),
/// `thresholds` and `gate_loss`.
fn attach_gates(w: &Weights, plan: &mut Plan) -> Result<()> {
    let count = (0..)
        .take_while(|k| w.contains(&format!("gates.{k}.weight")))
        .count();
    let meta = |k: &str| {
        w.metadata
            .get(k)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    };
    if count == 0 {
        if let Some(s) = meta("gate_after") {
            return Err(Error::Tensor {
                file: w.file.clone(),
                tensor: "gates.0.weight".into(),
                msg: format!("missing, but metadata gate_after = {s:?} says there are gates"),
            });
        }
        return Ok(());
    }
    let after: Vec<usize> = match meta("gate_after") {
        Some(s) => parse_list(&w.file, "gate_after", s)?,
        None => (1..=count).collect(),
    };
    if after.len() != count {
        return Err(Error::Architecture {
            file: w.file.clone(),
            msg: format!(
                "metadata gate_after lists {} stages but the file has {count} gates",
                after.len()
            ),
        });
    }
    let thresholds: Vec<f32> = match meta("thresholds") {
        Some(s) => crate::data::parse_thresholds(s).map_err(|e| Error::Architecture {
            file: w.file.clone(),
            msg: format!("metadata thresholds: {e}"),
        })?,
        None => vec![f32::INFINITY; count],
    };
    if thresholds.len() != count {
        return Err(Error::Architecture {
            file: w.file.clone(),
            msg: format!(
                "metadata thresholds lists {} values but the file has {count} gates",
                thresholds.len()
            ),
        });
    }
    let rule = match meta("gate_loss") {
        Some(s) => ExitRule::parse(s).ok_or_else(|| Error::Architecture {
            file: w.file.clone(),
            msg: format!("metadata gate_loss = {s:?}, expected hinge or ce"),
        })?,
        None => ExitRule::Hinge,
    };
    let mut prev = 0;
    for (k, &stage1) in after.iter().enumerate() {
        if stage1 <= prev || stage1 >= plan.stages.len() {
            return Err(Error::Architecture {
                file: w.file.clone(),
                msg: format!(
                    "gate {k} placed after stage {stage1}: gates go after stages 1..{} in increasing order",
                    plan.stages.len() - 1
                ),
            });
        }
        prev = stage1;
        let st = &plan.stages[stage1 - 1];
        let c = st.output.channels;
        let weight = w.shaped(&format!("gates.{k}.weight"), &[plan.classes, c])?;
        let bias = w.shaped(&format!("gates.{k}.bias"), &[plan.classes])?;
        plan.gates.push(Gate {
            after_stage: stage1 - 1,
            input: st.output,
            h: st.out_h,
            w: st.out_w,
            weight: weight.data.clone(),
            bias: bias.data.clone(),
            threshold: thresholds[k],
            rule,
        });
    }
    Ok(())
}

struct Builder<'a> {
    w: &'a Weights,
    eps: f32,
    buffers: Vec<Buffer>,
    params: u64,
}

/// A conv weight with batch norm folded in.
struct Folded {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct ConvSpec {
    input: View,
    output: View,
    hw: (usize, usize),
    stride: usize,
    pre: Option<PreAct>,
    residual: Option<View>,
    relu: bool,
}

impl<'a> Builder<'a> {
    fn arch_err(&self, msg: String) -> Error {
        Error::Architecture {
            file: self.w.file.clone(),
            msg,
        }
    }

    /// A buffer of the given shape that is not in `live`.
    fn buffer(&mut self, channels: usize, h: usize, w: usize, live: &[usize]) -> usize {
        let want = Buffer { channels, h, w };
        if let Some(i) = self
            .buffers
            .iter()
            .enumerate()
            .position(|(i, b)| *b == want && !live.contains(&i))
        {
            return i;
        }
        self.buffers.push(want);
        self.buffers.len() - 1
    }

    fn view(&mut self, channels: usize, h: usize, w: usize, live: &[usize]) -> View {
        View {
            buf: self.buffer(channels, h, w, live),
            offset: 0,
            channels,
        }
    }

    /// Conv weight `[out][in][k][k]`; returns (out, in, k).
    fn conv_weight(&mut self, name: &str) -> Result<(&'a [f32], usize, usize, usize)> {
        let t = self.w.ranked(name, 4)?;
        let s = &t.shape;
        if s[2] != s[3] || !(s[2] == 1 || s[2] == 3) {
            return Err(Error::Tensor {
                file: self.w.file.clone(),
                tensor: name.into(),
                msg: format!("has shape {s:?}, expected a 1×1 or 3×3 kernel"),
            });
        }
        self.params += t.data.len() as u64;
        Ok((&t.data, s[0], s[1], s[2]))
    }

    /// Inference batch norm as per-channel (scale, shift).
    fn bn(&mut self, prefix: &str, c: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let g = &self.w.shaped(&format!("{prefix}.weight"), &[c])?.data;
        let b = &self.w.shaped(&format!("{prefix}.bias"), &[c])?.data;
        let m = &self.w.shaped(&format!("{prefix}.running_mean"), &[c])?.data;
        let v = &self.w.shaped(&format!("{prefix}.running_var"), &[c])?.data;
        if let Some(i) = v.iter().position(|&x| x < 0.0) {
            return Err(Error::Tensor {
                file: self.w.file.clone(),
                tensor: format!("{prefix}.running_var"),
                msg: format!("element {i} is negative ({})", v[i]),
            });
        }
        self.params += 2 * c as u64;
        let scale: Vec<f32> = (0..c).map(|i| g[i] / (v[i] + self.eps).sqrt()).collect();
        let shift = (0..c).map(|i| b[i] - m[i] * scale[i]).collect();
        Ok((scale, shift))
    }

    /// Conv `name` followed by batch norm `bn` (if any), folded.
    fn conv_bn(
        &mut self,
        name: &str,
        bn: Option<&str>,
        in_c: usize,
    ) -> Result<(Folded, usize, usize)> {
        let (wt, out, inn, k) = self.conv_weight(name)?;
        if inn != in_c {
            return Err(Error::Tensor {
                file: self.w.file.clone(),
                tensor: name.into(),
                msg: format!("has {inn} input channels, but its input has {in_c}"),
            });
        }
        let mut weight = wt.to_vec();
        let mut bias = vec![0.0; out];
        let bias_name = name.replace(".weight", ".bias");
        if self.w.contains(&bias_name) {
            let t = self.w.shaped(&bias_name, &[out])?;
            self.params += out as u64;
            bias.copy_from_slice(&t.data);
        }
        if let Some(bn) = bn {
            let (scale, shift) = self.bn(bn, out)?;
            let per = inn * k * k;
            for o in 0..out {
                for x in &mut weight[o * per..(o + 1) * per] {
                    *x *= scale[o];
                }
                bias[o] = bias[o] * scale[o] + shift[o];
            }
        }
        Ok((Folded { weight, bias }, out, k))
    }

    fn conv_op(f: Folded, k: usize, s: ConvSpec) -> (Op, u64) {
        let (h, w) = s.hw;
        let pad = k / 2;
        let out_h = (h + 2 * pad - k) / s.stride + 1;
        let out_w = (w + 2 * pad - k) / s.stride + 1;
        let flops = 2 * (s.output.channels * s.input.channels * k * k * out_h * out_w) as u64;
        (
            Op::Conv(Conv {
                input: s.input,
                output: s.output,
                in_h: h,
                in_w: w,
                out_h,
                out_w,
                kernel: k,
                stride: s.stride,
                pad,
                weight: f.weight,
                bias: f.bias,
                pre: s.pre,
                residual: s.residual,
                relu: s.relu,
            }),
            flops,
        )
    }

    fn linear(&mut self, name: &str, in_c: usize) -> Result<(Vec<f32>, Vec<f32>, usize)> {
        let wt = self.w.ranked(&format!("{name}.weight"), 2)?;
        if wt.shape[1] != in_c {
            return Err(Error::Tensor {
                file: self.w.file.clone(),
                tensor: format!("{name}.weight"),
                msg: format!("has shape {:?}, expected [classes, {in_c}]", wt.shape),
            });
        }
        let classes = wt.shape[0];
        let b = self.w.shaped(&format!("{name}.bias"), &[classes])?;
        self.params += (wt.data.len() + classes) as u64;
        Ok((wt.data.clone(), b.data.clone(), classes))
    }

    fn count(&self, f: impl Fn(usize) -> String) -> usize {
        (0..).take_while(|&i| self.w.contains(&f(i))).count()
    }

    fn resnet(&mut self) -> Result<Plan> {
        let input = self.view(3, 32, 32, &[]);
        let mut stages = Vec::new();
        let mut ops = Vec::new();
        let mut flops = 0u64;
        let mut params0 = self.params;
        let (f, c0, k) = self.conv_bn("conv1.weight", Some("bn1"), 3)?;
        let mut x = self.view(c0, 32, 32, &[input.buf]);
        let (op, fl) = Self::conv_op(
            f,
            k,
            ConvSpec {
                input,
                output: x,
                hw: (32, 32),
                stride: 1,
                pre: None,
                residual: None,
                relu: true,
            },
        );
        ops.push(op);
        flops += fl;
        let (mut h, mut w) = (32usize, 32usize);
        let layers = self.count(|l| format!("layer{}.0.conv1.weight", l + 1));
        let bottleneck = self.w.contains("layer1.0.conv3.weight");
        for l in 1..=layers {
            let blocks = self.count(|i| format!("layer{l}.{i}.conv1.weight"));
            for i in 0..blocks {
                let p = format!("layer{l}.{i}");
                let stride = if l > 1 && i == 0 { 2 } else { 1 };
                let (oh, ow) = ((h - 1) / stride + 1, (w - 1) / stride + 1);
                let cin = x.channels;
                // Main path.
                let convs: Vec<usize> = if bottleneck {
                    vec![1, 2, 3]
                } else {
                    vec![1, 2]
                };
                let mut cur = x;
                let mut cur_hw = (h, w);
                let mut live = vec![x.buf];
                let mut pending = Vec::new();
                for (j, &c) in convs.iter().enumerate() {
                    let (f, out, k) = self.conv_bn(
                        &format!("{p}.conv{c}.weight"),
                        Some(&format!("{p}.bn{c}")),
                        cur.channels,
                    )?;
                    let s = if (bottleneck && c == 2) || (!bottleneck && c == 1) {
                        stride
                    } else {
                        1
                    };
                    let (nh, nw) = ((cur_hw.0 - 1) / s + 1, (cur_hw.1 - 1) / s + 1);
                    let last = j + 1 == convs.len();
                    let outv = self.view(out, nh, nw, &live);
                    live.push(outv.buf);
                    pending.push((
                        f,
                        k,
                        ConvSpec {
                            input: cur,
                            output: outv,
                            hw: cur_hw,
                            stride: s,
                            pre: None,
                            residual: None,
                            relu: true,
                        },
                        last,
                    ));
                    cur = outv;
                    cur_hw = (nh, nw);
                }
                let cout = cur.channels;
                if cur_hw != (oh, ow) {
                    return Err(self.arch_err(format!("{p}: unexpected output size {cur_hw:?}")));
                }
                // Shortcut.
                let residual = if stride == 1 && cin == cout {
                    if self.w.contains(&format!("{p}.shortcut.0.weight")) {
                        return Err(self.arch_err(format!(
                            "{p}.shortcut.0.weight present on a block whose shape does not change"
                        )));
                    }
                    x
                } else if self.w.contains(&format!("{p}.shortcut.0.weight")) {
                    let (f, out, k) = self.conv_bn(
                        &format!("{p}.shortcut.0.weight"),
                        Some(&format!("{p}.shortcut.1")),
                        cin,
                    )?;
                    if out != cout || k != 1 {
                        return Err(Error::Tensor {
                            file: self.w.file.clone(),
                            tensor: format!("{p}.shortcut.0.weight"),
                            msg: format!("expected shape [{cout}, {cin}, 1, 1]"),
                        });
                    }
                    let sc = self.view(cout, oh, ow, &live);
                    live.push(sc.buf);
                    let (op, fl) = Self::conv_op(
                        f,
                        1,
                        ConvSpec {
                            input: x,
                            output: sc,
                            hw: (h, w),
                            stride,
                            pre: None,
                            residual: None,
                            relu: false,
                        },
                    );
                    ops.push(op);
                    flops += fl;
                    sc
                } else {
                    if cout < cin || !(cout - cin).is_multiple_of(2) {
                        return Err(Error::Tensor {
                            file: self.w.file.clone(),
                            tensor: format!("{p}.shortcut.0.weight"),
                            msg: format!(
                                "missing: an option-A shortcut cannot map {cin} channels to {cout}"
                            ),
                        });
                    }
                    let sc = self.view(cout, oh, ow, &live);
                    live.push(sc.buf);
                    ops.push(Op::ShortcutA {
                        input: x,
                        output: sc,
                        in_h: h,
                        in_w: w,
                        stride,
                        pad_before: (cout - cin) / 2,
                    });
                    sc
                };
                let n = pending.len();
                for (j, (f, k, mut spec, last)) in pending.into_iter().enumerate() {
                    if last {
                        spec.residual = Some(residual);
                    }
                    debug_assert_eq!(last, j + 1 == n);
                    let (op, fl) = Self::conv_op(f, k, spec);
                    ops.push(op);
                    flops += fl;
                }
                x = cur;
                (h, w) = (oh, ow);
            }
            stages.push(Stage {
                name: format!("layer{l}"),
                ops: std::mem::take(&mut ops),
                output: x,
                out_h: h,
                out_w: w,
                flops: std::mem::take(&mut flops),
                params: self.params - params0,
            });
            params0 = self.params;
        }
        if layers == 0 {
            return Err(self.arch_err("no layer1 blocks".into()));
        }
        let head_name = if self.w.contains("linear.weight") {
            "linear"
        } else {
            "fc"
        };
        let (weight, bias, classes) = self.linear(head_name, x.channels)?;
        if let Some(last) = stages.last_mut() {
            last.params += self.params - params0;
        }
        let arch = format!(
            "ResNet-{} ({}, {} stages, {}-ch stem)",
            self.resnet_depth(bottleneck, layers),
            if bottleneck {
                "Bottleneck"
            } else {
                "BasicBlock"
            },
            layers,
            c0
        );
        Ok(Plan {
            arch,
            classes,
            buffers: Vec::new(),
            input,
            stages,
            gates: Vec::new(),
            head: Head {
                input: x,
                h,
                w,
                pre: None,
                weight,
                bias,
            },
        })
    }

    fn resnet_depth(&self, bottleneck: bool, layers: usize) -> usize {
        let blocks: usize = (1..=layers)
            .map(|l| self.count(|i| format!("layer{l}.{i}.conv1.weight")))
            .sum();
        blocks * if bottleneck { 3 } else { 2 } + 2
    }

    /// DenseNet lowering shared by DenseNet-BC and DenseNet-Fast.
    fn densenet_bc(&mut self) -> Result<Plan> {
        self.densenet(DenseStyle::Bc)
    }

    fn densenet_fast(&mut self) -> Result<Plan> {
        self.densenet(DenseStyle::Fast)
    }

    fn densenet(&mut self, style: DenseStyle) -> Result<Plan> {
        let bc = style == DenseStyle::Bc;
        let layer_name = |d: usize, i: usize| {
            if bc {
                format!("dense{d}.{i}.conv1.weight")
            } else {
                format!("block{d}.layer{i}.conv.weight")
            }
        };
        let blocks = self.count(|d| layer_name(d + 1, 0));
        if blocks == 0 {
            return Err(self.arch_err("no dense blocks".into()));
        }
        let input = self.view(3, 32, 32, &[]);
        let (stem, stem_bn) = if bc {
            ("conv1.weight", None)
        } else {
            ("conv0.weight", Some("bn0"))
        };
        let (stem_f, c0, k0) = self.conv_bn(stem, stem_bn, 3)?;
        let mut params0 = 0u64;

        // Shapes first: every block's buffer holds its input and all its new channels.
        struct BlockSpec {
            layers: usize,
            growth: usize,
            cin: usize,
            ctot: usize,
            hw: usize,
        }
        let mut specs: Vec<BlockSpec> = Vec::new();
        let mut cin = c0;
        let mut hw = 32usize;
        for d in 1..=blocks {
            let layers = self.count(|i| layer_name(d, i));
            let gname = if bc {
                format!("dense{d}.0.conv2.weight")
            } else {
                layer_name(d, 0)
            };
            let growth = self.w.ranked(&gname, 4)?.shape[0];
            let ctot = cin + layers * growth;
            specs.push(BlockSpec {
                layers,
                growth,
                cin,
                ctot,
                hw,
            });
            if d < blocks {
                let t = self.w.ranked(&format!("trans{d}.conv.weight"), 4)?;
                cin = t.shape[0];
                if hw < 2 {
                    return Err(
                        self.arch_err(format!("trans{d}: nothing left to pool at {hw}x{hw}"))
                    );
                }
                hw /= 2;
            }
        }
        let mut block_bufs: Vec<usize> = Vec::new();
        for s in &specs {
            let b = self.buffer(s.ctot, s.hw, s.hw, &block_bufs);
            block_bufs.push(b);
        }
        let in_view = |d: usize, s: &BlockSpec| View {
            buf: block_bufs[d],
            // New channels first (BC): the input sits at the end; last (Fast): at the start.
            offset: if bc { s.ctot - s.cin } else { 0 },
            channels: s.cin,
        };

        let mut stages = Vec::new();
        let mut ops = Vec::new();
        let mut flops = 0u64;
        let stem_out = in_view(0, &specs[0]);
        let (op, fl) = Self::conv_op(
            stem_f,
            k0,
            ConvSpec {
                input,
                output: stem_out,
                hw: (32, 32),
                stride: 1,
                pre: None,
                residual: None,
                relu: false,
            },
        );
        ops.push(op);
        flops += fl;
        for (di, s) in specs.iter().enumerate() {
            let d = di + 1;
            let block = block_bufs[di];
            let (h, w) = (s.hw, s.hw);
            for i in 0..s.layers {
                let c = s.cin + i * s.growth;
                let read = View {
                    buf: block,
                    offset: if bc { s.ctot - c } else { 0 },
                    channels: c,
                };
                let write = View {
                    buf: block,
                    offset: if bc { s.ctot - c - s.growth } else { c },
                    channels: s.growth,
                };
                if bc {
                    let (s1, t1) = self.bn(&format!("dense{d}.{i}.bn1"), c)?;
                    let (f1, mid, k1) = self.conv_bn(
                        &format!("dense{d}.{i}.conv1.weight"),
                        Some(&format!("dense{d}.{i}.bn2")),
                        c,
                    )?;
                    let tmp = self.view(mid, h, w, &block_bufs);
                    let (op, fl) = Self::conv_op(
                        f1,
                        k1,
                        ConvSpec {
                            input: read,
                            output: tmp,
                            hw: (h, w),
                            stride: 1,
                            pre: Some(PreAct {
                                scale: s1,
                                shift: t1,
                                relu: true,
                            }),
                            residual: None,
                            relu: true,
                        },
                    );
                    ops.push(op);
                    flops += fl;
                    let name = format!("dense{d}.{i}.conv2.weight");
                    let (f2, g, k2) = self.conv_bn(&name, None, mid)?;
                    if g != s.growth {
                        return Err(Error::Tensor {
                            file: self.w.file.clone(),
                            tensor: name,
                            msg: format!(
                                "has {g} output channels, expected the growth rate {}",
                                s.growth
                            ),
                        });
                    }
                    let (op, fl) = Self::conv_op(
                        f2,
                        k2,
                        ConvSpec {
                            input: tmp,
                            output: write,
                            hw: (h, w),
                            stride: 1,
                            pre: None,
                            residual: None,
                            relu: false,
                        },
                    );
                    ops.push(op);
                    flops += fl;
                } else {
                    let name = layer_name(d, i);
                    let (f, g, k) = self.conv_bn(&name, None, c)?;
                    if g != s.growth {
                        return Err(Error::Tensor {
                            file: self.w.file.clone(),
                            tensor: name,
                            msg: format!(
                                "has {g} output channels, expected the growth rate {}",
                                s.growth
                            ),
                        });
                    }
                    let pre = PreAct {
                        scale: vec![1.0; c],
                        shift: vec![0.0; c],
                        relu: true,
                    };
                    let (op, fl) = Self::conv_op(
                        f,
                        k,
                        ConvSpec {
                            input: read,
                            output: write,
                            hw: (h, w),
                            stride: 1,
                            pre: Some(pre),
                            residual: None,
                            relu: false,
                        },
                    );
                    ops.push(op);
                    flops += fl;
                }
            }
            let full = View {
                buf: block,
                offset: 0,
                channels: s.ctot,
            };
            if d == blocks {
                stages.push(Stage {
                    name: format!("dense{d}"),
                    ops: std::mem::take(&mut ops),
                    output: full,
                    out_h: h,
                    out_w: w,
                    flops: std::mem::take(&mut flops),
                    params: 0,
                });
                break;
            }
            // Transition: (BN-ReLU) -> 1x1 conv -> 2x2 avg pool (-> BN for Fast). The 1x1
            // conv is linear, so pooling first is exact and does a quarter of the work.
            let (pool_pre, post_bn) = if bc {
                let (sc, sh) = self.bn(&format!("trans{d}.bn"), s.ctot)?;
                (
                    Some(PreAct {
                        scale: sc,
                        shift: sh,
                        relu: true,
                    }),
                    None,
                )
            } else {
                (None, Some(format!("trans{d}.bn")))
            };
            let pooled = self.view(s.ctot, h / 2, w / 2, &block_bufs);
            ops.push(Op::AvgPool2 {
                input: full,
                output: pooled,
                in_h: h,
                in_w: w,
                pre: pool_pre,
            });
            let conv_name = format!("trans{d}.conv.weight");
            let (f, _, k) = self.conv_bn(&conv_name, post_bn.as_deref(), s.ctot)?;
            if k != 1 {
                return Err(Error::Tensor {
                    file: self.w.file.clone(),
                    tensor: conv_name,
                    msg: "expected a 1x1 transition convolution".into(),
                });
            }
            let next = in_view(di + 1, &specs[di + 1]);
            let (op, fl) = Self::conv_op(
                f,
                1,
                ConvSpec {
                    input: pooled,
                    output: next,
                    hw: (h / 2, w / 2),
                    stride: 1,
                    pre: None,
                    residual: None,
                    relu: false,
                },
            );
            ops.push(op);
            // Counted at the definition's (pre-pool) resolution, as PyTorch would.
            flops += 4 * fl;
            stages.push(Stage {
                name: format!("dense{d}+trans{d}"),
                ops: std::mem::take(&mut ops),
                output: next,
                out_h: h / 2,
                out_w: w / 2,
                flops: std::mem::take(&mut flops),
                params: self.params - params0,
            });
            params0 = self.params;
        }
        let last = *stages
            .last()
            .map(|s: &Stage| &s.output)
            .ok_or_else(|| self.arch_err("no stages".into()))?;
        let (h, w) = (specs[blocks - 1].hw, specs[blocks - 1].hw);
        let c = last.channels;
        let pre = if bc {
            let (sc, sh) = self.bn("bn", c)?;
            PreAct {
                scale: sc,
                shift: sh,
                relu: true,
            }
        } else {
            PreAct {
                scale: vec![1.0; c],
                shift: vec![0.0; c],
                relu: true,
            }
        };
        let head_name = if bc { "linear" } else { "fc" };
        let (weight, bias, classes) = self.linear(head_name, c)?;
        if let Some(st) = stages.last_mut() {
            st.params = self.params - params0;
        }
        let total_layers: usize = specs.iter().map(|s| s.layers).sum();
        let depth = total_layers * if bc { 2 } else { 1 } + blocks + usize::from(bc);
        let arch = if bc {
            format!(
                "DenseNet-BC-{depth} (k={}, {blocks} blocks)",
                specs[0].growth
            )
        } else {
            format!(
                "DenseNet-Fast-{depth} (k={}, {blocks} blocks, no bottleneck)",
                specs[0].growth
            )
        };
        Ok(Plan {
            arch,
            classes,
            buffers: Vec::new(),
            input,
            stages,
            gates: Vec::new(),
            head: Head {
                input: last,
                h,
                w,
                pre: Some(pre),
                weight,
                bias,
            },
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DenseStyle {
    Bc,
    Fast,
}
