#!/usr/bin/env bash
# Benchmark: a rollback across a fleet against the same rollback on one host, in the same run.
#
#   one host     backtrack rollback --yes, [target] host = ssh://bt-remote@127.0.0.1:2222, and
#                the same on bt-h3 (:2223, a host without curl: its probes go through a
#                forward): the baseline is the slower of the two, as a fleet's slowest host sets
#                its time
#                (a single-host target over SSH)
#   fleet of 2   [target] hosts = [bt-h2, bt-h3] (both over SSH), strategy parallel (the default
#                for rollback)
#   fleet of 3   the same plus this machine's engine (unix socket), parallel; BENCH_HOSTS=2 skips it
#   rolling      the fleet of 2, --strategy rolling (batch 1: one host validated, then the next)
#   canary       the fleet of 2, --strategy canary (canary_soak = BENCH_SOAK, 2s by default: the
#                soak is in the figure)
# Each measured rollback starts with every host on v1.1.0 (an unmeasured parallel deploy, then
# BENCH_QUIET seconds, 6 by default: what a plan reads beside the lock counts only when the
# journal was left alone for 5 s, as bench/remote.sh says) and goes to v1.0.0; the methods
# interleaved; median of BENCH_RUNS (5).
# Targets: fleet of 2 <= 1.3x one host (issue 14); fleet of 3 <= 1.15x one host (issue 30: every
# host's connection opens at the start, in parallel, so the slowest host sets the time, not the
# sum). Rolling and canary are reported, not judged.
# The limit (fleet of 3 only): here the three engines share this machine's cores, which hosts of a
# real fleet do not, so their swaps slow each other down whoever drives them. The engines' floor
# measures that: a tight client (curl on each engine's own socket: create the new container, stop
# the old one, two renames, start, then poll the health URL in the engine's network namespace;
# no ssh, no latency) swapping bt-h3 alone, and all three engines at once. Its ratio is what this
# machine adds to any fleet of 3; the fleet's time beyond one host is set beside the floor's, and
# the fleet of 3 is reported a second time with the floor's excess (3 at once less bt-h3 alone)
# taken off: an estimate (a difference of medians) of what backtrack itself adds when the
# slowest host sets the time; only the raw ratio is judged.
#
# Run:   bench/fleet.sh
# Needs: scripts/test-env (registry, the remote hosts bt-h2 on 127.0.0.1:2222 and bt-h3 on :2223).
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing; a debug
#        binary works and is said in the output, its figures are slower than a release's),
#        BENCH_RUNS (5), BENCH_HOSTS (3 or 2), BENCH_SOAK (2s), BENCH_PORT (18092),
#        BENCH_RTT_MS (0): a proxy that adds that round-trip time (bench/delay-proxy.py) in front of
#        each remote host's SSH port, as hosts across a network would have (the local engine has
#        none). Uses container bench-fleet on every host, removed on exit.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=127.0.0.1:5000
image=$registry/bench/fleet
runs=${BENCH_RUNS:-5}
fleet_size=${BENCH_HOSTS:-3}
soak=${BENCH_SOAK:-2s}
port=${BENCH_PORT:-18092}
h2=${BACKTRACK_TEST_REMOTE_DIR:-/var/lib/backtrack-test-env/h2}
h3=${BACKTRACK_TEST_REMOTE3_DIR:-/var/lib/backtrack-test-env/h3}
cfg=$h2/client/ssh_config
rtt_ms=${BENCH_RTT_MS:-0}
[[ $rtt_ms =~ ^[0-9]+$ ]] || die "BENCH_RTT_MS must be a whole number of milliseconds"
p2=2222 p3=2223
local=unix:///var/run/docker.sock
app=bench-fleet
export DOCKER_BUILDKIT=0

case $fleet_size in 2 | 3) ;; *) die "BENCH_HOSTS must be 2 or 3, not $fleet_size" ;; esac
if [ "$fleet_size" = 3 ]; then
  [ "$(id -u)" = 0 ] || die "the engines' floor enters the hosts' network namespaces (nsenter): run as root, or BENCH_HOSTS=2"
  command -v curl >/dev/null || die "the engines' floor needs curl"
fi
for p in 2222 2223; do
  ssh -F "$cfg" -o BatchMode=yes -p "$p" bt-remote@127.0.0.1 true \
    || die "the remote host on 127.0.0.1:$p does not answer: run scripts/test-env (as root) first"
done
[ -S "$h2/docker.sock" ] && [ -S "$h3/docker.sock" ] || die "the remote hosts' engines are not up: run scripts/test-env"
proxies=()
if [ "$rtt_ms" != 0 ]; then
  command -v python3 >/dev/null || die "BENCH_RTT_MS needs python3 (bench/delay-proxy.py)"
  for p in 2222 2223; do
    python3 "$BENCH_DIR/delay-proxy.py" $((p + 100)) "$p" "$rtt_ms" &
    proxies+=($!)
  done
  trap 'kill "${proxies[@]}" 2>/dev/null || true' EXIT # until the full cleanup below takes over
  p2=2322 p3=2323
  for p in $p2 $p3; do
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
  done
fi
host2=ssh://bt-remote@127.0.0.1:$p2
host3=ssh://bt-remote@127.0.0.1:$p3
find_backtrack
case $BACKTRACK in
  */debug/*) build="debug build (slower than release; ratios are comparable, absolute times are not)" ;;
  *) build="release build" ;;
esac
work=$(mktemp -d)
on() { # on HOST DOCKER-ARGS...: docker against one host's engine
  local h=$1
  shift
  case $h in
    "$host2") docker -H "unix://$h2/docker.sock" "$@" ;;
    "$host3") docker -H "unix://$h3/docker.sock" "$@" ;;
    *) docker "$@" ;;
  esac
}
all_hosts=("$host2" "$host3")
[ "$fleet_size" = 3 ] && all_hosts+=("$local")
cleanup() {
  for h in "${all_hosts[@]}"; do
    on "$h" rm -f "$app" "$app-backtrack-prev" "$app-backtrack-next" "$app-floor" "$app-floor-old" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
  [ ${#proxies[@]} = 0 ] || kill "${proxies[@]}" 2>/dev/null || true
}
trap cleanup EXIT

say "building and pushing two versions"
for v in v1.0.0 v1.1.0; do
  mkdir -p "$work/$v"
  cp /bin/busybox "$work/$v/busybox"
  cat >"$work/$v/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
RUN ["/bin/sh","-c","mkdir -p /www && echo ${v#v} > /www/health"]
LABEL org.opencontainers.image.version="${v#v}"
CMD ["/bin/sh","-c","trap 'kill \$pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=\$!; wait \$pid"]
EOF
  docker build -q -t "$image:$v" "$work/$v" >/dev/null
  docker push -q "$image:$v" >/dev/null
done
for h in "${all_hosts[@]}"; do
  on "$h" rm -f "$app" "$app-backtrack-prev" "$app-backtrack-next" "$app-floor" "$app-floor-old" >/dev/null 2>&1 || true
  on "$h" pull -q "$image:v1.0.0" >/dev/null
  on "$h" pull -q "$image:v1.1.0" >/dev/null
  on "$h" run -d --name "$app" -p "127.0.0.1:$port:8080" "$image:v1.0.0" >/dev/null
done

config() { # config NAME TARGET-LINES: a backtrack.toml in its own folder
  mkdir -p "$work/$1"
  cat >"$work/$1/backtrack.toml" <<EOF
[registry]
url = "$registry"
repository = "bench/fleet"
[target]
kind = "container"
name = "$app"
$2
canary_soak = "$soak"
[health]
http = "http://127.0.0.1:$port/health"
timeout = "30s"
EOF
}
list() { printf '"%s", ' "$@" | sed 's/, $//'; }
config one "host = \"$host2\""
config one3 "host = \"$host3\""
config two "hosts = [$(list "$host2" "$host3")]"
config all "hosts = [$(list "${all_hosts[@]}")]"
# The one-host baseline has no hosts list: canary_soak is only read for a fleet.
sed -i '/^canary_soak/d' "$work/one/backtrack.toml" "$work/one3/backtrack.toml"
bt() { # bt CONFIG ARGS...
  local c=$1
  shift
  BACKTRACK_SSH_CONFIG=$cfg BACKTRACK_STATE_DIR=$work/state "$BACKTRACK" --config "$work/$c/backtrack.toml" "$@" >"$work/last.log" 2>&1
}
to_v11() { bt all deploy v1.1.0 --yes --strategy parallel || { cat "$work/last.log" >&2; die "deploy v1.1.0 failed"; }; }
measure() { # measure CONFIG ARGS...: prints the microseconds of one rollback to v1.0.0
  to_v11
  sleep "${BENCH_QUIET:-6}"
  local s
  s=$(now_us)
  bt "$@" || { cat "$work/last.log" >&2; die "rollback ($*) failed"; }
  echo $(($(now_us) - s))
}

# The engines' floor (see the header): the swap's engine work by a tight client on HOST's own
# socket, until its health URL answers; the container set aside is removed afterwards, unmeasured.
sock_of() { case $1 in "$host2") echo "$h2/docker.sock" ;; "$host3") echo "$h3/docker.sock" ;; *) echo /var/run/docker.sock ;; esac; }
in_netns_of() { # in_netns_of HOST CMD...: CMD in the network namespace of HOST's engine
  case $1 in
    "$host2") nsenter --net="/proc/$(cat "$h2/docker.pid")/ns/net" "${@:2}" ;;
    "$host3") nsenter --net="/proc/$(cat "$h3/docker.pid")/ns/net" "${@:2}" ;;
    *) "${@:2}" ;;
  esac
}
api() { # api HOST METHOD PATH [JSON]
  local args=(-sf -o /dev/null --max-time 30 --unix-socket "$(sock_of "$1")" -X "$2" "http://engine$3")
  [ $# -gt 3 ] && args+=(-H 'Content-Type: application/json' -d "$4")
  curl "${args[@]}"
}
floor_swap() { # floor_swap HOST
  local h=$1 deadline=$((SECONDS + 30))
  api "$h" DELETE "/containers/$app-floor-old?force=1" || true # a stale one from an aborted run
  api "$h" POST "/containers/create?name=$app-floor" \
    "{\"Image\":\"$image:v1.0.0\",\"ExposedPorts\":{\"8080/tcp\":{}},\"HostConfig\":{\"PortBindings\":{\"8080/tcp\":[{\"HostIp\":\"127.0.0.1\",\"HostPort\":\"$port\"}]}}}" \
    && api "$h" POST "/containers/$app/stop?t=10" \
    && api "$h" POST "/containers/$app/rename?name=$app-floor-old" \
    && api "$h" POST "/containers/$app-floor/rename?name=$app" \
    && api "$h" POST "/containers/$app/start" || die "the floor's swap on $h failed"
  until in_netns_of "$h" curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the floor's swap on $h never answered its health URL"
    sleep 0.01
  done
}
floor() { # floor HOST...: microseconds until every HOST swapped at once and answers
  local s h pids=()
  s=$(now_us)
  for h in "$@"; do floor_swap "$h" & pids+=($!); done
  for p in "${pids[@]}"; do
    wait "$p" || { kill "${pids[@]}" 2>/dev/null; exit 1; }
  done
  echo $(($(now_us) - s))
  for h in "$@"; do
    api "$h" DELETE "/containers/$app-floor-old?force=1" || die "could not remove $app-floor-old on $h"
  done
}
say "binary: $build"
say "warming up (every host pulls both versions once)"
to_v11
bt all rollback v1.0.0 --yes || { cat "$work/last.log" >&2; die "warm-up rollback failed"; }
declare -a t_one t_one3 t_two t_all t_rolling t_canary t_floor1 t_floor3
for i in $(seq "$runs"); do
  t_one+=("$(measure one rollback v1.0.0 --yes)")
  t_one3+=("$(measure one3 rollback v1.0.0 --yes)")
  t_two+=("$(measure two rollback v1.0.0 --yes)")
  [ "$fleet_size" = 3 ] && t_all+=("$(measure all rollback v1.0.0 --yes)")
  t_rolling+=("$(measure two rollback v1.0.0 --yes --strategy rolling)")
  t_canary+=("$(measure two rollback v1.0.0 --yes --strategy canary)")
  if [ "$fleet_size" = 3 ]; then
    f=$(floor "$host3") || die "the engines' floor on bt-h3 failed"
    t_floor1+=("$f")
    f=$(floor "${all_hosts[@]}") || die "the engines' floor on 3 hosts failed"
    t_floor3+=("$f")
  fi
  line="round $i: one host $(secs "${t_one[-1]}") s (bt-h3 alone $(secs "${t_one3[-1]}") s), 2 hosts $(secs "${t_two[-1]}") s"
  [ "$fleet_size" = 3 ] && line+=", 3 hosts $(secs "${t_all[-1]}") s (floor: bt-h3 $(secs "${t_floor1[-1]}") s, 3 at once $(secs "${t_floor3[-1]}") s)"
  say "$line, rolling $(secs "${t_rolling[-1]}") s, canary $(secs "${t_canary[-1]}") s"
done
one2=$(median_us "${t_one[@]}")
one3=$(median_us "${t_one3[@]}")
one=$((one2 > one3 ? one2 : one3))
two=$(median_us "${t_two[@]}")
rolling=$(median_us "${t_rolling[@]}")
canary=$(median_us "${t_canary[@]}")

printf '\nfleet rollback, median of %s runs; binary: %s\n' "$runs" "$build"
printf 'baseline: the same rollback on one host (single-host target over ssh), measured in this run'
[ "$rtt_ms" = 0 ] || printf '; %s ms of round-trip time to each ssh host' "$rtt_ms"
printf '\n\n'
table_head
table_row "one host, bt-h2" "$(secs "$one2") s" "$(secs "$one") s" "$(ratio "$one2" "$one")x" "-" "-"
table_row "one host, bt-h3 (no curl)" "$(secs "$one3") s" "$(secs "$one") s" "$(ratio "$one3" "$one")x" "-" "-"
table_row "baseline: the slower one host" "$(secs "$one") s" "$(secs "$one") s" "1.00x" "-" "-"
table_row "fleet of 2, parallel" "$(secs "$two") s" "$(secs "$one") s" "$(ratio "$two" "$one")x" "<= 1.30x" \
  "$(verdict ratio_le "$two" "$one" 1.3)"
if [ "$fleet_size" = 3 ]; then
  all=$(median_us "${t_all[@]}")
  table_row "fleet of 3 (2 ssh + local), parallel" "$(secs "$all") s" "$(secs "$one") s" "$(ratio "$all" "$one")x" "<= 1.15x" \
    "$(verdict ratio_le "$all" "$one" 1.15)"
  floor1=$(median_us "${t_floor1[@]}")
  floor3=$(median_us "${t_floor3[@]}")
  table_row "limit: engines' own swap, bt-h3 alone" "$(secs "$floor1") s" "$(secs "$floor1") s" "1.00x" "-" "-"
  table_row "limit: engines' own swap, 3 at once" "$(secs "$floor3") s" "$(secs "$floor1") s" "$(ratio "$floor3" "$floor1")x" "-" "reported"
  shared=$((floor3 > floor1 ? floor3 - floor1 : 0))
  table_row "fleet of 3 less the floor's 3-at-once excess" "$(secs $((all - shared))) s" "$(secs "$one") s" \
    "$(ratio $((all - shared)) "$one")x" "-" "reported"
fi
table_row "fleet of 2, rolling (batch 1)" "$(secs "$rolling") s" "$(secs "$one") s" "$(ratio "$rolling" "$one")x" "-" "reported"
table_row "fleet of 2, canary (soak $soak)" "$(secs "$canary") s" "$(secs "$one") s" "$(ratio "$canary" "$one")x" "-" "reported"
if [ "$fleet_size" = 3 ]; then
  printf '\nfleet of 3 beyond one host: +%s s; the engines alone, 3 at once beyond one: +%s s (what sharing\nthis machine costs any client; on a fleet of separate machines it is 0)\n' \
    "$(secs $((all - one)))" "$(secs $((floor3 - floor1)))"
fi
