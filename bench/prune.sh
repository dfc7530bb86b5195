#!/usr/bin/env bash
# Benchmark: deleting 1,000 manifests with `backtrack prune`, as a ratio to a sequential
# `skopeo delete` loop over the same manifests in the same run (target: >= 8x faster), with the
# peak memory of backtrack. The plan itself (5,000 versions, no network) is timed by
# `cargo bench --bench plan`.
#
# Run:   bench/prune.sh
# Needs: the registry from scripts/test-env (127.0.0.1:5000, deletes enabled), python3, skopeo,
#        GNU time. Knobs: BACKTRACK, BENCH_REGISTRY (127.0.0.1:5000), BENCH_COUNT (1000).
# Seeds bench/prune with BENCH_COUNT images (distinct manifests) before each side; leaves it empty.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${BENCH_REGISTRY:-127.0.0.1:5000}
repo=bench/prune
count=${BENCH_COUNT:-1000}

need_tools python3:python3 skopeo:skopeo curl:curl /usr/bin/time:time
curl -fsS "http://$registry/v2/" >/dev/null || die "no registry at $registry (run scripts/test-env)"
find_backtrack

work=$(mktemp -d /tmp/bench-prune.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat >"$work/backtrack.toml" <<TOML
[registry]
url = "$registry"
repository = "$repo"
TOML
# A policy that keeps nothing: every version is deleted.
printf 'description = "delete every version"\n' >"$work/none.toml"
export BACKTRACK_STATE_DIR=$work/state BACKTRACK_CACHE_DIR=$work/cache

seed() {
  python3 "$BENCH_DIR/seed_registry.py" --registry "$registry" --repository "$repo" --count "$count" >/dev/null
  local n
  n=$(curl -fsS "http://$registry/v2/$repo/tags/list" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("tags") or []))')
  [ "$n" -ge "$count" ] || die "seeding left $n tags, wanted $count"
}
digests() {
  curl -fsS "http://$registry/v2/$repo/tags/list" | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin).get("tags") or []))' |
    while read -r tag; do
      curl -fsSI -H "Accept: application/vnd.docker.distribution.manifest.v2+json" "http://$registry/v2/$repo/manifests/$tag" |
        tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}'
    done | sort -u
}
now() { date +%s.%N; }

say "seeding $count images into $repo"
seed
start=$(now)
/usr/bin/time -f %M -o "$work/rss" "$BACKTRACK" --config "$work/backtrack.toml" prune --policy "$work/none.toml" --yes --output json >"$work/prune.json"
bt=$(echo "$(now) - $start" | bc -l)
deleted=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["deleted"])' "$work/prune.json")
left=$(curl -fsS "http://$registry/v2/$repo/tags/list" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("tags") or []))')
[ "$deleted" = "$count" ] && [ "$left" = 0 ] || die "backtrack deleted $deleted, $left tags left"

say "re-seeding the same $count images for the skopeo loop"
seed
digests >"$work/digests"
[ "$(wc -l <"$work/digests")" -eq "$count" ] || die "expected $count digests"
start=$(now)
while read -r d; do
  skopeo delete --tls-verify=false "docker://$registry/$repo@$d"
done <"$work/digests"
sk=$(echo "$(now) - $start" | bc -l)
left=$(curl -fsS "http://$registry/v2/$repo/tags/list" | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("tags") or []))')
[ "$left" = 0 ] || die "skopeo left $left tags"

rss=$(cat "$work/rss")
ratio=$(echo "$sk / $bt" | bc -l)
pass=$(echo "$ratio >= 8" | bc -l)
printf '\nprune: deleting %d manifests from %s/%s (%d CPUs)\n\n' "$count" "$registry" "$repo" "$(nproc)"
printf '%-44s %10s %10s %8s %10s %s\n' figure value baseline ratio target result
printf '%-44s %9.2fs %10s %8s %10s %s\n' "skopeo delete, sequential loop" "$sk" "" "" "" "(baseline)"
printf '%-44s %9.2fs %9.2fs %7.1fx %10s %s\n' "backtrack prune --yes (list, plan, delete)" "$bt" "$sk" "$ratio" ">= 8x" "$([ "$pass" = 1 ] && echo PASS || echo MISS)"
printf '%-44s %8.1fMiB %10s %8s %10s %s\n' "peak RSS of backtrack prune" "$(echo "$rss / 1024" | bc -l)" "" "" "" "(info)"
