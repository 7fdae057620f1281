//! Llama (SmolLM2, Llama 2 and 3 with `rope_scaling`) and Mistral, which is
//! Llama with an optional sliding attention window.

use crate::config::{GgufMeta, HfConfig, TransformerConfig};
use crate::error::LmError;
use crate::weights::Loader;

pub fn from_hf(cfg: &HfConfig, model_type: &str) -> Result<TransformerConfig, LmError> {
    let mut c = super::hf_base(cfg, model_type)?;
    // Llama's `attention_bias` covers all four projections.
    let bias = cfg.bool_or("attention_bias", false)?;
    c.qkv_bias = bias;
    c.o_bias = bias;
    c.mlp_bias = cfg.bool_or("mlp_bias", false)?;
    if model_type == "mistral" {
        c.sliding_window = cfg.opt_usize("sliding_window")?;
    }
    Ok(c)
}

/// llama.cpp's "llama" covers Llama, Mistral and (with experts) Mixtral.
/// Its converter permutes q/k rows so that RoPE rotates interleaved pairs.
pub fn from_gguf(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let mut c = super::gguf_base(meta, loader)?;
    c.rope_interleaved = true;
    if meta.opt_usize("expert_count")?.unwrap_or(0) > 0 {
        c.moe = Some(super::mixtral::gguf_moe(meta, &c)?);
    }
    Ok(c)
}
