//! Backends execute a [`Plan`] on a batch and return one result per input, in input
//! order. The CPU backend is the reference; the CUDA backend must agree with it.

pub mod cpu;
pub mod cuda;

use crate::plan::{Plan, SampleResult};
use crate::Result;

/// Numeric precision of activations and weights (accumulation is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Precision::F32),
            "f16" => Some(Precision::F16),
            _ => None,
        }
    }
}

/// One step of a profiled pass (see [`Backend::profile`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpTime {
    /// The step's shape, e.g. `conv 3x3 256->256 8x8 +res`; equal shapes, equal labels.
    pub op: String,
    /// The kernel that ran it (with `/k` for k-way split-K).
    pub kernel: String,
    /// Samples it ran on (fewer than the batch after a gate).
    pub samples: usize,
    pub ms: f64,
    /// Floating-point operations (0 for data movement).
    pub flops: f64,
    /// Bytes it has to read and write at least.
    pub bytes: f64,
}

/// One pass timed step by step (see [`Backend::profile`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    pub steps: Vec<OpTime>,
    /// Host milliseconds spent launching the steps (and recording their events).
    pub launch_ms: f64,
    /// How long the stream was held busy before the first step (0: not held).
    pub hold_ms: f64,
    /// The host launched every step within the hold, so the GPU ran them back to back
    /// and no host launch time is in the step times (as in a CUDA graph's replay).
    pub back_to_back: bool,
}

pub trait Backend: Send {
    /// Short human-readable name, e.g. `cpu (2 threads)` or `cuda (NVIDIA H200, sm_90, f16)`.
    fn name(&self) -> String;

    /// Run `n` images (`n × 3 × 32 × 32` floats, normalised, NCHW) through `plan`,
    /// exiting samples at gates per their thresholds. Returns `n` results in input order.
    fn run(&mut self, plan: &Plan, images: &[f32], n: usize) -> Result<Vec<SampleResult>>;

    /// Median device time in ms of `iters` forward passes over `images`, without host
    /// transfers (timed with device events), for backends that can measure it.
    fn device_time_ms(
        &mut self,
        _plan: &Plan,
        _images: &[f32],
        _n: usize,
        _iters: usize,
    ) -> Result<Option<f64>> {
        Ok(None)
    }

    /// Convolutions ask their weights into the GPU's L2 cache before they wait for the
    /// previous kernel (`DGATE_PREFETCH=1` sets it at start). A hint that changes no
    /// result. `false` for a backend without one (nothing changed).
    fn set_weight_prefetch(&mut self, _on: bool) -> bool {
        false
    }

    /// One pass over `images` timed step by step (each op, gate and the head), for
    /// backends that can: `None` elsewhere.
    fn profile(&mut self, _plan: &Plan, _images: &[f32], _n: usize) -> Result<Option<Profile>> {
        Ok(None)
    }
}

/// Checks the common preconditions of [`Backend::run`].
pub fn check_batch(images: &[f32], n: usize) -> Result<()> {
    let per = 3 * 32 * 32;
    if images.len() != n * per {
        return Err(crate::Error::Input(format!(
            "expected {n} images of 3×32×32 = {} floats, got {}",
            n * per,
            images.len()
        )));
    }
    Ok(())
}
