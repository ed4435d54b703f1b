//! The CUDA backend against the CPU reference (via the library's self-check). Needs a
//! GPU; without one each test prints `skipped: <reason>` after checking that the
//! backend reports the absence as an error rather than panicking.

use dgate_rt::backend::cuda::{self, params, CudaBackend};
use dgate_rt::backend::Precision;
use dgate_rt::Error;

fn gpu_or_skip() -> bool {
    match cuda::available() {
        Ok(()) => true,
        Err(e) => {
            println!("skipped: {e}");
            false
        }
    }
}

#[test]
fn without_a_gpu_new_is_an_error_not_a_panic() {
    match cuda::available() {
        Ok(()) => println!("skipped: a GPU is present"),
        Err(_) => {
            for p in [Precision::F32, Precision::F16] {
                match CudaBackend::new(p) {
                    Err(Error::CudaUnavailable(msg)) => assert!(!msg.is_empty()),
                    Err(e) => panic!("expected CudaUnavailable, got {e}"),
                    Ok(_) => panic!("CudaBackend::new succeeded although CUDA is unavailable"),
                }
            }
            assert!(cuda::device_name().is_err());
        }
    }
}

#[test]
fn param_structs_have_the_sizes_common_cuh_expects() {
    // The same numbers are checked by static_assert inside every NVRTC compile.
    let sizes: Vec<usize> = params::sizes()
        .iter()
        .filter(|s| s.0.starts_with("DGATE_SIZEOF_"))
        .map(|s| s.1)
        .collect();
    assert_eq!(sizes, vec![176, 352, 72, 88, 144, 88, 56, 48, 8]);
}

#[test]
fn every_op_and_small_networks_match_the_reference() {
    if !gpu_or_skip() {
        return;
    }
    let mut out = std::io::stdout();
    match cuda::selfcheck::selfcheck(&mut out) {
        Ok(ok) => assert!(ok, "selfcheck reported failures (see above)"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_backend_can_move_to_another_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<CudaBackend>();
}
