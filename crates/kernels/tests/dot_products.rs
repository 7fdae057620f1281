//! Every SIMD dot product against the scalar reference, and the scalar
//! reference against dequantize-then-multiply in f64.

mod common;

use common::*;
use half::f16;
use huddle_kernels::block::{Block, BlockQ8K};
use huddle_kernels::dequantize::*;
use huddle_kernels::{Isa, Kernels};

const SMALL_BLOCKS: [usize; 6] = [1, 2, 3, 7, 18, 152];
const K_BLOCKS: [usize; 5] = [1, 2, 3, 7, 19];

fn simd_tables() -> Vec<Kernels> {
    Isa::supported()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .filter_map(Kernels::for_isa)
        .collect()
}

fn scalar() -> Kernels {
    Kernels::for_isa(Isa::Scalar).expect("scalar runs everywhere")
}

/// Sum of |w_i * a_i|, the scale float rounding errors grow with.
fn magnitude(w: &[f32], a: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| (f64::from(*x) * f64::from(*y)).abs())
        .sum::<f64>() as f32
}

fn exact(w: &[f32], a: &[f32]) -> f32 {
    w.iter()
        .zip(a)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum::<f64>() as f32
}

fn deq<B: Block>(
    blocks: &[B],
    f: fn(&[B], &mut [f32]) -> Result<(), huddle_kernels::KernelError>,
) -> Vec<f32> {
    let mut out = vec![0.0; blocks.len() * B::ELEMENTS];
    f(blocks, &mut out).expect("sizes match");
    out
}

#[test]
fn q4_0_q8_0_paths_match_scalar_and_dequantized() {
    let mut rng = rng(1);
    for nb in SMALL_BLOCKS {
        let w = random_q4_0(&mut rng, nb);
        let a = q8_0_of(&floats(&mut rng, nb * 32));
        let (wf, af) = (deq(&w, dequantize_row_q4_0), deq(&a, dequantize_row_q8_0));
        let mag = magnitude(&wf, &af);
        let want = (scalar().q4_0_q8_0)(&w, &a);
        assert_close(
            &format!("scalar vs dequantized, {nb} blocks"),
            want,
            exact(&wf, &af),
            mag,
        );
        for k in simd_tables() {
            assert_close(
                &format!("{} {nb} blocks", k.isa.name()),
                (k.q4_0_q8_0)(&w, &a),
                want,
                mag,
            );
        }
    }
}

#[test]
fn q4_1_q8_1_paths_match_scalar_and_dequantized() {
    let mut rng = rng(2);
    for nb in SMALL_BLOCKS {
        let w = random_q4_1(&mut rng, nb);
        let a = q8_1_of(&floats(&mut rng, nb * 32));
        let (wf, af) = (deq(&w, dequantize_row_q4_1), deq(&a, dequantize_row_q8_1));
        // The offset term uses s = d * sum(q) rounded to f16, so allow for it.
        let offsets: f32 = w
            .iter()
            .zip(&a)
            .map(|(w, a)| (w.m.to_f32() * a.s.to_f32()).abs())
            .sum();
        let mag = magnitude(&wf, &af) + offsets * 10.0;
        let want = (scalar().q4_1_q8_1)(&w, &a);
        assert_close(
            &format!("scalar vs dequantized, {nb} blocks"),
            want,
            exact(&wf, &af),
            mag,
        );
        for k in simd_tables() {
            assert_close(
                &format!("{} {nb} blocks", k.isa.name()),
                (k.q4_1_q8_1)(&w, &a),
                want,
                mag,
            );
        }
    }
}

#[test]
fn q8_0_q8_0_paths_match_scalar_and_dequantized() {
    let mut rng = rng(3);
    for nb in SMALL_BLOCKS {
        let w = random_q8_0(&mut rng, nb);
        let a = q8_0_of(&floats(&mut rng, nb * 32));
        let (wf, af) = (deq(&w, dequantize_row_q8_0), deq(&a, dequantize_row_q8_0));
        let mag = magnitude(&wf, &af);
        let want = (scalar().q8_0_q8_0)(&w, &a);
        assert_close(
            &format!("scalar vs dequantized, {nb} blocks"),
            want,
            exact(&wf, &af),
            mag,
        );
        for k in simd_tables() {
            assert_close(
                &format!("{} {nb} blocks", k.isa.name()),
                (k.q8_0_q8_0)(&w, &a),
                want,
                mag,
            );
        }
    }
}

#[test]
fn q8_0_with_minus_128_weights_matches_scalar() {
    // -128 has no positive counterpart; the sign trick must still be exact.
    let mut rng = rng(4);
    let mut w = random_q8_0(&mut rng, 4);
    for b in &mut w {
        b.qs = [-128; 32];
    }
    let a = q8_0_of(&floats(&mut rng, 128));
    let want = (scalar().q8_0_q8_0)(&w, &a);
    for k in simd_tables() {
        assert_close(k.isa.name(), (k.q8_0_q8_0)(&w, &a), want, want.abs());
    }
}

fn q8k_dequantized(a: &[BlockQ8K]) -> Vec<f32> {
    deq(a, dequantize_row_q8_k)
}

#[test]
fn q4_k_q8_k_paths_match_scalar_and_dequantized() {
    let mut rng = rng(5);
    for nb in K_BLOCKS {
        let w = random_q4_k(&mut rng, nb);
        let a = q8_k_of(&floats(&mut rng, nb * 256));
        let (wf, af) = (deq(&w, dequantize_row_q4_k), q8k_dequantized(&a));
        let mag = magnitude(&wf, &af);
        let want = (scalar().q4_k_q8_k)(&w, &a);
        assert_close(
            &format!("scalar vs dequantized, {nb} blocks"),
            want,
            exact(&wf, &af),
            mag,
        );
        for k in simd_tables() {
            assert_close(
                &format!("{} {nb} blocks", k.isa.name()),
                (k.q4_k_q8_k)(&w, &a),
                want,
                mag,
            );
        }
    }
}

#[test]
fn q6_k_q8_k_paths_match_scalar_and_dequantized() {
    let mut rng = rng(6);
    for nb in K_BLOCKS {
        let w = random_q6_k(&mut rng, nb);
        let a = q8_k_of(&floats(&mut rng, nb * 256));
        let (wf, af) = (deq(&w, dequantize_row_q6_k), q8k_dequantized(&a));
        let mag = magnitude(&wf, &af);
        let want = (scalar().q6_k_q8_k)(&w, &a);
        assert_close(
            &format!("scalar vs dequantized, {nb} blocks"),
            want,
            exact(&wf, &af),
            mag,
        );
        for k in simd_tables() {
            assert_close(
                &format!("{} {nb} blocks", k.isa.name()),
                (k.q6_k_q8_k)(&w, &a),
                want,
                mag,
            );
        }
    }
}

#[test]
fn float_paths_match_f64_for_every_length() {
    let mut rng = rng(7);
    for n in [0, 1, 7, 8, 31, 32, 33, 100, 576, 1000] {
        let x = floats(&mut rng, n);
        let y = floats(&mut rng, n);
        let xh: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
        let xr: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
        let mag = magnitude(&x, &y);
        for k in Isa::supported().into_iter().filter_map(Kernels::for_isa) {
            let name = format!("{} n={n}", k.isa.name());
            assert_close(
                &format!("f32 {name}"),
                (k.f32_f32)(&x, &y),
                exact(&x, &y),
                mag,
            );
            assert_close(
                &format!("f16 {name}"),
                (k.f16_f32)(&xh, &y),
                exact(&xr, &y),
                mag,
            );
        }
    }
}

#[test]
fn two_row_paths_match_two_single_row_calls() {
    let mut rng = rng(8);
    for nb in SMALL_BLOCKS {
        let (ya, yb) = (floats(&mut rng, nb * 32), floats(&mut rng, nb * 32));
        let mag = nb as f32 * 32.0 * 0.05;
        for k in Isa::supported().into_iter().filter_map(Kernels::for_isa) {
            let name = |t: &str| format!("{t} {} {nb} blocks", k.isa.name());
            if let Some(dot2) = k.q4_0_q8_0_x2 {
                let (w, a, b) = (random_q4_0(&mut rng, nb), q8_0_of(&ya), q8_0_of(&yb));
                let (r0, r1) = dot2(&w, &a, &b);
                assert_close(&name("q4_0 row 0"), r0, (scalar().q4_0_q8_0)(&w, &a), mag);
                assert_close(&name("q4_0 row 1"), r1, (scalar().q4_0_q8_0)(&w, &b), mag);
            }
            if let Some(dot2) = k.q4_1_q8_1_x2 {
                let (w, a, b) = (random_q4_1(&mut rng, nb), q8_1_of(&ya), q8_1_of(&yb));
                let (r0, r1) = dot2(&w, &a, &b);
                assert_close(&name("q4_1 row 0"), r0, (scalar().q4_1_q8_1)(&w, &a), mag);
                assert_close(&name("q4_1 row 1"), r1, (scalar().q4_1_q8_1)(&w, &b), mag);
            }
            if let Some(dot2) = k.q8_0_q8_0_x2 {
                let (w, a, b) = (random_q8_0(&mut rng, nb), q8_0_of(&ya), q8_0_of(&yb));
                let (r0, r1) = dot2(&w, &a, &b);
                assert_close(&name("q8_0 row 0"), r0, (scalar().q8_0_q8_0)(&w, &a), mag);
                assert_close(&name("q8_0 row 1"), r1, (scalar().q8_0_q8_0)(&w, &b), mag);
            }
        }
    }
}
