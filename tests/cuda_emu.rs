//! The kernels, run by the CPU emulator (`kernels/host_emu.cuh`) through the real
//! backend code, against the reference: every op over the awkward-shape table, exact
//! small-integer cases, and whole gated passes of small networks, f32 and f16 (the
//! tensor-core kernel included). Needs a host C++ compiler, no GPU; prints
//! `skipped: <reason>` without one.

use std::path::PathBuf;

use dgate_rt::backend::cuda::{kernels, selfcheck, CudaBackend};

/// The emulator runs kernels on fibers with process-wide state: one test at a time
/// (two in parallel crashed with SIGSEGV).
static EMULATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The emulator library built under the test's temporary directory `name`; `None`
/// (after printing `skipped: <reason>`) without a host C++ compiler.
fn emulator(name: &str) -> Option<PathBuf> {
    match kernels::build_emulator(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)) {
        Ok(lib) => Some(lib),
        Err(dgate_rt::Error::CudaUnavailable(msg)) => {
            println!("skipped: {msg}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Set in the processes that [`emulated_kernels_match_the_reference`] starts: the
/// claim directory of the shared check, and the emulator library to load.
const SHARE_DIR: &str = "DGATE_EMU_SHARE_DIR";
const SHARE_LIB: &str = "DGATE_EMU_SHARE_LIB";

/// How many processes share the check: `DGATE_EMU_PROCESSES`, else one per core (at
/// most 8). The emulator runs on one thread, so each core takes a process.
fn processes() -> usize {
    match std::env::var("DGATE_EMU_PROCESSES") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("DGATE_EMU_PROCESSES={v}: expected a whole number >= 1")),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    }
}

/// The self-check's share of this process on `lib`, its report on stdout; whether
/// every check it ran passed.
fn run_share(lib: &std::path::Path, share: &selfcheck::Share) -> bool {
    let mut out = std::io::stdout();
    let mut make = |p| CudaBackend::new_emulated(p, lib);
    selfcheck::selfcheck_with(&mut out, &mut make, true, share).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn emulated_kernels_match_the_reference() {
    let _one = EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(dir) = std::env::var(SHARE_DIR) {
        // Started by the test below: the units it claims first, on the parent's library.
        let lib =
            std::env::var(SHARE_LIB).unwrap_or_else(|_| panic!("{SHARE_DIR} without {SHARE_LIB}"));
        assert!(
            run_share(std::path::Path::new(&lib), &selfcheck::Share::claims(dir)),
            "emulated selfcheck reported failures (see above)"
        );
        return;
    }
    let Some(lib) = emulator("dgate-emu") else {
        return;
    };
    let procs = processes();
    if procs == 1 {
        assert!(
            run_share(&lib, &selfcheck::Share::all()),
            "emulated selfcheck reported failures (see above)"
        );
        return;
    }
    // The check shared among `procs` processes: this one and `procs - 1` started here,
    // each running this test with the claim directory set. Their reports go to files
    // (a full pipe would stall a process nobody reads yet), printed when they end.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("emu-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let claims = dir.join("claims");
    std::fs::create_dir_all(&claims).unwrap_or_else(|e| panic!("{}: {e}", claims.display()));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("this test's executable: {e}"));
    let children: Vec<_> = (1..procs)
        .map(|i| {
            let log = dir.join(format!("process-{i}.log"));
            let file =
                std::fs::File::create(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            let err = file
                .try_clone()
                .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
            let child = std::process::Command::new(&exe)
                .args([
                    "emulated_kernels_match_the_reference",
                    "--exact",
                    "--nocapture",
                ])
                .env(SHARE_DIR, &claims)
                .env(SHARE_LIB, &lib)
                .stdout(file)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
            (log, child)
        })
        .collect();
    // Straight to stdout, like the reports themselves: the harness would hold back
    // `println!` output of a passing test, and CI's log shows every check.
    let say = |text: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    say(&format!(
        "== the check shared among {procs} processes: process 0 =="
    ));
    let mine = run_share(&lib, &selfcheck::Share::claims(&claims));
    let mut all_ok = mine;
    for (i, (log, mut child)) in children.into_iter().enumerate() {
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for process {}: {e}", i + 1));
        let text =
            std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        say(&format!("== process {} ({status}) ==\n{text}", i + 1));
        all_ok &= status.success();
    }
    let units = std::fs::read_dir(&claims).map_or(0, |d| d.count());
    say(&format!(
        "{units} units of the check claimed among {procs} processes"
    ));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(units > 0, "no unit of the check was claimed");
    assert!(all_ok, "emulated selfcheck reported failures (see above)");
}

#[test]
fn emulated_bench_tables_run() {
    let _one = EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
    let Some(lib) = emulator("dgate-emu-bench") else {
        return;
    };
    use dgate_rt::backend::cuda::bench;
    use dgate_rt::backend::Precision;
    let mut out = Vec::new();
    let mut make = |p| CudaBackend::new_emulated(p, &lib);
    let small: Vec<bench::ConvShape> = bench::RESNET101_CONVS
        .iter()
        .copied()
        .filter(|s| s.1 == 3 || s.0 == "l4 1x1 in'")
        .collect();
    bench::layer_table_with(
        &mut out,
        &mut make,
        &small,
        &[Precision::F32, Precision::F16],
        1,
        1,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let plan = dgate_rt::backend::cuda::synthetic::bottleneck_plan([1, 1, 1, 1], 8, 10, 3);
    bench::timing_with(&mut out, &mut make, plan, &[1, 3], 1).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out);
    println!("{text}");
    assert!(text.contains("mmaasync_f16") && text.contains("simt_f32"));
    assert!(text.contains("sum of one of each (conv_tc_f16)"));
    assert!(
        text.lines()
            .filter(|l| l.starts_with("f16    auto"))
            .count()
            == 2
    );
    // The emulator has the wgmma tiles, so conv_tc alone (printed `tc_f16`) is timed beside `auto` too.
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("f16    tc_f16 "))
            .count(),
        2
    );
}

#[test]
fn emulated_profile_times_every_step_of_a_gated_pass() {
    let _one = EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
    let Some(lib) = emulator("dgate-emu-profile") else {
        return;
    };
    use dgate_rt::backend::{Backend, Precision};
    let mut plan = dgate_rt::backend::cuda::synthetic::tiny_resnet(3, 10);
    let n = 8;
    let mut rng = dgate_rt::backend::cuda::reference::Rng::new(4);
    let images = rng.vec(n * 3 * 32 * 32, 1.0);
    let mut be = CudaBackend::new_emulated(Precision::F16, &lib).unwrap_or_else(|e| panic!("{e}"));
    // Gate 0 lets through only the samples scoring above the median.
    plan.gates[1].threshold = f32::INFINITY;
    plan.gates[0].threshold = f32::NEG_INFINITY;
    let mut scores: Vec<f32> = be
        .run(&plan, &images, n)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| r.score)
        .collect();
    scores.sort_by(|a, b| a.total_cmp(b));
    plan.gates[0].threshold = scores[n / 2];
    let exited = be
        .run(&plan, &images, n)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter(|r| r.exit == Some(0))
        .count();
    assert!(exited > 0 && exited < n, "{exited} of {n} left at gate 0");

    let profile = be
        .profile(&plan, &images, n)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the CUDA backend profiles");
    // The emulator runs each launch at once: nothing to hold, and the wall clock times it.
    assert!(!profile.back_to_back && profile.hold_ms == 0.0 && profile.launch_ms > 0.0);
    let steps = &profile.steps;
    let ops: usize = plan.stages.iter().map(|s| s.ops.len()).sum();
    assert_eq!(
        steps.len(),
        1 + ops + plan.gates.len() + 1,
        "pack, ops, gates, head"
    );
    assert!(
        steps[0].op.starts_with("pack input")
            && steps.last().is_some_and(|s| s.op.starts_with("head"))
    );
    assert!(steps.iter().all(|s| s.ms >= 0.0 && s.bytes > 0.0));
    // Gate 1 is closed (threshold +inf): one launch carrying the level over, no scoring.
    assert!(
        steps
            .iter()
            .any(|s| s.op == "gate 1 closed" && s.kernel == "gate_closed" && s.flops == 0.0),
        "{steps:?}"
    );
    let convs: Vec<_> = steps.iter().filter(|s| s.op.starts_with("conv")).collect();
    assert!(!convs.is_empty() && convs.iter().all(|s| s.flops > 0.0 && !s.kernel.is_empty()));
    // After gate 0 the convolutions ran on the survivors only.
    let gate0 = steps
        .iter()
        .position(|s| s.op.starts_with("gate 0"))
        .expect("gate 0 step");
    assert!(steps[..gate0].iter().all(|s| s.samples == n));
    assert!(steps[gate0 + 1..]
        .iter()
        .filter(|s| s.op.starts_with("conv"))
        .all(|s| s.samples == n - exited));

    let table = dgate_rt::bench::profile_table(&profile);
    println!("{table}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| step") && !l.contains("---"))
        .collect();
    let us: Vec<f64> = rows
        .iter()
        .map(|l| {
            l.split('|')
                .nth(5)
                .and_then(|v| v.trim().parse().ok())
                .expect("total µs")
        })
        .collect();
    assert!(us.windows(2).all(|w| w[0] >= w[1]), "slowest first: {us:?}");
    assert!(table.contains("GB/s") && table.contains(&format!("{} steps", steps.len())));
    assert!(table.contains("timed by the wall clock"), "{table}");

    // The hold the profile puts before a pass on a GPU: the emulator spins it out.
    for ms in [0.0, 30.0] {
        let t = std::time::Instant::now();
        be.hold_stream(ms).unwrap_or_else(|e| panic!("{e}"));
        let took = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            took >= ms && took < ms + 1000.0,
            "a {ms}-ms hold took {took:.1} ms"
        );
    }
}
