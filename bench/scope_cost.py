#!/usr/bin/python3
"""The cost of repository scoping in the common case: a new image (kube-apiserver) sharing
blobs with a cached one (kube-proxy), pulled through OLD (before scoping) and this tree, 5 runs
each, on the loopback test upstream. PC_BUILD=build python3 bench/scope_cost.py OLD_PULLCACHE"""
import json, os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import pclib
bench = os.path.join(pclib.build_dir(), "pullcache-bench")
d = pclib.make_images("tiny"); imgs = pclib.load_images(d)
kp = "%s:%s" % (imgs["kube-proxy"]["name"], imgs["kube-proxy"]["tag"])
ka = "%s:%s" % (imgs["kube-apiserver"]["name"], imgs["kube-apiserver"]["tag"])
res = {}
with pclib.TestEnv("scope-time") as env:
    up = env.start_upstream(d)
    for run in range(5):
        for label, binary in (("before", sys.argv[1]), ("after", os.path.join(pclib.build_dir(), "pullcache"))):
            pc = env.start_pullcache(upstream=up, binary=binary, name="pc-%s-%d" % (label, run))
            subprocess.run([bench, "--all-platforms", "--ns", "registry.k8s.io", pc.url, kp], check=True, capture_output=True)
            up.reset()
            t = time.monotonic()
            subprocess.run([bench, "--all-platforms", "--ns", "registry.k8s.io", pc.url, ka], check=True, capture_output=True)
            dt = time.monotonic() - t
            res.setdefault(label, []).append((dt * 1000, len(up.log())))
            pc.stop()
for k, v in res.items():
    ms = sorted(x[0] for x in v)
    print(k, "median ms %.1f" % ms[len(ms)//2], "runs", ["%.0f" % x for x in ms], "upstream requests", [x[1] for x in v])
