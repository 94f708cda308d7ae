#!/usr/bin/python3
"""Running pullcache as an appliance: the config file and check-config, sd_notify, SIGHUP
reload under load, SIGTERM drain of a live fill, /readyz, X-Cache, /metrics checked by
promtool, JSON logs with per-phase upstream timings, and upstream connection caps. Everything
runs on loopback against the registry.k8s.io-like test upstream.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_appliance.py [test_name ...]
"""

import concurrent.futures
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, sha256_digest  # noqa: E402

PULLCACHE = os.environ.get("PULLCACHE")


def images(scale="small"):
    d = pclib.make_images(scale)
    return d, pclib.load_images(d)


def biggest_layers(img, n=1):
    layers = sorted((b for b in img["blobs"] if b["kind"] == "layer"), key=lambda b: -b["size"])
    return layers[:n]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def log_text(server):
    with open(server.log_path, "rb") as f:
        return f.read().decode(errors="replace")


def wait_log(server, pattern, timeout=20, start=0):
    """Wait until the daemon's log (from offset START) matches regex PATTERN; the match."""
    found = []

    def seen():
        m = re.search(pattern, log_text(server)[start:])
        if m:
            found.append(m)
        return bool(m)
    pclib.wait_for(seen, timeout, "log line %r" % pattern)
    return found[0]


class Notify:
    """A $NOTIFY_SOCKET for the daemon: a datagram socket in the test directory."""

    def __init__(self, env):
        self.path = env.path("notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.seen = []

    def expect(self, what, timeout=20):
        """Wait for a datagram containing line WHAT; returns the whole datagram."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.seen.append(msg)
            if what in msg.split("\n"):
                return msg
        raise pclib.CheckFailed("no %r on NOTIFY_SOCKET within %ds (got %r)"
                                % (what, timeout, self.seen))

    def close(self):
        self.sock.close()


def conf_for(env, up, store, extra_server="", extra_upstream="", more=""):
    return write(env.path("pullcache.conf"),
                 "[server]\nlisten = 127.0.0.1:0\n%s\n"
                 "[store]\npath = %s\n\n"
                 "[log]\nlevel = info\n\n"
                 "[upstream \"registry.k8s.io\"]\nurl = %s\n%s\n%s"
                 % (extra_server, store, up.url, extra_upstream, more))


def run_pc(*args, timeout=30):
    return subprocess.run([PULLCACHE] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


# ---- tests -------------------------------------------------------------------------------------

def test_check_config_and_bad_files():
    with pclib.TestEnv("appl-check") as env:
        good = write(env.path("good.conf"),
                     "[server]\nlisten = 127.0.0.1:5999\n[store]\npath = %s\n"
                     "[upstream \"registry.k8s.io\"]\nurl = http://127.0.0.1:9/\ntag_ttl = 90s\n"
                     "max_connections = 4\n" % env.path("store"))
        r = run_pc("check-config", "--config", good)
        check(r.returncode == 0, "check-config on a good file: %d %s" % (r.returncode, r.stderr))
        out = r.stdout.decode()
        for want in ("[server]\nlisten = 127.0.0.1:5999\n", "header_timeout = 15s\n",
                     "[fetch]\n", "path = %s\n" % env.path("store"), "[log]\nlevel = info\n",
                     "[upstream \"registry.k8s.io\"]\nurl = http://127.0.0.1:9\n",
                     "tag_ttl = 90s\n", "max_connections = 4\n"):
            check(want in out, "check-config output lacks %r:\n%s" % (want, out))
        # flags override the file, as for serve
        r = run_pc("check-config", "--quiet", "--config", good, "--listen", "127.0.0.1:6001")
        check(r.returncode == 0 and r.stdout == b"", "check-config --quiet: %r" % r.stdout)
        # the printed file loads back
        printed = write(env.path("printed.conf"), out)
        r2 = run_pc("check-config", "--config", printed)
        check(r2.returncode == 0 and r2.stdout.decode().split("\n", 1)[1] == out.split("\n", 1)[1],
              "check-config output does not load back to itself")
        # bad files: exit 2, file:line: reason, and serve refuses to start the same way
        cases = [("[server]\nlisten = 127.0.0.1:0\nlisen = 1\n", 3, 'unknown key "lisen"'),
                 ("[server]\n\nidle_timeout = soon\n", 3, "idle_timeout"),
                 ("[upstream \"registry.k8s.io\"]\nurl = http://x\nca_file = /nonexistent\n", 3,
                  "No such file"),
                 ("[upstream \"registry.k8s.io\"]\ntag_ttl = 5m\n", 1, "has no url")]
        for i, (text, line, reason) in enumerate(cases):
            bad = write(env.path("bad%d.conf" % i), text)
            want = "%s:%d: " % (bad, line)
            for argv in (["check-config", "--config", bad],
                         ["serve", "--config", bad, "--store", env.path("s%d" % i)]):
                r = run_pc(*argv)
                err = r.stderr.decode()
                check(r.returncode == 2 and want in err and reason in err,
                      "%s on bad file %d: rc %d, stderr %r (want %r ... %r)"
                      % (argv[0], i, r.returncode, err, want, reason))
            check(not os.path.exists(env.path("s%d" % i)), "serve created a store on a bad config")


def test_notify_reload_under_load_and_drain():
    d, imgs = images()
    img = imgs["etcd"]
    layer, layer2 = biggest_layers(img, 2)
    data = pclib.read_blob(d, img, layer["digest"])
    data2 = pclib.read_blob(d, img, layer2["digest"])
    with pclib.TestEnv("appl-reload") as env:
        up = env.start_upstream(d)
        notify = Notify(env)
        store = env.path("store")
        conf = conf_for(env, up, store)
        pc = env.start_pullcache(args=["--config", conf], store=store,
                                 env=dict(os.environ, NOTIFY_SOCKET=notify.path))
        notify.expect("READY=1")
        slow = {"role": "blobs", "fault": "slow", "chunk": 32768, "delay_ms": 20}
        up.faults([dict(slow, path_re=layer["digest"].split(":", 1)[1]),
                   dict(slow, path_re=layer2["digest"].split(":", 1)[1])])
        url = pc.url + "/v2/etcd/blobs/" + layer["digest"]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            pull = ex.submit(http, "GET", url, None, None, 120)
            pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0].get("pullcache_fills_in_flight") == 1, 20,
                           "the fill to start")
            # Reload: a new upstream, debug logging, another tag_ttl; the pull must go on.
            mark = len(log_text(pc))
            conf_for(env, up, store, extra_server="max_conns = 500",
                     extra_upstream="tag_ttl = 1m\n",
                     more="[upstream \"mirror.example\"]\nurl = %s\n" % up.url)
            write(conf, open(conf).read().replace("level = info", "level = debug"))
            os.kill(pc.pid, signal.SIGHUP)
            msg = notify.expect("RELOADING=1")
            check(re.search(r"^MONOTONIC_USEC=\d+$", msg, re.M), "RELOADING=1 without MONOTONIC_USEC: %r" % msg)
            notify.expect("READY=1")
            wait_log(pc, r"reloaded config=\S+ upstreams=2 log_level=7", start=mark)
            check(pclib.metrics(pc, raw=True)[0].get("pullcache_fills_in_flight") == 1,
                  "the reload ended the fill in flight")
            r = pull.result()
        check(r.status == 200 and r.body == data, "the pull across the reload: %d, %d bytes"
              % (r.status, len(r.body)))
        check(r.headers.get("x-cache") == "MISS", "X-Cache of the miss: %r" % r.headers.get("x-cache"))
        check(up.blob_gets().get(layer["digest"]) == 1, "the reload caused a second fetch")
        # The new upstream serves (by ns=), the old one still does.
        r = http("GET", pc.url + "/v2/pause/manifests/3.10?ns=mirror.example",
                 {"Accept": "application/vnd.oci.image.index.v1+json"})
        check(r.status == 200, "new upstream after reload: %d %r" % (r.status, r.body[:200]))
        r = http("GET", pc.url + "/v2/pause/manifests/3.10?ns=registry.k8s.io",
                 {"Accept": "application/vnd.oci.image.index.v1+json"})
        check(r.status == 200, "old upstream after reload: %d" % r.status)

        # A broken file: logged with file:line, nothing changes, still serving.
        mark = len(log_text(pc))
        write(conf, open(conf).read() + "[server]\nmax_conns = lots\n")
        os.kill(pc.pid, signal.SIGHUP)
        notify.expect("RELOADING=1")
        notify.expect("READY=1")
        wait_log(pc, r'reload-failed configuration=unchanged reason="%s:\d+: bad value for max_conns'
                 % re.escape(conf), start=mark)
        r = http("GET", pc.url + "/v2/pause/manifests/3.10?ns=mirror.example",
                 {"Accept": "application/vnd.oci.image.index.v1+json"})
        check(r.status == 200, "a failed reload changed the upstreams: %d" % r.status)
        m, _ = pclib.metrics(pc, raw=True)
        check(m['pullcache_config_reloads_total{result="ok"}'] == 1 and
              m['pullcache_config_reloads_total{result="failed"}'] == 1,
              "reload counters: %s" % {k: v for k, v in m.items() if "reload" in k})

        # SIGTERM while a fill streams: the answer completes, new connections are refused,
        # exit 0, and the blob is committed.
        url2 = pc.url + "/v2/etcd/blobs/" + layer2["digest"]
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            pull = ex.submit(http, "GET", url2, None, None, 120)
            pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0].get("pullcache_fills_in_flight") == 1, 20,
                           "the second fill to start")
            os.kill(pc.pid, signal.SIGTERM)
            notify.expect("STOPPING=1")

            def refused():
                try:
                    socket.create_connection(("127.0.0.1", pc.port), timeout=1).close()
                    return False
                except OSError:
                    return True
            pclib.wait_for(refused, 10, "the listener to close after SIGTERM")
            r = pull.result()
        check(r.status == 200 and r.body == data2, "the fill across SIGTERM: %d, %d of %d bytes"
              % (r.status, len(r.body), len(data2)))
        pc.popen.wait(timeout=30)
        check(pc.popen.returncode == 0, "exit code after drain: %s" % pc.popen.returncode)
        check(re.search(r"(^|\s|>)stopped$", log_text(pc), re.M), "no clean stop logged")
        notify.close()
        r = run_pc("fsck", "--store", store, timeout=120)
        check(r.returncode == 0, "fsck after the drain: %d %s" % (r.returncode, r.stdout[-500:]))
        pc2 = env.start_pullcache(args=["--offline"], store=store, name="offline")
        r = http("GET", pc2.url + "/v2/etcd/blobs/" + layer2["digest"])
        check(r.status == 200 and sha256_digest(r.body) == layer2["digest"] and
              r.headers.get("x-cache") == "HIT", "the drained fill was not committed: %d" % r.status)


def test_reload_applies_limits_timeouts_and_logging():
    """What a SIGHUP changes takes effect: fetch timeouts (up_set_opts), server limits
    (srv_set_opts) and the log format."""
    d, imgs = images("tiny")
    with pclib.TestEnv("appl-reload-apply") as env:
        up = env.start_upstream(d)
        store = env.path("store")
        conf = conf_for(env, up, store, extra_server="max_conns = 100")
        pc = env.start_pullcache(args=["--config", conf], store=store)
        up.faults([{"role": "redirector", "path_re": "^/v2/slow/", "fault": "status",
                    "status": 404, "delay_ms": 2500}])
        r = http("GET", pc.url + "/v2/slow/manifests/a")
        check(r.status == 404, "slow 404 before the reload: %d" % r.status)
        wait_log(pc, r"path=/v2/slow/manifests/a status=404")  # logged after the answer
        text = open(conf).read().replace("max_conns = 100", "max_conns = 1")
        text = text.replace("[log]\nlevel = info\n", "[log]\nlevel = info\nformat = json\n")
        write(conf, text + "[fetch]\nfirst_byte_timeout = 1s\n")
        mark = len(log_text(pc))
        os.kill(pc.pid, signal.SIGHUP)
        wait_log(pc, r'"event":"reloaded"', start=mark)
        r = http("GET", pc.url + "/v2/slow/manifests/b")
        check(r.status == 504, "first_byte_timeout 1s after the reload: %d %r" % (r.status, r.body))
        idle = socket.create_connection(("127.0.0.1", pc.port), timeout=5)
        try:
            r = http("GET", pc.url + "/v2/")
            check(r.status == 503, "max_conns 1 after the reload: a second connection got %d"
                  % r.status)
        finally:
            idle.close()
        lines = [l for l in log_text(pc)[mark:].splitlines() if l.strip()]
        check(lines, "nothing logged after the reload")
        for line in lines:
            json.loads(line)  # format = json took effect at once


def test_reload_to_offline_while_a_refused_fill_has_joiners():
    """A fill refused for one repository hands its joiners from other repositories a fill of
    their own; if a reload made the mirror offline meanwhile, they get an offline answer."""
    d, imgs = images()
    with pclib.TestEnv("appl-offline") as env:
        up = env.start_upstream(d)
        store = env.path("store")
        conf = conf_for(env, up, store)
        pc = env.start_pullcache(args=["--config", conf], store=store)
        layer = biggest_layers(imgs["kube-proxy"])[0]
        up.faults([{"role": "redirector", "path_re": "^/v2/nosuch/", "fault": "status",
                    "status": 404, "delay_ms": 1500}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            bad = ex.submit(http, "GET", pc.url + "/v2/nosuch/blobs/" + layer["digest"], None, None, 30)
            pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0].get("pullcache_fills_in_flight") == 1, 20, "fill")
            good = ex.submit(http, "GET", pc.url + "/v2/kube-proxy/blobs/" + layer["digest"],
                             None, None, 30)
            pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0].get("pullcache_fill_joins_total") == 1, 20, "join")
            write(conf, open(conf).read().replace("[server]\n", "[server]\noffline = true\n"))
            os.kill(pc.pid, signal.SIGHUP)
            rb, rg = bad.result(), good.result()
        check(rb.status == 404, "refused repository: %d" % rb.status)
        check(rg.status == 404 and b"offline" in rg.body, "the joiner after going offline: %d %r"
              % (rg.status, rg.body))
        check(pc.alive() and http("GET", pc.url + "/healthz").status == 200, "daemon died")


def test_readyz():
    d, imgs = images("tiny")
    with pclib.TestEnv("appl-ready") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        r = http("GET", pc.url + "/readyz")
        check(r.status == 200 and r.body == b"ready\n", "readyz with a live upstream: %d %r"
              % (r.status, r.body))
        check(up.count("redirector", "/v2/") >= 1, "readyz did not probe the upstream")
        check(http("GET", pc.url + "/healthz").status == 200, "healthz")
        m, _ = pclib.metrics(pc, raw=True)
        check(m['pullcache_upstream_reachable{upstream="registry.k8s.io"}'] == 1, "reachable gauge")
        check(m["pullcache_ready"] == 1, "pullcache_ready gauge")

        dead = "http://127.0.0.1:%d" % pclib.free_port()
        pc2 = env.start_pullcache(upstream=dead, name="dead")
        r = http("GET", pc2.url + "/readyz")
        check(r.status == 503 and r.body == b"not ready: no upstream reachable\n",
              "readyz with a dead upstream: %d %r" % (r.status, r.body))
        check(http("GET", pc2.url + "/healthz").status == 200, "healthz with a dead upstream")

        pc3 = env.start_pullcache(upstream=dead, args=["--offline"], name="offline")
        r = http("GET", pc3.url + "/readyz")
        check(r.status == 200, "readyz offline: %d %r" % (r.status, r.body))

        # An upstream that accepts connections and never answers: /readyz does not hang.
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        pc5 = env.start_pullcache(upstream="http://127.0.0.1:%d" % hole.getsockname()[1],
                                  name="blackhole")
        t0 = time.monotonic()
        r = http("GET", pc5.url + "/readyz")
        check(r.status == 503 and r.body == b"not ready: probing upstreams\n",
              "readyz with a silent upstream: %d %r" % (r.status, r.body))
        check(time.monotonic() - t0 >= 1.5, "the probe wait was not bounded by its timer")
        hole.close()

        conf = write(env.path("full.conf"), "[store]\nmin_free = 1000T\n")
        pc4 = env.start_pullcache(upstream=up, args=["--config", conf], name="full")
        r = http("GET", pc4.url + "/readyz")
        check(r.status == 503 and b"min_free" in r.body, "readyz with a full disk: %d %r"
              % (r.status, r.body))


def test_x_cache_and_metrics_promtool():
    d, imgs = images("small")
    img = imgs["coredns/coredns"]
    layer = biggest_layers(img)[0]
    small = min((b for b in img["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
    idx = "application/vnd.oci.image.index.v1+json"
    with pclib.TestEnv("appl-metrics") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        seen = {}

        def get(path, kind, hdrs=None):
            r = http("GET", pc.url + path, hdrs)
            x = r.headers.get("x-cache")
            seen[(kind, x)] = seen.get((kind, x), 0) + 1
            return r

        tag = "/v2/coredns/coredns/manifests/" + img["tag"]
        r = get(tag, "manifest", {"Accept": idx})
        check(r.status == 200 and r.headers.get("x-cache") == "MISS", "tag miss: %r" % r.headers)
        r = get(tag, "manifest", {"Accept": idx})
        check(r.headers.get("x-cache") == "HIT", "tag hit: %r" % r.headers.get("x-cache"))
        r = get("/v2/coredns/coredns/blobs/" + small["digest"], "blob")
        check(r.status == 200 and r.headers.get("x-cache") == "MISS", "blob miss")
        r = get("/v2/coredns/coredns/blobs/" + small["digest"], "blob")
        check(r.status == 200 and r.headers.get("x-cache") == "HIT", "blob hit")
        hit_bytes = len(r.body)
        # Two clients for one slow blob: one fetch, MISS and JOIN.
        up.faults([{"role": "blobs", "path_re": layer["digest"].split(":", 1)[1], "fault": "slow",
                    "chunk": 65536, "delay_ms": 20}])
        url = "/v2/coredns/coredns/blobs/" + layer["digest"]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            a = ex.submit(get, url, "blob")
            pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0].get("pullcache_fills_in_flight") == 1, 20, "fill")
            b = ex.submit(get, url, "blob")
            ra, rb = a.result(), b.result()
        check(sorted([ra.headers.get("x-cache"), rb.headers.get("x-cache")]) == ["JOIN", "MISS"],
              "concurrent blob: %s %s" % (ra.headers.get("x-cache"), rb.headers.get("x-cache")))
        check(up.blob_gets().get(layer["digest"]) == 1, "join fetched twice")
        up.faults([])
        r = get("/v2/coredns/coredns/blobs/sha256:" + "0" * 64, "blob")
        check(r.status == 404 and r.headers.get("x-cache") == "MISS", "unknown blob: %d %r"
              % (r.status, r.headers.get("x-cache")))

        # tag_ttl 0: every tag request revalidates; the upstream down -> stale.
        pc2 = env.start_pullcache(upstream=up, args=["--tag-ttl", "0"], name="ttl0")
        r = http("GET", pc2.url + tag, {"Accept": idx})
        check(r.headers.get("x-cache") == "MISS", "ttl0 first: %r" % r.headers.get("x-cache"))
        # (until the tag is stored, a request is answered from the job's memory: a HIT)
        pclib.wait_for(lambda: pclib.metrics(pc2, raw=True)[0]["pullcache_store_tags"] == 1, 20, "the tag stored")
        r = http("GET", pc2.url + tag, {"Accept": idx})
        check(r.status == 200 and r.headers.get("x-cache") == "REVALIDATED",
              "ttl0 second: %r" % r.headers.get("x-cache"))
        # Until its tag write has finished, the revalidation answers requests for the same tag
        # itself (REVALIDATED): wait for it to end, so the next request asks the upstream.
        pclib.wait_for(lambda: pclib.metrics(pc2, raw=True)[0]["pullcache_manifest_jobs_in_flight"] == 0, 20,
                       "the revalidation's tag write")
        up.faults([{"role": "redirector", "path_re": "manifests", "fault": "status", "status": 503}])
        r = http("GET", pc2.url + tag, {"Accept": idx})
        check(r.status == 200 and r.headers.get("x-cache") == "STALE",
              "upstream down: %d %r" % (r.status, r.headers.get("x-cache")))
        up.faults([])
        m2, _ = pclib.metrics(pc2, raw=True)
        for outcome, n in (("miss", 1), ("revalidated", 1), ("stale", 1)):
            key = 'pullcache_cache_requests_total{kind="manifest",outcome="%s"}' % outcome
            check(m2[key] == n, "%s = %s, want %d" % (key, m2.get(key), n))

        # The exposition passes promtool, and its counts match what clients saw.
        m, raw = pclib.metrics(pc, raw=True)
        p = subprocess.run(["promtool", "check", "metrics"], input=raw, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60)
        check(p.returncode == 0 and p.stdout.strip() == b"",
              "promtool check metrics: rc %d\n%s" % (p.returncode, p.stdout.decode()))
        for (kind, x), n in seen.items():
            key = 'pullcache_cache_requests_total{kind="%s",outcome="%s"}' % (kind, x.lower())
            check(m.get(key) == n, "%s = %s, clients saw %d" % (key, m.get(key), n))
        check(m['pullcache_requests_total{route="blob",code="200"}'] == 4, "blob 200s")
        check(m['pullcache_requests_total{route="blob",code="404"}'] == 1, "blob 404s")
        check(m['pullcache_requests_total{route="manifest",code="200"}'] == 2, "manifest 200s")
        check(m['pullcache_served_bytes_total{source="store"}'] >= hit_bytes, "store bytes")
        check(m['pullcache_served_bytes_total{source="upstream"}'] >= 2 * layer["size"] + small["size"],
              "upstream bytes: %s" % m['pullcache_served_bytes_total{source="upstream"}'])
        u = '{upstream="registry.k8s.io"}'
        check(m["pullcache_upstream_fetches_total" + u] >= 3, "upstream fetches")
        check(m["pullcache_upstream_requests_total" + u] > m["pullcache_upstream_fetches_total" + u],
              "redirect hops and tokens are requests too")
        check(m["pullcache_upstream_tokens_total" + u] >= 1, "token fetches")
        check(m['pullcache_upstream_first_byte_seconds_count' + u] >= 3 and
              m['pullcache_upstream_first_byte_seconds_bucket{upstream="registry.k8s.io",le="+Inf"}']
              == m['pullcache_upstream_first_byte_seconds_count' + u], "first-byte histogram")
        check(m["pullcache_digest_mismatches_total"] == 0 and m["pullcache_fills_in_flight"] == 0,
              "fill gauges")
        # Manifests are content-addressed files too: blobs = the two layers + the manifests.
        pclib.wait_for(lambda: pclib.metrics(pc, raw=True)[0]["pullcache_store_blobs"] ==
                       2 + pclib.metrics(pc, raw=True)[0]["pullcache_store_manifests"], 20, "store blob count")
        m, _ = pclib.metrics(pc, raw=True)
        want = layer["size"] + small["size"] + m["pullcache_store_manifest_bytes"]
        check(m["pullcache_store_blob_bytes"] == want,
              "store bytes %s != %d" % (m["pullcache_store_blob_bytes"], want))
        check(m["pullcache_store_tags"] == 1 and m["pullcache_store_manifests"] == 1,
              "store counts: %s tags, %s manifests" % (m["pullcache_store_tags"],
                                                       m["pullcache_store_manifests"]))


def test_json_logs_with_phase_timings():
    d, imgs = images("tiny")
    img = imgs["pause"]
    layer = biggest_layers(img)[0]
    with pclib.TestEnv("appl-json") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up, args=["--log-format", "json"],
                                 ready='"event":"ready","listen":')
        r = http("GET", pc.url + "/v2/pause/manifests/" + img["tag"],
                 {"Accept": "application/vnd.oci.image.index.v1+json"})
        check(r.status == 200, "manifest: %d" % r.status)
        r = http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"])
        check(r.status == 200, "blob: %d" % r.status)
        http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"])
        reqs = []

        def lines():
            reqs.clear()
            for line in log_text(pc).splitlines():
                obj = json.loads(line)  # every line is one JSON object
                check("ts" in obj and "level" in obj, "line without ts/level: %r" % line)
                if obj.get("event") == "req":
                    reqs.append(obj)
            return len(reqs) >= 3
        pclib.wait_for(lines, 10, "three request lines")
        man, blob, hit = reqs[0], reqs[1], reqs[2]
        check(man["status"] == 200 and man["cache"] == "miss" and man["route"] == "manifest",
              "manifest line: %r" % man)
        for k in ("up_token_ms", "up_redirect_ms", "up_first_byte_ms", "up_last_byte_ms"):
            check(k in man and k in blob, "%s missing from a miss: %r %r" % (k, man, blob))
        # The manifest went redirector -> 307 -> registry -> 401 -> token -> registry.
        check(float(man["up_token_ms"]) > 0 and float(man["up_redirect_ms"]) > 0,
              "manifest phases: %r" % man)
        check(float(blob["up_redirect_ms"]) > 0, "blob redirect phase: %r" % blob)
        check(float(blob["up_first_byte_ms"]) <= float(blob["up_last_byte_ms"]), "phase order")
        check(hit["cache"] == "hit" and "up_first_byte_ms" not in hit, "hit line: %r" % hit)
        check(isinstance(hit["status"], int) and isinstance(hit["bytes"], int), "numbers are numbers")
        # Every message follows "event key=value ...": nothing this run logged has free text,
        # and every event is one lowercase token.
        objs = [json.loads(l) for l in log_text(pc).splitlines()]
        free = [o for o in objs if "msg" in o]
        check(not free, "lines with free text (a \"msg\" field): %r" % free)
        bad = [o for o in objs if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", o["event"])]
        check(not bad, "events that are not lowercase-hyphen tokens: %r" % bad)


def test_upstream_connection_cap():
    d, imgs = images()
    img = imgs["kube-apiserver"]
    layers = biggest_layers(img, 3)
    with pclib.TestEnv("appl-cap") as env:
        up = env.start_upstream(d)
        conf = write(env.path("cap.conf"), "[upstream \"registry.k8s.io\"]\nurl = %s\n"
                     "max_connections = 1\n" % up.url)
        pc = env.start_pullcache(args=["--config", conf])
        up.faults([{"role": "blobs", "path_re": l["digest"].split(":", 1)[1], "fault": "slow",
                    "chunk": 65536, "delay_ms": 15} for l in layers])
        peak = {"active": 0, "queued": 0}
        u = '{upstream="registry.k8s.io"}'
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(http, "GET", pc.url + "/v2/kube-apiserver/blobs/" + l["digest"],
                              None, None, 120) for l in layers]
            while not all(f.done() for f in futs):
                m, _ = pclib.metrics(pc, raw=True)
                peak["active"] = max(peak["active"], m["pullcache_upstream_active_fetches" + u])
                peak["queued"] = max(peak["queued"], m["pullcache_upstream_queued_fetches" + u])
                time.sleep(0.05)
            rs = [f.result() for f in futs]
        for l, r in zip(layers, rs):
            check(r.status == 200 and sha256_digest(r.body) == l["digest"], "capped pull %d" % r.status)
        check(peak["active"] == 1, "max_connections = 1 but %d fetches ran at once" % peak["active"])
        check(peak["queued"] >= 1, "no fetch ever waited for the cap")
        check(re.search(r"up_queue_ms=\d", log_text(pc)), "no up_queue_ms on a queued request")


def test_credentials_file_basic_auth():
    """An upstream that wants a login (distribution with htpasswd): the credentials_file is
    used, a wrong one is refused, and check-config never shows the secret."""
    d, imgs = images("tiny")
    img = imgs["pause"]
    with pclib.TestEnv("appl-creds") as env:
        hp = env.path("htpasswd")
        with open(hp, "wb") as f:
            f.write(subprocess.run(["htpasswd", "-Bbn", "puller", "s3cret pass"], check=True,
                                   stdout=subprocess.PIPE, timeout=30).stdout)
        reg = env.start_docker_registry(htpasswd=hp)
        pclib.skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                     "--dest-creds", "puller:s3cret pass", "oci:" + os.path.join(d, img["layout_dir"]),
                     "docker://127.0.0.1:%d/pause:%s" % (reg.port, img["tag"]))
        good = write(env.path("good.cred"), "puller:s3cret pass\n")
        bad = write(env.path("bad.cred"), "puller:wrong\n")
        layer = biggest_layers(img)[0]
        # A refused login is 403 DENIED to the client (a 401 would ask the client to log in to
        # the mirror, which has no accounts).
        for name, cred, want in (("good", good, 200), ("bad", bad, 403)):
            conf = write(env.path(name + ".conf"), "[upstream \"registry.k8s.io\"]\nurl = %s\n"
                         "credentials_file = %s\n" % (reg.url, cred))
            r = run_pc("check-config", "--config", conf)
            check(r.returncode == 0 and cred.encode() in r.stdout and b"s3cret" not in r.stdout
                  and b"wrong" not in r.stdout, "check-config with credentials: %r" % r.stdout)
            pc = env.start_pullcache(args=["--config", conf], name="pc-" + name)
            r = http("GET", pc.url + "/v2/pause/manifests/" + img["tag"],
                     {"Accept": img["index_media_type"]})
            check(r.status == want, "%s credentials: manifest %d %r" % (name, r.status, r.body[:200]))
            r = http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"])
            check(r.status == want, "%s credentials: blob %d" % (name, r.status))
            if want == 403:
                check(b'"DENIED"' in r.body, "refused login: %r" % r.body)
            if want == 200:
                check(sha256_digest(r.body) == layer["digest"], "blob through Basic auth")
            check(b"s3cret" not in open(pc.log_path, "rb").read(), "the password reached the log")


def test_tls_upstream_with_ca_file():
    """An HTTPS upstream signed by a private CA: trusted through the upstream's ca_file, and
    refused (502, nothing cached) without it, so TLS is really verified."""
    d, imgs = images("tiny")
    img = imgs["pause"]
    layer = biggest_layers(img)[0]
    with pclib.TestEnv("appl-tls") as env:
        ca, ca_key = env.path("ca.pem"), env.path("ca.key")
        crt, key, csr = env.path("srv.pem"), env.path("srv.key"), env.path("srv.csr")
        ext = write(env.path("san.ext"), "subjectAltName=IP:127.0.0.1\n")

        def ssl(*args):
            subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
            "-days", "2", "-subj", "/CN=pullcache test CA")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
            "-subj", "/CN=127.0.0.1")
        ssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "2", "-extfile", ext)
        reg = env.start_docker_registry(tls=(crt, key))
        pclib.skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                     "oci:" + os.path.join(d, img["layout_dir"]),
                     "docker://127.0.0.1:%d/pause:%s" % (reg.port, img["tag"]))
        for name, ca_line, want in (("trusted", "ca_file = %s\n" % ca, 200), ("untrusted", "", 502)):
            conf = write(env.path(name + ".conf"), "[upstream \"registry.k8s.io\"]\nurl = %s\n%s"
                         % (reg.url, ca_line))
            pc = env.start_pullcache(args=["--config", conf], name="pc-" + name)
            r = http("GET", pc.url + "/v2/pause/manifests/" + img["tag"],
                     {"Accept": img["index_media_type"]})
            check(r.status == want, "%s CA: manifest %d %r" % (name, r.status, r.body[:200]))
            r = http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"])
            check(r.status == want, "%s CA: blob %d" % (name, r.status))
            if want == 200:
                check(sha256_digest(r.body) == layer["digest"], "blob over TLS")
            else:
                check(re.search(r"upstream-transfer-failed .*curl=60", log_text(pc)),
                      "no certificate verification failure logged:\n" + log_text(pc)[-2000:])
                m, _ = pclib.metrics(pc, raw=True)
                check(m["pullcache_store_blobs"] == 0, "something was cached from an untrusted peer")


def test_fsck_refuses_a_path_without_a_store_and_strays_are_not_repairs():
    with pclib.TestEnv("appl-fsck") as env:
        typo = env.path("no-such-store")
        r = run_pc("fsck", "--store", typo)
        err = r.stderr.decode()
        check(r.returncode == 2 and ("no store at " + typo) in err,
              "fsck on a typo: rc %d stderr %r" % (r.returncode, err))
        check(not os.path.exists(typo), "fsck created a store at a mistyped path")
        empty = env.path("empty-dir")
        os.makedirs(empty)
        r = run_pc("fsck", "--store", empty)
        check(r.returncode == 2 and os.listdir(empty) == [], "fsck on an empty dir: rc %d %r"
              % (r.returncode, os.listdir(empty)))
        # a store made by serve, with a stray file: reported every run, exit 0 (nothing repaired)
        store = env.path("store")
        pc = env.start_pullcache(args=["--offline"], store=store, name="pc-fsck")
        pc.stop()
        stray = os.path.join(store, "blobs", "sha256", "not-a-fanout-dir")
        write(stray, "x")
        for _ in range(2):
            r = run_pc("fsck", "--store", store)
            out = r.stdout.decode()
            check(r.returncode == 0 and "stray:" in out and "stray=1" in out,
                  "fsck with a stray: rc %d %s" % (r.returncode, out))


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_check_config_and_bad_files, test_notify_reload_under_load_and_drain,
                     test_reload_applies_limits_timeouts_and_logging,
                     test_reload_to_offline_while_a_refused_fill_has_joiners,
                     test_readyz, test_x_cache_and_metrics_promtool,
                     test_json_logs_with_phase_timings, test_upstream_connection_cap,
                     test_credentials_file_basic_auth, test_tls_upstream_with_ca_file,
                     test_fsck_refuses_a_path_without_a_store_and_strays_are_not_repairs]))
