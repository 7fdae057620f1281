//! Token embeddings: a float table, or GGUF's quantized one looked up row
//! by row (the table is often tied to the output head, which then shares
//! it without a copy).

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::error::LmError;
use crate::linear::Linear;
use crate::model::Quantize;
use crate::weights::{Loader, Slice, Weight};

#[derive(Debug, Clone)]
pub enum Embedding {
    /// `[vocab, hidden]`, f32.
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
        Ok(match loader.weight(name, &[vocab, hidden], &Slice::Full)? {
            Weight::Float(t) => Embedding::Float(t),
            Weight::Quantized(q) => Embedding::Quantized(Arc::new(q)),
        })
    }

    /// `[tokens.len(), hidden]`.
    pub fn forward(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        match self {
            Embedding::Float(t) => t.index_select(&ids, 0),
            Embedding::Quantized(q) => q.embedding(&ids),
        }
    }

    /// The output head tied to this table.
    pub fn as_head(&self, quantize: Option<Quantize>) -> candle_core::Result<Linear> {
        match self {
            Embedding::Float(t) => Linear::from_weight(Weight::Float(t.clone()), None, quantize),
            Embedding::Quantized(q) => Linear::from_shared_qtensor(q.clone()),
        }
    }
}
