#!/usr/bin/env bash
# Benchmark (issue #27): requests served during a swap behind a reverse proxy, stop-first against
# start-first. The app takes 2 s to become ready (busybox: `sleep 2`, then httpd serving its
# version at /health; it stops on SIGTERM at once). It runs as bench-win-app on the network
# bench-win-net under the alias `web`, publishing no port; Caddy (bench-win-proxy, published on
# 127.0.0.1:18091) follows Docker's DNS for `web` (refresh 1 s, dial timeout 100 ms, retrying
# for up to 5 s, round robin so that a retry goes to the other container: the README's config).
# Stop-first loses its boot as one request held by the proxy's retries (or failed requests when a
# client gives up sooner); start-first's longest requests are the proxy dialling the stopped
# container's address until its next DNS refresh. While each swap runs, bench/proxied-window.py GETs
# http://127.0.0.1:18091/health every 10 ms (one request at a time, each bounded by 3 s) and counts
# failed requests (an error, a timeout or a non-2xx answer), the longest single request and the
# total, until 2 s after the proxy serves the new version.
#
#   raw floor    docker rm -f bench-win-app && docker run -d --network bench-win-net
#                --network-alias web IMAGE@digest, then poll the proxy until it serves the version
#   stop-first   backtrack deploy vX --yes, [target] order = "stop-first" (said explicitly: the
#                default `auto` picks start-first here, no host port on a user-defined network)
#   start-first  backtrack deploy vX --yes, [target] order = "start-first", drain = "2s"
# Each measured run starts with bench-win-app on the other version (v1.0.0 <-> v1.1.0), the three
# methods interleaved, BENCH_WINDOW_RUNS (5) runs each. Wall time: from the command's start to the
# command returned and the proxy serving the new version. Then BENCH_WINDOW_BAD_RUNS (1) failed
# start-first deploys of each bad version: v9.9.9-bad (starts as slowly, then answers 404 on
# /health: validation fails at [health] timeout, 30 s) and v9.9.9-crash (exits 3 after its 2 s).
# Targets: start-first: 0 failed requests in every run, and the longest request (worst of every
#          run) <= 0.5 s; start-first wall (median) <= 1.2x (stop-first wall (median) + drain),
#          both measured in the same run; a failed start-first deploy exits 6 with 0 failed
#          requests (the previous version kept serving). The raw floor and stop-first are
#          reported as the baseline (stop-first against the raw floor's wall time).
#
# Run:   bench/window.sh
# Needs: Docker Engine + the registry + the Caddy image from scripts/test-env
#        (backtrack-test-caddy:2.6; backtrack-test-base:1 is used as the app's base when present,
#        else /bin/busybox from busybox-static), python3, curl. A backtrack without start-first
#        (an unknown [target] order) runs the raw floor and stop-first only and says so.
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_REGISTRY (127.0.0.1:5000), BENCH_WINDOW_RUNS (5), BENCH_WINDOW_BAD_RUNS (1),
#        BENCH_WINDOW_DRAIN (2s: the start-first drain, s or ms), BENCH_WINDOW_REQUEST_TIMEOUT (3,
#        seconds per request), BENCH_WINDOW_TAIL (2, seconds polled after the swap),
#        BACKTRACK_TEST_CADDY_IMAGE (backtrack-test-caddy:2.6).
# Uses port 127.0.0.1:18091, the network bench-win-net and containers bench-win-*, removed on exit
# with the temp dir (state, cache, Caddyfile). Leaves 127.0.0.1:5000/bench/window:{v1.0.0,v1.1.0,
# v9.9.9-bad,v9.9.9-crash} in the registry and those images locally.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${BENCH_REGISTRY:-127.0.0.1:5000}
repository=bench/window
image=$registry/$repository
runs=${BENCH_WINDOW_RUNS:-5}
bad_runs=${BENCH_WINDOW_BAD_RUNS:-1}
drain=${BENCH_WINDOW_DRAIN:-2s}
req_timeout=${BENCH_WINDOW_REQUEST_TIMEOUT:-3}
tail_s=${BENCH_WINDOW_TAIL:-2}
caddy_image=${BACKTRACK_TEST_CADDY_IMAGE:-backtrack-test-caddy:2.6}
base_image=backtrack-test-base:1
port=18091
url=http://127.0.0.1:$port/health
app=bench-win-app proxy=bench-win-proxy net=bench-win-net
export DOCKER_BUILDKIT=0

case $drain in
  *ms) drain_us=$(( ${drain%ms} * 1000 )) ;;
  *s) drain_us=$(awk -v s="${drain%s}" 'BEGIN {printf "%d", s * 1e6}') ;;
  *) die "BENCH_WINDOW_DRAIN=$drain: give seconds (2s) or milliseconds (500ms)" ;;
esac

need_tools curl:curl docker:docker.io python3:python3
docker info >/dev/null 2>&1 || die "no Docker Engine (run scripts/test-env)"
curl -fsS "http://$registry/v2/" >/dev/null || die "no registry at $registry (run scripts/test-env)"
docker image inspect "$caddy_image" >/dev/null 2>&1 || die "no image $caddy_image (run scripts/test-env)"
find_backtrack

load_start=$(cut -d" " -f1-3 /proc/loadavg)
work=$(mktemp -d /tmp/bench-window.XXXXXX)
poller_pid=
# Every container of this bench: the app, what backtrack sets aside or prepares (-backtrack-*), the proxy.
ours() { docker ps -aq --filter "name=^/?bench-win-" 2>/dev/null || true; }
cleanup() {
  [ -z "$poller_pid" ] || kill "$poller_pid" 2>/dev/null || true
  local ids; ids=$(ours)
  [ -z "$ids" ] || timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
  timeout 30 docker network rm "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ids=$(ours); [ -z "$ids" ] || docker rm -f $ids >/dev/null
docker network rm "$net" >/dev/null 2>&1 || true
if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
  die "something already answers on 127.0.0.1:$port"
fi

# --- the app -----------------------------------------------------------------------------------
# MODE ok: /www/health holds the version; bad: no /www/health (404); crash: exits 3 instead of serving.
ctx=$work/ctx
mkdir -p "$ctx"
if docker image inspect "$base_image" >/dev/null 2>&1; then
  echo "FROM $base_image" >"$ctx/Dockerfile"
else
  [ -x /bin/busybox ] || need_tools /bin/busybox:busybox-static
  cp /bin/busybox "$ctx/busybox"
  printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' 'RUN ["/bin/busybox", "--install", "-s", "/bin"]' >"$ctx/Dockerfile"
fi
cat >>"$ctx/Dockerfile" <<'DOCKERFILE'
ARG VERSION
ARG MODE=ok
RUN mkdir -p /www && echo app > /www/index.html && if [ "$MODE" = ok ]; then echo "$VERSION" > /www/health; fi
LABEL org.opencontainers.image.version=$VERSION
ENV APP_VERSION=$VERSION APP_MODE=$MODE
EXPOSE 8080
CMD ["/bin/sh", "-c", "trap 'kill $pid 2>/dev/null; exit 0' TERM; sleep 2 & pid=$!; wait $pid; [ \"$APP_MODE\" != crash ] || exit 3; httpd -f -p 8080 -h /www & pid=$!; wait $pid"]
DOCKERFILE

repo_digest() { # repo_digest REF: IMAGE@sha256:... of a local image as pushed to $image.
  docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$1" | grep -m1 "^$image@"
}
declare -A ref=()
for spec in v1.0.0:ok v1.1.0:ok v9.9.9-bad:bad v9.9.9-crash:crash; do
  v=${spec%%:*} mode=${spec#*:}
  say "building and pushing $image:$v ($mode)"
  timeout 120 docker build -q --build-arg VERSION="$v" --build-arg MODE="$mode" -t "$image:$v" "$ctx" >/dev/null 2>"$work/build.err" \
    || { cat "$work/build.err" >&2; die "build $v failed"; }
  timeout 120 docker push -q "$image:$v" >/dev/null 2>"$work/push.err" || { cat "$work/push.err" >&2; die "push $v failed"; }
  ref[$v]=$(repo_digest "$image:$v")
done

# --- the network and the proxy -----------------------------------------------------------------
cat >"$work/Caddyfile" <<'CADDY'
{
	admin off
	auto_https off
}
:80 {
	reverse_proxy {
		dynamic a web 8080 {
			refresh 1s
		}
		lb_try_duration 5s
		lb_try_interval 50ms
		lb_policy round_robin
		transport http {
			dial_timeout 100ms
		}
	}
}
CADDY
docker network create "$net" >/dev/null
timeout 60 docker run -d --name "$proxy" --network "$net" -p "127.0.0.1:$port:80" \
  -v "$work/Caddyfile:/etc/caddy/Caddyfile:ro" "$caddy_image" \
  run --config /etc/caddy/Caddyfile --adapter caddyfile >/dev/null

# --- backtrack's configs -----------------------------------------------------------------------
export BACKTRACK_STATE_DIR=$work/state BACKTRACK_CACHE_DIR=$work/cache
write_config() { # write_config FILE [TARGET_LINE...]
  local f=$1; shift
  {
    printf '[registry]\nurl = "%s"\nrepository = "%s"\n\n' "$registry" "$repository"
    printf '[target]\nkind = "container"\nname = "%s"\n' "$app"
    [ $# -eq 0 ] || printf '%s\n' "$@"
    printf '\n[health]\nhttp = "%s"\ntimeout = "30s"\n' "$url"
  } >"$f"
}
cfg_stop=$work/stop-first.toml cfg_start=$work/start-first.toml
write_config "$cfg_start" 'order = "start-first"' "drain = \"$drain\""

# --- measuring ---------------------------------------------------------------------------------
# wait_version WANT [SECONDS]: poll the proxy every 20 ms until it answers WANT.
wait_version() {
  local want=$1 deadline=$((SECONDS + ${2:-30})) body
  while :; do
    if body=$(curl -fs --max-time 2 "$url" 2>/dev/null) && [ "$body" = "$want" ]; then return 0; fi
    [ $SECONDS -lt $deadline ] || { say "the proxy never answered $want (last: '${body:-}')"; return 1; }
    sleep 0.02
  done
}
run_app() { # run_app IMAGE_REF
  timeout 60 docker run -d --name "$app" --network "$net" --network-alias web "$1" >/dev/null
}
raw_swap() { # raw_swap VERSION IMAGE_REF
  timeout 60 docker rm -f "$app" >/dev/null && run_app "$2"
}
bt_deploy() { # bt_deploy CONFIG VERSION
  timeout 120 "$BACKTRACK" --config "$1" deploy "$2" --yes >"$work/bt.out" 2>"$work/bt.err"
}
# leftovers: containers of the app's besides bench-win-app itself (what a swap set aside or prepared).
leftovers() { docker ps -a --filter "name=^/?$app-" --format '{{.Names}} ({{.Status}})' | paste -sd, -; }
# ensure_on VERSION: bench-win-app alone runs VERSION from the registry (repairs after a failure).
ensure_on() {
  local on; on=$(docker inspect --format '{{.Image}}' "$app" 2>/dev/null || true)
  if [ "$(curl -fs --max-time 2 "$url" 2>/dev/null || true)" != "$1" ] || [ -n "$(leftovers)" ] \
    || [ "$on" != "$(docker image inspect --format '{{.Id}}' "${ref[$1]}")" ]; then
    say "  (putting $app back on $1 alone)"
    local ids; ids=$(docker ps -aq --filter "name=^/?$app")
    [ -z "$ids" ] || timeout 60 docker rm -f $ids >/dev/null
    run_app "${ref[$1]}" && wait_version "$1"
  fi
}
other() { if [ "$1" = v1.0.0 ]; then echo v1.1.0; else echo v1.0.0; fi; }
# settle: longer than the proxy's DNS refresh, so no run starts with a stale upstream.
settle() { sleep 1.5; }

# watched OLD NEW EXPECT_RC CMD...: runs CMD while the poller watches the proxy. CMD must exit
# EXPECT_RC; then the proxy must serve NEW (the version left running: OLD after a failed deploy).
# Sets: w_rc, w_cmd (us until CMD returned), w_wall (us until the proxy served NEW after that),
# w_total, w_failed, w_longest (us), w_longest_at, w_first_new, w_last_old (s from the start),
# w_fails (lines "AT DURATION WHAT"). Returns 1 when CMD's exit code or the result was wrong.
watched() {
  local old=$1 new=$2 expect=$3; shift 3
  rm -f "$work/stop" "$work/stop.ready" "$work/t0"; : >"$work/bt.err"
  python3 "$BENCH_DIR/proxied-window.py" "$url" "$work/stop" "$work/t0" "$old" "$new" "$req_timeout" "$tail_s" \
    >"$work/window" &
  poller_pid=$!
  local i
  for ((i = 0; i < 250; i++)); do [ -e "$work/stop.ready" ] && break; sleep 0.02; done
  [ -e "$work/stop.ready" ] || { say "the poller did not start"; kill "$poller_pid"; poller_pid=; return 1; }
  local start=$EPOCHREALTIME t0 t1 t2 ok=0
  echo "$start" >"$work/t0"
  t0=${start/./}; t0=$((10#$t0))
  w_rc=0; "$@" || w_rc=$?
  t1=$(now_us)
  if [ "$w_rc" != "$expect" ]; then
    say "FAILED: $* exited $w_rc, expected $expect"
    [ ! -s "$work/bt.err" ] || sed 's/^/    /' "$work/bt.err" >&2
    ok=1
  fi
  wait_version "$new" 30 || ok=1
  t2=$(now_us)
  touch "$work/stop"
  wait "$poller_pid" || ok=1
  poller_pid=
  w_cmd=$((t1 - t0)) w_wall=$((t2 - t0))
  local kv
  kv=$(head -1 "$work/window")
  [[ $kv == total=* ]] || { say "the poller printed no figures"; return 1; }
  for kv in $kv; do
    case $kv in
      total=*) w_total=${kv#*=} ;; failed=*) w_failed=${kv#*=} ;; longest_us=*) w_longest=${kv#*=} ;;
      longest_at=*) w_longest_at=${kv#*=} ;; first_new=*) w_first_new=${kv#*=} ;; last_old=*) w_last_old=${kv#*=} ;;
      first_fail=*) w_first_fail=${kv#*=} ;; last_fail=*) w_last_fail=${kv#*=} ;;
    esac
  done
  w_fails=$(sed -n 's/^fail //p' "$work/window")
  w_slow=$(sed -n 's/^slow \([^ ]*\) \([^ ]*\) .*/+\1s took \2s/p' "$work/window" | paste -sd, - | sed 's/,/, /g')
  return $ok
}

# record METHOD RUN: appends the last watched figures to METHOD's arrays and reports failures.
declare -A broken=()
notes=()
record() {
  local m=$1 run=$2
  local -n _wall=${m}_wall _cmd=${m}_cmd _failed=${m}_failed _longest=${m}_longest _total=${m}_total
  _wall+=("$w_wall") _cmd+=("$w_cmd") _failed+=("$w_failed") _longest+=("$w_longest") _total+=("$w_total")
  [ "$w_failed" = 0 ] || note_fails "$(label "$m") run $run"
  local left; left=$(leftovers)
  [ -z "$left" ] || notes+=("$(label "$m") run $run: left behind after the swap: $left")
}
# note_fails WHAT [failed-deploy]: a note on the last watched run's failed requests: how many, of
# what kind, when in the swap.
note_fails() {
  local when="the command returned (exit $w_rc) at +$(secs "$w_cmd") s"
  [ $# -gt 1 ] || when+=", first answer from the new version at +$w_first_new s, last from the old one at +$w_last_old s"
  notes+=("$1: $w_failed failed requests between +$w_first_fail and +$w_last_fail s ($(sed -n 's/^kind \([0-9]*\) /\1 /p' "$work/window" | tr _ ' ' | paste -sd, - | sed 's/,/, /g')); $when")
  local at dur what
  while read -r at dur what; do
    notes+=("    failed request at +$at s, took $dur s: ${what//_/ }")
  done <<<"$w_fails"
}
fmt_run() { echo "wall $(secs "$w_wall")s (returned $(secs "$w_cmd")s), failed $w_failed/$w_total, longest $(secs "$w_longest")s at +${w_longest_at}s, new version from +${w_first_new}s, old until +${w_last_old}s${w_slow:+; over 0.1 s: $w_slow}"; }

say "starting $app on v1.0.0 behind $proxy"
run_app "${ref[v1.0.0]}"
wait_version v1.0.0 30 || die "the proxy never served the app (docker logs $proxy)"
current=v1.0.0

# Does this backtrack know [target] order? An unknown key is an error when the config is read.
if "$BACKTRACK" --config "$cfg_start" deploy v1.1.0 --dry-run --yes >"$work/dry.out" 2>"$work/dry.err"; then
  start_first=yes
  write_config "$cfg_stop" 'order = "stop-first"'
elif grep -qi 'order\|drain\|unknown' "$work/dry.err"; then
  start_first=no
  say "this backtrack has no [target] order (start-first): measuring the raw floor and stop-first only"
  sed 's/^/    /' "$work/dry.err" >&2
  write_config "$cfg_stop"
else
  sed 's/^/    /' "$work/dry.err" >&2
  die "backtrack deploy --dry-run failed"
fi
methods=(raw stop)
[ "$start_first" = no ] || methods+=(start)

swap_with() { # swap_with METHOD VERSION
  case $1 in
    raw) raw_swap "$2" "${ref[$2]}" ;;
    stop) bt_deploy "$cfg_stop" "$2" ;;
    start) bt_deploy "$cfg_start" "$2" ;;
  esac
}
bad_ok() { [ "$1" = yes ] && [ "$2" = 0 ]; } # bad_ok ALL_EXIT_6 WORST_FAILED
label() { case $1 in raw) echo "raw floor" ;; stop) echo "stop-first" ;; start) echo "start-first" ;; esac; }

say "warming up (one swap of each kind, not measured)"
for m in "${methods[@]}"; do
  next=$(other "$current"); settle
  if watched "$current" "$next" 0 swap_with "$m" "$next"; then current=$next; else current=v1.0.0; ensure_on v1.0.0; fi
done

for m in raw stop start; do declare -a "${m}_wall=()" "${m}_cmd=()" "${m}_failed=()" "${m}_longest=()" "${m}_total=()"; done
say "measuring: $runs runs each of ${methods[*]}, interleaved, GET $url every 10 ms"
for ((i = 1; i <= runs; i++)); do
  for m in "${methods[@]}"; do
    ensure_on "$current"; next=$(other "$current"); settle
    if watched "$current" "$next" 0 swap_with "$m" "$next"; then
      record "$m" "$i"; current=$next
      say "  run $i $(label "$m"): $(fmt_run)"
    else
      broken[$m]=$(( ${broken[$m]:-0} + 1 )); current=v1.0.0; ensure_on v1.0.0
    fi
  done
done

# --- failed start-first deploys ----------------------------------------------------------------
declare -A bad_rc=() bad_failed=() bad_total=() bad_longest=() bad_cmd=()
bad_versions=(v9.9.9-bad v9.9.9-crash)
[ "$bad_runs" -gt 0 ] || bad_versions=()
if [ "$start_first" = yes ]; then
  say "failed start-first deploys: $bad_runs of each of ${bad_versions[*]}"
  for ((i = 1; i <= bad_runs; i++)); do
    for b in "${bad_versions[@]}"; do
      ensure_on "$current"; settle
      # Expect exit 6 and the current version still served; the figures are kept whatever happened.
      watched "$current" "$current" 6 bt_deploy "$cfg_start" "$b" || broken[$b]=$(( ${broken[$b]:-0} + 1 ))
      bad_rc[$b]+="$w_rc " bad_failed[$b]+="$w_failed " bad_total[$b]+="$w_total " bad_longest[$b]+="$w_longest " bad_cmd[$b]+="$w_cmd "
      say "  run $i $b: exit $w_rc after $(secs "$w_cmd")s, failed $w_failed/$w_total, longest $(secs "$w_longest")s at +${w_longest_at}s"
      [ "$w_failed" = 0 ] || note_fails "start-first $b run $i" failed-deploy
      left=$(leftovers); [ -z "$left" ] || notes+=("start-first $b run $i: left behind: $left")
    done
  done
fi

# --- report ------------------------------------------------------------------------------------
for m in "${methods[@]}"; do
  declare -n arr=${m}_wall
  [ ${#arr[@]} -gt 0 ] || die "every run of $(label "$m") failed"
  unset -n arr
done
declare -A med_wall=() med_cmd=() med_failed=() max_failed=() med_longest=() max_longest=() sum_total=()
for m in "${methods[@]}"; do
  declare -n w=${m}_wall c=${m}_cmd f=${m}_failed l=${m}_longest t=${m}_total
  med_wall[$m]=$(median_us "${w[@]}") med_cmd[$m]=$(median_us "${c[@]}")
  med_failed[$m]=$(median_us "${f[@]}") max_failed[$m]=$(max_us "${f[@]}")
  med_longest[$m]=$(median_us "${l[@]}") max_longest[$m]=$(max_us "${l[@]}")
  sum_total[$m]=$(printf '%s\n' "${t[@]}" | awk '{s += $1} END {print s}')
  unset -n w c f l t
done

echo
echo "swap behind a reverse proxy (Caddy, Docker DNS alias web): GET $url every 10 ms"
echo "  $(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'), median of ${#stop_wall[@]} runs, $("$BACKTRACK" --version 2>/dev/null || echo 'backtrack ?'), start-first: $start_first"
echo "  app ready 2 s after start; per-request timeout ${req_timeout} s; drain $drain"
echo "  load average at start: $load_start, at end: $(cut -d" " -f1-3 /proc/loadavg) (other work on the machine skews the figures)"
echo
table_head
for m in "${methods[@]}"; do
  case $m in
    raw) table_row "raw floor: rm -f + run, to new version" "$(secs "${med_wall[raw]}") s" "" "" "" "(baseline)" ;;
    stop) table_row "stop-first: backtrack deploy, wall" "$(secs "${med_wall[stop]}") s" "$(secs "${med_wall[raw]}") s" \
      "$(ratio "${med_wall[stop]}" "${med_wall[raw]}")x" "" "(baseline)" ;;
    start)
      base=$(( ${med_wall[stop]} + drain_us ))
      table_row "start-first: backtrack deploy, wall" "$(secs "${med_wall[start]}") s" "$(secs "$base") s" \
        "$(ratio "${med_wall[start]}" "$base")x" "<= 1.2x" "$(verdict ratio_le "${med_wall[start]}" "$base" 1.2)" ;;
  esac
  [ "$m" = raw ] || table_row "  of which until deploy returned" "$(secs "${med_cmd[$m]}") s" "" "" "" "(info)"
  target_f="" verdict_f="(info)" target_l="" verdict_l="(info)"
  if [ "$m" = start ]; then
    target_f="0 (max)" verdict_f=$(verdict le "${max_failed[start]}" 0)
    target_l="<= 0.5 s max" verdict_l=$(verdict le "${max_longest[start]}" 500000)
  fi
  table_row "  failed requests, median / max" "${med_failed[$m]} / ${max_failed[$m]}" "" "" "$target_f" "$verdict_f"
  table_row "  longest request, median / max" "$(secs "${med_longest[$m]}")/$(secs "${max_longest[$m]}")" "" "" "$target_l" "$verdict_l"
  table_row "  requests in all runs" "${sum_total[$m]}" "" "" "" "(info)"
done
if [ "$start_first" = yes ]; then
  for b in "${bad_versions[@]}"; do
    rcs=${bad_rc[$b]% } fs=${bad_failed[$b]% }
    worst=$(max_us ${bad_failed[$b]})
    allsix=yes; for r in $rcs; do [ "$r" = 6 ] || allsix=no; done
    table_row "failed start-first deploy ($b): exit" "${rcs// /,}" "" "" "6" "$(verdict [ "$allsix" = yes ])"
    table_row "  failed requests (of $(printf '%s\n' ${bad_total[$b]} | awk '{s += $1} END {print s}'))" "${fs// /,}" "" "" "0" "$(verdict le "$worst" 0)"
    table_row "  longest request, max" "$(secs "$(max_us ${bad_longest[$b]})") s" "" "" "" "(info)"
    table_row "  until deploy returned, median" "$(secs "$(median_us ${bad_cmd[$b]})") s" "" "" "" "(info)"
  done
fi
for k in "${!broken[@]}"; do table_row "broken runs: $k" "${broken[$k]}" "" "" "0" "MISS"; done

echo
echo "targets:"
if [ "$start_first" = yes ]; then
  base=$(( ${med_wall[stop]} + drain_us ))
  echo "  $(verdict le "${max_failed[start]}" 0) start-first: 0 failed requests in every run (max ${max_failed[start]}, of ${sum_total[start]} requests)"
  echo "  $(verdict le "${max_longest[start]}" 500000) start-first: longest request <= 0.5 s (worst $(secs "${max_longest[start]}") s, median of runs $(secs "${med_longest[start]}") s)"
  echo "  $(verdict ratio_le "${med_wall[start]}" "$base" 1.2) start-first wall $(secs "${med_wall[start]}") s <= 1.2x (stop-first $(secs "${med_wall[stop]}") s + drain $(secs "$drain_us") s = $(secs "$base") s): $(ratio "${med_wall[start]}" "$base")x"
  for b in "${bad_versions[@]}"; do
    worst=$(max_us ${bad_failed[$b]}); allsix=yes; for r in ${bad_rc[$b]}; do [ "$r" = 6 ] || allsix=no; done
    echo "  $(verdict bad_ok "$allsix" "$worst") failed start-first deploy of $b: exit ${bad_rc[$b]% } (want 6), failed requests max $worst (want 0)"
  done
else
  echo "  MISS start-first: not measured, this backtrack has no [target] order"
fi
echo
echo "samples (s; failed requests as counts):"
for m in "${methods[@]}"; do
  for a in wall cmd longest failed total; do
    declare -n arr=${m}_$a
    printf '  %-14s' "${m}_$a"
    for v in "${arr[@]}"; do if [ "$a" = failed ] || [ "$a" = total ]; then printf ' %s' "$v"; else printf ' %s' "$(secs "$v")"; fi; done
    echo
    unset -n arr
  done
done
if [ ${#notes[@]} -gt 0 ]; then
  echo
  echo "notes:"
  printf '  %s\n' "${notes[@]}"
fi
