//! Qwen2 / Qwen2.5: Llama with biases on the q, k and v projections.

use crate::config::{GgufMeta, HfConfig, TransformerConfig};
use crate::error::LmError;
use crate::weights::Loader;

pub fn from_hf(cfg: &HfConfig) -> Result<TransformerConfig, LmError> {
    super::reject_qwen_sliding_window(cfg)?;
    let mut c = super::hf_base(cfg, "qwen2")?;
    c.qkv_bias = true;
    Ok(c)
}

pub fn from_gguf(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let mut c = super::gguf_base(meta, loader)?;
    c.qkv_bias = true;
    Ok(c)
}
