#!/usr/bin/env bash
# The main job on a fresh machine: build huddle, fetch SmolLM2 if missing,
# and generate with it tensor-parallel on 2 local ranks (RANKS=N for more;
# RANKS=1 for one process). Extra arguments go to `huddle generate`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin huddle
model=$(scripts/fetch-smollm2.sh)
exec target/release/huddle launch -n "${RANKS:-2}" -- \
  target/release/huddle generate --model "$model" \
  --system "${SYSTEM:-You are a helpful assistant.}" \
  --prompt "${PROMPT:-What is the capital of France?}" "$@"
