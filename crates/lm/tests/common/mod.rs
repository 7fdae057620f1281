//! Shared helpers of the model tests: fixture paths, reference logits,
//! the SmolLM2 model file.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(
        p.exists(),
        "missing test fixture {}: generate it with scripts/make_fixtures.py",
        p.display()
    );
    p
}

/// `tokens` and reference `logits` `[n, vocab]` of an expected.safetensors.
pub fn expected(path: &std::path::Path) -> (Vec<u32>, Tensor) {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tokens = t["tokens"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect();
    (tokens, t["logits"].clone())
}

/// (max |a - b|, max |b|).
pub fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "logit shapes differ");
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    (d.to_scalar::<f32>().unwrap(), m.to_scalar::<f32>().unwrap())
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel_tol: f32) {
    let (d, m) = diff(got, want);
    assert!(
        d <= rel_tol * m,
        "{what}: max abs diff {d} exceeds {rel_tol} * max|expected| ({m})"
    );
    eprintln!("{what}: max abs diff {d:.3e} (max|expected| {m:.3})");
}

pub fn smollm2() -> PathBuf {
    let p = std::env::var_os("HUDDLE_SMOLLM2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        p.exists(),
        "missing {}: run scripts/fetch-smollm2.sh (or set HUDDLE_SMOLLM2)",
        p.display()
    );
    p
}
