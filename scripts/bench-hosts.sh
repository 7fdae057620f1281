#!/usr/bin/env bash
# bench-hosts.sh - huddle across 4 test hosts (network namespaces with sshd,
# scripts/testbed/cluster.sh), launched over ssh. Prints numbers:
#
#   launch   wall time from `huddle launch` to rank 0's first 4-byte all_sum
#            (and to rank 0's start and its joining the group), unshaped links
#   rate     RATE=1gbit links: all_sum of 64 MiB, busbw in Gbit/s against the link
#   delay    DELAY=50us: 4-byte all_sum p50 against a 4-byte TCP ping-pong
#            round trip between two of the hosts, in the same run
#
#   scripts/bench-hosts.sh [launch|rate|delay|all]     (default: all)
#
# Env: HUDDLE=path/to/huddle (default: build target/release/huddle without the
# lm feature), RUNS=5 (launch runs), ITERS=2000 (delay iterations).
# Needs root. The test hosts are machine-wide: a testbed already up (other
# people's tests may be using it) is left alone unless TAKEOVER=1, which
# takes it down for the shaped runs and brings an unshaped one back after.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER=$ROOT/scripts/testbed/cluster.sh
TB=${TB:-/tmp/testbed}
N=4
RUNS=${RUNS:-5}
ITERS=${ITERS:-2000}
WHAT=${1:-all}
export TB

[[ $EUID == 0 ]] || { echo "bench-hosts.sh: needs root (network namespaces)" >&2; exit 1; }
if [[ -z ${HUDDLE:-} ]]; then
  cargo build --release -q -p huddle --no-default-features
  HUDDLE=${CARGO_TARGET_DIR:-$ROOT/target}/release/huddle
fi
[[ -x $HUDDLE ]] || { echo "bench-hosts.sh: no huddle binary at $HUDDLE" >&2; exit 1; }

testbed_up() { ip netns list | grep -qw tbsw; }
was_up=0
if testbed_up; then
  was_up=1
  if [[ ${TAKEOVER:-0} != 1 ]]; then
    echo "bench-hosts.sh: a testbed is already up at $TB (someone's tests may be using it);" >&2
    echo "  run again with TAKEOVER=1 to take it down for these runs and bring it back after." >&2
    exit 1
  fi
fi
ours=0
restore() {
  if [[ $ours == 1 ]]; then "$CLUSTER" down >/dev/null; fi
  if [[ $was_up == 1 ]] && ! testbed_up; then N=$N "$CLUSTER" up >/dev/null; fi
}
trap restore EXIT

# up RATE DELAY: a fresh testbed with these link settings.
up() {
  if testbed_up; then "$CLUSTER" down >/dev/null; fi
  # cluster.sh builds its userspace delayer from the state directory.
  mkdir -p "$TB" && cp "$ROOT/scripts/testbed/nfq-delay.c" "$TB/"
  N=$N RATE=$1 DELAY=$2 "$CLUSTER" up >/dev/null
  ours=1
}

launch() {
  launch_on "$TB/hosts.json" "$@"
}

# launch_on HOSTFILE ARGS: huddle ARGS on every host of HOSTFILE.
launch_on() {
  local hostfile=$1
  shift
  "$HUDDLE" launch --hostfile "$hostfile" --ssh-config "$TB/ssh/ssh_config" -- "$HUDDLE" "$@"
}

# latency HOSTFILE: "ALLSUM_US RTT_US" of a 4-byte all_sum and ping-pong.
latency() {
  local out
  out=$(launch_on "$1" bench comm --ops all_sum --sizes 4 --iters "$ITERS" --warmup 50)
  awk '$3 == "all_sum" && $4 == 4 { t = $5 }
       /4 bytes: round trip/ { for (i = 1; i <= NF; i++) if ($i == "trip") r = $(i+1) }
       END { print t, r }' <<<"$out"
}

# The first two hosts of the testbed's hostfile.
two_hosts() {
  python3 -c 'import json, sys; json.dump(json.load(open(sys.argv[1]))[:2], open(sys.argv[2], "w"))' \
    "$TB/hosts.json" "$TB/hosts2.json"
  echo "$TB/hosts2.json"
}

# ratio LABEL ALLSUM_US RTT_US
ratio() {
  awk -v l="$1" -v t="$2" -v r="$3" 'BEGIN {
    printf "  %s: all_sum p50 %.1f us, TCP round trip p50 %.1f us: %.2fx the round trip\n", l, t, r, t / r }'
}

# Medians of whitespace-separated columns, one run per line.
medians() {
  python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin if l.strip()]
print(" ".join(f"{statistics.median(c):.3f}" for c in zip(*rows)))'
}

bench_launch() {
  up "" ""
  echo "== launch: huddle launch (4 hosts over ssh) to rank 0's first 4-byte all_sum, unshaped links"
  local t0 line rows="" ssh_rows=""
  for ((i = 0; i < RUNS; i++)); do
    t0=$EPOCHREALTIME
    line=$(launch bench comm --timeline --ops all_sum --sizes 4 --iters 1 --warmup 0 | grep '# timeline')
    local end=$EPOCHREALTIME
    # "... started S joined J first all_sum F": seconds since the launch began.
    read -r s j f < <(awk -v t0="$t0" '{for (i = 1; i <= NF; i++) {
        if ($i == "started") s = $(i+1) - t0; if ($i == "joined") j = $(i+1) - t0;
        if ($i == "all_sum") f = $(i+1) - t0 }
      printf "%.3f %.3f %.3f\n", s, j, f}' <<<"$line")
    local total; total=$(awk -v a="$t0" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    printf '  run %d: rank 0 started %s s, joined %s s, first all_sum done %s s (launcher exited %s s)\n' \
      $((i + 1)) "$s" "$j" "$f" "$total"
    rows+="$s $j $f $total"$'\n'
    t0=$EPOCHREALTIME
    ssh -F "$TB/ssh/ssh_config" h1 true
    ssh_rows+="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')"$'\n'
  done
  read -r s j f total < <(medians <<<"$rows")
  echo "  median of $RUNS: rank 0 started $s s, joined $j s, first all_sum $f s, launcher exited $total s"
  echo "  one plain \`ssh h1 true\` (key exchange, login shell): median $(medians <<<"$ssh_rows") s"
  # shellcheck disable=SC2046
  ratio "4 hosts, unshaped (for the delay comparison)" $(latency "$TB/hosts.json")
}

bench_rate() {
  up 1gbit ""
  echo "== rate: RATE=1gbit links, all_sum of 64 MiB on 4 hosts (target: busbw >= 0.9 Gbit/s)"
  local out busbw raw
  out=$(launch bench comm --ops all_sum --sizes 64M --iters 5 --warmup 1)
  sed 's/^/  /' <<<"$out"
  busbw=$(awk '$3 == "all_sum" && $4 == 67108864 { print $NF }' <<<"$out")
  raw=$(sed -n 's/.*bytes each way: .* us, \([0-9.]*\) GB\/s each way/\1/p' <<<"$out")
  awk -v b="$busbw" -v r="$raw" 'BEGIN {
    printf "  all_sum busbw %.3f Gbit/s (%.0f%% of the 1 Gbit/s link); raw TCP exchange %.3f Gbit/s each way\n",
      b * 8, b * 800, r * 8 }'
}

bench_delay() {
  up "" 50us
  echo "== delay: DELAY=50us, 4-byte all_sum on 4 hosts vs a 4-byte TCP round trip (target: <= 1.5x)"
  # shellcheck disable=SC2046
  ratio "4 hosts" $(latency "$TB/hosts.json")
  # shellcheck disable=SC2046
  ratio "2 hosts (the same exchange without 4 ranks sharing the cores)" $(latency "$(two_hosts)")
}

case $WHAT in
  launch) bench_launch ;;
  rate) bench_rate ;;
  delay) bench_delay ;;
  all) bench_launch; bench_rate; bench_delay ;;
  *) sed -n '2,17p' "$0"; exit 1 ;;
esac
