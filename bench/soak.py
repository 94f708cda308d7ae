#!/usr/bin/python3
"""soak — a bounded load test of pullcache against a hostile upstream (issue 17). Not in CI.

    PULLCACHE=build/pullcache python3 bench/soak.py [--minutes 10] [--clients 1000]
        [--scale small] [--json OUT]

Starts the registry.k8s.io-like test upstream (tests/upstream/k8s_upstream.py) and one
pullcache on loopback, then runs CLIENTS concurrent keep-alive HTTP/1.1 clients (asyncio, one
connection each, reopened after an error) for MINUTES, each picking at random:
    40 % GET a blob (whole; sha256 checked)         20 % GET a blob Range (bytes checked)
    20 % GET a manifest by tag (digest checked)     20 % HEAD a blob or a manifest
Every 5 s one fault rule is injected upstream for a few requests (a flipped byte, a truncated
body, a stall, a 503, a dropped connection, a trickle, header injection, a lying digest), and
every 30 s `pullcache gc --to 1M` evicts the cache so hits turn back into misses (fills, joins,
evictions during reads). RSS and open descriptors of the daemon are sampled every 5 s.

Reports requests, answers by status, errors by kind (all expected under the faults: 5xx, a body
cut short), WRONG BYTES (a 200/206 whose bytes do not match — must be 0), the RSS curve
start/peak/end and the descriptors at start and end (after the clients closed and 5 s of idle;
by kind: client-side sockets must be gone, idle upstream keep-alive connections are bounded by
http/up.c's connection cache of 64). Exit status 1 when a wrong byte was served, a client
connection was left open, descriptors exceed the start plus that cache, or fsck is not clean.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import pclib  # noqa: E402

# http/up.c keeps at most this many idle upstream connections (CURLMOPT_MAXCONNECTS): the only
# descriptors allowed above the start count once the clients are gone.
UPSTREAM_IDLE_MAX = 64
ACCEPT = ("application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "
          "application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json")


def proc_sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss / 1024.0, len(os.listdir("/proc/%d/fd" % pid))


class Stats:
    def __init__(self):
        self.requests = 0
        self.status = {}
        self.errors = {}
        self.wrong = 0
        self.wrong_what = []

    def st(self, code):
        self.status[code] = self.status.get(code, 0) + 1

    def err(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def read_response(reader, head_only):
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed")
    code = int(line.split()[1])
    hdrs = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        hdrs[k.strip().lower()] = v.strip()
    n = int(hdrs.get("content-length", "0"))
    body = b"" if head_only else await reader.readexactly(n)
    return code, hdrs, body


def drop(writer):
    if writer is not None:
        writer.close()
    return None


async def client(i, url_host, port, work, st, stop_at):
    rnd = random.Random(i)
    reader = writer = None
    while time.monotonic() < stop_at:
        kind, path, want, extra = work(rnd)
        head = kind == "head"
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(url_host, port), 30)
            req = "%s %s HTTP/1.1\r\nHost: mirror\r\nAccept: %s\r\n%s\r\n" % (
                "HEAD" if head else "GET", path, ACCEPT, extra)
            writer.write(req.encode())
            code, hdrs, body = await asyncio.wait_for(read_response(reader, head), 180)
            st.requests += 1
            st.st(code)
            if hdrs.get("connection", "").lower() == "close":
                writer = drop(writer)
            if code >= 500:
                st.err("http-%d" % code)
                continue
            if head or code not in (200, 206):
                continue
            ok = True
            if kind == "blob":
                ok = hashlib.sha256(body).hexdigest() == want
            elif kind == "range":
                ok = body == want
            elif kind == "manifest":
                ok = "sha256:" + hashlib.sha256(body).hexdigest() == hdrs.get("docker-content-digest")
            if not ok:
                st.wrong += 1
                if len(st.wrong_what) < 20:
                    st.wrong_what.append((kind, path, code, len(body)))
        except asyncio.IncompleteReadError:
            st.requests += 1
            st.err("cut-short")
            writer = drop(writer)
        except (ConnectionError, OSError):
            st.err("connection")
            writer = drop(writer)
            await asyncio.sleep(0.05)
        except asyncio.TimeoutError:
            st.err("client-timeout")
            writer = drop(writer)
    if writer is not None:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


FAULTS = [
    {"role": "blobs", "fault": "corrupt", "after": 1000, "count": 2},
    {"role": "blobs", "fault": "truncate", "after": 5000, "count": 2},
    {"role": "blobs", "fault": "stall", "after": 100, "delay_ms": 3000, "count": 2},
    {"role": "registry", "fault": "status", "status": 503, "count": 3},
    {"role": "blobs", "fault": "drop", "count": 2},
    {"role": "blobs", "fault": "slow", "chunk": 512, "delay_ms": 50, "count": 2},
    {"role": "registry", "path_re": "/manifests/", "fault": "header", "name": "Content-Type",
     "value": "application/json\rX-Injected: 1", "count": 2},
    {"role": "registry", "path_re": "/manifests/", "fault": "header", "name": "Docker-Content-Digest",
     "value": "sha256:" + "cd" * 32, "count": 2},
]


async def main_async(a):
    d = pclib.make_images(a.scale)
    imgs = pclib.load_images(d)
    blobs = []  # (repo, digest, bytes)
    tags = []
    for name, im in imgs.items():
        tags.append((name, im["tag"]))
        for b in im["blobs"]:
            if b["kind"] in ("layer", "config"):
                blobs.append((name, b["digest"], pclib.read_blob(d, im, b["digest"])))

    def work(rnd):
        x = rnd.random()
        if x < 0.4:
            r, dg, data = rnd.choice(blobs)
            return "blob", "/v2/%s/blobs/%s" % (r, dg), dg[7:], ""
        if x < 0.6:
            r, dg, data = rnd.choice(blobs)
            lo = rnd.randrange(len(data))
            hi = min(len(data) - 1, lo + rnd.randrange(1, 65536))
            return "range", "/v2/%s/blobs/%s" % (r, dg), data[lo:hi + 1], "Range: bytes=%d-%d\r\n" % (lo, hi)
        if x < 0.8:
            r, t = rnd.choice(tags)
            return "manifest", "/v2/%s/manifests/%s" % (r, t), None, ""
        if rnd.random() < 0.5:
            r, dg, data = rnd.choice(blobs)
            return "head", "/v2/%s/blobs/%s" % (r, dg), None, ""
        r, t = rnd.choice(tags)
        return "head", "/v2/%s/manifests/%s" % (r, t), None, ""

    with pclib.TestEnv("soak") as env:
        up = env.start_upstream(d)
        cfg = env.path("pc.conf")
        with open(cfg, "w") as f:
            f.write("[server]\nmax_conns = %d\n[store]\nmin_free = 0\n[fetch]\njoin_stall = 2s\n"
                    "[upstream \"registry.k8s.io\"]\nurl = %s\ntag_ttl = 10s\n" % (a.clients + 200, up.url))
        pc = env.start_pullcache(["--config", cfg])
        pid = pc.popen.pid
        curve = []
        t0 = time.monotonic()
        rss0, fd0 = proc_sample(pid)
        curve.append((0.0, rss0, fd0))
        st = Stats()
        stop_at = t0 + a.minutes * 60
        tasks = [asyncio.create_task(client(i, "127.0.0.1", pc.port, work, st, stop_at))
                 for i in range(a.clients)]
        rnd = random.Random(7)
        tick = 0
        gcs = faults = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(5)
            tick += 1
            rss, fds = proc_sample(pid)
            curve.append((time.monotonic() - t0, rss, fds))
            rule = dict(rnd.choice(FAULTS))
            await asyncio.to_thread(up.faults, [rule])
            faults += 1
            if tick % 6 == 0:
                await asyncio.to_thread(subprocess.run, [os.environ["PULLCACHE"], "gc", "--to", "1M",
                                                         "--store", pc.store], capture_output=True, timeout=60)
                gcs += 1
            print("soak t=%4.0fs requests=%d wrong=%d rss=%.1fMiB fds=%d errors=%s" % (
                time.monotonic() - t0, st.requests, st.wrong, rss, fds, st.errors), flush=True)
        await asyncio.gather(*tasks)
        await asyncio.to_thread(up.faults, [])
        await asyncio.sleep(5)
        rss_end, fd_end = proc_sample(pid)
        fd_kinds = {}
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                t = os.readlink("/proc/%d/fd/%s" % (pid, fd)).split(":")[0]
            except OSError:
                continue
            fd_kinds[t] = fd_kinds.get(t, 0) + 1
        ss = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
        for line in ss.splitlines():
            if "pid=%d," % pid not in line:
                continue
            f = line.split()
            side = "client-side" if f[3].endswith(":%d" % pc.port) else "upstream-side"
            key = "tcp %s %s" % (side, f[0])
            fd_kinds[key] = fd_kinds.get(key, 0) + 1
        curve.append((time.monotonic() - t0, rss_end, fd_end))
        fsck = None
        env.stop(pc)
        p = subprocess.run([os.environ["PULLCACHE"], "fsck", "--store", pc.store], capture_output=True,
                           text=True, timeout=300)
        fsck = p.returncode
    res = {"minutes": a.minutes, "clients": a.clients, "scale": a.scale, "requests": st.requests,
           "status": st.status, "errors": st.errors, "wrong_bytes": st.wrong, "wrong": st.wrong_what,
           "faults_injected": faults, "gc_runs": gcs,
           "rss_mib": {"start": rss0, "peak": max(c[1] for c in curve), "end": rss_end},
           "fds": {"start": fd0, "end": fd_end, "end_kinds": fd_kinds}, "fsck_rc": fsck, "curve": curve}
    print(json.dumps({k: v for k, v in res.items() if k != "curve"}, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    client_left = sum(v for k, v in fd_kinds.items() if k.startswith("tcp client-side ESTAB"))
    upstream_idle = sum(v for k, v in fd_kinds.items() if k.startswith("tcp upstream-side"))
    res_ok = st.wrong == 0 and client_left == 0 and fd_end <= fd0 + UPSTREAM_IDLE_MAX and fsck == 0
    print("soak: %s (wrong bytes %d, client connections left %d, idle upstream connections %d <= %d)"
          % ("ok" if res_ok else "FAILED", st.wrong, client_left, upstream_idle, UPSTREAM_IDLE_MAX))
    return 0 if res_ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--json")
    a = ap.parse_args()
    if not os.environ.get("PULLCACHE"):
        sys.exit("soak: set PULLCACHE to the pullcache binary")
    os.environ.setdefault("PC_BUILD", os.path.join(HERE, "..", "build"))
    return asyncio.run(main_async(a))


if __name__ == "__main__":
    sys.exit(main())
