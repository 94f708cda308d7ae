/* daemon/meta — the small answers the mirror passes through from an upstream as they are:
 * referrers indexes and tag lists ("metadata", as opposed to content: not addressed by a
 * digest, so nothing can verify them; the upstream's word is the answer).
 *
 * One entry per key (the caller's: kind, upstream, repository and the query it passes on) in
 * a small in-memory cache of the pull env (env->metas, at most META_MAX_ENTRIES, the oldest
 * answer out first). An entry holds the last upstream answer that was one (200 with a JSON
 * body, or 404) and when it came. meta_ask:
 *   - a cached answer younger than ttl: given at once (inside meta_ask);
 *   - offline (env->fetch->online is 0): the cached answer, stale, at once; else rc
 *     PC_E_OFFLINE;
 *   - a fetch of the key already running: the subscriber joins it (one upstream request
 *     however many ask: single-flight);
 *   - else a GET of url is sent, and every subscriber gets its outcome: a 200 (body, at most
 *     META_MAX_BODY bytes of JSON, Content-Type, OCI-Filters-Applied and Link as sent) or a 404
 *     replaces the cached answer; any other outcome (401/403/429/5xx, transport error) gives
 *     the cached answer, stale, while it is younger than max_stale (< 0: no limit), else the
 *     error (rc, with Retry-After on a 429).
 *
 *   entry: IDLE --ask, not fresh, online--> FETCHING --200/404--> IDLE (answer replaced)
 *                                               \--other------> IDLE (answer kept)
 *
 * Ownership: meta copies every string; an entry holds a reference on its upstream while it
 * fetches. Subscribers embed a meta_sub_t (container_of) and get on_end once, unsubscribed
 * before the call; the result is valid during on_end only. meta_free_all (mirror_free)
 * cancels the running fetches (their subscribers get err) and frees the cache. Everything
 * runs on the loop thread.
 */
#ifndef META_H
#define META_H

#include <stddef.h>
#include <stdint.h>

#include "core/list.h"
#include "daemon/pull.h"

struct daemon_upstream;
typedef struct meta meta_t;
typedef struct meta_sub meta_sub_t;

#define META_MAX_BODY (8u << 20) /**< a bigger referrers index or tag list fails its fetch */
#define META_MAX_ENTRIES 1024    /**< cached answers kept */

typedef enum meta_state { META_IDLE, META_FETCHING } meta_state;

/** What a subscriber gets. rc 0: an upstream answer (status 200 or 404), fresh or stale;
 * else an error for the client (no answer cached, or too old). */
typedef struct meta_result {
  int rc;
  int status;       /**< 200 or 404 when rc is 0 */
  int stale;        /**< the cached answer, given because the upstream failed or offline */
  int64_t age;      /**< seconds since that answer came */
  const char *body; /**< 200: the upstream's bytes */
  size_t len;
  const char *media_type;  /**< "" if none */
  const char *filters;     /**< OCI-Filters-Applied, "" if none */
  const char *link;        /**< Link as the upstream sent it, "" if none */
  const char *retry_after; /**< with a 429, "" if none */
} meta_result_t;

typedef struct meta_sub_ops {
  void (*on_end)(meta_sub_t *s, const meta_result_t *r);
} meta_sub_ops_t;

struct meta_sub {
  const meta_sub_ops_t *ops; /**< set by the subscriber */
  meta_t *entry;             /**< while subscribed (meta.c) */
  pc_list_t link;            /**< in the entry's subscribers (meta.c) */
};

/** Ask for key (see the top of this file). path_query is what to GET on the upstream
 * ("/v2/<name>/tags/list?n=10": its URLs, mirrors first, come from daemon_upstream_urls),
 * accept its Accept header (may be NULL); ttl and max_stale in seconds. s->ops->on_end may
 * run inside. */
void meta_ask(pull_env_t *env, struct daemon_upstream *up, const char *key, const char *path_query,
              const char *accept, int64_t ttl, int64_t max_stale, meta_sub_t *s);
/** Leave the fetch (the request went away); the fetch goes on for the cache. */
void meta_unsubscribe(meta_sub_t *s);
/** Cancel every fetch (subscribers get err) and free every entry. */
void meta_free_all(pull_env_t *env, int err);
/** Entries now (cached or fetching). */
size_t meta_count(const pull_env_t *env);

#endif
