//! Dot products between a row of weights and a row of activations, one
//! per (weight format, activation format) pair, with the instruction set
//! chosen once at run time.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_rows;
pub mod scalar;

use std::sync::OnceLock;

use half::f16;

use crate::block::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K};

/// An instruction set the kernels have a path for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust; runs everywhere.
    Scalar,
    /// x86_64 AVX2 with FMA and F16C (Haswell, Zen and later).
    Avx2,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => false,
        }
    }

    /// Every path this CPU can run, best last.
    pub fn supported() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2]
            .into_iter()
            .filter(|i| i.is_supported())
            .collect()
    }

    /// The best path this CPU can run, unless `HUDDLE_KERNEL_ISA` names a
    /// slower supported one (for debugging and benchmarks).
    pub fn detect() -> Isa {
        let supported = Isa::supported();
        let forced = std::env::var("HUDDLE_KERNEL_ISA").ok();
        forced
            .and_then(|name| supported.iter().copied().find(|i| i.name() == name))
            .or_else(|| supported.last().copied())
            .unwrap_or(Isa::Scalar)
    }
}

/// The dot-product functions of one instruction set.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    pub isa: Isa,
    pub q4_0_q8_0: fn(&[BlockQ4_0], &[BlockQ8_0]) -> f32,
    pub q4_1_q8_1: fn(&[BlockQ4_1], &[BlockQ8_1]) -> f32,
    pub q8_0_q8_0: fn(&[BlockQ8_0], &[BlockQ8_0]) -> f32,
    pub q4_k_q8_k: fn(&[BlockQ4K], &[BlockQ8K]) -> f32,
    pub q6_k_q8_k: fn(&[BlockQ6K], &[BlockQ8K]) -> f32,
    pub f32_f32: fn(&[f32], &[f32]) -> f32,
    pub f16_f32: fn(&[f16], &[f32]) -> f32,
    /// One weight row against four activation rows (prompts): each result
    /// is bit-identical to the one-row function's on that row, so a row's
    /// product never depends on the rows that came with it.
    pub q4_0_q8_0_x4: Dot4<BlockQ4_0, BlockQ8_0>,
    pub q4_1_q8_1_x4: Dot4<BlockQ4_1, BlockQ8_1>,
    pub q8_0_q8_0_x4: Dot4<BlockQ8_0, BlockQ8_0>,
    pub q4_k_q8_k_x4: Dot4<BlockQ4K, BlockQ8K>,
    pub q6_k_q8_k_x4: Dot4<BlockQ6K, BlockQ8K>,
    pub f32_f32_x4: Dot4<f32, f32>,
    pub f16_f32_x4: Dot4<f16, f32>,
}

/// A dot product of one weight row with four activation rows.
pub type Dot4<W, A> = fn(&[W], [&[A]; 4]) -> [f32; 4];

const SCALAR: Kernels = Kernels {
    isa: Isa::Scalar,
    q4_0_q8_0: scalar::vec_dot_q4_0_q8_0,
    q4_1_q8_1: scalar::vec_dot_q4_1_q8_1,
    q8_0_q8_0: scalar::vec_dot_q8_0_q8_0,
    q4_k_q8_k: scalar::vec_dot_q4_k_q8_k,
    q6_k_q8_k: scalar::vec_dot_q6_k_q8_k,
    f32_f32: scalar::vec_dot_f32,
    f16_f32: scalar::vec_dot_f16_f32,
    q4_0_q8_0_x4: |x, ys| ys.map(|y| scalar::vec_dot_q4_0_q8_0(x, y)),
    q4_1_q8_1_x4: |x, ys| ys.map(|y| scalar::vec_dot_q4_1_q8_1(x, y)),
    q8_0_q8_0_x4: |x, ys| ys.map(|y| scalar::vec_dot_q8_0_q8_0(x, y)),
    q4_k_q8_k_x4: |x, ys| ys.map(|y| scalar::vec_dot_q4_k_q8_k(x, y)),
    q6_k_q8_k_x4: |x, ys| ys.map(|y| scalar::vec_dot_q6_k_q8_k(x, y)),
    f32_f32_x4: |x, ys| ys.map(|y| scalar::vec_dot_f32(x, y)),
    f16_f32_x4: |x, ys| ys.map(|y| scalar::vec_dot_f16_f32(x, y)),
};

// SAFETY (every closure below): `Kernels::for_isa` hands this table out
// only after `Isa::Avx2.is_supported()` confirmed the CPU features.
#[cfg(target_arch = "x86_64")]
const AVX2: Kernels = Kernels {
    isa: Isa::Avx2,
    q4_0_q8_0: |x, y| unsafe { avx2_rows::dot_q4_0_q8_0(x, [y])[0] },
    q4_1_q8_1: |x, y| unsafe { avx2_rows::dot_q4_1_q8_1(x, [y])[0] },
    q8_0_q8_0: |x, y| unsafe { avx2_rows::dot_q8_0_q8_0(x, [y])[0] },
    q4_k_q8_k: |x, y| unsafe { avx2_rows::dot_q4_k_q8_k(x, [y])[0] },
    q6_k_q8_k: |x, y| unsafe { avx2_rows::dot_q6_k_q8_k(x, [y])[0] },
    f32_f32: |x, y| unsafe { avx2::vec_dot_f32(x, y) },
    f16_f32: |x, y| unsafe { avx2::vec_dot_f16_f32(x, y) },
    q4_0_q8_0_x4: |x, ys| unsafe { avx2_rows::dot_q4_0_q8_0(x, ys) },
    q4_1_q8_1_x4: |x, ys| unsafe { avx2_rows::dot_q4_1_q8_1(x, ys) },
    q8_0_q8_0_x4: |x, ys| unsafe { avx2_rows::dot_q8_0_q8_0(x, ys) },
    q4_k_q8_k_x4: |x, ys| unsafe { avx2_rows::dot_q4_k_q8_k(x, ys) },
    q6_k_q8_k_x4: |x, ys| unsafe { avx2_rows::dot_q6_k_q8_k(x, ys) },
    // Float rows stream straight from L1 either way: four one-row calls.
    f32_f32_x4: |x, ys| ys.map(|y| unsafe { avx2::vec_dot_f32(x, y) }),
    f16_f32_x4: |x, ys| ys.map(|y| unsafe { avx2::vec_dot_f16_f32(x, y) }),
};

impl Kernels {
    /// The table for `isa`, or `None` when this CPU cannot run it.
    pub fn for_isa(isa: Isa) -> Option<Kernels> {
        if !isa.is_supported() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Some(AVX2),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 => None,
        }
    }

    /// The table for [`Isa::detect`], chosen once per process.
    pub fn best() -> &'static Kernels {
        static BEST: OnceLock<Kernels> = OnceLock::new();
        BEST.get_or_init(|| Kernels::for_isa(Isa::detect()).unwrap_or(SCALAR))
    }
}
