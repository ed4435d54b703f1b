//! Replaying exits from cached scores, sweeps, and calibration under budgets.

mod common;
use common::Rng;
use dgate_rt::gates::calibrate::{threshold_candidates, CANDIDATES_TWO_GATES};
use dgate_rt::gates::{
    accuracy_at_flops, calibrate_flops_budget, calibrate_max_drop, frontier, grid, pareto_front,
    simulate, sweep, ScoreTable,
};
use dgate_rt::plan::{decide, ExitRule};
use dgate_rt::Error;

/// A table like a real one: later gates and the head are more often right, and a
/// gate's score for the true class is higher when the sample is "easy".
fn random_table(seed: u64, n: usize, gates: usize, classes: usize, rule: ExitRule) -> ScoreTable {
    let mut rng = Rng(seed);
    let labels: Vec<u8> = (0..n).map(|_| rng.below(classes) as u8).collect();
    let ease: Vec<f32> = (0..n).map(|_| rng.unif() as f32).collect();
    let block = |strength: f32, rng: &mut Rng| -> Vec<f32> {
        let mut s = Vec::with_capacity(n * classes);
        for i in 0..n {
            for j in 0..classes {
                let boost = if j == labels[i] as usize {
                    strength * (0.3 + ease[i])
                } else {
                    0.0
                };
                s.push(rng.normal() + boost);
            }
        }
        s
    };
    let gate_scores: Vec<Vec<f32>> = (0..gates)
        .map(|g| block(1.0 + g as f32, &mut rng))
        .collect();
    let head_logits = block(2.0 + gates as f32, &mut rng);
    let mut flops: Vec<u64> = (0..=gates)
        .map(|g| 100_000_000 + 37_777_777 * g as u64 * (g as u64 + 1))
        .collect();
    flops[gates] += 123_456_789;
    ScoreTable {
        n,
        classes,
        labels,
        gate_scores,
        head_logits,
        rule,
        flops_per_exit: flops,
    }
}

/// The exit rule written out independently of the library's implementation.
fn reference(t: &ScoreTable, th: &[f32]) -> (Vec<Option<usize>>, Vec<usize>) {
    let c = t.classes;
    let mut exits = Vec::new();
    let mut classes = Vec::new();
    for i in 0..t.n {
        let mut e = None;
        for (g, s) in t.gate_scores.iter().enumerate() {
            let (k, conf) = decide(&s[i * c..(i + 1) * c], t.rule);
            let go = if th[g] == f32::INFINITY {
                false
            } else if th[g] == f32::NEG_INFINITY {
                true
            } else {
                conf >= th[g]
            };
            if go {
                e = Some((g, k));
                break;
            }
        }
        match e {
            Some((g, k)) => {
                exits.push(Some(g));
                classes.push(k);
            }
            None => {
                exits.push(None);
                classes.push(decide(&t.head_logits[i * c..(i + 1) * c], ExitRule::Hinge).0);
            }
        }
    }
    (exits, classes)
}

#[test]
fn gates_simulate_at_plus_infinity_is_the_head() {
    for rule in [ExitRule::Hinge, ExitRule::Ce] {
        let t = random_table(1, 500, 2, 10, rule);
        let o = simulate(&t, &[f32::INFINITY, f32::INFINITY]).unwrap();
        let c = t.classes;
        let head: Vec<usize> = (0..t.n)
            .map(|i| decide(&t.head_logits[i * c..(i + 1) * c], ExitRule::Hinge).0)
            .collect();
        assert_eq!(o.classes, head);
        assert!(o.exits.iter().all(Option::is_none));
        assert_eq!(o.exit_fraction, vec![0.0, 0.0]);
        assert_eq!(o.avg_flops, t.flops_per_exit[2] as f64);
        let right = head
            .iter()
            .zip(&t.labels)
            .filter(|(&a, &b)| a == b as usize)
            .count();
        assert_eq!(o.accuracy, right as f64 / t.n as f64);
        assert_eq!(o.accuracy, t.backbone_accuracy().unwrap());
    }
}

#[test]
fn gates_simulate_at_minus_infinity_exits_everything_at_gate_one() {
    for rule in [ExitRule::Hinge, ExitRule::Ce] {
        let mut t = random_table(2, 300, 2, 10, rule);
        // Even a sample whose gate scores are NaN leaves at a −∞ threshold.
        t.gate_scores[0][0] = f32::NAN;
        for second in [f32::NEG_INFINITY, 0.0, f32::INFINITY] {
            let o = simulate(&t, &[f32::NEG_INFINITY, second]).unwrap();
            assert!(o.exits.iter().all(|&e| e == Some(0)));
            assert_eq!(o.exit_fraction, vec![1.0, 0.0]);
            assert_eq!(o.avg_flops, t.flops_per_exit[0] as f64);
            let c = t.classes;
            for i in 0..t.n {
                assert_eq!(
                    o.classes[i],
                    decide(&t.gate_scores[0][i * c..(i + 1) * c], rule).0
                );
            }
        }
    }
}

#[test]
fn gates_simulate_matches_an_independent_replay() {
    let mut rng = Rng(99);
    for (k, rule) in [ExitRule::Hinge, ExitRule::Ce, ExitRule::Hinge]
        .into_iter()
        .enumerate()
    {
        let gates = k + 1;
        let t = random_table(10 + k as u64, 700, gates, 7, rule);
        for _ in 0..20 {
            let th: Vec<f32> = (0..gates)
                .map(|_| match rule {
                    ExitRule::Hinge => 4.0 * rng.unif() as f32 - 0.5,
                    ExitRule::Ce => rng.unif() as f32,
                })
                .collect();
            let o = simulate(&t, &th).unwrap();
            let (exits, classes) = reference(&t, &th);
            assert_eq!(o.exits, exits);
            assert_eq!(o.classes, classes);
            let right = classes
                .iter()
                .zip(&t.labels)
                .filter(|(&a, &b)| a == b as usize)
                .count();
            assert_eq!(o.accuracy, right as f64 / t.n as f64);
            let mut flops = 0u128;
            for g in 0..gates {
                let cnt = exits.iter().filter(|&&e| e == Some(g)).count();
                assert_eq!(o.exit_fraction[g], cnt as f64 / t.n as f64);
                flops += cnt as u128 * t.flops_per_exit[g] as u128;
            }
            flops += exits.iter().filter(|e| e.is_none()).count() as u128
                * t.flops_per_exit[gates] as u128;
            assert_eq!(o.avg_flops, flops as f64 / t.n as f64);
            assert_eq!(o.thresholds, th);
        }
    }
}

#[test]
fn gates_sweep_and_grid_agree_with_simulate() {
    let t = random_table(4, 400, 2, 10, ExitRule::Hinge);
    let axes = vec![vec![f32::INFINITY, 2.0, 1.0], vec![3.0, 0.5]];
    let points = grid(&t, &axes).unwrap();
    assert_eq!(points.len(), 6);
    // The last gate varies fastest.
    assert_eq!(points[1].thresholds, vec![f32::INFINITY, 0.5]);
    assert_eq!(points[2].thresholds, vec![2.0, 3.0]);
    let configs: Vec<Vec<f32>> = points.iter().map(|p| p.thresholds.clone()).collect();
    assert_eq!(sweep(&t, &configs).unwrap(), points);
    for p in &points {
        let o = simulate(&t, &p.thresholds).unwrap();
        assert_eq!(
            (o.accuracy, o.avg_flops, &o.exit_fraction),
            (p.accuracy, p.avg_flops, &p.exit_fraction)
        );
    }
    let front = pareto_front(&points);
    assert!(!front.is_empty());
    for w in front.windows(2) {
        assert!(w[0].avg_flops < w[1].avg_flops && w[0].accuracy < w[1].accuracy);
    }
    for p in &points {
        assert!(front
            .iter()
            .any(|q| q.avg_flops <= p.avg_flops && q.accuracy >= p.accuracy));
    }
}

#[test]
fn gates_calibration_never_exceeds_its_budget_on_its_own_table() {
    for seed in 0..8u64 {
        let gates = 1 + (seed % 3) as usize;
        let rule = if seed % 2 == 0 {
            ExitRule::Hinge
        } else {
            ExitRule::Ce
        };
        let n = 300 + 137 * seed as usize;
        let t = random_table(100 + seed, n, gates, 10, rule);
        let base = t.backbone_accuracy().unwrap();
        for drop in [0.0, 0.5, 1.0, 3.0, 10.0] {
            let th = calibrate_max_drop(&t, drop).unwrap();
            let o = simulate(&t, &th).unwrap();
            assert!(
                o.accuracy >= base - drop / 100.0,
                "seed {seed} drop {drop}: {} < {base} − {drop}%",
                o.accuracy
            );
            assert!(o.avg_flops <= t.flops_per_exit[gates] as f64);
        }
        let (lo, hi) = (t.flops_per_exit[0] as f64, t.flops_per_exit[gates] as f64);
        let mut last_acc = 0.0;
        for frac in [0.0, 0.1, 0.3, 0.5, 0.8, 1.0] {
            let budget = lo + frac * (hi - lo);
            let th = calibrate_flops_budget(&t, budget).unwrap();
            let o = simulate(&t, &th).unwrap();
            assert!(
                o.avg_flops <= budget,
                "seed {seed}: {} > {budget}",
                o.avg_flops
            );
            if gates <= 2 {
                // Exhaustive search: a larger budget never gives less accuracy.
                assert!(o.accuracy >= last_acc);
            }
            last_acc = o.accuracy;
        }
        // A budget below the cheapest exit cannot be met.
        assert!(matches!(
            calibrate_flops_budget(&t, lo - 1.0),
            Err(Error::Config(_))
        ));
    }
}

#[test]
fn gates_calibration_is_optimal_over_its_candidate_grid() {
    // Brute force over the same candidates the calibration searches: with fewer samples
    // than CANDIDATES_TWO_GATES, every observed confidence.
    let t = random_table(7, 600, 2, 10, ExitRule::Hinge);
    let cand = threshold_candidates(&t, CANDIDATES_TWO_GATES).unwrap();
    assert_eq!(cand.len(), 2);
    assert!(cand
        .iter()
        .all(|c| c[0] == f32::INFINITY && c.len() == t.n + 1));
    let points = grid(&t, &cand).unwrap();
    let base = t.backbone_accuracy().unwrap();

    let th = calibrate_max_drop(&t, 1.0).unwrap();
    let o = simulate(&t, &th).unwrap();
    let best = points
        .iter()
        .filter(|p| p.accuracy >= base - 0.01)
        .map(|p| p.avg_flops)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(o.avg_flops, best);
    assert!(
        o.avg_flops < t.flops_per_exit[2] as f64,
        "gates this good should save FLOPs"
    );

    let budget = 0.5 * (t.flops_per_exit[0] + t.flops_per_exit[2]) as f64;
    let th = calibrate_flops_budget(&t, budget).unwrap();
    let o = simulate(&t, &th).unwrap();
    let best = points
        .iter()
        .filter(|p| p.avg_flops <= budget)
        .map(|p| p.accuracy)
        .fold(0.0, f64::max);
    assert_eq!(o.accuracy, best);
}

#[test]
fn gates_calibration_handles_ties_and_non_finite_scores() {
    // Constant scores (every confidence equal) and infinities must not trip the search.
    let mut t = random_table(5, 200, 2, 4, ExitRule::Hinge);
    t.gate_scores[0].iter_mut().for_each(|v| *v = 1.0);
    t.gate_scores[1][3] = f32::INFINITY;
    t.gate_scores[1][9] = f32::NAN;
    let th = calibrate_max_drop(&t, 2.0).unwrap();
    assert!(simulate(&t, &th).unwrap().accuracy >= t.backbone_accuracy().unwrap() - 0.02);
    let th = calibrate_flops_budget(&t, t.flops_per_exit[1] as f64).unwrap();
    assert!(simulate(&t, &th).unwrap().avg_flops <= t.flops_per_exit[1] as f64);
}

#[test]
fn gates_no_gates_is_the_backbone() {
    let t = random_table(6, 50, 0, 3, ExitRule::Hinge);
    assert_eq!(calibrate_max_drop(&t, 5.0).unwrap(), Vec::<f32>::new());
    let o = simulate(&t, &[]).unwrap();
    assert_eq!(o.accuracy, t.backbone_accuracy().unwrap());
    assert_eq!(o.avg_flops, t.flops_per_exit[0] as f64);
}

#[test]
fn gates_bad_tables_and_thresholds_are_errors() {
    let good = random_table(8, 20, 2, 5, ExitRule::Hinge);
    let is_input = |t: &ScoreTable| matches!(simulate(t, &[1.0, 1.0]), Err(Error::Input(_)));
    let mut t = good.clone();
    t.labels.pop();
    assert!(is_input(&t));
    let mut t = good.clone();
    t.labels[3] = 5;
    assert!(is_input(&t));
    let mut t = good.clone();
    t.gate_scores[1].pop();
    assert!(is_input(&t));
    let mut t = good.clone();
    t.head_logits.push(0.0);
    assert!(is_input(&t));
    let mut t = good.clone();
    t.flops_per_exit.pop();
    assert!(is_input(&t));
    let mut t = good.clone();
    t.n = 0;
    t.labels.clear();
    assert!(is_input(&t));

    let config = |r: dgate_rt::Result<Vec<f32>>| matches!(r, Err(Error::Config(_)));
    assert!(matches!(simulate(&good, &[1.0]), Err(Error::Config(_))));
    assert!(matches!(
        simulate(&good, &[1.0, f32::NAN]),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        sweep(&good, &[vec![1.0, 1.0], vec![2.0]]),
        Err(Error::Config(_))
    ));
    assert!(matches!(grid(&good, &[vec![1.0]]), Err(Error::Config(_))));
    assert!(matches!(
        grid(&good, &[vec![1.0; 10_000], vec![1.0; 10_000]]),
        Err(Error::Config(_))
    ));
    assert!(config(calibrate_max_drop(&good, -1.0)));
    assert!(config(calibrate_max_drop(&good, f64::NAN)));
    assert!(config(calibrate_flops_budget(&good, f64::NAN)));
}

#[test]
fn gates_frontier_dominates_calibration_and_compares_at_equal_flops() {
    let t = random_table(12, 2000, 2, 10, ExitRule::Hinge);
    let front = frontier(&t, 100).unwrap();
    assert!(front.len() > 5);
    for w in front.windows(2) {
        assert!(w[0].avg_flops < w[1].avg_flops && w[0].accuracy < w[1].accuracy);
    }
    // The most accurate point costs at most the full network and is at least as
    // accurate as it ("no exits" is on the grid).
    let top = front.last().unwrap();
    assert!(top.accuracy >= t.backbone_accuracy().unwrap());
    let budget = 0.5 * (t.flops_per_exit[0] + t.flops_per_exit[2]) as f64;
    let acc = accuracy_at_flops(&front, budget).unwrap();
    let exact = simulate(&t, &calibrate_flops_budget(&t, budget).unwrap()).unwrap();
    // 1000 candidates per gate in the calibration, 100 on this front.
    assert!(exact.accuracy >= acc);
    assert_eq!(
        accuracy_at_flops(&front, t.flops_per_exit[0] as f64 - 1.0),
        None
    );
}

#[test]
fn gates_calibration_on_a_test_set_sized_table_is_quick() {
    for gates in [2, 3] {
        let t = random_table(13, 10_000, gates, 10, ExitRule::Ce);
        let start = std::time::Instant::now();
        let th = calibrate_max_drop(&t, 1.0).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let o = simulate(&t, &th).unwrap();
        eprintln!(
            "{gates} gates, 10,000 samples: calibrated in {secs:.2} s: {th:?}, accuracy {:.4} (backbone {:.4}), {:.3} GFLOPs",
            o.accuracy,
            t.backbone_accuracy().unwrap(),
            o.avg_flops / 1e9
        );
        assert!(secs < 30.0);
    }
}

#[test]
fn gates_flops_per_exit_follows_the_plan() {
    use dgate_rt::plan::{Gate, Head, Plan, Stage, View};
    let view = View {
        buf: 0,
        offset: 0,
        channels: 4,
    };
    let stage = |flops| Stage {
        name: "s".into(),
        ops: vec![],
        output: view,
        out_h: 1,
        out_w: 1,
        flops,
        params: 0,
    };
    let gate = |after_stage| Gate {
        after_stage,
        input: view,
        h: 1,
        w: 1,
        weight: vec![0.0; 3 * 4],
        bias: vec![0.0; 3],
        threshold: 1.0,
        rule: ExitRule::Hinge,
    };
    let plan = Plan {
        arch: "toy".into(),
        classes: 3,
        buffers: vec![],
        input: view,
        stages: vec![stage(100), stage(1000), stage(10_000)],
        gates: vec![gate(0), gate(1)],
        head: Head {
            input: view,
            h: 1,
            w: 1,
            pre: None,
            weight: vec![0.0; 3 * 4],
            bias: vec![0.0; 3],
        },
    };
    // Each gate costs 2·3·4 = 24 FLOPs; so does the head.
    assert_eq!(
        ScoreTable::flops_per_exit(&plan),
        vec![100 + 24, 1100 + 48, 11_100 + 24 + 48]
    );
}
