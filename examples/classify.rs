//! Classifies the first N CIFAR-10 test images and prints, per image, the class, where it
//! left the network and the score it was decided on, then the accuracy.
//!
//! ```sh
//! cargo run --release --example classify -- [WEIGHTS] [N] [THRESHOLD,...]
//! ```
//!
//! WEIGHTS defaults to `resnet20.safetensors` in the shared data; images come from
//! `cifar10/test_batch.bin` under `$DGATE_DATA` or `../shared/data`. Without the weights
//! it uses a random (untrained) ResNet-20, and without the data random pixels, saying so.

use std::path::PathBuf;

use dgate_rt::backend::Precision;
use dgate_rt::data::{parse_thresholds, Dataset, IMAGE};
use dgate_rt::engine::{BackendChoice, Engine};
use dgate_rt::model::Model;

fn main() {
    if let Err(e) = run() {
        eprintln!("classify: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data_dir = std::env::var_os("DGATE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"));
    let weights = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("weights/resnet20.safetensors"));
    let n: usize = match args.get(1) {
        Some(s) => s.parse().map_err(|_| format!("N = {s:?} is not a count"))?,
        None => 20,
    };

    let model = if weights.exists() {
        Model::load(&weights)?
    } else {
        println!(
            "note: {} not found; using a random, untrained ResNet-20 (its answers are noise)",
            weights.display()
        );
        Model::from_weights(&dgate_rt::zoo::random("resnet20", 0)?)?
    };
    let d = model.describe();
    println!(
        "{}: {} stages, {} gate(s), {:.4} GFLOPs per image",
        d.arch,
        d.stages.len(),
        d.gates.len(),
        d.total_gflops
    );

    // Auto: CUDA when a GPU is usable, else the CPU (and a note why).
    let mut engine = Engine::new(model, BackendChoice::Auto, Precision::F32)?;
    if let Some(note) = &engine.fallback_notice {
        println!("note: {note}");
    }
    println!("backend: {}", engine.backend_name());
    if let Some(t) = args.get(2) {
        engine.set_thresholds(&parse_thresholds(t)?)?;
    }

    let batch = data_dir.join("cifar10/test_batch.bin");
    let (pixels, labels) = if batch.exists() {
        let ds = Dataset::load_cifar(&[&batch], Some(n))?;
        (ds.pixels, Some(ds.labels))
    } else {
        println!(
            "note: {} not found; classifying {n} images of random pixels",
            batch.display()
        );
        let mut rng = dgate_rt::zoo::Rng::new(0);
        let px = (0..n * IMAGE)
            .map(|_| (rng.next_u64() >> 56) as u8)
            .collect();
        (px, None)
    };
    let n = pixels.len() / IMAGE;

    let results = engine.run_u8(&pixels, n)?;
    let mut correct = 0;
    for (i, r) in results.iter().enumerate() {
        let exit = r.exit.map_or("head".to_string(), |g| format!("gate {g}"));
        let truth = labels.as_ref().map(|l| l[i] as usize);
        correct += usize::from(truth == Some(r.class));
        let label = truth.map_or(String::new(), |t| format!("  (label {t})"));
        println!(
            "image {i:>4}: class {}  exit {exit:<6}  score {:>8.4}{label}",
            r.class, r.score
        );
    }
    if labels.is_some() && n > 0 {
        println!(
            "accuracy: {correct}/{n} = {:.2}%",
            100.0 * correct as f64 / n as f64
        );
    }
    Ok(())
}
