//! Replaying gate decisions from cached scores: what accuracy, exit fractions and
//! FLOPs a threshold setting gives, without running the network again.
//!
//! The rule is the runtime's: a sample's confidence at gate `g` is
//! [`crate::plan::decide`]`(scores, rule)`, and the sample leaves at the first gate whose
//! confidence is at least its threshold, with that gate's arg-max class; samples that
//! pass every gate take the head's arg-max. A threshold of `+∞` never exits (even a
//! non-finite score), `−∞` always exits (even a NaN score).

use super::train::{check_labels, check_len};
use crate::plan::{decide, ExitRule, Plan};
use crate::{Error, Result};
use rayon::prelude::*;
use serde::Serialize;

/// Per-sample scores of every gate and of the head, with the cost of each exit.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreTable {
    pub n: usize,
    pub classes: usize,
    pub labels: Vec<u8>,
    /// One `n × classes` row-major block per gate, in network order.
    pub gate_scores: Vec<Vec<f32>>,
    /// `n × classes`.
    pub head_logits: Vec<f32>,
    /// How gate scores become a confidence (the head is always arg-max).
    pub rule: ExitRule,
    /// `gates + 1` entries: FLOPs a sample costs when it exits at gate `g` (gates passed
    /// included); the last is the cost of running to the head.
    pub flops_per_exit: Vec<u64>,
}

impl ScoreTable {
    /// `flops_per_exit` for a plan: exit at each of its gates, then the head, each with
    /// the cost of the gates passed on the way ([`Plan::flops_for_exit`]).
    pub fn flops_per_exit(plan: &Plan) -> Vec<u64> {
        (0..plan.gates.len())
            .map(|g| plan.flops_for_exit(Some(g)))
            .chain([plan.flops_for_exit(None)])
            .collect()
    }

    pub fn gates(&self) -> usize {
        self.gate_scores.len()
    }

    /// Checks every length and label.
    pub fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::Input("score table has no samples".into()));
        }
        if self.classes == 0 {
            return Err(Error::Input("score table has no classes".into()));
        }
        if self.labels.len() != self.n {
            return Err(Error::Input(format!(
                "score table: {} labels for {} samples",
                self.labels.len(),
                self.n
            )));
        }
        check_labels(&self.labels, self.classes)?;
        check_len("head logits", self.head_logits.len(), self.n, self.classes)?;
        for (g, s) in self.gate_scores.iter().enumerate() {
            check_len(
                &format!("scores of gate {g}"),
                s.len(),
                self.n,
                self.classes,
            )?;
        }
        if self.flops_per_exit.len() != self.gates() + 1 {
            return Err(Error::Input(format!(
                "flops_per_exit has {} entries; {} gate(s) need {}",
                self.flops_per_exit.len(),
                self.gates(),
                self.gates() + 1
            )));
        }
        Ok(())
    }

    /// Accuracy of the head alone (no exits) on this table, as a fraction.
    pub fn backbone_accuracy(&self) -> Result<f64> {
        let p = Prepared::new(self)?;
        Ok(p.head_correct.iter().filter(|&&c| c).count() as f64 / p.n as f64)
    }
}

/// Result of one threshold setting, per sample and in total.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    pub thresholds: Vec<f32>,
    /// Fraction of samples whose final class is their label.
    pub accuracy: f64,
    /// Per gate, the fraction of all samples that left there.
    pub exit_fraction: Vec<f64>,
    pub avg_flops: f64,
    /// Per sample, the gate it left at (`None`: ran to the head).
    pub exits: Vec<Option<usize>>,
    /// Per sample, the class it was given.
    pub classes: Vec<usize>,
}

/// Totals of one threshold setting (an [`Outcome`] without the per-sample part).
/// Infinite thresholds serialise to JSON as `null`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepPoint {
    pub thresholds: Vec<f32>,
    pub accuracy: f64,
    pub exit_fraction: Vec<f64>,
    pub avg_flops: f64,
}

/// Replays `thresholds` (one per gate) on `table`.
pub fn simulate(table: &ScoreTable, thresholds: &[f32]) -> Result<Outcome> {
    let p = Prepared::new(table)?;
    p.check_thresholds(thresholds)?;
    let mut exits = Vec::with_capacity(p.n);
    let mut classes = Vec::with_capacity(p.n);
    for i in 0..p.n {
        let e = p.exit_of(i, thresholds);
        exits.push(e);
        classes.push(match e {
            Some(g) => p.gate_class[g][i] as usize,
            None => p.head_class[i] as usize,
        });
    }
    let tally = p.tally(thresholds);
    let point = p.point(thresholds, &tally);
    Ok(Outcome {
        thresholds: point.thresholds,
        accuracy: point.accuracy,
        exit_fraction: point.exit_fraction,
        avg_flops: point.avg_flops,
        exits,
        classes,
    })
}

/// Evaluates each listed threshold setting (each `gates` long), in order.
pub fn sweep(table: &ScoreTable, configs: &[Vec<f32>]) -> Result<Vec<SweepPoint>> {
    let p = Prepared::new(table)?;
    for t in configs {
        p.check_thresholds(t)?;
    }
    Ok(configs
        .par_iter()
        .map(|t| p.point(t, &p.tally(t)))
        .collect())
}

/// Most settings [`grid`] will evaluate in one call.
pub const MAX_GRID: usize = 10_000_000;

/// Evaluates the Cartesian product of per-gate threshold lists (`axes[g]` for gate `g`),
/// the last gate varying fastest.
pub fn grid(table: &ScoreTable, axes: &[Vec<f32>]) -> Result<Vec<SweepPoint>> {
    table.validate()?;
    if axes.len() != table.gates() {
        return Err(Error::Config(format!(
            "{} threshold axes for {} gate(s)",
            axes.len(),
            table.gates()
        )));
    }
    let total = axes
        .iter()
        .try_fold(1usize, |acc, a| acc.checked_mul(a.len()))
        .filter(|&t| t <= MAX_GRID)
        .ok_or_else(|| Error::Config(format!("threshold grid exceeds {MAX_GRID} settings")))?;
    let configs: Vec<Vec<f32>> = (0..total)
        .map(|mut k| {
            let mut t = vec![0f32; axes.len()];
            for (g, a) in axes.iter().enumerate().rev() {
                t[g] = a[k % a.len()];
                k /= a.len();
            }
            t
        })
        .collect();
    sweep(table, &configs)
}

/// The points no other point beats on both accuracy (higher) and FLOPs (lower), sorted
/// by FLOPs; accuracy rises strictly along the result.
pub fn pareto_front(points: &[SweepPoint]) -> Vec<SweepPoint> {
    let mut sorted: Vec<&SweepPoint> = points
        .iter()
        .filter(|p| p.accuracy.is_finite() && p.avg_flops.is_finite())
        .collect();
    sorted.sort_by(|a, b| {
        a.avg_flops
            .total_cmp(&b.avg_flops)
            .then(b.accuracy.total_cmp(&a.accuracy))
    });
    let mut front: Vec<SweepPoint> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|l| p.accuracy > l.accuracy) {
            front.push(p.clone());
        }
    }
    front
}

/// Best accuracy among `points` whose average FLOPs are at most `max_avg_flops`
/// (`None` if none is that cheap): comparing two fronts at equal cost, e.g. hinge gates
/// against cross-entropy gates.
pub fn accuracy_at_flops(points: &[SweepPoint], max_avg_flops: f64) -> Option<f64> {
    points
        .iter()
        .filter(|p| p.avg_flops <= max_avg_flops)
        .map(|p| p.accuracy)
        .max_by(f64::total_cmp)
}

/// A table reduced to what decisions need: per gate and sample the confidence, the
/// class and whether it is right; per sample whether the head is right.
pub(crate) struct Prepared {
    pub n: usize,
    pub conf: Vec<Vec<f32>>,
    pub gate_class: Vec<Vec<u32>>,
    pub gate_correct: Vec<Vec<bool>>,
    pub head_class: Vec<u32>,
    pub head_correct: Vec<bool>,
    pub flops: Vec<u64>,
}

/// Counts of one setting; [`Prepared::point`] turns them into fractions, the one place
/// where that happens, so calibration and [`simulate`] cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    pub correct: usize,
    pub exits: Vec<usize>,
    pub total_flops: u128,
}

impl Prepared {
    pub fn new(t: &ScoreTable) -> Result<Self> {
        t.validate()?;
        let c = t.classes;
        let mut conf = Vec::with_capacity(t.gates());
        let mut gate_class = Vec::with_capacity(t.gates());
        let mut gate_correct = Vec::with_capacity(t.gates());
        for s in &t.gate_scores {
            let (mut cf, mut cl, mut ok) = (Vec::new(), Vec::new(), Vec::new());
            for (row, &y) in s.chunks_exact(c).zip(&t.labels) {
                let (k, v) = decide(row, t.rule);
                cf.push(v);
                cl.push(k as u32);
                ok.push(k == y as usize);
            }
            conf.push(cf);
            gate_class.push(cl);
            gate_correct.push(ok);
        }
        let mut head_class = Vec::with_capacity(t.n);
        let mut head_correct = Vec::with_capacity(t.n);
        for (row, &y) in t.head_logits.chunks_exact(c).zip(&t.labels) {
            let k = decide(row, ExitRule::Hinge).0;
            head_class.push(k as u32);
            head_correct.push(k == y as usize);
        }
        Ok(Prepared {
            n: t.n,
            conf,
            gate_class,
            gate_correct,
            head_class,
            head_correct,
            flops: t.flops_per_exit.clone(),
        })
    }

    pub fn gates(&self) -> usize {
        self.conf.len()
    }

    pub fn check_thresholds(&self, t: &[f32]) -> Result<()> {
        if t.len() != self.gates() {
            return Err(Error::Config(format!(
                "{} threshold(s) for {} gate(s)",
                t.len(),
                self.gates()
            )));
        }
        if t.iter().any(|v| v.is_nan()) {
            return Err(Error::Config("a threshold is NaN".into()));
        }
        Ok(())
    }

    #[inline]
    pub fn exit_of(&self, i: usize, t: &[f32]) -> Option<usize> {
        (0..t.len()).find(|&g| {
            let tg = t[g];
            tg == f32::NEG_INFINITY || (tg != f32::INFINITY && self.conf[g][i] >= tg)
        })
    }

    pub fn tally(&self, t: &[f32]) -> Tally {
        let mut exits = vec![0usize; t.len()];
        let mut correct = 0usize;
        for i in 0..self.n {
            match self.exit_of(i, t) {
                Some(g) => {
                    exits[g] += 1;
                    correct += self.gate_correct[g][i] as usize;
                }
                None => correct += self.head_correct[i] as usize,
            }
        }
        let head = self.n - exits.iter().sum::<usize>();
        let total_flops = exits
            .iter()
            .zip(&self.flops)
            .map(|(&e, &f)| e as u128 * f as u128)
            .sum::<u128>()
            + head as u128 * self.flops[t.len()] as u128;
        Tally {
            correct,
            exits,
            total_flops,
        }
    }

    pub fn accuracy(&self, tally: &Tally) -> f64 {
        tally.correct as f64 / self.n as f64
    }

    pub fn avg_flops(&self, tally: &Tally) -> f64 {
        tally.total_flops as f64 / self.n as f64
    }

    pub fn point(&self, t: &[f32], tally: &Tally) -> SweepPoint {
        SweepPoint {
            thresholds: t.to_vec(),
            accuracy: self.accuracy(tally),
            exit_fraction: tally
                .exits
                .iter()
                .map(|&e| e as f64 / self.n as f64)
                .collect(),
            avg_flops: self.avg_flops(tally),
        }
    }
}
