//! The embedding API: engines across threads, model descriptions, loading from bytes,
//! argument checks, and the promise that every input gets exactly its own result, in input
//! order, whatever batch it travels in and wherever it exits.

mod common;

use std::sync::{Arc, Mutex};

use dgate_rt::backend::Precision;
use dgate_rt::data::IMAGE;
use dgate_rt::engine::{BackendChoice, Engine};
use dgate_rt::model::Model;
use dgate_rt::plan::SampleResult;
use dgate_rt::zoo::{self, Rng};
use dgate_rt::Error;

fn gated_resnet20(seed: u64) -> Model {
    let mut w = zoo::random("resnet20", seed).expect("random resnet20");
    zoo::add_random_gates(&mut w, &[1, 2], seed).expect("gates");
    Model::from_weights(&w).expect("model")
}

fn cpu(model: Model) -> Engine {
    Engine::new(model, BackendChoice::Cpu, Precision::F32).expect("cpu engine")
}

fn random_pixels(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n * IMAGE)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect()
}

/// A threshold that lets about `frac` of `conf` pass (`conf ≥ t`), placed in the middle
/// of a clear gap between neighbouring confidences so that rounding differences between
/// batch sizes cannot move a sample across it.
fn threshold_for_fraction(conf: &[f32], frac: f64) -> f32 {
    let mut c: Vec<f32> = conf.to_vec();
    c.sort_by(|a, b| b.total_cmp(a));
    let want = ((frac * c.len() as f64).round() as usize).clamp(1, c.len() - 1);
    let gap = |k: usize| c[k - 1] - c[k];
    let scale = c.iter().fold(1f32, |m, x| m.max(x.abs()));
    // The nearest split point (k samples above) with a gap of at least 1e-3 of the scale.
    let k = (0..c.len())
        .flat_map(|d| [want + d, want.wrapping_sub(d)])
        .find(|&k| k >= 1 && k < c.len() && gap(k) > 1e-3 * scale)
        .expect("some gap between confidences");
    0.5 * (c[k - 1] + c[k])
}

fn close(a: f32, b: f32, scale: f32) -> bool {
    (a - b).abs() <= 1e-5 * scale.max(1e-6)
}

fn assert_same(batched: &SampleResult, alone: &SampleResult, what: &str) {
    assert_eq!(batched.class, alone.class, "{what}: class");
    assert_eq!(batched.exit, alone.exit, "{what}: exit");
    assert_eq!(batched.logits.len(), alone.logits.len(), "{what}: logits");
    let scale = alone.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        close(batched.score, alone.score, alone.score.abs()),
        "{what}: score {} vs {} alone",
        batched.score,
        alone.score
    );
    for (j, (a, b)) in batched.logits.iter().zip(&alone.logits).enumerate() {
        assert!(close(*a, *b, scale), "{what}: logit {j}: {a} vs {b} alone");
    }
}

#[test]
fn engine_is_send_and_runs_on_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Engine>();

    let mut rng = Rng::new(11);
    let pixels = random_pixels(&mut rng, 5);
    let mut here = cpu(gated_resnet20(3));
    here.set_thresholds(&[0.5, 0.5]).expect("thresholds");
    let expected = here.run_u8(&pixels, 5).expect("run here");

    // Moved into a worker thread, the engine keeps its buffers and gives the same answers.
    let mut moved = cpu(gated_resnet20(3));
    moved.set_thresholds(&[0.5, 0.5]).expect("thresholds");
    let px = pixels.clone();
    let (moved, got) = std::thread::spawn(move || {
        let r = moved.run_u8(&px, 5);
        (moved, r)
    })
    .join()
    .expect("worker thread");
    assert_eq!(got.expect("run there"), expected);

    // Shared between threads behind a Mutex, as the docs suggest.
    let shared = Arc::new(Mutex::new(moved));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (e, px) = (Arc::clone(&shared), pixels.clone());
            std::thread::spawn(move || e.lock().expect("lock").run_u8(&px, 5).expect("run"))
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().expect("worker"), expected);
    }
}

#[test]
fn describe_reports_stages_gates_and_flops() {
    let mut model = gated_resnet20(1);
    model
        .plan
        .set_thresholds(&[1.25, f32::INFINITY])
        .expect("thresholds");
    let d = model.describe();
    assert_eq!(d.classes, 10);
    assert_eq!(d.params, model.params);
    assert_eq!(d.arch, model.plan.arch);
    let shapes: Vec<[usize; 3]> = d.stages.iter().map(|s| s.output).collect();
    assert_eq!(shapes, [[16, 32, 32], [32, 16, 16], [64, 8, 8]]);
    let mut cumulative = 0.0;
    for s in &d.stages {
        cumulative += s.gflops;
        assert!((s.cumulative_gflops - cumulative).abs() < 1e-12, "{s:?}");
    }
    let total = model.plan.backbone_flops() as f64 / 1e9;
    assert!((d.total_gflops - total).abs() < 1e-12);
    assert!((cumulative + d.head_gflops - total).abs() < 1e-12);
    // ResNet-20 is about 41 M multiply-accumulates.
    assert!(
        (0.080..0.083).contains(&d.total_gflops),
        "{}",
        d.total_gflops
    );

    assert_eq!(d.gates.len(), 2);
    assert_eq!((d.gates[0].after_stage, d.gates[1].after_stage), (0, 1));
    assert_eq!((d.gates[0].features, d.gates[1].features), (16, 32));
    assert_eq!(d.gates[0].threshold, 1.25);
    assert!(d.gates[0].gflops_if_exit > d.stages[0].gflops);
    assert!(d.gates[0].gflops_if_exit < d.gates[1].gflops_if_exit);
    assert!(d.gates[1].gflops_if_exit < d.total_gflops);

    let json: serde_json::Value = serde_json::to_value(&d).expect("serialises");
    assert_eq!(json["gates"][1]["threshold"], "inf");
    assert_eq!(json["gates"][0]["rule"], "hinge");
    assert_eq!(json["stages"][2]["output"], serde_json::json!([64, 8, 8]));
}

#[test]
fn describe_counts_resnet20_parameters_as_pytorch_does() {
    let path = common::weights("resnet20.safetensors");
    if !path.exists() {
        println!("skipped: {} not found", path.display());
        return;
    }
    let d = Model::load(&path).expect("resnet20").describe();
    // The file's metadata (num_parameters) records PyTorch's count.
    assert_eq!(d.params, 269_722);
    assert!(d.gates.is_empty());
    assert_eq!(d.stages.len(), 3);
}

#[test]
fn from_bytes_equals_from_weights_and_load() {
    let mut w = zoo::random("resnet20", 5).expect("random");
    zoo::add_random_gates(&mut w, &[2], 5).expect("gates");
    let bytes = w.to_bytes().expect("serialise");
    let a = Model::from_weights(&w).expect("from weights");
    let b = Model::from_bytes(&bytes, "in memory").expect("from bytes");
    assert_eq!(a.plan, b.plan);
    assert_eq!(b.file, "in memory");

    let path = common::weights("resnet20.safetensors");
    if path.exists() {
        let bytes = std::fs::read(&path).expect("read");
        let from_file = Model::load(&path).expect("load");
        let from_mem = Model::from_bytes(&bytes, "x").expect("from bytes");
        assert_eq!(from_file.plan, from_mem.plan);
        assert_eq!(from_file.normalize, from_mem.normalize);
    }

    let err = Model::from_bytes(b"not safetensors", "junk").expect_err("junk bytes");
    assert!(err.to_string().starts_with("junk: "), "{err}");
}

#[test]
fn bad_arguments_are_errors_and_change_nothing() {
    let mut e = cpu(gated_resnet20(2));
    e.set_thresholds(&[1.0, 2.0]).expect("thresholds");
    assert!(matches!(e.set_thresholds(&[1.0]), Err(Error::Config(_))));
    assert!(matches!(
        e.set_thresholds(&[0.0, f32::NAN]),
        Err(Error::Config(_))
    ));
    assert_eq!(e.thresholds(), [1.0, 2.0]);
    assert_eq!((e.num_classes(), e.num_gates()), (10, 2));

    assert!(matches!(e.run(&[0.0; 100], 1), Err(Error::Input(_))));
    assert!(matches!(e.run_u8(&[0; IMAGE], 2), Err(Error::Input(_))));
    assert!(matches!(
        e.run_u8(&[0; IMAGE], usize::MAX),
        Err(Error::Input(_))
    ));
    assert_eq!(e.run(&[], 0).expect("empty batch"), []);
    assert_eq!(e.run_u8(&[], 0).expect("empty batch"), []);

    assert!(matches!(
        Engine::new(gated_resnet20(2), BackendChoice::Cpu, Precision::F16),
        Err(Error::Config(_))
    ));
    assert!(BackendChoice::parse("tpu").is_none());
}

/// Batches of odd sizes, with thresholds drawn so that every exit point is used, give
/// every sample exactly the result it gets alone.
#[test]
fn odd_batches_match_single_samples() {
    for seed in [21u64, 22] {
        let mut rng = Rng::new(seed);
        let mut engine = cpu(gated_resnet20(seed));
        let sizes = [1usize, 3, 257];
        let total: usize = sizes.iter().sum();
        let pixels = random_pixels(&mut rng, total);

        // Each gate's confidence on every image: make it the only way out.
        engine
            .set_thresholds(&[f32::NEG_INFINITY, f32::INFINITY])
            .expect("thresholds");
        let conf0: Vec<f32> = engine
            .run_u8(&pixels, total)
            .expect("gate 0")
            .iter()
            .map(|r| r.score)
            .collect();
        engine
            .set_thresholds(&[f32::INFINITY, f32::NEG_INFINITY])
            .expect("thresholds");
        let conf1: Vec<f32> = engine
            .run_u8(&pixels, total)
            .expect("gate 1")
            .iter()
            .map(|r| r.score)
            .collect();

        // Random exit fractions: 20..45% at gate 0, then 30..60% of the rest at gate 1.
        let t0 = threshold_for_fraction(&conf0, 0.20 + 0.25 * rng.uniform() as f64);
        let rest: Vec<f32> = (0..total)
            .filter(|&i| conf0[i] < t0)
            .map(|i| conf1[i])
            .collect();
        let t1 = threshold_for_fraction(&rest, 0.30 + 0.30 * rng.uniform() as f64);
        engine.set_thresholds(&[t0, t1]).expect("thresholds");

        let mut start = 0;
        let mut exits_seen = [0usize; 3];
        for &n in &sizes {
            let batch = &pixels[start * IMAGE..(start + n) * IMAGE];
            let results = engine.run_u8(batch, n).expect("batch");
            assert_eq!(results.len(), n, "one result per input");
            for (i, r) in results.iter().enumerate() {
                let alone = engine
                    .run_u8(&batch[i * IMAGE..(i + 1) * IMAGE], 1)
                    .expect("alone");
                let what = format!("seed {seed}, batch of {n}, sample {i}");
                assert_same(r, &alone[0], &what);
                exits_seen[r.exit.map_or(2, |g| g)] += 1;
            }
            start += n;
        }
        assert!(
            exits_seen.iter().all(|&c| c > 0),
            "seed {seed}: every exit point should be used, got {exits_seen:?} (gate 0, gate 1, head)"
        );
    }
}
