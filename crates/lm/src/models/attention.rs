//! Grouped-query self-attention with RoPE, optional q/k/v biases, optional
//! per-head q/k RMSNorm (Qwen3), over the shared KV cache.
//!
//! Everything runs on the decoder's reused buffers: the projections write
//! token-major rows, norms and RoPE work on them in place, and the
//! attention itself (scores, mask, softmax, values) runs fused on the
//! cache's own storage ([`crate::fused::attention`]): keys and values are
//! never repeated per query head, and each query row's result does not
//! depend on how many rows the step has.

use std::ops::Range;

use huddle_kernels::Kernels;

use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::fused::attention::{HeadRows, Problem};
use crate::fused::{Scratch, sized};
use crate::kernel_matmul;
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
    /// For each of this rank's query heads, its KV head among this rank's.
    kv_of_head: Vec<usize>,
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
            kv_of_head: plan.kv_of_head,
        })
    }

    /// KV heads this rank holds (all of them on a single rank).
    pub fn local_kv_heads(&self) -> usize {
        self.num_kv_heads
    }

    /// `x`: `t` rows of the hidden size; the layer's output (after the
    /// sum over the tensor group) into `out`, same shape. Projections,
    /// norms, rotation and attention work in `scratch`, allocating nothing
    /// once it has grown to the step's size.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into(
        &self,
        x: &[f32],
        t: usize,
        (layer, rope): (usize, &Rope),
        kv: &mut KvCache,
        step: &Step,
        mask: Option<&[f32]>,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) -> Result<(), LmError> {
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let pos = step.first_position();
        let Scratch { q, k, v, attn, .. } = scratch;
        let (q, k, v) = (
            sized(q, t * nh * hd),
            sized(k, t * nkv * hd),
            sized(v, t * nkv * hd),
        );
        Linear::forward_all_into(
            &[&self.q, &self.k, &self.v],
            x,
            t,
            &mut [&mut *q, &mut *k, &mut *v],
        )?;
        if let Some(norm) = &self.q_norm {
            norm.in_place(q)?;
        }
        if let Some(norm) = &self.k_norm {
            norm.in_place(k)?;
        }
        rope.apply(q, nh, pos)?;
        rope.apply(k, nkv, pos)?;
        let (keys, values) = kv.update(layer, step, k, v)?;
        let problem = Problem {
            // Token-major, as the projection wrote them.
            queries: HeadRows {
                data: q,
                heads: nh,
                len: t,
                head_dim: hd,
                row_stride: nh * hd,
                head_stride: hd,
            },
            keys,
            values,
            mask,
            kv_of_head: &self.kv_of_head,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let attn = sized(attn, t * nh * hd);
        problem
            .run(Kernels::best(), kernel_matmul::pool(), attn)
            .map_err(|e| LmError::Candle(candle_core::Error::Msg(e.to_string())))?;
        self.o.forward_into(attn, t, out)
    }
}
