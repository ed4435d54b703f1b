//! The C ABI, from C: `tests/c/classify.c` is compiled with the system compiler against
//! `include/dgate.h` and the `libdgate_rt.so` this build produced, then
//!
//! - classifies real CIFAR-10 test images with ResNet-20, and its results (class, exit,
//!   score and logits, printed as IEEE bits) must equal the Rust API's exactly, for raw
//!   bytes; for f32 input normalised in C, within 1e-6;
//! - does the same with two (random) gates and thresholds chosen so that every exit
//!   point is used;
//! - exercises the error paths (NULL pointers, wrong sizes and counts, bad weights,
//!   destroyed and never-created handles), each of which must give the documented status
//!   and a message.
//!
//! Without a C compiler (`$CC` or `cc`) the tests print `skipped: no C compiler`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dgate_rt::backend::Precision;
use dgate_rt::data::{Dataset, IMAGE};
use dgate_rt::engine::{BackendChoice, Engine};
use dgate_rt::model::Model;
use dgate_rt::plan::SampleResult;
use dgate_rt::weights::Weights;

const N: usize = 200;
const CHUNK: usize = 64;

fn tmp_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// The directory holding the `libdgate_rt.so` built with this test. Cargo writes the
/// cdylib into `target/<profile>/deps/` (next to this executable) on every test build, but
/// copies it up to `target/<profile>/` only on `cargo build`, so `deps/` is the fresh one.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let name = format!(
        "{}dgate_rt{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let deps = exe.parent().expect("target/<profile>/deps");
    let found = [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join(&name).exists())
        .map(Path::to_path_buf);
    found.unwrap_or_else(|| panic!("{name} not found in or above {}", deps.display()))
}

/// The compiled C program, or `None` without a C compiler.
fn c_program() -> Option<&'static Path> {
    static PROGRAM: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
            if Command::new(&cc).arg("--version").output().is_err() {
                return None;
            }
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let lib = lib_dir();
            let exe = tmp_dir().join("classify");
            let out = Command::new(&cc)
                .args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I"])
                .arg(root.join("include"))
                .arg(root.join("tests/c/classify.c"))
                .arg("-o")
                .arg(&exe)
                .arg("-L")
                .arg(&lib)
                .arg("-ldgate_rt")
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .output()
                .expect("run the C compiler");
            assert!(
                out.status.success(),
                "{cc} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(exe)
        })
        .as_deref()
}

/// The C program and the shared data, or a printed reason to skip.
fn setup() -> Option<(&'static Path, PathBuf, PathBuf)> {
    let Some(exe) = c_program() else {
        println!("skipped: no C compiler");
        return None;
    };
    let (weights, data) = (
        common::weights("resnet20.safetensors"),
        common::test_batch(),
    );
    if !weights.exists() || !data.exists() {
        println!(
            "skipped: {} or {} not found",
            weights.display(),
            data.display()
        );
        return None;
    }
    Some((exe, weights, data))
}

/// ResNet-20 with two seeded random gates (after stages 1 and 2), written once.
fn gated_weights(base: &Path) -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut w = Weights::load(base).expect("resnet20");
        dgate_rt::zoo::add_random_gates(&mut w, &[1, 2], 7).expect("gates");
        let path = tmp_dir().join("resnet20_gated.safetensors");
        w.save(&path).expect("save gated weights");
        path
    })
    .clone()
}

fn run_c(exe: &Path, args: &[String]) -> String {
    let out = Command::new(exe)
        .args(args)
        .output()
        .expect("run C program");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "C program {args:?} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `R index class exit score logits...` lines, floats as IEEE bits.
fn parse_results(stdout: &str) -> Vec<(usize, i32, u32, Vec<u32>)> {
    let hex = |s: &str| u32::from_str_radix(s, 16).expect("hex bits");
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("R "))
        .enumerate()
        .map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[0].parse::<usize>().expect("index"), i, "input order");
            (
                f[1].parse().expect("class"),
                f[2].parse().expect("exit"),
                hex(f[3]),
                f[4..].iter().map(|s| hex(s)).collect(),
            )
        })
        .collect()
}

/// The Rust API's results for the same images, thresholds and chunks.
fn rust_results(weights: &Path, data: &Path, thresholds: &[f32]) -> Vec<SampleResult> {
    let model = Model::load(weights).expect("model");
    let mut engine = Engine::new(model, BackendChoice::Cpu, Precision::F32).expect("engine");
    engine.set_thresholds(thresholds).expect("thresholds");
    let ds = Dataset::load_cifar(&[data], Some(N)).expect("data");
    ds.pixels
        .chunks(CHUNK * IMAGE)
        .flat_map(|c| engine.run_u8(c, c.len() / IMAGE).expect("run"))
        .collect()
}

fn c_args(weights: &Path, data: &Path, mode: &str, thresholds: &[f32]) -> Vec<String> {
    let mut a = vec![
        "run".to_string(),
        weights.display().to_string(),
        data.display().to_string(),
        N.to_string(),
        CHUNK.to_string(),
        mode.to_string(),
    ];
    // Rust prints the shortest decimal that reads back as the same f32; strtof does.
    a.extend(thresholds.iter().map(|t| t.to_string()));
    a
}

/// Exact comparison (`tol = None`) or within `tol` relative to the sample's largest logit.
fn compare(c: &[(usize, i32, u32, Vec<u32>)], rust: &[SampleResult], tol: Option<f32>) {
    assert_eq!(c.len(), rust.len(), "one line per image");
    let same = |a: u32, b: f32, scale: f32| match tol {
        None => a == b.to_bits(),
        Some(t) => (f32::from_bits(a) - b).abs() <= t * scale.max(1.0),
    };
    for (i, ((class, exit, score, logits), r)) in c.iter().zip(rust).enumerate() {
        assert_eq!(*class, r.class, "image {i}: class");
        assert_eq!(*exit, r.exit.map_or(-1, |g| g as i32), "image {i}: exit");
        let scale = r.logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(same(*score, r.score, scale), "image {i}: score");
        assert_eq!(logits.len(), r.logits.len(), "image {i}: logits");
        for (j, (a, b)) in logits.iter().zip(&r.logits).enumerate() {
            assert!(same(*a, *b, scale), "image {i}: logit {j}");
        }
    }
}

#[test]
fn c_program_matches_the_rust_api_on_resnet20() {
    let Some((exe, weights, data)) = setup() else {
        return;
    };
    let rust = rust_results(&weights, &data, &[]);
    let out = run_c(exe, &c_args(&weights, &data, "u8", &[]));
    assert!(out.contains("gates 0"), "{out}");
    compare(&parse_results(&out), &rust, None);
    // The pretrained ResNet-20 is about 92% accurate; 200 images land near that.
    let acc: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("accuracy "))
        .and_then(|s| s.trim().parse().ok())
        .expect("accuracy line");
    assert!(acc > 85.0, "accuracy {acc}");

    let out = run_c(exe, &c_args(&weights, &data, "f32", &[]));
    compare(&parse_results(&out), &rust, Some(1e-6));
}

#[test]
fn c_program_matches_the_rust_api_with_gates() {
    let Some((exe, weights, data)) = setup() else {
        return;
    };
    let gated = gated_weights(&weights);
    // Confidences at each gate, to place thresholds that use every exit point.
    let inf = f32::INFINITY;
    let conf0: Vec<f32> = rust_results(&gated, &data, &[-inf, inf])
        .iter()
        .map(|r| r.score)
        .collect();
    let conf1: Vec<f32> = rust_results(&gated, &data, &[inf, -inf])
        .iter()
        .map(|r| r.score)
        .collect();
    let t0 = split(&conf0, 0.3);
    let rest: Vec<f32> = (0..N)
        .filter(|&i| conf0[i] < t0)
        .map(|i| conf1[i])
        .collect();
    let t1 = split(&rest, 0.5);
    let thresholds = [t0, t1];

    let rust = rust_results(&gated, &data, &thresholds);
    let mut used = [0usize; 3];
    for r in &rust {
        used[r.exit.map_or(2, |g| g)] += 1;
    }
    assert!(used.iter().all(|&u| u > 0), "exit points used: {used:?}");

    let out = run_c(exe, &c_args(&gated, &data, "u8", &thresholds));
    assert!(out.contains("gates 2"), "{out}");
    compare(&parse_results(&out), &rust, None);
    let out = run_c(exe, &c_args(&gated, &data, "f32", &thresholds));
    compare(&parse_results(&out), &rust, Some(1e-6));
}

/// A threshold with about `frac` of `conf` at or above it, midway between two neighbours
/// that are clearly apart.
fn split(conf: &[f32], frac: f64) -> f32 {
    let mut c = conf.to_vec();
    c.sort_by(|a, b| b.total_cmp(a));
    let want = ((frac * c.len() as f64) as usize).clamp(1, c.len() - 1);
    let k = (0..c.len())
        .flat_map(|d| [want + d, want.wrapping_sub(d)])
        .find(|&k| k >= 1 && k < c.len() && c[k - 1] - c[k] > 1e-3 * c[k - 1].abs().max(1.0))
        .expect("a gap");
    0.5 * (c[k - 1] + c[k])
}

#[test]
fn c_error_paths_report_status_and_message() {
    let Some((exe, weights, data)) = setup() else {
        return;
    };
    let gated = gated_weights(&weights);
    let out = run_c(
        exe,
        &[
            "errors".into(),
            gated.display().to_string(),
            data.display().to_string(),
        ],
    );
    assert!(!out.contains("FAIL"), "{out}");
    let summary = out
        .lines()
        .find(|l| l.ends_with("checks passed, 0 failed"))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    let passed: usize = summary
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("count");
    assert!(passed >= 60, "{out}");
    for label in [
        "ok create: missing file",
        "ok set_thresholds: wrong count",
        "ok run: NULL classes",
        "ok double destroy",
        "ok run after destroy",
    ] {
        assert!(out.contains(label), "missing `{label}` in:\n{out}");
    }
}
