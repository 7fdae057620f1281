//! Grouped-query self-attention with RoPE, optional q/k/v biases, optional
//! per-head q/k RMSNorm (Qwen3), over the shared KV cache.
//!
//! Queries are grouped by the KV head they share (`[kv_heads, rep * t,
//! head_dim]`), so the cached keys and values are used as they are, never
//! repeated per query head.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::kv_cache::{KvCache, Step};
use crate::linear::{Linear, Split};
use crate::rope::Rope;
use crate::tp::HeadPlan;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    /// Query and KV heads of this rank (all of them on a single rank).
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    grouping: Grouping,
}

/// How this rank's query heads map onto its KV heads.
#[derive(Debug, Clone)]
enum Grouping {
    /// Each KV head serves this many consecutive query heads: queries are
    /// grouped by KV head and the cache is used as is.
    Uniform(usize),
    /// A tensor-parallel rank whose heads straddle GQA groups: the KV head
    /// index of every query head, to gather keys and values per head.
    PerHead(Tensor),
}

impl Attention {
    /// `prefix`: `model.layers.N.self_attn`.
    pub fn load(
        loader: &mut Loader,
        prefix: &str,
        cfg: &TransformerConfig,
    ) -> Result<Self, LmError> {
        let (h, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        );
        let group = loader.group();
        let plan = HeadPlan::new(nh, nkv, group.size(), group.rank()).ok_or_else(|| {
            LmError::Unsplittable {
                ranks: group.size(),
                why: format!("{nh} attention heads ({nkv} KV heads) need at most {nh} ranks"),
            }
        })?;
        let rows = |r: &Range<usize>| r.start * hd..r.end * hd;
        let (q_rows, kv_rows) = (rows(&plan.heads), rows(&plan.kv_heads));
        let proj = |loader: &mut Loader, name: &str, dims, bias, split, range| {
            Linear::load_part(
                loader,
                &format!("{prefix}.{name}"),
                dims,
                bias,
                split,
                range,
            )
        };
        let (q_norm, k_norm) = if cfg.qk_norm {
            (
                Some(RmsNorm::load(
                    loader,
                    &format!("{prefix}.q_norm.weight"),
                    hd,
                    cfg.rms_norm_eps,
                )?),
                Some(RmsNorm::load(
                    loader,
                    &format!("{prefix}.k_norm.weight"),
                    hd,
                    cfg.rms_norm_eps,
                )?),
            )
        } else {
            (None, None)
        };
        Ok(Attention {
            q: proj(
                loader,
                "q_proj",
                (h, nh * hd),
                cfg.qkv_bias,
                Split::Output,
                q_rows.clone(),
            )?,
            k: proj(
                loader,
                "k_proj",
                (h, nkv * hd),
                cfg.qkv_bias,
                Split::Output,
                kv_rows.clone(),
            )?,
            v: proj(
                loader,
                "v_proj",
                (h, nkv * hd),
                cfg.qkv_bias,
                Split::Output,
                kv_rows,
            )?,
            o: proj(
                loader,
                "o_proj",
                (nh * hd, h),
                cfg.o_bias,
                Split::Input,
                q_rows,
            )?,
            q_norm,
            k_norm,
            num_heads: plan.heads.len(),
            num_kv_heads: plan.kv_heads.len(),
            head_dim: hd,
            grouping: match plan.uniform_rep() {
                Some(rep) => Grouping::Uniform(rep),
                None => {
                    let ids: Vec<u32> = plan.kv_of_head.iter().map(|&k| k as u32).collect();
                    Grouping::PerHead(Tensor::new(ids.as_slice(), &Device::Cpu)?)
                }
            },
        })
    }

    /// KV heads this rank holds (all of them on a single rank).
    pub fn local_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// `x`: `[t, hidden]`; returns `[t, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        layer: usize,
        rope: &Rope,
        kv: &mut KvCache,
        step: &Step,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let t = x.dim(0)?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let pos = step.first_position();
        let heads =
            |proj: &Linear, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
                let y = proj.forward(x)?.reshape((t, n, hd))?;
                let y = match norm {
                    Some(norm) => norm.forward(&y)?,
                    None => y,
                };
                y.transpose(0, 1)?.contiguous()
            };
        let q = rope.apply(&heads(&self.q, nh, &self.q_norm)?.unsqueeze(0)?, pos)?;
        let k = rope
            .apply(&heads(&self.k, nkv, &self.k_norm)?.unsqueeze(0)?, pos)?
            .squeeze(0)?;
        let v = heads(&self.v, nkv, &None)?;
        let (keys, values) = kv.update(layer, step, &k, &v)?;
        let seen = keys.dim(1)?;
        let (keys, values, groups, rep) = match &self.grouping {
            Grouping::Uniform(rep) => (keys, values, nkv, *rep),
            // The cache hands out views into its growing buffers.
            Grouping::PerHead(index) => (
                keys.contiguous()?.index_select(index, 0)?,
                values.contiguous()?.index_select(index, 0)?,
                nh,
                1,
            ),
        };
        let q = q.squeeze(0)?.reshape((groups, rep * t, hd))?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => scores
                .reshape((groups, rep, t, seen))?
                .broadcast_add(mask)?
                .reshape((groups, rep * t, seen))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&values)?;
        let out = out
            .reshape((nh, t, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((t, nh * hd))?;
        self.o.forward(&out)
    }
}
