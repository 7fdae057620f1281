//! The one linear layer every model uses: float or GGML-quantized weight,
//! optional bias, built from a weight-source request.
//!
//! It is also the sharded linear of tensor parallelism (MLX's two
//! strategies): model code says how each layer splits ([`Split`]) and which
//! range is this rank's ([`Linear::load_part`]); a `Split::Input` layer
//! sums its partial outputs over the tensor group in place, on the freshly
//! computed output's own storage. A single process reads everything.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use huddle_comm::Group;

use crate::error::LmError;
use crate::kernel_matmul;
use crate::model::Quantize;
use crate::tp::{self, TpReduce, all_sum_in_place};
use crate::weights::{Loader, Slice, Weight};

/// How a layer divides across tensor-parallel ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Output features divided (all-to-sharded): q, k, v, gate, up.
    Output,
    /// Input features divided, partial outputs summed across ranks
    /// (sharded-to-all): o, down.
    Input,
    /// Held whole by every rank: routers, the output head.
    Whole,
}

/// This process's place in a tensor-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { rank: 0, size: 1 };

    /// The part of a `[out_dim, in_dim]` weight this rank reads for `split`;
    /// the error says which dimension does not divide evenly.
    pub fn slice(&self, split: Split, out_dim: usize, in_dim: usize) -> Result<Slice, String> {
        if self.size <= 1 || split == Split::Whole {
            return Ok(Slice::Full);
        }
        let (dim, name) = match split {
            Split::Output => (out_dim, "output"),
            Split::Input => (in_dim, "input"),
            Split::Whole => return Ok(Slice::Full),
        };
        if !dim.is_multiple_of(self.size) {
            return Err(format!(
                "{dim} {name} features do not split evenly over {} ranks",
                self.size
            ));
        }
        let part = dim / self.size;
        let range = self.rank * part..(self.rank + 1) * part;
        Ok(match split {
            Split::Output => Slice::Rows(range),
            _ => Slice::Cols(range),
        })
    }
}

#[derive(Debug, Clone)]
enum LinearWeight {
    /// `[out, in]`, f32.
    Float(Tensor),
    /// GGML blocks; CPU tensors of the formats huddle-kernels implements
    /// are multiplied there ([`kernel_matmul`]), the rest by candle.
    Quantized(QMatMul),
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Vec<f32>>,
    /// Set on a `Split::Input` layer of a tensor group: its partial
    /// outputs are summed over the group (sharded-to-all).
    reduce: Option<Group>,
    /// Set instead on a `Split::Input` layer in [`TpReduce::Gather`] mode:
    /// this rank holds whole rows of the weight.
    gather: Option<Gather>,
}

/// A sharded-to-all layer computed exactly ([`crate::tp::reduce`]).
#[derive(Debug, Clone)]
struct Gather {
    group: Group,
    /// Input features each rank holds, in rank order.
    inputs: Vec<usize>,
    /// Output features (weight rows) each rank computes.
    outputs: Vec<usize>,
}

thread_local! {
    // The gathered input, this rank's output rows, and gather scratch.
    static GATHER_BUFS: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// candle's `QMatMul::from_arc` turns F16 blocks into an f32 tensor; the
/// kernels multiply them as they are, at half the memory traffic. Other
/// formats go through `from_arc`, which keeps them quantized unless
/// `CANDLE_DEQUANTIZE_ALL` asks otherwise.
fn qmatmul(q: Arc<QTensor>) -> candle_core::Result<QMatMul> {
    if q.dtype() == GgmlDType::F16 && kernel_matmul::supports(&q) {
        Ok(QMatMul::QTensor(q))
    } else {
        QMatMul::from_arc(q)
    }
}

/// Rows from which an F16 product is faster widened to f32 for candle's
/// gemm (compute-bound) than on the kernels' f16 dot (built for decode's
/// memory-bound rows). Float results differ only in summation order.
const F16_GEMM_ROWS: usize = 16;

/// `q` when huddle-kernels should multiply `x` by it.
fn kernel_weight<'a>(q: &'a QTensor, x: &Tensor) -> Option<&'a QTensor> {
    let width = x.dims().last().copied().unwrap_or(0).max(1);
    kernel_weight_for(q, x.elem_count() / width)
}

/// `q` when huddle-kernels should multiply `rows` activation rows by it.
fn kernel_weight_for(q: &QTensor, rows: usize) -> Option<&QTensor> {
    let wide_f16 = q.dtype() == GgmlDType::F16 && rows >= F16_GEMM_ROWS;
    (kernel_matmul::supports(q) && !wide_f16).then_some(q)
}

/// A bias tensor's values.
fn bias_values(bias: Option<&Tensor>) -> candle_core::Result<Option<Vec<f32>>> {
    bias.map(|b| {
        b.flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()
    })
    .transpose()
}

/// `x[..., in] @ w[out, in]^T` with candle's f32 gemm.
fn float_forward(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dims = x.dims();
    if dims.len() == 2 {
        return x.matmul(&w.t()?);
    }
    let in_dim = dims.last().copied().unwrap_or(0);
    let mut out_dims = dims.to_vec();
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    x.reshape(((), in_dim))?.matmul(&w.t()?)?.reshape(out_dims)
}

impl Linear {
    /// Loads `{prefix}.weight` (stored `[out_dim, in_dim]`) and, when `bias`,
    /// `{prefix}.bias`: this rank's part of them for `split`.
    pub fn load(
        loader: &mut Loader,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        split: Split,
    ) -> Result<Linear, LmError> {
        let slice = loader
            .shard()
            .slice(split, out_dim, in_dim)
            .map_err(|why| LmError::BadSlice {
                path: loader.path().to_path_buf(),
                tensor: format!("{prefix}.weight"),
                slice: format!("{split:?} split"),
                why,
            })?;
        Linear::load_slice(loader, prefix, in_dim, out_dim, bias, &slice)
    }

    /// Like [`Linear::load`] with an explicit slice. A row slice takes the
    /// matching bias entries; a column slice keeps the whole bias.
    pub fn load_slice(
        loader: &mut Loader,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        slice: &Slice,
    ) -> Result<Linear, LmError> {
        let weight = loader.weight(&format!("{prefix}.weight"), &[out_dim, in_dim], slice)?;
        let bias = if bias {
            let bias_slice = match slice {
                Slice::Rows(r) => Slice::Rows(r.clone()),
                Slice::Full | Slice::Cols(_) => Slice::Full,
            };
            let b = loader.weight(&format!("{prefix}.bias"), &[out_dim], &bias_slice)?;
            Some(b.into_float()?)
        } else {
            None
        };
        Ok(Linear::from_weight(weight, bias, loader.quantize())?)
    }

    /// Wraps a loaded weight; float weights are quantized when asked and
    /// their input width is whole GGML blocks (else they stay float).
    pub fn from_weight(
        weight: Weight,
        bias: Option<Tensor>,
        quantize: Option<Quantize>,
    ) -> candle_core::Result<Linear> {
        // A float GGUF matrix arrives as an F16 QTensor: asked to quantize,
        // it goes the float way; else it stays f16 for the kernels.
        let weight = match (weight, quantize) {
            (Weight::Quantized(q), Some(_)) if q.dtype() == GgmlDType::F16 => {
                Weight::Float(q.dequantize(&q.device())?)
            }
            (w, _) => w,
        };
        let weight = match (weight, quantize) {
            (Weight::Quantized(q), _) => LinearWeight::Quantized(qmatmul(Arc::new(q))?),
            (Weight::Float(t), Some(q)) => {
                let dtype = match q {
                    Quantize::Q8 => GgmlDType::Q8_0,
                    Quantize::Q4 => GgmlDType::Q4_0,
                };
                let in_dim = t.dims().last().copied().unwrap_or(0);
                if in_dim.is_multiple_of(dtype.block_size()) && in_dim > 0 {
                    let q = QTensor::quantize(&t, dtype)?;
                    LinearWeight::Quantized(QMatMul::from_qtensor(q)?)
                } else {
                    tracing::debug!(in_dim, "input width is not whole blocks: kept float");
                    LinearWeight::Float(t)
                }
            }
            (Weight::Float(t), None) => LinearWeight::Float(t),
        };
        Ok(Linear {
            weight,
            bias: bias_values(bias.as_ref())?,
            reduce: None,
            gather: None,
        })
    }

    /// This rank's part of a layer split over the loader's tensor group:
    /// `range` counts output features for `Split::Output` (all-to-sharded:
    /// those rows, their bias entries, no communication) and input features
    /// for `Split::Input` (sharded-to-all: those columns, then all_sum; the
    /// bias is added once, after the sum).
    ///
    /// A column range of a quantized tensor that does not fall on its block
    /// boundaries is read as the whole blocks around it, dequantized and cut
    /// to f32: exact weights, but f32 matmuls (more memory, and not the
    /// quantized kernels' rounding), so callers pick aligned ranges where
    /// they can (heads whole; MLP widths on blocks).
    pub fn load_part(
        loader: &mut Loader,
        prefix: &str,
        (in_dim, out_dim): (usize, usize),
        bias: bool,
        split: Split,
        range: Range<usize>,
    ) -> Result<Linear, LmError> {
        let name = format!("{prefix}.weight");
        let whole = match split {
            Split::Output => range == (0..out_dim),
            Split::Input => range == (0..in_dim),
            Split::Whole => true,
        };
        if whole {
            let mut l = Linear::load_slice(loader, prefix, in_dim, out_dim, bias, &Slice::Full)?;
            if split == Split::Input && loader.group().size() > 1 {
                l.reduce = Some(loader.group().clone());
            }
            return Ok(l);
        }
        if split == Split::Output {
            return Linear::load_slice(loader, prefix, in_dim, out_dim, bias, &Slice::Rows(range));
        }
        let block = loader.block_size(&name);
        let quantized = block > 1 || loader.quantize().is_some();
        if quantized && loader.tp_reduce() == TpReduce::Gather {
            return Linear::load_gathered(loader, prefix, (in_dim, out_dim), bias, range);
        }
        let aligned = range.start.is_multiple_of(block)
            && (range.end.is_multiple_of(block) || range.end == in_dim);
        let mut l = if aligned {
            Linear::load_slice(loader, prefix, in_dim, out_dim, bias, &Slice::Cols(range))?
        } else {
            tracing::debug!(
                tensor = name,
                ?range,
                block,
                "unaligned column slice: dequantized"
            );
            // Read the enclosing whole blocks only, then cut in f32.
            let lo = range.start / block * block;
            let hi = range.end.div_ceil(block).saturating_mul(block).min(in_dim);
            let w = loader
                .weight(&name, &[out_dim, in_dim], &Slice::Cols(lo..hi))?
                .into_float()?
                .narrow(1, range.start - lo, range.len())?
                .contiguous()?;
            let b = if bias {
                Some(loader.float(&format!("{prefix}.bias"), &[out_dim])?)
            } else {
                None
            };
            Linear::from_weight(Weight::Float(w), b, loader.quantize())?
        };
        l.reduce = Some(loader.group().clone());
        Ok(l)
    }

    /// A sharded-to-all layer in [`TpReduce::Gather`] mode: whole rows of
    /// the weight (this rank's balanced share of the output features) and
    /// the whole bias, with every rank's input width (`range` is this
    /// rank's) exchanged once here.
    fn load_gathered(
        loader: &mut Loader,
        prefix: &str,
        (in_dim, out_dim): (usize, usize),
        bias: bool,
        range: Range<usize>,
    ) -> Result<Linear, LmError> {
        let group = loader.group().clone();
        let inputs = tp::reduce::widths(&group, range.len())?;
        if inputs.iter().sum::<usize>() != in_dim {
            return Err(LmError::Unsplittable {
                ranks: group.size(),
                why: format!(
                    "{prefix}: the ranks' input parts {inputs:?} do not add up to {in_dim}"
                ),
            });
        }
        let (size, rank) = (group.size(), group.rank());
        let outputs = (0..size)
            .map(|r| tp::balanced(out_dim, size, r).len())
            .collect();
        let rows = Slice::Rows(tp::balanced(out_dim, size, rank));
        let mut l = Linear::load_slice(loader, prefix, in_dim, out_dim, false, &rows)?;
        if bias {
            let b = loader.float(&format!("{prefix}.bias"), &[out_dim])?;
            l.bias = bias_values(Some(&b))?;
        }
        l.gather = Some(Gather {
            group,
            inputs,
            outputs,
        });
        Ok(l)
    }

    /// A bias-free layer over a quantized tensor shared with another user
    /// (an output head tied to a GGUF embedding table).
    pub fn from_shared_qtensor(q: std::sync::Arc<QTensor>) -> candle_core::Result<Linear> {
        Ok(Linear {
            weight: LinearWeight::Quantized(qmatmul(q)?),
            bias: None,
            reduce: None,
            gather: None,
        })
    }

    /// `x`: `[..., in]`, contiguous, f32. Returns `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.gather.is_some() {
            let dims = x.dims();
            let k = dims.last().copied().unwrap_or(0).max(1);
            let m = x.elem_count() / k;
            let xs = x
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1::<f32>()?;
            let n: usize = self.gather.as_ref().map_or(0, |g| g.outputs.iter().sum());
            let mut out = vec![0f32; m * n];
            self.forward_into(&xs, m, &mut out)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let mut out_dims = dims.to_vec();
            if let Some(last) = out_dims.last_mut() {
                *last = n;
            }
            return Tensor::from_vec(out, out_dims, x.device());
        }
        self.finish(self.product(x)?)
    }

    /// `x @ weight^T`, before any sum over the group or bias.
    fn product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(match &self.weight {
            LinearWeight::Quantized(QMatMul::QTensor(q)) => match kernel_weight(q, x) {
                Some(q) => kernel_matmul::forward(q, x)?,
                None if q.dtype() == GgmlDType::F16 => {
                    float_forward(x, &q.dequantize(&q.device())?)?
                }
                None => QMatMul::QTensor(q.clone()).forward(x)?,
            },
            LinearWeight::Quantized(q) => q.forward(x)?,
            LinearWeight::Float(w) => float_forward(x, w)?,
        })
    }

    /// Several layers over the same input (q, k, v; gate, up): when all of
    /// them run on huddle-kernels, `x` is quantized once for all.
    pub fn forward_all(layers: &[&Linear], x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let kernel_weights: Option<Vec<&QTensor>> = layers
            .iter()
            .map(|l| match &l.weight {
                LinearWeight::Quantized(QMatMul::QTensor(q)) => kernel_weight(q, x),
                _ => None,
            })
            .collect();
        match kernel_weights {
            Some(qs) => kernel_matmul::forward_many(&qs, x)?
                .into_iter()
                .zip(layers)
                .map(|(y, l)| l.finish(y))
                .collect(),
            None => layers.iter().map(|l| l.forward(x)).collect(),
        }
    }

    /// The sum over the tensor group (sharded-to-all), then the bias.
    fn finish(&self, y: Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.reduce {
            Some(group) => all_sum_in_place(y, group)?,
            None => y,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&Tensor::new(b.as_slice(), y.device())?),
            None => Ok(y),
        }
    }

    /// Output features (this rank's, for a `Split::Output` layer).
    pub fn out_features(&self) -> candle_core::Result<usize> {
        if let Some(g) = &self.gather {
            return Ok(g.outputs.iter().sum());
        }
        match &self.weight {
            LinearWeight::Quantized(QMatMul::QTensor(q)) => Ok(q.shape().dims2()?.0),
            LinearWeight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w))
            | LinearWeight::Float(w) => w.dim(0),
        }
    }

    /// [`Linear::forward`] on slices: `x` holds `m` rows, `out` receives
    /// `m` rows of [`Linear::out_features`]. On huddle-kernels' formats it
    /// allocates nothing; other weights go through candle (and allocate).
    pub fn forward_into(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), LmError> {
        let Some(g) = &self.gather else {
            return Linear::forward_all_into(&[self], x, m, &mut [out]);
        };
        let rank = g.group.rank();
        GATHER_BUFS.with(|bufs| {
            let [whole, mine, blocks] = &mut *bufs.borrow_mut();
            let k: usize = g.inputs.iter().sum();
            let whole = crate::fused::sized(whole, m * k);
            tp::gather_columns(&g.group, x, m, &g.inputs, blocks, whole)?;
            let mine = crate::fused::sized(mine, m * g.outputs[rank]);
            Linear::product_into(&[self], whole, m, &mut [&mut *mine])?;
            tp::gather_columns(&g.group, mine, m, &g.outputs, blocks, out)
        })?;
        self.finish_into(out)
    }

    /// [`Linear::forward_all`] on slices: `outs[i]` receives `layers[i]`'s
    /// output, `x` quantized once for all kernel-format layers.
    pub fn forward_all_into(
        layers: &[&Linear],
        x: &[f32],
        m: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), LmError> {
        if layers.iter().any(|l| l.gather.is_some()) {
            for (l, out) in layers.iter().zip(outs.iter_mut()) {
                l.forward_into(x, m, out)?;
            }
            return Ok(());
        }
        Linear::product_into(layers, x, m, outs)?;
        for (l, out) in layers.iter().zip(outs.iter_mut()) {
            l.finish_into(out)?;
        }
        Ok(())
    }

    /// The products of [`Linear::forward_all_into`], before any sum over
    /// the group or bias.
    fn product_into(
        layers: &[&Linear],
        x: &[f32],
        m: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<(), LmError> {
        // On the stack: this runs several times per layer and step.
        const MOST: usize = 4;
        let mut qs: [Option<&QTensor>; MOST] = [None; MOST];
        for (slot, l) in qs.iter_mut().zip(layers) {
            *slot = match &l.weight {
                LinearWeight::Quantized(QMatMul::QTensor(q)) => kernel_weight_for(q, m),
                _ => None,
            };
        }
        let all_kernel = layers.len() <= MOST && qs[..layers.len()].iter().all(Option::is_some);
        match qs[0] {
            Some(first) if all_kernel => {
                let mut refs: [&QTensor; MOST] = [first; MOST];
                for (r, q) in refs.iter_mut().zip(qs.iter().flatten()) {
                    *r = q;
                }
                kernel_matmul::forward_many_into(&refs[..layers.len()], x, m, outs)?
            }
            _ => {
                let k = x.len() / m.max(1);
                let xt = Tensor::from_slice(x, (m, k), &candle_core::Device::Cpu)?;
                for (l, out) in layers.iter().zip(outs.iter_mut()) {
                    let y = l.product(&xt)?.flatten_all()?.to_vec1::<f32>()?;
                    crate::fused::copy_into("linear", &y, out)?;
                }
            }
        }
        Ok(())
    }

    /// [`Linear::finish`] on a slice of rows.
    fn finish_into(&self, y: &mut [f32]) -> Result<(), LmError> {
        if let Some(group) = &self.reduce {
            crate::tp::all_sum_slice(y, group)?;
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                for (v, &bi) in row.iter_mut().zip(b) {
                    *v += bi;
                }
            }
        }
        Ok(())
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, LinearWeight::Quantized(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn float_linear_matches_manual_product_with_bias() {
        let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[0.5f32, 0., -1.], &Device::Cpu).unwrap();
        let l = Linear::from_weight(Weight::Float(w), Some(b), None).unwrap();
        let x = Tensor::new(&[[1f32, 1.]], &Device::Cpu).unwrap();
        let y = l.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y, vec![vec![3.5, 7., 10.]]);
    }

    #[test]
    fn shard_slices_split_output_rows_and_input_columns() {
        let two = Shard { rank: 1, size: 2 };
        assert_eq!(two.slice(Split::Output, 8, 4), Ok(Slice::Rows(4..8)));
        assert_eq!(two.slice(Split::Input, 8, 4), Ok(Slice::Cols(2..4)));
        assert_eq!(two.slice(Split::Whole, 8, 4), Ok(Slice::Full));
        assert_eq!(Shard::WHOLE.slice(Split::Output, 8, 4), Ok(Slice::Full));
        assert!(
            Shard { rank: 0, size: 3 }
                .slice(Split::Output, 8, 4)
                .is_err()
        );
    }

    #[test]
    fn q8_quantized_linear_stays_close_to_float() {
        let w = Tensor::randn(0f32, 1., (64, 64), &Device::Cpu).unwrap();
        let x = Tensor::randn(0f32, 1., (3, 64), &Device::Cpu).unwrap();
        let float = Linear::from_weight(Weight::Float(w.clone()), None, None).unwrap();
        let q8 = Linear::from_weight(Weight::Float(w), None, Some(Quantize::Q8)).unwrap();
        assert!(q8.is_quantized());
        let a = float.forward(&x).unwrap();
        let b = q8.forward(&x).unwrap();
        let diff = (a.clone() - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = a.abs().unwrap().max_all().unwrap();
        let (diff, scale) = (
            diff.to_scalar::<f32>().unwrap(),
            scale.to_scalar::<f32>().unwrap(),
        );
        assert!(diff < 0.02 * scale, "q8 diff {diff} vs scale {scale}");
    }
}
