//! Qwen3: an RMSNorm on every query and key head before RoPE, no q/k/v
//! biases by default, an explicit `head_dim`.

use crate::config::{GgufMeta, HfConfig, TransformerConfig};
use crate::error::LmError;
use crate::weights::Loader;

pub fn from_hf(cfg: &HfConfig) -> Result<TransformerConfig, LmError> {
    from_hf_as(cfg, "qwen3")
}

pub(crate) fn from_hf_as(cfg: &HfConfig, architecture: &str) -> Result<TransformerConfig, LmError> {
    super::reject_qwen_sliding_window(cfg)?;
    let mut c = super::hf_base(cfg, architecture)?;
    let bias = cfg.bool_or("attention_bias", false)?;
    c.qkv_bias = bias;
    c.o_bias = bias;
    c.qk_norm = true;
    Ok(c)
}

pub fn from_gguf(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let mut c = super::gguf_base(meta, loader)?;
    c.qk_norm = true;
    Ok(c)
}
