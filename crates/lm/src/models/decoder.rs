//! The decoder stack all supported families share: embeddings, N blocks of
//! (RMSNorm, attention, residual, RMSNorm, MLP or MoE, residual), a final
//! norm and the output head. Families differ only in config (biases, q/k
//! norm, RoPE, experts), which `TransformerConfig` carries.

use candle_core::Tensor;

use super::attention::Attention;
use super::embedding::Embedding;
use super::mlp::{HF_MLP, Mlp};
use super::moe::SparseMoe;
use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::kv_cache::KvCache;
use crate::linear::{Linear, Split};
use crate::model::Logits;
use crate::rope::Rope;
use crate::weights::Loader;

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

struct Block {
    attn_norm: Tensor,
    attn: Attention,
    ffn_norm: Tensor,
    ffn: FeedForward,
}

pub struct Decoder {
    cfg: TransformerConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    head: Linear,
    rope: Rope,
}

impl Decoder {
    pub fn load(cfg: TransformerConfig, loader: &mut Loader) -> Result<Self, LmError> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let embed = Embedding::load(loader, "model.embed_tokens.weight", cfg.vocab_size, h)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("model.layers.{i}");
            let sparse = cfg
                .moe
                .as_ref()
                .filter(|m| m.sparse_layers.get(i).copied().unwrap_or(false));
            let ffn = match sparse {
                Some(moe) => FeedForward::Sparse(SparseMoe::load(loader, &p, h, moe)?),
                None => FeedForward::Dense(Mlp::load(
                    loader,
                    &format!("{p}.mlp"),
                    &HF_MLP,
                    h,
                    cfg.intermediate_size,
                    cfg.mlp_bias,
                )?),
            };
            blocks.push(Block {
                attn_norm: loader.float(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn: Attention::load(loader, &format!("{p}.self_attn"), &cfg)?,
                ffn_norm: loader.float(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                ffn,
            });
        }
        let norm = RmsNorm::load(loader, "model.norm.weight", h, eps)?;
        let head = if cfg.tie_word_embeddings {
            embed.as_head(loader.quantize())?
        } else {
            Linear::load(loader, "lm_head", h, cfg.vocab_size, false, Split::Whole)?
        };
        // GGUF llama 3 stores its RoPE scaling as per-pair frequency divisors.
        let freq_factors = if loader.contains("rope_freqs.weight") {
            let t = loader.float("rope_freqs.weight", &[cfg.head_dim / 2])?;
            Some(t.to_vec1::<f32>()?)
        } else {
            None
        };
        let rope = Rope::new(&cfg, freq_factors.as_deref())?;
        Ok(Decoder {
            cfg,
            embed,
            blocks,
            norm,
            head,
            rope,
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// Runs `tokens` after what `kv` holds; see [`crate::Model::forward`].
    pub fn forward(
        &mut self,
        tokens: &[u32],
        kv: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor, LmError> {
        let t = tokens.len();
        if t == 0 {
            return Err(LmError::EmptyInput);
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&id| id as usize >= self.cfg.vocab_size)
        {
            return Err(LmError::TokenOutOfRange {
                token: bad,
                vocab_size: self.cfg.vocab_size,
            });
        }
        let position = kv.len();
        if position + t > self.cfg.context_length {
            return Err(LmError::ContextOverflow {
                position,
                tokens: t,
                context_length: self.cfg.context_length,
            });
        }
        let result = self.run(tokens, kv, logits);
        if result.is_err() {
            // Leave the cache as it was before this step, not half-written.
            let _ = kv.truncate(position);
        }
        result
    }

    fn run(&mut self, tokens: &[u32], kv: &mut KvCache, logits: Logits) -> Result<Tensor, LmError> {
        let t = tokens.len();
        let eps = self.cfg.rms_norm_eps as f32;
        self.rope.ensure(kv.len() + t)?;
        let step = kv.begin(t)?;
        let mask = kv.mask(&step, self.cfg.sliding_window)?;
        let mut x = self.embed.forward(tokens)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let h = block
                .attn
                .forward(&h, i, &self.rope, kv, &step, mask.as_ref())?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let h = match &block.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h)?,
                FeedForward::Sparse(moe) => moe.forward(&h)?,
            };
            x = (x + h)?;
        }
        let x = match logits {
            Logits::Last => x.narrow(0, t - 1, 1)?,
            Logits::All => x,
        };
        let out = self.head.forward(&self.norm.forward(&x)?)?;
        Ok(match logits {
            Logits::Last => out.squeeze(0)?,
            Logits::All => out,
        })
    }
}
