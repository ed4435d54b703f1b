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
}
