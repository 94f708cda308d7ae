#!/usr/bin/python3
"""Proven with the real clients: containerd (ctr), podman and skopeo pull registry.k8s.io images
through pullcache in front of the registry.k8s.io-like test upstream. Client configs come from
`pullcache config ...`, made strict (the fallback is the mirror too) so a miss never leaves the
machine. Every test checks digests against the generated images and what reached the upstream
from its request log. Needs root (containerd, rootful podman).

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_clients.py [test_name ...]
"""

import json
import os
import subprocess
import sys
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clientlib  # noqa: E402
import pclib  # noqa: E402
from pclib import check, sha256_digest  # noqa: E402


def images(scale="tiny"):
    d = pclib.make_images(scale)
    return d, pclib.load_images(d)


def platform_manifest(img, arch="amd64", os_="linux"):
    for m in img["manifests"]:
        p = m["platform"]
        if p["architecture"] == arch and p["os"] == os_:
            return m
    raise pclib.CheckFailed("%s has no %s/%s manifest" % (img["name"], os_, arch))


def start_mirror(env, up, decoy=True):
    """pullcache in front of UP. With DECOY, a dead upstream is configured FIRST (the default for
    requests that name no upstream), so a pull only succeeds if the client's ns= or path prefix
    selected registry.k8s.io."""
    args = []
    if decoy:
        args += ["--upstream", "decoy.invalid=http://127.0.0.1:%d" % pclib.free_port()]
    args += ["--upstream", "registry.k8s.io=" + up.url]
    return env.start_pullcache(upstream=None, args=args)


def wait_access_log(pc, start, pred, what, timeout=10):
    """Access-log entries since START once PRED(entries) holds (lines land right after the
    response is sent, so the client may be a moment ahead of the log)."""
    box = {}

    def ok():
        box["e"], _ = clientlib.access_log(pc, start)
        return pred(box["e"])
    try:
        pclib.wait_for(ok, timeout, what)
    except pclib.CheckFailed as e:
        raise pclib.CheckFailed("%s; access log:\n%s" % (e, "\n".join(map(str, box.get("e", [])))))
    return box["e"]


def v2_entries(entries):
    return [e for e in entries if e.get("route") in ("manifest", "blob")]


# ---- pullcache config ---------------------------------------------------------------------------
def test_config_generators():
    # containerd, default upstream, http mirror: exactly the production shape.
    r = clientlib.config("containerd", "--mirror", "http://127.0.0.1:5000")
    cfg = tomllib.loads(r.stdout)
    check(cfg == {"server": "https://registry.k8s.io",
                  "host": {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}},
          "containerd hosts.toml: %r" % cfg)
    check("/etc/containerd/certs.d/registry.k8s.io/hosts.toml" in r.stdout, "path comment")
    # https mirror: ca/skip_verify offered as comments only; trailing slash dropped.
    r = clientlib.config("containerd", "--mirror", "https://mirror.example:5443/")
    cfg = tomllib.loads(r.stdout)
    check(list(cfg["host"]) == ["https://mirror.example:5443"], "https host key: %r" % cfg)
    check("# ca = " in r.stdout and "# skip_verify = true" in r.stdout, "TLS hints:\n" + r.stdout)
    check("skip_verify" not in cfg["host"]["https://mirror.example:5443"], "skip_verify set")

    # --write: one DIR/<name>/hosts.toml per upstream; docker.io falls back to registry-1.
    with pclib.TestEnv("clients-config") as env:
        d = env.path("certs.d")
        r = clientlib.config("containerd", "--mirror", "http://[::1]:5000", "--dir", d, "--write",
                             "--upstream", "registry.k8s.io", "--upstream", "docker.io",
                             "--upstream", "localhost:5001")
        check(sorted(os.listdir(d)) == ["docker.io", "localhost:5001", "registry.k8s.io"],
              "written dirs: %s" % os.listdir(d))
        for name, server in (("registry.k8s.io", "https://registry.k8s.io"),
                             ("docker.io", "https://registry-1.docker.io"),
                             ("localhost:5001", "https://localhost:5001")):
            p = os.path.join(d, name, "hosts.toml")
            check(("wrote " + p) in r.stdout, "wrote line for %s: %r" % (p, r.stdout))
            with open(p, "rb") as f:
                cfg = tomllib.load(f)
            check(cfg["server"] == server and list(cfg["host"]) == ["http://[::1]:5000"],
                  "%s: %r" % (p, cfg))
            check(os.listdir(os.path.dirname(p)) == ["hosts.toml"], "temp file left behind")
        # An unwritable directory: exit 1 with a message.
        open(env.path("file"), "w").close()
        r = clientlib.config("containerd", "--mirror", "http://h:1", "--dir", env.path("file"),
                             "--write", check_rc=False)
        check(r.returncode == 1 and "cannot write" in r.stderr, "unwritable: %d %r"
              % (r.returncode, r.stderr))

    # CRI-O / podman: path-prefix mirror location; insecure only for http (or --insecure).
    for client in ("crio", "podman"):
        r = clientlib.config(client, "--mirror", "http://10.0.0.5:5000", "--upstream",
                             "registry.k8s.io", "--upstream", "quay.io")
        cfg = tomllib.loads(r.stdout)
        check(cfg == {"registry": [
            {"prefix": "registry.k8s.io", "location": "registry.k8s.io",
             "mirror": [{"location": "10.0.0.5:5000/registry.k8s.io", "insecure": True}]},
            {"prefix": "quay.io", "location": "quay.io",
             "mirror": [{"location": "10.0.0.5:5000/quay.io", "insecure": True}]}]},
            "%s registries.conf: %r" % (client, cfg))
        cfg = tomllib.loads(clientlib.config(client, "--mirror", "mirror.local:5000").stdout)
        check(cfg["registry"] == [{"prefix": "registry.k8s.io", "location": "registry.k8s.io",
                                   "mirror": [{"location": "mirror.local:5000/registry.k8s.io"}]}],
              "%s https/bare mirror: %r" % (client, cfg))
        cfg = tomllib.loads(clientlib.config(client, "--mirror", "mirror.local:5000",
                                             "--insecure").stdout)
        check(cfg["registry"][0]["mirror"][0].get("insecure") is True, "--insecure: %r" % cfg)

    # Usage errors exit 2 with a message on stderr and nothing on stdout; --help exits 0.
    bad = [[], ["docker"], ["containerd"], ["containerd", "--mirror"],
           ["containerd", "--mirror", "127.0.0.1:5000"],            # containerd needs a scheme
           ["containerd", "--mirror", "http://h:0"], ["containerd", "--mirror", "http://h:65536"],
           ["containerd", "--mirror", "http://h/path"], ["containerd", "--mirror", "ftp://h"],
           ["containerd", "--mirror", 'http://h"x'], ["containerd", "--mirror", "http://h",
                                                      "--upstream", "pause"],
           ["containerd", "--mirror", "http://h", "--upstream", "a.io", "--upstream", "a.io"],
           ["containerd", "--mirror", "http://h", "--insecure"],
           ["crio", "--mirror", "h:1", "--write"], ["podman", "--mirror", "h:1", "--dir", "/x"],
           ["crio", "--mirror", "h:1", "--bogus"]]
    for args in bad:
        r = clientlib.config(*args, check_rc=False)
        check(r.returncode == 2 and r.stderr.strip() and not r.stdout,
              "config %s: rc=%d out=%r err=%r" % (args, r.returncode, r.stdout, r.stderr))
    for args in (["--help"], ["containerd", "--help"], ["crio", "-h"]):
        r = clientlib.config(*args)
        check(r.stdout.startswith("usage: pullcache config"), "help: %r" % r.stdout[:80])


# ---- containerd ---------------------------------------------------------------------------------
def containerd_hosts(ctrd, pc):
    """Generate hosts.toml with `pullcache config containerd --write`, then make it strict."""
    clientlib.config("containerd", "--mirror", pc.url, "--dir", ctrd.hosts_dir, "--write")
    clientlib.strict_hosts_toml(os.path.join(ctrd.hosts_dir, "registry.k8s.io", "hosts.toml"),
                                pc.url)


def test_containerd_pause_cold_warm():
    d, imgs = images()
    img = imgs["pause"]  # Docker manifest list, 3 platforms
    m = platform_manifest(img)
    want = {img["index_digest"], m["digest"], m["config"]} | set(m["layers"])
    with pclib.TestEnv("clients-ctrd") as env, clientlib.Containerd(env) as ctrd:
        up = env.start_upstream(d)
        pc = start_mirror(env, up)
        containerd_hosts(ctrd, pc)
        ref = "registry.k8s.io/pause:3.10"

        # Cold. --http-dump shows exactly what containerd sent (pause is small enough).
        off = clientlib.log_size(pc)
        r = ctrd.pull(ref, "--http-dump")
        reqs = clientlib.http_dump_requests(r.stderr)
        check(reqs, "no requests in --http-dump:\n" + r.stderr[-2000:])
        check(reqs[0] == ("HEAD", "/v2/pause/manifests/3.10?ns=registry.k8s.io"),
              "first request: %s" % (reqs[0],))
        check(all(p.endswith("?ns=registry.k8s.io") for _, p in reqs), "ns= missing: %s" % reqs)
        check(all(meth in ("HEAD", "GET") for meth, _ in reqs), "methods: %s" % reqs)
        check(not any(p.startswith("/v2/?") or p == "/v2/" for _, p in reqs), "a /v2/ ping: %s" % reqs)
        got = {p.split("?")[0].rsplit("/", 1)[-1] for meth, p in reqs if meth == "GET"}
        check(want - {img["index_digest"]} <= got, "GETs %s do not cover %s" % (got, want))
        accepts = clientlib.http_dump_headers(r.stderr, "Accept")
        check(accepts and "application/vnd.oci.image.index.v1+json" in accepts[0]
              and "application/vnd.docker.distribution.manifest.list.v2+json" in accepts[0],
              "resolve Accept: %s" % accepts[:1])
        # The HEAD answer must carry what the resolver needs, or containerd falls back to GET.
        check(any(v == img["index_digest"] for v in
                  clientlib.http_dump_headers(r.stderr, "Docker-Content-Digest")),
              "no Docker-Content-Digest in the answers")
        entries = wait_access_log(pc, off, lambda e: len(v2_entries(e)) >= len(reqs),
                                  "access log of the cold pull")
        v2 = v2_entries(entries)
        check(v2[0]["method"] == "HEAD" and v2[0]["path"] == "/v2/pause/manifests/3.10",
              "access log starts with %s" % v2[0])
        check(all(e["method"] == "GET" for e in v2[1:]), "HEAD then GETs: %s" % v2)
        check(all(e.get("upstream") == "registry.k8s.io" for e in v2),
              "ns= not honoured (decoy upstream chosen?): %s" % v2)
        check(all(e["status"] in ("200",) for e in v2), "statuses: %s" % v2)
        check(any(e.get("cache") == "miss" for e in v2), "cold pull had no miss: %s" % v2)

        # Digests containerd ended up with, and what went upstream.
        check(ctrd.images().get(ref, (None, None))[1] == img["index_digest"],
              "ctr images ls: %s" % ctrd.images())
        check(ctrd.content() == want, "content store %s != %s" % (sorted(ctrd.content()), sorted(want)))
        snaps = ctrd.snapshots()
        check(snaps and all(k == "Committed" for _, k in snaps), "not unpacked: %s" % snaps)
        gets = up.blob_gets()
        for dg in [m["config"]] + m["layers"]:
            check(gets.get(dg) == 1, "cold: %s fetched %s times upstream" % (dg, gets.get(dg)))
        check(set(gets) == {m["config"]} | set(m["layers"]), "other blobs fetched: %s" % gets)
        check(up.violations() == 0, "the blob host saw Authorization")

        # Warm: after rm --sync containerd has nothing; the mirror answers everything.
        ctrd.rm(ref)
        check(not (ctrd.content() & want), "rm --sync left %s" % (ctrd.content() & want))
        up.reset()
        off = clientlib.log_size(pc)
        ctrd.pull(ref)
        check(up.log() == [], "warm pull reached the upstream: %s" % up.log()[:3])
        entries = wait_access_log(pc, off, lambda e: len(v2_entries(e)) >= len(want),
                                  "access log of the warm pull")
        v2 = v2_entries(entries)
        check(all(e.get("cache") == "hit" for e in v2), "warm pull not all hits: %s" % v2)
        check(ctrd.content() == want, "warm content store %s" % sorted(ctrd.content()))
        check(ctrd.images()[ref][1] == img["index_digest"], "warm image digest")
        ctrd.rm(ref)


def test_containerd_all_platforms_and_oci():
    d, imgs = images()
    with pclib.TestEnv("clients-ctrd-all") as env, clientlib.Containerd(env) as ctrd:
        up = env.start_upstream(d)
        pc = start_mirror(env, up)
        containerd_hosts(ctrd, pc)
        # etcd: Docker list, every platform (no unpack for foreign platforms).
        etcd = imgs["etcd"]
        ref = "registry.k8s.io/etcd:" + etcd["tag"]
        ctrd.pull(ref, "--all-platforms")
        want = {b["digest"] for b in etcd["blobs"]}
        check(ctrd.content() == want, "etcd --all-platforms content %s != %s"
              % (sorted(ctrd.content()), sorted(want)))
        check(ctrd.images()[ref] == (etcd["index_media_type"], etcd["index_digest"]),
              "etcd image: %s" % (ctrd.images()[ref],))
        # kube-apiserver: OCI index, default platform; shares its base layer with etcd, which
        # containerd already has (so it is not even requested).
        api = imgs["kube-apiserver"]
        m = platform_manifest(api)
        ref2 = "registry.k8s.io/kube-apiserver:" + api["tag"]
        off = clientlib.log_size(pc)
        ctrd.pull(ref2)
        check(ctrd.images()[ref2] == (api["index_media_type"], api["index_digest"]),
              "apiserver image: %s" % (ctrd.images()[ref2],))
        need = {api["index_digest"], m["digest"], m["config"]} | set(m["layers"])
        check(need <= ctrd.content(), "apiserver content missing %s" % (need - ctrd.content()))
        entries = wait_access_log(pc, off, lambda e: any(x.get("route") == "blob" for x in e),
                                  "apiserver access log")
        check(all(e.get("upstream") == "registry.k8s.io" for e in v2_entries(entries)),
              "upstream selection: %s" % entries)
        gets = up.blob_gets()
        dup = {k: v for k, v in gets.items() if v != 1}
        check(not dup, "blobs fetched upstream more than once: %s" % dup)
        check(up.violations() == 0, "the blob host saw Authorization")
        for r in (ref, ref2):
            ctrd.rm(r)
        check(ctrd.content() == set(), "rm --sync left %s" % ctrd.content())


def test_containerd_resume_with_range():
    """Kill ctr mid-layer while the upstream stalls; the next pull resumes from containerd's
    ingest with Range: bytes=<ingested>- and pullcache answers 206 (joining its own fill)."""
    d, imgs = images("small")
    img = imgs["kube-proxy"]
    m = platform_manifest(img)
    layer = max((b for b in img["blobs"] if b["digest"] in m["layers"]), key=lambda b: b["size"])
    # containerd 1.6 copies in 1 MiB chunks (ReadAtLeast), so the ingest only grows once a full
    # MiB has arrived: stall the upstream after more than that.
    chunk = 1 << 20
    check(layer["size"] > chunk + 65536, "need a layer > 1 MiB, largest is %d" % layer["size"])
    stall_after = layer["size"] - 32768
    with pclib.TestEnv("clients-ctrd-resume") as env, clientlib.Containerd(env) as ctrd:
        up = env.start_upstream(d)
        pc = start_mirror(env, up)
        containerd_hosts(ctrd, pc)
        ref = "registry.k8s.io/kube-proxy:" + img["tag"]
        up.faults([{"role": "blobs", "path_re": layer["digest"].split(":", 1)[1],
                    "fault": "stall", "after": stall_after, "delay_ms": 10000, "count": 1}])
        argv = ctrd.pull_argv(ref)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            def ingested():
                if p.poll() is not None:
                    raise pclib.CheckFailed("ctr finished (%d) before it could be interrupted"
                                            % p.returncode)
                for f in ctrd.ingest_files():
                    if os.path.getsize(f) >= chunk:
                        return f
            f = pclib.wait_for(ingested, 60, "containerd to ingest 1 MiB of the stalled layer", 0.05)
        finally:
            clientlib.kill_pid(p.pid)
            p.wait(30)
        offset = os.path.getsize(f)
        check(chunk <= offset < layer["size"], "ingest offset %d" % offset)
        off = clientlib.log_size(pc)
        r = ctrd.pull(ref, "--http-dump")
        ranges = clientlib.http_dump_headers(r.stderr, "Range")
        check("bytes=%d-" % offset in ranges, "no resume Range bytes=%d- sent: %s" % (offset, ranges))
        entries = wait_access_log(pc, off, lambda e: any(
            x.get("route") == "blob" and x["path"].endswith(layer["digest"]) and x["status"] != "0"
            for x in e),
            "the resumed layer request")
        # The killed ctr's request is logged (status=0) only once pullcache notices the closed
        # connection, which may be after this point: leave it out.
        lay = [x for x in entries if x.get("route") == "blob" and x["path"].endswith(layer["digest"])
               and x["status"] != "0"]
        check(len(lay) == 1 and lay[0]["status"] == "206"
              and int(lay[0]["bytes"]) == layer["size"] - offset,
              "resume answered %s (want 206, %d bytes)" % (lay, layer["size"] - offset))
        check(ctrd.images()[ref][1] == img["index_digest"], "image digest after resume")
        check(layer["digest"] in ctrd.content(), "layer not committed after resume")
        gets = up.blob_gets()
        check(gets.get(layer["digest"]) == 1,
              "pullcache fetched the layer %s times upstream" % gets.get(layer["digest"]))
        check(up.violations() == 0, "the blob host saw Authorization")
        ctrd.rm(ref)


# ---- podman -------------------------------------------------------------------------------------
def test_podman_pull_path_prefix():
    d, imgs = images()
    img = imgs["kube-proxy"]
    m = platform_manifest(img)
    with pclib.TestEnv("clients-podman") as env, clientlib.Podman(env) as pm:
        up = env.start_upstream(d)
        pc = start_mirror(env, up)
        hostport = "127.0.0.1:%d" % pc.port
        gen = clientlib.config("podman", "--mirror", pc.url).stdout
        check(tomllib.loads(gen)["registry"][0]["mirror"][0] ==
              {"location": hostport + "/registry.k8s.io", "insecure": True}, "generated:\n" + gen)
        pm.write_registries_conf(clientlib.strict_registries_conf(gen, hostport, ["registry.k8s.io"]))
        ref = "registry.k8s.io/kube-proxy:" + img["tag"]
        for attempt in ("cold", "warm"):
            off = clientlib.log_size(pc)
            up.reset()
            pm.podman("pull", ref)
            j = json.loads(pm.podman("image", "inspect", ref).stdout)[0]
            # podman reports the top-level index digest as Digest, the image ID is the config
            # digest, and RepoDigests holds both the index and the platform manifest.
            check(j["Digest"] == img["index_digest"], "%s: Digest %s" % (attempt, j["Digest"]))
            check("sha256:" + j["Id"] == m["config"], "%s: Id %s" % (attempt, j["Id"]))
            check(sorted(j["RepoDigests"]) == sorted(["registry.k8s.io/kube-proxy@" + img["index_digest"],
                                                      "registry.k8s.io/kube-proxy@" + m["digest"]]),
                  "%s: RepoDigests %s" % (attempt, j["RepoDigests"]))
            entries = wait_access_log(pc, off, lambda e: sum(x.get("route") == "blob" for x in e)
                                      >= 1 + len(m["layers"]), "podman access log")
            v2 = v2_entries(entries)
            check(all(e["path"].startswith("/v2/registry.k8s.io/kube-proxy/") for e in v2),
                  "path-prefix addressing: %s" % v2)
            check(all(e.get("upstream") == "registry.k8s.io" for e in v2), "upstream: %s" % v2)
            check(all(e["method"] == "GET" for e in v2), "podman sent a HEAD: %s" % v2)
            check(any(e.get("route") == "root" for e in entries), "no GET /v2/ ping: %s" % entries)
            if attempt == "cold":
                gets = up.blob_gets()
                check(set(gets) == {m["config"]} | set(m["layers"]) and set(gets.values()) == {1},
                      "cold upstream blob fetches: %s" % gets)
            else:
                check(up.log() == [], "warm podman pull reached the upstream: %s" % up.log()[:3])
                check(all(e.get("cache") == "hit" for e in v2), "warm not all hits: %s" % v2)
            pm.podman("rmi", ref)
        check(up.violations() == 0, "the blob host saw Authorization")


# ---- skopeo -------------------------------------------------------------------------------------
def verify_dir(img, dest):
    """A `dir:` copy of --all: top-level index bytes and every non-manifest blob."""
    with open(os.path.join(dest, "manifest.json"), "rb") as f:
        check(sha256_digest(f.read()) == img["index_digest"], "%s: index digest" % img["name"])
    for b in img["blobs"]:
        if b["kind"] in ("config", "layer"):
            with open(os.path.join(dest, b["digest"].split(":", 1)[1]), "rb") as f:
                check(sha256_digest(f.read()) == b["digest"], "%s: blob %s" % (img["name"], b["digest"]))


def test_skopeo_default_and_prefix():
    clientlib.require("skopeo", "skopeo")
    d, imgs = images()
    with pclib.TestEnv("clients-skopeo") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)  # registry.k8s.io is the default upstream
        host = "127.0.0.1:%d" % pc.port
        for name in ("pause", "coredns/coredns"):  # Docker list, OCI index
            img = imgs[name]
            for prefix in ("", "registry.k8s.io/"):
                ref = "docker://%s/%s%s:%s" % (host, prefix, name, img["tag"])
                raw = pclib.skopeo("inspect", "--raw", "--tls-verify=false", ref).stdout
                check(sha256_digest(raw.encode()) == img["index_digest"], "inspect --raw %s" % ref)
                info = json.loads(pclib.skopeo("inspect", "--tls-verify=false", ref).stdout)
                check(info["Digest"] == img["index_digest"], "inspect Digest %s" % info["Digest"])
                dest = env.path("dir-%s-%s" % (name.replace("/", "_"), bool(prefix)))
                pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                             ref, "dir:" + dest)
                verify_dir(img, dest)
            gets = up.blob_gets()
            dup = {k: v for k, v in gets.items() if v != 1}
            check(not dup, "%s: blobs fetched more than once upstream: %s" % (name, dup))
        # OCI image into an OCI layout, digest preserved.
        img = imgs["kube-proxy"]
        lay = env.path("oci")
        pclib.skopeo("copy", "--all", "--preserve-digests", "--src-tls-verify=false",
                     "docker://%s/registry.k8s.io/kube-proxy:%s" % (host, img["tag"]),
                     "oci:%s:%s" % (lay, img["tag"]))
        with open(os.path.join(lay, "index.json")) as f:
            idx = json.load(f)
        check(idx["manifests"][0]["digest"] == img["index_digest"], "oci layout index %s" % idx)
        for b in img["blobs"]:
            p = os.path.join(lay, "blobs", "sha256", b["digest"].split(":", 1)[1])
            with open(p, "rb") as f:
                check(sha256_digest(f.read()) == b["digest"], "oci blob %s" % b["digest"])
        entries, _ = clientlib.access_log(pc)
        v2 = v2_entries(entries)
        check(any(e["path"].startswith("/v2/registry.k8s.io/") for e in v2)
              and any(e["path"].startswith("/v2/pause/") for e in v2), "both addressings logged")
        check(not any(e["method"] == "HEAD" for e in v2), "skopeo sent HEAD: %s" % v2)
        # Everything again, warm: nothing reaches the upstream.
        up.reset()
        for name in ("pause", "coredns/coredns", "kube-proxy"):
            img = imgs[name]
            dest = env.path("warm-" + name.replace("/", "_"))
            pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                         "docker://%s/registry.k8s.io/%s:%s" % (host, name, img["tag"]), "dir:" + dest)
            verify_dir(img, dest)
        check(up.log() == [], "warm skopeo reached the upstream: %s" % up.log()[:3])
        check(up.violations() == 0, "the blob host saw Authorization")


TESTS = [test_config_generators, test_containerd_pause_cold_warm,
         test_containerd_all_platforms_and_oci, test_containerd_resume_with_range,
         test_podman_pull_path_prefix, test_skopeo_default_and_prefix]

if __name__ == "__main__":
    if os.geteuid() != 0:
        print("test_clients: containerd and rootful podman need root", flush=True)
    sys.exit(pclib.run_tests(TESTS))
