//! Qwen3-MoE: Qwen3 attention; the feed-forward of most layers is a sparse
//! mixture of experts (`decoder_sparse_step`, `mlp_only_layers` pick which).

use crate::config::{ExpertNaming, GgufMeta, HfConfig, MoeConfig, TransformerConfig};
use crate::error::LmError;
use crate::weights::Loader;

pub fn from_hf(cfg: &HfConfig) -> Result<TransformerConfig, LmError> {
    let mut c = super::qwen3::from_hf_as(cfg, "qwen3_moe")?;
    if let Some(shared) = cfg.opt_usize("shared_expert_intermediate_size")?
        && shared > 0
    {
        return Err(cfg.unsupported(
            "shared_expert_intermediate_size",
            shared,
            "shared experts are not implemented",
        ));
    }
    let num_experts = cfg.usize("num_experts")?;
    let step = cfg.opt_usize("decoder_sparse_step")?.unwrap_or(1);
    let dense_only: Vec<usize> = match cfg.get("mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| {
                cfg.field_error("mlp_only_layers", "expected a list of layer indices")
            })?,
    };
    let sparse_layers = (0..c.num_layers)
        .map(|i| num_experts > 0 && step > 0 && (i + 1) % step == 0 && !dense_only.contains(&i))
        .collect();
    c.moe = Some(MoeConfig {
        num_experts,
        experts_per_token: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: cfg.usize("moe_intermediate_size")?,
        norm_topk_prob: cfg.bool_or("norm_topk_prob", false)?,
        sparse_layers,
        naming: ExpertNaming::Qwen,
    });
    Ok(c)
}

/// llama.cpp always renormalizes Qwen3-MoE's top-k weights; a layer is
/// sparse when it has a router tensor.
pub fn from_gguf(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let mut c = super::gguf_base(meta, loader)?;
    c.qk_norm = true;
    c.architecture = "qwen3_moe".into();
    let sparse_layers = (0..c.num_layers)
        .map(|i| loader.contains(&format!("model.layers.{i}.mlp.gate.weight")))
        .collect();
    c.moe = Some(MoeConfig {
        num_experts: meta.usize("expert_count")?,
        experts_per_token: meta.usize("expert_used_count")?,
        expert_intermediate_size: meta.usize("expert_feed_forward_length")?,
        norm_topk_prob: meta.opt_bool("expert_weights_norm")?.unwrap_or(true),
        sparse_layers,
        naming: ExpertNaming::Qwen,
    });
    Ok(c)
}
