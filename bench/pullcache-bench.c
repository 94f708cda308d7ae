/* pullcache-bench — pull images from a registry or mirror the way containerd does, and time it.
 *
 * One pull of IMAGE (per node, per run):
 *
 *   HEAD manifests/<tag>  (containerd's five-type Accept, ?ns= when --ns)
 *     | no Docker-Content-Digest on the answer -> GET manifests/<tag> and hash the body
 *     v
 *   GET manifests/<digest>  (the index or the manifest) -- verified
 *     | index: pick the --platform entries
 *     v
 *   GET manifests/<digest> per platform -- verified
 *     v
 *   GET blobs/<digest> for the config and every layer, --parallel at a time -- sha256 + size
 *
 * Every request follows redirects itself (up to 10 hops, like Go's net/http in containerd) and
 * answers a Bearer challenge by fetching an anonymous token from the realm; the token is then
 * attached only to requests for the host that challenged (scheme://host:port) and the repository
 * of the scope, never to another host a redirect leads to.
 *
 * Nodes: each --nodes N is one thread with its own curl multi handle (its own connection pool,
 * token cache and "blobs already here" set, all reset for every run). Nodes of one run start
 * together (a barrier) and pull the images one after another, as a kubelet does.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "core/num.h"
#include "core/pc.h"

#define BENCH_MAX_DOC (4 << 20) /* containerd rejects manifests above ~4 MiB */
#define BENCH_MAX_TOKEN (1 << 16)
#define BENCH_MAX_HOPS 10
#define BENCH_MAX_ERRS 16
#define BENCH_UA "pullcache-bench/0.1 (containerd-like)"

static const char ACCEPT_RESOLVE[] =
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

struct platform {
  char os[32], arch[32], variant[32];
};

struct image {
  const char *arg; /* as given */
  char *name;      /* repository path */
  char *ref;       /* tag or digest */
};

struct sample {
  double resolve_ms, ttfb_ms, pull_ms;
  uint64_t bytes;
  int requests, verified;
  bool ok;
};

struct errent {
  char *msg;
  int count;
};

struct bench {
  char *base; /* registry URL without trailing '/' */
  const char *ns;
  char *nsq; /* "?ns=<escaped>" or "" */
  struct platform *plats;
  int nplats;
  bool all_platforms, json, insecure, verbose;
  const char *plot; /* --plot FILE: the latency CDF chart (SVG), or NULL */
  int parallel, nodes, runs;
  long timeout;
  struct image *images;
  int nimages;
  struct sample *samples; /* [run][node][image] */
  double *walls;          /* [run] ms */
  struct errent errs[BENCH_MAX_ERRS];
  int nerrs, errs_dropped;
  pthread_mutex_t lock;
  pthread_barrier_t barrier;
};

struct token {
  char *hostport, *repo, *value;
};

struct node {
  struct bench *b;
  int id, run;
  CURLM *multi;
  struct token *tokens;
  int ntokens;
  char (*seen)[72];
  int nseen, capseen;
  pthread_t th;
};

struct desc {
  char digest[72];
  char media_type[128];
  int64_t size;
  bool layer;
};

struct pull {
  struct node *n;
  struct image *img;
  struct sample *s;
  double t0;
  struct desc *q;
  int nq, capq, qhead;
  char (*docs)[72]; /* manifests requested in this pull */
  int ndocs, capdocs;
  int active_blobs, outstanding;
  bool failed, ttfb_set;
};

enum xkind { X_HEAD, X_RESOLVE_GET, X_DOC, X_BLOB, X_TOKEN };
static const char *const XKIND[] = {"HEAD", "GET", "GET", "GET", "GET"};

struct xfer {
  struct pull *p;
  enum xkind kind;
  char *url;
  char digest[72];      /* expected; "" when unknown */
  char media_type[128]; /* for Accept */
  int64_t size;         /* expected; -1 when unknown */
  bool layer;
  int hops, auth_tries;
  CURL *easy;
  struct curl_slist *hdrs;
  EVP_MD_CTX *md;
  char *buf;
  size_t len, cap, maxbody;
  uint64_t got;
  long status;
  char h_digest[80], h_ctype[128];
  char *h_auth;
  struct xfer *parent;       /* X_TOKEN: the request to retry */
  char *tok_host, *tok_repo; /* X_TOKEN: where the token applies */
};

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  PC_ASSERT(n >= 0);
  char *s = pc_xmalloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

static void copy_str(char *dst, size_t cap, const char *src, size_t n)
{
  if (n >= cap)
    n = cap - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static void bench_error(struct bench *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void bench_error(struct bench *b, const char *fmt, ...)
{
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&b->lock);
  int i;
  for (i = 0; i < b->nerrs; i++)
    if (strcmp(b->errs[i].msg, msg) == 0)
      break;
  if (i < b->nerrs)
    b->errs[i].count++;
  else if (b->nerrs < BENCH_MAX_ERRS)
    b->errs[b->nerrs++] = (struct errent){pc_xstrdup(msg), 1};
  else
    b->errs_dropped++;
  pthread_mutex_unlock(&b->lock);
  if (b->verbose)
    fprintf(stderr, "error: %s\n", msg);
}

/* ---- URLs and tokens ------------------------------------------------------------------------ */

/* "scheme://host:port" of url into out and its path into *path (malloc'd); 0 or -1. */
static int url_split(const char *url, char *out, size_t cap, char **path)
{
  CURLU *u = curl_url();
  char *scheme = NULL, *host = NULL, *port = NULL;
  int rc = -1;
  if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
    goto out;
  if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
      curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
    goto out;
  snprintf(out, cap, "%s://%s:%s", scheme, host, port);
  if (path) {
    char *p = NULL;
    if (curl_url_get(u, CURLUPART_PATH, &p, 0) != CURLUE_OK)
      goto out;
    *path = pc_xstrdup(p);
    curl_free(p);
  }
  rc = 0;
out:
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(u);
  return rc;
}

/* The token this node holds for url's host and repository, or NULL. */
static const char *token_for(struct node *n, const char *url)
{
  char hp[512];
  char *path = NULL;
  const char *tok = NULL;
  if (url_split(url, hp, sizeof hp, &path))
    return NULL;
  for (int i = 0; i < n->ntokens && !tok; i++) {
    struct token *t = &n->tokens[i];
    if (strcmp(t->hostport, hp) != 0)
      continue;
    size_t rl = strlen(t->repo);
    if (rl == 0 || (strncmp(path, "/v2/", 4) == 0 && strncmp(path + 4, t->repo, rl) == 0 &&
                    path[4 + rl] == '/'))
      tok = t->value;
  }
  free(path);
  return tok;
}

static void token_put(struct node *n, const char *hp, const char *repo, const char *value)
{
  for (int i = 0; i < n->ntokens; i++) {
    struct token *t = &n->tokens[i];
    if (strcmp(t->hostport, hp) == 0 && strcmp(t->repo, repo) == 0) {
      free(t->value);
      t->value = pc_xstrdup(value);
      return;
    }
  }
  n->tokens = pc_xrealloc(n->tokens, sizeof *n->tokens * (size_t)(n->ntokens + 1));
  n->tokens[n->ntokens++] = (struct token){pc_xstrdup(hp), pc_xstrdup(repo), pc_xstrdup(value)};
}

static void tokens_clear(struct node *n)
{
  for (int i = 0; i < n->ntokens; i++) {
    free(n->tokens[i].hostport);
    free(n->tokens[i].repo);
    free(n->tokens[i].value);
  }
  free(n->tokens);
  n->tokens = NULL;
  n->ntokens = 0;
}

/* Value of key in a WWW-Authenticate challenge ('Bearer realm="..",service=".."'), malloc'd. */
static char *challenge_param(const char *ch, const char *key)
{
  size_t kl = strlen(key);
  const char *p = strchr(ch, ' ');
  while (p && *p) {
    while (*p == ' ' || *p == ',')
      p++;
    const char *eq = strchr(p, '=');
    if (!eq)
      return NULL;
    bool match = (size_t)(eq - p) == kl && strncasecmp(p, key, kl) == 0;
    const char *v = eq + 1, *e;
    if (*v == '"') {
      v++;
      e = strchr(v, '"');
      if (!e)
        return NULL;
      if (match)
        return pc_xstrndup(v, (size_t)(e - v));
      p = e + 1;
    } else {
      e = v + strcspn(v, ",");
      if (match)
        return pc_xstrndup(v, (size_t)(e - v));
      p = e;
    }
  }
  return NULL;
}

/* ---- transfers ------------------------------------------------------------------------------ */

static void xfer_send(struct xfer *x);
static void on_done(struct xfer *x, CURLcode res);

static size_t on_header(char *data, size_t size, size_t nitems, void *arg)
{
  struct xfer *x = arg;
  size_t n = size * nitems;
  if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
    const char *sp = memchr(data, ' ', n);
    uint64_t st = 0;
    x->status = sp && (size_t)(sp + 4 - data) <= n && pc_parse_u64_n(sp + 1, 3, 999, &st) == 0
                    ? (int)st
                    : 0;
    x->h_digest[0] = x->h_ctype[0] = '\0';
    free(x->h_auth);
    x->h_auth = NULL;
    return n;
  }
  const char *colon = memchr(data, ':', n);
  if (!colon)
    return n;
  size_t kl = (size_t)(colon - data);
  const char *v = colon + 1, *end = data + n;
  while (v < end && (*v == ' ' || *v == '\t'))
    v++;
  while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
    end--;
  size_t vl = (size_t)(end - v);
  if (kl == 21 && strncasecmp(data, "docker-content-digest", kl) == 0)
    copy_str(x->h_digest, sizeof x->h_digest, v, vl);
  else if (kl == 12 && strncasecmp(data, "content-type", kl) == 0) {
    const char *semi = memchr(v, ';', vl);
    copy_str(x->h_ctype, sizeof x->h_ctype, v, semi ? (size_t)(semi - v) : vl);
  } else if (kl == 16 && strncasecmp(data, "www-authenticate", kl) == 0) {
    free(x->h_auth);
    x->h_auth = pc_xstrndup(v, vl);
  }
  return n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
  struct xfer *x = arg;
  size_t n = size * nmemb;
  if (x->status < 200 || x->status > 299)
    return n; /* a redirect or error page: not content */
  if (x->kind == X_BLOB && x->layer && !x->p->ttfb_set) {
    x->p->ttfb_set = true;
    x->p->s->ttfb_ms = now_ms() - x->p->t0;
  }
  x->got += n;
  if (x->size >= 0 && x->got > (uint64_t)x->size)
    return 0; /* more than the descriptor says: abort (CURLE_WRITE_ERROR) */
  if (x->md)
    EVP_DigestUpdate(x->md, data, n);
  if (x->maxbody) {
    if (x->len + n > x->maxbody)
      return 0;
    if (x->len + n + 1 > x->cap) {
      x->cap = (x->len + n + 1) * 2;
      x->buf = pc_xrealloc(x->buf, x->cap);
    }
    memcpy(x->buf + x->len, data, n);
    x->len += n;
    x->buf[x->len] = '\0';
  }
  return n;
}

static struct xfer *xfer_new(struct pull *p, enum xkind kind, char *url)
{
  struct xfer *x = pc_xcalloc(1, sizeof *x);
  x->p = p;
  x->kind = kind;
  x->url = url;
  x->size = -1;
  if (kind == X_RESOLVE_GET || kind == X_DOC || kind == X_BLOB)
    x->md = EVP_MD_CTX_new();
  if (kind == X_RESOLVE_GET || kind == X_DOC)
    x->maxbody = BENCH_MAX_DOC;
  else if (kind == X_TOKEN)
    x->maxbody = BENCH_MAX_TOKEN;
  p->outstanding++;
  return x;
}

static void xfer_free(struct xfer *x)
{
  if (x->easy) {
    curl_multi_remove_handle(x->p->n->multi, x->easy);
    curl_easy_cleanup(x->easy);
  }
  curl_slist_free_all(x->hdrs);
  EVP_MD_CTX_free(x->md);
  free(x->buf);
  free(x->url);
  free(x->h_auth);
  free(x->tok_host);
  free(x->tok_repo);
  if (x->kind == X_BLOB)
    x->p->active_blobs--;
  x->p->outstanding--;
  free(x);
}

static void xfer_send(struct xfer *x)
{
  struct node *n = x->p->n;
  struct bench *b = n->b;
  if (x->easy) {
    curl_multi_remove_handle(n->multi, x->easy);
    curl_easy_cleanup(x->easy);
  }
  curl_slist_free_all(x->hdrs);
  x->hdrs = NULL;
  x->len = 0;
  x->got = 0;
  x->status = 0;
  if (x->md)
    EVP_DigestInit_ex(x->md, EVP_sha256(), NULL);

  char line[512];
  if (x->kind == X_HEAD || x->kind == X_RESOLVE_GET) {
    snprintf(line, sizeof line, "Accept: %s", ACCEPT_RESOLVE);
    x->hdrs = curl_slist_append(x->hdrs, line);
  } else if (x->kind != X_TOKEN) {
    snprintf(line, sizeof line, "Accept: %s%s*/*", x->media_type, x->media_type[0] ? ", " : "");
    x->hdrs = curl_slist_append(x->hdrs, line);
  }
  const char *tok = x->kind == X_TOKEN ? NULL : token_for(n, x->url);
  if (tok) {
    char *h = xasprintf("Authorization: Bearer %s", tok);
    x->hdrs = curl_slist_append(x->hdrs, h);
    free(h);
  }

  CURL *e = curl_easy_init();
  PC_ASSERT(e);
  x->easy = e;
  curl_easy_setopt(e, CURLOPT_URL, x->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, x);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->hdrs);
  curl_easy_setopt(e, CURLOPT_USERAGENT, BENCH_UA);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "gzip"); /* containerd 1.6: gzip, decoded */
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);      /* hops are ours: see the top comment */
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, b->timeout);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 256L * 1024);
  if (x->kind == X_HEAD)
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  if (b->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  x->p->s->requests++;
  CURLMcode mc = curl_multi_add_handle(n->multi, e);
  PC_ASSERT(mc == CURLM_OK);
}

static void pull_fail(struct pull *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void pull_fail(struct pull *p, const char *fmt, ...)
{
  char msg[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!p->failed)
    bench_error(p->n->b, "%s: %s", p->img->arg, msg);
  p->failed = true;
}

static char *repo_url(struct pull *p, const char *what, const char *ref)
{
  struct bench *b = p->n->b;
  return xasprintf("%s/v2/%s/%s/%s%s", b->base, p->img->name, what, ref, b->nsq);
}

static bool seen_add(char (**set)[72], int *n, int *cap, const char *digest)
{
  for (int i = 0; i < *n; i++)
    if (strcmp((*set)[i], digest) == 0)
      return false;
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 16;
    *set = pc_xrealloc(*set, sizeof **set * (size_t)*cap);
  }
  copy_str((*set)[(*n)++], 72, digest, strlen(digest));
  return true;
}

static void pump(struct pull *p)
{
  struct bench *b = p->n->b;
  while (!p->failed && p->active_blobs < b->parallel && p->qhead < p->nq) {
    struct desc *d = &p->q[p->qhead++];
    struct xfer *x = xfer_new(p, X_BLOB, repo_url(p, "blobs", d->digest));
    copy_str(x->digest, sizeof x->digest, d->digest, strlen(d->digest));
    copy_str(x->media_type, sizeof x->media_type, d->media_type, strlen(d->media_type));
    x->size = d->size;
    x->layer = d->layer;
    p->active_blobs++;
    xfer_send(x);
  }
}

static void enqueue_blob(struct pull *p, json_t *d, bool layer)
{
  struct node *n = p->n;
  const char *dg = json_string_value(json_object_get(d, "digest"));
  const char *mt = json_string_value(json_object_get(d, "mediaType"));
  json_t *sz = json_object_get(d, "size");
  if (!dg || strncmp(dg, "sha256:", 7) != 0 || strlen(dg) != 71 || !json_is_integer(sz)) {
    pull_fail(p, "bad descriptor in manifest");
    return;
  }
  if (!seen_add(&n->seen, &n->nseen, &n->capseen, dg))
    return; /* already pulled by this node in this run (shared layer) */
  if (p->nq == p->capq) {
    p->capq = p->capq ? p->capq * 2 : 16;
    p->q = pc_xrealloc(p->q, sizeof *p->q * (size_t)p->capq);
  }
  struct desc *q = &p->q[p->nq++];
  copy_str(q->digest, sizeof q->digest, dg, strlen(dg));
  copy_str(q->media_type, sizeof q->media_type, mt ? mt : "", mt ? strlen(mt) : 0);
  q->size = json_integer_value(sz);
  q->layer = layer;
}

static bool platform_match(const struct bench *b, json_t *plat)
{
  if (b->all_platforms)
    return true;
  const char *os = json_string_value(json_object_get(plat, "os"));
  const char *arch = json_string_value(json_object_get(plat, "architecture"));
  const char *var = json_string_value(json_object_get(plat, "variant"));
  for (int i = 0; i < b->nplats; i++) {
    const struct platform *w = &b->plats[i];
    if (os && arch && strcmp(os, w->os) == 0 && strcmp(arch, w->arch) == 0 &&
        (!w->variant[0] || (var && strcmp(var, w->variant) == 0)))
      return true;
  }
  return false;
}

/* An index or a manifest arrived (verified). */
static void handle_doc(struct pull *p, const char *body, size_t len, const char *ctype)
{
  json_error_t jerr;
  json_t *doc = json_loadb(body, len, 0, &jerr);
  if (!json_is_object(doc)) {
    pull_fail(p, "manifest is not a JSON object: %s", jerr.text);
    goto out;
  }
  json_t *mans = json_object_get(doc, "manifests");
  json_t *layers = json_object_get(doc, "layers");
  if (json_is_array(mans)) {
    size_t i;
    json_t *m;
    int picked = 0;
    json_array_foreach(mans, i, m)
    {
      if (!platform_match(p->n->b, json_object_get(m, "platform")))
        continue;
      const char *dg = json_string_value(json_object_get(m, "digest"));
      const char *mt = json_string_value(json_object_get(m, "mediaType"));
      json_t *sz = json_object_get(m, "size");
      if (!dg || strlen(dg) != 71 || strncmp(dg, "sha256:", 7) != 0) {
        pull_fail(p, "bad descriptor in index");
        goto out;
      }
      picked++;
      if (!seen_add(&p->docs, &p->ndocs, &p->capdocs, dg))
        continue;
      struct xfer *x = xfer_new(p, X_DOC, repo_url(p, "manifests", dg));
      copy_str(x->digest, sizeof x->digest, dg, strlen(dg));
      copy_str(x->media_type, sizeof x->media_type, mt ? mt : "", mt ? strlen(mt) : 0);
      x->size = json_is_integer(sz) ? json_integer_value(sz) : -1;
      xfer_send(x);
      if (!p->n->b->all_platforms && picked == p->n->b->nplats)
        break;
    }
    if (!picked)
      pull_fail(p, "no manifest in the index matches the platform(s) asked for");
  } else if (json_is_array(layers)) {
    json_t *cfg = json_object_get(doc, "config");
    if (json_is_object(cfg))
      enqueue_blob(p, cfg, false);
    size_t i;
    json_t *l;
    json_array_foreach(layers, i, l) enqueue_blob(p, l, true);
  } else {
    pull_fail(p, "unknown manifest kind (Content-Type %s)", ctype[0] ? ctype : "none");
  }
out:
  json_decref(doc);
}

static bool verify(struct xfer *x, char *out_digest)
{
  unsigned char md[32];
  unsigned int mdl = 0;
  EVP_DigestFinal_ex(x->md, md, &mdl);
  char hex[72] = "sha256:";
  for (int i = 0; i < 32; i++)
    snprintf(hex + 7 + 2 * i, 3, "%02x", md[i]);
  if (out_digest)
    copy_str(out_digest, 72, hex, strlen(hex));
  if (x->digest[0] && strcmp(hex, x->digest) != 0) {
    pull_fail(x->p, "digest mismatch for %s: got %s", x->digest, hex);
    return false;
  }
  if (x->size >= 0 && x->got != (uint64_t)x->size) {
    pull_fail(x->p, "size mismatch for %s: %llu bytes, descriptor says %lld", x->digest,
              (unsigned long long)x->got, (long long)x->size);
    return false;
  }
  x->p->s->verified++;
  return true;
}

static void on_token(struct xfer *x)
{
  struct xfer *parent = x->parent;
  json_t *j = json_loadb(x->buf ? x->buf : "", x->len, 0, NULL);
  const char *tok = json_string_value(json_object_get(j, "token"));
  if (!tok)
    tok = json_string_value(json_object_get(j, "access_token"));
  if (!tok) {
    pull_fail(x->p, "token endpoint %s gave no token", x->url);
  } else {
    token_put(x->p->n, x->tok_host, x->tok_repo, tok);
    x->parent = NULL; /* retried: no longer ours to free */
    xfer_send(parent);
  }
  json_decref(j);
}

/* A 401 with a Bearer challenge: fetch a token for the challenging host, then retry. */
static bool start_token(struct xfer *x)
{
  char *realm = challenge_param(x->h_auth, "realm");
  char *service = challenge_param(x->h_auth, "service");
  char *scope = challenge_param(x->h_auth, "scope");
  char hp[512];
  bool ok = false;
  if (!realm || strncasecmp(x->h_auth, "Bearer ", 7) != 0 || url_split(x->url, hp, sizeof hp, NULL))
    goto out;
  char *es = curl_easy_escape(NULL, service ? service : "", 0);
  char *esc = curl_easy_escape(NULL, scope ? scope : "", 0);
  char *url = xasprintf("%s%sservice=%s%s%s", realm, strchr(realm, '?') ? "&" : "?", es,
                        scope ? "&scope=" : "", scope ? esc : "");
  curl_free(es);
  curl_free(esc);
  struct xfer *t = xfer_new(x->p, X_TOKEN, url);
  t->parent = x;
  t->tok_host = pc_xstrdup(hp);
  /* scope "repository:NAME:pull" -> NAME; no scope -> the token applies to the whole host */
  const char *a = scope ? strchr(scope, ':') : NULL;
  const char *z = scope ? strrchr(scope, ':') : NULL;
  t->tok_repo = a && z > a ? pc_xstrndup(a + 1, (size_t)(z - a - 1)) : pc_xstrdup("");
  x->auth_tries++;
  xfer_send(t);
  ok = true;
out:
  free(realm);
  free(service);
  free(scope);
  return ok;
}

static void on_done(struct xfer *x, CURLcode res)
{
  struct pull *p = x->p;
  struct bench *b = p->n->b;
  char *redir = NULL;
  if (b->verbose)
    fprintf(stderr, "node %d: %s %s -> %ld (%llu bytes)%s%s\n", p->n->id, XKIND[x->kind], x->url,
            x->status, (unsigned long long)x->got, res ? " curl: " : "",
            res ? curl_easy_strerror(res) : "");
  if (res != CURLE_OK) {
    if (res == CURLE_WRITE_ERROR && x->size >= 0 && x->got > (uint64_t)x->size)
      pull_fail(p, "%s: more bytes than the descriptor's %lld", x->digest, (long long)x->size);
    else
      pull_fail(p, "%s %s: %s", XKIND[x->kind], x->url, curl_easy_strerror(res));
    goto free;
  }
  if (x->status == 301 || x->status == 302 || x->status == 303 || x->status == 307 ||
      x->status == 308) {
    curl_easy_getinfo(x->easy, CURLINFO_REDIRECT_URL, &redir);
    if (!redir || ++x->hops > BENCH_MAX_HOPS) {
      pull_fail(p, "%s: %s", x->url, redir ? "too many redirects" : "redirect without Location");
      goto free;
    }
    char *u = pc_xstrdup(redir);
    free(x->url);
    x->url = u;
    xfer_send(x);
    return;
  }
  if (x->status == 401 && x->kind != X_TOKEN && x->h_auth && x->auth_tries < 2) {
    if (start_token(x))
      return;
  }
  if (x->status < 200 || x->status > 299) {
    pull_fail(p, "%s %s -> HTTP %ld", XKIND[x->kind], x->url, x->status);
    goto free;
  }
  if (x->kind != X_HEAD && x->kind != X_TOKEN)
    p->s->bytes += x->got; /* image bytes: documents and blobs */
  switch (x->kind) {
  case X_TOKEN:
    on_token(x);
    break;
  case X_HEAD:
    p->s->resolve_ms = now_ms() - p->t0;
    if (!x->h_digest[0] || strncmp(x->h_digest, "sha256:", 7) != 0) {
      /* containerd: no digest on the HEAD answer -> GET and hash the body */
      struct xfer *g = xfer_new(p, X_RESOLVE_GET, repo_url(p, "manifests", p->img->ref));
      xfer_send(g);
    } else {
      struct xfer *g = xfer_new(p, X_DOC, repo_url(p, "manifests", x->h_digest));
      copy_str(g->digest, sizeof g->digest, x->h_digest, strlen(x->h_digest));
      copy_str(g->media_type, sizeof g->media_type, x->h_ctype, strlen(x->h_ctype));
      xfer_send(g);
    }
    break;
  case X_RESOLVE_GET:
    p->s->resolve_ms = now_ms() - p->t0;
    if (verify(x, NULL))
      handle_doc(p, x->buf ? x->buf : "", x->len, x->h_ctype);
    break;
  case X_DOC:
    if (verify(x, NULL))
      handle_doc(p, x->buf ? x->buf : "", x->len, x->h_ctype);
    break;
  case X_BLOB:
    verify(x, NULL);
    break;
  }
free:
  if (x->kind == X_TOKEN && x->parent)
    xfer_free(x->parent); /* the token never came: the challenged request fails with it */
  xfer_free(x);
}

/* ---- nodes ---------------------------------------------------------------------------------- */

static void pull_image(struct node *n, struct image *img, struct sample *s)
{
  struct pull p = {.n = n, .img = img, .s = s, .t0 = now_ms()};
  memset(s, 0, sizeof *s);
  bool digest_ref = strncmp(img->ref, "sha256:", 7) == 0;
  struct xfer *x = xfer_new(&p, X_HEAD, repo_url(&p, "manifests", img->ref));
  if (digest_ref)
    copy_str(x->digest, sizeof x->digest, img->ref, strlen(img->ref));
  xfer_send(x);
  while (p.outstanding > 0) {
    int running = 0;
    curl_multi_perform(n->multi, &running);
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(n->multi, &left))) {
      if (m->msg != CURLMSG_DONE)
        continue;
      struct xfer *d = NULL;
      CURLcode res = m->data.result;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&d);
      on_done(d, res);
      pump(&p);
    }
    if (p.outstanding > 0)
      curl_multi_poll(n->multi, NULL, 0, 100, NULL);
  }
  s->pull_ms = now_ms() - p.t0;
  s->ok = !p.failed;
  if (s->ok && !p.ttfb_set)
    s->ttfb_ms = s->pull_ms; /* no layer (empty image): first byte = done */
  free(p.q);
  free(p.docs);
}

static void *node_main(void *arg)
{
  struct node *n = arg;
  struct bench *b = n->b;
  n->multi = curl_multi_init();
  PC_ASSERT(n->multi);
  curl_multi_setopt(n->multi, CURLMOPT_MAXCONNECTS, 64L);
  pthread_barrier_wait(&b->barrier);
  for (int i = 0; i < b->nimages; i++) {
    struct sample *s =
        &b->samples[((size_t)n->run * (size_t)b->nodes + (size_t)n->id) * (size_t)b->nimages +
                    (size_t)i];
    pull_image(n, &b->images[i], s);
  }
  curl_multi_cleanup(n->multi);
  n->multi = NULL;
  tokens_clear(n);
  free(n->seen);
  n->seen = NULL;
  n->nseen = n->capseen = 0;
  return NULL;
}

/* ---- statistics and output ------------------------------------------------------------------ */

struct pct {
  int n;
  double min, p50, p90, p99, max, mean;
};

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static struct pct percentiles(double *v, int n)
{
  struct pct r = {.n = n};
  if (n == 0)
    return r;
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  double sum = 0;
  for (int i = 0; i < n; i++)
    sum += v[i];
#define RANK(q) v[(int)ceil((q) / 100.0 * n) - 1 < 0 ? 0 : (int)ceil((q) / 100.0 * n) - 1]
  r.min = v[0];
  r.p50 = RANK(50);
  r.p90 = RANK(90);
  r.p99 = RANK(99);
  r.max = v[n - 1];
  r.mean = sum / n;
#undef RANK
  return r;
}

static json_t *pct_json(struct pct p)
{
  return json_pack("{s:i,s:f,s:f,s:f,s:f,s:f,s:f}", "n", p.n, "min", p.min, "p50", p.p50, "p90",
                   p.p90, "p99", p.p99, "max", p.max, "mean", p.mean);
}

struct agg {
  struct pct resolve, ttfb, pull, mbps;
  int pulls, errors, verified, requests;
  uint64_t bytes, bytes_per_pull;
};

/* Statistics over the samples of image idx (-1: all images). */
static struct agg aggregate(struct bench *b, int idx)
{
  struct agg a = {0};
  size_t cap = (size_t)b->runs * (size_t)b->nodes * (size_t)b->nimages;
  double *r = pc_xcalloc(cap, sizeof *r), *t = pc_xcalloc(cap, sizeof *t),
         *pl = pc_xcalloc(cap, sizeof *pl), *mb = pc_xcalloc(cap, sizeof *mb);
  int n = 0;
  for (size_t k = 0; k < cap; k++) {
    int img = (int)(k % (size_t)b->nimages);
    if (idx >= 0 && img != idx)
      continue;
    struct sample *s = &b->samples[k];
    a.pulls++;
    a.requests += s->requests;
    a.verified += s->verified;
    a.bytes += s->bytes;
    if (!s->ok) {
      a.errors++;
      continue;
    }
    if (s->bytes > a.bytes_per_pull)
      a.bytes_per_pull = s->bytes;
    r[n] = s->resolve_ms;
    t[n] = s->ttfb_ms;
    pl[n] = s->pull_ms;
    mb[n] = s->pull_ms > 0 ? (double)s->bytes / 1e6 / (s->pull_ms / 1e3) : 0;
    n++;
  }
  a.resolve = percentiles(r, n);
  a.ttfb = percentiles(t, n);
  a.pull = percentiles(pl, n);
  a.mbps = percentiles(mb, n);
  free(r);
  free(t);
  free(pl);
  free(mb);
  return a;
}

static void print_table(struct bench *b)
{
  printf("pullcache-bench %s%s%s: %d node%s x %d run%s, parallel %d, ", b->base,
         b->ns ? " ns=" : "", b->ns ? b->ns : "", b->nodes, b->nodes == 1 ? "" : "s", b->runs,
         b->runs == 1 ? "" : "s", b->parallel);
  if (b->all_platforms)
    printf("all platforms\n");
  else
    for (int i = 0; i < b->nplats; i++)
      printf("%s/%s%s%s%s", b->plats[i].os, b->plats[i].arch, b->plats[i].variant[0] ? "/" : "",
             b->plats[i].variant, i + 1 < b->nplats ? "," : "\n");
  printf("times in ms (p50 / p90 / p99 / max over pulls); MB/s is the median per pull\n\n");
  printf("%-28s %5s %4s  %-27s  %-27s  %-27s %9s %8s\n", "image", "pulls", "err", "resolve",
         "first layer byte", "pull", "MB/pull", "MB/s");
  for (int i = -1; i < b->nimages; i++) {
    if (i == -1)
      continue;
    struct agg a = aggregate(b, i);
    char c1[40], c2[40], c3[40];
    snprintf(c1, sizeof c1, "%.1f/%.1f/%.1f/%.1f", a.resolve.p50, a.resolve.p90, a.resolve.p99,
             a.resolve.max);
    snprintf(c2, sizeof c2, "%.1f/%.1f/%.1f/%.1f", a.ttfb.p50, a.ttfb.p90, a.ttfb.p99, a.ttfb.max);
    snprintf(c3, sizeof c3, "%.1f/%.1f/%.1f/%.1f", a.pull.p50, a.pull.p90, a.pull.p99, a.pull.max);
    printf("%-28s %5d %4d  %-27s  %-27s  %-27s %9.2f %8.1f\n", b->images[i].arg, a.pulls, a.errors,
           c1, c2, c3, (double)a.bytes_per_pull / 1e6, a.mbps.p50);
  }
  struct agg all = aggregate(b, -1);
  double *w = pc_xcalloc((size_t)b->runs, sizeof *w);
  memcpy(w, b->walls, sizeof *w * (size_t)b->runs);
  struct pct wall = percentiles(w, b->runs);
  double wsum = 0;
  for (int r = 0; r < b->runs; r++)
    wsum += b->walls[r];
  printf("\noverall: %d pulls, %d errors, %d digests verified, %d requests, %.2f MB\n", all.pulls,
         all.errors, all.verified, all.requests, (double)all.bytes / 1e6);
  printf("run wall time (all nodes, all images) ms: p50 %.1f  min %.1f  max %.1f;"
         " aggregate %.1f MB/s\n",
         wall.p50, wall.min, wall.max, wsum > 0 ? (double)all.bytes / 1e6 / (wsum / 1e3) : 0.0);
  for (int i = 0; i < b->nerrs; i++)
    printf("error (x%d): %s\n", b->errs[i].count, b->errs[i].msg);
  if (b->errs_dropped)
    printf("(%d more errors of other kinds)\n", b->errs_dropped);
  free(w);
}

static void print_json(struct bench *b)
{
  json_t *plats = json_array();
  for (int i = 0; i < b->nplats && !b->all_platforms; i++)
    json_array_append_new(plats,
                          json_sprintf("%s/%s%s%s", b->plats[i].os, b->plats[i].arch,
                                       b->plats[i].variant[0] ? "/" : "", b->plats[i].variant));
  json_t *imgs = json_array();
  for (int i = 0; i < b->nimages; i++) {
    struct agg a = aggregate(b, i);
    json_array_append_new(
        imgs, json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:I,s:I,s:o,s:o,s:o,s:o}", "image",
                        b->images[i].arg, "name", b->images[i].name, "ref", b->images[i].ref,
                        "pulls", a.pulls, "errors", a.errors, "verified", a.verified, "requests",
                        a.requests, "bytes", (json_int_t)a.bytes, "bytes_per_pull",
                        (json_int_t)a.bytes_per_pull, "resolve_ms", pct_json(a.resolve), "ttfb_ms",
                        pct_json(a.ttfb), "pull_ms", pct_json(a.pull), "mbps", pct_json(a.mbps)));
  }
  struct agg all = aggregate(b, -1);
  json_t *walls = json_array();
  double wsum = 0;
  for (int r = 0; r < b->runs; r++) {
    json_array_append_new(walls, json_real(b->walls[r]));
    wsum += b->walls[r];
  }
  json_t *errs = json_array();
  for (int i = 0; i < b->nerrs; i++)
    json_array_append_new(
        errs, json_pack("{s:s,s:i}", "message", b->errs[i].msg, "count", b->errs[i].count));
  json_t *out = json_pack(
      "{s:s,s:s?,s:i,s:i,s:i,s:b,s:o,s:o,s:{s:i,s:i,s:i,s:i,s:I,s:o,s:o,s:o,s:o,s:o,s:f},s:o,s:i}",
      "registry", b->base, "ns", b->ns, "nodes", b->nodes, "runs", b->runs, "parallel", b->parallel,
      "all_platforms", b->all_platforms, "platforms", plats, "images", imgs, "overall", "pulls",
      all.pulls, "errors", all.errors, "verified", all.verified, "requests", all.requests, "bytes",
      (json_int_t)all.bytes, "resolve_ms", pct_json(all.resolve), "ttfb_ms", pct_json(all.ttfb),
      "pull_ms", pct_json(all.pull), "mbps", pct_json(all.mbps), "wall_ms", walls,
      "throughput_mbps", wsum > 0 ? (double)all.bytes / 1e6 / (wsum / 1e3) : 0.0, "error_messages",
      errs, "errors_dropped", b->errs_dropped);
  PC_ASSERT(out);
  json_dumpf(out, stdout, JSON_INDENT(2));
  fputc('\n', stdout);
  json_decref(out);
}

/* ---- command line --------------------------------------------------------------------------- */

/* ---- --plot: the latency CDF with gnuplot -------------------------------------------------- */

/* One gnuplot data block: the sorted values v[0..n) as "ms fraction" lines. */
static void cdf_block(FILE *f, const char *title, double *v, size_t n)
{
  qsort(v, n, sizeof *v, cmp_double);
  fprintf(f, "# %s\n", title);
  for (size_t i = 0; i < n; i++)
    fprintf(f, "%.3f %.6f\n", v[i], (double)(i + 1) / (double)n);
  fprintf(f, "\n\n");
}

/* Write <plot>.dat (one block per image, then the whole node when several images) and draw
 * <plot> with gnuplot. 0, or -1 (said on stderr). */
static int plot_cdf(struct bench *b)
{
  size_t per = (size_t)b->runs * (size_t)b->nodes, blocks = 0;
  double *v = pc_xcalloc(per, sizeof *v);
  char *dat = xasprintf("%s.dat", b->plot), *gp = xasprintf("%s.gp", b->plot);
  char **titles = pc_xcalloc((size_t)b->nimages + 1, sizeof *titles);
  int rc = -1;
  FILE *f = fopen(dat, "w");
  if (!f) {
    fprintf(stderr, "pullcache-bench: %s: %s\n", dat, strerror(errno));
    goto done;
  }
  fprintf(f,
          "# pullcache-bench --plot: pull time in ms, share of pulls done (%d nodes x %d runs)\n",
          b->nodes, b->runs);
  for (int i = 0; i <= b->nimages; i++) {
    size_t n = 0;
    if (i == b->nimages && b->nimages < 2)
      break;
    for (size_t k = 0; k < per; k++) {
      double sum = 0;
      bool ok = true;
      for (int j = i < b->nimages ? i : 0; j < (i < b->nimages ? i + 1 : b->nimages); j++) {
        const struct sample *s = &b->samples[k * (size_t)b->nimages + (size_t)j];
        ok = ok && s->ok;
        sum += s->pull_ms;
      }
      if (ok)
        v[n++] = sum;
    }
    titles[blocks] = i < b->nimages ? xasprintf("%s:%s", b->images[i].name, b->images[i].ref)
                                    : pc_xstrdup("whole node (every image)");
    if (!n) { /* every pull of it failed: an empty block keeps the indexes aligned */
      fprintf(f, "# %s: no successful pull\nNaN NaN\n\n\n", titles[blocks]);
    } else {
      cdf_block(f, titles[blocks], v, n);
    }
    blocks++;
  }
  if (fclose(f)) {
    fprintf(stderr, "pullcache-bench: %s: %s\n", dat, strerror(errno));
    goto done;
  }
  f = fopen(gp, "w");
  if (!f) {
    fprintf(stderr, "pullcache-bench: %s: %s\n", gp, strerror(errno));
    goto done;
  }
  fprintf(f,
          "set terminal svg size 900,520 dynamic enhanced font 'sans,12' background '#ffffff'\n"
          "set output '%s'\nset title 'pullcache-bench: pull latency CDF, %d nodes x %d runs'\n"
          "set xlabel 'pull time (ms)'\nset ylabel 'share of pulls done'\nset yrange [0:1]\n"
          "set grid\nset key bottom right\nset style data steps\nplot ",
          b->plot, b->nodes, b->runs);
  for (size_t i = 0; i < blocks; i++) {
    fprintf(f, "%s'%s' index %zu using 1:2 title '", i ? ", " : "", dat, i);
    for (const char *t = titles[i]; *t; t++) /* a title is an image name: keep it a string */
      if (*t != '\'' && *t != '\\')
        fputc(*t, f);
    fprintf(f, "' lw 2");
  }
  fprintf(f, "\n");
  if (fclose(f)) {
    fprintf(stderr, "pullcache-bench: %s: %s\n", gp, strerror(errno));
    goto done;
  }
  pid_t pid;
  static char prog[] = "gnuplot";
  char *argv[] = {prog, gp, NULL};
  extern char **environ;
  int e = posix_spawnp(&pid, "gnuplot", NULL, NULL, argv, environ);
  if (e) {
    fprintf(stderr, "pullcache-bench: gnuplot: %s (install gnuplot-nox)\n", strerror(e));
    goto done;
  }
  int st = -1;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
    ;
  if (!WIFEXITED(st) || WEXITSTATUS(st)) {
    fprintf(stderr, "pullcache-bench: gnuplot %s failed\n", gp);
    goto done;
  }
  rc = 0;
done:
  for (size_t i = 0; i < blocks; i++)
    free(titles[i]);
  free(titles);
  free(v);
  free(dat);
  free(gp);
  return rc;
}

/* The help text is laid out as it prints. */
// clang-format off
static void usage(FILE *f)
{
  fprintf(f,
"usage: pullcache-bench [options] REGISTRY_URL IMAGE[:TAG|@sha256:DIGEST]...\n"
"\n"
"Pull images from a registry or mirror the way containerd does and report how long it took:\n"
"HEAD the tag (containerd's Accept list), GET the index, pick the platform's manifest, then the\n"
"config and layers in parallel. Every digest and size is verified; nothing is written to disk.\n"
"Redirects are followed hop by hop and anonymous Bearer tokens are fetched from the realm of a\n"
"401 and sent only to the host that asked (as registry.k8s.io -> Artifact Registry needs).\n"
"\n"
"options:\n"
"  --ns HOST            add ?ns=HOST to every request, as containerd does when talking to a\n"
"                       mirror (hosts.toml) for images of registry HOST\n"
"  --platform OS/ARCH[/VARIANT]  platform to pull (repeatable; default linux/amd64)\n"
"  --all-platforms      pull every manifest of the index\n"
"  --parallel N         concurrent blob downloads per node (default 3, containerd's default)\n"
"  --nodes N            N simulated nodes pulling at once, each with its own connection pool\n"
"                       and token cache (default 1)\n"
"  --runs R             repeat the whole pull R times (default 1); each run starts cold on the\n"
"                       client side (new connections, no tokens, no blobs)\n"
"  --timeout S          abort a request that moves no byte for S seconds (default 30)\n"
"  --insecure           accept self-signed TLS certificates\n"
"  --json               machine-readable output (one JSON object on stdout)\n"
"  --plot FILE          draw the latency CDF of this run with gnuplot into FILE (SVG): per\n"
"                       image, the share of pulls (nodes x runs) done by each time, and with\n"
"                       several images each node's whole pull; the points go to FILE.dat\n"
"  -v, --verbose        print every request with its status on stderr\n"
"  -h, --help           this help\n"
"\n"
"REGISTRY_URL is http:// or https:// (https:// assumed without a scheme). IMAGE is the\n"
"repository path on that registry, without the registry host; the tag defaults to latest.\n"
"\n"
"examples:\n"
"  pullcache-bench https://registry.k8s.io pause:3.10 etcd:3.5.16-0\n"
"      straight from registry.k8s.io (redirects, tokens and all)\n"
"  pullcache-bench --ns registry.k8s.io http://127.0.0.1:5000 pause:3.10 coredns/coredns:v1.11.3\n"
"      through a mirror, as containerd with hosts.toml would ask it\n"
"  pullcache-bench --nodes 50 --runs 3 --ns registry.k8s.io http://mirror:5000 etcd:3.5.16-0\n"
"      50 nodes pulling etcd at once, three times\n"
"  pullcache-bench --json --platform linux/amd64 --platform linux/arm64 URL kube-proxy:v1.32.0\n"
"\n"
"exit status: 0 when every pull succeeded, 1 when any failed, 2 on bad usage.\n");
}
// clang-format on

static int parse_int(const char *s, int lo, int hi, int *out)
{
  int64_t v;
  if (pc_parse_i64(s, lo, hi, &v) < 0)
    return -1;
  *out = (int)v;
  return 0;
}

static int parse_platform(const char *s, struct platform *p)
{
  memset(p, 0, sizeof *p);
  const char *a = strchr(s, '/');
  if (!a || a == s)
    return -1;
  const char *v = strchr(a + 1, '/');
  size_t al = v ? (size_t)(v - a - 1) : strlen(a + 1);
  if (al == 0 || (size_t)(a - s) >= sizeof p->os || al >= sizeof p->arch ||
      (v && strlen(v + 1) >= sizeof p->variant))
    return -1;
  copy_str(p->os, sizeof p->os, s, (size_t)(a - s));
  copy_str(p->arch, sizeof p->arch, a + 1, al);
  if (v)
    copy_str(p->variant, sizeof p->variant, v + 1, strlen(v + 1));
  return 0;
}

static void parse_image(const char *arg, struct image *img)
{
  img->arg = arg;
  const char *at = strchr(arg, '@');
  const char *slash = strrchr(arg, '/');
  const char *colon = strrchr(arg, ':');
  if (at) {
    img->name = pc_xstrndup(arg, (size_t)(at - arg));
    img->ref = pc_xstrdup(at + 1);
  } else if (colon && (!slash || colon > slash)) {
    img->name = pc_xstrndup(arg, (size_t)(colon - arg));
    img->ref = pc_xstrdup(colon + 1);
  } else {
    img->name = pc_xstrdup(arg);
    img->ref = pc_xstrdup("latest");
  }
}

int main(int argc, char **argv)
{
  static const struct option opts[] = {{"ns", required_argument, NULL, 'n'},
                                       {"platform", required_argument, NULL, 'p'},
                                       {"all-platforms", no_argument, NULL, 'a'},
                                       {"parallel", required_argument, NULL, 'P'},
                                       {"nodes", required_argument, NULL, 'N'},
                                       {"runs", required_argument, NULL, 'r'},
                                       {"timeout", required_argument, NULL, 't'},
                                       {"insecure", no_argument, NULL, 'k'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"plot", required_argument, NULL, 'G'},
                                       {NULL, 0, NULL, 0}};
  struct bench b = {.parallel = 3, .nodes = 1, .runs = 1, .timeout = 30};
  struct node *nodes = NULL;
  int rc = 2, c, t;
  pthread_mutex_init(&b.lock, NULL);
  while ((c = getopt_long(argc, argv, "vhk", opts, NULL)) != -1) {
    switch (c) {
    case 'n':
      b.ns = optarg;
      break;
    case 'p':
      b.plats = pc_xrealloc(b.plats, sizeof *b.plats * (size_t)(b.nplats + 1));
      if (parse_platform(optarg, &b.plats[b.nplats++])) {
        fprintf(stderr, "pullcache-bench: bad --platform %s (want os/arch[/variant])\n", optarg);
        goto out;
      }
      break;
    case 'a':
      b.all_platforms = true;
      break;
    case 'P':
    case 'N':
    case 'r':
    case 't':
      if (parse_int(optarg, 1, c == 'N' ? 4096 : 100000, &t)) {
        fprintf(stderr, "pullcache-bench: bad number %s\n", optarg);
        goto out;
      }
      if (c == 'P')
        b.parallel = t;
      else if (c == 'N')
        b.nodes = t;
      else if (c == 'r')
        b.runs = t;
      else
        b.timeout = t;
      break;
    case 'k':
      b.insecure = true;
      break;
    case 'j':
      b.json = true;
      break;
    case 'v':
      b.verbose = true;
      break;
    case 'G':
      if (!optarg[0] || strpbrk(optarg, "'\n")) {
        fprintf(stderr, "pullcache-bench: --plot needs a file name without ' or newline\n");
        goto out;
      }
      b.plot = optarg;
      break;
    case 'h':
      usage(stdout);
      rc = 0;
      goto out;
    default:
      usage(stderr);
      goto out;
    }
  }
  if (argc - optind < 2) {
    usage(stderr);
    goto out;
  }
  if (!b.nplats) {
    b.plats = pc_xcalloc(1, sizeof *b.plats);
    parse_platform("linux/amd64", &b.plats[0]);
    b.nplats = 1;
  }
  const char *reg = argv[optind];
  b.base = strstr(reg, "://") ? pc_xstrdup(reg) : xasprintf("https://%s", reg);
  size_t bl = strlen(b.base);
  while (bl > 0 && b.base[bl - 1] == '/')
    b.base[--bl] = '\0';
  if (strncmp(b.base, "http://", 7) != 0 && strncmp(b.base, "https://", 8) != 0) {
    fprintf(stderr, "pullcache-bench: REGISTRY_URL must be http:// or https://\n");
    goto out;
  }
  b.nimages = argc - optind - 1;
  b.images = pc_xcalloc((size_t)b.nimages, sizeof *b.images);
  for (int i = 0; i < b.nimages; i++)
    parse_image(argv[optind + 1 + i], &b.images[i]);

  if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) {
    fprintf(stderr, "pullcache-bench: curl_global_init failed\n");
    goto out;
  }
  if (b.ns) {
    char *e = curl_easy_escape(NULL, b.ns, 0);
    b.nsq = xasprintf("?ns=%s", e);
    curl_free(e);
  } else {
    b.nsq = pc_xstrdup("");
  }
  b.samples = pc_xcalloc((size_t)b.runs * (size_t)b.nodes * (size_t)b.nimages, sizeof *b.samples);
  b.walls = pc_xcalloc((size_t)b.runs, sizeof *b.walls);
  nodes = pc_xcalloc((size_t)b.nodes, sizeof *nodes);
  for (int r = 0; r < b.runs; r++) {
    pthread_barrier_init(&b.barrier, NULL, (unsigned)b.nodes + 1);
    for (int i = 0; i < b.nodes; i++) {
      nodes[i] = (struct node){.b = &b, .id = i, .run = r};
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setstacksize(&attr, 512 * 1024);
      int e = pthread_create(&nodes[i].th, &attr, node_main, &nodes[i]);
      pthread_attr_destroy(&attr);
      if (e)
        pc_fatal("pthread_create: %s", strerror(e));
    }
    pthread_barrier_wait(&b.barrier);
    double t0 = now_ms();
    for (int i = 0; i < b.nodes; i++)
      pthread_join(nodes[i].th, NULL);
    b.walls[r] = now_ms() - t0;
    pthread_barrier_destroy(&b.barrier);
  }
  if (b.json)
    print_json(&b);
  else
    print_table(&b);
  rc = aggregate(&b, -1).errors ? 1 : 0;
  if (b.plot && plot_cdf(&b))
    rc = 1;
  curl_global_cleanup();
out:
  for (int i = 0; i < b.nimages; i++) {
    free(b.images[i].name);
    free(b.images[i].ref);
  }
  for (int i = 0; i < b.nerrs; i++)
    free(b.errs[i].msg);
  free(b.images);
  free(b.plats);
  free(b.base);
  free(b.nsq);
  free(b.samples);
  free(b.walls);
  free(nodes);
  pthread_mutex_destroy(&b.lock);
  return rc;
}
