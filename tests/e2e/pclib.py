"""pclib — helpers for pullcache's end-to-end tests (Python 3 stdlib only).

Typical use:

    import pclib
    from pclib import check
    images = pclib.make_images("tiny")              # cached under $PC_BUILD/test-images/tiny
    with pclib.TestEnv("my-test") as env:
        up = env.start_upstream(images)             # the fake registry.k8s.io
        pc = env.start_pullcache(upstream=up)       # $PULLCACHE serve ... ; waits for "ready"
        r = pclib.http("GET", pc.url + "/v2/pause/manifests/3.10")
        check(r.status == 200, "manifest by tag: %d" % r.status)
        check(up.violations() == 0, "Authorization reached the blob host")

Every wait is bounded; children are started in their own session and stopped by PID (SIGTERM,
then SIGKILL after a timeout); only loopback addresses are used. Set PC_KEEP=1 to keep the
temporary directory (its path is printed). A ThreadSanitizer report in the log of any child (a
daemon built with -DPC_TSAN=ON) fails the TestEnv that started it.
"""

import fcntl
import hashlib
import http.client as httpclient
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import namedtuple

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PC_SRC") or os.path.dirname(os.path.dirname(HERE))
UPSTREAM_PY = os.path.join(SRC, "tests", "upstream", "k8s_upstream.py")
MKIMAGES_PY = os.path.join(SRC, "tests", "upstream", "mkimages.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class CheckFailed(AssertionError):
    pass


def check(cond, msg):
    """Raise CheckFailed(MSG) unless COND. Use for every assertion in e2e tests."""
    if not cond:
        raise CheckFailed("CHECK FAILED: %s" % msg)


def sha256_digest(data):
    """'sha256:<hex>' of DATA (bytes)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_dir():
    """$PC_BUILD (the CMake build dir), or <src>/build if unset."""
    return os.environ.get("PC_BUILD") or os.path.join(SRC, "build")


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago on HOST (loopback). Racy by nature; prefer letting
    servers bind port 0 where they can."""
    check(host in LOOPBACK, "free_port: loopback only")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(pred, timeout, what, interval=0.05):
    """Poll PRED() until truthy (returned) or TIMEOUT seconds pass (CheckFailed)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise CheckFailed("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ---- HTTP ------------------------------------------------------------------------------------
Response = namedtuple("Response", "status headers body")
Response.__doc__ = """status: int; headers: dict with lower-case names (repeated headers joined
with ', '); body: bytes (b'' for HEAD)."""


def http(method, url, headers=None, body=None, timeout=30):
    """One request with http.client (new connection, no redirects followed). Returns Response.
    HEADERS is a dict or a list of (name, value) pairs (to send a header several times)."""
    u = urllib.parse.urlsplit(url)
    check(u.scheme == "http", "http(): only http:// URLs: %s" % url)
    check(u.hostname in LOOPBACK, "http(): loopback only: %s" % url)
    conn = httpclient.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        conn.putrequest(method, path, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        data = r.read()
        hdrs = {}
        for k, v in r.getheaders():
            lk = k.lower()
            hdrs[lk] = hdrs[lk] + ", " + v if lk in hdrs else v
        return Response(r.status, hdrs, data)
    finally:
        conn.close()


def metrics(server, raw=False):
    """{name or name{labels}: value} from GET /metrics of a pullcache (its url attribute);
    with raw=True, (that dict, the body as bytes). The content type is checked."""
    r = http("GET", server.url + "/metrics")
    check(r.status == 200, "/metrics answered %d" % r.status)
    check(r.headers.get("content-type", "").startswith("text/plain"), "metrics content type")
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return (out, r.body) if raw else out


def http_json(method, url, obj=None, timeout=30):
    """Send OBJ as JSON (if given), return the parsed JSON answer; CheckFailed unless 2xx."""
    body = json.dumps(obj).encode() if obj is not None else None
    r = http(method, url, {"Content-Type": "application/json"} if body else None, body, timeout)
    check(200 <= r.status < 300, "%s %s -> %d %r" % (method, url, r.status, r.body[:200]))
    return json.loads(r.body or b"null")


class RegistryClient:
    """A reference pull client doing the registry.k8s.io dance: follows redirects (up to
    MAX_REDIRECTS), answers Bearer challenges with an anonymous token from the realm (cached per
    scope), and sends Authorization only to the host that issued the challenge."""

    MAX_REDIRECTS = 5

    def __init__(self, timeout=30):
        self.timeout = timeout
        self.tokens = {}  # (host:port, scope) -> token
        self.trace = []   # (method, url, status) of every hop

    def _cached_token(self, hostport, path):
        for (hp, scope), tok in self.tokens.items():
            parts = scope.split(":")
            if hp == hostport and len(parts) >= 2 and "/%s/" % parts[1] in path:
                return tok
        return None

    def request(self, method, url, headers=None):
        """METHOD URL following redirects and challenges; returns the final Response."""
        hdrs = dict(headers or {})
        challenged = False
        for _ in range(self.MAX_REDIRECTS + 2):
            u = urllib.parse.urlsplit(url)
            hostport = "%s:%s" % (u.hostname, u.port)
            h = dict(hdrs)
            tok = self._cached_token(hostport, u.path)
            if tok:
                h["Authorization"] = "Bearer " + tok
            r = http(method, url, h, timeout=self.timeout)
            self.trace.append((method, url, r.status))
            if r.status == 401 and "www-authenticate" in r.headers and not challenged:
                challenged = True
                ch = parse_challenge(r.headers["www-authenticate"])
                q = {k: ch[k] for k in ("service", "scope") if k in ch}
                t = http("GET", ch["realm"] + "?" + urllib.parse.urlencode(q), timeout=self.timeout)
                check(t.status == 200, "token endpoint %s -> %d" % (ch["realm"], t.status))
                j = json.loads(t.body)
                self.tokens[(hostport, ch.get("scope", ""))] = j.get("token") or j.get("access_token")
                continue
            if r.status in (301, 302, 303, 307, 308):
                url = urllib.parse.urljoin(url, r.headers["location"])
                continue
            return r
        raise CheckFailed("too many redirects for %s" % url)


def parse_challenge(value):
    """'Bearer realm="x",service="y",scope="z"' -> {'scheme': 'Bearer', 'realm': 'x', ...}."""
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().strip(",").strip()
        if rest[eq + 1:eq + 2] == '"':
            end = rest.find('"', eq + 2)
            out[key.lower()] = rest[eq + 2:end]
            i = end + 1
        else:
            end = rest.find(",", eq)
            end = len(rest) if end < 0 else end
            out[key.lower()] = rest[eq + 1:end].strip()
            i = end
        while i < len(rest) and rest[i] in ", ":
            i += 1
    return out


# ---- images ------------------------------------------------------------------------------------
def make_images(scale="tiny", seed=1):
    """Directory of generated images for SCALE (tiny|small|k8s), cached at
    $PC_BUILD/test-images/<scale> (seed 1) or <scale>-seed<N>; generated once, safely under
    concurrent ctest runs (file lock + atomic rename)."""
    base = os.path.join(build_dir(), "test-images")
    os.makedirs(base, exist_ok=True)
    name = scale if seed == 1 else "%s-seed%d" % (scale, seed)
    out = os.path.join(base, name)
    if os.path.exists(os.path.join(out, "images.json")):
        return out
    with open(os.path.join(base, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(out, "images.json")):
            return out
        tmp = tempfile.mkdtemp(prefix=name + ".", dir=base)
        try:
            subprocess.run([PYTHON, MKIMAGES_PY, "--out", tmp, "--scale", scale, "--seed", str(seed)],
                           check=True, stdout=subprocess.DEVNULL, timeout=600)
            if os.path.exists(out):
                shutil.rmtree(out)  # a partial leftover without images.json
            os.rename(tmp, out)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_images(images_dir):
    """images.json as a dict name -> image record (see tests/upstream/README.md)."""
    with open(os.path.join(images_dir, "images.json")) as f:
        return {i["name"]: i for i in json.load(f)}


def blob_path(images_dir, image, digest):
    """Path of blob DIGEST inside IMAGE's layout (IMAGE: record from load_images)."""
    return os.path.join(images_dir, image["layout_dir"], "blobs", "sha256", digest.split(":", 1)[1])


def read_blob(images_dir, image, digest):
    with open(blob_path(images_dir, image, digest), "rb") as f:
        return f.read()


# ---- processes ---------------------------------------------------------------------------------
def _die_with_parent():
    """preexec_fn: the child gets SIGKILL if the test process dies (e.g. killed by a ctest
    timeout), so no daemon outlives its test."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    """A child started by TestEnv.spawn. popen, pid, name, log_path (its stdout+stderr)."""

    def __init__(self, env, name, popen, log_path):
        self.env, self.name, self.popen, self.log_path = env, name, popen, log_path
        self.pid = popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self, timeout=10):
        """SIGTERM by PID, SIGKILL after TIMEOUT seconds. Returns the exit code."""
        return self.env.stop(self)


class Upstream(Proc):
    """The fake registry.k8s.io. ports: {"redirector","registry","blobs"}; url (= redirector,
    what pullcache's --upstream points at), registry_url, blobs_url; state_dir; images_dir."""

    def setup(self, state_dir, images_dir, host):
        self.state_dir, self.images_dir = state_dir, images_dir
        with open(os.path.join(state_dir, "ports.json")) as f:
            self.ports = json.load(f)
        h = "[%s]" % host if ":" in host else host
        self.url = "http://%s:%d" % (h, self.ports["redirector"])
        self.redirector_url = self.url
        self.registry_url = "http://%s:%d" % (h, self.ports["registry"])
        self.blobs_url = "http://%s:%d" % (h, self.ports["blobs"])
        self.sigs_url = "http://%s:%d" % (h, self.ports["sigs"])

    def log(self, role=None):
        """Parsed request log (list of dicts, oldest first), optionally only one ROLE."""
        entries = http_json("GET", self.url + "/_control/log")
        return [e for e in entries if role is None or e["role"] == role]

    def reset(self):
        """Clear fault rules and the request log (the violation count is kept)."""
        http_json("POST", self.url + "/_control/reset", {})

    def faults(self, rules, append=False):
        """Replace (or with APPEND, extend) the fault rules; see tests/upstream/README.md."""
        http_json("POST", self.url + "/_control/faults" + ("?append=1" if append else ""), rules)

    def fault_state(self):
        """Current rules with their remaining count and hits."""
        return http_json("GET", self.url + "/_control/faults")

    def config(self, **kw):
        """token_ttl=S (seconds for new tokens), require_auth=bool."""
        http_json("POST", self.url + "/_control/config", kw)

    def violations(self):
        """Requests that reached the blob host with an Authorization header (since start)."""
        with open(os.path.join(self.state_dir, "violations")) as f:
            return int(f.read().strip() or 0)

    def blob_gets(self):
        """{digest: number of GETs} at the blob host."""
        counts = {}
        for e in self.log("blobs"):
            if e["method"] == "GET":
                d = e["path"].rsplit("/", 1)[-1].replace("%3A", ":")
                counts[d] = counts.get(d, 0) + 1
        return counts

    def count(self, role=None, path_contains=None, method=None):
        """Number of logged requests matching the filters."""
        return sum(1 for e in self.log(role)
                   if (path_contains is None or path_contains in e["path"])
                   and (method is None or e["method"] == method))


class Server(Proc):
    """pullcache or docker-registry: port, url ("http://127.0.0.1:PORT"), root/store dir."""


class TestEnv:
    """Context manager: a temp dir (self.dir) plus child processes stopped by PID at exit."""

    def __init__(self, name="pc-test", stop_timeout=10):
        self.name = name
        self.stop_timeout = stop_timeout
        self.procs = []
        self.logs = []  # (name, log path) of every child ever spawned, for the TSan scan
        self.dir = None

    def __enter__(self):
        base = os.path.join(build_dir(), "tmp")
        os.makedirs(base, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=self.name + ".", dir=base)
        return self

    def __exit__(self, etype, exc, tb):
        if etype is not None:
            for p in self.procs:
                sys.stderr.write("---- tail of %s (pid %d) log %s ----\n%s\n"
                                 % (p.name, p.pid, p.log_path, p.tail()))
        for p in reversed(self.procs):
            self.stop(p)
        reports = self.tsan_reports()
        for name, path, text in reports:
            sys.stderr.write("---- ThreadSanitizer report in %s log %s ----\n%s\n" % (name, path, text))
        if os.environ.get("PC_KEEP"):
            sys.stderr.write("PC_KEEP: kept %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if reports and etype is None:
            raise CheckFailed("CHECK FAILED: ThreadSanitizer reported in the log of %s"
                              % ", ".join(sorted(set(r[0] for r in reports))))
        return False

    def tsan_reports(self):
        """[(name, log path, report text)] for every child log holding a ThreadSanitizer report
        (a TSan build of the daemon writes them to stderr, i.e. its log). With halt_on_error=1 the
        daemon also dies at the first one, but a report at exit would otherwise go unnoticed."""
        out = []
        for name, path in self.logs:
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                continue
            i = text.find("ThreadSanitizer")
            if i >= 0:
                j = text.rfind("==================", 0, i)  # the line a report starts with
                start = j if j >= 0 else text.rfind("\n", 0, i) + 1
                out.append((name, path, text[start:start + 20000]))
        return out

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def spawn(self, name, argv, env=None, cls=Proc):
        """Start ARGV in its own session, stdout+stderr to <dir>/<name>.log; tracked for stop."""
        log = self.path("%s.log" % name)
        full_env = dict(os.environ)
        full_env.update(env or {})
        with open(log, "wb") as lf:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True, cwd=self.dir,
                                     preexec_fn=_die_with_parent)
        p = cls(self, name, popen, log)
        self.procs.append(p)
        self.logs.append((name, log))
        return p

    def stop(self, p):
        if p.popen.poll() is None:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.popen.wait(10)
        return p.popen.returncode

    def start_upstream(self, images_dir, host="127.0.0.1", token_ttl=300, timeout=20):
        """Start tests/upstream/k8s_upstream.py on IMAGES_DIR; returns an Upstream once its
        ports.json exists."""
        n = sum(1 for p in self.procs if isinstance(p, Upstream))
        state = self.path("upstream%d" % n)
        os.makedirs(state)
        up = self.spawn("upstream%d" % n, [PYTHON, UPSTREAM_PY, "--images", images_dir, "--state", state,
                                           "--host", host, "--token-ttl", str(token_ttl),
                                           "--parent", str(os.getpid())], cls=Upstream)

        def ready():
            if not up.alive():
                raise CheckFailed("upstream exited (%s):\n%s" % (up.popen.returncode, up.tail()))
            return os.path.exists(os.path.join(state, "ports.json"))
        wait_for(ready, timeout, "the test upstream's ports.json")
        up.setup(state, images_dir, host)
        return up

    def start_pullcache(self, args=(), env=None, upstream=None, port=None, store=None,
                        ready="ready listen=", timeout=20, name="pullcache", binary=None):
        """Run $PULLCACHE serve --listen 127.0.0.1:PORT --store STORE [--no-config unless ARGS has
        --config] [--upstream registry.k8s.io=<UPSTREAM url>] ARGS..., wait until its output contains
        READY (a substring, or a callable(server) -> bool). UPSTREAM: an Upstream, a URL string,
        or None (no --upstream). Returns a Server (port, url, store, log_path, tail())."""
        binary = binary or os.environ.get("PULLCACHE")
        check(binary and os.path.exists(binary), "PULLCACHE not set or missing: %r" % binary)
        port = port or free_port()
        store = store or self.path("%s-store" % name)
        argv = [binary, "serve", "--listen", "127.0.0.1:%d" % port, "--store", store]
        if not any(str(a).startswith("--config") for a in args):
            argv.append("--no-config")  # never pick up the machine's /etc/pullcache
        if upstream is not None:
            url = upstream if isinstance(upstream, str) else upstream.url
            argv += ["--upstream", "registry.k8s.io=" + url]
        argv += list(args)
        s = self.spawn(name, argv, env=env, cls=Server)
        s.port, s.url, s.store, s.argv = port, "http://127.0.0.1:%d" % port, store, argv

        def ok():
            if not s.alive():
                raise CheckFailed("%s exited with %s before ready; argv %s\n%s"
                                  % (name, s.popen.returncode, argv, s.tail()))
            if callable(ready):
                return ready(s)
            with open(s.log_path, "rb") as f:
                return ready.encode() in f.read()
        try:
            wait_for(ok, timeout, "%s to log %r" % (name, ready))
        except CheckFailed as e:
            raise CheckFailed("%s\n---- tail of %s ----\n%s" % (e, s.log_path, s.tail()))
        return s

    def start_docker_registry(self, port=None, root=None, proxy_remote=None, timeout=20,
                              name="docker-registry", htpasswd=None, tls=None):
        """CNCF distribution (/usr/bin/docker-registry) on 127.0.0.1:PORT with filesystem storage
        at ROOT, optionally a pull-through cache of PROXY_REMOTE, optionally with Basic auth from
        the htpasswd(1) file HTPASSWD (bcrypt), optionally over HTTPS with TLS = (cert, key)
        files. Waits for GET /v2/ = 200 (401 with auth; a TCP accept with TLS)."""
        port = port or free_port()
        root = root or self.path("%s-root" % name)
        os.makedirs(root, exist_ok=True)
        cfg = self.path("%s.yml" % name)
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog: {level: info, formatter: text}\n"
                    "storage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\n"
                    "http: {addr: 127.0.0.1:%d%s}\n"
                    % (json.dumps(root), port,
                       ", tls: {certificate: %s, key: %s}" % (json.dumps(tls[0]), json.dumps(tls[1]))
                       if tls else ""))
            if proxy_remote:
                f.write("proxy: {remoteurl: %s}\n" % json.dumps(proxy_remote))
            if htpasswd:
                f.write("auth: {htpasswd: {realm: pullcache-test, path: %s}}\n" % json.dumps(htpasswd))
        s = self.spawn(name, ["/usr/bin/docker-registry", "serve", cfg], cls=Server)
        s.port, s.root = port, root
        s.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", port)

        def ok():
            if not s.alive():
                raise CheckFailed("docker-registry exited: %s\n%s" % (s.popen.returncode, s.tail()))
            try:
                if tls:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                    return True
                return http("GET", s.url + "/v2/", timeout=2).status == (401 if htpasswd else 200)
            except OSError:
                return False
        wait_for(ok, timeout, "docker-registry /v2/ on port %d" % port, 0.1)
        return s


def skopeo(*args, timeout=300, check_rc=True):
    """Run skopeo ARGS (bounded by TIMEOUT); returns CompletedProcess with text stdout/stderr.
    CheckFailed on a non-zero exit unless CHECK_RC is False."""
    argv = ["skopeo"] + [str(a) for a in args]
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CheckFailed("skopeo timed out after %ds: %s" % (timeout, " ".join(argv)))
    if check_rc and r.returncode != 0:
        raise CheckFailed("skopeo failed (%d): %s\n%s" % (r.returncode, " ".join(argv), r.stderr[-2000:]))
    return r


def run_tests(tests, argv=None):
    """Tiny runner: TESTS is a list of functions; runs those named in ARGV (all if none), prints
    PASS/FAIL per test, returns the process exit status (0 if all passed)."""
    import traceback
    argv = sys.argv[1:] if argv is None else argv
    selected = [t for t in tests if not argv or t.__name__ in argv]
    failed = 0
    for t in selected:
        t0 = time.monotonic()
        try:
            t()
            print("PASS %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            print("FAIL %s" % t.__name__, flush=True)
    print("%d/%d passed" % (len(selected) - failed, len(selected)), flush=True)
    return 1 if failed or not selected else 0
