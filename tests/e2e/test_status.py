#!/usr/bin/env python3
"""GET /status in a real browser (headless Chromium), and ?format=json against /metrics.

A pullcache with a small max_size in front of the test upstream. One big layer is served
slowly (the upstream's "slow" fault), so its fill is in flight while Chromium loads /status:
the rendered DOM must show that fill with a progress bar part-way, the usage bar against
max_size and the upstream as reachable. Then enough blobs are pulled to pass max_size; once
eviction has run, Chromium loads the page again and it must show the evictions and a usage
within the budget. Every load: no console message of level error or warning, and no request
the page made other than itself (Chromium's net log is read; the browser's own favicon fetch
is the one same-origin extra allowed); the screenshots are kept as artifacts in
$PC_BUILD/artifacts/status/. Chromium is told to resolve no name but 127.0.0.1 and to proxy
everything else to a closed port, so nothing leaves the machine.

The JSON model must agree with /metrics (same counters, read while nothing moves), and
`[server] status = off` must make /status a 404 while /metrics still answers.
"""
import concurrent.futures
import html.parser
import http.server as http_server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, metrics  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---- the browser --------------------------------------------------------------------------------
class Dom(html.parser.HTMLParser):
    """Every element as (tag, attrs dict, text inside it, direct text only)."""

    def __init__(self):
        super().__init__()
        self.elems, self.stack = [], []

    def handle_starttag(self, tag, attrs):
        e = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elems.append(e)
        if tag not in ("meta", "link", "br", "input", "img"):
            self.stack.append(e)

    def handle_endtag(self, tag):
        while self.stack:
            e = self.stack.pop()
            if e["tag"] == tag:
                break

    def handle_data(self, data):
        for e in self.stack:
            e["text"] += data

    def find(self, tag=None, **attrs):
        out = []
        for e in self.elems:
            if tag and e["tag"] != tag:
                continue
            if all(e["attrs"].get(k.replace("_", "-")) == v for k, v in attrs.items()):
                out.append(e)
        return out


def chromium(env, url, shot, tag):
    """Load URL twice in headless Chromium: --dump-dom (returns the parsed DOM, after the page
    ran) and --screenshot SHOT. Checks the console and the net log of both runs."""
    check(CHROMIUM is not None, "chromium is not installed (scripts/bootstrap installs it)")
    origin = url.split("/status")[0]
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
              "--disable-client-side-phishing-detection",
              "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck",
              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
              "--proxy-server=http://127.0.0.1:9",  # loopback bypasses it; the rest goes nowhere
              "--enable-logging=stderr", "--v=0"]
    runs = [("dom", ["--dump-dom"]),
            ("shot", ["--screenshot=" + shot, "--window-size=1920,1080"]),
            ("phone", ["--screenshot=" + shot.replace(".png", "-phone.png"), "--window-size=412,915"])]
    dom = None
    for name, extra in runs:
        prof = env.path("chromium-%s-%s" % (tag, name))
        netlog = prof + ".netlog.json"
        argv = common + ["--user-data-dir=" + prof, "--log-net-log=" + netlog] + extra + [url]
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
        err = p.stderr.decode("utf-8", "replace")
        check(p.returncode == 0, "chromium %s exited %d:\n%s" % (name, p.returncode, err[-3000:]))
        console = [ln for ln in err.splitlines() if ":CONSOLE" in ln]
        check(not console, "console messages on /status (%s): %s" % (name, console))
        check_netlog(netlog, url, origin)
        if name == "dom":
            dom = Dom()
            dom.feed(p.stdout.decode("utf-8", "replace"))
        else:
            s = shot if name == "shot" else shot.replace(".png", "-phone.png")
            check(os.path.exists(s) and os.path.getsize(s) > 1000, "no screenshot at %s" % s)
    return dom


def check_netlog(path, page, origin):
    """Every request the page started (initiator: its origin) must be the browser's favicon
    fetch; the page itself must have been fetched."""
    with open(path) as f:
        text = f.read()
    try:
        log = json.loads(text)
    except ValueError:
        log = json.loads(text.rstrip().rstrip(",") + "]}")  # a log cut at exit
    types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls, by_page = [], []
    for e in log["events"]:
        if types.get(e["type"]) != "URL_REQUEST_START_JOB":
            continue
        p = e.get("params", {})
        urls.append(p.get("url"))
        if p.get("initiator") == origin:
            by_page.append(p.get("url"))
    check(page in urls, "the net log does not show the page itself: %s" % urls)
    extra = [u for u in by_page if u != origin + "/favicon.ico"]
    check(not extra, "/status made requests of its own: %s" % extra)
    # nothing cross-origin at all, whoever started it, reached a host (the page had no way to)
    loaded = [u for u in by_page if not u.startswith(origin + "/")]
    check(not loaded, "cross-origin loads: %s" % loaded)


# ---- the mirror --------------------------------------------------------------------------------


def status_json(server):
    r = http("GET", server.url + "/status?format=json")
    check(r.status == 200, "/status?format=json answered %d" % r.status)
    check(r.headers.get("content-type", "").startswith("application/json"), "JSON content type")
    return json.loads(r.body)


def compare_with_metrics(server):
    """The JSON model and /metrics, read back to back while nothing runs, say the same."""
    s, m = status_json(server), metrics(server)
    c, mi = s["cache"], s["mirror"]
    pairs = [
        (c["served_bytes"]["store"], m['pullcache_served_bytes_total{source="store"}']),
        (c["served_bytes"]["upstream"], m['pullcache_served_bytes_total{source="upstream"}']),
        (c["blob_bytes"], m["pullcache_store_blob_bytes"]),
        (c["blobs"], m["pullcache_store_blobs"]),
        (c["manifests"], m["pullcache_store_manifests"]),
        (c["tags"], m["pullcache_store_tags"]),
        (c["max_size"], m["pullcache_store_max_size_bytes"]),
        (c["pinned_bytes"], m["pullcache_store_pinned_bytes"]),
        (c["evictions"]["runs"], sum(v for k, v in m.items() if k.startswith("pullcache_evictions_total"))),
        (c["evictions"]["bytes"], sum(v for k, v in m.items() if k.startswith("pullcache_evicted_bytes_total"))),
        (mi["fills_started"], m["pullcache_fills_started_total"]),
        (mi["fills_committed"], m["pullcache_fills_committed_total"]),
        (mi["fills_failed"], m["pullcache_fills_failed_total"]),
        (mi["fills_in_flight"], m["pullcache_fills_in_flight"]),
        (mi["fill_joins"], m["pullcache_fill_joins_total"]),
        (mi["digest_mismatches"], m["pullcache_digest_mismatches_total"]),
        (mi["passthrough_fills"], m["pullcache_passthrough_fills_total"]),
        (s["reloads"]["ok"], m['pullcache_config_reloads_total{result="ok"}']),
        (s["start_time"], m["pullcache_start_time_seconds"]),
        (1 if s["ready"]["ok"] else 0, m["pullcache_ready"]),
    ]
    for kind in ("manifest", "blob"):
        for outcome, n in c["requests"][kind].items():
            pairs.append((n, m['pullcache_cache_requests_total{kind="%s",outcome="%s"}' % (kind, outcome)]))
    for u in s["upstreams"]:
        lab = '{upstream="%s"}' % u["name"]
        pairs += [(u["fetches"], m["pullcache_upstream_fetches_total" + lab]),
                  (u["requests"], m["pullcache_upstream_requests_total" + lab]),
                  (u["received_bytes"], m["pullcache_upstream_received_bytes_total" + lab]),
                  (u["active"], m["pullcache_upstream_active_fetches" + lab]),
                  (u["queued"], m["pullcache_upstream_queued_fetches" + lab]),
                  (u["reachable"], m["pullcache_upstream_reachable" + lab]),
                  (u["breaker"]["opened"], m["pullcache_upstream_rate_limit_opened_total" + lab]),
                  (u["first_byte"]["count"], m["pullcache_upstream_first_byte_seconds_count" + lab])]
    bad = [(i, a, b) for i, (a, b) in enumerate(pairs) if a != b]
    check(not bad, "/status?format=json and /metrics disagree (index, json, metrics): %s" % bad)
    return s


def layers(img):
    return [b for b in img["blobs"] if b["kind"] == "layer"]


def test_status_in_a_browser():
    d = pclib.make_images("small")
    imgs = pclib.load_images(d)
    art = os.path.join(pclib.build_dir(), "artifacts", "status")
    os.makedirs(art, exist_ok=True)
    with pclib.TestEnv("status") as env:
        up = env.start_upstream(d)
        max_size = 3 << 20
        conf = env.path("pc.conf")
        with open(conf, "w") as f:
            f.write("[store]\nmax_size = %d\nmin_free = 0\n[upstream \"registry.k8s.io\"]\nurl = %s\n"
                    % (max_size, up.url))
        pc = env.start_pullcache(["--config", conf])
        etcd = imgs["etcd"]
        big = max(layers(etcd), key=lambda b: b["size"])
        data = pclib.read_blob(d, etcd, big["digest"])
        hexd = big["digest"].split(":", 1)[1]
        # about 100 KiB/s: the 1.5 MiB layer takes ~16 s, far longer than a page load
        up.faults([{"role": "blobs", "path_re": hexd, "fault": "slow", "chunk": 8192, "delay_ms": 80}])
        r = http("GET", pc.url + "/v2/pause/manifests/" + imgs["pause"]["tag"])
        check(r.status == 200, "pause manifest: %d" % r.status)
        url = pc.url + "/v2/etcd/blobs/" + big["digest"]
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            first = ex.submit(http, "GET", url, None, None, 120)

            def filling():
                fills = status_json(pc)["fills"]
                return fills and fills[0]["written"] > 0 and fills[0]["total"]
            pclib.wait_for(filling, 20, "the slow fill to show bytes on /status")
            joiner = ex.submit(http, "GET", url, None, None, 120)
            pclib.wait_for(lambda: status_json(pc)["fills"][0]["subscribers"] == 2, 10,
                           "the second request to join the fill")

            dom = chromium(env, pc.url + "/status", os.path.join(art, "status-filling.png"), "filling")
            rows = dom.find("tr", data_digest=big["digest"])
            check(len(rows) == 1, "no fill row for %s in the DOM" % big["digest"])
            bars = [e for e in dom.elems if e["tag"] == "progress"]
            check(len(bars) == 1, "one progress bar per fill: %d" % len(bars))
            val, mx = float(bars[0]["attrs"]["value"]), float(bars[0]["attrs"]["max"])
            check(mx == big["size"] and 0 < val < mx,
                  "fill progress %s of %s (size %d): not part-way" % (val, mx, big["size"]))
            check(rows[0]["attrs"].get("data-subscribers") == "2", "the fill row's clients: %s" % rows[0]["attrs"])
            ups = dom.find("tr", data_name="registry.k8s.io")
            check(len(ups) == 1 and ups[0]["attrs"].get("data-state") == "reachable",
                  "upstream row: %s" % [u["attrs"] for u in ups])
            meters = dom.find("meter", id="usage")
            check(len(meters) == 1 and float(meters[0]["attrs"]["max"]) == max_size,
                  "usage bar against max_size: %s" % [m["attrs"] for m in meters])
            check(dom.find("span", id="ready") and dom.find("span", id="ready")[0]["attrs"]["data-ready"] == "1",
                  "ready badge")
            check(any("/v2/pause/manifests/" in e["text"] for e in dom.find("tr")),
                  "the last requests do not list the manifest request")
            r1, r2 = first.result(), joiner.result()
        check(r1.status == 200 and r1.body == data and r2.status == 200 and r2.body == data,
              "the slow blob: %d %d" % (r1.status, r2.status))
        # verified bytes reach the clients before the commit ends the fill
        pclib.wait_for(lambda: not status_json(pc)["fills"], 10, "the fill to leave /status")
        up.faults([])

        # pass the budget: eviction runs in the background within a quarter second
        for name in ("kube-apiserver", "kube-proxy"):
            for b in layers(imgs[name]):
                r = http("GET", pc.url + "/v2/%s/blobs/%s" % (name, b["digest"]), timeout=60)
                check(r.status == 200, "%s blob: %d" % (name, r.status))
        pclib.wait_for(lambda: status_json(pc)["cache"]["evictions"]["runs"] > 0
                       and status_json(pc)["cache"]["blob_bytes"] <= max_size, 30,
                       "an eviction run, shown on /status")
        time.sleep(0.5)  # let the survey/run settle before the comparison
        s = compare_with_metrics(pc)
        check(s["cache"]["hit_ratio"]["m1"] is not None, "no hit ratio over the last minute")
        dom = chromium(env, pc.url + "/status", os.path.join(art, "status-evicted.png"), "evicted")
        ev = dom.find("td", id="evictions")
        check(len(ev) == 1 and int(ev[0]["attrs"]["data-runs"]) == s["cache"]["evictions"]["runs"],
              "evictions in the DOM: %s" % [e["attrs"] for e in ev])
        meter = dom.find("meter", id="usage")[0]["attrs"]
        check(float(meter["value"]) == s["cache"]["blob_bytes"] and float(meter["value"]) <= max_size,
              "usage bar after eviction: %s" % meter)
        check(not dom.find("progress"), "a progress bar with no fill in flight")
        check(not [e for e in dom.elems if e["tag"] in ("script", "img", "link", "iframe")],
              "the page has scripts or external elements")
        hosts = [e["text"] for e in dom.elems if e["tag"] == "section" and e["attrs"].get("id") == "egress"]
        check(hosts and "127.0.0.1" in hosts[0], "the egress hosts do not list the upstream")

        # HEAD works, the CSP header forbids loading anything
        r = http("GET", pc.url + "/status")
        csp = r.headers.get("content-security-policy", "")
        check(r.status == 200 and "default-src 'none'" in csp, "CSP header: %r" % csp)


class BadPages(http_server.BaseHTTPRequestHandler):
    """/status: a page that loads a style sheet from another origin; /status-console: one that
    logs a console error. Headers and body go out in one write."""
    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/status":
            body = b'<!DOCTYPE html><link rel="stylesheet" href="http://127.0.0.2:9/x.css"><p>x</p>'
        elif self.path == "/status-console":
            body = b'<!DOCTYPE html><p>x</p><script>console.error("boom")</script>'
        else:
            body = b"no"
        self.wfile.write(b"HTTP/1.1 %d OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (200 if body != b"no" else 404, len(body), body))


def test_browser_checks_catch_bad_pages():
    """The checks above can fail: a page loading a cross-origin style sheet, and one logging a
    console error, are both caught."""
    srv = http_server.ThreadingHTTPServer(("127.0.0.1", 0), BadPages)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        with pclib.TestEnv("status-bad") as env:
            base = "http://127.0.0.1:%d" % srv.server_address[1]
            for path, want in (("/status", "requests of its own"), ("/status-console", "console messages")):
                try:
                    chromium(env, base + path, env.path("bad.png"), "bad")
                except pclib.CheckFailed as e:
                    check(want in str(e), "%s failed for another reason: %s" % (path, e))
                else:
                    raise pclib.CheckFailed("the browser checks passed %s" % path)
    finally:
        srv.shutdown()
        srv.server_close()


def test_status_off():
    with pclib.TestEnv("status-off") as env:
        conf = env.path("pc.conf")
        with open(conf, "w") as f:
            f.write("[server]\nstatus = off\n[store]\nmin_free = 0\n")
        pc = env.start_pullcache(["--config", conf, "--offline"])
        r = http("GET", pc.url + "/status")
        check(r.status == 404, "status = off: /status answered %d" % r.status)
        r = http("GET", pc.url + "/status?format=json")
        check(r.status == 404, "status = off: ?format=json answered %d" % r.status)
        check(http("GET", pc.url + "/metrics").status == 200, "/metrics still answers")


if __name__ == "__main__":
    pclib.run_tests([test_status_in_a_browser, test_browser_checks_catch_bad_pages, test_status_off])
