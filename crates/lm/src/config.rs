//! The hyperparameters every supported family reduces to, and typed access
//! to the two places they come from: a Hugging Face `config.json` and GGUF
//! metadata. Family files (models/*) decide which fields they read; any
//! field that would change the math and that we do not implement is an
//! error naming it, never silently ignored.

mod gguf_meta;
mod hf_json;

use std::path::Path;

use crate::error::LmError;

pub use gguf_meta::GgufMeta;
pub use hf_json::HfConfig;
pub(crate) use hf_json::eos_from_json;

#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    Yarn {
        factor: f64,
        original_max_position_embeddings: f64,
        beta_fast: f64,
        beta_slow: f64,
        /// Multiplies cos and sin (YaRN's attention temperature).
        attention_factor: f64,
    },
}

/// How a mixture-of-experts layer names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertNaming {
    /// `mlp.gate`, `mlp.experts.E.{gate,up,down}_proj` (Qwen MoE).
    Qwen,
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.E.w{1,3,2}` (Mixtral).
    Mixtral,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub experts_per_token: usize,
    pub expert_intermediate_size: usize,
    /// Renormalize the chosen experts' router probabilities to sum to one.
    pub norm_topk_prob: bool,
    /// Per layer: sparse (experts) or dense MLP.
    pub sparse_layers: Vec<bool>,
    pub naming: ExpertNaming,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransformerConfig {
    /// Family name for display (`llama`, `qwen3_moe`, ...).
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Rotate interleaved pairs (GGUF llama, whose q/k rows are permuted)
    /// instead of the two halves (Hugging Face, GGUF qwen).
    pub rope_interleaved: bool,
    pub context_length: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm on each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// A query sees keys at most this many positions back, itself included.
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeConfig>,
}

impl TransformerConfig {
    /// Checks that the dimensions fit together (heads divide evenly, etc.).
    pub fn validate(&self, path: &Path) -> Result<(), LmError> {
        let bad = |field: &str, msg: String| LmError::ConfigField {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg,
        };
        for (field, v) in [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.context_length),
        ] {
            if v == 0 {
                return Err(bad(field, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        if let Some(moe) = &self.moe
            && (moe.experts_per_token == 0 || moe.experts_per_token > moe.num_experts)
        {
            return Err(bad(
                "num_experts_per_tok",
                format!(
                    "{} is not in 1..={} (num_experts)",
                    moe.experts_per_token, moe.num_experts
                ),
            ));
        }
        Ok(())
    }
}
