/* cmd_config — `pullcache config containerd|crio|podman`: print (or, for containerd, write) the
 * client-side configuration that sends pulls through a pullcache mirror.
 *
 * containerd: one hosts.toml per upstream registry, in the layout its `config_path` expects
 * (<dir>/<registry>/hosts.toml). The mirror is a [host] with pull+resolve; `server` stays the
 * real registry so a mirror outage degrades to a direct pull. containerd adds `?ns=<registry>` to
 * every request it sends to the mirror, which is how pullcache picks the upstream.
 *
 * CRI-O and podman (containers-registries.conf): one [[registry]] per upstream with a
 * [[registry.mirror]] whose location carries the upstream's name as a path prefix
 * ("mirror:5000/registry.k8s.io"); containers/image prepends that path to the repository name,
 * and pullcache routes on the first path segment.
 *
 * An https:// mirror with a private CA or mutual TLS: --ca (the CA that signed the mirror's
 * certificate), --cert and --key (this node's client certificate). containerd: hosts.toml gets
 * `ca` and `client` (with --write the files are copied next to it: DIR/NAME/pullcache-ca.crt,
 * client.cert, client.key 0600). CRI-O/podman read them from a containers certs.d directory
 * (certs.d/HOST:PORT/ca.crt, client.cert, client.key): --certs-dir DIR copies them there, else
 * the output says where to put them. Files are written through a temporary file and renamed.
 *
 * haproxy and nginx (load balancers in front of pullcache replicas) are daemon/balancer.c.
 *
 * Everything here is generation from validated arguments: no network, no daemon.
 */
#include "daemon/cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/balancer.h"

#define CONFIG_MAX_UPSTREAMS 32
#define CONFIG_DEFAULT_UPSTREAM "registry.k8s.io"
#define CONFIG_DEFAULT_DIR "/etc/containerd/certs.d"

enum client { CLIENT_CONTAINERD, CLIENT_CRIO, CLIENT_PODMAN };

typedef struct {
  enum client client;
  const char *client_name;
  const char *mirror_arg; /**< --mirror as given */
  char scheme[8];         /**< "http", "https", or "" when given as bare HOST:PORT */
  char hostport[300];     /**< the mirror's host[:port], no scheme, no trailing slash */
  const char *upstreams[CONFIG_MAX_UPSTREAMS];
  int nupstreams;
  const char *dir;        /**< containerd: the config_path directory */
  int write;              /**< containerd: write files instead of printing */
  int insecure;           /**< crio/podman: force insecure = true */
  const char *ca;         /**< --ca FILE (https only) */
  const char *cert, *key; /**< --cert FILE --key FILE: the client certificate (https only) */
  const char *certs_dir;  /**< crio/podman: --certs-dir DIR, write the TLS files there */
  char ca_abs[4096], cert_abs[4096], key_abs[4096]; /**< the files as absolute paths */
} config_args_t;

static void usage(FILE *f)
{
  fprintf(
      f, "usage: pullcache config containerd --mirror URL [--upstream NAME]...\n"
         "                                   [--dir DIR] [--write] [TLS]\n"
         "       pullcache config crio   --mirror HOST:PORT|URL [--upstream NAME]... [--insecure]\n"
         "                               [TLS] [--certs-dir DIR]\n"
         "       pullcache config podman --mirror HOST:PORT|URL [--upstream NAME]... [--insecure]\n"
         "                               [TLS] [--certs-dir DIR]\n"
         "       TLS = [--ca FILE] [--cert FILE --key FILE], for an https:// mirror\n"
         "       pullcache config haproxy|nginx --replica HOST:PORT... [--listen ADDR:PORT]\n"
         "                                      [--tls PEM]   (see config haproxy --help)\n"
         "\n"
         "Print the client configuration that makes a container runtime pull through this\n"
         "mirror. Nothing is contacted; the output goes to stdout.\n"
         "\n"
         "  containerd  one hosts.toml per upstream: server = \"https://NAME\", the mirror as\n"
         "              a [host] with capabilities pull+resolve. With --write, create\n"
         "              DIR/NAME/hosts.toml (DIR default " CONFIG_DEFAULT_DIR ").\n"
         "              containerd picks the files up without a restart.\n"
         "  crio|podman containers-registries.conf entries: [[registry]] NAME with a\n"
         "              [[registry.mirror]] at HOST:PORT/NAME (path-prefix addressing);\n"
         "              insecure = true when the mirror URL is http:// (or with --insecure).\n"
         "              Put them in /etc/containers/registries.conf.d/50-pullcache.conf.\n"
         "\n"
         "  --mirror URL      the mirror as clients reach it, e.g. http://10.0.0.5:5000\n"
         "                    (containerd needs the scheme)\n"
         "  --upstream NAME   an upstream registry the mirror serves (repeatable;\n"
         "                    default " CONFIG_DEFAULT_UPSTREAM ")\n"
         "  --dir DIR         containerd config_path directory\n"
         "  --write           containerd: write the files instead of printing them\n"
         "  --insecure        crio/podman: mark the mirror insecure (plain http or\n"
         "                    untrusted TLS) even when given without a scheme\n"
         "  --ca FILE         the CA certificate (PEM) that signed the mirror's certificate\n"
         "  --cert FILE       this node's client certificate (PEM), for mutual TLS\n"
         "  --key FILE        its private key\n"
         "                    containerd: hosts.toml `ca` and `client` (with --write the\n"
         "                    files are copied next to hosts.toml)\n"
         "  --certs-dir DIR   crio/podman: copy them into DIR/HOST:PORT/ as ca.crt,\n"
         "                    client.cert and client.key (containers-certs.d, usually\n"
         "                    /etc/containers/certs.d); without it the output says where\n"
         "  -h, --help        show this help\n"
         "\n"
         "Exit status: 0 done, 1 a file could not be read or written, 2 usage error.\n");
}

/* Characters allowed in a host name or an IPv4 address. */
static int is_host_char(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '-' || c == '_';
}

/* Validate "host", "host:port", "[v6]" or "[v6]:port" (length LEN). Returns 0 or -EINVAL.
 * *has_dot_or_port tells whether it can only be a registry host (Docker reference rules: a
 * first path component is a host when it has a '.' or a ':' or is "localhost"). */
static int check_hostport(const char *s, size_t len, int *registry_like)
{
  size_t i = 0, host_end;
  int dot = 0;
  if (len == 0 || len > 253 + 6)
    return -EINVAL;
  if (s[0] == '[') {
    const char *rb = memchr(s, ']', len);
    if (!rb || rb == s + 1)
      return -EINVAL;
    for (const char *p = s + 1; p < rb; p++)
      if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F') ||
            *p == ':' || *p == '.'))
        return -EINVAL;
    host_end = (size_t)(rb - s) + 1;
    dot = 1;
  } else {
    while (i < len && is_host_char(s[i])) {
      if (s[i] == '.')
        dot = 1;
      i++;
    }
    host_end = i;
    if (host_end == 0 || s[0] == '-' || s[0] == '.' || s[host_end - 1] == '-' ||
        s[host_end - 1] == '.')
      return -EINVAL;
  }
  if (host_end < len) {
    unsigned long port = 0;
    size_t ndig = 0;
    if (s[host_end] != ':')
      return -EINVAL;
    for (i = host_end + 1; i < len; i++) {
      if (s[i] < '0' || s[i] > '9' || ++ndig > 5)
        return -EINVAL;
      port = port * 10 + (unsigned long)(s[i] - '0');
    }
    if (ndig == 0 || port == 0 || port > 65535)
      return -EINVAL;
    dot = 1;
  }
  if (registry_like)
    *registry_like = dot || (host_end == 9 && strncmp(s, "localhost", 9) == 0);
  return 0;
}

/* Split --mirror into scheme and host:port. Accepts "http://h:p", "https://h:p" (one trailing
 * '/' allowed) and, unless the client needs a scheme, a bare "h:p". No path, query, userinfo:
 * pullcache serves /v2/ at the root. */
static int parse_mirror(config_args_t *a)
{
  const char *s = a->mirror_arg, *hp;
  size_t len;
  a->scheme[0] = '\0';
  if (strncmp(s, "http://", 7) == 0) {
    memcpy(a->scheme, "http", 5);
    hp = s + 7;
  } else if (strncmp(s, "https://", 8) == 0) {
    memcpy(a->scheme, "https", 6);
    hp = s + 8;
  } else if (strstr(s, "://")) {
    fprintf(stderr, "pullcache config: --mirror %s: only http:// and https:// are supported\n", s);
    return -EINVAL;
  } else {
    hp = s;
  }
  len = strlen(hp);
  if (len > 0 && hp[len - 1] == '/')
    len--;
  if (len >= sizeof(a->hostport) || check_hostport(hp, len, NULL) != 0) {
    fprintf(stderr,
            "pullcache config: --mirror %s: expected [http[s]://]HOST[:PORT] with no path, "
            "e.g. http://10.0.0.5:5000\n",
            s);
    return -EINVAL;
  }
  if (a->client == CLIENT_CONTAINERD && !a->scheme[0]) {
    fprintf(stderr,
            "pullcache config containerd: --mirror %s: give the scheme, e.g. http://%s or "
            "https://%s\n",
            s, s, s);
    return -EINVAL;
  }
  memcpy(a->hostport, hp, len);
  a->hostport[len] = '\0';
  return 0;
}

/* containerd's default endpoint for a registry name (docker.io is special-cased there too). */
static const char *default_server_host(const char *name)
{
  return strcmp(name, "docker.io") == 0 ? "registry-1.docker.io" : name;
}

/* The paths hosts.toml names for the TLS files: the copies next to it (--write) or the files
 * as given (absolute). */
static void tls_paths(const config_args_t *a, const char *name, char *ca, char *cert, char *key,
                      size_t cap)
{
  const char *dir = a->dir ? a->dir : CONFIG_DEFAULT_DIR;
  if (a->write) {
    snprintf(ca, cap, "%s/%s/pullcache-ca.crt", dir, name);
    snprintf(cert, cap, "%s/%s/client.cert", dir, name);
    snprintf(key, cap, "%s/%s/client.key", dir, name);
  } else {
    snprintf(ca, cap, "%s", a->ca_abs);
    snprintf(cert, cap, "%s", a->cert_abs);
    snprintf(key, cap, "%s", a->key_abs);
  }
}

static void emit_hosts_toml(FILE *f, const config_args_t *a, const char *name)
{
  const char *dir = a->dir ? a->dir : CONFIG_DEFAULT_DIR;
  char ca[4200], cert[4200], key[4200];
  tls_paths(a, name, ca, cert, key, sizeof(ca));
  fprintf(f,
          "# %s/%s/hosts.toml - generated by `pullcache config containerd`\n"
          "# Pulls of %s/... go to the pullcache mirror first (containerd adds ?ns=%s);\n"
          "# if the mirror fails, containerd falls back to `server`. To never contact the\n"
          "# upstream (air-gapped nodes), set server to the mirror URL as well.\n"
          "server = \"https://%s\"\n"
          "\n"
          "[host.\"%s://%s\"]\n"
          "  capabilities = [\"pull\", \"resolve\"]\n",
          dir, name, name, name, default_server_host(name), a->scheme, a->hostport);
  if (strcmp(a->scheme, "https") == 0 && a->ca)
    fprintf(f, "  # the CA that signed the mirror's certificate\n  ca = \"%s\"\n", ca);
  else if (strcmp(a->scheme, "https") == 0)
    fprintf(f,
            "  # If the mirror's certificate is not signed by a CA in the system trust store:\n"
            "  # ca = \"%s/%s/pullcache-ca.crt\"\n",
            dir, name);
  if (strcmp(a->scheme, "https") == 0 && a->cert)
    fprintf(
        f,
        "  # mutual TLS: this node's client certificate and key\n  client = [[\"%s\", \"%s\"]]\n",
        cert, key);
  if (strcmp(a->scheme, "https") == 0 && !a->ca)
    fprintf(f, "  # skip_verify = true   # testing only: accepts any certificate\n");
  else if (strcmp(a->scheme, "https") != 0)
    fprintf(f, "  # plain http: no TLS settings apply (ca/skip_verify are for https mirrors)\n");
}

static void emit_registries_conf(FILE *f, const config_args_t *a)
{
  int insecure = a->insecure || strcmp(a->scheme, "http") == 0;
  fprintf(f,
          "# /etc/containers/registries.conf.d/50-pullcache.conf - generated by\n"
          "# `pullcache config %s`.\n",
          a->client_name);
  if (a->client == CLIENT_CRIO)
    fprintf(f, "# CRI-O rereads it on SIGHUP (systemctl reload crio).\n");
  else
    fprintf(f, "# Rootless podman: ~/.config/containers/registries.conf.d/ instead.\n");
  fprintf(f, "# The mirror is tried first; if it fails, the registry itself is used.\n");
  if (a->ca || a->cert) {
    const char *cd = a->certs_dir ? a->certs_dir : "/etc/containers/certs.d";
    fprintf(f,
            "# TLS: containers/image reads the mirror's CA and client certificate from\n"
            "# %s/%s/ (ca.crt, client.cert, client.key)%s\n",
            cd, a->hostport, a->certs_dir ? ": written there by this command." : "; install them:");
    if (!a->certs_dir) {
      if (a->ca)
        fprintf(f, "#   install -D -m 0644 %s %s/%s/ca.crt\n", a->ca_abs, cd, a->hostport);
      if (a->cert)
        fprintf(f,
                "#   install -D -m 0644 %s %s/%s/client.cert\n"
                "#   install -D -m 0600 %s %s/%s/client.key\n",
                a->cert_abs, cd, a->hostport, a->key_abs, cd, a->hostport);
    }
  }
  for (int i = 0; i < a->nupstreams; i++)
    fprintf(f,
            "\n"
            "[[registry]]\n"
            "prefix = \"%s\"\n"
            "location = \"%s\"\n"
            "\n"
            "[[registry.mirror]]\n"
            "location = \"%s/%s\"\n"
            "%s",
            a->upstreams[i], a->upstreams[i], a->hostport, a->upstreams[i],
            insecure ? "insecure = true\n" : "");
}

/* mkdir that accepts an existing directory. */
static int mkdir_one(const char *path)
{
  struct stat st;
  if (mkdir(path, 0755) == 0)
    return 0;
  if (errno == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return 0;
  return -errno;
}

/* mkdir -p PATH (PATH is short: a config directory). */
static int mkdir_p(const char *path)
{
  char buf[4096];
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof(buf))
    return -ENAMETOOLONG;
  memcpy(buf, path, len + 1);
  for (size_t i = 1; i < len; i++) {
    if (buf[i] != '/')
      continue;
    buf[i] = '\0';
    int rc = mkdir_one(buf);
    buf[i] = '/';
    if (rc)
      return rc;
  }
  return mkdir_one(buf);
}

/* Write DIR/NAME (mode) through a temporary file and rename, so a reader (containerd rereads
 * hosts.toml on every pull) never sees half a file; "wrote PATH" on out. 0 or -errno. */
static int write_atomic(const char *dir, const char *name, const char *data, size_t len,
                        mode_t mode, FILE *out)
{
  char path[4096], tmp[4096];
  int fd = -1, rc = -ENAMETOOLONG;
  int n2 = snprintf(path, sizeof(path), "%s/%s", dir, name);
  int n3 = snprintf(tmp, sizeof(tmp), "%s/.%s.%ld", dir, name, (long)getpid());
  path[0] = n2 < 0 || (size_t)n2 >= sizeof(path) ? '\0' : path[0];
  if (n2 < 0 || n3 < 0 || (size_t)n2 >= sizeof(path) || (size_t)n3 >= sizeof(tmp))
    goto out;
  rc = mkdir_p(dir);
  if (rc)
    goto out;
  fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0 || fchmod(fd, mode) != 0) {
    rc = -errno;
    goto out;
  }
  for (size_t off = 0; off < len;) {
    ssize_t w = write(fd, data + off, len - off);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0) {
      rc = w < 0 ? -errno : -EIO;
      goto out;
    }
    off += (size_t)w;
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    fd = -1;
    rc = -errno;
    goto out;
  }
  fd = -1;
  if (rename(tmp, path) != 0) {
    rc = -errno;
    goto out;
  }
  fprintf(out, "wrote %s\n", path);
  rc = 0;
out:
  if (fd >= 0)
    close(fd);
  if (rc) {
    unlink(tmp);
    fprintf(stderr, "pullcache config: cannot write %s: %s\n", path[0] ? path : dir,
            pc_strerror(rc));
  }
  return rc;
}

/* A small file (a certificate or key) into memory. 0 or -errno (reported). */
static int read_small(const char *path, char **data, size_t *len)
{
  FILE *f = fopen(path, "re");
  size_t cap = 1u << 20, n = 0;
  char *buf;
  if (!f) {
    int e = errno;
    fprintf(stderr, "pullcache config: %s: %s\n", path, strerror(e));
    return -e;
  }
  buf = pc_xmalloc(cap);
  n = fread(buf, 1, cap, f);
  int bad = ferror(f) || !feof(f);
  fclose(f);
  if (bad || n == 0) {
    fprintf(stderr, "pullcache config: %s: %s\n", path,
            n == 0 && !bad ? "empty" : "unreadable or larger than 1 MiB");
    free(buf);
    return -EIO;
  }
  *data = buf;
  *len = n;
  return 0;
}

/* Copy src to DIR/NAME with mode. */
static int copy_file(const char *src, const char *dir, const char *name, mode_t mode, FILE *out)
{
  char *data = NULL;
  size_t len = 0;
  int rc = read_small(src, &data, &len);
  if (rc)
    return rc;
  rc = write_atomic(dir, name, data, len, mode, out);
  explicit_bzero(data, len);
  free(data);
  return rc;
}

/* The TLS files into dir: the CA as ca_name, client.cert, client.key (0600). 0 or -EIO. */
static int copy_tls_files(const config_args_t *a, const char *dir, const char *ca_name, FILE *out)
{
  if (a->ca && copy_file(a->ca_abs, dir, ca_name, 0644, out))
    return -EIO;
  if (a->cert && (copy_file(a->cert_abs, dir, "client.cert", 0644, out) ||
                  copy_file(a->key_abs, dir, "client.key", 0600, out)))
    return -EIO;
  return 0;
}

/* containerd --write: DIR/NAME/hosts.toml, and the TLS files next to it. */
static int write_hosts_toml(const config_args_t *a, const char *name)
{
  char d[4096];
  char *text = NULL;
  size_t len = 0;
  int n = snprintf(d, sizeof(d), "%s/%s", a->dir, name);
  if (n < 0 || (size_t)n >= sizeof(d)) {
    fprintf(stderr, "pullcache config: %s/%s: name too long\n", a->dir, name);
    return -ENAMETOOLONG;
  }
  if (copy_tls_files(a, d, "pullcache-ca.crt", stdout))
    return -EIO;
  FILE *f = open_memstream(&text, &len);
  PC_ASSERT(f != NULL);
  emit_hosts_toml(f, a, name);
  PC_ASSERT(fclose(f) == 0);
  int rc = write_atomic(d, "hosts.toml", text, len, 0644, stdout);
  free(text);
  return rc;
}

/* crio/podman --certs-dir: DIR/HOST:PORT/ca.crt, client.cert, client.key ("wrote" lines on
 * stderr: stdout is the registries.conf text). */
static int write_certs_dir(const config_args_t *a)
{
  char d[4096];
  int n = snprintf(d, sizeof(d), "%s/%s", a->certs_dir, a->hostport);
  if (n < 0 || (size_t)n >= sizeof(d))
    return -ENAMETOOLONG;
  return copy_tls_files(a, d, "ca.crt", stderr);
}

/* A TLS file argument: readable, as an absolute path that TOML can hold unescaped. */
static int tls_file(const char *opt, const char *path, char *abs)
{
  char *r = realpath(path, NULL);
  if (!r) {
    fprintf(stderr, "pullcache config: %s %s: %s\n", opt, path, strerror(errno));
    return -EIO;
  }
  size_t n = strlen(r);
  int ok = n < 4096 && access(r, R_OK) == 0;
  for (size_t i = 0; ok && i < n; i++)
    ok = (unsigned char)r[i] >= 0x20 && r[i] != '"' && r[i] != '\\' && r[i] != 0x7f;
  if (!ok) {
    fprintf(stderr,
            "pullcache config: %s %s: not readable, or a path with a quote, backslash "
            "or control character\n",
            opt, path);
    free(r);
    return -EIO;
  }
  memcpy(abs, r, n + 1);
  free(r);
  return 0;
}

static int add_upstream(config_args_t *a, const char *name)
{
  int registry_like = 0;
  if (check_hostport(name, strlen(name), &registry_like) != 0 || !registry_like) {
    fprintf(stderr,
            "pullcache config: --upstream %s: expected a registry host name such as "
            "registry.k8s.io or localhost:5000\n",
            name);
    return -EINVAL;
  }
  for (int i = 0; i < a->nupstreams; i++)
    if (strcmp(a->upstreams[i], name) == 0) {
      fprintf(stderr, "pullcache config: --upstream %s given twice\n", name);
      return -EINVAL;
    }
  if (a->nupstreams >= CONFIG_MAX_UPSTREAMS) {
    fprintf(stderr, "pullcache config: at most %d upstreams\n", CONFIG_MAX_UPSTREAMS);
    return -EINVAL;
  }
  a->upstreams[a->nupstreams++] = name;
  return 0;
}

static int parse_args(int argc, char **argv, config_args_t *a)
{
  for (int i = 2; i < argc; i++) {
    const char *v, *opt = argv[i];
    int missing = 0;
    if ((v = pc_opt_value(argc, argv, &i, "--mirror", &missing))) {
      a->mirror_arg = v;
    } else if ((v = pc_opt_value(argc, argv, &i, "--upstream", &missing))) {
      if (add_upstream(a, v))
        return -EINVAL;
    } else if ((v = pc_opt_value(argc, argv, &i, "--ca", &missing))) {
      a->ca = v;
    } else if ((v = pc_opt_value(argc, argv, &i, "--cert", &missing))) {
      a->cert = v;
    } else if ((v = pc_opt_value(argc, argv, &i, "--key", &missing))) {
      a->key = v;
    } else if ((v = pc_opt_value(argc, argv, &i, "--certs-dir", &missing))) {
      if (a->client == CLIENT_CONTAINERD) {
        fprintf(stderr, "pullcache config containerd: --certs-dir is for crio/podman (use --dir "
                        "with --write)\n");
        return -EINVAL;
      }
      a->certs_dir = v;
    } else if ((v = pc_opt_value(argc, argv, &i, "--dir", &missing))) {
      if (a->client != CLIENT_CONTAINERD)
        goto only_containerd;
      a->dir = v;
    } else if (missing) {
      fprintf(stderr, "pullcache config: %s needs a value\n", opt);
      return -EINVAL;
    } else if (strcmp(argv[i], "--write") == 0) {
      if (a->client != CLIENT_CONTAINERD)
        goto only_containerd;
      a->write = 1;
    } else if (strcmp(argv[i], "--insecure") == 0) {
      if (a->client == CLIENT_CONTAINERD) {
        fprintf(stderr, "pullcache config containerd: --insecure does not apply; use an "
                        "http:// mirror URL, or skip_verify in hosts.toml for https\n");
        return -EINVAL;
      }
      a->insecure = 1;
    } else {
      fprintf(stderr, "pullcache config %s: unexpected argument '%s'\n", a->client_name, argv[i]);
      return -EINVAL;
    }
    continue;
  only_containerd:
    fprintf(stderr, "pullcache config %s: %s is for containerd only\n", a->client_name, opt);
    return -EINVAL;
  }
  if (!a->mirror_arg) {
    fprintf(stderr, "pullcache config %s: --mirror is required\n", a->client_name);
    return -EINVAL;
  }
  if (parse_mirror(a))
    return -EINVAL;
  if (!a->cert != !a->key) {
    fprintf(stderr, "pullcache config %s: --cert and --key go together\n", a->client_name);
    return -EINVAL;
  }
  if ((a->ca || a->cert) && strcmp(a->scheme, "http") == 0) {
    fprintf(stderr, "pullcache config %s: --ca/--cert need an https:// mirror\n", a->client_name);
    return -EINVAL;
  }
  if (a->certs_dir && !a->ca && !a->cert) {
    fprintf(stderr, "pullcache config %s: --certs-dir needs --ca or --cert\n", a->client_name);
    return -EINVAL;
  }
  if ((a->ca && tls_file("--ca", a->ca, a->ca_abs)) ||
      (a->cert && tls_file("--cert", a->cert, a->cert_abs)) ||
      (a->key && tls_file("--key", a->key, a->key_abs)))
    return -EIO;
  if (a->nupstreams == 0)
    a->upstreams[a->nupstreams++] = CONFIG_DEFAULT_UPSTREAM;
  if (!a->dir)
    a->dir = CONFIG_DEFAULT_DIR;
  return 0;
}

int cmd_config(int argc, char **argv)
{
  config_args_t a;
  const char *target = argc > 1 ? argv[1] : NULL;
  memset(&a, 0, sizeof(a));
  if (!target) {
    usage(stderr);
    return 2;
  }
  if (strcmp(target, "haproxy") == 0 || strcmp(target, "nginx") == 0)
    return balancer_main(argc - 1, argv + 1); /* daemon/balancer.h */
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    }
  if (strcmp(target, "containerd") == 0) {
    a.client = CLIENT_CONTAINERD;
  } else if (strcmp(target, "crio") == 0 || strcmp(target, "cri-o") == 0) {
    a.client = CLIENT_CRIO;
  } else if (strcmp(target, "podman") == 0) {
    a.client = CLIENT_PODMAN;
  } else {
    fprintf(stderr,
            "pullcache config: unknown client '%s' (containerd, crio, podman, haproxy, nginx)\n\n",
            target);
    usage(stderr);
    return 2;
  }
  a.client_name = a.client == CLIENT_CONTAINERD ? "containerd"
                  : a.client == CLIENT_CRIO     ? "crio"
                                                : "podman";
  int rc = parse_args(argc, argv, &a);
  if (rc == -EIO)
    return 1;
  if (rc) {
    fprintf(stderr, "(see pullcache config --help)\n");
    return 2;
  }

  if (a.client != CLIENT_CONTAINERD) {
    if (a.certs_dir && write_certs_dir(&a))
      return 1;
    emit_registries_conf(stdout, &a);
  } else {
    for (int i = 0; i < a.nupstreams; i++) {
      if (a.write) {
        if (write_hosts_toml(&a, a.upstreams[i]))
          return 1;
      } else {
        if (i > 0)
          printf("\n");
        emit_hosts_toml(stdout, &a, a.upstreams[i]);
      }
    }
  }
  if (fflush(stdout) != 0) {
    fprintf(stderr, "pullcache config: writing to stdout: %s\n", strerror(errno));
    return 1;
  }
  return 0;
}
