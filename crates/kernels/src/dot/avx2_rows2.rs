//! AVX2 dot products of one weight row with two activation rows at once,
//! for prompts (m > 1): each weight block is loaded, unpacked and its scale
//! converted once for both rows.
//!
//! Every function here must only be called after checking the CPU has
//! `avx2`, `fma` and `f16c` (see [`super::Isa::detect`]).

use std::arch::x86_64::*;

use super::avx2::{fp16_lane0, hsum_f32x8, load32, mul_sum_us8_pairs, nibbles_32};
use crate::block::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot2_q4_0_q8_0(
    x: &[BlockQ4_0],
    y0: &[BlockQ8_0],
    y1: &[BlockQ8_0],
) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let eights = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    for ((x, a), b) in x.iter().zip(y0).zip(y1) {
        let dx = fp16_lane0(x.d);
        // SAFETY: qs arrays are 16 and 32 bytes long.
        let (qx, qa, qb) = unsafe {
            (
                nibbles_32(x.qs.as_ptr()),
                load32(a.qs.as_ptr()),
                load32(b.qs.as_ptr()),
            )
        };
        // (q - 8) * y as q * y - 8 * y, as in the one-row kernel.
        let pa = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qa),
            _mm256_maddubs_epi16(eights, qa),
        );
        let pb = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qb),
            _mm256_maddubs_epi16(eights, qb),
        );
        let da = _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(a.d)));
        let db = _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(b.d)));
        acc0 = _mm256_fmadd_ps(da, _mm256_cvtepi32_ps(_mm256_madd_epi16(pa, ones)), acc0);
        acc1 = _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(_mm256_madd_epi16(pb, ones)), acc1);
    }
    (hsum_f32x8(acc0), hsum_f32x8(acc1))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot2_q4_1_q8_1(
    x: &[BlockQ4_1],
    y0: &[BlockQ8_1],
    y1: &[BlockQ8_1],
) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (_mm_setzero_ps(), _mm_setzero_ps());
    for ((x, a), b) in x.iter().zip(y0).zip(y1) {
        // [d, m] of the weights times [d, s] of each row: lane 0 scales the
        // integer dot product, lane 1 is the offset term.
        // SAFETY: each block starts with two f16 fields (4 bytes); qs arrays
        // are 16 and 32 bytes long.
        let (sx, sa, sb, qx, qa, qb) = unsafe {
            (
                _mm_cvtph_ps(_mm_loadu_si32((&raw const x.d).cast())),
                _mm_cvtph_ps(_mm_loadu_si32((&raw const a.d).cast())),
                _mm_cvtph_ps(_mm_loadu_si32((&raw const b.d).cast())),
                nibbles_32(x.qs.as_ptr()),
                load32(a.qs.as_ptr()),
                load32(b.qs.as_ptr()),
            )
        };
        let (ka, kb) = (_mm_mul_ps(sx, sa), _mm_mul_ps(sx, sb));
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(ka), mul_sum_us8_pairs(qx, qa), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(kb), mul_sum_us8_pairs(qx, qb), acc1);
        m0 = _mm_add_ps(m0, ka);
        m1 = _mm_add_ps(m1, kb);
    }
    (
        hsum_f32x8(acc0) + _mm_cvtss_f32(_mm_movehdup_ps(m0)),
        hsum_f32x8(acc1) + _mm_cvtss_f32(_mm_movehdup_ps(m1)),
    )
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot2_q8_0_q8_0(
    x: &[BlockQ8_0],
    y0: &[BlockQ8_0],
    y1: &[BlockQ8_0],
) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for ((x, a), b) in x.iter().zip(y0).zip(y1) {
        let dx = fp16_lane0(x.d);
        // SAFETY: qs arrays are 32 bytes long.
        let (qx, qa, qb) = unsafe {
            (
                load32(x.qs.as_ptr()),
                load32(a.qs.as_ptr()),
                load32(b.qs.as_ptr()),
            )
        };
        // |x| once for both rows; x's sign moves onto each row's bytes.
        let ax = _mm256_sign_epi8(qx, qx);
        let pa = mul_sum_us8_pairs(ax, _mm256_sign_epi8(qa, qx));
        let pb = mul_sum_us8_pairs(ax, _mm256_sign_epi8(qb, qx));
        acc0 = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(a.d))),
            pa,
            acc0,
        );
        acc1 = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(b.d))),
            pb,
            acc1,
        );
    }
    (hsum_f32x8(acc0), hsum_f32x8(acc1))
}
