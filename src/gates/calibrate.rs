//! Choosing thresholds on a score table.
//!
//! - [`calibrate_max_drop`]: fewest average FLOPs such that accuracy stays within a
//!   given number of points of the backbone's (head only, no exits) on the same table;
//! - [`calibrate_flops_budget`]: highest accuracy within an average-FLOPs budget.
//!
//! Candidate thresholds for a gate are `+∞` (never exit) followed by quantiles of the
//! confidences observed at that gate, highest first ([`threshold_candidates`]). With
//! up to [`EXHAUSTIVE_LIMIT`] combinations (two gates of 200 candidates each) every
//! combination is evaluated; beyond that, coordinate descent (one gate at a time over
//! all its candidates, until no move helps) from two starts, "no exits" and "every
//! gate at its lowest candidate". Constraints are checked with exactly the arithmetic
//! [`super::simulate`] reports, so the returned thresholds never break them on the
//! table they were calibrated on. Ties go to the candidate listed first, i.e. to
//! higher thresholds.

use super::eval::{grid, pareto_front, Prepared, ScoreTable, SweepPoint, Tally};
use crate::{Error, Result};
use rayon::prelude::*;

/// Candidates per gate when there are two gates or more.
pub const CANDIDATES_PER_GATE: usize = 200;
/// Candidates for a single gate (one dimension is cheap).
pub const CANDIDATES_ONE_GATE: usize = 4000;
/// Largest number of combinations searched exhaustively.
pub const EXHAUSTIVE_LIMIT: usize = 100_000;

/// Thresholds with the fewest average FLOPs whose accuracy is at least the backbone's
/// accuracy on `table` minus `max_drop_points / 100`. Always succeeds on a valid
/// table: "no exits" meets any drop ≥ 0.
pub fn calibrate_max_drop(table: &ScoreTable, max_drop_points: f64) -> Result<Vec<f32>> {
    if !(max_drop_points.is_finite() && max_drop_points >= 0.0) {
        return Err(Error::Config(format!(
            "maximum accuracy drop must be ≥ 0 points, got {max_drop_points}"
        )));
    }
    let p = Prepared::new(table)?;
    let base = table.backbone_accuracy()?;
    let floor = base - max_drop_points / 100.0;
    let goal = Goal::MaxDrop { floor };
    let t = search(&p, &goal)?;
    let tally = p.tally(&t);
    if !goal.feasible(&p, &tally) {
        // Unreachable: "no exits" is always a candidate and always feasible.
        return Err(Error::Config(format!(
            "no thresholds keep accuracy ≥ {:.4}% on this table",
            floor * 100.0
        )));
    }
    Ok(t)
}

/// Thresholds with the highest accuracy whose average FLOPs per sample are at most
/// `max_avg_flops` on `table`. Fails when no candidate setting is that cheap.
pub fn calibrate_flops_budget(table: &ScoreTable, max_avg_flops: f64) -> Result<Vec<f32>> {
    if max_avg_flops.is_nan() {
        return Err(Error::Config("FLOPs budget is NaN".into()));
    }
    let p = Prepared::new(table)?;
    let goal = Goal::FlopsBudget { max_avg_flops };
    let t = search(&p, &goal)?;
    let tally = p.tally(&t);
    if !goal.feasible(&p, &tally) {
        return Err(Error::Config(format!(
            "no thresholds reach an average of {max_avg_flops:.4e} FLOPs per sample; the \
             cheapest setting found costs {:.4e}",
            p.avg_flops(&tally)
        )));
    }
    Ok(t)
}

/// Per gate: `+∞`, then up to `per_gate` distinct observed finite confidences at evenly
/// spaced quantiles, in decreasing order (the highest and the lowest always included).
pub fn threshold_candidates(table: &ScoreTable, per_gate: usize) -> Result<Vec<Vec<f32>>> {
    let p = Prepared::new(table)?;
    Ok(candidates(&p, per_gate))
}

/// The accuracy/FLOPs trade-off curve of `table`: the Pareto front of every
/// combination of up to `per_gate` candidate thresholds per gate (see
/// [`threshold_candidates`]), sorted by FLOPs. Fails when there would be more than
/// [`super::eval::MAX_GRID`] combinations.
pub fn frontier(table: &ScoreTable, per_gate: usize) -> Result<Vec<SweepPoint>> {
    let axes = threshold_candidates(table, per_gate)?;
    Ok(pareto_front(&grid(table, &axes)?))
}

fn candidates(p: &Prepared, per_gate: usize) -> Vec<Vec<f32>> {
    p.conf
        .iter()
        .map(|conf| {
            let mut v: Vec<f32> = conf.iter().copied().filter(|c| c.is_finite()).collect();
            v.sort_by(|a, b| b.total_cmp(a));
            v.dedup();
            let mut out = vec![f32::INFINITY];
            let m = v.len();
            if m <= per_gate {
                out.extend_from_slice(&v);
            } else if per_gate > 0 {
                let k = per_gate.max(2);
                for q in 0..k {
                    let idx = (q as f64 * (m - 1) as f64 / (k - 1) as f64).round() as usize;
                    let c = v[idx.min(m - 1)];
                    if *out.last().unwrap_or(&f32::NAN) != c {
                        out.push(c);
                    }
                }
            }
            out
        })
        .collect()
}

enum Goal {
    MaxDrop { floor: f64 },
    FlopsBudget { max_avg_flops: f64 },
}

/// Larger is better; compared lexicographically (feasibility first).
type Key = (bool, i128, i128);

impl Goal {
    fn feasible(&self, p: &Prepared, t: &Tally) -> bool {
        match *self {
            Goal::MaxDrop { floor } => p.accuracy(t) >= floor,
            Goal::FlopsBudget { max_avg_flops } => p.avg_flops(t) <= max_avg_flops,
        }
    }

    fn key(&self, p: &Prepared, t: &Tally) -> Key {
        let ok = self.feasible(p, t);
        let correct = t.correct as i128;
        let cheap = -(t.total_flops as i128);
        match (self, ok) {
            // Feasible: cheapest, then most accurate. Infeasible: closest to the floor.
            (Goal::MaxDrop { .. }, true) => (true, cheap, correct),
            (Goal::MaxDrop { .. }, false) => (false, correct, cheap),
            // Feasible: most accurate, then cheapest. Infeasible: closest to the budget.
            (Goal::FlopsBudget { .. }, true) => (true, correct, cheap),
            (Goal::FlopsBudget { .. }, false) => (false, cheap, correct),
        }
    }
}

/// Best of `(key, index)` pairs: highest key, then lowest index, so that the result
/// does not depend on how rayon splits the work.
fn better(a: (Key, usize), b: (Key, usize)) -> (Key, usize) {
    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
        b
    } else {
        a
    }
}

fn search(p: &Prepared, goal: &Goal) -> Result<Vec<f32>> {
    let gates = p.gates();
    if gates == 0 {
        return Ok(Vec::new());
    }
    let per_gate = if gates == 1 {
        CANDIDATES_ONE_GATE
    } else {
        CANDIDATES_PER_GATE
    };
    let cand = candidates(p, per_gate);
    let combos = cand
        .iter()
        .try_fold(1usize, |acc, c| acc.checked_mul(c.len()))
        .filter(|&c| c <= EXHAUSTIVE_LIMIT);
    Ok(match combos {
        Some(total) => exhaustive(p, goal, &cand, total),
        None => {
            let starts = [
                vec![0usize; gates],
                cand.iter().map(|c| c.len() - 1).collect::<Vec<_>>(),
            ];
            let mut best: Option<(Key, Vec<f32>)> = None;
            for s in starts {
                let (k, t) = coordinate_descent(p, goal, &cand, s);
                if best.as_ref().is_none_or(|(bk, _)| k > *bk) {
                    best = Some((k, t));
                }
            }
            best.map(|(_, t)| t).unwrap_or_default()
        }
    })
}

fn thresholds_at(cand: &[Vec<f32>], mut k: usize) -> Vec<f32> {
    let mut t = vec![0f32; cand.len()];
    for (g, c) in cand.iter().enumerate().rev() {
        t[g] = c[k % c.len()];
        k /= c.len();
    }
    t
}

fn exhaustive(p: &Prepared, goal: &Goal, cand: &[Vec<f32>], total: usize) -> Vec<f32> {
    let (_, best) = (0..total)
        .into_par_iter()
        .map(|k| (goal.key(p, &p.tally(&thresholds_at(cand, k))), k))
        .reduce(|| ((false, i128::MIN, i128::MIN), usize::MAX), better);
    thresholds_at(cand, best.min(total - 1))
}

fn coordinate_descent(
    p: &Prepared,
    goal: &Goal,
    cand: &[Vec<f32>],
    mut at: Vec<usize>,
) -> (Key, Vec<f32>) {
    let pick = |at: &[usize]| -> Vec<f32> { at.iter().zip(cand).map(|(&i, c)| c[i]).collect() };
    let mut key = goal.key(p, &p.tally(&pick(&at)));
    // Each accepted move strictly raises the key, so this terminates; the cap bounds time.
    for _round in 0..50 {
        let mut moved = false;
        for g in 0..cand.len() {
            let (k, i) = (0..cand[g].len())
                .into_par_iter()
                .map(|i| {
                    let mut trial = at.clone();
                    trial[g] = i;
                    (goal.key(p, &p.tally(&pick(&trial))), i)
                })
                .reduce(|| ((false, i128::MIN, i128::MIN), usize::MAX), better);
            if k > key {
                key = k;
                at[g] = i;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    (key, pick(&at))
}
