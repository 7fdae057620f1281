//! Random tensors in every format, shared by the integration tests.
#![allow(dead_code)]

use half::f16;
use huddle_kernels::block::{
    Block, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, block_bytes,
};
use huddle_kernels::quantize::{
    quantize_row_q4_0, quantize_row_q4_1, quantize_row_q4_k, quantize_row_q6_k, quantize_row_q8_0,
    quantize_row_q8_1, quantize_row_q8_k,
};
use huddle_kernels::{KernelError, WeightType};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn floats(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn small_f16(rng: &mut StdRng) -> f16 {
    f16::from_f32(rng.random_range(-0.05f32..0.05))
}

/// Blocks of random bytes (every bit pattern of the integer fields occurs)
/// with finite random scales, so kernels see values no quantizer produces.
pub fn random_blocks<B: Block>(
    rng: &mut StdRng,
    n: usize,
    fix: impl Fn(&mut StdRng, &mut B),
) -> Vec<B> {
    let mut out = vec![B::default(); n];
    for b in &mut out {
        // SAFETY: `Block` types accept every bit pattern.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut((b as *mut B).cast::<u8>(), size_of::<B>()) };
        rng.fill_bytes(bytes);
        fix(rng, b);
    }
    out
}

pub fn random_q4_0(rng: &mut StdRng, n: usize) -> Vec<BlockQ4_0> {
    random_blocks(rng, n, |r, b: &mut BlockQ4_0| b.d = small_f16(r))
}

pub fn random_q4_1(rng: &mut StdRng, n: usize) -> Vec<BlockQ4_1> {
    random_blocks(rng, n, |r, b: &mut BlockQ4_1| {
        b.d = small_f16(r);
        b.m = small_f16(r);
    })
}

pub fn random_q8_0(rng: &mut StdRng, n: usize) -> Vec<BlockQ8_0> {
    random_blocks(rng, n, |r, b: &mut BlockQ8_0| b.d = small_f16(r))
}

pub fn random_q4_k(rng: &mut StdRng, n: usize) -> Vec<BlockQ4K> {
    random_blocks(rng, n, |r, b: &mut BlockQ4K| {
        b.d = small_f16(r);
        b.dmin = small_f16(r);
    })
}

pub fn random_q6_k(rng: &mut StdRng, n: usize) -> Vec<BlockQ6K> {
    random_blocks(rng, n, |r, b: &mut BlockQ6K| b.d = small_f16(r))
}

pub fn q8_0_of(x: &[f32]) -> Vec<BlockQ8_0> {
    let mut y = vec![BlockQ8_0::default(); x.len() / 32];
    quantize_row_q8_0(x, &mut y).expect("whole blocks");
    y
}

pub fn q8_1_of(x: &[f32]) -> Vec<BlockQ8_1> {
    let mut y = vec![BlockQ8_1::default(); x.len() / 32];
    quantize_row_q8_1(x, &mut y).expect("whole blocks");
    y
}

pub fn q8_k_of(x: &[f32]) -> Vec<BlockQ8K> {
    let mut y = vec![BlockQ8K::default(); x.len() / 256];
    quantize_row_q8_k(x, &mut y).expect("whole blocks");
    y
}

/// A `[rows, cols]` weight matrix of `ty` quantized from random floats, as
/// the bytes a GGUF file would hold (in a u32 buffer for alignment).
pub fn weight_bytes(
    rng: &mut StdRng,
    ty: WeightType,
    rows: usize,
    cols: usize,
) -> Result<Vec<u32>, KernelError> {
    let x = floats(rng, rows * cols);
    fn q<B: Block>(
        x: &[f32],
        f: fn(&[f32], &mut [B]) -> Result<(), KernelError>,
    ) -> Result<Vec<u8>, KernelError> {
        let mut y = vec![B::default(); x.len() / B::ELEMENTS];
        f(x, &mut y)?;
        Ok(block_bytes(&y).to_vec())
    }
    let bytes = match ty {
        WeightType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        WeightType::F16 => x
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        WeightType::Q4_0 => q::<BlockQ4_0>(&x, quantize_row_q4_0)?,
        WeightType::Q4_1 => q::<BlockQ4_1>(&x, quantize_row_q4_1)?,
        WeightType::Q8_0 => q::<BlockQ8_0>(&x, quantize_row_q8_0)?,
        WeightType::Q4K => q::<BlockQ4K>(&x, quantize_row_q4_k)?,
        WeightType::Q6K => q::<BlockQ6K>(&x, quantize_row_q6_k)?,
    };
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    // SAFETY: words holds at least bytes.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    words.truncate(bytes.len().div_ceil(4));
    Ok(words)
}

/// The first `len` bytes of an aligned word buffer.
pub fn as_bytes(words: &[u32], len: usize) -> &[u8] {
    // SAFETY: u32 has no padding; len is within the buffer.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len.min(words.len() * 4)) }
}

pub fn assert_close(what: &str, got: f32, want: f32, magnitude: f32) {
    let tol = 1e-4 * (magnitude + want.abs()) + 1e-5;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (tolerance {tol})"
    );
}
