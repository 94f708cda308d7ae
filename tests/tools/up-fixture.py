#!/usr/bin/env python3
"""up-fixture — a tiny scriptable upstream for tests/unit/test-up.c (loopback only).

usage: up-fixture.py PORTFILE LOGFILE

Listens on two ephemeral ports of 127.0.0.1 (A and B), writes "A B\\n" to PORTFILE once both
listen, and appends one line per request to LOGFILE before answering:
    <port> <method> <path> auth=[<Authorization>] range=[<Range>] accept=[<Accept>] ua=[<UA>]
        t=<monotonic seconds> via=[<Via>]

Routes (both ports):
  /blob/<n>                 n pattern bytes (byte i = (7*i + 3) % 251); honours Range: bytes=N-
  /sleep/<ms>/<n>           /blob/<n> after ms milliseconds
  /hold/<name>              /blob/10 once the file go-<name> exists next to LOGFILE (the
                            request is logged on arrival, before the wait)
  /slowredir/<ms>           302 -> /blob/10 after ms milliseconds
  /r307/<n>                 307 -> http://127.0.0.1:B/r307b/<n>
  /r307b/<n>                307 -> /blob/<n> (relative)
  /loop                     302 -> /loop
  /v2/<name>/manifests/<r>  401 Bearer challenge unless "Authorization: Bearer tok-*"; then 200
                            (name "failtok" points the realm at /token500, "slowtok" at
                            /token?delay=250)
  /v2/<name>/blobs/<d>      same auth, then 307 -> http://127.0.0.1:B/blob/100
  /token                    {"token": "tok-<k>", "expires_in": 300}; needs service and scope;
                            delay=<ms> waits first
  /token500                 500
  /basic                    401 with a Basic challenge
  /v2/priv<x>/manifests/<r> like /v2/<name>/manifests/<r>, but wants "Bearer ctok-*" and the
                            realm is http://127.0.0.1:B/ctoken ("privredir": B/ctokenredir)
  /ctoken                   Basic alice:secret -> {"token": "ctok-<k>"}; other Basic -> 401;
                            no Authorization -> {"token": "anon-<k>"}
  /ctokenredir              307 -> http://127.0.0.1:A/ctoken?<same query>
  /basicauth/<n>            /blob/<n> for Basic alice:secret, else 401 with a Basic challenge
  /basicauth/redir          the same auth, then 307 -> http://127.0.0.1:B/blob/100
  /tobasic/<n>              307 -> http://127.0.0.1:B/basicauth/<n>
  /topriv                   307 -> http://127.0.0.1:B/v2/priv2/manifests/v1
  /stall                    Content-Length 1000, 10 bytes, then silence for 5 s
  /stallhdr                 silence for 5 s before the status line
  /trickle                  Content-Length 1000, 1 byte every 100 ms (beats any stall timer)
  /trunc                    Content-Length 1000, 100 bytes, then the connection closes
"""
import base64
import http.server
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes((7 * i + 3) % 251 for i in range(251))
GOOD_BASIC = "Basic " + base64.b64encode(b"alice:secret").decode()
lock = threading.Lock()
state = {"tokens": 0, "ports": (0, 0)}


def body(n):
    return (PATTERN * (n // 251 + 1))[:n]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # No Nagle stall on a reused connection: headers and body in one write (buffered wfile,
    # flushed after each answer) and TCP_NODELAY (bench/stall_check.py measures it).
    wbufsize = 64 * 1024

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def record(self):
        h = self.headers
        line = "%d %s %s auth=[%s] range=[%s] accept=[%s] ua=[%s] t=%.6f via=[%s]\n" % (
            self.server.server_port, self.command, self.path, h.get("Authorization", "-"),
            h.get("Range", "-"), h.get("Accept", "-"), h.get("User-Agent", "-"),
            time.monotonic(), h.get("Via", "-"))
        with lock:
            with open(sys.argv[2], "a") as f:
                f.write(line)

    def send(self, status, payload=b"", headers=None, length=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def authorized(self, name):
        a, b = state["ports"]
        if name.startswith("priv"):
            if self.headers.get("Authorization", "").startswith("Bearer ctok-"):
                return True
            realm = "http://127.0.0.1:%d/%s" % (
                b, "ctokenredir" if name == "privredir" else "ctoken")
        else:
            if self.headers.get("Authorization", "").startswith("Bearer tok-"):
                return True
            path = {"failtok": "token500", "slowtok": "token?delay=250"}.get(name, "token")
            realm = "http://127.0.0.1:%d/%s" % (a, path)
        chal = 'Bearer realm="%s",service="fixture",scope="repository:%s:pull"' % (realm, name)
        self.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                  {"WWW-Authenticate": chal, "Content-Type": "application/json"})
        return False

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.record()
        u = urlsplit(self.path)
        parts = u.path.split("/")
        a, b = state["ports"]
        if u.path.startswith("/blob/"):
            data = body(int(parts[2]))
            rng = self.headers.get("Range")
            hdrs = {"Content-Type": "application/octet-stream", "X-Fixture": "blob",
                    "Docker-Content-Digest": "sha256:fixture"}
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                hdrs["Content-Range"] = "bytes %d-%d/%d" % (start, len(data) - 1, len(data))
                self.send(206, data[start:], hdrs)
            else:
                self.send(200, data, hdrs)
        elif u.path.startswith("/sleep/"):
            time.sleep(int(parts[2]) / 1000)
            self.send(200, body(int(parts[3])), {"Content-Type": "application/octet-stream"})
        elif u.path.startswith("/hold/"):
            go = os.path.join(os.path.dirname(sys.argv[2]), "go-" + parts[2])
            deadline = time.monotonic() + 60
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.005)
            self.send(200, body(10), {"Content-Type": "application/octet-stream"})
        elif u.path.startswith("/slowredir/"):
            time.sleep(int(parts[2]) / 1000)
            self.send(302, b"", {"Location": "/blob/10"})
        elif u.path.startswith("/r307/"):
            self.send(307, b"", {"Location": "http://127.0.0.1:%d/r307b/%s" % (b, parts[2])})
        elif u.path.startswith("/r307b/"):
            self.send(307, b"moved", {"Location": "/blob/%s" % parts[2]})
        elif u.path == "/loop":
            self.send(302, b"", {"Location": "/loop"})
        elif u.path.startswith("/v2/") and "/manifests/" in u.path:
            name = u.path[4:u.path.index("/manifests/")]
            if self.authorized(name):
                self.send(200, ("manifest:" + name).encode(),
                          {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        elif u.path.startswith("/v2/") and "/blobs/" in u.path:
            name = u.path[4:u.path.index("/blobs/")]
            if self.authorized(name):
                self.send(307, b"", {"Location": "http://127.0.0.1:%d/blob/100" % b})
        elif u.path == "/token":
            q = parse_qs(u.query)
            if q.get("service") != ["fixture"] or not q.get("scope"):
                self.send(400, b"bad token request")
                return
            if q.get("delay"):
                time.sleep(int(q["delay"][0]) / 1000)
            with lock:
                state["tokens"] += 1
                k = state["tokens"]
            self.send(200, b'{"token": "tok-%d", "expires_in": 300}' % k,
                      {"Content-Type": "application/json"})
        elif u.path == "/ctoken":
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic ") and auth != GOOD_BASIC:
                self.send(401, b"bad credentials", {"WWW-Authenticate": 'Basic realm="tok"'})
                return
            with lock:
                state["tokens"] += 1
                k = state["tokens"]
            kind = b"ctok" if auth == GOOD_BASIC else b"anon"
            self.send(200, b'{"token": "%s-%d", "expires_in": 300}' % (kind, k),
                      {"Content-Type": "application/json"})
        elif u.path == "/ctokenredir":
            self.send(307, b"", {"Location": "http://127.0.0.1:%d/ctoken?%s" % (a, u.query)})
        elif u.path.startswith("/basicauth/"):
            if self.headers.get("Authorization", "") != GOOD_BASIC:
                self.send(401, b"no", {"WWW-Authenticate": 'Basic realm="fixture"'})
            elif parts[2] == "redir":
                self.send(307, b"", {"Location": "http://127.0.0.1:%d/blob/100" % b})
            else:
                self.send(200, body(int(parts[2])), {"Content-Type": "application/octet-stream"})
        elif u.path.startswith("/tobasic/"):
            self.send(307, b"", {"Location": "http://127.0.0.1:%d/basicauth/%s" % (b, parts[2])})
        elif u.path == "/topriv":
            self.send(307, b"", {"Location": "http://127.0.0.1:%d/v2/priv2/manifests/v1" % b})
        elif u.path == "/token500":
            self.send(500, b"token service down")
        elif u.path == "/basic":
            self.send(401, b"no", {"WWW-Authenticate": 'Basic realm="fixture"'})
        elif u.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(body(10))
            self.wfile.flush()
            time.sleep(5)
            self.close_connection = True
        elif u.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.flush()
            try:
                for i in range(1000):
                    self.wfile.write(body(1000)[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif u.path == "/stallhdr":
            time.sleep(5)
            self.close_connection = True
        elif u.path == "/trunc":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(body(100))
            self.wfile.flush()
            self.close_connection = True
        else:
            self.send(404, b"not found")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Clients hanging up mid-body (cancel, timeout tests) are expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def main():
    servers = [Server(("127.0.0.1", 0), Handler) for _ in range(2)]
    state["ports"] = tuple(s.server_port for s in servers)
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % state["ports"])
    os.rename(tmp, sys.argv[1])
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
