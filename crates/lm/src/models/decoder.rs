//! The decoder stack all supported families share: embeddings, N blocks of
//! (RMSNorm, attention, residual, RMSNorm, MLP or MoE, residual), a final
//! norm and the output head. Families differ only in config (biases, q/k
//! norm, RoPE, experts), which `TransformerConfig` carries.
//!
//! On a pipeline stage ([`crate::pp`]) the decoder holds only its layers,
//! the embedding only on the first stage and the norm and head only on the
//! last; hidden states come from the previous stage and go to the next.

use candle_core::{Device, Tensor};
use huddle_comm::Group;

use super::attention::Attention;
use super::embedding::Embedding;
use super::mlp::{HF_MLP, Mlp};
use super::moe::SparseMoe;
use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::kv_cache::{KvCache, Step};
use crate::linear::{Linear, Split};
use crate::model::Logits;
use crate::pp::{self, Stage};
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

/// The last stage's final norm and output head.
struct Output {
    norm: RmsNorm,
    /// On a tensor-parallel rank, this rank's vocabulary rows only.
    head: Linear,
}

pub struct Decoder {
    cfg: TransformerConfig,
    /// First stage only.
    embed: Option<Embedding>,
    /// The stage's layers, `stage.layers` in order.
    blocks: Vec<Block>,
    /// Last stage only.
    output: Option<Output>,
    rope: Rope,
    group: Group,
    stage: Stage,
    pipeline: Group,
}

impl Decoder {
    /// The whole stack, or with a pipeline group of several ranks, this
    /// rank's `stage` of it (only its tensors are read).
    pub fn load(
        cfg: TransformerConfig,
        loader: &mut Loader,
        pipeline: &Group,
        stage: Stage,
    ) -> Result<Self, LmError> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let needs_table = stage.is_first() || (stage.is_last() && cfg.tie_word_embeddings);
        let table = if needs_table {
            Some(Embedding::load(
                loader,
                "model.embed_tokens.weight",
                cfg.vocab_size,
                h,
            )?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(stage.layers.len());
        for i in stage.layers.clone() {
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
        let output = if stage.is_last() {
            let norm = RmsNorm::load(loader, "model.norm.weight", h, eps)?;
            let head = match (&table, cfg.tie_word_embeddings) {
                (Some(table), true) => table.as_head(loader.quantize())?,
                _ => {
                    let g = loader.group();
                    let rows = tp::balanced(cfg.vocab_size, g.size(), g.rank());
                    let dims = (h, cfg.vocab_size);
                    Linear::load_part(loader, "lm_head", dims, false, Split::Output, rows)?
                }
            };
            Some(Output { norm, head })
        } else {
            None
        };
        let embed = if stage.is_first() { table } else { None };
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
            output,
            rope,
            group,
            stage,
            pipeline: pipeline.clone(),
        })
    }

    /// Layers this rank runs (and caches keys and values for).
    pub fn local_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn stage(&self) -> &Stage {
        &self.stage
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
        tp::all_gather_varied(&self.group, &mine, &mut all, &counts)?;
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
        let result = self.prepare(t, kv).and_then(|(step, mask)| {
            self.run(tokens, kv, &step, mask.as_ref(), logits)
                .map_err(|e| self.stage_failed(e))
        });
        if result.is_err() {
            // Leave the cache as it was before this step, not half-written.
            let _ = kv.truncate(position);
        }
        result
    }

    /// Everything a step does before any rank talks to another; it fails
    /// (or not) alike on every rank, whose caches are in the same state.
    fn prepare(&mut self, t: usize, kv: &mut KvCache) -> Result<(Step, Option<Tensor>), LmError> {
        self.rope.ensure(kv.len() + t)?;
        let step = kv.begin(t)?;
        let mask = kv.mask(&step, self.cfg.sliding_window)?;
        Ok((step, mask))
    }

    /// An error once the step's communication began: a failed collective
    /// as such; on a pipeline anything else too, marked as fatal, because
    /// the stages after this one wait for its hidden states.
    fn stage_failed(&self, e: LmError) -> LmError {
        let e = match e {
            LmError::Candle(c) => match tp::take_comm_error() {
                Some(comm) => LmError::Comm(comm),
                None => LmError::Candle(c),
            },
            other => other,
        };
        match e {
            LmError::Comm(_) => e,
            e if self.pipeline.size() > 1 => LmError::StageFailed {
                stage: self.stage.index,
                source: Box::new(e),
            },
            e => e,
        }
    }

    /// On a pipeline of several stages, only pipeline rank 0 returns the
    /// logits; the other stages return an empty tensor.
    fn run(
        &self,
        tokens: &[u32],
        kv: &mut KvCache,
        step: &Step,
        mask: Option<&Tensor>,
        logits: Logits,
    ) -> Result<Tensor, LmError> {
        let t = tokens.len();
        let eps = self.cfg.rms_norm_eps as f32;
        let stage = self.stage.index;
        let mut x = match &self.embed {
            Some(embed) => embed.forward(tokens)?,
            None => pp::recv(&self.pipeline, t, self.cfg.hidden_size, stage - 1)?,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let h = block.attn.forward(&h, i, &self.rope, kv, step, mask)?;
            x = (x + h)?;
            let h = candle_nn::ops::rms_norm(&x, &block.ffn_norm, eps)?;
            let h = match &block.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h)?,
                FeedForward::Sparse(moe) => moe.forward(&h)?,
            };
            x = (x + h)?;
        }
        let Some(output) = &self.output else {
            pp::send(&self.pipeline, &x, stage + 1)?;
            return self.logits_from_last_stage(t, logits);
        };
        let x = match logits {
            Logits::Last => x.narrow(0, t - 1, 1)?,
            Logits::All => x,
        };
        let out = self.gather_vocab(output.head.forward(&output.norm.forward(&x)?)?)?;
        // Every tensor rank of the last stage holds the full logits; the
        // one in the driving rank's pipeline group hands them back.
        if stage != 0 && self.group.rank() == 0 {
            pp::send(&self.pipeline, &out, 0)?;
        }
        Ok(match logits {
            Logits::Last => out.squeeze(0)?,
            Logits::All => out,
        })
    }

    /// Stage 0 of a pipeline after passing its hidden states on: the
    /// logits the last stage sends back, when this rank drives.
    fn logits_from_last_stage(&self, t: usize, logits: Logits) -> Result<Tensor, LmError> {
        if self.stage.index != 0 || self.group.rank() != 0 {
            return Ok(Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu)?);
        }
        let last = self.stage.stages - 1;
        let vocab = self.cfg.vocab_size;
        Ok(match logits {
            Logits::Last => pp::recv(&self.pipeline, 1, vocab, last)?.squeeze(0)?,
            Logits::All => pp::recv(&self.pipeline, t, vocab, last)?,
        })
    }
}
