#!/usr/bin/python3
"""Smoke test of bench/pullcache-bench ($PC_BUILD/pullcache-bench): it pulls the tiny generated
images through a plain docker-registry, straight from the registry.k8s.io-like test upstream
(redirects + Bearer tokens) and through pullcache, verifies every digest, reports a corrupt blob
as an error, and its --json output parses. Never checks timings.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_bench_smoke.py [test ...]
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check  # noqa: E402

BENCH = os.path.join(pclib.build_dir(), "pullcache-bench")


def bench(*args, timeout=120):
    """Run pullcache-bench ARGS; returns (exit code, stdout, stderr)."""
    check(os.path.exists(BENCH), "pullcache-bench not built: %s" % BENCH)
    r = subprocess.run([BENCH] + [str(a) for a in args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout, r.stderr


def bench_json(*args):
    rc, out, err = bench("--json", *args)
    try:
        j = json.loads(out)
    except ValueError:
        raise pclib.CheckFailed("--json output does not parse (rc %d): %r %s" % (rc, out[:500], err))
    return rc, j


def images():
    d = pclib.make_images("tiny")
    with open(os.path.join(d, "images.json")) as f:
        return d, json.load(f)


def expected(imgs, platforms=None):
    """Per image: (documents+blobs verified, body bytes) for a pull of IMGS in order by one node
    (blobs already pulled by an earlier image are skipped, as the bench does). PLATFORMS: a set of
    (os, arch) or None for all."""
    seen, out = set(), []
    for img in imgs:
        n, size = 1, img["index_size"]
        sizes = {b["digest"]: b["size"] for b in img["blobs"]}
        for m in img["manifests"]:
            p = m["platform"]
            if platforms is not None and (p["os"], p["architecture"]) not in platforms:
                continue
            n += 1
            size += m["size"]
            for d in [m["config"]] + m["layers"]:
                if d not in seen:
                    seen.add(d)
                    n += 1
                    size += sizes[d]
        out.append((n, size))
    return out


def refs(imgs):
    return ["%s:%s" % (i["name"], i["tag"]) for i in imgs]


def check_clean(rc, j, imgs, platforms=None, nodes=1, runs=1):
    ov = j["overall"]
    check(rc == 0, "exit status %d, errors %r" % (rc, j.get("error_messages")))
    check(ov["errors"] == 0 and j["error_messages"] == [], "errors: %r" % j["error_messages"])
    check(ov["pulls"] == len(imgs) * nodes * runs, "pulls %d" % ov["pulls"])
    exp = expected(imgs, platforms)
    for rec, img, (n, size) in zip(j["images"], imgs, exp):
        check(rec["name"] == img["name"], "image order: %s vs %s" % (rec["name"], img["name"]))
        check(rec["verified"] == n * nodes * runs,
              "%s: %d digests verified, want %d" % (img["name"], rec["verified"], n * nodes * runs))
        check(rec["bytes"] == size * nodes * runs,
              "%s: %d bytes, want %d" % (img["name"], rec["bytes"], size * nodes * runs))
        check(rec["errors"] == 0 and rec["pull_ms"]["n"] == nodes * runs, "%s: %r" % (img["name"], rec))
        check(rec["pull_ms"]["max"] >= rec["ttfb_ms"]["max"] >= 0, "ttfb after pull end: %r" % rec)


def push_all(reg, imgs_dir, imgs):
    for i in imgs:
        pclib.skopeo("copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false",
                     "oci:%s/%s" % (imgs_dir, i["layout_dir"]),
                     "docker://127.0.0.1:%d/%s:%s" % (reg.port, i["name"], i["tag"]))


def test_usage():
    rc, out, _ = bench("--help")
    check(rc == 0 and "usage: pullcache-bench" in out and "--nodes" in out, "--help: %d %r" % (rc, out[:200]))
    rc, _, err = bench("http://127.0.0.1:1")
    check(rc == 2 and "usage" in err, "no image: rc %d" % rc)
    rc, _, err = bench("--platform", "linux", "http://127.0.0.1:1", "pause")
    check(rc == 2 and "bad --platform" in err, "bad platform: rc %d %r" % (rc, err))


def test_docker_registry_all_platforms():
    d, imgs = images()
    with pclib.TestEnv("bench-reg") as env:
        reg = env.start_docker_registry()
        push_all(reg, d, imgs)
        rc, j = bench_json("--all-platforms", "--nodes", 2, "--runs", 2, "--ns", "registry.k8s.io",
                           reg.url, *refs(imgs))
        check_clean(rc, j, imgs, None, nodes=2, runs=2)
        check(j["ns"] == "registry.k8s.io" and j["nodes"] == 2 and len(j["overall"]["wall_ms"]) == 2,
              "header fields: %r" % {k: j[k] for k in ("ns", "nodes", "runs")})


def test_k8s_upstream_direct():
    """Straight at the redirector: 307s, 401 + token from the registry role, blob host; the
    token never reaches the blob host."""
    d, imgs = images()
    with pclib.TestEnv("bench-up") as env:
        up = env.start_upstream(d)
        rc, j = bench_json(up.url, *refs(imgs))
        check_clean(rc, j, imgs, {("linux", "amd64")})
        check(up.violations() == 0, "Authorization reached the blob host")
        log = up.log()
        check(any(e["route"] == "token" for e in log if e["role"] == "registry"), "no token fetched")
        heads = [e for e in log if e["method"] == "HEAD" and e["role"] == "redirector"]
        check(len(heads) == len(imgs) and all("*/*" in e["headers"].get("accept", "") and
                                              "oci.image.index" in e["headers"]["accept"]
                                              for e in heads), "resolve HEADs: %r" % heads)


def test_through_pullcache():
    d, imgs = images()
    with pclib.TestEnv("bench-pc") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        plats = {("linux", "amd64"), ("linux", "arm64")}
        for _ in range(2):  # cold, then warm
            rc, j = bench_json("--ns", "registry.k8s.io", "--platform", "linux/amd64",
                               "--platform", "linux/arm64/v8", pc.url, *refs(imgs))
            check_clean(rc, j, imgs, plats)
        check(up.violations() == 0, "Authorization reached the blob host")
        reqs = [e for e in up.log() if e["path"].startswith("/v2/")]
        check(all("ns=" not in e["query"] for e in reqs), "ns= leaked upstream")


def test_corrupt_blob_is_an_error():
    d, imgs = images()
    etcd = [i for i in imgs if i["name"] == "etcd"][0]
    with pclib.TestEnv("bench-corrupt") as env:
        up = env.start_upstream(d)
        up.faults([{"role": "blobs", "fault": "corrupt", "after": 10, "count": 1}])
        rc, j = bench_json(up.url, "etcd:" + etcd["tag"])
        check(rc == 1, "exit status %d with a corrupt blob" % rc)
        check(j["overall"]["errors"] == 1 and j["images"][0]["errors"] == 1, "errors: %r" % j["overall"])
        msgs = [e["message"] for e in j["error_messages"]]
        check(len(msgs) == 1 and "digest mismatch" in msgs[0], "messages: %r" % msgs)
        check(up.fault_state()[0]["hits"] == 1, "the fault did not fire: %r" % up.fault_state())
        # the same pull is clean once the fault is spent
        rc, j = bench_json(up.url, "etcd:" + etcd["tag"])
        check_clean(rc, j, [etcd], {("linux", "amd64")})


def test_truncated_blob_is_an_error():
    d, imgs = images()
    with pclib.TestEnv("bench-trunc") as env:
        up = env.start_upstream(d)
        up.faults([{"role": "blobs", "fault": "truncate", "after": 100, "count": 1}])
        rc, j = bench_json(up.url, "kube-proxy:v1.32.0")
        check(rc == 1 and j["overall"]["errors"] == 1, "truncated blob not reported: %r" % j["overall"])


def test_plot():
    """--plot FILE: FILE.dat holds one CDF block per image (every pull, nodes x runs, sorted,
    the share rising to 1) and one for the whole node, and gnuplot drew FILE as SVG."""
    d, imgs = images()
    with pclib.TestEnv("bench-plot") as env:
        up = env.start_upstream(d)
        svg = env.path("cdf.svg")
        two = refs(imgs)[:2]
        rc, j = bench_json("--nodes", 3, "--runs", 2, "--plot", svg, up.url, *two)
        check(rc == 0 and j["overall"]["errors"] == 0, "pull with --plot: rc %d %r" % (rc, j["overall"]))
        with open(svg + ".dat") as f:
            blocks = [b for b in f.read().split("\n\n\n") if b.strip()]
        check(len(blocks) == 3, "%d data blocks (want 2 images + the whole node)" % len(blocks))
        for b in blocks:
            pts = [tuple(map(float, ln.split())) for ln in b.splitlines() if ln and not ln.startswith("#")]
            check(len(pts) == 6, "a block has %d points (want 3 nodes x 2 runs)" % len(pts))
            check(all(a[0] <= b_[0] and a[1] < b_[1] for a, b_ in zip(pts, pts[1:])) and pts[-1][1] == 1.0,
                  "not a CDF: %r" % pts)
        with open(svg) as f:
            text = f.read()
        check(text.lstrip().startswith("<?xml") and "<svg" in text and "pull latency CDF" in text,
              "gnuplot did not draw %s" % svg)
        rc, out, err = bench("--plot", "it's.svg", up.url, two[0])
        check(rc == 2 and "--plot" in err, "a quote in the --plot name: rc %d %r" % (rc, err))


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_usage, test_docker_registry_all_platforms, test_k8s_upstream_direct,
                              test_through_pullcache, test_corrupt_blob_is_an_error,
                              test_truncated_blob_is_an_error, test_plot]))
