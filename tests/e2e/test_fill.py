#!/usr/bin/python3
"""Pull-through end to end: pullcache in front of the registry.k8s.io-like test upstream
(redirector -> 307 -> token-protected registry, blobs -> 307 -> blob host), driven by skopeo and
by raw HTTP. Every test checks what reached the upstream from its request log.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_fill.py [test_name ...]
"""

import concurrent.futures
import http.client as http_client
import hashlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, sha256_digest, metrics  # noqa: E402

ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json", "*/*"])


def images(scale="tiny"):
    d = pclib.make_images(scale)
    return d, pclib.load_images(d)


def pull(server, img, dest, prefix="", timeout=300):
    """skopeo copy --all of IMG through SERVER into a dir: layout (which keeps every byte), then
    check each manifest and blob against the generated image."""
    ref = "docker://127.0.0.1:%d/%s%s:%s" % (server.port, prefix, img["name"], img["tag"])
    pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0", ref,
                 "dir:" + dest, timeout=timeout)
    verify_dir(img, dest)


def verify_dir(img, dest):
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        top = f.read()
    check(sha256_digest(top) == img["index_digest"],
          "%s: index digest %s != %s" % (img["name"], sha256_digest(top), img["index_digest"]))
    n = 0
    for b in img["blobs"]:
        if b["kind"] in ("manifest", "index"):
            continue
        p = os.path.join(dest, b["digest"].split(":", 1)[1])
        check(os.path.exists(p), "%s: blob %s missing from the copy" % (img["name"], b["digest"]))
        with open(p, "rb") as f:
            check(sha256_digest(f.read()) == b["digest"], "%s: blob %s corrupt" % (img["name"], b["digest"]))
        n += 1
    check(n > 0, "%s: no blobs checked" % img["name"])


def layer_digests(img):
    return [b["digest"] for b in img["blobs"] if b["kind"] not in ("manifest", "index")]


def store_has(server, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.exists(os.path.join(server.store, "blobs", "sha256", hexd[:2], hexd))


def stored(server, digest, timeout=20):
    """True once DIGEST is committed. Clients get their last byte as soon as the digest is
    verified; the fsync/rename/record follow on a worker thread, so wait (bounded)."""
    try:
        pclib.wait_for(lambda: store_has(server, digest), timeout, "commit of " + digest)
        return True
    except pclib.CheckFailed:
        return False


def test_cold_then_warm():
    d, imgs = images()
    with pclib.TestEnv("fill-cold") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["kube-proxy"]
        pull(pc, img, env.path("cold"))
        fetched = up.blob_gets()
        for dg in layer_digests(img):
            check(fetched.get(dg) == 1, "cold: blob %s fetched %s times" % (dg, fetched.get(dg)))
            check(stored(pc, dg), "cold: blob %s not in the store" % dg)
        # Manifests went through the token dance on the registry role.
        check(up.count("registry", "/manifests/") > 0, "no manifest request reached the registry")
        check(up.violations() == 0, "the blob host saw an Authorization header")
        m = metrics(pc)
        nblobs = len(set(layer_digests(img)))
        check(m["pullcache_fills_started_total"] == nblobs and m["pullcache_fills_committed_total"] == nblobs,
              "cold fills: %s of %d" % (m["pullcache_fills_committed_total"], nblobs))
        check(m["pullcache_fills_in_flight"] == 0 and m["pullcache_digest_mismatches_total"] == 0, "fill gauges")
        up.reset()
        pull(pc, img, env.path("warm"))
        check(up.log() == [], "warm pull reached the upstream: %s" % up.log()[:3])
        m2 = metrics(pc)
        check(m2["pullcache_fills_started_total"] == nblobs, "warm pull started fills")
        check(m2['pullcache_cache_requests_total{kind="blob",outcome="hit"}'] >= nblobs,
              "warm blob hits not counted")
        check(m2['pullcache_cache_requests_total{kind="manifest",outcome="hit"}'] > 0,
              "warm manifest hits not counted")


def test_head_miss_fills_and_path_prefix():
    d, imgs = images()
    with pclib.TestEnv("fill-head") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["pause"]
        # containerd starts with HEAD by tag, ns= set.
        r = http("HEAD", pc.url + "/v2/pause/manifests/3.10?ns=registry.k8s.io", {"Accept": ACCEPT})
        check(r.status == 200, "HEAD miss: %d" % r.status)
        check(r.headers.get("docker-content-digest") == img["index_digest"], "HEAD digest: %s" % r.headers)
        check(r.headers.get("content-type") == img["index_media_type"], "HEAD type: %s" % r.headers)
        check(int(r.headers.get("content-length", -1)) == img["index_size"], "HEAD length")
        check(r.body == b"", "HEAD has a body")
        # GET by digest is now served from the store: no further upstream request.
        up.reset()
        r = http("GET", pc.url + "/v2/pause/manifests/" + img["index_digest"])
        check(r.status == 200 and sha256_digest(r.body) == img["index_digest"], "GET by digest")
        check(up.log() == [], "GET by digest after HEAD went upstream")
        # CRI-O/podman address the mirror with the upstream host as a path prefix.
        pull(pc, img, env.path("prefix"), prefix="registry.k8s.io/")
        # A host that is not configured is refused without any upstream request.
        up.reset()
        r = http("GET", pc.url + "/v2/pause/manifests/3.10?ns=evil.example.com")
        check(r.status == 404 and b"NAME_UNKNOWN" in r.body, "unknown ns: %d %r" % (r.status, r.body))
        r = http("GET", pc.url + "/v2/evil.example.com/pause/manifests/3.10")
        check(r.status == 404, "unknown prefix host answered %d" % r.status)
        check(up.log() == [], "an unconfigured host caused upstream traffic")


def test_concurrent_cold_pulls_fetch_once():
    d, imgs = images("small")
    with pclib.TestEnv("fill-conc") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["etcd"]
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            futs = [ex.submit(pull, pc, img, env.path("c%d" % i)) for i in range(20)]
            for f in futs:
                f.result()
        fetched = up.blob_gets()
        for dg in layer_digests(img):
            check(fetched.get(dg) == 1, "20 pulls: blob %s fetched %s times" % (dg, fetched.get(dg)))
        extra = {k: v for k, v in fetched.items() if v != 1}
        check(not extra, "blobs fetched more than once: %s" % extra)
        m = metrics(pc)
        nblobs = len(set(layer_digests(img)))
        check(m["pullcache_fills_started_total"] == nblobs,
              "20 pulls started %d fills for %d blobs" % (m["pullcache_fills_started_total"], nblobs))
        # Manifests: one GET per digest or tag at the registry.
        seen = {}
        for e in up.log("registry"):
            if "/manifests/" in e["path"] and e["status"] == 200:
                seen[e["path"]] = seen.get(e["path"], 0) + 1
        dup = {k: v for k, v in seen.items() if v > 1}
        check(not dup, "manifests fetched more than once: %s" % dup)
        check(up.violations() == 0, "the blob host saw an Authorization header")


def test_upstream_down_serves_stale_and_restart_is_warm():
    d, imgs = images()
    with pclib.TestEnv("fill-stale") as env:
        up = env.start_upstream(d)
        store = env.path("store")
        pc = env.start_pullcache(upstream=up, store=store, args=["--tag-ttl", "1"])
        img = imgs["coredns/coredns"]
        pull(pc, img, env.path("a"))
        time.sleep(1.5)  # the tag is now due for revalidation
        up.faults([{"role": "redirector", "path_re": ".*", "fault": "status", "status": 503}])
        r = http("GET", pc.url + "/v2/coredns/coredns/manifests/" + img["tag"], {"Accept": ACCEPT})
        check(r.status == 200 and sha256_digest(r.body) == img["index_digest"],
              "stale tag not served while the upstream fails: %d" % r.status)
        up.stop()
        pull(pc, img, env.path("b"))
        # Restart with the upstream gone: everything needed is in the store.
        pc.stop()
        pc2 = env.start_pullcache(upstream=up, store=store, name="pullcache2", args=["--tag-ttl", "3600"])
        pull(pc2, img, env.path("c"))
        check(sum(1 for _ in open(pc2.log_path, "rb") if b"cache=miss" in _) == 0,
              "restarted daemon had a miss:\n" + pc2.tail())


def test_restart_warm_no_upstream_traffic():
    d, imgs = images()
    with pclib.TestEnv("fill-restart") as env:
        up = env.start_upstream(d)
        store = env.path("store")
        pc = env.start_pullcache(upstream=up, store=store)
        img = imgs["kube-apiserver"]
        pull(pc, img, env.path("a"))
        pc.stop()
        up.reset()
        pc2 = env.start_pullcache(upstream=up, store=store, name="pullcache2")
        pull(pc2, img, env.path("b"))
        check(up.log() == [], "warm pull after restart reached the upstream: %s" % up.log()[:3])


def test_corrupt_blob_not_stored():
    d, imgs = images()
    with pclib.TestEnv("fill-corrupt") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["kube-proxy"]
        layer = max((b for b in img["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
        hexd = layer["digest"].split(":", 1)[1]
        up.faults([{"role": "blobs", "path_re": hexd, "fault": "corrupt", "after": 100}])
        # The answer is cut short (the last byte is held until verification): never the full,
        # corrupt blob.
        try:
            r = http("GET", pc.url + "/v2/kube-proxy/blobs/" + layer["digest"])
            check(r.status != 200, "a corrupt blob was delivered in full (%d bytes)" % len(r.body))
        except http_client.IncompleteRead as e:
            check(len(e.partial) < layer["size"], "short read delivered everything")
        check(not store_has(pc, layer["digest"]), "corrupt blob was stored")
        check(b"upstream-blob-digest-mismatch " in open(pc.log_path, "rb").read(),
              "mismatch not logged")
        # Once the upstream is healthy, the same digest fills correctly.
        up.faults([])
        r = http("GET", pc.url + "/v2/kube-proxy/blobs/" + layer["digest"])
        check(r.status == 200 and sha256_digest(r.body) == layer["digest"], "refill after corruption")
        check(stored(pc, layer["digest"]), "good blob not stored")


def test_corrupt_manifest_rejected():
    d, imgs = images()
    with pclib.TestEnv("fill-corrupt-m") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["pause"]
        dg = img["manifests"][0]["digest"]
        up.faults([{"role": "registry", "path_re": "manifests/" + dg, "fault": "corrupt", "after": 10}])
        r = http("GET", pc.url + "/v2/pause/manifests/" + dg)
        check(r.status == 502, "corrupt manifest answered %d" % r.status)
        check(json.loads(r.body)["errors"][0]["code"], "no OCI error body")
        check(not store_has(pc, dg), "corrupt manifest stored")


def test_truncated_blob_resumed():
    d, imgs = images("small")
    with pclib.TestEnv("fill-trunc") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["kube-proxy"]
        layer = max((b for b in img["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
        hexd = layer["digest"].split(":", 1)[1]
        up.faults([{"role": "blobs", "path_re": hexd, "fault": "truncate", "after": layer["size"] // 3,
                    "count": 1}])
        r = http("GET", pc.url + "/v2/kube-proxy/blobs/" + layer["digest"], timeout=60)
        check(r.status == 200 and sha256_digest(r.body) == layer["digest"],
              "resumed blob: status %d, %d bytes" % (r.status, len(r.body)))
        ranges = [e.get("range") for e in up.log("blobs") if hexd in e["path"]]
        check(len(ranges) == 2 and ranges[1] and ranges[1].startswith("bytes=%d-" % (layer["size"] // 3)),
              "expected one resume with Range from the cut: %s" % ranges)
        check(stored(pc, layer["digest"]), "resumed blob not stored")


def test_range_joins_live_fill():
    d, imgs = images("small")
    with pclib.TestEnv("fill-range") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        img = imgs["etcd"]
        layer = max((b for b in img["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
        data = pclib.read_blob(d, img, layer["digest"])
        hexd = layer["digest"].split(":", 1)[1]
        up.faults([{"role": "blobs", "path_re": hexd, "fault": "slow", "chunk": 65536, "delay_ms": 20}])
        url = pc.url + "/v2/etcd/blobs/" + layer["digest"]
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            full = ex.submit(http, "GET", url, None, None, 120)
            time.sleep(0.3)
            part = ex.submit(http, "GET", url, {"Range": "bytes=1000-1999"}, None, 120)
            tail = ex.submit(http, "GET", url, {"Range": "bytes=-10"}, None, 120)
            r1, r2, r3 = full.result(), part.result(), tail.result()
        check(r1.status == 200 and r1.body == data, "full answer while filling")
        check(r2.status == 206 and r2.body == data[1000:2000], "range joined a live fill: %d" % r2.status)
        check(r2.headers.get("content-range") == "bytes 1000-1999/%d" % len(data), "content-range")
        check(r3.status == 206 and r3.body == data[-10:], "suffix range on a live fill")
        check(up.blob_gets().get(layer["digest"]) == 1, "joined requests caused extra fetches")


def test_refusal_for_one_repo_is_not_shared():
    """A blob fill is shared by digest, but a 404 is an answer about one repository: a request
    for the same digest from a repository that has it must not get that 404."""
    d, imgs = images()
    with pclib.TestEnv("fill-refusal") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        layer = max((b for b in imgs["kube-proxy"]["blobs"] if b["kind"] == "layer"), key=lambda b: b["size"])
        data = pclib.read_blob(d, imgs["kube-proxy"], layer["digest"])
        up.faults([{"role": "redirector", "path_re": "^/v2/nosuch/", "fault": "status", "status": 404,
                    "delay_ms": 700}])
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            bad = ex.submit(http, "GET", pc.url + "/v2/nosuch/blobs/" + layer["digest"], None, None, 30)
            time.sleep(0.3)  # the second request joins the fill the first one started
            good = ex.submit(http, "GET", pc.url + "/v2/kube-proxy/blobs/" + layer["digest"], None, None, 30)
            rb, rg = bad.result(), good.result()
        check(rb.status == 404 and b"BLOB_UNKNOWN" in rb.body, "wrong repository: %d" % rb.status)
        check(rg.status == 200 and rg.body == data, "right repository got %d" % rg.status)
        m = metrics(pc)
        check(m["pullcache_fill_joins_total"] == 1, "the second request did not join the first fill")
        check(m["pullcache_fills_started_total"] == 2, "the refused fill was not followed by a fill "
              "of its own for the right repository: %s" % m["pullcache_fills_started_total"])


def test_upstream_errors_map():
    d, imgs = images()
    with pclib.TestEnv("fill-errors") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        r = http("GET", pc.url + "/v2/pause/manifests/no-such-tag")
        check(r.status == 404 and b"MANIFEST_UNKNOWN" in r.body, "upstream 404: %d %r" % (r.status, r.body))
        missing = "sha256:" + hashlib.sha256(b"nope").hexdigest()
        r = http("GET", pc.url + "/v2/pause/blobs/" + missing)
        check(r.status == 404 and b"BLOB_UNKNOWN" in r.body, "blob 404: %d" % r.status)
        up.faults([{"role": "redirector", "path_re": "manifests", "fault": "status", "status": 429,
                    "retry_after": "1"}])
        r = http("GET", pc.url + "/v2/etcd/manifests/3.5.16-0")
        check(r.status == 429 and r.headers.get("retry-after") == "1", "429: %d %s" % (r.status, r.headers))
        time.sleep(1.2)  # the 429 opened the upstream's breaker for its Retry-After (test_truth)
        up.faults([{"role": "redirector", "path_re": "manifests", "fault": "status", "status": 500}])
        r = http("GET", pc.url + "/v2/etcd/manifests/3.5.16-0")
        check(r.status == 502 and json.loads(r.body)["errors"], "500 upstream: %d" % r.status)
        up.faults([{"role": "token", "path_re": ".*", "fault": "token_down"}])
        r = http("GET", pc.url + "/v2/etcd/manifests/3.5.16-0")
        check(r.status in (502, 503), "token endpoint down: %d" % r.status)
        up.faults([{"role": "redirector", "path_re": "manifests", "fault": "redirect_loop"}])
        r = http("GET", pc.url + "/v2/etcd/manifests/3.5.16-0")
        check(r.status == 502, "redirect loop: %d" % r.status)
        up.faults([])
        r = http("GET", pc.url + "/v2/etcd/manifests/3.5.16-0", {"Accept": ACCEPT})
        check(r.status == 200, "recovered: %d" % r.status)


def test_offline_never_contacts_upstream():
    d, imgs = images()
    with pclib.TestEnv("fill-offline") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up, args=["--offline"])
        r = http("GET", pc.url + "/v2/pause/manifests/3.10")
        check(r.status == 404, "offline miss: %d" % r.status)
        r = http("GET", pc.url + "/v2/pause/blobs/" + imgs["pause"]["blobs"][0]["digest"])
        check(r.status == 404, "offline blob miss: %d" % r.status)
        check(up.log() == [], "offline daemon contacted the upstream")


def test_distribution_upstream():
    """CNCF distribution (Debian docker-registry) as the upstream, content pushed by the test."""
    d, imgs = images()
    with pclib.TestEnv("fill-distribution") as env:
        reg = env.start_docker_registry()
        for name in ("pause", "kube-proxy"):
            img = imgs[name]
            pclib.skopeo("copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
                         "oci:" + os.path.join(d, img["layout_dir"]),
                         "docker://127.0.0.1:%d/%s:%s" % (reg.port, name, img["tag"]))
        pc = env.start_pullcache(upstream=reg.url)
        for name in ("pause", "kube-proxy"):
            pull(pc, imgs[name], env.path("p-" + name.replace("/", "_")))


if __name__ == "__main__":
    sys.exit(pclib.run_tests([
        test_cold_then_warm, test_head_miss_fills_and_path_prefix, test_concurrent_cold_pulls_fetch_once,
        test_upstream_down_serves_stale_and_restart_is_warm, test_restart_warm_no_upstream_traffic,
        test_corrupt_blob_not_stored, test_corrupt_manifest_rejected, test_truncated_blob_resumed,
        test_range_joins_live_fill, test_refusal_for_one_repo_is_not_shared, test_upstream_errors_map, test_offline_never_contacts_upstream,
        test_distribution_upstream]))
