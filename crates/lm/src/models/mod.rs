//! Model families. Every family here is the same decoder stack
//! ([`decoder::Decoder`]) with its own config quirks; each family file
//! turns a Hugging Face `config.json` or GGUF metadata into a
//! [`TransformerConfig`], refusing fields it does not implement.

pub mod attention;
pub mod decoder;
pub mod embedding;
pub mod llama;
pub mod mixtral;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3_moe;

use crate::config::{GgufMeta, HfConfig, TransformerConfig};
use crate::error::LmError;
use crate::weights::Loader;

pub const SUPPORTED_HF: &str = "llama, mistral, mixtral, qwen2, qwen3, qwen3_moe";
pub const SUPPORTED_GGUF: &str = "llama, qwen2, qwen3, qwen3moe";

/// The family of a Hugging Face config: `model_type`, else the first of
/// `architectures`.
pub fn config_from_hf(cfg: &HfConfig) -> Result<TransformerConfig, LmError> {
    let model_type = match cfg.opt_str("model_type")? {
        Some(t) => t.to_string(),
        None => {
            let arch = cfg
                .get("architectures")
                .and_then(|a| a.as_array())
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .ok_or_else(|| cfg.field_error("model_type", "missing (and no `architectures`)"))?;
            match arch {
                "LlamaForCausalLM" => "llama",
                "MistralForCausalLM" => "mistral",
                "MixtralForCausalLM" => "mixtral",
                "Qwen2ForCausalLM" => "qwen2",
                "Qwen3ForCausalLM" => "qwen3",
                "Qwen3MoeForCausalLM" => "qwen3_moe",
                other => other,
            }
            .to_string()
        }
    };
    let config = match model_type.as_str() {
        "llama" | "mistral" => llama::from_hf(cfg, &model_type)?,
        "mixtral" => mixtral::from_hf(cfg)?,
        "qwen2" => qwen2::from_hf(cfg)?,
        "qwen3" => qwen3::from_hf(cfg)?,
        "qwen3_moe" => qwen3_moe::from_hf(cfg)?,
        other => {
            return Err(LmError::UnsupportedArchitecture {
                path: cfg.path.clone(),
                architecture: other.to_string(),
                supported: SUPPORTED_HF,
            });
        }
    };
    config.validate(&cfg.path)?;
    Ok(config)
}

pub fn config_from_gguf(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let config = match meta.arch.as_str() {
        "llama" => llama::from_gguf(meta, loader)?,
        "qwen2" => qwen2::from_gguf(meta, loader)?,
        "qwen3" => qwen3::from_gguf(meta, loader)?,
        "qwen3moe" => qwen3_moe::from_gguf(meta, loader)?,
        other => {
            return Err(LmError::UnsupportedArchitecture {
                path: meta.path.to_path_buf(),
                architecture: other.to_string(),
                supported: SUPPORTED_GGUF,
            });
        }
    };
    config.validate(meta.path)?;
    Ok(config)
}

/// The fields every family reads the same way from `config.json`.
pub(crate) fn hf_base(cfg: &HfConfig, architecture: &str) -> Result<TransformerConfig, LmError> {
    cfg.require_silu()?;
    cfg.reject_common_unsupported()?;
    let hidden_size = cfg.usize("hidden_size")?;
    let num_heads = cfg.usize("num_attention_heads")?;
    if num_heads == 0 {
        return Err(cfg.field_error("num_attention_heads", "must be positive"));
    }
    let (rope_theta, rope_scaling) = cfg.rope(10000.0)?;
    Ok(TransformerConfig {
        architecture: architecture.to_string(),
        hidden_size,
        intermediate_size: cfg.usize("intermediate_size")?,
        num_layers: cfg.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: cfg.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim: cfg
            .opt_usize("head_dim")?
            .unwrap_or(hidden_size / num_heads),
        vocab_size: cfg.usize("vocab_size")?,
        rms_norm_eps: cfg.f64_or("rms_norm_eps", 1e-6)?,
        rope_theta,
        rope_scaling,
        rope_interleaved: false,
        context_length: cfg.usize("max_position_embeddings")?,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: false,
        sliding_window: None,
        moe: None,
    })
}

/// Qwen configs carry `use_sliding_window`, which changes which keys some
/// layers see; we implement only the (default) full attention.
pub(crate) fn reject_qwen_sliding_window(cfg: &HfConfig) -> Result<(), LmError> {
    if cfg.bool_or("use_sliding_window", false)? {
        return Err(cfg.unsupported(
            "use_sliding_window",
            true,
            "per-layer sliding windows (max_window_layers) are not implemented",
        ));
    }
    Ok(())
}

/// The fields every family reads the same way from GGUF metadata.
pub(crate) fn gguf_base(meta: &GgufMeta, loader: &Loader) -> Result<TransformerConfig, LmError> {
    let hidden_size = meta.usize("embedding_length")?;
    let num_heads = meta.usize("attention.head_count")?;
    if num_heads == 0 {
        return Err(LmError::ConfigField {
            path: meta.path.to_path_buf(),
            field: format!("{}.attention.head_count", meta.arch),
            msg: "must be positive".into(),
        });
    }
    let head_dim = meta
        .opt_usize("attention.key_length")?
        .unwrap_or(hidden_size / num_heads);
    if let Some(rot) = meta.opt_usize("rope.dimension_count")?
        && rot != head_dim
    {
        return Err(LmError::UnsupportedConfig {
            path: meta.path.to_path_buf(),
            field: format!("{}.rope.dimension_count", meta.arch),
            value: rot.to_string(),
            why: format!("RoPE on part of each head (head_dim {head_dim}) is not implemented"),
        });
    }
    let vocab_size = match loader.shape("model.embed_tokens.weight") {
        Some(shape) => shape.first().copied().unwrap_or(0),
        None => {
            return Err(LmError::MissingTensor {
                path: meta.path.to_path_buf(),
                tensor: "token_embd.weight".into(),
            });
        }
    };
    let context_length = meta.usize("context_length")?;
    Ok(TransformerConfig {
        architecture: meta.arch.clone(),
        hidden_size,
        intermediate_size: meta.opt_usize("feed_forward_length")?.unwrap_or(0),
        num_layers: meta.usize("block_count")?,
        num_heads,
        num_kv_heads: meta
            .opt_usize("attention.head_count_kv")?
            .unwrap_or(num_heads),
        head_dim,
        vocab_size,
        rms_norm_eps: meta.f64("attention.layer_norm_rms_epsilon")?,
        rope_theta: meta.opt_f64("rope.freq_base")?.unwrap_or(10000.0),
        rope_scaling: meta.rope_scaling(context_length)?,
        rope_interleaved: false,
        context_length,
        tie_word_embeddings: !loader.contains("lm_head.weight"),
        qkv_bias: loader.contains("model.layers.0.self_attn.q_proj.bias"),
        o_bias: loader.contains("model.layers.0.self_attn.o_proj.bias"),
        mlp_bias: false,
        qk_norm: loader.contains("model.layers.0.self_attn.q_norm.weight"),
        sliding_window: None,
        moe: None,
    })
}
