//! The library's one error type. Every fallible entry point returns `Result<T>`;
//! nothing in the library panics on bad input or a missing GPU.

use std::path::PathBuf;

/// Everything that can go wrong in the library. `Display` gives a one-line message that
/// names the file, tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a safetensors image.
    #[error("{file}: not a valid safetensors file: {msg}")]
    Safetensors {
        /// The file (or the name given for bytes in memory).
        file: String,
        /// What the parser said.
        msg: String,
    },
    /// A tensor is missing or has the wrong shape, dtype or values.
    #[error("{file}: tensor `{tensor}`: {msg}")]
    Tensor {
        /// The file.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The tensors or metadata match no supported architecture.
    #[error("{file}: unrecognised architecture: {msg}")]
    Architecture {
        /// The file.
        file: String,
        /// What was expected.
        msg: String,
    },
    /// An input data file is malformed.
    #[error("{path}: {msg}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A setting is invalid (thresholds, backend/precision combination, ranges).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A batch has the wrong size.
    #[error("invalid input: {0}")]
    Input(String),
    /// The CUDA backend cannot start: no driver, NVRTC or GPU.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    /// A CUDA call failed at run time.
    #[error("CUDA error: {0}")]
    Cuda(String),
    /// A kernel did not compile; carries the compiler's log.
    #[error("NVRTC failed to compile {kernel}: {log}")]
    Compile {
        /// The kernel source's name.
        kernel: String,
        /// NVRTC's log.
        log: String,
    },
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
