"""A second, independent reference: the fixtures' forward pass in float64
numpy, following transformers' semantics (rotate-half rope, llama3 and yarn
inverse frequencies and yarn's attention factor, GQA, qwen3 q/k norms, MoE
softmax -> top-k -> renormalize). make_fixtures.py requires mlx-lm's logits
to agree with it, so a bug or a silently ignored config field in either one
cannot slip into the expected logits."""

from __future__ import annotations

import math

import numpy as np


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def inv_freqs(cfg: dict, dim: int) -> tuple[np.ndarray, float]:
    """Rope inverse frequencies and the factor cos/sin are scaled by."""
    base = cfg["rope_theta"]
    inv = 1.0 / base ** (np.arange(0, dim, 2) / dim)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "llama3":
        f, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / f, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / f + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        return np.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        f, old = rs["factor"], rs["original_max_position_embeddings"]
        beta_fast, beta_slow = rs.get("beta_fast", 32), rs.get("beta_slow", 1)

        def correction_dim(rotations):
            return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        extrapolate = 1 - np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
        return (inv / f) * (1 - extrapolate) + inv * extrapolate, 0.1 * math.log(f) + 1
    if kind not in (None, "default"):
        raise ValueError(f"numpy reference: rope_type {kind} not implemented")
    return inv, 1.0


def _rope(x, inv, att):
    ang = np.arange(x.shape[0], dtype=np.float64)[:, None] * inv[None]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None] * att
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None] * att
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def _silu(x):
    return x / (1 + np.exp(-x))


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens) -> np.ndarray:
    """Logits [n, vocab] for `tokens` at positions 0..n."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    n = len(tokens)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    eps = cfg["rms_norm_eps"]
    inv, att = inv_freqs(cfg, hd)
    causal = np.triu(np.full((n, n), -np.inf), 1)
    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name, v, p=p):
            y = v @ w[p + name + ".weight"].T
            return y + w[p + name + ".bias"] if p + name + ".bias" in w else y

        h = _rms(x, w[p + "input_layernorm.weight"], eps)
        q = lin("self_attn.q_proj", h).reshape(n, heads, hd)
        k = lin("self_attn.k_proj", h).reshape(n, kv_heads, hd)
        v = lin("self_attn.v_proj", h).reshape(n, kv_heads, hd)
        if p + "self_attn.q_norm.weight" in w:
            q = _rms(q, w[p + "self_attn.q_norm.weight"], eps)
            k = _rms(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q, inv, att), _rope(k, inv, att)
        k = np.repeat(k, heads // kv_heads, 1)
        v = np.repeat(v, heads // kv_heads, 1)
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        x = x + lin("self_attn.o_proj", np.einsum("hqk,khd->qhd", s, v).reshape(n, heads * hd))
        h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
        if p + "mlp.gate.weight" in w:
            x = x + _moe(cfg, w, p, h)
        else:
            x = x + lin("mlp.down_proj", _silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
    x = _rms(x, w["model.norm.weight"], eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def _moe(cfg, w, p, h):
    r = h @ w[p + "mlp.gate.weight"].T
    prob = np.exp(r - r.max(-1, keepdims=True))
    prob /= prob.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-prob[t])[: cfg["num_experts_per_tok"]]
        scores = prob[t, top]
        if cfg["norm_topk_prob"]:
            scores = scores / scores.sum()
        for e, c in zip(top, scores):
            q = f"{p}mlp.experts.{e}."
            act = _silu(h[t] @ w[q + "gate_proj.weight"].T) * (h[t] @ w[q + "up_proj.weight"].T)
            out[t] += c * (act @ w[q + "down_proj.weight"].T)
    return out
