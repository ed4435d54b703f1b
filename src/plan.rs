//! The execution plan: a network lowered to a short list of ops over per-sample
//! activation buffers, with batch norm already folded where that is exact.
//!
//! The plan is layout-agnostic. Every buffer holds, per sample, `channels × h × w`
//! floats; a backend chooses how samples and channels are laid out in memory
//! (the CPU backend uses channel-major CNHW, the CUDA backend NHWC). Weights are
//! kept in PyTorch order (`[out][in][kh][kw]`) and each backend repacks them once.
//!
//! Data flow: the normalised image is written to `input_buf`; stage `s` runs its ops
//! in order; a gate after stage `s` reads `stages[s].output`, global-average-pools it,
//! scores it and decides per sample; survivors' `stages[s].output` (the only state
//! live across a stage boundary) is compacted; the head reads the last stage's output.

use serde::Serialize;

/// Index of a buffer in [`Plan::buffers`].
pub type BufId = usize;

/// Per-sample shape of an activation buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Buffer {
    /// Channels per sample.
    pub channels: usize,
    /// Height in pixels.
    pub h: usize,
    /// Width in pixels.
    pub w: usize,
}

/// A window of channels `[offset, offset + channels)` of a buffer. DenseNet blocks
/// use windows of one block buffer so that concatenation needs no copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    /// The buffer viewed.
    pub buf: BufId,
    /// First channel of the window.
    pub offset: usize,
    /// Number of channels in the window.
    pub channels: usize,
}

/// Per-input-channel `y = x * scale + shift`, then ReLU if `relu`, applied to an
/// op's input as it is read (DenseNet's pre-activation BN-ReLU, which cannot be
/// folded into the preceding convolution because each consumer has its own BN).
/// Zero padding of a convolution is applied after this transform, as in PyTorch.
#[derive(Clone, Debug, PartialEq)]
pub struct PreAct {
    /// Per input channel.
    pub scale: Vec<f32>,
    /// Per input channel.
    pub shift: Vec<f32>,
    /// Whether a ReLU follows the affine transform.
    pub relu: bool,
}

/// `output = act(conv(pre(input)) + bias + residual)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    /// Channels read.
    pub input: View,
    /// Channels written.
    pub output: View,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Square kernel size (1 or 3).
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// `[output.channels][input.channels][kernel][kernel]`, batch norm folded in.
    pub weight: Vec<f32>,
    /// `[output.channels]`.
    pub bias: Vec<f32>,
    /// Transform applied to the input as it is read.
    pub pre: Option<PreAct>,
    /// Same shape as the output; added before the ReLU.
    pub residual: Option<View>,
    /// Whether a ReLU is applied to the output.
    pub relu: bool,
}

/// One step of a stage.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A convolution with its fused epilogue.
    Conv(Conv),
    /// He et al.'s option-A shortcut: `out[c + pad_before][y][x] = in[c][s·y][s·x]`,
    /// every other output channel zero. `output.channels = input.channels + 2·pad_before`.
    ShortcutA {
        /// Channels read.
        input: View,
        /// Channels written.
        output: View,
        /// Input height.
        in_h: usize,
        /// Input width.
        in_w: usize,
        /// Subsampling step `s`.
        stride: usize,
        /// Zero channels before (and after) the copied ones.
        pad_before: usize,
    },
    /// 2×2 average pool, stride 2, of `pre(input)`.
    AvgPool2 {
        /// Channels read.
        input: View,
        /// Channels written.
        output: View,
        /// Input height (output is half).
        in_h: usize,
        /// Input width (output is half).
        in_w: usize,
        /// Transform applied to the input as it is read.
        pre: Option<PreAct>,
    },
}

/// A run of ops between two points where a gate may sit (a ResNet layer, a DenseNet
/// block with its transition).
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// E.g. `layer2` or `dense1+trans1`.
    pub name: String,
    /// Executed in order.
    pub ops: Vec<Op>,
    /// What the next stage (and a gate placed here) reads.
    pub output: View,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// FLOPs of this stage per sample, counted as PyTorch hooks count the model's
    /// definition (2 × MACs of convs), not as the plan happens to execute it.
    pub flops: u64,
    /// Parameters of this stage, as PyTorch counts them.
    pub params: u64,
}

/// How a gate (or a calibration) turns scores into a confidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitRule {
    /// Hinge-trained gate: confidence = max score.
    Hinge,
    /// Cross-entropy-trained gate: confidence = max softmax probability.
    Ce,
}

impl ExitRule {
    /// Parses `hinge` or `ce`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hinge" => Some(ExitRule::Hinge),
            "ce" => Some(ExitRule::Ce),
            _ => None,
        }
    }
    /// `hinge` or `ce`, as in the `gate_loss` metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitRule::Hinge => "hinge",
            ExitRule::Ce => "ce",
        }
    }
}

/// A decision gate: global average pool of `input`, `s = W·x + b`, exit when the
/// confidence (see [`ExitRule`]) is at least `threshold`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// Index (0-based) of the stage whose output the gate reads.
    pub after_stage: usize,
    /// That stage's output.
    pub input: View,
    /// Height of the input.
    pub h: usize,
    /// Width of the input.
    pub w: usize,
    /// `[classes][input.channels]`.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
    /// Exit when the confidence is at least this (`inf`: never, the gate closed and not
    /// computed; `-inf`: always).
    pub threshold: f32,
    /// How scores become a confidence.
    pub rule: ExitRule,
}

impl Gate {
    /// FLOPs of scoring one sample (the linear layer; pooling is not counted).
    pub fn flops(&self) -> u64 {
        2 * self.weight.len() as u64
    }

    /// A threshold of `+inf`: no sample leaves here, so backends do not score the
    /// batch at all (the full network runs without its gates' cost).
    pub fn closed(&self) -> bool {
        self.threshold == f32::INFINITY
    }

    /// Whether a sample of confidence `conf` leaves here. Never at a closed gate, even
    /// with an infinite confidence (overflowing scores), so that skipping the gate
    /// changes no result.
    pub fn lets_out(&self, conf: f32) -> bool {
        !self.closed() && conf >= self.threshold
    }
}

/// Classifier: `pre` (optional), global average pool, linear.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    /// The last stage's output.
    pub input: View,
    /// Height of the input.
    pub h: usize,
    /// Width of the input.
    pub w: usize,
    /// Transform before pooling (DenseNet's final BN-ReLU).
    pub pre: Option<PreAct>,
    /// `[classes][input.channels]`.
    pub weight: Vec<f32>,
    /// `[classes]`.
    pub bias: Vec<f32>,
}

/// A whole network, lowered: see the [module docs](self).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Human-readable architecture, e.g. `ResNet-20 (BasicBlock, 3 stages, 16-ch stem)`.
    pub arch: String,
    /// Number of output classes.
    pub classes: usize,
    /// Per-sample activation buffers the ops read and write.
    pub buffers: Vec<Buffer>,
    /// Receives the normalised `3 × 32 × 32` image.
    pub input: View,
    pub stages: Vec<Stage>,
    /// In network order; at most one gate per stage, never after the last stage.
    pub gates: Vec<Gate>,
    /// The classifier after the last stage.
    pub head: Head,
}

impl Plan {
    /// FLOPs of the classifier, per sample.
    pub fn head_flops(&self) -> u64 {
        2 * self.head.weight.len() as u64
    }

    /// FLOPs of the whole backbone (no gates), per sample.
    pub fn backbone_flops(&self) -> u64 {
        self.stages.iter().map(|s| s.flops).sum::<u64>() + self.head_flops()
    }

    /// FLOPs spent on a sample that leaves at gate `exit` (`None`: runs to the head),
    /// gates it passed through included.
    pub fn flops_for_exit(&self, exit: Option<usize>) -> u64 {
        match exit {
            Some(g) => {
                let last = self.gates[g].after_stage;
                self.stages[..=last].iter().map(|s| s.flops).sum::<u64>()
                    + self.gates[..=g].iter().map(Gate::flops).sum::<u64>()
            }
            None => self.backbone_flops() + self.gates.iter().map(Gate::flops).sum::<u64>(),
        }
    }

    /// How many gates a sample passes before `stage`: the compaction level whose live
    /// count that stage's kernels run on (0: the whole batch).
    pub fn level_of(&self, stage: usize) -> usize {
        self.gates.iter().filter(|g| g.after_stage < stage).count()
    }

    /// The gate placed after `stage`, if any.
    pub fn gate_after(&self, stage: usize) -> Option<usize> {
        self.gates.iter().position(|g| g.after_stage == stage)
    }

    /// Widens the image buffer to `to` channels, zero past the image's own, and every
    /// convolution reading it, whose weights get zero taps for the new channels: the
    /// same network (per-stage FLOPs, which count the image's channels, unchanged),
    /// but its first convolution reads an input whose channel count and pixel stride
    /// are multiples of 8, which the f16 tensor-core kernels need (3 channels leave the
    /// stem to a general kernel that ran it at 7.5 TFLOP/s on an H200). The buffer must
    /// start zero and only the image may be written into it. Returns `false`, changing
    /// nothing, unless the image has a buffer of its own, read only by convolutions of
    /// exactly the image view without pre-activation.
    pub fn pad_input_channels(&mut self, to: usize) -> bool {
        let input = self.input;
        let b = input.buf;
        let c = input.channels;
        if input.offset != 0 || self.buffers[b].channels != c || to <= c {
            return false;
        }
        let touches = |v: &View| v.buf == b;
        for s in &self.stages {
            if touches(&s.output) {
                return false;
            }
            for op in &s.ops {
                let ok = match op {
                    Op::Conv(cv) => {
                        !touches(&cv.output)
                            && cv.residual.as_ref().is_none_or(|r| !touches(r))
                            && (!touches(&cv.input) || (cv.input == input && cv.pre.is_none()))
                    }
                    Op::ShortcutA {
                        input: i,
                        output: o,
                        ..
                    }
                    | Op::AvgPool2 {
                        input: i,
                        output: o,
                        ..
                    } => !touches(i) && !touches(o),
                };
                if !ok {
                    return false;
                }
            }
        }
        if self.gates.iter().any(|g| touches(&g.input)) || touches(&self.head.input) {
            return false;
        }
        self.buffers[b].channels = to;
        for s in &mut self.stages {
            for op in &mut s.ops {
                let Op::Conv(cv) = op else { continue };
                if cv.input != input {
                    continue;
                }
                let taps = cv.kernel * cv.kernel;
                let mut w = vec![0.0f32; cv.output.channels * to * taps];
                for (k, src) in cv.weight.chunks(c * taps).enumerate() {
                    w[k * to * taps..][..c * taps].copy_from_slice(src);
                }
                cv.weight = w;
                cv.input.channels = to;
            }
        }
        true
    }

    /// Folds each stride-1 projection shortcut into its block's last convolution:
    /// `relu(W3·h + b3 + (Wp·x + bp))` is one 1×1 convolution over the channels of `x`
    /// and `h` side by side, `relu([Wp | W3]·[x ; h] + (bp + b3))`. The two producers
    /// write `x` and `h` into one new buffer (`x` at channel 0, `h` after it), the
    /// readers of `x` read it there, and the projection's own pass over the output
    /// (its write, then the residual read) and its launch are gone: in a CIFAR
    /// ResNet-50/101/152 this is the first block of `layer1` (64→256 channels at 32×32,
    /// about 134 MB written and read again at batch 256 in f16). The same network: the
    /// FLOPs are the same (each stage keeps its count), only the sum's order changes.
    ///
    /// A block qualifies when both convolutions are 1×1 with stride 1 and no
    /// pre-activation, the projection has no ReLU and no residual, and every value
    /// involved is produced and consumed inside one stage, whole buffers at a time,
    /// with the projection's output read by the last convolution only. Strided
    /// projections (the first block of later stages) stay as they are: their input is
    /// the previous stage's output, at another resolution. Returns how many were folded.
    pub fn fuse_projection_shortcuts(&mut self) -> usize {
        let mut fused = 0;
        for s in 0..self.stages.len() {
            while let Some(f) = self.find_projection(s) {
                self.fold_projection(s, f);
                fused += 1;
            }
        }
        fused
    }

    /// The first foldable projection of stage `s` (see
    /// [`Plan::fuse_projection_shortcuts`]).
    fn find_projection(&self, s: usize) -> Option<Fold> {
        let ops = &self.stages[s].ops;
        let plain_1x1 = |c: &Conv| {
            c.kernel == 1 && c.stride == 1 && c.pad == 0 && c.pre.is_none() && {
                let (i, o) = (&self.buffers[c.input.buf], &self.buffers[c.output.buf]);
                (i.h, i.w) == (o.h, o.w)
            }
        };
        for (j, op) in ops.iter().enumerate() {
            let Op::Conv(last) = op else { continue };
            let Some(r) = last.residual else { continue };
            if !plain_1x1(last) {
                continue;
            }
            let Some((p, r_uses)) = self.value_at(s, j, r) else {
                continue;
            };
            let Op::Conv(proj) = &ops[p] else { continue };
            let (x, h) = (proj.input, last.input);
            let ok = plain_1x1(proj)
                && proj.residual.is_none()
                && !proj.relu
                && r_uses == [j]
                && x.buf != h.buf
                && x.buf != r.buf
                && h.buf != r.buf
                && self.buffers[x.buf].h == self.buffers[h.buf].h
                && self.buffers[x.buf].w == self.buffers[h.buf].w;
            if !ok {
                continue;
            }
            let (Some((x_def, x_uses)), Some((h_def, h_uses))) =
                (self.value_at(s, p, x), self.value_at(s, j, h))
            else {
                continue;
            };
            return Some(Fold {
                proj: p,
                last: j,
                x_def,
                x_uses,
                h_def,
                h_uses,
            });
        }
        None
    }

    /// The value of the whole-buffer view `v` that op `at` of stage `s` reads: the op
    /// that wrote it (in stage `s`, all of `v` at once) and every op reading it before
    /// its buffer is written again, each reading exactly `v`. `None` where that does
    /// not hold, or where the value may be read past the stage (its output, a gate,
    /// the head, or a later stage reading the buffer before writing it).
    fn value_at(&self, s: usize, at: usize, v: View) -> Option<(usize, Vec<usize>)> {
        let b = v.buf;
        if v.offset != 0 || v.channels != self.buffers[b].channels {
            return None;
        }
        let ops = &self.stages[s].ops;
        let def = (0..at).rev().find(|&i| op_output(&ops[i]).buf == b)?;
        if *op_output(&ops[def]) != v || op_reads(&ops[def]).any(|r| r.buf == b) {
            return None;
        }
        let mut uses = Vec::new();
        let mut overwritten = false;
        for (i, op) in ops.iter().enumerate().skip(def + 1) {
            let mut reads = op_reads(op).filter(|r| r.buf == b).peekable();
            if reads.peek().is_some() {
                if !reads.all(|r| *r == v) {
                    return None;
                }
                uses.push(i);
            }
            if op_output(op).buf == b {
                overwritten = true;
                break;
            }
        }
        if !overwritten {
            let later_read = self.stages[s + 1..].iter().any(|st| {
                st.ops
                    .iter()
                    .find(|op| op_output(op).buf == b || op_reads(op).any(|r| r.buf == b))
                    .is_some_and(|op| op_reads(op).any(|r| r.buf == b))
            });
            if self.stages[s].output.buf == b
                || later_read
                || self.gates.iter().any(|g| g.input.buf == b)
                || self.head.input.buf == b
            {
                return None;
            }
        }
        uses.contains(&at).then_some((def, uses))
    }

    fn fold_projection(&mut self, s: usize, f: Fold) {
        let ops = &self.stages[s].ops;
        let (Op::Conv(proj), Op::Conv(last)) = (&ops[f.proj], &ops[f.last]) else {
            return;
        };
        let (x, h) = (proj.input, last.input);
        let (cx, ch, cout) = (x.channels, h.channels, last.output.channels);
        let mut weight = Vec::with_capacity(cout * (cx + ch));
        for o in 0..cout {
            weight.extend_from_slice(&proj.weight[o * cx..(o + 1) * cx]);
            weight.extend_from_slice(&last.weight[o * ch..(o + 1) * ch]);
        }
        let bias: Vec<f32> = proj
            .bias
            .iter()
            .zip(&last.bias)
            .map(|(a, b)| a + b)
            .collect();
        let shape = &self.buffers[x.buf];
        self.buffers.push(Buffer {
            channels: cx + ch,
            h: shape.h,
            w: shape.w,
        });
        let both = self.buffers.len() - 1;
        let at = |offset, channels| View {
            buf: both,
            offset,
            channels,
        };
        let ops = &mut self.stages[s].ops;
        for (def, uses, from, to) in [
            (f.x_def, &f.x_uses, x, at(0, cx)),
            (f.h_def, &f.h_uses, h, at(cx, ch)),
        ] {
            *op_output_mut(&mut ops[def]) = to;
            for &u in uses {
                for r in op_reads_mut(&mut ops[u]) {
                    if *r == from {
                        *r = to;
                    }
                }
            }
        }
        if let Op::Conv(last) = &mut ops[f.last] {
            last.input = at(0, cx + ch);
            last.weight = weight;
            last.bias = bias;
            last.residual = None;
        }
        ops.remove(f.proj);
    }

    /// Sets one threshold per gate; a wrong count or a NaN is [`crate::Error::Config`].
    pub fn set_thresholds(&mut self, t: &[f32]) -> crate::Result<()> {
        if t.len() != self.gates.len() {
            return Err(crate::Error::Config(format!(
                "{} thresholds given but the model has {} gate(s)",
                t.len(),
                self.gates.len()
            )));
        }
        for (g, &v) in self.gates.iter_mut().zip(t) {
            if v.is_nan() {
                return Err(crate::Error::Config("a threshold is NaN".into()));
            }
            g.threshold = v;
        }
        Ok(())
    }
}

/// A projection shortcut [`Plan::fuse_projection_shortcuts`] folds: op indices in
/// its stage.
struct Fold {
    /// The projection.
    proj: usize,
    /// The block's last convolution, which reads the projection as its residual.
    last: usize,
    /// The producer of the projection's input `x`, and every reader of that value.
    x_def: usize,
    x_uses: Vec<usize>,
    /// The producer of the last convolution's input `h`, and every reader of it.
    h_def: usize,
    h_uses: Vec<usize>,
}

/// The views an op reads.
fn op_reads(op: &Op) -> impl Iterator<Item = &View> {
    let (input, residual) = match op {
        Op::Conv(c) => (&c.input, c.residual.as_ref()),
        Op::ShortcutA { input, .. } | Op::AvgPool2 { input, .. } => (input, None),
    };
    std::iter::once(input).chain(residual)
}

fn op_reads_mut(op: &mut Op) -> impl Iterator<Item = &mut View> {
    let (input, residual) = match op {
        Op::Conv(c) => (&mut c.input, c.residual.as_mut()),
        Op::ShortcutA { input, .. } | Op::AvgPool2 { input, .. } => (input, None),
    };
    std::iter::once(input).chain(residual)
}

/// The view an op writes.
fn op_output(op: &Op) -> &View {
    match op {
        Op::Conv(c) => &c.output,
        Op::ShortcutA { output, .. } | Op::AvgPool2 { output, .. } => output,
    }
}

fn op_output_mut(op: &mut Op) -> &mut View {
    match op {
        Op::Conv(c) => &mut c.output,
        Op::ShortcutA { output, .. } | Op::AvgPool2 { output, .. } => output,
    }
}

/// One input's outcome. Results are always returned in input order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleResult {
    /// Predicted class, `0..classes`.
    pub class: usize,
    /// Gate index the sample left at; `None` when it ran through the head.
    pub exit: Option<usize>,
    /// The confidence it was decided on: the gate's (max score or max softmax),
    /// or the head's max logit.
    pub score: f32,
    /// The scores it was decided on: the head's logits, or the exiting gate's scores.
    pub logits: Vec<f32>,
}

/// Confidence and arg-max of a score vector under a rule. Ties go to the lowest index.
pub fn decide(scores: &[f32], rule: ExitRule) -> (usize, f32) {
    let mut best = 0;
    for (j, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = j;
        }
    }
    let m = scores[best];
    match rule {
        ExitRule::Hinge => (best, m),
        ExitRule::Ce => {
            let z: f32 = scores.iter().map(|&s| (s - m).exp()).sum();
            (best, 1.0 / z)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::cuda::reference::Rng;
    use crate::backend::cuda::synthetic::{bottleneck_plan, tiny_densenet, tiny_resnet};
    use crate::backend::Backend;

    #[test]
    fn padding_the_input_keeps_the_network() {
        for plan in [
            tiny_resnet(3, 10),
            tiny_densenet(4, 10, 8),
            bottleneck_plan([1, 1, 1, 1], 8, 10, 5),
        ] {
            let mut padded = plan.clone();
            assert!(padded.pad_input_channels(8), "{}", plan.arch);
            assert_eq!(padded.buffers[padded.input.buf].channels, 8);
            assert_eq!(
                padded.input, plan.input,
                "the image itself keeps its 3 channels"
            );
            let Op::Conv(stem) = &padded.stages[0].ops[0] else {
                panic!("{}: no stem conv", plan.arch)
            };
            assert_eq!(
                (stem.input.channels, stem.weight.len()),
                (8, stem.output.channels * 8 * 9)
            );
            assert_eq!(
                padded.stages.iter().map(|s| s.flops).collect::<Vec<_>>(),
                plan.stages.iter().map(|s| s.flops).collect::<Vec<_>>()
            );
            // Padding twice does nothing more.
            assert!(!padded.pad_input_channels(8));
            let n = 3;
            let images = Rng::new(11).vec(n * 3 * 32 * 32, 1.5);
            let want = CpuBackend::new().run(&plan, &images, n).unwrap();
            let got = CpuBackend::new().run(&padded, &images, n).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.class, g.exit), (w.class, w.exit), "{}", plan.arch);
                for (a, b) in g.logits.iter().zip(&w.logits) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{}: {a} vs {b}",
                        plan.arch
                    );
                }
            }
        }
    }

    /// Logits of `a` and `b` on the CPU backend agree within f32 rounding.
    fn same_outputs(a: &Plan, b: &Plan, n: usize, seed: u64) {
        let images = Rng::new(seed).vec(n * 3 * 32 * 32, 1.5);
        let want = CpuBackend::new().run(a, &images, n).unwrap();
        let got = CpuBackend::new().run(b, &images, n).unwrap();
        assert_eq!(got.len(), n);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.class, g.exit), (w.class, w.exit), "{}", a.arch);
            for (x, y) in g.logits.iter().zip(&w.logits) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{}: {x} vs {y}",
                    a.arch
                );
            }
        }
    }

    #[test]
    fn folding_the_stride_1_projection_keeps_the_network() {
        for (blocks, gated) in [([1, 1, 1, 1], false), ([3, 2, 2, 1], true)] {
            let mut plan = bottleneck_plan(blocks, 8, 10, 21);
            if gated {
                plan.gates[0].threshold = 0.0;
                plan.gates[1].threshold = 0.5;
            }
            let mut fused = plan.clone();
            assert_eq!(fused.fuse_projection_shortcuts(), 1, "{}", plan.arch);
            // Only layer1's projection: the strided ones of later stages stay.
            let count = |p: &Plan, s: usize| p.stages[s].ops.len();
            assert_eq!(count(&fused, 0) + 1, count(&plan, 0));
            for s in 1..4 {
                assert_eq!(count(&fused, s), count(&plan, s));
            }
            let Some(Op::Conv(last)) = fused.stages[0]
                .ops
                .iter()
                .find(|op| matches!(op, Op::Conv(c) if c.input.channels == 8 + 8 && c.kernel == 1))
            else {
                panic!("no folded convolution over x and h side by side")
            };
            assert_eq!(last.residual, None);
            assert_eq!(fused.buffers[last.input.buf].channels, 16);
            assert_eq!(last.weight.len(), 32 * 16);
            assert_eq!(
                fused.stages.iter().map(|s| s.flops).collect::<Vec<_>>(),
                plan.stages.iter().map(|s| s.flops).collect::<Vec<_>>()
            );
            assert_eq!(
                crate::backend::cuda::synthetic::stage_conv_flops(&fused),
                crate::backend::cuda::synthetic::stage_conv_flops(&plan),
                "the folded convolution does both convolutions' work"
            );
            // Folding again finds nothing more.
            assert_eq!(fused.clone().fuse_projection_shortcuts(), 0);
            same_outputs(&plan, &fused, 5, 31);
        }
    }

    #[test]
    fn a_projection_read_elsewhere_is_not_folded() {
        // The projection's output also feeds the next block's input: folding it would
        // lose a value still needed.
        let mut plan = bottleneck_plan([2, 1, 1, 1], 8, 10, 21);
        let ops = &mut plan.stages[0].ops;
        let sc = ops
            .iter()
            .find_map(|op| match op {
                Op::Conv(c) if c.kernel == 1 && !c.relu && c.residual.is_none() => Some(c.output),
                _ => None,
            })
            .unwrap();
        let second_block_first = ops
            .iter()
            .rposition(|op| matches!(op, Op::Conv(c) if c.kernel == 1 && c.input.channels == 32 && c.residual.is_none()))
            .unwrap();
        if let Op::Conv(c) = &mut ops[second_block_first] {
            c.input = sc;
        }
        let before = plan.clone();
        assert_eq!(plan.fuse_projection_shortcuts(), 0);
        assert_eq!(plan, before);
        // A projection with a ReLU is not a shortcut that can be summed in.
        let mut plan = bottleneck_plan([1, 1, 1, 1], 8, 10, 21);
        for op in &mut plan.stages[0].ops {
            if let Op::Conv(c) = op {
                if c.kernel == 1 && !c.relu && c.residual.is_none() {
                    c.relu = true;
                }
            }
        }
        assert_eq!(plan.fuse_projection_shortcuts(), 0);
    }

    #[test]
    fn padding_refuses_a_shared_image_buffer() {
        // The stem writes back into the image's buffer: padding would leave the
        // widened channels to whatever it writes.
        let mut plan = tiny_resnet(3, 10);
        if let Op::Conv(c) = &mut plan.stages[0].ops[0] {
            c.output.buf = plan.input.buf;
        }
        let before = plan.clone();
        assert!(!plan.pad_input_channels(8));
        assert_eq!(plan, before);
        // A buffer wider than the image is not the image's own either.
        let mut plan = tiny_resnet(3, 10);
        plan.buffers[plan.input.buf].channels = 4;
        assert!(!plan.pad_input_channels(8));
    }
}

#[cfg(test)]
mod zoo_padding {
    use crate::model::Model;

    /// The widening `Engine` applies in f16 on the GPU takes on every architecture the
    /// zoo builds (else the stem would silently stay on the general kernel).
    #[test]
    fn every_zoo_architecture_takes_the_widened_input() {
        for arch in [
            "resnet20",
            "resnet18",
            "resnet101",
            "densenet121",
            "densenet201",
        ] {
            let w = crate::zoo::random(arch, 1).unwrap();
            let mut plan = Model::from_weights(&w).unwrap().plan;
            assert!(plan.pad_input_channels(8), "{arch}");
            assert_eq!(plan.buffers[plan.input.buf].channels, 8, "{arch}");
        }
    }

    /// The loader folds ResNet-101's stride-1 projection (layer1's first block): the
    /// stage runs one convolution fewer, and its first block ends in a 1×1 convolution
    /// over the stem's 64 channels and the block's 64 side by side. Architectures
    /// without one are left alone.
    #[test]
    fn the_loader_folds_resnet101s_first_projection() {
        use crate::plan::Op;
        let model = Model::from_weights(&crate::zoo::random("resnet101", 1).unwrap()).unwrap();
        let convs = |s: usize| model.plan.stages[s].ops.len();
        // Stem + 3 blocks of 3 convolutions; the projection folded away.
        assert_eq!(convs(0), 1 + 3 * 3);
        // 4 blocks of 3 and a strided projection.
        assert_eq!(convs(1), 4 * 3 + 1);
        let folded: Vec<_> = model.plan.stages[0]
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Conv(c) if c.input.channels == 128 && c.output.channels == 256 => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(folded.len(), 1);
        assert!(folded[0].residual.is_none() && folded[0].relu);
        for arch in ["resnet20", "resnet18", "densenet121"] {
            let mut plan = Model::from_weights(&crate::zoo::random(arch, 1).unwrap())
                .unwrap()
                .plan;
            assert_eq!(plan.fuse_projection_shortcuts(), 0, "{arch}");
        }
    }
}
