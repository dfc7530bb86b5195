#!/usr/bin/env bash
# Benchmark: a Swarm service on the 2-node swarm of scripts/test-env (manager bt-s1, worker bt-s2),
# backtrack against Swarm's own tools on the same 2-replica service (host-mode port, update
# parallelism 1, monitor 2 s, stop-first unless said).
#
#   deploy          backtrack deploy v1.1.0 (to converged and validated: UpdateStatus completed, every
#                   task on the digest, the probe on each task) vs `docker service update --image
#                   REPO@DIGEST` by hand (the CLI waits for convergence). Target <= 1.1x.
#   failing version a version whose HEALTHCHECK fails: backtrack deploy, until it exits with the
#                   previous version running on every task again, vs Swarm's own
#                   `--update-failure-action rollback` (the CLI, then until every task runs the
#                   previous version). Target <= 1.0x.
#   availability    requests during a backtrack deploy, stop-first and --order start-first: a
#                   probe loop GETs every running task's host-mode port every 20 ms (the ports are
#                   read from the manager every 100 ms, as they move with each task); counted:
#                   failed requests, and moments when no task answered.
# Medians of BENCH_RUNS (3) rounds; the methods interleaved.
#
# Run:   bench/swarm.sh
# Needs: scripts/test-env (registry, the swarm). Knobs: BACKTRACK=path (default target/release/
#        backtrack, built if missing), BENCH_RUNS (3). Uses service bench-swarm, removed on exit.
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=127.0.0.1:5000
image=$registry/bench/swarm
runs=${BENCH_RUNS:-3}
sw=${BACKTRACK_TEST_SWARM_DIR:-/var/lib/backtrack-test-env/swarm}
sock=$sw/s1/docker.sock
svc=bench-swarm
export DOCKER_BUILDKIT=0
s1() { docker -H "unix://$sock" "$@"; }

s1 node ls >/dev/null 2>&1 || die "no swarm manager answers at $sock: run scripts/test-env (as root) first"
need_tools python3:python3
find_backtrack
work=$(mktemp -d)
cleanup() { s1 service rm "$svc" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

say "building and pushing three versions (v1.2.0's HEALTHCHECK fails)"
for v in v1.0.0 v1.1.0 v1.2.0; do
  mkdir -p "$work/$v"
  cp /bin/busybox "$work/$v/busybox"
  check='["/bin/wget","-q","-O","/dev/null","http://127.0.0.1:8080/health"]'
  [ "$v" = v1.2.0 ] && check='["/bin/false"]'
  cat >"$work/$v/Dockerfile" <<EOF
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox","--install","-s","/bin"]
RUN ["/bin/sh","-c","mkdir -p /www && echo ${v#v} > /www/health"]
LABEL org.opencontainers.image.version="${v#v}"
HEALTHCHECK --interval=1s --timeout=1s --retries=2 CMD $check
CMD ["/bin/sh","-c","trap 'kill \$pid; exit 0' TERM; httpd -f -p 8080 -h /www & pid=\$!; wait \$pid"]
EOF
  docker build -q -t "$image:$v" "$work/$v" >/dev/null
  docker push -q "$image:$v" >/dev/null
done
digest() { docker inspect --format '{{index .RepoDigests 0}}' "$image:$1"; }
d10=$(digest v1.0.0); d11=$(digest v1.1.0); d12=$(digest v1.2.0)

s1 service rm "$svc" >/dev/null 2>&1 || true
s1 service create --quiet --name "$svc" --replicas 2 \
  --publish mode=host,target=8080 --stop-grace-period 2s \
  --update-parallelism 1 --update-monitor 2s --update-failure-action pause \
  --rollback-parallelism 1 --rollback-monitor 2s "$d10" >/dev/null

mkdir -p "$work/bt"
cat >"$work/bt/backtrack.toml" <<EOF
[registry]
url = "$registry"
repository = "bench/swarm"
[target]
kind = "swarm"
name = "$svc"
host = "unix://$sock"
[health]
http = "http://127.0.0.1:8080/health"
timeout = "120s"
EOF
bt() { BACKTRACK_STATE_DIR=$work/bt/state "$BACKTRACK" --config "$work/bt/backtrack.toml" "$@" >>"$work/bt.log" 2>&1; }
# on_everywhere DIGEST: every running task runs it (and there are two).
on_everywhere() {
  local out
  out=$(s1 service ps "$svc" --filter desired-state=running --no-trunc --format '{{.Image}} {{.CurrentState}}')
  [ "$(grep -c "@${1#*@} Running" <<<"$out")" = 2 ] && [ "$(wc -l <<<"$out")" = 2 ]
}
wait_on() { until on_everywhere "$1"; do sleep 0.05; done; }
# reset: back to v1.0.0 by hand, unmeasured (Swarm keeps the update config).
reset() { s1 service update --quiet --detach --image "$d10" "$svc" >/dev/null; wait_on "$d10"; }
wait_on "$d10"

say "warming up (each node pulls every version once)"
bt deploy v1.1.0 --yes || die "warm-up deploy failed (see $work/bt.log)"
reset
s1 service update --quiet --image "$d11" "$svc" >/dev/null; reset

declare -a t_bt t_cli t_btfail t_swfail
for i in $(seq "$runs"); do
  s=$(now_us); bt deploy v1.1.0 --yes || die "deploy failed (see $work/bt.log)"; t_bt+=($(( $(now_us) - s ))); reset
  s=$(now_us); s1 service update --quiet --image "$d11" "$svc" >/dev/null; t_cli+=($(( $(now_us) - s ))); reset
  # A failing version: backtrack decides and puts v1.0.0 back (the service pauses on failure).
  s=$(now_us); rc=0
  bt deploy v1.2.0 --yes || rc=$?
  [ "$rc" = 6 ] || die "the failing version should end reverted (exit 6), got $rc (see $work/bt.log)"
  wait_on "$d10"; t_btfail+=($(( $(now_us) - s )))
  # Swarm's own: failure action rollback, then until every task runs v1.0.0 again.
  s1 service update --quiet --detach --update-failure-action rollback "$svc" >/dev/null
  s=$(now_us)
  s1 service update --quiet --image "$d12" "$svc" >/dev/null 2>&1 || true
  wait_on "$d10"; t_swfail+=($(( $(now_us) - s )))
  state=$(s1 service inspect "$svc" --format '{{.UpdateStatus.State}}')
  [ "$state" = rollback_completed ] || say "warning: Swarm's update ended as '$state', not rollback_completed"
  s1 service update --quiet --detach --update-failure-action pause "$svc" >/dev/null
  say "round $i: deploy backtrack $(secs "${t_bt[-1]}") s, by hand $(secs "${t_cli[-1]}") s; failing version backtrack $(secs "${t_btfail[-1]}") s, Swarm rollback $(secs "${t_swfail[-1]}") s"
done

# Availability during a deploy: the probe loop (python3: one process, no fork per request).
cat >"$work/probe.py" <<'PY'
import http.client, json, socket, sys, threading, time, urllib.request
sock, svc, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(sock)
endpoints, lock = [], threading.Lock()
def refresh():
    import os
    while not os.path.exists(stop_file):
        c = Unix("docker"); c.request("GET", '/tasks?filters={"service":["%s"],"desired-state":["running"]}' % svc)
        tasks = json.loads(c.getresponse().read())
        c = Unix("docker"); c.request("GET", "/nodes"); nodes = {n["ID"]: n["Status"]["Addr"] for n in json.loads(c.getresponse().read())}
        eps = [(nodes.get(t["NodeID"]), p["PublishedPort"]) for t in tasks if t["Status"]["State"] == "running"
               for p in (t["Status"].get("PortStatus") or {}).get("Ports", [])[:1]]
        with lock: endpoints[:] = eps
        time.sleep(0.1)
threading.Thread(target=refresh, daemon=True).start()
import os
total = failed = dark = ticks = 0
time.sleep(0.3)
while not os.path.exists(stop_file):
    with lock: eps = list(endpoints)
    ticks += 1; answered = 0
    for host, port in eps:
        total += 1
        try:
            urllib.request.urlopen("http://%s:%d/health" % (host, port), timeout=1).read(); answered += 1
        except Exception:
            failed += 1
    if answered == 0: dark += 1
    time.sleep(0.02)
print(total, failed, dark, ticks)
PY
avail() { # avail ARGS...: a backtrack deploy v1.1.0 ARGS under the probe loop; prints "total failed dark ticks"
  rm -f "$work/stop"
  python3 "$work/probe.py" "$sock" "$svc" "$work/stop" >"$work/probe.out" &
  local pid=$!
  bt deploy v1.1.0 --yes "$@" || die "deploy $* failed (see $work/bt.log)"
  touch "$work/stop"; wait "$pid"; reset
  cat "$work/probe.out"
}
read -r sf_total sf_failed sf_dark sf_ticks < <(avail)
read -r st_total st_failed st_dark st_ticks < <(avail --order start-first)

bt_med=$(median_us "${t_bt[@]}"); cli_med=$(median_us "${t_cli[@]}")
btf_med=$(median_us "${t_btfail[@]}"); swf_med=$(median_us "${t_swfail[@]}")
echo
table_head
table_row "deploy to converged (s)" "$(secs "$bt_med")" "$(secs "$cli_med")" "$(ratio "$bt_med" "$cli_med")" "<= 1.1x" "$(verdict ratio_le "$bt_med" "$cli_med" 1.1)"
table_row "failing version: detect + restore (s)" "$(secs "$btf_med")" "$(secs "$swf_med")" "$(ratio "$btf_med" "$swf_med")" "<= 1.0x" "$(verdict ratio_le "$btf_med" "$swf_med" 1.0)"
echo
printf '%-34s %10s %10s %22s\n' "requests during a deploy" "sent" "failed" "moments none answered"
printf '%-34s %10s %10s %22s\n' "stop-first (1 at a time)" "$sf_total" "$sf_failed" "$sf_dark of $sf_ticks"
printf '%-34s %10s %10s %22s\n' "start-first (--order start-first)" "$st_total" "$st_failed" "$st_dark of $st_ticks"
