//! The engine: a loaded [`Model`] on a chosen backend, reused across batches.
//!
//! An [`Engine`] owns its backend's state: activation buffers sized for the largest batch
//! seen so far, repacked weights and, on CUDA, compiled kernels. Creating one is the
//! expensive step; keep it and call [`Engine::run`] or [`Engine::run_u8`] once per batch.
//!
//! # Threads
//!
//! An engine is [`Send`] but not [`Sync`]: running mutates its buffers, so it needs
//! `&mut self`. Use **one engine per thread**, or wrap a shared one in a
//! [`std::sync::Mutex`]. Moving an engine to another thread is fine.
//!
//! ```
//! use dgate_rt::{backend::Precision, engine::{BackendChoice, Engine}, model::Model};
//!
//! let model = Model::from_weights(&dgate_rt::zoo::random("resnet20", 0)?)?;
//! let mut engine = Engine::new(model, BackendChoice::Cpu, Precision::F32)?;
//! let pixels = vec![128u8; 2 * dgate_rt::data::IMAGE]; // two grey CIFAR-style images
//! let results = std::thread::spawn(move || engine.run_u8(&pixels, 2))
//!     .join()
//!     .expect("worker thread")?;
//! assert_eq!(results.len(), 2);
//! # Ok::<(), dgate_rt::Error>(())
//! ```

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Precision};
use crate::data::{normalize_u8, IMAGE};
use crate::model::Model;
use crate::plan::SampleResult;
use crate::{Error, Result};

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a driver, NVRTC and a GPU are present, else the CPU; the reason for a
    /// fallback is kept in [`Engine::fallback_notice`].
    Auto,
    /// The CPU reference backend (f32 only).
    Cpu,
    /// The CUDA backend; an error ([`Error::CudaUnavailable`]) when it cannot start.
    Cuda,
}

impl BackendChoice {
    /// Parses `auto`, `cpu` or `cuda`; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(BackendChoice::Auto),
            "cpu" => Some(BackendChoice::Cpu),
            "cuda" => Some(BackendChoice::Cuda),
            _ => None,
        }
    }
}

/// A model on a backend, ready to classify batches. See the [module docs](self) for
/// threading.
pub struct Engine {
    /// The loaded model; its plan carries the current gate thresholds. On the GPU in
    /// f16 its image buffer and stem read 8 channels, the last 5 zero (see
    /// [`crate::plan::Plan::pad_input_channels`]).
    pub model: Model,
    backend: Box<dyn Backend>,
    /// Set when `Auto` fell back to the CPU: why.
    pub fallback_notice: Option<String>,
}

impl Engine {
    /// Puts `model` on a backend. Fails with [`Error::Config`] for f16 on the CPU and
    /// with [`Error::CudaUnavailable`] when `Cuda` is asked for and cannot start; `Auto`
    /// never fails for want of a GPU.
    pub fn new(mut model: Model, choice: BackendChoice, precision: Precision) -> Result<Engine> {
        let (backend, fallback_notice): (Box<dyn Backend>, _) = match choice {
            BackendChoice::Cpu => {
                if precision != Precision::F32 {
                    return Err(Error::Config(
                        "the CPU backend computes in f32 only; use --precision f32".into(),
                    ));
                }
                (Box::new(CpuBackend::new()), None)
            }
            BackendChoice::Cuda => (Box::new(CudaBackend::new(precision)?), None),
            BackendChoice::Auto => match CudaBackend::new(precision) {
                Ok(b) => (Box::new(b), None),
                Err(e) => (
                    Box::new(CpuBackend::new()),
                    Some(format!("{e}; running on the CPU")),
                ),
            },
        };
        // On the GPU in f16 the image buffer is widened to 8 channels (zeros; the stem's
        // weights get zero taps for them), so that the stem runs on the aligned
        // tensor-core kernels: the same network, see `Plan::pad_input_channels`.
        if fallback_notice.is_none() && choice != BackendChoice::Cpu && precision == Precision::F16
        {
            model.plan.pad_input_channels(8);
        }
        Ok(Engine {
            model,
            backend,
            fallback_notice,
        })
    }

    /// The backend actually in use, e.g. `cpu (2 threads)`.
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Number of classes the model predicts (length of each result's logits when it
    /// runs through the head).
    pub fn num_classes(&self) -> usize {
        self.model.plan.classes
    }

    /// Number of decision gates, in network order; results' [`SampleResult::exit`]
    /// indexes them from 0.
    pub fn num_gates(&self) -> usize {
        self.model.plan.gates.len()
    }

    /// The current threshold of each gate.
    pub fn thresholds(&self) -> Vec<f32> {
        self.model.plan.gates.iter().map(|g| g.threshold).collect()
    }

    /// Sets one threshold per gate (`inf`: never exit, `-inf`: always exit). A sample
    /// leaves at the first gate whose confidence is at least its threshold. Fails with
    /// [`Error::Config`] on a wrong count or a NaN, leaving the thresholds unchanged.
    pub fn set_thresholds(&mut self, t: &[f32]) -> Result<()> {
        if t.iter().any(|v| v.is_nan()) {
            return Err(Error::Config("a threshold is NaN".into()));
        }
        self.model.plan.set_thresholds(t)
    }

    /// Runs `n` normalised images: `images` is `n × 3 × 32 × 32` f32 in NCHW order,
    /// RGB, normalised as [`Model::normalize`] says (see [`normalize_u8`]).
    ///
    /// Returns exactly `n` results, result `i` for image `i`, whichever gate each left at.
    /// `n = 0` returns an empty vector. A wrong `images` length is [`Error::Input`].
    pub fn run(&mut self, images: &[f32], n: usize) -> Result<Vec<SampleResult>> {
        if n.checked_mul(IMAGE) != Some(images.len()) {
            return Err(Error::Input(format!(
                "expected {n} images of 3×32×32 floats, got {} floats",
                images.len()
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        self.backend.run(&self.model.plan, images, n)
    }

    /// Median device-only time in ms of `iters` passes over `images` (no host transfers),
    /// where the backend can measure it (CUDA: events around CUDA-graph replays); `None`
    /// on the CPU.
    pub fn device_time_ms(
        &mut self,
        images: &[f32],
        n: usize,
        iters: usize,
    ) -> Result<Option<f64>> {
        self.backend
            .device_time_ms(&self.model.plan, images, n, iters)
    }

    /// Turns the convolutions' weight prefetch into L2 on or off (see
    /// [`Backend::set_weight_prefetch`]): `false` where the backend has none.
    pub fn set_weight_prefetch(&mut self, on: bool) -> bool {
        self.backend.set_weight_prefetch(on)
    }

    /// One pass over `images` timed step by step (every op, gate and the head, with
    /// FLOPs and bytes), where the backend can (CUDA); `None` on the CPU.
    pub fn profile(&mut self, images: &[f32], n: usize) -> Result<Option<crate::backend::Profile>> {
        crate::backend::check_batch(images, n)?;
        self.backend.profile(&self.model.plan, images, n)
    }

    /// Runs `n` raw CIFAR-style images: `pixels` is `n × 3 × 32 × 32` bytes, each image
    /// its red, green and blue 32×32 planes, row-major (the CIFAR-10 binary layout less
    /// the label byte). The model's normalisation is applied; otherwise as [`Engine::run`].
    pub fn run_u8(&mut self, pixels: &[u8], n: usize) -> Result<Vec<SampleResult>> {
        if n.checked_mul(IMAGE) != Some(pixels.len()) {
            return Err(Error::Input(format!(
                "expected {n} images of {IMAGE} bytes, got {} bytes",
                pixels.len()
            )));
        }
        let x = normalize_u8(pixels, &self.model.normalize);
        self.run(&x, n)
    }
}

/// What a run amounted to: accuracy, exits, FLOPs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// Number of inputs.
    pub images: usize,
    /// Correct predictions, when labels are known.
    pub correct: Option<usize>,
    /// Percent, when labels are known.
    pub accuracy_pct: Option<f64>,
    /// Fraction of inputs that left at each gate.
    pub exit_fraction: Vec<f64>,
    /// Fraction that ran through the head.
    pub head_fraction: f64,
    /// Mean GFLOPs spent per input, gates included.
    pub avg_gflops: f64,
    /// GFLOPs of one pass through the whole backbone without gates.
    pub full_gflops: f64,
}

impl Summary {
    /// Summarises `results` (one per input, as [`Engine::run`] returns them) of `plan`;
    /// `labels`, when given, are the true classes in input order.
    pub fn new(
        plan: &crate::plan::Plan,
        results: &[SampleResult],
        labels: Option<&[u8]>,
    ) -> Summary {
        let n = results.len().max(1) as f64;
        let mut exits = vec![0usize; plan.gates.len()];
        let mut flops = 0f64;
        for r in results {
            if let Some(g) = r.exit {
                exits[g] += 1;
            }
            flops += plan.flops_for_exit(r.exit) as f64;
        }
        let correct = labels.map(|l| {
            results
                .iter()
                .zip(l)
                .filter(|(r, &y)| r.class == y as usize)
                .count()
        });
        let head = results.iter().filter(|r| r.exit.is_none()).count();
        Summary {
            images: results.len(),
            correct,
            accuracy_pct: correct.map(|c| 100.0 * c as f64 / n),
            exit_fraction: exits.iter().map(|&e| e as f64 / n).collect(),
            head_fraction: head as f64 / n,
            avg_gflops: flops / n / 1e9,
            full_gflops: plan.backbone_flops() as f64 / 1e9,
        }
    }
}
