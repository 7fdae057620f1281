//! Where weights come from. A [`WeightSource`] hands out one tensor, or one
//! slice of it along a dimension, reading only those bytes from the
//! memory-mapped file: a rank of a tensor-parallel group later asks for its
//! own rows or columns and never touches the rest.
//!
//! Names are Hugging Face names (`model.layers.3.self_attn.q_proj.weight`)
//! whatever the file format; the GGUF source translates them.

mod decode;
pub mod gguf;
mod loader;
pub mod safetensors;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_core::quantized::QTensor;

use crate::error::LmError;

/// Drops the file pages of `map[range]` from this process's resident set
/// once a tensor has been copied out of them. Reading a column slice
/// touches every page of the tensor, and mapped pages count as resident:
/// without this a tensor-parallel rank's peak memory would include every
/// tensor it sliced, not only its slices.
pub(crate) fn release(map: &memmap2::Mmap, range: std::ops::Range<usize>) {
    // SAFETY: the mapping is read-only and file-backed, so dropped pages
    // read back the same bytes from the file on the next access; nothing
    // is lost, whoever still looks at them.
    let result = unsafe {
        map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.start, range.len())
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "madvise(DONTNEED) on weight pages failed");
    }
}

pub use loader::Loader;

/// Which part of a tensor to read. Ranges count elements along the
/// dimension, so `Rows(a..b)` of a `[out, in]` weight is output features
/// `a..b`; `Cols` slices the last dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slice {
    Full,
    Rows(Range<usize>),
    Cols(Range<usize>),
}

impl Slice {
    /// The shape after slicing a tensor of shape `full`.
    pub fn apply(&self, full: &[usize]) -> Vec<usize> {
        let mut shape = full.to_vec();
        match self {
            Slice::Full => {}
            Slice::Rows(r) => {
                if let Some(d) = shape.first_mut() {
                    *d = r.len();
                }
            }
            Slice::Cols(r) => {
                if let Some(d) = shape.last_mut() {
                    *d = r.len();
                }
            }
        }
        shape
    }

    /// Checks the slice against a tensor's shape; the error text is the
    /// reason only, callers add the file and tensor.
    pub(crate) fn check(&self, shape: &[usize]) -> Result<(), String> {
        let (range, dim) = match self {
            Slice::Full => return Ok(()),
            Slice::Rows(r) => (r, 0),
            Slice::Cols(r) => {
                if shape.len() < 2 {
                    return Err(format!("a {}-d tensor has no columns", shape.len()));
                }
                (r, shape.len() - 1)
            }
        };
        let size = shape.get(dim).copied().unwrap_or(0);
        if range.start > range.end || range.end > size {
            return Err(format!("range {range:?} is outside 0..{size}"));
        }
        Ok(())
    }
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slice::Full => write!(f, "full"),
            Slice::Rows(r) => write!(f, "rows {}..{}", r.start, r.end),
            Slice::Cols(r) => write!(f, "cols {}..{}", r.start, r.end),
        }
    }
}

/// A tensor as read from a file: float weights are decoded to f32 (we
/// compute in f32 on CPU), GGUF's quantized blocks stay as they are.
#[derive(Debug)]
pub enum Weight {
    Float(Tensor),
    Quantized(QTensor),
}

impl Weight {
    pub fn shape(&self) -> &[usize] {
        match self {
            Weight::Float(t) => t.dims(),
            Weight::Quantized(q) => q.shape().dims(),
        }
    }

    /// The weight as an f32 tensor, dequantizing if needed (norms, biases:
    /// small tensors that candle's ops want in float).
    pub fn into_float(self) -> Result<Tensor, candle_core::Error> {
        match self {
            Weight::Float(t) => Ok(t),
            Weight::Quantized(q) => q.dequantize(&candle_core::Device::Cpu),
        }
    }
}

/// Facts about one stored tensor, known without reading it.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub shape: Vec<usize>,
    /// Bytes the full tensor takes in the file.
    pub bytes: u64,
    pub dtype: String,
}

pub trait WeightSource {
    /// The file (or directory) this source reads, for error messages.
    fn path(&self) -> &Path;
    /// The file that holds (or should hold) `name`, for error messages.
    fn file_of(&self, _name: &str) -> PathBuf {
        self.path().to_path_buf()
    }
    /// The error for a tensor that is not stored.
    fn missing(&self, name: &str) -> LmError {
        LmError::MissingTensor {
            path: self.file_of(name),
            tensor: name.to_string(),
        }
    }
    /// `None` when the tensor is not stored.
    fn meta(&self, name: &str) -> Option<TensorMeta>;
    /// Reads `name` (or a slice of it) from the map: one copy, into the
    /// returned tensor.
    fn load(&self, name: &str, slice: &Slice) -> Result<Weight, LmError>;
    /// Bytes of all tensors, for the progress bar.
    fn total_bytes(&self) -> u64;
}
