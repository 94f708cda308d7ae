/* daemon/mirror — the pull-through policy: what to do when the store cannot answer alone.
 *
 * The registry handlers (daemon/registry.c) validate the request, pick the upstream and serve
 * hits from the store. They call into the mirror for:
 *   - a manifest by tag (always: the mirror decides fresh / revalidate / fetch / stale-if-error);
 *   - a manifest by digest that is not in the store;
 *   - a blob that is not in the store (single-flight fill, streamed to every waiter).
 * The mirror answers the request itself (srv_respond* or an OCI error through registry_error),
 * now or later, with X-Cache MISS, JOIN, STALE or REVALIDATED (HIT for a fresh tag), and puts
 * the per-phase timings of the upstream fetch (up_queue_ms when it waited for a cap,
 * up_token_ms, up_redirect_ms, up_first_byte_ms, up_last_byte_ms) on the access-log line of
 * every request still waiting when the fetch ends. All strings are copied; the upstream is
 * referenced while used; the request must still be open when called.
 */
#ifndef MIRROR_H
#define MIRROR_H

#include <stdint.h>

#include "daemon/daemon.h"

/** A parsed Range header: has = 0 when none. Open end: end = UINT64_MAX. Suffix: suffix > 0. */
typedef struct mirror_range {
  int has;
  uint64_t start, end; /**< inclusive; end = UINT64_MAX for "N-" */
  uint64_t suffix;     /**< "bytes=-N": the last N bytes */
} mirror_range_t;

/** Counters since mirror_new (exported on /metrics). */
typedef struct mirror_stats {
  uint64_t fills_started, fills_committed, fills_failed; /**< blob fills */
  uint64_t fills_in_flight, waiters_joined;   /**< now; requests that joined a running fill */
  uint64_t digest_mismatches;                 /**< upstream bytes that failed verification */
  uint64_t resumes;                           /**< broken upstream bodies continued with Range */
  uint64_t manifests_fetched;
} mirror_stats_t;

int mirror_new(daemon_t *d, mirror_t **out);
void mirror_get_stats(const mirror_t *m, mirror_stats_t *out);
/** Cancel every fill (waiting requests are aborted) and free. */
void mirror_free(mirror_t *m);

/** Manifest by tag (ref_is_digest = 0) or by digest not in the store (ref_is_digest = 1). */
void mirror_manifest(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                     const char *ref, int ref_is_digest);
/** Blob not in the store. */
void mirror_blob(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                 const char *digest, const mirror_range_t *range);

#endif
