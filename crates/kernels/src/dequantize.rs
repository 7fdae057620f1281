//! Reference dequantizers: GGML blocks back into f32, following ggml's
//! `dequantize_row_*` element order.

use crate::block::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K,
};
use crate::error::KernelError;
use crate::quantize::{check_row, scale_min_k4};

pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ4_0>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = (f32::from(q & 0xF) - 8.0) * d;
            y[j + QK / 2] = (f32::from(q >> 4) - 8.0) * d;
        }
    }
    Ok(())
}

pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ4_1>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = f32::from(q & 0xF) * d + m;
            y[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }
    Ok(())
}

pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ8_0>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = f32::from(q) * d;
        }
    }
    Ok(())
}

pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ8_1>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = f32::from(q) * d;
        }
    }
    Ok(())
}

pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ8K>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = f32::from(q) * b.d;
        }
    }
    Ok(())
}

pub fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ4K>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for c in 0..QK_K / 64 {
            let (sc1, m1) = scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
            let q = &b.qs[c * 32..(c + 1) * 32];
            let y = &mut y[c * 64..(c + 1) * 64];
            for l in 0..32 {
                y[l] = d1 * f32::from(q[l] & 0xF) - m1;
                y[l + 32] = d2 * f32::from(q[l] >> 4) - m2;
            }
        }
    }
    Ok(())
}

pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) -> Result<(), KernelError> {
    check_row::<BlockQ6K>(y.len(), x.len())?;
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for half in 0..QK_K / 128 {
            let ql = &b.ql[half * 64..];
            let qh = &b.qh[half * 32..];
            let sc = &b.scales[half * 8..];
            let y = &mut y[half * 128..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * f32::from(sc[is]) * q1 as f32;
                y[l + 32] = d * f32::from(sc[is + 2]) * q2 as f32;
                y[l + 64] = d * f32::from(sc[is + 4]) * q3 as f32;
                y[l + 96] = d * f32::from(sc[is + 6]) * q4 as f32;
            }
        }
    }
    Ok(())
}
