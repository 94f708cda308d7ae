"""clientlib — drive the real container clients (containerd + ctr, podman, skopeo) against a
pullcache under test. Python 3 stdlib only; used by tests/e2e/test_clients.py.

Recipes follow /work/shared/TESTING.md: containerd runs as root with its own config, root, state
and socket in a short directory under /tmp (a unix socket path must stay under 108 bytes); podman
runs as root with vfs storage and config files given through CONTAINERS_* variables. Every
command is bounded by a timeout, every daemon is stopped by PID, and anything mounted below a
state directory is unmounted before the directory is removed.

Client configs are generated with `pullcache config ...` and then made STRICT: the fallback
(containerd's `server`, the registries.conf primary `location`) is rewritten to the mirror too, so
a miss never makes a client look up the real registry.k8s.io.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import tomllib

import pclib
from pclib import check

CMD_TIMEOUT = 180


def pullcache_bin():
    b = os.environ.get("PULLCACHE")
    check(b and os.path.exists(b), "PULLCACHE not set or missing: %r" % b)
    return b


def run(argv, timeout=CMD_TIMEOUT, env=None, check_rc=True, what=None):
    """Run ARGV bounded by TIMEOUT; CompletedProcess with text output. CheckFailed on a non-zero
    exit (unless CHECK_RC is False) or on timeout, with the command's stderr."""
    what = what or argv[0]
    try:
        r = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, errors="replace", timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise pclib.CheckFailed("%s timed out after %ds: %s" % (what, timeout, " ".join(map(str, argv))))
    except FileNotFoundError:
        raise pclib.CheckFailed("%s is not installed (%s): this client cannot be tested here"
                                % (what, argv[0]))
    if check_rc and r.returncode != 0:
        raise pclib.CheckFailed("%s failed (%d): %s\nstdout: %s\nstderr: %s"
                                % (what, r.returncode, " ".join(map(str, argv)), r.stdout[-2000:],
                                   r.stderr[-3000:]))
    return r


def require(binary, why):
    """Fail (not skip) when a client binary is missing."""
    check(shutil.which(binary) is not None,
          "%s is not installed; %s cannot be tested (apt-get install -y %s)" % (binary, why, binary))


# ---- pullcache config ----------------------------------------------------------------------------
def config(*args, check_rc=True):
    """`pullcache config ARGS...` -> CompletedProcess."""
    r = run([pullcache_bin(), "config"] + list(args), timeout=30, check_rc=False,
            what="pullcache config")
    check("unknown command 'config'" not in r.stderr,
          "%s has no `config` command: daemon/main.c must dispatch \"config\" to cmd_config"
          % pullcache_bin())
    check(not check_rc or r.returncode == 0, "pullcache config %s failed (%d): %s"
          % (" ".join(args), r.returncode, r.stderr[-2000:]))
    return r


def strict_hosts_toml(path, mirror_url):
    """Rewrite the generated hosts.toml at PATH so its fallback `server` is the mirror itself.
    Checks the generated file first (production shape). Returns the parsed strict config."""
    with open(path) as f:
        text = f.read()
    gen = tomllib.loads(text)
    name = os.path.basename(os.path.dirname(path))
    check(gen.get("server") == "https://" + name, "generated server: %r" % gen.get("server"))
    check(gen.get("host", {}).get(mirror_url, {}).get("capabilities") == ["pull", "resolve"],
          "generated host table: %r" % gen)
    strict, n = re.subn(r'(?m)^server = ".*"$', 'server = "%s"' % mirror_url, text)
    check(n == 1, "exactly one server line in %s" % path)
    with open(path, "w") as f:
        f.write(strict)
    cfg = tomllib.loads(strict)
    check(cfg["server"] == mirror_url, "strict server")
    return cfg


def strict_registries_conf(text, mirror_hostport, names):
    """Make generated registries.conf TEXT strict: no unqualified search, and each registry's
    primary location is the mirror (with the same path prefix), insecure. Returns the text."""
    for name in names:
        old = 'location = "%s"\n' % name
        check(text.count(old) == 1, "one primary location for %s in:\n%s" % (name, text))
        text = text.replace(old, 'location = "%s/%s"\ninsecure = true\n' % (mirror_hostport, name))
    text = "unqualified-search-registries = []\n" + text
    cfg = tomllib.loads(text)
    for reg in cfg["registry"]:
        check(reg["location"].startswith(mirror_hostport + "/"), "strict location %r" % reg)
        for m in reg.get("mirror", []):
            check(m["location"].startswith(mirror_hostport + "/"), "mirror location %r" % m)
    return text


# ---- mounts --------------------------------------------------------------------------------------
def _unescape_mount(p):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p)


def mounts_under(d):
    d = os.path.realpath(d).rstrip("/") + "/"
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 1:
                mp = _unescape_mount(parts[1])
                if mp.startswith(d):
                    out.append(mp)
    return out


def umount_all_under(d):
    """Unmount (lazily, deepest first) everything mounted below D. Returns what was mounted."""
    found = mounts_under(d)
    for mp in sorted(found, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30)
    return found


def remove_state_dir(d):
    umount_all_under(d)
    shutil.rmtree(d, ignore_errors=True)


# ---- containerd ----------------------------------------------------------------------------------
def overlay_available():
    with open("/proc/filesystems") as f:
        return any(line.split()[-1] == "overlay" for line in f if line.strip())


class Containerd:
    """A containerd daemon with everything under a short /tmp dir. Use as a context manager
    inside a pclib.TestEnv (the daemon is an env child, stopped by PID):

        with clientlib.Containerd(env) as ctrd:
            ctrd.pull("registry.k8s.io/pause:3.10", hosts_dir)
    """

    def __init__(self, env, snapshotter=None):
        self.env = env
        self.snapshotter = snapshotter or ("overlayfs" if overlay_available() else "native")
        self.dir = None
        self.proc = None

    def __enter__(self):
        require("containerd", "containerd")
        require("ctr", "containerd")
        self.dir = tempfile.mkdtemp(prefix="pcc.", dir="/tmp")
        self.sock = os.path.join(self.dir, "sock")
        self.hosts_dir = os.path.join(self.dir, "certs.d")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write('version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri", '
                    '"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
                    '"io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]\n'
                    '[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n'
                    % (self.dir, self.dir, self.sock, self.sock))
        try:
            self.proc = self.env.spawn("containerd", ["containerd", "--config", cfg])

            def up():
                if not self.proc.alive():
                    raise pclib.CheckFailed("containerd exited (%s):\n%s"
                                            % (self.proc.popen.returncode, self.proc.tail()))
                return os.path.exists(self.sock) and self.ctr("version", check_rc=False,
                                                               timeout=10).returncode == 0
            pclib.wait_for(up, 30, "containerd to serve on %s" % self.sock, 0.1)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.env.stop(self.proc)
        if self.dir:
            if os.environ.get("PC_KEEP"):
                umount_all_under(self.dir)
            else:
                remove_state_dir(self.dir)
        return False

    def ctr(self, *args, timeout=CMD_TIMEOUT, check_rc=True):
        return run(["ctr", "-a", self.sock] + list(args), timeout=timeout, check_rc=check_rc,
                   what="ctr")

    def pull_argv(self, ref, *extra):
        return (["ctr", "-a", self.sock, "images", "pull", "--snapshotter", self.snapshotter,
                 "--hosts-dir", self.hosts_dir] + list(extra) + [ref])

    def pull(self, ref, *extra, timeout=CMD_TIMEOUT):
        return run(self.pull_argv(ref, *extra), timeout=timeout, what="ctr images pull")

    def images(self):
        """{ref: (media type, digest)} from `ctr images ls`."""
        out = {}
        for line in self.ctr("images", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3:
                out[parts[0]] = (parts[1], parts[2])
        return out

    def content(self):
        """Set of digests in the content store."""
        return {line.strip() for line in self.ctr("content", "ls", "-q").stdout.splitlines()
                if line.strip()}

    def snapshots(self):
        """[(key, kind)] of the snapshotter in use."""
        out = []
        lines = self.ctr("snapshots", "--snapshotter", self.snapshotter, "ls").stdout.splitlines()
        for line in lines[1:]:
            parts = line.split()
            if parts:
                out.append((parts[0], parts[-1]))
        return out

    def rm(self, ref):
        self.ctr("images", "rm", "--sync", ref)

    def ingest_files(self):
        d = os.path.join(self.dir, "root", "io.containerd.content.v1.content", "ingest")
        out = []
        if os.path.isdir(d):
            for e in os.listdir(d):
                p = os.path.join(d, e, "data")
                if os.path.exists(p):
                    out.append(p)
        return out


# HTTP request lines in `ctr --http-dump` output (a preceding response body may share the line).
_DUMP_REQ = re.compile(r'(HEAD|GET|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.1')


def http_dump_requests(stderr):
    """[(method, path?query)] in order from ctr --http-dump output."""
    return _DUMP_REQ.findall(stderr)


def http_dump_headers(stderr, name):
    """All values of request/response header NAME in ctr --http-dump output."""
    pat = re.compile(r'msg="%s: ([^"]*)"' % re.escape(name), re.I)
    return pat.findall(stderr)


# ---- podman --------------------------------------------------------------------------------------
class Podman:
    """Rootful podman with vfs storage and its own config files under a temp dir."""

    def __init__(self, env):
        self.env = env
        self.dir = None

    def __enter__(self):
        require("podman", "podman")
        self.dir = tempfile.mkdtemp(prefix="pcp.", dir="/tmp")
        self.registries_conf = os.path.join(self.dir, "registries.conf")
        with open(os.path.join(self.dir, "storage.conf"), "w") as f:
            f.write('[storage]\ndriver = "vfs"\ngraphroot = "%s/root"\nrunroot = "%s/runroot"\n'
                    % (self.dir, self.dir))
        with open(os.path.join(self.dir, "containers.conf"), "w") as f:
            f.write('[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
                    'events_logfile_path = "%s/events.log"\n' % self.dir)
        self.envvars = dict(os.environ,
                            CONTAINERS_REGISTRIES_CONF=self.registries_conf,
                            CONTAINERS_STORAGE_CONF=os.path.join(self.dir, "storage.conf"),
                            CONTAINERS_CONF=os.path.join(self.dir, "containers.conf"))
        return self

    def __exit__(self, *exc):
        if self.dir:
            self.podman("rmi", "-a", "-f", check_rc=False, timeout=60)
            if os.environ.get("PC_KEEP"):
                umount_all_under(self.dir)
            else:
                remove_state_dir(self.dir)
        return False

    def write_registries_conf(self, text):
        with open(self.registries_conf, "w") as f:
            f.write(text)

    def podman(self, *args, timeout=CMD_TIMEOUT, check_rc=True):
        return run(["podman"] + list(args), env=self.envvars, timeout=timeout, check_rc=check_rc,
                   what="podman")


def kill_pid(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def access_log(server, start=0):
    """pullcache's access log lines ('req ...') as dicts of key=value, from byte offset START.
    Returns (entries, end offset)."""
    with open(server.log_path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        i = line.find("req method=")
        if i < 0:
            continue
        kv = {}
        for tok in line[i + 4:].split():
            k, _, v = tok.partition("=")
            kv[k] = v
        out.append(kv)
    return out, start + len(data)


def log_size(server):
    return os.path.getsize(server.log_path)
