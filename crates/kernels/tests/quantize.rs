//! Quantize / dequantize round trips and the exact element layouts.

mod common;

use common::*;
use half::f16;
use huddle_kernels::KernelError;
use huddle_kernels::block::*;
use huddle_kernels::dequantize::*;
use huddle_kernels::quantize::*;

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
}

fn round_trip<B: Block>(
    x: &[f32],
    q: fn(&[f32], &mut [B]) -> Result<(), KernelError>,
    d: fn(&[B], &mut [f32]) -> Result<(), KernelError>,
) -> f32 {
    let mut blocks = vec![B::default(); x.len() / B::ELEMENTS];
    q(x, &mut blocks).expect("whole blocks");
    let mut back = vec![0.0; x.len()];
    d(&blocks, &mut back).expect("whole blocks");
    let err: Vec<f32> = x.iter().zip(&back).map(|(a, b)| a - b).collect();
    rms(&err) / rms(x)
}

#[test]
fn round_trip_error_is_within_each_formats_resolution() {
    let x = floats(&mut rng(11), 4 * 256);
    let cases = [
        (
            "Q8_0",
            round_trip(&x, quantize_row_q8_0, dequantize_row_q8_0),
            0.01,
        ),
        (
            "Q8_1",
            round_trip(&x, quantize_row_q8_1, dequantize_row_q8_1),
            0.01,
        ),
        (
            "Q8_K",
            round_trip(&x, quantize_row_q8_k, dequantize_row_q8_k),
            0.01,
        ),
        (
            "Q6_K",
            round_trip(&x, quantize_row_q6_k, dequantize_row_q6_k),
            0.04,
        ),
        (
            "Q4_0",
            round_trip(&x, quantize_row_q4_0, dequantize_row_q4_0),
            0.15,
        ),
        (
            "Q4_1",
            round_trip(&x, quantize_row_q4_1, dequantize_row_q4_1),
            0.12,
        ),
        (
            "Q4_K",
            round_trip(&x, quantize_row_q4_k, dequantize_row_q4_k),
            0.15,
        ),
    ];
    for (name, err, bound) in cases {
        assert!(err < bound, "{name}: relative rms error {err} >= {bound}");
    }
}

#[test]
fn zero_blocks_quantize_to_exact_zeros() {
    let x = [vec![0.0f32; 256], vec![0.5; 256]].concat();
    let mut k = vec![BlockQ8K::default(); 2];
    quantize_row_q8_k(&x, &mut k).expect("two blocks");
    assert_eq!(k[0], BlockQ8K::default());
    let mut q = vec![BlockQ8_0::default(); 16];
    quantize_row_q8_0(&x[..512], &mut q).expect("sixteen blocks");
    let mut back = vec![1.0f32; 512];
    dequantize_row_q8_0(&q, &mut back).expect("sixteen blocks");
    assert!(back[..256].iter().all(|&v| v == 0.0));
}

#[test]
fn q4_0_nibble_order_is_low_then_high() {
    let mut b = BlockQ4_0 {
        d: f16::from_f32(1.0),
        qs: [0; 16],
    };
    b.qs[0] = 0x1F; // element 0 -> 15 - 8, element 16 -> 1 - 8
    let mut y = [0.0; 32];
    dequantize_row_q4_0(&[b], &mut y).expect("one block");
    assert_eq!((y[0], y[16], y[1]), (7.0, -7.0, -8.0));
}

#[test]
fn q8_k_bsums_are_group_sums_and_scale_matches_ggml() {
    let x: Vec<f32> = (0..256).map(|i| (i as f32 - 100.0) / 50.0).collect();
    let mut b = vec![BlockQ8K::default()];
    quantize_row_q8_k(&x, &mut b).expect("one block");
    for (g, s) in b[0].bsums.iter().enumerate() {
        let want: i16 = b[0].qs[g * 16..(g + 1) * 16]
            .iter()
            .map(|&q| i16::from(q))
            .sum();
        assert_eq!(*s, want);
    }
    // The largest magnitude (3.1 at i = 255) maps to -127 after ggml's sign flip.
    assert_eq!(b[0].qs[255], -127);
    assert!((b[0].d - (-3.1 / 127.0)).abs() < 1e-6);
}

#[test]
fn q8_1_sum_term_matches_its_values() {
    let x = floats(&mut rng(3), 64);
    let mut b = vec![BlockQ8_1::default(); 2];
    quantize_row_q8_1(&x, &mut b).expect("two blocks");
    for blk in &b {
        let sum: i32 = blk.qs.iter().map(|&q| i32::from(q)).sum();
        let want = sum as f32 * blk.d.to_f32();
        assert!((blk.s.to_f32() - want).abs() <= want.abs() * 2e-3 + 1e-3);
    }
}

#[test]
fn quantizers_reject_mismatched_lengths() {
    let mut y = vec![BlockQ8_0::default(); 2];
    assert!(matches!(
        quantize_row_q8_0(&[0.0; 48], &mut y),
        Err(KernelError::RowLength { .. })
    ));
    assert!(matches!(
        quantize_row_q8_0(&[0.0; 32], &mut y),
        Err(KernelError::Size { .. })
    ));
    let mut out = vec![0.0; 100];
    assert!(dequantize_row_q4_k(&[BlockQ4K::default()], &mut out).is_err());
}
