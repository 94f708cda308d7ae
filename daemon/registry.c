/* daemon/registry — dispatch of the OCI pull API (see registry.h).
 *
 * Flow of one request:
 *   reqctx_new (the request's context and its one done callback)
 *   route_parse --error--> answer_error (OCI JSON)
 *      | ROOT / HEALTHZ / READYZ / METRICS / REFERRERS / TAGS_LIST: answered here
 *      | MANIFEST by digest: store hit -> answer_store_manifest; miss -> mirror_manifest(..., 1)
 *      | MANIFEST by tag: mirror_manifest(..., 0) (freshness is the mirror's decision)
 *      | BLOB: store hit -> answer_store_blob; miss -> mirror_blob
 * Nothing here composes a manifest, blob or error answer: answer.c does.
 */
#include "daemon/registry.h"

#include <jansson.h>
#include <string.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/answer.h"
#include "daemon/metrics.h"
#include "daemon/mirror.h"
#include "daemon/reqctx.h"
#include "daemon/ready.h"
#include "daemon/route.h"
#include "daemon/upstream.h"

#define CT_OCI_INDEX "application/vnd.oci.image.index.v1+json"

/* ---- routes -------------------------------------------------------------------------------- */

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

static void handle_tags(daemon_t *d, srv_req_t *req, const route_t *r)
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

static void handle_referrers(srv_req_t *req, const route_t *r)
{
  static const char body[] =
      "{\"schemaVersion\":2,\"mediaType\":\"" CT_OCI_INDEX "\",\"manifests\":[]}";
  if (r->artifact_type[0])
    srv_resp_header(req, "OCI-Filters-Applied", "artifactType");
  answer_json(req, 200, CT_OCI_INDEX, body, sizeof(body) - 1);
}

static void handle_metrics(daemon_t *d, srv_req_t *req)
{
  char *body = NULL;
  size_t len = 0;
  metrics_render(d, &body, &len);
  srv_respond(req, 200, "text/plain; version=0.0.4", body, len);
  free(body);
}

/* A manifest: by digest from the store when it has it, else (and always by tag) the mirror. */
static void handle_manifest(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  if (r->is_digest) {
    int rc = answer_store_manifest(req, d->store, r->ref, DAEMON_CACHE_HIT);
    if (rc == 0)
      return;
    if (rc != PC_E_NOTFOUND) {
      /* the store had it but failed to read */
      answer_content_error(req, ANSWER_MANIFEST, DAEMON_CACHE_HIT, rc, NULL, NULL);
      return;
    }
  }
  mirror_manifest(d->mirror, req, up, r->name, r->ref, r->is_digest);
}

/* A blob: from the store when it has it, else the mirror. */
static void handle_blob(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  answer_range_t range;
  /* An unparseable range comes back as one that never resolves: 416 below or in the mirror,
   * once the size is known. */
  (void)answer_parse_range(srv_req_header(req, "Range"), &range);
  int rc = answer_store_blob(req, d->store, r->ref, &range, DAEMON_CACHE_HIT);
  if (rc == 0)
    return;
  if (rc != PC_E_NOTFOUND) {
    /* the store had it but failed to read */
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_HIT, rc, NULL, NULL);
    return;
  }
  mirror_blob(d->mirror, req, up, r->name, r->ref, &range);
}

/* Route the request and note it (log, context). A route error is answered here and returned;
 * else 0, with *up the upstream it names (NULL for the routes that name none). */
static int route_request(daemon_t *d, srv_req_t *req, route_t *r, daemon_upstream_t **up)
{
  const char *names[DAEMON_MAX_UPSTREAMS];
  for (int i = 0; i < d->nups; i++)
    names[i] = d->ups[i]->conf.name;
  int rc =
      route_parse(srv_req_method(req), srv_req_path(req), srv_req_query(req), names, d->nups, r);
  srv_req_log(req, "route", route_kind_name(r->kind));
  reqctx_of(req)->route = r->kind;
  if (rc) {
    const char *detail = NULL;
    char msg[384];
    if (rc == PC_E_UPSTREAM_UNKNOWN && r->ns_given) {
      detail = "ns names an upstream this mirror does not serve";
    } else if (rc == PC_E_UPSTREAM_UNKNOWN) {
      /* A path prefix: name the host as it was sent (the first segment after /v2/). */
      const char *first = srv_req_path(req) + 4;
      const char *slash = strchr(first, '/');
      int len = slash ? (int)(slash - first) : (int)strlen(first);
      if (len > 255)
        len = 255;
      snprintf(msg, sizeof(msg), "the path prefix %.*s names a registry this mirror does not serve",
               len, first);
      detail = msg;
    } else if (rc == PC_E_UNSUPPORTED)
      detail = "this registry is a read-only pull-through mirror";
    answer_error(req, rc, detail);
    return rc;
  }
  *up = NULL;
  if (r->upstream >= 0 && r->upstream < d->nups) {
    *up = d->ups[r->upstream];
    if (r->kind >= ROUTE_MANIFEST && r->kind <= ROUTE_REFERRERS) {
      srv_req_log(req, "upstream", (*up)->conf.name);
      if (r->ns_given)
        srv_req_log(req, "ns", r->ns);
    }
  }
  return 0;
}

void registry_handle(srv_req_t *req, void *arg)
{
  daemon_t *d = arg;
  daemon_upstream_t *up = NULL;
  route_t r;
  (void)reqctx_new(d, req);
  if (route_request(d, req, &r, &up))
    return;
  switch (r.kind) {
  case ROUTE_ROOT:
    answer_json(req, 200, NULL, "{}", 2);
    return;
  case ROUTE_MANIFEST:
    if (!up)
      break;
    handle_manifest(d, req, &r, up);
    return;
  case ROUTE_BLOB:
    if (!up)
      break;
    handle_blob(d, req, &r, up);
    return;
  case ROUTE_TAGS_LIST:
    if (!up)
      break;
    handle_tags(d, req, &r);
    return;
  case ROUTE_REFERRERS:
    handle_referrers(req, &r);
    return;
  case ROUTE_HEALTHZ:
    srv_respond(req, 200, "text/plain", "ok\n", 3);
    return;
  case ROUTE_READYZ:
    daemon_readyz(d, req);
    return;
  case ROUTE_METRICS:
    handle_metrics(d, req);
    return;
  case ROUTE_UNKNOWN:
    break;
  }
  if (r.is_v2)
    answer_error(req, PC_E_NAME_UNKNOWN, "no such route");
  else
    answer_json(req, 404, "text/plain", "404 page not found\n", 19);
}
