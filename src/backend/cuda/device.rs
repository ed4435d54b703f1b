//! The CUDA context, stream and loaded kernels of one backend instance, plus small
//! helpers for raw device memory. Everything here returns `crate::Error`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::kernels::{self, KernelFile};
use crate::backend::Precision;
use crate::{Error, Result};

pub(crate) fn cuda_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{what}: {e}"))
}

/// Probes for the driver library and NVRTC without calling into either: with
/// cudarc's dynamic loading a missing library would panic at the first call.
pub fn probe() -> Result<()> {
    // SAFETY: only tries to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable(
            "the CUDA driver library (libcuda.so) was not found".into(),
        ));
    }
    if !kernels::nvrtc_present() {
        return Err(Error::CudaUnavailable(
            "NVRTC (libnvrtc.so) was not found".into(),
        ));
    }
    let count = CudaContext::device_count()
        .map_err(|e| Error::CudaUnavailable(format!("cuInit/cuDeviceGetCount: {e}")))?;
    if count < 1 {
        return Err(Error::CudaUnavailable("no CUDA device".into()));
    }
    Ok(())
}

enum Storage {
    Cuda(CudaSlice<u8>),
    /// Host memory of the CPU emulator; `u128` for 16-byte alignment.
    Host(Vec<u128>),
}

/// Device memory with its address; freed on drop.
pub(crate) struct Mem {
    storage: Storage,
    pub ptr: u64,
    pub bytes: usize,
}

type EmuKernel = unsafe extern "C" fn(*const c_void);
type EmuLaunch =
    unsafe extern "C" fn(EmuKernel, u32, u32, u32, u32, u32, u32, *const c_void) -> i32;

/// Where kernels run: a CUDA device, or the CPU emulator built from the same sources
/// (`kernels/host_emu.cuh`), which has no streams, graphs or timers.
pub(crate) enum Engine {
    Cuda {
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        functions: HashMap<String, CudaFunction>,
    },
    Emu {
        launch: EmuLaunch,
        functions: HashMap<String, EmuKernel>,
    },
}

pub(crate) struct Device {
    pub engine: Engine,
    /// Streaming multiprocessors (sizes split-K); the emulator pretends an H100's.
    pub sms: usize,
    pub name: String,
    pub arch: String,
    pub precision: Precision,
    /// Launch with programmatic stream serialization (sm_90+, `DGATE_PDL=1`): each
    /// kernel may be scheduled while its predecessor finishes (see common.cuh).
    pub pdl: bool,
    /// Convolutions ask their weights into L2 before they wait for the previous kernel
    /// (`DGATE_PREFETCH=1`; `dgate_before_wait` in common.cuh).
    pub prefetch: bool,
}

/// `DGATE_CARVEOUT`: the share of each SM's L1/shared memory every kernel asks to have
/// as shared memory, in percent (`max` is 100), or `None` to leave it to the driver.
/// The driver picks a split per kernel from its shared memory; where consecutive
/// kernels want different splits, an SM has to drain before it takes the next one. One
/// split for every kernel removes those points, at the cost of L1 for the kernels that
/// use no shared memory. Off until a device run has measured it (`device-run.sh`'s
/// `policies` phase times both).
pub(crate) fn carveout_setting(value: Option<&str>) -> Result<Option<i32>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some("max") => Ok(Some(100)),
        Some(v) => match v.parse::<i32>() {
            Ok(p) if (0..=100).contains(&p) => Ok(Some(p)),
            _ => Err(Error::Config(format!(
                "DGATE_CARVEOUT={v}: expected a percentage from 0 to 100, or `max`"
            ))),
        },
    }
}

/// Whether `arch` (`sm_90`, `sm_90a`, `sm_100`, ...) has thread-block clusters (9.0 on).
pub(crate) fn arch_has_clusters(arch: &str) -> bool {
    let digits: String = arch
        .trim_start_matches("sm_")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<u32>().is_ok_and(|v| v >= 90)
}

/// Compiles (once per process) and loads every kernel file for `arch`. The wgmma
/// tiles exist only in an sm_90a build; a tile whose shared memory the device refuses
/// is left out (exec.rs falls back to the others). `carveout`: see [`carveout_setting`].
fn load_kernels(
    ctx: &Arc<CudaContext>,
    arch: &str,
    carveout: Option<i32>,
) -> Result<HashMap<String, CudaFunction>> {
    let mut functions = HashMap::new();
    // DGATE_TMA=0 leaves out the TMA tiles alone (conv_tma*), keeping the other wgmma ones.
    let tma_off = std::env::var("DGATE_TMA").as_deref() == Ok("0");
    // DGATE_CLUSTER=0 leaves out the cluster-split tiles (conv_tc*cl*).
    let cluster_off = std::env::var("DGATE_CLUSTER").as_deref() == Ok("0");
    for (file, cubin) in kernels::cubins_for_arch(arch)? {
        let module = ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| Error::Cuda(format!("loading {} ({arch}): {e}", file.file_name())))?;
        for &sym in symbols(file) {
            let info = super::convsel::conv_kernel_info(sym);
            if info.is_some_and(|k| k.wgmma) && arch != "sm_90a" {
                continue;
            }
            // Thread-block clusters exist from sm_90 on (conv.cu compiles them there only).
            if info.is_some_and(|k| k.cluster > 0) && (cluster_off || !arch_has_clusters(arch)) {
                continue;
            }
            if tma_off && sym.starts_with("conv_tma") {
                continue;
            }
            let f = module
                .load_function(sym)
                .map_err(|e| Error::Cuda(format!("{}: symbol {sym}: {e}", file.file_name())))?;
            if let Some(k) = info.filter(|k| k.smem > 0) {
                // More than 48 KiB of dynamic shared memory needs an opt-in.
                let attr = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
                if let Err(e) = f.set_attribute(attr, k.smem as i32) {
                    eprintln!(
                        "notice: {sym} left out: {} B of shared memory refused ({e})",
                        k.smem
                    );
                    continue;
                }
            }
            if let Some(pct) = carveout {
                let attr = cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
                f.set_attribute(attr, pct).map_err(|e| {
                    Error::Cuda(format!("{sym}: DGATE_CARVEOUT={pct} refused: {e}"))
                })?;
            }
            functions.insert(sym.to_string(), f);
        }
    }
    Ok(functions)
}

impl Device {
    pub fn new(precision: Precision) -> Result<Self> {
        probe()?;
        let ctx = CudaContext::new(0).map_err(|e| Error::CudaUnavailable(format!("{e}")))?;
        // Graph capture: no cudarc event bookkeeping on our allocations (one stream).
        // SAFETY: every allocation and launch of this backend goes to `stream`.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err("cuStreamCreate"))?;
        let name = ctx.name().map_err(cuda_err("cuDeviceGetName"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("compute capability"))?;
        // cp.async and the m16n8k16 f16 MMA need sm_80: conv.cu does not compile below.
        if major < 8 {
            return Err(Error::CudaUnavailable(format!(
                "{name} has compute capability {major}.{minor}; dgate-rt's CUDA kernels need 8.0 or newer (A100, H100, RTX 30xx and later)"
            )));
        }
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda_err("multiprocessor count"))?
            .max(1) as usize;
        // sm_90 builds for sm_90a, the Hopper-only target that has wgmma (conv_wg*),
        // unless DGATE_WGMMA=0; other targets are built without those kernels. Should
        // the driver refuse the sm_90a build, plain sm_90 runs (without them).
        let plain = format!("sm_{major}{minor}");
        let wgmma_off = std::env::var("DGATE_WGMMA").as_deref() == Ok("0");
        let carveout = carveout_setting(std::env::var("DGATE_CARVEOUT").ok().as_deref())?;
        let (arch, functions) = if (major, minor) == (9, 0) && !wgmma_off {
            match load_kernels(&ctx, "sm_90a", carveout) {
                Ok(f) => ("sm_90a".to_string(), f),
                Err(e) => {
                    eprintln!("notice: the sm_90a (wgmma) kernels did not load ({e}); using sm_90 kernels");
                    (plain.clone(), load_kernels(&ctx, &plain, carveout)?)
                }
            }
        } else {
            (plain.clone(), load_kernels(&ctx, &plain, carveout)?)
        };
        let pdl = major >= 9 && std::env::var("DGATE_PDL").as_deref() == Ok("1");
        let prefetch = std::env::var("DGATE_PREFETCH").as_deref() == Ok("1");
        Ok(Device {
            engine: Engine::Cuda {
                ctx,
                stream,
                functions,
            },
            sms,
            name,
            arch,
            precision,
            pdl,
            prefetch,
        })
    }

    /// The CPU emulator: `lib` is a shared object from [`kernels::build_emulator`].
    pub fn new_emulated(precision: Precision, lib: &std::path::Path) -> Result<Self> {
        let handle = emu_dlopen(lib)?;
        // SAFETY: the symbol is `dgate_emu_launch` of host_emu.cuh, of this signature.
        let launch: EmuLaunch =
            unsafe { std::mem::transmute(emu_dlsym(handle, "dgate_emu_launch")?) };
        let mut functions = HashMap::new();
        for file in KernelFile::ALL {
            for &sym in symbols(file) {
                // SAFETY: every kernel symbol of the emulator takes a pointer to its
                // parameter struct (DGATE_KERNEL in host_emu.cuh).
                let f: EmuKernel = unsafe { std::mem::transmute(emu_dlsym(handle, sym)?) };
                functions.insert(sym.to_string(), f);
            }
        }
        Ok(Device {
            engine: Engine::Emu { launch, functions },
            sms: 132,
            name: "CPU emulator".into(),
            arch: "host".into(),
            precision,
            pdl: false,
            prefetch: false,
        })
    }

    pub fn is_emulated(&self) -> bool {
        matches!(self.engine, Engine::Emu { .. })
    }

    /// The CUDA stream (`None` for the emulator).
    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        match &self.engine {
            Engine::Cuda { stream, .. } => Some(stream),
            Engine::Emu { .. } => None,
        }
    }

    pub fn context(&self) -> Option<&Arc<CudaContext>> {
        match &self.engine {
            Engine::Cuda { ctx, .. } => Some(ctx),
            Engine::Emu { .. } => None,
        }
    }

    pub fn dtype(&self) -> &'static str {
        match self.precision {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    pub fn elem_bytes(&self) -> usize {
        match self.precision {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }

    /// Checks that a kernel of this name is loaded.
    pub fn has_function(&self, name: &str) -> Result<()> {
        let found = match &self.engine {
            Engine::Cuda { functions, .. } => functions.contains_key(name),
            Engine::Emu { functions, .. } => functions.contains_key(name),
        };
        if found {
            Ok(())
        } else {
            Err(Error::Cuda(format!("no kernel named {name}")))
        }
    }

    pub fn launch<P: DeviceRepr>(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        params: &P,
    ) -> Result<()> {
        self.launch3(name, (grid.0, grid.1, 1), block, smem, params)
    }

    pub fn launch3<P: DeviceRepr>(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        params: &P,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(());
        }
        let missing = || Error::Cuda(format!("no kernel named {name}"));
        match &self.engine {
            Engine::Cuda {
                stream, functions, ..
            } => {
                let f = functions.get(name).ok_or_else(missing)?;
                if self.pdl {
                    return launch_pdl(stream, f, grid, block, smem, params)
                        .map_err(|e| Error::Cuda(format!("launching {name} (PDL): {e}")));
                }
                let cfg = LaunchConfig {
                    grid_dim: grid,
                    block_dim: (block, 1, 1),
                    shared_mem_bytes: smem,
                };
                let mut b = stream.launch_builder(f);
                b.arg(params);
                // SAFETY: `params` is the `#[repr(C)]` mirror of the kernel's only
                // parameter (sizes checked at compile time); every address in it is live
                // device memory sized for the launch's largest batch.
                unsafe { b.launch(cfg) }
                    .map_err(|e| Error::Cuda(format!("launching {name}: {e}")))?;
            }
            Engine::Emu { launch, functions } => {
                let f = functions.get(name).ok_or_else(missing)?;
                // A GPU takes a cluster kernel's cluster size from the kernel itself; the
                // emulator is told it, and the kernel checks it (host_emu.cuh).
                let cluster =
                    super::convsel::conv_kernel_info(name).map_or(1, |k| k.cluster.max(1) as u32);
                // SAFETY: as above, with host addresses; the emulator runs synchronously.
                let rc = unsafe {
                    launch(
                        *f,
                        grid.0,
                        grid.1,
                        grid.2,
                        cluster,
                        block,
                        smem,
                        params as *const P as *const c_void,
                    )
                };
                if rc != 0 {
                    return Err(Error::Cuda(format!(
                        "emulated launch of {name} failed ({rc})"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn alloc(&self, bytes: usize) -> Result<Mem> {
        let len = bytes.max(256).div_ceil(16) * 16;
        match &self.engine {
            Engine::Cuda { stream, .. } => {
                let slice = stream
                    .alloc_zeros::<u8>(len)
                    .map_err(|e| Error::Cuda(format!("allocating {len} bytes: {e}")))?;
                let ptr = {
                    let (ptr, _sync) = slice.device_ptr(stream);
                    ptr
                };
                Ok(Mem {
                    storage: Storage::Cuda(slice),
                    ptr,
                    bytes: len,
                })
            }
            Engine::Emu { .. } => {
                let v = vec![0u128; len / 16];
                let ptr = v.as_ptr() as u64;
                Ok(Mem {
                    storage: Storage::Host(v),
                    ptr,
                    bytes: len,
                })
            }
        }
    }

    pub fn upload_bytes(&self, mem: &mut Mem, data: &[u8]) -> Result<()> {
        if data.len() > mem.bytes {
            return Err(Error::Cuda(format!(
                "upload of {} bytes into {} bytes",
                data.len(),
                mem.bytes
            )));
        }
        match (&self.engine, &mut mem.storage) {
            (Engine::Cuda { stream, .. }, Storage::Cuda(slice)) => {
                let mut view = slice
                    .try_slice_mut(0..data.len())
                    .ok_or_else(|| Error::Cuda("upload out of range".into()))?;
                stream
                    .memcpy_htod(data, &mut view)
                    .map_err(cuda_err("cuMemcpyHtoD"))
            }
            (Engine::Emu { .. }, Storage::Host(v)) => {
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(v.as_mut_slice());
                bytes[..data.len()].copy_from_slice(data);
                Ok(())
            }
            _ => Err(Error::Cuda("memory of another engine".into())),
        }
    }

    pub fn download_bytes(&self, mem: &Mem, bytes: usize) -> Result<Vec<u8>> {
        if bytes > mem.bytes {
            return Err(Error::Cuda(format!(
                "download of {bytes} from {}",
                mem.bytes
            )));
        }
        match (&self.engine, &mem.storage) {
            (Engine::Cuda { stream, .. }, Storage::Cuda(slice)) => {
                let view = slice
                    .try_slice(0..bytes)
                    .ok_or_else(|| Error::Cuda("download out of range".into()))?;
                let mut out = vec![0u8; bytes];
                stream
                    .memcpy_dtoh(&view, &mut out)
                    .map_err(cuda_err("cuMemcpyDtoH"))?;
                self.sync()?;
                Ok(out)
            }
            (Engine::Emu { .. }, Storage::Host(v)) => {
                let all: &[u8] = bytemuck::cast_slice(v.as_slice());
                Ok(all[..bytes].to_vec())
            }
            _ => Err(Error::Cuda("memory of another engine".into())),
        }
    }

    /// Uploads f32 values stored as the plan's storage type (activations, conv weights).
    pub fn upload_storage(&self, values: &[f32]) -> Result<Mem> {
        let bytes = storage_bytes(self.precision, values);
        let mut mem = self.alloc(bytes.len())?;
        self.upload_bytes(&mut mem, &bytes)?;
        Ok(mem)
    }

    /// Uploads f32 values as f32 (biases, scales, gate weights).
    pub fn upload_f32(&self, values: &[f32]) -> Result<Mem> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let mut mem = self.alloc(bytes.len())?;
        self.upload_bytes(&mut mem, bytes)?;
        Ok(mem)
    }

    /// A TMA tensor map (a `CUtensorMap`, 128 bytes) over an f16 tensor at `addr`:
    /// `dims` innermost first (the first is the channels, contiguous), `pitches` the
    /// byte distance between neighbours along each later dimension; read as boxes of
    /// `boxes` elements (64 channels: 128-byte rows, which the copy stores with the
    /// 128-byte swizzle), zero past every edge (conv_tma in conv.cu). In the emulator,
    /// the same 128 bytes in `host_emu.cuh`'s layout (see emu_tma_load).
    pub fn tma_map_f16(
        &self,
        what: &str,
        addr: u64,
        dims: &[usize],
        pitches: &[usize],
        boxes: &[u32],
    ) -> Result<[u64; 16]> {
        let bad = |why: &str| {
            Error::Cuda(format!(
                "TMA map of {what} (dimensions {dims:?}, pitches {pitches:?} bytes, boxes {boxes:?}, at {addr:#x}): {why}"
            ))
        };
        if let Some(why) = tma_map_problem(addr, dims, pitches, boxes) {
            return Err(bad(why));
        }
        let rank = dims.len();
        match &self.engine {
            Engine::Emu { .. } => {
                let mut m = [0u64; 16];
                m[0] = addr;
                m[1] = rank as u64;
                for i in 0..rank {
                    m[2 + i] = dims[i] as u64;
                    m[9 + i] = boxes[i] as u64;
                }
                for (i, &p) in pitches.iter().enumerate() {
                    m[6 + i] = p as u64;
                }
                m[13] = 128; // swizzle span in bytes
                Ok(m)
            }
            Engine::Cuda { .. } => {
                use cudarc::driver::sys;
                let mut map = sys::CUtensorMap { opaque: [0; 16] };
                let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
                let strides: Vec<u64> = pitches.iter().map(|&p| p as u64).collect();
                let elem = vec![1u32; rank];
                // SAFETY: `dims`, `boxes` and `elem` hold `rank` entries and `strides`
                // rank - 1 (checked above), all live for the call; the driver only
                // writes `map`.
                let rc = unsafe {
                    sys::cuTensorMapEncodeTiled(
                        &mut map,
                        sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                        rank as u32,
                        addr as *mut c_void,
                        dims.as_ptr(),
                        strides.as_ptr(),
                        boxes.as_ptr(),
                        elem.as_ptr(),
                        sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                        sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
                        sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                        sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                    )
                };
                if rc != sys::CUresult::CUDA_SUCCESS {
                    return Err(bad(&format!("cuTensorMapEncodeTiled returned {rc:?}")));
                }
                Ok(map.opaque)
            }
        }
    }

    /// Keeps the stream busy for `ms` milliseconds (`hold_stream_i64`, one thread on the
    /// GPU's global timer), so that what the host launches next queues behind it and then
    /// runs back to back, whatever the host's launch rate: timings taken after it are the
    /// GPU's alone. Returns at once on a GPU; the emulator spins it out before returning.
    pub fn hold(&self, ms: f64) -> Result<()> {
        let hold = super::params::HoldParams {
            ns: (ms * 1e6) as i64,
        };
        self.launch("hold_stream_i64", (1, 1), 32, 0, &hold)
    }

    pub fn sync(&self) -> Result<()> {
        match &self.engine {
            Engine::Cuda { stream, .. } => stream.synchronize().map_err(cuda_err("synchronize")),
            Engine::Emu { .. } => Ok(()),
        }
    }
}

/// Why TMA cannot map an f16 tensor of `dims` (innermost first), `pitches` bytes apart
/// along the outer ones, from `addr`, in boxes of `boxes` with 128-byte rows
/// (`cuTensorMapEncodeTiled`'s rules, and the emulator's ranks), or `None`.
fn tma_map_problem(
    addr: u64,
    dims: &[usize],
    pitches: &[usize],
    boxes: &[u32],
) -> Option<&'static str> {
    let rank = dims.len();
    if !(2..=4).contains(&rank) || pitches.len() + 1 != rank || boxes.len() != rank {
        Some("2 to 4 dimensions, a pitch for each but the first, and a box extent for each")
    } else if !addr.is_multiple_of(16) || pitches.iter().any(|p| !p.is_multiple_of(16)) {
        Some("the address and the pitches must be multiples of 16 bytes")
    } else if pitches[0] < dims[0] * 2 {
        Some("the first pitch is shorter than a row of channels")
    } else if dims.contains(&0) {
        Some("nothing to map")
    } else if boxes[0] != 64 || boxes.iter().any(|&b| b == 0 || b > 256) {
        Some("a box is 64 channels (128-byte rows) by 1 to 256 along the others")
    } else if dims.iter().any(|&d| d > u32::MAX as usize) || pitches.iter().any(|&p| p >= 1 << 40) {
        Some("larger than a tensor map holds")
    } else {
        None
    }
}

/// `cuLaunchKernelEx` with programmatic stream serialization allowed (cudarc's launch
/// builder takes no launch attributes).
fn launch_pdl<P: DeviceRepr>(
    stream: &CudaStream,
    f: &CudaFunction,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    params: &P,
) -> std::result::Result<(), String> {
    use cudarc::driver::sys;
    stream
        .context()
        .bind_to_thread()
        .map_err(|e| e.to_string())?;
    // SAFETY: plain-old-data FFI structs; zero is a valid bit pattern for the union.
    let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let cfg = sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    // The kernel's only parameter is `P` by value: one pointer to it.
    let mut args = [params as *const P as *mut c_void];
    // SAFETY: `f` belongs to the stream's context (bound above); `params` is the
    // `#[repr(C)]` mirror of the kernel's parameter and outlives the call, which copies
    // it; every address inside it is live device memory (as for `launch3`).
    let r = unsafe {
        sys::cuLaunchKernelEx(
            &cfg,
            f.cu_function(),
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    };
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{r:?}"))
    }
}

pub(crate) fn storage_bytes(precision: Precision, values: &[f32]) -> Vec<u8> {
    match precision {
        Precision::F32 => bytemuck::cast_slice(values).to_vec(),
        Precision::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect(),
    }
}

pub(crate) fn storage_to_f32(precision: Precision, bytes: &[u8]) -> Vec<f32> {
    match precision {
        Precision::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Precision::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
    }
}

/// The `extern "C"` symbols of each file (`{op}_{variant}_{dtype}`).
pub fn symbols(file: KernelFile) -> &'static [&'static str] {
    match file {
        KernelFile::Conv => &[
            "conv_simt_f32",
            "conv_simt_f16",
            "conv_mma_f16",
            "conv_mmavec_f16",
            "conv_mmaasync_f16",
            "conv_tc128x128_f16",
            "conv_tc128x64_f16",
            "conv_tc64x64_f16",
            "conv_tc128x32_f16",
            "conv_tc64x32_f16",
            "conv_tcc128x128_f16",
            "conv_tcc128x64_f16",
            "conv_tc128x128pr_f16",
            "conv_tcc128x128pr_f16",
            "conv_tc64x64pr_f16",
            "conv_tc64x64cl4_f16",
            "conv_tc64x64cl8_f16",
            "conv_tc128x32cl8_f16",
            "conv_tc128x128cl4_f16",
            "conv_dense_cl8_f16",
            "conv_dense_halo_cl8_f16",
            "conv_wg128x256_f16",
            "conv_wg128x128_f16",
            "conv_wg128x64_f16",
            "conv_wg64x128_f16",
            "conv_wg64x64_f16",
            "conv_wg128x256k64_f16",
            "conv_wg128x128k64_f16",
            "conv_wg128x64k64_f16",
            "conv_halo128_f16",
            "conv_halo64_f16",
            "conv_tma128x256_f16",
            "conv_tma128x128_f16",
            "conv_tma128x64_f16",
            "conv_tma128x32_f16",
            "conv_sgemm128x128_f32",
            "conv_sgemm128x64_f32",
            "conv_sgemm64x64_f32",
            "conv_sgemm128x32_f32",
            "conv_sgemm64x32_f32",
            "conv_halo128_f32",
        ],
        KernelFile::Pool => &[
            "shortcut_a_f32",
            "shortcut_a_f16",
            "avgpool2_pre_f32",
            "avgpool2_pre_f16",
        ],
        KernelFile::Gate => &[
            "gate_fused_f32",
            "gate_fused_f16",
            "head_gap_f32",
            "head_gap_f16",
        ],
        KernelFile::Batch => &[
            "pack_input_f32",
            "pack_input_f16",
            "compact_scan_i32",
            "gate_closed_i32",
            "compact_gather_f32",
            "compact_gather_f16",
            "compact_copy_f32",
            "compact_copy_f16",
            "fill_noise_f32",
            "fill_noise_f16",
            "diff_max_f32",
            "diff_max_f16",
            "hold_stream_i64",
        ],
    }
}

extern "C" {
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}
const RTLD_NOW: c_int = 2;

fn dl_error(what: String) -> Error {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    let msg = unsafe {
        let e = dlerror();
        if e.is_null() {
            String::new()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    };
    Error::CudaUnavailable(format!("{what}: {msg}"))
}

fn emu_dlopen(lib: &std::path::Path) -> Result<*mut c_void> {
    let path = CString::new(lib.to_string_lossy().as_bytes())
        .map_err(|_| Error::Config("emulator path contains NUL".into()))?;
    // SAFETY: a plain dlopen of a library we built; it is never closed (kernels keep
    // function pointers into it for the life of the process).
    let h = unsafe { dlopen(path.as_ptr(), RTLD_NOW) };
    if h.is_null() {
        return Err(dl_error(format!("dlopen {}", lib.display())));
    }
    Ok(h)
}

fn emu_dlsym(handle: *mut c_void, name: &str) -> Result<*mut c_void> {
    let c = CString::new(name).map_err(|_| Error::Config("symbol contains NUL".into()))?;
    // SAFETY: `handle` is a live dlopen handle.
    let f = unsafe { dlsym(handle, c.as_ptr()) };
    if f.is_null() {
        return Err(dl_error(format!("dlsym {name}")));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::{arch_has_clusters, carveout_setting, tma_map_problem};

    #[test]
    fn thread_block_clusters_from_sm_90_on() {
        for a in ["sm_90", "sm_90a", "sm_100", "sm_120a"] {
            assert!(arch_has_clusters(a), "{a}");
        }
        for a in ["sm_80", "sm_86", "sm_89", "host", ""] {
            assert!(!arch_has_clusters(a), "{a}");
        }
    }

    #[test]
    fn tma_maps_need_aligned_rows_and_boxes_the_copy_engine_takes() {
        // conv_tma's maps: a 256-channel view of a 1024-channel buffer (as rows, and as
        // images of 8x8 in boxes of two), weights [1024][256].
        let ok = |a, d: &[usize], p: &[usize], b: &[u32]| tma_map_problem(a, d, p, b).is_none();
        assert!(ok(0x1200, &[256, 16384], &[2048], &[64, 128]));
        assert!(ok(
            0x1200,
            &[256, 8, 8, 256],
            &[2048, 16384, 131072],
            &[64, 8, 8, 2]
        ));
        assert!(ok(0x2000, &[256, 1024], &[512], &[64, 256]));
        let why =
            |a, d: &[usize], p: &[usize], b: &[u32]| tma_map_problem(a, d, p, b).unwrap_or("");
        assert!(why(0x1008, &[256, 64], &[2048], &[64, 128]).contains("multiples of 16"));
        assert!(why(0x1000, &[36, 64], &[72], &[64, 128]).contains("multiples of 16"));
        assert!(why(0x1000, &[256, 64], &[256], &[64, 128]).contains("shorter than a row"));
        assert!(why(0x1000, &[0, 64], &[256], &[64, 128]).contains("nothing"));
        assert!(why(0x1000, &[64, 64], &[128], &[64, 512]).contains("1 to 256"));
        assert!(why(0x1000, &[64, 64], &[128], &[32, 128]).contains("64 channels"));
        assert!(why(0x1000, &[64, 64], &[128, 128], &[64, 128]).contains("a pitch for each"));
        assert!(why(0x1000, &[64], &[], &[64]).contains("2 to 4"));
    }

    #[test]
    fn carveout_is_a_percentage_or_max_and_anything_else_is_named() {
        assert_eq!(carveout_setting(None).unwrap(), None);
        assert_eq!(carveout_setting(Some("")).unwrap(), None);
        assert_eq!(carveout_setting(Some("max")).unwrap(), Some(100));
        assert_eq!(carveout_setting(Some("0")).unwrap(), Some(0));
        assert_eq!(carveout_setting(Some(" 75 ")).unwrap(), Some(75));
        for bad in ["101", "-1", "half", "50%"] {
            let e = carveout_setting(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("DGATE_CARVEOUT") && e.contains(bad), "{e}");
        }
    }
}
