//! `scripts/side_by_side.py`, the table a device call ends with, over the logs of the H200
//! calls recorded in docs/device: it must reproduce the figures docs/performance.md took
//! from them, and judge the targets as that file does. Needs python3; prints
//! `skipped: <reason>` without it.

use std::path::Path;
use std::process::Command;

fn side_by_side(args: &[&str]) -> Option<std::process::Output> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    match Command::new("python3")
        .arg(root.join("scripts/side_by_side.py"))
        .args(args)
        .current_dir(root)
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            println!("skipped: cannot run python3: {e}");
            None
        }
    }
}

/// The script's table over `logs`, which must succeed and contain every line of `wants`;
/// `None` where python3 cannot run (the test is then skipped).
fn table_with(logs: &[&str], wants: &[&str]) -> Option<String> {
    let out = side_by_side(logs)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in wants {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    Some(text)
}

/// The recorded side-by-side file `path` is `text` after its opening comment (how it
/// was made).
fn assert_recorded(path: &str, text: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recorded = std::fs::read_to_string(root.join(path)).expect("recorded side-by-side table");
    let body = recorded
        .split_once("-->\n\n")
        .map(|(_, b)| b)
        .expect("the recorded table starts with a comment saying how it was made");
    assert_eq!(body, text, "{path}");
}

#[test]
fn the_recorded_h200_call_gives_the_documented_ratios_and_verdicts() {
    table_with(
        &["docs/device/device-run-h200-2026-11-27.log"],
        &[
            "Card: NVIDIA H200.",
            // ResNet-101 f16 at batch 256 against torch.compile; f32 against eager.
            "| 256 | f16 | 10.088 | 8.712 |  | 4.760 | 2.12 (vs torch.compile) |",
            "| 256 | f32 | 92.663 | 47.732 |  |  | 1.94 (vs PyTorch eager) |",
            "| 1 | f16 | 1.178 | 14.080 | 1.720 |  | 0.68 (vs PyTorch CUDA graph) |",
            // Early exit at batch 256: speed-up and FLOP ideal.
            "| ResNet-101 | f16 | 256 | 50%/30% | 10.088 | 7.305 | 1.38x | 3.23x | 11.086 | 8.712 |",
            "| DenseNet-201 | f32 | 256 | 50%/30% | 70.696 | 47.597 | 1.49x | 2.09x | 36.361 | 45.427 |",
            // Verdicts.
            "| ResNet-101 f32 batch 1: at most PyTorch eager f32's time | yes | 2.113 ms | 7.831 ms |",
            "| ResNet-101 f16 batch 256: at most torch.compile's time | no | 10.088 ms | 4.760 ms |",
            "| ResNet-101 f16 batch 1: at most torch.compile's time | not measured | 1.178 ms | |",
            "| ResNet-101 f32 early exit at batch 256: at least 90% of the FLOP ideal (2.91x) | no | 2.51x | 2.91x needed |",
            "PyTorch logit check against dgate-rt (resnet101): max |diff| 1.43e-05, ok",
        ],
    );
}

/// The second H200 run of 2026-11-27, whose tables docs/performance.md shows: its call's
/// log plus the second call's torch.compile at batch 1 and 64 give the recorded
/// side-by-side file exactly, and the figures and verdicts the docs quote.
#[test]
fn the_second_h200_run_gives_the_recorded_table() {
    let Some(text) = table_with(
        &[
            "docs/device/device-run-h200-2026-11-27-run2.log",
            "docs/device/compile-b1-b64-h200-2026-11-27-run2.log",
        ],
        &[
            // ResNet-101 f16 at batch 256 against torch.compile; DenseNet-201 f16 at batch 64 ahead of it.
            "| 256 | f16 | 9.925 |  | 9.599 |  | 4.796 | 2.07 (vs torch.compile) |",
            "| 64 | f16 | 6.448 | 7.788 | 22.003 |  | 7.509 | 0.86 (vs torch.compile) |",
            "| ResNet-101 | f16 | 256 | 50%/30% | 9.925 | 6.137 | 1.62x | 3.23x | 9.377 | 9.599 |",
            "| DenseNet-201 f16 batch 64: at most torch.compile's time | yes | 6.448 ms | 7.509 ms |",
            "| ResNet-101 f16 early exit at batch 256: at least 90% of the FLOP ideal (2.91x) | no | 1.62x | 2.91x needed |",
        ],
    ) else {
        return;
    };
    assert_recorded("docs/device/side-by-side-h200-2026-11-27-run2.md", &text);
}

/// The H200 run of 2026-11-28 (its benches without wgmma kernels, after gpu-check's
/// timeout): its call's log and the second call's torch.compile at batch 1 and 64 give the
/// recorded side-by-side file exactly, and the figures and verdicts the docs quote.
#[test]
fn the_2026_11_28_h200_run_gives_the_recorded_table() {
    let Some(text) = table_with(
        &[
            "docs/device/device-run-h200-2026-11-28.log",
            "docs/device/compile-b1-b64-h200-2026-11-28.log",
        ],
        &[
            "| 1 | f16 | 0.925 | 16.882 | 1.754 | 1.088 | 0.85 (vs torch.compile) |",
            "| 64 | f16 | 2.794 | 19.106 |  | 3.713 | 0.75 (vs torch.compile) |",
            "| 256 | f16 | 8.461 | 19.526 |  | 7.955 | 1.06 (vs torch.compile) |",
            "| 256 | f16 | 7.313 | 27.568 |  | 8.672 | 0.84 (vs torch.compile) |",
            "| ResNet-101 | f16 | 256 | 50%/30% | 8.461 | 4.036 | 2.10x | 3.20x | 21.029 | 19.526 |",
            "| DenseNet-201 | f32 | 256 | 50%/30% | 29.092 | 15.914 | 1.83x | 2.09x | 30.215 | 45.879 |",
            "| DenseNet-201 f16 batch 1: at most torch.compile's time | not measured | 1.745 ms | |",
            "| ResNet-101 f16 batch 256: at most torch.compile's time | no | 8.461 ms | 7.955 ms |",
            "| ResNet-101 f16 early exit at batch 256: at least 90% of the FLOP ideal (2.88x) | no | 2.10x | 2.88x needed |",
        ],
    ) else {
        return;
    };
    assert_recorded("docs/device/side-by-side-h200-2026-11-28.md", &text);
}

/// A bench log with the weight-prefetch A/B table (`--weight-prefetch ab`): its rows
/// come out in their own section and are not taken for bench rows (the main table's
/// batch-1 row is the one in the dgate-rt column).
#[test]
fn weight_prefetch_ab_rows_get_their_own_section() {
    let dir = std::env::temp_dir().join(format!("dgate-sbs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("bench-resnet101.md");
    std::fs::write(
        &log,
        "backend: cuda (NVIDIA H200, sm_90a, f16)\n\n\
         | config | batch | GFLOPs/sample | exits | ms/batch | ms/sample | device ms/batch | TFLOP/s |\n\
         | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n\
         | ResNet-101 f16 full | 1 | 5.105 | - | 1.100 | 1.1000 | 0.925 | 5.52 |\n\
         \n### weight prefetch A/B (same process, same kernels; device ms)\n\n\
         | config | batch | off ms | on ms | off again ms | on / off | logits max err | check |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n\
         | ResNet-101 f16 full | 1 | 0.930 | 0.811 | 0.926 | 0.874 | 3.1e-3 | ok |\n\
         | ResNet-101 f16 full | 64 | 2.790 | - | 2.801 | - | 2.0e0 | FAIL |\n",
    )
    .unwrap();
    let text = table_with(
        &[log.to_str().unwrap()],
        &[
            "## Weight prefetch A/B (DGATE_PREFETCH=1; same process, same kernels)",
            "| ResNet-101 f16 full | 1 | 0.930 | 0.811 | 0.926 | 0.874 | 3.1e-3 | ok |",
            "| ResNet-101 f16 full | 64 | 2.790 | - | 2.801 | - | 2.0e0 | FAIL |",
            "| 1 | f16 | 0.925 |",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(text) = text {
        assert!(!text.contains("| 1 | f16 | 0.930"), "{text}");
    }
}

#[test]
fn a_log_without_bench_rows_is_an_error_that_names_it() {
    let Some(out) = side_by_side(&["README.md"]) else {
        return;
    };
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dgate-rt bench rows in README.md"));
    let Some(out) = side_by_side(&["no/such.log"]) else {
        return;
    };
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such.log: no such file"));
}
