#!/usr/bin/python3
"""A loopback test upstream that behaves like registry.k8s.io, with scriptable fault injection.

    k8s_upstream.py --images DIR --state DIR [--host 127.0.0.1] [--token-ttl S] [--parent PID]

Three HTTP/1.1 keep-alive servers on free ports:
  redirector  like registry.k8s.io (archeio): /v2/ -> 200, blobs -> 307 to the blob host,
              everything else under /v2/ -> 307 to the registry; also the /_control/ API.
  registry    like Artifact Registry: Bearer token auth (401 challenge, /v2/token), manifests,
              tags/list, blobs, under /v2/k8s-artifacts-prod/images/<name>/...
  blobs       like S3/CDN (cdn.registry.k8s.io): /containers/images/<digest>, Range, ETag; must
              never see Authorization.
  sigs        like the canonical Artifact Registry backend (us-central1-docker.pkg.dev) that
              registry.k8s.io sends cosign signature tags to (sha256-<hex>.sig/.att/.sbom): the
              same API as registry; the redirector sends those tags there, other manifests to
              registry (the regional host), blobs to blobs.
Referrers: the redirector answers /v2/<name>/referrers/<digest> with 404 at its edge (as
registry.k8s.io does in 2026) unless /_control/config {"referrers_edge_404": false}; then the
registry serves what /_control/referrers set (/_control/config {"scoped_blobs": true}: the
redirector answers 404 for a blob not in that repository's images, as a registry that scopes
blobs does; archeio does not) (filtered by artifactType, paged by
"referrers_page" descriptors with a Link). tags/list honours n and last and sends a Link.

When ready, STATE/ports.json = {"redirector":P1,"registry":P2,"blobs":P3,"sigs":P4} is written atomically.
Every request (except /_control/) is one JSON line in STATE/requests.jsonl; requests to the blob
host carrying Authorization are violations, counted in STATE/violations. Runs until SIGTERM/SIGINT.
See README.md for the control API and the fault rules. Stdlib only.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/v2/k8s-artifacts-prod/images/"
BLOB_RE = re.compile(r"^/v2/.*/blobs/([^/]+:[a-zA-Z0-9=_-]+)$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
REG_RE = re.compile(r"^/v2/k8s-artifacts-prod/images/(.+?)/(manifests|blobs|referrers)/([^/]+)$")
SIG_TAG_RE = re.compile(r"^/v2/.+/manifests/sha256-[0-9a-f]{64}\.(sig|att|sbom)$")
REFERRERS_RE = re.compile(r"^/v2/.+/referrers/[^/]+$")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TAGS_RE = re.compile(r"^/v2/k8s-artifacts-prod/images/(.+)/tags/list$")
FAULTS = {"truncate", "corrupt", "slow", "stall", "drop", "status", "redirect_loop", "token_down",
          "header", "body", "redirect", "delay"}
CHUNK = 64 * 1024


class Images:
    """Read-only view of the image layouts: manifests per repository and blobs across layouts."""

    def __init__(self, root):
        self.blob_path = {}   # digest -> file path (any layout holding it)
        self.repos = {}       # name -> {"tags": {tag: digest}, "manifests": {digest: media_type}}
        names = {}
        meta = os.path.join(root, "images.json")
        if os.path.exists(meta):
            with open(meta) as f:
                for img in json.load(f):
                    names[img["layout_dir"]] = img["name"]
        for d in sorted(os.listdir(root)):
            lay = os.path.join(root, d)
            if not os.path.isfile(os.path.join(lay, "index.json")):
                continue
            bdir = os.path.join(lay, "blobs", "sha256")
            for h in os.listdir(bdir):
                if re.fullmatch(r"[0-9a-f]{64}", h):
                    self.blob_path.setdefault("sha256:" + h, os.path.join(bdir, h))
            name = names.get(d, d.replace("_", "/"))
            repo = self.repos.setdefault(name, {"tags": {}, "manifests": {}})
            with open(os.path.join(lay, "index.json")) as f:
                top = json.load(f)
            for desc in top.get("manifests", []):
                tag = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
                if tag:
                    repo["tags"][tag] = desc["digest"]
                self._add_manifest(repo, desc["digest"], desc["mediaType"])

    def _add_manifest(self, repo, digest, media_type):
        repo["manifests"][digest] = media_type
        if "index" in media_type or "list" in media_type:
            with open(self.blob_path[digest], "rb") as f:
                doc = json.load(f)
            for child in doc.get("manifests", []):
                if child["digest"] in self.blob_path:
                    self._add_manifest(repo, child["digest"], child["mediaType"])
        else:
            with open(self.blob_path[digest], "rb") as f:
                doc = json.load(f)
            for b in [doc.get("config")] + doc.get("layers", []):
                if b:
                    repo.setdefault("blobs", set()).add(b["digest"])


class State:
    """Shared mutable state: fault rules, the request log, counters. All under one lock."""

    def __init__(self, state_dir, token_ttl):
        self.dir = state_dir
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.inflight = 0  # requests being answered and not yet logged
        self.rules = []
        self.log = []
        self.violations = 0
        self.token_ttl = token_ttl
        self.require_auth = True
        self.referrers = {}  # (name, subject digest) -> [descriptor]
        self.referrers_edge_404 = True
        self.scoped_blobs = False  # archeio redirects any known blob under any repository
        self.referrers_page = 0
        self.ports = {}
        self.host = "127.0.0.1"
        self.log_path = os.path.join(state_dir, "requests.jsonl")
        self.logf = open(self.log_path, "a", buffering=1)
        self._write_violations()

    def _write_violations(self):
        p = os.path.join(self.dir, "violations")
        with open(p + ".tmp", "w") as f:
            f.write("%d\n" % self.violations)
        os.replace(p + ".tmp", p)

    def begin(self):
        with self.lock:
            self.inflight += 1

    def violation(self):
        """Counted on arrival, before any answer, so a client sees it as soon as it is answered."""
        with self.lock:
            self.violations += 1
            self._write_violations()

    def record(self, entry):
        with self.lock:
            self.log.append(entry)
            self.logf.write(json.dumps(entry) + "\n")
            self.inflight -= 1
            self.idle.notify_all()

    def snapshot_log(self, wait=5.0):
        """The log once no request is being answered (or after WAIT seconds, for stalls)."""
        with self.lock:
            self.idle.wait_for(lambda: self.inflight == 0, timeout=wait)
            return list(self.log)

    def set_faults(self, rules, append=False):
        checked = []
        for r in rules:
            if r.get("fault") not in FAULTS:
                raise ValueError("unknown fault %r" % r.get("fault"))
            r = dict(r)
            r["_re"] = re.compile(r.get("path_re", ".*"))
            r.setdefault("hits", 0)
            checked.append(r)
        with self.lock:
            self.rules = (self.rules if append else []) + checked

    def match(self, role, method, path):
        """The first rule matching this request, consumed once (its count decremented)."""
        with self.lock:
            for r in self.rules:
                rrole = r.get("role")
                if r["fault"] == "token_down":
                    if role != "token":
                        continue
                elif rrole is not None and rrole != role:
                    continue
                if r.get("method") and r["method"] != method:
                    continue
                if not r["_re"].search(path):
                    continue
                if "count" in r and r["count"] is not None:
                    if r["count"] <= 0:
                        continue
                    r["count"] -= 1
                r["hits"] += 1
                return {k: v for k, v in r.items() if k != "_re"}
        return None

    def reset(self):
        with self.lock:
            self.rules = []
            self.log = []
            self.logf.truncate(0)
            self.logf.seek(0)

    def base(self, role):
        h = self.host if ":" not in self.host else "[%s]" % self.host
        return "http://%s:%d" % (h, self.ports[role])


def b64(data):
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k8s-upstream/1"
    sys_version = ""
    role = "?"

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):  # silence stderr access log
        pass

    # ---- plumbing --------------------------------------------------------------------------
    @property
    def st(self):
        return self.server.st

    @property
    def images(self):
        return self.server.images

    def _begin(self):
        u = urllib.parse.urlsplit(self.path)
        self.req_path = u.path
        self.req_query = u.query
        self.sent = 0
        self.status_sent = 0
        self.fault = None
        self.violation = False
        self.extra = {}

    def _finish_log(self):
        hdrs = {}
        for k, v in self.headers.items():
            lk = k.lower()
            hdrs[lk] = hdrs[lk] + ", " + v if lk in hdrs else v
        entry = {
            "ts": round(time.time(), 6),
            "role": self.role,
            "method": self.command,
            "path": self.req_path,
            "query": self.req_query,
            "headers": hdrs,
            "authorization": hdrs.get("authorization"),
            "range": hdrs.get("range"),
            "status": self.status_sent,
            "bytes": self.sent,
            "fault": self.fault["fault"] if self.fault else None,
            "client": "%s:%d" % (self.client_address[0], self.client_address[1]),
        }
        if self.role == "blobs":
            entry["violation"] = self.violation
        entry.update(self.extra)
        self.st.record(entry)

    def _dispatch(self):
        self._begin()
        if self.role == "redirector" and self.req_path.startswith("/_control/"):
            self.control()
            return
        self.st.begin()
        try:
            getattr(self, "handle_" + self.role)()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a bug here must still be logged, and not wedge the client
            self.extra["error"] = repr(e)
            self.close_connection = True
            print("k8s_upstream: %s %s: %r" % (self.command, self.path, e), file=sys.stderr, flush=True)
        finally:
            self._finish_log()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _apply_pre_fault(self, fault_role):
        """Faults that replace the answer. Returns True if the request was answered (or dropped)."""
        self.fault = self.st.match(fault_role, self.command, self.req_path)
        f = self.fault
        if not f:
            return False
        kind = f["fault"]
        if kind == "drop":
            self.close_connection = True
            if f.get("rst"):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return True
        if kind in ("status", "token_down"):
            if f.get("delay_ms"):
                time.sleep(int(f["delay_ms"]) / 1000.0)  # a slow refusal (optional)
            code = int(f.get("status", 500))
            hdrs = {}
            if f.get("retry_after") is not None:
                hdrs["Retry-After"] = str(f["retry_after"])
            self.send_json(code, oci_error("UNAVAILABLE" if code >= 500 else "TOOMANYREQUESTS" if code == 429 else "DENIED",
                                           "injected fault: status %d" % code), hdrs)
            return True
        if kind == "redirect_loop":
            loc = self.st.base(self.role) + self.path
            self.redirect(loc)
            return True
        if kind == "redirect":
            self.redirect(f["location"])
            return True
        if kind == "delay":
            time.sleep(int(f.get("delay_ms", 1000)) / 1000.0)  # then the normal answer
        return False  # header and body faults are applied while sending

    def _body_source_len(self, src):
        return len(src) if isinstance(src, (bytes, bytearray)) else src[2]

    def send_answer(self, code, headers, body=b"", head=None):
        """Send status, headers (Content-Length set from the body) and, unless HEAD, the body.
        BODY is bytes or (path, offset, length). Body faults (truncate/corrupt/slow/stall) apply."""
        if head is None:
            head = self.command == "HEAD"
        hf = self.fault if self.fault and self.fault["fault"] in ("header", "body") else None
        if hf and hf["fault"] == "header":
            # Any bytes, CR, ESC or DEL included, written as given (a hostile upstream).
            name = hf["name"]
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
            headers[name] = hf.get("value", "")
        if hf and hf["fault"] == "body":
            body = hf.get("body", "").encode("latin-1") * int(hf.get("repeat", 1))
        length = self._body_source_len(body)
        self.send_response(code)
        self.status_sent = code
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if head or length == 0:
            self.wfile.flush()
            return
        f = self.fault if self.fault and self.fault["fault"] in ("truncate", "corrupt", "slow", "stall") else None
        limit = length
        if f and f["fault"] == "truncate":
            limit = min(length, int(f.get("after", 0)))
        corrupt_at = -1
        if f and f["fault"] == "corrupt":
            corrupt_at = min(int(f.get("after", 0)), length - 1)
        chunk = CHUNK
        delay = 0.0
        if f and f["fault"] == "slow":
            chunk = max(1, int(f.get("chunk", 1024)))
            delay = int(f.get("delay_ms", 10)) / 1000.0
        stall_at = int(f.get("after", 0)) if f and f["fault"] == "stall" else -1
        pos = 0
        for piece in iter_body(body, chunk):
            if pos >= limit:
                break
            piece = piece[: limit - pos]
            if pos <= corrupt_at < pos + len(piece):
                i = corrupt_at - pos
                piece = piece[:i] + bytes([piece[i] ^ 0xFF]) + piece[i + 1:]
            if pos <= stall_at < pos + len(piece):
                i = stall_at - pos
                self.wfile.write(piece[:i])
                self.wfile.flush()
                self.sent += i
                time.sleep(int(f.get("delay_ms", 1000)) / 1000.0)
                piece = piece[i:]
                pos += i
                stall_at = -1
            self.wfile.write(piece)
            self.sent += len(piece)
            pos += len(piece)
            if delay:
                self.wfile.flush()
                time.sleep(delay)
        self.wfile.flush()
        if limit < length:
            self.close_connection = True
            if f.get("rst"):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def send_json(self, code, obj, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        self.send_answer(code, h, json.dumps(obj).encode())

    def redirect(self, location):
        body = ('<a href="%s">Temporary Redirect</a>.\n\n' % location).encode()
        self.send_answer(307, {"Location": location, "Content-Type": "text/html; charset=utf-8"}, body)

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # ---- control API (redirector only, not logged) ---------------------------------------------
    def control(self):
        p = self.req_path
        try:
            if p == "/_control/faults" and self.command == "POST":
                rules = json.loads(self.read_body() or b"[]")
                if isinstance(rules, dict):
                    rules = [rules]
                append = "append=1" in self.req_query
                self.st.set_faults(rules, append)
                self.send_json(200, {"ok": True, "rules": len(self.st.rules)})
            elif p == "/_control/faults" and self.command == "GET":
                with self.st.lock:
                    rules = [{k: v for k, v in r.items() if k != "_re"} for r in self.st.rules]
                self.send_json(200, rules)
            elif p == "/_control/reset" and self.command == "POST":
                self.read_body()
                self.st.reset()
                self.send_json(200, {"ok": True})
            elif p == "/_control/log" and self.command == "GET":
                data = json.dumps(self.st.snapshot_log()).encode()
                self.send_answer(200, {"Content-Type": "application/json"}, data)
            elif p == "/_control/stats" and self.command == "GET":
                n = len(self.st.snapshot_log())
                with self.st.lock:
                    s = {"requests": n, "violations": self.st.violations, "ports": self.st.ports}
                self.send_json(200, s)
            elif p == "/_control/config" and self.command == "POST":
                cfg = json.loads(self.read_body() or b"{}")
                with self.st.lock:
                    if "token_ttl" in cfg:
                        self.st.token_ttl = int(cfg["token_ttl"])
                    if "require_auth" in cfg:
                        self.st.require_auth = bool(cfg["require_auth"])
                    if "referrers_edge_404" in cfg:
                        self.st.referrers_edge_404 = bool(cfg["referrers_edge_404"])
                    if "scoped_blobs" in cfg:
                        self.st.scoped_blobs = bool(cfg["scoped_blobs"])
                    if "referrers_page" in cfg:
                        self.st.referrers_page = int(cfg["referrers_page"])
                self.send_json(200, {"ok": True})
            elif p == "/_control/referrers" and self.command == "POST":
                # {"repo": name, "subject": digest, "manifests": [descriptor, ...]}
                body = json.loads(self.read_body() or b"{}")
                with self.st.lock:
                    self.st.referrers[(body["repo"], body["subject"])] = list(body["manifests"])
                self.send_json(200, {"ok": True})
            elif p == "/_control/manifest" and self.command == "POST":
                # {"repo", "tag", "media_type", "manifest": b64, "blobs": [b64, ...]}: content
                # added at run time (a cosign signature, say), written under STATE/extra.
                body = json.loads(self.read_body() or b"{}")
                dg = self.add_content(body["repo"], body.get("tag"), body["media_type"],
                                      base64.b64decode(body["manifest"]),
                                      [base64.b64decode(b) for b in body.get("blobs", [])])
                self.send_json(200, {"ok": True, "digest": dg})
            elif p == "/_control/sign" and self.command == "POST":
                # {"repo", "subject"}: publish a cosign signature of SUBJECT (an image's digest)
                # as the tag sha256-<hex>.sig, and a signature artifact whose subject it is as a
                # referrer; answers {"sig": digest, "referrer": digest}.
                body = json.loads(self.read_body() or b"{}")
                self.send_json(200, self.sign(body["repo"], body["subject"]))
            else:
                self.send_json(404, {"error": "unknown control endpoint"})
        except (ValueError, re.error) as e:
            self.send_json(400, {"error": str(e)})

    def add_content(self, repo, tag, media_type, manifest, blobs):
        """Content added at run time (written under STATE/extra); returns the manifest digest."""
        out = None
        for raw in [manifest] + list(blobs):
            dg = "sha256:" + hashlib.sha256(raw).hexdigest()
            d = os.path.join(self.st.dir, "extra")
            os.makedirs(d, exist_ok=True)
            fp = os.path.join(d, dg[7:])
            with open(fp, "wb") as f:
                f.write(raw)
            with self.st.lock:
                self.images.blob_path[dg] = fp
            out = out or dg
        with self.st.lock:
            r = self.images.repos.setdefault(repo, {"tags": {}, "manifests": {}})
            r["manifests"][out] = media_type
            if tag:
                r["tags"][tag] = out
        return out

    def sign(self, repo, subject):
        """A cosign-style .sig tag and an OCI referrer (artifactType cosign signature) of SUBJECT."""
        oci_m = "application/vnd.oci.image.manifest.v1+json"
        art = "application/vnd.dev.cosign.artifact.sig.v1+json"
        payload = json.dumps({"critical": {"identity": {"docker-reference": repo},
                                           "image": {"docker-manifest-digest": subject},
                                           "type": "cosign container image signature"}}).encode()
        cfg = b"{}"

        def desc(mt, data, **kw):
            d = {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}
            d.update(kw)
            return d
        sig = json.dumps({"schemaVersion": 2, "mediaType": oci_m,
                          "config": desc("application/vnd.oci.image.config.v1+json", cfg),
                          "layers": [desc("application/vnd.dev.cosign.simplesigning.v1+json", payload,
                                          annotations={"dev.cosignproject.cosign/signature": "MEUCIQ=="})]},
                         separators=(",", ":")).encode()
        sig_dg = self.add_content(repo, subject.replace(":", "-") + ".sig", oci_m, sig, [payload, cfg])
        with self.st.lock:
            sub_mt = self.images.repos.get(repo, {}).get("manifests", {}).get(subject, OCI_INDEX)
        with open(self.images.blob_path[subject], "rb") as f:
            sub_size = len(f.read())
        bundle = json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle+json", "subject": subject}).encode()
        ref = json.dumps({"schemaVersion": 2, "mediaType": oci_m, "artifactType": art,
                          "config": desc("application/vnd.oci.empty.v1+json", cfg),
                          "layers": [desc("application/vnd.dev.sigstore.bundle.v0.3+json", bundle)],
                          "subject": {"mediaType": sub_mt, "digest": subject, "size": sub_size}},
                         separators=(",", ":")).encode()
        ref_dg = self.add_content(repo, None, oci_m, ref, [bundle, cfg])
        with self.st.lock:
            self.st.referrers.setdefault((repo, subject), []).append(
                {"mediaType": oci_m, "digest": ref_dg, "size": len(ref), "artifactType": art})
        return {"sig": sig_dg, "referrer": ref_dg}

    # ---- redirector (registry.k8s.io / archeio) ------------------------------------------------
    def handle_redirector(self):
        if self._apply_pre_fault("redirector"):
            return
        p = self.req_path
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True
            self.send_answer(405, {"Content-Type": "text/plain; charset=utf-8"},
                             b"Only GET and HEAD are allowed.")
            return
        if p in ("/v2/", "/v2"):
            self.send_answer(200, {"Docker-Distribution-Api-Version": "registry/2.0",
                                   "Content-Type": "text/html; charset=utf-8"}, b"")
            return
        if not p.startswith("/v2/") or p == "/v2/_catalog":
            self.send_answer(404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n")
            return
        m = BLOB_RE.match(p)
        with self.st.lock:
            scoped = self.st.scoped_blobs
        if m and scoped:
            name = p[len("/v2/"):p.rindex("/blobs/")]
            if m.group(1) not in self.images.repos.get(name, {}).get("blobs", set()):
                self.send_json(404, oci_error("BLOB_UNKNOWN", "blob unknown to registry", m.group(1)))
                return
        if m and m.group(1) in self.images.blob_path:
            self.redirect(self.st.base("blobs") + "/containers/images/" + m.group(1))
            return
        with self.st.lock:
            edge_404 = self.st.referrers_edge_404
        if REFERRERS_RE.match(p) and edge_404:
            self.send_answer(404, {"Content-Type": "text/plain; charset=utf-8"}, b"404 page not found\n")
            return
        rest = p[len("/v2/"):]
        host = "sigs" if SIG_TAG_RE.match(p) else "registry"
        loc = self.st.base(host) + PREFIX + rest
        if self.req_query:
            loc += "?" + self.req_query
        self.redirect(loc)

    # ---- registry (Artifact Registry) ---------------------------------------------------------
    def challenge(self, scope=None):
        reg = self.st.base("registry")
        v = 'Bearer realm="%s/v2/token",service="%s"' % (reg, reg[len("http://"):])
        if scope:
            v += ',scope="%s"' % scope
        err = oci_error("UNAUTHORIZED", "authentication required",
                        [{"Type": "repository", "Name": scope or "", "Action": "pull"}] if scope else None)
        self.send_json(401, err, {"WWW-Authenticate": v})

    def token_ok(self, scope):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        tok = auth[len("Bearer "):].strip()
        try:
            payload = json.loads(unb64(tok.split(".")[1]))
        except (ValueError, IndexError):
            self.extra["auth_error"] = "malformed token"
            return False
        if time.time() > payload.get("exp", 0):
            self.extra["auth_error"] = "expired token"
            return False
        if scope not in payload.get("scopes", []):
            self.extra["auth_error"] = "token scope mismatch"
            return False
        return True

    def handle_token(self):
        if self._apply_pre_fault("token"):
            return
        q = urllib.parse.parse_qs(self.req_query)
        scopes = []
        for s in q.get("scope", []):
            scopes.extend(s.split())
        with self.st.lock:
            ttl = self.st.token_ttl
        now = time.time()
        payload = {"scopes": scopes, "service": q.get("service", [""])[0], "iat": now, "exp": now + ttl}
        tok = "tok." + b64(json.dumps(payload).encode()) + "." + b64(os.urandom(6))
        self.extra["scopes"] = scopes
        self.send_json(200, {"token": tok, "access_token": tok, "expires_in": ttl,
                             "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))})

    def handle_registry(self):
        p = self.req_path
        if p == "/v2/token":
            self.extra["route"] = "token"
            self.handle_token()
            return
        if self._apply_pre_fault("registry"):
            return
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True
            self.send_json(405, oci_error("UNSUPPORTED", "only GET and HEAD"))
            return
        if p in ("/v2/", "/v2"):
            self.extra["route"] = "base"
            reg = self.st.base("registry")
            self.send_json(401, oci_error("UNAUTHORIZED", "authentication required"),
                           {"WWW-Authenticate": 'Bearer realm="%s/v2/token"' % reg,
                            "Docker-Distribution-Api-Version": "registry/2.0"})
            return
        m = REG_RE.match(p)
        t = TAGS_RE.match(p)
        if not (m or t):
            self.send_json(404, oci_error("NAME_UNKNOWN", "no such path"))
            return
        name = (m or t).group(1)
        scope = "repository:k8s-artifacts-prod/images/%s:pull" % name
        with self.st.lock:
            need = self.st.require_auth
        if need and not self.token_ok(scope):
            self.extra["route"] = "challenge"
            self.challenge(scope)
            return
        repo = self.images.repos.get(name)
        if repo is None:
            self.send_json(404, oci_error("NAME_UNKNOWN", "repository name not known to registry"))
            return
        q = urllib.parse.parse_qs(self.req_query)
        if t:
            self.extra["route"] = "tags"
            tags = sorted(repo["tags"])
            last = q.get("last", [""])[0]
            if last:
                tags = [x for x in tags if x > last]
            hdrs = {}
            if "n" in q:
                n = int(q["n"][0])
                if len(tags) > n and n > 0:
                    hdrs["Link"] = '<%s%s/tags/list?n=%d&last=%s>; rel="next"' % (PREFIX, name, n, tags[n - 1])
                tags = tags[:n]
            self.send_json(200, {"name": "k8s-artifacts-prod/images/" + name, "tags": tags}, hdrs)
            return
        kind, ref = m.group(2), m.group(3)
        if kind == "referrers":
            self.extra["route"] = "referrers"
            with self.st.lock:
                descs = list(self.st.referrers.get((name, ref), []))
                page_size = self.st.referrers_page
            hdrs = {"Content-Type": OCI_INDEX}
            at = q.get("artifactType", [""])[0]
            if at:
                descs = [x for x in descs if x.get("artifactType") == at]
                hdrs["OCI-Filters-Applied"] = "artifactType"
            page = int(q.get("page", ["1"])[0])
            if page_size:
                more = len(descs) > page * page_size
                descs = descs[(page - 1) * page_size:page * page_size]
                if more:
                    nq = {"page": str(page + 1)}
                    if at:
                        nq["artifactType"] = at
                    hdrs["Link"] = '<%s%s/referrers/%s?%s>; rel="next"' % (PREFIX, name, ref, urllib.parse.urlencode(nq))
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}).encode()
            self.send_answer(200, hdrs, body)
            return
        self.extra["route"] = "manifest" if kind == "manifests" else "blob"
        if kind == "manifests":
            digest = repo["tags"].get(ref, ref)
            mt = repo["manifests"].get(digest)
            if mt is None:
                self.send_json(404, oci_error("MANIFEST_UNKNOWN", "manifest unknown", {"Name": name, "Revision": ref}))
                return
            with open(self.images.blob_path[digest], "rb") as f:
                data = f.read()
            self.send_answer(200, {"Content-Type": mt, "Docker-Content-Digest": digest,
                                   "Docker-Distribution-Api-Version": "registry/2.0"}, data)
            return
        if not DIGEST_RE.match(ref) or ref not in self.images.blob_path:
            self.send_json(404, oci_error("BLOB_UNKNOWN", "blob unknown to registry", ref))
            return
        self.serve_blob(ref, {"Docker-Content-Digest": ref})

    # ---- blob host (S3 / CDN) -------------------------------------------------------------------
    def handle_sigs(self):
        self.handle_registry()

    def handle_blobs(self):
        if "Authorization" in self.headers:
            self.violation = True
            self.st.violation()
        if self._apply_pre_fault("blobs"):
            return
        p = urllib.parse.unquote(self.req_path)
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True
            self.send_answer(405, {"Content-Type": "application/xml"}, b"<Error><Code>MethodNotAllowed</Code></Error>")
            return
        pre = "/containers/images/"
        digest = p[len(pre):] if p.startswith(pre) else ""
        if digest not in self.images.blob_path:
            self.send_answer(404 if digest else 403, {"Content-Type": "application/xml"},
                             b"<Error><Code>NoSuchKey</Code></Error>" if digest else b"<Error><Code>AccessDenied</Code></Error>")
            return
        self.serve_blob(digest, {"ETag": '"%s"' % digest[7:39],
                                 "Last-Modified": "Wed, 11 Dec 2024 00:00:00 GMT"})

    def serve_blob(self, digest, extra_headers):
        path = self.images.blob_path[digest]
        size = os.path.getsize(path)
        h = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
        h.update(extra_headers)
        rng = self.headers.get("Range")
        if rng:
            r = parse_range(rng, size)
            if r is None:
                h["Content-Range"] = "bytes */%d" % size
                self.send_answer(416, h, b"")
                return
            if r != "ignore":
                start, end = r
                h["Content-Range"] = "bytes %d-%d/%d" % (start, end, size)
                self.send_answer(206, h, (path, start, end - start + 1))
                return
        self.send_answer(200, h, (path, 0, size))


def parse_range(value, size):
    """(start, end) inclusive, None if unsatisfiable, "ignore" if not a single byte range."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return "ignore"
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0 or size == 0:
            return None
        return (max(0, size - n), size - 1)
    start = int(m.group(1))
    end = int(m.group(2)) if m.group(2) else size - 1
    if start >= size or end < start:
        return None
    return (start, min(end, size - 1))


def iter_body(body, chunk):
    if isinstance(body, (bytes, bytearray)):
        for i in range(0, len(body), chunk):
            yield body[i:i + chunk]
        return
    path, off, n = body
    with open(path, "rb") as f:
        f.seek(off)
        while n > 0:
            b = f.read(min(chunk, n))
            if not b:
                raise IOError("short read on " + path)
            n -= len(b)
            yield b


def oci_error(code, message, detail=None):
    return {"errors": [{"code": code, "message": message, "detail": detail}]}


def make_server(host, role, st, images):
    cls = type("Handler_" + role, (Handler,), {"role": role})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv_cls = type("Srv", (ThreadingHTTPServer,), {"address_family": family, "daemon_threads": True,
                                                     "request_queue_size": 128})
    srv = srv_cls((host, 0), cls)
    srv.st = st
    srv.images = images
    return srv


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--token-ttl", type=int, default=300)
    ap.add_argument("--parent", type=int, default=0, help="exit when this PID is gone")
    a = ap.parse_args()
    if a.host not in ("127.0.0.1", "::1", "localhost"):
        ap.error("loopback addresses only")
    os.makedirs(a.state, exist_ok=True)
    images = Images(a.images)
    st = State(a.state, a.token_ttl)
    st.host = a.host
    servers = {r: make_server(a.host, r, st, images) for r in ("redirector", "registry", "blobs", "sigs")}
    st.ports = {r: s.server_address[1] for r, s in servers.items()}
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
               for s in servers.values()]
    for t in threads:
        t.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    p = os.path.join(a.state, "ports.json")
    with open(p + ".tmp", "w") as f:
        json.dump(st.ports, f)
    os.replace(p + ".tmp", p)
    print("k8s_upstream ready %s" % json.dumps(st.ports), file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        if a.parent:
            try:
                os.kill(a.parent, 0)
            except ProcessLookupError:
                break
    for s in servers.values():
        s.shutdown()
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
