#!/usr/bin/python3
"""`pullcache prefetch`: a kubeadm-style image list filled through the running daemon, then the
real clients (skopeo, containerd's ctr) pull every listed image with zero upstream requests,
also with the upstream stopped; a single platform; a node pulling during the prefetch joins its
fills (each blob once upstream); bad lines are refused one by one and the rest is done;
--signatures takes the cosign tags and the referrers, served with the upstream gone.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_prefetch.py [test_name ...]
"""

import json
import os
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clientlib  # noqa: E402
import pclib  # noqa: E402
from test_clients import containerd_hosts, verify_dir  # noqa: E402
from pclib import check, sha256_digest  # noqa: E402

ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")


def images(scale="tiny"):
    d = pclib.make_images(scale)
    return d, pclib.load_images(d)


def kubeadm_list(env, imgs, extra=()):
    """The list as `kubeadm config images list` prints it (plus a comment and EXTRA lines)."""
    path = env.path("images-%d.txt" % len(os.listdir(env.path())))
    with open(path, "w") as f:
        f.write("# kubeadm config images list --kubernetes-version v1.32.0\n")
        for name in ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns"):
            f.write("registry.k8s.io/%s:%s\n" % (name, imgs[name]["tag"]))
        for line in extra:
            f.write(line + "\n")
    return path


def prefetch(pc, *args, timeout=120):
    """Run pullcache prefetch --json --store <pc.store> ARGS; returns (rc, {ref: image}, doc)."""
    argv = [os.environ["PULLCACHE"], "prefetch", "--store", pc.store, "--json"] + list(args)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        raise pclib.CheckFailed("prefetch printed no JSON (rc %d): %s\n%s" % (r.returncode, r.stdout, r.stderr))
    return r.returncode, {i["ref"]: i for i in doc["images"]}, doc


def platform_manifests(img, arch=None):
    return [m for m in img["manifests"] if arch is None or
            (m["platform"]["os"] == "linux" and m["platform"]["architecture"] == arch)]


def content_blobs(img, arch=None):
    out = set()
    for m in platform_manifests(img, arch):
        out |= {m["config"]} | set(m["layers"])
    return out


def test_all_platforms_then_clients_offline():
    d, imgs = images()
    with pclib.TestEnv("prefetch-all") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        lst = kubeadm_list(env, imgs)
        rc, got, doc = prefetch(pc, "--all-platforms", lst)
        check(rc == 0 and doc["code"] == 0, "prefetch rc %d: %s" % (rc, doc))
        check(len(got) == 5, "five images: %s" % list(got))
        for ref, i in got.items():
            check(i["status"] == "fetched" and not i.get("error"), "%s: %s" % (ref, i))
            name = ref.split("/", 1)[1].rsplit(":", 1)[0]
            check(i["digest"] == imgs[name]["index_digest"], "%s digest" % ref)
            check(len(i["platforms"].split(",")) == len(imgs[name]["manifests"]), "%s platforms %s" % (ref, i["platforms"]))
        want = set()
        for img in imgs.values():
            want |= content_blobs(img)
        gets = up.blob_gets()
        check(set(gets) == want, "blobs fetched: missing %s, extra %s" % (want - set(gets), set(gets) - want))
        check(all(v == 1 for v in gets.values()), "a blob fetched twice: %s" % gets)

        # Re-running is cheap: everything is checked in the store, nothing fetched.
        up.reset()
        rc, got, _ = prefetch(pc, "--all-platforms", lst)
        check(rc == 0 and all(i["status"] == "cached" for i in got.values()), "rerun: %s" % got)
        check(up.log() == [], "rerun reached the upstream: %s" % up.log()[:3])

        # skopeo and containerd pull every listed image through the mirror: no upstream request.
        host = "127.0.0.1:%d" % pc.port
        with clientlib.Containerd(env) as ctrd:
            containerd_hosts(ctrd, pc)
            for name in ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns"):
                img = imgs[name]
                dest = env.path("skopeo-" + name.replace("/", "_"))
                pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                             "docker://%s/registry.k8s.io/%s:%s" % (host, name, img["tag"]), "dir:" + dest)
                verify_dir(img, dest)
                ref = "registry.k8s.io/%s:%s" % (name, img["tag"])
                ctrd.pull(ref, "--all-platforms")
                check(ctrd.images()[ref][1] == img["index_digest"], "ctr %s digest" % ref)
                check({b["digest"] for b in img["blobs"]} <= ctrd.content(), "ctr %s content" % ref)
            check(up.log() == [], "a client pull reached the upstream: %s" % up.log()[:3])

            # The upstream is gone: still served; an image that was not listed fails cleanly.
            up.stop()
            for name in ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns"):
                img = imgs[name]
                ref = "registry.k8s.io/%s:%s" % (name, img["tag"])
                ctrd.rm(ref)
                ctrd.pull(ref)
                check(ctrd.images()[ref][1] == img["index_digest"], "ctr %s with the upstream stopped" % ref)
                dest = env.path("offline-" + name.replace("/", "_"))
                pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                             "docker://%s/registry.k8s.io/%s:%s" % (host, name, img["tag"]), "dir:" + dest)
                verify_dir(img, dest)
            r = pclib.skopeo("inspect", "--raw", "--tls-verify=false", "--retry-times", "0",
                             "docker://%s/registry.k8s.io/kube-scheduler:v1.32.0" % host, check_rc=False, timeout=60)
            check(r.returncode != 0, "an unlisted image was served: %s" % r.stdout[:200])
            r = pclib.http("GET", pc.url + "/v2/kube-scheduler/manifests/v1.32.0", {"Accept": ACCEPT})
            check(r.status in (404, 502, 503, 504) and json.loads(r.body)["errors"], "unlisted: %d %r" % (r.status, r.body[:200]))
            r = clientlib.run(ctrd.pull_argv("registry.k8s.io/kube-scheduler:v1.32.0"), check_rc=False, timeout=60)
            check(r.returncode != 0, "ctr pulled an unlisted image")
            for name in ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns"):
                ctrd.rm("registry.k8s.io/%s:%s" % (name, imgs[name]["tag"]))


def test_single_platform():
    d, imgs = images()
    with pclib.TestEnv("prefetch-one") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        lst = kubeadm_list(env, imgs)
        rc, got, _ = prefetch(pc, "--platform", "linux/arm64", "--pin", lst)
        check(rc == 0, "prefetch arm64: %s" % got)
        for ref, i in got.items():
            check(i["platforms"].startswith("linux/arm64") and "," not in i["platforms"], "%s: %s" % (ref, i["platforms"]))
        want = set()
        for img in imgs.values():
            want |= content_blobs(img, "arm64")
        gets = up.blob_gets()
        check(set(gets) == want and all(v == 1 for v in gets.values()),
              "arm64 blobs: missing %s, extra %s" % (want - set(gets), set(gets) - want))
        pins = subprocess.run([os.environ["PULLCACHE"], "pins", "--store", pc.store], capture_output=True,
                              text=True, timeout=30).stdout
        for name in imgs:
            check("%s:%s" % (name, imgs[name]["tag"]) in pins, "--pin: %s not pinned:\n%s" % (name, pins))
        # the arm64 images pull with no upstream request, from skopeo and containerd
        up.reset()
        host = "127.0.0.1:%d" % pc.port
        with clientlib.Containerd(env) as ctrd:
            containerd_hosts(ctrd, pc)
            for name, img in imgs.items():
                dest = env.path("arm-" + name.replace("/", "_"))
                pclib.skopeo("copy", "--override-arch", "arm64", "--override-os", "linux", "--src-tls-verify=false",
                             "--retry-times", "0", "docker://%s/registry.k8s.io/%s:%s" % (host, name, img["tag"]),
                             "dir:" + dest)
                m = platform_manifests(img, "arm64")[0]
                with open(os.path.join(dest, "manifest.json"), "rb") as f:
                    check(sha256_digest(f.read()) == m["digest"], "%s arm64 manifest" % name)
                ref = "registry.k8s.io/%s:%s" % (name, img["tag"])
                ctrd.pull(ref, "--platform", "linux/arm64")
                check(content_blobs(img, "arm64") <= ctrd.content(), "ctr arm64 %s" % name)
                ctrd.rm(ref)
        check(up.log() == [], "arm64 pulls reached the upstream: %s" % up.log()[:3])


def test_bad_lines_and_usage():
    d, imgs = images()
    with pclib.TestEnv("prefetch-bad") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        path = env.path("bad.txt")
        with open(path, "w") as f:
            f.write("registry.k8s.io/pause:%s  # the sandbox image\n" % imgs["pause"]["tag"])
            f.write("registry.k8s.io/pause:3.10 extra words\n")         # malformed
            f.write("quay.example/coreos/etcd:v3.5.16\n")               # unknown upstream
            f.write("registry.k8s.io/kube-apiserver:v9.99.0\n")         # no such tag
            f.write("registry.k8s.io/Kube-Proxy:v1.32.0\n")             # not the OCI grammar
            f.write("registry.k8s.io/etcd@sha256:%s\n" % ("0" * 63))   # short digest
            f.write("\n# done\nregistry.k8s.io/coredns/coredns:%s\n" % imgs["coredns/coredns"]["tag"])
        rc, got, doc = prefetch(pc, path)
        check(rc == 1 and doc["code"] == 1, "some failed: rc %d" % rc)
        check(got["registry.k8s.io/pause:3.10"]["status"] == "fetched", "pause done: %s" % got)
        check(got["registry.k8s.io/coredns/coredns:v1.11.3"]["status"] == "fetched", "coredns done")
        errs = {ref: i.get("error", "") for ref, i in got.items() if i["status"] == "failed"}
        check(len(errs) == 5, "five failed lines: %s" % errs)
        check("line 2" in errs["registry.k8s.io/pause:3.10 extra words"], errs)
        check("unknown upstream" in errs["quay.example/coreos/etcd:v3.5.16"], errs)
        check("manifest unknown" in errs["registry.k8s.io/kube-apiserver:v9.99.0"], errs)
        check("repository name" in errs["registry.k8s.io/Kube-Proxy:v1.32.0"], errs)
        check("digest" in errs["registry.k8s.io/etcd@sha256:" + "0" * 63], errs)
        # nothing of the bad lines was stored
        ls = json.loads(subprocess.run([os.environ["PULLCACHE"], "ls", "--json", "--store", pc.store],
                                       capture_output=True, text=True, timeout=30).stdout)
        check(sorted(x["repository"] for x in ls) == ["coredns/coredns", "pause"], "stored tags: %s" % ls)
        # the table on a non-terminal: one line per image, then the table naming the failures
        r = subprocess.run([os.environ["PULLCACHE"], "prefetch", "--store", pc.store, path],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 1, "table run rc %d" % r.returncode)
        check("IMAGE" in r.stdout and "unknown upstream" in r.stdout and "cached" in r.stdout, r.stdout)
        # a long list of refused lines (each ends at once) and one good line
        many = env.path("many.txt")
        with open(many, "w") as f:
            for i in range(3000):
                f.write("unknown%d.example/x:%d\n" % (i, i))
            f.write("registry.k8s.io/pause:%s\n" % imgs["pause"]["tag"])
        rc, got, doc = prefetch(pc, many)
        check(rc == 1 and len(got) == 3001, "3001 lines: rc %d, %d images" % (rc, len(got)))
        check(sum(1 for i in got.values() if i["status"] == "failed") == 3000, "3000 refused")
        check(got["registry.k8s.io/pause:3.10"]["status"] == "cached", "the good line done")
        # usage errors: 2, nothing contacted
        for args in (["--platform", "linux", path], ["--jobs", "0", path], [], ["--all-platforms", "--platform",
                                                                              "linux/amd64", path],
                     ["--bogus", path], [env.path("missing.txt")]):
            r = subprocess.run([os.environ["PULLCACHE"], "prefetch", "--store", pc.store] + args,
                               capture_output=True, text=True, timeout=30)
            check(r.returncode == 2, "usage %s: rc %d %s" % (args, r.returncode, r.stderr))
        # no daemon: a clear error, 1
        r = subprocess.run([os.environ["PULLCACHE"], "prefetch", "--store", env.path("nostore"), path],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 1 and "no daemon" in r.stderr, "no daemon: %d %s" % (r.returncode, r.stderr))


def metric(pc, name):
    body = pclib.http("GET", pc.url + "/metrics").body.decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_node_joins_during_prefetch():
    d, imgs = images()
    api = imgs["kube-apiserver"]
    m = platform_manifests(api, HOST_ARCH)[0]
    big = m["layers"][-1]
    with pclib.TestEnv("prefetch-join") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        up.faults([{"role": "blobs", "path_re": big.split(":")[1], "fault": "stall", "after": 100,
                    "delay_ms": 3000}])
        lst = env.path("one.txt")
        with open(lst, "w") as f:
            f.write("registry.k8s.io/kube-apiserver:%s\n" % api["tag"])
        box = {}
        t = threading.Thread(target=lambda: box.update(r=prefetch(pc, lst)))
        t.start()
        try:
            pclib.wait_for(lambda: metric(pc, "pullcache_fills_in_flight") >= 1, 20, "the prefetch's fill")
            joins = metric(pc, "pullcache_fill_joins_total")
            # a node pulls the same image now: skopeo, the whole image of this platform
            dest = env.path("node")
            pclib.skopeo("copy", "--src-tls-verify=false", "--retry-times", "0",
                         "docker://127.0.0.1:%d/registry.k8s.io/kube-apiserver:%s" % (pc.port, api["tag"]),
                         "dir:" + dest)
            with open(os.path.join(dest, big.split(":")[1]), "rb") as f:
                check(sha256_digest(f.read()) == big, "the node got the stalled layer verified")
            check(metric(pc, "pullcache_fill_joins_total") > joins, "the node did not join a fill")
        finally:
            t.join(60)
        rc, got, _ = box["r"]
        check(rc == 0, "prefetch: %s" % got)
        gets = up.blob_gets()
        check(gets.get(big) == 1, "stalled layer fetched %s times" % gets.get(big))
        check(all(v == 1 for v in gets.values()), "each blob once upstream: %s" % gets)
        entries, _ = clientlib.access_log(pc)
        joined = [e for e in entries if e.get("path", "").endswith(big)]
        check(joined and joined[0].get("cache") == "join", "the node's request: %s" % joined)


def test_daemon_stops_during_prefetch_and_client_goes_away():
    d, imgs = images()
    api = imgs["kube-apiserver"]
    big = platform_manifests(api, HOST_ARCH)[0]["layers"][-1]
    with pclib.TestEnv("prefetch-stop") as env:
        up = env.start_upstream(d)
        pc = env.start_pullcache(upstream=up)
        up.faults([{"role": "blobs", "path_re": big.split(":")[1], "fault": "stall", "after": 100,
                    "delay_ms": 4000, "count": 1}])
        lst = kubeadm_list(env, imgs)
        # the client goes away (killed) mid-run: the daemon's fill goes on and is stored
        p = subprocess.Popen([os.environ["PULLCACHE"], "prefetch", "--store", pc.store, lst],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pclib.wait_for(lambda: metric(pc, "pullcache_fills_in_flight") >= 1, 20, "a fill")
        p.kill()
        p.wait(10)
        pclib.wait_for(lambda: metric(pc, "pullcache_fills_in_flight") == 0, 30, "the fills to end")
        rc, got, _ = prefetch(pc, lst)
        check(rc == 0, "after the client went away: %s" % got)
        check(up.blob_gets().get(big) == 1, "the stalled layer was fetched once: %s" % up.blob_gets().get(big))
        # SIGTERM while a prefetch runs: the daemon stops (its fills cancelled), the CLI says so
        pc2 = env.start_pullcache(upstream=up, name="pc2")
        up.faults([{"role": "blobs", "path_re": big.split(":")[1], "fault": "stall", "after": 100,
                    "delay_ms": 8000, "count": 1}])
        p = subprocess.Popen([os.environ["PULLCACHE"], "prefetch", "--json", "--store", pc2.store, lst],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pclib.wait_for(lambda: metric(pc2, "pullcache_fills_in_flight") >= 1, 20, "a fill")
        code = env.stop(pc2)
        check(code == 0, "the daemon stopped cleanly during a prefetch: %s" % code)
        out, err = p.communicate(timeout=30)
        check(p.returncode == 1, "the prefetch failed: %d %s %s" % (p.returncode, out, err))
        failed = [i for i in json.loads(out)["images"] if i["status"] == "failed"]
        check(failed and all(i.get("error") for i in failed), "failures named: %s" % failed)


def publish_signature(up, img):
    """A cosign .sig tag and an OCI referrer (a signature artifact with a subject) for IMG."""
    return pclib.http_json("POST", up.url + "/_control/sign", {"repo": img["name"], "subject": img["index_digest"]})


def test_signatures_offline():
    d, imgs = images()
    with pclib.TestEnv("prefetch-sig") as env:
        up = env.start_upstream(d)
        up.config(referrers_edge_404=False)
        pc = env.start_pullcache(upstream=up)
        signed = {}
        for name in ("pause", "kube-proxy"):
            signed[name] = publish_signature(up, imgs[name])
        lst = kubeadm_list(env, imgs)
        rc, got, _ = prefetch(pc, "--signatures", lst)
        check(rc == 0, "prefetch --signatures: %s" % got)
        for name in imgs:
            n = got["registry.k8s.io/%s:%s" % (name, imgs[name]["tag"])]["signatures"]
            check(n == (2 if name in signed else 0), "%s signatures %d" % (name, n))
        up.stop()
        for name, s in signed.items():
            sig_tag = imgs[name]["index_digest"].replace(":", "-") + ".sig"
            r = pclib.http("GET", pc.url + "/v2/%s/manifests/%s" % (name, sig_tag), {"Accept": ACCEPT})
            check(r.status == 200 and sha256_digest(r.body) == s["sig"], "%s .sig offline: %d" % (name, r.status))
            sig = json.loads(r.body)
            for b in sig["layers"] + [sig["config"]]:
                r = pclib.http("GET", pc.url + "/v2/%s/blobs/%s" % (name, b["digest"]))
                check(r.status == 200 and sha256_digest(r.body) == b["digest"], "%s sig blob offline" % name)
            r = pclib.http("GET", pc.url + "/v2/%s/referrers/%s" % (name, imgs[name]["index_digest"]))
            check(r.status == 200, "%s referrers offline: %d" % (name, r.status))
            descs = json.loads(r.body)["manifests"]
            check([x["digest"] for x in descs] == [s["referrer"]], "%s referrers %s" % (name, descs))
            r = pclib.http("GET", pc.url + "/v2/%s/manifests/%s" % (name, s["referrer"]), {"Accept": ACCEPT})
            check(r.status == 200 and sha256_digest(r.body) == s["referrer"], "%s referrer offline" % name)
            art = json.loads(r.body)
            for b in art["layers"]:
                r = pclib.http("GET", pc.url + "/v2/%s/blobs/%s" % (name, b["digest"]))
                check(r.status == 200 and sha256_digest(r.body) == b["digest"], "%s referrer blob offline" % name)


TESTS = [test_all_platforms_then_clients_offline, test_single_platform, test_bad_lines_and_usage,
         test_node_joins_during_prefetch, test_daemon_stops_during_prefetch_and_client_goes_away,
         test_signatures_offline]

if __name__ == "__main__":
    sys.exit(pclib.run_tests(TESTS))
