//! Reference quantizers: rows of f32 into GGML blocks.
//!
//! The activation quantizers (Q8_0, Q8_1, Q8_K) follow ggml's reference
//! code exactly, so our dot products see the same integers llama.cpp's do.
//! The weight quantizers (Q4_0, Q4_1, Q8_0 exactly; Q4_K, Q6_K with a
//! simpler scale search than ggml's) exist for tests and benchmarks: real
//! weights come already quantized from GGUF files.

use half::f16;

use crate::block::{
    Block, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K,
};
use crate::error::KernelError;

/// Checks that `x` fills `y` exactly, `B::ELEMENTS` values per block.
pub(crate) fn check_row<B: Block>(x: usize, blocks: usize) -> Result<(), KernelError> {
    if !x.is_multiple_of(B::ELEMENTS) {
        return Err(KernelError::RowLength {
            format: B::NAME,
            cols: x,
            block: B::ELEMENTS,
        });
    }
    if x / B::ELEMENTS != blocks {
        return Err(KernelError::Size {
            what: B::NAME,
            expected: blocks * B::ELEMENTS,
            actual: x,
        });
    }
    Ok(())
}

fn abs_max(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The value with the largest magnitude, sign kept (first one on ties).
fn signed_max(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn quantize_q8_32(x: &[f32], qs: &mut [i8; QK]) -> (f32, i32) {
    let d = abs_max(x) / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) -> Result<(), KernelError> {
    check_row::<BlockQ8_0>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, _) = quantize_q8_32(x, &mut b.qs);
        b.d = f16::from_f32(d);
    }
    Ok(())
}

pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) -> Result<(), KernelError> {
    check_row::<BlockQ8_1>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let (d, sum) = quantize_q8_32(x, &mut b.qs);
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
    Ok(())
}

pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) -> Result<(), KernelError> {
    check_row::<BlockQ8K>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let max = signed_max(x);
        if max == 0.0 {
            *b = BlockQ8K::default();
            continue;
        }
        // ggml uses -127/max (not 128) so that no value needs clamping at -128.
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = ((iscale * v).round() as i32).min(127) as i8;
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
        b.d = 1.0 / iscale;
    }
    Ok(())
}

pub fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) -> Result<(), KernelError> {
    check_row::<BlockQ4_0>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let d = signed_max(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
        for j in 0..QK / 2 {
            b.qs[j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
        }
    }
    Ok(())
}

pub fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) -> Result<(), KernelError> {
    check_row::<BlockQ4_1>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK)) {
        let min = x.iter().copied().fold(f32::INFINITY, f32::min);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        let q = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
        for j in 0..QK / 2 {
            b.qs[j] = q(x[j]) | (q(x[j + QK / 2]) << 4);
        }
    }
    Ok(())
}

/// Packs 8 six-bit scales and 8 six-bit mins the way Q4_K stores them:
/// sub-blocks 0..4 in the low 6 bits of bytes 0..8, sub-blocks 4..8 split
/// into low nibbles in bytes 8..12 and top 2 bits over bytes 0..8.
fn pack_scales_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            out[j] = sc[j];
            out[j + 4] = m[j];
        } else {
            out[j + 4] = (sc[j] & 0xF) | ((m[j] & 0xF) << 4);
            out[j - 4] |= (sc[j] >> 4) << 6;
            out[j] |= (m[j] >> 4) << 6;
        }
    }
    out
}

/// The inverse of [`pack_scales_k4`]: (scale, min) of sub-block `j`.
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) -> Result<(), KernelError> {
    check_row::<BlockQ4K>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut scales = [0f32; 8];
        let mut mins = [0f32; 8];
        for (j, sub) in x.chunks_exact(32).enumerate() {
            let lo = sub.iter().copied().fold(0.0f32, f32::min);
            let hi = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            scales[j] = (hi - lo) / 15.0;
            mins[j] = -lo;
        }
        let d = scales.iter().copied().fold(0.0f32, f32::max) / 63.0;
        let dmin = mins.iter().copied().fold(0.0f32, f32::max) / 63.0;
        let to6 = |v: f32, s: f32| {
            if s > 0.0 {
                (v / s).round().clamp(0.0, 63.0) as u8
            } else {
                0
            }
        };
        let sc: [u8; 8] = std::array::from_fn(|j| to6(scales[j], d));
        let m: [u8; 8] = std::array::from_fn(|j| to6(mins[j], dmin));
        b.d = f16::from_f32(d);
        b.dmin = f16::from_f32(dmin);
        b.scales = pack_scales_k4(&sc, &m);
        // Quantize against the rounded scales the decoder will actually use.
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        let mut q = [0u8; QK_K];
        for (j, sub) in x.chunks_exact(32).enumerate() {
            let step = d * f32::from(sc[j]);
            let off = dmin * f32::from(m[j]);
            for (qv, &v) in q[j * 32..(j + 1) * 32].iter_mut().zip(sub) {
                *qv = if step > 0.0 {
                    ((v + off) / step).round().clamp(0.0, 15.0) as u8
                } else {
                    0
                };
            }
        }
        for c in 0..QK_K / 64 {
            for l in 0..32 {
                b.qs[c * 32 + l] = q[c * 64 + l] | (q[c * 64 + 32 + l] << 4);
            }
        }
    }
    Ok(())
}

pub fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) -> Result<(), KernelError> {
    check_row::<BlockQ6K>(x.len(), y.len())?;
    for (b, x) in y.iter_mut().zip(x.chunks_exact(QK_K)) {
        let sub_scales: [f32; 16] =
            std::array::from_fn(|j| signed_max(&x[j * 16..(j + 1) * 16]) / -32.0);
        let d = signed_max(&sub_scales) / -128.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let d = b.d.to_f32();
        let mut q = [0u8; QK_K];
        for j in 0..16 {
            let sc = (sub_scales[j] * id).round().clamp(-128.0, 127.0) as i8;
            b.scales[j] = sc;
            let step = d * f32::from(sc);
            for (qv, &v) in q[j * 16..(j + 1) * 16]
                .iter_mut()
                .zip(&x[j * 16..(j + 1) * 16])
            {
                let level = if step != 0.0 {
                    (v / step).round().clamp(-32.0, 31.0) as i32
                } else {
                    0
                };
                *qv = (level + 32) as u8;
            }
        }
        for half in 0..QK_K / 128 {
            let (q, ql, qh) = (
                &q[half * 128..],
                &mut b.ql[half * 64..],
                &mut b.qh[half * 32..],
            );
            for l in 0..32 {
                ql[l] = (q[l] & 0xF) | ((q[l + 64] & 0xF) << 4);
                ql[l + 32] = (q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4);
                qh[l] = (q[l] >> 4)
                    | ((q[l + 32] >> 4) << 2)
                    | ((q[l + 64] >> 4) << 4)
                    | ((q[l + 96] >> 4) << 6);
            }
        }
    }
    Ok(())
}
