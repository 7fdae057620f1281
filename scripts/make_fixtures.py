#!/usr/bin/env python3
"""Builds huddle-lm's reference fixtures: tiny random-weight Hugging Face models,
their GGUF conversions, and the logits a reference implementation computes.

Why: huddle's model code must agree with an independent implementation on
every architecture it claims, in every weight format it reads. Real models
are too big to commit, so each fixture is a ~100-500 KB random model whose
reference logits come from mlx-lm (CPU, float32), loaded from the very
directory written here, so the HF tensor naming is checked by mlx-lm itself.

Output (crates/lm/tests/fixtures/):
  <name>/config.json, model*.safetensors (+ index when split), tokenizer.json,
         tokenizer_config.json, generation_config.json,
         expected.safetensors  (tokens I64 [n], logits F32 [n, vocab])
  gguf/<name>-<type>.gguf      (llama.cpp convert_hf_to_gguf conventions;
                                expected logits = the HF fixture's)
  hf_tokens.json               (python `tokenizers` ids for tricky texts)

Deterministic: fixed seeds, fixed corpus; re-running reproduces the files
byte for byte.

Setup:
  python3 -m venv venv && . venv/bin/activate
  pip install -r scripts/requirements-fixtures.txt
  python scripts/make_fixtures.py            # all fixtures
  python scripts/make_fixtures.py --only llama qwen2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "lm" / "tests" / "fixtures"

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture_numpy_ref
from fixture_tokenizer import (
    HF_TOKEN_TEXTS,
    PROMPT,
    train_tokenizer,
    write_tokenizer_files,
)

VOCAB = 512
HIDDEN = 96
HEADS = 6
KV_HEADS = 2
HEAD_DIM = 16
INTERMEDIATE = 128

# Token ids of the special tokens, fixed by their order in the trainer.
EOT_ID, IM_START_ID, IM_END_ID = 0, 1, 2


def base_config(arch: str, model_type: str, layers: int, **extra) -> dict:
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "bos_token_id": IM_START_ID,
        "eos_token_id": IM_END_ID,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    cfg.update(extra)
    return cfg


# Each fixture: config, the dtype weights are stored in, how many safetensors
# files, and the generation_config eos (an int or a list: both occur on the hub).
MODELS = {
    # SmolLM2-like.
    "llama": {
        "config": base_config(
            "LlamaForCausalLM",
            "llama",
            2,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            head_dim=HEAD_DIM,
            pretraining_tp=1,
        ),
        "dtype": "float32",
        "shards": 1,
        "gen_eos": IM_END_ID,
    },
    # rope_theta 100 with original context 32 puts the 8 rope frequencies of
    # head_dim 16 in all three llama3 bands (wavelength 6.3 < 8: kept,
    # 11.2 and 19.9: smoothed, >= 35: divided by factor). With an original
    # context of 16 the "kept" band would be empty (no wavelength is < 4).
    "llama3": {
        "config": base_config(
            "LlamaForCausalLM",
            "llama",
            2,
            rope_theta=100.0,
            max_position_embeddings=256,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            attention_bias=False,
            mlp_bias=False,
            head_dim=HEAD_DIM,
        ),
        "dtype": "float32",
        "shards": 2,
        "gen_eos": [IM_END_ID, EOT_ID],
    },
    "mistral": {
        "config": base_config(
            "MistralForCausalLM",
            "mistral",
            2,
            rope_theta=1000000.0,
            sliding_window=None,
            head_dim=HEAD_DIM,
            torch_dtype="float16",
        ),
        "dtype": "float16",
        "shards": 1,
        "gen_eos": IM_END_ID,
    },
    "qwen2": {
        "config": base_config(
            "Qwen2ForCausalLM",
            "qwen2",
            2,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=2,
            torch_dtype="bfloat16",
        ),
        "dtype": "bfloat16",
        "shards": 1,
        "gen_eos": [IM_END_ID, EOT_ID],
    },
    # yarn: factor 4 over an original context of 32 gives correction range
    # [0, 2] for head_dim 16 and theta 1e4: one frequency kept, one blended,
    # six interpolated. max_position_embeddings = factor * original, so
    # transformers (which derives the factor from that ratio when both are
    # given) and mlx-lm agree.
    "qwen3": {
        "config": base_config(
            "Qwen3ForCausalLM",
            "qwen3",
            2,
            head_dim=HEAD_DIM,
            tie_word_embeddings=True,
            attention_bias=False,
            max_position_embeddings=128,
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
            torch_dtype="bfloat16",
        ),
        "dtype": "bfloat16",
        "shards": 1,
        "gen_eos": [IM_END_ID, EOT_ID],
    },
    # mlx-lm's qwen3_moe ignores rope_scaling, so this one has none.
    "qwen3_moe": {
        "config": base_config(
            "Qwen3MoeForCausalLM",
            "qwen3_moe",
            2,
            head_dim=HEAD_DIM,
            rope_theta=1000000.0,
            attention_bias=False,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            output_router_logits=False,
            router_aux_loss_coef=0.001,
            torch_dtype="bfloat16",
        ),
        "dtype": "bfloat16",
        "shards": 1,
        "gen_eos": IM_END_ID,
    },
}


def random_weights(name: str, cfg: dict, seed: int, router_seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 weights. Scales keep every layer's contribution O(1)
    and the logits O(1-10), so no layer is negligible and softmaxes are not
    one-hot."""
    rng = np.random.default_rng(seed)
    router_rng = np.random.default_rng([seed, router_seed])

    def mat(out_f: int, in_f: int, std: float = 0.1, rng=rng) -> np.ndarray:
        return (rng.standard_normal((out_f, in_f)) * std).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(n: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    h, hd = cfg["hidden_size"], HEAD_DIM
    qd, kvd = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    w = {"model.embed_tokens.weight": mat(VOCAB, h, 0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = mat(qd, h)
        w[p + "self_attn.k_proj.weight"] = mat(kvd, h)
        w[p + "self_attn.v_proj.weight"] = mat(kvd, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, qd)
        if cfg["model_type"] == "qwen2":
            w[p + "self_attn.q_proj.bias"] = bias(qd)
            w[p + "self_attn.k_proj.bias"] = bias(kvd)
            w[p + "self_attn.v_proj.bias"] = bias(kvd)
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        if cfg["model_type"] == "qwen3_moe":
            e_int = cfg["moe_intermediate_size"]
            # Drawn apart so build_hf can search router seeds for one whose
            # top-2 choice is well separated from the third expert.
            w[p + "mlp.gate.weight"] = mat(cfg["num_experts"], h, 0.3, rng=router_rng)
            for e in range(cfg["num_experts"]):
                q = f"{p}mlp.experts.{e}."
                w[q + "gate_proj.weight"] = mat(e_int, h)
                w[q + "up_proj.weight"] = mat(e_int, h)
                w[q + "down_proj.weight"] = mat(h, e_int)
        else:
            inter = cfg["intermediate_size"]
            w[p + "mlp.gate_proj.weight"] = mat(inter, h)
            w[p + "mlp.up_proj.weight"] = mat(inter, h)
            w[p + "mlp.down_proj.weight"] = mat(h, inter)
    w["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(VOCAB, h, 0.5)
    return w


def save_weights(dirpath: Path, weights: dict[str, np.ndarray], dtype: str, shards: int) -> None:
    """Writes the weights in `dtype` (mlx does the bf16 rounding: numpy has no
    bf16), split into `shards` files with an HF index when more than one."""
    import mlx.core as mx

    mx_dtype = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}[dtype]
    names = sorted(weights)
    if shards == 1:
        groups = [("model.safetensors", names)]
    else:
        per = (len(names) + shards - 1) // shards
        groups = [
            (f"model-{k + 1:05d}-of-{shards:05d}.safetensors", names[k * per : (k + 1) * per])
            for k in range(shards)
        ]
    weight_map, total = {}, 0
    for fname, group in groups:
        arrays = {n: mx.array(weights[n]).astype(mx_dtype) for n in group}
        mx.save_safetensors(str(dirpath / fname), arrays, metadata={"format": "pt"})
        for n, a in arrays.items():
            weight_map[n] = fname
            total += a.nbytes
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(dirpath / "model.safetensors.index.json", index)


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_json_records(path: Path, records: list) -> None:
    """One record a line: diffs stay readable when a tokenizer changes."""
    body = ",\n".join(" " + json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("[\n" + body + "\n]\n", encoding="utf-8")


def reference_logits(dirpath: Path, tokens: list[int]) -> np.ndarray:
    """Loads the fixture directory with mlx-lm and runs the whole sequence in
    float32 (weights stored as f16/bf16 are upcast exactly)."""
    import mlx.core as mx
    import mlx_lm

    mx.set_default_device(mx.cpu)
    model, _tok = mlx_lm.load(str(dirpath))
    model.set_dtype(mx.float32)
    logits = model(mx.array(tokens, dtype=mx.int32)[None])
    logits = logits.astype(mx.float32)
    mx.eval(logits)
    return np.array(logits[0])


def check_router_margin(dirpath: Path, tokens: list[int]) -> float:
    """Smallest gap, over layers and positions, between the 2nd and 3rd
    router logit: a small gap would make top-2 selection fragile (softmax is
    monotonic, so the logits decide)."""
    import mlx.core as mx
    import mlx_lm

    model, _ = mlx_lm.load(str(dirpath))
    model.set_dtype(mx.float32)
    gaps = []
    for layer in model.model.layers:
        gate = layer.mlp.gate

        class Recorder:
            def __init__(self, inner):
                self.inner = inner

            def __call__(self, x):
                y = self.inner(x)
                p = mx.sort(y, axis=-1)
                gaps.append(p[..., -2] - p[..., -3])
                return y

        layer.mlp.gate = Recorder(gate)
    mx.eval(model(mx.array(tokens, dtype=mx.int32)[None]))
    return float(min(np.array(g).min() for g in gaps))


def best_router_seed(d: Path, spec: dict, seed: int, tokens: list[int], tries: int = 32) -> int:
    """Router weights whose smallest 2nd-vs-3rd expert logit gap is largest,
    so float or quantization noise in another implementation (q8_0 matmuls
    quantize activations too) does not change which experts a token uses."""
    best, best_gap = 0, -1.0
    for rs in range(tries):
        save_weights(d, random_weights("", spec["config"], seed, rs), spec["dtype"], spec["shards"])
        gap = check_router_margin(d, tokens)
        if gap > best_gap:
            best, best_gap = rs, gap
    return best


def build_hf(name: str, spec: dict, tokenizer, seed: int) -> tuple[Path, dict, dict]:
    from safetensors.numpy import save_file

    d = OUT / name
    d.mkdir(parents=True, exist_ok=True)
    for old in d.glob("*.safetensors"):
        old.unlink()
    cfg = spec["config"]
    write_json(d / "config.json", cfg)
    write_json(
        d / "generation_config.json",
        {
            "bos_token_id": IM_START_ID,
            "eos_token_id": spec["gen_eos"],
            "_from_model_config": False,
        },
    )
    write_tokenizer_files(d, tokenizer)
    tokens = tokenizer.encode(PROMPT, add_special_tokens=False).ids
    router_seed = 0
    if cfg["model_type"] == "qwen3_moe":
        router_seed = best_router_seed(d, spec, seed, tokens)
    weights = random_weights(name, cfg, seed, router_seed)
    save_weights(d, weights, spec["dtype"], spec["shards"])

    logits = reference_logits(d, tokens)
    assert logits.shape == (len(tokens), VOCAB), logits.shape
    assert np.isfinite(logits).all()
    # The two references must agree to float32 rounding.
    numpy_logits = fixture_numpy_ref.forward(cfg, stored_weights(d), tokens)
    disagreement = float(np.abs(numpy_logits - logits).max())
    if disagreement > 1e-4 * max(1.0, float(np.abs(logits).max())):
        raise SystemExit(f"{name}: mlx-lm and the numpy reference differ by {disagreement}")
    save_file(
        {"tokens": np.array(tokens, dtype=np.int64), "logits": logits.astype(np.float32)},
        str(d / "expected.safetensors"),
    )
    info = (
        f"{name}: {len(tokens)} tokens, logits std {logits.std():.2f}, "
        f"max |{np.abs(logits).max():.2f}|, max |mlx - numpy| {disagreement:.1e}"
    )
    if cfg["model_type"] == "qwen3_moe":
        gap = check_router_margin(d, tokens)
        info += f", min router 2nd-3rd logit gap {gap:.4f}"
        if gap < 5e-2:
            raise SystemExit(f"{name}: router gap {gap} too small; pick another seed")
    print(info)
    return d, cfg, stored_weights(d)


def stored_weights(dirpath: Path) -> dict[str, np.ndarray]:
    """The weights as written (after f16/bf16 rounding), as float32: what the
    GGUF files must hold so that the same expected logits apply."""
    import mlx.core as mx

    out = {}
    for f in sorted(dirpath.glob("model*.safetensors")):
        for n, a in mx.load(str(f)).items():
            out[n] = np.array(a.astype(mx.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="fixture names to build (default: all)")
    ap.add_argument("--no-gguf", action="store_true", help="skip the GGUF files")
    args = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(VOCAB)
    write_json_records(
        OUT / "hf_tokens.json",
        [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False).ids} for t in HF_TOKEN_TEXTS],
    )

    built = {}
    for seed, (name, spec) in enumerate(MODELS.items()):
        if args.only and name not in args.only:
            continue
        built[name] = build_hf(name, spec, tokenizer, 1000 + seed)

    if not args.no_gguf:
        from fixture_gguf import write_gguf_fixtures

        write_gguf_fixtures(OUT / "gguf", built, tokenizer)


if __name__ == "__main__":
    main()
