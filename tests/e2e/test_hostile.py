#!/usr/bin/python3
"""Hostile upstreams (issue 17): the test upstream (tests/upstream/k8s_upstream.py) scripted with
fault rules — trickles, header injection, lying digests, non-JSON and oversized manifests,
redirects to internal addresses, corrupt bytes at any offset, a slow token endpoint, a pool
held by a stuck transfer. For each, checked from the answers, /metrics, /readyz and the
upstream's request log:
  - the client gets a clean answer: the right bytes, or an OCI error JSON with the right status
    (never a complete body that does not match its digest), within the configured bounds (every
    request below has a client timeout; none is a timing assertion);
  - nothing bad is stored: the digest is not in the store, and `pullcache fsck` finds the store
    clean after the daemon stops;
  - a request never waits behind a trickle: it restarts the stalled fill ([fetch] join_stall);
  - a fetch queued behind a held pool slot gets 503 + Retry-After after [fetch] queue_wait.

    PULLCACHE=build/pullcache python3 tests/e2e/test_hostile.py [test_name ...]
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = "application/vnd.oci.image.index.v1+json, " + OCI_MANIFEST + \
    ", application/vnd.docker.distribution.manifest.v2+json" + \
    ", application/vnd.docker.distribution.manifest.list.v2+json"


def images():
    d = pclib.make_images("tiny")
    return d, pclib.load_images(d)


def start_with(env, d, fetch="", upstream=""):
    up = env.start_upstream(d)
    cfg = env.path("pc.conf")
    with open(cfg, "w") as f:
        f.write("[store]\nmin_free = 0\n[fetch]\n%s\n[upstream \"registry.k8s.io\"]\nurl = %s\n%s\n"
                % (fetch, up.url, upstream))
    pc = env.start_pullcache(["--config", cfg])
    return up, pc


def metric(pc, name):
    body = http("GET", pc.url + "/metrics").body.decode()
    total = 0.0
    found = False
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    check(found, "metric %s exported" % name)
    return total


def oci_error(r, status, code="UNAVAILABLE"):
    check(r.status == status, "status %d, want %d: %r" % (r.status, status, r.body[:300]))
    check(r.headers.get("content-type", "").startswith("application/json"), "OCI error is JSON: %r" % r.headers)
    errs = json.loads(r.body)["errors"]
    check(errs and errs[0]["code"] == code, "OCI code %s: %r" % (code, errs))


def stored(pc, digest):
    """True when digest is committed in the store (its content-addressed file exists)."""
    hexd = digest.split(":", 1)[1]
    return os.path.exists(os.path.join(pc.store, "blobs", "sha256", hexd[:2], hexd))


def fsck_clean(env, pc):
    env.stop(pc)
    p = subprocess.run([os.environ["PULLCACHE"], "fsck", "--store", pc.store], capture_output=True,
                       text=True, timeout=120)
    check(p.returncode == 0, "fsck clean after the hostile upstream (rc %d):\n%s%s"
          % (p.returncode, p.stdout, p.stderr))


def no_header_injection(r):
    for k, v in r.headers.items():
        check(not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", k + v), "control byte in our header %r: %r" % (k, v))
    check("x-injected" not in r.headers, "no header smuggled in: %r" % r.headers)


def manifest_of(imgs, name):
    im = imgs[name]
    m = im["manifests"][0]
    return im, m


def test_trickle_does_not_hold_joiners():
    """A blob whose first upstream connection sends one byte every 400 ms (under any stall
    timer): /readyz and /metrics show the stalled fill; the next request restarts it on a fresh
    connection (Range from the last byte), joins, and every client gets the verified bytes."""
    d, imgs = images()
    im = imgs["kube-apiserver"]
    blob = max((b for b in im["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
    check(blob["size"] > 64 * 1024, "a layer bigger than the progress step")
    data = pclib.read_blob(d, im, blob["digest"])
    with pclib.TestEnv("hostile-trickle") as env:
        up, pc = start_with(env, d, fetch="join_stall = 2s\nmin_rate = 0")
        up.faults([{"role": "blobs", "path_re": blob["digest"][7:], "method": "GET", "fault": "slow",
                    "chunk": 1, "delay_ms": 400, "count": 1}])
        url = pc.url + "/v2/kube-apiserver/blobs/" + blob["digest"]
        results = {}

        def get(name):
            try:
                results[name] = http("GET", url, timeout=120)
            except Exception as e:  # noqa: BLE001 - reported below
                results[name] = e
        a = threading.Thread(target=get, args=("a",))
        a.start()
        pclib.wait_for(lambda: b"fills stalled" in http("GET", pc.url + "/readyz").body, 30,
                       "/readyz to report the stalled fill")
        r = http("GET", pc.url + "/readyz")
        check(r.status == 200, "a stalled fill leaves the mirror ready (cached content is served)")
        check(metric(pc, "pullcache_fills_stalled") == 1, "one stalled fill on /metrics")
        get("b")  # restarts the fill, joins it
        a.join(120)
        check(not a.is_alive(), "the first client finished")
        for n in ("a", "b"):
            r = results[n]
            check(not isinstance(r, Exception), "client %s: %r" % (n, r))
            check(r.status == 200 and r.body == data, "client %s got the verified blob (%d, %d bytes)"
                  % (n, r.status, len(r.body)))
        check(results["b"].headers.get("x-cache") == "JOIN", "b joined the restarted fill")
        check(metric(pc, "pullcache_fill_stall_restarts_total") == 1, "one restart counted")
        check(metric(pc, "pullcache_fills_stalled") == 0, "nothing stalled any more")
        gets = [e for e in up.log("blobs") if e["method"] == "GET" and blob["digest"][7:] in e["path"]]
        check(len(gets) == 2, "two upstream GETs: the trickle and the restart: %r" % gets)
        ranged = [e for e in gets if e.get("range")]
        check(len(ranged) == 1 and re.match(r"bytes=[1-9][0-9]*-$", ranged[0]["range"]),
              "the restart asked for the rest with Range: %r" % gets)
        fsck_clean(env, pc)


def test_queue_wait_limit():
    """max_connections = 1, and one transfer held (stalled upstream): a manifest miss behind it
    waits [fetch] queue_wait, then gets 503 + Retry-After and OCI UNAVAILABLE, unsent upstream;
    once the slot is free the same request is served."""
    d, imgs = images()
    im = imgs["etcd"]
    blob = max((b for b in im["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
    with pclib.TestEnv("hostile-queue") as env:
        # The held transfer stalls 60 s; stall_timeout ends it after 15 s (then it resumes,
        # clean): the slot is held for 15 s, far longer than the 1 s queue_wait needs.
        up, pc = start_with(env, d, fetch="queue_wait = 1s\nmin_rate = 0\nstall_timeout = 15s",
                            upstream="max_connections = 1")
        up.faults([{"role": "blobs", "path_re": blob["digest"][7:], "method": "GET", "fault": "stall",
                    "after": 100, "delay_ms": 60000, "count": 1}])
        results = {}

        def get():
            results["blob"] = http("GET", pc.url + "/v2/etcd/blobs/" + blob["digest"], timeout=120)
        t = threading.Thread(target=get)
        t.start()
        pclib.wait_for(lambda: up.count("blobs", blob["digest"][7:], "GET") == 0 and
                       metric(pc, "pullcache_upstream_active_fetches") == 1, 30,
                       "the held transfer to take the one slot")
        r = http("GET", pc.url + "/v2/etcd/manifests/" + im["tag"], headers={"Accept": ACCEPT}, timeout=60)
        oci_error(r, 503)
        check(r.headers.get("retry-after") == "5", "Retry-After on the 503: %r" % r.headers)
        check(metric(pc, "pullcache_upstream_queue_timeouts_total") == 1, "one queue timeout counted")
        check(up.count("registry", "/manifests/" + im["tag"]) == 0, "the queued fetch was never sent")
        t.join(120)
        check(results["blob"].status == 200 and hashlib.sha256(results["blob"].body).hexdigest() ==
              blob["digest"][7:], "the held transfer completes verified")
        r = http("GET", pc.url + "/v2/etcd/manifests/" + im["tag"], headers={"Accept": ACCEPT}, timeout=60)
        check(r.status == 200, "served once the slot is free: %d" % r.status)
        fsck_clean(env, pc)


def test_bad_manifest_answers_never_stored():
    """Header injection (CR, ESC, DEL in Content-Type), a lying Docker-Content-Digest, a body
    that is not JSON, one over max_manifest: each a 502 with OCI UNAVAILABLE, none of the
    upstream's bytes in our headers, the tag not cached (the next clean answer is fetched), and
    the store clean."""
    d, imgs = images()
    im = imgs["coredns/coredns"]
    tag_path = "/manifests/" + im["tag"]
    cases = [
        ("cr-injection", {"fault": "header", "name": "Content-Type",
                          "value": OCI_MANIFEST + "\rX-Injected: yes"}),
        ("esc", {"fault": "header", "name": "Content-Type", "value": "application/json\x1b[31m"}),
        ("del", {"fault": "header", "name": "Content-Type", "value": "application/\x7fjson"}),
        ("lying-digest", {"fault": "header", "name": "Docker-Content-Digest", "value": "sha256:" + "ab" * 32}),
        ("bad-digest-grammar", {"fault": "header", "name": "Docker-Content-Digest", "value": "sha256:xyz"}),
        ("not-json", {"fault": "body", "body": "<html>captive portal</html>"}),
        ("oversized", {"fault": "body", "body": "{\"a\":\"" + "x" * 1023, "repeat": 5000}),
    ]
    with pclib.TestEnv("hostile-manifests") as env:
        up, pc = start_with(env, d)
        for name, rule in cases:
            rule = dict(rule, role="registry", path_re=re.escape(tag_path) + "$", method="GET")
            up.faults([rule])
            r = http("GET", pc.url + "/v2/coredns/coredns" + tag_path, headers={"Accept": ACCEPT}, timeout=60)
            no_header_injection(r)
            oci_error(r, 502)
            up.faults([])
            n = up.count("registry", tag_path, "GET")
            r = http("GET", pc.url + "/v2/coredns/coredns" + tag_path, headers={"Accept": ACCEPT}, timeout=60)
            check(r.status == 200 and r.headers.get("docker-content-digest") == im["index_digest"],
                  "%s: the clean answer after it is the real manifest (%d %r)" % (name, r.status, r.headers))
            check(up.count("registry", tag_path, "GET") == n + 1, "%s: nothing was cached from it" % name)
            check(r.headers.get("x-cache") in ("MISS", "REVALIDATED"), "%s: %r" % (name, r.headers))
            # the next case starts from an empty store (the tag must be a miss again)
            env.stop(pc)
            fsck = subprocess.run([os.environ["PULLCACHE"], "fsck", "--store", pc.store],
                                  capture_output=True, text=True, timeout=120)
            check(fsck.returncode == 0, "%s: fsck clean:\n%s%s" % (name, fsck.stdout, fsck.stderr))
            shutil.rmtree(pc.store)
            pc = env.start_pullcache(pc.argv[pc.argv.index("--config"):pc.argv.index("--config") + 2],
                                     store=pc.store, port=pc.port, name="pc-%s" % name)
        fsck_clean(env, pc)


def test_redirect_to_internal_refused():
    """A manifest answered with a 307 to the cloud metadata address (link-local) and a blob
    redirected to a private address: refused before any connection (502), nothing stored."""
    d, imgs = images()
    im = imgs["pause"]
    layer = next(b for b in im["blobs"] if b["kind"] == "layer")
    with pclib.TestEnv("hostile-redirect") as env:
        up, pc = start_with(env, d)
        up.faults([{"role": "registry", "path_re": "/manifests/", "fault": "redirect",
                    "location": "http://169.254.169.254/latest/meta-data/"},
                   {"role": "redirector", "path_re": "/blobs/", "fault": "redirect",
                    "location": "http://10.255.255.1:9/x"}])
        r = http("GET", pc.url + "/v2/pause/manifests/" + im["tag"], headers={"Accept": ACCEPT}, timeout=60)
        oci_error(r, 502)
        r = http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"], timeout=60)
        oci_error(r, 502)
        check(not stored(pc, layer["digest"]), "the blob was not stored")
        with open(pc.log_path) as f:
            log = f.read()
        check(log.count("upstream-redirect-refused") >= 2, "both refusals logged:\n%s" % log[-2000:])
        check("169.254.169.254" not in re.findall(r"egress-new-host .*", log).__str__() and
              "10.255.255.1" not in re.findall(r"egress-new-host .*", log).__str__(),
              "a refused target is not reported as egress to allow:\n%s" % log[-2000:])
        fsck_clean(env, pc)


def test_corrupt_bytes_anywhere():
    """A blob with one byte flipped at the first, a middle and the last offset: no client gets
    a complete body (it is cut short, or an error), the digest is never stored, and a clean
    fetch afterwards serves the right bytes."""
    d, imgs = images()
    im = imgs["kube-proxy"]
    blob = max((b for b in im["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
    data = pclib.read_blob(d, im, blob["digest"])
    with pclib.TestEnv("hostile-corrupt") as env:
        up, pc = start_with(env, d)
        url = pc.url + "/v2/kube-proxy/blobs/" + blob["digest"]
        for i, at in enumerate((0, blob["size"] // 2, blob["size"] - 1)):
            up.faults([{"role": "blobs", "path_re": blob["digest"][7:], "method": "GET",
                        "fault": "corrupt", "after": at, "count": 1}])
            try:
                r = http("GET", url, timeout=60)
                check(r.body != data or r.status != 200, "never the bytes as a success")
                check(len(r.body) < blob["size"] or r.status >= 500,
                      "offset %d: no complete body (%d, %d bytes)" % (at, r.status, len(r.body)))
            except (pclib.httpclient.IncompleteRead, ConnectionError):
                pass  # cut short: the client sees a broken transfer, as it must
            check(metric(pc, "pullcache_digest_mismatches_total") == i + 1, "the mismatch was counted")
            check(not stored(pc, blob["digest"]), "offset %d: nothing stored" % at)
        up.faults([])
        r = http("GET", url, timeout=60)
        check(r.status == 200 and r.body == data, "the clean fetch afterwards is right")
        fsck_clean(env, pc)


def test_slow_token_endpoint_bounded():
    """A token endpoint that answers after 4 s with first_byte_timeout = 1s: the pull fails
    with 504 (UNAVAILABLE) instead of hanging; when the endpoint recovers the pull works."""
    d, imgs = images()
    im = imgs["pause"]
    with pclib.TestEnv("hostile-token") as env:
        up, pc = start_with(env, d, fetch="first_byte_timeout = 1s")
        up.faults([{"role": "token", "fault": "delay", "delay_ms": 4000}])
        r = http("GET", pc.url + "/v2/pause/manifests/" + im["tag"], headers={"Accept": ACCEPT}, timeout=60)
        oci_error(r, 504)
        up.faults([])
        r = http("GET", pc.url + "/v2/pause/manifests/" + im["tag"], headers={"Accept": ACCEPT}, timeout=60)
        check(r.status == 200 and r.headers.get("docker-content-digest") == im["index_digest"],
              "served once the token endpoint answers: %d" % r.status)
        fsck_clean(env, pc)


TESTS = [test_trickle_does_not_hold_joiners, test_queue_wait_limit, test_bad_manifest_answers_never_stored,
         test_redirect_to_internal_refused, test_corrupt_bytes_anywhere, test_slow_token_endpoint_bounded]

if __name__ == "__main__":
    sys.exit(pclib.run_tests(TESTS))
