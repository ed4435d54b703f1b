//! Kernel sources (embedded), NVRTC compilation and the per-process cubin cache.
//!
//! Every kernel file is compiled as one NVRTC program with `common.cuh` spliced in
//! (NVRTC has no file system view of our sources), for one `sm_XX`, to a cubin that
//! the driver loads without JIT. One set of options for tests and runtime alike:
//! see [`compile_options`].

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use crate::{Error, Result};

const COMMON: &str = include_str!("../../../kernels/common.cuh");
const HOST_EMU: &str = include_str!("../../../kernels/host_emu.cuh");

/// One `.cu` file of `kernels/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelFile {
    Conv,
    Pool,
    Gate,
    Batch,
}

impl KernelFile {
    pub const ALL: [KernelFile; 4] = [
        KernelFile::Conv,
        KernelFile::Pool,
        KernelFile::Gate,
        KernelFile::Batch,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            KernelFile::Conv => "conv.cu",
            KernelFile::Pool => "pool.cu",
            KernelFile::Gate => "gate.cu",
            KernelFile::Batch => "batch.cu",
        }
    }

    fn raw_source(self) -> &'static str {
        match self {
            KernelFile::Conv => include_str!("../../../kernels/conv.cu"),
            KernelFile::Pool => include_str!("../../../kernels/pool.cu"),
            KernelFile::Gate => include_str!("../../../kernels/gate.cu"),
            KernelFile::Batch => include_str!("../../../kernels/batch.cu"),
        }
    }

    /// The source as NVRTC sees it: `common.cuh` in place of its `#include`, and a
    /// `#line` directive so that the log's line numbers are those of the `.cu` file.
    pub fn source(self) -> String {
        let mut out = String::with_capacity(COMMON.len() + self.raw_source().len() + 64);
        out.push_str("#line 1 \"common.cuh\"\n");
        out.push_str(COMMON);
        out.push_str(&format!("\n#line 1 \"{}\"\n", self.file_name()));
        for line in self.raw_source().lines() {
            if line.trim() == "#include \"common.cuh\"" {
                out.push_str("// common.cuh spliced above\n");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Where `cuda_fp16.h` and `mma.h` come from: `DGATE_CUDA_INCLUDE`, else
/// `/usr/local/cuda/include`, else the PyPI wheel installed by `scripts/nvrtc-setup.sh`.
pub fn include_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DGATE_CUDA_INCLUDE") {
        return Some(PathBuf::from(dir));
    }
    let wheel = "nvidia/cu13/include";
    let candidates = [
        PathBuf::from("/usr/local/cuda/include"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(".nvrtc/site")
            .join(wheel),
        PathBuf::from(".nvrtc/site").join(wheel),
    ];
    candidates
        .into_iter()
        .find(|d| d.join("cuda_fp16.h").is_file())
}

/// The NVRTC options every kernel is compiled with.
pub fn compile_options(arch: &str) -> Vec<String> {
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--device-as-default-execution-space".to_string(),
    ];
    if let Some(dir) = include_dir() {
        opts.push(format!("--include-path={}", dir.display()));
    }
    for (name, size) in super::params::sizes() {
        opts.push(format!("-D{name}={size}"));
    }
    opts
}

/// Whether the NVRTC library can be loaded. Must precede any other NVRTC call: with
/// cudarc's dynamic loading a missing library panics at the first call.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { nvrtc_sys::is_culib_present() }
}

fn c_chars_to_string(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles one kernel file for `arch` (e.g. `sm_90`) and returns the cubin.
/// A compile error carries NVRTC's log.
pub fn compile(file: KernelFile, arch: &str) -> Result<Vec<u8>> {
    compile_to(file, arch, get_cubin)
}

/// The PTX of one kernel file for the virtual architecture of `arch` (`sm_90` gives
/// `compute_90`): what the tests read to check the code a kernel was compiled to.
pub fn compile_ptx(file: KernelFile, arch: &str) -> Result<String> {
    let virt = arch.replacen("sm_", "compute_", 1);
    compile_to(file, &virt, get_ptx).map(|b| {
        String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
    })
}

fn compile_to(
    file: KernelFile,
    arch: &str,
    output: fn(nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String>,
) -> Result<Vec<u8>> {
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "NVRTC (libnvrtc.so) not found; see scripts/nvrtc-setup.sh".into(),
        ));
    }
    let kernel = format!("{} ({arch})", file.file_name());
    let src = CString::new(file.source()).map_err(|_| Error::Compile {
        kernel: kernel.clone(),
        log: "source contains a NUL byte".into(),
    })?;
    let name = CString::new(file.file_name()).unwrap_or_default();
    let prog = nvrtc::create_program(&src, Some(name.as_c_str())).map_err(|e| Error::Compile {
        kernel: kernel.clone(),
        log: format!("nvrtcCreateProgram: {e:?}"),
    })?;
    let mut options = compile_options(arch);
    // DGATE_PTXAS_VERBOSE=1 prints ptxas' registers, spills and shared memory per kernel.
    let verbose = std::env::var_os("DGATE_PTXAS_VERBOSE").is_some();
    if verbose {
        options.push("--ptxas-options=-v".to_string());
    }
    let started = std::time::Instant::now();
    // SAFETY: `prog` is live until the destroy below; options contain no NUL bytes.
    let compiled = unsafe { nvrtc::compile_program(prog, &options) };
    let result = match compiled {
        Err(e) => {
            // SAFETY: as above.
            let log = unsafe { nvrtc::get_program_log(prog) }
                .map(|l| c_chars_to_string(&l))
                .unwrap_or_default();
            Err(Error::Compile {
                kernel: kernel.clone(),
                log: format!("{e:?}\noptions: {}\n{log}", options.join(" ")),
            })
        }
        Ok(()) => {
            if verbose {
                // SAFETY: as above.
                if let Ok(log) = unsafe { nvrtc::get_program_log(prog) } {
                    eprintln!("dgate: ptxas for {kernel}:\n{}", c_chars_to_string(&log));
                }
            }
            output(prog).map_err(|e| Error::Compile {
                kernel: kernel.clone(),
                log: format!("reading the compiled program: {e}"),
            })
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    if std::env::var_os("DGATE_DEBUG").is_some() {
        eprintln!(
            "dgate: compiled {kernel} in {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    result
}

fn get_ptx(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    read_program(
        prog,
        nvrtc_sys::nvrtcGetPTXSize,
        nvrtc_sys::nvrtcGetPTX,
        "PTX",
    )
}

fn get_cubin(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    read_program(
        prog,
        nvrtc_sys::nvrtcGetCUBINSize,
        nvrtc_sys::nvrtcGetCUBIN,
        "CUBIN",
    )
}

type SizeFn = unsafe fn(nvrtc_sys::nvrtcProgram, *mut usize) -> nvrtc_sys::nvrtcResult;
type ReadFn = unsafe fn(nvrtc_sys::nvrtcProgram, *mut std::ffi::c_char) -> nvrtc_sys::nvrtcResult;

/// One output of a compiled program (`nvrtcGet{what}Size`, then `nvrtcGet{what}`).
fn read_program(
    prog: nvrtc_sys::nvrtcProgram,
    size_of: SizeFn,
    read: ReadFn,
    what: &str,
) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: `prog` was compiled successfully; the buffer has the size NVRTC reports.
    unsafe {
        let r = size_of(prog, &mut size);
        if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcGet{what}Size: {r:?}"));
        }
        let mut buf = vec![0u8; size];
        let r = read(prog, buf.as_mut_ptr() as *mut std::ffi::c_char);
        if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
            return Err(format!("nvrtcGet{what}: {r:?}"));
        }
        Ok(buf)
    }
}

/// Compiles every kernel file for `arch`: what the CI test and the runtime both call.
pub fn compile_all_for_arch(arch: &str) -> Result<Vec<(KernelFile, Vec<u8>)>> {
    KernelFile::ALL
        .iter()
        .map(|&f| compile(f, arch).map(|bin| (f, bin)))
        .collect()
}

type CubinCache = Mutex<HashMap<String, Vec<(KernelFile, Vec<u8>)>>>;

/// Compiled once per process per architecture, shared by every backend instance.
pub fn cubins_for_arch(arch: &str) -> Result<Vec<(KernelFile, Vec<u8>)>> {
    static CACHE: OnceLock<CubinCache> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache
        .lock()
        .map_err(|_| Error::Cuda("kernel cache lock poisoned".into()))?;
    if let Some(v) = map.get(arch) {
        return Ok(v.clone());
    }
    let v = compile_all_for_arch(arch)?;
    map.insert(arch.to_string(), v.clone());
    Ok(v)
}

/// NVRTC's version, e.g. `(13, 0)`.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(Error::CudaUnavailable("NVRTC not found".into()));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; out-pointers are valid.
    let r = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    if r != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Cuda(format!("nvrtcVersion: {r:?}")));
    }
    Ok((major, minor))
}

/// Builds the CPU emulator of every kernel (`kernels/host_emu.cuh`) into
/// `dir/libdgate_emu.so` with the host C++ compiler (`$CXX`, else `c++`), from the
/// same embedded sources NVRTC compiles, and returns its path. For tests without a GPU.
pub fn build_emulator(dir: &std::path::Path) -> Result<PathBuf> {
    let io = |e| Error::io(dir, e);
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("common.cuh"), COMMON).map_err(io)?;
    std::fs::write(dir.join("host_emu.cuh"), HOST_EMU).map_err(io)?;
    let mut all = String::from("#define DGATE_EMU_DEFINE_LAUNCH\n");
    for f in KernelFile::ALL {
        std::fs::write(dir.join(f.file_name()), f.raw_source()).map_err(io)?;
        all.push_str(&format!("#include \"{}\"\n", f.file_name()));
    }
    let unit = dir.join("emu_all.cpp");
    std::fs::write(&unit, all).map_err(io)?;
    let out = dir.join("libdgate_emu.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut cmd = std::process::Command::new(&cxx);
    cmd.args([
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-fno-strict-aliasing",
        "-DDGATE_HOST_EMU",
    ])
    .arg(format!("-I{}", dir.display()));
    for (name, size) in super::params::sizes() {
        cmd.arg(format!("-D{name}={size}"));
    }
    cmd.arg("-o").arg(&out).arg(&unit);
    let output = cmd
        .output()
        .map_err(|e| Error::CudaUnavailable(format!("cannot run {cxx}: {e}")))?;
    if !output.status.success() {
        return Err(Error::Compile {
            kernel: "host emulator".into(),
            log: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(out)
}
