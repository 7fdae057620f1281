//! Grouped-query self-attention with RoPE, optional q/k/v biases, optional
//! per-head q/k RMSNorm (Qwen3), over the shared KV cache.
//!
//! Queries are grouped by the KV head they share (`[kv_heads, rep * t,
//! head_dim]`), so the cached keys and values are used as they are, never
//! repeated per query head.

use candle_core::Tensor;

use super::norm::RmsNorm;
use crate::config::TransformerConfig;
use crate::error::LmError;
use crate::kv_cache::{KvCache, Step};
use crate::linear::{Linear, Split};
use crate::rope::Rope;
use crate::weights::Loader;

#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
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
        let proj = |loader: &mut Loader, name: &str, i: usize, o: usize, bias: bool, split| {
            Linear::load(loader, &format!("{prefix}.{name}"), i, o, bias, split)
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
            q: proj(loader, "q_proj", h, nh * hd, cfg.qkv_bias, Split::Output)?,
            k: proj(loader, "k_proj", h, nkv * hd, cfg.qkv_bias, Split::Output)?,
            v: proj(loader, "v_proj", h, nkv * hd, cfg.qkv_bias, Split::Output)?,
            o: proj(loader, "o_proj", nh * hd, h, cfg.o_bias, Split::Input)?,
            q_norm,
            k_norm,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
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
        let rep = nh / nkv;
        let q = q.squeeze(0)?.reshape((nkv, rep * t, hd))?;
        let scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(mask) => scores
                .reshape((nkv, rep, t, seen))?
                .broadcast_add(mask)?
                .reshape((nkv, rep * t, seen))?,
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
