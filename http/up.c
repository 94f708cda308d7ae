/* http/up — the upstream HTTP client: one libcurl multi handle driven by the libuv loop.
 *
 * Wiring (curl multi_socket API): curl tells us which sockets to watch (on_curl_socket: one
 * uv_poll_t per socket, attached with curl_multi_assign) and when to call it back
 * (on_curl_timer: the one uv_timer_t of up_t). Readiness and timer expiry go back into
 * curl_multi_socket_action; after each call check_multi_info drains the finished transfers.
 * curl_multi_socket_action is never called from inside a curl callback.
 *
 * A fetch is a series of hops, one curl transfer each, on the same easy handle. curl does not
 * follow redirects (we do, so a token never crosses hosts) and the header callback classifies
 * each response when its header block ends:
 *
 *   up_fetch_start ──▶ RUNNING ──(3xx + Location: next hop, at most max_redirects)──▶ RUNNING
 *        │               │  ├──(401 Bearer: cached token, or fetch one)──▶ TOKEN ──▶ RUNNING
 *        │               │  └──(401 Basic from the registry host, userpwd, once)──▶ RUNNING
 *        │               └──(final response complete / transport error / timeout)──▶ DONE
 *        └──(pool: no slot, no rate token, or a queue)──▶ QUEUED ──(pool_dispatch)──▶ RUNNING
 *   DONE: on_done runs, then the fetch is released: easy handle freed, timer closed, the memory
 *         freed in the timer's close callback.
 *   up_fetch_cancel (any state): no more callbacks; the release happens at once, or from the
 *         idle handle when we are inside a curl callback (curl forbids removing handles there).
 *         A queued fetch leaves the queue at once in any case.
 *
 * The token fetch is an internal fetch (same machinery, no auth of its own) whose on_done
 * resumes its parent. Tokens are cached per (host key of the challenging server, scope,
 * credentials); a per-(host, repository path) hint remembers which scope a path needed, so
 * later requests for the same repository send the cached token at once instead of taking a
 * 401 round trip.
 *
 * Credentials: a token is cached under the SHA-256 of the userpwd it was fetched with (all
 * zero for anonymous). hop_cred decides whose tokens a hop uses: the fetch's own only on the
 * registry host (origin), so a challenge from a host we were redirected to never pulls the
 * credentials to its realm. Basic goes only where basic_host says: the realm, for a token
 * fetch; the registry, once it asked for Basic. curl encodes it (CURLOPT_USERPWD).
 *
 * Timeouts: curl enforces connect_timeout_ms. Each fetch has one uv_timer_t: in the header
 * phase it fires first_byte ms after the request went out (CURLOPT_PREREQFUNCTION; until then
 * it is armed for connect + first_byte as a backstop); in the body phase it checks that some
 * bytes arrived in the last stall_timeout_ms.
 *
 * Pools: a fetch with a pool takes a slot (max_active) and a rate token (a bucket refilled
 * from uv_hrtime, so the refill is exact whatever the loop's cached time) when it starts, or
 * waits in the pool's FIFO queue. The slot is given back in fetch_release. Queues move only
 * from the loop: pool_kick marks the pool and starts the idle handle, whose run_kicks calls
 * pool_dispatch, which may start fetches and so call on_done (a fetch curl refuses); hence
 * never from a caller's stack. A queue that waits for a rate token only notes when it is due
 * (wake_ns); the one pool_timer of up_t is armed for the earliest of those. Every fetch holds
 * a reference on its pool (token fetches too, for the stats); a pool is freed when its owner
 * released it and the last reference went, or in teardown.
 *
 * Timings (up_fetch_timings) are uv_hrtime stamps kept in ns: t_created in up_fetch_start,
 * t_begin when the fetch starts (leaves the queue; queue_ns is the difference),
 * t_hop per hop (a hop that ends as a redirect or an answered 401 adds to redirect_ns), t_token
 * around the token fetch; first_byte_ns is set when the final header block ends.
 */
#include "http/up.h"

#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/pc.h"
#include "http/up-int.h"

#define UP_HDR_MAX_BYTES (64 * 1024) /* header block of one response */
#define UP_HDR_MAX_COUNT 128
#define UP_TOKEN_BODY_MAX (64 * 1024) /* token endpoint response */
#define UP_TOKEN_MAX (16 * 1024)
#define UP_TOKEN_SKEW_MS 5000
#define UP_CACHE_MAX 256 /* tokens, and path hints */
#define UP_PATH_MAX 1024
#define UP_CRED_LEN 32 /* SHA-256 of userpwd: the token cache's credentials key */
#define UP_LOG_URL_MAX 1024 /* URLs in log lines are cut here (see pc_log_quote) */
#define UP_LOG_ERR_MAX 256  /* and curl's error text */

enum fetch_state {
  F_QUEUED,  /* waiting in its pool's queue: no easy handle in use, no timer running */
  F_RUNNING, /* a hop is in flight (easy handle in the multi, or about to be added) */
  F_TOKEN,   /* waiting for the token fetch (child) */
  F_DONE,    /* on_done called (or being called); release follows */
};

enum hop_kind {
  HOP_PENDING,  /* header block not complete yet */
  HOP_REDIRECT, /* 3xx with Location: body discarded, next hop follows */
  HOP_AUTH,     /* 401 with a Bearer challenge: body discarded, retried with a token */
  HOP_BASIC,    /* 401 with a Basic challenge from the registry: retried once with userpwd */
  HOP_FINAL,    /* what the user sees */
};

struct hdr {
  char *name;
  char *value;
};

struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  up_t *u;
  struct sock_ctx *prev, *next;
};

struct token {
  struct token *next;
  char *host;
  char *scope;
  unsigned char cred[UP_CRED_LEN]; /* whose token: all zero for anonymous */
  char *value;
  uint64_t expires; /* uv_now ms */
};

struct hint {
  struct hint *next;
  char *host;
  char *path;
  char *scope;
};

struct up_pool {
  up_t *u;
  struct up_pool *prev, *next;
  char *name;
  unsigned max_active; /* 0: unlimited */
  double rate;         /* starts per second; 0: unlimited */
  double burst;        /* bucket size */
  double tokens;       /* rate tokens in the bucket */
  uint64_t refill_ns;  /* uv_hrtime of the last refill */
  uint64_t wake_ns;    /* queued fetches wait for the token due then (0: not for a token) */
  struct up_fetch *qhead, *qtail;
  unsigned refs; /* fetches using the pool (queued, running, token fetches), dispatch running */
  int released;  /* the owner let go: freed when refs drops to 0 */
  int kick;      /* dispatch from the idle handle */
  up_pool_stats_t stats; /* active and queued are kept up to date in here */
};

struct up {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;      /* curl's timeout */
  uv_idle_t idle;        /* deferred work: releases, handle adds, pool dispatch, teardown */
  uv_timer_t pool_timer; /* the earliest rate token any pool queue waits for */
  long connect_timeout_ms;
  long first_byte_timeout_ms;
  long stall_timeout_ms;
  int max_redirects;
  char *user_agent;
  struct up_fetch *fetches; /* every fetch not yet released */
  struct up_fetch *defer_head, *defer_tail;
  struct sock_ctx *socks;
  struct token *tokens;
  size_t ntokens;
  struct hint *hints;
  size_t nhints;
  up_stats_t stats;
  struct up_pool *pools;
  int kick_pending; /* some pool wants a dispatch */
  int in_curl_cb;   /* depth of curl callbacks on the stack */
  int closing;
  int torn_down;
  int handles; /* uv handles not yet closed */
  void (*close_cb)(void *arg);
  void *close_arg;
};

struct up_fetch {
  up_t *u;
  struct up_fetch *prev, *next;
  struct up_fetch *defer_next;
  int deferred;
  enum fetch_state state;
  struct up_pool *pool;           /* NULL: none; token fetches point at their parent's */
  struct up_fetch *qprev, *qnext; /* in pool's queue while queued */
  int queued;                     /* in pool's queue (state F_QUEUED until the release) */
  int slot;                       /* holds one of pool's max_active slots */
  CURL *easy;
  int attached;    /* easy handle is in the multi */
  int add_pending; /* easy handle to be added from the idle handle */
  int released;
  uv_timer_t timer; /* first byte / stall; its close callback frees the fetch */
  char errbuf[CURL_ERROR_SIZE];
  /* the request */
  int head;
  char *url; /* current hop */
  char *accept;
  uint64_t range_from;
  char *ca_file;
  char *userpwd;                   /* NULL: anonymous */
  unsigned char cred[UP_CRED_LEN]; /* SHA-256 of userpwd, all zero when anonymous */
  int no_auth;
  char origin[UP__HOSTKEY_MAX];     /* host key of the request URL: the registry */
  char basic_host[UP__HOSTKEY_MAX]; /* Basic credentials go to this host ("": nowhere) */
  int basic_tried;                  /* the registry's Basic challenge was answered */
  up_headers_cb on_headers;
  up_data_cb on_data;
  up_done_cb on_done;
  void *arg;
  /* the current hop */
  int redirects;
  enum hop_kind kind;
  int body_phase; /* header block complete: the stall timer runs */
  int status;
  struct hdr *hdrs;
  size_t nhdrs, hdrs_cap, hdr_bytes;
  struct curl_slist *slist;
  char hostkey[UP__HOSTKEY_MAX];
  char *sent_token; /* Bearer token sent on this hop */
  int fresh_auth;   /* a freshly fetched token was already tried on this host */
  up__challenge_t chal;
  uint64_t last_activity;
  /* flags */
  int cancelled;
  int headers_delivered;
  int abort_rc;
  /* token fetch */
  int internal;
  struct up_fetch *child; /* token fetch in flight */
  char *body;             /* internal fetches: the response body */
  size_t body_len;
  /* timings (uv_hrtime ns) */
  uint64_t t_created; /* up_fetch_start */
  uint64_t t_begin;   /* the fetch started (left the queue) */
  uint64_t t_hop;     /* the current hop started */
  uint64_t t_token;   /* the token fetch in flight started */
  uint64_t queue_ns, token_ns, redirect_ns, first_byte_ns, last_byte_ns;
  unsigned hops, token_fetches;
};

/* Forward declarations, in the order things happen. */
static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp);
static int on_curl_timer(CURLM *m, long timeout_ms, void *userp);
static void on_up_timer(uv_timer_t *t);
static void on_poll(uv_poll_t *p, int status, int events);
static int on_curl_prereq(void *arg, char *ip, char *local_ip, int port, int local_port);
static size_t on_curl_header(char *buf, size_t size, size_t n, void *arg);
static size_t on_curl_write(char *buf, size_t size, size_t n, void *arg);
static void on_fetch_timer(uv_timer_t *t);
static void check_multi_info(up_t *u);
static void on_hop_done(struct up_fetch *f, CURLcode res);
static void on_token_data_done(up_fetch_t *child, int rc, int status, void *arg);
static void on_idle(uv_idle_t *h);
static void on_fetch_closed(uv_handle_t *h);
static void on_sock_closed(uv_handle_t *h);
static void on_up_handle_closed(uv_handle_t *h);
static void on_pool_timer(uv_timer_t *t);

static int hop_start(struct up_fetch *f, const char *token);
static void fetch_finish(struct up_fetch *f, int rc, int status);
static void fetch_release(struct up_fetch *f);
static void queue_remove(struct up_pool *p, struct up_fetch *f);
static void pool_kick(struct up_pool *p);
static void pool_unref(struct up_pool *p);
static void pool_free(struct up_pool *p);
static void run_kicks(up_t *u);
static void teardown(up_t *u);

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
  if (!tok || strlen(tok) > UP_TOKEN_MAX)
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
         memcmp(t->cred, cred, UP_CRED_LEN) == 0;
}

static struct token *token_find(up_t *u, const char *host, const char *scope,
                                const unsigned char *cred)
{
  uint64_t now = uv_now(u->loop);
  for (struct token *t = u->tokens; t; t = t->next)
    if (t->expires > now && token_is(t, host, scope, cred))
      return t;
  return NULL;
}

static void token_free(struct token *t)
{
  free(t->host);
  free(t->scope);
  free(t->value);
  free(t);
}

/* Drop expired entries and the one for (host, scope, cred); then keep at most
 * UP_CACHE_MAX - 1. */
static void token_prune(up_t *u, const char *host, const char *scope, const unsigned char *cred)
{
  uint64_t now = uv_now(u->loop);
  size_t kept = 0;
  for (struct token **pp = &u->tokens; *pp;) {
    struct token *t = *pp;
    int drop = t->expires <= now || kept >= UP_CACHE_MAX - 1 || token_is(t, host, scope, cred);
    if (drop) {
      *pp = t->next;
      token_free(t);
      u->ntokens--;
    } else {
      kept++;
      pp = &t->next;
    }
  }
}

static void token_store(up_t *u, const char *host, const char *scope, const unsigned char *cred,
                        const char *value, uint64_t ttl_ms)
{
  struct token *t;
  token_prune(u, host, scope, cred);
  if (ttl_ms == 0)
    return;
  t = pc_xcalloc(1, sizeof(*t));
  t->host = pc_xstrdup(host);
  t->scope = pc_xstrdup(scope);
  memcpy(t->cred, cred, UP_CRED_LEN);
  t->value = pc_xstrdup(value);
  t->expires = uv_now(u->loop) + ttl_ms;
  t->next = u->tokens;
  u->tokens = t;
  u->ntokens++;
}

static const char *hint_find(up_t *u, const char *host, const char *path)
{
  for (struct hint *h = u->hints; h; h = h->next)
    if (strcmp(h->host, host) == 0 && strcmp(h->path, path) == 0)
      return h->scope;
  return NULL;
}

static void hint_free(struct hint *h)
{
  free(h->host);
  free(h->path);
  free(h->scope);
  free(h);
}

static void hint_store(up_t *u, const char *host, const char *url, const char *scope)
{
  char path[UP_PATH_MAX];
  struct hint *h;
  size_t kept = 0;

  if (up__repo_path(url, path, sizeof(path)) != 0)
    return;
  for (struct hint **pp = &u->hints; *pp;) {
    h = *pp;
    if (kept >= UP_CACHE_MAX - 1 || (strcmp(h->host, host) == 0 && strcmp(h->path, path) == 0)) {
      *pp = h->next;
      hint_free(h);
      u->nhints--;
    } else {
      kept++;
      pp = &h->next;
    }
  }
  h = pc_xcalloc(1, sizeof(*h));
  h->host = pc_xstrdup(host);
  h->path = pc_xstrdup(path);
  h->scope = pc_xstrdup(scope);
  h->next = u->hints;
  u->hints = h;
  u->nhints++;
}

static const unsigned char anonymous[UP_CRED_LEN];

/* Whose tokens this hop uses: the fetch's credentials when it is on the registry host (the
 * only host whose challenges may send them to a realm), else anonymous. */
static const unsigned char *hop_cred(const struct up_fetch *f)
{
  return f->userpwd && strcmp(f->hostkey, f->origin) == 0 ? f->cred : anonymous;
}

/* A cached token to send proactively on this hop, or NULL. */
static const char *proactive_token(struct up_fetch *f)
{
  char path[UP_PATH_MAX];
  const char *scope;
  struct token *t;
  if (f->internal || f->no_auth || up__repo_path(f->url, path, sizeof(path)) != 0)
    return NULL;
  scope = hint_find(f->u, f->hostkey, path);
  if (!scope)
    return NULL;
  t = token_find(f->u, f->hostkey, scope, hop_cred(f));
  return t ? t->value : NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Response headers                                                                          */

static void hdrs_reset(struct up_fetch *f)
{
  for (size_t i = 0; i < f->nhdrs; i++) {
    free(f->hdrs[i].name);
    free(f->hdrs[i].value);
  }
  f->nhdrs = 0;
  f->hdr_bytes = 0;
}

static const char *hdr_get(const struct up_fetch *f, const char *name)
{
  for (size_t i = 0; i < f->nhdrs; i++)
    if (strcasecmp(f->hdrs[i].name, name) == 0)
      return f->hdrs[i].value;
  return NULL;
}

/* Trim spaces and tabs on both sides of [*s, *s + *n). */
static void trim(const char **s, size_t *n)
{
  while (*n && (**s == ' ' || **s == '\t')) {
    (*s)++;
    (*n)--;
  }
  while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
    (*n)--;
}

static int hdr_add(struct up_fetch *f, const char *line, size_t len)
{
  const char *colon = memchr(line, ':', len), *name = line, *val;
  size_t nlen, vlen;

  f->hdr_bytes += len;
  if (f->hdr_bytes > UP_HDR_MAX_BYTES)
    return PC_E_UPSTREAM;
  if ((line[0] == ' ' || line[0] == '\t') && f->nhdrs > 0) {
    /* obs-fold: a continuation of the previous value. */
    struct hdr *h = &f->hdrs[f->nhdrs - 1];
    size_t old = strlen(h->value);
    val = line;
    vlen = len;
    trim(&val, &vlen);
    h->value = pc_xrealloc(h->value, old + vlen + 2);
    h->value[old] = ' ';
    memcpy(h->value + old + 1, val, vlen);
    h->value[old + 1 + vlen] = '\0';
    return 0;
  }
  if (!colon)
    return 0; /* not a header; ignored */
  nlen = (size_t)(colon - line);
  trim(&name, &nlen);
  val = colon + 1;
  vlen = len - (size_t)(val - line);
  trim(&val, &vlen);
  if (nlen == 0)
    return 0;
  if (f->nhdrs == UP_HDR_MAX_COUNT)
    return PC_E_UPSTREAM;
  if (f->nhdrs == f->hdrs_cap) {
    f->hdrs_cap = f->hdrs_cap ? 2 * f->hdrs_cap : 16;
    f->hdrs = pc_xrealloc(f->hdrs, f->hdrs_cap * sizeof(*f->hdrs));
  }
  f->hdrs[f->nhdrs].name = pc_xstrndup(name, nlen);
  f->hdrs[f->nhdrs].value = pc_xstrndup(val, vlen);
  f->nhdrs++;
  return 0;
}

static int is_redirect(int status)
{
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* Decide what the response whose header block just ended is. A Bearer challenge wins over a
 * Basic one; Basic is answered once, and only for the registry host itself. */
static enum hop_kind classify(struct up_fetch *f)
{
  int basic = 0;
  if (is_redirect(f->status) && hdr_get(f, "Location"))
    return HOP_REDIRECT;
  if (f->status != 401 || f->internal || f->no_auth)
    return HOP_FINAL;
  up__challenge_free(&f->chal);
  for (size_t i = 0; i < f->nhdrs; i++) {
    if (strcasecmp(f->hdrs[i].name, "WWW-Authenticate") != 0)
      continue;
    if (up__challenge_parse(f->hdrs[i].value, &f->chal) == 0 && f->chal.realm)
      return f->fresh_auth ? HOP_FINAL : HOP_AUTH;
    up__challenge_free(&f->chal);
    if (up__challenge_has(f->hdrs[i].value, "Basic"))
      basic = 1;
  }
  if (basic && f->userpwd && !f->basic_tried && strcmp(f->hostkey, f->origin) == 0)
    return HOP_BASIC;
  return HOP_FINAL;
}

/* Call on_headers once. Returns 0 to go on, or the rc the fetch must end with (also when the
 * callback cancelled the fetch). */
static int deliver_headers(struct up_fetch *f)
{
  int r = 0;
  f->headers_delivered = 1;
  if (!f->on_headers)
    return 0;
  f->u->in_curl_cb++;
  r = f->on_headers(f, f->status, f->arg);
  f->u->in_curl_cb--;
  if (f->cancelled)
    return PC_E_UPSTREAM;
  if (r != 0)
    f->abort_rc = r < 0 ? r : PC_E_UPSTREAM;
  return f->abort_rc;
}

/* ---------------------------------------------------------------------------------------- */
/* curl callbacks                                                                            */

static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
  up_t *u = userp;
  struct sock_ctx *c = socketp;
  int events = 0;

  if (what == CURL_POLL_REMOVE) {
    if (c) {
      /* curl may close the fd right after we return: stop watching it now. */
      uv_poll_stop(&c->poll);
      curl_multi_assign(u->multi, s, NULL);
      if (c->prev)
        c->prev->next = c->next;
      else
        u->socks = c->next;
      if (c->next)
        c->next->prev = c->prev;
      uv_close((uv_handle_t *)&c->poll, on_sock_closed);
    }
    return 0;
  }
  if (!c) {
    c = pc_xcalloc(1, sizeof(*c));
    c->fd = s;
    c->u = u;
    if (uv_poll_init_socket(u->loop, &c->poll, s) != 0) {
      free(c);
      return -1;
    }
    u->handles++;
    c->next = u->socks;
    if (u->socks)
      u->socks->prev = c;
    u->socks = c;
    curl_multi_assign(u->multi, s, c);
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  uv_poll_start(&c->poll, events, on_poll);
  return 0;
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
  up_t *u = userp;
  if (timeout_ms < 0)
    uv_timer_stop(&u->timer);
  else
    uv_timer_start(&u->timer, on_up_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_up_timer(uv_timer_t *t)
{
  up_t *u = container_of(t, up_t, timer);
  int running;
  if (u->closing)
    return;
  curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(u);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
  struct sock_ctx *c = container_of(p, struct sock_ctx, poll);
  up_t *u = c->u;
  int flags = 0, running;

  if (u->closing)
    return;
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  curl_multi_socket_action(u->multi, c->fd, flags, &running);
  check_multi_info(u);
}

/* The connection is up and the request is about to go: the first-byte clock starts. */
static int on_curl_prereq(void *arg, char *ip, char *local_ip, int port, int local_port)
{
  struct up_fetch *f = arg;
  if (!f->cancelled && !f->body_phase)
    uv_timer_start(&f->timer, on_fetch_timer, (uint64_t)f->u->first_byte_timeout_ms, 0);
  return CURL_PREREQFUNC_OK;
}

const double up_hist_bounds_s[UP_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5,   1,    2.5,   5,    10};
/* The same bounds in microseconds, so that the comparison is exact. */
static const uint64_t hist_bounds_us[UP_HIST_BUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

static void hist_add(up_pool_stats_t *st, uint64_t us)
{
  size_t i = 0;
  while (i < UP_HIST_BUCKETS && us > hist_bounds_us[i])
    i++;
  st->first_byte_hist[i]++;
  st->first_byte_sum_us += us;
}

/* One header line (status line, header, or the empty line ending the block). Returns 0, or
 * an rc that aborts the transfer. */
static int header_line(struct up_fetch *f, const char *buf, size_t len)
{
  up_t *u = f->u;
  while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
    len--;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    const char *sp = memchr(buf, ' ', len);
    int st = 0;
    hdrs_reset(f);
    f->kind = HOP_PENDING;
    if (sp) {
      for (sp++; sp < buf + len && *sp >= '0' && *sp <= '9' && st < 1000; sp++)
        st = st * 10 + (*sp - '0');
    }
    f->status = st;
    return 0;
  }
  if (f->kind != HOP_PENDING)
    return 0; /* trailers: ignored */
  if (len > 0)
    return hdr_add(f, buf, len);
  /* The header block ended. */
  if (f->status >= 100 && f->status < 200)
    return 0; /* an interim response; the real one follows */
  f->kind = classify(f);
  f->body_phase = 1;
  f->last_activity = uv_now(u->loop);
  uv_timer_start(&f->timer, on_fetch_timer, (uint64_t)u->stall_timeout_ms, 0);
  if (f->kind == HOP_FINAL) {
    f->first_byte_ns = uv_hrtime() - f->t_begin;
    if (f->pool && !f->internal)
      hist_add(&f->pool->stats, f->first_byte_ns / 1000);
    return deliver_headers(f);
  }
  return 0;
}

static size_t on_curl_header(char *buf, size_t size, size_t n, void *arg)
{
  struct up_fetch *f = arg;
  size_t len = size * n;
  int rc;
  if (f->cancelled || f->abort_rc)
    return 0;
  rc = header_line(f, buf, len);
  if (rc != 0 && !f->abort_rc)
    f->abort_rc = rc;
  return rc == 0 ? len : 0;
}

static size_t on_curl_write(char *buf, size_t size, size_t n, void *arg)
{
  struct up_fetch *f = arg;
  up_t *u = f->u;
  size_t len = size * n;
  int r;

  if (f->cancelled || f->abort_rc)
    return 0; /* any count but len fails the transfer (CURLE_WRITE_ERROR) */
  f->last_activity = uv_now(u->loop);
  if (f->kind != HOP_FINAL)
    return len; /* body of a redirect or a 401: discarded */
  if (!f->internal) {
    u->stats.body_bytes += len;
    if (f->pool)
      f->pool->stats.body_bytes += len;
  }
  if (!f->on_data)
    return len;
  u->in_curl_cb++;
  r = f->on_data(f, buf, len, f->arg);
  u->in_curl_cb--;
  if (f->cancelled)
    return 0;
  if (r < 0) {
    f->abort_rc = r;
    return 0;
  }
  return len;
}

/* ---------------------------------------------------------------------------------------- */
/* Fetch life cycle                                                                          */

static void defer_push(struct up_fetch *f)
{
  up_t *u = f->u;
  if (f->deferred)
    return;
  f->deferred = 1;
  f->defer_next = NULL;
  if (u->defer_tail)
    u->defer_tail->defer_next = f;
  else
    u->defer_head = f;
  u->defer_tail = f;
  uv_idle_start(&u->idle, on_idle);
}

static void defer_remove(struct up_fetch *f)
{
  up_t *u = f->u;
  struct up_fetch *prev = NULL;
  if (!f->deferred)
    return;
  for (struct up_fetch *g = u->defer_head; g; prev = g, g = g->defer_next) {
    if (g != f)
      continue;
    if (prev)
      prev->defer_next = f->defer_next;
    else
      u->defer_head = f->defer_next;
    if (u->defer_tail == f)
      u->defer_tail = prev;
    break;
  }
  f->deferred = 0;
}

static void detach(struct up_fetch *f)
{
  if (f->attached) {
    curl_multi_remove_handle(f->u->multi, f->easy);
    f->attached = 0;
  }
  f->add_pending = 0;
}

static int attach(struct up_fetch *f)
{
  up_t *u = f->u;
  if (u->in_curl_cb > 0) {
    /* curl refuses curl_multi_add_handle inside its callbacks. */
    f->add_pending = 1;
    defer_push(f);
    return 0;
  }
  if (curl_multi_add_handle(u->multi, f->easy) != CURLM_OK)
    return PC_E_INTERNAL;
  f->attached = 1;
  return 0;
}

#define SETOPT(opt, val)                                                                           \
  do {                                                                                             \
    if (curl_easy_setopt(e, (opt), (val)) != CURLE_OK)                                             \
      goto out;                                                                                    \
  } while (0)

/* Start a hop to f->url. token: Bearer token to send (it belongs to f->hostkey), or NULL to
 * send a cached one if a hint says this repository needs it. */
static int hop_start(struct up_fetch *f, const char *token)
{
  up_t *u = f->u;
  CURL *e = f->easy;
  int rc = PC_E_UPSTREAM;
  char line[UP_TOKEN_MAX + 64];
  char range[32];
  int basic;

  f->t_hop = uv_hrtime();
  hdrs_reset(f);
  f->kind = HOP_PENDING;
  f->body_phase = 0;
  f->status = 0;
  curl_slist_free_all(f->slist);
  f->slist = NULL;
  free(f->sent_token);
  f->sent_token = NULL;
  if (up__host_key(f->url, f->hostkey, sizeof(f->hostkey)) != 0)
    goto out;
  /* Credentials only to the host that asked for them (a Basic challenge of the registry, or
   * the token realm); a Bearer token to answer a challenge goes instead. */
  basic = !token && f->userpwd && strcmp(f->hostkey, f->basic_host) == 0;
  if (!token && !basic)
    token = proactive_token(f);
  if (f->accept) {
    snprintf(line, sizeof(line), "Accept: %s", f->accept);
    f->slist = curl_slist_append(f->slist, line);
    PC_ASSERT(f->slist);
  }
  if (token) {
    snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
    f->slist = curl_slist_append(f->slist, line);
    PC_ASSERT(f->slist);
    f->sent_token = pc_xstrdup(token);
  }

  rc = PC_E_INTERNAL;
  curl_easy_reset(e);
  SETOPT(CURLOPT_PRIVATE, (char *)f);
  SETOPT(CURLOPT_URL, f->url);
  SETOPT(CURLOPT_ERRORBUFFER, f->errbuf);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
  SETOPT(CURLOPT_CONNECTTIMEOUT_MS, u->connect_timeout_ms);
  SETOPT(CURLOPT_USERAGENT, u->user_agent);
  SETOPT(CURLOPT_HEADERFUNCTION, on_curl_header);
  SETOPT(CURLOPT_HEADERDATA, f);
  SETOPT(CURLOPT_WRITEFUNCTION, on_curl_write);
  SETOPT(CURLOPT_WRITEDATA, f);
  SETOPT(CURLOPT_PREREQFUNCTION, on_curl_prereq);
  SETOPT(CURLOPT_PREREQDATA, f);
  if (f->slist)
    SETOPT(CURLOPT_HTTPHEADER, f->slist);
  if (f->head)
    SETOPT(CURLOPT_NOBODY, 1L);
  else
    SETOPT(CURLOPT_HTTPGET, 1L);
  if (f->range_from > 0) {
    snprintf(range, sizeof(range), "%" PRIu64 "-", f->range_from);
    SETOPT(CURLOPT_RANGE, range);
  }
  if (f->ca_file)
    SETOPT(CURLOPT_CAINFO, f->ca_file);
  if (basic) {
    /* curl does the base64; with CURLAUTH_BASIC alone it sends it on the first request. */
    SETOPT(CURLOPT_USERPWD, f->userpwd);
    SETOPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
  }
  rc = attach(f);
  if (rc)
    goto out;
  u->stats.requests++;
  if (f->pool)
    f->pool->stats.requests++;
  if (!f->internal)
    f->hops++;
  f->state = F_RUNNING;
  f->last_activity = uv_now(u->loop);
  uv_timer_start(&f->timer, on_fetch_timer,
                 (uint64_t)u->connect_timeout_ms + (uint64_t)u->first_byte_timeout_ms, 0);
  rc = 0;
out:
  return rc;
}

#undef SETOPT

static int map_curl_error(CURLcode res)
{
  switch (res) {
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return PC_E_UPSTREAM_UNAVAILABLE;
  case CURLE_OPERATION_TIMEDOUT:
    return PC_E_UPSTREAM_TIMEOUT;
  default:
    return PC_E_UPSTREAM;
  }
}

static void on_fetch_timer(uv_timer_t *t)
{
  struct up_fetch *f = container_of(t, struct up_fetch, timer);
  up_t *u = f->u;
  uint64_t now = uv_now(u->loop), stall = (uint64_t)u->stall_timeout_ms;

  if (f->state != F_RUNNING || f->cancelled || u->closing)
    return;
  if (f->body_phase) {
    if (now - f->last_activity < stall) {
      uv_timer_start(&f->timer, on_fetch_timer, stall - (now - f->last_activity), 0);
      return;
    }
  }
  char q[PC_LOG_QUOTE_SIZE(UP_LOG_URL_MAX)];
  pc_log_quote(q, sizeof(q), f->url, UP_LOG_URL_MAX);
  pc_log(PC_LOG_INFO, "upstream-timeout url=%s phase=%s", q, f->body_phase ? "body" : "headers");
  detach(f);
  fetch_finish(f, PC_E_UPSTREAM_TIMEOUT, f->kind == HOP_FINAL ? f->status : 0);
}

static void check_multi_info(up_t *u)
{
  for (;;) {
    int left;
    CURLMsg *m;
    char *priv = NULL;
    struct up_fetch *f;
    CURLcode res;

    if (u->closing)
      break;
    m = curl_multi_info_read(u->multi, &left);
    if (!m)
      break;
    if (m->msg != CURLMSG_DONE)
      continue;
    res = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    f = (struct up_fetch *)priv;
    /* The message dies with the remove: res is copied above. */
    detach(f);
    on_hop_done(f, res);
  }
}

static void follow_redirect(struct up_fetch *f)
{
  char *loc = NULL;
  char key[UP__HOSTKEY_MAX];
  char q[PC_LOG_QUOTE_SIZE(UP_LOG_URL_MAX)];
  int rc;

  if (f->redirects >= f->u->max_redirects) {
    pc_log_quote(q, sizeof(q), f->url, UP_LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-too-many-redirects url=%s max=%d", q, f->u->max_redirects);
    fetch_finish(f, PC_E_UPSTREAM, f->status);
    return;
  }
  /* curl resolves a relative Location against the current URL for us. */
  curl_easy_getinfo(f->easy, CURLINFO_REDIRECT_URL, &loc);
  if (!loc || up__host_key(loc, key, sizeof(key)) != 0) {
    pc_log_quote(q, sizeof(q), f->url, UP_LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-bad-redirect url=%s", q);
    fetch_finish(f, PC_E_UPSTREAM, f->status);
    return;
  }
  if (strcmp(key, f->hostkey) != 0)
    f->fresh_auth = 0; /* a new host may challenge on its own */
  loc = pc_xstrdup(loc);
  free(f->url);
  f->url = loc;
  f->redirects++;
  rc = hop_start(f, NULL);
  if (rc)
    fetch_finish(f, rc, 0);
}

static void answer_challenge(struct up_fetch *f)
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
    rc = hop_start(f, t->value);
    if (rc)
      fetch_finish(f, rc, 0);
    return;
  }
  if (t)
    token_prune(u, f->hostkey, scope, cred); /* rejected: never offer it again */
  url = up__token_url(f->chal.realm, f->chal.service, f->chal.scope);
  if (!url) {
    char q[PC_LOG_QUOTE_SIZE(UP_LOG_URL_MAX)];
    pc_log_quote(q, sizeof(q), f->url, UP_LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-bad-token-realm url=%s", q);
    fetch_finish(f, PC_E_UPSTREAM, f->status);
    return;
  }
  memset(&req, 0, sizeof(req));
  req.method = "GET";
  req.url = url;
  req.accept = "application/json";
  req.ca_file = f->ca_file;
  req.userpwd = cred == anonymous ? NULL : f->userpwd; /* to the realm host only */
  req.pool = f->pool; /* for the stats: the parent's slot covers it */
  req.on_done = on_token_data_done;
  req.arg = f;
  f->t_token = uv_hrtime();
  rc = up_fetch_start(u, &req, &f->child);
  free(url);
  if (rc) {
    fetch_finish(f, rc, 0);
    return;
  }
  f->token_fetches++;
  f->state = F_TOKEN;
  uv_timer_stop(&f->timer); /* the child has timers of its own */
}

static void on_hop_done(struct up_fetch *f, CURLcode res)
{
  int rc;
  uv_timer_stop(&f->timer);
  if (f->cancelled) {
    fetch_release(f);
    return;
  }
  if (f->abort_rc) {
    fetch_finish(f, f->abort_rc, f->status);
    return;
  }
  if (res != CURLE_OK) {
    char qu[PC_LOG_QUOTE_SIZE(UP_LOG_URL_MAX)], qe[PC_LOG_QUOTE_SIZE(UP_LOG_ERR_MAX)];
    pc_log_quote(qu, sizeof(qu), f->url, UP_LOG_URL_MAX);
    pc_log_quote(qe, sizeof(qe), f->errbuf[0] ? f->errbuf : curl_easy_strerror(res),
                 UP_LOG_ERR_MAX);
    pc_log(PC_LOG_INFO, "upstream-transfer-failed url=%s curl=%d err=%s", qu, (int)res, qe);
    fetch_finish(f, map_curl_error(res), f->kind == HOP_FINAL ? f->status : 0);
    return;
  }
  if (f->kind == HOP_REDIRECT || f->kind == HOP_AUTH || f->kind == HOP_BASIC)
    f->redirect_ns += uv_hrtime() - f->t_hop;
  switch (f->kind) {
  case HOP_FINAL:
    fetch_finish(f, 0, f->status);
    return;
  case HOP_REDIRECT:
    follow_redirect(f);
    return;
  case HOP_AUTH:
    answer_challenge(f);
    return;
  case HOP_BASIC:
    f->basic_tried = 1;
    snprintf(f->basic_host, sizeof(f->basic_host), "%s", f->hostkey);
    rc = hop_start(f, NULL);
    if (rc)
      fetch_finish(f, rc, 0);
    return;
  case HOP_PENDING:
  default:
    /* The transfer ended without a complete header block. */
    rc = PC_E_UPSTREAM;
    fetch_finish(f, rc, 0);
    return;
  }
}

/* The token fetch ended: parse its answer, cache it, retry the parent with it. */
static void on_token_data_done(up_fetch_t *child, int rc, int status, void *arg)
{
  struct up_fetch *f = arg;
  up_t *u = f->u;
  const char *scope = f->chal.scope ? f->chal.scope : "";
  char *token = NULL;
  uint64_t ttl = 0;

  f->child = NULL;
  f->state = F_RUNNING;
  f->token_ns += uv_hrtime() - f->t_token;
  if (rc < 0) {
    fetch_finish(f, rc, status);
    return;
  }
  if (status != 200 ||
      up__token_parse(child->body, child->body_len, pc_now_sec(), &token, &ttl) != 0) {
    char q[PC_LOG_QUOTE_SIZE(UP_LOG_URL_MAX)];
    pc_log_quote(q, sizeof(q), child->url, UP_LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-token-failed url=%s status=%d", q, status);
    fetch_finish(f, PC_E_UPSTREAM, status);
    return;
  }
  u->stats.tokens++;
  if (f->pool)
    f->pool->stats.tokens++;
  token_store(u, f->hostkey, scope, hop_cred(f), token, ttl);
  hint_store(u, f->hostkey, f->url, scope);
  f->fresh_auth = 1;
  rc = hop_start(f, token);
  free(token);
  if (rc)
    fetch_finish(f, rc, 0);
}

static int on_token_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  if (f->body_len + len > UP_TOKEN_BODY_MAX)
    return PC_E_UPSTREAM;
  f->body = pc_xrealloc(f->body, f->body_len + len + 1);
  memcpy(f->body + f->body_len, buf, len);
  f->body_len += len;
  f->body[f->body_len] = '\0';
  return 0;
}

/* The fetch ends: on_done (unless cancelled), then release. The easy handle is detached. */
static void fetch_finish(struct up_fetch *f, int rc, int status)
{
  up_t *u = f->u;
  PC_ASSERT(!f->attached);
  uv_timer_stop(&f->timer);
  f->state = F_DONE;
  f->last_byte_ns = uv_hrtime() - f->t_begin;
  if (rc < 0 && !f->internal) {
    u->stats.errors++;
    if (f->pool && rc == PC_E_UPSTREAM_TIMEOUT)
      f->pool->stats.errors_timeout++;
    else if (f->pool && rc == PC_E_UPSTREAM_UNAVAILABLE)
      f->pool->stats.errors_unavailable++;
    else if (f->pool)
      f->pool->stats.errors_other++;
  }
  if (!f->cancelled)
    f->on_done(f, rc, status, f->arg);
  fetch_release(f);
}

/* Free everything but the memory of f, which goes in the timer's close callback. Never from
 * inside a curl callback (it removes the easy handle). */
static void fetch_release(struct up_fetch *f)
{
  up_t *u = f->u;
  if (f->released)
    return;
  f->released = 1;
  f->state = F_DONE;
  if (f->child) {
    up_fetch_cancel(f->child);
    f->child = NULL;
  }
  if (f->pool) {
    struct up_pool *p = f->pool;
    f->pool = NULL;
    if (f->queued)
      queue_remove(p, f);
    if (f->slot) {
      f->slot = 0;
      p->stats.active--;
      pool_kick(p);
    }
    pool_unref(p);
  }
  detach(f);
  defer_remove(f);
  if (f->prev)
    f->prev->next = f->next;
  else
    u->fetches = f->next;
  if (f->next)
    f->next->prev = f->prev;
  curl_easy_cleanup(f->easy);
  f->easy = NULL;
  curl_slist_free_all(f->slist);
  f->slist = NULL;
  hdrs_reset(f);
  free(f->hdrs);
  f->hdrs = NULL;
  up__challenge_free(&f->chal);
  uv_timer_stop(&f->timer);
  uv_close((uv_handle_t *)&f->timer, on_fetch_closed);
}

static void maybe_free(up_t *u)
{
  void (*cb)(void *);
  void *arg;
  if (!u->torn_down || u->handles > 0)
    return;
  cb = u->close_cb;
  arg = u->close_arg;
  free(u->user_agent);
  free(u);
  curl_global_cleanup();
  if (cb)
    cb(arg);
}

static void on_fetch_closed(uv_handle_t *h)
{
  struct up_fetch *f = container_of((uv_timer_t *)h, struct up_fetch, timer);
  up_t *u = f->u;
  free(f->url);
  free(f->accept);
  free(f->ca_file);
  if (f->userpwd) {
    explicit_bzero(f->userpwd, strlen(f->userpwd));
    free(f->userpwd);
  }
  free(f->sent_token);
  free(f->body);
  free(f);
  u->handles--;
  maybe_free(u);
}

static void on_sock_closed(uv_handle_t *h)
{
  struct sock_ctx *c = container_of((uv_poll_t *)h, struct sock_ctx, poll);
  up_t *u = c->u;
  free(c);
  u->handles--;
  maybe_free(u);
}

static void on_up_handle_closed(uv_handle_t *h)
{
  up_t *u = h->data;
  u->handles--;
  maybe_free(u);
}

/* Deferred work, run from the loop where no curl callback is on the stack. */
static void on_idle(uv_idle_t *h)
{
  up_t *u = container_of(h, up_t, idle);
  struct up_fetch *f;

  while (u->defer_head) {
    f = u->defer_head;
    u->defer_head = f->defer_next;
    if (!u->defer_head)
      u->defer_tail = NULL;
    f->deferred = 0;
    if (f->cancelled) {
      fetch_release(f);
      continue;
    }
    if (f->add_pending) {
      f->add_pending = 0;
      if (curl_multi_add_handle(u->multi, f->easy) != CURLM_OK) {
        fetch_finish(f, PC_E_INTERNAL, 0);
        continue;
      }
      f->attached = 1;
    }
  }
  if (u->kick_pending && !u->closing)
    run_kicks(u);
  if (u->closing && !u->torn_down)
    teardown(u);
  else if (!u->defer_head && !u->kick_pending)
    uv_idle_stop(&u->idle);
}

static void teardown(up_t *u)
{
  u->torn_down = 1;
  uv_idle_stop(&u->idle);
  while (u->fetches) {
    u->fetches->cancelled = 1;
    fetch_release(u->fetches);
  }
  /* Closing the cached connections reports their sockets with CURL_POLL_REMOVE. */
  curl_multi_cleanup(u->multi);
  u->multi = NULL;
  while (u->socks) {
    struct sock_ctx *c = u->socks;
    u->socks = c->next;
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_sock_closed);
  }
  while (u->tokens) {
    struct token *t = u->tokens;
    u->tokens = t->next;
    token_free(t);
  }
  while (u->hints) {
    struct hint *h = u->hints;
    u->hints = h->next;
    hint_free(h);
  }
  /* Every fetch let go of its pool above; what is left belongs to owners. */
  while (u->pools)
    pool_free(u->pools);
  uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
  uv_close((uv_handle_t *)&u->idle, on_up_handle_closed);
  uv_close((uv_handle_t *)&u->pool_timer, on_up_handle_closed);
}

/* ---------------------------------------------------------------------------------------- */
/* Pools                                                                                     */

static void queue_push(struct up_pool *p, struct up_fetch *f)
{
  f->qnext = NULL;
  f->qprev = p->qtail;
  if (p->qtail)
    p->qtail->qnext = f;
  else
    p->qhead = f;
  p->qtail = f;
  f->queued = 1;
  f->state = F_QUEUED;
  p->stats.queued++;
}

static void queue_remove(struct up_pool *p, struct up_fetch *f)
{
  if (f->qprev)
    f->qprev->qnext = f->qnext;
  else
    p->qhead = f->qnext;
  if (f->qnext)
    f->qnext->qprev = f->qprev;
  else
    p->qtail = f->qprev;
  f->qprev = f->qnext = NULL;
  f->queued = 0;
  p->stats.queued--;
}

/* Add the rate tokens earned since the last refill (at most burst). */
static void pool_refill(struct up_pool *p, uint64_t now)
{
  if (p->rate > 0 && now > p->refill_ns) {
    p->tokens += (double)(now - p->refill_ns) * 1e-9 * p->rate;
    if (p->tokens > p->burst)
      p->tokens = p->burst;
  }
  p->refill_ns = now;
}

static int pool_has_slot(const struct up_pool *p)
{
  return p->max_active == 0 || p->stats.active < p->max_active;
}

/* The epsilon absorbs the rounding of the refill sums: a token due now counts as there. */
static int pool_has_token(const struct up_pool *p)
{
  return p->rate <= 0 || p->tokens >= 1.0 - 1e-9;
}

/* The fetch takes a slot and a rate token. */
static void pool_take(struct up_pool *p, struct up_fetch *f)
{
  p->stats.active++;
  f->slot = 1;
  if (p->rate > 0)
    p->tokens -= 1.0;
}

static void pool_apply_opts(struct up_pool *p, const up_pool_opts_t *o)
{
  uint64_t now = uv_hrtime();
  double rate = o ? o->rate : 0;
  int had_rate = p->rate > 0;

  if (!isfinite(rate) || rate < 0)
    rate = 0;
  pool_refill(p, now); /* what the old rate earned so far */
  p->max_active = o ? o->max_active : 0;
  p->rate = rate;
  p->burst = o && o->burst ? (double)o->burst : fmax(1.0, ceil(rate));
  if (rate > 0 && !had_rate)
    p->tokens = p->burst;
  if (p->tokens > p->burst)
    p->tokens = p->burst;
  p->wake_ns = 0;
}

/* Ask for a dispatch of p's queue from the idle handle (no user callback can run from the
 * caller's stack that way). */
static void pool_kick(struct up_pool *p)
{
  up_t *u = p->u;
  if (u->closing)
    return;
  p->kick = 1;
  u->kick_pending = 1;
  uv_idle_start(&u->idle, on_idle);
}

static void pool_free(struct up_pool *p)
{
  up_t *u = p->u;
  PC_ASSERT(!p->qhead);
  if (p->prev)
    p->prev->next = p->next;
  else
    u->pools = p->next;
  if (p->next)
    p->next->prev = p->prev;
  free(p->name);
  free(p);
}

static void pool_unref(struct up_pool *p)
{
  PC_ASSERT(p->refs > 0);
  p->refs--;
  if (p->refs == 0 && p->released)
    pool_free(p);
}

/* A queued fetch starts. From the loop only (it may call on_done when curl refuses it). */
static void fetch_begin(struct up_fetch *f)
{
  int rc;
  f->t_begin = uv_hrtime();
  f->queue_ns = f->t_begin - f->t_created;
  f->state = F_RUNNING;
  f->pool->stats.fetches++;
  rc = hop_start(f, NULL);
  if (rc)
    fetch_finish(f, rc, 0);
}

/* Start queued fetches while p has a slot and a rate token for them; when only the token is
 * missing, note when it is due (the pool timer is armed by the caller). */
static void pool_dispatch(struct up_pool *p)
{
  up_t *u = p->u;
  uint64_t now = uv_hrtime();

  p->refs++; /* a fetch's on_done may release p */
  p->wake_ns = 0;
  pool_refill(p, now);
  while (p->qhead && !u->closing && pool_has_slot(p)) {
    struct up_fetch *f = p->qhead;
    if (!pool_has_token(p)) {
      double wait = (1.0 - p->tokens) / p->rate * 1e9;
      p->wake_ns = now + (wait < 1e15 ? (uint64_t)wait : (uint64_t)1e15) + 1;
      break;
    }
    queue_remove(p, f);
    pool_take(p, f);
    fetch_begin(f);
    now = uv_hrtime();
    pool_refill(p, now);
  }
  pool_unref(p);
}

/* Arm the pool timer for the earliest rate token a queue waits for. */
static void pool_timer_arm(up_t *u)
{
  uint64_t next = 0, now, ms;
  for (struct up_pool *p = u->pools; p; p = p->next)
    if (p->qhead && p->wake_ns && (next == 0 || p->wake_ns < next))
      next = p->wake_ns;
  if (next == 0) {
    uv_timer_stop(&u->pool_timer);
    return;
  }
  now = uv_hrtime();
  ms = next > now ? (next - now + 999999) / 1000000 : 0;
  uv_timer_start(&u->pool_timer, on_pool_timer, ms, 0);
}

/* Dispatch every kicked pool. A dispatch runs user callbacks, which may kick, release or free
 * pools: start over from the head after each one. */
static void run_kicks(up_t *u)
{
  struct up_pool *p;
again:
  for (p = u->pools; p && !u->closing; p = p->next) {
    if (!p->kick)
      continue;
    p->kick = 0;
    pool_dispatch(p);
    goto again;
  }
  u->kick_pending = 0;
  if (!u->closing)
    pool_timer_arm(u);
}

static void on_pool_timer(uv_timer_t *t)
{
  up_t *u = container_of(t, up_t, pool_timer);
  if (u->closing)
    return;
  for (struct up_pool *p = u->pools; p; p = p->next)
    if (p->qhead)
      p->kick = 1;
  run_kicks(u);
}

int up_pool_new(up_t *u, const char *name, const up_pool_opts_t *o, up_pool_t **out)
{
  struct up_pool *p;
  *out = NULL;
  if (!u || !name || (o && (!isfinite(o->rate) || o->rate < 0)))
    return UV_EINVAL;
  if (u->closing)
    return UV_ECANCELED;
  p = pc_xcalloc(1, sizeof(*p));
  p->u = u;
  p->name = pc_xstrdup(name);
  pool_apply_opts(p, o);
  p->next = u->pools;
  if (u->pools)
    u->pools->prev = p;
  u->pools = p;
  *out = p;
  return 0;
}

void up_pool_set_opts(up_pool_t *p, const up_pool_opts_t *o)
{
  pool_apply_opts(p, o);
  if (p->qhead)
    pool_kick(p);
}

void up_pool_release(up_pool_t *p)
{
  if (!p)
    return;
  PC_ASSERT(!p->released);
  p->released = 1;
  if (p->refs == 0)
    pool_free(p);
}

void up_pool_get_stats(const up_pool_t *p, up_pool_stats_t *out)
{
  *out = p->stats;
}

const char *up_pool_name(const up_pool_t *p)
{
  return p->name;
}

/* ---------------------------------------------------------------------------------------- */
/* API                                                                                       */

void up_set_opts(up_t *u, const up_opts_t *opts)
{
  u->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000;
  u->first_byte_timeout_ms =
      opts && opts->first_byte_timeout_ms > 0 ? opts->first_byte_timeout_ms : 30000;
  u->stall_timeout_ms = opts && opts->stall_timeout_ms > 0 ? opts->stall_timeout_ms : 30000;
  u->max_redirects = opts && opts->max_redirects > 0 ? opts->max_redirects : 10;
}

int up_new(uv_loop_t *loop, const up_opts_t *opts, up_t **out)
{
  int rc = PC_E_INTERNAL;
  up_t *u = NULL;
  int curl_inited = 0;

  *out = NULL;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    goto out;
  curl_inited = 1;
  u = pc_xcalloc(1, sizeof(*u));
  u->loop = loop;
  up_set_opts(u, opts);
  u->user_agent = pc_xstrdup(opts && opts->user_agent ? opts->user_agent : "pullcache/0.1");
  if (strpbrk(u->user_agent, "\r\n")) {
    rc = UV_EINVAL;
    goto out;
  }
  u->multi = curl_multi_init();
  if (!u->multi)
    goto out;
  if (curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 64L) != CURLM_OK)
    goto out;
  rc = uv_timer_init(loop, &u->timer);
  if (rc)
    goto out;
  rc = uv_idle_init(loop, &u->idle);
  PC_ASSERT(rc == 0); /* cannot fail once the timer could be made */
  rc = uv_timer_init(loop, &u->pool_timer);
  PC_ASSERT(rc == 0);
  u->timer.data = u;
  u->idle.data = u;
  u->pool_timer.data = u;
  u->handles = 3;
  *out = u;
  rc = 0;
out:
  if (rc) {
    if (u) {
      if (u->multi)
        curl_multi_cleanup(u->multi);
      free(u->user_agent);
      free(u);
    }
    if (curl_inited)
      curl_global_cleanup();
  }
  return rc;
}

void up_close(up_t *u, void (*cb)(void *arg), void *arg)
{
  if (!u || u->closing)
    return;
  u->closing = 1;
  u->close_cb = cb;
  u->close_arg = arg;
  for (struct up_fetch *f = u->fetches; f; f = f->next) {
    f->cancelled = 1;
    uv_timer_stop(&f->timer);
  }
  /* The teardown runs from the idle handle, out of any curl or up callback. */
  uv_idle_start(&u->idle, on_idle);
}

void up_get_stats(const up_t *u, up_stats_t *out)
{
  *out = u->stats;
}

static int valid_header_value(const char *s)
{
  return !s || !strpbrk(s, "\r\n");
}

int up_fetch_start(up_t *u, const up_req_t *r, up_fetch_t **out)
{
  char key[UP__HOSTKEY_MAX];
  struct up_fetch *f;
  struct up_pool *p;
  int rc, head, internal;

  if (out)
    *out = NULL;
  if (!u || !r || !r->url || !r->on_done || !r->method)
    return UV_EINVAL;
  if (u->closing)
    return UV_ECANCELED;
  p = r->pool;
  internal = r->on_done == on_token_data_done;
  /* A token fetch may still use a released pool: its parent keeps it alive. */
  if (p && (p->u != u || (p->released && !internal)))
    return UV_EINVAL;
  if (strcasecmp(r->method, "GET") == 0)
    head = 0;
  else if (strcasecmp(r->method, "HEAD") == 0)
    head = 1;
  else
    return UV_EINVAL;
  if (!valid_header_value(r->accept) || up__host_key(r->url, key, sizeof(key)) != 0)
    return UV_EINVAL;

  f = pc_xcalloc(1, sizeof(*f));
  f->u = u;
  f->easy = curl_easy_init();
  if (!f->easy) {
    free(f);
    return UV_ENOMEM;
  }
  rc = uv_timer_init(u->loop, &f->timer);
  if (rc) {
    curl_easy_cleanup(f->easy);
    free(f);
    return rc;
  }
  u->handles++;
  f->head = head;
  f->url = pc_xstrdup(r->url);
  f->accept = r->accept ? pc_xstrdup(r->accept) : NULL;
  f->range_from = r->range_from;
  f->ca_file = r->ca_file ? pc_xstrdup(r->ca_file) : NULL;
  f->no_auth = r->no_auth != 0;
  memcpy(f->origin, key, sizeof(f->origin));
  if (r->userpwd && *r->userpwd && !f->no_auth) {
    unsigned int n = 0;
    f->userpwd = pc_xstrdup(r->userpwd);
    PC_ASSERT(EVP_Digest(f->userpwd, strlen(f->userpwd), f->cred, &n, EVP_sha256(), NULL) == 1 &&
              n == UP_CRED_LEN);
  }
  f->on_headers = r->on_headers;
  f->on_data = r->on_data;
  f->on_done = r->on_done;
  f->arg = r->arg;
  if (internal) {
    f->internal = 1;
    f->on_data = on_token_data;
    if (f->userpwd)
      memcpy(f->basic_host, key, sizeof(f->basic_host)); /* the realm */
  }
  f->next = u->fetches;
  if (u->fetches)
    u->fetches->prev = f;
  u->fetches = f;
  f->t_created = uv_hrtime();
  if (p) {
    f->pool = p;
    p->refs++;
  }
  if (p && !internal) {
    pool_refill(p, f->t_created);
    if (p->qhead || !pool_has_slot(p) || !pool_has_token(p)) {
      /* Behind the others; the dispatch works out when a rate token is due. */
      queue_push(p, f);
      pool_kick(p);
      if (out)
        *out = f;
      return 0;
    }
    pool_take(p, f);
  }
  f->t_begin = f->t_created;
  f->state = F_RUNNING;
  rc = hop_start(f, NULL);
  if (rc) {
    f->cancelled = 1;
    fetch_release(f);
    return rc;
  }
  if (p && !internal)
    p->stats.fetches++;
  if (out)
    *out = f;
  return 0;
}

void up_fetch_cancel(up_fetch_t *f)
{
  if (!f || f->cancelled || f->released || f->state == F_DONE)
    return;
  f->cancelled = 1;
  uv_timer_stop(&f->timer);
  if (f->queued)
    queue_remove(f->pool, f); /* at once: no dispatch may start it */
  if (f->child) {
    up_fetch_cancel(f->child);
    f->child = NULL;
  }
  if (f->u->in_curl_cb > 0)
    defer_push(f); /* released from the idle handle */
  else
    fetch_release(f);
}

const char *up_fetch_header(const up_fetch_t *f, const char *name)
{
  return hdr_get(f, name);
}

const char *up_fetch_url(const up_fetch_t *f)
{
  return f->url;
}

void up_fetch_timings(const up_fetch_t *f, up_timings_t *out)
{
  memset(out, 0, sizeof(*out));
  out->queue_us = f->queue_ns / 1000;
  out->token_us = f->token_ns / 1000;
  out->redirect_us = f->redirect_ns / 1000;
  out->first_byte_us = f->first_byte_ns / 1000;
  out->last_byte_us = f->last_byte_ns / 1000;
  out->hops = f->hops;
  out->token_fetches = f->token_fetches;
}
