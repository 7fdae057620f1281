//! AVX2 dot products of one weight row with `R` activation rows at once
//! (R = 1 for decode, 4 for prompts): each weight block is loaded and
//! unpacked once for all `R` rows.
//!
//! Each row's arithmetic is the same whatever `R` is (its own
//! accumulators, the same operations in the same order), so a prompt row's
//! result never depends on how many rows came with it: a prompt fed in
//! pieces gives the same products as the prompt in one pass.
//!
//! Every function here must only be called after checking the CPU has
//! `avx2`, `fma` and `f16c` (see [`super::Isa::detect`]).

use std::arch::x86_64::*;

use super::avx2::{fp16_lane0, hsum_f32x8, load32, mul_sum_us8_pairs, nibbles_32};
use crate::block::{BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K};

/// How far ahead of the weight block being read a one-row product (decode)
/// asks for weight bytes. Decode streams every weight from memory once per
/// token with little arithmetic per byte, and the hardware prefetcher
/// alone left it well below a plain read loop's bandwidth. In a noisy
/// sweep of 0.5-4 KiB on Qwen2.5-0.5B-shape decode, 2 and 4 KiB did about
/// equally well and better than less.
/// Prompt products (R = 4) reuse each weight block four times and are
/// bound by arithmetic: they are left to the hardware.
const PREFETCH_AHEAD: usize = 2048;

/// Asks for the cache lines `PREFETCH_AHEAD` bytes past `block`, when `R`
/// is one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead<T, const R: usize>(block: &T) {
    if R != 1 {
        return;
    }
    let at = (block as *const T)
        .cast::<i8>()
        .wrapping_add(PREFETCH_AHEAD);
    for line in (0..size_of::<T>()).step_by(64) {
        // A prefetch never faults, whatever the address: one past the
        // matrix's end is only a wasted request.
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line));
    }
}

/// The blocks every row has: the shortest of `x` and all of `ys`.
fn common_len<X, Y, const R: usize>(x: &[X], ys: &[&[Y]; R]) -> usize {
    ys.iter().fold(x.len(), |n, y| n.min(y.len()))
}

/// Runs `block(b, half, acc)` over blocks `0..n` into two accumulators per
/// row, even blocks into the first and odd into the second, so consecutive
/// blocks' multiply-adds do not wait on each other; sums them at the end.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_accumulators<const R: usize>(
    n: usize,
    mut block: impl FnMut(usize, &mut [[__m256; 2]; R], usize),
) -> [f32; R] {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let mut b = 0;
    while b + 2 <= n {
        block(b, &mut acc, 0);
        block(b + 1, &mut acc, 1);
        b += 2;
    }
    if b < n {
        block(b, &mut acc, 0);
    }
    acc.map(|[a0, a1]| hsum_f32x8(_mm256_add_ps(a0, a1)))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0_q8_0<const R: usize>(x: &[BlockQ4_0], ys: [&[BlockQ8_0]; R]) -> [f32; R] {
    let n = common_len(x, &ys);
    let eights = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    two_accumulators::<R>(n, |b, acc, h| {
        // SAFETY: b < n, the length of every row.
        let xb = unsafe { x.get_unchecked(b) };
        prefetch_ahead::<_, R>(xb);
        let dx = fp16_lane0(xb.d);
        // SAFETY: qs is 16 bytes.
        let qx = unsafe { nibbles_32(xb.qs.as_ptr()) };
        for (r, y) in ys.iter().enumerate() {
            // SAFETY: b < n; qs is 32 bytes.
            let yb = unsafe { y.get_unchecked(b) };
            let qy = unsafe { load32(yb.qs.as_ptr()) };
            // (q - 8) * y as q * y - 8 * y: two maddubs are cheaper than
            // moving signs around for a signed-by-signed product.
            let prod = _mm256_sub_epi16(
                _mm256_maddubs_epi16(qx, qy),
                _mm256_maddubs_epi16(eights, qy),
            );
            let sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(prod, ones));
            let d = _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(yb.d)));
            acc[r][h] = _mm256_fmadd_ps(d, sum, acc[r][h]);
        }
    })
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_q8_0<const R: usize>(x: &[BlockQ8_0], ys: [&[BlockQ8_0]; R]) -> [f32; R] {
    let n = common_len(x, &ys);
    two_accumulators::<R>(n, |b, acc, h| {
        // SAFETY: b < n, the length of every row; qs is 32 bytes.
        let xb = unsafe { x.get_unchecked(b) };
        prefetch_ahead::<_, R>(xb);
        let dx = fp16_lane0(xb.d);
        let qx = unsafe { load32(xb.qs.as_ptr()) };
        // |x| once for all rows; x's sign moves onto each row's bytes so
        // `maddubs` can take |x| as its unsigned operand.
        let ax = _mm256_sign_epi8(qx, qx);
        for (r, y) in ys.iter().enumerate() {
            // SAFETY: b < n; qs is 32 bytes.
            let yb = unsafe { y.get_unchecked(b) };
            let qy = unsafe { load32(yb.qs.as_ptr()) };
            let sum = mul_sum_us8_pairs(ax, _mm256_sign_epi8(qy, qx));
            let d = _mm256_broadcastss_ps(_mm_mul_ss(dx, fp16_lane0(yb.d)));
            acc[r][h] = _mm256_fmadd_ps(d, sum, acc[r][h]);
        }
    })
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_1_q8_1<const R: usize>(x: &[BlockQ4_1], ys: [&[BlockQ8_1]; R]) -> [f32; R] {
    let n = common_len(x, &ys);
    // Per row, [d*d, m*s] products of even blocks in lanes 0-1 and of odd
    // blocks in lanes 2-3: the offset term's two partial sums in one register.
    let mut offsets = [_mm_setzero_ps(); R];
    // One block of every row: lane 0 of the returned scales multiplies the
    // integer dot product; lane 1 is the block's offset term.
    let block = |b: usize, acc: &mut [[__m256; 2]; R], h: usize, scales: &mut [__m128; R]| {
        // SAFETY: b < n, the length of every row. Each block starts with two
        // f16 fields (4 bytes); qs arrays are 16 and 32 bytes long.
        let xb = unsafe { x.get_unchecked(b) };
        prefetch_ahead::<_, R>(xb);
        let (sx, qx) = unsafe {
            (
                _mm_cvtph_ps(_mm_loadu_si32((&raw const xb.d).cast())),
                nibbles_32(xb.qs.as_ptr()),
            )
        };
        for (r, y) in ys.iter().enumerate() {
            let yb = unsafe { y.get_unchecked(b) };
            let (sy, qy) = unsafe {
                (
                    _mm_cvtph_ps(_mm_loadu_si32((&raw const yb.d).cast())),
                    load32(yb.qs.as_ptr()),
                )
            };
            let s = _mm_mul_ps(sx, sy);
            acc[r][h] = _mm256_fmadd_ps(
                _mm256_broadcastss_ps(s),
                mul_sum_us8_pairs(qx, qy),
                acc[r][h],
            );
            scales[r] = s;
        }
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (mut even, mut odd) = ([_mm_setzero_ps(); R], [_mm_setzero_ps(); R]);
    let mut b = 0;
    while b + 2 <= n {
        block(b, &mut acc, 0, &mut even);
        block(b + 1, &mut acc, 1, &mut odd);
        for r in 0..R {
            offsets[r] = _mm_add_ps(offsets[r], _mm_movelh_ps(even[r], odd[r]));
        }
        b += 2;
    }
    if b < n {
        block(b, &mut acc, 0, &mut even);
        for r in 0..R {
            offsets[r] = _mm_add_ps(offsets[r], _mm_movelh_ps(even[r], _mm_setzero_ps()));
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let [a0, a1] = acc[r];
        // Lanes 1 and 3: the even and odd blocks' offset sums.
        let m = _mm_add_ss(
            _mm_movehdup_ps(offsets[r]),
            _mm_movehl_ps(offsets[r], _mm_movehdup_ps(offsets[r])),
        );
        out[r] = hsum_f32x8(_mm256_add_ps(a0, a1)) + _mm_cvtss_f32(m);
    }
    out
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
pub unsafe fn dot_q4_k_q8_k<const R: usize>(x: &[BlockQ4K], ys: [&[BlockQ8K]; R]) -> [f32; R] {
    let n = common_len(x, &ys);
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_m = [_mm_setzero_ps(); R];
    for b in 0..n {
        // SAFETY: b < n, the length of every row.
        let xb = unsafe { x.get_unchecked(b) };
        prefetch_ahead::<_, R>(xb);
        let yb: [&BlockQ8K; R] = std::array::from_fn(|r| unsafe { ys[r].get_unchecked(b) });
        let (xd, xmin) = (
            _mm_cvtss_f32(fp16_lane0(xb.d)),
            _mm_cvtss_f32(fp16_lane0(xb.dmin)),
        );
        let u = unpack_scales_k4(&xb.scales);
        let mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(
            u[3] as i32,
            u[2] as i32,
            u[1] as i32,
            u[0] as i32,
        ));
        let mins = _mm256_extracti128_si256(mins_and_scales, 1);
        for r in 0..R {
            // SAFETY: bsums is 16 i16 = 32 bytes.
            let q8sums = unsafe { _mm256_loadu_si256(yb[r].bsums.as_ptr().cast()) };
            let q8s = _mm_hadd_epi16(
                _mm256_extracti128_si256(q8sums, 0),
                _mm256_extracti128_si256(q8sums, 1),
            );
            let prod = _mm_madd_epi16(mins, q8s);
            let dmin = -yb[r].d * xmin;
            acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r]);
        }
        let sc128 = _mm256_extracti128_si256(mins_and_scales, 0);
        let scales = _mm256_set_m128i(sc128, sc128);
        let mut sumi = [_mm256_setzero_si256(); R];
        for j in 0..4 {
            let scale_l = _mm256_shuffle_epi8(scales, broadcast_i16_lane(2 * j as i32));
            let scale_h = _mm256_shuffle_epi8(scales, broadcast_i16_lane(2 * j as i32 + 1));
            // SAFETY: j < 4 keeps the read inside qs (128 bytes).
            let q4bits = unsafe { _mm256_loadu_si256(xb.qs.as_ptr().add(32 * j).cast()) };
            let q4l = _mm256_and_si256(q4bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
            for r in 0..R {
                // SAFETY: j < 4 keeps the reads inside y.qs (256 bytes).
                let (q8l, q8h) = unsafe {
                    (
                        load32(yb[r].qs.as_ptr().add(64 * j)),
                        load32(yb[r].qs.as_ptr().add(64 * j + 32)),
                    )
                };
                let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p16l, p16h));
            }
        }
        for r in 0..R {
            let d = yb[r].d * xd;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        let m = _mm_add_ps(acc_m[r], _mm_movehl_ps(acc_m[r], acc_m[r]));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[r] = hsum_f32x8(acc[r]) + _mm_cvtss_f32(m);
    }
    out
}

/// The shuffle that widens Q6_K scales `s` and `s + 1` over a group's two
/// halves of 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_scale_pair(scales: __m128i, s: i8) -> __m256i {
    let (a, b) = (s, s + 1);
    let shuffle = _mm_set_epi8(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a);
    _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle))
}

/// # Safety
/// The CPU must support avx2, fma and f16c.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6_k_q8_k<const R: usize>(x: &[BlockQ6K], ys: [&[BlockQ8K]; R]) -> [f32; R] {
    let n = common_len(x, &ys);
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let m32s = _mm256_set1_epi8(32);
    let mut acc = [_mm256_setzero_ps(); R];
    for b in 0..n {
        // SAFETY: b < n, the length of every row.
        let xb = unsafe { x.get_unchecked(b) };
        prefetch_ahead::<_, R>(xb);
        let yb: [&BlockQ8K; R] = std::array::from_fn(|r| unsafe { ys[r].get_unchecked(b) });
        let xd = _mm_cvtss_f32(fp16_lane0(xb.d));
        // SAFETY: scales is 16 bytes.
        let scales = unsafe { _mm_loadu_si128(xb.scales.as_ptr().cast()) };
        let mut sumi = [_mm256_setzero_si256(); R];
        for half in 0..2 {
            // SAFETY: half < 2 keeps reads inside qh (64) and ql (128).
            let (hbits, lbits1, lbits2) = unsafe {
                (
                    _mm256_loadu_si256(xb.qh.as_ptr().add(32 * half).cast()),
                    _mm256_loadu_si256(xb.ql.as_ptr().add(64 * half).cast()),
                    _mm256_loadu_si256(xb.ql.as_ptr().add(64 * half + 32).cast()),
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
            for (k, q6k) in q6.iter().enumerate() {
                let scale = q6_scale_pair(scales, (8 * half + 2 * k) as i8);
                for r in 0..R {
                    // SAFETY: half < 2 and k < 4 keep the read inside y.qs (256).
                    let q8 = unsafe { load32(yb[r].qs.as_ptr().add(128 * half + 32 * k)) };
                    // (q - 32) * y == q * y - 32 * y, keeping maddubs' first operand unsigned.
                    let p16 = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(*q6k, q8),
                        _mm256_maddubs_epi16(m32s, q8),
                    );
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(scale, p16));
                }
            }
        }
        for r in 0..R {
            let d = yb[r].d * xd;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    acc.map(|a| hsum_f32x8(a))
}
