#!/usr/bin/python3
"""HTTPS listener ([server] tls_listen, tls_cert, tls_key, tls_client_ca, tls_client_auth) with
real clients: skopeo and curl verify pullcache's certificate against a private CA made here with
the `openssl` CLI; mutual TLS refuses a client without a certificate and one from another CA;
a plain HTTP request to the TLS port gets a clear 400; SIGHUP rotates the certificate (new
connections see the new serial, an open connection goes on) and a bad pair keeps the old one;
bad files at start are a clear `FILE: reason` and a non-zero exit; garbage and truncated hellos
never crash the daemon.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_tls.py [test_name ...]
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clientlib  # noqa: E402
import pclib  # noqa: E402
from pclib import check  # noqa: E402
from test_clients import images, verify_dir  # noqa: E402

FUZZ_INPUTS = 2000


def openssl(*args):
    return clientlib.run(["openssl"] + list(args), what="openssl")


def make_ca(d, name):
    key, crt = os.path.join(d, name + ".key"), os.path.join(d, name + ".crt")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=" + name)
    return crt, key


def make_cert(d, ca, name, serial, server=True):
    """A certificate signed by CA = (crt, key): server (SAN 127.0.0.1, localhost) or client."""
    key, csr, crt = (os.path.join(d, name + e) for e in (".key", ".csr", ".crt"))
    ext = os.path.join(d, name + ".ext")
    with open(ext, "w") as f:
        if server:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        else:
            f.write("extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
            "-out", csr, "-subj", "/O=pullcache-test/CN=" + name)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(serial),
            "-out", crt, "-days", "2", "-extfile", ext)
    return crt, key


def write_config(env, tls_port, crt, key, extra=""):
    path = env.path("pullcache-tls.ini")
    with open(path, "w") as f:
        f.write("[server]\ntls_listen = 127.0.0.1:%d\ntls_cert = %s\ntls_key = %s\n%s"
                % (tls_port, crt, key, extra))
    return path


def start_tls(env, up, crt, key, extra=""):
    tls_port = pclib.free_port()
    cfg = write_config(env, tls_port, crt, key, extra)
    pc = env.start_pullcache(upstream=up, args=["--config", cfg])
    pc.tls_port, pc.tls_url, pc.config = tls_port, "https://127.0.0.1:%d" % tls_port, cfg
    return pc


def curl(*args):
    """curl ARGS; returns (exit code, http code text, stderr)."""
    r = clientlib.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w",
                       "%{http_code} %{http_version}"] + list(args), check_rc=False, what="curl")
    return r.returncode, r.stdout.strip(), r.stderr


def log_text(pc):
    with open(pc.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def wait_log(pc, needle, what, count=1):
    pclib.wait_for(lambda: log_text(pc).count(needle) >= count, 10, what)


def stop_clean(env, pc):
    """SIGTERM: a clean exit 0 and no sanitizer report in the log (ASan/UBSan builds)."""
    rc = env.stop(pc)
    text = log_text(pc)
    check(rc == 0 and "Sanitizer" not in text and "runtime error" not in text,
          "pullcache exit %s; log tail:\n%s" % (rc, text[-3000:]))


def peer_serial(port):
    """The serial of the certificate a new TLS connection to PORT is given (openssl s_client)."""
    r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
                        "localhost"], input="", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=20)
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout, re.S)
    check(pem, "s_client printed no certificate:\n" + r.stdout[-2000:])
    x = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.group(0),
                       stdout=subprocess.PIPE, text=True, timeout=20, check=True)
    return int(x.stdout.strip().split("=", 1)[1], 16)


def cert_dir(env, name, ca_crt, client=None):
    """A containers-style cert dir: ca.crt [client.cert client.key]."""
    d = env.path(name)
    os.makedirs(d)
    with open(ca_crt) as f, open(os.path.join(d, "ca.crt"), "w") as o:
        o.write(f.read())
    if client:
        for src, dst in ((client[0], "client.cert"), (client[1], "client.key")):
            with open(src) as f, open(os.path.join(d, dst), "w") as o:
                o.write(f.read())
    return d


def skopeo_pull(env, pc, img, certs, dest):
    ref = "docker://127.0.0.1:%d/%s:%s" % (pc.tls_port, img["name"], img["tag"])
    pclib.skopeo("copy", "--all", "--src-cert-dir", certs, "--retry-times", "0", ref, "dir:" + dest)
    verify_dir(img, dest)


# ---- HTTPS ------------------------------------------------------------------------------------
def test_https_curl_skopeo_plain_http():
    clientlib.require("skopeo", "skopeo")
    d, imgs = images()
    with pclib.TestEnv("tls-https") as env:
        ca = make_ca(env.dir, "ca")
        srv = make_cert(env.dir, ca, "server", 1001)
        up = env.start_upstream(d)
        pc = start_tls(env, up, *srv)
        check("tls_port=%d" % pc.tls_port in log_text(pc), "ready line names the TLS port")
        # curl verifies against the private CA; HTTP/1.1 (ALPN); no CA: refused by curl.
        rc, out, err = curl("--cacert", ca[0], pc.tls_url + "/v2/")
        check(rc == 0 and out == "200 1.1", "curl --cacert: rc=%d %r %s" % (rc, out, err))
        rc, out, err = curl("--cacert", ca[0], "--http2", pc.tls_url + "/v2/")
        check(rc == 0 and out == "200 1.1", "curl --http2 falls back to 1.1: rc=%d %r" % (rc, out))
        rc, out, _ = curl(pc.tls_url + "/v2/")
        check(rc != 0, "curl without the CA must not verify: rc=%d %r" % (rc, out))
        for v in ("--tlsv1.2", "--tlsv1.3"):
            m = "--tls-max 1.2" if v == "--tlsv1.2" else "--tlsv1.3"
            rc, out, err = curl("--cacert", ca[0], *m.split(), pc.tls_url + "/v2/")
            check(rc == 0 and out.startswith("200"), "%s: rc=%d %r %s" % (m, rc, out, err))
        rc, out, _ = curl("--cacert", ca[0], "--tls-max", "1.1", pc.tls_url + "/v2/")
        check(rc != 0, "TLS 1.1 must be refused: rc=%d %r" % (rc, out))
        # The plain listener is still plain HTTP, side by side.
        check(pclib.http("GET", pc.url + "/v2/").status == 200, "plain listener")
        # A plain HTTP request to the TLS port: a clear 400, then the connection ends.
        with socket.create_connection(("127.0.0.1", pc.tls_port), timeout=10) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                b = s.recv(4096)
                if not b:
                    break
                data += b
        check(data.startswith(b"HTTP/1.1 400 ") and b"plain HTTP request sent to HTTPS port" in data,
              "plain HTTP to the TLS port: %r" % data[:200])
        wait_log(pc, "tls-plain-http-on-https", "the plain-HTTP log line")
        # Session resumption: a second s_client with the first one's session.
        sess = env.path("sess.pem")
        for i, flag in enumerate(("-sess_out", "-sess_in")):
            r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % pc.tls_port,
                                "-CAfile", ca[0], "-tls1_2", flag, sess], input="",
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=20)
            if i == 1:
                check("Reused, TLSv1.2" in r.stdout, "session not resumed:\n" + r.stdout[-1500:])
        # skopeo over HTTPS, verified with --src-cert-dir (ca.crt only), multi-arch index.
        certs = cert_dir(env, "certs", ca[0])
        for name in ("pause", "coredns/coredns"):
            skopeo_pull(env, pc, imgs[name], certs, env.path("dir-" + name.replace("/", "_")))
        # ... and refused without the CA.
        r = pclib.skopeo("inspect", "--raw", "docker://127.0.0.1:%d/pause:%s"
                         % (pc.tls_port, imgs["pause"]["tag"]), check_rc=False)
        check(r.returncode != 0 and "certificate" in r.stderr, "skopeo without CA: %s" % r.stderr)
        entries, _ = clientlib.access_log(pc)
        check(any(e.get("route") == "blob" and e.get("status") == "200" for e in entries),
              "blobs served over TLS: %s" % entries[-5:])
        stop_clean(env, pc)


def test_large_blob_over_tls():
    """A blob much larger than every TLS buffer, complete and exact; Range too."""
    d, imgs = images("small")
    with pclib.TestEnv("tls-large") as env:
        ca = make_ca(env.dir, "ca")
        srv = make_cert(env.dir, ca, "server", 1)
        up = env.start_upstream(d)
        pc = start_tls(env, up, *srv)
        img, blob = max(((i, b) for i in imgs.values() for b in i["blobs"] if b["kind"] == "layer"),
                        key=lambda ib: ib[1]["size"])
        data = pclib.read_blob(d, img, blob["digest"])
        url = "%s/v2/%s/blobs/%s" % (pc.tls_url, img["name"], blob["digest"])
        ctx = ssl.create_default_context(cafile=ca[0])
        import http.client
        for attempt in ("cold", "warm"):
            c = http.client.HTTPSConnection("127.0.0.1", pc.tls_port, context=ctx, timeout=60)
            c.request("GET", url[len(pc.tls_url):])
            r = c.getresponse()
            body = r.read()
            check(r.status == 200 and pclib.sha256_digest(body) == blob["digest"],
                  "%s blob over TLS: %d, %d of %d bytes" % (attempt, r.status, len(body), len(data)))
            # Keep-alive: a range on the same connection.
            c.request("GET", url[len(pc.tls_url):], headers={"Range": "bytes=10-99999"})
            r = c.getresponse()
            body = r.read()
            check(r.status == 206 and body == data[10:100000], "range over TLS: %d" % r.status)
            c.close()
        check(blob["size"] > 1 << 20, "the blob is %d bytes: not larger than the buffers" % blob["size"])
        # Connection: close: the whole body, then close_notify and EOF (a lingering close).
        c = http.client.HTTPSConnection("127.0.0.1", pc.tls_port, context=ctx, timeout=60)
        c.request("GET", url[len(pc.tls_url):], headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        check(r.status == 200 and pclib.sha256_digest(body) == blob["digest"], "Connection: close")
        c.close()
        # Clients that go away in the middle of a body, 20 times: the daemon goes on.
        for _ in range(20):
            c = http.client.HTTPSConnection("127.0.0.1", pc.tls_port, context=ctx, timeout=60)
            c.request("GET", url[len(pc.tls_url):])
            r = c.getresponse()
            r.read(100000)
            c.sock.close()
            c.close()
        rc, out, _ = curl("--cacert", ca[0], pc.tls_url + "/v2/")
        check(rc == 0 and out.startswith("200"), "alive after aborted bodies: %d %r" % (rc, out))
        stop_clean(env, pc)


# ---- mutual TLS -------------------------------------------------------------------------------
def test_mtls_required_and_optional():
    clientlib.require("skopeo", "skopeo")
    d, imgs = images()
    with pclib.TestEnv("tls-mtls") as env:
        ca = make_ca(env.dir, "ca")
        other = make_ca(env.dir, "otherca")
        srv = make_cert(env.dir, ca, "server", 2001)
        node = make_cert(env.dir, ca, "node1", 2002, server=False)
        rogue = make_cert(env.dir, other, "rogue", 2003, server=False)
        up = env.start_upstream(d)
        pc = start_tls(env, up, *srv, extra="tls_client_ca = %s\ntls_client_auth = required\n" % ca[0])
        url = pc.tls_url + "/v2/"
        rc, out, err = curl("--cacert", ca[0], "--cert", node[0], "--key", node[1], url)
        check(rc == 0 and out.startswith("200"), "client cert: rc=%d %r %s" % (rc, out, err))
        wait_log(pc, "tls_subject=", "the subject on the access log")
        check(re.search(r'req method=GET path=/v2/ status=200 .*tls_subject="?CN=node1,O=pullcache-test',
                        log_text(pc)), "verified subject on the access line:\n" + log_text(pc)[-1500:])
        before = log_text(pc).count("tls-handshake-failed")
        rc, out, _ = curl("--cacert", ca[0], url)
        check(rc != 0 and not out.startswith("200"), "no client cert must be refused: %d %r" % (rc, out))
        wait_log(pc, "tls-handshake-failed", "the no-certificate refusal", before + 1)
        check("peer did not return a certificate" in log_text(pc), "reason for no certificate:\n"
              + log_text(pc)[-1000:])
        rc, out, _ = curl("--cacert", ca[0], "--cert", rogue[0], "--key", rogue[1], url)
        check(rc != 0 and not out.startswith("200"), "other CA's cert must be refused: %d %r" % (rc, out))
        wait_log(pc, "tls-handshake-failed", "the other-CA refusal", before + 2)
        check(re.search(r"tls-handshake-failed peer=\S+ reason=\"?(client certificate|certificate verify)",
                        log_text(pc)), "reason for the other CA:\n" + log_text(pc)[-1000:])
        # The refusals and the handshakes are counted on /metrics (plain listener).
        text = pclib.http("GET", pc.url + "/metrics").body.decode()

        def tls_metric(name):
            m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
            check(m, "no %s in /metrics" % name)
            return int(m.group(1))
        check(tls_metric('pullcache_tls_handshake_failures_total{reason="no_client_cert"}') == 1,
              "no_client_cert counted")
        check(tls_metric('pullcache_tls_handshake_failures_total{reason="bad_client_cert"}') == 1,
              "bad_client_cert counted")
        check(tls_metric("pullcache_tls_mtls_refusals_total") == 2, "mTLS refusals counted")
        check(tls_metric("pullcache_tls_handshakes_total") >= 1, "handshakes counted")
        # Kernel TLS: detected and said once at start.
        m = re.findall(r"tls-send mode=userspace ktls=(available|unavailable) reason=", log_text(pc))
        check(len(m) == 1, "one tls-send line: %r" % m)
        check(tls_metric("pullcache_tls_kernel_tls_available") == (m[0] == "available"),
              "the ktls gauge agrees with the log")
        # skopeo with ca.crt + client.cert + client.key pulls; without the client files it cannot.
        certs = cert_dir(env, "certs", ca[0], node)
        skopeo_pull(env, pc, imgs["pause"], certs, env.path("dir-pause"))
        nocert = cert_dir(env, "nocert", ca[0])
        r = pclib.skopeo("inspect", "--raw", "--cert-dir", nocert,
                         "docker://127.0.0.1:%d/pause:%s" % (pc.tls_port, imgs["pause"]["tag"]),
                         check_rc=False)
        check(r.returncode != 0, "skopeo without a client cert must fail")
        env.stop(pc)
        # optional: no certificate is fine (no subject logged), a bad one is still refused.
        pc = start_tls(env, up, *srv, extra="tls_client_ca = %s\ntls_client_auth = optional\n" % ca[0])
        rc, out, _ = curl("--cacert", ca[0], pc.tls_url + "/v2/")
        check(rc == 0 and out.startswith("200"), "optional, no cert: %d %r" % (rc, out))
        rc, out, _ = curl("--cacert", ca[0], "--cert", rogue[0], "--key", rogue[1], pc.tls_url + "/v2/")
        check(rc != 0, "optional, other CA's cert must be refused: %d %r" % (rc, out))
        rc, out, _ = curl("--cacert", ca[0], "--cert", node[0], "--key", node[1], pc.tls_url + "/v2/")
        check(rc == 0 and out.startswith("200"), "optional, good cert: %d %r" % (rc, out))
        wait_log(pc, "tls_subject=", "the optional-mode subject")
        stop_clean(env, pc)


# ---- rotation ---------------------------------------------------------------------------------
def test_sighup_rotates_certificate():
    d, imgs = images("small")
    with pclib.TestEnv("tls-reload") as env:
        ca = make_ca(env.dir, "ca")
        make_cert(env.dir, ca, "server", 3001)
        crt, key = env.path("live.crt"), env.path("live.key")
        os.rename(env.path("server.crt"), crt)
        os.rename(env.path("server.key"), key)
        up = env.start_upstream(d)
        pc = start_tls(env, up, crt, key)
        check(peer_serial(pc.tls_port) == 3001, "first serial")
        import http.client
        ctx = ssl.create_default_context(cafile=ca[0])
        old = http.client.HTTPSConnection("127.0.0.1", pc.tls_port, context=ctx, timeout=30)
        old.request("GET", "/v2/")
        check(old.getresponse().read() == b"{}", "old connection, first request")
        # A large blob in flight across the reload: started now, read after it.
        img, blob = max(((i, b) for i in imgs.values() for b in i["blobs"] if b["kind"] == "layer"),
                        key=lambda ib: ib[1]["size"])
        path = "/v2/%s/blobs/%s" % (img["name"], blob["digest"])
        check(pclib.http("GET", pc.url + path).status == 200, "blob warm")  # cached first, so the TLS body comes from the store
        big = http.client.HTTPSConnection("127.0.0.1", pc.tls_port, context=ctx, timeout=30)
        big.request("GET", path)
        bigr = big.getresponse()
        head = bigr.read(65536)
        # cert-manager style renewal: new files in place, then SIGHUP.
        n = make_cert(env.dir, ca, "renewed", 3002)
        os.replace(n[0], crt)
        os.replace(n[1], key)
        os.kill(pc.pid, signal.SIGHUP)
        wait_log(pc, "tls-reloaded", "the TLS reload")
        check(peer_serial(pc.tls_port) == 3002, "a new connection must see the renewed certificate")
        body = head + bigr.read()
        check(bigr.status == 200 and pclib.sha256_digest(body) == blob["digest"],
              "the blob sent across the reload: %d of %d bytes" % (len(body), blob["size"]))
        check(big.sock.getpeercert()["serialNumber"] == "0BB9", "the blob's connection kept its cert")
        big.close()
        old.request("GET", "/v2/")
        check(old.getresponse().read() == b"{}", "the established connection goes on after the reload")
        check(old.sock.getpeercert()["serialNumber"] == "0BB9", "old connection keeps its cert")
        old.close()
        # A mismatched pair (a key of another certificate): the running one stays, FILE: reason.
        other = make_cert(env.dir, ca, "other", 3003)
        os.replace(other[1], key)
        os.kill(pc.pid, signal.SIGHUP)
        wait_log(pc, "tls-reload-failed", "the failed reload")
        check("%s: key values mismatch" % key in log_text(pc), "FILE: reason:\n"
              + log_text(pc)[-1000:])
        check(peer_serial(pc.tls_port) == 3002, "after a bad reload the running certificate stays")
        os.unlink(crt)
        os.kill(pc.pid, signal.SIGHUP)
        wait_log(pc, "tls-reload-failed", "the second failed reload", 2)
        check("%s: No such file or directory" % crt in log_text(pc), "missing file reason")
        rc, out, _ = curl("--cacert", ca[0], pc.tls_url + "/v2/")
        check(rc == 0 and out.startswith("200"), "still serving: %d %r" % (rc, out))
        # Another tls_listen needs a restart: warned (as README says), the running port stays.
        write_config(env, pclib.free_port(), crt, key)
        os.kill(pc.pid, signal.SIGHUP)
        wait_log(pc, "reload-restart-needed key=tls_listen", "the tls_listen restart warning")
        rc, out, _ = curl("--cacert", ca[0], pc.tls_url + "/v2/")
        check(rc == 0 and out.startswith("200"), "the running TLS port stays: %d %r" % (rc, out))
        stop_clean(env, pc)


def test_bad_files_at_start():
    with pclib.TestEnv("tls-badstart") as env:
        ca = make_ca(env.dir, "ca")
        srv = make_cert(env.dir, ca, "server", 1)
        other = make_cert(env.dir, ca, "other", 2)
        garbage = env.path("garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        cases = [((env.path("missing.crt"), srv[1]), env.path("missing.crt") + ": No such file"),
                 ((srv[0], other[1]), other[1] + ": key values mismatch"),
                 ((garbage, srv[1]), garbage + ": "),
                 ((srv[0], garbage), garbage + ": ")]
        for (crt, key), want in cases:
            cfg = write_config(env, pclib.free_port(), crt, key)
            r = clientlib.run([os.environ["PULLCACHE"], "serve", "--config", cfg, "--listen",
                               "127.0.0.1:%d" % pclib.free_port(), "--store", env.path("st"),
                               "--offline"], check_rc=False, timeout=30)
            check(r.returncode != 0 and want in r.stderr,
                  "start with %s %s: rc=%d\n%s" % (crt, key, r.returncode, r.stderr[-1500:]))
            r = clientlib.run([os.environ["PULLCACHE"], "check-config", "--quiet", "--config", cfg],
                              check_rc=False, timeout=30)
            check(r.returncode == 2 and want in r.stderr, "check-config: %d %s" % (r.returncode, r.stderr))
        r = clientlib.run([os.environ["PULLCACHE"], "check-config", "--quiet", "--config",
                           write_config(env, pclib.free_port(), *srv)], check_rc=False, timeout=30)
        check(r.returncode == 0, "check-config with a good pair: %d %s" % (r.returncode, r.stderr))
        cfg = write_config(env, pclib.free_port(), srv[0], srv[1], "tls_client_auth = sometimes\n")
        r = clientlib.run([os.environ["PULLCACHE"], "serve", "--config", cfg, "--offline"],
                          check_rc=False, timeout=30)
        check(r.returncode != 0 and "tls_client_auth" in r.stderr, "bad tls_client_auth: %s" % r.stderr)


# ---- garbage ----------------------------------------------------------------------------------
def client_hello():
    """The bytes of a real TLS ClientHello (Python's ssl over memory BIOs)."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_garbage_and_truncated_hellos():
    with pclib.TestEnv("tls-fuzz") as env:
        ca = make_ca(env.dir, "ca")
        srv = make_cert(env.dir, ca, "server", 1)
        pc = start_tls(env, None, *srv, extra="tls_handshake_timeout = 500ms\n")
        hello = client_hello()
        check(len(hello) > 100 and hello[0] == 0x16, "a ClientHello was made")
        rnd = random.Random(15)
        kinds = {}
        for i in range(FUZZ_INPUTS):
            k = i % 5
            if k == 0:  # random bytes
                data = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 600)))
            elif k == 1:  # a truncated hello
                data = hello[:rnd.randrange(1, len(hello))]
            elif k == 2:  # a hello with flipped bytes
                b = bytearray(hello)
                for _ in range(rnd.randrange(1, 8)):
                    b[rnd.randrange(len(b))] = rnd.getrandbits(8)
                data = bytes(b)
            elif k == 3:  # a handshake record header with any length, then junk
                data = bytes([0x16, 3, rnd.randrange(5), rnd.getrandbits(8), rnd.getrandbits(8)]) + \
                    bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 64)))
            else:  # a hello, then garbage records
                data = hello + bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300)))
            kinds[k] = kinds.get(k, 0) + 1
            with socket.create_connection(("127.0.0.1", pc.tls_port), timeout=10) as s:
                try:
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(65536):
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass
            if i % 500 == 499:
                check(pc.alive(), "daemon died after input %d" % i)
        check(sum(kinds.values()) == FUZZ_INPUTS, "inputs sent: %s" % kinds)
        # A silent client is closed by the handshake timeout.
        with socket.create_connection(("127.0.0.1", pc.tls_port), timeout=15) as s:
            check(s.recv(10) == b"", "a silent client must be closed")
        wait_log(pc, "reason=timeout", "the handshake timeout line")
        check(pc.alive(), "daemon alive after %d inputs" % FUZZ_INPUTS)
        text = pclib.http("GET", pc.url + "/metrics").body.decode()
        fails = {k: int(v) for k, v in re.findall(
            r'^pullcache_tls_handshake_failures_total\{reason="(\w+)"\} (\d+)$', text, re.M)}
        check(fails.get("protocol", 0) > 0 and fails.get("timeout", 0) >= 1,
              "garbage counted as protocol failures, the silent client as a timeout: %r" % fails)
        rc, out, err = curl("--cacert", ca[0], "https://127.0.0.1:%d/v2/" % pc.tls_port)
        check(rc == 0 and out.startswith("200"), "a real client after the garbage: %d %r %s" % (rc, out, err))
        check("AddressSanitizer" not in log_text(pc) and "runtime error" not in log_text(pc),
              "sanitizer report:\n" + log_text(pc)[-3000:])
        stop_clean(env, pc)
        print("fuzz: %d inputs by kind %s" % (FUZZ_INPUTS, sorted(kinds.items())), flush=True)


# ---- generated client configuration: containerd (ctr) and podman over mTLS -----------------
def strict_https_registries_conf(text, hostport):
    """The generated registries.conf with the mirror as the primary location too (no fallback
    to the real registry), https verified (no insecure)."""
    old = 'location = "registry.k8s.io"\n'
    check(text.count(old) == 1 and "insecure" not in text, "generated:\n" + text)
    return ("unqualified-search-registries = []\n"
            + text.replace(old, 'location = "%s/registry.k8s.io"\n' % hostport))


def test_ctr_and_podman_mtls_from_pullcache_config():
    """`pullcache config containerd|podman --mirror https://... --ca --cert --key` writes what
    the runtimes need: ctr (hosts.toml `ca` and `client`) pulls every platform of a multi-arch
    image over mutual TLS, verified by digest, with the node's subject on the access log; the
    same hosts.toml without `client` is refused; podman with the generated certs.d pulls."""
    clientlib.require("ctr", "containerd")
    # Usage errors (exit 2) and unreadable files (exit 1), nothing on stdout.
    for args, code in ((["containerd", "--mirror", "https://h:1", "--cert", "/etc/hostname"], 2),
                       (["containerd", "--mirror", "http://h:1", "--ca", "/etc/hostname"], 2),
                       (["podman", "--mirror", "h:1", "--certs-dir", "/tmp"], 2),
                       (["containerd", "--mirror", "https://h:1", "--certs-dir", "/tmp"], 2),
                       (["crio", "--mirror", "https://h:1", "--ca", "/nonexistent/ca.crt"], 1)):
        r = clientlib.config(*args, check_rc=False)
        check(r.returncode == code and r.stdout == "" and r.stderr,
              "config %s: rc=%d out=%r err=%r" % (args, r.returncode, r.stdout, r.stderr))
    d, imgs = images()
    img = imgs["pause"]
    want = {img["index_digest"]}
    for m in img["manifests"]:
        want |= {m["digest"], m["config"]} | set(m["layers"])
    with pclib.TestEnv("tls-ctr") as env, clientlib.Containerd(env) as ctrd:
        ca = make_ca(env.dir, "ca")
        srv = make_cert(env.dir, ca, "server", 3001)
        node = make_cert(env.dir, ca, "node1", 3002, server=False)
        up = env.start_upstream(d)
        pc = start_tls(env, up, *srv, extra="tls_client_ca = %s\n" % ca[0])
        mirror = pc.tls_url
        ref = "registry.k8s.io/pause:" + img["tag"]

        # Without a client certificate: refused by the mirror (mTLS required).
        clientlib.config("containerd", "--mirror", mirror, "--ca", ca[0], "--dir", ctrd.hosts_dir,
                         "--write")
        hosts = os.path.join(ctrd.hosts_dir, "registry.k8s.io", "hosts.toml")
        clientlib.strict_hosts_toml(hosts, mirror)
        r = clientlib.run(ctrd.pull_argv(ref), check_rc=False, what="ctr pull")
        check(r.returncode != 0, "ctr pulled without a client certificate")
        check(ctrd.images().get(ref) is None, "an image after the refused pull")
        wait_log(pc, "tls-handshake-failed", "the mTLS refusal logged")

        # With --cert/--key: the files land next to hosts.toml, `ca` and `client` name them.
        r = clientlib.config("containerd", "--mirror", mirror, "--ca", ca[0], "--cert", node[0],
                             "--key", node[1], "--dir", ctrd.hosts_dir, "--write")
        hd = os.path.dirname(hosts)
        for f in ("pullcache-ca.crt", "client.cert", "client.key"):
            check("wrote " + os.path.join(hd, f) in r.stdout, "wrote %s: %r" % (f, r.stdout))
        check(os.stat(os.path.join(hd, "client.key")).st_mode & 0o077 == 0, "client.key mode")
        cfg = clientlib.strict_hosts_toml(hosts, mirror)
        h = cfg["host"][mirror]
        check(h["ca"] == os.path.join(hd, "pullcache-ca.crt") and
              h["client"] == [[os.path.join(hd, "client.cert"), os.path.join(hd, "client.key")]],
              "hosts.toml TLS settings: %r" % h)
        ctrd.pull(ref, "--all-platforms")
        check(ctrd.images()[ref][1] == img["index_digest"], "ctr image %r" % (ctrd.images()[ref],))
        check(want <= ctrd.content(), "content missing %s" % (want - ctrd.content()))
        log = log_text(pc)
        check(re.search(r"req method=GET path=/v2/pause/blobs/\S+ status=200 .*"
                        r"tls_subject=\"?CN=node1,O=pullcache-test", log),
              "the node's subject on the access log")
        ctrd.rm(ref)

        # podman: the generated registries.conf and certs.d (--certs-dir).
        if os.geteuid() == 0 and shutil.which("podman"):
            certs = env.path("containers-certs.d")
            r = clientlib.config("podman", "--mirror", mirror, "--ca", ca[0], "--cert", node[0],
                                 "--key", node[1], "--certs-dir", certs)
            hp = "127.0.0.1:%d" % pc.tls_port
            for f in ("ca.crt", "client.cert", "client.key"):
                check(os.path.exists(os.path.join(certs, hp, f)), "certs.d/%s/%s" % (hp, f))
            with clientlib.Podman(env) as pm:
                pm.write_registries_conf(strict_https_registries_conf(r.stdout, hp))
                pm.podman("pull", "--cert-dir", os.path.join(certs, hp), ref)
                j = json.loads(pm.podman("image", "inspect", ref).stdout)[0]
                check(j["Digest"] == img["index_digest"], "podman Digest %s" % j["Digest"])
                pm.podman("rmi", ref)
        else:
            print("test_tls: podman part needs root and podman: not run", flush=True)
        stop_clean(env, pc)


TESTS = [test_https_curl_skopeo_plain_http, test_large_blob_over_tls, test_mtls_required_and_optional,
         test_sighup_rotates_certificate, test_bad_files_at_start, test_garbage_and_truncated_hellos,
         test_ctr_and_podman_mtls_from_pullcache_config]

if __name__ == "__main__":
    sys.exit(pclib.run_tests(TESTS))
