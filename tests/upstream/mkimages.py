#!/usr/bin/python3
"""Deterministic generator of k8s-like multi-arch container images, written as OCI image layouts.

    mkimages.py --out DIR [--scale tiny|small|k8s] [--seed N]

One layout per image at DIR/<name with '/' replaced by '_'>/ (oci-layout, index.json whose
manifests[0] is the image's top-level index/list annotated with org.opencontainers.image.ref.name
= tag, blobs/sha256/...), plus DIR/images.json describing everything (see README.md).

Same --scale and --seed give byte-identical output (layers are gzip'ed tar files with fixed
headers and mtime=0, filled from a PRNG seeded per layer). Stdlib only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

REF_NAME = "org.opencontainers.image.ref.name"

# Scale factor applied to the realistic (k8s) layer sizes, and a floor per layer.
SCALES = {"tiny": (0.004, 512), "small": (0.07, 4096), "k8s": (1.0, 4096)}

# Per-arch compressed sizes in bytes at scale k8s. "base" is the shared distroless-like base
# layer: identical bytes (same digest, per arch) in every image that lists it.
MB = 1000 * 1000
BASE_SIZE = {"k8s": int(0.8 * MB)}
IMAGES = [
    {"name": "pause", "tag": "3.10", "flavour": "docker", "windows": True,
     "entrypoint": ["/pause"],
     "layers": [("pause", int(0.3 * MB))]},
    {"name": "coredns/coredns", "tag": "v1.11.3", "flavour": "oci",
     "entrypoint": ["/coredns"],
     "layers": [("base", None), ("certs", int(0.2 * MB)), ("coredns", int(19.0 * MB))]},
    {"name": "etcd", "tag": "3.5.16-0", "flavour": "docker",
     "entrypoint": ["/usr/local/bin/etcd"],
     "layers": [("base", None), ("etcd", int(23.0 * MB)), ("etcdctl", int(17.0 * MB)),
                ("etcdutl", int(17.2 * MB))]},
    {"name": "kube-apiserver", "tag": "v1.32.0", "flavour": "oci",
     "entrypoint": ["/usr/local/bin/kube-apiserver"],
     "layers": [("base", None), ("go-runner", int(1.2 * MB)), ("kube-apiserver", int(28.0 * MB))]},
    {"name": "kube-proxy", "tag": "v1.32.0", "flavour": "oci",
     "entrypoint": ["/usr/local/bin/kube-proxy"],
     "layers": [("base", None), ("iptables", int(12.0 * MB)), ("go-runner", int(1.2 * MB)),
                ("kube-proxy", int(18.0 * MB))]},
]
PLATFORMS = [{"architecture": "amd64", "os": "linux"},
             {"architecture": "arm64", "os": "linux", "variant": "v8"}]
WINDOWS = {"architecture": "amd64", "os": "windows", "os.version": "10.0.17763.6532"}
CREATED = "2024-12-11T00:00:00Z"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layout_dir_name(name):
    return name.replace("/", "_")


class Layout:
    """One OCI image layout being written: blobs are content-addressed files."""

    def __init__(self, path):
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "wb") as f:
            f.write(b'{"imageLayoutVersion":"1.0.0"}')
        self.blobs = {}  # digest -> (size, media_type, kind)

    def put(self, data, media_type, kind):
        d = sha256(data)
        p = os.path.join(self.path, "blobs", "sha256", d[7:])
        if not os.path.exists(p):
            with open(p + ".tmp", "wb") as f:
                f.write(data)
            os.replace(p + ".tmp", p)
        self.blobs.setdefault(d, (len(data), media_type, kind))
        return {"mediaType": media_type, "digest": d, "size": len(data)}


def make_layer(seed, key, size, minimum):
    """A gzip'ed tar of about SIZE compressed bytes; returns (gz_bytes, diff_id)."""
    rng = random.Random("%d:%s" % (seed, key))
    size = max(minimum, size)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        def add(name, data=None, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tar.addfile(ti)
            else:
                ti.mode = mode
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        top = "usr/local/%s" % key
        add("usr"), add("usr/local"), add(top)
        # A little compressible text (a realistic touch), then incompressible payload files.
        text = ("# %s layer, generated for pullcache tests\n" % key).encode() * 8
        add(top + "/README", text)
        nfiles = 1 + rng.randrange(4)
        remaining = size - len(text) // 4
        for i in range(nfiles):
            n = remaining // (nfiles - i) if i < nfiles - 1 else remaining
            n = max(0, n)
            remaining -= n
            add("%s/file%d.bin" % (top, i), rng.randbytes(n), 0o755)
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, compresslevel=1, mtime=0) as g:
        g.write(tar_bytes)
    return gz.getvalue(), sha256(tar_bytes)


def dumps(obj, flavour):
    # Docker-flavoured documents are indented like docker/distribution writes them; OCI ones
    # compact. Either way the digest is over exactly these bytes.
    if flavour == "docker":
        return json.dumps(obj, indent=3).encode()
    return json.dumps(obj, separators=(",", ":")).encode()


def build_image(out, spec, seed, scale, layer_cache):
    factor, minimum = SCALES[scale]
    flavour = spec["flavour"]
    docker = flavour == "docker"
    lay_dir = layout_dir_name(spec["name"])
    lay = Layout(os.path.join(out, lay_dir))
    platforms = list(PLATFORMS) + ([WINDOWS] if spec.get("windows") else [])
    children = []
    for plat in platforms:
        pkey = plat["os"] + "-" + plat["architecture"]
        layer_descs, diff_ids, history = [], [], []
        for lname, lsize in spec["layers"]:
            if lname == "base":
                key = "base/" + pkey  # shared across images: no image name in the key
                lsize = BASE_SIZE["k8s"]
            else:
                key = "%s/%s/%s" % (spec["name"], lname, pkey)
            if key not in layer_cache:
                layer_cache[key] = make_layer(seed, key, int(lsize * factor), minimum)
            gz, diff_id = layer_cache[key]
            layer_descs.append(lay.put(gz, DOCKER_LAYER if docker else OCI_LAYER, "layer"))
            diff_ids.append(diff_id)
            history.append({"created": CREATED, "created_by": "COPY %s / # buildkit" % lname})
        cfg = {"architecture": plat["architecture"], "os": plat["os"]}
        if "variant" in plat:
            cfg["variant"] = plat["variant"]
        if "os.version" in plat:
            cfg["os.version"] = plat["os.version"]
        cfg.update({
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Entrypoint": spec["entrypoint"], "User": "65532:65532" if spec["name"] != "pause" else "65535:65535"},
            "created": CREATED,
            "history": history,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        cfg_desc = lay.put(json.dumps(cfg, separators=(",", ":")).encode(),
                           DOCKER_CONFIG if docker else OCI_CONFIG, "config")
        man = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
               "config": cfg_desc, "layers": layer_descs}
        man_desc = lay.put(dumps(man, flavour), man["mediaType"], "manifest")
        man_desc["platform"] = dict(plat)
        children.append((man_desc, cfg_desc, layer_descs))
    idx = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX,
           "manifests": [c[0] for c in children]}
    idx_bytes = dumps(idx, flavour)
    idx_desc = lay.put(idx_bytes, idx["mediaType"], "index")
    top = dict(idx_desc)
    top["annotations"] = {REF_NAME: spec["tag"]}
    with open(os.path.join(lay.path, "index.json"), "wb") as f:
        f.write(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top]},
                           separators=(",", ":")).encode())
    return {
        "name": spec["name"],
        "tag": spec["tag"],
        "flavour": flavour,
        "layout_dir": lay_dir,
        "index_digest": idx_desc["digest"],
        "index_media_type": idx["mediaType"],
        "index_size": idx_desc["size"],
        "manifests": [{"digest": m["digest"], "media_type": m["mediaType"], "size": m["size"],
                       "platform": m["platform"], "config": c["digest"],
                       "layers": [layer["digest"] for layer in ls]}
                      for m, c, ls in children],
        "blobs": [{"digest": d, "size": s, "media_type": mt, "kind": k}
                  for d, (s, mt, k) in sorted(lay.blobs.items())],
        "total_bytes": sum(s for s, _, _ in lay.blobs.values()),
    }


def generate(out, scale="tiny", seed=1):
    """Write all images under OUT (created; existing layouts there are replaced)."""
    os.makedirs(out, exist_ok=True)
    cache = {}
    result = []
    for spec in IMAGES:
        p = os.path.join(out, layout_dir_name(spec["name"]))
        if os.path.isdir(p):
            shutil.rmtree(p)
        result.append(build_image(out, spec, seed, scale, cache))
    with open(os.path.join(out, "images.json.tmp"), "w") as f:
        json.dump(result, f, indent=1)
    os.replace(os.path.join(out, "images.json.tmp"), os.path.join(out, "images.json"))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    imgs = generate(a.out, a.scale, a.seed)
    total = sum(i["total_bytes"] for i in imgs)
    for i in imgs:
        print("%-24s %-10s %s %10d bytes" % (i["name"], i["tag"], i["index_digest"], i["total_bytes"]))
    print("total %d bytes (%.1f MB) in %s" % (total, total / 1e6, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
