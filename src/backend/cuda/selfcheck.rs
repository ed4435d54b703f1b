//! Self-check of the CUDA backend against a straightforward CPU reference, and a
//! short latency table. Runs where there is no Rust toolchain (the GPU machine runs the
//! release binary's `gpu-check`), so it lives in the library.
//!
//! - Every op on seeded random inputs over a table of awkward shapes (7×7, 3 channels,
//!   channel counts not multiples of 8 or 32, stride 2, channel windows inside wider
//!   buffers, batch 1 and 3): normalised max error `max|gpu − ref| / max|ref|` against
//!   1e-4 (f32) or 1e-2 (f16), then the same case with small-integer inputs, where f16
//!   storage with f32 accumulation must be exact. The whole output buffer is compared,
//!   so a write outside the op's channel window is caught.
//! - Whole passes (gates, compaction, head) of a small option-A ResNet and a small
//!   DenseNet, thresholds placed in gaps of the reference's confidences so that about
//!   half the samples leave at each gate: classes and exits must match exactly, scores
//!   and logits within the tolerance.
//! - Timing: a ResNet-101-shaped plan with random weights, batch 1/64/256, f32/f16.
//!
//! The reference here is deliberately naive (NCHW loops) and independent of the
//! library's CPU backend.

use std::io::Write;

use super::CudaBackend;
use crate::backend::{Backend, Precision};
use crate::plan::{
    decide, Buffer, Conv, ExitRule, Gate, Head, Op, Plan, PreAct, SampleResult, Stage, View,
};
use crate::{Error, Result};

// ---------------------------------------------------------------- random numbers

/// SplitMix64: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// Integer in [lo, hi].
    pub fn int(&mut self, lo: i32, hi: i32) -> f32 {
        (lo + (self.next_u64() % (hi - lo + 1) as u64) as i32) as f32
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
    pub fn ints(&mut self, n: usize, lo: i32, hi: i32) -> Vec<f32> {
        (0..n).map(|_| self.int(lo, hi)).collect()
    }
}

// ---------------------------------------------------------------- reference

/// Buffers of the reference: per plan buffer, `n × channels × h × w` (NCHW).
type RefBufs = Vec<Vec<f32>>;

fn ref_alloc(plan: &Plan, n: usize) -> RefBufs {
    plan.buffers
        .iter()
        .map(|b| vec![0.0; n * b.channels * b.h * b.w])
        .collect()
}

fn pre_apply(pre: &Option<PreAct>, c: usize, v: f32) -> f32 {
    match pre {
        Some(p) => {
            let y = v * p.scale[c] + p.shift[c];
            if p.relu {
                y.max(0.0)
            } else {
                y
            }
        }
        None => v,
    }
}

/// Reads channel `c` of view `v`, sample `s`, pixel `i`.
fn at(plan: &Plan, bufs: &RefBufs, v: &View, s: usize, c: usize, i: usize) -> f32 {
    let b = &plan.buffers[v.buf];
    bufs[v.buf][(s * b.channels + v.offset + c) * b.h * b.w + i]
}

fn ref_op(plan: &Plan, op: &Op, bufs: &mut RefBufs, n: usize) {
    match op {
        Op::Conv(c) => {
            let (ci, k, r) = (c.input.channels, c.output.channels, c.kernel);
            let mut out = vec![0.0f32; n * k * c.out_h * c.out_w];
            let mut x = vec![0.0f32; ci * c.in_h * c.in_w];
            for s in 0..n {
                for ch in 0..ci {
                    for i in 0..c.in_h * c.in_w {
                        x[ch * c.in_h * c.in_w + i] =
                            pre_apply(&c.pre, ch, at(plan, bufs, &c.input, s, ch, i));
                    }
                }
                for o in 0..k {
                    for y in 0..c.out_h {
                        for xo in 0..c.out_w {
                            let mut acc = 0.0f64;
                            for ch in 0..ci {
                                for dy in 0..r {
                                    let iy = (y * c.stride + dy) as isize - c.pad as isize;
                                    if iy < 0 || iy >= c.in_h as isize {
                                        continue;
                                    }
                                    for dx in 0..r {
                                        let ix = (xo * c.stride + dx) as isize - c.pad as isize;
                                        if ix < 0 || ix >= c.in_w as isize {
                                            continue;
                                        }
                                        let wv = c.weight[((o * ci + ch) * r + dy) * r + dx];
                                        let xv = x[ch * c.in_h * c.in_w
                                            + iy as usize * c.in_w
                                            + ix as usize];
                                        acc += wv as f64 * xv as f64;
                                    }
                                }
                            }
                            let i = y * c.out_w + xo;
                            let mut v = acc as f32 + c.bias[o];
                            if let Some(res) = &c.residual {
                                v += at(plan, bufs, res, s, o, i);
                            }
                            if c.relu {
                                v = v.max(0.0);
                            }
                            out[(s * k + o) * c.out_h * c.out_w + i] = v;
                        }
                    }
                }
            }
            write_view(plan, bufs, &c.output, &out, n);
        }
        Op::ShortcutA {
            input,
            output,
            in_h,
            in_w,
            stride,
            pad_before,
        } => {
            let (oh, ow) = (in_h.div_ceil(*stride), in_w.div_ceil(*stride));
            let k = output.channels;
            let mut out = vec![0.0f32; n * k * oh * ow];
            for s in 0..n {
                for o in 0..k {
                    let Some(c) = o.checked_sub(*pad_before).filter(|&c| c < input.channels) else {
                        continue;
                    };
                    for y in 0..oh {
                        for x in 0..ow {
                            out[((s * k + o) * oh + y) * ow + x] =
                                at(plan, bufs, input, s, c, y * stride * in_w + x * stride);
                        }
                    }
                }
            }
            write_view(plan, bufs, output, &out, n);
        }
        Op::AvgPool2 {
            input,
            output,
            in_h,
            in_w,
            pre,
        } => {
            let (oh, ow) = (in_h / 2, in_w / 2);
            let k = input.channels;
            let mut out = vec![0.0f32; n * k * oh * ow];
            for s in 0..n {
                for c in 0..k {
                    for y in 0..oh {
                        for x in 0..ow {
                            let mut sum = 0.0;
                            for dy in 0..2 {
                                for dx in 0..2 {
                                    let i = (2 * y + dy) * in_w + 2 * x + dx;
                                    sum += pre_apply(pre, c, at(plan, bufs, input, s, c, i));
                                }
                            }
                            out[((s * k + c) * oh + y) * ow + x] = sum * 0.25;
                        }
                    }
                }
            }
            write_view(plan, bufs, output, &out, n);
        }
    }
}

/// Writes dense `n × v.channels × h × w` values into view `v`.
fn write_view(plan: &Plan, bufs: &mut RefBufs, v: &View, dense: &[f32], n: usize) {
    let b = &plan.buffers[v.buf];
    let hw = b.h * b.w;
    for s in 0..n {
        for c in 0..v.channels {
            let src = (s * v.channels + c) * hw;
            let dst = (s * b.channels + v.offset + c) * hw;
            bufs[v.buf][dst..dst + hw].copy_from_slice(&dense[src..src + hw]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ref_gap_linear(
    plan: &Plan,
    bufs: &RefBufs,
    input: &View,
    hw: usize,
    pre: &Option<PreAct>,
    weight: &[f32],
    bias: &[f32],
    s: usize,
) -> Vec<f32> {
    let c = input.channels;
    let feat: Vec<f64> = (0..c)
        .map(|ch| {
            (0..hw)
                .map(|i| pre_apply(pre, ch, at(plan, bufs, input, s, ch, i)) as f64)
                .sum::<f64>()
                / hw as f64
        })
        .collect();
    (0..plan.classes)
        .map(|j| {
            let dot: f64 = (0..c).map(|ch| weight[j * c + ch] as f64 * feat[ch]).sum();
            (dot + bias[j] as f64) as f32
        })
        .collect()
}

/// Reference pass. With `calibrate = Some(fractions)`, gate `g`'s threshold is placed
/// in the widest gap between the confidences of the samples reaching it, near the
/// `fractions[g]` quantile from the top; the chosen thresholds are written to `plan`.
/// Returns the results and, per gate, the distance from the threshold to the nearest
/// confidence (the margin a GPU decision may err by without flipping).
pub fn ref_run(
    plan: &mut Plan,
    images: &[f32],
    n: usize,
    calibrate: Option<&[f32]>,
) -> (Vec<SampleResult>, Vec<f32>) {
    let mut bufs = ref_alloc(plan, n);
    let dense: Vec<f32> = images.to_vec();
    let input = plan.input;
    write_view(plan, &mut bufs, &input, &dense, n);
    let mut results: Vec<Option<SampleResult>> = vec![None; n];
    let mut margins = vec![f32::INFINITY; plan.gates.len()];
    for si in 0..plan.stages.len() {
        for op in plan.stages[si].ops.clone() {
            ref_op(plan, &op, &mut bufs, n);
        }
        let Some(g) = plan.gate_after(si) else {
            continue;
        };
        let gate = plan.gates[g].clone();
        let mut decided = Vec::new();
        for (s, r) in results.iter().enumerate() {
            if r.is_none() {
                let scores = ref_gap_linear(
                    plan,
                    &bufs,
                    &gate.input,
                    gate.h * gate.w,
                    &None,
                    &gate.weight,
                    &gate.bias,
                    s,
                );
                let (class, conf) = decide(&scores, gate.rule);
                decided.push((s, class, conf, scores));
            }
        }
        if let Some(fr) = calibrate {
            let mut confs: Vec<f32> = decided.iter().map(|d| d.2).collect();
            confs.sort_by(|a, b| b.total_cmp(a));
            let t = if confs.len() < 2 {
                f32::INFINITY
            } else {
                let want = ((fr.get(g).copied().unwrap_or(0.5)) * confs.len() as f32) as usize;
                let lo = want.saturating_sub(confs.len() / 4).max(1);
                let hi = (want + confs.len() / 4).min(confs.len() - 1).max(lo);
                let best = (lo..=hi)
                    .max_by(|&a, &b| {
                        (confs[a - 1] - confs[a]).total_cmp(&(confs[b - 1] - confs[b]))
                    })
                    .unwrap_or(1);
                0.5 * (confs[best - 1] + confs[best])
            };
            plan.gates[g].threshold = t;
        }
        let t = plan.gates[g].threshold;
        for (s, class, conf, scores) in decided {
            margins[g] = margins[g].min((conf - t).abs());
            if conf >= t {
                results[s] = Some(SampleResult {
                    class,
                    exit: Some(g),
                    score: conf,
                    logits: scores,
                });
            }
        }
    }
    let head = plan.head.clone();
    let out = results
        .into_iter()
        .enumerate()
        .map(|(s, r)| {
            r.unwrap_or_else(|| {
                let logits = ref_gap_linear(
                    plan,
                    &bufs,
                    &head.input,
                    head.h * head.w,
                    &head.pre,
                    &head.weight,
                    &head.bias,
                    s,
                );
                let (class, score) = decide(&logits, ExitRule::Hinge);
                SampleResult {
                    class,
                    exit: None,
                    score,
                    logits,
                }
            })
        })
        .collect();
    (out, margins)
}

// ---------------------------------------------------------------- op cases

/// Normalised max error: `max|got − want| / max|want|` (0 when both are all zero).
pub fn norm_max_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num = num.max((g as f64 - w as f64).abs());
        den = den.max((w as f64).abs());
    }
    if num == 0.0 {
        0.0
    } else {
        num / den.max(1e-30)
    }
}

fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-4,
        Precision::F16 => 1e-2,
    }
}

fn buf(channels: usize, h: usize, w: usize) -> Buffer {
    Buffer { channels, h, w }
}

/// A plan whose only stage is `op` over `buffers` (ids from 1; buffer 0 is the
/// unused 3×32×32 input the plan format requires).
fn op_plan(mut buffers: Vec<Buffer>, op: Op) -> Plan {
    buffers.insert(0, buf(3, 32, 32));
    let out = buffers[1].clone();
    Plan {
        arch: "op-test".into(),
        classes: 1,
        buffers,
        input: View {
            buf: 0,
            offset: 0,
            channels: 3,
        },
        stages: vec![Stage {
            name: "op".into(),
            ops: vec![op],
            output: View {
                buf: 1,
                offset: 0,
                channels: out.channels,
            },
            out_h: out.h,
            out_w: out.w,
            flops: 0,
            params: 0,
        }],
        gates: vec![],
        head: Head {
            input: View {
                buf: 0,
                offset: 0,
                channels: 3,
            },
            h: 32,
            w: 32,
            pre: None,
            weight: vec![0.0; 3],
            bias: vec![0.0],
        },
    }
}

fn view(buf: usize, offset: usize, channels: usize) -> View {
    View {
        buf,
        offset,
        channels,
    }
}

struct ConvCase {
    name: &'static str,
    c: usize,
    k: usize,
    hw: usize,
    r: usize,
    stride: usize,
    /// (input buffer channels, input offset); output likewise.
    in_win: (usize, usize),
    out_win: (usize, usize),
    pre: bool,
    residual: bool,
    relu: bool,
}

const fn cc(
    name: &'static str,
    (c, k, hw, r, stride): (usize, usize, usize, usize, usize),
    in_win: (usize, usize),
    out_win: (usize, usize),
    (pre, residual, relu): (bool, bool, bool),
) -> ConvCase {
    ConvCase {
        name,
        c,
        k,
        hw,
        r,
        stride,
        in_win,
        out_win,
        pre,
        residual,
        relu,
    }
}

// (C, K, H=W, R, stride), input (buffer channels, offset), output (buffer channels,
// offset), (pre-activation, residual, ReLU).
#[rustfmt::skip]
const CONV_CASES: &[ConvCase] = &[
    cc("stem 3->16 3x3 32x32", (3, 16, 32, 3, 1), (3, 0), (16, 0), (false, false, true)),
    cc("16->16 3x3 7x7 +res", (16, 16, 7, 3, 1), (16, 0), (16, 0), (false, true, true)),
    cc("16->32 3x3 s2 9x9", (16, 32, 9, 3, 2), (16, 0), (32, 0), (false, false, true)),
    cc("12->20 1x1 pre, windows", (12, 20, 7, 1, 1), (29, 5), (40, 3), (true, false, false)),
    cc("36->12 3x3 pre, windows 8x8", (36, 12, 8, 3, 1), (48, 12), (48, 0), (true, false, false)),
    cc("64->24 1x1 s2 8x8", (64, 24, 8, 1, 2), (64, 0), (24, 0), (false, false, false)),
    cc("130->70 3x3 5x5 +res", (130, 70, 5, 3, 1), (130, 0), (75, 5), (false, true, true)),
    cc("256->64 1x1 4x4", (256, 64, 4, 1, 1), (256, 0), (64, 0), (false, false, true)),
    cc("96->40 3x3 pre, window at 8, 6x6", (96, 40, 6, 3, 1), (112, 8), (44, 2), (true, false, false)),
    cc("64->128 3x3 s2 7x7", (64, 128, 7, 3, 2), (64, 0), (128, 0), (false, false, true)),
    cc("512->256 1x1 2x2 +res", (512, 256, 2, 1, 1), (512, 0), (256, 0), (false, true, true)),
    cc("136->200 3x3 10x10 +res", (136, 200, 10, 3, 1), (136, 0), (200, 0), (false, true, true)),
];

fn conv_case_plan(cc: &ConvCase, rng: &mut Rng, exact: bool) -> Plan {
    let pad = cc.r / 2;
    let out_hw = (cc.hw + 2 * pad - cc.r) / cc.stride + 1;
    let mut buffers = vec![
        buf(cc.out_win.0, out_hw, out_hw),
        buf(cc.in_win.0, cc.hw, cc.hw),
    ];
    let residual = if cc.residual {
        buffers.push(buf(cc.k + 4, out_hw, out_hw));
        Some(view(3, 2, cc.k))
    } else {
        None
    };
    let wn = cc.k * cc.c * cc.r * cc.r;
    let wscale = 1.0 / ((cc.c * cc.r * cc.r) as f32).sqrt();
    let (weight, bias) = if exact {
        (rng.ints(wn, -1, 1), rng.ints(cc.k, -2, 2))
    } else {
        (rng.vec(wn, wscale), rng.vec(cc.k, 0.5))
    };
    let pre = cc.pre.then(|| {
        if exact {
            PreAct {
                scale: rng.ints(cc.c, 1, 2),
                shift: rng.ints(cc.c, -1, 1),
                relu: true,
            }
        } else {
            PreAct {
                scale: rng.vec(cc.c, 1.0).iter().map(|v| 1.0 + 0.5 * v).collect(),
                shift: rng.vec(cc.c, 0.5),
                relu: true,
            }
        }
    });
    op_plan(
        buffers,
        Op::Conv(Conv {
            input: view(2, cc.in_win.1, cc.c),
            output: view(1, cc.out_win.1, cc.k),
            in_h: cc.hw,
            in_w: cc.hw,
            out_h: out_hw,
            out_w: out_hw,
            kernel: cc.r,
            stride: cc.stride,
            pad,
            weight,
            bias,
            pre,
            residual,
            relu: cc.relu,
        }),
    )
}

fn round_to(p: Precision, v: &mut [f32]) {
    if p == Precision::F16 {
        for x in v {
            *x = half::f16::from_f32(*x).to_f32();
        }
    }
}

/// Runs the one-op `plan` on random (or small-integer) contents of every buffer and
/// returns the normalised max error over the whole first op buffer.
fn run_op_case(
    be: &mut CudaBackend,
    plan: &Plan,
    n: usize,
    rng: &mut Rng,
    exact: bool,
) -> Result<f64> {
    let p = be.precision();
    be.op_test_prepare(plan, n)?;
    let mut bufs = ref_alloc(plan, n);
    for (i, b) in bufs.iter_mut().enumerate().skip(1) {
        *b = if exact {
            rng.ints(b.len(), -1, 1)
        } else {
            rng.vec(b.len(), 1.0)
        };
        round_to(p, b);
        be.op_test_write(plan, i, b, n)?;
    }
    be.op_test_run_stage(plan, 0, n)?;
    let got = be.op_test_read(plan, 1, n)?;
    ref_op(plan, &plan.stages[0].ops[0], &mut bufs, n);
    round_to(p, &mut bufs[1]);
    Ok(norm_max_err(&got, &bufs[1]))
}

struct Tally {
    pass: usize,
    fail: usize,
}

impl Tally {
    fn line(&mut self, out: &mut dyn Write, what: &str, err: f64, tol: f64) -> Result<()> {
        let ok = err <= tol;
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        writeln!(
            out,
            "{:4} {what:<60} err {err:.2e} (tol {tol:.0e})",
            if ok { "ok" } else { "FAIL" }
        )
        .map_err(io_err)
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::io("selfcheck report", e)
}

fn check_ops(be: &mut CudaBackend, out: &mut dyn Write, tally: &mut Tally) -> Result<()> {
    let p = be.precision();
    let tag = match p {
        Precision::F32 => "f32",
        Precision::F16 => "f16",
    };
    let variants: &[&str] = match p {
        Precision::F32 => &["conv_simt_f32"],
        Precision::F16 => &[
            "conv_mmaasync_f16",
            "conv_mmavec_f16",
            "conv_mma_f16",
            "conv_simt_f16",
        ],
    };
    let default = be.conv_kernel().to_string();
    let mut ran = std::collections::BTreeSet::new();
    let mut rng = Rng::new(7);
    for &var in variants {
        be.set_conv_kernel(var)?;
        for cc in CONV_CASES {
            for n in [1usize, 3] {
                for exact in [false, true] {
                    let plan = conv_case_plan(cc, &mut rng, exact);
                    let err = run_op_case(be, &plan, n, &mut rng, exact)?;
                    let used = match &plan.stages[0].ops[0] {
                        Op::Conv(c) => super::exec::choose_conv_kernel(var, tag, &plan, c),
                        _ => var.to_string(),
                    };
                    ran.insert(used.clone());
                    let what = format!(
                        "{used} {} n={n}{}",
                        cc.name,
                        if exact { " exact" } else { "" }
                    );
                    tally.line(out, &what, err, if exact { 0.0 } else { tolerance(p) })?;
                }
            }
        }
    }
    be.set_conv_kernel(&default)?;
    if !ran.iter().all(|k| variants.contains(&k.as_str())) || ran.len() != variants.len() {
        tally.fail += 1;
        writeln!(
            out,
            "FAIL the case table did not exercise every conv kernel: ran {ran:?}"
        )
        .map_err(io_err)?;
    }

    // (channels, hw, stride, pad_before, out channels, in window, out window)
    let shortcut_cases = [
        (
            16usize,
            32usize,
            2usize,
            8usize,
            32usize,
            (16usize, 0usize),
            (32usize, 0usize),
        ),
        (5, 7, 2, 2, 9, (8, 3), (11, 1)),
        (12, 6, 1, 0, 12, (12, 0), (12, 0)),
    ];
    for (c, hw, s, padb, k, iw, ow) in shortcut_cases {
        let ohw = hw.div_ceil(s);
        let plan = op_plan(
            vec![buf(ow.0, ohw, ohw), buf(iw.0, hw, hw)],
            Op::ShortcutA {
                input: view(2, iw.1, c),
                output: view(1, ow.1, k),
                in_h: hw,
                in_w: hw,
                stride: s,
                pad_before: padb,
            },
        );
        for n in [1usize, 3] {
            for exact in [false, true] {
                let err = run_op_case(be, &plan, n, &mut rng, exact)?;
                let what = format!(
                    "shortcut_a_{tag} {c}->{k} {hw}x{hw} s{s} n={n}{}",
                    if exact { " exact" } else { "" }
                );
                tally.line(out, &what, err, 0.0)?;
            }
        }
    }

    // (channels, hw, pre, in window, out window)
    let pool_cases = [
        (20usize, 8usize, true, (20usize, 0usize), (20usize, 0usize)),
        (7, 7, false, (10, 2), (9, 1)),
        (12, 32, true, (30, 18), (12, 0)),
    ];
    for (c, hw, pre, iw, ow) in pool_cases {
        for n in [1usize, 3] {
            for exact in [false, true] {
                let pre_act = pre.then(|| PreAct {
                    scale: if exact {
                        rng.ints(c, 1, 2)
                    } else {
                        rng.vec(c, 1.0)
                    },
                    shift: if exact {
                        rng.ints(c, -1, 1)
                    } else {
                        rng.vec(c, 0.5)
                    },
                    relu: true,
                });
                let plan = op_plan(
                    vec![buf(ow.0, hw / 2, hw / 2), buf(iw.0, hw, hw)],
                    Op::AvgPool2 {
                        input: view(2, iw.1, c),
                        output: view(1, ow.1, c),
                        in_h: hw,
                        in_w: hw,
                        pre: pre_act,
                    },
                );
                let err = run_op_case(be, &plan, n, &mut rng, exact)?;
                let what = format!(
                    "avgpool2_pre_{tag} {c}ch {hw}x{hw}{} n={n}{}",
                    if pre { " pre" } else { "" },
                    if exact { " exact" } else { "" }
                );
                let tol = if exact { 0.0 } else { tolerance(p) };
                tally.line(out, &what, err, tol)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- small networks

#[allow(clippy::too_many_arguments)]
fn conv_op(
    rng: &mut Rng,
    input: View,
    output: View,
    hw: usize,
    r: usize,
    stride: usize,
    pre: Option<PreAct>,
    residual: Option<View>,
    relu: bool,
) -> Op {
    let pad = r / 2;
    let out_hw = (hw + 2 * pad - r) / stride + 1;
    let (c, k) = (input.channels, output.channels);
    let scale = (2.0 / (c * r * r) as f32).sqrt() * 1.2;
    Op::Conv(Conv {
        input,
        output,
        in_h: hw,
        in_w: hw,
        out_h: out_hw,
        out_w: out_hw,
        kernel: r,
        stride,
        pad,
        weight: rng.vec(k * c * r * r, scale),
        bias: rng.vec(k, 0.1),
        pre,
        residual,
        relu,
    })
}

fn random_pre(rng: &mut Rng, c: usize) -> PreAct {
    PreAct {
        scale: (0..c).map(|_| 0.8 + 0.4 * rng.uniform()).collect(),
        shift: rng.vec(c, 0.2),
        relu: true,
    }
}

fn stage(name: &str, ops: Vec<Op>, output: View, hw: usize) -> Stage {
    Stage {
        name: name.into(),
        ops,
        output,
        out_h: hw,
        out_w: hw,
        flops: 0,
        params: 0,
    }
}

fn gate(
    rng: &mut Rng,
    after: usize,
    input: View,
    hw: usize,
    classes: usize,
    rule: ExitRule,
) -> Gate {
    Gate {
        after_stage: after,
        input,
        h: hw,
        w: hw,
        weight: rng.vec(
            classes * input.channels,
            2.0 / (input.channels as f32).sqrt(),
        ),
        bias: rng.vec(classes, 0.2),
        threshold: 0.0,
        rule,
    }
}

/// A small He et al. ResNet: 16/32/64 channels, one BasicBlock per stage, option-A
/// shortcuts, gates after stages 0 (hinge) and 1 (ce).
pub fn tiny_resnet(seed: u64, classes: usize) -> Plan {
    let mut rng = Rng::new(seed);
    // buffers: 0 input; per resolution a, t, b (block in, mid, out) and s (shortcut)
    let mut buffers = vec![buf(3, 32, 32)];
    let mut stages = Vec::new();
    let widths = [16usize, 32, 64];
    let mut prev = View {
        buf: 0,
        offset: 0,
        channels: 3,
    };
    let mut hw = 32;
    for (si, &w) in widths.iter().enumerate() {
        let base = buffers.len();
        let stride = if si == 0 { 1 } else { 2 };
        let ohw = hw / stride;
        for _ in 0..4 {
            buffers.push(buf(w, ohw, ohw));
        }
        let (a, t, b, s) = (
            view(base, 0, w),
            view(base + 1, 0, w),
            view(base + 2, 0, w),
            view(base + 3, 0, w),
        );
        let mut ops = Vec::new();
        let block_in = if si == 0 {
            ops.push(conv_op(&mut rng, prev, a, 32, 3, 1, None, None, true));
            a
        } else {
            prev
        };
        ops.push(conv_op(
            &mut rng, block_in, t, hw, 3, stride, None, None, true,
        ));
        let shortcut = if si == 0 {
            a
        } else {
            ops.push(Op::ShortcutA {
                input: prev,
                output: s,
                in_h: hw,
                in_w: hw,
                stride: 2,
                pad_before: (w - prev.channels) / 2,
            });
            s
        };
        ops.push(conv_op(
            &mut rng,
            t,
            b,
            ohw,
            3,
            1,
            None,
            Some(shortcut),
            true,
        ));
        stages.push(stage(&format!("layer{}", si + 1), ops, b, ohw));
        prev = b;
        hw = ohw;
    }
    let gates = vec![
        gate(&mut rng, 0, stages[0].output, 32, classes, ExitRule::Hinge),
        gate(&mut rng, 1, stages[1].output, 16, classes, ExitRule::Ce),
    ];
    let head = Head {
        input: prev,
        h: hw,
        w: hw,
        pre: None,
        weight: rng.vec(classes * prev.channels, 2.0 / (prev.channels as f32).sqrt()),
        bias: rng.vec(classes, 0.1),
    };
    Plan {
        arch: "tiny-resnet".into(),
        classes,
        buffers,
        input: View {
            buf: 0,
            offset: 0,
            channels: 3,
        },
        stages,
        gates,
        head,
    }
}

/// A small DenseNet-BC: growth `growth` (3 gives unaligned channel windows), two layers per block, new channels written in front
/// of the block buffer (windows, no copies), transitions with pre-activated 1×1 convs
/// and 2×2 average pools, gates after the transitions, pre-activated head.
pub fn tiny_densenet(seed: u64, classes: usize, growth: usize) -> Plan {
    let mut rng = Rng::new(seed);
    let k = growth;
    let layers = 2;
    let mut buffers = vec![buf(3, 32, 32)];
    let mut stages = Vec::new();
    let mut block_in_ch = 8; // stem width
    let mut hw = 32;
    // Stem writes into the back of block 1's buffer.
    let mut block_buf = buffers.len();
    buffers.push(buf(block_in_ch + layers * k, hw, hw));
    let mut pending_stem = Some(conv_op(
        &mut rng,
        view(0, 0, 3),
        view(block_buf, layers * k, block_in_ch),
        32,
        3,
        1,
        None,
        None,
        false,
    ));
    for bi in 0..3 {
        let total = block_in_ch + layers * k;
        let tmp = buffers.len();
        buffers.push(buf(4 * k, hw, hw));
        let mut ops: Vec<Op> = pending_stem.take().into_iter().collect();
        for l in 0..layers {
            let have = block_in_ch + l * k;
            let inp = view(block_buf, total - have, have);
            let pre1 = random_pre(&mut rng, have);
            ops.push(conv_op(
                &mut rng,
                inp,
                view(tmp, 0, 4 * k),
                hw,
                1,
                1,
                Some(pre1),
                None,
                false,
            ));
            let pre2 = random_pre(&mut rng, 4 * k);
            let new = view(block_buf, total - have - k, k);
            ops.push(conv_op(
                &mut rng,
                view(tmp, 0, 4 * k),
                new,
                hw,
                3,
                1,
                Some(pre2),
                None,
                false,
            ));
        }
        let full = view(block_buf, 0, total);
        if bi == 2 {
            stages.push(stage(&format!("dense{}", bi + 1), ops, full, hw));
            let head = Head {
                input: full,
                h: hw,
                w: hw,
                pre: Some(random_pre(&mut rng, total)),
                weight: rng.vec(classes * total, 2.0 / (total as f32).sqrt()),
                bias: rng.vec(classes, 0.1),
            };
            let gates = vec![
                gate(&mut rng, 0, stages[0].output, 16, classes, ExitRule::Hinge),
                gate(&mut rng, 1, stages[1].output, 8, classes, ExitRule::Hinge),
            ];
            return Plan {
                arch: "tiny-densenet".into(),
                classes,
                buffers,
                input: view(0, 0, 3),
                stages,
                gates,
                head,
            };
        }
        // Transition: pre-activated 1x1 conv to half the channels, then 2x2 pool into
        // the back of the next block's buffer.
        let half = total / 2;
        let tbuf = buffers.len();
        buffers.push(buf(half, hw, hw));
        let pre = random_pre(&mut rng, total);
        ops.push(conv_op(
            &mut rng,
            full,
            view(tbuf, 0, half),
            hw,
            1,
            1,
            Some(pre),
            None,
            false,
        ));
        let next_buf = buffers.len();
        buffers.push(buf(half + layers * k, hw / 2, hw / 2));
        let out = view(next_buf, layers * k, half);
        ops.push(Op::AvgPool2 {
            input: view(tbuf, 0, half),
            output: out,
            in_h: hw,
            in_w: hw,
            pre: None,
        });
        stages.push(stage(
            &format!("dense{}+trans{}", bi + 1, bi + 1),
            ops,
            out,
            hw / 2,
        ));
        block_buf = next_buf;
        block_in_ch = half;
        hw /= 2;
    }
    unreachable!("the loop returns at its last block")
}

fn random_images(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n * 3 * 32 * 32, 1.5)
}

/// Runs `plan` on the GPU and the reference; returns (failures, description).
fn compare_pass(
    be: &mut CudaBackend,
    plan: &mut Plan,
    n: usize,
    seed: u64,
    fractions: &[f32],
) -> Result<(bool, String)> {
    let mut rng = Rng::new(seed);
    let mut images = random_images(&mut rng, n);
    round_to(be.precision(), &mut images);
    let (want, margins) = ref_run(plan, &images, n, Some(fractions));
    let got = be.run(plan, &images, n)?;
    let tol = tolerance(be.precision());
    let mut worst = 0.0f64;
    let mut flips = 0;
    let mut excused = 0;
    for (g, w) in got.iter().zip(&want) {
        if g.exit != w.exit || g.class != w.class {
            // A decision may flip only if the reference was that close to it.
            let scale = w.logits.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let near = margins
                .iter()
                .any(|&m| (m as f64) < tol * scale as f64 * 4.0);
            if near {
                excused += 1;
            } else {
                flips += 1;
            }
            continue;
        }
        worst = worst.max(norm_max_err(&g.logits, &w.logits));
        worst = worst.max(norm_max_err(&[g.score], &[w.score]));
    }
    let exits: Vec<usize> = (0..=plan.gates.len())
        .map(|e| {
            let e = if e == plan.gates.len() { None } else { Some(e) };
            want.iter().filter(|r| r.exit == e).count()
        })
        .collect();
    let ok = flips == 0 && worst <= tol && got.len() == n;
    let desc = format!(
        "{} n={n} exits {:?} mismatched decisions {flips} (near-threshold {excused}) logit err {worst:.2e} (tol {tol:.0e})",
        plan.arch, exits
    );
    Ok((ok, desc))
}

/// `quick`: smaller batches; `extra`: a second kernel policy over the same code paths,
/// where the small networks suffice.
fn check_passes(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    quick: bool,
    extra: bool,
) -> Result<()> {
    let conv = be.conv_kernel().to_string();
    let graph_modes: &[bool] = if be.is_emulated() {
        &[false]
    } else {
        &[false, true]
    };
    let mut cases = if quick {
        vec![
            (tiny_resnet(11, 10), 1usize),
            (tiny_resnet(12, 10), 6),
            (tiny_densenet(13, 10, 4), 3),
            (tiny_densenet(14, 100, 3), 7),
            (resnet_bottleneck_plan([1, 1, 1, 1], 10, 15), 2),
        ]
    } else {
        vec![
            (tiny_resnet(11, 10), 1usize),
            (tiny_resnet(12, 10), 37),
            (tiny_densenet(13, 10, 4), 3),
            (tiny_densenet(14, 100, 3), 29),
            (resnet_bottleneck_plan([1, 1, 1, 1], 10, 15), 3),
        ]
    };
    if extra {
        cases.retain(|(p, _)| p.arch.starts_with("tiny"));
    }
    for &graphs in graph_modes {
        be.set_graphs(graphs);
        for (plan, n) in &cases {
            let mut plan = plan.clone();
            let fractions: &[[f32; 2]] = if quick {
                &[[0.5, 0.4]]
            } else {
                &[[0.5, 0.4], [0.0, 0.0], [1.0, 1.0]]
            };
            for fr in fractions {
                let (ok, desc) = compare_pass(be, &mut plan, *n, 99 + *n as u64, fr)?;
                let what = format!(
                    "{conv} {} {desc}",
                    if graphs { "graph" } else { "launches" }
                );
                let mark = if ok { "ok" } else { "FAIL" };
                if ok {
                    tally.pass += 1;
                } else {
                    tally.fail += 1;
                }
                writeln!(out, "{mark:4} pass {what}").map_err(io_err)?;
            }
        }
    }
    be.set_graphs(true);
    Ok(())
}

/// Checks every op and whole passes of small networks against the CPU reference,
/// in f32 and f16, one line per case. `Ok(true)` when everything passed.
pub fn selfcheck(report: &mut dyn Write) -> Result<bool> {
    selfcheck_with(report, &mut CudaBackend::new, false)
}

/// [`selfcheck`] with backends from `make` (e.g. [`CudaBackend::new_emulated`]);
/// `quick` uses smaller batches and fewer threshold settings (for the CPU emulator).
pub fn selfcheck_with(
    report: &mut dyn Write,
    make: &mut dyn FnMut(Precision) -> Result<CudaBackend>,
    quick: bool,
) -> Result<bool> {
    let mut tally = Tally { pass: 0, fail: 0 };
    for p in [Precision::F32, Precision::F16] {
        let mut be = make(p)?;
        writeln!(report, "== {} ==", be.name()).map_err(io_err)?;
        check_ops(&mut be, report, &mut tally)?;
        check_passes(&mut be, report, &mut tally, quick, false)?;
        if p == Precision::F16 {
            for k in ["conv_mmavec_f16", "conv_mma_f16", "conv_simt_f16"] {
                be.set_conv_kernel(k)?;
                check_passes(&mut be, report, &mut tally, quick, true)?;
            }
            be.set_conv_kernel("auto")?;
        }
    }
    writeln!(
        report,
        "selfcheck: {} passed, {} failed",
        tally.pass, tally.fail
    )
    .map_err(io_err)?;
    Ok(tally.fail == 0)
}

// ---------------------------------------------------------------- timing

/// A CIFAR ResNet with ImageNet-style Bottleneck blocks (`blocks` per layer, widths
/// 64/128/256/512 × 4, strides 1/2/2/2, projection shortcuts), random weights, gates
/// after stages 0 and 1 with infinite thresholds (no exits). `[3, 4, 23, 3]` is
/// ResNet-101's shape. Stage `s` is layer `s + 1`; the stem belongs to stage 0.
pub fn resnet_bottleneck_plan(blocks: [usize; 4], classes: usize, seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let mut buffers = vec![buf(3, 32, 32), buf(64, 32, 32)];
    let mut prev = view(1, 0, 64);
    let mut pending = vec![conv_op(
        &mut rng,
        view(0, 0, 3),
        prev,
        32,
        3,
        1,
        None,
        None,
        true,
    )];
    let mut stages = Vec::new();
    let mut hw = 32;
    for (li, &nb) in blocks.iter().enumerate() {
        let mid = 64 << li;
        let out_ch = mid * 4;
        let stride = if li == 0 { 1 } else { 2 };
        let ohw = hw / stride;
        let base = buffers.len();
        buffers.push(buf(out_ch, ohw, ohw)); // ping
        buffers.push(buf(out_ch, ohw, ohw)); // pong
        buffers.push(buf(mid, hw, hw)); // conv1 out of a strided block
        buffers.push(buf(mid, ohw, ohw)); // conv1 out
        buffers.push(buf(mid, ohw, ohw)); // conv2 out
        buffers.push(buf(out_ch, ohw, ohw)); // projection shortcut
        let mut ops = std::mem::take(&mut pending);
        let mut x = prev;
        let mut x_hw = hw;
        for bi in 0..nb {
            let s = if bi == 0 { stride } else { 1 };
            let t1 = if x_hw != ohw {
                view(base + 2, 0, mid)
            } else {
                view(base + 3, 0, mid)
            };
            let t2 = view(base + 4, 0, mid);
            let out = view(base + (bi % 2), 0, out_ch);
            ops.push(conv_op(&mut rng, x, t1, x_hw, 1, 1, None, None, true));
            ops.push(conv_op(&mut rng, t1, t2, x_hw, 3, s, None, None, true));
            let shortcut = if bi == 0 {
                let sc = view(base + 5, 0, out_ch);
                ops.push(conv_op(&mut rng, x, sc, x_hw, 1, s, None, None, false));
                sc
            } else {
                x
            };
            // Keep the residual stream bounded over 30-odd blocks of random weights.
            let mut c3 = conv_op(&mut rng, t2, out, ohw, 1, 1, None, Some(shortcut), true);
            if let Op::Conv(c) = &mut c3 {
                c.weight.iter_mut().for_each(|w| *w *= 0.3);
            }
            ops.push(c3);
            x = out;
            x_hw = ohw;
        }
        stages.push(stage(&format!("layer{}", li + 1), ops, x, ohw));
        prev = x;
        hw = ohw;
    }
    let mut gates = vec![
        gate(&mut rng, 0, stages[0].output, 32, classes, ExitRule::Hinge),
        gate(&mut rng, 1, stages[1].output, 16, classes, ExitRule::Hinge),
    ];
    for g in &mut gates {
        g.threshold = f32::INFINITY;
    }
    let head = Head {
        input: prev,
        h: hw,
        w: hw,
        pre: None,
        weight: rng.vec(classes * prev.channels, 1.0 / (prev.channels as f32).sqrt()),
        bias: rng.vec(classes, 0.1),
    };
    Plan {
        arch: format!("resnet-bottleneck{blocks:?}-random"),
        classes,
        buffers,
        input: view(0, 0, 3),
        stages,
        gates,
        head,
    }
}

/// FLOPs per sample of each stage's convolutions (2 × MACs).
pub fn stage_conv_flops(plan: &Plan) -> Vec<f64> {
    plan.stages
        .iter()
        .map(|s| {
            s.ops
                .iter()
                .map(|op| match op {
                    Op::Conv(c) => {
                        2.0 * (c.output.channels
                            * c.input.channels
                            * c.kernel
                            * c.kernel
                            * c.out_h
                            * c.out_w) as f64
                    }
                    _ => 0.0,
                })
                .sum()
        })
        .collect()
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

/// Everything `dgate-rt gpu-check` prints: device, kernel self-check, f32/f16 agreement
/// on a ResNet-101-shaped plan, and the latency table. `Ok(true)` when all checks passed.
pub fn gpu_check(report: &mut dyn Write) -> Result<bool> {
    writeln!(report, "device: {}", super::device_name()?).map_err(io_err)?;
    let t = std::time::Instant::now();
    // An error in one part is reported and the next part still runs: GPU time is scarce.
    let mut ok = match selfcheck(report) {
        Ok(ok) => ok,
        Err(e) => {
            writeln!(report, "FAIL selfcheck stopped: {e}").map_err(io_err)?;
            false
        }
    };
    writeln!(report, "selfcheck took {:.1} s", t.elapsed().as_secs_f64()).map_err(io_err)?;
    let t = std::time::Instant::now();
    if let Err(e) = timing(report, &[1, 64, 256], 20) {
        writeln!(report, "FAIL timing stopped: {e}").map_err(io_err)?;
        ok = false;
    }
    writeln!(report, "timing took {:.1} s", t.elapsed().as_secs_f64()).map_err(io_err)?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_plans_are_valid() {
        for plan in [
            tiny_resnet(1, 10),
            tiny_densenet(2, 10, 4),
            tiny_densenet(2, 10, 3),
            resnet_bottleneck_plan([1, 1, 1, 1], 10, 3),
        ] {
            if let Err(e) = super::super::exec::validate(&plan) {
                panic!("{}: {e}", plan.arch);
            }
        }
        let r101 = resnet_bottleneck_plan([3, 4, 23, 3], 10, 3);
        let gf = stage_conv_flops(&r101).iter().sum::<f64>() / 1e9;
        assert!((gf - 5.0).abs() < 0.1, "ResNet-101 shape gives {gf} GFLOPs");
    }

    #[test]
    fn calibration_gives_a_mix_of_exits() {
        for mut plan in [tiny_resnet(4, 10), tiny_densenet(5, 10, 3)] {
            let n = 16;
            let images = random_images(&mut Rng::new(6), n);
            let (res, margins) = ref_run(&mut plan, &images, n, Some(&[0.5, 0.5]));
            let e0 = res.iter().filter(|r| r.exit == Some(0)).count();
            let e1 = res.iter().filter(|r| r.exit == Some(1)).count();
            let head = res.iter().filter(|r| r.exit.is_none()).count();
            assert!(
                e0 > 0 && e1 > 0 && head > 0,
                "{}: {e0}/{e1}/{head}",
                plan.arch
            );
            assert!(margins.iter().all(|&m| m > 0.0), "{margins:?}");
            for r in &res {
                assert!(r.score.is_finite() && r.logits.len() == 10);
            }
        }
    }

    #[test]
    fn shortcut_reference_pads_channels_evenly() {
        let plan = op_plan(
            vec![buf(4, 2, 2), buf(2, 4, 4)],
            Op::ShortcutA {
                input: view(2, 0, 2),
                output: view(1, 0, 4),
                in_h: 4,
                in_w: 4,
                stride: 2,
                pad_before: 1,
            },
        );
        let mut bufs = ref_alloc(&plan, 1);
        bufs[2] = (0..32).map(|v| v as f32).collect();
        ref_op(&plan, &plan.stages[0].ops[0], &mut bufs, 1);
        assert_eq!(
            bufs[1],
            vec![0., 0., 0., 0., 0., 2., 8., 10., 16., 18., 24., 26., 0., 0., 0., 0.]
        );
    }
}
