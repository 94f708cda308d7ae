/* daemon/answer — every registry answer is composed here: manifests and blobs (from the store,
 * from a live fill, from memory), OCI errors, and the small JSON answers of the other routes.
 *
 * One place owns the headers a registry answer carries:
 *   - Docker-Distribution-API-Version: registry/2.0 on every answer, and OCI-Namespace: <ns>
 *     when the request had a plausible `ns=` (answer_common_headers);
 *   - manifests and blobs: Docker-Content-Digest and ETag "<digest>"; If-None-Match naming
 *     the digest (or "*") is a 304 whatever the source; blobs also get Accept-Ranges: bytes
 *     and Cache-Control: max-age=31536000 (content addressed: immutable);
 *   - blobs honour one `bytes=` Range (206 + Content-Range; 416 with `Content-Range: bytes
 *     * /size` when unsatisfiable; several ranges or another unit: the whole body, 200);
 *     manifests ignore Range;
 *   - X-Cache: HIT|MISS|JOIN|STALE|REVALIDATED, the access-log field cache=..., the cache
 *     counter and the request context's outcome, from the outcome every manifest/blob answer
 *     (success or error) must be given: there is no separate call to forget.
 *
 * Every function answers the request exactly once (through srv_respond*), and never runs its
 * done callback before returning (srv's rule), so callers may still touch the request.
 * A file descriptor given in answer_content_t is always taken (sent, or closed).
 */
#ifndef ANSWER_H
#define ANSWER_H

#include <stddef.h>
#include <stdint.h>

#include "http/srv.h"
#include "store/store.h"

/** What a content answer is. Also the index of the cache counters. */
typedef enum answer_kind { ANSWER_MANIFEST = 0, ANSWER_BLOB = 1 } answer_kind;

/** A parsed Range header: has = 0 when none. Open end: end = UINT64_MAX. Suffix: suffix > 0. */
typedef struct answer_range {
  int has;
  uint64_t start, end; /**< inclusive; end = UINT64_MAX for "N-" */
  uint64_t suffix;     /**< "bytes=-N": the last N bytes */
} answer_range_t;

/** One manifest or blob answer. Exactly one source: mem (size bytes in memory, copied), or
 * fd (taken) whose bytes [0, avail) may be sent now: avail = size for a complete file; for a
 * live fill (live = 1) avail may be less, and the caller announces later bytes with
 * srv_file_avail. */
typedef struct answer_content {
  answer_kind kind;
  int outcome;                 /**< enum daemon_cache: required */
  const char *digest;          /**< required: Docker-Content-Digest and ETag */
  const char *media_type;      /**< NULL or "": application/json (manifest) or
                                    application/octet-stream (blob) */
  uint64_t size;               /**< the whole content's length */
  const answer_range_t *range; /**< blobs only; NULL = none */
  const void *mem;
  int fd; /**< when mem is NULL */
  uint64_t avail;
  int live; /**< fd is a fill's temp file: its bytes are not verified yet (the answer's last
                 byte is held, see answer_content) */
  struct relay *relay; /**< live, pass-through: the bytes from relay_from(relay) on come from
                            this relay (a reader is made), the ones before from fd (fd may be
                            -1 when the answer needs none of them) */
} answer_content_t;

/** answer_content's result. */
enum { ANSWER_DONE = 0, ANSWER_STREAMING = 1 };

/** Answer with content. Returns ANSWER_DONE when the answer needs nothing more (a body from
 * memory or from a complete file, a 304, a 416); ANSWER_STREAMING when the body comes from a
 * live fill (HEAD included: that answer ends with its head): *start and *end (may be NULL
 * otherwise) are the first and one past the last file byte the answer sends, and the caller follows
 * the fill until the request ends. The rule for bytes that are not verified yet (live = 1): the
 * last byte of the answer, whatever its range, is held until the fill verified. So the caller
 * announces srv_file_avail(req, min(avail, *end - 1)) as bytes arrive, srv_file_avail(req, *end)
 * once the digest matched, and srv_abort if it did not (the answer is cut short, also when every
 * byte of it was already there). */
int answer_content(srv_req_t *req, const answer_content_t *a, uint64_t *start, uint64_t *end);

/** Serve a manifest from the store: 200 with the exact stored bytes, Content-Type = stored
 * media type (or application/json). Returns 0 when answered (also 304), PC_E_NOTFOUND without
 * answering when the store lacks it, or another error without answering (the caller answers,
 * e.g. with answer_content_error). */
int answer_store_manifest(srv_req_t *req, store_t *store, const char *digest, int outcome);
/** Serve a blob from the store (sendfile): 200, or 206/416 per range (may be NULL), with the
 * stored media type or application/octet-stream. Same return contract (416 is answered). */
int answer_store_blob(srv_req_t *req, store_t *store, const char *digest,
                      const answer_range_t *range, int outcome);

/** Retry-After on a 503 for an upstream fetch that waited [fetch] queue_wait in the queue. */
#define ANSWER_BUSY_RETRY_AFTER "5"

/** A manifest or blob error: the OCI error JSON of err (answer_error), with the outcome
 * recorded as for content, and Retry-After: retry_after when err is PC_E_TOOMANYREQUESTS and
 * one is given. */
void answer_content_error(srv_req_t *req, answer_kind kind, int outcome, int err,
                          const char *detail, const char *retry_after);

/** Answer with an OCI error: {"errors":[{"code":pc_err_code(err),"message":pc_strerror(err),
 * "detail":detail}]} (detail omitted when NULL), status pc_err_status(err), Content-Type
 * application/json, plus the common headers (and Allow for a 405, Retry-After:
 * ANSWER_BUSY_RETRY_AFTER for PC_E_UPSTREAM_BUSY). HEAD gets the headers without the body. */
void answer_error(srv_req_t *req, int err, const char *detail);

/** A JSON answer (status, body of len bytes, copied) with the common headers. content_type
 * NULL is application/json. */
void answer_json(srv_req_t *req, int status, const char *content_type, const char *body,
                 size_t len);

/** Add Docker-Distribution-API-Version and (if the request carried a valid ns=) OCI-Namespace. */
void answer_common_headers(srv_req_t *req);

/** Parse a Range header value (hdr may be NULL). Pure. Returns 0 with out->has = 1 for one
 * bytes range; 0 with out->has = 0 when there is none to honour (NULL, another unit, several
 * ranges); PC_E_RANGE_INVALID for a bytes range that can never be satisfied or does not parse
 * ("bytes=500-0", "bytes=-0", "bytes=x-"): out then holds a range that never resolves, so the
 * answer is a 416 once the size is known. */
int answer_parse_range(const char *hdr, answer_range_t *out);

/** Resolve a parsed range against a size: *start and *len of the bytes to send (an end past
 * the size is clamped; a suffix longer than the size is the whole body). Pure. Returns 0, or
 * PC_E_RANGE_INVALID when unsatisfiable (start >= size, or size 0). r->has must be 1. */
int answer_range_resolve(const answer_range_t *r, uint64_t size, uint64_t *start, uint64_t *len);

#endif
