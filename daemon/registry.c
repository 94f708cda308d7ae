/* daemon/registry — OCI pull-API handlers (see registry.h).
 *
 * Flow of one request:
 *   route_parse --error--> registry_error (OCI JSON)
 *      | ROOT / HEALTHZ / READYZ / METRICS / REFERRERS / TAGS_LIST: answered here
 *      | MANIFEST by digest: store hit -> served here; miss -> mirror_manifest(..., 1)
 *      | MANIFEST by tag: mirror_manifest(..., 0) (freshness is the mirror's decision)
 *      | BLOB: store hit -> sendfile here; miss -> mirror_blob
 */
#include "daemon/registry.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/ready.h"
#include "daemon/route.h"
#include "daemon/upstream.h"

#define CT_JSON "application/json"
#define CT_OCI_INDEX "application/vnd.oci.image.index.v1+json"

/* ---- helpers used by the mirror too ------------------------------------------------------ */

void registry_common_headers(srv_req_t *req)
{
  const char *q = srv_req_query(req);
  srv_resp_header(req, "Docker-Distribution-API-Version", "registry/2.0");
  /* Echo ns= as OCI-Namespace (distribution-spec main, "Registry Proxying"), but only a value
   * that is a plausible host[:port]: nothing from the client reaches a header unchecked. */
  while (q && *q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    if (len > 3 && memcmp(q, "ns=", 3) == 0) {
      char ns[256];
      if (route_pct_decode(q + 3, len - 3, ns, sizeof(ns)) > 0 && config_upstream_name_valid(ns))
        srv_resp_header(req, "OCI-Namespace", ns);
      break;
    }
    q = amp ? amp + 1 : q + len;
  }
}

void registry_error(srv_req_t *req, int err, const char *detail)
{
  json_t *e = json_pack("{s:s, s:s}", "code", pc_err_code(err), "message", pc_strerror(err));
  json_t *root;
  char *body;

  if (detail)
    json_object_set_new(e, "detail", json_string(detail));
  root = json_pack("{s:[o]}", "errors", e);
  body = json_dumps(root, JSON_COMPACT);
  PC_ASSERT(body != NULL);
  registry_common_headers(req);
  srv_respond(req, pc_err_status(err), CT_JSON, body, strlen(body));
  free(body);
  json_decref(root);
}

/* If-None-Match: a list of entity tags or "*". */
static int etag_matches(srv_req_t *req, const char *digest)
{
  const char *inm = srv_req_header(req, "If-None-Match");
  char want[STORE_DIGEST_MAX + 2];
  if (!inm)
    return 0;
  if (strcmp(inm, "*") == 0)
    return 1;
  snprintf(want, sizeof(want), "\"%s\"", digest);
  return strstr(inm, want) != NULL;
}

static void digest_headers(srv_req_t *req, const char *digest)
{
  char etag[STORE_DIGEST_MAX + 2];
  snprintf(etag, sizeof(etag), "\"%s\"", digest);
  registry_common_headers(req);
  srv_resp_header(req, "Docker-Content-Digest", digest);
  srv_resp_header(req, "ETag", etag);
}

/* 304 when If-None-Match names this digest: answers and closes fd (returns 1), else 0. */
static int not_modified(srv_req_t *req, const char *digest, int fd)
{
  if (!etag_matches(req, digest))
    return 0;
  close(fd);
  digest_headers(req, digest);
  srv_respond(req, 304, NULL, NULL, 0);
  return 1;
}

void registry_cache(daemon_t *d, srv_req_t *req, int is_blob, int outcome)
{
  static const char *const hdr[DAEMON_CACHE_N] = {"HIT", "MISS", "JOIN", "STALE",
                                                  "REVALIDATED"};
  static const char *const log[DAEMON_CACHE_N] = {"hit", "miss", "join", "stale",
                                                  "revalidated"};
  if (outcome < 0 || outcome >= DAEMON_CACHE_N)
    return;
  srv_resp_header(req, "X-Cache", hdr[outcome]);
  srv_req_log(req, "cache", log[outcome]);
  metrics_mark_cache(d, req, is_blob, (enum daemon_cache)outcome);
}

int registry_serve_manifest(daemon_t *d, srv_req_t *req, const char *digest, int outcome)
{
  store_manifest_info_t info;
  int fd = -1;
  int rc = store_manifest_open(d->store, digest, &fd, &info);
  if (rc)
    return rc;
  registry_cache(d, req, 0, outcome);
  if (not_modified(req, digest, fd))
    return 0;
  digest_headers(req, digest);
  srv_respond_file(req, 200, info.media_type[0] ? info.media_type : CT_JSON, fd, 0, info.size,
                   info.size);
  return 0;
}

int registry_serve_blob(daemon_t *d, srv_req_t *req, const char *digest,
                        const mirror_range_t *range, int outcome)
{
  store_blob_info_t info;
  uint64_t size, start = 0, len;
  int fd = -1, status = 200;
  int rc = store_blob_open_info(d->store, digest, &fd, &info);
  if (rc)
    return rc;
  registry_cache(d, req, 1, outcome);
  if (not_modified(req, digest, fd))
    return 0;
  size = len = info.size;
  if (range && range->has) {
    char cr[96];
    if (registry_range_resolve(range, size, &start, &len) < 0) {
      close(fd);
      snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
      srv_resp_header(req, "Content-Range", cr);
      registry_error(req, PC_E_RANGE_INVALID, NULL);
      return 0;
    }
    snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + len - 1,
             size);
    srv_resp_header(req, "Content-Range", cr);
    status = 206;
  }
  digest_headers(req, digest);
  srv_resp_header(req, "Accept-Ranges", "bytes");
  srv_resp_header(req, "Cache-Control", "max-age=31536000");
  srv_respond_file(req, status, info.media_type[0] ? info.media_type : "application/octet-stream",
                   fd, start, len, start + len);
  return 0;
}

/* ---- ranges -------------------------------------------------------------------------------- */

/* Decimal digits at *p (no sign, no overflow); advances *p. 0 or -1. */
static int parse_u64(const char **p, uint64_t *out)
{
  const char *s = *p;
  uint64_t v = 0;
  if (*s < '0' || *s > '9')
    return -1;
  while (*s >= '0' && *s <= '9') {
    unsigned dgt = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - dgt) / 10)
      return -1;
    v = v * 10 + dgt;
    s++;
  }
  *p = s;
  *out = v;
  return 0;
}

static const char *skip_ows(const char *p)
{
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

int registry_parse_range(const char *hdr, mirror_range_t *out)
{
  const char *p;
  memset(out, 0, sizeof(*out));
  if (!hdr)
    return 0;
  p = skip_ows(hdr);
  if (strncasecmp(p, "bytes", 5) != 0)
    return 0; /* another unit: ignored */
  p = skip_ows(p + 5);
  if (*p != '=')
    return 0;
  p = skip_ows(p + 1);
  if (strchr(p, ','))
    return 0; /* several ranges: served whole (200) */

  out->has = 1;
  if (*p == '-') {
    p++;
    if (parse_u64(&p, &out->suffix) < 0 || out->suffix == 0)
      goto invalid;
  } else {
    if (parse_u64(&p, &out->start) < 0 || *p != '-')
      goto invalid;
    p++;
    if (*p >= '0' && *p <= '9') {
      if (parse_u64(&p, &out->end) < 0 || out->end < out->start)
        goto invalid;
    } else {
      out->end = UINT64_MAX;
    }
  }
  p = skip_ows(p);
  if (*p != '\0')
    goto invalid;
  return 0;
invalid:
  /* An unsatisfiable range: registry_range_resolve rejects it against any size. */
  out->has = 1;
  out->start = UINT64_MAX;
  out->end = 0;
  out->suffix = 0;
  return PC_E_RANGE_INVALID;
}

int registry_range_resolve(const mirror_range_t *r, uint64_t size, uint64_t *start,
                           uint64_t *len)
{
  if (!r->has || size == 0)
    return PC_E_RANGE_INVALID;
  if (r->suffix > 0) {
    *len = r->suffix < size ? r->suffix : size;
    *start = size - *len;
    return 0;
  }
  if (r->end < r->start || r->start >= size)
    return PC_E_RANGE_INVALID;
  uint64_t end = r->end < size - 1 ? r->end : size - 1;
  *start = r->start;
  *len = end - r->start + 1;
  return 0;
}

/* ---- routes -------------------------------------------------------------------------------- */

typedef struct tags_ctx {
  json_t *tags;
  unsigned limit; /**< UINT32_MAX: no limit */
  unsigned count;
  int more;
  char last[ROUTE_TAG_MAX + 1];
} tags_ctx_t;

static int on_tag(void *arg, const char *tag, const store_tag_t *t)
{
  tags_ctx_t *c = arg;
  size_t n = strlen(tag);
  (void)t;
  if (c->count >= c->limit) {
    c->more = 1;
    return 1;
  }
  json_array_append_new(c->tags, json_string(tag));
  c->count++;
  if (n < sizeof(c->last))
    memcpy(c->last, tag, n + 1);
  return 0;
}

static int on_any_tag(void *arg, const char *tag, const store_tag_t *t)
{
  (void)tag;
  (void)t;
  *(int *)arg = 1;
  return 1;
}

static void handle_tags(daemon_t *d, srv_req_t *req, const route_t *r)
{
  const daemon_upstream_t *up = d->ups[r->upstream];
  tags_ctx_t c = {.tags = json_array(), .limit = r->has_n ? r->n : UINT32_MAX};
  json_t *root = NULL;
  char *body = NULL;
  int rc = 0, exists = 0;

  if (c.limit > 0)
    rc = store_tag_list(d->store, up->conf.name, r->name, r->last[0] ? r->last : NULL, on_tag,
                        &c);
  if (rc < 0) {
    registry_error(req, rc, "cannot list tags");
    goto out;
  }
  if (c.count == 0) {
    rc = store_tag_list(d->store, up->conf.name, r->name, NULL, on_any_tag, &exists);
    if (rc < 0) {
      registry_error(req, rc, "cannot list tags");
      goto out;
    }
    if (!exists) {
      registry_error(req, PC_E_NAME_UNKNOWN, r->name);
      goto out;
    }
  }
  if (c.more) {
    /* The raw path keeps a path prefix; ns= is carried over so the next page names the
     * same upstream. */
    char link[2048];
    int n = snprintf(link, sizeof(link), "<%s?n=%u&last=%s%s%s>; rel=\"next\"",
                     srv_req_path(req), r->n, c.last, r->ns_given ? "&ns=" : "",
                     r->ns_given ? up->conf.name : "");
    if (n > 0 && (size_t)n < sizeof(link))
      srv_resp_header(req, "Link", link);
  }
  root = json_pack("{s:s, s:O}", "name", r->name, "tags", c.tags);
  body = json_dumps(root, JSON_COMPACT);
  PC_ASSERT(body != NULL);
  registry_common_headers(req);
  srv_respond(req, 200, CT_JSON, body, strlen(body));
out:
  free(body);
  json_decref(root);
  json_decref(c.tags);
}

static void handle_referrers(srv_req_t *req, const route_t *r)
{
  static const char body[] =
      "{\"schemaVersion\":2,\"mediaType\":\"" CT_OCI_INDEX "\",\"manifests\":[]}";
  registry_common_headers(req);
  if (r->artifact_type[0])
    srv_resp_header(req, "OCI-Filters-Applied", "artifactType");
  srv_respond(req, 200, CT_OCI_INDEX, body, sizeof(body) - 1);
}

static void handle_metrics(daemon_t *d, srv_req_t *req)
{
  char *body = NULL;
  size_t len = 0;
  metrics_render(d, &body, &len);
  srv_respond(req, 200, "text/plain; version=0.0.4", body, len);
  free(body);
}

void registry_handle(srv_req_t *req, void *arg)
{
  daemon_t *d = arg;
  const char *names[DAEMON_MAX_UPSTREAMS];
  daemon_upstream_t *up = NULL;
  route_t r;
  mirror_range_t range;
  int rc;

  for (int i = 0; i < d->nups; i++)
    names[i] = d->ups[i]->conf.name;
  rc = route_parse(srv_req_method(req), srv_req_path(req), srv_req_query(req), names, d->nups,
                   &r);
  srv_req_log(req, "route", route_kind_name(r.kind));
  metrics_mark_route(req, r.kind);
  if (rc) {
    const char *detail = NULL;
    if (rc == PC_E_UPSTREAM_UNKNOWN)
      detail = "ns names an upstream this mirror does not serve";
    else if (rc == PC_E_UNSUPPORTED)
      detail = "this registry is a read-only pull-through mirror";
    registry_error(req, rc, detail);
    return;
  }
  if (r.upstream >= 0 && r.upstream < d->nups) {
    up = d->ups[r.upstream];
    if (r.kind >= ROUTE_MANIFEST && r.kind <= ROUTE_REFERRERS) {
      srv_req_log(req, "upstream", up->conf.name);
      if (r.ns_given)
        srv_req_log(req, "ns", r.ns);
    }
  }

  switch (r.kind) {
  case ROUTE_ROOT:
    registry_common_headers(req);
    srv_respond(req, 200, CT_JSON, "{}", 2);
    return;
  case ROUTE_MANIFEST:
    if (!up)
      break;
    if (r.is_digest) {
      rc = registry_serve_manifest(d, req, r.ref, DAEMON_CACHE_HIT);
      if (rc == 0)
        return;
      if (rc != PC_E_NOTFOUND) {
        registry_cache(d, req, 0, DAEMON_CACHE_HIT); /* the store had it but failed to read */
        registry_error(req, rc, NULL);
        return;
      }
    }
    mirror_manifest(d->mirror, req, up, r.name, r.ref, r.is_digest);
    return;
  case ROUTE_BLOB:
    if (!up)
      break;
    /* An unparseable range comes back as one that never resolves: 416 below or in the
     * mirror, once the size is known. */
    (void)registry_parse_range(srv_req_header(req, "Range"), &range);
    rc = registry_serve_blob(d, req, r.ref, &range, DAEMON_CACHE_HIT);
    if (rc == 0)
      return;
    if (rc != PC_E_NOTFOUND) {
      registry_cache(d, req, 1, DAEMON_CACHE_HIT); /* the store had it but failed to read */
      registry_error(req, rc, NULL);
      return;
    }
    mirror_blob(d->mirror, req, up, r.name, r.ref, &range);
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
  if (r.is_v2) {
    registry_error(req, PC_E_NAME_UNKNOWN, "no such route");
  } else {
    registry_common_headers(req);
    srv_respond(req, 404, "text/plain", "404 page not found\n", 19);
  }
}
