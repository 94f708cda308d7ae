#!/usr/bin/python3
"""Self-test of the e2e fixtures (no pullcache involved): mkimages.py, k8s_upstream.py, pclib.

    PC_BUILD=<build dir> python3 tests/e2e/test_fixtures.py [test_name ...]
"""

import json
import os
import shutil
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http, sha256_digest  # noqa: E402

ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json", "*/*"])


def test_images_generated():
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    check(set(imgs) == {"pause", "coredns/coredns", "etcd", "kube-apiserver", "kube-proxy"},
          "image set: %s" % sorted(imgs))
    total = 0
    flavours = {}
    layer_owners = {}
    for name, img in imgs.items():
        lay = os.path.join(d, img["layout_dir"])
        check(img["layout_dir"] == name.replace("/", "_"), "layout dir of %s" % name)
        with open(os.path.join(lay, "index.json"), "rb") as f:
            top = json.load(f)["manifests"][0]
        check(top["digest"] == img["index_digest"], "index.json digest of %s" % name)
        check(top["annotations"]["org.opencontainers.image.ref.name"] == img["tag"], "ref.name of %s" % name)
        # Every blob: bytes hash to the digest, size matches.
        for b in img["blobs"]:
            data = pclib.read_blob(d, img, b["digest"])
            check(sha256_digest(data) == b["digest"], "blob digest %s in %s" % (b["digest"], name))
            check(len(data) == b["size"], "blob size %s in %s" % (b["digest"], name))
        idx = json.loads(pclib.read_blob(d, img, img["index_digest"]))
        check(idx["mediaType"] == img["index_media_type"], "index mediaType of %s" % name)
        plats = {(m["platform"]["os"], m["platform"]["architecture"]) for m in idx["manifests"]}
        want = {("linux", "amd64"), ("linux", "arm64")} | ({("windows", "amd64")} if name == "pause" else set())
        check(plats == want, "platforms of %s: %s" % (name, plats))
        if name == "pause":
            win = [m for m in idx["manifests"] if m["platform"]["os"] == "windows"][0]
            check("os.version" in win["platform"], "pause windows entry has os.version")
        for m in idx["manifests"]:
            man = json.loads(pclib.read_blob(d, img, m["digest"]))
            check(man["mediaType"] == m["mediaType"], "child mediaType in %s" % name)
            check(len(man["layers"]) >= 2 or name == "pause", "several layers in %s" % name)
            docker = "docker" in man["mediaType"]
            check(docker == ("docker" in man["config"]["mediaType"]), "config type matches flavour in %s" % name)
            for layer in man["layers"]:
                check(docker == ("docker" in layer["mediaType"]), "layer type matches flavour in %s" % name)
                layer_owners.setdefault(layer["digest"], set()).add(name)
        flavours[name] = "docker" if "docker" in img["index_media_type"] else "oci"
        total += img["total_bytes"]
    check(flavours["pause"] == "docker", "pause is a Docker manifest list")
    check(list(flavours.values()).count("docker") >= 2 and "oci" in flavours.values(), "flavour mix: %s" % flavours)
    shared = [dg for dg, owners in layer_owners.items() if len(owners) >= 3]
    check(len(shared) >= 2, "a base layer shared by several images (per arch): %d" % len(shared))
    check(total < 2 * 1000 * 1000, "tiny scale under 2 MB: %d" % total)


def test_images_deterministic():
    with pclib.TestEnv("fixtures-det") as env:
        for out in ("a", "b"):
            pclib.subprocess.run([pclib.PYTHON, pclib.MKIMAGES_PY, "--out", env.path(out), "--scale", "tiny",
                                  "--seed", "7"], check=True, stdout=pclib.subprocess.DEVNULL, timeout=300)
        a = pclib.load_images(env.path("a"))
        b = pclib.load_images(env.path("b"))
        check(a == b, "same seed gives the same images.json")
        c = pclib.load_images(pclib.make_images("tiny"))  # seed 1
        check(a["pause"]["index_digest"] != c["pause"]["index_digest"], "another seed gives other digests")


def test_skopeo_reads_layouts():
    d = pclib.make_images("tiny")
    with pclib.TestEnv("fixtures-skopeo") as env:
        for name, img in pclib.load_images(d).items():
            lay = os.path.join(d, img["layout_dir"])
            # skopeo 1.9's oci: transport only resolves a ref name on OCI-typed descriptors; a
            # layout holding a single image is addressed without one.
            out = env.path("copy-" + img["layout_dir"])
            pclib.skopeo("copy", "-q", "--all", "oci:" + lay, "dir:" + out)
            with open(os.path.join(out, "manifest.json"), "rb") as f:
                check(sha256_digest(f.read()) == img["index_digest"], "skopeo kept %s's index bytes" % name)
            if img["flavour"] == "oci":
                pclib.skopeo("inspect", "--raw", "oci:%s:%s" % (lay, img["tag"]))


def dance_get(up, path, accept=ACCEPT):
    """The registry.k8s.io dance by hand. Returns (final Response, list of hops)."""
    hops = []
    r = http("GET", up.url + path, {"Accept": accept})
    hops.append(("redirector", r.status))
    check(r.status == 307, "redirector answers 307 for %s: %d" % (path, r.status))
    loc = r.headers["location"]
    r = http("GET", loc, {"Accept": accept})
    hops.append((loc, r.status))
    if r.status == 401:
        ch = pclib.parse_challenge(r.headers["www-authenticate"])
        check(ch["scheme"] == "Bearer" and ch["realm"] == up.registry_url + "/v2/token",
              "challenge realm: %s" % r.headers["www-authenticate"])
        q = urllib.parse.urlencode({"service": ch["service"], "scope": ch["scope"]})
        t = http("GET", ch["realm"] + "?" + q)
        check(t.status == 200, "token: %d" % t.status)
        tj = json.loads(t.body)
        check(tj["expires_in"] == 300 and "issued_at" in tj, "token answer: %s" % tj)
        r = http("GET", loc, {"Accept": accept, "Authorization": "Bearer " + tj["token"]})
        hops.append((loc, r.status))
    return r, hops


def test_dance():
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    with pclib.TestEnv("fixtures-dance") as env:
        up = env.start_upstream(d)
        r = http("GET", up.url + "/v2/")
        check(r.status == 200 and r.headers.get("docker-distribution-api-version") == "registry/2.0",
              "GET /v2/ on the redirector: %d %s" % (r.status, r.headers))
        check(http("HEAD", up.url + "/v2").status == 200, "HEAD /v2")
        check(http("POST", up.url + "/v2/pause/blobs/uploads/").status == 405, "POST -> 405")

        for name in ("pause", "coredns/coredns"):
            img = imgs[name]
            r, hops = dance_get(up, "/v2/%s/manifests/%s?ns=registry.k8s.io" % (name, img["tag"]))
            check([h[1] for h in hops] == [307, 401, 200], "hops for %s: %s" % (name, hops))
            check(hops[1][0] == "%s/v2/k8s-artifacts-prod/images/%s/manifests/%s?ns=registry.k8s.io"
                  % (up.registry_url, name, img["tag"]), "redirect target %s" % hops[1][0])
            check(r.headers["docker-content-digest"] == img["index_digest"], "Docker-Content-Digest of %s" % name)
            check(sha256_digest(r.body) == img["index_digest"], "manifest bytes of %s hash to the digest" % name)
            check(r.headers["content-type"] == img["index_media_type"], "Content-Type of %s" % name)
            check(int(r.headers["content-length"]) == img["index_size"], "Content-Length of %s" % name)

        # A child manifest by digest, via HEAD with the reference client.
        pause = imgs["pause"]
        child = pause["manifests"][0]
        cl = pclib.RegistryClient()
        r = cl.request("HEAD", up.url + "/v2/pause/manifests/" + child["digest"], {"Accept": ACCEPT})
        check(r.status == 200 and r.body == b"", "HEAD child manifest: %d" % r.status)
        check(r.headers["docker-content-digest"] == child["digest"], "HEAD digest")
        check(int(r.headers["content-length"]) == child["size"], "HEAD length")
        check(r.headers["content-type"] == child["media_type"], "HEAD type")

        # Token for another repository is rejected.
        t = http("GET", up.registry_url + "/v2/token?service=x&scope=repository:k8s-artifacts-prod/images/etcd:pull")
        tok = json.loads(t.body)["token"]
        r = http("GET", up.registry_url + "/v2/k8s-artifacts-prod/images/pause/manifests/3.10",
                 {"Authorization": "Bearer " + tok})
        check(r.status == 401, "foreign-scope token rejected: %d" % r.status)
        r = http("GET", up.registry_url + "/v2/k8s-artifacts-prod/images/etcd/manifests/nope",
                 {"Authorization": "Bearer " + tok})
        check(r.status == 404 and json.loads(r.body)["errors"][0]["code"] == "MANIFEST_UNKNOWN", "unknown tag 404")
        r = http("GET", up.registry_url + "/v2/k8s-artifacts-prod/images/etcd/tags/list",
                 {"Authorization": "Bearer " + tok})
        check(r.status == 200 and json.loads(r.body)["tags"] == ["3.5.16-0"], "tags/list")

        # An expired token is rejected (token_ttl is a runtime knob).
        up.config(token_ttl=-1)
        t = http("GET", up.registry_url + "/v2/token?service=x&scope=repository:k8s-artifacts-prod/images/etcd:pull")
        r = http("GET", up.registry_url + "/v2/k8s-artifacts-prod/images/etcd/tags/list",
                 {"Authorization": "Bearer " + json.loads(t.body)["token"]})
        check(r.status == 401 and up.log("registry")[-1].get("auth_error") == "expired token", "expired token: %d" % r.status)
        up.config(token_ttl=300)

        # Blob: the shared base layer of coredns (also in kube-proxy) -> 307 -> blob host.
        cd = imgs["coredns/coredns"]
        layer = cd["manifests"][1]["layers"][0]
        check(layer in imgs["kube-proxy"]["manifests"][1]["layers"], "base layer is shared")
        r = http("GET", up.url + "/v2/coredns/coredns/blobs/%s?ns=registry.k8s.io" % layer)
        check(r.status == 307, "blob redirect: %d" % r.status)
        loc = r.headers["location"]
        check(loc == up.blobs_url + "/containers/images/" + layer, "blob Location: %s" % loc)
        r = http("GET", loc)
        check(r.status == 200 and sha256_digest(r.body) == layer, "blob bytes hash to the digest")
        check(r.headers["content-type"] == "application/octet-stream" and "etag" in r.headers, "blob headers")
        size = len(r.body)
        r = http("GET", loc, {"Range": "bytes=10-"})
        check(r.status == 206 and r.headers["content-range"] == "bytes 10-%d/%d" % (size - 1, size), "range 206")
        check(len(r.body) == size - 10, "range body length")
        r = http("GET", loc, {"Range": "bytes=%d-" % size})
        check(r.status == 416 and r.headers["content-range"] == "bytes */%d" % size, "range 416")
        r = http("HEAD", loc)
        check(r.status == 200 and int(r.headers["content-length"]) == size and r.body == b"", "blob HEAD")
        check(up.violations() == 0, "no violations yet")
        r = http("GET", up.url + "/v2/pause/blobs/sha256:" + "0" * 64)
        check(r.status == 307 and r.headers["location"].startswith(up.registry_url), "unknown blob goes to the registry")

        # The log saw all of it, with Authorization and Range recorded.
        log = up.log()
        roles = {e["role"] for e in log}
        check(roles == {"redirector", "registry", "blobs"}, "roles logged: %s" % roles)
        check(any(e["route"] == "token" for e in log if e["role"] == "registry"), "token request logged")
        check(any(e["authorization"] and e["status"] == 200 for e in log if e["role"] == "registry"),
              "authorized manifest fetch logged")
        check(any(e["range"] == "bytes=10-" and e["status"] == 206 for e in log), "range request logged")
        with open(os.path.join(up.state_dir, "requests.jsonl")) as f:
            check(len(f.readlines()) == len(log), "requests.jsonl matches the control log")
        check(up.count("blobs", method="HEAD") == 1, "one HEAD on the blob host")

        # A violation: Authorization sent to the blob host.
        http("GET", loc, {"Authorization": "Bearer leaked"})
        check(up.violations() == 1, "violation counted")
        check(up.log("blobs")[-1]["violation"] is True, "violation flagged in the log")
        up.reset()
        check(up.log() == [], "reset clears the log")
        check(up.violations() == 1, "reset keeps the violation count")


def test_faults():
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    layer = imgs["etcd"]["manifests"][0]["layers"][-1]
    with pclib.TestEnv("fixtures-faults") as env:
        up = env.start_upstream(d)
        url = up.blobs_url + "/containers/images/" + layer
        full = http("GET", url).body
        check(len(full) > 5000, "layer big enough for the fault tests: %d" % len(full))

        # truncate: full Content-Length announced, connection closed after 1000 bytes.
        up.faults([{"role": "blobs", "path_re": layer, "fault": "truncate", "after": 1000, "count": 1}])
        try:
            r = http("GET", url)
            raise pclib.CheckFailed("truncated body read completely: %d bytes" % len(r.body))
        except pclib.httpclient.IncompleteRead as e:
            check(len(e.partial) == 1000, "truncated after 1000 bytes: %d" % len(e.partial))
        r = http("GET", url)
        check(r.status == 200 and r.body == full, "count=1: the next request is clean")

        # corrupt a byte.
        up.faults([{"role": "blobs", "fault": "corrupt", "after": 77}])
        r = http("GET", url)
        check(len(r.body) == len(full) and r.body != full and r.body[77] == full[77] ^ 0xFF, "corrupt flips byte 77")

        # status 503 with Retry-After, only for the registry role, GET only.
        up.faults([{"role": "registry", "path_re": "/manifests/", "fault": "status", "status": 503,
                    "retry_after": 2, "method": "GET", "count": 2}])
        cl = pclib.RegistryClient()
        r = cl.request("GET", up.url + "/v2/etcd/manifests/3.5.16-0", {"Accept": ACCEPT})
        check(r.status == 503 and r.headers.get("retry-after") == "2", "503 + Retry-After: %d" % r.status)
        check(json.loads(r.body)["errors"][0]["code"] == "UNAVAILABLE", "503 body is OCI error JSON")
        r = cl.request("GET", up.url + "/v2/etcd/manifests/3.5.16-0", {"Accept": ACCEPT})
        check(r.status == 503, "second 503")
        r = cl.request("GET", up.url + "/v2/etcd/manifests/3.5.16-0", {"Accept": ACCEPT})
        check(r.status == 200 and sha256_digest(r.body) == imgs["etcd"]["index_digest"], "third succeeds")
        st = up.fault_state()
        check(st[0]["count"] == 0 and st[0]["hits"] == 2, "fault state: %s" % st)

        # drop: no answer at all.
        up.faults([{"role": "redirector", "path_re": "^/v2/$", "fault": "drop", "count": 1}])
        try:
            http("GET", up.url + "/v2/")
            raise pclib.CheckFailed("dropped request got an answer")
        except (pclib.httpclient.RemoteDisconnected, ConnectionResetError):
            pass
        check(http("GET", up.url + "/v2/").status == 200, "after drop")

        # token_down, redirect_loop, slow, stall.
        up.faults([{"fault": "token_down"}])
        r = http("GET", up.registry_url + "/v2/token?scope=repository:k8s-artifacts-prod/images/etcd:pull")
        check(r.status == 500, "token_down -> 500: %d" % r.status)
        up.faults([{"role": "registry", "fault": "redirect_loop"}])
        r = http("GET", up.registry_url + "/v2/k8s-artifacts-prod/images/etcd/manifests/x")
        check(r.status == 307 and r.headers["location"] == up.registry_url + "/v2/k8s-artifacts-prod/images/etcd/manifests/x",
              "redirect_loop points at itself")
        up.faults([{"role": "blobs", "fault": "slow", "chunk": 2000, "delay_ms": 5},
                   ])
        check(http("GET", url).body == full, "slow still delivers the bytes")
        up.faults([{"role": "blobs", "fault": "stall", "after": 100, "delay_ms": 1500}])
        try:
            http("GET", url, timeout=0.5)
            raise pclib.CheckFailed("stall did not stall")
        except OSError:
            pass  # socket.timeout is an OSError
        up.faults([])
        faulted = [e["fault"] for e in up.log() if e["fault"]]
        for f in ("truncate", "corrupt", "status", "drop", "token_down", "redirect_loop", "slow"):
            check(f in faulted, "fault %s logged" % f)
        r = http("POST", up.url + "/_control/faults", {"Content-Type": "application/json"},
                 json.dumps([{"fault": "nonsense"}]).encode())
        check(r.status == 400, "unknown fault rejected: %d" % r.status)


def test_docker_registry_push():
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    with pclib.TestEnv("fixtures-distribution") as env:
        reg = env.start_docker_registry()
        for name in ("pause", "kube-proxy"):  # one Docker list, one OCI index
            img = imgs[name]
            dest = "docker://127.0.0.1:%d/%s:%s" % (reg.port, name, img["tag"])
            pclib.skopeo("copy", "-q", "--all", "--preserve-digests", "--dest-tls-verify=false",
                         "oci:" + os.path.join(d, img["layout_dir"]), dest)
            r = http("GET", "%s/v2/%s/manifests/%s" % (reg.url, name, img["tag"]), {"Accept": ACCEPT})
            check(r.status == 200, "distribution GET %s: %d" % (name, r.status))
            check(r.headers["docker-content-digest"] == img["index_digest"], "same digest from distribution for %s" % name)
            check(sha256_digest(r.body) == img["index_digest"], "same bytes from distribution for %s" % name)
            check(r.headers["content-type"] == img["index_media_type"], "same type for %s" % name)


def test_env_cleanup():
    with pclib.TestEnv("fixtures-env") as env:
        d = env.dir
        p = env.spawn("sleeper", ["sleep", "300"])
        check(p.alive(), "sleeper alive")
    check(not os.path.exists(d) or os.environ.get("PC_KEEP"), "temp dir removed")
    check(p.popen.returncode is not None, "sleeper stopped by TestEnv")
    check(shutil.which("skopeo") is not None, "skopeo installed")


TESTS = [test_images_generated, test_images_deterministic, test_skopeo_reads_layouts, test_dance,
         test_faults, test_docker_registry_push, test_env_cleanup]

if __name__ == "__main__":
    sys.exit(pclib.run_tests(TESTS))
