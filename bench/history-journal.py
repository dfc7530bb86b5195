#!/usr/bin/env python3
"""Writes a backtrack journal of N operations (started, committed, finished records) to stdout,
as `bench/history.sh` needs it. With --snapshots, each operation's started record names the config
snapshots of its container before and after, and a new config appears every 20 operations (stored
once, as backtrack stores them); without, the records are those of a journal from before snapshots.
"""
import json
import sys
from datetime import datetime, timedelta, timezone

n = int(sys.argv[1])
with_snapshots = "--snapshots" in sys.argv
start = datetime(2024, 1, 1, tzinfo=timezone.utc)
digest = lambda i: "sha256:" + format(i, "064x")


def snapshot(i):
    env = [f"VAR_{k}=value-{k}-{i}" for k in range(20)] + [f"DB_PASSWORD=secret-{i}"]
    return {
        "container": {
            "Env": env,
            "Cmd": ["/bin/sh", "-c", f"exec app --generation {i}"],
            "Labels": {"com.example.team": "shop", "com.example.rev": str(i)},
            "HostConfig": {
                "Binds": ["/srv/data:/data"],
                "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
                "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
                "Memory": 536870912,
                "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}},
            },
        }
    }


out = sys.stdout
for i in range(n):
    at = start + timedelta(minutes=10 * i)
    v_from, v_to = f"1.{i}.0", f"1.{i + 1}.0"
    base = {
        "id": f"op-{i:06d}",
        "at": at.isoformat().replace("+00:00", "Z"),
        "op": "deploy" if i % 3 else "rollback",
        "user": "ops",
        "host": "laptop",
        "target": "container web",
        "from": {"tag": f"v{v_from}", "version": v_from, "digest": digest(i)},
        "to": {"tag": f"v{v_to}", "version": v_to, "digest": digest(i + 1)},
    }
    started = dict(base, phase="started", containers=["web"], saved={"web": "unless-stopped"})
    if with_snapshots:
        before, after = f"cfg-{i // 20:016x}", f"cfg-{(i + 1) // 20:016x}"
        started["configs"] = {"web": {"before": before, "after": after}}
        if i % 20 == 0:
            started["snapshots"] = {before: snapshot(i // 20)}
        if (i + 1) % 20 == 0:
            started["snapshots"] = dict(started.get("snapshots", {}), **{after: snapshot((i + 1) // 20)})
    out.write(json.dumps(started, separators=(",", ":")) + "\n")
    out.write(json.dumps(dict(base, phase="committed"), separators=(",", ":")) + "\n")
    done = dict(base, phase="finished", result="ok", duration_ms=2500)
    done["at"] = (at + timedelta(seconds=3)).isoformat().replace("+00:00", "Z")
    out.write(json.dumps(done, separators=(",", ":")) + "\n")
