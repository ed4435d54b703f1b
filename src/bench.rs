//! Latency measurement shared by `dgate-rt bench` and `cargo bench`: warm-up, then the
//! median of repeated whole-batch runs (each ends with the results on the host, so the
//! device is synchronised before the clock is read), in the paper's Table 1 format.

use std::time::Instant;

use crate::engine::Engine;
use crate::plan::decide;
use crate::Result;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub config: String,
    pub batch: usize,
    /// Average GFLOPs per sample actually spent (exits included).
    pub gflops_per_sample: f64,
    pub exit_fraction: Vec<f64>,
    /// Wall time of `Engine::run`: upload, pass, results back on the host.
    pub ms_per_batch: f64,
    pub ms_per_sample: f64,
    /// Device time of the pass alone (CUDA events), where the backend measures it.
    pub device_ms: Option<f64>,
    /// From the device time where there is one, else the wall time.
    pub tflops: f64,
    pub runs: usize,
}

/// Median wall time in ms of `runs` calls of `f` after `warmup` calls.
pub fn median_ms(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Thresholds that make `fractions[k]` of the batch leave at gate k (as nearly as ties
/// allow), found with the engine itself: gate k's confidences are read by running with
/// that gate at −∞ and the later ones at +∞.
///
/// Each threshold lies between two samples' confidences, never on one (see
/// [`split_threshold`]): a sample exactly at its threshold would leave or stay on the last
/// bit of its score, which differs between kernels (the tuned ones, split-K's order of
/// sums). On 2026-11-28 that made DenseNet-201 f32 at batch 1 run full depth in the pass
/// that counted exits and leave at gate 1 in the timed one.
pub fn thresholds_for_fractions(
    engine: &mut Engine,
    x: &[f32],
    n: usize,
    fractions: &[f64],
) -> Result<Vec<f32>> {
    let g = engine.model.plan.gates.len();
    let mut t = vec![f32::INFINITY; g];
    let mut left = n;
    for k in 0..g.min(fractions.len()) {
        let mut probe = t.clone();
        probe[k] = f32::NEG_INFINITY;
        engine.set_thresholds(&probe)?;
        let res = engine.run(x, n)?;
        let rule = engine.model.plan.gates[k].rule;
        let mut conf: Vec<f32> = res
            .iter()
            .filter(|r| r.exit == Some(k))
            .map(|r| decide(&r.logits, rule).1)
            .collect();
        conf.sort_by(|a, b| b.total_cmp(a));
        let want = ((fractions[k] * n as f64).round() as usize).min(left);
        t[k] = split_threshold(&conf, want);
        left -= want;
    }
    engine.set_thresholds(&t)?;
    Ok(t)
}

/// The threshold that lets the first `want` of `conf` (sorted high to low) leave and keeps
/// the rest: halfway between the last that leaves and the first that stays, or, where all
/// leave, below the last by a margin (1% of its size, at least 1e-3). `+∞` when none leave.
/// Equal confidences across the split cannot be separated; the threshold then lets both
/// leave, as the exit rule (confidence at least the threshold) would.
pub fn split_threshold(conf: &[f32], want: usize) -> f32 {
    if want == 0 || conf.is_empty() {
        return f32::INFINITY;
    }
    let want = want.min(conf.len());
    let last = conf[want - 1];
    match conf.get(want) {
        Some(&next) if next < last => {
            let mid = next + (last - next) / 2.0;
            // Adjacent floats have no value between them.
            if mid > next {
                mid
            } else {
                last
            }
        }
        Some(_) => last,
        None => last - (0.01 * last.abs()).max(1e-3),
    }
}

/// Times `engine` on the batch `x` of `n` images.
pub fn measure(
    engine: &mut Engine,
    config: &str,
    x: &[f32],
    n: usize,
    warmup: usize,
    runs: usize,
) -> Result<Row> {
    let before = engine.run(x, n)?;
    let device_ms = engine.device_time_ms(x, n, runs)?;
    // The exits are counted, and the wall clock timed, after the device timing, whose
    // warm-up may tune and re-choose kernels: all three then see the same kernels. Should a
    // sample's decision differ from the first pass's, say so.
    let res = engine.run(x, n)?;
    let ms = median_ms(warmup, runs, || engine.run(x, n).map(|_| ()))?;
    let flipped = before
        .iter()
        .zip(&res)
        .filter(|(a, b)| a.exit != b.exit)
        .count();
    if flipped > 0 {
        eprintln!(
            "warning: {config}: {flipped} of {n} sample(s) left at a different gate after \
             tuning (a confidence within rounding of its threshold); exits counted after tuning"
        );
    }
    let s = crate::engine::Summary::new(&engine.model.plan, &res, None);
    let t = device_ms.unwrap_or(ms);
    Ok(Row {
        config: config.into(),
        batch: n,
        gflops_per_sample: s.avg_gflops,
        exit_fraction: s.exit_fraction,
        ms_per_batch: ms,
        ms_per_sample: ms / n as f64,
        device_ms,
        // GFLOP per batch over milliseconds is TFLOP/s.
        tflops: s.avg_gflops * n as f64 / t,
        runs,
    })
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| config | batch | GFLOPs/sample | exits | ms/batch | ms/sample | device ms/batch | TFLOP/s |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for r in rows {
        let ex: Vec<String> = r
            .exit_fraction
            .iter()
            .map(|f| format!("{:.0}%", 100.0 * f))
            .collect();
        s += &format!(
            "| {} | {} | {:.3} | {} | {:.3} | {:.4} | {} | {:.2} |\n",
            r.config,
            r.batch,
            r.gflops_per_sample,
            if ex.is_empty() {
                "-".into()
            } else {
                ex.join("/")
            },
            r.ms_per_batch,
            r.ms_per_sample,
            r.device_ms.map_or("-".into(), |d| format!("{d:.3}")),
            r.tflops
        );
    }
    s
}

/// One configuration's device time with the weight prefetch
/// ([`crate::backend::Backend::set_weight_prefetch`]) off, on, and off again: one
/// process, one set of tuned kernels, so the prefetch is the only difference.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PrefetchAb {
    pub config: String,
    pub batch: usize,
    pub off_ms: f64,
    /// `None` when the check failed (not timed).
    pub on_ms: Option<f64>,
    pub off_again_ms: f64,
    /// Largest normalised logit difference between the passes with and without it.
    pub max_err: f64,
    /// `max_err` within the tolerance.
    pub ok: bool,
}

/// Times `x` (`n` images) with the weight prefetch off, on and off again (medians of
/// `runs` device timings each). First checks that the pass with it gives the logits of
/// the pass without, within `tol` (normalised max error: split-K sums with atomics, so
/// two passes may differ in the last bits); if not, the row says so (`ok` false) and the
/// prefetch is not timed. `None` where the backend has no prefetch or no device timer.
/// The prefetch is left off.
pub fn prefetch_ab(
    engine: &mut Engine,
    config: &str,
    (x, n): (&[f32], usize),
    runs: usize,
    tol: f64,
) -> Result<Option<PrefetchAb>> {
    if !engine.set_weight_prefetch(false) {
        return Ok(None);
    }
    let without = engine.run(x, n)?;
    let Some(off_ms) = engine.device_time_ms(x, n, runs)? else {
        return Ok(None);
    };
    engine.set_weight_prefetch(true);
    let timed = engine
        .run(x, n)
        .and_then(|with| {
            let max_err = without
                .iter()
                .zip(&with)
                .map(|(a, b)| crate::backend::cuda::reference::norm_max_err(&b.logits, &a.logits))
                .fold(0.0f64, f64::max);
            let on_ms = if max_err <= tol {
                engine.device_time_ms(x, n, runs)?
            } else {
                None
            };
            Ok((on_ms, max_err))
        })
        // A failure while it is on is its own (a script told this apart from a kernel
        // fault of the tables before it).
        .map_err(|e| {
            crate::Error::Cuda(format!(
                "{config}, batch {n}, with the weight prefetch on: {e}"
            ))
        });
    // Off again whatever happened, so the rows after this one run as before.
    engine.set_weight_prefetch(false);
    let (on_ms, max_err) = timed?;
    let off_again_ms = engine.device_time_ms(x, n, runs)?.unwrap_or(f64::NAN);
    Ok(Some(PrefetchAb {
        config: config.into(),
        batch: n,
        off_ms,
        on_ms,
        off_again_ms,
        max_err,
        ok: max_err <= tol,
    }))
}

/// The A/B rows as a markdown table: on over the mean of the two off timings, and the
/// logit check (`FAIL`: the prefetch changed the results; not timed).
pub fn prefetch_table(rows: &[PrefetchAb]) -> String {
    let mut s = String::from(
        "| config | batch | off ms | on ms | off again ms | on / off | logits max err | check |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in rows {
        let (on, ratio) = match r.on_ms {
            Some(on) => (
                format!("{on:.3}"),
                format!("{:.3}", on / (0.5 * (r.off_ms + r.off_again_ms))),
            ),
            None => ("-".into(), "-".into()),
        };
        s += &format!(
            "| {} | {} | {:.3} | {on} | {:.3} | {ratio} | {:.1e} | {} |\n",
            r.config,
            r.batch,
            r.off_ms,
            r.off_again_ms,
            r.max_err,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    s
}

/// A profiled pass summed by step shape and kernel, slowest first: how many steps,
/// total and per-step µs, share of the pass, TFLOP/s (compute) and GB/s (traffic), and
/// the samples they ran on (fewer after a gate). A markdown table.
pub fn profile_table(profile: &crate::backend::Profile) -> String {
    let steps = &profile.steps;
    struct Group {
        op: String,
        kernel: String,
        count: usize,
        ms: f64,
        flops: f64,
        bytes: f64,
        samples: usize,
    }
    let mut groups: Vec<Group> = Vec::new();
    for s in steps {
        match groups
            .iter_mut()
            .find(|g| g.op == s.op && g.kernel == s.kernel && g.samples == s.samples)
        {
            Some(g) => {
                g.count += 1;
                g.ms += s.ms;
                g.flops += s.flops;
                g.bytes += s.bytes;
            }
            None => groups.push(Group {
                op: s.op.clone(),
                kernel: s.kernel.clone(),
                count: 1,
                ms: s.ms,
                flops: s.flops,
                bytes: s.bytes,
                samples: s.samples,
            }),
        }
    }
    groups.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    let total: f64 = steps.iter().map(|s| s.ms).sum();
    let mut out = String::from(
        "| step | kernel | samples | count | total µs | µs each | % of pass | TFLOP/s | GB/s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for g in &groups {
        let s = g.ms / 1e3; // seconds
        let rate = |x: f64, unit: f64| {
            if x > 0.0 && s > 0.0 {
                format!("{:.1}", x / s / unit)
            } else {
                String::new()
            }
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |\n",
            g.op,
            g.kernel,
            g.samples,
            g.count,
            g.ms * 1e3,
            g.ms * 1e3 / g.count as f64,
            100.0 * g.ms / total.max(1e-12),
            rate(g.flops, 1e12),
            rate(g.bytes, 1e9),
        ));
    }
    out.push_str(&format!("\n{} steps, {total:.3} ms; ", steps.len()));
    out.push_str(&if profile.back_to_back {
        format!(
            "run back to back: the host launched them in {:.1} ms while a {:.0}-ms hold kept the GPU busy, so no launch time is in them.\n",
            profile.launch_ms, profile.hold_ms
        )
    } else if profile.hold_ms > 0.0 {
        format!(
            "launched one by one: the host took {:.1} ms to launch them, more than the {:.0}-ms hold, so the step times may include the host's launch time.\n",
            profile.launch_ms, profile.hold_ms
        )
    } else {
        format!(
            "launched one by one in {:.1} ms, each step timed by the wall clock as it ran.\n",
            profile.launch_ms
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::{prefetch_table, split_threshold, PrefetchAb};

    #[test]
    fn the_prefetch_table_divides_by_the_mean_of_both_off_timings_and_marks_a_failed_check() {
        let row = |batch, on_ms, ok| PrefetchAb {
            config: "ResNet-101 f16 full".into(),
            batch,
            off_ms: 1.0,
            on_ms,
            off_again_ms: 1.5,
            max_err: if ok { 2e-3 } else { 0.5 },
            ok,
        };
        let t = prefetch_table(&[row(1, Some(1.0), true), row(64, None, false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert_eq!(
            lines[2],
            "| ResNet-101 f16 full | 1 | 1.000 | 1.000 | 1.500 | 0.800 | 2.0e-3 | ok |"
        );
        assert_eq!(
            lines[3],
            "| ResNet-101 f16 full | 64 | 1.000 | - | 1.500 | - | 5.0e-1 | FAIL |"
        );
    }

    #[test]
    fn a_threshold_falls_between_two_confidences_never_on_one() {
        let conf = [0.9, 0.7, 0.5, 0.2];
        assert_eq!(split_threshold(&conf, 0), f32::INFINITY);
        assert!((split_threshold(&conf, 1) - 0.8).abs() < 1e-6);
        assert!((split_threshold(&conf, 2) - 0.6).abs() < 1e-6);
        // All leave: below the last by a margin, not at it.
        let t = split_threshold(&conf, 4);
        assert!(t < 0.2 && t > 0.19, "{t}");
        // One sample leaving (batch 1, 50% rounds up): not at its own confidence.
        let t = split_threshold(&[0.869], 1);
        assert!(t < 0.869 && t > 0.86, "{t}");
        let t = split_threshold(&[0.0], 1);
        assert!(t < 0.0, "{t}");
        // Each sample is on the side it was put on, with room for rounding.
        for want in 0..=conf.len() {
            let t = split_threshold(&conf, want);
            for (i, &c) in conf.iter().enumerate() {
                assert_eq!(c >= t, i < want, "want {want}, conf {c}, threshold {t}");
            }
        }
    }

    #[test]
    fn ties_across_the_split_leave_together() {
        assert_eq!(split_threshold(&[0.9, 0.5, 0.5, 0.1], 2), 0.5);
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() - 1);
        assert_eq!(split_threshold(&[a, b], 1), a);
    }
}
