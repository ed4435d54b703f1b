//! The GPU report's op part and timing part (device, self-check, ResNet-101-shaped
//! latency table), as `dgate-rt gpu-check` prints them. Needs a GPU; prints `skipped: <reason>` without one.

use dgate_rt::backend::cuda;

#[test]
fn gpu_check_report() {
    if let Err(e) = cuda::available() {
        println!("skipped: {e}");
        return;
    }
    let mut out = std::io::stdout();
    match cuda::selfcheck::gpu_check(&mut out) {
        Ok(ok) => assert!(ok, "gpu-check reported failures (see above)"),
        Err(e) => panic!("{e}"),
    }
    match cuda::selfcheck::gpu_timing(&mut out) {
        Ok(ok) => assert!(ok, "gpu-check's timing stopped (see above)"),
        Err(e) => panic!("{e}"),
    }
}
