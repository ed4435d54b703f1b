//! CUDA backend (in progress).
pub mod kernels;
pub mod params;
pub use kernels::{compile_all_for_arch, KernelFile};

use crate::backend::{Backend, Precision};
use crate::plan::{Plan, SampleResult};
use crate::{Error, Result};

pub struct CudaBackend;

impl CudaBackend {
    pub fn new(_precision: Precision) -> Result<Self> {
        Err(Error::CudaUnavailable(
            "the CUDA backend is not built yet".into(),
        ))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        "cuda".into()
    }
    fn run(&mut self, _plan: &Plan, _images: &[f32], _n: usize) -> Result<Vec<SampleResult>> {
        Err(Error::CudaUnavailable(
            "the CUDA backend is not built yet".into(),
        ))
    }
}
