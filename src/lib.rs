//! dgate-rt: early-exit inference for CIFAR-style CNNs with decision gates.
//!
//! Weights come from a PyTorch `state_dict` saved with safetensors ([`weights`]); the
//! architecture is inferred from tensor names and shapes ([`model`]) and lowered to a
//! [`plan::Plan`] of a few fused ops, which a [`backend`] executes: the CPU backend is the
//! numerical reference, the CUDA backend runs NVRTC-compiled kernels with on-device
//! compaction of the batch at each gate.

pub mod backend;
pub mod bench;
pub mod data;
pub mod engine;
pub mod error;
pub mod features;
pub mod gates;
pub mod gpucheck;
pub mod model;
pub mod plan;
pub mod weights;
pub mod zoo;

pub use error::{Error, Result};
