/* daemon/config — defaults, INI file, command-line flags (see config.h). */
#include "daemon/config.h"

#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#include "core/pc.h"

typedef struct load_ctx {
  daemon_config_t *cfg;
  int *log_level;
  int listen_replaced;
  int upstreams_replaced;
  char *err;    /**< points at msg while a file is parsed */
  size_t errlen;
  int failed;
  char msg[512];
} load_ctx_t;

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  if (!err || errlen == 0)
    return;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static int copy_str(char *dst, size_t dstlen, const char *src)
{
  size_t n = strlen(src);
  if (n >= dstlen)
    return -1;
  memcpy(dst, src, n + 1);
  return 0;
}

void config_defaults(daemon_config_t *cfg)
{
  memset(cfg, 0, sizeof(*cfg));
  copy_str(cfg->listen[0], sizeof(cfg->listen[0]), "127.0.0.1:5000");
  cfg->nlisten = 1;
  copy_str(cfg->store_dir, sizeof(cfg->store_dir), "./pullcache-data");
  copy_str(cfg->upstreams[0].name, sizeof(cfg->upstreams[0].name), "registry.k8s.io");
  copy_str(cfg->upstreams[0].url, sizeof(cfg->upstreams[0].url), "https://registry.k8s.io");
  cfg->nupstreams = 1;
  cfg->tag_ttl = 300;
  cfg->max_manifest = 4u << 20;
}

int config_log_level(const char *s)
{
  static const struct {
    const char *name;
    int level;
  } levels[] = {{"err", PC_LOG_ERR},       {"error", PC_LOG_ERR}, {"warn", PC_LOG_WARN},
                {"warning", PC_LOG_WARN},  {"notice", PC_LOG_NOTICE}, {"info", PC_LOG_INFO},
                {"debug", PC_LOG_DEBUG}};
  for (size_t i = 0; i < PC_ARRAY_SIZE(levels); i++) {
    if (strcasecmp(s, levels[i].name) == 0)
      return levels[i].level;
  }
  return -1;
}

/* Decimal integer in [min, max]; 0 or -1. */
static int parse_int(const char *s, long long min, long long max, long long *out)
{
  char *end = NULL;
  long long v;
  if (!s || !*s || (*s != '+' && (*s < '0' || *s > '9')))
    return -1;
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno || !end || *end != '\0' || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

static int parse_bool(const char *s, int *out)
{
  if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on") || !strcmp(s, "1"))
    *out = 1;
  else if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off") ||
           !strcmp(s, "0"))
    *out = 0;
  else
    return -1;
  return 0;
}

static int port_valid(const char *p)
{
  long long v;
  return parse_int(p, 0, 65535, &v) == 0 && p[0] != '+';
}

int config_upstream_name_valid(const char *name)
{
  const char *colon = strchr(name, ':');
  size_t hlen = colon ? (size_t)(colon - name) : strlen(name);
  if (hlen == 0 || hlen > 253)
    return 0;
  if (colon && !port_valid(colon + 1))
    return 0;
  /* host: DNS labels of [A-Za-z0-9-], not starting or ending with '-', separated by dots. */
  size_t label = 0;
  for (size_t i = 0; i <= hlen; i++) {
    char c = i < hlen ? name[i] : '.';
    if (c == '.') {
      if (label == 0 || name[i - 1] == '-')
        return 0;
      label = 0;
    } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '-') {
      if (label == 0 && c == '-')
        return 0;
      if (++label > 63)
        return 0;
    } else {
      return 0;
    }
  }
  return 1;
}

int config_url_valid(const char *url)
{
  const char *rest;
  if (strncmp(url, "http://", 7) == 0)
    rest = url + 7;
  else if (strncmp(url, "https://", 8) == 0)
    rest = url + 8;
  else
    return 0;
  if (*rest == '\0' || *rest == '/')
    return 0;
  for (const char *p = url; *p; p++) {
    if ((unsigned char)*p <= ' ' || *p == 0x7f || *p == '?' || *p == '#')
      return 0;
  }
  return 1;
}

static int add_upstream(daemon_config_t *cfg, int *replaced, const char *name, const char *url,
                        char *err, size_t errlen)
{
  daemon_upstream_t *u;
  size_t ulen;
  if (!*replaced) {
    cfg->nupstreams = 0;
    *replaced = 1;
  }
  for (int i = 0; i < cfg->nupstreams; i++) {
    if (strcasecmp(cfg->upstreams[i].name, name) == 0) {
      set_err(err, errlen, "upstream \"%s\" is configured twice", name);
      return -EINVAL;
    }
  }
  if (cfg->nupstreams >= DAEMON_MAX_UPSTREAMS) {
    set_err(err, errlen, "too many upstreams (at most %d)", DAEMON_MAX_UPSTREAMS);
    return -EINVAL;
  }
  if (!config_upstream_name_valid(name)) {
    set_err(err, errlen, "upstream name \"%s\" is not a registry host[:port]", name);
    return -EINVAL;
  }
  u = &cfg->upstreams[cfg->nupstreams];
  memset(u, 0, sizeof(*u));
  if (copy_str(u->name, sizeof(u->name), name) < 0) {
    set_err(err, errlen, "upstream name too long");
    return -EINVAL;
  }
  if (url) {
    if (copy_str(u->url, sizeof(u->url), url) < 0) {
      set_err(err, errlen, "upstream \"%s\": url too long", name);
      return -EINVAL;
    }
    ulen = strlen(u->url);
    while (ulen > 0 && u->url[ulen - 1] == '/')
      u->url[--ulen] = '\0';
  }
  cfg->nupstreams++;
  return 0;
}

static int add_listen(daemon_config_t *cfg, int *replaced, const char *addr, char *err,
                      size_t errlen)
{
  /* a comma-separated list is several addresses */
  const char *p = addr;
  if (!*replaced) {
    cfg->nlisten = 0;
    *replaced = 1;
  }
  while (1) {
    const char *comma = strchr(p, ',');
    size_t len = comma ? (size_t)(comma - p) : strlen(p);
    while (len > 0 && (*p == ' ' || *p == '\t')) {
      p++;
      len--;
    }
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
      len--;
    if (len == 0 || len >= sizeof(cfg->listen[0])) {
      set_err(err, errlen, "bad listen address \"%s\"", addr);
      return -EINVAL;
    }
    if (cfg->nlisten >= DAEMON_MAX_LISTEN) {
      set_err(err, errlen, "too many listen addresses (at most %d)", DAEMON_MAX_LISTEN);
      return -EINVAL;
    }
    memcpy(cfg->listen[cfg->nlisten], p, len);
    cfg->listen[cfg->nlisten][len] = '\0';
    cfg->nlisten++;
    if (!comma)
      break;
    p = comma + 1;
  }
  return 0;
}

/* "upstream \"NAME\"" -> NAME into out; 0 or -1. */
static int upstream_section(const char *section, char *out, size_t outlen)
{
  const char *p, *q;
  if (strncmp(section, "upstream", 8) != 0)
    return -1;
  p = section + 8;
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p != '"')
    return -1;
  p++;
  q = strchr(p, '"');
  if (!q || q[1] != '\0' || q == p || (size_t)(q - p) >= outlen)
    return -1;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = '\0';
  return 0;
}

static int find_upstream_idx(const daemon_config_t *cfg, const char *name)
{
  for (int i = 0; i < cfg->nupstreams; i++) {
    if (strcasecmp(cfg->upstreams[i].name, name) == 0)
      return i;
  }
  return -1;
}

static int server_key(load_ctx_t *c, const char *name, const char *value)
{
  daemon_config_t *cfg = c->cfg;
  long long v;
  if (!strcmp(name, "listen"))
    return add_listen(cfg, &c->listen_replaced, value, c->err, c->errlen) == 0;
  if (!strcmp(name, "store")) {
    if (!*value || copy_str(cfg->store_dir, sizeof(cfg->store_dir), value) < 0)
      goto bad;
    return 1;
  }
  if (!strcmp(name, "tag_ttl")) {
    if (parse_int(value, 0, INT64_MAX / 1000, &v) < 0)
      goto bad;
    cfg->tag_ttl = v;
    return 1;
  }
  if (!strcmp(name, "offline")) {
    if (parse_bool(value, &cfg->offline) < 0)
      goto bad;
    return 1;
  }
  if (!strcmp(name, "max_manifest")) {
    if (parse_int(value, 1024, 1LL << 30, &v) < 0)
      goto bad;
    cfg->max_manifest = (uint64_t)v;
    return 1;
  }
  if (!strcmp(name, "max_conns")) {
    if (parse_int(value, 1, 1000000, &v) < 0)
      goto bad;
    cfg->srv.max_conns = (unsigned)v;
    return 1;
  }
  if (!strcmp(name, "log_level")) {
    int l = config_log_level(value);
    if (l < 0)
      goto bad;
    if (c->log_level)
      *c->log_level = l;
    return 1;
  }
  set_err(c->err, c->errlen, "unknown key \"%s\" in [server]", name);
  return 0;
bad:
  set_err(c->err, c->errlen, "bad value for %s: \"%s\"", name, value);
  return 0;
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
  load_ctx_t *c = user;
  char uname[256];

  if (c->failed)
    return 0;
  if (!strcmp(section, "server")) {
    if (!name) /* section start (INI_CALL_HANDLER_ON_NEW_SECTION builds only) */
      return 1;
    if (!server_key(c, name, value)) {
      c->failed = 1;
      return 0;
    }
    return 1;
  }
  if (upstream_section(section, uname, sizeof(uname)) == 0) {
    int idx = find_upstream_idx(c->cfg, uname);
    if (!name)
      return 1;
    if (idx < 0 || !c->upstreams_replaced) {
      if (add_upstream(c->cfg, &c->upstreams_replaced, uname, NULL, c->err, c->errlen) < 0) {
        c->failed = 1;
        return 0;
      }
      idx = c->cfg->nupstreams - 1;
    }
    daemon_upstream_t *u = &c->cfg->upstreams[idx];
    if (!strcmp(name, "url")) {
      size_t ulen;
      if (copy_str(u->url, sizeof(u->url), value) < 0)
        goto bad;
      ulen = strlen(u->url);
      while (ulen > 0 && u->url[ulen - 1] == '/')
        u->url[--ulen] = '\0';
      return 1;
    }
    if (!strcmp(name, "ca_file")) {
      if (copy_str(u->ca_file, sizeof(u->ca_file), value) < 0)
        goto bad;
      return 1;
    }
    set_err(c->err, c->errlen, "unknown key \"%s\" in [%s]", name, section);
    c->failed = 1;
    return 0;
  bad:
    set_err(c->err, c->errlen, "value of %s too long", name);
    c->failed = 1;
    return 0;
  }
  set_err(c->err, c->errlen, "unknown section [%s]", section);
  c->failed = 1;
  return 0;
}

static int load_file(load_ctx_t *c, const char *path)
{
  int rc;
  FILE *f = fopen(path, "r");
  if (!f) {
    rc = -errno;
    set_err(c->err, c->errlen, "%s: %s", path, strerror(-rc));
    return rc;
  }
  c->msg[0] = '\0';
  c->err = c->msg;
  c->errlen = sizeof(c->msg);
  rc = ini_parse_file(f, on_ini, c);
  fclose(f);
  if (rc != 0) {
    /* rc > 0: the first line with an error (a handler error or a syntax error) */
    return rc;
  }
  return 0;
}

int config_load_file(daemon_config_t *cfg, const char *path, char *err, size_t errlen)
{
  load_ctx_t c = {.cfg = cfg};
  int rc = load_file(&c, path);
  if (rc > 0) {
    set_err(err, errlen, "%s:%d: %s", path, rc, c.failed ? c.err : "syntax error");
    return -EINVAL;
  }
  if (rc < 0)
    set_err(err, errlen, "%s: %s", path, strerror(-rc));
  return rc;
}

int config_validate(const daemon_config_t *cfg, char *err, size_t errlen)
{
  if (cfg->nlisten < 1) {
    set_err(err, errlen, "no listen address");
    return -EINVAL;
  }
  for (int i = 0; i < cfg->nlisten; i++) {
    const char *a = cfg->listen[i];
    const char *colon = strrchr(a, ':');
    if (!colon || colon == a || !port_valid(colon + 1)) {
      set_err(err, errlen, "listen address \"%s\" is not ADDR:PORT", a);
      return -EINVAL;
    }
  }
  if (cfg->nupstreams < 1) {
    set_err(err, errlen, "no upstream configured");
    return -EINVAL;
  }
  for (int i = 0; i < cfg->nupstreams; i++) {
    const daemon_upstream_t *u = &cfg->upstreams[i];
    if (!config_upstream_name_valid(u->name)) {
      set_err(err, errlen, "upstream name \"%s\" is not a registry host[:port]", u->name);
      return -EINVAL;
    }
    if (!u->url[0]) {
      set_err(err, errlen, "upstream \"%s\" has no url", u->name);
      return -EINVAL;
    }
    if (!config_url_valid(u->url)) {
      set_err(err, errlen, "upstream \"%s\": url \"%s\" is not http(s)://host[:port][/path]",
              u->name, u->url);
      return -EINVAL;
    }
  }
  if (!cfg->store_dir[0]) {
    set_err(err, errlen, "no store directory");
    return -EINVAL;
  }
  if (cfg->tag_ttl < 0) {
    set_err(err, errlen, "tag_ttl must be >= 0");
    return -EINVAL;
  }
  return 0;
}

/* --name VALUE or --name=VALUE: returns the value (advancing *i) or NULL when arg is not this
 * flag. *missing is set when the flag is there but its value is not. */
static const char *flag_value(int argc, char **argv, int *i, const char *flag, int *missing)
{
  const char *a = argv[*i];
  size_t n = strlen(flag);
  if (strncmp(a, flag, n) != 0)
    return NULL;
  if (a[n] == '=')
    return a + n + 1;
  if (a[n] != '\0')
    return NULL;
  if (*i + 1 >= argc) {
    *missing = 1;
    return NULL;
  }
  (*i)++;
  return argv[*i];
}

int config_from_args(daemon_config_t *cfg, int argc, char **argv, int *log_level, char *err,
                     size_t errlen)
{
  int listen_replaced = 0, upstreams_replaced = 0, missing = 0;
  const char *v;

  config_defaults(cfg);
  /* The file first, wherever --config appears. */
  for (int i = 0; i < argc; i++) {
    v = flag_value(argc, argv, &i, "--config", &missing);
    if (missing) {
      set_err(err, errlen, "--config needs a value");
      return -EINVAL;
    }
    if (v) {
      load_ctx_t c = {.cfg = cfg, .log_level = log_level};
      int rc = load_file(&c, v);
      if (rc > 0) {
        set_err(err, errlen, "%s:%d: %s", v, rc, c.failed ? c.err : "syntax error");
        return -EINVAL;
      }
      if (rc < 0) {
        set_err(err, errlen, "%s: %s", v, strerror(-rc));
        return -EINVAL;
      }
    }
  }

  for (int i = 0; i < argc; i++) {
    long long n;
    const char *a = argv[i];
    if ((v = flag_value(argc, argv, &i, "--config", &missing))) {
      continue;
    } else if ((v = flag_value(argc, argv, &i, "--listen", &missing))) {
      if (add_listen(cfg, &listen_replaced, v, err, errlen) < 0)
        return -EINVAL;
    } else if ((v = flag_value(argc, argv, &i, "--store", &missing))) {
      if (!*v || copy_str(cfg->store_dir, sizeof(cfg->store_dir), v) < 0) {
        set_err(err, errlen, "bad --store \"%s\"", v);
        return -EINVAL;
      }
    } else if ((v = flag_value(argc, argv, &i, "--upstream", &missing))) {
      const char *eq = strchr(v, '=');
      char name[256];
      if (!eq || eq == v || (size_t)(eq - v) >= sizeof(name)) {
        set_err(err, errlen, "--upstream wants NAME=URL, got \"%s\"", v);
        return -EINVAL;
      }
      memcpy(name, v, (size_t)(eq - v));
      name[eq - v] = '\0';
      if (!config_url_valid(eq + 1)) {
        set_err(err, errlen, "--upstream %s: url \"%s\" is not http(s)://host[:port][/path]",
                name, eq + 1);
        return -EINVAL;
      }
      if (add_upstream(cfg, &upstreams_replaced, name, eq + 1, err, errlen) < 0)
        return -EINVAL;
    } else if ((v = flag_value(argc, argv, &i, "--tag-ttl", &missing))) {
      if (parse_int(v, 0, INT64_MAX / 1000, &n) < 0) {
        set_err(err, errlen, "bad --tag-ttl \"%s\" (seconds >= 0)", v);
        return -EINVAL;
      }
      cfg->tag_ttl = n;
    } else if ((v = flag_value(argc, argv, &i, "--log-level", &missing))) {
      int l = config_log_level(v);
      if (l < 0) {
        set_err(err, errlen, "bad --log-level \"%s\" (err|warn|notice|info|debug)", v);
        return -EINVAL;
      }
      if (log_level)
        *log_level = l;
    } else if (!strcmp(a, "--offline")) {
      cfg->offline = 1;
    } else if (missing) {
      set_err(err, errlen, "%s needs a value", a);
      return -EINVAL;
    } else {
      set_err(err, errlen, "unknown option \"%s\"", a);
      return -EINVAL;
    }
    if (missing) {
      set_err(err, errlen, "%s needs a value", a);
      return -EINVAL;
    }
  }
  return config_validate(cfg, err, errlen);
}
