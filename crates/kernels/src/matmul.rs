//! Products of a weight matrix `[n, k]` (rows of GGML blocks, as stored in
//! GGUF) with activations `[m, k]`, into `[m, n]`: matrix-vector for decode
//! (m = 1), matrix-matrix for prompts. Work is split over weight rows, so
//! each weight byte is read from memory once per call whatever `m` is.

use half::f16;

use crate::activations::{ActivationData, ActivationType, Activations};
use crate::block::{Block, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ6K, BlockQ8_0, cast_blocks};
use crate::dot::{Dot4, Kernels};
use crate::error::KernelError;
use crate::pool::{DisjointOut, ThreadPool};

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl WeightType {
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F32 => "F32",
            WeightType::F16 => "F16",
            WeightType::Q4_0 => BlockQ4_0::NAME,
            WeightType::Q4_1 => BlockQ4_1::NAME,
            WeightType::Q8_0 => BlockQ8_0::NAME,
            WeightType::Q4K => BlockQ4K::NAME,
            WeightType::Q6K => BlockQ6K::NAME,
        }
    }

    /// (elements, bytes) of one block; plain floats count as 1-element blocks.
    pub fn block_size(self) -> (usize, usize) {
        match self {
            WeightType::F32 => (1, 4),
            WeightType::F16 => (1, 2),
            WeightType::Q4_0 => (BlockQ4_0::ELEMENTS, size_of::<BlockQ4_0>()),
            WeightType::Q4_1 => (BlockQ4_1::ELEMENTS, size_of::<BlockQ4_1>()),
            WeightType::Q8_0 => (BlockQ8_0::ELEMENTS, size_of::<BlockQ8_0>()),
            WeightType::Q4K => (BlockQ4K::ELEMENTS, size_of::<BlockQ4K>()),
            WeightType::Q6K => (BlockQ6K::ELEMENTS, size_of::<BlockQ6K>()),
        }
    }

    /// The activation format this weight format's dot product takes.
    pub fn activation_type(self) -> ActivationType {
        match self {
            WeightType::F32 | WeightType::F16 => ActivationType::F32,
            WeightType::Q4_0 | WeightType::Q8_0 => ActivationType::Q8_0,
            WeightType::Q4_1 => ActivationType::Q8_1,
            WeightType::Q4K | WeightType::Q6K => ActivationType::Q8K,
        }
    }

    /// Bytes of one row of `cols` weights.
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        let (elems, bytes) = self.block_size();
        if !cols.is_multiple_of(elems) {
            return Err(KernelError::RowLength {
                format: self.name(),
                cols,
                block: elems,
            });
        }
        Ok(cols / elems * bytes)
    }
}

#[derive(Clone, Copy, Debug)]
enum WeightData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Q4_0(&'a [BlockQ4_0]),
    Q4_1(&'a [BlockQ4_1]),
    Q8_0(&'a [BlockQ8_0]),
    Q4K(&'a [BlockQ4K]),
    Q6K(&'a [BlockQ6K]),
}

/// A borrowed `[rows, cols]` weight matrix, checked once at construction.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    data: WeightData<'a>,
    ty: WeightType,
    rows: usize,
    cols: usize,
}

fn cast_floats<'a, T: Copy>(bytes: &'a [u8], name: &'static str) -> Result<&'a [T], KernelError> {
    let size = size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return Err(KernelError::RaggedBlocks {
            format: name,
            bytes: bytes.len(),
            block: size,
        });
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(align_of::<T>()) {
        return Err(KernelError::Misaligned {
            format: name,
            align: align_of::<T>(),
        });
    }
    // SAFETY: only instantiated with f32 and f16, for which every bit
    // pattern is valid; length and alignment checked above.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

impl<'a> Weights<'a> {
    /// Row `row` as f32 values into `y` (`cols` of them): an embedding
    /// lookup without copying or converting the rest of the table.
    pub fn dequantize_row(&self, row: usize, y: &mut [f32]) -> Result<(), KernelError> {
        use crate::dequantize as dq;
        if row >= self.rows {
            return Err(KernelError::Size {
                what: "row index (rows)",
                expected: self.rows,
                actual: row,
            });
        }
        if y.len() != self.cols {
            return Err(KernelError::Size {
                what: "dequantized row",
                expected: self.cols,
                actual: y.len(),
            });
        }
        let per = self.cols / self.ty.block_size().0;
        let span = row * per..(row + 1) * per;
        match self.data {
            WeightData::F32(d) => y.copy_from_slice(&d[span]),
            WeightData::F16(d) => {
                for (o, v) in y.iter_mut().zip(&d[span]) {
                    *o = v.to_f32();
                }
            }
            WeightData::Q4_0(d) => dq::dequantize_row_q4_0(&d[span], y)?,
            WeightData::Q4_1(d) => dq::dequantize_row_q4_1(&d[span], y)?,
            WeightData::Q8_0(d) => dq::dequantize_row_q8_0(&d[span], y)?,
            WeightData::Q4K(d) => dq::dequantize_row_q4_k(&d[span], y)?,
            WeightData::Q6K(d) => dq::dequantize_row_q6_k(&d[span], y)?,
        }
        Ok(())
    }

    /// Views GGUF-layout tensor bytes as a `[rows, cols]` matrix of `ty`.
    pub fn from_bytes(
        ty: WeightType,
        bytes: &'a [u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, KernelError> {
        let row_bytes = ty.row_bytes(cols)?;
        let expected = row_bytes.checked_mul(rows).ok_or(KernelError::Size {
            what: "weight bytes",
            expected: usize::MAX,
            actual: bytes.len(),
        })?;
        if bytes.len() != expected {
            return Err(KernelError::Size {
                what: "weight bytes",
                expected,
                actual: bytes.len(),
            });
        }
        let data = match ty {
            WeightType::F32 => WeightData::F32(cast_floats(bytes, "F32")?),
            WeightType::F16 => WeightData::F16(cast_floats(bytes, "F16")?),
            WeightType::Q4_0 => WeightData::Q4_0(cast_blocks(bytes)?),
            WeightType::Q4_1 => WeightData::Q4_1(cast_blocks(bytes)?),
            WeightType::Q8_0 => WeightData::Q8_0(cast_blocks(bytes)?),
            WeightType::Q4K => WeightData::Q4K(cast_blocks(bytes)?),
            WeightType::Q6K => WeightData::Q6K(cast_blocks(bytes)?),
        };
        Ok(Weights {
            data,
            ty,
            rows,
            cols,
        })
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// Output rows per task: about eight tasks per thread, so a thread that
/// the OS preempts (ranks and other work share the cores) holds up little
/// work, and at least 16 rows so no two tasks write the same cache line of
/// `out`.
fn chunk_rows(n: usize, threads: usize) -> usize {
    n.div_ceil(threads * 8).max(16)
}

/// One weight format's kernels for [`run`].
struct RowKernels<W, A> {
    dot: fn(&[W], &[A]) -> f32,
    dot4: Dot4<W, A>,
}

impl<W, A> RowKernels<W, A> {
    fn new(dot: fn(&[W], &[A]) -> f32, dot4: Dot4<W, A>) -> Self {
        RowKernels { dot, dot4 }
    }
}

/// A `[rows, row_len]` matrix stored as one slice.
struct Rows<'a, T> {
    data: &'a [T],
    row_len: usize,
}

impl<'a, T> Rows<'a, T> {
    fn new(data: &'a [T], row_len: usize) -> Self {
        Rows { data, row_len }
    }

    fn row(&self, i: usize) -> &[T] {
        &self.data[i * self.row_len..(i + 1) * self.row_len]
    }
}

/// Activation rows a task keeps hot in L1 while its weight rows pass over
/// them (a multiple of 4, the rows per `dot4` call).
const ACT_TILE: usize = 16;

fn run<W: Sync, A: Sync>(
    pool: &ThreadPool,
    w: Rows<'_, W>,
    a: Rows<'_, A>,
    m: usize,
    n: usize,
    out: &mut [f32],
    k: RowKernels<W, A>,
) {
    let out = DisjointOut::new(out);
    // SAFETY (every write): i < m, j < n and out.len() == m * n (checked
    // by `matmul`); each j belongs to exactly one task.
    let put = |i: usize, j: usize, v: f32| unsafe { *out.at(i * n + j) = v };
    pool.parallel_for(n, chunk_rows(n, pool.threads()), |rows| {
        for tile in (0..m).step_by(ACT_TILE) {
            let end = (tile + ACT_TILE).min(m);
            for j in rows.clone() {
                let wr = w.row(j);
                let mut i = tile;
                while i + 4 <= end {
                    let v = (k.dot4)(wr, [a.row(i), a.row(i + 1), a.row(i + 2), a.row(i + 3)]);
                    for (r, v) in v.into_iter().enumerate() {
                        put(i + r, j, v);
                    }
                    i += 4;
                }
                for i in i..end {
                    put(i, j, (k.dot)(wr, a.row(i)));
                }
            }
        }
    });
}

/// `out[i * n + j] = dot(weights row j, activations row i)`: activations
/// `[m, k]` times weights `[n, k]` transposed, into `out` of `m * n`.
pub fn matmul(
    pool: &ThreadPool,
    weights: &Weights<'_>,
    acts: &Activations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    matmul_with(Kernels::best(), pool, weights, acts, out)
}

/// [`matmul`] with an explicit kernel table, to compare instruction sets.
pub fn matmul_with(
    kernels: &Kernels,
    pool: &ThreadPool,
    weights: &Weights<'_>,
    acts: &Activations,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let expected_act = weights.ty.activation_type();
    if acts.activation_type() != expected_act {
        return Err(KernelError::ActivationType {
            weights: weights.ty.name(),
            activations: acts.activation_type().name(),
            expected: expected_act.name(),
        });
    }
    if acts.cols() != weights.cols {
        return Err(KernelError::InnerDim {
            weights: weights.cols,
            activations: acts.cols(),
        });
    }
    let (m, n, k) = (acts.rows(), weights.rows, weights.cols);
    if out.len() != m * n {
        return Err(KernelError::Size {
            what: "matmul output",
            expected: m * n,
            actual: out.len(),
        });
    }
    // Row lengths in the format's own units: floats, or blocks of 32 or 256.
    let blocks = |elems: usize| k / elems;
    match (weights.data, acts.data()) {
        (WeightData::F32(w), ActivationData::F32(a)) => {
            let kern = RowKernels::new(kernels.f32_f32, kernels.f32_f32_x4);
            run(pool, Rows::new(w, k), Rows::new(a, k), m, n, out, kern)
        }
        (WeightData::F16(w), ActivationData::F32(a)) => {
            let kern = RowKernels::new(kernels.f16_f32, kernels.f16_f32_x4);
            run(pool, Rows::new(w, k), Rows::new(a, k), m, n, out, kern)
        }
        (WeightData::Q4_0(w), ActivationData::Q8_0(a)) => {
            let kern = RowKernels::new(kernels.q4_0_q8_0, kernels.q4_0_q8_0_x4);
            run(
                pool,
                Rows::new(w, blocks(32)),
                Rows::new(a, blocks(32)),
                m,
                n,
                out,
                kern,
            )
        }
        (WeightData::Q8_0(w), ActivationData::Q8_0(a)) => {
            let kern = RowKernels::new(kernels.q8_0_q8_0, kernels.q8_0_q8_0_x4);
            run(
                pool,
                Rows::new(w, blocks(32)),
                Rows::new(a, blocks(32)),
                m,
                n,
                out,
                kern,
            )
        }
        (WeightData::Q4_1(w), ActivationData::Q8_1(a)) => {
            let kern = RowKernels::new(kernels.q4_1_q8_1, kernels.q4_1_q8_1_x4);
            run(
                pool,
                Rows::new(w, blocks(32)),
                Rows::new(a, blocks(32)),
                m,
                n,
                out,
                kern,
            )
        }
        (WeightData::Q4K(w), ActivationData::Q8K(a)) => {
            let kern = RowKernels::new(kernels.q4_k_q8_k, kernels.q4_k_q8_k_x4);
            run(
                pool,
                Rows::new(w, blocks(256)),
                Rows::new(a, blocks(256)),
                m,
                n,
                out,
                kern,
            )
        }
        (WeightData::Q6K(w), ActivationData::Q8K(a)) => {
            let kern = RowKernels::new(kernels.q6_k_q8_k, kernels.q6_k_q8_k_x4);
            run(
                pool,
                Rows::new(w, blocks(256)),
                Rows::new(a, blocks(256)),
                m,
                n,
                out,
                kern,
            )
        }
        // The type check above rules every other pairing out.
        _ => {
            return Err(KernelError::ActivationType {
                weights: weights.ty.name(),
                activations: acts.activation_type().name(),
                expected: expected_act.name(),
            });
        }
    }
    Ok(())
}
