//! Mixtral: Mistral attention with a sparse mixture of experts in every
//! layer (`block_sparse_moe`), top-k router probabilities renormalized.

use crate::config::{ExpertNaming, GgufMeta, HfConfig, MoeConfig, TransformerConfig};
use crate::error::LmError;

pub fn from_hf(cfg: &HfConfig) -> Result<TransformerConfig, LmError> {
    let mut c = super::hf_base(cfg, "mixtral")?;
    c.sliding_window = cfg.opt_usize("sliding_window")?;
    c.moe = Some(MoeConfig {
        num_experts: cfg.usize("num_local_experts")?,
        experts_per_token: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: c.intermediate_size,
        norm_topk_prob: true,
        sparse_layers: vec![true; c.num_layers],
        naming: ExpertNaming::Mixtral,
    });
    Ok(c)
}

pub(crate) fn gguf_moe(meta: &GgufMeta, c: &TransformerConfig) -> Result<MoeConfig, LmError> {
    Ok(MoeConfig {
        num_experts: meta.usize("expert_count")?,
        experts_per_token: meta.usize("expert_used_count")?,
        expert_intermediate_size: c.intermediate_size,
        norm_topk_prob: true,
        sparse_layers: vec![true; c.num_layers],
        naming: ExpertNaming::Mixtral,
    })
}
