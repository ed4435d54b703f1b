//! A deliberately naive CPU reference for the CUDA self-check (NCHW loops, f64
//! accumulation), independent of the library's CPU backend, and the seeded random
//! numbers the checks use.

use crate::plan::{decide, ExitRule, Op, Plan, PreAct, SampleResult, View};

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

/// Buffers of the reference: per plan buffer, `n × channels × h × w` (NCHW).
pub(crate) type RefBufs = Vec<Vec<f32>>;

pub(crate) fn ref_alloc(plan: &Plan, n: usize) -> RefBufs {
    plan.buffers
        .iter()
        .map(|b| vec![0.0; n * b.channels * b.h * b.w])
        .collect()
}

pub(crate) fn pre_apply(pre: &Option<PreAct>, c: usize, v: f32) -> f32 {
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
pub(crate) fn at(plan: &Plan, bufs: &RefBufs, v: &View, s: usize, c: usize, i: usize) -> f32 {
    let b = &plan.buffers[v.buf];
    bufs[v.buf][(s * b.channels + v.offset + c) * b.h * b.w + i]
}

pub(crate) fn ref_op(plan: &Plan, op: &Op, bufs: &mut RefBufs, n: usize) {
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
pub(crate) fn write_view(plan: &Plan, bufs: &mut RefBufs, v: &View, dense: &[f32], n: usize) {
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
pub(crate) fn ref_gap_linear(
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
/// `fractions[g]` quantile from the top (a negative fraction closes the gate:
/// threshold `+inf`); the chosen thresholds are written to `plan`.
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
            let t = if fr.get(g).is_some_and(|&f| f < 0.0) || confs.len() < 2 {
                f32::INFINITY
            } else {
                let want = ((fr.get(g).copied().unwrap_or(0.5)) * confs.len() as f32) as usize;
                let lo = want
                    .saturating_sub(confs.len() / 4)
                    .clamp(1, confs.len() - 1);
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
        let gate = &plan.gates[g];
        for (s, class, conf, scores) in decided {
            margins[g] = margins[g].min((conf - gate.threshold).abs());
            if gate.lets_out(conf) {
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
