/* daemon/mirror — the pull-through policy: what to do when the store cannot answer alone.
 *
 * The registry dispatch (daemon/registry.c) routes the request, picks the upstream and serves
 * hits from the store (answer.c). It calls into the mirror for:
 *   - a manifest by tag (always: the mirror decides fresh / revalidate / fetch / stale-if-error);
 *   - a manifest by digest that is not in the store;
 *   - a blob that is not in the store.
 * The mirror answers from the store when it can, else makes the request a subscriber of the
 * manifest job (mjob.c) or blob fill (fill.c) for its content, starting one if none runs (one
 * upstream transfer per content however many ask), and answers through answer.c when the job
 * or fill says so, with X-Cache MISS, JOIN, STALE, REVALIDATED (HIT for a fresh tag or content
 * verified a moment ago). It puts the per-phase timings of the upstream fetch (up_queue_ms
 * when it waited for a cap, up_token_ms, up_redirect_ms, up_first_byte_ms, up_last_byte_ms)
 * on the access-log line of every request still waiting when the fetch ends.
 *
 * A waiting request is parked on its context (reqctx_park): if it goes away it leaves the job
 * or fill, which go on without it. All strings are copied; the upstream is referenced while
 * used; the request must still be open when called. Everything runs on the loop thread.
 */
#ifndef MIRROR_H
#define MIRROR_H

#include <stdint.h>

#include "daemon/answer.h"
#include "daemon/daemon.h"
#include "daemon/fill.h"
#include "daemon/pull.h"

#define MIRROR_RLQ_MAX 256       /**< misses parked while 429 breakers are open; more get 429 */
#define MIRROR_RLQ_WAIT_MS 10000 /**< a parked miss waits at most this past the window */
#define MIRROR_RLQ_TICK_MS 200   /**< how often the parked misses are looked at */

/** The mirror of a daemon: the upstream seam is http/up (d->up), the clock pc_now_sec. */
int mirror_new(daemon_t *d, mirror_t **out);
/** The same with another upstream seam and clock (unit tests): ops->... get an env whose
 * fetch_ctx is ctx; now may be NULL (pc_now_sec). */
int mirror_new_with(daemon_t *d, const pull_fetch_ops_t *ops, void *ctx, int64_t (*now)(void),
                    mirror_t **out);
void mirror_get_stats(const mirror_t *m, mirror_stats_t *out);
/** The egress table (daemon/egress.h), or NULL after mirror_free. */
struct egress *mirror_egress(mirror_t *m);
/** 1 while a manifest job of up has answered with digest and is storing it (and its sight). */
int mirror_manifest_storing(mirror_t *m, const daemon_upstream_t *up, const char *digest);
/** 1 while a fill of digest runs or commits (its requests join it: mirror_blob); 2 when that
 * fill was started under (up, repo) itself. up and repo may be NULL (then 1 or 0). */
int mirror_blob_filling(mirror_t *m, const daemon_upstream_t *up, const char *repo,
                        const char *digest);
/** The pull env the mirror's machines share: daemon/listing asks daemon/meta through it,
 * eviction sets env->on_store_full, the unit tests replace env->disk_free or env->relay_max. */
pull_env_t *mirror_env(mirror_t *m);
/** Cancel every fetch (waiting requests are answered 503) and free; fills and jobs whose store
 * write is running on a worker end in its after-work callback, and the last one frees m. */
void mirror_free(mirror_t *m);

/** Manifest by tag (ref_is_digest = 0) or by digest not in the store (ref_is_digest = 1). */
void mirror_manifest(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                     const char *ref, int ref_is_digest);
/** Blob not in the store. range may be NULL. */
void mirror_blob(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                 const char *digest, const answer_range_t *range);

/** A blob fill for a subscriber that is no request (a prefetch, daemon/prefetch.c): join the
 * fill of digest (*joined = 1) or start one under (up, repo), recorded where it was seen as for
 * a request. The caller checked the digest, online and the 429 breaker. s->ops set; 0, or the
 * error of fill_start (nothing subscribed). s->ops->on_end may run inside (fill_start). */
int mirror_fill(mirror_t *m, daemon_upstream_t *up, const char *repo, const char *digest,
                fill_sub_t *s, int *joined);

/** Call cb(arg, tag) for each tag of (up, repo) that a manifest job has answered and is still
 * writing to the store (a tag listing includes them: the clients have seen them already). */
void mirror_tags_storing(mirror_t *m, const daemon_upstream_t *up, const char *repo,
                         void (*cb)(void *arg, const char *tag), void *arg);

/** Tag freshness, a pure function of the record, the time and the TTL: 1 when a tag checked
 * at t->checked_at may be served without asking the upstream at time now. */
int mirror_tag_fresh(const store_tag_t *t, int64_t now, int64_t ttl);

#endif
