#!/usr/bin/python3
"""Scale-out figures: replicas behind HAProxy vs one pullcache, and the cost of a dead first URL.

    PC_BUILD=build python3 bench/balancer.py [--nodes 50] [--runs 3] [--scale small]

All on loopback: the registry.k8s.io-like test upstream (the origin, generated images), and

1. 50 simulated nodes (`pullcache-bench --nodes 50 --all-platforms`, every image) pulling cold
   (a) through one pullcache and (b) through HAProxy (`pullcache config haproxy` as generated)
   in front of 3 replicas. Fresh stores every run; runs alternate a/b. Reported: wall time of the
   whole pull and the bytes the origin sent, medians, and the ratios b/a.
2. Failover cost: one node pulling every image cold through a pullcache whose first URL
   (`mirrors`) is (live) the origin itself, (refused) a closed port, (blackhole) a port that
   never completes a TCP handshake (a full listen queue: SYNs are dropped), (hung) a listener
   that accepts and never answers, with `url` = the origin in every case. Reported: pull wall time, medians, ratios dead/live.

The machine is noisy (2 cores shared): read the ratios, not the numbers.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
import pclib  # noqa: E402


def bench(env, url, refs, nodes):
    argv = [os.path.join(pclib.build_dir(), "pullcache-bench"), "--nodes", str(nodes), "--all-platforms",
            "--ns", "registry.k8s.io", url] + refs
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit("pullcache-bench failed: %s\n%s" % (" ".join(argv), r.stderr[-3000:]))
    return dt


def origin_bytes(up):
    return sum(e.get("bytes") or 0 for e in up.log())


def start_haproxy(env, reps, tag):
    port = pclib.free_port()
    cfg = env.path("haproxy-%s.cfg" % tag)
    argv = [os.environ.get("PULLCACHE") or os.path.join(pclib.build_dir(), "pullcache"), "config", "haproxy",
            "--listen", "127.0.0.1:%d" % port]
    for r in reps:
        argv += ["--replica", "127.0.0.1:%d" % r.port]
    with open(cfg, "w") as f:
        f.write(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    p = env.spawn("haproxy-" + tag, ["haproxy", "-db", "-f", cfg])

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    pclib.wait_for(up, 20, "haproxy")
    p.url = "http://127.0.0.1:%d" % port
    return p


def blackhole():
    """A listening socket whose accept queue is full: further SYNs are dropped (connect times
    out). Returns (port, sockets to keep open)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    keep = [s]
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        try:
            c.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        keep.append(c)
    time.sleep(0.2)
    return port, keep


def hung():
    """A listener that accepts every connection and never answers. Returns (port, state)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    held = [s]

    def loop():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            held.append(c)
    threading.Thread(target=loop, daemon=True).start()
    return s.getsockname()[1], held


def site(env, name, origin_url, first_url):
    cfg = env.path("%s.conf" % name)
    with open(cfg, "w") as f:
        f.write("[upstream \"registry.k8s.io\"]\nurl = %s\nmirrors = %s\n" % (origin_url, first_url))
    return env.start_pullcache(args=["--config", cfg], name=name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", default="small", choices=("tiny", "small", "k8s"))
    a = ap.parse_args()
    if not os.environ.get("PULLCACHE"):
        os.environ["PULLCACHE"] = os.path.join(pclib.build_dir(), "pullcache")
    d = pclib.make_images(a.scale)
    imgs = pclib.load_images(d)
    refs = ["%s:%s" % (i["name"], i["tag"]) for i in imgs.values()]
    one_t, one_b, lb_t, lb_b = [], [], [], []
    with pclib.TestEnv("bench-balancer") as env:
        up = env.start_upstream(d)
        for run in range(a.runs):
            up.reset()
            pc = env.start_pullcache(upstream=up, name="one-%d" % run)
            one_t.append(bench(env, pc.url, refs, a.nodes))
            one_b.append(origin_bytes(up))
            env.stop(pc)
            shutil.rmtree(pc.store, ignore_errors=True)
            up.reset()
            reps = [env.start_pullcache(upstream=up, name="rep%d-%d" % (i, run)) for i in range(3)]
            lb = start_haproxy(env, reps, str(run))
            lb_t.append(bench(env, lb.url, refs, a.nodes))
            lb_b.append(origin_bytes(up))
            env.stop(lb)
            for r in reps:
                env.stop(r)
                shutil.rmtree(r.store, ignore_errors=True)
        print("1. %d nodes, %d images (%s fixture, all platforms), %d runs" % (a.nodes, len(refs), a.scale, a.runs))
        print("   one pullcache:        wall s %s  origin bytes %s" % (["%.2f" % x for x in one_t], one_b))
        print("   haproxy + 3 replicas: wall s %s  origin bytes %s" % (["%.2f" % x for x in lb_t], lb_b))
        mt, mb = statistics.median(lb_t) / statistics.median(one_t), statistics.median(lb_b) / statistics.median(one_b)
        print("   ratio (replicas / one): wall time x%.2f, origin bytes x%.3f" % (mt, mb))

        bh_port, keep = blackhole()
        hung_port, held = hung()
        dead = {"live": up.url, "refused": "http://127.0.0.1:%d" % pclib.free_port(),
                "blackhole": "http://127.0.0.1:%d" % bh_port, "hung": "http://127.0.0.1:%d" % hung_port}
        times = {k: [] for k in dead}
        for run in range(a.runs + 2):
            for k, first in dead.items():
                s = site(env, "fo-%s-%d" % (k, run), up.url, first)
                times[k].append(bench(env, s.url, refs, 1))
                env.stop(s)
                shutil.rmtree(s.store, ignore_errors=True)
        for c in keep + held:
            c.close()
        live = statistics.median(times["live"])
        print("2. failover: one node, every image cold; first URL live / dead, url = the origin")
        for k in dead:
            print("   %-9s wall s %s  median %.2f  x%.2f of live" % (k, ["%.2f" % x for x in times[k]],
                                                                   statistics.median(times[k]),
                                                                   statistics.median(times[k]) / live))


if __name__ == "__main__":
    main()
