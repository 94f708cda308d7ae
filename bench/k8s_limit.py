#!/usr/bin/python3
"""20 concurrent cold pulls of one image set, counted against registry.k8s.io's limit.

    PC_BUILD=build python3 bench/k8s_limit.py [--before OLD_PULLCACHE] [--nodes 20]

Starts the registry.k8s.io-like test upstream (tests/upstream/k8s_upstream.py, loopback, tiny
generated images) and pulls the whole image set with `pullcache-bench --nodes N` (N nodes at
once, as containerd does):
  - direct:  every node straight from the upstream (no mirror);
  - before:  through OLD_PULLCACHE (e.g. a build of main), a fresh store;
  - after:   through $PC_BUILD/pullcache (this tree), a fresh store.
and prints the upstream requests (every hop: redirects, tokens, blobs) per image for each, the
ratios, and the share of one 30 s window of registry.k8s.io's ~2,490 requests per client IP.
"""
import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import pclib  # noqa: E402

LIMIT = 2490


def run(bench, url, refs, nodes, ns):
    argv = [bench, "--nodes", str(nodes), "--all-platforms"] + (["--ns", ns] if ns else []) + [url] + refs
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise SystemExit("pullcache-bench failed: %s\n%s" % (" ".join(argv), r.stderr[-2000:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="an older pullcache binary to compare")
    ap.add_argument("--nodes", type=int, default=20)
    a = ap.parse_args()
    bench = os.path.join(pclib.build_dir(), "pullcache-bench")
    after = os.path.join(pclib.build_dir(), "pullcache")
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    refs = ["%s:%s" % (i["name"], i["tag"]) for i in imgs.values()]
    rows = []
    with pclib.TestEnv("k8s-limit") as env:
        up = env.start_upstream(d)
        up.reset()
        run(bench, up.url, refs, a.nodes, None)
        rows.append(("direct (no mirror)", len(up.log())))
        for label, binary in (("before: " + (a.before or "-"), a.before), ("after: this tree", after)):
            if not binary:
                continue
            up.reset()
            pc = env.start_pullcache(upstream=up, binary=binary, name="pc-" + label.split(":")[0])
            run(bench, pc.url, refs, a.nodes, "registry.k8s.io")
            rows.append((label, len(up.log())))
            pc.stop()
    n = len(refs)
    print("%d concurrent cold pulls of %d images (tiny fixture), upstream requests:" % (a.nodes, n))
    base = rows[-1][1]
    for label, req in rows:
        print("  %-40s %6d total  %7.1f per image  x%.2f of after  %5.1f%% of one 30 s window (%d)"
              % (label, req, req / n, req / base, 100.0 * req / LIMIT, LIMIT))


if __name__ == "__main__":
    main()
