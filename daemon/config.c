/* daemon/config — defaults, INI file, command-line flags (see config.h).
 *
 * Every key of the file is one row of `keys` below: section, name, type, where it lives and
 * its bounds. Parsing, `check-config` printing and the documentation test all walk that table,
 * so a key cannot exist in one place and be missing in another.
 */
#include "daemon/config.h"

#include <errno.h>
#include <ini.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/netaddr.h"
#include "core/num.h"
#include "core/pc.h"

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

/* A value that does not fit its field is an error (never cut). */
static int copy_str(char *dst, size_t dstlen, const char *src)
{
  return pc_strlcpy(dst, dstlen, src) == 0 ? 0 : -1;
}

/* ---- value parsers ------------------------------------------------------------------------ */

/* Decimal integer in [min, max] (an optional '+', no '-'); 0 or -1. */
static int parse_int(const char *s, long long min, long long max, long long *out)
{
  int64_t v;
  if (s && *s == '+')
    s++;
  if (!s || *s < '0' || *s > '9' || pc_parse_i64(s, min, max, &v) < 0)
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

/* A non-negative decimal number followed by a unit from `units` (NULL-terminated name/factor
 * pairs, matched case-insensitively; "" is the unit of a bare number). -1 if invalid. */
typedef struct unit {
  const char *name;
  int64_t factor;
} unit_t;

static int64_t parse_with_unit(const char *s, const unit_t *units)
{
  const char *end = s;
  uint64_t v;
  if (!s || pc_parse_u64_prefix(&end, &v) < 0 || v > (uint64_t)INT64_MAX)
    return -1;
  while (*end == ' ')
    end++;
  for (const unit_t *u = units; u->name; u++) {
    if (strcasecmp(end, u->name) == 0) {
      if (v > (uint64_t)(INT64_MAX / u->factor))
        return -1;
      return (int64_t)v * u->factor;
    }
  }
  return -1;
}

int64_t config_parse_duration_ms(const char *s)
{
  static const unit_t units[] = {{"", 1000},     {"ms", 1},      {"s", 1000},     {"m", 60000},
                                 {"min", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0}};
  return parse_with_unit(s, units);
}

int64_t config_parse_size(const char *s)
{
  static const unit_t units[] = {{"", 1},           {"b", 1},           {"k", 1LL << 10},
                                 {"kb", 1LL << 10}, {"kib", 1LL << 10}, {"m", 1LL << 20},
                                 {"mb", 1LL << 20}, {"mib", 1LL << 20}, {"g", 1LL << 30},
                                 {"gb", 1LL << 30}, {"gib", 1LL << 30}, {"t", 1LL << 40},
                                 {"tb", 1LL << 40}, {"tib", 1LL << 40}, {NULL, 0}};
  return parse_with_unit(s, units);
}

int config_log_level(const char *s)
{
  static const struct {
    const char *name;
    int level;
  } levels[] = {{"err", PC_LOG_ERR},      {"error", PC_LOG_ERR},     {"warn", PC_LOG_WARN},
                {"warning", PC_LOG_WARN}, {"notice", PC_LOG_NOTICE}, {"info", PC_LOG_INFO},
                {"debug", PC_LOG_DEBUG}};
  for (size_t i = 0; i < PC_ARRAY_SIZE(levels); i++) {
    if (strcasecmp(s, levels[i].name) == 0)
      return levels[i].level;
  }
  return -1;
}

/* A table reads better one case per line. */
// clang-format off
static const char *log_level_name(int l)
{
  switch (l) {
  case PC_LOG_ERR: return "err";
  case PC_LOG_WARN: return "warn";
  case PC_LOG_NOTICE: return "notice";
  case PC_LOG_DEBUG: return "debug";
  default: return "info";
  }
}
// clang-format on

/* ---- the key table ------------------------------------------------------------------------ */

enum sect { S_SERVER, S_FETCH, S_STORE, S_LOG, S_UPSTREAM };
static const char *const sect_names[] = {"server", "fetch", "store", "log", "upstream"};

enum ktype {
  K_LISTEN,   /* char listen[][] (repeatable, comma-separated) */
  K_STR,      /* char[size] */
  K_PATH,     /* char[size], a readable file */
  K_URL,      /* char[size], http(s) URL, trailing slashes dropped */
  K_CRED,     /* credentials_file: the path, and its "user:password" into userpwd */
  K_CIDRS,    /* char[size], CIDRs or addresses, comma/space separated (core/netaddr.h) */
  K_URLS,     /* char[size], http(s) URLs, comma/space separated, stored space-separated */
  K_BOOL,     /* int 0/1 */
  K_ACCESS,   /* srv_opts.access_log: on = 1, off = -1 */
  K_UINT,     /* unsigned, a plain number */
  K_INT,      /* int, a plain number */
  K_ZCOUNT,   /* size_t, a plain number */
  K_ZBYTES,   /* size_t, a size */
  K_U64BYTES, /* uint64_t, a size */
  K_UMS,      /* unsigned milliseconds, a duration */
  K_LMS,      /* long milliseconds, a duration */
  K_I64SEC,   /* int64_t seconds, a duration (whole seconds) */
  K_DOUBLE,   /* double */
  K_LEVEL,    /* int PC_LOG_* */
  K_FORMAT,   /* int DAEMON_LOG_* */
};

typedef struct cfgkey {
  enum sect sect;
  const char *name;
  enum ktype type;
  size_t off;  /* in daemon_config_t, or daemon_upstream_conf_t for S_UPSTREAM */
  size_t size; /* of a string field */
  int64_t min, max;
} cfgkey_t;

#define C(f) offsetof(daemon_config_t, f), sizeof(((daemon_config_t *)0)->f)
#define U(f) offsetof(daemon_upstream_conf_t, f), sizeof(((daemon_upstream_conf_t *)0)->f)
#define SEC 1000LL
#define DAY (86400 * SEC)

static const cfgkey_t keys[] = {
    {S_SERVER, "listen", K_LISTEN, C(listen), 0, 0},
    {S_SERVER, "max_conns", K_UINT, C(srv.max_conns), 1, 1000000},
    {S_SERVER, "header_timeout", K_UMS, C(srv.header_timeout_ms), 100, 3600 * SEC},
    {S_SERVER, "idle_timeout", K_UMS, C(srv.idle_timeout_ms), 100, DAY},
    {S_SERVER, "write_timeout", K_UMS, C(srv.write_timeout_ms), 100, DAY},
    {S_SERVER, "max_header_bytes", K_ZBYTES, C(srv.max_header_bytes), 1024, 1 << 20},
    {S_SERVER, "max_url_bytes", K_ZBYTES, C(srv.max_url_bytes), 256, 1 << 20},
    {S_SERVER, "max_headers", K_ZCOUNT, C(srv.max_headers), 8, 10000},
    {S_SERVER, "max_manifest", K_U64BYTES, C(max_manifest), 1024, 1LL << 30},
    {S_SERVER, "drain_timeout", K_UMS, C(drain_timeout_ms), 0, 3600 * SEC},
    {S_SERVER, "offline", K_BOOL, C(offline), 0, 1},
    {S_SERVER, "tls_listen", K_STR, C(tls_listen), 0, 0},
    {S_SERVER, "tls_cert", K_STR, C(tls_cert), 0, 0},
    {S_SERVER, "tls_key", K_STR, C(tls_key), 0, 0},
    {S_SERVER, "tls_client_ca", K_STR, C(tls_client_ca), 0, 0},
    {S_SERVER, "tls_client_auth", K_STR, C(tls_client_auth), 0, 0},
    {S_SERVER, "tls_handshake_timeout", K_UMS, C(tls_handshake_timeout_ms), 100, 600 * SEC},
    {S_SERVER, "status", K_BOOL, C(status_page), 0, 1},
    {S_SERVER, "allow", K_CIDRS, C(allow), 0, 0},
    {S_SERVER, "ops_allow", K_CIDRS, C(ops_allow), 0, 0},
    {S_SERVER, "auth_token_file", K_PATH, C(auth_token_file), 0, 0},
    {S_SERVER, "htpasswd", K_PATH, C(htpasswd), 0, 0},
    {S_SERVER, "auth_on", K_STR, C(auth_on), 0, 0},
    {S_FETCH, "connect_timeout", K_LMS, C(up.connect_timeout_ms), 100, 600 * SEC},
    {S_FETCH, "first_byte_timeout", K_LMS, C(up.first_byte_timeout_ms), 100, 3600 * SEC},
    {S_FETCH, "stall_timeout", K_LMS, C(up.stall_timeout_ms), 100, 3600 * SEC},
    {S_FETCH, "min_rate", K_U64BYTES, C(up.min_rate), 0, 1ULL << 34},
    {S_FETCH, "min_rate_window", K_LMS, C(up.min_rate_window_ms), 1000, 3600 * SEC},
    {S_FETCH, "join_stall", K_LMS, C(join_stall_ms), 0, 3600 * SEC},
    {S_FETCH, "queue_wait", K_LMS, C(up.queue_wait_ms), 0, 3600 * SEC},
    {S_FETCH, "max_redirects", K_INT, C(up.max_redirects), 1, 20},
    {S_STORE, "path", K_STR, C(store_dir), 0, 0},
    {S_STORE, "max_size", K_U64BYTES, C(store_max_size), 0, INT64_MAX},
    {S_STORE, "min_free", K_U64BYTES, C(store_min_free), 0, INT64_MAX},
    {S_STORE, "evict_to", K_U64BYTES, C(store_evict_to), 0, INT64_MAX},
    {S_LOG, "level", K_LEVEL, C(log_level), 0, 0},
    {S_LOG, "format", K_FORMAT, C(log_format), 0, 0},
    {S_LOG, "access", K_ACCESS, C(srv.access_log), 0, 0},
    {S_UPSTREAM, "url", K_URL, U(url), 0, 0},
    {S_UPSTREAM, "tag_ttl", K_I64SEC, U(tag_ttl), 0, 3650 * DAY},
    {S_UPSTREAM, "ca_file", K_PATH, U(ca_file), 0, 0},
    {S_UPSTREAM, "credentials_file", K_CRED, U(credentials_file), 0, 0},
    {S_UPSTREAM, "max_connections", K_UINT, U(max_connections), 0, 100000},
    {S_UPSTREAM, "rate_limit", K_DOUBLE, U(rate_limit), 0, 1000000},
    {S_UPSTREAM, "rate_burst", K_UINT, U(rate_burst), 0, 1000000},
    {S_UPSTREAM, "allow_redirect_to", K_CIDRS, U(allow_redirect_to), 0, 0},
    {S_UPSTREAM, "max_stale", K_I64SEC, U(max_stale), 0, 3650 * DAY},
    {S_UPSTREAM, "mirrors", K_URLS, U(mirrors), 0, DAEMON_MAX_MIRRORS},
    {S_UPSTREAM, "failover_connect_timeout", K_LMS, U(failover_connect_ms), 100, 600 * SEC},
    {S_UPSTREAM, "failover_first_byte_timeout", K_LMS, U(failover_first_byte_ms), 100, 3600 * SEC},
    {S_UPSTREAM, "down_after", K_UINT, U(down_after), 1, 1000},
    {S_UPSTREAM, "down_backoff", K_LMS, U(down_backoff_ms), 100, DAY},
    {S_SERVER, "tier_id", K_STR, C(tier_id), 0, 0},
    {S_SERVER, "max_hops", K_UINT, C(max_hops), 1, 64},
};

#undef C
#undef U

static void upstream_defaults(daemon_upstream_conf_t *u)
{
  memset(u, 0, sizeof(*u));
  u->tag_ttl = 300;
  u->failover_connect_ms = 2000;
  u->failover_first_byte_ms = 10000;
  u->down_after = 3;
  u->down_backoff_ms = 30000;
}

void config_defaults(daemon_config_t *cfg)
{
  memset(cfg, 0, sizeof(*cfg));
  copy_str(cfg->listen[0], sizeof(cfg->listen[0]), "127.0.0.1:5000");
  cfg->nlisten = 1;
  cfg->srv.max_conns = 4096;
  cfg->srv.header_timeout_ms = 15000;
  cfg->srv.idle_timeout_ms = 60000;
  cfg->srv.write_timeout_ms = 120000;
  cfg->srv.max_header_bytes = 16384;
  cfg->srv.max_url_bytes = 8192;
  cfg->srv.max_headers = 100;
  cfg->srv.access_log = 1;
  cfg->max_manifest = 4u << 20;
  cfg->drain_timeout_ms = 10000;
  cfg->up.connect_timeout_ms = 10000;
  cfg->up.first_byte_timeout_ms = 30000;
  cfg->up.stall_timeout_ms = 30000;
  cfg->up.min_rate = 1024; /* 1 KiB/s: ends a trickle, spares any link a pull can use */
  cfg->up.min_rate_window_ms = 30000;
  cfg->join_stall_ms = 10000;
  cfg->up.queue_wait_ms = 30000; /* under kubelet's 2 min CRI call; 503 + Retry-After then */
  cfg->up.max_redirects = 10;
  copy_str(cfg->store_dir, sizeof(cfg->store_dir), CONFIG_STORE_DEFAULT);
  cfg->store_min_free = 256u << 20;
  upstream_defaults(&cfg->upstreams[0]);
  copy_str(cfg->upstreams[0].name, sizeof(cfg->upstreams[0].name), "registry.k8s.io");
  copy_str(cfg->upstreams[0].url, sizeof(cfg->upstreams[0].url), "https://registry.k8s.io");
  cfg->nupstreams = 1;
  cfg->log_level = PC_LOG_INFO;
  cfg->log_format = DAEMON_LOG_TEXT;
  cfg->tls_handshake_timeout_ms = 10000;
  cfg->status_page = 1;
  cfg->max_hops = 8;
  copy_str(cfg->auth_on, sizeof(cfg->auth_on), "all");
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

static void strip_slashes(char *url)
{
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    url[--n] = '\0';
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

static int find_upstream_idx(const daemon_config_t *cfg, const char *name)
{
  for (int i = 0; i < cfg->nupstreams; i++) {
    if (strcasecmp(cfg->upstreams[i].name, name) == 0)
      return i;
  }
  return -1;
}

static int add_upstream(daemon_config_t *cfg, int *replaced, const char *name, const char *url,
                        char *err, size_t errlen)
{
  daemon_upstream_conf_t *u;
  if (!*replaced) {
    cfg->nupstreams = 0;
    *replaced = 1;
  }
  if (find_upstream_idx(cfg, name) >= 0) {
    set_err(err, errlen, "upstream \"%s\" is configured twice", name);
    return -EINVAL;
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
  upstream_defaults(u);
  if (copy_str(u->name, sizeof(u->name), name) < 0) {
    set_err(err, errlen, "upstream name too long");
    return -EINVAL;
  }
  if (url) {
    if (copy_str(u->url, sizeof(u->url), url) < 0) {
      set_err(err, errlen, "upstream \"%s\": url too long", name);
      return -EINVAL;
    }
    strip_slashes(u->url);
  }
  cfg->nupstreams++;
  return 0;
}

/* credentials_file: the first line is "user:password" (no other format). */
static int read_credentials(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
  char line[1024];
  FILE *f = fopen(path, "r");
  if (!f) {
    set_err(err, errlen, "credentials_file %s: %s", path, strerror(errno));
    return -EINVAL;
  }
  int ok = fgets(line, sizeof(line), f) != NULL;
  fclose(f);
  if (ok)
    line[strcspn(line, "\r\n")] = '\0';
  if (!ok || !strchr(line, ':') || line[0] == ':' || strlen(line) >= outlen) {
    explicit_bzero(line, sizeof(line));
    set_err(err, errlen, "credentials_file %s: the first line must be user:password", path);
    return -EINVAL;
  }
  memcpy(out, line, strlen(line) + 1);
  explicit_bzero(line, sizeof(line));
  return 0;
}

/* A list of URLs (comma or space separated; at most k->max) into field, space-separated, each
 * checked as `url` is and without trailing slashes. */
static int set_urls(const cfgkey_t *k, char *field, const char *value, char *err, size_t errlen)
{
  char out[1024] = "", one[1024];
  size_t len = 0;
  int n = 0;
  const char *p = value;
  for (;;) {
    p += strspn(p, ", \t");
    if (!*p)
      break;
    size_t w = strcspn(p, ", \t");
    if (w >= sizeof(one) || ++n > k->max) {
      set_err(err, errlen, "%s: at most %d URLs", k->name, (int)k->max);
      return -EINVAL;
    }
    memcpy(one, p, w);
    one[w] = '\0';
    p += w;
    strip_slashes(one);
    if (!config_url_valid(one)) {
      set_err(err, errlen, "%s: url \"%s\" is not http(s)://host[:port][/path]", k->name, one);
      return -EINVAL;
    }
    int wr = snprintf(out + len, sizeof(out) - len, "%s%s", len ? " " : "", one);
    if (wr < 0 || (size_t)wr >= sizeof(out) - len || len + (size_t)wr >= k->size) {
      set_err(err, errlen, "%s: too long", k->name);
      return -EINVAL;
    }
    len += (size_t)wr;
  }
  if (!n || strlen(k->name) + 3 + len > INI_MAX_LINE - 2) {
    set_err(err, errlen, "bad value for %s: \"%s\"", k->name, value);
    return -EINVAL;
  }
  memcpy(field, out, len + 1);
  return 0;
}

/* Parse `value` for key k into base (the config or an upstream). 0 or -EINVAL with err set. */
static int set_key(const cfgkey_t *k, void *base, daemon_config_t *cfg, int *listen_replaced,
                   const char *value, char *err, size_t errlen)
{
  char *field = (char *)base + k->off;
  int64_t v;
  long long n;
  int b;
  double dv;
  char *end;

  switch (k->type) {
  case K_LISTEN:
    return add_listen(cfg, listen_replaced, value, err, errlen);
  case K_URLS:
    return set_urls(k, field, value, err, errlen);
  case K_STR:
  case K_PATH:
  case K_URL:
  case K_CRED:
  case K_CIDRS:
    if (!*value || copy_str(field, k->size, value) < 0)
      goto bad;
    /* a control byte would not survive check-config's output (the INI parser takes a form
     * feed or vertical tab before ';' as the start of a comment, and a line starting with one
     * as a continuation), and none belongs in a path, URL or name; a tab may stay */
    for (const char *q = value; *q; q++)
      if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f) {
        set_err(err, errlen, "%s: value holds a control byte (0x%02x)", k->name, (unsigned char)*q);
        return -EINVAL;
      }
    /* check-config prints "key = value" on one line, which must load back: within the INI
     * parser's line (INI_MAX_LINE, less the newline and its NUL) */
    if (strlen(k->name) + 3 + strlen(value) > INI_MAX_LINE - 2) {
      set_err(err, errlen, "%s: value longer than a config line can hold (%d bytes)", k->name,
              INI_MAX_LINE - 2);
      return -EINVAL;
    }
    if (k->type == K_CIDRS) {
      char badv[64];
      if (pc_cidr_list_check(field, badv, sizeof(badv)) != 0) {
        set_err(err, errlen, "%s: \"%s\" is not an address or CIDR", k->name, badv);
        return -EINVAL;
      }
      return 0;
    }
    if (k->type == K_URL) {
      strip_slashes(field);
      if (!config_url_valid(field)) {
        set_err(err, errlen, "url \"%s\" is not http(s)://host[:port][/path]", value);
        return -EINVAL;
      }
    }
    if ((k->type == K_PATH || k->type == K_CRED) && access(field, R_OK) != 0) {
      set_err(err, errlen, "%s %s: %s", k->name, value, strerror(errno));
      return -EINVAL;
    }
    if (k->type == K_CRED) {
      daemon_upstream_conf_t *u = base;
      return read_credentials(field, u->userpwd, sizeof(u->userpwd), err, errlen);
    }
    return 0;
  case K_BOOL:
  case K_ACCESS:
    if (parse_bool(value, &b) < 0)
      goto bad;
    *(int *)field = k->type == K_ACCESS && !b ? -1 : b;
    return 0;
  case K_UINT:
  case K_INT:
  case K_ZCOUNT:
    if (parse_int(value, k->min, k->max, &n) < 0)
      goto range;
    if (k->type == K_UINT)
      *(unsigned *)field = (unsigned)n;
    else if (k->type == K_INT)
      *(int *)field = (int)n;
    else
      *(size_t *)field = (size_t)n;
    return 0;
  case K_ZBYTES:
  case K_U64BYTES:
    v = config_parse_size(value);
    if (v < k->min || v > k->max)
      goto range;
    if (k->type == K_ZBYTES)
      *(size_t *)field = (size_t)v;
    else
      *(uint64_t *)field = (uint64_t)v;
    return 0;
  case K_UMS:
  case K_LMS:
  case K_I64SEC:
    v = config_parse_duration_ms(value);
    if (v < k->min || v > k->max || (k->type == K_I64SEC && v % 1000 != 0))
      goto range;
    if (k->type == K_UMS)
      *(unsigned *)field = (unsigned)v;
    else if (k->type == K_LMS)
      *(long *)field = (long)v;
    else
      *(int64_t *)field = v / 1000;
    return 0;
  case K_DOUBLE:
    errno = 0;
    dv = strtod(value, &end);
    if (errno || end == value || *end != '\0' || !isfinite(dv) || dv < (double)k->min ||
        dv > (double)k->max)
      goto range;
    *(double *)field = dv;
    return 0;
  case K_LEVEL:
    b = config_log_level(value);
    if (b < 0) {
      set_err(err, errlen, "bad value for %s: \"%s\" (err|warn|notice|info|debug)", k->name, value);
      return -EINVAL;
    }
    *(int *)field = b;
    return 0;
  case K_FORMAT:
    if (!strcasecmp(value, "text"))
      *(int *)field = DAEMON_LOG_TEXT;
    else if (!strcasecmp(value, "json"))
      *(int *)field = DAEMON_LOG_JSON;
    else {
      set_err(err, errlen, "bad value for %s: \"%s\" (text|json)", k->name, value);
      return -EINVAL;
    }
    return 0;
  }
bad:
  set_err(err, errlen, "bad value for %s: \"%s\"", k->name, value);
  return -EINVAL;
range:
  set_err(err, errlen, "bad value for %s: \"%s\" (%s)", k->name, value,
          k->type == K_UMS || k->type == K_LMS || k->type == K_I64SEC
              ? "a duration such as 30s, 500ms, 5m, within the allowed range"
          : k->type == K_ZBYTES || k->type == K_U64BYTES
              ? "a size such as 4096, 64K, 16M, 1G, within the allowed range"
              : "a number within the allowed range");
  return -EINVAL;
}

static const cfgkey_t *find_key(enum sect s, const char *name)
{
  for (size_t i = 0; i < PC_ARRAY_SIZE(keys); i++)
    if (keys[i].sect == s && strcmp(keys[i].name, name) == 0)
      return &keys[i];
  return NULL;
}

/* ---- the file ----------------------------------------------------------------------------- */

typedef struct load_ctx {
  daemon_config_t *cfg;
  FILE *f;
  int line;          /**< of the line inih is handling (counted by file_reader) */
  int section_line;  /**< of the last section header read */
  char section[300]; /**< its name, whole (inih cuts section names at 50 bytes) */
  int err_line;      /**< where the handler or the reader failed */
  int listen_replaced;
  int upstreams_replaced;
  int up_line[DAEMON_MAX_UPSTREAMS]; /**< where each upstream's section started */
  int failed;
  char msg[512];
} load_ctx_t;

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

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
  load_ctx_t *c = user;
  char uname[256];
  const cfgkey_t *k;
  void *base = c->cfg;
  enum sect s;

  if (c->failed)
    return 0;
  section = c->section; /* the whole name, as file_reader saw it */
  if (upstream_section(section, uname, sizeof(uname)) == 0) {
    int idx = find_upstream_idx(c->cfg, uname);
    if (idx < 0 || !c->upstreams_replaced) {
      if (add_upstream(c->cfg, &c->upstreams_replaced, uname, NULL, c->msg, sizeof(c->msg)) < 0)
        goto fail;
      idx = c->cfg->nupstreams - 1;
      c->up_line[idx] = c->section_line;
    } else if (c->up_line[idx] != c->section_line) {
      set_err(c->msg, sizeof(c->msg), "[upstream \"%s\"] appears twice (first at line %d)", uname,
              c->up_line[idx]);
      c->err_line = c->section_line;
      goto fail;
    }
    base = &c->cfg->upstreams[idx];
    s = S_UPSTREAM;
  } else {
    for (s = S_SERVER; s < S_UPSTREAM; s++)
      if (strcmp(section, sect_names[s]) == 0)
        break;
    if (s == S_UPSTREAM) {
      set_err(c->msg, sizeof(c->msg), "unknown section [%s]%s", section,
              strncmp(section, "upstream", 8) == 0 ? " (write [upstream \"HOST\"])" : "");
      c->err_line = c->section_line;
      goto fail;
    }
  }
  if (!name) /* section start (INI_CALL_HANDLER_ON_NEW_SECTION builds only) */
    return 1;
  if (value[0] == ';') {
    /* "key=;x" is the value ";x", but "key = ;x" is an empty value and a comment: refuse
     * the first, so that check-config's "key = value" output means the same. */
    set_err(c->msg, sizeof(c->msg), "value of %s starts with ';' (a comment character)", name);
    goto fail;
  }
  k = find_key(s, name);
  if (!k) {
    set_err(c->msg, sizeof(c->msg), "unknown key \"%s\" in [%s]", name, section);
    goto fail;
  }
  if (set_key(k, base, c->cfg, &c->listen_replaced, value, c->msg, sizeof(c->msg)) < 0)
    goto fail;
  return 1;
fail:
  c->failed = 1;
  if (!c->err_line)
    c->err_line = c->line;
  return 0;
}

/* inih's reader: fgets, counting lines so the handler knows where it is. It also refuses what
 * inih (as Debian builds it) would misread: a line longer than its buffer (it would split it),
 * an indented key (it would append it to the previous value), and it keeps section names whole
 * (inih cuts them at 50 bytes). Stopping here ends the parse like an end of file. */
static char *file_reader(char *buf, int size, void *stream)
{
  load_ctx_t *c = stream;
  char *r;
  const char *p;
  size_t n;

  if (c->failed)
    return NULL;
  r = fgets(buf, size, c->f);
  if (!r)
    return NULL;
  c->line++;
  n = strlen(r);
  if (n > 0 && r[n - 1] != '\n' && !feof(c->f)) {
    set_err(c->msg, sizeof(c->msg), "line longer than %d bytes (the INI parser's limit)", size - 2);
    goto fail;
  }
  p = r;
  while (*p == ' ' || *p == '\t' || *p == '\f' || *p == '\v') /* what the parser skips */
    p++;
  if (p != r && *p && *p != '\r' && *p != '\n' && *p != ';' && *p != '#') {
    set_err(c->msg, sizeof(c->msg), "indented line: keys and sections start the line");
    goto fail;
  }
  if (*p == '[') {
    const char *end = strchr(p, ']');
    size_t len = end ? (size_t)(end - p - 1) : 0;
    c->section_line = c->line;
    if (len >= sizeof(c->section))
      len = sizeof(c->section) - 1;
    memcpy(c->section, p + 1, len);
    c->section[len] = '\0';
  }
  return r;
fail:
  c->failed = 1;
  c->err_line = c->line;
  return NULL;
}

int config_load_file(daemon_config_t *cfg, const char *path, char *err, size_t errlen)
{
  load_ctx_t *c = pc_xcalloc(1, sizeof(*c));
  int rc, first = cfg->nupstreams;
  c->cfg = cfg;
  c->f = fopen(path, "r");
  if (!c->f) {
    rc = -errno;
    set_err(err, errlen, "%s: %s", path, strerror(-rc));
    free(c);
    return rc;
  }
  copy_str(cfg->path, sizeof(cfg->path), path);
  rc = ini_parse_stream(file_reader, c, on_ini, c);
  fclose(c->f);
  if (rc > 0 && (!c->failed || rc < c->err_line)) {
    /* inih's own first error (a syntax error) comes before any of ours */
    set_err(err, errlen, "%s:%d: syntax error", path, rc);
    rc = -EINVAL;
  } else if (c->failed) {
    set_err(err, errlen, "%s:%d: %s", path, c->err_line, c->msg);
    rc = -EINVAL;
  } else if (rc < 0) {
    set_err(err, errlen, "%s: cannot parse (out of memory)", path);
    rc = -EINVAL;
  } else {
    /* Every upstream this file added needs its url. */
    for (int i = c->upstreams_replaced ? 0 : first; i < cfg->nupstreams; i++) {
      if (!cfg->upstreams[i].url[0]) {
        set_err(err, errlen, "%s:%d: [upstream \"%s\"] has no url", path, c->up_line[i],
                cfg->upstreams[i].name);
        rc = -EINVAL;
        break;
      }
    }
  }
  explicit_bzero(c, sizeof(*c));
  free(c);
  return rc;
}

/* ---- validation --------------------------------------------------------------------------- */

/* "1.2.3.4:80" or "[::1]:80", numeric (srv_listen does not resolve names). */
static int listen_valid(const char *a)
{
  char host[128];
  const char *colon = strrchr(a, ':');
  struct sockaddr_in6 s6;
  struct sockaddr_in s4;
  size_t hl;
  if (!colon || colon == a || !port_valid(colon + 1))
    return 0;
  hl = (size_t)(colon - a);
  if (a[0] == '[') {
    if (hl < 3 || a[hl - 1] != ']')
      return 0;
    memcpy(host, a + 1, hl - 2);
    host[hl - 2] = '\0';
    return uv_ip6_addr(host, 0, &s6) == 0;
  }
  memcpy(host, a, hl);
  host[hl] = '\0';
  return uv_ip4_addr(host, 0, &s4) == 0;
}

/* The [server] tls_* keys: the files themselves are loaded (and checked) by srv_tls_new. */
static int tls_validate(const daemon_config_t *cfg, char *err, size_t errlen)
{
  const char *a = cfg->tls_client_auth;
  if (a[0] && strcmp(a, "required") != 0 && strcmp(a, "optional") != 0) {
    set_err(err, errlen, "tls_client_auth \"%s\" is not required or optional", a);
    return -EINVAL;
  }
  if (a[0] && !cfg->tls_client_ca[0]) {
    set_err(err, errlen, "tls_client_auth needs tls_client_ca");
    return -EINVAL;
  }
  if (!cfg->tls_listen[0])
    return 0;
  if (!listen_valid(cfg->tls_listen)) {
    set_err(err, errlen, "tls_listen \"%s\" is not ADDR:PORT (numeric IPv4, or [IPv6]:PORT)",
            cfg->tls_listen);
    return -EINVAL;
  }
  if (!cfg->tls_cert[0] || !cfg->tls_key[0]) {
    set_err(err, errlen, "tls_listen needs tls_cert and tls_key");
    return -EINVAL;
  }
  return 0;
}

int config_validate(const daemon_config_t *cfg, char *err, size_t errlen)
{
  if (cfg->nlisten < 1) {
    set_err(err, errlen, "no listen address");
    return -EINVAL;
  }
  for (int i = 0; i < cfg->nlisten; i++) {
    if (!listen_valid(cfg->listen[i])) {
      set_err(err, errlen, "listen address \"%s\" is not ADDR:PORT (numeric IPv4, or [IPv6]:PORT)",
              cfg->listen[i]);
      return -EINVAL;
    }
  }
  if (cfg->tier_id[0] && strspn(cfg->tier_id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                              "0123456789.-_:[]") != strlen(cfg->tier_id)) {
    set_err(err, errlen, "tier_id \"%s\": only letters, digits and . - _ : [ ]", cfg->tier_id);
    return -EINVAL;
  }
  if (cfg->nupstreams < 1) {
    set_err(err, errlen, "no upstream configured");
    return -EINVAL;
  }
  for (int i = 0; i < cfg->nupstreams; i++) {
    const daemon_upstream_conf_t *u = &cfg->upstreams[i];
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
  if (cfg->store_max_size && cfg->store_evict_to > cfg->store_max_size) {
    set_err(err, errlen,
            "store: evict_to (%llu bytes) is larger than max_size (%llu bytes): eviction "
            "would never bring the store under its budget",
            (unsigned long long)cfg->store_evict_to, (unsigned long long)cfg->store_max_size);
    return -EINVAL;
  }
  const char *on = cfg->auth_on;
  if (strcmp(on, "all") != 0 && strcmp(on, "tls") != 0 && strcmp(on, "plain") != 0) {
    set_err(err, errlen, "auth_on \"%s\" is not all, tls or plain", on);
    return -EINVAL;
  }
  return tls_validate(cfg, err, errlen);
}

/* ---- flags -------------------------------------------------------------------------------- */

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

int config_from_args(daemon_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
  int listen_replaced = 0, upstreams_replaced = 0, missing = 0, no_config = 0;
  const char *v, *file = NULL;
  int64_t tag_ttl = -1;

  config_defaults(cfg);
  /* The file first, wherever --config appears. */
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--no-config")) {
      no_config = 1;
      continue;
    }
    v = flag_value(argc, argv, &i, "--config", &missing);
    if (missing) {
      set_err(err, errlen, "--config needs a value");
      return -EINVAL;
    }
    if (v)
      file = v;
  }
  if (file && no_config) {
    set_err(err, errlen, "--config and --no-config exclude each other");
    return -EINVAL;
  }
  if (!file && !no_config && access(DAEMON_CONFIG_DEFAULT, F_OK) == 0)
    file = DAEMON_CONFIG_DEFAULT;
  if (file && config_load_file(cfg, file, err, errlen) < 0)
    return -EINVAL;

  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--no-config")) {
      continue;
    } else if ((v = flag_value(argc, argv, &i, "--config", &missing))) {
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
        set_err(err, errlen, "--upstream %s: url \"%s\" is not http(s)://host[:port][/path]", name,
                eq + 1);
        return -EINVAL;
      }
      if (add_upstream(cfg, &upstreams_replaced, name, eq + 1, err, errlen) < 0)
        return -EINVAL;
    } else if ((v = flag_value(argc, argv, &i, "--tag-ttl", &missing))) {
      int64_t ms = config_parse_duration_ms(v);
      if (ms < 0 || ms % 1000 != 0) {
        set_err(err, errlen, "bad --tag-ttl \"%s\" (whole seconds >= 0, e.g. 300 or 5m)", v);
        return -EINVAL;
      }
      tag_ttl = ms / 1000;
    } else if ((v = flag_value(argc, argv, &i, "--log-level", &missing))) {
      int l = config_log_level(v);
      if (l < 0) {
        set_err(err, errlen, "bad --log-level \"%s\" (err|warn|notice|info|debug)", v);
        return -EINVAL;
      }
      cfg->log_level = l;
    } else if ((v = flag_value(argc, argv, &i, "--log-format", &missing))) {
      if (set_key(find_key(S_LOG, "format"), cfg, cfg, NULL, v, err, errlen) < 0)
        return -EINVAL;
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
  if (tag_ttl >= 0)
    for (int i = 0; i < cfg->nupstreams; i++)
      cfg->upstreams[i].tag_ttl = tag_ttl;
  return config_validate(cfg, err, errlen);
}

/* ---- printing ----------------------------------------------------------------------------- */

static void fmt_duration(char *out, size_t n, int64_t ms)
{
  if (ms == 0)
    snprintf(out, n, "0");
  else if (ms % 3600000 == 0)
    snprintf(out, n, "%" PRId64 "h", ms / 3600000);
  else if (ms % 60000 == 0)
    snprintf(out, n, "%" PRId64 "m", ms / 60000);
  else if (ms % 1000 == 0)
    snprintf(out, n, "%" PRId64 "s", ms / 1000);
  else
    snprintf(out, n, "%" PRId64 "ms", ms);
}

static void fmt_size(char *out, size_t n, uint64_t v)
{
  static const char suffix[] = "KMGT";
  int i = -1;
  while (v && v % 1024 == 0 && i < 3) {
    v /= 1024;
    i++;
  }
  if (i < 0)
    snprintf(out, n, "%" PRIu64, v);
  else
    snprintf(out, n, "%" PRIu64 "%c", v, suffix[i]);
}

/* The value of key k in base, as the file would write it. */
static void fmt_key(const cfgkey_t *k, const void *base, char *out, size_t n)
{
  const char *field = (const char *)base + k->off;
  switch (k->type) {
  case K_LISTEN: {
    const daemon_config_t *cfg = base;
    size_t l = 0;
    out[0] = '\0';
    for (int i = 0; i < cfg->nlisten && l < n; i++)
      l += (size_t)snprintf(out + l, n - l, "%s%s", i ? ", " : "", cfg->listen[i]);
    return;
  }
  case K_STR:
  case K_PATH:
  case K_URL:
  case K_CRED:
  case K_CIDRS:
  case K_URLS:
    snprintf(out, n, "%s", field);
    return;
  case K_BOOL:
    snprintf(out, n, "%s", *(const int *)field ? "true" : "false");
    return;
  case K_ACCESS:
    snprintf(out, n, "%s", *(const int *)field >= 0 ? "true" : "false");
    return;
  case K_UINT:
    snprintf(out, n, "%u", *(const unsigned *)field);
    return;
  case K_INT:
    snprintf(out, n, "%d", *(const int *)field);
    return;
  case K_ZCOUNT:
    snprintf(out, n, "%zu", *(const size_t *)field);
    return;
  case K_ZBYTES:
    fmt_size(out, n, *(const size_t *)field);
    return;
  case K_U64BYTES:
    fmt_size(out, n, *(const uint64_t *)field);
    return;
  case K_UMS:
    fmt_duration(out, n, *(const unsigned *)field);
    return;
  case K_LMS:
    fmt_duration(out, n, *(const long *)field);
    return;
  case K_I64SEC:
    fmt_duration(out, n, *(const int64_t *)field * 1000);
    return;
  case K_DOUBLE:
    snprintf(out, n, "%g", *(const double *)field);
    return;
  case K_LEVEL:
    snprintf(out, n, "%s", log_level_name(*(const int *)field));
    return;
  case K_FORMAT:
    snprintf(out, n, "%s", *(const int *)field == DAEMON_LOG_JSON ? "json" : "text");
    return;
  }
}

static void print_section(enum sect s, const void *base, FILE *out)
{
  char v[2048];
  for (size_t i = 0; i < PC_ARRAY_SIZE(keys); i++) {
    if (keys[i].sect != s)
      continue;
    fmt_key(&keys[i], base, v, sizeof(v));
    /* Empty optional strings are left out (an empty value would not load back). */
    if (!v[0])
      continue;
    fprintf(out, "%s = %s\n", keys[i].name, v);
  }
}

void config_print(const daemon_config_t *cfg, FILE *out)
{
  fprintf(out, "; effective configuration%s%s\n", cfg->path[0] ? " from " : " (no file)",
          cfg->path);
  for (enum sect s = S_SERVER; s < S_UPSTREAM; s++) {
    fprintf(out, "\n[%s]\n", sect_names[s]);
    print_section(s, cfg, out);
  }
  for (int i = 0; i < cfg->nupstreams; i++) {
    fprintf(out, "\n[upstream \"%s\"]\n", cfg->upstreams[i].name);
    print_section(S_UPSTREAM, &cfg->upstreams[i], out);
  }
}

void config_each_key(void (*cb)(void *arg, const char *section, const char *key, const char *def),
                     void *arg)
{
  daemon_config_t *cfg = pc_xmalloc(sizeof(*cfg));
  char v[2048];
  config_defaults(cfg);
  for (size_t i = 0; i < PC_ARRAY_SIZE(keys); i++) {
    const void *base = keys[i].sect == S_UPSTREAM ? (const void *)&cfg->upstreams[0] : cfg;
    fmt_key(&keys[i], base, v, sizeof(v));
    if (keys[i].type == K_PATH || keys[i].type == K_CRED)
      v[0] = '\0';
    cb(arg, sect_names[keys[i].sect], keys[i].name, v);
  }
  free(cfg);
}
