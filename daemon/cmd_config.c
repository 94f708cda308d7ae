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
 * haproxy and nginx (load balancers in front of pullcache replicas) are daemon/balancer.c.
 *
 * Everything here is plain text generation from validated arguments: no network, no daemon.
 */
#include "daemon/cmd.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
  const char *dir; /**< containerd: the config_path directory */
  int write;       /**< containerd: write files instead of printing */
  int insecure;    /**< crio/podman: force insecure = true */
} config_args_t;

static void usage(FILE *f)
{
  fprintf(
      f, "usage: pullcache config containerd --mirror URL [--upstream NAME]...\n"
         "                                   [--dir DIR] [--write]\n"
         "       pullcache config crio   --mirror HOST:PORT|URL [--upstream NAME]... [--insecure]\n"
         "       pullcache config podman --mirror HOST:PORT|URL [--upstream NAME]... [--insecure]\n"
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
         "  -h, --help        show this help\n"
         "\n"
         "Exit status: 0 done, 1 a file could not be written, 2 usage error.\n");
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

static void emit_hosts_toml(FILE *f, const config_args_t *a, const char *name)
{
  const char *dir = a->dir ? a->dir : CONFIG_DEFAULT_DIR;
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
  if (strcmp(a->scheme, "https") == 0)
    fprintf(f,
            "  # If the mirror's certificate is not signed by a CA in the system trust store:\n"
            "  # ca = \"%s/%s/pullcache-ca.crt\"\n"
            "  # skip_verify = true   # testing only: accepts any certificate\n",
            dir, name);
  else
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

/* Write DIR/NAME/hosts.toml through a temporary file and rename, so containerd (which rereads
 * it on every pull) never sees half a file. Returns 0 or -errno. */
static int write_hosts_toml(const config_args_t *a, const char *name)
{
  char d[4096], path[4096], tmp[4096];
  FILE *f = NULL;
  int rc = -ENAMETOOLONG;
  int n1 = snprintf(d, sizeof(d), "%s/%s", a->dir, name);
  int n2 = snprintf(path, sizeof(path), "%s/hosts.toml", d);
  int n3 = snprintf(tmp, sizeof(tmp), "%s/.hosts.toml.%ld", d, (long)getpid());
  if (n1 < 0 || n2 < 0 || n3 < 0 || (size_t)n1 >= sizeof(d) || (size_t)n2 >= sizeof(path) ||
      (size_t)n3 >= sizeof(tmp))
    goto out;
  rc = mkdir_p(d);
  if (rc)
    goto out;
  f = fopen(tmp, "w");
  if (!f) {
    rc = -errno;
    goto out;
  }
  emit_hosts_toml(f, a, name);
  if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0) {
    rc = -errno ? -errno : -EIO;
    goto out;
  }
  if (fclose(f) != 0) {
    f = NULL;
    rc = -errno;
    goto out;
  }
  f = NULL;
  if (rename(tmp, path) != 0) {
    rc = -errno;
    goto out;
  }
  printf("wrote %s\n", path);
  rc = 0;
out:
  if (f)
    fclose(f);
  if (rc) {
    unlink(tmp);
    fprintf(stderr, "pullcache config containerd: cannot write %s: %s\n", path[0] ? path : d,
            pc_strerror(rc));
  }
  return rc;
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

/* The value of option OPT at argv[*i] ("--opt VALUE" or "--opt=VALUE"), or NULL if argv[*i]
 * is not OPT. Sets *missing when OPT has no value. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt, int *missing)
{
  size_t n = strlen(opt);
  if (strncmp(argv[*i], opt, n) != 0)
    return NULL;
  if (argv[*i][n] == '=')
    return argv[*i][n + 1] ? argv[*i] + n + 1 : (*missing = 1, NULL);
  if (argv[*i][n] != '\0')
    return NULL;
  if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
    *missing = 1;
    return NULL;
  }
  return argv[++*i];
}

static int parse_args(int argc, char **argv, config_args_t *a)
{
  for (int i = 2; i < argc; i++) {
    const char *v, *opt = argv[i];
    int missing = 0;
    if ((v = opt_value(argc, argv, &i, "--mirror", &missing))) {
      a->mirror_arg = v;
    } else if ((v = opt_value(argc, argv, &i, "--upstream", &missing))) {
      if (add_upstream(a, v))
        return -EINVAL;
    } else if ((v = opt_value(argc, argv, &i, "--dir", &missing))) {
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
  if (parse_args(argc, argv, &a)) {
    fprintf(stderr, "(see pullcache config --help)\n");
    return 2;
  }

  if (a.client != CLIENT_CONTAINERD) {
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
