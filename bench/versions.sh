#!/usr/bin/env bash
# Benchmark: `backtrack versions` against a repository with 5,000 semver tags on distinct manifests.
#
# Measures (median of BENCH_RUNS rounds, interleaved so the figures share the same conditions):
#   - `backtrack versions` (default limit 20), warm and cold metadata cache, as a ratio to
#     `skopeo list-tags` of the same repository in the same run             target <= 2x
#   - `backtrack versions --all`, warm cache                                  target <= 0.3 s
#   - `backtrack versions --all`, cold cache (empty BACKTRACK_CACHE_DIR)      target <= 10x warm
#   - peak RSS of `backtrack versions --all`, cold (GNU time %M, max of runs) target <= 40 MiB
# and checks the output is right (count, order, a digest and the right metadata on every row).
#
# Run:   bench/versions.sh
# Needs: the registry from scripts/test-env (127.0.0.1:5000), python3, skopeo, GNU time.
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_REGISTRY (127.0.0.1:5000), BENCH_REPO (bench/versions), BENCH_COUNT (5000),
#        BENCH_RUNS (5; at least 3 are run, more only within BENCH_BUDGET seconds, default 420).
# Leaves the seeded images in the registry (BENCH_REPO) so later runs skip seeding; creates no
# containers; its temp dir (config, state, cache) is removed on exit.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${BENCH_REGISTRY:-127.0.0.1:5000}
repo=${BENCH_REPO:-bench/versions}
count=${BENCH_COUNT:-5000}
runs=${BENCH_RUNS:-5}

need_tools python3:python3 skopeo:skopeo curl:curl /usr/bin/time:time
curl -fsS "http://$registry/v2/" >/dev/null || die "no registry at $registry (run scripts/test-env)"
find_backtrack

work=$(mktemp -d /tmp/bench-versions.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/backtrack.toml" <<TOML
[registry]
url = "$registry"
repository = "$repo"

[target]
kind = "container"
name = "bench-app"

[health]
http = "http://127.0.0.1:18090/health"
timeout = "30s"
TOML
export BACKTRACK_STATE_DIR=$work/state BACKTRACK_CACHE_DIR=$work/cache
cfg=$work/backtrack.toml

# --- seed --------------------------------------------------------------------------------------
load_start=$(cut -d" " -f1-3 /proc/loadavg)
seed_t0=${EPOCHREALTIME/./}
python3 "$BENCH_DIR/seed_registry.py" --registry "$registry" --repository "$repo" --count "$count"
seed_us=$(( 10#${EPOCHREALTIME/./} - 10#$seed_t0 ))

# Every run is bounded (a hung run fails instead of stalling the benchmark); both sides pay the
# same `timeout` exec.
bt() { timeout 180 "$BACKTRACK" --config "$cfg" "$@"; }
skopeo_list() { timeout 180 skopeo list-tags --tls-verify=false "docker://$registry/$repo"; }
cold() { rm -rf "$BACKTRACK_CACHE_DIR"; }

# --- correctness -------------------------------------------------------------------------------
cold
bt --output json versions >"$work/default.json" 2>"$work/default.err" || { cat "$work/default.err" >&2; die "backtrack versions failed"; }
bt --output json versions --all >"$work/all.json" 2>"$work/all.err" || { cat "$work/all.err" >&2; die "backtrack versions --all failed"; }
bt versions >"$work/default.txt" 2>&1 || true
skopeo_list >"$work/skopeo.json"
problems=$(python3 - "$work" "$count" <<'PY'
import hashlib, json, re, sys
work, count = sys.argv[1], int(sys.argv[2])
skopeo = set(json.load(open(f"{work}/skopeo.json"))["Tags"])
want_versions = sorted((t for t in skopeo if re.fullmatch(r"v\d+\.\d+\.\d+", t)),
                       key=lambda t: tuple(map(int, t[1:].split("."))), reverse=True)
out = []
def rows_ok(name, doc, n_expected, expected_tags):
    tags = doc.get("tags", [])
    if len(tags) != n_expected:
        out.append(f"{name}: {len(tags)} rows, expected {n_expected}")
    got = [r["tag"] for r in tags if r.get("version") is not None]
    if got != expected_tags[:len(got)]:
        first = next(i for i, (a, b) in enumerate(zip(got, expected_tags)) if a != b)
        out.append(f"{name}: order differs from semver-descending at row {first}: {got[first]} vs {expected_tags[first]}")
    digests = [r.get("digest") for r in tags]
    if None in digests:
        out.append(f"{name}: {digests.count(None)} rows without a digest")
    if len(set(d for d in digests if d)) != len([d for d in digests if d]):
        out.append(f"{name}: {len(digests) - len(set(digests))} duplicate digests (seeded manifests are distinct)")
    bad_rev = [r["tag"] for r in tags if r.get("version") is not None
               and r.get("revision") != hashlib.sha1(r["tag"].encode()).hexdigest()]
    if bad_rev:
        out.append(f"{name}: {len(bad_rev)} rows with a wrong/missing revision (e.g. {bad_rev[:3]})")
    for field in ("created", "size"):
        missing = sum(1 for r in tags if r.get(field) is None)
        if missing:
            out.append(f"{name}: {missing} rows without {field}")
d = json.load(open(f"{work}/default.json"))
a = json.load(open(f"{work}/all.json"))
if d.get("total_versions") != len(want_versions):
    out.append(f"default: total_versions {d.get('total_versions')}, skopeo lists {len(want_versions)} version tags")
if len(want_versions) < count:
    out.append(f"registry has only {len(want_versions)} version tags, expected {count}")
rows_ok("versions", d, min(20, len(want_versions)), want_versions)
rows_ok("versions --all", a, len(skopeo), want_versions)
print("\n".join(out))
PY
)
if [ -n "$problems" ]; then
  say "OUTPUT PROBLEMS:"; printf '  %s\n' "$problems" >&2
fi

# --- timing ------------------------------------------------------------------------------------
# timed ARRAY CMD... : runs CMD (stdout/stderr discarded), appends its wall time (us) to ARRAY.
# A failed run is counted in fails[ARRAY] (and its error shown), not timed.
declare -A fails=()
timed() {
  local -n _acc=$1; local key=$1; shift
  local t0 t1 rc=0
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null 2>"$work/last.err" || rc=$?
  t1=${EPOCHREALTIME/./}
  if [ $rc -ne 0 ]; then
    fails[$key]=$(( ${fails[$key]:-0} + 1 ))
    say "FAILED (exit $rc): ${*##*/}"; sed 's/^/    /' "$work/last.err" | tail -5 >&2
    return 1
  fi
  _acc+=($(( 10#$t1 - 10#$t0 )))
}
# timed_rss ARRAY RSS_ARRAY ARGS... : `backtrack ARGS` under GNU time: wall time and peak RSS (KiB).
timed_rss() {
  local -n _rss=$2; local key=$1; shift 2
  timed "$key" timeout 180 /usr/bin/time -f %M -o "$work/rss" "$BACKTRACK" --config "$cfg" "$@" || return 0
  _rss+=("$(tail -1 "$work/rss")")
}

# Warm-up: page cache, the registry's in-memory blob descriptor cache, the docker socket.
skopeo_list >/dev/null; bt versions >/dev/null 2>&1 || true; bt versions --all >/dev/null 2>&1 || true

# Rounds are interleaved; at least 3, then more up to $runs while within the time budget (a cold
# `--all` can take tens of seconds when every tag costs registry round trips).
budget=${BENCH_BUDGET:-420}
s_skopeo=() s_def_warm=() s_def_cold=() s_all_warm=() s_all_cold=() rss_cold=() rss_warm=()
say "timing: up to $runs interleaved rounds (budget ${budget}s)"
t_start=$SECONDS
for ((i = 1; i <= runs; i++)); do
  if [ "$i" -gt 3 ] && [ $((SECONDS - t_start)) -gt $((budget * (i - 1) / i)) ]; then
    say "  stopping after $((i - 1)) rounds (time budget)"; break
  fi
  timed s_skopeo skopeo_list || true
  cold; timed s_def_cold bt versions || true
  timed s_def_warm bt versions || true
  cold; timed_rss s_all_cold rss_cold versions --all
  timed_rss s_all_warm rss_warm versions --all
  say "  round $i: skopeo $(secs "${s_skopeo[-1]:-0}")s, versions cold $(secs "${s_def_cold[-1]:-0}")s warm $(secs "${s_def_warm[-1]:-0}")s, --all cold $(secs "${s_all_cold[-1]:-0}")s warm $(secs "${s_all_warm[-1]:-0}")s"
done
rounds=$((i - 1))
for a in s_skopeo s_def_warm s_def_cold s_all_warm s_all_cold; do
  declare -n arr=$a
  [ ${#arr[@]} -gt 0 ] || die "every run of $a failed"
  unset -n arr
done
/usr/bin/time -f %M -o "$work/rss" skopeo list-tags --tls-verify=false "docker://$registry/$repo" >/dev/null 2>&1
rss_skopeo=$(tail -1 "$work/rss")
cache_kib=$(du -sk "$BACKTRACK_CACHE_DIR" 2>/dev/null | cut -f1)

# --- report ------------------------------------------------------------------------------------
m_skopeo=$(median_us "${s_skopeo[@]}")
m_def_warm=$(median_us "${s_def_warm[@]}")
m_def_cold=$(median_us "${s_def_cold[@]}")
m_all_warm=$(median_us "${s_all_warm[@]}")
m_all_cold=$(median_us "${s_all_cold[@]}")
peak_cold=$(max_us "${rss_cold[@]}")
peak_warm=$(max_us "${rss_warm[@]}")
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }

r_def_warm=$(ratio "$m_def_warm" "$m_skopeo")
r_def_cold=$(ratio "$m_def_cold" "$m_skopeo")
r_all=$(ratio "$m_all_cold" "$m_all_warm")

echo
echo "backtrack versions: $count semver tags on distinct manifests in $registry/$repo"
echo "  $(nproc) CPUs, median of $rounds interleaved runs (peak RSS: max over the same runs), seeding took $(secs "$seed_us") s"
echo "  load average at start: $load_start, at end: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
echo "  backtrack $("$BACKTRACK" --version 2>/dev/null | awk '{print $NF}'), skopeo $(skopeo --version | awk '{print $NF}')"
echo
table_head
table_row "skopeo list-tags" "$(secs "$m_skopeo") s" "" "" "" "(baseline)"
table_row "versions (limit 20), warm cache" "$(secs "$m_def_warm") s" "$(secs "$m_skopeo") s" "${r_def_warm}x" "<= 2x" "$(verdict ratio_le "$m_def_warm" "$m_skopeo" 2)"
table_row "versions (limit 20), cold cache" "$(secs "$m_def_cold") s" "$(secs "$m_skopeo") s" "${r_def_cold}x" "<= 2x" "$(verdict ratio_le "$m_def_cold" "$m_skopeo" 2)"
table_row "versions --all, warm cache" "$(secs "$m_all_warm") s" "" "" "<= 0.300 s" "$(verdict le "$m_all_warm" 300000)"
table_row "versions --all, cold cache" "$(secs "$m_all_cold") s" "$(secs "$m_all_warm") s" "${r_all}x" "<= 10x warm" "$(verdict ratio_le "$m_all_cold" "$m_all_warm" 10)"
table_row "peak RSS versions --all, cold" "$(mib "$peak_cold")" "" "" "<= 40 MiB" "$(verdict le "$peak_cold" 40960)"
table_row "peak RSS versions --all, warm" "$(mib "$peak_warm")" "" "" "" "(info)"
table_row "peak RSS skopeo list-tags" "$(mib "$rss_skopeo")" "" "" "" "(info)"
table_row "metadata cache on disk" "$((cache_kib)) KiB" "" "" "" "(info)"
for k in "${!fails[@]}"; do table_row "failed runs: $k" "${fails[$k]}" "" "" "0" "MISS"; done
table_row "output correct (rows, order, metadata)" "$([ -z "$problems" ] && echo yes || echo NO)" "" "" "" "$([ -z "$problems" ] && echo PASS || echo MISS)"
echo
echo "samples (s):"
for name in skopeo def_warm def_cold all_warm all_cold; do
  declare -n arr="s_$name"
  printf '  %-9s' "$name"; for v in "${arr[@]}"; do printf ' %s' "$(secs "$v")"; done; echo
  unset -n arr
done
printf '  %-9s' "rss cold"; for v in "${rss_cold[@]}"; do printf ' %s' "$v"; done; echo " KiB"
printf '  %-9s' "rss warm"; for v in "${rss_warm[@]}"; do printf ' %s' "$v"; done; echo " KiB"
if [ -n "$problems" ]; then echo; echo "output problems:"; printf '  %s\n' "$problems"; fi
