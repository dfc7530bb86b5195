#!/usr/bin/env bash
# Benchmark: a rollback of a container on a remote host, over SSH, against the same rollback run on
# the host itself, and against the raw floor by hand with `DOCKER_HOST=ssh://… docker`.
#
#   remote     backtrack rollback --yes, [target] host = ssh://bt-remote@127.0.0.1:2222 (journal,
#              lock, engine and health probe all through one SSH connection)
#   on host    the same rollback run inside the host's network namespace against its engine's
#              socket (what a person logged in on the host would run), local state
#   raw floor  DOCKER_HOST=ssh://… docker rm -f + docker run IMAGE@digest + docker exec wget until
#              it answers (each docker command is its own SSH connection, as the CLI does)
#   ssh true   `ssh host true`: the cost of one SSH connection
# Each measured rollback starts with the app on v1.1.0 (an unmeasured deploy, then BENCH_QUIET
# seconds, 6 by default: a rollback seldom follows its deploy closer than that, and what the plan
# reads beside the lock counts only when the target's journal was left alone for 5 s; with
# BENCH_QUIET=0 the plan reads again after the lock), going to v1.0.0; the methods interleaved;
# median of BENCH_RUNS (7).
# Targets: remote <= on host + ssh true (the connection is made once and reused); with
# BENCH_RTT_MS, at most 3 round trips after the SSH handshake (issue 30), both as `--verbose`
# counts them on the host's wire and as the time paid beyond `ssh host true`, in round trips.
#
# Run:   bench/remote.sh
# Needs: scripts/test-env (registry, the remote host bt-h2 with its sshd on 127.0.0.1:2222).
# Knobs: BACKTRACK=path/to/binary (default target/release/backtrack, built if missing),
#        BENCH_RUNS (7), BENCH_HOST=h2|h3 (h2: bt-h2 on 127.0.0.1:2222; h3: bt-h3 on 2223, whose
#        socat bridge sets TCP_NODELAY as ssh and sshd do on a real connection, so small answers
#        are not held ~40 ms by Nagle), BACKTRACK_BEFORE=path/to/another/binary (an earlier build,
#        timed in the same rounds as a fourth method, for before/after figures on a busy machine).
#        BENCH_RTT_MS (0): puts a proxy that adds that round-trip time (half each way;
#        bench/delay-proxy.py, python3) in front of the host's SSH port, as a host across a
#        network would have: the paired line then also says how many round trips the remote run
#        pays beyond `ssh host true`, which is what a laptop far from its EC2 host feels.
#        Uses container bench-remote on that host, removed on exit.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=127.0.0.1:5000
image=$registry/bench/remote
runs=${BENCH_RUNS:-7}
env_dir=${BACKTRACK_TEST_ENV_DIR:-/var/lib/backtrack-test-env}
cfg=$env_dir/h2/client/ssh_config # one client config reaches both hosts
case ${BENCH_HOST:-h2} in
  h2) h2=${BACKTRACK_TEST_REMOTE_DIR:-$env_dir/h2} ssh_port=2222 ns=bt-h2 ;;
  h3) h2=${BACKTRACK_TEST_REMOTE3_DIR:-$env_dir/h3} ssh_port=2223 ns=bt-h3 ;;
  *) die "BENCH_HOST must be h2 or h3" ;;
esac
rtt_ms=${BENCH_RTT_MS:-0}
[[ $rtt_ms =~ ^[0-9]+$ ]] || die "BENCH_RTT_MS must be a whole number of milliseconds"
if [ "$rtt_ms" != 0 ]; then
  command -v python3 >/dev/null || die "BENCH_RTT_MS needs python3 (bench/delay-proxy.py)"
  python3 "$BENCH_DIR/delay-proxy.py" $((ssh_port + 100)) "$ssh_port" "$rtt_ms" &
  proxy_pid=$!
  trap 'kill "$proxy_pid" 2>/dev/null || true' EXIT # until the full cleanup below takes over
  ssh_port=$((ssh_port + 100))
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$ssh_port) 2>/dev/null && break; sleep 0.1; done
fi
host=ssh://bt-remote@127.0.0.1:$ssh_port
app=bench-remote
port=18091
export DOCKER_BUILDKIT=0

[ -S "$h2/docker.sock" ] && ssh -F "$cfg" -o BatchMode=yes -p "$ssh_port" bt-remote@127.0.0.1 true \
  || die "the remote host does not answer: run scripts/test-env (as root) first"
find_backtrack
[ -z "${BACKTRACK_BEFORE:-}" ] || [ -x "$BACKTRACK_BEFORE" ] || die "BACKTRACK_BEFORE=$BACKTRACK_BEFORE is not an executable"
work=$(mktemp -d)
h2docker() { docker -H "unix://$h2/docker.sock" "$@"; }
# The host keeps the remote run's history between benches (the on-host run's is made fresh each
# time): start both empty, so neither reads a longer journal than the other.
host_state=$(ssh -F "$cfg" -o BatchMode=yes -p "$ssh_port" bt-remote@127.0.0.1 'echo "${XDG_STATE_HOME:-$HOME/.local/state}"')
[ -n "$host_state" ] || die "could not ask the remote host where its state is"
host_history=$host_state/backtrack/targets/local_container_$app
cleanup() {
  h2docker rm -f "$app" "$app-backtrack-prev" >/dev/null 2>&1 || true
  rm -rf "$work" "$host_history"
  [ -z "${proxy_pid:-}" ] || kill "$proxy_pid" 2>/dev/null || true
}
trap cleanup EXIT

# The docker CLI runs `ssh` from PATH: hand it the test env's ssh_config without touching ~/.ssh.
mkdir -p "$work/bin"
printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$cfg" >"$work/bin/ssh"
chmod +x "$work/bin/ssh"

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
digest_v1=$(docker inspect --format '{{index .RepoDigests 0}}' "$image:v1.0.0")
h2docker rm -f "$app" "$app-backtrack-prev" >/dev/null 2>&1 || true
rm -rf "$host_history"
h2docker run -d --name "$app" -p "127.0.0.1:$port:8080" "$image:v1.0.0" >/dev/null
h2docker pull -q "$image:v1.1.0" >/dev/null

config() { # config HOST STATE: a backtrack.toml in its own folder
  mkdir -p "$work/$2"
  cat >"$work/$2/backtrack.toml" <<EOF
[registry]
url = "$registry"
repository = "bench/remote"
[target]
kind = "container"
name = "$app"
host = "$1"
[health]
http = "http://127.0.0.1:$port/health"
timeout = "30s"
EOF
}
config "$host" remote
config "unix://$h2/docker.sock" onhost
bt_remote() { BACKTRACK_SSH_CONFIG=$cfg BACKTRACK_STATE_DIR=$work/remote/state "$BACKTRACK" --config "$work/remote/backtrack.toml" "$@" >/dev/null 2>"$work/remote.err"; }
# The round trips after the login that the last remote run's `--verbose` counted.
trips() { awk '$1 == "total" {print $2}' "$work/remote.err"; }
bt_before() { BACKTRACK_SSH_CONFIG=$cfg BACKTRACK_STATE_DIR=$work/remote/state "$BACKTRACK_BEFORE" --config "$work/remote/backtrack.toml" "$@" >/dev/null 2>&1; }
bt_onhost() { nsenter --net=/run/netns/$ns env BACKTRACK_STATE_DIR="$work/onhost/state" "$BACKTRACK" --config "$work/onhost/backtrack.toml" "$@" >/dev/null 2>&1; }
raw_docker() { PATH=$work/bin:$PATH DOCKER_HOST=$host docker "$@"; }
raw_rollback() {
  raw_docker rm -f "$app" >/dev/null
  raw_docker run -d --name "$app" -p "127.0.0.1:$port:8080" "$digest_v1" >/dev/null
  until raw_docker exec "$app" wget -qO- http://127.0.0.1:8080/health >/dev/null 2>&1; do :; done
}
quiet=${BENCH_QUIET:-6}
to_v11() { bt_remote deploy v1.1.0 --yes || die "deploy v1.1.0 failed"; sleep "$quiet"; }

say "warming up"
to_v11; bt_remote rollback --yes
declare -a t_remote t_onhost t_raw t_ssh t_before t_over n_trips
for i in $(seq "$runs"); do
  to_v11; s=$(now_us); bt_remote rollback --yes -v || die "remote rollback failed"; t_remote+=($(( $(now_us) - s )))
  n_trips+=("$(trips)")
  if [ -n "${BACKTRACK_BEFORE:-}" ]; then
    to_v11; s=$(now_us); bt_before rollback --yes || die "remote rollback (before) failed"; t_before+=($(( $(now_us) - s )))
    say "round $i: before $(secs "${t_before[-1]}") s"
  fi
  to_v11; s=$(now_us); bt_onhost rollback --yes || die "on-host rollback failed"; t_onhost+=($(( $(now_us) - s )))
  to_v11; s=$(now_us); raw_rollback; t_raw+=($(( $(now_us) - s )))
  s=$(now_us); ssh -F "$cfg" -o BatchMode=yes -p "$ssh_port" bt-remote@127.0.0.1 true; t_ssh+=($(( $(now_us) - s )))
  t_over+=($(( t_remote[-1] - t_onhost[-1] - t_ssh[-1] )))
  say "round $i: remote $(secs "${t_remote[-1]}") s (${n_trips[-1]} round trips), on host $(secs "${t_onhost[-1]}") s, raw $(secs "${t_raw[-1]}") s, ssh true $(secs "${t_ssh[-1]}") s"
done
remote=$(median_us "${t_remote[@]}"); onhost=$(median_us "${t_onhost[@]}")
raw=$(median_us "${t_raw[@]}"); sshtrue=$(median_us "${t_ssh[@]}")
budget=$((onhost + sshtrue))
printf '\n%-34s %8s  %s\n' "rollback (median of $runs)" "seconds" "ratio"
printf '%-34s %8s  %s\n' "remote over ssh" "$(secs "$remote")" "$(ratio "$remote" "$onhost")x on host"
printf '%-34s %8s\n' "on the host" "$(secs "$onhost")"
printf '%-34s %8s  %s\n' "raw floor, DOCKER_HOST=ssh://" "$(secs "$raw")" "remote is $(ratio "$remote" "$raw")x of it"
printf '%-34s %8s\n' "ssh host true" "$(secs "$sshtrue")"
printf '%-34s %8s  %s\n' "target: on host + ssh true" "$(secs "$budget")" "$(verdict le "$remote" "$budget")"
# The same target, round by round (the three are timed back to back, so a slow moment of the
# machine weighs on all of them): the median of remote - (on host + ssh true).
over=$(median_us "${t_over[@]}")
printf '%-34s %8s  %s\n' "paired: remote - on host - ssh true" "$(awk -v u="$over" 'BEGIN {printf "%+.3f", u/1e6}')" "$(verdict le "$over" 0)"
counted=$(median_us "${n_trips[@]}")
printf '%-34s %8s  %s\n' "round trips after the login (-v)" "$counted" "median; each run: ${n_trips[*]}"
if [ "$rtt_ms" != 0 ]; then
  beyond=$(awk -v u="$over" -v r="$rtt_ms" 'BEGIN {printf "%+.1f", u/1000/r}')
  printf '%-34s %8s  %s\n' "  in round trips of $rtt_ms ms" "$beyond" "(SSH round trips the remote run pays beyond one connection)"
  printf '%-34s %8s  %s\n' "target: <= 3 round trips" "" "counted $(verdict le "$counted" 3), paid $(verdict le "$beyond" 3)"
fi
if [ -n "${BACKTRACK_BEFORE:-}" ]; then
  before=$(median_us "${t_before[@]}")
  printf '%-34s %8s  %s\n' "remote, BACKTRACK_BEFORE" "$(secs "$before")" "$(ratio "$before" "$onhost")x on host; now $(ratio "$remote" "$before")x of it"
fi
