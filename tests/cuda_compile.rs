//! Compiles every kernel file with NVRTC for sm_80, sm_90 and sm_90a (what an H100 or
//! H200 gets: the wgmma kernels are built for it alone). Needs NVRTC but no GPU (CI
//! installs it with `scripts/nvrtc-setup.sh`); prints `skipped: …` without it.

use dgate_rt::backend::cuda::{compile_all_for_arch, kernels};

#[test]
fn every_kernel_compiles_for_sm80_and_sm90() {
    if !kernels::nvrtc_present() {
        println!("skipped: NVRTC (libnvrtc.so) not found; run scripts/nvrtc-setup.sh and set LD_LIBRARY_PATH");
        return;
    }
    if kernels::include_dir().is_none() {
        println!("skipped: no CUDA headers (set DGATE_CUDA_INCLUDE or run scripts/nvrtc-setup.sh)");
        return;
    }
    let wgmma = [
        "conv_wg128x256_f16",
        "conv_wg128x128_f16",
        "conv_wg128x64_f16",
        "conv_wg64x128_f16",
        "conv_wg64x64_f16",
        "conv_wg128x256k64_f16",
        "conv_wg128x128k64_f16",
        "conv_wg128x64k64_f16",
    ];
    let has = |bin: &[u8], sym: &str| bin.windows(sym.len()).any(|w| w == sym.as_bytes());
    for arch in ["sm_80", "sm_90", "sm_90a"] {
        match compile_all_for_arch(arch) {
            Ok(bins) => {
                for (file, bin) in bins {
                    println!("{arch} {}: {} bytes of cubin", file.file_name(), bin.len());
                    assert!(!bin.is_empty());
                    if file == kernels::KernelFile::Conv {
                        assert!(
                            has(&bin, "conv_tc128x128_f16"),
                            "{arch}: no conv_tc128x128_f16"
                        );
                        // The wgmma tiles exist for sm_90a alone (device.rs skips them elsewhere).
                        for sym in wgmma {
                            assert_eq!(has(&bin, sym), arch == "sm_90a", "{arch}: {sym}");
                        }
                    }
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_compile_error_carries_the_nvrtc_log() {
    // The log path is exercised through the public error type: an unknown arch fails.
    if !kernels::nvrtc_present() {
        println!("skipped: NVRTC not found");
        return;
    }
    match kernels::compile(kernels::KernelFile::Pool, "sm_1") {
        Err(dgate_rt::Error::Compile { kernel, log }) => {
            assert!(kernel.contains("pool.cu"));
            assert!(!log.is_empty());
        }
        other => panic!("expected a compile error, got {:?}", other.map(|b| b.len())),
    }
}
