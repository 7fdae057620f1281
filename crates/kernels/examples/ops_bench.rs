//! Throughput of the layer ops (RMSNorm, residual add + RMSNorm, RoPE,
//! SwiGLU) on every instruction set this CPU runs, for the shapes of
//! SmolLM2-135M and Qwen2.5-0.5B.
//!
//! cargo run --release -p huddle-kernels --example ops_bench -- [--m 1,16] [--repeats 5]
//!
//! Prints, per op, shape and path, nanoseconds per call (the mean over a
//! ~20 ms batch of calls: the median over repeats, then the best) and the
//! bytes read and written per second.

use std::hint::black_box;
use std::time::Instant;

use huddle_kernels::ops::*;
use huddle_kernels::{Isa, KernelError, Kernels};

struct Model {
    name: &'static str,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
}

const MODELS: [Model; 2] = [
    Model {
        name: "smollm2-135m",
        hidden: 576,
        heads: 9,
        head_dim: 64,
        intermediate: 1536,
    },
    Model {
        name: "qwen2.5-0.5b",
        hidden: 896,
        heads: 14,
        head_dim: 64,
        intermediate: 4864,
    },
];

/// Nanoseconds per call of `f`: the median and the best over `repeats`
/// batches.
fn time(
    repeats: usize,
    mut f: impl FnMut() -> Result<(), KernelError>,
) -> Result<(f64, f64), KernelError> {
    f()?;
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_millis() < 5 {
        f()?;
        calls += 1;
    }
    let per_batch = (calls * 4).max(1);
    let mut runs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        for _ in 0..per_batch {
            f()?;
        }
        runs.push(t.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    runs.sort_by(f64::total_cmp);
    Ok((runs[runs.len() / 2], runs[0]))
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A cheap deterministic spread in [-4, 4); the ops' speed does not
    // depend on the values.
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1u32 << 21) as f32
                - 4.0
        })
        .collect()
}

fn print(op: &str, model: &Model, m: usize, isa: Isa, (median, best): (f64, f64), bytes: usize) {
    println!(
        "{op:<16} {:<13} m={m:<3} {:<6} {median:>9.0} ns/call {:>6.1} GB/s (best {best:>9.0} ns, {:>6.1} GB/s)",
        model.name,
        isa.name(),
        bytes as f64 / median,
        bytes as f64 / best,
    );
}

fn bench(model: &Model, m: usize, isa: Isa, repeats: usize) -> Result<(), KernelError> {
    let Some(k) = Kernels::for_isa(isa) else {
        return Ok(());
    };
    let (h, hd, heads, inter) = (
        model.hidden,
        model.head_dim,
        model.heads,
        model.intermediate,
    );
    let x = values(m * h, 1);
    let w = values(h, 2);
    let mut out = vec![0.0f32; m * h];

    let ns = time(repeats, || rms_norm(&k, black_box(&x), &w, 1e-6, &mut out))?;
    print("rms_norm", model, m, isa, ns, 4 * (2 * m * h + h));

    let mut xs = x.clone();
    let d: Vec<f32> = x.iter().map(|v| v * 1e-7).collect();
    let ns = time(repeats, || {
        add_rms_norm(&k, &mut xs, black_box(&d), &w, 1e-6, &mut out)
    })?;
    print("add_rms_norm", model, m, isa, ns, 4 * (4 * m * h + h));

    let mut q = values(m * heads * hd, 3);
    let half = hd / 2;
    let c: Vec<f32> = values(m * half, 4)
        .iter()
        .map(|v| (v * 0.3).cos())
        .collect();
    let s: Vec<f32> = values(m * half, 4)
        .iter()
        .map(|v| (v * 0.3).sin())
        .collect();
    for (name, interleaved) in [("rope half", false), ("rope interleaved", true)] {
        let ns = time(repeats, || {
            rope_with(isa, &mut q, heads, hd, &c, &s, interleaved)
        })?;
        print(
            name,
            model,
            m,
            isa,
            ns,
            4 * (2 * m * heads * hd + 2 * m * half),
        );
    }

    let g0 = values(m * inter, 5);
    let u = values(m * inter, 6);
    let mut g = g0.clone();
    // Refresh the gate so that repeated calls do not drive it to 0 or inf.
    let ns = time(repeats, || {
        g.copy_from_slice(&g0);
        swiglu_with(isa, &mut g, black_box(&u))
    })?;
    print("swiglu (+copy)", model, m, isa, ns, 4 * 4 * m * inter);
    Ok(())
}

fn parse_list(s: &str, flag: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{flag} takes comma-separated whole numbers, got {s:?}"))
        })
        .collect()
}

fn main() {
    let mut ms = vec![1, 16];
    let mut repeats = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value) {
            ("--m", Some(v)) => parse_list(&v, "--m").map(|v| ms = v),
            ("--repeats", Some(v)) => parse_list(&v, "--repeats").map(|v| repeats = v[0].max(1)),
            (flag, _) => Err(format!(
                "unknown or incomplete option {flag:?}; usage: ops_bench [--m 1,16] [--repeats 5]"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
    println!(
        "paths: {:?} (best: {})",
        Isa::supported(),
        Kernels::best().isa.name()
    );
    for model in &MODELS {
        for &m in &ms {
            for isa in Isa::supported() {
                if let Err(e) = bench(model, m, isa, repeats) {
                    eprintln!("error: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}
