//! Token embeddings: a float table, or GGUF's quantized one looked up row
//! by row (the table is often tied to the output head, which then shares
//! it without a copy).

use std::ops::Range;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use huddle_comm::Group;

use crate::error::LmError;
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
