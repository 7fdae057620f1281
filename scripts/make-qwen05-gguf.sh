#!/usr/bin/env bash
# Writes models/qwen2.5-0.5b-shape-f16.gguf and models/qwen2.5-0.5b-shape-q8_0.gguf:
# random weights in Qwen2.5-0.5B's exact shape with SmolLM2's tokenizer padded
# to Qwen's vocabulary (see scripts/make_qwen05_gguf.py), for benchmarks against
# llama.cpp. Files already present are kept. Prints the paths.
#
# Usage: scripts/make-qwen05-gguf.sh
# Env: HUDDLE_GGUF_VENV  venv with gguf + numpy (made and filled from PyPI when
#                        missing; default ~/.cache/huddle/venv-gguf)
# Needs models/SmolLM2-135M-Instruct.Q4_1.gguf (fetched when missing). ~1 minute.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${HUDDLE_GGUF_VENV:-$HOME/.cache/huddle/venv-gguf}
kinds=()
for kind in f16 q8_0; do
  [ -s "$root/models/qwen2.5-0.5b-shape-$kind.gguf" ] || kinds+=("$kind")
done
if [ ${#kinds[@]} -gt 0 ]; then
  tokenizer=$("$root/scripts/fetch-smollm2.sh")
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  # The versions scripts/requirements-fixtures.txt pins.
  if ! "$venv/bin/python" -c 'import gguf, numpy' 2>/dev/null; then
    "$venv/bin/python" -m pip install --quiet gguf==0.19.0 numpy==2.4.6 >&2
  fi
  "$venv/bin/python" "$root/scripts/make_qwen05_gguf.py" "$tokenizer" "$root/models" "${kinds[@]}" >&2
fi
for kind in f16 q8_0; do
  echo "$root/models/qwen2.5-0.5b-shape-$kind.gguf"
done
