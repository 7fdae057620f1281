//! AVX2 + FMA paths of the ops. RMSNorm's scaling, the residual add and
//! RoPE do the scalar path's products and sums lane by lane (no FMA), so
//! they give its bits exactly; SwiGLU's `exp` is a polynomial within 2 ulp
//! of the true value, where the scalar path calls libm.
//!
//! Every function here must only be called after checking the CPU has
//! `avx2` and `fma` (see [`super::avx2_ok`]).

use std::arch::x86_64::*;

use super::scalar;

/// `out = x * s * weight`; the length is the shortest of the three.
#[target_feature(enable = "avx2,fma")]
pub(super) fn scale_mul(x: &[f32], s: f32, weight: &[f32], out: &mut [f32]) {
    let n = x.len().min(weight.len()).min(out.len());
    let vs = _mm256_set1_ps(s);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds every access.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let w = _mm256_loadu_ps(weight.as_ptr().add(i));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(_mm256_mul_ps(v, vs), w),
            );
        }
        i += 8;
    }
    scalar::scale_mul(&x[i..n], s, &weight[i..n], &mut out[i..n]);
}

/// `x = x * s * weight`; the length is the shorter of the two.
#[target_feature(enable = "avx2,fma")]
pub(super) fn scale_mul_in_place(x: &mut [f32], s: f32, weight: &[f32]) {
    let n = x.len().min(weight.len());
    let vs = _mm256_set1_ps(s);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds every access.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let w = _mm256_loadu_ps(weight.as_ptr().add(i));
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p), vs), w));
        }
        i += 8;
    }
    scalar::scale_mul_in_place(&mut x[i..n], s, &weight[i..n]);
}

/// `x += delta`; the length is the shorter of the two.
#[target_feature(enable = "avx2,fma")]
pub(super) fn add(x: &mut [f32], delta: &[f32]) {
    let n = x.len().min(delta.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds every access.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let d = _mm256_loadu_ps(delta.as_ptr().add(i));
            _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), d));
        }
        i += 8;
    }
    scalar::add(&mut x[i..n], &delta[i..n]);
}

/// [`scalar::rope_row`]: `row` is whole heads of `head_dim`, `c` and `s`
/// hold at least `head_dim / 2` values.
#[target_feature(enable = "avx2,fma")]
pub(super) fn rope_row(row: &mut [f32], head_dim: usize, c: &[f32], s: &[f32], interleaved: bool) {
    let half = head_dim / 2;
    let (c, s) = (&c[..half], &s[..half]);
    if interleaved {
        rope_row_interleaved(row, head_dim, c, s);
        return;
    }
    for head in row.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        rotate_halves(lo, hi, c, s);
    }
}

/// Pairs `(lo[j], hi[j])`: two vectors of eight first elements and eight
/// second ones, rotated with the scalar formula.
#[target_feature(enable = "avx2,fma")]
fn rotate_halves(lo: &mut [f32], hi: &mut [f32], c: &[f32], s: &[f32]) {
    let n = lo.len().min(hi.len()).min(c.len()).min(s.len());
    let mut j = 0;
    while j + 8 <= n {
        // SAFETY: j + 8 <= n bounds every access.
        unsafe {
            let (pl, ph) = (lo.as_mut_ptr().add(j), hi.as_mut_ptr().add(j));
            let (a, b) = (_mm256_loadu_ps(pl), _mm256_loadu_ps(ph));
            let vc = _mm256_loadu_ps(c.as_ptr().add(j));
            let vs = _mm256_loadu_ps(s.as_ptr().add(j));
            let l = _mm256_sub_ps(_mm256_mul_ps(a, vc), _mm256_mul_ps(b, vs));
            let h = _mm256_add_ps(_mm256_mul_ps(a, vs), _mm256_mul_ps(b, vc));
            _mm256_storeu_ps(pl, l);
            _mm256_storeu_ps(ph, h);
        }
        j += 8;
    }
    scalar::rotate_halves(&mut lo[j..n], &mut hi[j..n], &c[j..n], &s[j..n]);
}

/// Pairs the interleaved rotation handles per pass over the heads.
const DUP_PAIRS: usize = 64;

/// Interleaved pairs `(x[2j], x[2j + 1])` of every head in `row`. The
/// vectors want each cosine and sine twice (`[c0 c0 c1 c1 ..]`), a lane
/// shuffle that would cost as much as the rotation; every head of the row
/// shares the angles, so they are duplicated once into a stack buffer,
/// `DUP_PAIRS` at a time, and each head reads them from there.
#[target_feature(enable = "avx2,fma")]
fn rope_row_interleaved(row: &mut [f32], head_dim: usize, c: &[f32], s: &[f32]) {
    let half = head_dim / 2;
    let (mut cc, mut ss) = ([0.0f32; 2 * DUP_PAIRS], [0.0f32; 2 * DUP_PAIRS]);
    let mut j0 = 0;
    while j0 < half {
        let j1 = half.min(j0 + DUP_PAIRS);
        duplicate(&c[j0..j1], &mut cc);
        duplicate(&s[j0..j1], &mut ss);
        let len = 2 * (j1 - j0);
        for head in row.chunks_exact_mut(head_dim) {
            rotate_interleaved(&mut head[2 * j0..2 * j1], &cc[..len], &ss[..len]);
        }
        j0 = j1;
    }
}

/// `out[2j] = out[2j + 1] = v[j]`, for the `v.len()` values `out` has
/// room for.
#[target_feature(enable = "avx2,fma")]
fn duplicate(v: &[f32], out: &mut [f32]) {
    let n = v.len().min(out.len() / 2);
    let dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    let mut j = 0;
    while j + 4 <= n {
        // SAFETY: j + 4 <= n bounds the four values read and the eight
        // written. The upper half of the cast is never picked by `dup`.
        unsafe {
            let four = _mm256_castps128_ps256(_mm_loadu_ps(v.as_ptr().add(j)));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(2 * j),
                _mm256_permutevar8x32_ps(four, dup),
            );
        }
        j += 4;
    }
    for (pair, &x) in out[2 * j..2 * n].chunks_exact_mut(2).zip(&v[j..n]) {
        pair.fill(x);
    }
}

/// Pairs `(x[2j], x[2j + 1])` with duplicated angles `cc`, `ss` (as long
/// as `x`): `x * cc` and `swap_pairs(x) * ss`, subtracted in the even
/// lanes and added in the odd ones (`addsub`). `b*c + a*s` in the odd
/// lanes equals the scalar `a*s + b*c` bit for bit: float addition
/// commutes.
#[target_feature(enable = "avx2,fma")]
fn rotate_interleaved(x: &mut [f32], cc: &[f32], ss: &[f32]) {
    let n = x.len().min(cc.len()).min(ss.len()) & !1;
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds every access.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let v = _mm256_loadu_ps(p);
            let vc = _mm256_loadu_ps(cc.as_ptr().add(i));
            let vs = _mm256_loadu_ps(ss.as_ptr().add(i));
            let swapped = _mm256_permute_ps::<0b10_11_00_01>(v);
            let r = _mm256_addsub_ps(_mm256_mul_ps(v, vc), _mm256_mul_ps(swapped, vs));
            _mm256_storeu_ps(p, r);
        }
        i += 8;
    }
    for ((pair, c), s) in x[i..n]
        .chunks_exact_mut(2)
        .zip(cc[i..n].chunks_exact(2))
        .zip(ss[i..n].chunks_exact(2))
    {
        scalar::rotate_interleaved(pair, &c[..1], &s[..1]);
    }
}

/// `gate = silu(gate) * up`; the length is the shorter of the two. A
/// ragged tail goes through the same vector code in a padded copy, so an
/// element's bits never depend on where it sits in the slice.
#[target_feature(enable = "avx2,fma")]
pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds every access.
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            _mm256_storeu_ps(p, silu_mul(_mm256_loadu_ps(p), u));
        }
        i += 8;
    }
    if i < n {
        let (mut g, mut u) = ([0.0f32; 8], [0.0f32; 8]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        // SAFETY: both arrays hold eight floats.
        unsafe {
            let r = silu_mul(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr()));
            _mm256_storeu_ps(g.as_mut_ptr(), r);
        }
        gate[i..n].copy_from_slice(&g[..n - i]);
    }
}

/// `g / (1 + e^-g) * u`, in the scalar path's order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn silu_mul(g: __m256, u: __m256) -> __m256 {
    let e = exp(_mm256_xor_ps(g, _mm256_set1_ps(-0.0)));
    _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
}

/// `e^x` per lane, within 2 ulp: Cephes' `expf`. `x = n ln2 + r` with
/// `|r| <= ln2 / 2`, `e^r` by a degree-7 polynomial, times `2^n` in two
/// exact steps so that `n` may run from -150 (subnormal results round
/// once, to zero below about -103.9) to 128 (overflow to +inf above about
/// 88.72). NaN stays NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp(x: __m256) -> __m256 {
    // Beyond these bounds the result is already 0 or +inf. min and max
    // return their second operand when either is NaN, so NaN gets through.
    let x = _mm256_min_ps(_mm256_set1_ps(89.0), x);
    let x = _mm256_max_ps(_mm256_set1_ps(-104.0), x);
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln2 in two parts (Cephes); the first is 0.693359375, 9 bits.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_2e-4);
    for c in [
        1.398_2e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    ] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    let y = _mm256_add_ps(y, _mm256_set1_ps(1.0));
    // n is whole and within [-150, 128]; a NaN lane converts to garbage
    // that is multiplied by the NaN in `y`.
    let n = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32::<1>(n);
    let n2 = _mm256_sub_epi32(n, n1);
    _mm256_mul_ps(_mm256_mul_ps(y, pow2(n1)), pow2(n2))
}

/// `2^k` per lane for `k` in the normal range [-126, 127].
#[inline]
#[target_feature(enable = "avx2,fma")]
fn pow2(k: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        k,
        _mm256_set1_epi32(127),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avx2_ok() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    fn exp8(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: callers checked avx2_ok; both arrays hold eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    /// Distance in units of the last place of `want` (at least the
    /// smallest subnormal).
    fn ulps(got: f32, want: f64) -> f64 {
        let w = want as f32;
        let ulp = (f64::from(f32::from_bits(w.to_bits() + 1)) - f64::from(w)).max(1.4e-45);
        (f64::from(got) - want).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp_from_underflow_to_overflow() {
        if !avx2_ok() {
            return;
        }
        let (lo, hi, steps) = (-104.0f64, 88.72f64, 2_000_000);
        let mut worst = (0.0, 0.0);
        for chunk in 0..steps / 8 {
            let xs: [f32; 8] = std::array::from_fn(|l| {
                (lo + (hi - lo) * (chunk * 8 + l) as f64 / steps as f64) as f32
            });
            for (x, got) in xs.iter().zip(exp8(xs)) {
                let e = ulps(got, f64::from(*x).exp());
                if e > worst.0 {
                    worst = (e, *x);
                }
            }
        }
        assert!(worst.0 <= 2.0, "{} ulp at x = {}", worst.0, worst.1);
    }

    #[test]
    fn exp_saturates_and_keeps_nan() {
        if !avx2_ok() {
            return;
        }
        let got = exp8([
            88.8,
            1e30,
            f32::INFINITY,
            -104.0,
            -1e30,
            f32::NEG_INFINITY,
            f32::NAN,
            0.0,
        ]);
        assert_eq!(&got[..3], &[f32::INFINITY; 3]);
        assert_eq!(&got[3..6], &[0.0; 3]);
        assert!(got[6].is_nan());
        assert_eq!(got[7], 1.0);
    }
}
