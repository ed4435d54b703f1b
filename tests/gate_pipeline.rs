//! Gate training end to end on real data: extraction, training, the runtime's gate scores
//! against a direct product on the extracted features, the simulated sweep against real
//! runs, and calibration on real scores.

mod common;

use dgate_rt::backend::{cpu::CpuBackend, Backend};
use dgate_rt::data::Dataset;
use dgate_rt::features::extract;
use dgate_rt::gates::{self, pipeline, Loss, TrainConfig};
use dgate_rt::model::Model;
use dgate_rt::weights::Weights;

fn trained(loss: Loss) -> (Weights, Dataset) {
    let w = Weights::load(common::weights("resnet20.safetensors")).unwrap();
    let train = Dataset::load_cifar(
        &[common::data_dir().join("cifar10/data_batch_1.bin")],
        Some(1500),
    )
    .unwrap();
    let cfg = TrainConfig {
        loss,
        epochs: 10,
        ..TrainConfig::default()
    };
    let g = pipeline::train_gates(&w, &train, &[1, 2], &cfg, None, &mut |_, _, _| {}).unwrap();
    let test = Dataset::load_cifar(&[common::test_batch()], Some(300)).unwrap();
    (g, test)
}

#[test]
fn trained_file_keeps_backbone_and_runtime_scores_equal_direct_product() {
    let (g, test) = trained(Loss::Hinge);
    let base = Weights::load(common::weights("resnet20.safetensors")).unwrap();
    for (name, t) in &base.tensors {
        assert_eq!(g.get(name).unwrap().data, t.data, "{name} changed");
    }
    // Round trip through bytes, as a user would load the written file.
    let g = Weights::from_bytes(&g.to_bytes().unwrap(), "gated.safetensors").unwrap();
    let mut model = Model::from_weights(&g).unwrap();
    assert_eq!(model.plan.gates.len(), 2);
    assert_eq!(g.metadata["gate_loss"], "hinge");
    let n = test.len();
    let x = test.normalized(0, n, &model.normalize);
    let feats = extract(&g, &model, &test, &[0, 1], None, &mut |_, _| {}).unwrap();
    for k in 0..2 {
        let mut t = vec![f32::INFINITY; 2];
        t[k] = f32::NEG_INFINITY;
        model.plan.set_thresholds(&t).unwrap();
        let res = CpuBackend::new().run(&model.plan, &x, n).unwrap();
        let gate = &model.plan.gates[k];
        let c = gate.input.channels;
        for (i, r) in res.iter().enumerate() {
            assert_eq!(r.exit, Some(k));
            let f = &feats.features[k][i * c..(i + 1) * c];
            for j in 0..10 {
                let direct: f32 =
                    gate.bias[j] + (0..c).map(|q| gate.weight[j * c + q] * f[q]).sum::<f32>();
                assert!(
                    (r.logits[j] - direct).abs() <= 1e-4 * (1.0 + direct.abs()),
                    "gate {k} sample {i}"
                );
            }
        }
    }
}

#[test]
fn simulated_sweep_equals_real_runs_including_infinite_thresholds() {
    for loss in [Loss::Hinge, Loss::Ce] {
        let (g, test) = trained(loss);
        let mut model = Model::from_weights(&g).unwrap();
        let table = pipeline::score_table(&g, &model, &test, None, &mut |_, _| {}).unwrap();
        let n = test.len();
        let x = test.normalized(0, n, &model.normalize);
        let mid: Vec<f32> = gates::threshold_candidates(&table, 10)
            .unwrap()
            .iter()
            .map(|c| c[c.len() / 2])
            .collect();
        for t in [
            vec![f32::INFINITY; 2],
            vec![f32::NEG_INFINITY, f32::INFINITY],
            mid,
        ] {
            model.plan.set_thresholds(&t).unwrap();
            let res = CpuBackend::new().run(&model.plan, &x, n).unwrap();
            let sim = gates::simulate(&table, &t).unwrap();
            for (i, r) in res.iter().enumerate() {
                assert_eq!(r.exit, sim.exits[i], "{loss:?} {t:?} sample {i}");
                assert_eq!(r.class, sim.classes[i], "{loss:?} {t:?} sample {i}");
            }
            if t[0] == f32::NEG_INFINITY {
                assert!(res.iter().all(|r| r.exit == Some(0)));
            }
            if t.iter().all(|v| *v == f32::INFINITY) {
                assert!(res.iter().all(|r| r.exit.is_none()));
                assert!((sim.accuracy - table.backbone_accuracy().unwrap()).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn calibration_on_real_scores_respects_the_budget_on_its_split() {
    let (g, test) = trained(Loss::Hinge);
    let model = Model::from_weights(&g).unwrap();
    let table = pipeline::score_table(&g, &model, &test, None, &mut |_, _| {}).unwrap();
    for drop in [0.0, 0.5, 2.0, 10.0] {
        let t = gates::calibrate_max_drop(&table, drop).unwrap();
        let o = gates::simulate(&table, &t).unwrap();
        assert!(
            100.0 * o.accuracy >= 100.0 * table.backbone_accuracy().unwrap() - drop - 1e-9,
            "drop {drop}"
        );
    }
}
