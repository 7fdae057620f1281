//! Matrix products against a row-by-row scalar reference, across formats,
//! shapes, instruction sets and pool sizes.

mod common;

use common::*;
use huddle_kernels::{
    Activations, Isa, KernelError, Kernels, ThreadPool, WeightType, Weights, matmul, matmul_with,
};

const TYPES: [WeightType; 7] = [
    WeightType::F32,
    WeightType::F16,
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q8_0,
    WeightType::Q4K,
    WeightType::Q6K,
];

fn min_cols(ty: WeightType) -> usize {
    ty.block_size().0.max(32)
}

/// out[i, j] computed one dot product at a time with the scalar kernels.
fn reference(weights: &Weights<'_>, acts: &Activations) -> Vec<f32> {
    let (m, n) = (acts.rows(), weights.rows());
    let scalar = Kernels::for_isa(Isa::Scalar).expect("scalar");
    let single = ThreadPool::new(1);
    let mut out = vec![0.0; m * n];
    matmul_with(&scalar, &single, weights, acts, &mut out).expect("valid shapes");
    out
}

fn check(ty: WeightType, m: usize, n: usize, k: usize, pools: &[ThreadPool], seed: u64) {
    let mut rng = rng(seed);
    let words = weight_bytes(&mut rng, ty, n, k).expect("whole blocks");
    let len = ty.row_bytes(k).expect("whole blocks") * n;
    let weights = Weights::from_bytes(ty, as_bytes(&words, len), n, k).expect("valid weights");
    let mut acts = Activations::new();
    acts.quantize(ty.activation_type(), &floats(&mut rng, m * k), m, k)
        .expect("valid activations");
    let want = reference(&weights, &acts);
    for pool in pools {
        for kernels in Isa::supported().into_iter().filter_map(Kernels::for_isa) {
            let mut out = vec![f32::NAN; m * n];
            matmul_with(&kernels, pool, &weights, &acts, &mut out).expect("valid shapes");
            for (idx, (g, w)) in out.iter().zip(&want).enumerate() {
                assert_close(
                    &format!(
                        "{} {} threads={} m={m} n={n} k={k} at {idx}",
                        ty.name(),
                        kernels.isa.name(),
                        pool.threads()
                    ),
                    *g,
                    *w,
                    k as f32 * 0.01,
                );
            }
        }
    }
}

#[test]
fn every_format_matches_reference_over_odd_shapes_and_pool_sizes() {
    let pools: Vec<ThreadPool> = (1..=4).map(ThreadPool::new).collect();
    for (t, ty) in TYPES.into_iter().enumerate() {
        let kmin = min_cols(ty);
        for (s, (m, n, k)) in [
            (1, 1, kmin),
            (1, 37, kmin),
            (1, 129, 3 * kmin),
            (3, 70, 2 * kmin),
            (5, 16, kmin),
            (2, 33, 2 * kmin),
            (4, 20, 3 * kmin),
        ]
        .into_iter()
        .enumerate()
        {
            check(ty, m, n, k, &pools, (t * 10 + s) as u64);
        }
    }
}

#[test]
fn quantized_matvec_tracks_float_matvec() {
    // End to end: quantization error stays small next to the f32 product
    // (|exact| is about 7.5 here; a wrong element order gives errors of that size).
    let (n, k) = (8, 512);
    // weight_bytes draws the same floats from the same seed.
    let x = floats(&mut rng(99), n * k);
    let a = floats(&mut rng(100), k);
    let exact: Vec<f32> = x
        .chunks(k)
        .map(|r| r.iter().zip(&a).map(|(p, q)| p * q).sum())
        .collect();
    let pool = ThreadPool::new(2);
    for (ty, tol) in [
        (WeightType::F32, 0.25),
        (WeightType::Q8_0, 0.25),
        (WeightType::Q6K, 0.6),
        (WeightType::Q4_1, 2.5),
        (WeightType::Q4_0, 2.5),
        (WeightType::Q4K, 2.5),
    ] {
        let words = weight_bytes(&mut rng(99), ty, n, k).expect("whole blocks");
        let w = Weights::from_bytes(
            ty,
            as_bytes(&words, ty.row_bytes(k).expect("row") * n),
            n,
            k,
        )
        .expect("weights");
        let mut acts = Activations::new();
        acts.quantize(ty.activation_type(), &a, 1, k).expect("acts");
        let mut out = vec![0.0; n];
        matmul(&pool, &w, &acts, &mut out).expect("matmul");
        for (g, e) in out.iter().zip(&exact) {
            assert!((g - e).abs() < tol, "{}: got {g}, exact {e}", ty.name());
        }
    }
}

#[test]
fn activation_buffer_is_reused_across_types_and_shapes() {
    let mut rng = rng(5);
    let mut acts = Activations::new();
    for (ty, rows, cols) in [
        (huddle_kernels::ActivationType::Q8_0, 2, 64),
        (huddle_kernels::ActivationType::Q8K, 1, 256),
        (huddle_kernels::ActivationType::Q8_0, 1, 32),
        (huddle_kernels::ActivationType::F32, 3, 5),
    ] {
        acts.quantize(ty, &floats(&mut rng, rows * cols), rows, cols)
            .expect("valid");
        assert_eq!(
            (acts.activation_type(), acts.rows(), acts.cols()),
            (ty, rows, cols)
        );
    }
}

#[test]
fn mismatched_inputs_are_typed_errors() {
    let pool = ThreadPool::new(1);
    let words = weight_bytes(&mut rng(1), WeightType::Q4_1, 4, 64).expect("blocks");
    let bytes = as_bytes(&words, 4 * 40);
    let w = Weights::from_bytes(WeightType::Q4_1, bytes, 4, 64).expect("weights");
    let mut acts = Activations::new();

    acts.quantize(WeightType::Q4_0.activation_type(), &[0.5; 64], 1, 64)
        .expect("acts");
    let err = matmul(&pool, &w, &acts, &mut [0.0; 4]).unwrap_err();
    assert!(
        matches!(
            err,
            KernelError::ActivationType {
                expected: "Q8_1",
                ..
            }
        ),
        "{err}"
    );

    acts.quantize(WeightType::Q4_1.activation_type(), &[0.5; 32], 1, 32)
        .expect("acts");
    assert_eq!(
        matmul(&pool, &w, &acts, &mut [0.0; 4]),
        Err(KernelError::InnerDim {
            weights: 64,
            activations: 32
        })
    );

    acts.quantize(WeightType::Q4_1.activation_type(), &[0.5; 64], 1, 64)
        .expect("acts");
    assert!(matches!(
        matmul(&pool, &w, &acts, &mut [0.0; 3]),
        Err(KernelError::Size { .. })
    ));

    assert!(matches!(
        Weights::from_bytes(WeightType::Q4_1, bytes, 4, 48),
        Err(KernelError::RowLength { .. })
    ));
    assert!(matches!(
        Weights::from_bytes(WeightType::Q4_1, &bytes[..100], 4, 64),
        Err(KernelError::Size { .. })
    ));
    assert!(matches!(
        acts.quantize(WeightType::Q4K.activation_type(), &[0.0; 128], 1, 128),
        Err(KernelError::RowLength { .. })
    ));
    assert!(matches!(
        acts.quantize(WeightType::Q8_0.activation_type(), &[0.0; 64], 1, 32),
        Err(KernelError::Size { .. })
    ));
}

#[test]
fn each_row_of_a_product_equals_that_row_alone_bit_for_bit() {
    // Rows come in fours and tiles of 16; 37 rows exercise both remainders.
    let (m, n) = (37, 24);
    let pool = ThreadPool::new(3);
    for (t, ty) in TYPES.into_iter().enumerate() {
        let k = 3 * min_cols(ty);
        let mut rng = rng(200 + t as u64);
        let words = weight_bytes(&mut rng, ty, n, k).expect("whole blocks");
        let len = ty.row_bytes(k).expect("whole blocks") * n;
        let weights = Weights::from_bytes(ty, as_bytes(&words, len), n, k).expect("weights");
        let x = floats(&mut rng, m * k);
        for kernels in Isa::supported().into_iter().filter_map(Kernels::for_isa) {
            let mut acts = Activations::new();
            acts.quantize(ty.activation_type(), &x, m, k).expect("acts");
            let mut all = vec![0.0; m * n];
            matmul_with(&kernels, &pool, &weights, &acts, &mut all).expect("matmul");
            for i in 0..m {
                acts.quantize(ty.activation_type(), &x[i * k..(i + 1) * k], 1, k)
                    .expect("acts");
                let mut one = vec![0.0; n];
                matmul_with(&kernels, &pool, &weights, &acts, &mut one).expect("matmul");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&all[i * n..(i + 1) * n]),
                    bits(&one),
                    "{} {} row {i}",
                    ty.name(),
                    kernels.isa.name()
                );
            }
        }
    }
}
