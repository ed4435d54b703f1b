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
    // Split-K through thread-block clusters: sm_90 and later only.
    let cluster = [
        "conv_tc64x64cl4_f16",
        "conv_tc64x64cl8_f16",
        "conv_tc128x32cl8_f16",
        "conv_tc128x128cl4_f16",
        "conv_dense_cl8_f16",
        "conv_dense_halo_cl8_f16",
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
                        for sym in cluster {
                            assert_eq!(has(&bin, sym), arch != "sm_80", "{arch}: {sym}");
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

/// Every convolution kernel (sm_90's PTX) asks its constants into L2 (when the host sets
/// `weight_lines`, DGATE_PREFETCH=1) after letting the next kernel launch and before
/// waiting for the previous one: `dgate_before_wait` between the two griddepcontrol
/// instructions. The other kernels have neither a prefetch nor anything between them.
#[test]
fn conv_kernels_prefetch_between_launching_dependents_and_waiting() {
    if !kernels::nvrtc_present() || kernels::include_dir().is_none() {
        println!("skipped: NVRTC or the CUDA headers not found; run scripts/nvrtc-setup.sh");
        return;
    }
    for file in [kernels::KernelFile::Conv, kernels::KernelFile::Gate] {
        let ptx = kernels::compile_ptx(file, "sm_90").unwrap_or_else(|e| panic!("{e}"));
        let mut entries = 0;
        for chunk in ptx.split(".entry ").skip(1) {
            let name = chunk.split('(').next().unwrap_or_default().trim();
            let at = |what: &str| chunk.find(what);
            let (launch, prefetch, wait) = (
                at("griddepcontrol.launch_dependents"),
                at("prefetch.global.L2"),
                at("griddepcontrol.wait"),
            );
            assert!(
                launch.is_some() && launch < wait,
                "{name}: {launch:?} {wait:?}"
            );
            if name.starts_with("conv_") {
                entries += 1;
                assert!(
                    launch < prefetch && prefetch < wait,
                    "{name}: {launch:?} {prefetch:?} {wait:?}"
                );
            } else {
                assert!(prefetch.is_none(), "{name} prefetches");
            }
        }
        if file == kernels::KernelFile::Conv {
            assert!(entries >= 10, "{entries} conv entries in the PTX");
        }
    }
}
