//! Choosing thresholds on a score table.
//!
//! - [`calibrate_max_drop`]: fewest average FLOPs such that accuracy stays within a
//!   given number of points of the backbone's (head only, no exits) on the same table;
//! - [`calibrate_flops_budget`]: highest accuracy within an average-FLOPs budget.
//!
//! Candidate thresholds for a gate are `+∞` (never exit) followed by quantiles of the
//! confidences observed at that gate, highest first ([`threshold_candidates`]).
//! - One gate: every candidate ([`CANDIDATES_ONE_GATE`]) is tried.
//! - Two gates: every pair of [`CANDIDATES_TWO_GATES`] candidates is tried, in
//!   O(n + K²) rather than O(n·K²): each sample is binned by the candidate index at
//!   which it starts to exit at each gate, and 2-D prefix sums of the bins give the
//!   exit and correct counts of any pair in constant time.
//! - More gates: up to [`EXHAUSTIVE_LIMIT`] combinations of [`CANDIDATES_PER_GATE`]
//!   are tried one by one; beyond that, coordinate descent (one gate at a time over all
//!   its candidates, until no move helps) from two starts, "no exits" and "every gate
//!   at its lowest candidate".
//!
//! Constraints are checked with exactly the arithmetic
//! [`super::simulate`] reports, so the returned thresholds never break them on the
//! table they were calibrated on. Ties go to the candidate listed first, i.e. to
//! higher thresholds.

use super::eval::{grid, pareto_front, Prepared, ScoreTable, SweepPoint, Tally};
use crate::{Error, Result};
use rayon::prelude::*;

/// Candidates per gate with three gates or more.
pub const CANDIDATES_PER_GATE: usize = 200;
/// Candidates per gate with two gates (a million pairs, each O(1)).
pub const CANDIDATES_TWO_GATES: usize = 1000;
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
    let p = Prepared::new(table)?;
    let axes = candidates(&p, per_gate);
    if axes.len() == 2 {
        let g = Grid2::new(&p, &axes);
        let points: Vec<SweepPoint> = (0..g.len())
            .map(|k| p.point(&thresholds_at(&axes, k), &g.tally(k)))
            .collect();
        return Ok(pareto_front(&points));
    }
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
    let per_gate = match gates {
        1 => CANDIDATES_ONE_GATE,
        2 => CANDIDATES_TWO_GATES,
        _ => CANDIDATES_PER_GATE,
    };
    let cand = candidates(p, per_gate);
    if gates == 2 {
        let g = Grid2::new(p, &cand);
        let (_, best) = (0..g.len())
            .into_par_iter()
            .map(|k| (goal.key(p, &g.tally(k)), k))
            .reduce(|| ((false, i128::MIN, i128::MIN), usize::MAX), better);
        return Ok(thresholds_at(&cand, best.min(g.len() - 1)));
    }
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

/// Exact tallies of every pair of candidate thresholds of two gates.
///
/// With candidates `c₀ = +∞ > c₁ > … > c_{L−1}` at a gate, a sample exits there under
/// candidate `k` iff `k ≥ level`, where `level` is the first `k ≥ 1` with `c_k ≤ conf`
/// (`L`, never, when there is none or the confidence is NaN). Under the pair `(a, b)`
/// a sample leaves at gate 1 iff `level₁ ≤ a`, at gate 2 iff `level₁ > a` and
/// `level₂ ≤ b`, and runs to the head otherwise. Binning samples by
/// `(level₁, level₂)` and taking 2-D prefix sums `P[x][y] = Σ_{l₁ ≤ x, l₂ ≤ y}` turns each
/// of those sets into at most two lookups.
pub(crate) struct Grid2 {
    len: [usize; 2],
    /// Row length of the prefix arrays: `len[1] + 1`.
    stride: usize,
    count: Vec<u64>,
    ok1: Vec<u64>,
    ok2: Vec<u64>,
    okh: Vec<u64>,
    okh_total: u64,
    n: u64,
    flops: [u64; 3],
}

impl Grid2 {
    pub(crate) fn new(p: &Prepared, cand: &[Vec<f32>]) -> Self {
        let len = [cand[0].len(), cand[1].len()];
        let stride = len[1] + 1;
        let cells = (len[0] + 1) * stride;
        let (mut count, mut ok1, mut ok2, mut okh) = (
            vec![0u64; cells],
            vec![0u64; cells],
            vec![0u64; cells],
            vec![0u64; cells],
        );
        let level = |c: &[f32], conf: f32| -> usize {
            if conf.is_nan() {
                return c.len();
            }
            // c[1..] decreases strictly: count the candidates above `conf`.
            1 + c[1..].partition_point(|&t| t > conf)
        };
        let mut okh_total = 0;
        for i in 0..p.n {
            let cell = level(&cand[0], p.conf[0][i]) * stride + level(&cand[1], p.conf[1][i]);
            count[cell] += 1;
            ok1[cell] += p.gate_correct[0][i] as u64;
            ok2[cell] += p.gate_correct[1][i] as u64;
            okh[cell] += p.head_correct[i] as u64;
            okh_total += p.head_correct[i] as u64;
        }
        for a in [&mut count, &mut ok1, &mut ok2, &mut okh] {
            for x in 0..=len[0] {
                for y in 0..=len[1] {
                    let mut v = a[x * stride + y];
                    if x > 0 {
                        v += a[(x - 1) * stride + y];
                    }
                    if y > 0 {
                        v += a[x * stride + y - 1];
                    }
                    if x > 0 && y > 0 {
                        v -= a[(x - 1) * stride + y - 1];
                    }
                    a[x * stride + y] = v;
                }
            }
        }
        Grid2 {
            len,
            stride,
            count,
            ok1,
            ok2,
            okh,
            okh_total,
            n: p.n as u64,
            flops: [p.flops[0], p.flops[1], p.flops[2]],
        }
    }

    /// Number of pairs; pair `k` is `(k / len₂, k % len₂)`, as in [`thresholds_at`].
    pub(crate) fn len(&self) -> usize {
        self.len[0] * self.len[1]
    }

    pub(crate) fn tally(&self, k: usize) -> Tally {
        let (a, b) = (k / self.len[1], k % self.len[1]);
        let (last_x, last_y) = (self.len[0], self.len[1]);
        let at = |v: &[u64], x: usize, y: usize| v[x * self.stride + y];
        // Σ over l₁ ≤ a (all l₂), and over l₁ > a, l₂ ≤ b.
        let first = |v: &[u64]| at(v, a, last_y);
        let second = |v: &[u64]| at(v, last_x, b) - at(v, a, b);
        let e1 = first(&self.count);
        let e2 = second(&self.count);
        let head = self.n - e1 - e2;
        let correct = first(&self.ok1) + second(&self.ok2) + self.okh_total
            - first(&self.okh)
            - second(&self.okh);
        Tally {
            correct: correct as usize,
            exits: vec![e1 as usize, e2 as usize],
            total_flops: e1 as u128 * self.flops[0] as u128
                + e2 as u128 * self.flops[1] as u128
                + head as u128 * self.flops[2] as u128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ExitRule;

    /// The O(1) pair tallies equal the per-sample replay for every pair.
    #[test]
    fn gates_grid2_matches_replay() {
        let (n, c) = (300, 4);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / 16_777_216.0) * 4.0 - 1.0
        };
        let labels: Vec<u8> = (0..n).map(|i| (i % c) as u8).collect();
        let mut gate_scores: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..n * c).map(|_| next()).collect())
            .collect();
        // Ties, a NaN and an infinity.
        gate_scores[0][5] = f32::NAN;
        gate_scores[1][9] = f32::INFINITY;
        for i in 0..20 {
            gate_scores[1][i * c] = 2.0;
        }
        let table = ScoreTable {
            n,
            classes: c,
            labels,
            gate_scores,
            head_logits: (0..n * c).map(|_| next()).collect(),
            rule: ExitRule::Hinge,
            flops_per_exit: vec![10, 25, 100],
        };
        let p = Prepared::new(&table).unwrap();
        for per_gate in [1, 7, 50, 1000] {
            let cand = candidates(&p, per_gate);
            let g = Grid2::new(&p, &cand);
            assert_eq!(g.len(), cand[0].len() * cand[1].len());
            for k in 0..g.len() {
                assert_eq!(g.tally(k), p.tally(&thresholds_at(&cand, k)), "pair {k}");
            }
        }
    }
}
