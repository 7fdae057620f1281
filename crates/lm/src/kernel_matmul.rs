//! Quantized matrix products on huddle-kernels instead of candle's CPU
//! `QMatMul` (whose Q4_1 dot product is scalar), for decode steps and
//! prompts alike: the GGUF block bytes are borrowed from candle's `QTensor`
//! in place, activations are quantized once per input (shared by the
//! layers that read it, [`forward_many`]), and rows are split over one
//! process-wide [`ThreadPool`]. Each output row is computed by the same
//! arithmetic whatever rows come with it, so chunking never changes logits.

use std::cell::RefCell;
use std::sync::OnceLock;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Storage, Tensor};
use huddle_kernels::{Activations, ThreadPool, WeightType, Weights};

use crate::threads::{affinity_cpu_count, configured_threads, local_size_from_env, plan_threads};

/// The kernels' name for a candle block format they implement.
pub fn weight_type(dtype: GgmlDType) -> Option<WeightType> {
    match dtype {
        GgmlDType::Q4_0 => Some(WeightType::Q4_0),
        GgmlDType::Q4_1 => Some(WeightType::Q4_1),
        GgmlDType::Q8_0 => Some(WeightType::Q8_0),
        GgmlDType::Q4K => Some(WeightType::Q4K),
        GgmlDType::Q6K => Some(WeightType::Q6K),
        GgmlDType::F16 => Some(WeightType::F16),
        _ => None,
    }
}

/// Whether [`forward`] handles `q`: a CPU tensor of a kernel block format.
pub fn supports(q: &QTensor) -> bool {
    q.device().is_cpu() && weight_type(q.dtype()).is_some() && q.shape().dims().len() == 2
}

/// Threads for the kernel pool, decided like candle's: `--threads` (via
/// [`configured_threads`]) or `RAYON_NUM_THREADS` when given, else the
/// affinity mask split among this host's ranks.
fn pool_threads() -> usize {
    if let Some(n) = configured_threads() {
        return n;
    }
    let requested = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0);
    plan_threads(
        affinity_cpu_count().unwrap_or(1),
        local_size_from_env().unwrap_or(1),
        requested,
    )
}

/// One pool per process, created on first use so it sees the thread count
/// that `main` configured. Ranks running as threads of one process share
/// it; a call made while it is busy runs inline on the caller.
pub(crate) fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = pool_threads();
        tracing::debug!(threads, "kernel thread pool");
        ThreadPool::new(threads)
    })
}

thread_local! {
    // Reused so quantizing activations allocates only when shapes grow.
    static ACTS: RefCell<Activations> = RefCell::new(Activations::new());
}

fn kernel_err(what: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("quantized kernel matmul: {what}: {e}"))
}

/// `x[..., k] @ q[n, k]^T` into a new `[..., n]` f32 tensor (one output
/// allocation per call). `q` must pass [`supports`].
pub fn forward(q: &QTensor, x: &Tensor) -> candle_core::Result<Tensor> {
    forward_many(&[q], x)?
        .pop()
        .ok_or_else(|| kernel_err("product", "no output"))
}

/// [`forward`] for several weights reading the same input (q, k and v;
/// gate and up): `x` is quantized once for all of them (once per
/// activation format where their formats differ).
pub fn forward_many(qs: &[&QTensor], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    let dims = x.dims();
    let k = dims.last().copied().unwrap_or(0);
    let m = x.elem_count() / k.max(1);
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(kernel_err("input", "not on the CPU"));
    };
    let start = layout.start_offset();
    let xs = cpu
        .as_slice::<f32>()?
        .get(start..start + m * k)
        .ok_or_else(|| kernel_err("input", "storage shorter than its shape"))?;
    let mut bufs: Vec<Vec<f32>> = qs
        .iter()
        .map(|q| Ok(vec![0f32; m * q.shape().dims2()?.0]))
        .collect::<candle_core::Result<_>>()?;
    {
        let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(Vec::as_mut_slice).collect();
        forward_many_into(qs, xs, m, &mut outs)?;
    }
    bufs.into_iter()
        .map(|out| {
            let mut out_dims = dims.to_vec();
            if let Some(last) = out_dims.last_mut() {
                *last = out.len() / m.max(1);
            }
            Tensor::from_vec(out, out_dims, x.device())
        })
        .collect()
}

/// [`forward_many`] on slices: `xs` holds `m` rows of the weights' width,
/// `outs[i]` receives `m` rows of `qs[i]`'s height. Allocates nothing once
/// this thread's activation buffer is large enough.
pub fn forward_many_into(
    qs: &[&QTensor],
    xs: &[f32],
    m: usize,
    outs: &mut [&mut [f32]],
) -> candle_core::Result<()> {
    if qs.len() != outs.len() {
        return Err(kernel_err(
            "outputs",
            format!("{} weights, {} outputs", qs.len(), outs.len()),
        ));
    }
    let k = xs.len() / m.max(1);
    ACTS.with(|acts| {
        let mut acts = acts.borrow_mut();
        let mut quantized = None;
        for (q, out) in qs.iter().zip(outs.iter_mut()) {
            let ty = weight_type(q.dtype())
                .ok_or_else(|| kernel_err("weight format", format!("{:?}", q.dtype())))?;
            let (n, width) = q.shape().dims2()?;
            if width != k || xs.len() != m * k {
                return Err(kernel_err(
                    "shape",
                    format!(
                        "{m} input rows of {} values do not match weight width {width}",
                        xs.len() / m.max(1)
                    ),
                ));
            }
            if out.len() != m * n {
                return Err(kernel_err(
                    "shape",
                    format!("output of {} for {m} x {n}", out.len()),
                ));
            }
            if quantized != Some(ty.activation_type()) {
                acts.quantize(ty.activation_type(), xs, m, k)
                    .map_err(|e| kernel_err("activations", e))?;
                quantized = Some(ty.activation_type());
            }
            let bytes = q.data()?;
            let weights =
                Weights::from_bytes(ty, &bytes, n, k).map_err(|e| kernel_err("weights", e))?;
            // Each row's result is the same whatever rows come with it (the
            // kernels' row invariance), so a prompt in pieces matches it whole.
            huddle_kernels::matmul(pool(), &weights, &acts, out)
                .map_err(|e| kernel_err("product", e))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module};

    fn compare(dtype: GgmlDType, m: usize, n: usize, k: usize) {
        let w = Tensor::randn(0f32, 1., (n, k), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (1, m, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        assert!(supports(&q));
        let ours = forward(&q, &x).unwrap();
        let candle = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        assert_eq!(ours.dims(), candle.dims());
        let diff = (ours - &candle).unwrap().abs().unwrap().max_all().unwrap();
        let scale = candle.abs().unwrap().max_all().unwrap();
        let (diff, scale) = (
            diff.to_scalar::<f32>().unwrap(),
            scale.to_scalar::<f32>().unwrap(),
        );
        // Both sides quantize activations to 8 bits, not identically
        // (rounding, Q8_1's block sum): Q4_1 differs by up to ~1.5e-3 of
        // the scale over many seeds; a wrong kernel is off by O(1).
        assert!(
            diff <= 1e-2 * scale,
            "{dtype:?} m={m}: diff {diff} vs scale {scale}"
        );
    }

    #[test]
    fn q4_1_kernel_matches_candle_qmatmul() {
        compare(GgmlDType::Q4_1, 1, 96, 256);
        compare(GgmlDType::Q4_1, 5, 40, 128);
    }

    #[test]
    fn q8_0_kernel_matches_candle_qmatmul() {
        compare(GgmlDType::Q8_0, 1, 96, 256);
        compare(GgmlDType::Q8_0, 7, 33, 64);
    }

    #[test]
    fn k_quants_kernel_matches_candle_qmatmul() {
        compare(GgmlDType::Q4K, 3, 20, 512);
        compare(GgmlDType::Q6K, 3, 20, 256);
    }

    #[test]
    fn prompt_rows_do_not_depend_on_chunking() {
        let w = Tensor::randn(0f32, 1., (64, 512), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (16, 512), &Device::Cpu).unwrap();
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let whole = forward(&q, &x).unwrap();
            let head = forward(&q, &x.narrow(0, 0, 7).unwrap()).unwrap();
            let tail = forward(&q, &x.narrow(0, 7, 9).unwrap()).unwrap();
            let chunked = Tensor::cat(&[head, tail], 0).unwrap();
            assert_eq!(
                whole.to_vec2::<f32>().unwrap(),
                chunked.to_vec2::<f32>().unwrap(),
                "{dtype:?}"
            );
        }
    }

    #[test]
    fn shared_input_products_equal_separate_ones() {
        let x = Tensor::randn(0f32, 1., (5, 256), &Device::Cpu).unwrap();
        let qs: Vec<QTensor> = [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q6K]
            .into_iter()
            .map(|d| {
                let w = Tensor::randn(0f32, 1., (24, 256), &Device::Cpu).unwrap();
                QTensor::quantize(&w, d).unwrap()
            })
            .collect();
        let refs: Vec<&QTensor> = qs.iter().collect();
        let many = forward_many(&refs, &x).unwrap();
        for (q, got) in qs.iter().zip(&many) {
            let alone = forward(q, &x).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                alone.to_vec2::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn wrong_input_width_is_an_error() {
        let w = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::randn(0f32, 1., (2, 32), &Device::Cpu).unwrap();
        assert!(forward(&q, &x).is_err());
    }
}
