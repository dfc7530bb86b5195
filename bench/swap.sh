#!/usr/bin/env bash
# Benchmark: how long a swap takes, from command start to the new version answering its health
# endpoint, for a tiny busybox httpd app whose target image is already in the registry and pulled.
#
#   raw floor    docker rm -f bench-app && docker run -d ... IMAGE@digest, then curl every 20 ms
#   backtrack    backtrack deploy vX --yes (returns after its own validation), then one curl
#   seed path    docker build --no-cache of the app from source, then rm -f + run + curl
# Each measured run starts with bench-app running the other version (v1.0.0 <-> v1.1.0), the
# three methods interleaved; median of BENCH_RUNS (7) runs each.
# Targets: backtrack <= 1.15x the raw floor; the seed path >= 4x slower than backtrack.
# Unavailability window (BENCH_WINDOW_RUNS, 5): GET the health URL every 10 ms during a swap; the
# longest time from a failed request to the next answer, raw floor vs backtrack. Target:
# backtrack's window <= the raw floor's.
# Also, with a large image (BENCH_BIG_MB, 300 MB of random bytes, not on the machine): a rollback
# that must pull it vs the raw `docker pull` + swap; the same rollback after `backtrack warm` vs
# the raw floor with the image present (target: after warm <= 1.15x that floor, whatever the
# image's size) (BENCH_PULL_RUNS, 3).
#
# A release of two services (BENCH_RELEASE_RUNS, 5): `backtrack deploy` of a release (a web app
# publishing the port, and a worker from a repository of its own) vs the two services deployed as
# single targets back to back (target: <= 1.0x: the services swap at once), and vs the raw floor
# (both `rm -f` + `run` at once, then poll). BENCH_ONLY=release runs only this part.
#
# Run:   bench/swap.sh
# Needs: Docker Engine + the registry from scripts/test-env, /bin/busybox (busybox-static), curl.
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_REGISTRY (127.0.0.1:5000), BENCH_RUNS (7), BENCH_PULL_RUNS (3).
# Uses port 127.0.0.1:18090 and containers bench-app / bench-worker (and their -backtrack-prev), removed on exit
# along with the images the seed path built. Leaves 127.0.0.1:5000/bench/swap:{v1.0.0,v1.1.0,v2.0.0}
# in the registry (v2.0.0 is reused by later runs) and the v1 images locally.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${BENCH_REGISTRY:-127.0.0.1:5000}
image=$registry/bench/swap
runs=${BENCH_RUNS:-7}
pull_runs=${BENCH_PULL_RUNS:-3}
big_mb=${BENCH_BIG_MB:-300}
window_runs=${BENCH_WINDOW_RUNS:-5}
port=18090
url=http://127.0.0.1:$port/health
app=bench-app
export DOCKER_BUILDKIT=0

need_tools curl:curl docker:docker.io /usr/bin/time:time
[ -x /bin/busybox ] || need_tools /bin/busybox:busybox-static
docker info >/dev/null 2>&1 || die "no Docker Engine (run scripts/test-env)"
curl -fsS "http://$registry/v2/" >/dev/null || die "no registry at $registry (run scripts/test-env)"
find_backtrack

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d /tmp/bench-swap.XXXXXX)
seed_images=()
cleanup() {
  docker rm -f "$app" "$app-backtrack-prev" bench-worker bench-worker-backtrack-prev >/dev/null 2>&1 || true
  [ ${#seed_images[@]} -eq 0 ] || docker rmi -f "${seed_images[@]}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
docker rm -f "$app" "$app-backtrack-prev" >/dev/null 2>&1 || true
if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
  die "something already answers on 127.0.0.1:$port"
fi

cat >"$work/backtrack.toml" <<TOML
[registry]
url = "$registry"
repository = "bench/swap"

[target]
kind = "container"
name = "$app"

[health]
http = "$url"
timeout = "30s"
TOML
export BACKTRACK_STATE_DIR=$work/state BACKTRACK_CACHE_DIR=$work/cache
cfg=$work/backtrack.toml

# --- the app -----------------------------------------------------------------------------------
ctx=$work/ctx
mkdir -p "$ctx"
cp /bin/busybox "$ctx/busybox"
write_dockerfile() { # write_dockerfile FILE [EXTRA_LINE]
  cat >"$1" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG VERSION
RUN mkdir -p /www && echo "$VERSION" > /www/health
LABEL org.opencontainers.image.version=$VERSION
ENV APP_VERSION=$VERSION
EXPOSE 8080
CMD ["/bin/sh", "-c", "trap 'kill $pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=$!; wait $pid"]
DOCKERFILE
  if [ $# -gt 1 ]; then echo "$2" >>"$1"; fi
}
write_dockerfile "$ctx/Dockerfile"

# repo_digest REF: IMAGE@sha256:... of a local image as pushed to $image.
repo_digest() {
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" | grep -m1 "^$image@"
}

declare -A ref=()
for v in v1.0.0 v1.1.0; do
  say "building and pushing $image:$v"
  docker build -q --build-arg VERSION=$v -t "$image:$v" "$ctx" >/dev/null 2>"$work/build.err" || { cat "$work/build.err" >&2; die "build $v failed"; }
  docker push -q "$image:$v" >/dev/null 2>"$work/push.err" || { cat "$work/push.err" >&2; die "push $v failed"; }
  ref[$v]=$(repo_digest "$image:$v")
done

# --- measuring ---------------------------------------------------------------------------------
# wait_version WANT [SECONDS]: poll the endpoint every 20 ms until it answers WANT.
wait_version() {
  local want=$1 deadline=$((SECONDS + ${2:-30})) body
  while :; do
    if body=$(curl -fs --max-time 1 "$url" 2>/dev/null) && [ "$body" = "$want" ]; then return 0; fi
    [ $SECONDS -lt $deadline ] || { say "endpoint never answered $want (last: '${body:-}')"; return 1; }
    sleep 0.02
  done
}
run_app() { # run_app IMAGE_REF
  docker run -d --name "$app" -p "127.0.0.1:$port:8080" "$1" >/dev/null
}
raw_swap() { # raw_swap VERSION IMAGE_REF
  docker rm -f "$app" >/dev/null && run_app "$2" && wait_version "$1"
}
bt_swap() { # bt_swap VERSION
  timeout 120 "$BACKTRACK" --config "$cfg" deploy "$1" --yes >"$work/bt.out" 2>"$work/bt.err" || {
    say "backtrack deploy $1 failed (exit $?):"; sed 's/^/    /' "$work/bt.err" >&2; return 1
  }
  bt_returned=${EPOCHREALTIME/./}
  wait_version "$1" 5
}
seed_swap() { # seed_swap VERSION
  docker build -q --no-cache --build-arg VERSION="$1" --iidfile "$work/iid" "$ctx" >/dev/null 2>"$work/build.err" || {
    cat "$work/build.err" >&2; return 1
  }
  local id; id=$(cat "$work/iid"); seed_images+=("$id")
  docker rm -f "$app" >/dev/null && run_app "$id" && wait_version "$1"
}

# timed ARRAY CMD...: appends CMD's wall time (us) to ARRAY; a failure is counted, not timed.
declare -A fails=()
timed() {
  local -n _acc=$1; local key=$1; shift
  local t0 t1 rc=0
  t0=${EPOCHREALTIME/./}
  "$@" || rc=$?
  t1=${EPOCHREALTIME/./}
  if [ $rc -ne 0 ]; then fails[$key]=$(( ${fails[$key]:-0} + 1 )); say "FAILED (exit $rc): $*"; return 1; fi
  _acc+=($(( 10#$t1 - 10#$t0 )))
  last_t0=$t0
}

other() { if [ "$1" = v1.0.0 ]; then echo v1.1.0; else echo v1.0.0; fi; }
settle() { sleep 0.5; }
# ensure_on VERSION: bench-app runs VERSION from the registry image (repairs after a failure).
ensure_on() {
  if [ "$(curl -fs --max-time 1 "$url" 2>/dev/null || true)" != "$1" ] || ! docker inspect "$app" >/dev/null 2>&1; then
    docker rm -f "$app" "$app-backtrack-prev" >/dev/null 2>&1 || true
    run_app "${ref[$1]}" && wait_version "$1"
  fi
}

# --- a release of two services ------------------------------------------------------------------
# The worker: the same app from a repository of its own (a label makes its images its own).
worker=bench-worker
worker_image=$registry/bench/swap-worker
write_dockerfile "$ctx/Dockerfile.worker" "LABEL io.bench.role=worker"
declare -A wref=()
for v in v1.0.0 v1.1.0; do
  say "building and pushing $worker_image:$v"
  docker build -q -f "$ctx/Dockerfile.worker" --build-arg VERSION=$v -t "$worker_image:$v" "$ctx" >/dev/null 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; die "build worker $v failed"; }
  docker push -q "$worker_image:$v" >/dev/null 2>"$work/push.err" || { cat "$work/push.err" >&2; die "push worker $v failed"; }
  wref[$v]=$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$worker_image:$v" | grep -m1 "^$worker_image@")
done
release_config() { # release_config FILE TARGET_LINES HEALTH_LINES
  printf '[registry]\nurl = "%s"\nrepository = "bench/swap"\n\n[target]\nkind = "container"\n%s\n[health]\n%stimeout = "30s"\n' \
    "$registry" "$2" "$3" >"$1"
}
release_config "$work/release.toml" "names = [\"$app\", \"$worker\"]
[target.repositories]
$worker = \"bench/swap-worker\"" "http = \"$url\"
"
release_config "$work/web.toml" "name = \"$app\"" "http = \"$url\"
"
# The worker alone is validated as in the release: by its state and version (no HTTP probe).
printf '[registry]\nurl = "%s"\nrepository = "bench/swap-worker"\n\n[target]\nkind = "container"\nname = "%s"\n\n[health]\ntimeout = "30s"\n' \
  "$registry" "$worker" >"$work/worker.toml"
release_on() { # release_on VERSION: web and worker run VERSION (untimed repair)
  docker rm -f "$app" "$app-backtrack-prev" "$worker" "$worker-backtrack-prev" >/dev/null 2>&1 || true
  run_app "${ref[$1]}" && docker run -d --name "$worker" "${wref[$1]}" >/dev/null && wait_version "$1"
}
worker_on() { # worker_on VERSION: the worker runs VERSION (poll its label, every 20 ms)
  local deadline=$((SECONDS + 30))
  until [ "$(docker inspect --format '{{.State.Running}} {{index .Config.Labels "org.opencontainers.image.version"}}' "$worker" 2>/dev/null)" = "true $1" ]; do
    [ $SECONDS -lt $deadline ] || { say "worker never ran $1"; return 1; }
    sleep 0.02
  done
}
bt_deploy() { # bt_deploy CONFIG VERSION
  timeout 120 "$BACKTRACK" --config "$1" deploy "$2" --yes >"$work/bt.out" 2>"$work/bt.err" || {
    say "backtrack --config $1 deploy $2 failed (exit $?):"; sed 's/^/    /' "$work/bt.err" >&2; return 1
  }
}
bt_release() { bt_deploy "$work/release.toml" "$1" && wait_version "$1" 5 && worker_on "$1"; }
bt_singles() { bt_deploy "$work/web.toml" "$1" && bt_deploy "$work/worker.toml" "$1" && wait_version "$1" 5 && worker_on "$1"; }
raw_both() { # both rm -f + run at once, then poll both
  { docker rm -f "$app" >/dev/null && run_app "${ref[$1]}"; } &
  local a=$!
  { docker rm -f "$worker" >/dev/null && docker run -d --name "$worker" "${wref[$1]}" >/dev/null; } &
  local b=$!
  wait "$a" && wait "$b" && wait_version "$1" && worker_on "$1"
}
release_runs=${BENCH_RELEASE_RUNS:-5}
r_release=() r_singles=() r_raw=()
say "release of two services: $release_runs runs each of backtrack release / two single deploys / raw floor, interleaved"
release_on v1.0.0; rcur=v1.0.0
bt_release v1.1.0 && rcur=v1.1.0 || { release_on v1.0.0; rcur=v1.0.0; }   # warm-up, not timed
for ((i = 1; i <= release_runs; i++)); do
  for m in release singles raw; do
    next=$(other "$rcur"); settle
    case $m in
      release) timed r_release bt_release "$next" ;;
      singles) timed r_singles bt_singles "$next" ;;
      raw) timed r_raw raw_both "$next" ;;
    esac && rcur=$next || { release_on v1.0.0; rcur=v1.0.0; }
  done
  say "  run $i: release $(secs "${r_release[-1]:-0}")s, two single deploys $(secs "${r_singles[-1]:-0}")s, raw both $(secs "${r_raw[-1]:-0}")s"
done
docker rm -f "$app" "$app-backtrack-prev" "$worker" "$worker-backtrack-prev" >/dev/null 2>&1 || true
release_rows() {
  local a b c
  for a in r_release r_singles r_raw; do
    declare -n arr=$a
    [ ${#arr[@]} -gt 0 ] || die "every run of $a failed"
    unset -n arr
  done
  a=$(median_us "${r_release[@]}") b=$(median_us "${r_singles[@]}") c=$(median_us "${r_raw[@]}")
  table_row "release of 2 services (web + worker)" "$(secs "$a") s" "$(secs "$b") s" "$(ratio "$a" "$b")x" "<= 1.0x 2 singles" "$(verdict ratio_le "$a" "$b" 1.0)"
  table_row "  vs raw: both rm -f + run at once + poll" "$(secs "$a") s" "$(secs "$c") s" "$(ratio "$a" "$c")x" "" "(info)"
}
if [ "${BENCH_ONLY:-}" = release ]; then
  echo
  echo "release of two services: start of command -> both services on the new version"
  echo "  $(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'), median of ${#r_release[@]} runs, backtrack $("$BACKTRACK" --version 2>/dev/null | awk '{print $NF}')"
  echo "  load average at start: $load_start, at end: $(cut -d" " -f1-3 /proc/loadavg)"
  echo
  table_head
  release_rows
  for name in r_release r_singles r_raw; do
    declare -n arr="$name"
    printf '  %-13s' "$name"; for v in "${arr[@]}"; do printf ' %s' "$(secs "$v")"; done; echo
    unset -n arr
  done
  exit 0
fi

say "warming up (one swap of each kind, not timed)"
current=v1.0.0
run_app "${ref[$current]}"; wait_version "$current"
for m in raw bt; do
  next=$(other "$current")
  case $m in raw) raw_swap "$next" "${ref[$next]}" ;; bt) bt_swap "$next" ;; esac
  current=$next; settle
done

s_raw=() s_bt=() s_bt_cmd=() s_seed=()
say "timing: $runs runs each of raw / backtrack / seed path, interleaved"
for ((i = 1; i <= runs; i++)); do
  next=$(other "$current"); ensure_on "$current"; settle
  timed s_raw raw_swap "$next" "${ref[$next]}" && current=$next || current=unknown
  [ "$current" != unknown ] || { current=v1.0.0; ensure_on v1.0.0; }
  next=$(other "$current"); settle
  if timed s_bt bt_swap "$next"; then
    s_bt_cmd+=($(( 10#$bt_returned - 10#$last_t0 ))); current=$next
  else
    current=v1.0.0; ensure_on v1.0.0
  fi
  next=$(other "$current"); settle
  timed s_seed seed_swap "$next" || true
  # The seed path leaves a locally built image running; put the registry image back (untimed).
  docker rm -f "$app" >/dev/null; run_app "${ref[$next]}"; wait_version "$next"; current=$next
  say "  run $i: raw $(secs "${s_raw[-1]:-0}")s, backtrack $(secs "${s_bt[-1]:-0}")s, seed path $(secs "${s_seed[-1]:-0}")s"
done

# --- unavailability window ---------------------------------------------------------------------
# windowed ARRAY CMD...: runs CMD while bench/window.py polls the endpoint; appends the longest
# failure run (us) to ARRAY.
windowed() {
  local -n _w=$1; shift
  rm -f "$work/stop"
  python3 "$BENCH_DIR/window.py" "$url" "$work/stop" >"$work/window" &
  local poller=$!
  sleep 0.1
  "$@" || { touch "$work/stop"; wait "$poller" || true; return 1; }
  touch "$work/stop"
  wait "$poller"
  _w+=($(cat "$work/window"))
}
w_raw=() w_bt=()
say "unavailability window: $window_runs runs each of raw / backtrack, polling every 10 ms"
for ((i = 1; i <= window_runs; i++)); do
  next=$(other "$current"); ensure_on "$current"; settle
  windowed w_raw raw_swap "$next" "${ref[$next]}" && current=$next || { current=v1.0.0; ensure_on v1.0.0; }
  next=$(other "$current"); settle
  windowed w_bt bt_swap "$next" && current=$next || { current=v1.0.0; ensure_on v1.0.0; }
  say "  run $i: raw window $(secs "${w_raw[-1]:-0}")s, backtrack window $(secs "${w_bt[-1]:-0}")s"
done

# --- a large image: pulled by the rollback, or warmed before it -----------------------------------
big=v3.0.0-big$big_mb
have_big=$(curl -fs -o /dev/null -w '%{http_code}' -I \
  -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$registry/v2/bench/swap/manifests/$big" || true)
if [ "$have_big" != 200 ]; then
  say "building and pushing $image:$big (with $big_mb MB of random bytes)"
  head -c "${big_mb}M" /dev/urandom >"$ctx/big.bin"
  write_dockerfile "$ctx/Dockerfile.big" "COPY big.bin /big.bin"
  docker build -q -f "$ctx/Dockerfile.big" --build-arg VERSION=$big -t "$image:$big" "$ctx" >/dev/null 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; die "build $big failed"; }
  docker push -q "$image:$big" >/dev/null 2>"$work/push.err" || { cat "$work/push.err" >&2; die "push $big failed"; }
  rm -f "$ctx/big.bin"
fi
big_digest=$(curl -fsI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$registry/v2/bench/swap/manifests/$big" | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest" {print $2}')
[ -n "$big_digest" ] || die "no digest for $image:$big"
big_ref=$image@$big_digest
big_size=$(curl -fs -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$registry/v2/bench/swap/manifests/$big_digest" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])')

# drop_big: bench-app off the big image, and the big image gone from the machine.
drop_big() {
  ensure_on v1.0.0; current=v1.0.0
  local id
  for r in "$big_ref" "$image:$big"; do
    id=$(docker image inspect --format '{{.Id}}' "$r" 2>/dev/null || true)
    [ -z "$id" ] || docker rmi -f "$id" >/dev/null
  done
  ! docker image inspect "$big_ref" >/dev/null 2>&1 || die "could not remove $big_ref"
}

raw_pull() { docker pull -q "$big_ref" >/dev/null; }
raw_pull_swap() { docker pull -q "$big_ref" >/dev/null && raw_swap "$big" "$big_ref"; }
bt_warm() { timeout 300 "$BACKTRACK" --config "$cfg" warm "$big" >/dev/null 2>"$work/warm.err" || { cat "$work/warm.err" >&2; return 1; }; }
s_bt_pull=() s_raw_pull=() s_raw_pull_swap=() s_bt_warm=() s_raw_present=() s_warm_only=()
say "timing: $pull_runs runs each of swaps that pull $image:$big ($(awk -v b="$big_size" 'BEGIN {printf "%.0f MB", b/1e6}'))"
for ((i = 1; i <= pull_runs; i++)); do
  drop_big; settle
  timed s_bt_pull bt_swap "$big" || true
  drop_big; settle
  timed s_raw_pull raw_pull || true
  drop_big; settle
  timed s_raw_pull_swap raw_pull_swap || true
  drop_big; settle
  timed s_warm_only bt_warm || true
  # warm runs ahead of time: let the pull's writes reach the disk before the rollback, as they
  # would have long before a real one (the raw floor below runs on a settled disk too).
  sync; settle
  timed s_bt_warm bt_swap "$big" || true
  ensure_on v1.0.0; current=v1.0.0; sync; settle
  timed s_raw_present raw_swap "$big" "$big_ref" || true
  say "  run $i: after warm $(secs "${s_bt_warm[-1]:-0}")s vs raw with the image present $(secs "${s_raw_present[-1]:-0}")s"
  say "  run $i: backtrack with pull $(secs "${s_bt_pull[-1]:-0}")s, docker pull $(secs "${s_raw_pull[-1]:-0}")s, raw swap with pull $(secs "${s_raw_pull_swap[-1]:-0}")s"
done
drop_big   # leaves the machine without the large image

# --- report ------------------------------------------------------------------------------------
for a in s_raw s_bt s_seed s_bt_pull s_raw_pull s_raw_pull_swap s_bt_warm s_raw_present s_warm_only w_raw w_bt; do
  declare -n arr=$a
  [ ${#arr[@]} -gt 0 ] || die "every run of $a failed"
  unset -n arr
done
m_raw=$(median_us "${s_raw[@]}")
m_bt=$(median_us "${s_bt[@]}")
m_bt_cmd=$(median_us "${s_bt_cmd[@]}")
m_seed=$(median_us "${s_seed[@]}")
m_bt_pull=$(median_us "${s_bt_pull[@]}")
m_raw_pull=$(median_us "${s_raw_pull[@]}")
m_raw_pull_swap=$(median_us "${s_raw_pull_swap[@]}")
r_bt=$(ratio "$m_bt" "$m_raw")
r_seed=$(ratio "$m_seed" "$m_bt")
r_pull=$(ratio "$m_bt_pull" "$m_raw_pull_swap")
m_bt_warm=$(median_us "${s_bt_warm[@]}")
m_raw_present=$(median_us "${s_raw_present[@]}")
m_warm_only=$(median_us "${s_warm_only[@]}")
m_w_raw=$(median_us "${w_raw[@]}")
m_w_bt=$(median_us "${w_bt[@]}")

echo
echo "swap to a version already pulled: start of command -> new version answers $url"
echo "  $(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'), median of ${#s_bt[@]} runs (pull: ${#s_bt_pull[@]}), backtrack $("$BACKTRACK" --version 2>/dev/null | awk '{print $NF}')"
echo "  load average at start: $load_start, at end: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
echo
table_head
table_row "raw floor: rm -f + run + poll" "$(secs "$m_raw") s" "" "" "" "(baseline)"
table_row "backtrack deploy (image present)" "$(secs "$m_bt") s" "$(secs "$m_raw") s" "${r_bt}x" "<= 1.15x raw" "$(verdict ratio_le "$m_bt" "$m_raw" 1.15)"
table_row "  of which until deploy returned" "$(secs "$m_bt_cmd") s" "" "" "" "(info)"
table_row "unavailable: raw floor (longest gap)" "$(secs "$m_w_raw") s" "" "" "" "(baseline)"
table_row "unavailable: backtrack deploy" "$(secs "$m_w_bt") s" "$(secs "$m_w_raw") s" "$(ratio "$m_w_bt" "$m_w_raw")x" "<= raw" "$(verdict le "$m_w_bt" "$m_w_raw")"
table_row "seed path: build --no-cache + rm + run" "$(secs "$m_seed") s" "$(secs "$m_bt") s" "${r_seed}x" ">= 4x bt" "$(verdict ratio_ge "$m_seed" "$m_bt" 4)"
table_row "rollback to a ${big_mb} MB image after warm" "$(secs "$m_bt_warm") s" "$(secs "$m_raw_present") s" "$(ratio "$m_bt_warm" "$m_raw_present")x" "<= 1.15x raw" "$(verdict ratio_le "$m_bt_warm" "$m_raw_present" 1.15)"
table_row "  cold (pulling) / after warm" "$(secs "$m_bt_pull") s" "$(secs "$m_bt_warm") s" "$(ratio "$m_bt_pull" "$m_bt_warm")x" "" "(info)"
table_row "  backtrack warm itself (pull, ahead of time)" "$(secs "$m_warm_only") s" "" "" "" "(info)"
table_row "backtrack deploy with pull (${big_mb} MB)" "$(secs "$m_bt_pull") s" "$(secs "$m_raw_pull_swap") s" "${r_pull}x" "" "(info)"
table_row "raw: docker pull + rm -f + run + poll" "$(secs "$m_raw_pull_swap") s" "" "" "" "(info)"
table_row "raw: docker pull alone (${big_mb} MB)" "$(secs "$m_raw_pull") s" "" "" "" "(info)"
release_rows
for k in "${!fails[@]}"; do table_row "failed runs: $k" "${fails[$k]}" "" "" "0" "MISS"; done
echo
echo "samples (s):"
for name in s_raw s_bt s_bt_cmd s_seed s_bt_pull s_raw_pull s_raw_pull_swap s_bt_warm s_raw_present s_warm_only w_raw w_bt r_release r_singles r_raw; do
  declare -n arr="$name"
  printf '  %-13s' "$name"; for v in "${arr[@]}"; do printf ' %s' "$(secs "$v")"; done; echo
  unset -n arr
done
