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

pub type BufId = usize;

/// Per-sample shape of an activation buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

/// A window of channels `[offset, offset + channels)` of a buffer. DenseNet blocks
/// use windows of one block buffer so that concatenation needs no copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub buf: BufId,
    pub offset: usize,
    pub channels: usize,
}

/// Per-input-channel `y = x * scale + shift`, then ReLU if `relu`, applied to an
/// op's input as it is read (DenseNet's pre-activation BN-ReLU, which cannot be
/// folded into the preceding convolution because each consumer has its own BN).
/// Zero padding of a convolution is applied after this transform, as in PyTorch.
#[derive(Clone, Debug, PartialEq)]
pub struct PreAct {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub relu: bool,
}

/// `output = act(conv(pre(input)) + bias + residual)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub input: View,
    pub output: View,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// `[output.channels][input.channels][kernel][kernel]`, batch norm folded in.
    pub weight: Vec<f32>,
    /// `[output.channels]`.
    pub bias: Vec<f32>,
    pub pre: Option<PreAct>,
    /// Same shape as the output; added before the ReLU.
    pub residual: Option<View>,
    pub relu: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(Conv),
    /// He et al.'s option-A shortcut: `out[c + pad_before][y][x] = in[c][s·y][s·x]`,
    /// every other output channel zero. `output.channels = input.channels + 2·pad_before`.
    ShortcutA {
        input: View,
        output: View,
        in_h: usize,
        in_w: usize,
        stride: usize,
        pad_before: usize,
    },
    /// 2×2 average pool, stride 2, of `pre(input)`.
    AvgPool2 {
        input: View,
        output: View,
        in_h: usize,
        in_w: usize,
        pre: Option<PreAct>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    pub name: String,
    pub ops: Vec<Op>,
    /// What the next stage (and a gate placed here) reads.
    pub output: View,
    pub out_h: usize,
    pub out_w: usize,
    /// FLOPs of this stage per sample, counted as PyTorch hooks count the model's
    /// definition (2 × MACs of convs), not as the plan happens to execute it.
    pub flops: u64,
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
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hinge" => Some(ExitRule::Hinge),
            "ce" => Some(ExitRule::Ce),
            _ => None,
        }
    }
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
    pub after_stage: usize,
    pub input: View,
    pub h: usize,
    pub w: usize,
    /// `[classes][input.channels]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub threshold: f32,
    pub rule: ExitRule,
}

impl Gate {
    pub fn flops(&self) -> u64 {
        2 * self.weight.len() as u64
    }
}

/// Classifier: `pre` (optional), global average pool, linear.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub input: View,
    pub h: usize,
    pub w: usize,
    pub pre: Option<PreAct>,
    /// `[classes][input.channels]`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub arch: String,
    pub classes: usize,
    pub buffers: Vec<Buffer>,
    /// Receives the normalised `3 × 32 × 32` image.
    pub input: View,
    pub stages: Vec<Stage>,
    /// In network order; at most one gate per stage, never after the last stage.
    pub gates: Vec<Gate>,
    pub head: Head,
}

impl Plan {
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

    /// The gate placed after `stage`, if any.
    pub fn gate_after(&self, stage: usize) -> Option<usize> {
        self.gates.iter().position(|g| g.after_stage == stage)
    }

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
