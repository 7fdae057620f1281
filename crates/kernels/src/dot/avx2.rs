//! AVX2 + FMA + F16C dot products, after ggml's x86 kernels: 4-bit weights
//! are widened to bytes, multiplied with `maddubs` (unsigned x signed bytes
//! into i16 pairs), widened to i32 with `madd`, and scaled in f32.
//!
//! Every function here must only be called after checking the CPU has
//! `avx2`, `fma` and `f16c` (see [`super::Isa::detect`]).

use std::arch::x86_64::*;

use half::f16;

use crate::block::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K};

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

/// `dx * dy` in all 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_product(dx: f16, dy: f16) -> __m256 {
    _mm256_broadcastss_ps(_mm_mul_ss(fp16_lane0(dx), fp16_lane0(dy)))
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

/// Sum of products of two sets of 32 signed bytes, as 8 floats: moves x's
/// sign onto y so `maddubs` can take |x| as its unsigned operand.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_sum_i8_pairs(x: __m256i, y: __m256i) -> __m256 {
    mul_sum_us8_pairs(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block(x: &BlockQ4_0, y: &BlockQ8_0, acc: __m256) -> __m256 {
        // SAFETY: qs arrays are 16 and 32 bytes long.
        let (qx, qy) = unsafe { (nibbles_32(x.qs.as_ptr()), load32(y.qs.as_ptr())) };
        // (q - 8) * y as q * y - 8 * y: two maddubs are cheaper than
        // moving signs around for a signed-by-signed product.
        let prod = _mm256_sub_epi16(
            _mm256_maddubs_epi16(qx, qy),
            _mm256_maddubs_epi16(_mm256_set1_epi8(8), qy),
        );
        let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
        _mm256_fmadd_ps(scale_product(x.d, y.d), sum, acc)
    }
    pairs(x, y, block)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block(x: &BlockQ4_1, y: &BlockQ8_1, acc: __m256, acc_m: __m128) -> (__m256, __m128) {
        // (d, m) and (d, s) are adjacent f16 pairs: one load and one
        // conversion each give [dx*dy, m*s] in lanes 0 and 1.
        // SAFETY: both blocks start with two f16 fields (4 bytes).
        let (sx, sy) = unsafe {
            (
                _mm_cvtph_ps(_mm_loadu_si32((&raw const x.d).cast())),
                _mm_cvtph_ps(_mm_loadu_si32((&raw const y.d).cast())),
            )
        };
        let scales = _mm_mul_ps(sx, sy);
        // SAFETY: qs arrays are 16 and 32 bytes long.
        let (qx, qy) = unsafe { (nibbles_32(x.qs.as_ptr()), load32(y.qs.as_ptr())) };
        let acc = _mm256_fmadd_ps(
            _mm256_broadcastss_ps(scales),
            mul_sum_us8_pairs(qx, qy),
            acc,
        );
        (acc, _mm_add_ps(acc_m, scales))
    }
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (_mm_setzero_ps(), _mm_setzero_ps());
    let (xs, ys) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    for (x, y) in xs.zip(ys) {
        (acc0, m0) = block(&x[0], &y[0], acc0, m0);
        (acc1, m1) = block(&x[1], &y[1], acc1, m1);
    }
    if let (Some(x), Some(y)) = (xr.first(), yr.first()) {
        (acc0, m0) = block(x, y, acc0, m0);
    }
    let offsets = _mm_add_ps(m0, m1);
    hsum_f32x8(_mm256_add_ps(acc0, acc1)) + _mm_cvtss_f32(_mm_movehdup_ps(offsets))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn block(x: &BlockQ8_0, y: &BlockQ8_0, acc: __m256) -> __m256 {
        // SAFETY: qs arrays are 32 bytes long.
        let (qx, qy) = unsafe { (load32(x.qs.as_ptr()), load32(y.qs.as_ptr())) };
        _mm256_fmadd_ps(scale_product(x.d, y.d), mul_sum_i8_pairs(qx, qy), acc)
    }
    pairs(x, y, block)
}

/// Runs `block` over the rows two blocks at a time into two accumulators,
/// so consecutive blocks' multiply-adds do not wait on each other.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pairs<X, Y>(x: &[X], y: &[Y], block: unsafe fn(&X, &Y, __m256) -> __m256) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (xs, ys) = (x.chunks_exact(2), y.chunks_exact(2));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    // SAFETY (all calls): `block` needs only the features this function has.
    for (x, y) in xs.zip(ys) {
        acc0 = unsafe { block(&x[0], &y[0], acc0) };
        acc1 = unsafe { block(&x[1], &y[1], acc1) };
    }
    if let (Some(x), Some(y)) = (xr.first(), yr.first()) {
        acc0 = unsafe { block(x, y, acc0) };
    }
    hsum_f32x8(_mm256_add_ps(acc0, acc1))
}

/// Unpacks Q4_K's 12 scale bytes into 8 scales then 8 mins, one per byte.
fn unpack_scales_k4(packed: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f_3f3f;
    const KMASK2: u32 = 0x0f0f_0f0f;
    const KMASK3: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (u0, u1, u2) = (w(0), w(4), w(8));
    [
        u0 & KMASK1,
        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
        u1 & KMASK1,
        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
    ]
}

/// A mask for `shuffle_epi8` that broadcasts 16-bit lane `i` to all lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn broadcast_i16_lane(i: i32) -> __m256i {
    _mm256_set1_epi16((((2 * i + 1) << 8) | (2 * i)) as i16)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        let d = y.d * fp16(x.d);
        let dmin = -y.d * fp16(x.dmin);
        let u = unpack_scales_k4(&x.scales);
        let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
            u[3] as i32,
            u[2] as i32,
            u[1] as i32,
            u[0] as i32,
        ));
        // SAFETY: bsums is 16 i16 = 32 bytes.
        let q8sums = unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) };
        let q8s = _mm_hadd_epi16(
            _mm256_extracti128_si256(q8sums, 0),
            _mm256_extracti128_si256(q8sums, 1),
        );
        let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

        let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
        let scales = _mm256_set_m128i(sc128, sc128);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, broadcast_i16_lane(2 * j as i32));
            let scale_h = _mm256_shuffle_epi8(scales, broadcast_i16_lane(2 * j as i32 + 1));
            // SAFETY: j < 4 keeps the reads inside qs (128 bytes) and y.qs (256).
            let (q4bits, q8l, q8h) = unsafe {
                (
                    _mm256_loadu_si256(x.qs.as_ptr().add(32 * j).cast()),
                    load32(y.qs.as_ptr().add(64 * j)),
                    load32(y.qs.as_ptr().add(64 * j + 32)),
                )
            };
            let q4l = _mm256_and_si256(q4bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
            let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
            let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    hsum_f32x8(acc) + _mm_cvtss_f32(acc_m)
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32s = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        let d = y.d * fp16(x.d);
        // SAFETY: scales is 16 bytes.
        let scales = unsafe { _mm_loadu_si128(x.scales.as_ptr().cast()) };
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            // SAFETY: half < 2 keeps reads inside qh (64), ql (128), y.qs (256).
            let (hbits, lbits1, lbits2, q8) = unsafe {
                let q8 = y.qs.as_ptr().add(128 * half);
                (
                    _mm256_loadu_si256(x.qh.as_ptr().add(32 * half).cast()),
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * half).cast()),
                    _mm256_loadu_si256(x.ql.as_ptr().add(64 * half + 32).cast()),
                    [
                        load32(q8),
                        load32(q8.add(32)),
                        load32(q8.add(64)),
                        load32(q8.add(96)),
                    ],
                )
            };
            let high = [
                hbits,
                _mm256_srli_epi16(hbits, 2),
                _mm256_srli_epi16(hbits, 4),
                _mm256_srli_epi16(hbits, 6),
            ]
            .map(|bits| _mm256_slli_epi16(_mm256_and_si256(bits, m2), 4));
            let q6 = [
                _mm256_or_si256(_mm256_and_si256(lbits1, m4), high[0]),
                _mm256_or_si256(_mm256_and_si256(lbits2, m4), high[1]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lbits1, 4), m4), high[2]),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lbits2, 4), m4), high[3]),
            ];
            for k in 0..4 {
                // (q - 32) * y == q * y - 32 * y, keeping maddubs' first operand unsigned.
                let p16 = _mm256_sub_epi16(
                    _mm256_maddubs_epi16(q6[k], q8[k]),
                    _mm256_maddubs_epi16(m32s, q8[k]),
                );
                // Scales 2s and 2s+1 cover this group's two halves of 16.
                let s = (8 * half + 2 * k) as i8;
                let shuffle = _mm_set_epi8(
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s + 1,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                    s,
                );
                let scale = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_f32x8(acc)
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
