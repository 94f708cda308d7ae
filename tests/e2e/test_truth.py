#!/usr/bin/python3
"""End to end: the mirror answers with the upstream's truth (issue 13).

Two test upstreams: "registry.k8s.io" (the k8s-like one: referrers answered 404 at its edge,
signature tags on their own host, blobs on a CDN-like host, manifests on a regional host) and
"harbor.local" (the same program with the referrers API on). Checked from the answers and from
the upstreams' request logs:
  - referrers pass through (unfiltered, filtered, paginated with the Link pointed at the
    mirror), a 404 stays a 404, the cached answer is served when the upstream fails;
  - tags/list lists every upstream tag, with n / last / Link; the local tags, with a Warning,
    when the upstream cannot be asked;
  - a digest is served under a repository only where it was seen or the upstream confirms it;
  - a cosign .sig tag is pulled through the mirror from the signatures host and verified;
  - a 429 storm: one upstream request per Retry-After window (the probe), tags served stale,
    a miss parked until the window ends;

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_truth.py [test_name ...]
"""

import base64
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, http_json  # noqa: E402

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ACCEPT = OCI_INDEX + ", " + OCI_MANIFEST


def images():
    d = pclib.make_images("tiny")
    return d, pclib.load_images(d)


def two_upstreams(env, d, args=()):
    k8s = env.start_upstream(d)
    harbor = env.start_upstream(d)
    harbor.config(referrers_edge_404=False)
    pc = env.start_pullcache(upstream=k8s, args=["--upstream", "harbor.local=" + harbor.url] + list(args))
    return k8s, harbor, pc


def routes(up, route, role="registry"):
    return [e for e in up.log(role) if e.get("route") == route]


def descriptor(i, at):
    return {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(b"ref%d" % i).hexdigest(),
            "size": 100 + i, "artifactType": at}


def test_referrers_pass_through():
    d, imgs = images()
    with pclib.TestEnv("truth-referrers") as env:
        k8s, harbor, pc = two_upstreams(env, d)
        subject = imgs["pause"]["index_digest"]
        descs = [descriptor(i, "application/vnd.dev.cosign.artifact.sig.v1+json" if i % 2 else
                            "application/spdx+json") for i in range(7)]
        http_json("POST", harbor.url + "/_control/referrers", {"repo": "pause", "subject": subject,
                                                               "manifests": descs})
        base = pc.url + "/v2/harbor.local/pause/referrers/" + subject
        # unfiltered, one page
        r = http("GET", base)
        check(r.status == 200 and r.headers.get("content-type") == OCI_INDEX, "referrers %d %r" % (r.status, r.headers))
        check(json.loads(r.body)["manifests"] == descs, "every descriptor passed through: %r" % r.body)
        check("oci-filters-applied" not in r.headers, "no filter claimed")
        # filtered
        r = http("GET", base + "?artifactType=application%2Fspdx%2Bjson")
        got = json.loads(r.body)["manifests"]
        check(r.status == 200 and got == [x for x in descs if x["artifactType"] == "application/spdx+json"],
              "filtered: %r" % got)
        check(r.headers.get("oci-filters-applied") == "artifactType", "OCI-Filters-Applied passed on")
        # paginated: the Link points at the mirror (path prefix kept), the next page comes through it
        harbor.config(referrers_page=2)
        r = http("GET", base + "?artifactType=application%2Fvnd.dev.cosign.artifact.sig.v1%2Bjson")
        check(r.status == 200 and len(json.loads(r.body)["manifests"]) == 2, "page 1: %r" % r.body)
        link = r.headers.get("link", "")
        check(link.startswith("</v2/harbor.local/pause/referrers/" + subject + "?") and 'rel="next"' in link,
              "Link rewritten to the mirror: %r" % link)
        r2 = http("GET", pc.url + link[1:link.index(">")])
        sigs = [x for x in descs if "cosign" in x["artifactType"]]
        check(r2.status == 200 and json.loads(r2.body)["manifests"] == sigs[2:], "page 2: %r" % r2.body)
        check("link" not in r2.headers, "last page has no Link")
        # the k8s-like upstream answers referrers 404 at its edge: it stays 404
        r = http("GET", pc.url + "/v2/pause/referrers/" + subject)
        check(r.status == 404, "k8s-like upstream 404 stays 404: %d %r" % (r.status, r.body))
        check(len([e for e in k8s.log("redirector") if "/referrers/" in e["path"]]) == 1,
              "one upstream request for the 404")
        # cached: asking again is no upstream request (within the TTL)
        n = len(routes(harbor, "referrers"))
        r = http("GET", base)
        check(r.status == 200 and len(routes(harbor, "referrers")) == n, "cached answer within the TTL")
        # single flight: 10 concurrent askers of a new key (the upstream slow), one upstream
        # request (late ones find the cached answer: the count holds whatever the timing)
        harbor.faults([{"role": "registry", "path_re": "referrers", "fault": "stall", "after": 0, "delay_ms": 800}])
        import concurrent.futures
        other = pc.url + "/v2/harbor.local/pause/referrers/sha256:" + "4" * 64
        n = len(routes(harbor, "referrers"))
        with concurrent.futures.ThreadPoolExecutor(10) as ex:
            got = list(ex.map(lambda _: http("GET", other).status, range(10)))
        check(got == [200] * 10, "10 answers: %r" % got)
        check(len(routes(harbor, "referrers")) == n + 1, "one upstream request for 10 askers: %d"
              % (len(routes(harbor, "referrers")) - n))
        harbor.faults([])


def test_referrers_stale():
    d, imgs = images()
    with pclib.TestEnv("truth-referrers-stale") as env:
        k8s, harbor, pc = two_upstreams(env, d, ["--tag-ttl", "0"])
        subject = imgs["pause"]["index_digest"]
        descs = [descriptor(1, "application/spdx+json")]
        http_json("POST", harbor.url + "/_control/referrers", {"repo": "pause", "subject": subject,
                                                               "manifests": descs})
        base = pc.url + "/v2/harbor.local/pause/referrers/" + subject
        check(http("GET", base).status == 200, "first answer")
        # the upstream fails: the cached answer, stale, with a Warning
        harbor.faults([{"role": "redirector", "path_re": "referrers", "fault": "status", "status": 503}])
        r = http("GET", base)
        check(r.status == 200 and json.loads(r.body)["manifests"] == descs, "stale answer %d" % r.status)
        check(r.headers.get("warning", "").startswith("299 - "), "Warning on a stale answer: %r" % r.headers)
        # nothing cached for another subject: the upstream's error
        r = http("GET", pc.url + "/v2/harbor.local/pause/referrers/sha256:" + "3" * 64)
        check(r.status == 503, "no cache, upstream down: %d" % r.status)
        harbor.faults([])


def test_tags_from_upstream():
    d, imgs = images()
    with pclib.TestEnv("truth-tags") as env:
        k8s = env.start_upstream(d)
        # five tags upstream, none of them ever pulled through the mirror
        man = imgs["pause"]["index_digest"]
        for t in ("v1", "v2", "v3", "v4", "v5"):
            http_json("POST", k8s.url + "/_control/manifest", {
                "repo": "pause", "tag": t, "media_type": imgs["pause"]["index_media_type"],
                "manifest": base64.b64encode(open(os.path.join(d, imgs["pause"]["layout_dir"], "blobs", "sha256",
                                                               man[7:]), "rb").read()).decode()})
        pc = env.start_pullcache(upstream=k8s)
        want = sorted(["v1", "v2", "v3", "v4", "v5", imgs["pause"]["tag"]])
        r = http("GET", pc.url + "/v2/pause/tags/list")
        check(r.status == 200 and json.loads(r.body)["tags"] == want, "every upstream tag: %r" % r.body)
        r = http("GET", pc.url + "/v2/pause/tags/list?n=2")
        check(json.loads(r.body)["tags"] == want[:2], "n=2: %r" % r.body)
        link = r.headers.get("link", "")
        check(link == '</v2/pause/tags/list?n=2&last=%s>; rel="next"' % want[1], "Link: %r" % link)
        r = http("GET", pc.url + link[1:link.index(">")])
        check(json.loads(r.body)["tags"] == want[2:4], "page 2 through the Link: %r" % r.body)
        r = http("GET", pc.url + "/v2/pause/tags/list?n=0")
        check(r.status == 200 and json.loads(r.body)["tags"] == [], "n=0: %r" % r.body)
        r = http("GET", pc.url + "/v2/registry.k8s.io/pause/tags/list?n=2&last=" + want[2])
        check(json.loads(r.body)["tags"] == want[3:5], "path prefix + last: %r" % r.body)
        check(r.headers.get("link", "").startswith("</v2/registry.k8s.io/pause/tags/list?"), "prefix kept in Link %r"
              % r.headers.get("link"))
        r = http("GET", pc.url + "/v2/nothere/tags/list")
        check(r.status == 404, "upstream 404 stays 404: %d" % r.status)
        # n/last reached the upstream as sent
        qs = [e["query"] for e in routes(k8s, "tags")]
        check("n=2" in qs and "n=2&last=" + want[1] in qs and "n=0" in qs, "queries passed on: %r" % qs)
        # the upstream down, tag_ttl (300 s) not over: the cached list. A new query: the local tags.
        r = http("GET", pc.url + "/v2/pause/manifests/" + imgs["pause"]["tag"], {"Accept": ACCEPT})
        check(r.status == 200, "pull one tag")
        k8s.faults([{"role": "redirector", "path_re": "tags", "fault": "status", "status": 503}])
        r = http("GET", pc.url + "/v2/pause/tags/list")
        check(r.status == 200 and json.loads(r.body)["tags"] == want and "warning" not in r.headers,
              "cached list within tag_ttl: %r" % r.body)
        r = http("GET", pc.url + "/v2/pause/tags/list?n=100")
        check(r.status == 200 and json.loads(r.body)["tags"] == [imgs["pause"]["tag"]], "local tags: %r" % r.body)
        check(r.headers.get("warning", "").startswith("299 - "), "Warning says so: %r" % r.headers)
        with open(pc.log_path) as f:
            check("tags-from-cache upstream=registry.k8s.io repo=pause" in f.read(), "log line")


def pull_http(pc, name, tag):
    """Pull an image through the mirror with plain HTTP: the index, each manifest, its config and
    layers; every answer checked against its digest. Returns the blob digests."""
    r = http("GET", "%s/v2/%s/manifests/%s" % (pc.url, name, tag), {"Accept": ACCEPT})
    check(r.status == 200, "manifest %s:%s %d" % (name, tag, r.status))
    doc = json.loads(r.body)
    mans = [m["digest"] for m in doc.get("manifests", [])] or [None]
    blobs = []
    for dg in mans:
        if dg:
            r = http("GET", "%s/v2/%s/manifests/%s" % (pc.url, name, dg), {"Accept": ACCEPT})
            check(r.status == 200 and pclib.sha256_digest(r.body) == dg, "child manifest %s" % dg)
            m = json.loads(r.body)
        else:
            m = doc
        for b in [m["config"]] + m["layers"]:
            r = http("GET", "%s/v2/%s/blobs/%s" % (pc.url, name, b["digest"]))
            check(r.status == 200 and pclib.sha256_digest(r.body) == b["digest"], "blob %s" % b["digest"])
            blobs.append(b["digest"])
    return blobs


def test_repository_scoping():
    d, imgs = images()
    with pclib.TestEnv("truth-scope") as env:
        k8s = env.start_upstream(d)
        k8s.config(scoped_blobs=True)
        pc = env.start_pullcache(upstream=k8s)
        pause = pull_http(pc, "pause", imgs["pause"]["tag"])
        own = [b for b in pause if b not in set(b2["digest"] for b2 in imgs["etcd"]["blobs"])]
        check(own, "pause has blobs etcd lacks")
        # seen under pause; under etcd the upstream says 404: so does the mirror
        n0 = len(k8s.log())
        r = http("GET", pc.url + "/v2/etcd/blobs/" + own[0])
        check(r.status == 404 and json.loads(r.body)["errors"][0]["code"] == "BLOB_UNKNOWN",
              "a blob seen under pause is 404 under etcd: %d %r" % (r.status, r.body))
        heads = [e for e in k8s.log()[n0:] if e["method"] == "HEAD"]
        check(len(heads) >= 1 and all(e["method"] == "HEAD" for e in k8s.log()[n0:]),
              "asked with a HEAD, no body fetched: %r" % k8s.log()[n0:])
        # a manifest by digest likewise
        man = imgs["pause"]["index_digest"]
        r = http("GET", pc.url + "/v2/etcd/manifests/" + man, {"Accept": ACCEPT})
        check(r.status == 404, "manifest seen under pause is 404 under etcd: %d" % r.status)
        # a new image sharing layers with cached ones: each shared blob confirmed once (HEAD),
        # then recorded: a second pull asks nothing
        kp = pull_http(pc, "kube-proxy", imgs["kube-proxy"]["tag"])
        shared = sorted(set(b2["digest"] for b2 in imgs["kube-apiserver"]["blobs"]) & set(kp))
        check(shared, "kube-apiserver shares blobs with kube-proxy")
        n0 = len(k8s.log())
        pull_http(pc, "kube-apiserver", imgs["kube-apiserver"]["tag"])
        new_log = k8s.log()[n0:]
        heads = [e for e in new_log if e["method"] == "HEAD" and e["role"] == "redirector"]
        check(len(heads) == len(shared), "one HEAD per shared blob: %d HEADs, %d shared" % (len(heads), len(shared)))
        n1 = len(k8s.log())
        r = http("GET", pc.url + "/v2/kube-apiserver/blobs/" + shared[0])
        check(r.status == 200 and len(k8s.log()) == n1, "confirmed once, then recorded")
        print("scoping cost: kube-apiserver after kube-proxy: %d upstream requests, %d of them HEADs for "
              "%d shared blobs (before scoping: %d)" % (len(new_log), len([e for e in new_log if e["method"] == "HEAD"]),
                                                       len(shared), len(new_log) - len([e for e in new_log if e["method"] == "HEAD"])))
        # offline: only what was seen
        pc.stop()
        pc2 = env.start_pullcache(args=["--offline", "--upstream", "registry.k8s.io=" + k8s.url],
                                  store=pc.store, name="pullcache-offline")
        n0 = len(k8s.log())
        r = http("GET", pc2.url + "/v2/pause/blobs/" + own[0])
        check(r.status == 200, "offline: seen under pause, served")
        r = http("GET", pc2.url + "/v2/coredns/coredns/blobs/" + own[0])
        check(r.status == 404, "offline: never seen under coredns: 404 (%d)" % r.status)
        check(len(k8s.log()) == n0, "offline: no upstream request")


def test_429_storm_one_probe_per_window():
    import concurrent.futures
    import time
    d, imgs = images()
    with pclib.TestEnv("truth-429") as env:
        k8s = env.start_upstream(d)
        pc = env.start_pullcache(upstream=k8s, args=["--tag-ttl", "0"])
        tag_url = pc.url + "/v2/pause/manifests/" + imgs["pause"]["tag"]
        check(http("GET", tag_url, {"Accept": ACCEPT}).status == 200, "tag cached")
        # stored (the job answers first and writes on the store writer thread): until then a
        # request would be answered from the job and never revalidate
        pclib.wait_for(lambda: b"pullcache_manifest_jobs_in_flight 0" in http("GET", pc.url + "/metrics").body,
                       20, "the tag stored")
        k8s.faults([{"role": "redirector", "path_re": "manifests", "fault": "status", "status": 429,
                     "retry_after": 4}])

        def upstream_429s():
            return len([e for e in k8s.log("redirector") if e["status"] == 429])

        # the storm: 20 clients, 5 requests each, a revalidation every time (tag_ttl 0)
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            got = list(ex.map(lambda _: [http("GET", tag_url, {"Accept": ACCEPT}).status for _ in range(5)],
                              range(20)))
        flat = [x for g in got for x in g]
        check(flat == [200] * 100, "the tag served (stale) to every client: %r" % sorted(set(flat)))
        n1 = upstream_429s()
        check(n1 == 1, "one request reached the upstream in the window, not one per client: %d" % n1)
        # a miss while open waits (parked, bounded) instead of reaching the upstream
        miss_url = pc.url + "/v2/kube-proxy/manifests/" + imgs["kube-proxy"]["tag"]
        ex = concurrent.futures.ThreadPoolExecutor(1)
        miss = ex.submit(lambda: http("GET", miss_url, {"Accept": ACCEPT}))
        pclib.wait_for(lambda: b"pullcache_rate_limit_parked 1" in http("GET", pc.url + "/metrics").body,
                       10, "the miss parked")
        check(not miss.done() and upstream_429s() == n1, "the parked miss sent nothing upstream")
        r = http("GET", pc.url + "/readyz")
        check(r.status == 200 and b"rate-limited: registry.k8s.io" in r.body, "readyz says so: %r" % r.body)
        r = http("GET", pc.url + "/metrics")
        check(b'pullcache_upstream_rate_limited{upstream="registry.k8s.io"} 1' in r.body, "metrics: open")
        # the window ends: the parked miss is the one probe (answered 429 again: reopened, and
        # the miss gets the 429 with the upstream's Retry-After); the tags stay stale
        r = miss.result(timeout=60)
        ex.shutdown()
        check(r.status == 429 and r.headers.get("retry-after") == "4", "the miss, after the window: %d %r"
              % (r.status, r.headers.get("retry-after")))
        check(upstream_429s() == n1 + 1, "one probe per window: %d" % (upstream_429s() - n1))
        with concurrent.futures.ThreadPoolExecutor(20) as ex2:
            got = list(ex2.map(lambda _: http("GET", tag_url, {"Accept": ACCEPT}).status, range(40)))
        check(got == [200] * 40, "stale while reopened: %r" % sorted(set(got)))
        check(upstream_429s() == n1 + 1, "nothing more in the new window: %d" % (upstream_429s() - n1))
        # the upstream recovers: the next probe closes the breaker
        k8s.faults([])
        time.sleep(4.3)
        check(http("GET", tag_url, {"Accept": ACCEPT}).status == 200, "probe ok")
        r = http("GET", pc.url + "/metrics")
        check(b'pullcache_upstream_rate_limited{upstream="registry.k8s.io"} 0' in r.body, "metrics: closed")
        check(b'pullcache_upstream_rate_limit_opened_total{upstream="registry.k8s.io"} 2' in r.body, "opened twice")
        r = http("GET", pc.url + "/v2/kube-proxy/manifests/" + imgs["kube-proxy"]["tag"], {"Accept": ACCEPT})
        check(r.status == 200, "misses fetched again once closed: %d" % r.status)


def test_signature_tags_on_their_own_host():
    d, imgs = images()
    with pclib.TestEnv("truth-sig") as env:
        k8s = env.start_upstream(d)
        pc = env.start_pullcache(upstream=k8s)
        subject = imgs["pause"]["index_digest"]
        # a cosign-style signature: a manifest whose one layer is the simple-signing payload
        payload = json.dumps({"critical": {"image": {"docker-manifest-digest": subject},
                                           "type": "cosign container image signature"}}).encode()
        cfg = b"{}"
        sig_manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": pclib.sha256_digest(cfg), "size": len(cfg)},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": pclib.sha256_digest(payload), "size": len(payload),
                        "annotations": {"dev.cosignproject.cosign/signature": "MEUCIQ=="}}]}).encode()
        sig_tag = subject.replace(":", "-") + ".sig"
        got = http_json("POST", k8s.url + "/_control/manifest", {
            "repo": "pause", "tag": sig_tag, "media_type": OCI_MANIFEST,
            "manifest": base64.b64encode(sig_manifest).decode(),
            "blobs": [base64.b64encode(payload).decode(), base64.b64encode(cfg).decode()]})
        check(got["digest"] == pclib.sha256_digest(sig_manifest), "upstream has the signature")
        r = http("GET", pc.url + "/v2/pause/manifests/" + sig_tag, {"Accept": ACCEPT})
        check(r.status == 200 and r.body == sig_manifest and
              r.headers["docker-content-digest"] == pclib.sha256_digest(sig_manifest), ".sig tag pulled and verified")
        r = http("GET", pc.url + "/v2/pause/blobs/" + pclib.sha256_digest(payload))
        check(r.status == 200 and r.body == payload, "signature payload pulled and verified")
        check(json.loads(r.body)["critical"]["image"]["docker-manifest-digest"] == subject, "signs the subject")
        # the split: the signature tag came from the signatures host, its blob from the CDN host,
        # the image's own manifests from the regional host
        check(any(e["path"].endswith("/manifests/" + sig_tag) for e in k8s.log("sigs")), "sig tag on the sigs host")
        check(not any(e["path"].endswith("/manifests/" + sig_tag) for e in k8s.log("registry")),
              "sig tag not on the regional host")
        check(any(e["path"].endswith(pclib.sha256_digest(payload)) for e in k8s.log("blobs")), "blob from the CDN host")
        r = http("GET", pc.url + "/v2/pause/manifests/" + imgs["pause"]["tag"], {"Accept": ACCEPT})
        check(r.status == 200 and any("/manifests/" + imgs["pause"]["tag"] in e["path"] for e in k8s.log("registry")),
              "the image's manifest from the regional host")
        # cached like any tag: asked again, nothing upstream
        n = len(k8s.log())
        check(http("GET", pc.url + "/v2/pause/manifests/" + sig_tag, {"Accept": ACCEPT}).status == 200, "again")
        check(len(k8s.log()) == n, "sig tag cached")
        # the egress allow-list: exactly the hosts the test upstream redirected to
        import subprocess
        want = set("127.0.0.1:%d" % k8s.ports[r] for r in ("redirector", "registry", "blobs", "sigs"))
        out = subprocess.run([os.environ["PULLCACHE"], "egress", "--store", pc.store], capture_output=True,
                             text=True, timeout=30)
        rows = [l.split() for l in out.stdout.splitlines() if l and not l.startswith("#")]
        got = set("%s:%s" % (r[1], r[2]) for r in rows)
        check(out.returncode == 0 and got == want, "egress lists exactly the contacted hosts: %r vs %r\n%s"
              % (sorted(got), sorted(want), out.stdout))
        check(all(r[0] == "http" and r[3] == "registry.k8s.io" and int(r[4]) > 0 for r in rows), "rows %r" % rows)
        m = http("GET", pc.url + "/metrics").body.decode()
        check('pullcache_egress_requests_total{scheme="http",host="127.0.0.1",port="%d",upstream="registry.k8s.io"}'
              % k8s.ports["sigs"] in m, "egress on /metrics")
        out = subprocess.run([os.environ["PULLCACHE"], "egress", "--store", pc.store, "--check"], capture_output=True,
                             text=True, timeout=60)
        check(out.returncode == 0 and out.stdout.count("\nok   ") + out.stdout.startswith("ok   ") == 4,
              "--check reaches every host: %r" % out.stdout)
        env.stop(k8s)
        out = subprocess.run([os.environ["PULLCACHE"], "egress", "--store", pc.store, "--check"], capture_output=True,
                             text=True, timeout=60)
        check(out.returncode == 1 and "tcp:" in out.stdout and "FAIL" in out.stdout,
              "--check names the broken step: %r" % out.stdout)


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_referrers_pass_through, test_referrers_stale,
                              test_tags_from_upstream, test_repository_scoping,
                              test_429_storm_one_probe_per_window, test_signature_tags_on_their_own_host]))
