#!/usr/bin/env python3
"""Unavailability window: GET URL every 10 ms until STOPFILE exists, then print the longest time
(in microseconds) from a failed request to the next successful one. Used by bench/swap.sh.

    bench/window.py URL STOPFILE
"""
import os
import sys
import time
import urllib.request

url, stop = sys.argv[1], sys.argv[2]

samples = []  # (time, ok)
deadline = time.monotonic() + 120  # bounded, whatever happens
while time.monotonic() < deadline:
    t = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=0.2) as r:
            ok = 200 <= r.status < 300
    except Exception:
        ok = False
    samples.append((t, ok))
    if os.path.exists(stop) and ok:
        break
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))

longest, first_fail = 0.0, None
for t, ok in samples:
    if not ok and first_fail is None:
        first_fail = t
    elif ok and first_fail is not None:
        longest = max(longest, t - first_fail)
        first_fail = None
if first_fail is not None:  # never answered again: the whole rest counts
    longest = max(longest, samples[-1][0] - first_fail)
print(int(longest * 1e6))
