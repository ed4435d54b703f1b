//! `scripts/device-run.sh` decides, from `gpu-check`'s log, which kernels the rest of a
//! device call runs without: `DGATE_TMA=0` when the TMA tiles fail (or the check ends
//! right after one of theirs), `DGATE_WGMMA=0` when the wgmma tiles fail or the check
//! ends abnormally elsewhere. A device call is scarce, so that block is run here on
//! made-up logs (bash only, no GPU).

use std::process::Command;

/// The script's fallback block, between its `>>> fallback` and `<<< fallback` lines.
fn fallback_block() -> String {
    let script = include_str!("../scripts/device-run.sh");
    let start = script.find("# >>> fallback").expect("start marker");
    let end = script.find("# <<< fallback").expect("end marker");
    script[start..end].to_string()
}

/// (DGATE_TMA, DGATE_WGMMA) after the block, for a log and gpu-check's exit status.
fn decide(log: &str, rc: i32) -> (String, String) {
    let (tma, wgmma, _) = decide3(log, rc);
    (tma, wgmma)
}

/// (DGATE_TMA, DGATE_WGMMA, DGATE_CLUSTER) after the block.
fn decide3(log: &str, rc: i32) -> (String, String, String) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dgate-fallback-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gpu-check.log"), log).unwrap();
    let body = format!(
        "stamp() {{ :; }}\nOUT={}\ncheck_rc={rc}\n{}\necho \"${{DGATE_TMA:-on}} ${{DGATE_WGMMA:-on}} ${{DGATE_CLUSTER:-on}}\"\n",
        dir.display(),
        fallback_block()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(body)
        .output()
        .expect("bash");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    )
}

#[test]
fn a_cluster_tile_fault_or_failure_drops_only_the_cluster_tiles() {
    let fault = "ok   conv_tcc128x64_f16 a\nok   conv_tc64x64cl8_f16 b\n\
                 error: CUDA error: conv_tc64x64cl8_f16 on 72->200 n=1: cluster misconfiguration\n";
    assert_eq!(decide3(fault, 2), ("on".into(), "on".into(), "0".into()));
    let fail = "ok   conv_tcc128x64_f16 a\nFAIL conv_tc128x32cl8_f16 b\nok   conv_wg64x64_f16 c\n";
    assert_eq!(decide3(fail, 1), ("on".into(), "on".into(), "0".into()));
    // Other kernels' failures leave them on.
    let other = "ok   conv_tc64x64cl4_f16 a\nFAIL conv_wg128x64_f16 b\n";
    assert_eq!(decide3(other, 1), ("on".into(), "0".into(), "on".into()));
}

#[test]
fn a_tma_fault_or_failure_drops_only_the_tma_tiles() {
    let fault = "ok   conv_halo64_f16 a\nok   conv_tma128x256_f16 b\n\
                 error: CUDA error: conv_tma128x256_f16 on 72->200 n=1: unspecified launch failure\n";
    assert_eq!(decide(fault, 2), ("0".into(), "on".into()));
    let fail = "ok   conv_halo64_f16 a\nFAIL conv_tma128x64_f16 b\nok   conv_mma_f16 c\n";
    assert_eq!(decide(fail, 1), ("0".into(), "on".into()));
}

#[test]
fn a_wgmma_failure_or_an_abnormal_end_elsewhere_drops_every_wgmma_kernel() {
    let fail = "ok   conv_halo64_f16 a\nFAIL conv_wg128x64_f16 b\n";
    assert_eq!(decide(fail, 1), ("on".into(), "0".into()));
    let crash = "ok   conv_tma128x64_f16 a\nok   pass tuned b\nerror: something\n";
    assert_eq!(decide(crash, 2), ("on".into(), "0".into()));
}

#[test]
fn a_passing_check_or_another_failure_keeps_them() {
    assert_eq!(
        decide("ok   conv_tma128x64_f16 a\n", 0),
        ("on".into(), "on".into())
    );
    let other = "ok   conv_tma128x64_f16 a\nFAIL real data resnet56 f16 accuracy\nok   pass b\n";
    assert_eq!(decide(other, 1), ("on".into(), "on".into()));
}

#[test]
fn a_time_limit_in_the_timing_part_keeps_them_but_one_elsewhere_does_not() {
    // What the 2026-11-28 run's gpu-check printed before its time limit, with the timing
    // part's header that the check now prints: every check passed.
    let timing = "ok   conv_tma128x64_f16 a\nselfcheck: 2980 passed, 0 failed\n\
                  ok   pass b\n== latency and per-layer tables (timing only)\n\
                  f32    auto                  1      1.582\n";
    assert_eq!(decide(timing, 124), ("on".into(), "on".into()));
    // The same limit with a failed check before it is a failure as before.
    let failed = timing.replace("ok   pass b", "FAIL conv_wg128x64_f16 b");
    assert_eq!(decide(&failed, 124), ("on".into(), "0".into()));
    // A limit inside the checks may be a kernel that never returns.
    let hang = "ok   conv_halo64_f16 a\nok   conv_tma128x64_f16 b\n";
    assert_eq!(decide(hang, 124), ("0".into(), "on".into()));
    let hang = "ok   conv_tma128x64_f16 a\nselfcheck: 2980 passed, 0 failed\nok   pass b\n";
    assert_eq!(decide(hang, 124), ("on".into(), "0".into()));
}

/// The script's bench phase (`bench_arch`), between its `>>> bench retry` and
/// `<<< bench retry` lines, run for both networks with a made-up binary that behaves as
/// `fake` says. Returns (DGATE_TMA, DGATE_WGMMA) after it, the files it left, and how
/// many times the binary ran.
fn bench_phase(fake: &str) -> (String, String, Vec<String>, usize) {
    let script = include_str!("../scripts/device-run.sh");
    let start = script.find("# >>> bench retry").expect("start marker");
    let end = script.find("# <<< bench retry").expect("end marker");
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("dgate-bench-retry-{}-{call}", std::process::id()));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // ok: succeeds; tma: fails unless DGATE_TMA=0; always: fails; slow: its time limit;
    // prefetch: fails after its tables, its weight-prefetch A/B check having failed;
    // prefetchfault: fails with the prefetch on, unless run with `--weight-prefetch off`.
    let bin = dir.join("dgate-rt");
    std::fs::write(
        &bin,
        format!(
            "#!/usr/bin/env bash\necho run >> {runs}\necho \"table of $3 TMA=${{DGATE_TMA:-on}}{note}\"\n\
             case {fake} in ok) exit 0;; tma) [ \"${{DGATE_TMA:-on}}\" = 0 ] && exit 0; exit 101;; \
             slow) exit 124;; \
             prefetchfault) case \"$*\" in *'--weight-prefetch off'*) exit 0;; esac; exit 1;; \
             *) exit 1;; esac\n",
            runs = dir.join("runs").display(),
            note = match fake {
                "prefetch" => " error: the weight prefetch changed the results: ...",
                "prefetchfault" => " error: ResNet-101 f16 full, batch 1, with the weight prefetch on: CUDA ...",
                _ => "",
            }
        ),
    )
    .unwrap();
    let body = format!(
        "stamp() {{ :; }}\ncap() {{ echo 60; }}\nleft() {{ echo 500; }}\nOUT={}\nBIN={}\n{}\n\
         for arch in resnet101 densenet201; do bench_arch $arch; done\n\
         echo \"${{DGATE_TMA:-on}} ${{DGATE_WGMMA:-on}} ${{DGATE_CLUSTER:-on}}\"\n",
        out.display(),
        bin.display(),
        &script[start..end]
    );
    let status = Command::new("chmod")
        .arg("+x")
        .arg(&bin)
        .status()
        .expect("chmod");
    assert!(status.success());
    let res = Command::new("bash")
        .arg("-c")
        .arg(body)
        .output()
        .expect("bash");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let text = String::from_utf8_lossy(&res.stdout);
    let last = text.lines().last().unwrap_or_default().to_string();
    let mut it = last.split_whitespace();
    let (tma, wgmma) = (
        it.next().unwrap_or_default().to_string(),
        it.next().unwrap_or_default().to_string(),
    );
    // The cluster tiles go with the TMA tiles.
    assert_eq!(
        it.next().unwrap_or_default(),
        if tma == "0" { "0" } else { "on" }
    );
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    // Each table holds the run that produced it: the retry's where there was one.
    for f in files.iter().filter(|f| f.ends_with(".md")) {
        let t = std::fs::read_to_string(out.join(f)).unwrap();
        assert_eq!(t.lines().count(), 1, "{f}: {t}");
    }
    let runs = std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    (tma, wgmma, files, runs)
}

/// Checks [`bench_phase`]'s outcome for `fake`: (DGATE_TMA, DGATE_WGMMA), files, runs.
fn assert_bench_phase(fake: &str, env: (&str, &str), files: &[&str], runs: usize) {
    let (tma, wgmma, got, n) = bench_phase(fake);
    assert_eq!((tma.as_str(), wgmma.as_str()), env, "{fake}");
    assert_eq!(got, files, "{fake}");
    assert_eq!(n, runs, "{fake}: runs of the binary");
}

#[test]
fn a_bench_that_succeeds_or_runs_out_of_time_is_not_run_again() {
    let both = ["bench-densenet201.md", "bench-resnet101.md"];
    assert_bench_phase("ok", ("on", "on"), &both, 2);
    assert_bench_phase("slow", ("on", "on"), &both, 2);
}

#[test]
fn a_failed_weight_prefetch_check_keeps_the_tables_and_a_fault_with_it_on_drops_only_the_ab() {
    let both = ["bench-densenet201.md", "bench-resnet101.md"];
    assert_bench_phase("prefetch", ("on", "on"), &both, 2);
    // A fault with it on: again without the A/B, and the second network without it at once.
    let first = [
        "bench-densenet201.md",
        "bench-resnet101-failed.log",
        "bench-resnet101.md",
    ];
    assert_bench_phase("prefetchfault", ("on", "on"), &first, 3);
}

#[test]
fn a_bench_that_fails_runs_again_without_the_tma_tiles_then_without_wgmma() {
    // The first network fails and passes without TMA; the second runs without it at once.
    let first = [
        "bench-densenet201.md",
        "bench-resnet101-failed.log",
        "bench-resnet101.md",
    ];
    assert_bench_phase("tma", ("0", "on"), &first, 3);
    // Failing however run: one retry each, the second network's without wgmma too.
    let both = ["bench-densenet201-failed.log", "bench-densenet201.md"];
    let all = [&both[..], &first[1..]].concat();
    assert_bench_phase("always", ("0", "0"), &all, 4);
}
