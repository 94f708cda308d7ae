#!/usr/bin/python3
"""End-to-end: skopeo copies seeded multi-arch images out of `pullcache serve --offline`.

The store is seeded with `pullcache import`; skopeo (GET /v2/, then manifests by tag and digest
with six Accept lines, then blobs) copies every platform with --all, addressed plainly and with
the CRI-O/podman path prefix (127.0.0.1:PORT/registry.k8s.io/<image>). Every manifest and blob
digest in the copy must equal the generated one.

OCI-flavoured images are copied to an `oci:` layout. skopeo's oci: destination only holds OCI
manifest types, so the Docker-flavoured images (pause, etcd) would be converted (new digests);
they are copied to a `dir:` destination instead, which keeps manifests byte-for-byte.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check  # noqa: E402

PULLCACHE = os.environ.get("PULLCACHE")


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def start_serve(env, store):
    argv = [PULLCACHE, "serve", "--offline", "--listen", "127.0.0.1:0", "--store", store,
            "--upstream", "registry.k8s.io=http://127.0.0.1:9"]
    s = env.spawn("pullcache", argv, cls=pclib.Server)

    def ready():
        if not s.alive():
            raise pclib.CheckFailed("pullcache exited %s:\n%s" % (s.popen.returncode, s.tail()))
        with open(s.log_path, "rb") as f:
            m = re.search(rb"ready listen=127\.0\.0\.1:(\d+)", f.read())
        return m and int(m.group(1))
    s.port = pclib.wait_for(ready, 20, "pullcache ready line")
    return s


def expected_digests(im):
    return {b["digest"] for b in im["blobs"]}


def check_oci_copy(d, im):
    with open(os.path.join(d, "index.json")) as f:
        idx = json.load(f)
    top = idx["manifests"][0]
    check(top["digest"] == im["index_digest"], "top-level digest %s != %s" % (top["digest"], im["index_digest"]))
    found = set()
    for name in os.listdir(os.path.join(d, "blobs", "sha256")):
        dg = file_digest(os.path.join(d, "blobs", "sha256", name))
        check(dg == "sha256:" + name, "copied blob %s hashes to its name" % name)
        found.add(dg)
    want = expected_digests(im)
    check(found == want, "blob set differs: missing %s extra %s" % (want - found, found - want))


def check_dir_copy(d, im):
    # dir: with --all: manifest.json (the list) plus <digest-hex>.manifest.json per instance and
    # one file per blob named by its hex digest
    check(file_digest(os.path.join(d, "manifest.json")) == im["index_digest"], "top-level list digest")
    found = {im["index_digest"]}
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if name in ("manifest.json", "version"):
            continue
        dg = file_digest(p)
        hexpart = name.split(".")[0]
        check(dg == "sha256:" + hexpart, "dir copy %s hashes to its name" % name)
        found.add(dg)
    want = expected_digests(im)
    check(found == want, "blob set differs: missing %s extra %s" % (want - found, found - want))


def main():
    check(PULLCACHE and os.path.exists(PULLCACHE), "PULLCACHE not set")
    if not shutil.which("skopeo"):
        print("SKIP: skopeo not installed")
        return 0
    images_dir = pclib.make_images("tiny")
    images = pclib.load_images(images_dir)
    with pclib.TestEnv("skopeo-local") as env:
        store = env.path("store")
        for name, im in images.items():
            r = subprocess.run([PULLCACHE, "import", "--store", store, "--upstream", "registry.k8s.io",
                                "--repo", name, os.path.join(images_dir, im["layout_dir"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
            check(r.returncode == 0, "import %s: %s" % (name, r.stderr))
        srv = start_serve(env, store)

        def t_copy_all():
            for name, im in images.items():
                for prefix in ("", "registry.k8s.io/"):
                    src = "docker://127.0.0.1:%d/%s%s:%s" % (srv.port, prefix, name, im["tag"])
                    out = env.path("copy-%s-%s" % (name.replace("/", "_"), "p" if prefix else "n"))
                    if im["flavour"] == "oci":
                        pclib.skopeo("copy", "--all", "--src-tls-verify=false", src, "oci:%s:x" % out)
                        check_oci_copy(out, im)
                    else:
                        pclib.skopeo("copy", "--all", "--src-tls-verify=false", src, "dir:%s" % out)
                        check_dir_copy(out, im)

        def t_inspect_raw():
            im = images["pause"]
            r = pclib.skopeo("inspect", "--raw", "--tls-verify=false",
                             "docker://127.0.0.1:%d/pause:%s" % (srv.port, im["tag"]))
            check(r.stdout.encode() == pclib.read_blob(images_dir, im, im["index_digest"]),
                  "inspect --raw returns the exact manifest list bytes")

        def t_missing():
            r = pclib.skopeo("inspect", "--raw", "--tls-verify=false",
                             "docker://127.0.0.1:%d/pause:nope" % srv.port, check_rc=False)
            check(r.returncode != 0 and "manifest unknown" in r.stderr.lower(),
                  "missing tag reported as manifest unknown: %s" % r.stderr[-300:])

        t_copy_all.__name__ = "copy_all_platforms"
        t_inspect_raw.__name__ = "inspect_raw"
        t_missing.__name__ = "missing_tag"
        rc = pclib.run_tests([t_copy_all, t_inspect_raw, t_missing])
        check(env.stop(srv) == 0, "clean stop")
        return rc


if __name__ == "__main__":
    sys.exit(main())
