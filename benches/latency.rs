//! `cargo bench`: latency of ResNet-101 and DenseNet-201 (random weights, random gates
//! after stages 1 and 2), full network and with 50%/30% of the batch exiting at the two
//! gates, printed in the paper's Table 1 format after criterion's own report.
//!
//! On the CPU only batch 1 is timed (batch 256 of ResNet-101 is 1.3 TFLOP, minutes per
//! sample set); with a GPU, batches 1, 64 and 256 in f32 and f16.
//! `DGATE_BENCH_BATCHES=1,64` overrides the batch sizes.

use criterion::{criterion_group, criterion_main, Criterion};

use dgate_rt::backend::cuda::CudaBackend;
use dgate_rt::backend::Precision;
use dgate_rt::bench::{measure, table, thresholds_for_fractions, Row};
use dgate_rt::engine::{BackendChoice, Engine};
use dgate_rt::model::Model;
use dgate_rt::zoo;

fn latency(c: &mut Criterion) {
    let gpu = CudaBackend::new(Precision::F32).is_ok();
    if !gpu {
        println!("note: no GPU (CUDA driver, NVRTC or device missing): timing the CPU backend at batch 1 only");
    }
    let batches: Vec<usize> = std::env::var("DGATE_BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| if gpu { vec![1, 64, 256] } else { vec![1] });
    let precisions: &[Precision] = if gpu {
        &[Precision::F32, Precision::F16]
    } else {
        &[Precision::F32]
    };
    let choice = if gpu {
        BackendChoice::Cuda
    } else {
        BackendChoice::Cpu
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut group = c.benchmark_group("latency");
    group.sample_size(10);
    for arch in ["resnet101", "densenet201"] {
        let mut w = zoo::random(arch, 0).expect("zoo architecture");
        zoo::add_random_gates(&mut w, &[1, 2], 0).expect("gates");
        for &p in precisions {
            let mut engine =
                Engine::new(Model::from_weights(&w).expect("model"), choice, p).expect("engine");
            let ptag = if p == Precision::F16 { "f16" } else { "f32" };
            for &n in &batches {
                let mut rng = zoo::Rng::new(n as u64);
                let x: Vec<f32> = (0..n * 3072).map(|_| rng.normal()).collect();
                engine
                    .set_thresholds(&[f32::INFINITY, f32::INFINITY])
                    .expect("thresholds");
                group.bench_function(format!("{arch}/{ptag}/full/b{n}"), |b| {
                    b.iter(|| engine.run(&x, n).expect("run"))
                });
                rows.push(
                    measure(&mut engine, &format!("{arch} {ptag} full"), &x, n, 2, 10)
                        .expect("measure"),
                );
                thresholds_for_fractions(&mut engine, &x, n, &[0.5, 0.3]).expect("thresholds");
                group.bench_function(format!("{arch}/{ptag}/exit50-30/b{n}"), |b| {
                    b.iter(|| engine.run(&x, n).expect("run"))
                });
                rows.push(
                    measure(
                        &mut engine,
                        &format!("{arch} {ptag} exits 50/30%"),
                        &x,
                        n,
                        2,
                        10,
                    )
                    .expect("measure"),
                );
            }
        }
    }
    group.finish();
    let backend = if gpu { "cuda" } else { "cpu" };
    println!(
        "\nbackend: {backend} (medians of 10 runs)\n\n{}",
        table(&rows)
    );
}

criterion_group!(benches, latency);
criterion_main!(benches);
