/* daemon/registry — dispatch of the OCI pull API (see registry.h).
 *
 * Flow of one request:
 *   reqctx_new (the request's context and its one done callback)
 *   route_parse, access_request (allow-lists and credentials by route class) --error-->
 *      answer_error (OCI JSON)
 *      | ROOT / HEALTHZ / READYZ / METRICS / STATUS: answered here (status.c renders STATUS)
 *      | REFERRERS / TAGS_LIST: listing.c (the upstream's answer, passed through)
 *      | stored digest not seen under (upstream, repository): scope.c (seen? else the
 *      |   upstream's HEAD; offline: 404), then as below
 *      | MANIFEST by digest: store hit -> answer_store_manifest; miss -> mirror_manifest(..., 1)
 *      | MANIFEST by tag: mirror_manifest(..., 0) (freshness is the mirror's decision)
 *      | BLOB: store hit -> answer_store_blob; miss -> mirror_blob
 * Nothing here composes a manifest, blob or error answer: answer.c does.
 */
#include "daemon/registry.h"

#include <string.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/access.h"
#include "daemon/answer.h"
#include "daemon/listing.h"
#include "daemon/metrics.h"
#include "daemon/mirror.h"
#include "daemon/reqctx.h"
#include "daemon/ready.h"
#include "daemon/route.h"
#include "daemon/scope.h"
#include "daemon/status.h"
#include "daemon/tier.h"
#include "daemon/upstream.h"

/* ---- routes -------------------------------------------------------------------------------- */

/* GET /metrics, and GET /status (the same figures for a person; kept on this one path so
 * whatever guards /metrics guards /status too). */
static void handle_metrics(daemon_t *d, srv_req_t *req, route_kind kind)
{
  if (kind == ROUTE_STATUS) {
    status_handle(d, req);
    return;
  }
  char *body = NULL;
  size_t len = 0;
  metrics_render(d, &body, &len);
  srv_respond(req, 200, "text/plain; version=0.0.4", body, len);
  free(body);
}

/* ---- repository scoping: a stored digest asked under a repository it was not seen in ------ */

typedef struct scoped {
  scope_sub_t sub;
  daemon_t *d;
  srv_req_t *req;
  reqctx_t *ctx;
  daemon_upstream_t *up; /**< a reference */
  route_t r;
  answer_range_t range;
  int is_manifest;
} scoped_t;

static void serve_manifest(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up);
static void serve_blob(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up,
                       const answer_range_t *range);

static void scoped_free(scoped_t *w)
{
  scope_unsubscribe(&w->sub);
  if (w->ctx && w->ctx->gone_arg == w)
    reqctx_unpark(w->ctx);
  daemon_upstream_unref(w->up);
  free(w);
}

static void scoped_gone(reqctx_t *ctx, void *arg)
{
  scoped_t *w = arg;
  (void)ctx;
  w->ctx = NULL;
  scoped_free(w);
}

static void scoped_on_end(scope_sub_t *s, int ok, int rc, const char *retry_after)
{
  scoped_t *w = container_of(s, scoped_t, sub);
  srv_req_t *req = w->req;
  answer_kind kind = w->is_manifest ? ANSWER_MANIFEST : ANSWER_BLOB;
  if (w->ctx && w->ctx->gone_arg == w)
    reqctx_unpark(w->ctx);
  w->ctx = NULL;
  if (ok) {
    if (w->is_manifest)
      serve_manifest(w->d, req, &w->r, w->up);
    else
      serve_blob(w->d, req, &w->r, w->up, &w->range);
  } else if (rc == 0) {
    answer_content_error(req, kind, DAEMON_CACHE_MISS,
                         w->is_manifest ? PC_E_MANIFEST_UNKNOWN : PC_E_BLOB_UNKNOWN,
                         "not in this repository (the upstream says so)", NULL);
  } else {
    answer_content_error(req, kind, DAEMON_CACHE_MISS, rc,
                         "the upstream could not confirm this repository has it", retry_after);
  }
  scoped_free(w);
}

static const scope_sub_ops_t scoped_ops = {scoped_on_end};

/* 1 when the stored digest may be served under (up, r->name) now; else the request is answered
 * (404 offline) or waits for the upstream's HEAD, and 0. */
static int scope_check(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up,
                       const answer_range_t *range, int is_manifest)
{
  pull_env_t *env = mirror_env(d->mirror);
  if (scope_seen(env, up->conf.name, r->name, r->ref))
    return 1;
  srv_req_log(req, "scope", "unseen");
  if (!env->fetch->online(env) || env->closing) {
    answer_content_error(req, is_manifest ? ANSWER_MANIFEST : ANSWER_BLOB, DAEMON_CACHE_MISS,
                         is_manifest ? PC_E_MANIFEST_UNKNOWN : PC_E_BLOB_UNKNOWN,
                         "not seen in this repository and the mirror is offline", NULL);
    return 0;
  }
  scoped_t *w = pc_xcalloc(1, sizeof(*w));
  w->d = d;
  w->req = req;
  w->ctx = reqctx_of(req);
  w->up = daemon_upstream_ref(up);
  w->r = *r;
  if (range)
    w->range = *range;
  w->is_manifest = is_manifest;
  w->sub.ops = &scoped_ops;
  reqctx_park(w->ctx, scoped_gone, w);
  scope_confirm(env, up, r->name, r->ref, is_manifest, &w->sub);
  return 0;
}

/* A manifest: by digest from the store when it has it, else (and always by tag) the mirror. */
static void serve_manifest(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
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

static void handle_manifest(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  /* A stored manifest by digest is served only where it was seen (a miss asks the upstream
   * under this repository anyway). One a job has just answered is served from the job while
   * its store write (and its sight) runs. */
  if (r->is_digest && !mirror_manifest_storing(d->mirror, up, r->ref) &&
      !scope_seen(mirror_env(d->mirror), up->conf.name, r->name, r->ref) &&
      store_manifest_stat(d->store, r->ref, NULL) == 0 && !scope_check(d, req, r, up, NULL, 1))
    return;
  /* Seen here (the common hit: no stat, the answer opens the manifest once), absent, or
   * confirmed: served. */
  serve_manifest(d, req, r, up);
}

/* A blob: from the store when it has it, else the mirror. */
static void serve_blob(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up,
                       const answer_range_t *range)
{
  int rc = answer_store_blob(req, d->store, r->ref, range, DAEMON_CACHE_HIT);
  if (rc == 0)
    return;
  if (rc != PC_E_NOTFOUND) {
    /* the store had it but failed to read */
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_HIT, rc, NULL, NULL);
    return;
  }
  mirror_blob(d->mirror, req, up, r->name, r->ref, range);
}

static void handle_blob(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  answer_range_t range;
  /* An unparseable range comes back as one that never resolves: 416 below or in the mirror,
   * once the size is known. */
  (void)answer_parse_range(srv_req_header(req, "Range"), &range);
  int filling = mirror_blob_filling(d->mirror, up, r->name, r->ref);
  if (filling == 2 ||
      (filling == 1 && scope_seen(mirror_env(d->mirror), up->conf.name, r->name, r->ref))) {
    /* A fill of this digest runs for this repository (its sight not recorded yet), or for
     * another where this one has been seen too: join it. */
    mirror_blob(d->mirror, req, up, r->name, r->ref, &range);
    return;
  }
  if (filling == 1) {
    /* A fill started under another repository: served here only once the upstream confirms
     * this one has it too (scope_check; then serve_blob joins the fill or finds the store). */
    if (scope_check(d, req, r, up, &range, 0))
      serve_blob(d, req, r, up, &range);
    return;
  }
  if (!scope_seen(mirror_env(d->mirror), up->conf.name, r->name, r->ref) &&
      store_blob_stat(d->store, r->ref, NULL) == 0 && !scope_check(d, req, r, up, &range, 0))
    return; /* seen here (the common hit): no stat, the answer opens the blob once */
  serve_blob(d, req, r, up, &range);
}

static void registry_route(daemon_t *d, srv_req_t *req);

/* Route the request and note it (log, context). A route error is answered here and returned;
 * else 0, with *up the upstream it names (NULL for the routes that name none). */
static int route_request(daemon_t *d, srv_req_t *req, route_t *r, daemon_upstream_t **up)
{
  const char *names[DAEMON_MAX_UPSTREAMS];
  for (int i = 0; i < d->nups; i++)
    names[i] = d->ups[i]->conf.name;
  int rc =
      route_parse(srv_req_method(req), srv_req_path(req), srv_req_query(req), names, d->nups, r);
  if (!reqctx_of(req)->access_ok) /* routed again after a credential check: logged once */
    srv_req_log_lit(req, "route", route_kind_name(r->kind));
  reqctx_of(req)->route = r->kind;
  if (!access_request(d, req, r->kind, registry_route))
    return PC_E_DENIED; /* answered: before any route error says what the path is */
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
  /* A content route read the query: its ns= named a configured upstream (so the value, as
   * sent, is that name but for case), or there was none. The answers need not read it again. */
  reqctx_t *ctx = reqctx_of(req);
  if (r->kind >= ROUTE_MANIFEST && r->kind <= ROUTE_REFERRERS && r->upstream >= 0 &&
      r->upstream < d->nups && (!r->ns_given || d->ups[r->upstream]->name_is_host)) {
    ctx->ns_state = r->ns_given ? 2 : 1;
    if (r->ns_given)
      memcpy(ctx->ns, r->ns, strlen(r->ns) + 1);
  }
  *up = NULL;
  if (r->upstream >= 0 && r->upstream < d->nups) {
    *up = d->ups[r->upstream];
    if (r->kind >= ROUTE_MANIFEST && r->kind <= ROUTE_REFERRERS) {
      srv_req_log_lit(req, "upstream", (*up)->conf.name);
      if (r->ns_given)
        srv_req_log_lit(req, "ns", r->ns);
    }
  }
  return 0;
}

static void dispatch_content(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up)
{
  switch (r->kind) {
  case ROUTE_MANIFEST:
    handle_manifest(d, req, r, up);
    return;
  case ROUTE_BLOB:
    handle_blob(d, req, r, up);
    return;
  case ROUTE_TAGS_LIST:
    listing_tags(d, req, r, up);
    return;
  default:
    listing_referrers(d, req, r, up);
    return;
  }
}

void registry_handle(srv_req_t *req, void *arg)
{
  daemon_t *d = arg;
  (void)reqctx_new(d, req);
  registry_route(d, req);
}

/* Route and answer req (again after a parked credential check: access_resume_cb). */
static void registry_route(daemon_t *d, srv_req_t *req)
{
  daemon_upstream_t *up = NULL;
  route_t r;
  if (route_request(d, req, &r, &up))
    return;
  if (up && r.kind >= ROUTE_MANIFEST && r.kind <= ROUTE_REFERRERS) {
    /* A content request may go upstream: refuse loops, and pass the Via chain on. */
    char why[256];
    if (tier_enter(d, req, why, sizeof(why))) {
      answer_error(req, PC_E_LOOP, why);
      return;
    }
    store_read_batch_begin(d->store); /* the dispatch's lookups: one read txn */
    dispatch_content(d, req, &r, up);
    store_read_batch_end(d->store);
    tier_leave(d);
    return;
  }
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
    listing_tags(d, req, &r, up);
    return;
  case ROUTE_REFERRERS:
    if (!up)
      break;
    listing_referrers(d, req, &r, up);
    return;
  case ROUTE_HEALTHZ:
    srv_respond(req, 200, "text/plain", "ok\n", 3);
    return;
  case ROUTE_READYZ:
    daemon_readyz(d, req);
    return;
  case ROUTE_METRICS:
  case ROUTE_STATUS:
    handle_metrics(d, req, r.kind);
    return;
  case ROUTE_UNKNOWN:
    break;
  }
  if (r.is_v2)
    answer_error(req, PC_E_NAME_UNKNOWN, "no such route");
  else
    answer_json(req, 404, "text/plain", "404 page not found\n", 19);
}
