#!/usr/bin/python3
"""bench/status_poll.py — does GET /status cost the hot path anything?

    PC_BUILD=build python3 bench/status_poll.py [--rounds N] [--secs S] [--out FILE]

One pullcache in front of the loopback test upstream, the pause index warmed into the store.
Then N rounds, each two back-to-back measurements of warm manifest GETs by digest (ab -k, 64
connections, S seconds): one with nothing else, one while a poller fetches /status (the HTML
page, as a browser tab would) every second; the order alternates from round to round. The
figure is the median of the per-round ratios (with / without), which a disturbance of the
machine as a whole cancels out of; the spread of the plain rounds among themselves is given
next to it as the noise. Writes bench/AB-status.md.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

SRC = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("PC_BUILD", os.path.join(SRC, "build"))
os.environ.setdefault("PULLCACHE", os.path.join(os.environ["PC_BUILD"], "pullcache"))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
import pclib  # noqa: E402

ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
          "application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*")


def cpu_s(pid):
    """User + system CPU seconds the process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ab_rps(url, secs, pid=None, n=50000000, conns=64):
    """(requests per second, server CPU microseconds per request) of one ab run. ab counts an
    answer whose length differs from the first as failed: only Non-2xx counts for one conns=1
    run of the page (its length changes as the counters grow)."""
    argv = ["ab", "-q", "-k", "-c", str(conns), "-t", str(secs), "-n", str(n),
            "-H", "Accept: " + ACCEPT, url]
    c0 = cpu_s(pid) if pid else 0
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=secs + 60)
    c1 = cpu_s(pid) if pid else 0
    rps = done = None
    for line in r.stdout.splitlines():
        if line.startswith("Non-2xx") or (conns > 1 and line.startswith("Failed requests")
                                           and line.split()[-1] != "0"):
            raise RuntimeError("ab: " + r.stdout[-1500:])
        if line.startswith("Requests per second"):
            rps = float(line.split()[3])
        if line.startswith("Complete requests"):
            done = int(line.split()[2])
    if rps is None or not done:
        raise RuntimeError("ab: " + r.stdout[-1500:])
    return rps, (c1 - c0) * 1e6 / done


class Poller(threading.Thread):
    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stop, self.n, self.bytes = url, threading.Event(), 0, 0

    def run(self):
        while not self.stop.is_set():
            with urllib.request.urlopen(self.url, timeout=10) as r:
                self.bytes += len(r.read())
            self.n += 1
            self.stop.wait(1.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--secs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(SRC, "bench", "AB-status.md"))
    a = ap.parse_args()
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    pause = imgs["pause"]
    plain, polled, polls = [], [], 0
    cpu_plain, cpu_polled = [], []
    with pclib.TestEnv("status-poll") as env:
        up = env.start_upstream(d)
        conf = env.path("pc.conf")
        with open(conf, "w") as f:
            f.write("[log]\naccess = false\n")  # no access-log write per request in either arm
        pc = env.start_pullcache(upstream=up, args=["--config", conf])
        url = "%s/v2/pause/manifests/%s?ns=registry.k8s.io" % (pc.url, pause["index_digest"])
        ab_rps(url, 1)  # warm: the index is in the store from here on
        # the page itself: server CPU per /status, 2000 fetches one after another
        _, status_us = ab_rps(pc.url + "/status", 30, pc.pid, n=2000, conns=1)
        for r in range(a.rounds):
            for polling in ((False, True) if r % 2 == 0 else (True, False)):
                p = Poller(pc.url + "/status") if polling else None
                if p:
                    p.start()
                v, us = ab_rps(url, a.secs, pc.pid)
                if p:
                    p.stop.set()
                    p.join()
                    polls += p.n
                    size = p.bytes // max(p.n, 1)
                (polled if polling else plain).append(v)
                (cpu_polled if polling else cpu_plain).append(us)
            print("round %d: without %.0f req/s %.2f us CPU/req, with /status poller %.0f req/s %.2f us"
                  % (r + 1, plain[-1], cpu_plain[-1], polled[-1], cpu_polled[-1]), file=sys.stderr)
    ratios = [w / o for w, o in zip(polled, plain)]
    ratio = statistics.median(ratios)
    noise = [plain[i + 1] / plain[i] for i in range(len(plain) - 1)]
    lo, hi = min(ratios), max(ratios)
    with open(a.out, "w") as f:
        f.write("# /status poller A/B: warm manifest GET req/s with and without a /status poller\n\n")
        f.write("Written by `bench/status_poll.py` — do not edit by hand; rerun it.\n\n")
        f.write("- date: %s\n" % datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
        f.write("- machine: %d CPUs, load average at the end %s\n" % (os.cpu_count(), open("/proc/loadavg").read().split()[:3]))
        f.write("- %d rounds x 2 runs of `ab -k -c 64 -t %d` on `GET /v2/pause/manifests/<index digest>` "
                "(a store hit); the poller fetched the HTML page every second (%d fetches, %d bytes each)\n\n"
                % (a.rounds, a.secs, polls, size))
        f.write("| | median req/s | min | max |\n|---|---|---|---|\n")
        f.write("| without poller | %.0f | %.0f | %.0f |\n" % (statistics.median(plain), min(plain), max(plain)))
        f.write("| with /status poller (1/s) | %.0f | %.0f | %.0f |\n\n" % (statistics.median(polled), min(polled), max(polled)))
        f.write("- with / without, median of the per-round ratios: **%.3f** (rounds: %.2f to %.2f)\n" % (ratio, lo, hi))
        f.write("- server CPU per manifest request (from /proc/PID/stat around each ab run): without %.2f us, "
                "with the poller %.2f us (medians; with / without %.3f)\n"
                % (statistics.median(cpu_plain), statistics.median(cpu_polled),
                   statistics.median(cpu_polled) / statistics.median(cpu_plain)))
        f.write("- one /status page costs %.0f us of server CPU (2000 fetches back to back): a poller "
                "every second takes %.3f%% of one core\n" % (status_us, status_us / 1e4))
        f.write("- noise: consecutive plain rounds differ by a ratio of %.2f to %.2f (median %.3f)\n"
                % (min(noise), max(noise), statistics.median(noise)))
        f.write("- raw without: %s\n- raw with: %s\n" % (", ".join("%.0f" % v for v in plain),
                                                          ", ".join("%.0f" % v for v in polled)))
    print("with/without median ratio %.3f (rounds %.2f..%.2f); plain-to-plain %.2f..%.2f; CPU/req "
          "%.2f vs %.2f us; /status %.0f us; wrote %s"
          % (ratio, lo, hi, min(noise), max(noise), statistics.median(cpu_plain),
             statistics.median(cpu_polled), status_us, a.out))


if __name__ == "__main__":
    main()
