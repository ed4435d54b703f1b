//! Gate training: the objectives' gradients against finite differences, convergence on
//! separable data with both losses, determinism, speed, and errors instead of panics.

mod common;
use common::Rng;
use dgate_rt::gates::train::ETA0_CANDIDATES;
use dgate_rt::gates::{
    ce_objective, choose_eta0, hinge_objective, train_gate, LinearGate, Loss, Objective,
    TrainConfig,
};
use dgate_rt::Error;
use std::time::Instant;

type ObjFn = fn(&[f32], &[f32], &[f32], &[u8], f32) -> dgate_rt::Result<Objective>;

/// Central differences of `obj` in every weight and bias versus its analytic gradient.
/// `h` is small enough that no hinge kink is crossed (the caller checks margins).
fn check_gradient(obj: ObjFn, w: &[f32], b: &[f32], x: &[f32], y: &[u8], lambda: f32, tol: f64) {
    let h = 1e-2f32;
    let g = obj(w, b, x, y, lambda).unwrap();
    for k in 0..w.len() {
        let (mut wp, mut wm) = (w.to_vec(), w.to_vec());
        wp[k] += h;
        wm[k] -= h;
        let fd = (obj(&wp, b, x, y, lambda).unwrap().loss
            - obj(&wm, b, x, y, lambda).unwrap().loss)
            / (wp[k] as f64 - wm[k] as f64);
        assert!(
            (fd - g.grad_w[k]).abs() <= tol * (1.0 + fd.abs()),
            "dW[{k}]: fd {fd} vs {}",
            g.grad_w[k]
        );
    }
    for k in 0..b.len() {
        let (mut bp, mut bm) = (b.to_vec(), b.to_vec());
        bp[k] += h;
        bm[k] -= h;
        let fd = (obj(w, &bp, x, y, lambda).unwrap().loss
            - obj(w, &bm, x, y, lambda).unwrap().loss)
            / (bp[k] as f64 - bm[k] as f64);
        assert!(
            (fd - g.grad_b[k]).abs() <= tol * (1.0 + fd.abs()),
            "db[{k}]: fd {fd} vs {}",
            g.grad_b[k]
        );
    }
}

/// Random problem whose hinge margins `y·s` all stay ≥ 0.1 away from the kink at 1, so
/// steps of 1e-2 in a parameter (|x| ≤ 4) never cross one.
fn problem_away_from_kinks(
    seed: u64,
    n: usize,
    f: usize,
    c: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<u8>) {
    let mut rng = Rng(seed);
    loop {
        let w: Vec<f32> = (0..c * f).map(|_| rng.normal()).collect();
        let b: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let x: Vec<f32> = (0..n * f).map(|_| rng.normal().clamp(-4.0, 4.0)).collect();
        let y: Vec<u8> = (0..n).map(|_| rng.below(c) as u8).collect();
        let ok = (0..n).all(|i| {
            (0..c).all(|j| {
                let s: f64 = b[j] as f64
                    + (0..f)
                        .map(|k| w[j * f + k] as f64 * x[i * f + k] as f64)
                        .sum::<f64>();
                let m = if j == y[i] as usize { s } else { -s };
                (m - 1.0).abs() > 0.1 * (1.0 + f as f64 * 0.4)
            })
        });
        if ok {
            return (w, b, x, y);
        }
    }
}

#[test]
fn gates_hinge_subgradient_matches_finite_differences() {
    for seed in 0..4 {
        let (w, b, x, y) = problem_away_from_kinks(seed, 6, 3, 4);
        let g = hinge_objective(&w, &b, &x, &y, 0.05).unwrap();
        // Some terms active and some not, or the test would miss half the cases.
        assert!(g.loss > 0.0);
        check_gradient(hinge_objective, &w, &b, &x, &y, 0.05, 1e-6);
    }
}

#[test]
fn gates_ce_gradient_matches_finite_differences() {
    let mut rng = Rng(7);
    let (n, f, c) = (12, 5, 4);
    let w: Vec<f32> = (0..c * f).map(|_| rng.normal()).collect();
    let b: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
    let x: Vec<f32> = (0..n * f).map(|_| rng.normal()).collect();
    let y: Vec<u8> = (0..n).map(|_| rng.below(c) as u8).collect();
    check_gradient(ce_objective, &w, &b, &x, &y, 0.03, 1e-4);
}

#[test]
fn gates_hinge_objective_at_zero_is_classes() {
    // W = 0, b = 0: every one-vs-rest term is max(0, 1 − 0) = 1.
    let (n, f, c) = (5, 3, 4);
    let obj = hinge_objective(
        &vec![0.0; c * f],
        &vec![0.0; c],
        &vec![1.0; n * f],
        &[0, 1, 2, 3, 0],
        1.0,
    )
    .unwrap();
    assert_eq!(obj.loss, c as f64);
    // Each sample pushes its true class up (−1) and the other three down (+1).
    let want = [(-2.0 + 3.0) / 5.0, (-1.0 + 4.0) / 5.0, 0.6, 0.6];
    for (g, w) in obj.grad_b.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{:?}", obj.grad_b);
    }
}

/// Gaussian blobs around well-separated random ±3 centres. With `skew`, then a
/// per-feature affine map (non-negative, with offsets and scales from 0.01 to 100, like
/// pooled post-ReLU activations) that exercises the standardisation and its folding.
fn blobs_with(seed: u64, n: usize, f: usize, c: usize, skew: bool) -> (Vec<f32>, Vec<u8>) {
    let mut rng = Rng(seed);
    let centres: Vec<f32> = (0..c * f)
        .map(|_| if rng.u64() & 1 == 0 { 3.0 } else { -3.0 })
        .collect();
    let scale: Vec<f32> = (0..f)
        .map(|k| {
            if skew {
                0.01 * 10f32.powi((k % 5) as i32)
            } else {
                1.0
            }
        })
        .collect();
    let offset = if skew { 8.0 } else { 0.0 };
    let mut x = Vec::with_capacity(n * f);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let l = i % c;
        y.push(l as u8);
        for k in 0..f {
            let v = centres[l * f + k] + 0.5 * rng.normal();
            x.push((v + offset) * scale[k]);
        }
    }
    (x, y)
}

fn blobs(seed: u64, n: usize, f: usize, c: usize) -> (Vec<f32>, Vec<u8>) {
    blobs_with(seed, n, f, c, true)
}

fn train_error(gate: &LinearGate, x: &[f32], y: &[u8]) -> usize {
    let p = gate.predict(x, y.len()).unwrap();
    p.iter().zip(y).filter(|(&a, &b)| a != b as usize).count()
}

#[test]
fn gates_training_separates_separable_data_with_both_losses() {
    let (n, f, c) = (600, 12, 4);
    for loss in [Loss::Hinge, Loss::Ce] {
        // Unstandardised training is plain SGD and needs well-scaled features.
        for standardize in [true, false] {
            let (x, y) = blobs_with(3, n, f, c, standardize);
            let cfg = TrainConfig {
                loss,
                epochs: 20,
                standardize,
                ..TrainConfig::default()
            };
            let mut losses = Vec::new();
            let gate = train_gate(&x, &y, n, f, c, &cfg, &mut |e, l| losses.push((e, l))).unwrap();
            assert_eq!(gate.weight.len(), c * f);
            assert_eq!(gate.bias.len(), c);
            assert_eq!(losses.len(), cfg.epochs);
            assert_eq!(
                losses.iter().map(|p| p.0).collect::<Vec<_>>(),
                (1..=cfg.epochs).collect::<Vec<_>>()
            );
            assert!(losses.iter().all(|p| p.1.is_finite()));
            assert!(
                losses[cfg.epochs - 1].1 < losses[0].1,
                "{loss:?}: loss did not fall: {losses:?}"
            );
            assert_eq!(
                train_error(&gate, &x, &y),
                0,
                "{loss:?} standardize={standardize}"
            );
        }
    }
}

#[test]
fn gates_hinge_scores_are_margins() {
    // On separable data a hinge gate scores the true class ≥ about +1 and others ≤ −1:
    // what makes "max score ≥ t" a meaningful exit test.
    let (n, f, c) = (400, 8, 3);
    let (x, y) = blobs(11, n, f, c);
    let cfg = TrainConfig {
        lambda: 1e-5,
        epochs: 40,
        ..TrainConfig::default()
    };
    let gate = train_gate(&x, &y, n, f, c, &cfg, &mut |_, _| {}).unwrap();
    let s = gate.scores(&x, n).unwrap();
    let violations = (0..n)
        .flat_map(|i| (0..c).map(move |j| (i, j)))
        .filter(|&(i, j)| {
            let m = if j == y[i] as usize {
                s[i * c + j]
            } else {
                -s[i * c + j]
            };
            m < 0.5
        })
        .count();
    assert!(
        violations * 100 < n * c,
        "{violations} of {} margins below 0.5",
        n * c
    );
}

#[test]
fn gates_training_is_deterministic_per_seed() {
    let (n, f, c) = (300, 6, 3);
    let (x, y) = blobs(5, n, f, c);
    for loss in [Loss::Hinge, Loss::Ce] {
        let cfg = TrainConfig {
            loss,
            epochs: 4,
            seed: 42,
            ..TrainConfig::default()
        };
        let a = train_gate(&x, &y, n, f, c, &cfg, &mut |_, _| {}).unwrap();
        let b = train_gate(&x, &y, n, f, c, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(a, b);
        let other = TrainConfig { seed: 43, ..cfg };
        let d = train_gate(&x, &y, n, f, c, &other, &mut |_, _| {}).unwrap();
        assert_ne!(a, d, "the seed should change the shuffling order");
    }
}

#[test]
fn gates_eta0_is_chosen_from_the_candidates_deterministically() {
    let (n, f, c) = (500, 6, 3);
    let (x, y) = blobs(21, n, f, c);
    let cfg = TrainConfig::default();
    let a = choose_eta0(&x, &y, n, f, c, &cfg).unwrap();
    assert!(ETA0_CANDIDATES.contains(&a));
    assert_eq!(a, choose_eta0(&x, &y, n, f, c, &cfg).unwrap());
    // Training with the chosen value spelled out is training with `None`.
    let auto = train_gate(&x, &y, n, f, c, &cfg, &mut |_, _| {}).unwrap();
    let fixed = TrainConfig {
        eta0: Some(a),
        ..cfg
    };
    assert_eq!(
        auto,
        train_gate(&x, &y, n, f, c, &fixed, &mut |_, _| {}).unwrap()
    );
}

#[test]
fn gates_constant_features_get_zero_weight() {
    let (n, f, c) = (200, 5, 2);
    let (mut x, y) = blobs(9, n, f, c);
    for i in 0..n {
        x[i * f + 2] = 0.0; // a dead ReLU channel
        x[i * f + 4] = 3.5; // a constant one
    }
    let gate = train_gate(&x, &y, n, f, c, &TrainConfig::default(), &mut |_, _| {}).unwrap();
    for j in 0..c {
        assert_eq!(gate.weight[j * f + 2], 0.0);
        assert_eq!(gate.weight[j * f + 4], 0.0);
    }
    assert!(gate.weight.iter().chain(&gate.bias).all(|v| v.is_finite()));
}

#[test]
fn gates_training_50k_by_64_is_fast() {
    // The size of CIFAR-10's training set at a 64-channel stage.
    let (n, f, c) = (50_000, 64, 10);
    let mut rng = Rng(1);
    let centres: Vec<f32> = (0..c * f).map(|_| rng.normal()).collect();
    let mut x = Vec::with_capacity(n * f);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let l = i % c;
        y.push(l as u8);
        // Post-ReLU-like: non-negative, overlapping classes.
        x.extend((0..f).map(|k| (centres[l * f + k] + 1.5 * rng.normal()).max(0.0)));
    }
    for loss in [Loss::Hinge, Loss::Ce] {
        let cfg = TrainConfig {
            loss,
            ..TrainConfig::default()
        };
        let t = Instant::now();
        let gate = train_gate(&x, &y, n, f, c, &cfg, &mut |_, _| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let acc = 1.0 - train_error(&gate, &x, &y) as f64 / n as f64;
        eprintln!(
            "{loss:?}: {} epochs of 50000×64 in {secs:.2} s, training accuracy {acc:.4}",
            cfg.epochs
        );
        assert!(secs < 30.0, "training took {secs:.1} s");
        assert!(acc > 0.6, "accuracy {acc}");
    }
}

#[test]
fn gates_bad_input_is_an_error_not_a_panic() {
    let cfg = TrainConfig::default();
    let x = vec![0.5f32; 12];
    let y = vec![0u8, 1, 0, 1];
    let nop = &mut |_: usize, _: f64| {};
    let input = |r: dgate_rt::Result<LinearGate>| matches!(r, Err(Error::Input(_)));
    let config = |r: dgate_rt::Result<LinearGate>| matches!(r, Err(Error::Config(_)));
    assert!(input(train_gate(&x, &y, 4, 4, 2, &cfg, nop))); // 4×4 ≠ 12
    assert!(input(train_gate(&x, &y[..3], 4, 3, 2, &cfg, nop)));
    assert!(input(train_gate(&x, &[0, 1, 2, 0], 4, 3, 2, &cfg, nop))); // label 2 of 2 classes
    assert!(input(train_gate(&[], &[], 0, 3, 2, &cfg, nop)));
    assert!(input(train_gate(&x, &y, usize::MAX, 3, 2, &cfg, nop)));
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    assert!(input(train_gate(&nan, &y, 4, 3, 2, &cfg, nop)));
    assert!(config(train_gate(&x, &y, 4, 3, 1, &cfg, nop)));
    for bad in [
        TrainConfig {
            lambda: 0.0,
            ..cfg.clone()
        },
        TrainConfig {
            lambda: f32::NAN,
            ..cfg.clone()
        },
        TrainConfig {
            eta0: Some(-1.0),
            ..cfg.clone()
        },
        TrainConfig {
            epochs: 0,
            ..cfg.clone()
        },
        TrainConfig {
            batch_size: 0,
            ..cfg.clone()
        },
    ] {
        assert!(config(train_gate(&x, &y, 4, 3, 2, &bad, nop)), "{bad:?}");
    }
    assert!(hinge_objective(&[0.0; 5], &[0.0; 2], &x, &y, 0.1).is_err());
    assert!(hinge_objective(&[0.0; 6], &[0.0; 2], &x[..11], &y, 0.1).is_err());
    assert!(ce_objective(&[0.0; 6], &[0.0; 2], &x, &[0, 1, 5, 0], 0.1).is_err());
    assert!(ce_objective(&[], &[], &[], &[], 0.1).is_err());
    let gate = LinearGate {
        weight: vec![0.0; 6],
        bias: vec![0.0; 2],
    };
    assert!(gate.scores(&x[..10], 4).is_err());
    assert!(LinearGate {
        weight: vec![0.0; 5],
        bias: vec![0.0; 2]
    }
    .scores(&x, 4)
    .is_err());
    // Zero features: no division by zero, no zero-sized chunks.
    let no_features = |c: usize| LinearGate {
        weight: vec![],
        bias: vec![0.0; c],
    };
    assert!(no_features(2).scores(&[], 4).is_err());
    assert!(no_features(0).predict(&[], 0).is_err());
    assert!(hinge_objective(&[], &[0.0; 2], &[], &y, 0.1).is_err());
}
