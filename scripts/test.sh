#!/usr/bin/env bash
# The test suite: fetches the real demo model the tests use, then runs every
# crate's tests (one shared build; dependencies compiled at opt-level 3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-smollm2.sh >/dev/null
cargo test --workspace "$@"
