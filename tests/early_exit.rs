//! Per-sample exits with compaction: every input gets exactly one result, in input order,
//! equal to what an independent per-sample computation (pooled features · gate weights)
//! says, whatever the thresholds and batch size.

use dgate_rt::backend::{cpu::CpuBackend, Backend};
use dgate_rt::model::Model;
use dgate_rt::plan::{decide, ExitRule, Plan};
use dgate_rt::weights::Weights;
use dgate_rt::zoo::{self, Rng};

/// A random network with random gates after each of the first `gates` stages.
pub fn gated(arch: &str, gates: usize, rule: &str, seed: u64) -> Model {
    let mut w: Weights = zoo::random(arch, seed).unwrap();
    let base = Model::from_weights(&w).unwrap();
    let mut rng = Rng::new(seed + 100);
    for k in 0..gates {
        let c = base.plan.stages[k].output.channels;
        let wt = (0..10 * c)
            .map(|_| rng.normal() / (c as f32).sqrt())
            .collect();
        let b = (0..10).map(|_| 0.1 * rng.normal()).collect();
        w.insert(&format!("gates.{k}.weight"), vec![10, c], wt);
        w.insert(&format!("gates.{k}.bias"), vec![10], b);
    }
    let after: Vec<String> = (1..=gates).map(|s| s.to_string()).collect();
    w.metadata.insert("gate_after".into(), after.join(","));
    w.metadata.insert("gate_loss".into(), rule.into());
    Model::from_weights(&w).unwrap()
}

fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * 3072).map(|_| rng.normal()).collect()
}

/// Expected (exit, class) per sample, from features computed with gates disabled.
fn reference(plan: &Plan, x: &[f32], n: usize) -> Vec<(Option<usize>, usize, Vec<f32>)> {
    let stages: Vec<usize> = plan.gates.iter().map(|g| g.after_stage).collect();
    let mut cpu = CpuBackend::new();
    let f = cpu.pooled_features(plan, x, n, &stages).unwrap();
    (0..n)
        .map(|i| {
            for (k, g) in plan.gates.iter().enumerate() {
                let c = g.input.channels;
                let feat = &f.features[k][i * c..(i + 1) * c];
                let scores = dgate_rt::backend::cpu::linear(feat, 1, c, &g.weight, &g.bias);
                let (class, conf) = decide(&scores, g.rule);
                if g.lets_out(conf) {
                    return (Some(k), class, scores);
                }
            }
            let r = &f.results[i];
            (None, r.class, r.logits.clone())
        })
        .collect()
}

fn quantile_thresholds(plan: &Plan, x: &[f32], n: usize, q: &[f32]) -> Vec<f32> {
    let stages: Vec<usize> = plan.gates.iter().map(|g| g.after_stage).collect();
    let f = CpuBackend::new()
        .pooled_features(plan, x, n, &stages)
        .unwrap();
    plan.gates
        .iter()
        .enumerate()
        .map(|(k, g)| {
            let c = g.input.channels;
            let s = dgate_rt::backend::cpu::linear(&f.features[k], n, c, &g.weight, &g.bias);
            let mut conf: Vec<f32> = s.chunks(10).map(|r| decide(r, g.rule).1).collect();
            conf.sort_by(f32::total_cmp);
            conf[((n - 1) as f32 * q[k]) as usize]
        })
        .collect()
}

fn check(arch: &str, rule: &str, n: usize, q: &[f32], seed: u64) {
    let mut m = gated(arch, q.len(), rule, seed);
    let x = images(n, seed);
    let t = quantile_thresholds(&m.plan, &x, n, q);
    m.plan.set_thresholds(&t).unwrap();
    let want = reference(&m.plan, &x, n);
    let got = CpuBackend::new().run(&m.plan, &x, n).unwrap();
    assert_eq!(got.len(), n);
    let mut exits = vec![0; q.len() + 1];
    for (i, (g, (exit, class, scores))) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.exit, *exit, "sample {i}: exit");
        assert_eq!(g.class, *class, "sample {i}: class");
        for (a, b) in g.logits.iter().zip(scores) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "sample {i}: {a} vs {b}"
            );
        }
        exits[exit.unwrap_or(q.len())] += 1;
    }
    // The thresholds were chosen so that every exit point is used.
    assert!(exits.iter().all(|&e| e > 0), "exits per point {exits:?}");
}

#[test]
fn compaction_matches_per_sample_reference_resnet_hinge() {
    check("resnet20", "hinge", 37, &[0.6, 0.5], 3);
}

#[test]
fn compaction_matches_per_sample_reference_resnet_ce() {
    check("resnet32", "ce", 29, &[0.5, 0.6], 4);
}

#[test]
fn compaction_matches_per_sample_reference_densenet() {
    check("densenet121", "hinge", 9, &[0.5, 0.4], 5);
}

/// `plan` without its gates, run on the CPU: every sample through the head.
fn backbone(plan: &Plan, x: &[f32], n: usize) -> Vec<dgate_rt::plan::SampleResult> {
    let mut plain = plan.clone();
    plain.gates.clear();
    CpuBackend::new().run(&plain, x, n).unwrap()
}

#[test]
fn infinite_thresholds_reproduce_backbone_and_minus_inf_exits_all_at_gate_1() {
    let mut m = gated("resnet20", 2, "hinge", 7);
    let n = 13;
    let x = images(n, 8);
    let full = backbone(&m.plan, &x, n);
    m.plan
        .set_thresholds(&[f32::INFINITY, f32::INFINITY])
        .unwrap();
    let never = CpuBackend::new().run(&m.plan, &x, n).unwrap();
    assert_eq!(never, full);
    m.plan
        .set_thresholds(&[f32::NEG_INFINITY, f32::INFINITY])
        .unwrap();
    let all = CpuBackend::new().run(&m.plan, &x, n).unwrap();
    assert!(all.iter().all(|r| r.exit == Some(0)));
}

#[test]
fn a_closed_gate_lets_no_sample_out_even_at_an_infinite_confidence() {
    let mut m = gated("resnet20", 2, "hinge", 7);
    let n = 5;
    let x = images(n, 9);
    // Gate 0 scores class 3 at +inf for every sample: a hinge confidence of +inf.
    m.plan.gates[0].bias[3] = f32::INFINITY;
    let full = backbone(&m.plan, &x, n);
    m.plan
        .set_thresholds(&[f32::INFINITY, f32::INFINITY])
        .unwrap();
    assert!(m.plan.gates[0].closed());
    assert_eq!(CpuBackend::new().run(&m.plan, &x, n).unwrap(), full);
    // The largest finite threshold is open: every sample leaves there, class 3.
    m.plan.set_thresholds(&[f32::MAX, f32::INFINITY]).unwrap();
    let open = CpuBackend::new().run(&m.plan, &x, n).unwrap();
    assert!(
        open.iter().all(|r| r.exit == Some(0) && r.class == 3),
        "{open:?}"
    );
}

#[test]
fn batch_size_does_not_change_results() {
    let mut m = gated("resnet20", 2, "hinge", 11);
    let n = 21;
    let x = images(n, 12);
    let t = quantile_thresholds(&m.plan, &x, n, &[0.5, 0.5]);
    m.plan.set_thresholds(&t).unwrap();
    let whole = CpuBackend::new().run(&m.plan, &x, n).unwrap();
    let mut cpu = CpuBackend::new();
    for i in 0..n {
        let one = cpu.run(&m.plan, &x[i * 3072..(i + 1) * 3072], 1).unwrap();
        assert_eq!(one[0].exit, whole[i].exit, "sample {i}");
        assert_eq!(one[0].class, whole[i].class, "sample {i}");
        for (a, b) in one[0].logits.iter().zip(&whole[i].logits) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()));
        }
    }
    let _ = ExitRule::Hinge;
}
