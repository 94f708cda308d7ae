#!/usr/bin/python3
"""Who may pull (issue 15): [server] allow and ops_allow. A client outside both lists is closed
at accept, before any byte is read (also on the TLS listener, before the handshake), and the
upstream sees no request; a peer that got in through one list is refused (403) on the routes
of the other class; both apply again on SIGHUP; IPv4 and IPv6 peers. The test picks its
client's source address (127.0.0.1, 127.0.0.2, 127.0.0.3, ::1) by binding before connecting.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_access.py [test_name ...]
"""

import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clientlib  # noqa: E402
import pclib  # noqa: E402
from pclib import check  # noqa: E402
from test_clients import images, verify_dir  # noqa: E402


def get(host, port, path, source=None, family=socket.AF_INET, headers=None, tls_ctx=None):
    """GET PATH from HOST:PORT with the client socket bound to SOURCE first. Returns (status,
    body, headers), or ("closed", error text, {}) when the connection was accepted and then
    closed without an answer (a failed connect is a test failure, not a refusal)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    if source:
        sock.bind((source, 0))
    try:
        sock.connect((host, port))
    except OSError as e:
        sock.close()
        raise pclib.CheckFailed("connect to %s:%d failed: %s" % (host, port, e))
    if tls_ctx is not None:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=tls_ctx)
        try:
            sock = tls_ctx.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as e:
            sock.close()
            return ("closed", "%s: %s" % (type(e).__name__, e), {})
    else:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = sock
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return (r.status, r.read(), dict(r.getheaders()))
    except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError, socket.timeout,
            OSError) as e:
        return ("closed", "%s: %s" % (type(e).__name__, e), {})
    finally:
        conn.close()


ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])


def metric(text, name, labels):
    m = re.search(r"^%s\{%s\} (\d+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    check(m, "no %s{%s} in /metrics" % (name, labels))
    return int(m.group(1))


def write_conf(path, body):
    with open(path, "w") as f:
        f.write(body)


def test_allow_lists_close_refuse_and_reload():
    d, imgs = images()
    img = imgs["pause"]
    manifest = "/v2/%s/manifests/%s" % (img["name"], img["tag"])
    with pclib.TestEnv("access-allow") as env:
        up = env.start_upstream(d)
        port, port6 = pclib.free_port(), pclib.free_port("::1")
        cfg = env.path("pullcache.ini")
        write_conf(cfg, "[server]\nallow = 127.0.0.2/32\nops_allow = 127.0.0.3\n")
        pc = env.start_pullcache(upstream=up, port=port,
                                 args=["--config", cfg, "--listen", "[::1]:%d" % port6])
        up.reset()

        # Outside both lists: closed before any answer, and nothing asked upstream.
        for _ in range(3):
            r = get("127.0.0.1", port, manifest, source="127.0.0.1")
            check(r[0] == "closed", "127.0.0.1 not in allow: got %r" % (r[:2],))
        r = get("::1", port6, manifest, family=socket.AF_INET6)
        check(r[0] == "closed", "::1 not in allow: got %r" % (r[:2],))
        check(up.count() == 0, "a refused client reached the upstream: %r" % up.log())
        log = open(pc.log_path, errors="replace").read()
        check("conn-refused peer=127.0.0.1 reason=allow" in log, "the refusal is logged")
        check(not re.search(r"req method=GET path=/v2/%s" % re.escape(img["name"]), log),
              "a refused connection was parsed")

        # In allow: pulls go through; the ops routes are not for it.
        r = get("127.0.0.1", port, manifest, source="127.0.0.2", headers={"Accept": ACCEPT})
        check(r[0] == 200, "127.0.0.2 in allow: manifest %r" % (r[:2],))
        check(up.count() > 0, "the allowed pull reached the upstream")
        r = get("127.0.0.1", port, "/metrics", source="127.0.0.2")
        check(r[0] == 403 and b"DENIED" in r[1], "/metrics from a pull address: %r" % (r[:2],))
        r = get("127.0.0.1", port, "/healthz", source="127.0.0.2")
        check(r[0] == 403, "/healthz from a pull address: %r" % (r[:2],))
        r = get("127.0.0.1", port, "/status", source="127.0.0.2")
        check(r[0] == 403, "/status from a pull address: %r" % (r[:2],))

        # In ops_allow: the ops routes; a pull is 403 and asks nothing upstream.
        n = up.count()
        r = get("127.0.0.1", port, "/v2/other/manifests/latest", source="127.0.0.3")
        check(r[0] == 403 and b"DENIED" in r[1], "a pull from the ops address: %r" % (r[:2],))
        check(up.count() == n, "a refused pull reached the upstream")
        check(get("127.0.0.1", port, "/healthz", source="127.0.0.3")[0] == 200, "healthz")
        check(get("127.0.0.1", port, "/status", source="127.0.0.3")[0] == 200, "status")
        check(get("127.0.0.1", port, "/readyz", source="127.0.0.3")[0] in (200, 503), "readyz")
        r = get("127.0.0.1", port, "/metrics", source="127.0.0.3")
        check(r[0] == 200, "/metrics from the ops address: %r" % (r[:2],))
        text = r[1].decode()
        refused = metric(text, "pullcache_connections_refused_total", 'reason="allow"')
        check(refused == 4, "4 connections refused, counted %d" % refused)
        check(metric(text, "pullcache_requests_refused_total", 'reason="ops_allow"') == 3,
              "3 ops requests refused")
        check(metric(text, "pullcache_requests_refused_total", 'reason="allow"') == 1,
              "1 pull refused")

        # SIGHUP: 127.0.0.1 and ::1 in, 127.0.0.2 out; no ops_allow: ops follow allow.
        write_conf(cfg, "[server]\nallow = 127.0.0.1, ::1/128\n")
        os.kill(pc.pid, signal.SIGHUP)
        pclib.wait_for(lambda: open(pc.log_path, errors="replace").read().count("reloaded config=")
                       >= 1, 10, "the reload")
        check(get("127.0.0.1", port, manifest, source="127.0.0.2")[0] == "closed",
              "127.0.0.2 refused after the reload")
        check(get("127.0.0.1", port, "/healthz", source="127.0.0.1")[0] == 200,
              "127.0.0.1 allowed after the reload")
        r = get("::1", port6, "/metrics", family=socket.AF_INET6)
        check(r[0] == 200, "::1 allowed after the reload: %r" % (r[:2],))
        env.stop(pc)


def test_allow_list_on_the_tls_listener():
    """The TLS listener: a refused peer is closed before the handshake (the client's handshake
    fails on EOF, and no tls-handshake-failed line is logged)."""
    import test_tls
    d, imgs = images()
    with pclib.TestEnv("access-tls") as env:
        ca = test_tls.make_ca(env.dir, "ca")
        srv = test_tls.make_cert(env.dir, ca, "server", 7)
        up = env.start_upstream(d)
        pc = test_tls.start_tls(env, up, *srv, extra="allow = 127.0.0.2\n")
        ctx = ssl.create_default_context(cafile=ca[0])
        r = get("127.0.0.1", pc.tls_port, "/v2/", source="127.0.0.1", tls_ctx=ctx)
        check(r[0] == "closed", "refused TLS client: %r" % (r[:2],))
        r = get("127.0.0.1", pc.tls_port, "/v2/", source="127.0.0.2", tls_ctx=ctx)
        check(r[0] == 200, "allowed TLS client: %r" % (r[:2],))
        log = test_tls.log_text(pc)
        check("conn-refused peer=127.0.0.1 reason=allow listener=tls" in log, "logged")
        check("tls-handshake" not in log.split("conn-refused", 1)[1].split("\n", 1)[0],
              "no handshake logged for the refused peer")
        test_tls.stop_clean(env, pc)


# ---- credentials ----------------------------------------------------------------------------
TOKEN = "tok-e2e-0123456789abcdef"


def htpasswd_line(user, password):
    return clientlib.run(["htpasswd", "-nbB", "-C", "5", user, password], what="htpasswd").stdout.strip()


def b64(s):
    return base64.b64encode(s.encode()).decode()


def test_credentials_token_and_htpasswd():
    """auth_token_file + htpasswd: skopeo --src-creds with the htpasswd user and with the token as
    password pulls (verified); curl with a Bearer header (containerd's hosts.toml header) too; a
    wrong one is 401 with the Basic challenge and asks nothing upstream; podman with an auth file
    pulls; the ops routes need none; no secret reaches the log; SIGHUP swaps the users."""
    clientlib.require("skopeo", "skopeo")
    clientlib.require("htpasswd", "htpasswd (apache2-utils)")
    d, imgs = images()
    with pclib.TestEnv("access-creds") as env:
        up = env.start_upstream(d)
        tok = env.path("token")
        write_conf(tok, TOKEN + "\n")
        hp = env.path("htpasswd")
        write_conf(hp, htpasswd_line("alice", "s3cret-alice") + "\n")
        cfg = env.path("pullcache.ini")
        write_conf(cfg, "[server]\nauth_token_file = %s\nhtpasswd = %s\n" % (tok, hp))
        pc = env.start_pullcache(upstream=up, args=["--config", cfg])
        url = "127.0.0.1:%d" % pc.port

        # No credentials: the /v2/ ping and a manifest are 401 with the Basic challenge.
        up.reset()
        for path in ("/v2/", "/v2/pause/manifests/%s" % imgs["pause"]["tag"]):
            st, body, hdrs = get("127.0.0.1", pc.port, path)
            check(st == 401 and b"UNAUTHORIZED" in body, "%s without credentials: %r" % (path, st))
            check(hdrs.get("WWW-Authenticate", "").startswith('Basic realm="pullcache"'),
                  "challenge: %r" % hdrs)
        check(get("127.0.0.1", pc.port, "/healthz")[0] == 200, "healthz needs no credentials")
        check(get("127.0.0.1", pc.port, "/metrics")[0] == 200, "metrics needs no credentials")
        # Wrong ones: 401, nothing upstream.
        wrong = ["Bearer nope-nope-nope-nope", "Bearer " + TOKEN + "x",
                 "Basic " + b64("alice:wrong"), "Basic " + b64("mallory:s3cret-alice"),
                 "Basic " + b64("alice:" + TOKEN + "x")]
        for h in wrong:
            st = get("127.0.0.1", pc.port, "/v2/pause/manifests/%s" % imgs["pause"]["tag"],
                     headers={"Authorization": h})[0]
            check(st == 401, "%s: %r" % (h.split()[0], st))
        r = pclib.skopeo("inspect", "--raw", "--tls-verify=false", "--retry-times", "0",
                         "--creds", "alice:wrong", "docker://%s/pause:%s" % (url, imgs["pause"]["tag"]),
                         check_rc=False)
        check(r.returncode != 0, "skopeo with a wrong password pulled")
        check(up.count() == 0, "a refused request reached the upstream: %r" % up.log()[:3])

        # Right ones: skopeo with the htpasswd user and with the token as password; a Bearer.
        for name, creds in (("pause", "alice:s3cret-alice"), ("coredns/coredns", "anyone:" + TOKEN)):
            img = imgs[name]
            dest = env.path("dir-" + name.replace("/", "_"))
            pclib.skopeo("copy", "--all", "--src-tls-verify=false", "--src-creds", creds,
                         "--retry-times", "0", "docker://%s/%s:%s" % (url, name, img["tag"]),
                         "dir:" + dest)
            verify_dir(img, dest)
        st, body, _ = get("127.0.0.1", pc.port, "/v2/pause/manifests/%s" % imgs["pause"]["tag"],
                          headers={"Authorization": "Bearer " + TOKEN, "Accept": ACCEPT})
        check(st == 200, "Bearer token: %r" % st)

        # podman with an auth file (Basic) pulls from the mirror directly.
        if os.geteuid() == 0 and shutil.which("podman"):
            authfile = env.path("auth.json")
            with open(authfile, "w") as f:
                json.dump({"auths": {url: {"auth": b64("alice:s3cret-alice")}}}, f)
            with clientlib.Podman(env) as pm:
                pm.write_registries_conf('unqualified-search-registries = []\n')
                ref = "%s/pause:%s" % (url, imgs["pause"]["tag"])
                pm.podman("pull", "--tls-verify=false", "--authfile", authfile, ref)
                j = json.loads(pm.podman("image", "inspect", ref).stdout)[0]
                check(j["Digest"] == imgs["pause"]["index_digest"], "podman Digest %s" % j["Digest"])
                pm.podman("rmi", ref)
        else:
            print("test_access: podman part needs root and podman: not run", flush=True)

        text = get("127.0.0.1", pc.port, "/metrics")[1].decode()
        check(metric(text, "pullcache_requests_refused_total", 'reason="no_credentials"') >= 2,
              "no_credentials counted")
        check(metric(text, "pullcache_requests_refused_total", 'reason="bad_credentials"') >= 5,
              "bad_credentials counted")
        check(metric(text, "pullcache_auth_accepted_total", 'method="htpasswd"') >= 1, "bcrypt ran")
        check(metric(text, "pullcache_auth_accepted_total", 'method="cached"') >= 1,
              "a passed credential is remembered")
        check(metric(text, "pullcache_auth_accepted_total", 'method="token"') >= 2, "token")
        log = open(pc.log_path, errors="replace").read()
        check("auth_user=alice" in log and "auth=token" in log, "the access line names the auth")
        for secret in ("s3cret-alice", TOKEN, b64("alice:s3cret-alice"), "wrong"):
            check(secret not in log, "the log holds a secret (%s...)" % secret[:4])

        # SIGHUP: alice removed, bob added; alice's remembered credential goes with it.
        write_conf(hp, htpasswd_line("bob", "bobs-password") + "\n")
        os.kill(pc.pid, signal.SIGHUP)
        pclib.wait_for(lambda: "reloaded config=" in open(pc.log_path, errors="replace").read(),
                       10, "the reload")
        path = "/v2/pause/manifests/%s" % imgs["pause"]["tag"]
        check(get("127.0.0.1", pc.port, path, headers={"Authorization": "Basic " + b64(
            "alice:s3cret-alice"), "Accept": ACCEPT})[0] == 401, "alice after the reload")
        check(get("127.0.0.1", pc.port, path, headers={"Authorization": "Basic " + b64(
            "bob:bobs-password"), "Accept": ACCEPT})[0] == 200, "bob after the reload")
        # A bad file on reload keeps the running credentials.
        write_conf(hp, "bob:{SHA}notbcrypt\n")
        os.kill(pc.pid, signal.SIGHUP)
        pclib.wait_for(lambda: "auth-reload-failed" in open(pc.log_path, errors="replace").read(),
                       10, "the failed credential reload")
        check(get("127.0.0.1", pc.port, path, headers={"Authorization": "Basic " + b64(
            "bob:bobs-password"), "Accept": ACCEPT})[0] == 200, "bob kept after a bad reload")
        rc = env.stop(pc)
        check(rc == 0, "exit %s" % rc)


def test_ctr_with_a_static_authorization_header():
    """containerd's hosts.toml [host."...".header] Authorization (the token as Bearer) pulls
    through a mirror that asks for credentials; without the header ctr is refused."""
    clientlib.require("ctr", "containerd")
    d, imgs = images()
    img = imgs["pause"]
    with pclib.TestEnv("access-ctr") as env, clientlib.Containerd(env) as ctrd:
        up = env.start_upstream(d)
        tok = env.path("token")
        write_conf(tok, TOKEN + "\n")
        cfg = env.path("pullcache.ini")
        write_conf(cfg, "[server]\nauth_token_file = %s\n" % tok)
        pc = env.start_pullcache(upstream=up, args=["--config", cfg])
        ref = "registry.k8s.io/pause:" + img["tag"]
        clientlib.config("containerd", "--mirror", pc.url, "--dir", ctrd.hosts_dir, "--write")
        hosts = os.path.join(ctrd.hosts_dir, "registry.k8s.io", "hosts.toml")
        clientlib.strict_hosts_toml(hosts, pc.url)
        r = clientlib.run(ctrd.pull_argv(ref), check_rc=False, what="ctr pull")
        check(r.returncode != 0, "ctr pulled without the header")
        with open(hosts, "a") as f:
            f.write('  [host."%s".header]\n    Authorization = "Bearer %s"\n' % (pc.url, TOKEN))
        ctrd.pull(ref)
        check(ctrd.images()[ref][1] == img["index_digest"], "ctr image %r" % (ctrd.images()[ref],))
        log = open(pc.log_path, errors="replace").read()
        check(re.search(r"req method=GET path=/v2/pause/blobs/\S+ status=200 .*auth=token", log),
              "the blobs came with the token")
        check(TOKEN not in log, "the token is in the log")
        ctrd.rm(ref)
        env.stop(pc)


def test_credentials_only_on_the_tls_listener():
    """auth_on = tls: the plain loopback listener asks for none, the TLS one does."""
    import test_tls
    d, imgs = images()
    with pclib.TestEnv("access-auth-on") as env:
        ca = test_tls.make_ca(env.dir, "ca")
        srv = test_tls.make_cert(env.dir, ca, "server", 9)
        up = env.start_upstream(d)
        tok = env.path("token")
        write_conf(tok, TOKEN + "\n")
        pc = test_tls.start_tls(env, up, *srv, extra="auth_token_file = %s\nauth_on = tls\n" % tok)
        ctx = ssl.create_default_context(cafile=ca[0])
        check(get("127.0.0.1", pc.port, "/v2/")[0] == 200, "plain listener: no credentials asked")
        check(get("127.0.0.1", pc.tls_port, "/v2/", tls_ctx=ctx)[0] == 401, "TLS listener asks")
        check(get("127.0.0.1", pc.tls_port, "/v2/", tls_ctx=ctx,
                  headers={"Authorization": "Bearer " + TOKEN})[0] == 200, "TLS with the token")
        # check-config loads the files; a bad token file is FILE: reason, exit 2.
        r = clientlib.run([os.environ["PULLCACHE"], "check-config", "--config", pc.config,
                           "--quiet"], check_rc=False, what="check-config")
        check(r.returncode == 0, "check-config: %s" % r.stderr)
        write_conf(tok, "short\n")
        r = clientlib.run([os.environ["PULLCACHE"], "check-config", "--config", pc.config,
                           "--quiet"], check_rc=False, what="check-config")
        check(r.returncode == 2 and tok + ": the first line must be the token" in r.stderr,
              "check-config with a bad token: %s %s" % (r.returncode, r.stderr))
        test_tls.stop_clean(env, pc)


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_allow_lists_close_refuse_and_reload,
                              test_allow_list_on_the_tls_listener,
                              test_credentials_token_and_htpasswd,
                              test_ctr_with_a_static_authorization_header,
                              test_credentials_only_on_the_tls_listener]))
