//! The element-wise steps of a transformer layer on f32 rows, fused so
//! that each reads and writes its data once: RMSNorm (alone, in place,
//! or after adding a residual), rotary position embeddings in place, and
//! SwiGLU's `silu(gate) * up`.
//!
//! Every function computes each row with the same arithmetic whatever
//! rows come with it, so a prompt in pieces gives the same bits as the
//! prompt whole. Nothing here allocates.
//!
//! Each op has a portable path (`scalar`, also the reference) and an
//! AVX2+FMA one. Functions given a [`Kernels`] follow its `isa`; the others
//! follow [`Kernels::best`], and their `*_with` twins take the [`Isa`]
//! (tests, benchmarks). An `isa` this CPU cannot run means the scalar path.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use crate::dot::{Isa, Kernels};
use crate::error::KernelError;

/// One instruction set's row functions.
struct Paths {
    scale_mul: fn(&[f32], f32, &[f32], &mut [f32]),
    scale_mul_in_place: fn(&mut [f32], f32, &[f32]),
    add: fn(&mut [f32], &[f32]),
    rope_row: fn(&mut [f32], usize, &[f32], &[f32], bool),
    swiglu: fn(&mut [f32], &[f32]),
}

const SCALAR: Paths = Paths {
    scale_mul: scalar::scale_mul,
    scale_mul_in_place: scalar::scale_mul_in_place,
    add: scalar::add,
    rope_row: scalar::rope_row,
    swiglu: scalar::swiglu,
};

// SAFETY (every closure below): `paths` hands this table out only after
// `avx2_ok` confirmed the CPU features.
#[cfg(target_arch = "x86_64")]
const AVX2: Paths = Paths {
    scale_mul: |x, s, w, o| unsafe { avx2::scale_mul(x, s, w, o) },
    scale_mul_in_place: |x, s, w| unsafe { avx2::scale_mul_in_place(x, s, w) },
    add: |x, d| unsafe { avx2::add(x, d) },
    rope_row: |x, d, c, s, i| unsafe { avx2::rope_row(x, d, c, s, i) },
    swiglu: |g, u| unsafe { avx2::swiglu(g, u) },
};

/// Checked here rather than trusted from `isa`: a [`Kernels`] can be built
/// by hand, and the unsafe calls must stay sound whatever it says.
#[cfg(target_arch = "x86_64")]
fn avx2_ok() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn paths(isa: Isa) -> &'static Paths {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if avx2_ok() => &AVX2,
        _ => &SCALAR,
    }
}

fn check(what: &'static str, expected: usize, actual: usize) -> Result<(), KernelError> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::Size {
            what,
            expected,
            actual,
        })
    }
}

/// Rows of `width` in `len` values: an error unless they are whole.
fn rows_of(what: &'static str, len: usize, width: usize) -> Result<usize, KernelError> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(KernelError::Size {
            what,
            expected: len.div_ceil(width.max(1)).saturating_mul(width),
            actual: len,
        });
    }
    Ok(len / width)
}

/// `1 / sqrt(mean(x²) + eps)` of one row.
fn inv_rms(k: &Kernels, x: &[f32], eps: f32) -> f32 {
    let sum = (k.f32_f32)(x, x);
    1.0 / (sum / x.len() as f32 + eps).sqrt()
}

/// `out = x / rms(x) * weight`, row by row; rows are `weight.len()` wide.
pub fn rms_norm(
    k: &Kernels,
    x: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    rows_of("rms_norm input", x.len(), weight.len())?;
    check("rms_norm output", x.len(), out.len())?;
    let p = paths(k.isa);
    for (row, o) in x
        .chunks_exact(weight.len())
        .zip(out.chunks_exact_mut(weight.len()))
    {
        (p.scale_mul)(row, inv_rms(k, row, eps), weight, o);
    }
    Ok(())
}

/// [`rms_norm`] of `x` into itself (per-head q/k norms).
pub fn rms_norm_in_place(
    k: &Kernels,
    x: &mut [f32],
    weight: &[f32],
    eps: f32,
) -> Result<(), KernelError> {
    rows_of("rms_norm input", x.len(), weight.len())?;
    let p = paths(k.isa);
    for row in x.chunks_exact_mut(weight.len()) {
        let s = inv_rms(k, row, eps);
        (p.scale_mul_in_place)(row, s, weight);
    }
    Ok(())
}

/// The residual step: `x += delta`, then `out = rms_norm(x)`. A row is
/// added and normalized while it is still in cache. On error nothing is
/// written.
pub fn add_rms_norm(
    k: &Kernels,
    x: &mut [f32],
    delta: &[f32],
    weight: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check("add operand", x.len(), delta.len())?;
    rows_of("rms_norm input", x.len(), weight.len())?;
    check("rms_norm output", x.len(), out.len())?;
    let p = paths(k.isa);
    let w = weight.len();
    for ((row, d), o) in x
        .chunks_exact_mut(w)
        .zip(delta.chunks_exact(w))
        .zip(out.chunks_exact_mut(w))
    {
        (p.add)(row, d);
        (p.scale_mul)(row, inv_rms(k, row, eps), weight, o);
    }
    Ok(())
}

/// `x += delta`.
pub fn add(x: &mut [f32], delta: &[f32]) -> Result<(), KernelError> {
    add_with(Kernels::best().isa, x, delta)
}

/// [`add`] on the path of `isa`.
pub fn add_with(isa: Isa, x: &mut [f32], delta: &[f32]) -> Result<(), KernelError> {
    check("add operand", x.len(), delta.len())?;
    (paths(isa).add)(x, delta);
    Ok(())
}

/// Rotates rows of `heads * head_dim` values in place: row `i` by the
/// angles whose cosines and sines are `cos[i * head_dim / 2..]` and
/// `sin[...]` (a position's table row). `interleaved` rotates pairs
/// `(2j, 2j + 1)` (GPT-J, GGUF llama); otherwise `(j, j + head_dim / 2)`
/// (NeoX, Hugging Face).
pub fn rope(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
    interleaved: bool,
) -> Result<(), KernelError> {
    rope_with(
        Kernels::best().isa,
        x,
        heads,
        head_dim,
        cos,
        sin,
        interleaved,
    )
}

/// [`rope`] on the path of `isa`.
pub fn rope_with(
    isa: Isa,
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    cos: &[f32],
    sin: &[f32],
    interleaved: bool,
) -> Result<(), KernelError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::Size {
            what: "rope head_dim (even)",
            expected: head_dim + head_dim % 2,
            actual: head_dim,
        });
    }
    let half = head_dim / 2;
    let width = heads.saturating_mul(head_dim);
    let t = rows_of("rope input", x.len(), width)?;
    check("rope cos table", t * half, cos.len())?;
    check("rope sin table", t * half, sin.len())?;
    let rope_row = paths(isa).rope_row;
    for ((row, c), s) in x
        .chunks_exact_mut(width)
        .zip(cos.chunks_exact(half))
        .zip(sin.chunks_exact(half))
    {
        rope_row(row, head_dim, c, s, interleaved);
    }
    Ok(())
}

/// SwiGLU in place: `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    swiglu_with(Kernels::best().isa, gate, up)
}

/// [`swiglu`] on the path of `isa`. The AVX2 path's `exp` is a polynomial
/// within 2 ulp, so its results differ from the scalar path's by a few ulp.
pub fn swiglu_with(isa: Isa, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    check("swiglu up", gate.len(), up.len())?;
    (paths(isa).swiglu)(gate, up);
    Ok(())
}
