/* daemon/answer — the one place registry answers are composed (see answer.h).
 *
 *   answer_content(req, a)
 *     record the outcome (X-Cache, cache= log field, counter, request context)
 *     If-None-Match matches the digest ---------------------------------> 304 (fd closed)
 *     blob with a range: unsatisfiable ---------------------------------> 416 (fd closed)
 *                        satisfiable -> 206 + Content-Range
 *     headers: common, Docker-Content-Digest, ETag, (blob) Accept-Ranges, Cache-Control
 *     mem ---------------------------------------------------------------> srv_respond
 *     fd, avail covers the answer ---------------------------------------> srv_respond_file
 *     fd, live fill -----------------------------------> srv_respond_file, ANSWER_STREAMING
 *         (the answer's last byte is held: its bytes are not verified yet)
 *         pass-through (relay): the bytes from the relay's start come from a relay reader
 *         (srv_file_source, or srv_respond_source when no file byte is needed)
 */
#include "daemon/answer.h"

#include <inttypes.h>
#include <jansson.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/relay.h"
#include "daemon/reqctx.h"
#include "daemon/route.h"
#include "store/digest.h"

#define CT_JSON "application/json"
#define CT_OCTETS "application/octet-stream"

void answer_common_headers(srv_req_t *req)
{
  const char *q = srv_req_query(req);
  srv_resp_header_lit(req, "Docker-Distribution-API-Version: registry/2.0");
  const reqctx_t *ctx = reqctx_of(req);
  if (ctx && ctx->ns_state) { /* routed: the route read ns= already (registry.c) */
    if (ctx->ns_state == 2)
      srv_resp_header_named(req, "OCI-Namespace", ctx->ns);
    return;
  }
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

void answer_error(srv_req_t *req, int err, const char *detail)
{
  json_t *e = json_pack("{s:s, s:s}", "code", pc_err_code(err), "message", pc_strerror(err));
  if (detail)
    json_object_set_new(e, "detail", json_string(detail));
  json_t *root = json_pack("{s:[o]}", "errors", e);
  char *body = json_dumps(root, JSON_COMPACT);
  PC_ASSERT(body != NULL);
  answer_common_headers(req);
  if (err == PC_E_UNSUPPORTED)
    srv_resp_header(req, "Allow", "GET, HEAD"); /* RFC 9110: a 405 names the allowed methods */
  else if (err == PC_E_UPSTREAM_BUSY)
    srv_resp_header(req, "Retry-After", ANSWER_BUSY_RETRY_AFTER);
  srv_respond(req, pc_err_status(err), CT_JSON, body, strlen(body));
  free(body);
  json_decref(root);
}

void answer_json(srv_req_t *req, int status, const char *content_type, const char *body, size_t len)
{
  answer_common_headers(req);
  srv_respond(req, status, content_type ? content_type : CT_JSON, body, len);
}

/* The outcome of a manifest or blob answer, recorded once. */
static void record(srv_req_t *req, answer_kind kind, int outcome)
{
  static const char *const log[DAEMON_CACHE_N] = {"hit", "miss", "join", "stale", "revalidated"};
  PC_ASSERT(outcome >= 0 && outcome < DAEMON_CACHE_N);
  switch ((enum daemon_cache)outcome) {
  case DAEMON_CACHE_HIT:
    srv_resp_header_lit(req, "X-Cache: HIT");
    break;
  case DAEMON_CACHE_MISS:
    srv_resp_header_lit(req, "X-Cache: MISS");
    break;
  case DAEMON_CACHE_JOIN:
    srv_resp_header_lit(req, "X-Cache: JOIN");
    break;
  case DAEMON_CACHE_STALE:
    srv_resp_header_lit(req, "X-Cache: STALE");
    break;
  default:
    srv_resp_header_lit(req, "X-Cache: REVALIDATED");
    break;
  }
  srv_req_log_lit(req, "cache", log[outcome]);
  reqctx_t *ctx = reqctx_of(req);
  if (ctx) {
    PC_ASSERT(ctx->outcome < 0); /* one outcome per request */
    ctx->cache_kind = (int)kind;
    ctx->outcome = outcome;
    ctx->d->counters.cache[kind][outcome]++;
  }
}

void answer_content_error(srv_req_t *req, answer_kind kind, int outcome, int err,
                          const char *detail, const char *retry_after)
{
  record(req, kind, outcome);
  if (err == PC_E_TOOMANYREQUESTS && retry_after && retry_after[0])
    srv_resp_header(req, "Retry-After", retry_after);

  answer_error(req, err, detail);
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

static void digest_headers(srv_req_t *req, const answer_content_t *a)
{
  char etag[STORE_DIGEST_MAX + 2];
  size_t dl = strnlen(a->digest, STORE_DIGEST_MAX - 1);
  etag[0] = '"';
  memcpy(etag + 1, a->digest, dl);
  etag[dl + 1] = '"';
  etag[dl + 2] = '\0';
  answer_common_headers(req);
  srv_resp_header_named(req, "Docker-Content-Digest", a->digest);
  srv_resp_header_named(req, "ETag", etag);
  if (a->kind == ANSWER_BLOB) {
    srv_resp_header_lit(req, "Accept-Ranges: bytes");
    srv_resp_header_lit(req, "Cache-Control: max-age=31536000");
  }
}

static void drop_fd(const answer_content_t *a)
{
  if (!a->mem && a->fd >= 0)
    close(a->fd);
}

int answer_content(srv_req_t *req, const answer_content_t *a, uint64_t *startp, uint64_t *end)
{
  uint64_t start = 0, len = a->size;
  int status = 200;
  record(req, a->kind, a->outcome);
  if (etag_matches(req, a->digest)) {
    drop_fd(a);
    digest_headers(req, a);
    srv_respond(req, 304, NULL, NULL, 0);
    return ANSWER_DONE;
  }
  if (a->kind == ANSWER_BLOB && a->range && a->range->has) {
    char cr[96];
    if (answer_range_resolve(a->range, a->size, &start, &len) < 0) {
      drop_fd(a);
      snprintf(cr, sizeof(cr), "bytes */%" PRIu64, a->size);
      srv_resp_header(req, "Content-Range", cr);
      /* The distribution spec's error codes have none for a range (RANGE_INVALID is
       * distribution's own): the 416 and its Content-Range say it all, with no body. */
      answer_common_headers(req);
      srv_respond(req, 416, NULL, NULL, 0);
      return ANSWER_DONE;
    }
    snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + len - 1,
             a->size);
    srv_resp_header(req, "Content-Range", cr);
    status = 206;
  }
  digest_headers(req, a);
  const char *ct = a->media_type && a->media_type[0] ? a->media_type
                   : a->kind == ANSWER_BLOB          ? CT_OCTETS
                                                     : CT_JSON;
  if (a->mem) {
    srv_respond(req, status, ct, (const char *)a->mem + start, len);
    return ANSWER_DONE;
  }
  uint64_t stop = start + len, avail = a->avail;
  if (!a->live) {
    srv_respond_file(req, status, ct, a->fd, start, len, stop);
    return ANSWER_DONE;
  }
  /* Not verified yet: the answer's last byte waits for the fill's verification, whatever
   * the range (the caller announces it once the digest matched). */
  if (avail < start)
    avail = start;
  if (avail > stop - 1)
    avail = stop - 1;
  uint64_t from = a->relay ? relay_from(a->relay) : stop;
  if (from < stop) {
    /* Pass-through: the bytes from `from` on come from the relay. */
    srv_source_t *src = relay_reader(a->relay, start > from ? start : from, stop);
    if (!src || (a->fd < 0 && start < from)) {
      if (src)
        relay_reader_drop(src);
      drop_fd(a);
      answer_error(req, PC_E_UPSTREAM_UNAVAILABLE, "the blob is passing through; try again");
      return ANSWER_DONE;
    }
    if (a->fd >= 0) {
      srv_respond_file(req, status, ct, a->fd, start, len, avail);
      srv_file_source(req, from, src);
    } else {
      srv_respond_source(req, status, ct, src, start, len, avail);
    }
  } else {
    srv_respond_file(req, status, ct, a->fd, start, len, avail);
  }
  if (startp)
    *startp = start;
  if (end)
    *end = stop;
  return ANSWER_STREAMING;
}

int answer_store_manifest(srv_req_t *req, store_t *store, const char *digest, int outcome)
{
  store_manifest_info_t info;
  int fd = -1;
  int rc = store_manifest_open(store, digest, &fd, &info);
  if (rc)
    return rc;
  answer_content_t a = {.kind = ANSWER_MANIFEST,
                        .outcome = outcome,
                        .digest = digest,
                        .media_type = info.media_type,
                        .size = info.size,
                        .fd = fd,
                        .avail = info.size};
  answer_content(req, &a, NULL, NULL);
  return 0;
}

int answer_store_blob(srv_req_t *req, store_t *store, const char *digest,
                      const answer_range_t *range, int outcome)
{
  store_blob_info_t info;
  int fd = -1;
  int rc = store_blob_open_info(store, digest, &fd, &info);
  if (rc)
    return rc;
  answer_content_t a = {.kind = ANSWER_BLOB,
                        .outcome = outcome,
                        .digest = digest,
                        .media_type = info.media_type,
                        .size = info.size,
                        .range = range,
                        .fd = fd,
                        .avail = info.size};
  answer_content(req, &a, NULL, NULL);
  return 0;
}

/* ---- ranges -------------------------------------------------------------------------------- */

static const char *skip_ows(const char *p)
{
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

int answer_parse_range(const char *hdr, answer_range_t *out)
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
    if (pc_parse_u64_prefix(&p, &out->suffix) < 0 || out->suffix == 0)
      goto invalid;
  } else {
    if (pc_parse_u64_prefix(&p, &out->start) < 0 || *p != '-')
      goto invalid;
    p++;
    if (*p >= '0' && *p <= '9') {
      if (pc_parse_u64_prefix(&p, &out->end) < 0 || out->end < out->start)
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
  /* An unsatisfiable range: answer_range_resolve rejects it against any size. */
  out->has = 1;
  out->start = UINT64_MAX;
  out->end = 0;
  out->suffix = 0;
  return PC_E_RANGE_INVALID;
}

int answer_range_resolve(const answer_range_t *r, uint64_t size, uint64_t *start, uint64_t *len)
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
