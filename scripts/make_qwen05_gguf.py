#!/usr/bin/env python3
"""Writes random-weight GGUF files with Qwen2.5-0.5B's exact shape, for
benchmarks that compare huddle with llama.cpp on a model of realistic size.

Why random weights: the real model is on a model hub this project cannot
reach, and speed depends only on the shapes and the weight format. Both
runtimes must read the files as real Qwen2.5-0.5B GGUFs: arch qwen2, 24
layers, hidden 896, MLP 4864, 14 heads / 2 KV heads of 64, vocab 151936,
tied embeddings (no output.weight), q/k/v biases, rope theta 1e6, rms eps
1e-6, context 32768.

Weights: normal * 0.02 (biases too), norms 1.0, each tensor drawn from its
own seeded generator, so the F16 and Q8_0 files hold the same model and
re-running writes identical bytes. Matrices are F16 or Q8_0 (the token
embedding too, as in llama.cpp's own Q8_0 files); norms and biases F32.

Tokenizer: SmolLM2's byte-level BPE (tokens, types, merges, special ids,
chat template) read from its GGUF, with the token list padded to 151936 by
UNUSED tokens "[PAD<id>]" (UNUSED, not CONTROL: llama.cpp scans every
control token when it tokenizes, and 100k of them would slow that down).

Usage: make_qwen05_gguf.py TOKENIZER_GGUF OUT_DIR [f16|q8_0 ...]
Tensors are streamed to disk one at a time (peak memory ~0.5 GB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

LAYERS = 24
HIDDEN = 896
INTERMEDIATE = 4864
HEADS = 14
KV_HEADS = 2
HEAD_DIM = 64
VOCAB = 151936
CONTEXT = 32768
ROPE_THETA = 1e6
RMS_EPS = 1e-6
SEED = 20251125

FTYPE = {
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}

F32 = gguf.GGMLQuantizationType.F32


def tensor_specs() -> list[tuple[str, tuple[int, ...], str]]:
    """(GGUF name, numpy shape [out, in], kind) in llama.cpp's converter order."""
    specs = [("token_embd.weight", (VOCAB, HIDDEN), "matrix")]
    q_dim, kv_dim = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        b = f"blk.{i}."
        specs += [
            (b + "attn_norm.weight", (HIDDEN,), "norm"),
            (b + "attn_q.weight", (q_dim, HIDDEN), "matrix"),
            (b + "attn_q.bias", (q_dim,), "bias"),
            (b + "attn_k.weight", (kv_dim, HIDDEN), "matrix"),
            (b + "attn_k.bias", (kv_dim,), "bias"),
            (b + "attn_v.weight", (kv_dim, HIDDEN), "matrix"),
            (b + "attn_v.bias", (kv_dim,), "bias"),
            (b + "attn_output.weight", (HIDDEN, q_dim), "matrix"),
            (b + "ffn_norm.weight", (HIDDEN,), "norm"),
            (b + "ffn_gate.weight", (INTERMEDIATE, HIDDEN), "matrix"),
            (b + "ffn_up.weight", (INTERMEDIATE, HIDDEN), "matrix"),
            (b + "ffn_down.weight", (HIDDEN, INTERMEDIATE), "matrix"),
        ]
    specs.append(("output_norm.weight", (HIDDEN,), "norm"))
    return specs


def tensor_data(index: int, shape: tuple[int, ...], kind: str) -> np.ndarray:
    if kind == "norm":
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([SEED, index])
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def stored_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block * type_bytes


def add_tokenizer(w: gguf.GGUFWriter, source: Path) -> None:
    r = gguf.GGUFReader(str(source))

    def field(key: str):
        f = r.get_field(key)
        if f is None:
            raise SystemExit(f"{source}: no {key}")
        return f.contents()

    tokens = list(field("tokenizer.ggml.tokens"))
    types = [int(t) for t in field("tokenizer.ggml.token_type")]
    if len(tokens) > VOCAB:
        raise SystemExit(f"{source}: {len(tokens)} tokens, more than {VOCAB}")
    for i in range(len(tokens), VOCAB):
        tokens.append(f"[PAD{i}]")
        types.append(int(gguf.TokenType.UNUSED))
    w.add_tokenizer_model(field("tokenizer.ggml.model"))
    w.add_tokenizer_pre(field("tokenizer.ggml.pre"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(list(field("tokenizer.ggml.merges")))
    w.add_bos_token_id(int(field("tokenizer.ggml.bos_token_id")))
    w.add_eos_token_id(int(field("tokenizer.ggml.eos_token_id")))
    w.add_unk_token_id(int(field("tokenizer.ggml.unknown_token_id")))
    w.add_pad_token_id(int(field("tokenizer.ggml.padding_token_id")))
    w.add_add_bos_token(bool(field("tokenizer.ggml.add_bos_token")))
    w.add_chat_template(field("tokenizer.chat_template"))


def write(path: Path, kind: str, tokenizer: Path) -> None:
    ftype, matrix_q = FTYPE[kind]
    part = path.with_name(path.name + ".part")
    w = gguf.GGUFWriter(str(part), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(f"Qwen2.5-0.5B shape, random weights ({kind})")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTERMEDIATE)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_file_type(ftype)
    add_tokenizer(w, tokenizer)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    specs = tensor_specs()
    qtypes = [matrix_q if k == "matrix" else F32 for _, _, k in specs]
    for (name, shape, _), q in zip(specs, qtypes):
        w.add_tensor_info(name, shape, np.dtype(np.float32), stored_nbytes(shape, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, ((name, shape, k), q) in enumerate(zip(specs, qtypes)):
        data = tensor_data(i, shape, k)
        w.write_tensor_data(gguf.quants.quantize(data, q))
    w.close()
    part.replace(path)
    print(f"{path}: {path.stat().st_size} bytes", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    tokenizer, out_dir = Path(argv[1]), Path(argv[2])
    kinds = argv[3:] or list(FTYPE)
    for kind in kinds:
        if kind not in FTYPE:
            raise SystemExit(f"unknown type {kind!r}; expected one of {', '.join(FTYPE)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        write(out_dir / f"qwen2.5-0.5b-shape-{kind}.gguf", kind, tokenizer)


if __name__ == "__main__":
    main(sys.argv)
