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

#[test]
fn emulated_kernels_match_the_reference() {
    let _one = EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dgate-emu");
    let lib = match kernels::build_emulator(&dir) {
        Ok(lib) => lib,
        Err(dgate_rt::Error::CudaUnavailable(msg)) => {
            println!("skipped: {msg}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut out = std::io::stdout();
    let mut make = |p| CudaBackend::new_emulated(p, &lib);
    match selfcheck::selfcheck_with(&mut out, &mut make, true) {
        Ok(ok) => assert!(ok, "emulated selfcheck reported failures (see above)"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn emulated_bench_tables_run() {
    let _one = EMULATOR.lock().unwrap_or_else(|p| p.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dgate-emu-bench");
    let lib = match kernels::build_emulator(&dir) {
        Ok(lib) => lib,
        Err(dgate_rt::Error::CudaUnavailable(msg)) => {
            println!("skipped: {msg}");
            return;
        }
        Err(e) => panic!("{e}"),
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
    assert!(
        text.lines()
            .filter(|l| l.starts_with("f16    auto"))
            .count()
            == 2
    );
}
