//! The engine: a loaded model on a chosen backend, reused across batches.

use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, Backend, Precision};
use crate::data::{normalize_u8, IMAGE};
use crate::model::Model;
use crate::plan::SampleResult;
use crate::{Error, Result};

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// CUDA when a driver, NVRTC and a GPU are present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

impl BackendChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(BackendChoice::Auto),
            "cpu" => Some(BackendChoice::Cpu),
            "cuda" => Some(BackendChoice::Cuda),
            _ => None,
        }
    }
}

pub struct Engine {
    pub model: Model,
    backend: Box<dyn Backend>,
    /// Set when `Auto` fell back to the CPU: why.
    pub fallback_notice: Option<String>,
}

impl Engine {
    pub fn new(model: Model, choice: BackendChoice, precision: Precision) -> Result<Engine> {
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
        Ok(Engine {
            model,
            backend,
            fallback_notice,
        })
    }

    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Sets one threshold per gate (`inf`: never exit, `-inf`: always exit).
    pub fn set_thresholds(&mut self, t: &[f32]) -> Result<()> {
        self.model.plan.set_thresholds(t)
    }

    /// Runs normalised `n × 3 × 32 × 32` f32 images; one result per input, in order.
    pub fn run(&mut self, images: &[f32], n: usize) -> Result<Vec<SampleResult>> {
        self.backend.run(&self.model.plan, images, n)
    }

    /// Runs raw CIFAR-style `n × 3 × 32 × 32` u8 planes with the model's normalisation.
    pub fn run_u8(&mut self, pixels: &[u8], n: usize) -> Result<Vec<SampleResult>> {
        if pixels.len() != n * IMAGE {
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
    pub images: usize,
    /// Correct predictions, when labels are known.
    pub correct: Option<usize>,
    /// Percent, when labels are known.
    pub accuracy_pct: Option<f64>,
    /// Fraction of inputs that left at each gate.
    pub exit_fraction: Vec<f64>,
    /// Fraction that ran through the head.
    pub head_fraction: f64,
    pub avg_gflops: f64,
    pub full_gflops: f64,
}

impl Summary {
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
