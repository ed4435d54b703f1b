//! The kernels, run by the CPU emulator (`kernels/host_emu.cuh`) through the real
//! backend code, against the reference: every op over the awkward-shape table, exact
//! small-integer cases, and whole gated passes of small networks, f32 and f16 (the
//! tensor-core kernel included). Needs a host C++ compiler, no GPU; prints
//! `skipped: <reason>` without one.

use std::path::PathBuf;

use dgate_rt::backend::cuda::{kernels, selfcheck, CudaBackend};

#[test]
fn emulated_kernels_match_the_reference() {
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
