//! dgate-rt: early-exit inference for CIFAR-style CNNs with decision gates.
//!
//! Weights come from a PyTorch `state_dict` saved with safetensors ([`weights`]); the
//! architecture is inferred from tensor names and shapes ([`model`]) and lowered to a
//! [`plan::Plan`] of a few fused ops, which a [`backend`] executes: the CPU backend is the
//! numerical reference, the CUDA backend runs NVRTC-compiled kernels with on-device
//! compaction of the batch at each gate.
//!
//! # Embedding in a program
//!
//! 1. Load a [`model::Model`]: [`Model::load`](model::Model::load) from a path,
//!    [`Model::from_bytes`](model::Model::from_bytes) from memory, or a seeded random
//!    network from [`zoo::random`] for trying things out.
//! 2. Put it on a backend with [`engine::Engine::new`]: [`engine::BackendChoice`] `Auto`
//!    (CUDA if present, else the CPU), `Cpu` or `Cuda`; [`backend::Precision`] `F32` or
//!    `F16` (CUDA only).
//! 3. Optionally set one threshold per gate with
//!    [`Engine::set_thresholds`](engine::Engine::set_thresholds).
//! 4. Run batches: [`Engine::run_u8`](engine::Engine::run_u8) on raw CIFAR-style bytes
//!    (`n × 3 × 32 × 32`, R, G, B planes), or [`Engine::run`](engine::Engine::run) on
//!    normalised f32 NCHW images. You get one [`plan::SampleResult`] per image, in input
//!    order: the class, the gate it left at (`None`: it ran to the head), the confidence
//!    it was decided on, and the scores (logits).
//! 5. [`Model::describe`](model::Model::describe) tells what the model is: architecture,
//!    stages with output shapes and GFLOPs, gates.
//!
//! An engine keeps its buffers (and, on CUDA, compiled kernels) between calls: create it
//! once. It is `Send` but not `Sync`: one engine per thread, or wrap it in a `Mutex`.
//! Errors are one [`Error`] type; nothing panics on bad input or a missing GPU.
//!
//! ```
//! use dgate_rt::backend::Precision;
//! use dgate_rt::engine::{BackendChoice, Engine};
//! use dgate_rt::model::Model;
//!
//! // A seeded, untrained ResNet-20 with gates after stages 1 and 2; no files needed.
//! let mut weights = dgate_rt::zoo::random("resnet20", 0)?;
//! dgate_rt::zoo::add_random_gates(&mut weights, &[1, 2], 0)?;
//! let model = Model::from_weights(&weights)?;
//! println!("{} GFLOPs", model.describe().total_gflops);
//!
//! let mut engine = Engine::new(model, BackendChoice::Cpu, Precision::F32)?;
//! engine.set_thresholds(&[2.0, f32::INFINITY])?; // gate 0 exits at score ≥ 2, gate 1 never
//! let pixels = vec![100u8; 4 * dgate_rt::data::IMAGE]; // four CIFAR-style images
//! for (i, r) in engine.run_u8(&pixels, 4)?.iter().enumerate() {
//!     println!("image {i}: class {} exit {:?} score {}", r.class, r.exit, r.score);
//! }
//! # Ok::<(), dgate_rt::Error>(())
//! ```
//!
//! From C, the same through `include/dgate.h` and `libdgate_rt.so`: see [`capi`].

pub mod backend;
pub mod bench;
pub mod capi;
pub mod data;
pub mod describe;
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
