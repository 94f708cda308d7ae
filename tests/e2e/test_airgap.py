#!/usr/bin/python3
"""The air gap: `pullcache export` from a live store A (a directory, a tar file, a tar on
stdout), `pullcache import` into empty stores, `serve --offline` there: every image pulls
verified with skopeo; importing twice changes nothing; an incremental bundle made with --since
holds only the new blobs and imports on top; corrupt bundles (a flipped byte in one blob, a
truncated tar) are refused blob by blob with clear errors, nothing bad stored, the rest done.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_airgap.py [test_name ...]
"""

import json
import os
import shutil
import subprocess
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, sha256_digest  # noqa: E402

PC = os.environ.get("PULLCACHE")
ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
NAMES = ("kube-apiserver", "kube-proxy", "pause", "etcd", "coredns/coredns")


def run(*args, timeout=120, stdin=None, stdout=None):
    r = subprocess.run([PC] + [str(a) for a in args], stdin=stdin or subprocess.DEVNULL,
                       stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out = r.stdout.decode() if isinstance(r.stdout, bytes) else ""
    return r.returncode, out, r.stderr.decode()


def images():
    d = pclib.make_images("tiny")
    return d, pclib.load_images(d)


def all_blobs(imgs, names=NAMES):
    return {b["digest"] for n in names for b in imgs[n]["blobs"]}


def store_a(env, imgs, d, signed=()):
    """Store A: a daemon that prefetched the five images (every platform) and signatures."""
    up = env.start_upstream(d)
    sigs = {}
    for name in signed:
        sigs[name] = pclib.http_json("POST", up.url + "/_control/sign",
                                     {"repo": name, "subject": imgs[name]["index_digest"]})
    pc = env.start_pullcache(upstream=up, name="a")
    lst = env.path("list.txt")
    with open(lst, "w") as f:
        for name in NAMES:
            f.write("registry.k8s.io/%s:%s\n" % (name, imgs[name]["tag"]))
    rc, out, err = run("prefetch", "--store", pc.store, "--all-platforms", "--signatures", lst)
    check(rc == 0, "prefetch A: %s %s" % (out, err))
    return up, pc, sigs


def layout_blobs(path):
    """{digest: bytes} of a layout directory or tar."""
    out = {}
    if os.path.isdir(path):
        bd = os.path.join(path, "blobs", "sha256")
        for h in os.listdir(bd):
            with open(os.path.join(bd, h), "rb") as f:
                out["sha256:" + h] = f.read()
        return out
    with tarfile.open(path) as t:
        for m in t.getmembers():
            if m.name.startswith("blobs/sha256/"):
                out["sha256:" + m.name.rsplit("/", 1)[1]] = t.extractfile(m).read()
    return out


def layout_index(path):
    if os.path.isdir(path):
        with open(os.path.join(path, "index.json")) as f:
            return json.load(f)
    with tarfile.open(path) as t:
        names = t.getnames()
        check(names[:2] == ["oci-layout", "index.json"], "tar starts with the layout: %s" % names[:3])
        return json.load(t.extractfile("index.json"))


def check_bundle(path, imgs, names=NAMES, sigs=None):
    blobs = layout_blobs(path)
    for dg, data in blobs.items():
        check(sha256_digest(data) == dg, "bundle blob %s hashes to its name" % dg)
    check(all_blobs(imgs, names) <= set(blobs), "bundle misses %s" % (all_blobs(imgs, names) - set(blobs)))
    idx = layout_index(path)
    refs = {m["annotations"].get("org.opencontainers.image.ref.name"): m for m in idx["manifests"]}
    for n in names:
        ref = "registry.k8s.io/%s:%s" % (n, imgs[n]["tag"])
        check(ref in refs and refs[ref]["digest"] == imgs[n]["index_digest"], "index names %s: %s" % (ref, list(refs)))
        check(refs[ref]["annotations"]["dev.pullcache.repository"] == n, "repository annotation")
    for n, s in (sigs or {}).items():
        tag = "registry.k8s.io/%s:%s.sig" % (n, imgs[n]["index_digest"].replace(":", "-"))
        check(tag in refs and refs[tag]["digest"] == s["sig"], "signature %s carried" % tag)
    return blobs


def serve_offline(env, store, name):
    return env.start_pullcache(store=store, name=name,
                               args=["--offline", "--upstream", "registry.k8s.io=http://127.0.0.1:%d" % pclib.free_port()])


def pull_all(env, pc, imgs, names=NAMES):
    for n in names:
        img = imgs[n]
        dest = env.path("pull-%s-%s" % (pc.name, n.replace("/", "_")))
        pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--retry-times", "0",
                     "docker://127.0.0.1:%d/registry.k8s.io/%s:%s" % (pc.port, n, img["tag"]), "dir:" + dest)
        with open(os.path.join(dest, "manifest.json"), "rb") as f:
            check(sha256_digest(f.read()) == img["index_digest"], "%s: index digest" % n)
        for b in img["blobs"]:
            if b["kind"] in ("config", "layer"):
                with open(os.path.join(dest, b["digest"].split(":", 1)[1]), "rb") as f:
                    check(sha256_digest(f.read()) == b["digest"], "%s: blob %s" % (n, b["digest"]))


def ls_json(store):
    rc, out, err = run("ls", "--json", "--store", store)
    check(rc == 0, "ls: %s" % err)
    return sorted((x["upstream"], x["repository"], x["tag"], x["digest"]) for x in json.loads(out))


def store_files(store):
    out = set()
    for root, _, files in os.walk(os.path.join(store, "blobs")):
        out |= set(files)
    return out


def test_export_dir_tar_stdout_import_serve_offline():
    d, imgs = images()
    with pclib.TestEnv("airgap") as env:
        up, a, sigs = store_a(env, imgs, d, signed=("pause",))
        # export while A's daemon runs: a directory, a tar file, a tar on stdout
        bdir, btar, bpipe = env.path("bundle"), env.path("bundle.tar"), env.path("piped.tar")
        rc, _, err = run("export", "--store", a.store, "--all-platforms", "--signatures", "--all", bdir)
        check(rc == 0 and "exported 6 images" in err, "export dir: %d %s" % (rc, err))
        rc, _, err = run("export", "--store", a.store, "--all-platforms", "--signatures", "--all", btar)
        check(rc == 0 and not os.path.exists(btar + ".partial"), "export tar: %d %s" % (rc, err))
        with open(bpipe, "wb") as f:
            rc, _, err = run("export", "--store", a.store, "--all-platforms", "--signatures", "--all", "-", stdout=f)
        check(rc == 0, "export -: %s" % err)
        check(a.alive(), "A's daemon still runs")
        blobs = check_bundle(bdir, imgs, sigs=sigs)
        check(layout_blobs(btar) == blobs == layout_blobs(bpipe), "dir, tar and stdout carry the same blobs")
        with open(btar, "rb") as f1, open(bpipe, "rb") as f2:
            check(f1.read() == f2.read(), "the tar is reproducible")
        up.stop()

        # B from the directory, C from the tar file, D from the tar on stdin
        for name, src in (("b", bdir), ("c", btar), ("d", "-")):
            store = env.path("store-" + name)
            if src == "-":
                with open(bpipe, "rb") as f:
                    rc, out, err = run("import", "--store", store, "-", stdin=f)
            else:
                rc, out, err = run("import", "--store", store, src)
            check(rc == 0 and "imported 6 of 6 images" in out, "import %s: %d %s %s" % (name, rc, out, err))
            before, files = ls_json(store), store_files(store)
            check(len(before) == 6, "tags in %s: %s" % (name, before))
            if name == "b":  # importing the same bundle twice changes nothing
                rc, out, err = run("import", "--store", store, bdir)
                check(rc == 0 and ", 0 blobs" in out and " 0 manifests" in out, "second import: %s" % out)
                check(ls_json(store) == before and store_files(store) == files, "the second import changed the store")
                with open(os.path.join(store, "meta", "data.mdb"), "rb") as f:
                    mdb = f.read()
                run("import", "--store", store, bdir)
                with open(os.path.join(store, "meta", "data.mdb"), "rb") as f:
                    check(f.read() == mdb, "a third import wrote to LMDB")
            rc, out, err = run("fsck", "--store", store)
            check(rc == 0, "fsck %s: %s %s" % (name, out, err))
            pc = serve_offline(env, store, name)
            pull_all(env, pc, imgs)
            sig_tag = imgs["pause"]["index_digest"].replace(":", "-") + ".sig"
            r = pclib.http("GET", pc.url + "/v2/pause/manifests/" + sig_tag, {"Accept": ACCEPT})
            check(r.status == 200 and sha256_digest(r.body) == sigs["pause"]["sig"], "signature served offline from %s" % name)
            env.stop(pc)


def test_since_and_pin():
    d, imgs = images()
    with pclib.TestEnv("airgap-since") as env:
        up, a, _ = store_a(env, imgs, d)
        first = ("pause", "etcd", "kube-apiserver")
        b1, b2 = env.path("b1.tar"), env.path("b2")
        refs = ["registry.k8s.io/%s:%s" % (n, imgs[n]["tag"]) for n in first]
        rc, _, err = run("export", "--store", a.store, "--all-platforms", *refs, b1)
        check(rc == 0, "export first: %s" % err)
        check_bundle(b1, imgs, first)
        rc, _, err = run("export", "--store", a.store, "--all-platforms", "--since", b1, "--all", b2)
        check(rc == 0 and "blobs left out" in err, "export --since: %s" % err)
        old, new = layout_blobs(b1), layout_blobs(b2)
        check(new and not (set(old) & set(new)), "the incremental bundle repeats %s" % (set(old) & set(new)))
        check(set(old) | set(new) >= all_blobs(imgs), "together they hold everything")
        check(set(new) <= all_blobs(imgs) | {i["index_digest"] for i in imgs.values()}
              | {m["digest"] for i in imgs.values() for m in i["manifests"]}, "only image content")
        check(len(layout_index(b2)["manifests"]) == 5, "the incremental index names every image")
        # the incremental bundle alone: the images it cannot complete fail, named
        lone = env.path("store-lone")
        rc, out, _ = run("import", "--store", lone, b2)
        check(rc == 1 and "import the earlier bundle first" in out, "b2 alone: %s" % out)
        # first then incremental, with --pin
        store = env.path("store-e")
        rc, out, err = run("import", "--store", store, "--pin", b1)
        check(rc == 0 and "imported 3 of 3" in out, "import b1: %s %s" % (out, err))
        rc, out, err = run("import", "--store", store, "--pin", b2)
        check(rc == 0 and "imported 5 of 5" in out, "import b2 on top: %s %s" % (out, err))
        rc, pins, _ = run("pins", "--store", store)
        for n in NAMES:
            check("%s:%s" % (n, imgs[n]["tag"]) in pins, "%s pinned: %s" % (n, pins))
        up.stop()
        pc = serve_offline(env, store, "e")
        pull_all(env, pc, imgs)


def test_corrupt_bundles():
    d, imgs = images()
    with pclib.TestEnv("airgap-bad") as env:
        up, a, _ = store_a(env, imgs, d)
        good = env.path("good")
        rc, _, err = run("export", "--store", a.store, "--all-platforms", "--all", good)
        check(rc == 0, "export: %s" % err)
        up.stop()
        # import needs the store to itself: refused while A's daemon holds it, nothing done
        rc, out, err = run("import", "--store", a.store, good)
        check(rc == 1 and "stop the daemon" in err, "import into a live store: %d %s" % (rc, err))
        # a flipped byte in one layer of kube-proxy (its own, not the shared base layer)
        kp = imgs["kube-proxy"]
        others = all_blobs(imgs, [n for n in NAMES if n != "kube-proxy"])
        victim = [dg for dg in content_layers(kp) if dg not in others][0]
        bad = env.path("flipped")
        shutil.copytree(good, bad)
        p = os.path.join(bad, "blobs", "sha256", victim.split(":")[1])
        with open(p, "r+b") as f:
            f.seek(100)
            c = f.read(1)
            f.seek(100)
            f.write(bytes([c[0] ^ 0xFF]))
        for kind in ("dir", "tar"):
            src = bad
            if kind == "tar":
                src = env.path("flipped.tar")
                with tarfile.open(src, "w", format=tarfile.USTAR_FORMAT) as t:
                    for n in ("oci-layout", "index.json", "blobs"):
                        t.add(os.path.join(bad, n), arcname=n)
            store = env.path("store-flip-" + kind)
            rc, out, err = run("import", "--store", store, src)
            check(rc == 1, "%s: a corrupt bundle is an error: %s" % (kind, out))
            check("failed    registry.k8s.io/kube-proxy:v1.32.0" in out and "do not match" in out + err,
                  "%s: the image is named with the reason: %s %s" % (kind, out, err))
            check("imported 4 of 5 images" in out, "%s: the rest is done: %s" % (kind, out))
            check(victim.split(":")[1] not in store_files(store), "%s: the corrupt blob was stored" % kind)
            check(not any(t[1] == "kube-proxy" for t in ls_json(store)), "%s: the image was tagged" % kind)
            rc, out, err = run("fsck", "--store", store)
            check(rc == 0, "%s: fsck after a corrupt import: %s %s" % (kind, out, err))
        # a truncated tar: the reading stops with a clear error, what came before is kept
        full = env.path("full.tar")
        rc, _, err = run("export", "--store", a.store, "--all-platforms", "--all", full)
        check(rc == 0, "export tar: %s" % err)
        cut = env.path("cut.tar")
        with open(full, "rb") as f:
            data = f.read()
        with open(cut, "wb") as f:
            f.write(data[:len(data) * 2 // 3])
        store = env.path("store-cut")
        rc, out, err = run("import", "--store", store, cut)
        check(rc == 1 and "stops early" in err, "truncated: %d %s %s" % (rc, out, err))
        check("failed" in out, "some image is named as failed: %s" % out)
        rc, out2, err2 = run("fsck", "--store", store)
        check(rc == 0, "fsck after a truncated import: %s %s" % (out2, err2))
        # the same store takes the whole bundle afterwards: the rest comes in
        rc, out, err = run("import", "--store=" + store, full)
        check(rc == 0 and "imported 5 of 5" in out, "the full tar on top: %s %s" % (out, err))
        # every command reads --store=DIR as --store DIR (core/num pc_opt_value)
        for cmd in ("fsck", "du", "egress"):
            rc, out, err = run(cmd, "--store=" + store)
            check(rc == 0, "%s --store=DIR: %d %s %s" % (cmd, rc, out, err))
        for cmd in ("fsck", "du", "egress", "import", "export", "prefetch"):
            rc, out, err = run(cmd, "--store")
            check(rc == 2 and "--store needs a value" in err, "%s --store with no value: %d %s" % (cmd, rc, err))
        # bad input to the commands themselves
        for args in (["import"], ["import", "--upstream", "x.io", good], ["export", "--store", a.store, good],
                     ["export", "--store", a.store, "--all", "registry.k8s.io/pause:3.10", env.path("o")],
                     ["export", "--store", a.store, "--platform", "linux", "--all", env.path("o2")]):
            rc, out, err = run(*args)
            check(rc == 2, "usage %s: %d %s" % (args, rc, err))
        rc, _, err = run("export", "--store", a.store, "registry.k8s.io/kube-scheduler:v1.32.0",
                         "registry.k8s.io/pause:3.10", env.path("partial"))
        check(rc == 1 and "kube-scheduler" in err and "not in the store" in err, "unknown ref: %s" % err)
        check(os.path.exists(env.path("partial", "index.json")), "the known image is exported")
        rc, _, err = run("export", "--store", a.store, "--all", good)
        check(rc == 1 and "not empty" in err, "export into a full directory: %s" % err)


def content_layers(img):
    return [dg for m in img["manifests"] for dg in m["layers"]]


TESTS = [test_export_dir_tar_stdout_import_serve_offline, test_since_and_pin, test_corrupt_bundles]

if __name__ == "__main__":
    sys.exit(pclib.run_tests(TESTS))
