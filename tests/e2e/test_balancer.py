#!/usr/bin/python3
"""Replicas behind a real load balancer: three pullcache replicas (each with its own store) behind
HAProxy, then nginx, configured by `pullcache config haproxy|nginx` as generated; everything on
loopback and started here, in front of the registry.k8s.io-like test upstream (the origin).

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_balancer.py [test_name ...]

What is checked: 30 concurrent cold pulls through the balancer fetch each blob from the origin
exactly once across all replicas (consistent hashing on the digest); a replica killed mid-run
leaves every pull complete (the client retries what the balancer could not); only the dead
replica's keys move (measured on 600 synthetic keys: the fraction is printed), and the replicas
that take them fill each moved blob once.
"""

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http  # noqa: E402
from test_tiers import content_digests, images, pull_image  # noqa: E402

NODES = 30
KEYS = 600


def start_replicas(env, origin, n=3):
    return [env.start_pullcache(upstream=origin, name="replica%d" % (i + 1)) for i in range(n)]


def generate(kind, replicas, listen, extra=()):
    argv = [os.environ["PULLCACHE"], "config", kind, "--listen", listen] + list(extra)
    for r in replicas:
        argv += ["--replica", "127.0.0.1:%d" % r.port]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    check(r.returncode == 0, "pullcache config %s failed: %s" % (kind, r.stderr))
    return r.stdout


def wait_listening(port, proc, what):
    def up():
        if not proc.alive():
            raise pclib.CheckFailed("%s exited (%s):\n%s" % (what, proc.popen.returncode, proc.tail()))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    pclib.wait_for(up, 20, "%s to listen on %d" % (what, port), 0.1)


def start_haproxy(env, replicas):
    port = pclib.free_port()
    cfg = env.path("haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(generate("haproxy", replicas, "127.0.0.1:%d" % port))
    r = subprocess.run(["haproxy", "-c", "-f", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    check(r.returncode == 0, "haproxy -c refused the generated config:\n%s" % r.stdout)
    p = env.spawn("haproxy", ["haproxy", "-db", "-f", cfg])
    wait_listening(port, p, "haproxy")
    p.port, p.url = port, "http://127.0.0.1:%d" % port
    return p


def start_nginx(env, replicas):
    port = pclib.free_port()
    prefix = env.path("nginx") + "/"
    os.makedirs(prefix, exist_ok=True)
    cfg = env.path("nginx.conf")
    with open(cfg, "w") as f:
        f.write(generate("nginx", replicas, "127.0.0.1:%d" % port))
    base = ["nginx", "-p", prefix, "-e", prefix + "error.log", "-c", cfg]
    r = subprocess.run(base + ["-t", "-g", "pid %snginx.pid;" % prefix], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=30)
    check(r.returncode == 0, "nginx -t refused the generated config:\n%s" % r.stdout)
    p = env.spawn("nginx", base + ["-g", "daemon off; pid %snginx.pid;" % prefix])
    wait_listening(port, p, "nginx")
    p.port, p.url = port, "http://127.0.0.1:%d" % port
    return p


def log_sizes(replicas):
    return {r.name: os.path.getsize(r.log_path) for r in replicas}


def served_by(replicas, pattern, since=None):
    """{path: set of replica names} from the replicas' access lines whose path matches PATTERN
    (with SINCE, {name: offset}: only lines logged after those offsets)."""
    rx = re.compile(r" path=(\S+) status=")
    out = {}
    for r in replicas:
        with open(r.log_path, "rb") as f:
            f.seek((since or {}).get(r.name, 0))
            for line in f.read().decode("utf-8", "replace").splitlines():
                m = rx.search(line)
                if m and re.search(pattern, m.group(1)):
                    out.setdefault(m.group(1), set()).add(r.name)
    return out


def probe_keys(lb, replicas):
    """Ask KEYS synthetic blob keys through the balancer (answered 400 by the replica that gets
    each: the hash key of a blob path is its last segment, so these spread like digests).
    Returns {key: set of replica names that answered it}."""
    since = log_sizes(replicas)

    def one(i):
        r = http("GET", "%s/v2/probe/blobs/k-%d" % (lb.url, i), timeout=30)
        check(r.status == 400, "synthetic key %d answered %d" % (i, r.status))
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as ex:
        list(ex.map(one, range(KEYS)))
    got = served_by(replicas, r"^/v2/probe/blobs/k-\d+$", since)
    return {p.rsplit("-", 1)[1]: names for p, names in got.items()}


def run_balancer(kind):
    d, imgs = images()
    with pclib.TestEnv("balancer-" + kind) as env:
        origin = env.start_upstream(d)
        reps = start_replicas(env, origin)
        lb = start_haproxy(env, reps) if kind == "haproxy" else start_nginx(env, reps)
        names = list(imgs)

        # 30 concurrent cold pulls through the balancer: each blob once from the origin.
        with concurrent.futures.ThreadPoolExecutor(max_workers=NODES) as ex:
            jobs = [ex.submit(pull_image, lb.url, imgs[names[i % len(names)]]) for i in range(NODES)]
            for j in jobs:
                j.result(timeout=300)
        # every image once more from every node's point of view: now all hits
        with concurrent.futures.ThreadPoolExecutor(max_workers=NODES) as ex:
            for j in [ex.submit(pull_image, lb.url, img) for img in imgs.values()]:
                j.result(timeout=300)
        gets = origin.blob_gets()
        blobs = content_digests(imgs)
        for dg in blobs:
            check(gets.get(dg) == 1, "%s: blob %s fetched %s times from the origin" % (kind, dg, gets.get(dg)))
        owner = {}
        for p, who in served_by(reps, r"/blobs/sha256:").items():
            dg = p.split("?")[0].rsplit("/", 1)[1]
            owner.setdefault(dg, set()).update(who)
        for dg in blobs:
            check(len(owner.get(dg, ())) == 1, "%s: blob %s served by %s (want one replica)" % (kind, dg, owner.get(dg)))
        spread = {r.name: sum(1 for dg in blobs if owner[dg] == {r.name}) for r in reps}
        check(sum(1 for v in spread.values() if v) >= 2, "%s: every blob on one replica: %s" % (kind, spread))

        before = probe_keys(lb, reps)
        check(len(before) == KEYS and all(len(v) == 1 for v in before.values()),
              "%s: synthetic keys not each on one replica" % kind)

        # Kill one replica while 30 nodes pull everything (the client retries, as kubelet does).
        victim = reps[1]
        origin.reset()
        with concurrent.futures.ThreadPoolExecutor(max_workers=NODES) as ex:
            jobs = [ex.submit(lambda i=i: [pull_image(lb.url, imgs[names[(i + k) % len(names)]], tries=8)
                                           for k in range(len(names))]) for i in range(NODES)]
            time.sleep(0.2)
            running = sum(1 for j in jobs if not j.done())
            os.kill(victim.pid, signal.SIGKILL)
            victim.popen.wait(10)
            print("%s: %s killed with %d of %d nodes still pulling" % (kind, victim.name, running, NODES), flush=True)
            for j in jobs:
                j.result(timeout=300)
        survivors = [r for r in reps if r is not victim]
        # The balancer has taken the dead replica out (HAProxy: two failed /readyz checks;
        # nginx: the first failed connection). Ask the keys again.
        time.sleep(3)
        after = probe_keys(lb, survivors)
        check(len(after) == KEYS, "%s: %d of %d synthetic keys answered after the kill" % (kind, len(after), KEYS))
        moved = [k for k in before if before[k] != after[k]]
        wrong = [k for k in moved if before[k] != {victim.name}]
        check(not wrong, "%s: %d keys of surviving replicas moved" % (kind, len(wrong)))
        dead_share = sum(1 for k in before if before[k] == {victim.name})
        check(len(moved) == dead_share and 0 < len(moved) < KEYS, "%s: moved %d, dead had %d" % (kind, len(moved), dead_share))
        print("%s: keys moved when 1 of 3 replicas died: %d/%d = %.3f (blobs per replica before: %s)"
              % (kind, len(moved), KEYS, len(moved) / KEYS, spread), flush=True)
        # The blobs the dead replica held were filled by the survivors, each about once (a
        # request in flight at the kill may have been retried to a survivor before the
        # balancer took the dead one out).
        gets = origin.blob_gets()
        lost = [dg for dg in blobs if owner[dg] == {victim.name}]
        for dg in blobs:
            if dg not in lost:
                check(gets.get(dg, 0) == 0, "%s: blob %s of a survivor fetched again" % (kind, dg))
        for dg in lost:
            check(1 <= gets.get(dg, 0) <= 2, "%s: lost blob %s refilled %s times" % (kind, dg, gets.get(dg)))
        print("%s: origin GETs for the %d blobs of the dead replica after the kill: %s" %
              (kind, len(lost), sorted(gets.get(dg, 0) for dg in lost)), flush=True)


def test_tls_configs_serve_https():
    """--tls PEM: both generated configs load, and a pull's first request goes through over HTTPS."""
    import http.client as http_client
    import ssl
    d, imgs = images()
    with pclib.TestEnv("balancer-tls") as env:
        key, crt, pem = env.path("lb.key"), env.path("lb.crt"), env.path("lb.pem")
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", crt, "-days", "1", "-subj", "/CN=127.0.0.1",
                            "-addext", "subjectAltName=IP:127.0.0.1"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, "openssl: %s" % r.stderr)
        with open(pem, "w") as f:
            f.write(open(crt).read() + open(key).read())
        origin = env.start_upstream(d)
        reps = start_replicas(env, origin, 2)
        for kind in ("haproxy", "nginx"):
            port = pclib.free_port()
            cfg = env.path("%s-tls.conf" % kind)
            with open(cfg, "w") as f:
                f.write(generate(kind, reps, "127.0.0.1:%d" % port, ["--tls", pem]))
            if kind == "haproxy":
                p = env.spawn("haproxy-tls", ["haproxy", "-db", "-f", cfg])
            else:
                prefix = env.path("nginx-tls") + "/"
                os.makedirs(prefix, exist_ok=True)
                p = env.spawn("nginx-tls", ["nginx", "-p", prefix, "-e", prefix + "error.log", "-c", cfg,
                                            "-g", "daemon off; pid %snginx.pid;" % prefix])
            wait_listening(port, p, kind)
            ctx = ssl.create_default_context(cafile=crt)
            img = imgs["pause"]
            conn = http_client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            try:
                conn.request("GET", "/v2/%s/manifests/%s?ns=registry.k8s.io" % (img["name"], img["tag"]),
                             headers={"Accept": "application/vnd.docker.distribution.manifest.list.v2+json"})
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            check(resp.status == 200 and pclib.sha256_digest(body) == img["index_digest"],
                  "%s over TLS: %d" % (kind, resp.status))
            env.stop(p)


def test_haproxy_three_replicas():
    check(shutil.which("haproxy"), "haproxy is not installed (scripts/bootstrap installs it)")
    run_balancer("haproxy")


def test_nginx_three_replicas():
    check(shutil.which("nginx"), "nginx is not installed (scripts/bootstrap installs it)")
    run_balancer("nginx")


def main():
    return pclib.run_tests([test_haproxy_three_replicas, test_nginx_three_replicas, test_tls_configs_serve_https])


if __name__ == "__main__":
    sys.exit(main())
