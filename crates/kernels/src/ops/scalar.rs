//! The portable path of every op, and the reference the SIMD paths are
//! tested against. Each function is element-wise, so the SIMD paths reuse
//! the ones with plain products and sums for their tails: rustc never fuses
//! `a * b + c` into an FMA, so those give the SIMD lanes' bits exactly.

/// `out = x * s * weight`.
pub(super) fn scale_mul(x: &[f32], s: f32, weight: &[f32], out: &mut [f32]) {
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * s * w;
    }
}

/// `x = x * s * weight`.
pub(super) fn scale_mul_in_place(x: &mut [f32], s: f32, weight: &[f32]) {
    for (v, &w) in x.iter_mut().zip(weight) {
        *v = *v * s * w;
    }
}

/// `x += delta`.
pub(super) fn add(x: &mut [f32], delta: &[f32]) {
    for (a, &b) in x.iter_mut().zip(delta) {
        *a += b;
    }
}

/// Rotates the pairs `(x[2j], x[2j + 1])` by the angles of `c[j]`, `s[j]`.
pub(super) fn rotate_interleaved(x: &mut [f32], c: &[f32], s: &[f32]) {
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(c).zip(s) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

/// Rotates the pairs `(lo[j], hi[j])` by the angles of `c[j]`, `s[j]`.
pub(super) fn rotate_halves(lo: &mut [f32], hi: &mut [f32], c: &[f32], s: &[f32]) {
    for (((l, h), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
        let (a, b) = (*l, *h);
        *l = a * c - b * s;
        *h = a * s + b * c;
    }
}

/// [`super::rope`] of one row of whole heads; `c` and `s` hold
/// `head_dim / 2` values.
pub(super) fn rope_row(row: &mut [f32], head_dim: usize, c: &[f32], s: &[f32], interleaved: bool) {
    for head in row.chunks_exact_mut(head_dim) {
        if interleaved {
            rotate_interleaved(head, c, s);
        } else {
            let (lo, hi) = head.split_at_mut(head_dim / 2);
            rotate_halves(lo, hi, c, s);
        }
    }
}

/// `gate = silu(gate) * up`.
pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}
