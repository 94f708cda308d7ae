/* http/up_auth — authentication of the upstream client (see http/up.h for the rules, and
 * http/up-int.h for how the three files of http/up share the work).
 *
 * Bearer: a 401 whose WWW-Authenticate holds a Bearer challenge with a realm is answered with a
 * token for (host key of the challenging server, scope, credentials). up__auth_answer retries
 * at once with a cached token another fetch got meanwhile; otherwise it starts a token fetch:
 * a fetch of kind UP__FETCH_TOKEN (up__fetch_start with the parent), GET <realm>?service=&scope=,
 * whose body is collected in child->body (capped) and whose on_done (token_done) parses the
 * token, caches it, notes the scope hint and restarts the parent's hop with it. The parent is
 * in UP__F_TOKEN meanwhile. A token that was just fetched and is refused again makes the 401
 * final (f->fresh_auth); a refused cached token is dropped from the cache and a new one fetched.
 *
 * Hints: once a repository path (/v2/<name>/) of a host needed a scope, later hops to it send
 * the cached token for that scope at once (up__auth_proactive_token) instead of taking a 401.
 *
 * Credentials: a token is cached under the SHA-256 of the userpwd it was fetched with (all
 * zero for anonymous). hop_cred decides whose tokens a hop uses: the fetch's own only on the
 * registry host (origin), so a challenge from a host we were redirected to never pulls the
 * credentials to its realm. Basic goes only where f->basic_host says: the realm, for a token
 * fetch; the registry, once it asked for Basic (up__auth_basic, once per fetch). curl encodes
 * it (CURLOPT_USERPWD, in up.c's hop_start).
 *
 * Cache bounds: at most UP__CACHE_MAX tokens and as many hints, newest first; expired tokens go
 * whenever one is stored.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/num.h"
#include "core/pc.h"
#include "http/up-int.h"

#define UP_TOKEN_SKEW_MS 5000
#define UP_PATH_MAX 1024

struct token {
  pc_list_t link; /* in u->tokens */
  char *host;
  char *scope;
  unsigned char cred[UP__CRED_LEN]; /* whose token: all zero for anonymous */
  char *value;
  uint64_t expires; /* uv_now ms */
};

struct hint {
  pc_list_t link; /* in u->hints */
  char *host;
  char *path;
  char *scope;
};

/* ---------------------------------------------------------------------------------------- */
/* Pure helpers (up-int.h)                                                                   */

static int is_tchar(int c)
{
  return c && (isalnum((unsigned char)c) || strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static const char *skip_ws(const char *p)
{
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

static void challenge_param(up__challenge_t *c, const char *name, size_t nlen, const char *val)
{
  char **slot = NULL;
  if (nlen == 5 && strncasecmp(name, "realm", 5) == 0)
    slot = &c->realm;
  else if (nlen == 7 && strncasecmp(name, "service", 7) == 0)
    slot = &c->service;
  else if (nlen == 5 && strncasecmp(name, "error", 5) == 0)
    slot = &c->error;
  else if (nlen == 5 && strncasecmp(name, "scope", 5) == 0)
    slot = &c->scope;
  if (!slot || !*val)
    return;
  if (*slot && slot == &c->scope) {
    /* A repeated scope parameter adds scopes. */
    size_t a = strlen(*slot), b = strlen(val);
    char *s = pc_xmalloc(a + b + 2);
    memcpy(s, *slot, a);
    s[a] = ' ';
    memcpy(s + a + 1, val, b + 1);
    free(*slot);
    *slot = s;
  } else if (!*slot) {
    *slot = pc_xstrdup(val);
  }
}

/* Walk the challenges of a WWW-Authenticate value: on_scheme for every auth-scheme (a token
 * not followed by '='; non-zero stops the walk), on_param (may be NULL) for every auth-param.
 * The tail of a token68 ("Negotiate abc==") parses as a parameter. */
static void challenge_walk(const char *s, int (*on_scheme)(void *arg, const char *name, size_t n),
                           void (*on_param)(void *arg, const char *name, size_t n, const char *v),
                           void *arg)
{
  const char *p = s;
  char *val = pc_xmalloc(strlen(s) + 1);

  while (*p) {
    const char *name, *q;
    size_t nlen, vlen = 0;
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (!*p)
      break;
    name = p;
    while (is_tchar(*p))
      p++;
    nlen = (size_t)(p - name);
    if (nlen == 0) {
      p++; /* a stray character */
      continue;
    }
    q = skip_ws(p);
    if (*q != '=') {
      if (on_scheme(arg, name, nlen))
        break;
      continue;
    }
    p = skip_ws(q + 1);
    if (*p == '"') {
      p++;
      while (*p && *p != '"') {
        if (*p == '\\' && p[1])
          p++;
        val[vlen++] = *p++;
      }
      if (*p == '"')
        p++;
    } else {
      while (*p && *p != ',' && *p != ' ' && *p != '\t')
        val[vlen++] = *p++;
    }
    val[vlen] = '\0';
    if (on_param)
      on_param(arg, name, nlen, val);
    while (*p && *p != ',')
      p++;
  }
  free(val);
}

struct bearer_walk {
  up__challenge_t *out;
  int bearer; /* inside a Bearer challenge */
  int found;
};

static int bearer_on_scheme(void *arg, const char *name, size_t nlen)
{
  struct bearer_walk *w = arg;
  if (w->found)
    return 1; /* the first Bearer challenge is complete */
  w->bearer = nlen == 6 && strncasecmp(name, "Bearer", 6) == 0;
  w->found = w->bearer;
  return 0;
}

static void bearer_on_param(void *arg, const char *name, size_t nlen, const char *val)
{
  struct bearer_walk *w = arg;
  if (w->bearer)
    challenge_param(w->out, name, nlen, val);
}

int up__challenge_parse(const char *s, up__challenge_t *out)
{
  struct bearer_walk w = {.out = out};

  memset(out, 0, sizeof(*out));
  challenge_walk(s, bearer_on_scheme, bearer_on_param, &w);
  if (!w.found) {
    up__challenge_free(out);
    return PC_E_NOTFOUND;
  }
  return 0;
}

struct scheme_walk {
  const char *scheme;
  size_t len;
  int found;
};

static int scheme_on_scheme(void *arg, const char *name, size_t nlen)
{
  struct scheme_walk *w = arg;
  w->found = nlen == w->len && strncasecmp(name, w->scheme, nlen) == 0;
  return w->found;
}

int up__challenge_has(const char *value, const char *scheme)
{
  struct scheme_walk w = {.scheme = scheme, .len = strlen(scheme)};
  challenge_walk(value, scheme_on_scheme, NULL, &w);
  return w.found;
}

void up__challenge_free(up__challenge_t *c)
{
  free(c->realm);
  free(c->service);
  free(c->scope);
  free(c->error);
  memset(c, 0, sizeof(*c));
}

/* Append "<sep><key>=<escaped value>" to the buffer at *pos (sized by the caller). */
static void url_param(char *buf, size_t *pos, char *sep, const char *key, const char *v,
                      size_t vlen)
{
  char *esc = curl_easy_escape(NULL, v, (int)vlen);
  size_t klen = strlen(key), elen;
  PC_ASSERT(esc);
  elen = strlen(esc);
  buf[(*pos)++] = *sep;
  memcpy(buf + *pos, key, klen);
  *pos += klen;
  buf[(*pos)++] = '=';
  memcpy(buf + *pos, esc, elen);
  *pos += elen;
  curl_free(esc);
  *sep = '&';
}

char *up__token_url(const char *realm, const char *service, const char *scope)
{
  char key[UP__HOSTKEY_MAX];
  size_t rlen, cap, pos;
  char *buf, sep;
  const char *p;

  if (!realm || up__host_key(realm, key, sizeof(key)) != 0)
    return NULL;
  rlen = strlen(realm);
  /* Every byte escapes to at most 3; each scope adds "&scope=". */
  cap = rlen + 16 + (service ? 3 * strlen(service) : 0) + (scope ? 10 * strlen(scope) : 0);
  buf = pc_xmalloc(cap + 1);
  memcpy(buf, realm, rlen);
  pos = rlen;
  sep = strchr(realm, '?') ? '&' : '?';
  if (service)
    url_param(buf, &pos, &sep, "service", service, strlen(service));
  for (p = scope; p && *p;) {
    size_t n;
    while (*p == ' ')
      p++;
    n = strcspn(p, " ");
    if (n)
      url_param(buf, &pos, &sep, "scope", p, n);
    p += n;
  }
  PC_ASSERT(pos <= cap);
  buf[pos] = '\0';
  return buf;
}

int up__token_parse(const char *buf, size_t len, int64_t now_sec, char **token, uint64_t *ttl_ms)
{
  int rc = PC_E_UPSTREAM;
  json_t *root = json_loadb(buf, len, 0, NULL);
  json_t *v;
  const char *tok = NULL;
  int64_t expires = 60, age = 0;

  *token = NULL;
  *ttl_ms = 0;
  if (!json_is_object(root))
    goto out;
  v = json_object_get(root, "token");
  if (json_is_string(v) && json_string_length(v) > 0)
    tok = json_string_value(v);
  v = json_object_get(root, "access_token");
  if (!tok && json_is_string(v) && json_string_length(v) > 0)
    tok = json_string_value(v);
  if (!tok || strlen(tok) > UP__TOKEN_MAX)
    goto out;
  for (const char *c = tok; *c; c++)
    if ((unsigned char)*c < 0x21 || *c == 0x7f)
      goto out;
  v = json_object_get(root, "expires_in");
  if (json_is_integer(v) && json_integer_value(v) > 0)
    expires = json_integer_value(v);
  v = json_object_get(root, "issued_at");
  if (json_is_string(v)) {
    struct tm tm;
    const char *end;
    memset(&tm, 0, sizeof(tm));
    end = strptime(json_string_value(v), "%Y-%m-%dT%H:%M:%S", &tm);
    if (end) {
      int64_t issued = (int64_t)timegm(&tm);
      if (issued > 0 && issued <= now_sec)
        age = now_sec - issued;
    }
  }
  if (expires > 365 * 86400)
    expires = 365 * 86400;
  if (age < expires && (expires - age) * 1000 > UP_TOKEN_SKEW_MS)
    *ttl_ms = (uint64_t)((expires - age) * 1000 - UP_TOKEN_SKEW_MS);
  *token = pc_xstrdup(tok);
  rc = 0;
out:
  json_decref(root);
  return rc;
}

int up__host_key(const char *url, char *out, size_t n)
{
  int rc = PC_E_UPSTREAM;
  CURLU *h = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int len;

  PC_ASSERT(h);
  if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK)
    goto out;
  if (curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
    goto out;
  if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
    goto out;
  len = snprintf(out, n, "%s://%s:%s", scheme, host, port);
  if (len < 0 || (size_t)len >= n)
    goto out;
  for (char *c = out; *c; c++)
    *c = (char)tolower((unsigned char)*c);
  rc = 0;
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(h);
  return rc;
}

int up__repo_path(const char *url, char *out, size_t n)
{
  int rc = PC_E_NOTFOUND;
  CURLU *h = curl_url();
  char *path = NULL;
  size_t len;
  int cut = 0;

  PC_ASSERT(h);
  if (curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK ||
      curl_url_get(h, CURLUPART_PATH, &path, 0) != CURLUE_OK)
    goto out;
  if (strncmp(path, "/v2/", 4) != 0)
    goto out;
  len = strlen(path);
  /* Drop the last two segments: "/v2/a/b/manifests/x" -> "/v2/a/b/". */
  while (len > 0 && cut < 2) {
    len--;
    while (len > 0 && path[len - 1] != '/')
      len--;
    cut++;
  }
  if (cut < 2 || len <= 4 || len >= n)
    goto out;
  memcpy(out, path, len);
  out[len] = '\0';
  rc = 0;
out:
  curl_free(path);
  curl_url_cleanup(h);
  return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* Token cache and path hints                                                                */

static int token_is(const struct token *t, const char *host, const char *scope,
                    const unsigned char *cred)
{
  return strcmp(t->host, host) == 0 && strcmp(t->scope, scope) == 0 &&
         memcmp(t->cred, cred, UP__CRED_LEN) == 0;
}

static struct token *token_find(up_t *u, const char *host, const char *scope,
                                const unsigned char *cred)
{
  uint64_t now = uv_now(u->loop);
  pc_list_foreach(it, &u->tokens)
  {
    struct token *t = pc_list_entry(it, struct token, link);
    if (t->expires > now && token_is(t, host, scope, cred))
      return t;
  }
  return NULL;
}

const char *up__token_get(up_t *u, const char *host, const char *scope, const unsigned char *cred)
{
  struct token *t = token_find(u, host, scope, cred);
  return t ? t->value : NULL;
}

static void token_free(up_t *u, struct token *t)
{
  pc_list_remove(&t->link);
  u->ntokens--;
  free(t->host);
  free(t->scope);
  free(t->value);
  free(t);
}

/* Drop expired entries and the one for (host, scope, cred); then keep at most
 * UP__CACHE_MAX - 1. */
static void token_prune(up_t *u, const char *host, const char *scope, const unsigned char *cred)
{
  uint64_t now = uv_now(u->loop);
  size_t kept = 0;
  pc_list_foreach_safe(it, nx, &u->tokens)
  {
    struct token *t = pc_list_entry(it, struct token, link);
    if (t->expires <= now || kept >= UP__CACHE_MAX - 1 || token_is(t, host, scope, cred))
      token_free(u, t);
    else
      kept++;
  }
}

void up__token_store(up_t *u, const char *host, const char *scope, const unsigned char *cred,
                     const char *value, uint64_t ttl_ms)
{
  struct token *t;
  token_prune(u, host, scope, cred);
  if (ttl_ms == 0)
    return;
  t = pc_xcalloc(1, sizeof(*t));
  t->host = pc_xstrdup(host);
  t->scope = pc_xstrdup(scope);
  memcpy(t->cred, cred, UP__CRED_LEN);
  t->value = pc_xstrdup(value);
  t->expires = uv_now(u->loop) + ttl_ms;
  pc_list_push_front(&u->tokens, &t->link);
  u->ntokens++;
}

const char *up__hint_find(up_t *u, const char *host, const char *path)
{
  pc_list_foreach(it, &u->hints)
  {
    struct hint *h = pc_list_entry(it, struct hint, link);
    if (strcmp(h->host, host) == 0 && strcmp(h->path, path) == 0)
      return h->scope;
  }
  return NULL;
}

static void hint_free(up_t *u, struct hint *h)
{
  pc_list_remove(&h->link);
  u->nhints--;
  free(h->host);
  free(h->path);
  free(h->scope);
  free(h);
}

void up__hint_store(up_t *u, const char *host, const char *url, const char *scope)
{
  char path[UP_PATH_MAX];
  struct hint *h;
  size_t kept = 0;

  if (up__repo_path(url, path, sizeof(path)) != 0)
    return;
  pc_list_foreach_safe(it, nx, &u->hints)
  {
    h = pc_list_entry(it, struct hint, link);
    if (kept >= UP__CACHE_MAX - 1 || (strcmp(h->host, host) == 0 && strcmp(h->path, path) == 0))
      hint_free(u, h);
    else
      kept++;
  }
  h = pc_xcalloc(1, sizeof(*h));
  h->host = pc_xstrdup(host);
  h->path = pc_xstrdup(path);
  h->scope = pc_xstrdup(scope);
  pc_list_push_front(&u->hints, &h->link);
  u->nhints++;
}

void up__auth_free_cache(up_t *u)
{
  pc_list_t *l;
  while ((l = pc_list_first(&u->tokens)))
    token_free(u, pc_list_entry(l, struct token, link));
  while ((l = pc_list_first(&u->hints)))
    hint_free(u, pc_list_entry(l, struct hint, link));
}

/* ---------------------------------------------------------------------------------------- */
/* Credentials                                                                               */

static const unsigned char anonymous[UP__CRED_LEN];

void up__auth_set_cred(up_fetch_t *f, const char *userpwd)
{
  unsigned int n = 0;
  f->userpwd = pc_xstrdup(userpwd);
  PC_ASSERT(EVP_Digest(f->userpwd, strlen(f->userpwd), f->cred, &n, EVP_sha256(), NULL) == 1 &&
            n == UP__CRED_LEN);
}

/* Whose tokens this hop uses: the fetch's credentials when it is on the registry host (the
 * only host whose challenges may send them to a realm), else anonymous. */
static const unsigned char *hop_cred(const struct up_fetch *f)
{
  return f->userpwd && strcmp(f->hostkey, f->origin) == 0 ? f->cred : anonymous;
}

const char *up__auth_proactive_token(up_fetch_t *f)
{
  char path[UP_PATH_MAX];
  const char *scope;
  struct token *t;
  if (f->kind == UP__FETCH_TOKEN || f->no_auth || up__repo_path(f->url, path, sizeof(path)) != 0)
    return NULL;
  scope = up__hint_find(f->u, f->hostkey, path);
  if (!scope)
    return NULL;
  t = token_find(f->u, f->hostkey, scope, hop_cred(f));
  return t ? t->value : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Challenges and the token fetch                                                            */

/* A Bearer challenge wins over a Basic one; Basic is answered once, and only for the registry
 * host itself. */
enum up__hop up__auth_classify(up_fetch_t *f)
{
  int basic = 0;
  up__challenge_free(&f->chal);
  for (size_t i = 0; i < f->nhdrs; i++) {
    if (strcasecmp(f->hdrs[i].name, "WWW-Authenticate") != 0)
      continue;
    if (up__challenge_parse(f->hdrs[i].value, &f->chal) == 0 && f->chal.realm)
      return f->fresh_auth ? UP__HOP_FINAL : UP__HOP_AUTH;
    up__challenge_free(&f->chal);
    if (up__challenge_has(f->hdrs[i].value, "Basic"))
      basic = 1;
  }
  if (basic && f->userpwd && !f->basic_host[0] && strcmp(f->hostkey, f->origin) == 0)
    return UP__HOP_BASIC;
  return UP__HOP_FINAL;
}

void up__auth_basic(up_fetch_t *f)
{
  pc_strlcpy(f->basic_host, sizeof(f->basic_host), f->hostkey);
  up__hop_next(f, NULL);
}

/* Body bytes of a token fetch: kept, up to UP__TOKEN_BODY_MAX. */
static int token_data(up_fetch_t *child, const char *buf, size_t len, void *arg)
{
  (void)arg;
  return pc_buf_add(&child->body, buf, len) == 0 ? 0 : PC_E_UPSTREAM;
}

/* The token fetch ended: parse its answer, cache it, retry the parent with it. */
static void token_done(up_fetch_t *child, int rc, int status, void *arg)
{
  struct up_fetch *f = arg;
  up_t *u = f->u;
  const char *scope = f->chal.scope ? f->chal.scope : "";
  char *token = NULL;
  uint64_t ttl = 0;

  PC_ASSERT(child->kind == UP__FETCH_TOKEN && f->child == child && f->state == UP__F_TOKEN);
  f->child = NULL;
  f->token_ns += uv_hrtime() - f->t_token;
  if (rc < 0) {
    up__fetch_fail(f, rc, status);
    return;
  }
  if (status != 200 ||
      up__token_parse(child->body.p, child->body.len, pc_now_sec(), &token, &ttl) != 0) {
    char q[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];
    pc_log_quote(q, sizeof(q), child->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-token-failed url=%s status=%d", q, status);
    up__fetch_fail(f, PC_E_UPSTREAM, status);
    return;
  }
  u->stats.tokens++;
  if (f->pool)
    f->pool->stats.tokens++;
  up__token_store(u, f->hostkey, scope, hop_cred(f), token, ttl);
  up__hint_store(u, f->hostkey, f->url, scope);
  f->fresh_auth = 1;
  up__hop_next(f, token);
  free(token);
}

void up__auth_answer(up_fetch_t *f)
{
  up_t *u = f->u;
  const char *scope = f->chal.scope ? f->chal.scope : "";
  const unsigned char *cred = hop_cred(f);
  struct token *t = token_find(u, f->hostkey, scope, cred);
  up_req_t req;
  char *url;
  int rc;

  if (t && (!f->sent_token || strcmp(t->value, f->sent_token) != 0)) {
    /* Another fetch got a token for this scope meanwhile. */
    up__hop_next(f, t->value);
    return;
  }
  if (t)
    token_prune(u, f->hostkey, scope, cred); /* rejected: never offer it again */
  url = up__token_url(f->chal.realm, f->chal.service, f->chal.scope);
  if (!url) {
    char q[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];
    pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-bad-token-realm url=%s", q);
    up__fetch_fail(f, PC_E_UPSTREAM, f->status);
    return;
  }
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.url = url;
  req.accept = "application/json";
  req.ca_file = f->ca_file;
  req.userpwd = cred == anonymous ? NULL : f->userpwd; /* to the realm host only */
  req.pool = f->pool; /* for the stats: the parent's slot covers it */
  req.on_data = token_data;
  req.on_done = token_done;
  req.arg = f;
  f->t_token = uv_hrtime();
  rc = up__fetch_start(u, &req, f, &f->child);
  free(url);
  if (rc) {
    up__fetch_fail(f, rc, 0);
    return;
  }
  f->token_fetches++;
  f->state = UP__F_TOKEN;
  uv_timer_stop(&f->timer); /* the child has timers of its own */
}
