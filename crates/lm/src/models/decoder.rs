//! The decoder stack all supported families share: embeddings, N blocks of
//! (RMSNorm, attention, residual, RMSNorm, MLP or MoE, residual), a final
//! norm and the output head. Families differ only in config (biases, q/k
//! norm, RoPE, experts), which `TransformerConfig` carries.

use candle_core::{Device, Tensor};
use huddle_comm::Group;

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
use crate::tp;
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
    /// On a tensor-parallel rank, this rank's vocabulary rows only.
    head: Linear,
    rope: Rope,
    group: Group,
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
            let dims = (h, cfg.vocab_size);
            Linear::load_part(loader, "lm_head", dims, false, Split::Output, embed.rows())?
        };
        let group = loader.group().clone();
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
            group,
        })
    }

    /// KV heads per layer this rank caches.
    pub fn local_kv_heads(&self) -> usize {
        self.blocks
            .first()
            .map_or(self.cfg.num_kv_heads, |b| b.attn.local_kv_heads())
    }

    /// The full `[t, vocab]` logits from every rank's `[t, range]` slice.
    fn gather_vocab(&self, part: Tensor) -> Result<Tensor, LmError> {
        let size = self.group.size();
        if size <= 1 {
            return Ok(part);
        }
        let t = part.dim(0)?;
        let vocab = self.cfg.vocab_size;
        let widths: Vec<usize> = (0..size)
            .map(|r| tp::balanced(vocab, size, r).len())
            .collect();
        let counts: Vec<usize> = widths.iter().map(|w| w * t).collect();
        let mine = part.flatten_all()?.to_vec1::<f32>()?;
        let mut all = vec![0f32; t * vocab];
        self.group
            .all_gather_varied(&mine, &mut all, &counts)
            .map_err(LmError::comm)?;
        let all = Tensor::from_vec(all, t * vocab, &Device::Cpu)?;
        if t == 1 {
            return Ok(all.reshape((1, vocab))?);
        }
        let mut at = 0;
        let mut blocks = Vec::with_capacity(size);
        for w in widths {
            blocks.push(all.narrow(0, at, w * t)?.reshape((t, w))?);
            at += w * t;
        }
        Ok(Tensor::cat(&blocks, 1)?)
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
        let result = self.run(tokens, kv, logits).map_err(|e| match e {
            LmError::Candle(c) => match tp::take_comm_error() {
                Some(comm) => LmError::Comm(comm),
                None => LmError::Candle(c),
            },
            other => other,
        });
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
        let out = self.gather_vocab(self.head.forward(&self.norm.forward(&x)?)?)?;
        Ok(match logits {
            Logits::Last => out.squeeze(0)?,
            Logits::All => out,
        })
    }
}
