# Shared helpers for bench/versions.sh and bench/swap.sh (sourced, not run).
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# need_tools CMD:PACKAGE ... — installs the Debian packages of missing commands when root.
need_tools() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    if [[ $cmd == /* ]]; then [ -x "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
    missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]} and not root: install them first"
  say "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# find_backtrack: sets BACKTRACK ($BACKTRACK, else target/release/backtrack, built if missing).
find_backtrack() {
  if [ -n "${BACKTRACK:-}" ]; then
    [ -x "$BACKTRACK" ] || die "BACKTRACK=$BACKTRACK is not an executable"
  else
    BACKTRACK=$REPO_ROOT/target/release/backtrack
    if [ ! -x "$BACKTRACK" ]; then
      say "building the release binary (cargo build --release; a few minutes)"
      (cd "$REPO_ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
    fi
  fi
  BACKTRACK=$(cd "$(dirname "$BACKTRACK")" && pwd)/$(basename "$BACKTRACK")
  say "backtrack: $BACKTRACK ($("$BACKTRACK" --version 2>/dev/null || echo '?'))"
}

# now_us: wall clock in microseconds, without a fork.
now_us() { local t=${EPOCHREALTIME/./}; echo $((10#$t)); }

# median_us SAMPLE... — the median (mean of the middle two for an even count).
median_us() {
  printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print int((a[NR/2]+a[NR/2+1])/2)}'
}
min_us() { printf '%s\n' "$@" | sort -n | head -1; }
max_us() { printf '%s\n' "$@" | sort -n | tail -1; }

# secs US — microseconds as seconds with 3 decimals.
secs() { awk -v u="$1" 'BEGIN {printf "%.3f", u/1e6}'; }
# ratio A B — A/B with 2 decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "inf"; else printf "%.2f", a/b}'; }
# le A B — exit 0 when A <= B (floats).
le() { awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; }
# ratio_le A B LIMIT / ratio_ge A B LIMIT — exit 0 when A/B <= LIMIT (>= LIMIT), unrounded.
ratio_le() { awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN {exit !(b > 0 && a / b <= l)}'; }
ratio_ge() { awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN {exit !(b > 0 && a / b >= l)}'; }
# verdict OK — PASS or MISS.
verdict() { if "$@"; then echo PASS; else echo MISS; fi; }

TABLE_FMT='%-46s %12s %12s %8s %12s %s\n'
table_head() {
  printf "$TABLE_FMT" figure value baseline ratio target result
  printf "$TABLE_FMT" "$(printf '%.0s-' {1..46})" "------------" "------------" "--------" "------------" "------"
}
table_row() { printf "$TABLE_FMT" "$@"; }
