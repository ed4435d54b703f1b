//! A model's description: architecture, stages with their output shapes and FLOPs, and
//! gates, as one serialisable value ([`Model::describe`]).
//!
//! ```
//! let mut w = dgate_rt::zoo::random("resnet20", 0)?;
//! dgate_rt::zoo::add_random_gates(&mut w, &[1, 2], 0)?;
//! let d = dgate_rt::model::Model::from_weights(&w)?.describe();
//! assert_eq!(d.stages.len(), 3);
//! assert_eq!(d.gates[0].after_stage, 0); // the first gate reads stage 0's output
//! println!("{}", serde_json::to_string_pretty(&d).expect("serialisable"));
//! # Ok::<(), dgate_rt::Error>(())
//! ```
#![warn(missing_docs)]

use serde::{Serialize, Serializer};

use crate::model::{Model, Normalize};
use crate::plan::ExitRule;

/// What a model is and what it costs. Indices are 0-based, as in
/// [`SampleResult::exit`](crate::plan::SampleResult::exit) and
/// [`Gate::after_stage`](crate::plan::Gate::after_stage). FLOPs are counted as PyTorch hooks
/// count them: 2 × multiply-accumulates of convolutions and linear layers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Description {
    /// Where the weights came from.
    pub file: String,
    /// Human-readable architecture.
    pub arch: String,
    /// Number of output classes.
    pub classes: usize,
    /// Backbone parameters (gates excluded), as PyTorch counts them.
    pub params: u64,
    /// The input normalisation the model expects.
    pub normalize: Normalize,
    /// The stages in network order.
    pub stages: Vec<StageInfo>,
    /// The gates in network order.
    pub gates: Vec<GateInfo>,
    /// GFLOPs of the classifier head.
    pub head_gflops: f64,
    /// GFLOPs of one pass through all stages and the head, no gates.
    pub total_gflops: f64,
}

/// One stage of the backbone.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageInfo {
    /// E.g. `layer1` or `dense1+trans1`.
    pub name: String,
    /// Per-sample output shape: `[channels, height, width]`.
    pub output: [usize; 3],
    /// GFLOPs of this stage per sample.
    pub gflops: f64,
    /// GFLOPs of all stages up to and including this one.
    pub cumulative_gflops: f64,
    /// Parameters of this stage.
    pub params: u64,
}

/// One decision gate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateInfo {
    /// Index of the stage whose output the gate reads.
    pub after_stage: usize,
    /// Number of pooled features it scores (the stage's channels).
    pub features: usize,
    /// Current threshold; serialised as a number, or `"inf"` / `"-inf"`.
    #[serde(serialize_with = "finite_or_string")]
    pub threshold: f32,
    /// How its scores become a confidence.
    pub rule: ExitRule,
    /// GFLOPs spent on a sample that exits here, earlier gates included.
    pub gflops_if_exit: f64,
}

/// JSON has no infinity; write `inf`/`-inf` as strings, as the CLI does.
fn finite_or_string<S: Serializer>(x: &f32, s: S) -> Result<S::Ok, S::Error> {
    if x.is_finite() {
        s.serialize_f32(*x)
    } else {
        s.serialize_str(&x.to_string())
    }
}

fn gflops(f: u64) -> f64 {
    f as f64 / 1e9
}

impl Model {
    /// Describes the model: architecture, per-stage shapes and FLOPs, gates. Cheap; the
    /// result reflects the thresholds set at the time of the call.
    pub fn describe(&self) -> Description {
        let plan = &self.plan;
        let mut cumulative = 0u64;
        let stages = plan
            .stages
            .iter()
            .map(|s| {
                cumulative += s.flops;
                StageInfo {
                    name: s.name.clone(),
                    output: [s.output.channels, s.out_h, s.out_w],
                    gflops: gflops(s.flops),
                    cumulative_gflops: gflops(cumulative),
                    params: s.params,
                }
            })
            .collect();
        let gates = plan
            .gates
            .iter()
            .enumerate()
            .map(|(k, g)| GateInfo {
                after_stage: g.after_stage,
                features: g.input.channels,
                threshold: g.threshold,
                rule: g.rule,
                gflops_if_exit: gflops(plan.flops_for_exit(Some(k))),
            })
            .collect();
        Description {
            file: self.file.clone(),
            arch: plan.arch.clone(),
            classes: plan.classes,
            params: self.params,
            normalize: self.normalize,
            stages,
            gates,
            head_gflops: gflops(plan.head_flops()),
            total_gflops: gflops(plan.backbone_flops()),
        }
    }
}
