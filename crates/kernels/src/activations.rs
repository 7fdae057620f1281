//! Activations quantized once per layer input and reused by every matmul
//! that reads that input (q/k/v, gate/up). The buffer is the caller's
//! scratch: re-quantizing into it reuses its allocation.

use crate::block::{Block, BlockQ8_0, BlockQ8_1, BlockQ8K};
use crate::error::KernelError;
use crate::quantize::{quantize_row_q8_0, quantize_row_q8_1, quantize_row_q8_k};

/// The format activations are quantized to, fixed by the weight format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActivationType {
    /// Kept as f32, for f32 and f16 weights.
    F32,
    Q8_0,
    Q8_1,
    Q8K,
}

impl ActivationType {
    pub fn name(self) -> &'static str {
        match self {
            ActivationType::F32 => "F32",
            ActivationType::Q8_0 => BlockQ8_0::NAME,
            ActivationType::Q8_1 => BlockQ8_1::NAME,
            ActivationType::Q8K => BlockQ8K::NAME,
        }
    }

    fn block_elems(self) -> usize {
        match self {
            ActivationType::F32 => 1,
            ActivationType::Q8_0 => BlockQ8_0::ELEMENTS,
            ActivationType::Q8_1 => BlockQ8_1::ELEMENTS,
            ActivationType::Q8K => BlockQ8K::ELEMENTS,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum ActivationData<'a> {
    F32(&'a [f32]),
    Q8_0(&'a [BlockQ8_0]),
    Q8_1(&'a [BlockQ8_1]),
    Q8K(&'a [BlockQ8K]),
}

#[derive(Clone, Debug)]
enum Buffer {
    F32(Vec<f32>),
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    Q8K(Vec<BlockQ8K>),
}

/// `[rows, cols]` activations in one [`ActivationType`].
#[derive(Clone, Debug)]
pub struct Activations {
    buf: Buffer,
    rows: usize,
    cols: usize,
}

impl Default for Activations {
    fn default() -> Self {
        Activations {
            buf: Buffer::F32(Vec::new()),
            rows: 0,
            cols: 0,
        }
    }
}

/// Resizes `v` to `len` blocks and fills each row of `cols` from `x`.
fn fill<B: Block>(
    v: &mut Vec<B>,
    x: &[f32],
    cols: usize,
    quantize: fn(&[f32], &mut [B]) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let per_row = cols / B::ELEMENTS;
    v.resize(x.len() / B::ELEMENTS, B::default());
    if per_row == 0 {
        return Ok(());
    }
    for (row, out) in x.chunks_exact(cols).zip(v.chunks_exact_mut(per_row)) {
        quantize(row, out)?;
    }
    Ok(())
}

impl Activations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Quantizes `x`, `rows` rows of `cols`, into `ty`, replacing the
    /// previous contents and reusing the allocation when `ty` is unchanged.
    pub fn quantize(
        &mut self,
        ty: ActivationType,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        let elems = ty.block_elems();
        if !cols.is_multiple_of(elems) {
            return Err(KernelError::RowLength {
                format: ty.name(),
                cols,
                block: elems,
            });
        }
        let expected = rows.saturating_mul(cols);
        if x.len() != expected {
            return Err(KernelError::Size {
                what: "activations",
                expected,
                actual: x.len(),
            });
        }
        // Empty until the new contents are complete, so an error leaves no stale shape.
        self.rows = 0;
        self.cols = 0;
        let buf = std::mem::replace(&mut self.buf, Buffer::F32(Vec::new()));
        self.buf = match (ty, buf) {
            (ActivationType::F32, Buffer::F32(mut v)) => {
                v.clear();
                v.extend_from_slice(x);
                Buffer::F32(v)
            }
            (ActivationType::F32, _) => Buffer::F32(x.to_vec()),
            (ActivationType::Q8_0, buf) => {
                let mut v = if let Buffer::Q8_0(v) = buf {
                    v
                } else {
                    Vec::new()
                };
                fill(&mut v, x, cols, quantize_row_q8_0)?;
                Buffer::Q8_0(v)
            }
            (ActivationType::Q8_1, buf) => {
                let mut v = if let Buffer::Q8_1(v) = buf {
                    v
                } else {
                    Vec::new()
                };
                fill(&mut v, x, cols, quantize_row_q8_1)?;
                Buffer::Q8_1(v)
            }
            (ActivationType::Q8K, buf) => {
                let mut v = if let Buffer::Q8K(v) = buf {
                    v
                } else {
                    Vec::new()
                };
                fill(&mut v, x, cols, quantize_row_q8_k)?;
                Buffer::Q8K(v)
            }
        };
        self.rows = rows;
        self.cols = cols;
        Ok(())
    }

    pub fn activation_type(&self) -> ActivationType {
        match self.buf {
            Buffer::F32(_) => ActivationType::F32,
            Buffer::Q8_0(_) => ActivationType::Q8_0,
            Buffer::Q8_1(_) => ActivationType::Q8_1,
            Buffer::Q8K(_) => ActivationType::Q8K,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn data(&self) -> ActivationData<'_> {
        match &self.buf {
            Buffer::F32(v) => ActivationData::F32(v),
            Buffer::Q8_0(v) => ActivationData::Q8_0(v),
            Buffer::Q8_1(v) => ActivationData::Q8_1(v),
            Buffer::Q8K(v) => ActivationData::Q8K(v),
        }
    }
}
