//! The layer ops: every SIMD path against the scalar one, the scalar one
//! against f64 where the arithmetic is simple, rows alone against rows
//! together, and bad sizes as errors.

mod common;

use common::*;
use huddle_kernels::ops::*;
use huddle_kernels::{Isa, KernelError, Kernels};
use rand::Rng;
use rand::rngs::StdRng;

const WIDTHS: [usize; 9] = [1, 3, 7, 31, 33, 64, 100, 576, 896];
// 258: more pairs than the AVX2 interleaved path duplicates per pass.
const HEAD_DIMS: [usize; 5] = [2, 6, 64, 128, 258];
const EPS: f32 = 1e-6;

fn scalar() -> Kernels {
    Kernels::for_isa(Isa::Scalar).expect("scalar runs everywhere")
}

/// The SIMD paths this CPU runs; empty (and the comparisons skipped) only
/// on a CPU without them.
fn simd_isas() -> Vec<Isa> {
    Isa::supported()
        .into_iter()
        .filter(|&i| i != Isa::Scalar)
        .collect()
}

fn every_isa() -> Vec<Isa> {
    Isa::supported()
}

fn table(isa: Isa) -> Kernels {
    Kernels::for_isa(isa).expect("supported")
}

fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}[{i}]: got {g:e}, want {w:e} bit for bit"
        );
    }
}

/// `|got - want| <= rel * |want| + abs`, elementwise.
fn assert_near(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g:e}, want NaN");
            continue;
        }
        let tol = rel * w.abs() + abs;
        assert!(
            (g - w).abs() <= tol || g == w,
            "{what}[{i}]: got {g:e}, want {w:e} (tolerance {tol:e})"
        );
    }
}

/// Rows of random values whose scale differs from row to row, so a row's
/// norm is far from 1.
fn rows(rng: &mut StdRng, n_rows: usize, width: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n_rows * width);
    for r in 0..n_rows {
        let scale = [1.0, 1e-3, 40.0][r % 3];
        x.extend(floats(rng, width).into_iter().map(|v| v * scale));
    }
    x
}

fn rms_norm_f64(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(weight.len()) {
        let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / row.len() as f64;
        let s = 1.0 / (ms + f64::from(eps)).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| (f64::from(v) * s * f64::from(w)) as f32),
        );
    }
    out
}

#[test]
fn scalar_rms_norm_matches_f64() {
    let mut rng = rng(1);
    for width in WIDTHS {
        let (x, w) = (rows(&mut rng, 3, width), floats(&mut rng, width));
        let mut out = vec![0.0; x.len()];
        rms_norm(&scalar(), &x, &w, EPS, &mut out).unwrap();
        assert_near(
            &format!("width {width}"),
            &out,
            &rms_norm_f64(&x, &w, EPS),
            1e-5,
            1e-30,
        );
    }
}

#[test]
fn simd_rms_norms_match_scalar() {
    let mut rng = rng(2);
    for isa in simd_isas() {
        let k = table(isa);
        for width in WIDTHS {
            let what = format!("{} width {width}", isa.name());
            let (x, w) = (rows(&mut rng, 3, width), floats(&mut rng, width));
            let d = rows(&mut rng, 3, width);

            let mut want = vec![0.0; x.len()];
            rms_norm(&scalar(), &x, &w, EPS, &mut want).unwrap();
            let mut got = vec![0.0; x.len()];
            rms_norm(&k, &x, &w, EPS, &mut got).unwrap();
            assert_near(&format!("rms_norm {what}"), &got, &want, 1e-6, 1e-30);

            let mut in_place = x.clone();
            rms_norm_in_place(&k, &mut in_place, &w, EPS).unwrap();
            assert_bits_eq(&format!("rms_norm_in_place {what}"), &in_place, &got);

            let (mut xs, mut want) = (x.clone(), vec![0.0; x.len()]);
            add_rms_norm(&scalar(), &mut xs, &d, &w, EPS, &mut want).unwrap();
            let (mut xk, mut got) = (x.clone(), vec![0.0; x.len()]);
            add_rms_norm(&k, &mut xk, &d, &w, EPS, &mut got).unwrap();
            assert_bits_eq(&format!("add_rms_norm sum {what}"), &xk, &xs);
            assert_near(&format!("add_rms_norm {what}"), &got, &want, 1e-6, 1e-30);
        }
    }
}

#[test]
fn add_rms_norm_is_add_then_rms_norm() {
    let mut rng = rng(3);
    for isa in every_isa() {
        let k = table(isa);
        let (x, d, w) = (
            rows(&mut rng, 3, 100),
            rows(&mut rng, 3, 100),
            floats(&mut rng, 100),
        );
        let (mut fused, mut out) = (x.clone(), vec![0.0; x.len()]);
        add_rms_norm(&k, &mut fused, &d, &w, EPS, &mut out).unwrap();
        let (mut apart, mut want) = (x.clone(), vec![0.0; x.len()]);
        add_with(isa, &mut apart, &d).unwrap();
        rms_norm(&k, &apart, &w, EPS, &mut want).unwrap();
        assert_bits_eq(&format!("{} sum", isa.name()), &fused, &apart);
        assert_bits_eq(&format!("{} norm", isa.name()), &out, &want);
    }
}

#[test]
fn simd_add_matches_scalar_bit_for_bit() {
    let mut rng = rng(4);
    for isa in simd_isas() {
        for n in std::iter::once(0).chain(WIDTHS) {
            let (x, d) = (floats(&mut rng, n), floats(&mut rng, n));
            let (mut want, mut got) = (x.clone(), x.clone());
            add_with(Isa::Scalar, &mut want, &d).unwrap();
            add_with(isa, &mut got, &d).unwrap();
            assert_bits_eq(&format!("{} n {n}", isa.name()), &got, &want);
            assert_eq!(
                got.first(),
                x.first().zip(d.first()).map(|(a, b)| a + b).as_ref()
            );
        }
    }
}

/// cos and sin tables for `t` positions, as a model's rope cache holds them.
fn rope_tables(t: usize, head_dim: usize, first_pos: usize) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for p in first_pos..first_pos + t {
        for j in 0..half {
            let theta = p as f64 * 10000f64.powf(-2.0 * j as f64 / head_dim as f64);
            c.push(theta.cos() as f32);
            s.push(theta.sin() as f32);
        }
    }
    (c, s)
}

/// The rotation in f64 from the same f32 inputs, and for each value the
/// size of the products it sums (what the f32 rounding error scales with).
fn rope_f64(
    x: &[f32],
    heads: usize,
    head_dim: usize,
    c: &[f32],
    s: &[f32],
    interleaved: bool,
) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let (mut out, mut mag) = (x.to_vec(), vec![0.0f32; x.len()]);
    for (r, row) in x.chunks_exact(heads * head_dim).enumerate() {
        for h in 0..heads {
            for j in 0..half {
                let base = r * heads * head_dim + h * head_dim;
                let (i0, i1) = if interleaved {
                    (base + 2 * j, base + 2 * j + 1)
                } else {
                    (base + j, base + j + half)
                };
                let (a, b) = (
                    f64::from(row[i0 - r * heads * head_dim]),
                    f64::from(row[i1 - r * heads * head_dim]),
                );
                let (cj, sj) = (f64::from(c[r * half + j]), f64::from(s[r * half + j]));
                out[i0] = (a * cj - b * sj) as f32;
                out[i1] = (a * sj + b * cj) as f32;
                let m = ((a * cj).abs() + (b * sj).abs()).max((a * sj).abs() + (b * cj).abs());
                mag[i0] = m as f32;
                mag[i1] = m as f32;
            }
        }
    }
    (out, mag)
}

#[test]
fn rope_matches_f64_rotation_on_every_path() {
    let mut rng = rng(5);
    for isa in every_isa() {
        for interleaved in [false, true] {
            for head_dim in HEAD_DIMS {
                for heads in [1, 3] {
                    let t = 3;
                    let x = floats(&mut rng, t * heads * head_dim);
                    let (c, s) = rope_tables(t, head_dim, rng.random_range(0..4096));
                    let (want, mag) = rope_f64(&x, heads, head_dim, &c, &s, interleaved);
                    let mut got = x.clone();
                    rope_with(isa, &mut got, heads, head_dim, &c, &s, interleaved).unwrap();
                    for (i, ((g, w), m)) in got.iter().zip(&want).zip(&mag).enumerate() {
                        let tol = 2.0 * f32::EPSILON * m + 1e-30;
                        assert!(
                            (g - w).abs() <= tol,
                            "{} interleaved {interleaved} head_dim {head_dim} heads {heads} [{i}]: \
                             got {g:e}, want {w:e} (tolerance {tol:e})",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn simd_rope_matches_scalar_bit_for_bit() {
    let mut rng = rng(6);
    for isa in simd_isas() {
        for interleaved in [false, true] {
            for head_dim in HEAD_DIMS {
                let (t, heads) = (3, 2);
                let x = floats(&mut rng, t * heads * head_dim);
                let (c, s) = rope_tables(t, head_dim, 17);
                let (mut want, mut got) = (x.clone(), x.clone());
                rope_with(Isa::Scalar, &mut want, heads, head_dim, &c, &s, interleaved).unwrap();
                rope_with(isa, &mut got, heads, head_dim, &c, &s, interleaved).unwrap();
                let what = format!(
                    "{} interleaved {interleaved} head_dim {head_dim}",
                    isa.name()
                );
                assert_bits_eq(&what, &got, &want);
            }
        }
    }
}

fn silu_f64(g: f32, u: f32) -> f64 {
    let g = f64::from(g);
    g / (1.0 + (-g).exp()) * f64::from(u)
}

#[test]
fn simd_swiglu_matches_scalar_within_a_few_ulp() {
    let mut rng = rng(7);
    for isa in simd_isas() {
        for n in WIDTHS {
            for range in [1.0f32, 12.0, 100.0] {
                let g: Vec<f32> = floats(&mut rng, n).iter().map(|v| v * range).collect();
                let u = floats(&mut rng, n);
                let (mut want, mut got) = (g.clone(), g.clone());
                swiglu_with(Isa::Scalar, &mut want, &u).unwrap();
                swiglu_with(isa, &mut got, &u).unwrap();
                let what = format!("{} n {n} range {range}", isa.name());
                assert_near(&what, &got, &want, 4.0 * f32::EPSILON, 1e-37);
                let exact: Vec<f32> = g
                    .iter()
                    .zip(&u)
                    .map(|(&g, &u)| silu_f64(g, u) as f32)
                    .collect();
                assert_near(
                    &format!("{what} vs f64"),
                    &got,
                    &exact,
                    4.0 * f32::EPSILON,
                    1e-36, // e^-g overflows f32 below -88.72 on both paths
                );
            }
        }
    }
}

#[test]
fn swiglu_saturates_for_large_inputs_on_every_path() {
    for isa in every_isa() {
        let g = [
            -100.0,
            100.0,
            f32::NAN,
            1e30,
            -1e30,
            f32::MAX,
            -f32::MAX,
            f32::INFINITY,
            0.0,
            -88.0,
            89.0,
        ];
        let mut got = g;
        swiglu_with(isa, &mut got, &[1.0; 11]).unwrap();
        let what = isa.name();
        assert!(
            got[0] <= 0.0 && got[0] > -1e-30,
            "{what}: silu(-100) = {:e}",
            got[0]
        );
        assert_eq!(got[1], 100.0, "{what}: silu(100)");
        assert!(got[2].is_nan(), "{what}: silu(NaN) = {}", got[2]);
        assert_eq!(got[3], 1e30, "{what}: silu(1e30)");
        assert!(
            got[4] <= 0.0 && got[4] > -1e-30,
            "{what}: silu(-1e30) = {:e}",
            got[4]
        );
        assert_eq!(got[5], f32::MAX, "{what}: silu(MAX)");
        assert!(
            got[6] <= 0.0 && got[6] > -1e-30,
            "{what}: silu(-MAX) = {:e}",
            got[6]
        );
        assert_eq!(got[7], f32::INFINITY, "{what}: silu(inf)");
        assert_eq!(got[8], 0.0, "{what}: silu(0)");
        assert_near(
            what,
            &got[9..],
            &[-88.0 / (1.0 + 88f32.exp()), 89.0],
            4.0 * f32::EPSILON,
            1e-44,
        );
    }
}

/// Each op on three rows at once, and on each row alone, for every path:
/// the same bits.
#[test]
fn rows_alone_equal_rows_together() {
    let mut rng = rng(8);
    for isa in every_isa() {
        let k = table(isa);
        for width in [7, 33, 100, 896] {
            let (x, d, w) = (
                rows(&mut rng, 3, width),
                rows(&mut rng, 3, width),
                floats(&mut rng, width),
            );
            let what = format!("{} width {width}", isa.name());

            let mut whole = vec![0.0; x.len()];
            rms_norm(&k, &x, &w, EPS, &mut whole).unwrap();
            let mut parts = vec![0.0; x.len()];
            for (r, o) in x.chunks(width).zip(parts.chunks_mut(width)) {
                rms_norm(&k, r, &w, EPS, o).unwrap();
            }
            assert_bits_eq(&format!("rms_norm {what}"), &parts, &whole);

            let mut whole = x.clone();
            rms_norm_in_place(&k, &mut whole, &w, EPS).unwrap();
            let mut parts = x.clone();
            for r in parts.chunks_mut(width) {
                rms_norm_in_place(&k, r, &w, EPS).unwrap();
            }
            assert_bits_eq(&format!("rms_norm_in_place {what}"), &parts, &whole);

            let (mut xw, mut whole) = (x.clone(), vec![0.0; x.len()]);
            add_rms_norm(&k, &mut xw, &d, &w, EPS, &mut whole).unwrap();
            let (mut xp, mut parts) = (x.clone(), vec![0.0; x.len()]);
            for ((r, dr), o) in xp
                .chunks_mut(width)
                .zip(d.chunks(width))
                .zip(parts.chunks_mut(width))
            {
                add_rms_norm(&k, r, dr, &w, EPS, o).unwrap();
            }
            assert_bits_eq(&format!("add_rms_norm sum {what}"), &xp, &xw);
            assert_bits_eq(&format!("add_rms_norm {what}"), &parts, &whole);

            // SwiGLU has no rows; a row is a slice starting anywhere.
            let g: Vec<f32> = x.iter().map(|v| v * 8.0).collect();
            let mut whole = g.clone();
            swiglu_with(isa, &mut whole, &d).unwrap();
            let mut parts = g.clone();
            for (r, u) in parts.chunks_mut(width).zip(d.chunks(width)) {
                swiglu_with(isa, r, u).unwrap();
            }
            assert_bits_eq(&format!("swiglu {what}"), &parts, &whole);
        }
        for head_dim in HEAD_DIMS {
            for interleaved in [false, true] {
                let (t, heads) = (3, 3);
                let x = floats(&mut rng, t * heads * head_dim);
                let (c, s) = rope_tables(t, head_dim, 5);
                let mut whole = x.clone();
                rope_with(isa, &mut whole, heads, head_dim, &c, &s, interleaved).unwrap();
                let mut parts = x.clone();
                let half = head_dim / 2;
                for (i, r) in parts.chunks_mut(heads * head_dim).enumerate() {
                    let (ci, si) = (&c[i * half..(i + 1) * half], &s[i * half..(i + 1) * half]);
                    rope_with(isa, r, heads, head_dim, ci, si, interleaved).unwrap();
                }
                let what = format!(
                    "rope {} head_dim {head_dim} interleaved {interleaved}",
                    isa.name()
                );
                assert_bits_eq(&what, &parts, &whole);
            }
        }
    }
}

fn size_error(r: Result<(), KernelError>, what: &str) {
    match r {
        Err(KernelError::Size { what: w, .. }) => assert_eq!(w, what),
        other => panic!("expected a {what} size error, got {other:?}"),
    }
}

#[test]
fn mismatched_sizes_are_errors_on_every_path() {
    for isa in every_isa() {
        let k = table(isa);
        let (x, w) = (vec![1.0f32; 12], vec![1.0f32; 5]);
        let mut out = vec![0.0f32; 12];
        size_error(rms_norm(&k, &x, &w, EPS, &mut out), "rms_norm input");
        size_error(rms_norm(&k, &x, &[], EPS, &mut out), "rms_norm input");
        size_error(
            rms_norm(&k, &x, &w[..4], EPS, &mut out[..8]),
            "rms_norm output",
        );
        size_error(
            rms_norm_in_place(&k, &mut x.clone(), &w, EPS),
            "rms_norm input",
        );

        let mut xs = x.clone();
        let mut out = vec![7.0f32; 12];
        size_error(
            add_rms_norm(&k, &mut xs, &x[..11], &w[..4], EPS, &mut out),
            "add operand",
        );
        size_error(
            add_rms_norm(&k, &mut xs, &x, &w, EPS, &mut out),
            "rms_norm input",
        );
        size_error(
            add_rms_norm(&k, &mut xs, &x, &w[..4], EPS, &mut out[..8]),
            "rms_norm output",
        );
        assert_eq!(xs, x, "{}: add_rms_norm wrote x before failing", isa.name());
        assert_eq!(
            out,
            vec![7.0; 12],
            "{}: add_rms_norm wrote out before failing",
            isa.name()
        );

        size_error(add_with(isa, &mut xs, &x[..3]), "add operand");
        size_error(swiglu_with(isa, &mut xs, &x[..3]), "swiglu up");

        // 12 values: 2 rows of 2 heads of 3 would need an even head_dim.
        let (c, s) = (vec![1.0f32; 6], vec![0.0f32; 6]);
        size_error(
            rope_with(isa, &mut xs, 2, 3, &c, &s, false),
            "rope head_dim (even)",
        );
        size_error(
            rope_with(isa, &mut xs, 2, 0, &c, &s, false),
            "rope head_dim (even)",
        );
        size_error(rope_with(isa, &mut xs, 0, 2, &c, &s, true), "rope input");
        size_error(rope_with(isa, &mut xs, 5, 2, &c, &s, true), "rope input");
        size_error(
            rope_with(isa, &mut xs, 3, 4, &c, &s, true),
            "rope cos table",
        );
        size_error(
            rope_with(isa, &mut xs, 1, 2, &c, &s[..5], true),
            "rope sin table",
        );
        size_error(
            rope_with(isa, &mut xs, usize::MAX, 2, &c, &s, false),
            "rope input",
        );
    }
    // The ISA-picking forms check the same way.
    let mut x = vec![0.0f32; 4];
    size_error(add(&mut x, &[1.0; 3]), "add operand");
    size_error(swiglu(&mut x, &[1.0; 5]), "swiglu up");
    size_error(
        rope(&mut x, 1, 4, &[1.0; 3], &[0.0; 2], false),
        "rope cos table",
    );
}

#[test]
fn the_default_ops_follow_the_best_path() {
    let mut rng = rng(9);
    let isa = Kernels::best().isa;
    let (g, u) = (floats(&mut rng, 100), floats(&mut rng, 100));
    let (mut a, mut b) = (g.clone(), g.clone());
    swiglu(&mut a, &u).unwrap();
    swiglu_with(isa, &mut b, &u).unwrap();
    assert_bits_eq("swiglu", &a, &b);
    let (c, s) = rope_tables(1, 100, 3);
    let (mut a, mut b) = (g.clone(), g.clone());
    rope(&mut a, 1, 100, &c, &s, true).unwrap();
    rope_with(isa, &mut b, 1, 100, &c, &s, true).unwrap();
    assert_bits_eq("rope", &a, &b);
}
