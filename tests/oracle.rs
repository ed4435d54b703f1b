//! The CPU backend against the independent numpy oracle logits and the published
//! accuracies of the pretrained CIFAR-10 models in `../shared/data`.

mod common;

use dgate_rt::backend::{cpu::CpuBackend, Backend};
use dgate_rt::data::Dataset;
use dgate_rt::model::Model;

fn oracle_deviation(name: &str) -> f32 {
    let model = Model::load(common::weights(&format!("{name}.safetensors"))).unwrap();
    let oracle = common::read_f32(&common::weights(&format!("{name}.logits1000.f32")));
    let ds = Dataset::load_cifar(&[common::test_batch()], Some(1000)).unwrap();
    let images = ds.normalized(0, 1000, &model.normalize);
    let mut cpu = CpuBackend::new();
    let res = cpu.run(&model.plan, &images, 1000).unwrap();
    let mut worst = 0f32;
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r.exit, None);
        for j in 0..10 {
            let (a, b) = (r.logits[j], oracle[i * 10 + j]);
            // Relative to the row's scale, so logits near zero do not blow the measure up.
            let scale = oracle[i * 10..i * 10 + 10]
                .iter()
                .fold(1f32, |m, x| m.max(x.abs()));
            worst = worst.max((a - b).abs() / scale);
        }
    }
    println!("{name}: max relative logit deviation from the oracle over 1000 images: {worst:.2e}");
    worst
}

/// Top-1 on all 10,000 test images must equal the figure in `../shared/data/README.md`.
fn full_test_accuracy(name: &str, expected_correct: usize) {
    let model = Model::load(common::weights(&format!("{name}.safetensors"))).unwrap();
    let ds = Dataset::load_cifar(&[common::test_batch()], None).unwrap();
    assert_eq!(ds.len(), 10_000);
    let mut cpu = CpuBackend::new();
    let mut correct = 0;
    for start in (0..10_000).step_by(500) {
        let x = ds.normalized(start, 500, &model.normalize);
        let res = cpu.run(&model.plan, &x, 500).unwrap();
        correct += res
            .iter()
            .zip(&ds.labels[start..start + 500])
            .filter(|(r, &y)| r.class == y as usize)
            .count();
    }
    println!(
        "{name}: {correct}/10000 = {:.2}% top-1",
        correct as f64 / 100.0
    );
    assert_eq!(correct, expected_correct);
}

#[test]
fn resnet20_oracle_and_accuracy() {
    assert!(oracle_deviation("resnet20") <= 1e-4);
    full_test_accuracy("resnet20", 9173);
}

#[test]
fn resnet32_oracle_and_accuracy() {
    assert!(oracle_deviation("resnet32") <= 1e-4);
    full_test_accuracy("resnet32", 9263);
}

#[test]
fn resnet44_oracle_and_accuracy() {
    assert!(oracle_deviation("resnet44") <= 1e-4);
    full_test_accuracy("resnet44", 9310);
}

#[test]
fn resnet56_oracle_and_accuracy() {
    assert!(oracle_deviation("resnet56") <= 1e-4);
    full_test_accuracy("resnet56", 9339);
}

#[test]
fn densenet40_fast_matches_oracle() {
    assert!(oracle_deviation("densenet40_fast") <= 1e-4);
}
