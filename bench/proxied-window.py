#!/usr/bin/env python3
"""Requests during a swap behind a proxy: GET URL every 10 ms (one request at a time, each bounded
by TIMEOUT seconds) until STOPFILE exists, then TAIL seconds more; count the requests that failed
(an error, a timeout or a non-2xx answer) and find the longest single request. Used by
bench/window.sh.

    bench/proxied-window.py URL STOPFILE T0FILE OLD NEW [TIMEOUT [TAIL]]

READYFILE (STOPFILE + ".ready") is created once the first request has finished. T0FILE holds the
command's start ($EPOCHREALTIME, written by the caller); times are printed as seconds from it.
OLD / NEW are the bodies of the two versions (to time the first answer from NEW and the last one
from OLD). Prints shell-friendly lines:

    total=N failed=N longest_us=N longest_at=S first_new=S last_old=S first_fail=S last_fail=S
    kind COUNT WHAT                  (failed requests by what went wrong)
    fail AT_S DURATION_S WHAT        (the first 10 failed requests)
    slow AT_S DURATION_S WHAT        (the 5 longest requests that took over 0.1 s)
"""
import http.client
import os
import sys
import time
import urllib.parse

url, stop, t0file, old, new = sys.argv[1:6]
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 3.0
tail = float(sys.argv[7]) if len(sys.argv) > 7 else 2.0
u = urllib.parse.urlsplit(url)
host, port, path = u.hostname, u.port or 80, (u.path or "/") + (("?" + u.query) if u.query else "")


def get():
    """(ok, body or what went wrong). A fresh connection per request, as a new client would."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read().decode("utf-8", "replace").strip()
        if 200 <= r.status < 300:
            return True, body
        return False, f"HTTP {r.status}"
    except TimeoutError:
        return False, "timeout"
    except OSError as e:
        return False, type(e).__name__ + (f" ({e.strerror})" if getattr(e, "strerror", None) else "")
    except Exception as e:  # a torn answer (RemoteDisconnected, BadStatusLine, ...)
        return False, type(e).__name__
    finally:
        c.close()


samples = []  # (wall start, duration, ok, body-or-why)
hard_deadline = time.monotonic() + 300  # bounded, whatever happens
stop_seen = None
while time.monotonic() < hard_deadline:
    t, wall = time.monotonic(), time.time()
    ok, what = get()
    d = time.monotonic() - t
    samples.append((wall, d, ok, what))
    if len(samples) == 1:
        open(stop + ".ready", "w").close()
    if stop_seen is None and os.path.exists(stop):
        stop_seen = time.monotonic()
    if stop_seen is not None and time.monotonic() - stop_seen >= tail:
        break
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

try:
    t0 = float(open(t0file).read().strip())
except (OSError, ValueError):
    t0 = samples[0][0] if samples else time.time()

failed = [s for s in samples if not s[2]]
longest = max(samples, key=lambda s: s[1]) if samples else (t0, 0.0, True, "")
first_new = next((s[0] + s[1] for s in samples if s[2] and s[3] == new), None)
last_old = next((s[0] + s[1] for s in reversed(samples) if s[2] and s[3] == old), None)


def rel(x):
    return "-" if x is None else f"{x - t0:.3f}"


print(
    f"total={len(samples)} failed={len(failed)} longest_us={int(longest[1] * 1e6)} "
    f"longest_at={rel(longest[0])} first_new={rel(first_new)} last_old={rel(last_old)} "
    f"first_fail={rel(failed[0][0] if failed else None)} last_fail={rel(failed[-1][0] if failed else None)}"
)
kinds = {}
for s in failed:
    kinds[s[3]] = kinds.get(s[3], 0) + 1
for what, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"kind {n} {what.replace(' ', '_')}")
for wall, d, _, what in failed[:10]:
    print(f"fail {rel(wall)} {d:.3f} {what.replace(' ', '_')}")
slow = sorted((s for s in samples if s[1] > 0.1), key=lambda s: -s[1])[:5]
for wall, d, _, what in sorted(slow):
    print(f"slow {rel(wall)} {d:.3f} {what.replace(' ', '_')}")
