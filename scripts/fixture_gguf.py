"""GGUF versions of the HF fixtures, written the way llama.cpp's
convert_hf_to_gguf.py writes them (conversion/base.py, llama.py, qwen.py of
llama.cpp b11434), so huddle's GGUF loader sees what real files contain:

- tensor names from gguf-py's map (token_embd, blk.N.attn_q, ffn_gate_exps,
  output_norm, output; tied models have no `output`);
- llama/mistral q and k weights permuted (LlamaModel.permute) for llama.cpp's
  interleaved ("normal") rope; qwen2/qwen3 kept as they are (neox rope);
- llama3 rope scaling as a `rope_freqs.weight` tensor of per-frequency
  factors; yarn as rope.scaling.{type,factor,original_context_length};
- MoE experts stacked into one 3-D tensor per projection;
- 1-D tensors, norms and the MoE router always F32; other matrices in the
  file type (F32 / F16 / BF16 / Q8_0 via gguf.quants);
- vocab: tokenizer.ggml.model "gpt2", pre "smollm" (the fixture tokenizer's
  pre-tokenizer: individual digits + GPT-2 regex), tokens, token types
  (special tokens CONTROL), merges, bos/eos/unk/pad ids, add_bos/eos flags,
  chat template (gguf.SpecialVocab reading the HF directory, as the converter
  does).

A file with float weights equal to the HF fixture's has the same expected
logits (<name>/expected.safetensors). A quantized file also gets
<file>.expected.safetensors: mlx-lm's logits with the dequantized weights,
the exact reference for that file.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np

# (HF fixture, file type) pairs written to gguf/<name>-<type>.gguf.
GGUF_FILES = [
    ("llama", "f32"),
    ("llama", "q8_0"),
    ("llama3", "q8_0"),
    ("mistral", "f16"),
    ("qwen2", "f32"),
    ("qwen3", "bf16"),
    # bf16, not q8_0: llama.cpp (and candle) quantize activations to q8_0
    # for q8_0 matmuls, and that noise flips one token's 2nd/3rd expert
    # choice in this model, which no tolerance can absorb.
    ("qwen3_moe", "bf16"),
]

ARCH = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "qwen3_moe": gguf.MODEL_ARCH.QWEN3MOE,
}

FTYPE = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "bf16": (gguf.LlamaFileType.MOSTLY_BF16, gguf.GGMLQuantizationType.BF16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half layout to
    the interleaved pairs llama.cpp's LLAMA rope expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(cfg: dict) -> np.ndarray:
    """LlamaModel.generate_extra_tensors: per-frequency divisors."""
    rs = cfg["rope_scaling"]
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg["rope_theta"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor = rs.get("factor", 8.0)
    low, high = rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def gguf_tensors(cfg: dict, weights: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """HF weights -> (GGUF name, float32 array) in the converter's order."""
    mt = cfg["model_type"]
    arch = ARCH[mt]
    n_layers = cfg["num_hidden_layers"]
    names = gguf.get_tensor_name_map(arch, n_layers)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    out = []
    experts: dict[str, list] = {}
    for hf_name in sorted(weights, key=_hf_order):
        data = weights[hf_name]
        if arch == gguf.MODEL_ARCH.LLAMA:
            if hf_name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute(data, heads)
            elif hf_name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute(data, kv_heads)
        if ".mlp.experts." in hf_name:
            # model.layers.L.mlp.experts.E.proj.weight -> stacked over E
            parts = hf_name.split(".")
            key = ".".join(parts[:5] + parts[6:])
            experts.setdefault(key, []).append((int(parts[5]), data))
            if len(experts[key]) < cfg["num_experts"]:
                continue
            data = np.stack([d for _, d in sorted(experts.pop(key), key=lambda t: t[0])])
            hf_name = key
        new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"no GGUF name for {hf_name}")
        out.append((new, data))
    if experts:
        raise SystemExit(f"incomplete experts: {sorted(experts)}")
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "llama3":
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)))
    return out


def _hf_order(name: str):
    """The converter walks tensors in file order (sorted names); layer
    numbers sort numerically so blk.10 follows blk.9."""
    parts = name.split(".")
    return [int(p) if p.isdigit() else p for p in parts]


def tensor_qtype(gguf_name: str, data: np.ndarray, default) -> gguf.GGMLQuantizationType:
    if data.ndim <= 1 or gguf_name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    if ".ffn_gate_inp." in gguf_name:
        return gguf.GGMLQuantizationType.F32
    return default


def write_gguf(
    path: Path, name: str, hf_dir: Path, cfg: dict, weights: dict[str, np.ndarray], kind: str, tokenizer
) -> list[tuple[str, np.ndarray, object]]:
    ftype, default_q = FTYPE[kind]
    mt = cfg["model_type"]
    arch = ARCH[mt]
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"huddle fixture {name}")

    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    if "num_experts" in cfg:
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(ftype)
    if arch == gguf.MODEL_ARCH.LLAMA:
        w.add_vocab_size(cfg["vocab_size"])
        w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    if arch == gguf.MODEL_ARCH.QWEN3MOE:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])

    add_vocab(w, hf_dir, cfg, tokenizer)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    written = []
    for gname, data in gguf_tensors(cfg, weights):
        q = tensor_qtype(gname, data, default_q)
        raw = gguf.quants.quantize(data.astype(np.float32), q)
        w.add_tensor(gname, raw, raw_dtype=q)
        written.append((gname, raw, q))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def add_vocab(w, hf_dir: Path, cfg: dict, tokenizer) -> None:
    """_set_vocab_gpt2: token strings as in tokenizer.json's vocab, special
    added tokens CONTROL, the rest NORMAL; merges and special ids through
    gguf.SpecialVocab."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    reverse = {i: t for t, i in vocab.items()}
    added = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if reverse[i] in added else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True).add_to_gguf(w)


def dequantized_hf_weights(cfg: dict, written) -> dict[str, np.ndarray]:
    """The file's weights, dequantized and mapped back to HF names: the model
    the quantized file really holds."""
    mt = cfg["model_type"]
    names = gguf.get_tensor_name_map(ARCH[mt], cfg["num_hidden_layers"])
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    back = {}
    for hf in _all_hf_names(cfg):
        back[names.get_name(hf, try_suffixes=(".weight", ".bias"))] = hf
    out = {}
    for gname, raw, q in written:
        if gname.startswith("rope_freqs"):
            continue
        data = gguf.quants.dequantize(raw, q).astype(np.float32)
        hf = back[gname]
        if ARCH[mt] == gguf.MODEL_ARCH.LLAMA:
            if ".q_proj." in hf:
                data = unpermute(data, heads)
            elif ".k_proj." in hf:
                data = unpermute(data, kv_heads)
        if ".mlp.experts." in hf:
            parts = hf.split(".")
            for e in range(data.shape[0]):
                out[".".join(parts[:5] + [str(e)] + parts[5:])] = data[e]
        else:
            out[hf] = data
    return out


def _all_hf_names(cfg: dict) -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for s in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "mlp.gate",
            "mlp.experts.gate_proj",
            "mlp.experts.up_proj",
            "mlp.experts.down_proj",
        ]:
            names.append(p + s + ".weight")
        for s in ["q_proj", "k_proj", "v_proj"]:
            names.append(p + "self_attn." + s + ".bias")
    return names


def write_gguf_fixtures(out_dir: Path, built: dict, tokenizer) -> None:
    from safetensors.numpy import load_file, save_file

    from make_fixtures import reference_logits, save_weights

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, kind in GGUF_FILES:
        if name not in built:
            continue
        hf_dir, cfg, weights = built[name]
        path = out_dir / f"{name}-{kind}.gguf"
        written = write_gguf(path, name, hf_dir, cfg, weights, kind, tokenizer)
        line = f"{path.name}: {path.stat().st_size} bytes"
        if kind == "q8_0":
            # Reference for the quantized file: run the dequantized weights.
            tokens = load_file(str(hf_dir / "expected.safetensors"))["tokens"]
            tmp = Path(tempfile.mkdtemp(prefix="huddle-fx-"))
            try:
                for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
                    shutil.copy(hf_dir / f, tmp / f)
                save_weights(tmp, dequantized_hf_weights(cfg, written), "float32", 1)
                logits = reference_logits(tmp, [int(t) for t in tokens])
            finally:
                shutil.rmtree(tmp)
            save_file(
                {"tokens": tokens.astype(np.int64), "logits": logits.astype(np.float32)},
                str(out_dir / f"{name}-{kind}.expected.safetensors"),
            )
            ref = load_file(str(hf_dir / "expected.safetensors"))["logits"]
            line += f", max |logit - f32 logit| {np.abs(ref - logits).max():.3f}"
        print(line)
    write_manifest(out_dir)


def write_manifest(out_dir: Path) -> None:
    manifest = {
        "note": "GGUF fixtures; expected logits: ../<hf name>/expected.safetensors "
        "(same float weights) or <file>.expected.safetensors (quantized files, "
        "logits of the dequantized weights)",
        "files": [
            {
                "file": f"{n}-{k}.gguf",
                "hf": n,
                "expected": f"{n}-{k}.expected.safetensors"
                if k == "q8_0"
                else f"../{n}/expected.safetensors",
            }
            for n, k in GGUF_FILES
        ],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
