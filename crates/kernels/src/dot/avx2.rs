//! AVX2 + FMA + F16C building blocks after ggml's x86 kernels (4-bit
//! weights widened to bytes, multiplied with `maddubs`: unsigned x signed
//! bytes into i16 pairs, widened to i32 with `madd`, scaled in f32), and
//! the float dot products. The quantized ones are in `avx2_rows`.
//!
//! Every function here must only be called after checking the CPU has
//! `avx2`, `fma` and `f16c` (see [`super::Isa::detect`]).

use std::arch::x86_64::*;

use half::f16;

/// An f16 as f32 in lane 0 of a fresh register.
///
/// Written as assembly on purpose: from intrinsics, the compiler sees that
/// only lane 0 matters and inserts the 2 bytes into whatever register is
/// handy, often an accumulator, which chains every block to the one before
/// and halved the speed of the Q8_0 and Q4_0 kernels.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fp16_lane0(h: f16) -> __m128 {
    let out: __m128;
    // SAFETY: register-only instructions; F16C is enabled for this function.
    unsafe {
        std::arch::asm!(
            "vmovd {t}, {g:e}",
            "vcvtph2ps {t}, {t}",
            g = in(reg) u32::from(h.to_bits()),
            t = out(xmm_reg) out,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp16(h: f16) -> f32 {
    _mm_cvtss_f32(fp16_lane0(h))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_f32x8(x: __m256) -> f32 {
    let r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    let r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    let r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// 16 bytes of nibbles into 32 bytes in 0..16: low nibbles first, then high
/// nibbles, matching the element order of Q4_0/Q4_1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: the caller passes a pointer to 16 readable bytes.
    let tmp = unsafe { _mm_loadu_si128(p.cast()) };
    let both = _mm256_insertf128_si256(_mm256_castsi128_si256(tmp), _mm_srli_epi16(tmp, 4), 1);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32(p: *const i8) -> __m256i {
    // SAFETY: the caller passes a pointer to 32 readable bytes.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// Sum of products of 32 unsigned and 32 signed bytes, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mul_sum_us8_pairs(ux: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ux, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32 <= n bounds both reads.
            let (vx, vy) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i + 8 * k)),
                    _mm256_loadu_ps(y.as_ptr().add(i + 8 * k)),
                )
            };
            *a = _mm256_fmadd_ps(vx, vy, *a);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = x[i..n].iter().zip(&y[i..n]).map(|(a, b)| a * b).sum();
    hsum_f32x8(sum) + tail
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: i + 32 <= n bounds both reads; f16 is 2 bytes.
            let (vx, vy) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i + 8 * k).cast())),
                    _mm256_loadu_ps(y.as_ptr().add(i + 8 * k)),
                )
            };
            *a = _mm256_fmadd_ps(vx, vy, *a);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = x[i..n]
        .iter()
        .zip(&y[i..n])
        .map(|(a, b)| fp16(*a) * b)
        .sum();
    hsum_f32x8(sum) + tail
}
