/* daemon/registry — the OCI pull-API handlers: route a request, serve hits from the store,
 * hand misses to the mirror, answer errors as OCI JSON.
 *
 * Every answer carries Docker-Distribution-API-Version: registry/2.0 and, when the request had
 * `ns=`, OCI-Namespace: <ns> (registry_common_headers). Manifest and blob answers carry
 * X-Cache: HIT|MISS|JOIN|STALE|REVALIDATED (registry_cache). Access-log fields: route=<kind>,
 * upstream=<name>, cache=hit|miss|join|stale|revalidated.
 *
 * Range requests (blobs only): one `bytes=` range is honoured (206 + Content-Range), an
 * unsatisfiable one is 416 with `Content-Range: bytes * /size` (no space); a header with several
 * ranges, or another unit, is ignored (200 with the whole body, as RFC 9110 allows).
 * Manifests ignore Range.
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include <stdint.h>

#include "daemon/daemon.h"
#include "daemon/mirror.h"
#include "http/srv.h"

/** The srv handler; arg is the daemon_t. Answers every request exactly once (itself, or
 * through the mirror). */
void registry_handle(srv_req_t *req, void *daemon);

/** Answer with an OCI error: {"errors":[{"code":pc_err_code(err),"message":pc_strerror(err),
 * "detail":detail}]} (detail omitted when NULL), status pc_err_status(err), Content-Type
 * application/json, plus registry_common_headers. HEAD gets the headers without the body.
 * For PC_E_TOOMANYREQUESTS add Retry-After with srv_resp_header before calling. */
void registry_error(srv_req_t *req, int err, const char *detail);

/** Record a manifest (is_blob 0) or blob answer's cache outcome (enum daemon_cache; < 0 does
 * nothing): the X-Cache header, the access-log field and the metrics. Call once per request,
 * before answering. */
void registry_cache(daemon_t *d, srv_req_t *req, int is_blob, int outcome);

/** Serve a manifest from the store (registry_cache(outcome) when answered): 200 with the exact
 * stored bytes, Content-Type = stored media type, Docker-Content-Digest, ETag "<digest>"; 304
 * when If-None-Match matches.
 * Returns 0 when answered, PC_E_NOTFOUND without answering when the store lacks it, or another
 * error without answering (the caller answers). */
int registry_serve_manifest(daemon_t *d, srv_req_t *req, const char *digest, int outcome);

/** Serve a blob from the store with sendfile: 200, or 206/416 per range (may be NULL), with
 * Docker-Content-Digest, Content-Type (stored media type or application/octet-stream),
 * Accept-Ranges: bytes, ETag, Cache-Control: max-age=31536000. Same return contract as
 * registry_serve_manifest (416 counts as answered). */
int registry_serve_blob(daemon_t *d, srv_req_t *req, const char *digest,
                        const mirror_range_t *range, int outcome);

/** Parse a Range header value (hdr may be NULL). Pure. Returns 0 with out->has = 1 for one
 * bytes range; 0 with out->has = 0 when there is none to honour (NULL, another unit, several
 * ranges); PC_E_RANGE_INVALID for a bytes range that can never be satisfied or does not parse
 * ("bytes=500-0", "bytes=-0", "bytes=x-"). */
int registry_parse_range(const char *hdr, mirror_range_t *out);

/** Resolve a parsed range against a size: *start and *len of the bytes to send (an end past
 * the size is clamped; a suffix longer than the size is the whole body). Pure. Returns 0, or
 * PC_E_RANGE_INVALID when unsatisfiable (start >= size, or size 0). r->has must be 1. */
int registry_range_resolve(const mirror_range_t *r, uint64_t size, uint64_t *start,
                           uint64_t *len);

/** Add Docker-Distribution-API-Version and (if the request carried ns=) OCI-Namespace. */
void registry_common_headers(srv_req_t *req);

#endif
