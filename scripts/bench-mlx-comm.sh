#!/usr/bin/env bash
# Usage: scripts/bench-mlx-comm.sh N [SIZES]
# N local MLX ring ranks on loopback (needs `pip install "mlx[cpu]"`).
set -euo pipefail
n=${1:-2}
sizes=${2:-4,4096,65536,1048576,16777216,67108864}
here=$(cd "$(dirname "$0")" && pwd)
hostfile=$(mktemp --suffix=.json)
trap 'rm -f "$hostfile"; kill $(jobs -p) 2>/dev/null || true' EXIT
base=$((20000 + RANDOM % 20000))
PY=${PYTHON:-python3}
python3 - "$n" "$base" > "$hostfile" <<'PY'
import json, sys
n, base = int(sys.argv[1]), int(sys.argv[2])
print(json.dumps([[f"127.0.0.1:{base + i}"] for i in range(n)]))
PY
pids=()
for ((r = 0; r < n; r++)); do
  MLX_RANK=$r MLX_HOSTFILE=$hostfile "$PY" "$here/bench_mlx_comm.py" "$sizes" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
