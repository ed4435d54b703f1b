//! Short latency tables for `gpu-check`: a ResNet-101-shaped plan with random weights
//! per precision, conv kernel policy and batch size, without and with early exits; and
//! every distinct convolution of ResNet-101 alone, with its kernel and rate. Medians
//! timed with CUDA events, the rate next to the time.

use std::io::Write;

use super::reference::Rng;
use super::synthetic::{
    buf, conv_op, resnet_bottleneck_plan, single_op_plan, stage_conv_flops, view,
};
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
    let plan = resnet_bottleneck_plan([3, 4, 23, 3], 10, 2024);
    timing_with(report, &mut CudaBackend::new, plan, batches, iters)
}

/// [`timing`] of `plan` (two gates, after stages 0 and 1), on backends from `make`.
pub fn timing_with(
    report: &mut dyn Write,
    make: &mut dyn FnMut(Precision) -> Result<CudaBackend>,
    mut plan: crate::plan::Plan,
    batches: &[usize],
    iters: usize,
) -> Result<()> {
    if plan.gates.len() < 2 {
        return Err(Error::Config("timing needs a plan with two gates".into()));
    }
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
        "{:<6} {:<16} {:>6} {:>10} {:>10} {:>9} | {:>10} {:>8} {:>12}",
        "prec", "conv", "batch", "ms", "img/s", "TFLOP/s", "exit ms", "speedup", "exits g0/g1"
    )
    .map_err(io_err)?;
    let mut rng = Rng::new(5);
    let configs = [
        (Precision::F32, "auto"),
        (Precision::F32, "conv_simt_f32"),
        (Precision::F16, "auto"),
        (Precision::F16, "conv_tc_f16"),
        (Precision::F16, "conv_mmaasync_f16"),
    ];
    for (p, policy) in configs {
        let mut be = make(p)?;
        // conv_tc alone (no wgmma) differs from `auto` only where the wgmma tiles exist.
        if policy == "conv_tc_f16" && !be.has_conv_kernel("conv_wg128x128_f16") {
            continue;
        }
        be.set_conv_kernel(policy)?;
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
                "{:<6} {:<16} {b:>6} {ms:>10.3} {:>10.0} {:>9.2} | {exit_ms:>10.3} {:>7.2}x {:>5}/{:<5}",
                format!("{p:?}").to_lowercase(),
                policy.trim_start_matches("conv_"),
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

/// (name, C, K, H = W of the input, kernel, stride).
pub type ConvShape = (&'static str, usize, usize, usize, usize, usize);

/// Every distinct convolution of a CIFAR ResNet-101 (Bottleneck, widths 64..512 x 4).
pub const RESNET101_CONVS: &[ConvShape] = &[
    ("stem", 3, 64, 32, 3, 1),
    // As Engine runs it in f16 (Plan::pad_input_channels); FLOPs count all 8 channels.
    ("stem, 8-ch padded", 8, 64, 32, 3, 1),
    ("l1 1x1 in", 64, 64, 32, 1, 1),
    ("l1 3x3", 64, 64, 32, 3, 1),
    ("l1 1x1 out", 64, 256, 32, 1, 1),
    // The first block's, with its projection folded in (Plan::fuse_projection_shortcuts).
    ("l1 1x1 out + shortcut", 128, 256, 32, 1, 1),
    ("l1 1x1 in'", 256, 64, 32, 1, 1),
    ("l2 1x1 in (s2 block)", 256, 128, 32, 1, 1),
    ("l2 3x3 s2", 128, 128, 32, 3, 2),
    ("l2 shortcut s2", 256, 512, 32, 1, 2),
    ("l2 3x3", 128, 128, 16, 3, 1),
    ("l2 1x1 out", 128, 512, 16, 1, 1),
    ("l2 1x1 in'", 512, 128, 16, 1, 1),
    ("l3 1x1 in (s2 block)", 512, 256, 16, 1, 1),
    ("l3 3x3 s2", 256, 256, 16, 3, 2),
    ("l3 shortcut s2", 512, 1024, 16, 1, 2),
    ("l3 3x3", 256, 256, 8, 3, 1),
    ("l3 1x1 out", 256, 1024, 8, 1, 1),
    ("l3 1x1 in'", 1024, 256, 8, 1, 1),
    ("l4 1x1 in (s2 block)", 1024, 512, 8, 1, 1),
    ("l4 3x3 s2", 512, 512, 8, 3, 2),
    ("l4 shortcut s2", 1024, 2048, 8, 1, 2),
    ("l4 3x3", 512, 512, 4, 3, 1),
    ("l4 1x1 out", 512, 2048, 4, 1, 1),
    ("l4 1x1 in'", 2048, 512, 4, 1, 1),
];

/// Every distinct ResNet-101 convolution alone (bias + ReLU epilogue, random inputs in
/// [-1, 1): zeros can run faster than real data),
/// per precision at `batch`, under the `auto` policy and the previous default kernel
/// (conv_simt_f32, conv_mmaasync_f16) for comparison: the kernel (and k-splits) used,
/// median time of `iters` launches (each behind a hold of the stream, see
/// `Device::hold` in device.rs), TFLOP/s.
pub fn layer_table(
    report: &mut dyn Write,
    precisions: &[Precision],
    batch: usize,
    iters: usize,
) -> Result<()> {
    let mut make = CudaBackend::new;
    layer_table_with(report, &mut make, RESNET101_CONVS, precisions, batch, iters)
}

/// [`layer_table`] over `shapes`, on backends from `make`.
pub fn layer_table_with(
    report: &mut dyn Write,
    make: &mut dyn FnMut(Precision) -> Result<CudaBackend>,
    shapes: &[ConvShape],
    precisions: &[Precision],
    batch: usize,
    iters: usize,
) -> Result<()> {
    writeln!(
        report,
        "layers: ResNet-101 convolutions at batch {batch}, medians of {iters} launches, each queued behind a \
         {:.1}-ms hold of the stream (the GPU's time, without the host's launch call)",
        super::TIMING_HOLD_MS
    )
    .map_err(io_err)?;
    writeln!(
        report,
        "{:<6} {:<22} {:>5} {:>5} {:>3} {:>2} {:<22} {:>9} {:>8}",
        "prec", "layer", "C", "K", "HW", "s", "kernel", "us", "TFLOP/s"
    )
    .map_err(io_err)?;
    let mut rng = Rng::new(9);
    for &p in precisions {
        let baseline = match p {
            Precision::F32 => "conv_simt_f32",
            Precision::F16 => "conv_mmaasync_f16",
        };
        // Where the wgmma tiles exist, conv_tc alone beside `auto` (mma.sync against
        // wgmma), and conv_tma alone (each layer's TMA time, where tuning did not pick it).
        let (tc_only, tma_only) = if p == Precision::F16 {
            ("conv_tc_f16", "conv_tma_f16")
        } else {
            ("", "")
        };
        for policy in ["auto", tc_only, tma_only, baseline] {
            if policy.is_empty() {
                continue;
            }
            let mut be = make(p)?;
            if policy == tc_only && !be.has_conv_kernel("conv_wg128x128_f16")
                || policy == tma_only && !be.has_conv_kernel("conv_tma128x128_f16")
            {
                continue;
            }
            be.set_conv_kernel(policy)?;
            let mut total_ms = 0.0;
            for &(name, c, k, hw, r, stride) in shapes {
                let out_hw = (hw + 2 * (r / 2) - r) / stride + 1;
                let op = conv_op(
                    &mut rng,
                    view(2, 0, c),
                    view(1, 0, k),
                    hw,
                    r,
                    stride,
                    None,
                    None,
                    true,
                );
                let plan = single_op_plan(vec![buf(k, out_hw, out_hw), buf(c, hw, hw)], op);
                be.op_test_prepare(&plan, batch)?;
                let input: Vec<f32> = (0..batch * c * hw * hw).map(|_| rng.uniform()).collect();
                be.op_test_write(&plan, 2, &input, batch)?;
                let ms = be.op_test_time_stage(&plan, 0, batch, iters)?;
                let kernel = be
                    .op_test_conv_kernel(&plan, 0, 0, batch)
                    .unwrap_or_default();
                let flops = 2.0 * (batch * out_hw * out_hw * k * c * r * r) as f64;
                total_ms += ms;
                writeln!(
                    report,
                    "{:<6} {name:<22} {c:>5} {k:>5} {hw:>3} {stride:>2} {:<22} {:>9.1} {:>8.2}",
                    format!("{p:?}").to_lowercase(),
                    kernel.trim_start_matches("conv_"),
                    ms * 1e3,
                    flops / ms / 1e9
                )
                .map_err(io_err)?;
            }
            writeln!(
                report,
                "{:<6} sum of one of each ({policy}): {:.3} ms",
                format!("{p:?}").to_lowercase(),
                total_ms
            )
            .map_err(io_err)?;
        }
    }
    Ok(())
}
