//! Portable dot products: the reference every SIMD path is tested against,
//! and the path taken on CPUs without one. Integer sums are exact, so SIMD
//! paths differ from these only by float summation order.

use half::f16;

use crate::block::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8_1, BlockQ8K, QK, QK_K,
};
use crate::quantize::scale_min_k4;

pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            let lo = i32::from(x.qs[j] & 0xF) - 8;
            let hi = i32::from(x.qs[j] >> 4) - 8;
            sum += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + QK / 2]);
        }
        acc += sum as f32 * x.d.to_f32() * y.d.to_f32();
    }
    acc
}

pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sum = 0i32;
        for j in 0..QK / 2 {
            sum += i32::from(x.qs[j] & 0xF) * i32::from(y.qs[j])
                + i32::from(x.qs[j] >> 4) * i32::from(y.qs[j + QK / 2]);
        }
        acc += sum as f32 * x.d.to_f32() * y.d.to_f32() + x.m.to_f32() * y.s.to_f32();
    }
    acc
}

pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let sum: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        acc += sum as f32 * x.d.to_f32() * y.d.to_f32();
    }
    acc
}

pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sumi = 0i32;
        let mut summ = 0i32;
        for j in 0..QK_K / 32 {
            let (sc, m) = scale_min_k4(j, &x.scales);
            let q = &x.qs[(j / 2) * 32..(j / 2) * 32 + 32];
            let shift = if j % 2 == 0 { 0 } else { 4 };
            let a = &y.qs[j * 32..(j + 1) * 32];
            let dot: i32 = q
                .iter()
                .zip(a)
                .map(|(&q, &a)| i32::from((q >> shift) & 0xF) * i32::from(a))
                .sum();
            sumi += i32::from(sc) * dot;
            summ += i32::from(m) * (i32::from(y.bsums[2 * j]) + i32::from(y.bsums[2 * j + 1]));
        }
        acc += y.d * (x.d.to_f32() * sumi as f32 - x.dmin.to_f32() * summ as f32);
    }
    acc
}

pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for half in 0..QK_K / 128 {
            let ql = &x.ql[half * 64..];
            let qh = &x.qh[half * 32..];
            let sc = &x.scales[half * 8..];
            let a = &y.qs[half * 128..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                sumi += i32::from(sc[is]) * q1 * i32::from(a[l])
                    + i32::from(sc[is + 2]) * q2 * i32::from(a[l + 32])
                    + i32::from(sc[is + 4]) * q3 * i32::from(a[l + 64])
                    + i32::from(sc[is + 6]) * q4 * i32::from(a[l + 96]);
            }
        }
        acc += x.d.to_f32() * y.d * sumi as f32;
    }
    acc
}

pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without -ffast-math.
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub fn vec_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (xc, yc) = (x.chunks_exact(8), y.chunks_exact(8));
    let tail: f32 = xc
        .remainder()
        .iter()
        .zip(yc.remainder())
        .map(|(a, b)| a.to_f32() * b)
        .sum();
    for (a, b) in xc.zip(yc) {
        for i in 0..8 {
            acc[i] += a[i].to_f32() * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
