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
            let scale = oracle[i * 10..i * 10 + 10].iter().fold(1f32, |m, x| m.max(x.abs()));
            worst = worst.max((a - b).abs() / scale);
        }
    }
    println!("{name}: max relative logit deviation from the oracle over 1000 images: {worst:.2e}");
    worst
}

#[test]
fn resnet20_matches_oracle() {
    assert!(oracle_deviation("resnet20") <= 1e-4);
}

#[test]
fn resnet32_matches_oracle() {
    assert!(oracle_deviation("resnet32") <= 1e-4);
}

#[test]
fn resnet44_matches_oracle() {
    assert!(oracle_deviation("resnet44") <= 1e-4);
}

#[test]
fn resnet56_matches_oracle() {
    assert!(oracle_deviation("resnet56") <= 1e-4);
}

#[test]
fn densenet40_fast_matches_oracle() {
    assert!(oracle_deviation("densenet40_fast") <= 1e-4);
}
