//! The library's one error type. Every fallible entry point returns `Result<T>`;
//! nothing in the library panics on bad input or a missing GPU.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a valid safetensors file: {msg}")]
    Safetensors { file: String, msg: String },
    #[error("{file}: tensor `{tensor}`: {msg}")]
    Tensor {
        file: String,
        tensor: String,
        msg: String,
    },
    #[error("{file}: unrecognised architecture: {msg}")]
    Architecture { file: String, msg: String },
    #[error("{path}: {msg}")]
    Data { path: String, msg: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Compile { kernel: String, log: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
