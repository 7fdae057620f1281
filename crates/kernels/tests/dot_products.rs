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

/// A one-row dot product, picked from a kernel table.
type OneRow<W, A> = fn(&[W], &[A]) -> f32;

/// Four rows through `x4` against each row alone through the one-row
/// function: bit-identical, so a row's product does not depend on the
/// rows beside it; and within float tolerance of the scalar reference.
fn four_rows_match<W, A>(
    name: &str,
    w: &[W],
    rows: &[Vec<A>; 4],
    x4: fn(&Kernels) -> huddle_kernels::dot::Dot4<W, A>,
    one: fn(&Kernels) -> OneRow<W, A>,
    mag: f32,
) {
    let refs = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
    for k in Isa::supported().into_iter().filter_map(Kernels::for_isa) {
        let got = x4(&k)(w, refs);
        for (r, row) in rows.iter().enumerate() {
            let alone = one(&k)(w, row);
            assert_eq!(
                got[r].to_bits(),
                alone.to_bits(),
                "{name} {} row {r}: {} in four vs {alone} alone",
                k.isa.name(),
                got[r]
            );
            assert_close(
                &format!("{name} {} row {r} vs scalar", k.isa.name()),
                got[r],
                one(&scalar())(w, row),
                mag,
            );
        }
    }
}

#[test]
fn four_row_paths_equal_single_row_calls_bit_for_bit() {
    let mut rng = rng(8);
    for nb in SMALL_BLOCKS {
        let ys: [Vec<f32>; 4] = std::array::from_fn(|_| floats(&mut rng, nb * 32));
        let mag = nb as f32 * 32.0 * 0.05;
        let w = random_q4_0(&mut rng, nb);
        four_rows_match(
            &format!("q4_0 {nb} blocks"),
            &w,
            &ys.clone().map(|y| q8_0_of(&y)),
            |k| k.q4_0_q8_0_x4,
            |k| k.q4_0_q8_0,
            mag,
        );
        let w = random_q4_1(&mut rng, nb);
        four_rows_match(
            &format!("q4_1 {nb} blocks"),
            &w,
            &ys.clone().map(|y| q8_1_of(&y)),
            |k| k.q4_1_q8_1_x4,
            |k| k.q4_1_q8_1,
            mag,
        );
        let w = random_q8_0(&mut rng, nb);
        four_rows_match(
            &format!("q8_0 {nb} blocks"),
            &w,
            &ys.clone().map(|y| q8_0_of(&y)),
            |k| k.q8_0_q8_0_x4,
            |k| k.q8_0_q8_0,
            mag,
        );
        let w: Vec<f16> = ys[0].iter().map(|v| f16::from_f32(v * 0.5)).collect();
        four_rows_match(
            &format!("f16 {} columns", nb * 32),
            &w,
            &ys,
            |k| k.f16_f32_x4,
            |k| k.f16_f32,
            mag,
        );
    }
    for nb in K_BLOCKS {
        let ys: [Vec<f32>; 4] = std::array::from_fn(|_| floats(&mut rng, nb * 256));
        let mag = nb as f32 * 256.0 * 0.05;
        let acts = ys.clone().map(|y| q8_k_of(&y));
        let w = random_q4_k(&mut rng, nb);
        four_rows_match(
            &format!("q4_k {nb} blocks"),
            &w,
            &acts,
            |k| k.q4_k_q8_k_x4,
            |k| k.q4_k_q8_k,
            mag,
        );
        let w = random_q6_k(&mut rng, nb);
        four_rows_match(
            &format!("q6_k {nb} blocks"),
            &w,
            &acts,
            |k| k.q6_k_q8_k_x4,
            |k| k.q6_k_q8_k,
            mag,
        );
    }
}
