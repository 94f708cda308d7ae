/* daemon/listing — referrers and tags/list from the upstream (see listing.h). */
#include "daemon/listing.h"

#include <jansson.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/answer.h"
#include "daemon/meta.h"
#include "daemon/mirror.h"
#include "daemon/reqctx.h"
#include "daemon/upstream.h"

#define CT_OCI_INDEX "application/vnd.oci.image.index.v1+json"

/* ---- the local tag list (the fallback) ----------------------------------------------------- */

typedef struct tags_ctx {
  char **v; /**< tags collected (malloc'd copies) */
  size_t n, cap;
  size_t want;      /**< stop the store listing after this many (limit + 1) */
  const char *last; /**< only tags after this one ("" = all) */
  int pending;      /**< a tag of this repository is being stored right now */
} tags_ctx_t;

static void tags_push(tags_ctx_t *c, const char *tag)
{
  if (c->n == c->cap) {
    c->cap = c->cap ? c->cap * 2 : 16;
    c->v = pc_xrealloc(c->v, c->cap * sizeof(*c->v));
  }
  c->v[c->n++] = pc_xstrdup(tag);
}

static int on_tag(void *arg, const char *tag, const store_tag_t *t)
{
  tags_ctx_t *c = arg;
  (void)t;
  tags_push(c, tag);
  return c->n >= c->want;
}

/* A tag a manifest job has answered and is still writing (skopeo lists tags right after
 * pulling one): it is listed like a stored one. */
static void on_pending_tag(void *arg, const char *tag)
{
  tags_ctx_t *c = arg;
  c->pending = 1;
  if (c->want > 1 && (!c->last[0] || strcmp(tag, c->last) > 0))
    tags_push(c, tag);
}

static int on_any_tag(void *arg, const char *tag, const store_tag_t *t)
{
  (void)tag;
  (void)t;
  *(int *)arg = 1;
  return 1;
}

static int tag_cmp(const void *a, const void *b)
{
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The tags of (upstream, repository) after `last`, sorted, without duplicates. */
static int tags_collect(daemon_t *d, const route_t *r, unsigned limit, tags_ctx_t *c)
{
  const daemon_upstream_t *up = d->ups[r->upstream];
  c->want = (size_t)limit + 1;
  c->last = r->last;
  if (limit > 0) {
    int rc =
        store_tag_list(d->store, up->conf.name, r->name, r->last[0] ? r->last : NULL, on_tag, c);
    if (rc < 0)
      return rc;
  }
  mirror_tags_storing(d->mirror, up, r->name, on_pending_tag, c);
  if (c->n > 1)
    qsort(c->v, c->n, sizeof(*c->v), tag_cmp);
  size_t o = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (o && strcmp(c->v[o - 1], c->v[i]) == 0)
      free(c->v[i]);
    else
      c->v[o++] = c->v[i];
  }
  c->n = o;
  return 0;
}

/* The tags this mirror knows, because the upstream gave no answer (why: its error). */
static void tags_local(daemon_t *d, srv_req_t *req, const route_t *r, int why)
{
  const daemon_upstream_t *up = d->ups[r->upstream];
  unsigned limit = r->has_n ? r->n : UINT32_MAX;
  tags_ctx_t c = {0};
  json_t *tags = json_array(), *root = NULL;
  char *body = NULL;
  int rc = tags_collect(d, r, limit, &c), exists = c.pending;

  if (rc < 0) {
    answer_error(req, rc, "cannot list tags");
    goto out;
  }
  if (c.n == 0 && !exists) {
    rc = store_tag_list(d->store, up->conf.name, r->name, NULL, on_any_tag, &exists);
    if (rc < 0) {
      answer_error(req, rc, "cannot list tags");
      goto out;
    }
    if (!exists) {
      answer_error(req, PC_E_NAME_UNKNOWN, r->name);
      goto out;
    }
  }
  pc_log(PC_LOG_WARN, "tags-from-cache upstream=%s repo=%s rc=%s", up->conf.name, r->name,
         pc_errname(why));
  srv_req_log(req, "tags", "local");
  srv_resp_header(req, "Warning",
                  "299 - \"the upstream could not be asked: only the tags this mirror has "
                  "seen\"");
  size_t count = c.n < limit ? c.n : limit;
  for (size_t i = 0; i < count; i++)
    json_array_append_new(tags, json_string(c.v[i]));
  if (c.n > count) {
    /* More follow. The raw path keeps a path prefix; ns= is carried over so the next page
     * names the same upstream. */
    char link[2048];
    int n =
        snprintf(link, sizeof(link), "<%s?n=%u&last=%s%s%s>; rel=\"next\"", srv_req_path(req), r->n,
                 c.v[count - 1], r->ns_given ? "&ns=" : "", r->ns_given ? up->conf.name : "");
    if (n > 0 && (size_t)n < sizeof(link))
      srv_resp_header(req, "Link", link);
  }
  root = json_pack("{s:s, s:O}", "name", r->name, "tags", tags);
  body = json_dumps(root, JSON_COMPACT);
  PC_ASSERT(body != NULL);
  answer_json(req, 200, NULL, body, strlen(body));
out:
  for (size_t i = 0; i < c.n; i++)
    free(c.v[i]);
  free(c.v);
  free(body);
  json_decref(root);
  json_decref(tags);
}

/* ---- the upstream's answers ---------------------------------------------------------------- */

typedef enum lkind { LIST_REFERRERS, LIST_TAGS } lkind;

typedef struct lreq {
  meta_sub_t sub;
  daemon_t *d;
  srv_req_t *req;
  reqctx_t *ctx;
  lkind kind;
  route_t r;
} lreq_t;

int listing_link_rewrite(const char *up_link, const char *req_path, const char *ns, char *out,
                         size_t outlen)
{
  const char *lt = strchr(up_link, '<');
  const char *gt = lt ? strchr(lt, '>') : NULL;
  const char *q = lt ? memchr(lt, '?', (size_t)(gt ? gt - lt : 0)) : NULL;
  if (!gt || !q || q + 1 >= gt)
    return -1;
  q++;
  for (const char *p = q; p < gt; p++)
    if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '"' || *p == '<')
      return -1;
  for (const char *p = req_path; *p; p++)
    if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f || *p == '>' || *p == '"')
      return -1;
  int has_ns = 0;
  for (const char *p = q; p + 3 <= gt; p++)
    if ((p == q || p[-1] == '&') && memcmp(p, "ns=", 3) == 0)
      has_ns = 1;
  int n = snprintf(out, outlen, "<%s?%.*s%s%s>; rel=\"next\"", req_path, (int)(gt - q), q,
                   ns && !has_ns ? "&ns=" : "", ns && !has_ns ? ns : "");
  return n > 0 && (size_t)n < outlen ? 0 : -1;
}

static void lreq_free(lreq_t *l)
{
  meta_unsubscribe(&l->sub);
  if (l->ctx && l->ctx->gone_arg == l)
    reqctx_unpark(l->ctx);
  free(l);
}

static void lreq_gone(reqctx_t *ctx, void *arg)
{
  lreq_t *l = arg;
  (void)ctx;
  l->ctx = NULL;
  lreq_free(l);
}

static void answer_listing(lreq_t *l, const meta_result_t *res)
{
  srv_req_t *req = l->req;
  const route_t *r = &l->r;
  const daemon_upstream_t *up = l->d->ups[r->upstream];
  srv_req_log(req, "listing", res->rc ? "error" : res->stale ? "stale" : "upstream");
  if (res->rc == 0 && res->status == 200) {
    char link[2048];
    if (res->link[0] &&
        listing_link_rewrite(res->link, srv_req_path(req), r->ns_given ? up->conf.name : NULL, link,
                             sizeof(link)) == 0)
      srv_resp_header(req, "Link", link);
    if (res->filters[0])
      srv_resp_header(req, "OCI-Filters-Applied", res->filters);
    if (res->stale) {
      char w[160];
      snprintf(w, sizeof(w), "299 - \"the upstream could not be asked: an answer %lld s old\"",
               (long long)res->age);
      srv_resp_header(req, "Warning", w);
    }
    const char *ct = res->media_type[0]          ? res->media_type
                     : l->kind == LIST_REFERRERS ? CT_OCI_INDEX
                                                 : NULL;
    answer_json(req, 200, ct, res->body, res->len);
    return;
  }
  if (l->kind == LIST_TAGS) {
    if (res->rc == 0) /* the upstream's 404 */
      answer_error(req, PC_E_NAME_UNKNOWN, r->name);
    else
      tags_local(l->d, req, r, res->rc);
    return;
  }
  if (res->rc == 0 || res->rc == PC_E_OFFLINE) {
    answer_error(req, PC_E_MANIFEST_UNKNOWN,
                 res->rc ? "no referrers answer cached and the mirror is offline"
                         : "the upstream answered 404 to the referrers API");
    return;
  }
  if (res->rc == PC_E_TOOMANYREQUESTS && res->retry_after[0])
    srv_resp_header(req, "Retry-After", res->retry_after);
  answer_error(req, res->rc, "the upstream could not answer the referrers request");
}

static void lreq_on_end(meta_sub_t *s, const meta_result_t *res)
{
  lreq_t *l = container_of(s, lreq_t, sub);
  if (l->ctx && l->ctx->gone_arg == l)
    reqctx_unpark(l->ctx);
  l->ctx = NULL;
  answer_listing(l, res); /* answering never runs the done callback before it returns */
  free(l);
}

static const meta_sub_ops_t lreq_ops = {lreq_on_end};

/* The query to pass upstream: the request's raw query without ns= (the mirror's own key),
 * "?..." or "" (an opaque pagination key such as a Link's page= goes on as it came). -1 when
 * a byte is not printable ASCII or it does not fit. */
static int upstream_query(const char *raw, char *out, size_t outlen)
{
  size_t o = 0;
  out[0] = '\0';
  if (!raw)
    return 0;
  while (*raw) {
    const char *amp = strchr(raw, '&');
    size_t len = amp ? (size_t)(amp - raw) : strlen(raw);
    if (len && !(len >= 3 && memcmp(raw, "ns=", 3) == 0) &&
        !(len == 2 && memcmp(raw, "ns", 2) == 0)) {
      if (o + len + 2 >= outlen)
        return -1;
      char sep = o == 0 ? '?' : '&';
      out[o++] = sep;
      for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (c <= ' ' || c >= 0x7f || c == '#')
          return -1;
        out[o++] = (char)c;
      }
      out[o] = '\0';
    }
    raw += len;
    if (*raw == '&')
      raw++;
  }
  return 0;
}

static void listing_ask(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up,
                        lkind kind)
{
  pull_env_t *env = mirror_env(d->mirror);
  char key[2400], q[800], url[2600];
  const char *accept;
  int64_t ttl;
  if (env->closing) {
    answer_error(req, PC_E_UPSTREAM_UNAVAILABLE, "the mirror is shutting down");
    return;
  }
  if (upstream_query(srv_req_query(req), q, sizeof(q)) < 0) {
    answer_error(req, PC_E_SIZE_INVALID, "query too long or not plain ASCII");
    return;
  }
  if (kind == LIST_REFERRERS) {
    snprintf(key, sizeof(key), "r %s %s %s %s", up->conf.name, r->name, r->ref, q);
    snprintf(url, sizeof(url), "%s/v2/%s/referrers/%s%s", up->conf.url, r->name, r->ref, q);
    accept = CT_OCI_INDEX;
    ttl = up->conf.tag_ttl < LISTING_REFERRERS_TTL ? up->conf.tag_ttl : LISTING_REFERRERS_TTL;
  } else {
    snprintf(key, sizeof(key), "t %s %s %s", up->conf.name, r->name, q);
    snprintf(url, sizeof(url), "%s/v2/%s/tags/list%s", up->conf.url, r->name, q);
    accept = "application/json";
    ttl = up->conf.tag_ttl;
  }
  lreq_t *l = pc_xcalloc(1, sizeof(*l));
  l->d = d;
  l->req = req;
  l->ctx = reqctx_of(req);
  l->kind = kind;
  l->r = *r;
  l->sub.ops = &lreq_ops;
  reqctx_park(l->ctx, lreq_gone, l);
  meta_ask(env, up, key, url, accept, ttl, up->conf.max_stale > 0 ? up->conf.max_stale : -1,
           &l->sub);
}

void listing_referrers(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  listing_ask(d, req, r, up, LIST_REFERRERS);
}

void listing_tags(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  listing_ask(d, req, r, up, LIST_TAGS);
}

void listing_referrers_ask(daemon_t *d, daemon_upstream_t *up, const char *repo, const char *digest,
                           meta_sub_t *s)
{
  char key[2400], url[2600];
  snprintf(key, sizeof(key), "r %s %s %s %s", up->conf.name, repo, digest, "");
  snprintf(url, sizeof(url), "%s/v2/%s/referrers/%s", up->conf.url, repo, digest);
  int64_t ttl = up->conf.tag_ttl < LISTING_REFERRERS_TTL ? up->conf.tag_ttl : LISTING_REFERRERS_TTL;
  meta_ask(mirror_env(d->mirror), up, key, url, CT_OCI_INDEX, ttl,
           up->conf.max_stale > 0 ? up->conf.max_stale : -1, s);
}
