//! Grouped-query self-attention with RoPE, optional q/k/v biases, optional
//! per-head q/k RMSNorm (Qwen3), over the shared KV cache.
//!
//! The attention itself (scores, mask, softmax, values) runs fused on the
//! cache's own storage ([`crate::fused::attention`]): keys and values are
//! never repeated per query head, and each query row's result does not
//! depend on how many rows the step has.

use std::ops::Range;

use candle_core::{Device, Layout, Tensor};
use huddle_kernels::Kernels;

use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::fused::attention::{HeadRows, Problem};
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
        let heads = |y: Tensor, n: usize, norm: &Option<RmsNorm>| -> candle_core::Result<Tensor> {
            let y = y.reshape((t, n, hd))?;
            let y = match norm {
                Some(norm) => norm.forward(&y)?,
                None => y,
            };
            y.transpose(0, 1)?.contiguous()
        };
        let mut qkv = Linear::forward_all(&[&self.q, &self.k, &self.v], x)?.into_iter();
        let (Some(q), Some(k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            candle_core::bail!("attention: q, k and v projections missing")
        };
        let q = rope.apply(&heads(q, nh, &self.q_norm)?.unsqueeze(0)?, pos)?;
        let k = rope
            .apply(&heads(k, nkv, &self.k_norm)?.unsqueeze(0)?, pos)?
            .squeeze(0)?;
        let v = heads(v, nkv, &None)?;
        let (keys, values) = kv.update(layer, step, &k, &v)?;
        let out = self.attend(&q.squeeze(0)?, &keys, &values, mask)?;
        let out = Tensor::from_vec(out, (t, nh * hd), &Device::Cpu)?;
        self.o.forward(&out)
    }

    /// Attention of `q` (`[heads, t, head_dim]`) over the cache's keys and
    /// values (`[kv_heads, seen, head_dim]`, rows contiguous), as
    /// `[t, heads * head_dim]` values.
    fn attend(
        &self,
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Vec<f32>> {
        let (heads, t, hd) = q.dims3()?;
        let q = q.contiguous()?;
        let (keys, values) = (rows_contiguous(keys)?, rows_contiguous(values)?);
        let mask = mask.map(Tensor::contiguous).transpose()?;
        // Read guards on the storages, held while the slices are in use.
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = keys.storage_and_layout();
        let (vs, vl) = values.storage_and_layout();
        let ms = mask.as_ref().map(|m| m.storage_and_layout());
        let (qd, kd, vd) = (cpu_f32(&qs)?, cpu_f32(&ks)?, cpu_f32(&vs)?);
        let mask = match &ms {
            Some((s, l)) => Some(cpu_f32(s)?.get(l.start_offset()..).ok_or_else(|| {
                candle_core::Error::Msg("attention: mask offset past its storage".into())
            })?),
            None => None,
        };
        let problem = Problem {
            queries: head_rows(qd, ql)?,
            keys: head_rows(kd, kl)?,
            values: head_rows(vd, vl)?,
            mask,
            kv_of_head: &self.kv_of_head,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let mut out = vec![0f32; t * heads * hd];
        problem
            .run(Kernels::best(), kernel_matmul::pool(), &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(out)
    }
}

/// `t` itself when its rows (last dimension) are contiguous, else a copy.
fn rows_contiguous(t: &Tensor) -> candle_core::Result<Tensor> {
    let l = t.layout();
    if l.dims().len() == 3 && l.stride()[2] == 1 && l.stride()[1] == l.dims()[2] {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The rows of a 3-d tensor whose last dimension is contiguous.
fn head_rows<'a>(data: &'a [f32], l: &Layout) -> candle_core::Result<HeadRows<'a>> {
    let (dims, stride) = (l.dims(), l.stride());
    if dims.len() != 3 || stride[2] != 1 || stride[1] != dims[2] {
        candle_core::bail!("attention: rows of {dims:?} (strides {stride:?}) are not contiguous")
    }
    let data = data.get(l.start_offset()..).ok_or_else(|| {
        candle_core::Error::Msg("attention: tensor offset past its storage".into())
    })?;
    Ok(HeadRows {
        data,
        heads: dims[0],
        len: dims[1],
        head_dim: dims[2],
        head_stride: stride[0],
    })
}

fn cpu_f32(s: &candle_core::Storage) -> candle_core::Result<&[f32]> {
    match s {
        candle_core::Storage::Cpu(c) => c.as_slice::<f32>(),
        _ => candle_core::bail!("attention runs on the CPU"),
    }
}
