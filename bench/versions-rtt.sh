#!/usr/bin/env bash
# Benchmark: round trips of `backtrack versions` across a network with latency (issue #29).
#
# The registry of scripts/test-env is put behind bench/delay-proxy.py (every chunk delayed by
# half the RTT each way: a link's latency). `backtrack versions` (default limit 20, a cold
# metadata cache: a fresh BACKTRACK_CACHE_DIR each run, so every shown version costs its manifest
# and config) is timed through the proxy at 0 ms and at BENCH_RTT_MS (50), interleaved, median of
# BENCH_RUNS (5). The difference divided by the RTT is the number of round trips the command
# waits for; minus one for the TCP connection, it is what issue #29 asks to be at most 4 (tags,
# then manifests and configs, each batch concurrent). The physical floor is 3 after the
# connection: the tag list, then the manifests (they need the tags), then the configs (they need
# the manifests' config digests). A warm cache is also measured (one request: the tag list).
#
# Run:   bench/versions-rtt.sh
# Needs: the registry from scripts/test-env (127.0.0.1:5000), python3.
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_REGISTRY (127.0.0.1:5000), BENCH_RTT_MS (50), BENCH_RUNS (5), BENCH_COUNT (30).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${BENCH_REGISTRY:-127.0.0.1:5000}
rtt_ms=${BENCH_RTT_MS:-50}
runs=${BENCH_RUNS:-5}
count=${BENCH_COUNT:-30}
repo=bench/versions-rtt
need_tools python3:python3 curl:curl
curl -fsS "http://$registry/v2/" >/dev/null || die "no registry at $registry (run scripts/test-env)"
find_backtrack

work=$(mktemp -d /tmp/bench-versions-rtt.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
python3 "$BENCH_DIR/seed_registry.py" --registry "$registry" --repository "$repo" --count "$count" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
target_port=${registry##*:}
near=$(free_port)
far=$(free_port)
python3 "$BENCH_DIR/delay-proxy.py" "$near" "$target_port" 0 & pids+=($!)
python3 "$BENCH_DIR/delay-proxy.py" "$far" "$target_port" "$rtt_ms" & pids+=($!)
for p in "$near" "$far"; do
  for _ in $(seq 50); do curl -fsS "http://127.0.0.1:$p/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
done

# One config per proxy; the repository is the same behind both.
for p in "$near" "$far"; do
  cat >"$work/$p.toml" <<TOML
[registry]
url = "127.0.0.1:$p"
repository = "$repo"
TOML
done
export BACKTRACK_STATE_DIR=$work/state
# versions PORT CACHE: seconds of one run.
versions() {
  local t0 t1
  t0=$(now_us)
  BACKTRACK_CACHE_DIR=$2 timeout 120 "$BACKTRACK" --config "$work/$1.toml" versions --output json >/dev/null
  t1=$(now_us)
  echo "scale=4; ($t1 - $t0) / 1000000" | bc
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cold_near=() cold_far=() warm_near=() warm_far=()
for i in $(seq "$runs"); do
  cold_near+=("$(versions "$near" "$work/cache-near-$i")")
  cold_far+=("$(versions "$far" "$work/cache-far-$i")")
  warm_near+=("$(versions "$near" "$work/cache-near-$i")")
  warm_far+=("$(versions "$far" "$work/cache-far-$i")")
  say "run $i: cold ${cold_near[-1]} s / ${cold_far[-1]} s, warm ${warm_near[-1]} s / ${warm_far[-1]} s (0 / $rtt_ms ms)"
done
cn=$(median "${cold_near[@]}") cf=$(median "${cold_far[@]}")
wn=$(median "${warm_near[@]}") wf=$(median "${warm_far[@]}")
trips() { echo "scale=1; ($2 - $1) * 1000 / $rtt_ms" | bc; }
ct=$(trips "$cn" "$cf") wt=$(trips "$wn" "$wf")
after() { echo "scale=1; $1 - 1" | bc; }
verdict() { if [ "$(echo "$1 <= $2" | bc)" = 1 ]; then echo PASS; else echo MISS; fi; }
printf '\n`backtrack versions` (%s versions, limit 20) through a %s ms link, median of %s\n' "$count" "$rtt_ms" "$runs"
printf '%-34s %10s %10s %12s %14s %s\n' "figure" "0 ms" "$rtt_ms ms" "round trips" "after connect" "target"
printf '%-34s %9ss %9ss %12s %14s %s\n' "cold cache (tags, manifests, configs)" "$cn" "$cf" "$ct" "$(after "$ct")" "<= 4: $(verdict "$(after "$ct")" 4) (floor 3)"
printf '%-34s %9ss %9ss %12s %14s %s\n' "warm cache (the tag list)" "$wn" "$wf" "$wt" "$(after "$wt")" "floor 1"
