//! A short latency table for `gpu-check`: a ResNet-101-shaped plan with random
//! weights, f32 and f16, several batch sizes, without and with early exits. Medians of
//! CUDA-graph replays timed with CUDA events, with the rate next to the time.

use std::io::Write;

use super::reference::Rng;
use super::synthetic::{resnet_bottleneck_plan, stage_conv_flops};
use super::CudaBackend;
use crate::backend::{Backend, Precision};
use crate::{Error, Result};

fn io_err(e: std::io::Error) -> Error {
    Error::io("timing report", e)
}

fn random_images(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n * 3 * 32 * 32, 1.5)
}

fn quantile_from_top(mut v: Vec<f32>, frac: f32) -> f32 {
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(|a, b| b.total_cmp(a));
    let i = ((frac * v.len() as f32) as usize).min(v.len() - 1);
    if i == 0 {
        v[0]
    } else {
        0.5 * (v[i - 1] + v[i])
    }
}

/// Latency of a ResNet-101-shaped plan (random weights) per batch and precision, with
/// no exits and with thresholds set on the GPU's own scores for ~50% / ~30% exits at
/// the two gates. Medians of `iters` graph replays, timed with CUDA events.
pub fn timing(report: &mut dyn Write, batches: &[usize], iters: usize) -> Result<()> {
    let mut plan = resnet_bottleneck_plan([3, 4, 23, 3], 10, 2024);
    let sf = stage_conv_flops(&plan);
    let full: f64 = sf.iter().sum();
    writeln!(
        report,
        "timing: {} ({:.2} GFLOPs/sample), medians of {iters} CUDA-graph replays",
        plan.arch,
        full / 1e9
    )
    .map_err(io_err)?;
    writeln!(
        report,
        "{:<6} {:>6} {:>10} {:>10} {:>9} | {:>10} {:>8} {:>12}",
        "prec", "batch", "ms", "img/s", "TFLOP/s", "exit ms", "speedup", "exits g0/g1"
    )
    .map_err(io_err)?;
    let mut rng = Rng::new(5);
    for p in [Precision::F32, Precision::F16] {
        let mut be = CudaBackend::new(p)?;
        for &b in batches {
            let images = random_images(&mut rng, b);
            for g in &mut plan.gates {
                g.threshold = f32::INFINITY;
            }
            let ms = be.time_passes(&plan, &images, b, iters)?;
            // Thresholds from the GPU's own confidences: everything leaves at gate 0,
            // take the median; then everything left leaves at gate 1, take 60%.
            plan.gates[0].threshold = f32::NEG_INFINITY;
            let r0 = be.run(&plan, &images, b)?;
            plan.gates[0].threshold = quantile_from_top(r0.iter().map(|r| r.score).collect(), 0.5);
            plan.gates[1].threshold = f32::NEG_INFINITY;
            let r1 = be.run(&plan, &images, b)?;
            let at1: Vec<f32> = r1
                .iter()
                .filter(|r| r.exit == Some(1))
                .map(|r| r.score)
                .collect();
            plan.gates[1].threshold = quantile_from_top(at1, 0.6);
            let r = be.run(&plan, &images, b)?;
            let e0 = r.iter().filter(|r| r.exit == Some(0)).count();
            let e1 = r.iter().filter(|r| r.exit == Some(1)).count();
            let exit_ms = be.time_passes(&plan, &images, b, iters)?;
            writeln!(
                report,
                "{:<6} {b:>6} {ms:>10.3} {:>10.0} {:>9.2} | {exit_ms:>10.3} {:>7.2}x {:>5}/{:<5}",
                format!("{p:?}").to_lowercase(),
                b as f64 / ms * 1e3,
                full * b as f64 / ms / 1e9,
                ms / exit_ms,
                e0,
                e1
            )
            .map_err(io_err)?;
        }
    }
    Ok(())
}
