#!/usr/bin/python3
"""The redirect policy (issue 17): an upstream's redirect is never followed from https to http,
nor to a link-local, private or unspecified address unless the upstream's own URL is of that
class (loopback here, so loopback-to-loopback redirects work) or allow_redirect_to lists it.
Refused targets are never connected to (the address is checked before the socket is opened),
so the link-local and private targets below never see a packet. Everything else runs on
loopback.

    PULLCACHE=build/pullcache python3 tests/e2e/test_redirect_policy.py [test_name ...]
"""

import hashlib
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http  # noqa: E402

MANIFEST = json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "0" * 64, "size": 2},
                       "layers": []}).encode()
CT = "application/vnd.oci.image.manifest.v1+json"


class Upstream:
    """A registry stand-in answering /v2/ and, by repository name, a redirect to a target the
    test gives (routes: repo -> Location), and /real/manifest with MANIFEST. Writes each
    answer's head and body at once, TCP_NODELAY set. Counts requests per path."""

    def __init__(self, routes, tls=None):
        self.routes = routes
        self.hits = {}
        self.lock = threading.Lock()
        outer = self

        class H(socketserver.StreamRequestHandler):
            def handle(self):
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while True:
                    line = self.rfile.readline(8192)
                    if not line:
                        return
                    path = line.split()[1].decode() if len(line.split()) > 1 else "/"
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    with outer.lock:
                        outer.hits[path] = outer.hits.get(path, 0) + 1
                    m = re.match(r"^/v2/([^/]+)/manifests/", path)
                    if path == "/v2/":
                        self.answer(200, b"{}", "application/json")
                    elif path == "/real/manifest":
                        self.answer(200, MANIFEST, CT)
                    elif m and m.group(1) in outer.routes:
                        self.answer(307, b"", None, outer.routes[m.group(1)])
                    else:
                        self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}',
                                    "application/json")

            def answer(self, status, body, ctype, location=None):
                h = "HTTP/1.1 %d X\r\nContent-Length: %d\r\n" % (status, len(body))
                if ctype:
                    h += "Content-Type: %s\r\n" % ctype
                if location:
                    h += "Location: %s\r\n" % location
                self.wfile.write(h.encode() + b"\r\n" + body)
                self.wfile.flush()

        class S(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.srv = S(("127.0.0.1", 0), H)
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.srv.socket = ctx.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def conf(env, up, more=""):
    p = env.path("pc.conf")
    with open(p, "w") as f:
        f.write("[fetch]\nconnect_timeout = 2s\n[upstream \"registry.k8s.io\"]\nurl = %s\n%s"
                % (up.url, more))
    return p


def stored_manifests(pc):
    r = http("GET", pc.url + "/metrics")
    m = re.search(r"^pullcache_store_manifests (\d+)", r.body.decode(), re.M)
    return int(m.group(1)) if m else -1


def test_internal_targets_refused_loopback_followed():
    with pclib.TestEnv("redir-internal") as env:
        up = Upstream({})
        up.routes.update({"meta": "http://169.254.169.254/latest/meta-data/",
                          "priv": "http://10.255.255.1:9/real/manifest",
                          "zero": "http://0.0.0.0:%d/real/manifest" % up.port,
                          "ula": "http://[fd00::1]:9/real/manifest",
                          "loop": "http://127.0.0.1:%d/real/manifest" % up.port})
        try:
            pc = env.start_pullcache(args=["--config", conf(env, up)], name="pc-redir")
            for repo, reason in (("meta", "link-local"), ("priv", "private"),
                                 ("zero", "unspecified"), ("ula", "private")):
                t0 = time.monotonic()
                r = http("GET", pc.url + "/v2/%s/manifests/v1" % repo, {"Accept": CT})
                check(r.status == 502, "%s: %d %r" % (repo, r.status, r.body[:200]))
                check(time.monotonic() - t0 < 20, "%s: the refusal took a connect timeout" % repo)
                log = open(pc.log_path, errors="replace").read()
                check(re.search(r"upstream-redirect-refused .*reason=%s-address" % reason, log),
                      "%s: no refusal logged:\n%s" % (repo, log[-1500:]))
            check(up.hits.get("/real/manifest", 0) == 0, "a refused redirect reached a target")
            check(stored_manifests(pc) == 0, "something was stored from a refused redirect")
            # loopback upstream -> loopback target: the same class, followed
            r = http("GET", pc.url + "/v2/loop/manifests/v1", {"Accept": CT})
            check(r.status == 200 and r.body == MANIFEST, "loop: %d %r" % (r.status, r.body[:200]))
            check(up.hits.get("/real/manifest", 0) == 1, "loop: target hits %r" % up.hits)
        finally:
            up.stop()


def test_allow_redirect_to_is_checked_at_load():
    with pclib.TestEnv("redir-conf") as env:
        up = Upstream({})
        try:
            bad = conf(env, up, "allow_redirect_to = 10.0.0.0/8, 300.1.1.1\n")
            r = subprocess.run([os.environ["PULLCACHE"], "check-config", "--config", bad],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            err = r.stderr.decode()
            check(r.returncode == 2 and "allow_redirect_to" in err and "300.1.1.1" in err,
                  "bad allow_redirect_to: rc %d %r" % (r.returncode, err))
            good = conf(env, up, "allow_redirect_to = 10.0.0.0/8 fd00::/8,192.0.2.7\n")
            r = subprocess.run([os.environ["PULLCACHE"], "check-config", "--config", good],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            check(r.returncode == 0 and b"allow_redirect_to = 10.0.0.0/8 fd00::/8,192.0.2.7"
                  in r.stdout, "good allow_redirect_to: rc %d %r" % (r.returncode, r.stdout))
        finally:
            up.stop()


def test_https_to_http_refused():
    with pclib.TestEnv("redir-down") as env:
        ca, ca_key = env.path("ca.pem"), env.path("ca.key")
        crt, key, csr = env.path("srv.pem"), env.path("srv.key"), env.path("srv.csr")
        ext = env.path("san.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")

        def openssl(*args):
            subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=60)
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
                "-days", "2", "-subj", "/CN=pullcache test CA")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                "-subj", "/CN=127.0.0.1")
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-out", crt, "-days", "2", "-extfile", ext)
        plain = Upstream({})
        tls = Upstream({}, tls=(crt, key))
        tls.routes.update({"down": "http://127.0.0.1:%d/real/manifest" % plain.port,
                           "same": "https://127.0.0.1:%d/real/manifest" % tls.port})
        try:
            pc = env.start_pullcache(args=["--config", conf(env, tls, "ca_file = %s\n" % ca)],
                                     name="pc-down")
            r = http("GET", pc.url + "/v2/down/manifests/v1", {"Accept": CT})
            check(r.status == 502, "https->http: %d %r" % (r.status, r.body[:200]))
            log = open(pc.log_path, errors="replace").read()
            check("reason=https-to-http" in log, "no downgrade refusal logged:\n" + log[-1500:])
            check(plain.hits.get("/real/manifest", 0) == 0, "the plain target was asked")
            check(stored_manifests(pc) == 0, "a downgraded answer was stored")
            r = http("GET", pc.url + "/v2/same/manifests/v1", {"Accept": CT})
            check(r.status == 200 and r.body == MANIFEST, "https->https: %d" % r.status)
        finally:
            plain.stop()
            tls.stop()


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_internal_targets_refused_loopback_followed,
                              test_allow_redirect_to_is_checked_at_load,
                              test_https_to_http_refused]))
