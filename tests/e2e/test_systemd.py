#!/usr/bin/python3
"""The systemd files in systemd/: unit, sysusers, tmpfiles, privileged-port drop-in.

systemd is not PID 1 on the test machines, so nothing here starts a unit. What is checked:
  - the shipped unit's contract (ExecStart, Type=notify, ExecReload, user, StateDirectory...);
  - `systemd-analyze verify` is clean, for the unit alone and with the privileged-port drop-in;
  - `systemd-analyze security --offline=true` overall exposure <= 2.0 (unit and drop-in);
  - sysusers and tmpfiles applied to a scratch root give the expected account, modes, owners,
    and so do the install steps of docs/OPERATIONS.md replayed in a scratch root;
  - the daemon itself fits the sandbox: run under strace (configured by a file) through a cold
    fill, hits, /metrics, /readyz, a SIGHUP reload and a SIGTERM drain, every system call it made must be in the unit's SystemCallFilter,
    every socket family in RestrictAddressFamilies, every write under the store
    (ProtectSystem=strict), /proc only its own (ProcSubset=pid), no W+X memory, no new
    namespaces; and the sd_notify protocol (READY=1 once listening, RELOADING=1 then READY=1
    on SIGHUP, STOPPING=1 on SIGTERM, all from the main PID, as NotifyAccess=main requires).
A missing tool (systemd-analyze, systemd-sysusers, systemd-tmpfiles, strace) is a failure,
not a skip: scripts/bootstrap installs them.

    PULLCACHE=build/pullcache PC_BUILD=build python3 tests/e2e/test_systemd.py [test_name ...]
"""

import array
import base64
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
import test_tls  # noqa: E402
from pclib import check  # noqa: E402


def pclib_htpasswd(user, password):
    """One htpasswd line, bcrypt (htpasswd -B, apache2-utils)."""
    r = run(["htpasswd", "-nbB", "-C", "5", user, password])
    check(r.returncode == 0, "htpasswd: %s" % r.stderr)
    return r.stdout.strip() + "\n"

SYSTEMD_DIR = os.path.join(pclib.SRC, "systemd")
UNIT = os.path.join(SYSTEMD_DIR, "pullcache.service")
PORT_DROPIN = os.path.join(SYSTEMD_DIR, "pullcache-privileged-port.conf")
SYSUSERS = os.path.join(SYSTEMD_DIR, "pullcache.sysusers")
TMPFILES = os.path.join(SYSTEMD_DIR, "pullcache.tmpfiles")
SAMPLE_CONF = os.path.join(SYSTEMD_DIR, "pullcache.conf")
EXEC_START = "/usr/local/bin/pullcache serve --config /etc/pullcache/pullcache.conf"
EXEC_RELOAD = "/bin/kill -HUP $MAINPID"
MAX_EXPOSURE = 2.0
# Where docs/OPERATIONS.md installs each file (relative to the root file system).
INSTALL = [(UNIT, "usr/local/lib/systemd/system/pullcache.service"),
           (SYSUSERS, "usr/local/lib/sysusers.d/pullcache.conf"),
           (TMPFILES, "usr/local/lib/tmpfiles.d/pullcache.conf"),
           (SAMPLE_CONF, "etc/pullcache/pullcache.conf")]
DRAIN_S = 10  # the daemon's graceful drain bound (daemon/daemon.c DAEMON_DRAIN_MS)


# ---- helpers -----------------------------------------------------------------------------------
def tool(name, package):
    """Absolute path of NAME, or CheckFailed naming the Debian PACKAGE that provides it."""
    p = shutil.which(name)
    check(p is not None, "%s not found: install the Debian package '%s' (scripts/bootstrap)"
          % (name, package))
    return p


def run(argv, timeout=120):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise pclib.CheckFailed("timed out after %ds: %s" % (timeout, " ".join(argv)))


def unit_settings(path):
    """[(section, key, value)] of a unit file, in order (comments and blank lines dropped)."""
    out, section = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            key, sep, value = line.partition("=")
            check(sep == "=", "%s: not key=value: %r" % (path, line))
            out.append((section, key.strip(), value.strip()))
    return out


def values(settings, key, section="Service"):
    return [v for s, k, v in settings if s == section and k == key]


def one(settings, key, section="Service"):
    v = values(settings, key, section)
    check(len(v) == 1, "[%s] %s= set %d times (want once): %r" % (section, key, len(v), v))
    return v[0]


def seconds(value):
    """'30s', '1min 30s', '90' -> seconds (the subset of systemd.time(7) our files use)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        check(unit in units, "time span %r: unknown unit %r" % (value, unit))
        total += float(num) * units[unit]
    return total


def staged_unit(env, dropins=()):
    """Copy the unit into ENV's dir with ExecStart's binary replaced by $PULLCACHE (verify
    checks that it exists and is executable), plus DROPINS into pullcache.service.d/."""
    binary = os.environ.get("PULLCACHE")
    check(binary and os.access(binary, os.X_OK), "PULLCACHE not set or not executable: %r" % binary)
    d = env.path("units")
    os.makedirs(d)
    with open(UNIT) as f:
        text = f.read()
    check(text.count("ExecStart=/usr/local/bin/pullcache ") == 1, "ExecStart not found to rewrite")
    text = text.replace("ExecStart=/usr/local/bin/pullcache ", "ExecStart=%s " % binary)
    dst = os.path.join(d, "pullcache.service")
    with open(dst, "w") as f:
        f.write(text)
    if dropins:
        os.makedirs(dst + ".d")
        for p in dropins:
            shutil.copy(p, os.path.join(dst + ".d", os.path.basename(p)))
    return dst


def verify(unit):
    """systemd-analyze verify UNIT: exit 0 and no message about our unit or its drop-ins."""
    sa = tool("systemd-analyze", "systemd")
    r = run([sa, "verify", "--man=no", unit])
    ours = [l for l in r.stderr.splitlines() if "pullcache" in l]
    check(r.returncode == 0, "verify %s: exit %d\n%s" % (unit, r.returncode, r.stderr))
    check(not ours, "verify %s warned:\n%s" % (unit, "\n".join(ours)))
    return r


def exposure(unit):
    """Overall exposure of UNIT from systemd-analyze security --offline=true (a float)."""
    sa = tool("systemd-analyze", "systemd")
    r = run([sa, "security", "--offline=true", "--no-pager", unit])
    check(r.returncode == 0, "security %s: exit %d\n%s%s" % (unit, r.returncode, r.stdout, r.stderr))
    m = re.search(r"Overall exposure level for pullcache\.service:\s*([0-9]+(?:\.[0-9]+)?)", r.stdout)
    check(m is not None, "no 'Overall exposure level' line:\n%s%s" % (r.stdout, r.stderr))
    return float(m.group(1)), r.stdout


def sysusers_root(env):
    """Apply the sysusers file to a scratch root; returns (root, passwd entry, group entry)."""
    su = tool("systemd-sysusers", "systemd")
    root = env.path("root")
    os.makedirs(os.path.join(root, "etc"))
    r = run([su, "--root=" + root, SYSUSERS])
    check(r.returncode == 0, "systemd-sysusers --root: exit %d\n%s" % (r.returncode, r.stderr))

    def entry(fname, name):
        with open(os.path.join(root, "etc", fname)) as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name:
                    return fields
        raise pclib.CheckFailed("%s has no %s entry" % (fname, name))
    return root, entry("passwd", "pullcache"), entry("group", "pullcache")


# ---- the unit's contract -----------------------------------------------------------------------
def test_unit_contract():
    s = unit_settings(UNIT)
    check(one(s, "ExecStart") == EXEC_START, "ExecStart=%r, want %r" % (one(s, "ExecStart"), EXEC_START))
    check(one(s, "Type") == "notify", "Type=%s" % one(s, "Type"))
    check(one(s, "NotifyAccess") == "main", "NotifyAccess=%s" % one(s, "NotifyAccess"))
    check(one(s, "ExecReload") == EXEC_RELOAD, "ExecReload=%r" % one(s, "ExecReload"))
    check(one(s, "User") == "pullcache" and one(s, "Group") == "pullcache", "User/Group")
    check(values(s, "DynamicUser") in ([], ["no"]), "DynamicUser is set: the sysusers account is used")
    check(one(s, "StateDirectory") == "pullcache", "StateDirectory=%s" % one(s, "StateDirectory"))
    check(one(s, "ProtectSystem") == "strict", "ProtectSystem=%s" % one(s, "ProtectSystem"))
    # The store is the only writable path; nothing re-opens the read-only OS.
    check(not values(s, "ReadWritePaths"), "ReadWritePaths set: %r" % values(s, "ReadWritePaths"))
    stop = seconds(one(s, "TimeoutStopSec"))
    check(stop >= 2 * DRAIN_S, "TimeoutStopSec=%ss is not comfortably above the %d s drain" % (stop, DRAIN_S))
    nofile = one(s, "LimitNOFILE")
    check(nofile == "infinity" or int(nofile.split(":")[-1]) >= 65536, "LimitNOFILE=%s" % nofile)
    check(one(s, "CapabilityBoundingSet") == "" and one(s, "AmbientCapabilities") == "", "capabilities")
    check(one(s, "WantedBy", "Install") == "multi-user.target", "WantedBy")
    # The files the unit names exist in systemd/ under the names OPERATIONS.md installs them as.
    check(os.path.exists(SAMPLE_CONF), "sample config %s missing" % SAMPLE_CONF)
    with open(SYSUSERS) as f:
        check(re.search(r"^u\s+pullcache\s", f.read(), re.M), "sysusers does not create User=pullcache")


def test_verify():
    with pclib.TestEnv("systemd-verify") as env:
        good = staged_unit(env)
        verify(good)
        # The check has teeth: an unknown key in the same file is reported.
        bad = env.path("bad")
        os.makedirs(bad)
        with open(good) as f:
            text = f.read()
        with open(os.path.join(bad, "pullcache.service"), "w") as f:
            f.write(text.replace("[Service]\n", "[Service]\nProtectEverything=yes\n", 1))
        try:
            verify(os.path.join(bad, "pullcache.service"))
        except pclib.CheckFailed as e:
            check("ProtectEverything" in str(e), "verify failed for another reason: %s" % e)
        else:
            raise pclib.CheckFailed("verify did not report an unknown key")


def test_security_exposure():
    score, out = exposure(UNIT)
    print("systemd-analyze security --offline=true: overall exposure %.1f (limit %.1f)" % (score, MAX_EXPOSURE))
    check(score <= MAX_EXPOSURE, "exposure %.1f > %.1f:\n%s" % (score, MAX_EXPOSURE, out))
    # The items that stay exposed are the documented ones (docs/OPERATIONS.md); anything new
    # must be justified there first.
    exposed = sorted(set(re.findall(r"^✗ (\S+?)=", out, re.M)))
    documented = ["DeviceAllow", "IPAddressDeny", "PrivateNetwork", "RestrictAddressFamilies",
                  "RootDirectory", "SystemCallFilter"]
    check(exposed == documented, "exposed items %s, documented %s" % (exposed, documented))


def test_privileged_port_dropin():
    s = unit_settings(PORT_DROPIN)
    check(one(s, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE", "AmbientCapabilities")
    check(one(s, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet")
    # A capability inside the service's private user namespace does not count for the host's
    # network namespace, so the drop-in must turn PrivateUsers off.
    check(one(s, "PrivateUsers") == "no", "PrivateUsers=no missing")
    with pclib.TestEnv("systemd-port") as env:
        unit = staged_unit(env, [PORT_DROPIN])
        verify(unit)
        score, out = exposure(unit)
        print("with the privileged-port drop-in: overall exposure %.1f" % score)
        check(score <= MAX_EXPOSURE, "exposure with the drop-in %.1f > %.1f:\n%s" % (score, MAX_EXPOSURE, out))
        check("Service process receives ambient capabilities" in out, "drop-in not applied:\n%s" % out)


# ---- sysusers and tmpfiles ---------------------------------------------------------------------
def test_sysusers():
    su = tool("systemd-sysusers", "systemd")
    r = run([su, "--dry-run", SYSUSERS])
    check(r.returncode == 0, "systemd-sysusers --dry-run: exit %d\n%s" % (r.returncode, r.stderr))
    check("pullcache" in r.stdout + r.stderr, "dry run names no pullcache account:\n%s%s" % (r.stdout, r.stderr))
    with pclib.TestEnv("systemd-sysusers") as env:
        _, pw, gr = sysusers_root(env)
        name, _, uid, gid, _, home, shell = pw
        check(0 < int(uid) < 1000, "uid %s is not a system uid" % uid)
        check(gid == gr[2], "primary group %s is not the pullcache group %s" % (gid, gr[2]))
        check(home == "/var/lib/pullcache", "home %s" % home)
        check(shell.endswith("nologin"), "login shell %s" % shell)


def test_tmpfiles():
    tf = tool("systemd-tmpfiles", "systemd")
    with pclib.TestEnv("systemd-tmpfiles") as env:
        root, _, gr = sysusers_root(env)
        gid = int(gr[2])
        # An existing config with loose permissions is tightened; the directory is created.
        conf_dir = os.path.join(root, "etc", "pullcache")
        r = run([tf, "--create", "--root=" + root, TMPFILES])
        check(r.returncode == 0, "systemd-tmpfiles --create: exit %d\n%s" % (r.returncode, r.stderr))
        st = os.stat(conf_dir)
        check(stat.S_ISDIR(st.st_mode), "/etc/pullcache not a directory")
        check(stat.S_IMODE(st.st_mode) == 0o750, "/etc/pullcache mode %o" % stat.S_IMODE(st.st_mode))
        check(st.st_uid == 0 and st.st_gid == gid, "/etc/pullcache owner %d:%d" % (st.st_uid, st.st_gid))
        conf = os.path.join(conf_dir, "pullcache.conf")
        shutil.copy(SAMPLE_CONF, conf)
        os.chmod(conf, 0o666)
        os.chmod(conf_dir, 0o777)
        r = run([tf, "--create", "--root=" + root, TMPFILES])
        check(r.returncode == 0, "second systemd-tmpfiles --create: exit %d\n%s" % (r.returncode, r.stderr))
        st = os.stat(conf)
        check(stat.S_IMODE(st.st_mode) == 0o640, "pullcache.conf mode %o" % stat.S_IMODE(st.st_mode))
        check(st.st_uid == 0 and st.st_gid == gid, "pullcache.conf owner %d:%d" % (st.st_uid, st.st_gid))
        check(stat.S_IMODE(os.stat(conf_dir).st_mode) == 0o750, "/etc/pullcache mode not restored")
        # The TLS key (and client credentials) directory: 0750 root:pullcache; a key dropped in
        # with loose permissions becomes 0640 root:pullcache (readable by the service only).
        tls_dir = os.path.join(conf_dir, "tls")
        st = os.stat(tls_dir)
        check(stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o750
              and st.st_uid == 0 and st.st_gid == gid,
              "/etc/pullcache/tls: mode %o owner %d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        key = os.path.join(tls_dir, "server.key")
        with open(key, "w") as f:
            f.write("not a real key\n")
        os.chmod(key, 0o644)
        r = run([tf, "--create", "--root=" + root, TMPFILES])
        check(r.returncode == 0, "third systemd-tmpfiles --create: exit %d\n%s" % (r.returncode, r.stderr))
        st = os.stat(key)
        check(stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0 and st.st_gid == gid,
              "server.key mode %o owner %d:%d" % (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))


def test_install_layout():
    """The install steps of docs/OPERATIONS.md in a scratch root: files at the documented paths,
    then systemd-sysusers, systemd-tmpfiles and systemctl enable with no file arguments, so
    they must find ours through their search paths."""
    su = tool("systemd-sysusers", "systemd")
    tf = tool("systemd-tmpfiles", "systemd")
    sc = tool("systemctl", "systemd")
    with open(os.path.join(pclib.SRC, "docs", "OPERATIONS.md")) as f:
        doc = f.read()
    with pclib.TestEnv("systemd-install") as env:
        root = env.path("root")
        os.makedirs(os.path.join(root, "etc"))
        for src, dst in INSTALL:
            check("/" + dst in doc, "docs/OPERATIONS.md does not install %s at /%s" % (src, dst))
            os.makedirs(os.path.dirname(os.path.join(root, dst)), exist_ok=True)
            shutil.copy(src, os.path.join(root, dst))
        for argv in ([su, "--root=" + root], [tf, "--create", "--root=" + root],
                     [sc, "--root=" + root, "enable", "pullcache.service"]):
            r = run(argv)
            check(r.returncode == 0, "%s: exit %d\n%s" % (" ".join(argv), r.returncode, r.stderr))
        link = os.path.join(root, "etc/systemd/system/multi-user.target.wants/pullcache.service")
        check(os.readlink(link) == "/usr/local/lib/systemd/system/pullcache.service",
              "enable made %r" % os.readlink(link))
        with open(os.path.join(root, "etc", "group")) as f:
            gid = [int(l.split(":")[2]) for l in f if l.startswith("pullcache:")]
        check(len(gid) == 1, "no pullcache group in the scratch root")
        st = os.stat(os.path.join(root, "etc/pullcache/pullcache.conf"))
        check(stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid[0],
              "installed config mode %o gid %d" % (stat.S_IMODE(st.st_mode), st.st_gid))


# ---- the daemon inside the sandbox -------------------------------------------------------------
def syscall_groups():
    """{'@group': [entries]} from `systemd-analyze syscall-filter` (entries may be @groups)."""
    sa = tool("systemd-analyze", "systemd")
    r = run([sa, "syscall-filter", "--no-pager"])
    check(r.returncode == 0, "syscall-filter: exit %d\n%s" % (r.returncode, r.stderr))
    groups, cur = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("@"):
            cur = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and cur is not None:
            e = line.strip()
            if e and not e.startswith("#"):
                cur.append(e)
    check("@system-service" in groups, "syscall-filter listed no @system-service")
    return groups


def expand(items, groups, seen=None):
    seen = set() if seen is None else seen
    out = set()
    for it in items:
        if it.startswith("@"):
            check(it in groups, "unknown syscall group %s" % it)
            if it not in seen:
                seen.add(it)
                out |= expand(groups[it], groups, seen)
        else:
            out.add(it)
    return out


def allowed_syscalls(settings):
    """The unit's SystemCallFilter= as a set of names (allow list, later ~ lines remove)."""
    groups = syscall_groups()
    allowed = None
    for v in values(settings, "SystemCallFilter"):
        check(v != "", "SystemCallFilter= reset: not handled here")
        deny = v.startswith("~")
        names = expand(v.lstrip("~").split(), groups)
        if allowed is None:
            check(not deny, "the unit's first SystemCallFilter= must be an allow list")
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    check(allowed, "no SystemCallFilter= in the unit")
    return allowed


def loopback_hostname():
    """A name /etc/hosts maps to 127.0.0.1 that curl resolves through getaddrinfo (curl answers
    'localhost' itself), or None."""
    try:
        with open("/etc/hosts") as f:
            for line in f:
                fields = line.split("#", 1)[0].split()
                if fields and fields[0] == "127.0.0.1":
                    for n in fields[1:]:
                        if n != "localhost" and not n.endswith(".localhost"):
                            return n
    except OSError:
        pass
    return None


STR = r'"((?:[^"\\]|\\.)*)"'
DIRFD = r'(AT_FDCWD|-?\d+(?:<([^>]*)>)?)'


def trace_paths(line, cwd):
    """Absolute paths named by one strace -y line: (dirfd, "path") pairs of *at() calls, and
    leading "path" arguments of the others."""
    out = []
    pairs = re.findall(DIRFD + r', ' + STR, line)
    for fd, fdpath, p in pairs:
        if p.startswith("/"):
            out.append(p)
        elif fd == "AT_FDCWD":
            out.append(os.path.normpath(os.path.join(cwd, p)))
        elif fdpath:
            out.append(os.path.normpath(os.path.join(fdpath, p)))
        else:
            out.append("<unresolved dirfd %s>/%s" % (fd, p))
    if not pairs:
        m = re.search(r'^\d+\s+\w+\(' + STR, line)
        if m:
            out.append(os.path.normpath(os.path.join(cwd, m.group(1))))
    return out


WRITE_CALLS = {"mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat",
               "rmdir", "link", "linkat", "symlink", "symlinkat", "truncate", "mknod", "mknodat",
               "chmod", "fchmodat", "chown", "lchown", "fchownat", "utimensat", "creat"}
OPEN_CALLS = {"open", "openat", "openat2"}
PATH_CALLS = OPEN_CALLS | WRITE_CALLS | {
    "stat", "lstat", "newfstatat", "statx", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "statfs", "chdir", "execve", "getxattr", "lgetxattr", "inotify_add_watch"}
# PrivateDevices=yes leaves these in /dev.
DEV_OK = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}


# Calls newer than this strace, which prints them by number: their names (451 on every
# architecture).
STRACE_UNNAMED = {"syscall_0x1c3": "cachestat"}


def analyse_trace(log, allowed, families, store, cwd, main_pid):
    """Everything in strace log LOG that the unit's sandbox would refuse: a list of strings."""
    problems, used = [], {}
    own_proc = ("/proc/self", "/proc/thread-self", "/proc/%d" % main_pid)
    with open(log, errors="replace") as f:
        for line in f:
            m = re.match(r"^(\d+)\s+(?:<\.\.\. )?([a-z_0-9]+)(\(| resumed>)", line)
            if not m:
                continue
            pid, name = int(m.group(1)), m.group(2)
            name = STRACE_UNNAMED.get(name, name)
            used[name] = used.get(name, 0) + 1
            if m.group(3) != "(":
                continue  # the call was already seen when it started
            if name in ("socket", "socketpair"):
                fam = re.match(r"^\d+\s+\w+\((\w+)", line).group(1)
                if fam not in families:
                    problems.append("socket family %s (RestrictAddressFamilies): %s" % (fam, line.strip()))
            if name in ("mmap", "mprotect", "pkey_mprotect"):
                prot = re.search(r"PROT_[A-Z_|]+", line)
                prot = prot.group(0) if prot else ""
                if "PROT_EXEC" in prot and (name != "mmap" or "PROT_WRITE" in prot):
                    problems.append("W+X or new PROT_EXEC (MemoryDenyWriteExecute): %s" % line.strip())
            if name in ("clone", "clone3", "unshare", "setns") and ("CLONE_NEW" in line or name == "setns"):
                problems.append("namespace (RestrictNamespaces): %s" % line.strip())
            if name == "execve" and pid != main_pid:
                problems.append("a child process was executed: %s" % line.strip())
            if name not in PATH_CALLS:
                continue
            paths = trace_paths(line, cwd)
            writes = name in WRITE_CALLS or (name in OPEN_CALLS and re.search(r"O_(WRONLY|RDWR|CREAT|TRUNC)", line))
            if name in ("mkdir", "mkdirat") and line.rstrip().endswith("EEXIST (File exists)"):
                writes = False  # mkdir -p of the store's parents: Linux says EEXIST before EROFS
            for p in paths:
                if writes and not (p == store or p.startswith(store + "/") or p in DEV_OK):
                    problems.append("write outside the store (ProtectSystem=strict): %s" % line.strip())
                if p.startswith("/proc/") and not any(p == o or p.startswith(o + "/") for o in own_proc):
                    problems.append("/proc beyond its own process (ProcSubset=pid): %s" % line.strip())
                if p.startswith("/dev/") and p not in DEV_OK and not p.startswith("/dev/shm/"):
                    problems.append("device (PrivateDevices=yes): %s" % line.strip())
                if re.match(r"^/(home|root|run/user)(/|$)", p) and not p.startswith(pclib.SRC) \
                        and not p.startswith(pclib.build_dir()):
                    problems.append("home directory (ProtectHome=yes): %s" % line.strip())
    for name in sorted(used):
        if name not in allowed:
            problems.append("system call %s (%d times) not in SystemCallFilter" % (name, used[name]))
    return problems, used


def recv_notify(sock, want, timeout, proc):
    """Read sd_notify datagrams until one has the line WANT (e.g. 'READY=1'); returns the sender
    pid (from SCM_CREDENTIALS, as systemd checks NotifyAccess=main) of every datagram read.
    Fails early if PROC (a pclib.Proc) exits first."""
    deadline = time.monotonic() + timeout
    pids = set()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise pclib.CheckFailed("no %s notification within %ds" % (want, timeout))
        sock.settimeout(min(left, 0.5))
        try:
            data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            check(proc.alive(),
                  "%s exited (%s) before %s:\n%s" % (proc.name, proc.popen.returncode, want, proc.tail()))
            continue
        for level, typ, cdata in anc:
            if level == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS:
                pids.add(array.array("i", cdata[:12])[0])
        if want in data.decode(errors="replace").split("\n"):
            check(len(pids) == 1, "notifications from pids %s, want one sender" % pids)
            return pids.pop()


def test_daemon_fits_sandbox():
    strace = tool("strace", "strace")
    settings = unit_settings(UNIT)
    allowed = allowed_syscalls(settings)
    families = set(" ".join(values(settings, "RestrictAddressFamilies")).split())
    # glibc's getaddrinfo() opens an AF_NETLINK socket to learn the local addresses and, when
    # that fails (EAFNOSUPPORT under RestrictAddressFamilies), assumes IPv4 and IPv6 are both
    # configured: tolerated here because the daemon works the same either way.
    families_tolerated = families | {"AF_NETLINK"}
    imgs_dir = pclib.make_images("tiny")
    img = pclib.load_images(imgs_dir)["pause"]
    with pclib.TestEnv("systemd-sandbox") as env:
        up = env.start_upstream(imgs_dir)
        host = loopback_hostname()
        up_url = up.url if host is None else up.url.replace("127.0.0.1", host)
        if host is None:
            print("note: /etc/hosts names no loopback alias; upstream by address (no getaddrinfo)")
        notify_path = env.path("notify")
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        nsock.bind(notify_path)
        store, log = env.path("store"), env.path("strace.log")
        port = pclib.free_port()
        # Configured through a file, as the unit does (--config), so the trace covers reading it.
        # With an HTTPS listener, an allow-list and htpasswd credentials on it, so the trace
        # covers loading the key, handshakes, encrypting bodies and bcrypt on the thread pool.
        ca = test_tls.make_ca(env.dir, "ca")
        crt, key = test_tls.make_cert(env.dir, ca, "server", 5)
        hp = env.path("htpasswd")
        with open(hp, "w") as f:
            f.write(pclib_htpasswd("alice", "sandbox-pw"))
        tls_port = pclib.free_port()
        conf = env.path("pullcache.conf")
        with open(conf, "w") as f:
            f.write("[server]\nlisten = 127.0.0.1:%d\ntls_listen = 127.0.0.1:%d\ntls_cert = %s\n"
                    "tls_key = %s\nallow = 127.0.0.0/8, ::1\nhtpasswd = %s\nauth_on = tls\n"
                    "[store]\npath = %s\n[upstream \"registry.k8s.io\"]\nurl = %s\n"
                    % (port, tls_port, crt, key, hp, store, up_url))
        argv = [strace, "-f", "-qq", "-y", "-s", "512", "-o", log, os.environ["PULLCACHE"], "serve",
                "--config", conf]
        # LeakSanitizer cannot run under ptrace (sanitizer builds): leaks are checked elsewhere.
        asan = os.environ.get("ASAN_OPTIONS", "")
        tracer = env.spawn("pullcache", argv, env={
            "NOTIFY_SOCKET": notify_path,
            "ASAN_OPTIONS": (asan + ":" if asan else "") + "detect_leaks=0"})
        try:
            main_pid = recv_notify(nsock, "READY=1", 60, tracer)
            with open("/proc/%d/status" % main_pid) as f:
                ppid = int(re.search(r"^PPid:\s*(\d+)", f.read(), re.M).group(1))
            check(ppid == tracer.pid, "READY=1 came from pid %d, not the daemon (strace's child)" % main_pid)
            # Type=notify: once READY=1 is sent, the socket accepts at once.
            r = pclib.http("GET", "http://127.0.0.1:%d/v2/" % port)
            check(r.status == 200, "GET /v2/ right after READY=1: %d" % r.status)
            # A cold pull (manifests through the token dance, blobs through redirects), then hits.
            base = "http://127.0.0.1:%d/v2/pause/" % port
            r = pclib.http("GET", base + "manifests/3.10", {"Accept": img["index_media_type"]})
            check(r.status == 200, "manifest by tag: %d %r" % (r.status, r.body[:200]))
            for b in img["blobs"]:
                kind = "manifests" if b["kind"] in ("manifest", "index") else "blobs"
                for attempt in ("miss", "hit"):
                    r = pclib.http("GET", base + kind + "/" + b["digest"], {"Accept": b["media_type"]})
                    check(r.status == 200 and pclib.sha256_digest(r.body) == b["digest"],
                          "%s %s (%s): %d" % (kind, b["digest"], attempt, r.status))
            check(pclib.http("GET", "http://127.0.0.1:%d/metrics" % port).status == 200, "/metrics")
            # Over TLS with Basic credentials (bcrypt once, then remembered): manifest and blobs.
            ctx = ssl.create_default_context(cafile=ca[0])
            auth = {"Authorization": "Basic " + base64.b64encode(b"alice:sandbox-pw").decode()}
            for b in img["blobs"]:
                kind = "manifests" if b["kind"] in ("manifest", "index") else "blobs"
                c = http.client.HTTPSConnection("127.0.0.1", tls_port, timeout=30, context=ctx)
                try:
                    c.request("GET", "/v2/pause/%s/%s" % (kind, b["digest"]),
                              headers=dict(auth, Accept=b["media_type"]))
                    resp = c.getresponse()
                    body = resp.read()
                finally:
                    c.close()
                check(resp.status == 200 and pclib.sha256_digest(body) == b["digest"],
                      "over TLS %s %s: %d" % (kind, b["digest"], resp.status))
            r = pclib.http("GET", "http://127.0.0.1:%d/readyz" % port)
            check(r.status == 200, "/readyz (probes the upstream): %d %r" % (r.status, r.body))
            # systemctl reload: SIGHUP -> RELOADING=1, the file read again, READY=1.
            os.kill(main_pid, signal.SIGHUP)
            pid = recv_notify(nsock, "RELOADING=1", 20, tracer)
            check(pid == main_pid, "RELOADING=1 came from pid %d, not the main pid" % pid)
            pid = recv_notify(nsock, "READY=1", 20, tracer)
            check(pid == main_pid, "READY=1 after the reload came from pid %d" % pid)
            r = pclib.http("GET", base + "manifests/3.10", {"Accept": img["index_media_type"]})
            check(r.status == 200, "manifest after the reload: %d" % r.status)
            # SIGTERM as systemctl stop sends it: STOPPING=1, drain, exit 0.
            t0 = time.monotonic()
            os.kill(main_pid, signal.SIGTERM)
            pid = recv_notify(nsock, "STOPPING=1", 20, tracer)
            check(pid == main_pid, "STOPPING=1 came from pid %d, not the main pid %d" % (pid, main_pid))
            rc = tracer.popen.wait(30)
            check(rc == 0, "daemon exit status %s after SIGTERM" % rc)
            check(time.monotonic() - t0 < 2 * DRAIN_S, "stop took longer than TimeoutStopSec allows")
        finally:
            nsock.close()
        problems, used = analyse_trace(log, allowed, families_tolerated, store, env.dir, main_pid)
        print("traced %d distinct system calls, %d calls" % (len(used), sum(used.values())))
        check(not problems, "the unit's sandbox would refuse:\n  " + "\n  ".join(problems[:40]))
        check("sendfile" in used or "sendfile64" in used, "no sendfile traced: the trace is not representative")


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_unit_contract, test_verify, test_security_exposure,
                              test_privileged_port_dropin, test_sysusers, test_tmpfiles,
                              test_install_layout, test_daemon_fits_sandbox]))
