//! Matrix-vector (and, with `--m N`, matrix-matrix) throughput for the
//! shapes of SmolLM2-135M (Q4_1 blocks, Q8_0 tied head, as in the
//! Q4_1 GGUF) and Qwen2.5-0.5B (Q8_0 and F16).
//!
//! cargo run --release -p huddle-kernels --example matvec -- [--threads 1,2] [--model smollm|qwen] [--m 1] [--repeats 5]
//!
//! Prints, per shape and thread count, microseconds per call and weight
//! bytes streamed per second: the median over repeats, then the best, and
//! (one thread) the best in the caller's CPU time.
//! `HUDDLE_KERNEL_ISA=scalar` measures the portable path.

use std::time::Instant;

use half::f16;
use huddle_kernels::block::{
    Block, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, block_bytes,
};
use huddle_kernels::quantize::{
    quantize_row_q4_0, quantize_row_q4_1, quantize_row_q4_k, quantize_row_q6_k, quantize_row_q8_0,
};
use huddle_kernels::{Activations, Isa, KernelError, ThreadPool, WeightType, Weights, matmul};

struct Shape {
    model: &'static str,
    tensor: &'static str,
    ty: WeightType,
    n: usize,
    k: usize,
}

fn shapes() -> Vec<Shape> {
    let mut v = Vec::new();
    let mut add = |model, tensor, ty, n, k| {
        v.push(Shape {
            model,
            tensor,
            ty,
            n,
            k,
        })
    };
    use WeightType::*;
    for ty in [Q4_1, Q4_0, Q8_0] {
        add("smollm2-135m", "q/o", ty, 576, 576);
        add("smollm2-135m", "k/v", ty, 192, 576);
        add("smollm2-135m", "gate/up", ty, 1536, 576);
        add("smollm2-135m", "down", ty, 576, 1536);
    }
    add("smollm2-135m", "head", Q8_0, 49152, 576);
    for ty in [Q8_0, F16] {
        add("qwen2.5-0.5b", "q/o", ty, 896, 896);
        add("qwen2.5-0.5b", "k/v", ty, 128, 896);
        add("qwen2.5-0.5b", "gate/up", ty, 4864, 896);
        add("qwen2.5-0.5b", "down", ty, 896, 4864);
        add("qwen2.5-0.5b", "head", ty, 151936, 896);
    }
    for ty in [Q4K, Q6K] {
        add("k-quants", "gate/up", ty, 4864, 1024);
        add("k-quants", "down", ty, 1024, 4864);
    }
    v
}

/// Deterministic pseudo-random floats in [-1, 1) without a dependency.
fn fill_row(seed: &mut u64, row: &mut [f32]) {
    for v in row {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *v = ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
    }
}

fn quantized_rows<B: Block>(
    n: usize,
    k: usize,
    quantize: fn(&[f32], &mut [B]) -> Result<(), KernelError>,
) -> Result<Vec<u8>, KernelError> {
    let mut seed = 1;
    let mut row = vec![0.0; k];
    let mut blocks = vec![B::default(); k / B::ELEMENTS];
    let mut out = Vec::with_capacity(n * size_of_val(&blocks[..]));
    for _ in 0..n {
        fill_row(&mut seed, &mut row);
        quantize(&row, &mut blocks)?;
        out.extend_from_slice(block_bytes(&blocks));
    }
    Ok(out)
}

fn weight_bytes(ty: WeightType, n: usize, k: usize) -> Result<Vec<u8>, KernelError> {
    match ty {
        WeightType::F32 | WeightType::F16 => {
            let mut seed = 1;
            let mut row = vec![0.0; k];
            let mut out = Vec::new();
            for _ in 0..n {
                fill_row(&mut seed, &mut row);
                for v in &row {
                    if ty == WeightType::F32 {
                        out.extend_from_slice(&v.to_le_bytes());
                    } else {
                        out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
                    }
                }
            }
            Ok(out)
        }
        WeightType::Q4_0 => quantized_rows::<BlockQ4_0>(n, k, quantize_row_q4_0),
        WeightType::Q4_1 => quantized_rows::<BlockQ4_1>(n, k, quantize_row_q4_1),
        WeightType::Q8_0 => quantized_rows::<BlockQ8_0>(n, k, quantize_row_q8_0),
        WeightType::Q4K => quantized_rows::<BlockQ4K>(n, k, quantize_row_q4_k),
        WeightType::Q6K => quantized_rows::<BlockQ6K>(n, k, quantize_row_q6_k),
    }
}

/// Copies into a u64 buffer so the bytes are as aligned as a mapped GGUF's.
fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: words has room for bytes.len() bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    words
}

/// (median, best) of the samples: the median for the report, the best as
/// the least disturbed run on a busy machine.
fn median_and_best(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

struct Options {
    threads: Vec<usize>,
    model: Option<String>,
    m: usize,
    repeats: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        threads: vec![1, 2],
        model: None,
        m: 1,
        repeats: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--threads" => {
                o.threads = value()?
                    .split(',')
                    .map(|t| t.parse().map_err(|_| format!("bad thread count {t:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--model" => o.model = Some(value()?),
            "--m" => o.m = value()?.parse().map_err(|_| "bad --m".to_string())?,
            "--repeats" => o.repeats = value()?.parse().map_err(|_| "bad --repeats".to_string())?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = parse_args()?;
    println!(
        "isa={} m={} (median of {} repeats)",
        Isa::detect().name(),
        opts.m,
        opts.repeats.max(1)
    );
    println!(
        "{:<14} {:<8} {:<5} {:>7} {:>6} {:>3} {:>10} {:>8} {:>10} {:>8} {:>8}",
        "model",
        "tensor",
        "type",
        "n",
        "k",
        "thr",
        "us/call",
        "GB/s",
        "best us",
        "best GB/s",
        "cpu us"
    );
    let pools: Vec<ThreadPool> = opts.threads.iter().map(|&t| ThreadPool::new(t)).collect();
    for s in shapes() {
        if opts.model.as_deref().is_some_and(|m| !s.model.contains(m)) {
            continue;
        }
        let words = aligned(&weight_bytes(s.ty, s.n, s.k)?);
        let len = s.ty.row_bytes(s.k)? * s.n;
        // SAFETY: words holds at least len initialised bytes.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) };
        let weights = Weights::from_bytes(s.ty, bytes, s.n, s.k)?;
        let mut x = vec![0.0; opts.m * s.k];
        fill_row(&mut 7, &mut x);
        let mut acts = Activations::new();
        acts.quantize(s.ty.activation_type(), &x, opts.m, s.k)?;
        let mut out = vec![0.0; opts.m * s.n];
        for pool in &pools {
            // Enough calls per repeat to run ~40 ms, so timer noise is small.
            let start = Instant::now();
            matmul(pool, &weights, &acts, &mut out)?;
            let once = start.elapsed().as_secs_f64().max(1e-7);
            let iters = ((0.04 / once) as usize).clamp(1, 100_000);
            let mut samples = Vec::new();
            let mut cpu_samples = Vec::new();
            for _ in 0..opts.repeats.max(1) {
                let (start, cpu_start) = (Instant::now(), thread_cpu_seconds());
                for _ in 0..iters {
                    matmul(pool, &weights, &acts, &mut out)?;
                }
                samples.push(start.elapsed().as_secs_f64() / iters as f64);
                cpu_samples.push((thread_cpu_seconds() - cpu_start) / iters as f64);
            }
            let (t, best) = median_and_best(samples);
            // With one thread, the caller's CPU time leaves out time spent
            // descheduled by other load: the steadiest number on a busy box.
            let cpu = if pool.threads() == 1 {
                median_and_best(cpu_samples).1 * 1e6
            } else {
                f64::NAN
            };
            println!(
                "{:<14} {:<8} {:<5} {:>7} {:>6} {:>3} {:>10.2} {:>8.2} {:>10.2} {:>8.2} {:>8.2}",
                s.model,
                s.tensor,
                s.ty.name(),
                s.n,
                s.k,
                pool.threads(),
                t * 1e6,
                len as f64 / t / 1e9,
                best * 1e6,
                len as f64 / best / 1e9,
                cpu
            );
        }
    }
    Ok(())
}
