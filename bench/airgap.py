#!/usr/bin/python3
"""Prefetch and air-gap bundles, one run, side by side (bench/MEASUREMENTS.md "Prefetch and air-gap bundles"):

  prefetch of the five-image kubeadm set (--all-platforms) into an empty store through the
  daemon  ÷  `skopeo copy --all` of the same five images straight from the same upstream;
  export (directory, tar) and import (directory, tar) throughput  ÷  `cp -r` of the same bytes.

    PC_BUILD=build python3 bench/airgap.py [--scale k8s|small|tiny]

Loopback test upstream (tests/upstream/k8s_upstream.py: redirector, token registry, blob host).
Page cache warm for every reader (the bytes were just written): read the ratios, not the
numbers. Import fsyncs every blob and manifest (the store's durability rule); cp does not.
"""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import pclib  # noqa: E402

NAMES = ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns")


def tree_bytes(path):
    n = 0
    for root, _, files in os.walk(path):
        for f in files:
            n += os.path.getsize(os.path.join(root, f))
    return n


def timed(argv, **kw):
    t = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s" % (r.returncode, " ".join(argv), r.stderr.decode()[-2000:]))
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="k8s")
    a = ap.parse_args()
    pc_bin = os.path.join(pclib.build_dir(), "pullcache")
    os.environ.setdefault("PULLCACHE", pc_bin)
    d = pclib.make_images(a.scale)
    imgs = pclib.load_images(d)
    rows = []
    with pclib.TestEnv("bench-airgap") as env:
        up = env.start_upstream(d)
        lst = env.path("list.txt")
        with open(lst, "w") as f:
            for n in NAMES:
                f.write("registry.k8s.io/%s:%s\n" % (n, imgs[n]["tag"]))
        # direct skopeo copy --all from the upstream, one image after the other (from its
        # registry host: skopeo does not follow the redirector's 307 into a token challenge)
        t_sk = 0.0
        for n in NAMES:
            t_sk += timed(["skopeo", "copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                           "docker://127.0.0.1:%d/k8s-artifacts-prod/images/%s:%s" % (up.ports["registry"], n, imgs[n]["tag"]),
                           "dir:" + env.path("skopeo-" + n.replace("/", "_"))], timeout=900)
        sk_bytes = sum(tree_bytes(env.path("skopeo-" + n.replace("/", "_"))) for n in NAMES)
        # prefetch into empty stores: --jobs 1 (one image at a time, as skopeo) and the default
        t_pf = {}
        for jobs in ("1", "4"):
            pc = env.start_pullcache(upstream=up, name="pf%s" % jobs)
            t_pf[jobs] = timed([pc_bin, "prefetch", "--store", pc.store, "--all-platforms", "--jobs", jobs, lst],
                               timeout=900)
            if jobs == "1":
                env.stop(pc)
        store = pc.store
        data = tree_bytes(os.path.join(store, "blobs"))
        rows.append(("prefetch --jobs 1 / skopeo copy --all (5 images, %.0f MB)" % (data / 1e6), t_pf["1"], t_sk))
        rows.append(("prefetch (--jobs 4) / skopeo copy --all", t_pf["4"], t_sk))
        # export from the live store, cp -r of the same bytes (the store's blob tree)
        t_cp = timed(["cp", "-r", os.path.join(store, "blobs"), env.path("cp-store")])
        t_ed = timed([pc_bin, "export", "--store", store, "--all-platforms", "--all", env.path("bundle")])
        t_et = timed([pc_bin, "export", "--store", store, "--all-platforms", "--all", env.path("bundle.tar")])
        b = tree_bytes(env.path("bundle"))
        t_cpb = timed(["cp", "-r", env.path("bundle"), env.path("cp-bundle")])
        t_id = timed([pc_bin, "import", "--store", env.path("store-dir"), env.path("bundle")], timeout=900)
        t_it = timed([pc_bin, "import", "--store", env.path("store-tar"), env.path("bundle.tar")], timeout=900)
        mbs = lambda t: b / 1e6 / t  # noqa: E731
        print("data: %d bytes in the store's blobs, %d in the bundle, %d fetched by skopeo" % (data, b, sk_bytes))
        print("| | pullcache | peer | ratio |")
        print("|---|---:|---:|---:|")
        for label, x, y in rows:
            print("| %s | %.2f s | %.2f s | %.2f |" % (label, x, y, x / y))
        for label, t, tc in (("export dir / cp -r store blobs", t_ed, t_cp), ("export tar / cp -r store blobs", t_et, t_cp),
                             ("import dir / cp -r bundle", t_id, t_cpb), ("import tar / cp -r bundle", t_it, t_cpb)):
            print("| %s | %.0f MB/s | %.0f MB/s | %.2f |" % (label, mbs(t), mbs(tc), tc / t))
        env.stop(pc)


if __name__ == "__main__":
    main()
