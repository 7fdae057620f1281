#!/usr/bin/env bash
# The main job on a fresh machine: build huddle, fetch SmolLM2 if missing,
# and generate with it tensor-parallel on 2 local ranks (RANKS=N for more;
# RANKS=1 for one process). Extra arguments go to `huddle generate`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --quiet --bin huddle
huddle="$CARGO_TARGET_DIR/release/huddle"
model=$(scripts/fetch-smollm2.sh)
exec "$huddle" launch -n "${RANKS:-2}" -- \
  "$huddle" generate --model "$model" \
  --system "${SYSTEM:-You are a helpful assistant.}" \
  --prompt "${PROMPT:-What is the capital of France?}" "$@"
