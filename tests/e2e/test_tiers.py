#!/usr/bin/python3
"""Tiers end to end: site pullcaches whose upstream is a regional pullcache (mirrors = ..., passed
on with ?ns=registry.k8s.io) in front of the registry.k8s.io-like test upstream (the origin), all
on loopback and started here. What reached the origin is read from its request log.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_tiers.py [test_name ...]
"""

import concurrent.futures
import http.client as http_client
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, sha256_digest, metrics  # noqa: E402

ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json"])
NS = "?ns=registry.k8s.io"


def images(scale="tiny"):
    d = pclib.make_images(scale)
    return d, pclib.load_images(d)


def get_verified(url, digest, accept=None, tries=1):
    """GET URL; the body must hash to DIGEST (when given). TRIES > 1: a client that retries (a
    connection error or a 5xx is tried again, at most TRIES times). Returns the body."""
    last = None
    for i in range(tries):
        if i:
            time.sleep(0.25 * i)  # a client backs off before it tries again
        try:
            r = http("GET", url, {"Accept": accept} if accept else None, timeout=60)
        except (OSError, http_client.HTTPException) as e:
            last = "error %r" % e
            continue
        if r.status == 200 and (digest is None or sha256_digest(r.body) == digest):
            return r.body
        last = "status %d" % r.status
        if r.status < 500:
            break
    raise pclib.CheckFailed("CHECK FAILED: GET %s: %s" % (url, last))


def pull_image(base, img, tries=1, ns=True):
    """What a node does: the tag, then every manifest and blob of the image, each verified
    against its digest. Returns the number of objects fetched."""
    q = NS if ns else ""
    top = get_verified("%s/v2/%s/manifests/%s%s" % (base, img["name"], img["tag"], q), None, ACCEPT, tries)
    check(sha256_digest(top) == img["index_digest"], "%s: tag resolved to another digest" % img["name"])
    n = 1
    for b in img["blobs"]:
        kind = "manifests" if b["kind"] in ("manifest", "index") else "blobs"
        body = get_verified("%s/v2/%s/%s/%s%s" % (base, img["name"], kind, b["digest"], q), b["digest"],
                            ACCEPT if kind == "manifests" else None, tries)
        check(len(body) == b["size"], "%s: %s has %d bytes, not %d" % (img["name"], b["digest"], len(body), b["size"]))
        n += 1
    return n


def content_digests(imgs):
    return {b["digest"] for img in imgs.values() for b in img["blobs"] if b["kind"] not in ("manifest", "index")}


def url_metric(m, name, url):
    return m.get('%s{upstream="registry.k8s.io",url="%s"}' % (name, url), -1)


def site_config(env, name, origin_url, mirrors, extra=""):
    p = env.path("%s.conf" % name)
    with open(p, "w") as f:
        f.write("[upstream \"registry.k8s.io\"]\nurl = %s\n" % origin_url)
        if mirrors:
            f.write("mirrors = %s\n" % " ".join(mirrors))
        f.write("down_after = 2\ndown_backoff = 60s\nfailover_connect_timeout = 1s\n" + extra)
    return p


def start_site(env, name, origin, regional, store=None):
    cfg = site_config(env, name, origin.url, [regional.url] if regional else [])
    return env.start_pullcache(args=["--config", cfg], name=name, store=store)


def pull_everywhere(sites, imgs, nodes, tries=1):
    """NODES concurrent nodes per site, each pulling every image; returns objects fetched."""
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(sites) * nodes) as ex:
        for s in sites:
            for _ in range(nodes):
                jobs.append(ex.submit(lambda s=s: sum(pull_image(s.url, img, tries) for img in imgs.values())))
        return sum(j.result(timeout=600) for j in jobs)


def test_two_sites_one_regional_then_failover():
    d, imgs = images()
    with pclib.TestEnv("tiers") as env:
        origin = env.start_upstream(d)
        regional = env.start_pullcache(upstream=origin, name="regional")
        sites = [start_site(env, "site%d" % i, origin, regional) for i in (1, 2)]

        # HEAD of an uncached blob at a site tier: looked up through the chain, real length and digest.
        img = imgs["kube-proxy"]
        layer = next(b for b in img["blobs"] if b["kind"] == "layer")
        r = http("HEAD", "%s/v2/%s/blobs/%s%s" % (sites[0].url, img["name"], layer["digest"], NS))
        check(r.status == 200, "HEAD of an uncached blob at the site: %d" % r.status)
        check(r.headers.get("content-length") == str(layer["size"]),
              "HEAD length %s, blob has %d" % (r.headers.get("content-length"), layer["size"]))
        check(r.headers.get("docker-content-digest") == layer["digest"], "HEAD digest %s" % r.headers)
        top = next(b for b in img["blobs"] if b["kind"] == "index")
        r = http("HEAD", "%s/v2/%s/manifests/%s%s" % (sites[1].url, img["name"], img["tag"], NS), {"Accept": ACCEPT})
        check(r.status == 200 and r.headers.get("docker-content-digest") == top["digest"],
              "HEAD of an uncached manifest at the other site: %d %s" % (r.status, r.headers))

        # Two sites x 10 nodes, every image, all at once: one fetch per blob at the origin.
        n = pull_everywhere(sites, imgs, 10)
        check(n > 0, "nothing pulled")
        gets = origin.blob_gets()
        for dg in content_digests(imgs):
            check(gets.get(dg) == 1, "blob %s fetched %s times from the origin (want 1)" % (dg, gets.get(dg)))
        check(sum(gets.values()) == len(content_digests(imgs)), "extra blob GETs at the origin: %s" % gets)
        for s in sites:
            m = metrics(s)
            check(url_metric(m, "pullcache_upstream_url_served_total", regional.url) > 0,
                  "%s: nothing served by the regional tier" % s.name)
            check(url_metric(m, "pullcache_upstream_url_tries_total", origin.url) == 0,
                  "%s: went to the origin while the regional tier was up" % s.name)
        # What reached the origin carries the whole chain: the site's Via entry, then the regional's.
        vias = {e["headers"].get("via") for e in origin.log() if e["role"] == "blobs"}
        check(vias and all(v and len(v.split(",")) == 2 for v in vias), "Via at the origin: %s" % vias)
        check(all(":%d" % regional.port in v.split(",")[1] for v in vias), "the regional's entry: %s" % vias)
        # The regional tier saw the sites' names in Via and the registry's name in ns=.
        with open(regional.log_path, "rb") as f:
            rlog = f.read().decode("utf-8", "replace")
        check("ns=registry.k8s.io" in rlog, "the regional access log shows no ns=registry.k8s.io")

        # The regional tier dies. Two new sites (empty stores, same configuration) pull everything:
        # they fail over to their second URL, the origin, and every pull completes verified.
        env.stop(regional)
        origin.reset()
        for s in sites:
            env.stop(s)
        sites2 = [start_site(env, "site%db" % i, origin, regional) for i in (1, 2)]
        n = pull_everywhere(sites2, imgs, 10)
        check(n > 0, "nothing pulled after the failover")
        gets = origin.blob_gets()
        for dg in content_digests(imgs):
            check(gets.get(dg) == 2, "after failover, blob %s fetched %s times (want once per site)" % (dg, gets.get(dg)))
        for s in sites2:
            m = metrics(s)
            fails = url_metric(m, "pullcache_upstream_url_failures_total", regional.url)
            skipped = url_metric(m, "pullcache_upstream_url_skipped_total", regional.url)
            served = url_metric(m, "pullcache_upstream_url_served_total", origin.url)
            check(fails >= 2 and served > 0, "%s: failures %s served %s" % (s.name, fails, served))
            check(url_metric(m, "pullcache_upstream_url_down", regional.url) == 1, "%s: regional not marked down" % s.name)
            # The breaker: once down, the dead parent is skipped instead of tried per fetch.
            check(skipped > 0 and fails < skipped, "%s: breaker did not skip (fails %s skipped %s)" % (s.name, fails, skipped))
            with open(s.log_path, "rb") as f:
                slog = f.read().decode("utf-8", "replace")
            check("up_url=%s" % origin.url in slog, "%s: the access log does not name the URL that served" % s.name)
            check("upstream-url-down" in slog, "%s: no upstream-url-down log line" % s.name)

        # The regional tier dies in the middle of the transfers: the origin sends the first 8 KiB
        # of the biggest layer, then holds the rest for 5 s; the regional passes those bytes on
        # and is killed meanwhile. The sites' fills resume from the origin (Range, through
        # failover), every pull completes verified (the nodes retry what failed, as kubelet does).
        for s in sites2:
            env.stop(s)
        origin.reset()
        big = max((b for img in imgs.values() for b in img["blobs"] if b["kind"] == "layer"),
                  key=lambda b: b["size"])
        origin.faults([{"role": "blobs", "path_re": big["digest"].split(":")[1], "fault": "stall",
                        "after": 8192, "delay_ms": 5000, "count": 1}])
        regional2 = env.start_pullcache(upstream=origin, name="regional2", port=regional.port)
        sites3 = [start_site(env, "site%dc" % i, origin, regional2) for i in (1, 2)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
            job = ex.submit(pull_everywhere, sites3, imgs, 5, 4)
            pclib.wait_for(lambda: origin.fault_state()[0].get("hits", 0) >= 1 or job.done(), 60,
                           "the origin to start sending the held layer")
            time.sleep(1.0)  # its first 8 KiB reach the sites (loopback); the rest is held 5 s
            check(not job.done(), "the pulls ended before the regional tier was killed")
            os.kill(regional2.pid, signal.SIGKILL)
            regional2.popen.wait(10)
            check(job.result(timeout=600) > 0, "nothing pulled after the mid-run kill")
        for s in sites3:
            m = metrics(s)
            check(url_metric(m, "pullcache_upstream_url_served_total", regional.url) > 0,
                  "%s: the regional tier served nothing before it died" % s.name)
            check(url_metric(m, "pullcache_upstream_url_served_total", origin.url) > 0,
                  "%s: nothing came from the origin after the kill" % s.name)
            check(m["pullcache_digest_mismatches_total"] == 0, "%s: digest mismatches" % s.name)
        resumed = sum(metrics(s)["pullcache_upstream_resumes_total"] for s in sites3)
        check(resumed > 0, "no fill was cut mid-body and resumed from the origin")


def test_tier_listing_itself_refuses_the_loop():
    d, imgs = images()
    with pclib.TestEnv("tiers-loop") as env:
        origin = env.start_upstream(d)
        img = imgs["pause"]
        # Its only upstream is itself: the request comes back with its own name in Via -> 508.
        port = pclib.free_port()
        self_url = "http://127.0.0.1:%d" % port
        cfg = env.path("self.conf")
        with open(cfg, "w") as f:
            f.write("[upstream \"registry.k8s.io\"]\nurl = %s\n" % self_url)
        pc = env.start_pullcache(args=["--config", cfg], port=port, name="self")
        r = http("GET", "%s/v2/%s/manifests/%s%s" % (pc.url, img["name"], img["tag"], NS), {"Accept": ACCEPT})
        check(r.status == 508, "a mirror upstream of itself answered %d" % r.status)
        err = json.loads(r.body)["errors"][0]
        check(err["code"] == "UNSUPPORTED" and "loop" in err["message"], "508 body: %s" % r.body[:300])
        check(metrics(pc)["pullcache_tier_loops_refused_total"] == 1, "the loop was refused more than once")

        # Itself as a mirror, the origin as url: the loop is refused and the pull goes on from the origin.
        port2 = pclib.free_port()
        cfg2 = site_config(env, "selfmirror", origin.url, ["http://127.0.0.1:%d" % port2])
        pc2 = env.start_pullcache(args=["--config", cfg2], port=port2, name="selfmirror")
        pull_image(pc2.url, img)
        check(metrics(pc2)["pullcache_tier_loops_refused_total"] >= 1, "no loop refused")

        # Two tiers that list each other (A -> B -> A): A refuses the request that came round,
        # B fails over to the origin, and the pull through A completes.
        pa, pb = pclib.free_port(), pclib.free_port()
        cfg_a = site_config(env, "ring-a", origin.url, ["http://127.0.0.1:%d" % pb])
        cfg_b = site_config(env, "ring-b", origin.url, ["http://127.0.0.1:%d" % pa])
        ra = env.start_pullcache(args=["--config", cfg_a], port=pa, name="ring-a")
        rb = env.start_pullcache(args=["--config", cfg_b], port=pb, name="ring-b")
        pull_image(ra.url, imgs["kube-proxy"])
        check(metrics(ra)["pullcache_tier_loops_refused_total"] >= 1, "A never saw its own request come round")
        check(metrics(rb)["pullcache_tier_loops_refused_total"] == 0, "B refused a request it had not seen")

        # A site that can reach only its parent (url is dead): ready, and it pulls.
        dead = "http://127.0.0.1:%d" % pclib.free_port()
        cfg3 = site_config(env, "parentonly", dead, [pc2.url])
        pc3 = env.start_pullcache(args=["--config", cfg3], name="parentonly")
        r = http("GET", pc3.url + "/readyz")
        check(r.status == 200, "a site whose parent answers is not ready: %d %s" % (r.status, r.body[:200]))
        pull_image(pc3.url, imgs["etcd"])

        # A chain longer than max_hops is refused too.
        vias = ", ".join("1.1 t%d:5000" % i for i in range(8))
        r = http("GET", "%s/v2/%s/manifests/%s" % (pc2.url, img["name"], img["tag"]), {"Via": vias})
        check(r.status == 508, "9 hops answered %d" % r.status)


def main():
    return pclib.run_tests([test_two_sites_one_regional_then_failover, test_tier_listing_itself_refuses_the_loop])


if __name__ == "__main__":
    sys.exit(main())
