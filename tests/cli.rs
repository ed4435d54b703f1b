//! The real binary: exit codes, messages, JSON output, per-sample order.

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dgate-rt"))
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = bin().args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn json_run_reports_accuracy_and_per_sample_results_in_order() {
    let w = common::weights("resnet20.safetensors");
    let d = common::test_batch();
    let (code, out, err) = run(&[
        "run",
        "--weights",
        w.to_str().unwrap(),
        "--data",
        d.to_str().unwrap(),
        "--limit",
        "7",
        "--batch",
        "3",
        "--backend",
        "cpu",
        "--json",
        "--per-sample",
    ]);
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["summary"]["images"], 7);
    let per = doc["per_sample"].as_array().unwrap();
    assert_eq!(per.len(), 7);
    let labels = [3, 8, 8, 0, 6, 6, 1];
    for (i, p) in per.iter().enumerate() {
        assert_eq!(p["index"], i);
        assert_eq!(p["label"], labels[i]);
        assert_eq!(p["logits"].as_array().unwrap().len(), 10);
        assert!(p["exit_gate"].is_null());
    }
    // Row 0 of the resnet20 oracle (data README): a cat with logit 23.7305.
    let l0 = per[0]["logits"][3].as_f64().unwrap();
    assert!((l0 - 23.7305).abs() < 1e-3, "{l0}");
}

#[test]
fn text_run_prints_accuracy_with_two_decimals() {
    let w = common::weights("resnet20.safetensors");
    let (code, out, err) = run(&[
        "run",
        "--weights",
        w.to_str().unwrap(),
        "--limit",
        "20",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("accuracy")).unwrap();
    assert!(
        line.contains('%')
            && line
                .split_whitespace()
                .nth(1)
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .len()
                == 3,
        "{line}"
    );
    assert!(out.contains("GFLOPs") && out.contains("throughput"));
}

#[test]
fn no_weights_runs_a_random_network_and_says_so() {
    let (code, out, err) = run(&[
        "run",
        "--random",
        "resnet20",
        "--limit",
        "4",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("untrained"), "{err}");
    assert!(out.contains("[random, untrained]"));
}

#[test]
fn cuda_backend_without_gpu_is_a_clear_error_and_auto_falls_back() {
    if dgate_rt::backend::cuda::CudaBackend::new(dgate_rt::backend::Precision::F32).is_ok() {
        println!("skipped: a GPU is present, so --backend cuda does not fail here");
        return;
    }
    let (code, _, err) = run(&[
        "run",
        "--random",
        "resnet20",
        "--limit",
        "2",
        "--backend",
        "cuda",
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: CUDA unavailable"), "{err}");
    let (code, _, err) = run(&[
        "run",
        "--random",
        "resnet20",
        "--limit",
        "2",
        "--backend",
        "auto",
    ]);
    assert_eq!(code, 0);
    assert!(
        err.contains("notice:") && err.contains("running on the CPU"),
        "{err}"
    );
}

#[test]
fn bad_inputs_exit_non_zero_with_the_problem_named() {
    let dir = std::env::temp_dir().join(format!("dgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file at all").unwrap();
    let (code, _, err) = run(&["info", "--weights", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("junk.safetensors") && !err.contains("panicked"),
        "{err}"
    );

    let short = dir.join("short.bin");
    std::fs::write(&short, vec![1u8; 3073 + 10]).unwrap();
    let (code, _, err) = run(&[
        "run",
        "--random",
        "resnet20",
        "--data",
        short.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("short.bin") && err.contains("whole number"),
        "{err}"
    );

    let (code, _, err) = run(&[
        "run",
        "--random",
        "resnet20",
        "--thresholds",
        "1,2",
        "--backend",
        "cpu",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("2 thresholds given but the model has 0 gate(s)"),
        "{err}"
    );

    let (code, _, err) = run(&["run", "--random", "resnet99"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown architecture `resnet99`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn info_matches_design_flops() {
    let (code, out, err) = run(&["info", "--random", "resnet101", "--json"]);
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    let g = |v: &serde_json::Value| format!("{:.3}", v.as_f64().unwrap());
    assert_eq!(g(&d["gflops"]), "5.020");
    assert_eq!(g(&d["stages"][0]["cumulative_gflops"]), "0.440");
    assert_eq!(g(&d["stages"][1]["cumulative_gflops"]), "1.111");
    assert_eq!(
        format!("{:.2}", d["params"].as_f64().unwrap() / 1e6),
        "42.51"
    );
    let (_, out, _) = run(&["info", "--random", "densenet201", "--json"]);
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(g(&d["gflops"]), "2.728");
    assert_eq!(g(&d["stages"][0]["cumulative_gflops"]), "0.750");
    assert_eq!(g(&d["stages"][1]["cumulative_gflops"]), "1.283");
    assert_eq!(
        format!("{:.2}", d["params"].as_f64().unwrap() / 1e6),
        "18.10"
    );
}

#[test]
fn bench_profile_is_reported_per_configuration_and_gpu_check_parts_are_checked() {
    // A quick CPU bench of ResNet-20: batch sizes, exit fractions, then the rest.
    let bench = |batch: &str, exits: &str, rest: &[&str]| {
        let mut args = vec![
            "bench",
            "--random",
            "resnet20",
            "--backend",
            "cpu",
            "--batch",
            batch,
            "--exits",
            exits,
            "--runs",
            "1",
            "--warmup",
            "0",
        ];
        args.extend_from_slice(rest);
        run(&args)
    };
    let (code, out, err) = bench("1,2", "0.5,0.3", &["--profile", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let profiles = v["profiles"].as_array().expect("profiles");
    // Full network and with exits, each at the largest batch only; the CPU cannot profile.
    assert_eq!(profiles.len(), 2, "{out}");
    assert!(profiles
        .iter()
        .all(|p| p["batch"] == 2 && p["steps"].is_null()));
    // Listed batch sizes: each configuration at each, in the order timed; and only
    // sizes that are timed.
    let (code, out, err) = bench("1,2", "", &["--profile", "2,1", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let batches: Vec<_> = v["profiles"]
        .as_array()
        .expect("profiles")
        .iter()
        .map(|p| p["batch"].as_u64())
        .collect();
    assert_eq!(batches, [Some(1), Some(2)], "{out}");
    let (code, _, err) = bench("1,2", "", &["--profile", "1,3"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--profile 1,3: batch 3 is not one of --batch 1,2"),
        "{err}"
    );
    let (code, out, _) = bench("1", "", &["--profile"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("### profile: ResNet-20 f32 full, batch 1") && out.contains("CUDA only"),
        "{out}"
    );

    // The weight-prefetch A/B is CUDA's: on the CPU the table says so, and a notice too.
    let (code, out, err) = bench("1", "", &["--weight-prefetch", "ab"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("### weight prefetch A/B")
            && out.contains("(this backend has no weight prefetch; CUDA only)"),
        "{out}"
    );
    assert!(err.contains("notice: --weight-prefetch ab: cpu"), "{err}");
    let (code, out, err) = bench("1", "", &["--weight-prefetch", "ab", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["weight_prefetch_ab"], serde_json::json!([]), "{out}");
    let (code, _, err) = bench("1", "", &["--weight-prefetch", "maybe"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'maybe'") && err.contains("[possible values: on, off, ab]"),
        "{err}"
    );

    let (code, _, err) = run(&["gpu-check", "--parts", "ops,bogus"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown part \"bogus\""), "{err}");
}

#[test]
fn bench_help_names_every_cuda_setting() {
    let (code, out, err) = run(&["bench", "--help"]);
    assert_eq!(code, 0, "{err}");
    for v in [
        "DGATE_CONV",
        "DGATE_AUTOTUNE",
        "DGATE_WGMMA",
        "DGATE_TMA",
        "DGATE_CLUSTER",
        "DGATE_FUSE",
        "DGATE_PDL",
        "DGATE_PREFETCH",
        "DGATE_CARVEOUT",
        "DGATE_CUDA_GRAPHS",
        "DGATE_DEBUG",
    ] {
        assert!(out.contains(v), "bench --help does not mention {v}");
        // Each is also in the README's table of settings.
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&format!("`{v}")),
            "README does not list {v}"
        );
    }
}
