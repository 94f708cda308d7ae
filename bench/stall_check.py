#!/usr/bin/python3
"""bench/stall_check.py — do the Python test upstreams stall on a reused keep-alive connection?

    python3 bench/stall_check.py [--n 4]

Starts tests/upstream/k8s_upstream.py (tiny image set) and tests/tools/up-fixture.py on loopback,
then times N GETs one after another on ONE keep-alive connection to each, for answers of a few
hundred bytes (where a header write and a body write of their own meet Nagle's algorithm and the
client's delayed ACK: ~40 ms per answer on Linux) and for a 64 KiB blob. Prints the per-request
milliseconds. A stall-free server answers every request in well under a millisecond or two; a
stalled one shows ~40 ms from the second request on. A measuring tool, not a test: it asserts
nothing, it prints.
"""
import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))


def times(port, path, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            out.append((time.perf_counter() - t0) * 1000)
            if r.status >= 400:
                raise RuntimeError("GET %s: %d %r" % (path, r.status, body[:200]))
    finally:
        c.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    a = ap.parse_args()
    import pclib
    images = pclib.make_images("tiny")
    with open(os.path.join(images, "images.json")) as f:
        imgs = json.load(f)
    small = min((b for i in imgs for b in i["blobs"]), key=lambda b: b["size"])
    rows = []
    with pclib.TestEnv("stallcheck") as env:
        up = env.start_upstream(images)
        with open(os.path.join(up.state_dir, "ports.json")) as f:
            ports = json.load(f)
        rows.append(("k8s_upstream redirector GET /v2/ (empty body)", times(ports["redirector"], "/v2/", a.n)))
        rows.append(("k8s_upstream redirector GET /_control/stats (small JSON)",
                     times(ports["redirector"], "/_control/stats", a.n)))
        rows.append(("k8s_upstream blobs GET %d-byte blob" % small["size"],
                     times(ports["blobs"], "/containers/images/" + small["digest"], a.n)))
        d = tempfile.mkdtemp(dir=env.dir)
        pf, lf = os.path.join(d, "ports"), os.path.join(d, "log")
        p = subprocess.Popen([sys.executable, os.path.join(SRC, "tests", "tools", "up-fixture.py"), pf, lf])
        try:
            pclib.wait_for(lambda: os.path.exists(pf), 10, "up-fixture ports")
            port = int(open(pf).read().split()[0])
            rows.append(("up-fixture GET /blob/300", times(port, "/blob/300", a.n)))
            rows.append(("up-fixture GET /blob/65536", times(port, "/blob/65536", a.n)))
        finally:
            p.terminate()
            p.wait()
    for name, t in rows:
        print("%-60s %s ms" % (name, " ".join("%.2f" % x for x in t)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
