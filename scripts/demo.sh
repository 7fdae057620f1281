#!/usr/bin/env bash
# The main job on a fresh machine: build huddle, fetch SmolLM2 if missing,
# generate with it. Extra arguments go to `huddle generate`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin huddle
model=$(scripts/fetch-smollm2.sh)
exec target/release/huddle generate --model "$model" \
  --system "${SYSTEM:-You are a helpful assistant.}" \
  --prompt "${PROMPT:-What is the capital of France?}" "$@"
