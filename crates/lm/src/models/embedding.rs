//! Token embeddings: a float table, or GGUF's quantized one looked up row
//! by row (the table is often tied to the output head, which then shares
//! it without a copy).

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use huddle_comm::Group;
use huddle_kernels::Weights;

use crate::error::LmError;
use crate::kernel_matmul;
use crate::linear::Linear;
use crate::model::Quantize;
use crate::tp;
use crate::weights::{Loader, Slice, Weight};

/// Token embeddings, or on a tensor-parallel rank its range of the
/// vocabulary (`rows`): tokens outside it look up zeros, and the all_sum
/// over the group fills them in from the rank that holds them.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Table,
    rows: Range<usize>,
    group: Group,
}

#[derive(Debug, Clone)]
enum Table {
    /// `[rows, hidden]`, f32.
    Float(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    pub fn load(
        loader: &mut Loader,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<Self, LmError> {
        let group = loader.group().clone();
        let rows = tp::balanced(vocab, group.size(), group.rank());
        let slice = if rows.len() == vocab {
            Slice::Full
        } else {
            Slice::Rows(rows.clone())
        };
        let table = match loader.weight(name, &[vocab, hidden], &slice)? {
            Weight::Float(t) => Table::Float(t),
            Weight::Quantized(q) => Table::Quantized(Arc::new(q)),
        };
        Ok(Embedding { table, rows, group })
    }

    /// The vocabulary range this rank holds.
    pub fn rows(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// `[tokens.len(), hidden]`.
    pub fn forward(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        if self.group.size() <= 1 {
            return self.lookup(tokens);
        }
        let (start, end) = (self.rows.start as u32, self.rows.end as u32);
        let mine = |id: u32| (start..end).contains(&id);
        let local: Vec<u32> = tokens
            .iter()
            .map(|&id| if mine(id) { id - start } else { 0 })
            .collect();
        let keep: Vec<f32> = tokens
            .iter()
            .map(|&id| f32::from(u8::from(mine(id))))
            .collect();
        let keep = Tensor::from_vec(keep, (tokens.len(), 1), &Device::Cpu)?;
        let x = self.lookup(&local)?.broadcast_mul(&keep)?;
        tp::all_sum_in_place(x, &self.group)
    }

    /// [`Embedding::forward`] into `out` (`tokens.len()` rows of the
    /// hidden size). Tables in huddle-kernels' formats are read row by
    /// row, allocating nothing; others go through candle.
    pub fn forward_into(&self, tokens: &[u32], out: &mut [f32]) -> Result<(), LmError> {
        let kernel = match &self.table {
            Table::Quantized(q) if kernel_matmul::supports(q) => Some(q),
            _ => None,
        };
        let Some(q) = kernel else {
            let x = self.forward(tokens)?.flatten_all()?.to_vec1::<f32>()?;
            return crate::fused::copy_into("embedding", &x, out);
        };
        let (n, width) = q.shape().dims2()?;
        let ty = kernel_matmul::weight_type(q.dtype()).ok_or_else(|| {
            candle_core::Error::Msg(format!("embedding table of {:?}", q.dtype()))
        })?;
        let bytes = q.data()?;
        let kernel_err = |e: huddle_kernels::KernelError| {
            LmError::Candle(candle_core::Error::Msg(format!("embedding: {e}")))
        };
        let table = Weights::from_bytes(ty, &bytes, n, width).map_err(kernel_err)?;
        if out.len() != tokens.len() * width {
            return Err(kernel_err(huddle_kernels::KernelError::Size {
                what: "embedding output",
                expected: tokens.len() * width,
                actual: out.len(),
            }));
        }
        for (&id, row) in tokens.iter().zip(out.chunks_exact_mut(width)) {
            match (id as usize).checked_sub(self.rows.start) {
                Some(local) if local < n => table.dequantize_row(local, row).map_err(kernel_err)?,
                // Another rank's token: zeros, filled in by the all_sum.
                _ => row.fill(0.0),
            }
        }
        tp::all_sum_slice(out, &self.group)
    }

    fn lookup(&self, ids: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(ids, &Device::Cpu)?;
        match &self.table {
            Table::Float(t) => t.index_select(&ids, 0),
            Table::Quantized(q) => q.embedding(&ids),
        }
    }

    /// The output head tied to this table (this rank's vocabulary range).
    pub fn as_head(&self, quantize: Option<Quantize>) -> candle_core::Result<Linear> {
        match &self.table {
            Table::Float(t) => Linear::from_weight(Weight::Float(t.clone()), None, quantize),
            Table::Quantized(q) => Linear::from_shared_qtensor(q.clone()),
        }
    }
}
