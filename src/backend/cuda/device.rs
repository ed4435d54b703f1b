//! The CUDA context, stream and loaded kernels of one backend instance, plus small
//! helpers for raw device memory. Everything here returns `crate::Error`.

use std::collections::HashMap;
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

/// Device memory with its address; freed on drop.
pub(crate) struct Mem {
    _slice: CudaSlice<u8>,
    pub ptr: u64,
    pub bytes: usize,
}

pub(crate) struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub name: String,
    pub arch: String,
    pub precision: Precision,
    functions: HashMap<String, CudaFunction>,
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
        let arch = format!("sm_{major}{minor}");
        let mut functions = HashMap::new();
        for (file, cubin) in kernels::cubins_for_arch(&arch)? {
            let module = ctx
                .load_module(Ptx::from_binary(cubin))
                .map_err(|e| Error::Cuda(format!("loading {}: {e}", file.file_name())))?;
            for &sym in symbols(file) {
                let f = module
                    .load_function(sym)
                    .map_err(|e| Error::Cuda(format!("{}: symbol {sym}: {e}", file.file_name())))?;
                functions.insert(sym.to_string(), f);
            }
        }
        Ok(Device {
            ctx,
            stream,
            name,
            arch,
            precision,
            functions,
        })
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

    pub fn function(&self, name: &str) -> Result<&CudaFunction> {
        self.functions
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("no kernel named {name}")))
    }

    pub fn launch<P: DeviceRepr>(
        &self,
        name: &str,
        grid: (u32, u32),
        block: u32,
        smem: u32,
        params: &P,
    ) -> Result<()> {
        if grid.0 == 0 || grid.1 == 0 {
            return Ok(());
        }
        let f = self.function(name)?;
        let cfg = LaunchConfig {
            grid_dim: (grid.0, grid.1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = self.stream.launch_builder(f);
        b.arg(params);
        // SAFETY: `params` is the `#[repr(C)]` mirror of the kernel's only parameter
        // (sizes checked at compile time); every address in it is live device memory
        // sized for the launch's largest batch.
        unsafe { b.launch(cfg) }.map_err(|e| Error::Cuda(format!("launching {name}: {e}")))?;
        Ok(())
    }

    pub fn alloc(&self, bytes: usize) -> Result<Mem> {
        let len = bytes.max(256);
        let slice = self
            .stream
            .alloc_zeros::<u8>(len)
            .map_err(|e| Error::Cuda(format!("allocating {len} bytes: {e}")))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Ok(Mem {
            _slice: slice,
            ptr,
            bytes: len,
        })
    }

    pub fn upload_bytes(&self, mem: &mut Mem, data: &[u8]) -> Result<()> {
        if data.len() > mem.bytes {
            return Err(Error::Cuda(format!(
                "upload of {} bytes into {} bytes",
                data.len(),
                mem.bytes
            )));
        }
        self.stream
            .memcpy_htod(data, &mut mem._slice)
            .map_err(cuda_err("cuMemcpyHtoD"))
    }

    pub fn download_bytes(&self, mem: &Mem, bytes: usize) -> Result<Vec<u8>> {
        let view = mem
            ._slice
            .try_slice(0..bytes)
            .ok_or_else(|| Error::Cuda(format!("download of {bytes} from {}", mem.bytes)))?;
        let mut out = vec![0u8; bytes];
        self.stream
            .memcpy_dtoh(&view, &mut out)
            .map_err(cuda_err("cuMemcpyDtoH"))?;
        self.sync()?;
        Ok(out)
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

    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))
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
        KernelFile::Conv => &["conv_simt_f32", "conv_simt_f16", "conv_mma_f16"],
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
            "compact_gather_f32",
            "compact_gather_f16",
            "compact_copy_f32",
            "compact_copy_f16",
        ],
    }
}
