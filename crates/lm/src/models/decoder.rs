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
use crate::fused::{Scratch, sized};
use crate::kv_cache::{KvCache, Step};
use crate::linear::{Linear, Split};
use crate::model::Logits;
use crate::pp::{self, Stage};
use crate::rope::Rope;
use crate::tp;
use crate::weights::Loader;

/// Tensor ranks whose greedy picks [`Decoder`] gathers on the stack.
const MAX_ARGMAX_RANKS: usize = 256;

/// `x += delta`, as a model error.
fn add(x: &mut [f32], delta: &[f32]) -> Result<(), LmError> {
    huddle_kernels::ops::add(x, delta)
        .map_err(|e| LmError::Candle(candle_core::Error::Msg(format!("residual: {e}"))))
}

#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: FeedForward,
}

/// The buffers of a step, kept from step to step: a decode step on
/// kernel-format weights allocates nothing but the logits it returns.
#[derive(Default)]
struct Workspace {
    /// The residual stream, `[t, hidden]`.
    x: Vec<f32>,
    /// A norm's output, the next layer's input.
    h: Vec<f32>,
    /// A block's output, added to `x`.
    delta: Vec<f32>,
    /// The step's attention mask, when it hides anything.
    mask: Vec<f32>,
    /// This rank's part of the logits, then all of them.
    part: Vec<f32>,
    logits: Vec<f32>,
    /// The ranks' logit blocks before they are interleaved into rows.
    blocks: Vec<f32>,
    scratch: Scratch,
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
    ws: Workspace,
    /// Vocabulary entries each tensor rank's head computes.
    vocab_widths: Vec<usize>,
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
                attn_norm: RmsNorm::load(loader, &format!("{p}.input_layernorm.weight"), h, eps)?,
                attn: Attention::load(loader, &format!("{p}.self_attn"), &cfg)?,
                ffn_norm: RmsNorm::load(
                    loader,
                    &format!("{p}.post_attention_layernorm.weight"),
                    h,
                    eps,
                )?,
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
        let vocab_widths = (0..group.size())
            .map(|r| tp::balanced(cfg.vocab_size, group.size(), r).len())
            .collect();
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
            ws: Workspace::default(),
            vocab_widths,
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
        let mut ws = std::mem::take(&mut self.ws);
        let result = self
            .prepare(t, kv, &mut ws.mask)
            .and_then(|(step, masked)| {
                self.run(tokens, kv, &step, masked, logits, &mut ws)
                    .map_err(|e| self.stage_failed(e))
            });
        self.ws = ws;
        if result.is_err() {
            // Leave the cache as it was before this step, not half-written.
            let _ = kv.truncate(position);
        }
        result
    }

    /// Everything a step does before any rank talks to another; it fails
    /// (or not) alike on every rank, whose caches are in the same state.
    /// Returns the step and whether `mask` holds a mask for it.
    fn prepare(
        &mut self,
        t: usize,
        kv: &mut KvCache,
        mask: &mut Vec<f32>,
    ) -> Result<(Step, bool), LmError> {
        self.rope.ensure(kv.len() + t)?;
        let step = kv.begin(t)?;
        let masked = kv.mask(&step, self.cfg.sliding_window, mask);
        Ok((step, masked))
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
        masked: bool,
        logits: Logits,
        ws: &mut Workspace,
    ) -> Result<Tensor, LmError> {
        let (t, hs) = (tokens.len(), self.cfg.hidden_size);
        let stage = self.stage.index;
        let Workspace {
            x,
            h,
            delta,
            mask,
            part,
            logits: all,
            blocks,
            scratch,
        } = ws;
        let (x, h, delta) = (sized(x, t * hs), sized(h, t * hs), sized(delta, t * hs));
        let mask = masked.then_some(&mask[..]);
        match &self.embed {
            Some(embed) => embed.forward_into(tokens, x)?,
            None => pp::recv_into(&self.pipeline, x, stage - 1)?,
        }
        // `delta` waits to be added to `x` until the next norm reads it.
        let mut pending = false;
        for (i, block) in self.blocks.iter().enumerate() {
            if pending {
                block.attn_norm.add_forward_into(x, delta, h)?;
            } else {
                block.attn_norm.forward_into(x, h)?;
            }
            let layer = (i, &self.rope);
            block
                .attn
                .forward_into(h, t, layer, kv, step, mask, scratch, delta)?;
            block.ffn_norm.add_forward_into(x, delta, h)?;
            match &block.ffn {
                FeedForward::Dense(mlp) => mlp.forward_into(h, t, scratch, delta)?,
                FeedForward::Sparse(moe) => {
                    let y = moe.forward(&Tensor::from_slice(&h[..], (t, hs), &Device::Cpu)?)?;
                    crate::fused::copy_into("moe", &y.flatten_all()?.to_vec1::<f32>()?, delta)?;
                }
            }
            pending = true;
        }
        let Some(output) = &self.output else {
            if pending {
                add(x, delta)?;
            }
            pp::send_slice(&self.pipeline, x, stage + 1)?;
            return self.logits_from_last_stage(t, logits);
        };
        let rows = match logits {
            Logits::Last | Logits::Argmax => t - 1..t,
            Logits::All => 0..t,
        };
        let m = rows.len();
        let span = rows.start * hs..rows.end * hs;
        if pending {
            add(&mut x[span.clone()], &delta[span.clone()])?;
        }
        let normed = &mut h[..m * hs];
        output.norm.forward_into(&x[span], normed)?;
        let part = sized(part, m * output.head.out_features()?);
        output.head.forward_into(normed, m, part)?;
        if logits == Logits::Argmax {
            let id = self.argmax_vocab(part)?;
            if stage != 0 && self.group.rank() == 0 {
                pp::send_slice(&self.pipeline, &[id as f32], 0)?;
            }
            return Ok(Tensor::new(&[id], &Device::Cpu)?);
        }
        let vocab = self.cfg.vocab_size;
        let out: &[f32] = if self.group.size() <= 1 {
            part
        } else {
            let all = sized(all, m * vocab);
            tp::gather_columns(&self.group, part, m, &self.vocab_widths, blocks, all)?;
            all
        };
        // Every tensor rank of the last stage holds the full logits; the
        // one in the driving rank's pipeline group hands them back.
        if stage != 0 && self.group.rank() == 0 {
            pp::send_slice(&self.pipeline, out, 0)?;
        }
        Ok(match logits {
            Logits::All => Tensor::from_slice(out, (m, vocab), &Device::Cpu)?,
            _ => Tensor::from_slice(out, vocab, &Device::Cpu)?,
        })
    }

    /// The greedy token of one row of logits split by vocabulary over the
    /// tensor group: each rank's first largest value and its id, the
    /// first largest of those (ranks hold ascending ranges), as one rank's
    /// argmax over all of them would pick.
    fn argmax_vocab(&self, part: &[f32]) -> Result<u32, LmError> {
        let local = crate::sampling::argmax(part);
        let size = self.group.size();
        if size <= 1 {
            return Ok(local);
        }
        let start: usize = self.vocab_widths[..self.group.rank()].iter().sum();
        let value = part.get(local as usize).copied().unwrap_or(f32::NAN);
        let mine = [f64::from(value), (start + local as usize) as f64];
        let mut all = [0f64; 2 * MAX_ARGMAX_RANKS];
        let all = all.get_mut(..2 * size).ok_or(LmError::Unsplittable {
            ranks: size,
            why: format!("greedy decoding gathers at most {MAX_ARGMAX_RANKS} ranks' picks"),
        })?;
        let bytes = crate::comm_stats::all_gather_bytes(&self.group, 16, 16 * size as u64);
        crate::comm_stats::timed(bytes, || self.group.all_gather(&mine, all))
            .map_err(LmError::comm)?;
        let mut pick = (f64::NEG_INFINITY, 0.0);
        for pair in all.chunks_exact(2) {
            if pair[0] > pick.0 {
                pick = (pair[0], pair[1]);
            }
        }
        Ok(pick.1 as u32)
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
            Logits::Argmax => {
                let mut id = [0f32];
                pp::recv_into(&self.pipeline, &mut id, last)?;
                Tensor::new(&[id[0] as u32], &Device::Cpu)?
            }
            Logits::Last => {
                let mut out = vec![0f32; vocab];
                pp::recv_into(&self.pipeline, &mut out, last)?;
                Tensor::from_vec(out, vocab, &Device::Cpu)?
            }
            Logits::All => {
                let mut out = vec![0f32; t * vocab];
                pp::recv_into(&self.pipeline, &mut out, last)?;
                Tensor::from_vec(out, (t, vocab), &Device::Cpu)?
            }
        })
    }
}
