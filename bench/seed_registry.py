#!/usr/bin/env python3
"""Seed a Distribution registry with N tiny images on distinct manifests, straight over the HTTP API.

Used by bench/versions.sh. Each image shares one small layer blob; each has its own config blob
(so its own manifest digest) carrying created / org.opencontainers.image.version / .revision.
Tags are semver: v{major}.{minor}.{patch} over 5 majors x 20 minors x 50 patches (= 5,000), and
further majors if N is larger.

    bench/seed_registry.py --registry 127.0.0.1:5000 --repository bench/versions --count 5000

Idempotent: tags already in the repository are skipped (configs are deterministic, so a re-run
produces the same digests); with every tag present it does no writes at all.
Python 3 standard library only; plain HTTP (a loopback registry).
"""

import argparse
import concurrent.futures
import datetime
import gzip
import hashlib
import http.client
import io
import json
import sys
import tarfile
import threading
import time
import urllib.parse

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def versions(count):
    out = []
    major = 0
    while len(out) < count:
        for minor in range(20):
            for patch in range(50):
                out.append((major, minor, patch))
                if len(out) == count:
                    return out
        major += 1
    return out


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def shared_layer():
    """A deterministic gzipped tar holding one small file; returns (gz bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        body = b"backtrack bench layer\n"
        info = tarfile.TarInfo("bench.txt")
        info.size = len(body)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(body))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
        f.write(tar_bytes)
    return gz.getvalue(), sha256(tar_bytes)


class Client:
    """One keep-alive HTTP connection per thread."""

    def __init__(self, host):
        self.host = host
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection(self.host, timeout=60)
            self.local.conn = c
        return c

    def request(self, method, path, body=None, headers=None, ok=(200, 201, 202, 204)):
        headers = dict(headers or {})
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        last_err = None
        for attempt in range(5):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status in ok:
                    return resp, data
                if resp.status >= 500 and attempt < 4:
                    last_err = RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
                    time.sleep(0.2 * (attempt + 1))
                    continue
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
            except (http.client.HTTPException, OSError) as e:
                last_err = e
                conn.close()
                self.local.conn = None
                time.sleep(0.1 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: {last_err}")

    def upload_blob(self, repo, data, check=False):
        digest = sha256(data)
        if check:
            resp, _ = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", ok=(200, 404))
            if resp.status == 200:
                return digest
        resp, _ = self.request("POST", f"/v2/{repo}/blobs/uploads/", body=b"", ok=(202,))
        location = resp.getheader("Location")
        if not location:
            raise RuntimeError("blob upload: no Location header")
        u = urllib.parse.urlsplit(location)
        sep = "&" if u.query else "?"
        path = f"{u.path}?{u.query}" if u.query else u.path
        path += f"{sep}digest={urllib.parse.quote(digest)}"
        self.request(
            "PUT", path, body=data,
            headers={"Content-Type": "application/octet-stream"}, ok=(201,),
        )
        return digest


def existing_tags(client, repo):
    resp, data = client.request("GET", f"/v2/{repo}/tags/list", ok=(200, 404))
    if resp.status == 404:
        return set()
    tags = json.loads(data or b"{}").get("tags") or []
    # The registry may page (Link header) despite ignoring `n`; follow it.
    link = resp.getheader("Link")
    seen = set(tags)
    while link:
        nxt = link.split(";")[0].strip().strip("<>")
        resp, data = client.request("GET", nxt, ok=(200,))
        page = json.loads(data or b"{}").get("tags") or []
        if not page or set(page) <= seen:
            break
        seen.update(page)
        link = resp.getheader("Link")
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default="127.0.0.1:5000")
    ap.add_argument("--repository", default="bench/versions")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()

    client = Client(args.registry)
    repo = args.repository
    wanted = versions(args.count)
    have = existing_tags(client, repo)
    todo = [v for v in wanted if "v%d.%d.%d" % v not in have]
    if not todo:
        print(f"seed: {repo} already has all {args.count} tags", file=sys.stderr)
        return 0
    print(f"seed: pushing {len(todo)} of {args.count} images to {args.registry}/{repo}", file=sys.stderr)

    layer, diff_id = shared_layer()
    layer_digest = client.upload_blob(repo, layer, check=True)
    base = datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)
    index = {v: i for i, v in enumerate(wanted)}

    def push(v):
        tag = "v%d.%d.%d" % v
        version = tag[1:]
        created = base + datetime.timedelta(hours=index[v])
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "config": {
                "Env": ["APP_VERSION=" + version],
                "Cmd": ["/bin/true"],
                "Labels": {
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.revision": hashlib.sha1(tag.encode()).hexdigest(),
                    "org.opencontainers.image.description": f"bench image {tag}",
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        cfg = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        cfg_digest = client.upload_blob(repo, cfg)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(cfg), "digest": cfg_digest},
            "layers": [{"mediaType": LAYER_GZIP, "size": len(layer), "digest": layer_digest}],
        }
        body = json.dumps(manifest, sort_keys=True, indent=3).encode()
        client.request(
            "PUT", f"/v2/{repo}/manifests/{tag}", body=body,
            headers={"Content-Type": MANIFEST_V2}, ok=(201,),
        )

    started = time.monotonic()
    done = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.threads) as pool:
        for fut in concurrent.futures.as_completed([pool.submit(push, v) for v in todo]):
            fut.result()
            done += 1
            if done % 1000 == 0:
                print(f"seed: {done}/{len(todo)} ({time.monotonic() - started:.1f}s)", file=sys.stderr)
    print(f"seed: pushed {len(todo)} images in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
