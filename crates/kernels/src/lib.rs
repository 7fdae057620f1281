//! CPU kernels for quantized LLM inference.
//!
//! Weights stay in GGML's block formats (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, plus
//! f32/f16), so GGUF tensor bytes are used in place. Activations are
//! quantized once per layer input ([`Activations`]) and multiplied against
//! weight rows by dot-product kernels picked at run time for the CPU
//! ([`dot::Isa`]: AVX2+FMA+F16C or portable Rust), split over a small
//! thread pool ([`ThreadPool`]) that never spins for long.
//!
//! Environment: `HUDDLE_KERNEL_THREADS` overrides the pool size (see
//! [`default_threads`]); `HUDDLE_KERNEL_ISA=scalar|avx2` forces a slower
//! path for debugging and benchmarks.
//!
//! This crate must never allocate inside a matmul call (the caller owns all
//! scratch), never depend on a tensor library, and never spin a core beyond
//! a short, bounded wait.

pub mod activations;
pub mod block;
pub mod dequantize;
pub mod dot;
pub mod error;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod quantize;

pub use activations::{ActivationType, Activations};
pub use dot::{Isa, Kernels};
pub use error::KernelError;
pub use matmul::{WeightType, Weights, matmul, matmul_with};
pub use pool::{DisjointOut, ThreadPool, default_threads};
