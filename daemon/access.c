/* daemon/access — address allow-lists and client credentials (see access.h). */
#include "daemon/access.h"

#include <crypt.h>
#include <stdarg.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/netaddr.h"
#include "core/pc.h"
#include "daemon/answer.h"
#include "daemon/reqctx.h"

#define ACCESS_LOG_EVERY_MS 1000u /* conn-refused lines: at most one per second */
#define ACCESS_CACHE 64           /* credentials remembered after a bcrypt check */
#define ACCESS_USER_MAX 128
#define ACCESS_PASS_MAX 256
#define ACCESS_HASH_MAX 128
#define ACCESS_TOKEN_MIN 16
#define ACCESS_TOKEN_MAX 255
#define CHALLENGE "Basic realm=\"pullcache\", charset=\"UTF-8\""

typedef struct access_user {
  char name[ACCESS_USER_MAX];
  char hash[ACCESS_HASH_MAX];
} access_user_t;

struct daemon_access {
  int refs;
  int has_token;
  unsigned char token_sha[32]; /* the token is compared by its SHA-256 (constant time) */
  access_user_t *users;
  size_t nusers;
  struct {
    unsigned char key[32]; /* SHA-256 of the Authorization value that passed */
    char user[ACCESS_USER_MAX];
    int used;
  } cache[ACCESS_CACHE];
  unsigned cache_next;
  unsigned checks; /* bcrypt checks in flight */
};

static void sha256(const void *p, size_t n, unsigned char out[32])
{
  unsigned len = 32;
  PC_ASSERT(EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) == 1);
}

/* ---- loading -------------------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

static void chomp(char *s)
{
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
    s[--n] = '\0';
}

static int load_token(daemon_access_t *a, const char *path, char *err, size_t errlen)
{
  char line[ACCESS_TOKEN_MAX + 3];
  FILE *f = fopen(path, "re");
  if (!f) {
    int e = errno;
    set_err(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  int got = fgets(line, sizeof(line), f) != NULL;
  fclose(f);
  if (got)
    chomp(line);
  size_t n = got ? strlen(line) : 0;
  int ok = n >= ACCESS_TOKEN_MIN && n <= ACCESS_TOKEN_MAX;
  for (size_t i = 0; ok && i < n; i++)
    ok = line[i] > 0x20 && line[i] < 0x7f;
  if (!ok) {
    explicit_bzero(line, sizeof(line));
    set_err(err, errlen, "%s: the first line must be the token: %d to %d visible ASCII characters",
            path, ACCESS_TOKEN_MIN, ACCESS_TOKEN_MAX);
    return -EINVAL;
  }
  sha256(line, n, a->token_sha);
  explicit_bzero(line, sizeof(line));
  a->has_token = 1;
  return 0;
}

static int bcrypt_hash_valid(const char *h)
{
  /* $2a$ / $2b$ / $2y$, two cost digits, '$', 53 characters of bcrypt's base64 */
  if (strlen(h) != 60 || h[0] != '$' || h[1] != '2' || !strchr("aby", h[2]) || h[3] != '$' ||
      h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9' || h[6] != '$')
    return 0;
  for (const char *p = h + 7; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
          *p == '.' || *p == '/'))
      return 0;
  return 1;
}

static int load_htpasswd(daemon_access_t *a, const char *path, char *err, size_t errlen)
{
  char line[512];
  int lineno = 0, rc = 0;
  size_t cap = 0;
  FILE *f = fopen(path, "re");
  if (!f) {
    int e = errno;
    set_err(err, errlen, "%s: %s", path, strerror(e));
    return -e;
  }
  while (rc == 0 && fgets(line, sizeof(line), f)) {
    lineno++;
    if (!strchr(line, '\n') && !feof(f)) {
      set_err(err, errlen, "%s:%d: line too long", path, lineno);
      rc = -EINVAL;
      break;
    }
    chomp(line);
    if (!line[0] || line[0] == '#')
      continue;
    char *colon = strchr(line, ':');
    size_t ul = colon ? (size_t)(colon - line) : 0;
    if (!colon || ul == 0 || ul >= ACCESS_USER_MAX) {
      set_err(err, errlen, "%s:%d: not USER:HASH", path, lineno);
      rc = -EINVAL;
      break;
    }
    if (!bcrypt_hash_valid(colon + 1)) {
      set_err(err, errlen, "%s:%d: user %.*s: not a bcrypt hash (make it with htpasswd -B)", path,
              lineno, (int)ul, line);
      rc = -EINVAL;
      break;
    }
    for (size_t i = 0; i < a->nusers; i++)
      if (strlen(a->users[i].name) == ul && !memcmp(a->users[i].name, line, ul)) {
        set_err(err, errlen, "%s:%d: user %.*s listed twice", path, lineno, (int)ul, line);
        rc = -EINVAL;
      }
    if (rc)
      break;
    if (a->nusers == cap) {
      cap = cap ? cap * 2 : 8;
      a->users = pc_xrealloc(a->users, cap * sizeof(*a->users));
    }
    access_user_t *u = &a->users[a->nusers++];
    memcpy(u->name, line, ul);
    u->name[ul] = '\0';
    snprintf(u->hash, sizeof(u->hash), "%s", colon + 1);
  }
  if (rc == 0 && ferror(f)) {
    set_err(err, errlen, "%s: read error", path);
    rc = -EIO;
  }
  if (rc == 0 && a->nusers == 0) {
    set_err(err, errlen, "%s: no USER:HASH line", path);
    rc = -EINVAL;
  }
  fclose(f);
  explicit_bzero(line, sizeof(line));
  return rc;
}

int access_creds_load(const daemon_config_t *cfg, char *err, size_t errlen, daemon_access_t **out)
{
  daemon_access_t *a = pc_xcalloc(1, sizeof(*a));
  a->refs = 1;
  int rc = 0;
  if (cfg->auth_token_file[0])
    rc = load_token(a, cfg->auth_token_file, err, errlen);
  if (rc == 0 && cfg->htpasswd[0])
    rc = load_htpasswd(a, cfg->htpasswd, err, errlen);
  if (rc) {
    access_creds_free(a);
    *out = NULL;
    return rc;
  }
  *out = a;
  return 0;
}

void access_creds_free(daemon_access_t *a)
{
  if (!a || --a->refs > 0)
    return;
  if (a->users)
    explicit_bzero(a->users, a->nusers * sizeof(*a->users));
  free(a->users);
  explicit_bzero(a, sizeof(*a));
  free(a);
}

int access_creds_active(const daemon_access_t *a)
{
  return a && (a->has_token || a->nusers);
}

/* ---- judging a header ----------------------------------------------------------------------- */

static int token_is(const daemon_access_t *a, const void *s, size_t n)
{
  unsigned char h[32];
  if (!a->has_token)
    return 0;
  sha256(s, n, h);
  return CRYPTO_memcmp(h, a->token_sha, 32) == 0;
}

/* Decode base64 text (no whitespace) into out; the decoded length, or -1. */
static int b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
  if (n == 0 || n % 4 || n / 4 * 3 > cap)
    return -1;
  int len = EVP_DecodeBlock(out, (const unsigned char *)in, (int)n);
  if (len < 0)
    return -1;
  if (in[n - 1] == '=')
    len--;
  if (in[n - 2] == '=')
    len--;
  return len;
}

/* The credential after an auth scheme: s without its leading and trailing spaces (*n bytes). */
static const char *credential(const char *s, size_t *n)
{
  while (*s == ' ')
    s++;
  size_t l = strlen(s);
  while (l && s[l - 1] == ' ')
    l--;
  *n = l;
  return s;
}

enum access_verdict access_judge(daemon_access_t *a, const char *authz, char *user, size_t usercap,
                                 char *pass, size_t passcap, const char **hash)
{
  user[0] = pass[0] = '\0';
  *hash = NULL;
  if (!authz)
    return ACCESS_NONE;
  while (*authz == ' ')
    authz++;
  size_t bn;
  if (!strncasecmp(authz, "Bearer ", 7)) {
    const char *t = credential(authz + 7, &bn);
    return bn && token_is(a, t, bn) ? ACCESS_TOKEN : ACCESS_BAD;
  }
  if (strncasecmp(authz, "Basic ", 6) != 0)
    return ACCESS_BAD;
  const char *b = credential(authz + 6, &bn);
  unsigned char dec[ACCESS_USER_MAX + ACCESS_PASS_MAX + 4];
  int dl = b64_decode(b, bn, dec, sizeof(dec));
  unsigned char *colon = dl > 0 ? memchr(dec, ':', (size_t)dl) : NULL;
  enum access_verdict v = ACCESS_BAD;
  if (!colon || memchr(dec, '\0', (size_t)dl))
    goto out;
  size_t ul = (size_t)(colon - dec), pl = (size_t)dl - ul - 1;
  if (pl && token_is(a, colon + 1, pl)) {
    v = ACCESS_TOKEN;
    goto out;
  }
  if (ul == 0 || ul >= usercap || ul >= ACCESS_USER_MAX || pl >= passcap || !a->nusers)
    goto out;
  const access_user_t *u = NULL;
  for (size_t i = 0; i < a->nusers && !u; i++)
    if (strlen(a->users[i].name) == ul && !memcmp(a->users[i].name, dec, ul))
      u = &a->users[i];
  if (!u)
    goto out;
  memcpy(user, dec, ul);
  user[ul] = '\0';
  unsigned char key[32];
  sha256(authz, strlen(authz), key);
  for (unsigned i = 0; i < ACCESS_CACHE; i++)
    if (a->cache[i].used && CRYPTO_memcmp(a->cache[i].key, key, 32) == 0) {
      v = ACCESS_CACHED;
      goto out;
    }
  memcpy(pass, colon + 1, pl);
  pass[pl] = '\0';
  *hash = u->hash;
  v = ACCESS_BCRYPT;
out:
  explicit_bzero(dec, sizeof(dec));
  return v;
}

int access_bcrypt_ok(const char *pass, const char *hash)
{
  struct crypt_data *cd = pc_xcalloc(1, sizeof(*cd));
  const char *r = crypt_r(pass, hash, cd);
  size_t n = strlen(hash);
  int ok = r && r[0] != '*' && strlen(r) == n && CRYPTO_memcmp(r, hash, n) == 0;
  explicit_bzero(cd, sizeof(*cd));
  free(cd);
  return ok;
}

static void remember(daemon_access_t *a, const char *authz, const char *user)
{
  unsigned i = a->cache_next++ % ACCESS_CACHE;
  sha256(authz, strlen(authz), a->cache[i].key);
  snprintf(a->cache[i].user, sizeof(a->cache[i].user), "%s", user);
  a->cache[i].used = 1;
}

/* ---- the bcrypt check on the thread pool ---------------------------------------------------- */

typedef struct check {
  uv_work_t work;
  daemon_access_t *a; /* a reference */
  daemon_t *d;
  srv_req_t *req; /* NULL once the request is gone */
  reqctx_t *ctx;
  access_resume_cb resume;
  char user[ACCESS_USER_MAX];
  char pass[ACCESS_PASS_MAX];
  char hash[ACCESS_HASH_MAX];
  int ok;
} check_t;

static void check_gone(reqctx_t *ctx, void *arg)
{
  check_t *c = arg;
  (void)ctx;
  c->req = NULL;
  c->ctx = NULL;
}

static void check_work(uv_work_t *w)
{
  check_t *c = container_of(w, check_t, work);
  c->ok = access_bcrypt_ok(c->pass, c->hash);
  explicit_bzero(c->pass, sizeof(c->pass));
}

static void refuse_credentials(daemon_t *d, srv_req_t *req, int given)
{
  if (given)
    d->counters.refused_badcred++;
  else
    d->counters.refused_nocred++;
  srv_req_log(req, "refused", "credentials");
  srv_resp_header(req, "WWW-Authenticate", CHALLENGE);
  answer_error(req, PC_E_UNAUTHORIZED,
               given ? "the credentials are not valid for this mirror"
                     : "this mirror needs credentials (a token or a user and password)");
}

static void check_done(uv_work_t *w, int status)
{
  check_t *c = container_of(w, check_t, work);
  daemon_access_t *a = c->a;
  a->checks--;
  if (c->req) {
    srv_req_t *req = c->req;
    const char *authz = srv_req_header(req, "Authorization");
    reqctx_unpark(c->ctx);
    if (status == 0 && c->ok && authz) {
      /* remembered only while a is the running set (a reload replaced it: it is not) */
      if (c->d->access == a)
        remember(a, authz, c->user);
      c->d->counters.auth_ok[1]++;
      srv_req_log(req, "auth_user", c->user);
      c->ctx->access_ok = 1;
      c->resume(c->d, req);
    } else {
      refuse_credentials(c->d, req, 1);
    }
  }
  explicit_bzero(c->pass, sizeof(c->pass));
  access_creds_free(a);
  free(c);
}

/* ---- checks --------------------------------------------------------------------------------- */

static int pull_ok(const daemon_config_t *c, const char *ip)
{
  return !c->allow[0] || pc_cidr_list_match(c->allow, ip);
}

static int ops_ok(const daemon_config_t *c, const char *ip)
{
  return c->ops_allow[0] ? pc_cidr_list_match(c->ops_allow, ip) : pull_ok(c, ip);
}

int access_conn_ok(const char *ip, int tls, void *daemon)
{
  daemon_t *d = daemon;
  if (pull_ok(&d->cfg, ip) || ops_ok(&d->cfg, ip))
    return 1;
  daemon_counters_t *k = &d->counters;
  k->conns_refused++;
  uint64_t now = uv_now(d->loop);
  if (k->refuse_log_ms && now - k->refuse_log_ms < ACCESS_LOG_EVERY_MS) {
    k->refuse_log_suppressed++;
    return 0;
  }
  char q[PC_LOG_QUOTE_SIZE(64)];
  pc_log_quote(q, sizeof(q), ip[0] ? ip : "-", 64);
  pc_log(PC_LOG_NOTICE, "conn-refused peer=%s reason=allow%s suppressed=%" PRIu64, q,
         tls ? " listener=tls" : "", k->refuse_log_suppressed);
  k->refuse_log_ms = now ? now : 1;
  k->refuse_log_suppressed = 0;
  return 0;
}

/* Credentials asked on this request's listener (auth_on). */
static int auth_applies(const daemon_t *d, const srv_req_t *req)
{
  const char *on = d->cfg.auth_on;
  if (!access_creds_active(d->access))
    return 0;
  if (!strcmp(on, "tls"))
    return srv_req_is_tls(req);
  if (!strcmp(on, "plain"))
    return !srv_req_is_tls(req);
  return 1;
}

static int check_credentials(daemon_t *d, srv_req_t *req, access_resume_cb resume)
{
  reqctx_t *ctx = reqctx_of(req);
  if (ctx->access_ok || !auth_applies(d, req))
    return 1;
  char user[ACCESS_USER_MAX], pass[ACCESS_PASS_MAX];
  const char *hash, *authz = srv_req_header(req, "Authorization");
  enum access_verdict v =
      access_judge(d->access, authz, user, sizeof(user), pass, sizeof(pass), &hash);
  switch (v) {
  case ACCESS_TOKEN:
    d->counters.auth_ok[0]++;
    srv_req_log(req, "auth", "token");
    return 1;
  case ACCESS_CACHED:
    d->counters.auth_ok[2]++;
    srv_req_log(req, "auth_user", user);
    return 1;
  case ACCESS_NONE:
  case ACCESS_BAD:
    refuse_credentials(d, req, v == ACCESS_BAD);
    return 0;
  case ACCESS_BCRYPT:
    break;
  }
  if (d->access->checks >= ACCESS_MAX_CHECKS) {
    explicit_bzero(pass, sizeof(pass));
    d->counters.refused_busy++;
    srv_req_log(req, "refused", "auth-busy");
    srv_resp_header(req, "Retry-After", "1");
    answer_error(req, PC_E_UPSTREAM_UNAVAILABLE, "too many credential checks at once");
    return 0;
  }
  check_t *c = pc_xcalloc(1, sizeof(*c));
  c->a = d->access;
  c->a->refs++;
  c->a->checks++;
  c->d = d;
  c->req = req;
  c->ctx = ctx;
  c->resume = resume;
  memcpy(c->user, user, sizeof(user));
  memcpy(c->pass, pass, sizeof(pass));
  snprintf(c->hash, sizeof(c->hash), "%s", hash);
  explicit_bzero(pass, sizeof(pass));
  reqctx_park(ctx, check_gone, c);
  PC_ASSERT(uv_queue_work(d->loop, &c->work, check_work, check_done) == 0);
  return 0;
}

int access_request(daemon_t *d, srv_req_t *req, route_kind kind, access_resume_cb resume)
{
  const char *ip = srv_req_peer_ip(req);
  if (route_kind_class(kind) == ROUTE_CLASS_OPS) {
    if (ops_ok(&d->cfg, ip))
      return 1;
    d->counters.refused_ops++;
    srv_req_log(req, "refused", "ops_allow");
    answer_error(req, PC_E_DENIED, "this address may not use the operations endpoints");
    return 0;
  }
  if (!pull_ok(&d->cfg, ip)) {
    d->counters.refused_pull++;
    srv_req_log(req, "refused", "allow");
    answer_error(req, PC_E_DENIED, "this address may not pull from this mirror");
    return 0;
  }
  return check_credentials(d, req, resume);
}

void access_render(const daemon_t *d, pc_buf_t *o)
{
  const daemon_counters_t *k = &d->counters;
  pc_buf_printf(o,
                "# HELP pullcache_connections_refused_total Connections closed at accept, "
                "by reason (allow: the peer is in neither allow nor ops_allow).\n"
                "# TYPE pullcache_connections_refused_total counter\n"
                "pullcache_connections_refused_total{reason=\"allow\"} %" PRIu64 "\n",
                k->conns_refused);
  pc_buf_printf(o,
                "# HELP pullcache_requests_refused_total Requests refused by the allow-lists "
                "(403) or for their credentials (401; 503 when too many checks run).\n"
                "# TYPE pullcache_requests_refused_total counter\n"
                "pullcache_requests_refused_total{reason=\"allow\"} %" PRIu64 "\n"
                "pullcache_requests_refused_total{reason=\"ops_allow\"} %" PRIu64 "\n"
                "pullcache_requests_refused_total{reason=\"no_credentials\"} %" PRIu64 "\n"
                "pullcache_requests_refused_total{reason=\"bad_credentials\"} %" PRIu64 "\n"
                "pullcache_requests_refused_total{reason=\"auth_busy\"} %" PRIu64 "\n",
                k->refused_pull, k->refused_ops, k->refused_nocred, k->refused_badcred,
                k->refused_busy);
  pc_buf_printf(o,
                "# HELP pullcache_auth_accepted_total Pull requests let in by their credentials "
                "(htpasswd: after a bcrypt check; cached: a credential that passed before).\n"
                "# TYPE pullcache_auth_accepted_total counter\n"
                "pullcache_auth_accepted_total{method=\"token\"} %" PRIu64 "\n"
                "pullcache_auth_accepted_total{method=\"htpasswd\"} %" PRIu64 "\n"
                "pullcache_auth_accepted_total{method=\"cached\"} %" PRIu64 "\n",
                k->auth_ok[0], k->auth_ok[1], k->auth_ok[2]);
}
