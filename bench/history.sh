#!/usr/bin/env bash
# Benchmark: `backtrack history` on a long journal, with config snapshots and without.
#
#   without     a journal of BENCH_OPS (10,000) operations as backtrack wrote them before config
#               snapshots (the baseline, measured in the same run)
#   snapshots   the same operations, each naming its container's config before and after, with a
#               new 21-variable config every 20 operations stored once (500 snapshots)
# Both journals are written by bench/history-journal.py; no engine or registry is asked (history
# reads the journal only). Median of BENCH_RUNS (7) runs of `history` (the last 20) and of
# `history --limit 0 --output json` (every operation) each.
# Targets: `history` on 10,000 operations with snapshots < 0.2 s; snapshots cost <= 1.5x.
#
# Run:   bench/history.sh
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_OPS (10000), BENCH_RUNS (7).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
find_backtrack
ops=${BENCH_OPS:-10000}
runs=${BENCH_RUNS:-7}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for kind in without snapshots; do
  dir=$work/$kind
  mkdir -p "$dir/state/targets/local_container_web"
  printf '[registry]\nurl = "127.0.0.1:5000"\nrepository = "bench/history"\n[target]\nkind = "container"\nname = "web"\n' >"$dir/backtrack.toml"
  flag=; [ "$kind" = snapshots ] && flag=--snapshots
  python3 "$BENCH_DIR/history-journal.py" "$ops" $flag >"$dir/state/targets/local_container_web/history.jsonl"
  say "$kind: $(wc -c <"$dir/state/targets/local_container_web/history.jsonl") bytes, $ops operations"
done

# time_ms DIR ARGS...: one run's wall time in ms (the output must be whole).
time_ms() {
  local dir=$1; shift
  local t0 t1
  t0=$(now_us)
  "$BACKTRACK" --config "$dir/backtrack.toml" --state-dir "$dir/state" "$@" >"$work/out" 2>"$work/err" \
    || { cat "$work/err" >&2; die "backtrack $* failed"; }
  t1=$(now_us)
  echo $(( (t1 - t0) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A result
for args in "history" "history --limit 0 --output json"; do
  for kind in without snapshots; do : >"$work/$kind.times"; done
  for _ in $(seq "$runs"); do
    for kind in without snapshots; do
      # shellcheck disable=SC2086
      time_ms "$work/$kind" $args >>"$work/$kind.times"
    done
  done
  for kind in without snapshots; do result["$args/$kind"]=$(median <"$work/$kind.times"); done
done
grep -q '"number": '"$ops" "$work/out" || grep -q "\"number\":$ops" "$work/out" || die "the JSON history does not list $ops operations"

printf '\n%-36s %10s %10s %8s\n' "command ($ops operations)" "without" "snapshots" "ratio"
fail=0
for args in "history" "history --limit 0 --output json"; do
  w=${result["$args/without"]} s=${result["$args/snapshots"]}
  ratio=$(awk -v a="$s" -v b="$w" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')
  printf '%-36s %8s ms %8s ms %7sx\n' "$args" "$w" "$s" "$ratio"
  if awk -v r="$ratio" 'BEGIN {exit !(r > 1.5)}'; then fail=1; fi
done
h=${result["history/snapshots"]}
printf '\ntarget: history with snapshots < 200 ms: %s ms (%s)\n' "$h" "$([ "$h" -lt 200 ] && echo pass || echo FAIL)"
printf 'target: snapshots cost <= 1.5x: %s\n' "$([ $fail = 0 ] && echo pass || echo FAIL)"
[ "$h" -lt 200 ] && [ $fail = 0 ]
