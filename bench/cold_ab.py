#!/usr/bin/env python3
"""Cold pulls through pullcache against the same pull direct, back to back, several repetitions.

    PC_BUILD=build python3 bench/cold_ab.py [--reps 7] [--scale small] [--k8s | --only-k8s]
        [--binary OTHER_PULLCACHE]... [--store-dir DIR] [--log-level L] [--keep] [--warmup N]
        [--perf FILE]

Per repetition: a fresh pullcache (a fresh store) in front of the plain registry (distribution,
docker-registry) pulls the set with `pullcache-bench --json` (1 node, linux/amd64), and the same
pull goes direct to the plain registry; with --binary, the same through each other pullcache
binary (or a wrapper script that sets an environment) too; the order rotates between
repetitions. --k8s: also against tests/upstream/k8s_upstream.py (redirects, tokens). Before the
first repetition the set is pulled direct --warmup times (default 2), so that no contender meets
the upstream's coldest caches. Per pull it also reads the CPU time the upstream, the client
(pullcache-bench) and pullcache (all threads, and its loop thread) used, from
/proc/PID/task/*/schedstat and getrusage: on a small shared machine the cold ratio follows the
CPU sum. Prints every repetition, the medians, and the median of the per-repetition ratios.
--perf FILE records each pullcache pull with perf (DWARF call graphs) into FILE.<n>."""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
NS = "registry.k8s.io"


UPSTREAM_PID = [None]


def bench(build, url, refs):
    u0 = cpu_ms(UPSTREAM_PID[0])[0] if UPSTREAM_PID[0] else 0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([os.path.join(build, "pullcache-bench"), "--json", "--ns", NS, url] + refs,
                       capture_output=True, text=True, timeout=600)
    j = json.loads(r.stdout)
    if j["overall"]["errors"]:
        raise RuntimeError("errors against %s: %r" % (url, j["error_messages"]))
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    o = j["overall"]
    return {"wall": o["wall_ms"][0], "res": o["resolve_ms"]["p50"], "ttfb": o["ttfb_ms"]["p50"],
            "req": o.get("requests"),
            "up_cpu": (cpu_ms(UPSTREAM_PID[0])[0] - u0) if UPSTREAM_PID[0] else 0,
            "bench_cpu": 1000 * (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)}


def cpu_ms(pid):
    """CPU time of PID's threads in ms (the sum of /proc/PID/task/*/schedstat, in ns), and of
    its main thread (the loop)."""
    ns = main = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                v = int(f.read().split()[0])
        except OSError:
            continue
        ns += v
        if int(t) == pid:
            main = v
    return ns / 1e6, main / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--scale", default="small")
    ap.add_argument("--k8s", action="store_true", help="also via the k8s-like upstream")
    ap.add_argument("--only-k8s", action="store_true")
    ap.add_argument("--store-dir", help="parent directory of the stores (default: the env's tmp)")
    ap.add_argument("--log-level", default=None)
    ap.add_argument("--pc-args", default="", help="extra pullcache serve arguments")
    ap.add_argument("--keep", action="store_true", help="print the pullcache log paths")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--perf", help="perf record the pullcache pulls into PERF.<n>")
    ap.add_argument("--binary", action="append", default=[],
                    help="another pullcache binary (or wrapper) to A/B: pcB, pcC, ... (repeatable)")
    args = ap.parse_args()
    build = os.environ.get("PC_BUILD") or os.path.join(SRC, "build")
    os.environ["PC_BUILD"] = build
    os.environ["PULLCACHE"] = os.path.join(build, "pullcache")
    import pclib

    images_dir = pclib.make_images(args.scale)
    with open(os.path.join(images_dir, "images.json")) as f:
        imgs = json.load(f)
    refs = ["%s:%s" % (i["name"], i["tag"]) for i in imgs]
    with pclib.TestEnv("coldab") as env:
        targets = []
        if not args.only_k8s:
            plain = env.start_docker_registry(name="plain")
            for i in imgs:
                pclib.skopeo("copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false",
                             "oci:%s/%s" % (images_dir, i["layout_dir"]),
                             "docker://127.0.0.1:%d/%s:%s" % (plain.port, i["name"], i["tag"]))
            targets.append(("plain", plain.url))
        if args.k8s or args.only_k8s:
            up = env.start_upstream(images_dir)
            targets.append(("k8s", up.url))
        extra = args.pc_args.split()
        if args.log_level:
            extra += ["--log-level", args.log_level]
        n = 0
        for tname, turl in targets:
            UPSTREAM_PID[0] = (plain if tname == "plain" else up).pid
            for _ in range(args.warmup):
                bench(build, turl, refs)
            rows = []
            for r in range(args.reps):
                others = ["pc" + chr(ord("B") + i) for i in range(len(args.binary))]
                order = ["pc", "direct"] + others
                k = r % len(order)
                order = order[k:] + order[:k]
                row = {}
                for who in order:
                    if who == "direct":
                        row[who] = bench(build, turl, refs)
                        continue
                    n += 1
                    store = None
                    if args.store_dir:
                        store = os.path.join(args.store_dir, "coldab-store-%d-%d" % (os.getpid(), n))
                    s = env.start_pullcache(upstream=turl, name="pc-%s-%d" % (tname, n), args=extra,
                                            store=store,
                                            binary=args.binary[ord(who[2]) - ord("B")]
                                            if who != "pc" else None)
                    try:
                        c0 = cpu_ms(s.pid)
                        perf = None
                        if args.perf:
                            perf = subprocess.Popen(["perf", "record", "-q", "-F", "10000", "--call-graph", "dwarf,16384",
                                                     "-p", str(s.pid), "-o",
                                                     "%s.%d" % (args.perf, n)],
                                                    stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL)
                            time.sleep(0.5)
                        row[who] = bench(build, s.url, refs)
                        c1 = cpu_ms(s.pid)
                        row[who]["cpu"] = c1[0] - c0[0]
                        row[who]["loop"] = c1[1] - c0[1]
                        if perf:
                            perf.send_signal(2)
                            perf.wait()
                    finally:
                        env.stop(s)
                        if store:
                            subprocess.run(["rm", "-rf", store])
                    if args.keep:
                        print("  log %s" % s.log_path)
                rows.append(row)
                print("%s rep %d: " % (tname, r) + "  ".join(
                    "%s wall %.1f res %.2f ttfb %.2f up %.1f bench %.1f%s" % (
                        w, row[w]["wall"], row[w]["res"], row[w]["ttfb"], row[w]["up_cpu"],
                        row[w]["bench_cpu"],
                                           " cpu %.1f loop %.1f" % (row[w]["cpu"], row[w]["loop"]) if "cpu" in row[w] else "")
                    for w in sorted(row)), flush=True)
            print("== %s (%d reps), medians" % (tname, args.reps))
            for who in sorted(rows[0]):
                print("  %-7s wall %7.1f  res %6.2f  ttfb %6.2f%s" % (
                    who, statistics.median(x[who]["wall"] for x in rows),
                    statistics.median(x[who]["res"] for x in rows),
                    statistics.median(x[who]["ttfb"] for x in rows),
                    "  cpu %.1f ms (loop %.1f)" % (statistics.median(x[who]["cpu"] for x in rows),
                                                   statistics.median(x[who]["loop"] for x in rows))
                    if "cpu" in rows[0][who] else ""))
            for who in sorted(rows[0]):
                if who == "direct":
                    continue
                rw = [x[who]["wall"] / x["direct"]["wall"] for x in rows]
                rr = [x[who]["res"] / x["direct"]["res"] for x in rows]
                dt = [x[who]["ttfb"] - x["direct"]["ttfb"] for x in rows]
                print("  %s/direct: wall ratio median %.2f (min %.2f max %.2f)  resolve ratio %.2f  "
                      "ttfb added %.2f ms" % (who, statistics.median(rw), min(rw), max(rw),
                                              statistics.median(rr), statistics.median(dt)))
                if who != "pc":
                    rp = [x[who]["wall"] / x["pc"]["wall"] for x in rows]
                    print("  %s/pc: wall ratio median %.2f (min %.2f max %.2f)" % (
                        who, statistics.median(rp), min(rp), max(rp)))
        if args.keep:
            os.environ["PC_KEEP"] = "1"


if __name__ == "__main__":
    main()
