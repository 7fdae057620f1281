#!/usr/bin/env bash
# Tensor- and pipeline-parallel inference figures (issue 6), printed as
# numbers, not checked:
#   scaling  decode tokens/s of TP=2 (summed and gathered) and PP=2 with
#            each rank pinned to one core, against one rank pinned to one
#            core (`huddle bench generate`, EOS ignored, median of REPS),
#            in ROUNDS rounds where a one-rank run comes before and after
#            every split run; the medians of the ratios;
#   comm     per generated token and rank: time in collectives, their
#            count and bytes sent (`huddle generate -v`), beside the p50 of
#            one all_sum of the hidden size (`huddle bench comm`) on the same
#            ranks in the same run; LINK=shaped runs them on two test hosts
#            with 1 Gbit/s links and 50 us one-way delay (brings up its own
#            testbed, refuses while another one is up), LINK=testbed on the
#            first two hosts of a testbed already up (TB, unshaped);
#   memory   peak resident memory (VmHWM) of each of 4 tensor-parallel ranks
#            against one rank alone.
#
# Usage: scripts/bench-parallel.sh [scaling|comm|memory|all]
# Env: MODEL (default models/qwen2.5-0.5b-shape-q8_0.gguf, made by
#      scripts/make-qwen05-gguf.sh), GEN (decode tokens, 64), PROMPT_TOKENS
#      (16), REPS (3), ROUNDS (scaling's rounds, 5), HIDDEN (the model's hidden size, 896), LINK
#      (local|shaped|testbed, default local), HUDDLE (default
#      $CARGO_TARGET_DIR/release/huddle or target/release/huddle).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-all}
model=${MODEL:-$root/models/qwen2.5-0.5b-shape-q8_0.gguf}
gen=${GEN:-64}
prompt=${PROMPT_TOKENS:-16}
reps=${REPS:-3}
rounds=${ROUNDS:-5}
hidden=${HIDDEN:-896}
link=${LINK:-local}
huddle=${HUDDLE:-${CARGO_TARGET_DIR:-$root/target}/release/huddle}
[ -x "$huddle" ] || { echo "no huddle at $huddle: cargo build --release -p huddle (or set HUDDLE)" >&2; exit 1; }
[ -f "$model" ] || { echo "no model at $model: run scripts/make-qwen05-gguf.sh (or set MODEL)" >&2; exit 1; }

echo "# $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg); model $(basename "$model")"

# Median decode tokens/s from `huddle bench generate --json` on stdin
# (under the launcher the JSON line carries a rank prefix).
decode_tps() {
  python3 -c '
import json, sys
for line in sys.stdin:
    line = line[line.find("{"):]
    if line.startswith("{"):
        print("%.2f" % json.loads(line)["generation_tokens_per_sec"]["median"]); break
'
}

bench_args=(bench generate --model "$model" --prompt-tokens "$prompt" --gen-tokens "$gen" --reps "$reps" --threads 1 --json)

scaling() {
  echo "## compute scaling: decode tokens/s, one core per rank (taskset), $gen tokens after $prompt"
  echo "## $rounds rounds of: one rank, TP=2, one rank, TP=2 --tp-reduce gather, one rank, PP=2;"
  echo "## each split run's ratio is to the mean of the one-rank runs just before and after it"
  # shellcheck disable=SC2016
  local pin='exec taskset -c $HUDDLE_LOCAL_RANK "$0" "$@"'
  local r runs=()
  one_rank() { taskset -c 0 "$huddle" "${bench_args[@]}" | decode_tps; }
  two_ranks() { "$huddle" launch -n 2 -- sh -c "$pin" "$huddle" "${bench_args[@]}" "$@" | decode_tps; }
  for r in $(seq "$rounds"); do
    local o1 tp o2 tpg o3 pp
    o1=$(one_rank)
    tp=$(two_ranks)
    o2=$(one_rank)
    tpg=$(two_ranks --tp-reduce gather)
    o3=$(one_rank)
    pp=$(two_ranks --pipeline --pipeline-split even)
    echo "round $r: one rank $o1, TP=2 $tp, one rank $o2, TP=2 gathered $tpg, one rank $o3, PP=2 $pp tok/s"
    runs+=("$o1" "$tp" "$o2" "$tpg" "$o3" "$pp")
  done
  local last
  last=$(one_rank)
  echo "last: one rank $last tok/s"
  runs+=("$last")
  # Machine speed drifts by about 10% between minutes (a shared VM): a
  # split run is compared with the one-rank runs that bracket it, tens of
  # seconds apart, and the medians are over rounds.
  echo "${runs[@]}" | python3 -c '
import statistics, sys
v = [float(x) for x in sys.stdin.read().split()]
for k, name in ((1, "TP=2"), (3, "TP=2 gathered"), (5, "PP=2")):
    rs = [v[i] / ((v[i - 1] + v[i + 1]) / 2) for i in range(k, len(v) - 1, 6)]
    print(f"{name:14} " + " / ".join(f"{r:.2f}" for r in rs) + f"x of one rank (median {statistics.median(rs):.2f}x)")
'
}

# `huddle launch` over the hosts of this run: local ranks, or the shaped
# test hosts.
launch() {
  if [ "$link" != local ]; then
    "$huddle" launch --hostfile "$tb/hosts2.json" --ssh-config "$tb/ssh/ssh_config" "$@"
  else
    "$huddle" launch -n 2 "$@"
  fi
}

comm() {
  local bytes=$((hidden * 4))
  echo "## communication per token, TP=2, link $link"
  local out
  # One core per rank (rank r on core r), as two real hosts would have
  # their own: test hosts share this machine's cores, and a rank whose
  # threads wait for a core shows up as its peer's communication time.
  # shellcheck disable=SC2016
  local pin='exec taskset -c $HUDDLE_RANK "$0" "$@"'
  out=$(launch -- sh -c "$pin" "$huddle" generate --model "$model" --ignore-chat-template \
    --prompt "The quick brown fox" --max-tokens "$gen" --threads 1 -v 2>&1)
  local line
  line=$(grep -o 'Communication per token: .*' <<<"$out")
  echo "$line"
  grep -o 'Generation: .*' <<<"$out" || true
  local p50
  p50=$(launch -- sh -c "$pin" "$huddle" bench comm --ops all-sum --sizes "$bytes" --iters 300 --json |
    python3 -c '
import json, sys
for line in sys.stdin:
    line = line[line.find("{"):]
    if line.startswith("{"):
        print(json.loads(line)["results"][0]["p50_us"]); break
')
  echo "all_sum of $bytes B: p50 $p50 us"
  python3 - "$line" "$p50" "$hidden" <<'EOF'
import re, sys
line, p50 = sys.argv[1], float(sys.argv[2])
for rank, ms, coll in re.findall(r"rank (\d+) ([\d.]+) ms, ([\d.]+) collectives", line):
    # The all_sums of a token: collectives less the step message and the
    # logit gather (rank 0 also counts its step broadcast).
    bound = 1.25 * float(coll) * p50 / 1e3
    print(f"rank {rank}: {float(ms):.3f} ms/token in {coll} collectives; "
          f"1.25 x collectives x p50 = {bound:.3f} ms -> {float(ms) / bound:.2f} of the bound")
EOF
}

memory() {
  echo "## peak resident memory (VmHWM), TP=4 vs one rank"
  local one four
  one=$("$huddle" generate --model "$model" --ignore-chat-template --prompt "Hello" --max-tokens 4 2>&1 |
    grep -o 'Peak memory: [0-9.]* GB' | grep -o '[0-9.]*')
  four=$("$huddle" launch -n 4 -- "$huddle" generate --model "$model" --ignore-chat-template \
    --prompt "Hello" --max-tokens 4 2>&1 | grep -o 'Peak memory: rank 0 .*')
  echo "one rank: $one GB"
  echo "TP=4: ${four#Peak memory: }"
  python3 - "$one" "$four" <<'EOF'
import re, sys
one = float(sys.argv[1])
for rank, gb in re.findall(r"rank (\d+) ([\d.]+) GB", sys.argv[2]):
    print(f"rank {rank}: {float(gb) / one:.3f}x of one rank")
EOF
}

if [ "$link" = shaped ]; then
  tb=/tmp/testbed-bench-parallel
  if ip netns list | grep -q '^tbsw'; then
    echo "a testbed is up (another test?): not reshaping it; rerun later" >&2
    exit 1
  fi
  trap 'TB=$tb "$root/scripts/testbed/cluster.sh" down >/dev/null 2>&1 || true' EXIT
  N=2 RATE=1gbit DELAY=50us TB=$tb "$root/scripts/testbed/cluster.sh" up >/dev/null
fi
if [ "$link" = testbed ]; then
  tb=${TB:-/tmp/testbed}   # hosts someone already brought up, unshaped
fi
if [ "$link" != local ]; then
  python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))[:2]))' \
    "$tb/hosts.json" >"$tb/hosts2.json"
fi

case $what in
  scaling) scaling ;;
  comm) comm ;;
  memory) memory ;;
  all) scaling; comm; memory ;;
  *) echo "usage: $0 [scaling|comm|memory|all]" >&2; exit 2 ;;
esac
