/* daemon/pull — what blob fills (fill.c) and manifest jobs (mjob.c) share: the loop, the
 * store, the upstream seam, the counters, and the sets of work in flight.
 *
 * The upstream seam (pull_fetch_ops_t) is http/up in the daemon (mirror_new) and a fake
 * in the unit tests (tests/unit/test-mirror.c), so the fill and manifest machines and the
 * mirror policy are tested without a socket. An up_fetch_t is an opaque handle the seam
 * hands out: only the seam's own functions look inside it.
 *
 * The env is owned by the mirror (daemon/mirror.c), lives on the loop thread, and outlives
 * every fill and job it holds: `live` counts them (fill.c and mjob.c add one when they start
 * an object and drop it, then call env->released, when they free it); after mirror_free the
 * env is freed by the released call that brings live to 0. Once closing is set, the mirror
 * starts no new fill or job.
 */
#ifndef PULL_H
#define PULL_H

#include <stdint.h>
#include <uv.h>

#include "core/list.h"
#include "http/up.h"
#include "store/store.h"

struct daemon_upstream;
struct bgwrite;

/** Counters since the mirror started (exported on /metrics). */
typedef struct mirror_stats {
  uint64_t fills_started, fills_committed, fills_failed; /**< blob fills */
  uint64_t fills_in_flight, waiters_joined; /**< now; requests that joined a running fill */
  uint64_t digest_mismatches;               /**< upstream bytes that failed verification */
  uint64_t resumes;                         /**< broken upstream bodies continued with Range */
  uint64_t stall_restarts; /**< stalled fills restarted for a request that would join them */
  uint64_t fills_stalled;  /**< now: fills with no progress for join_stall (fill_stalled) */
  uint64_t manifests_fetched;
  uint64_t jobs_in_flight; /**< now: manifest jobs fetching or storing */
  uint64_t scope_confirmed, scope_refused, scope_failed; /**< repository-scoping HEADs */
  uint64_t rl_parked; /**< now: misses parked while a 429 breaker is open */
  /* The full disk (fill.h, pass-through): */
  uint64_t passthrough_fills;  /**< fills that went pass-through (no room, ENOSPC, EDQUOT) */
  uint64_t passthrough_active; /**< now: pass-through fills running */
  uint64_t store_full;         /**< now: 1 from a fill that found no room until one commits */
  uint64_t relay_bytes;        /**< now: memory held by pass-through relays (daemon/relay.h) */
  uint64_t relay_peak_bytes;   /**< the most one relay has held */
} mirror_stats_t;

typedef struct pull_env pull_env_t;

/** The upstream seam: the calls of http/up that fills and jobs make. start has up_fetch_start's
 * contract (0 and *out, callbacks later; or an error and no callback ever). */
typedef struct pull_fetch_ops {
  int (*start)(pull_env_t *env, const up_req_t *r, up_fetch_t **out);
  void (*cancel)(pull_env_t *env, up_fetch_t *f);
  const char *(*header)(pull_env_t *env, up_fetch_t *f, const char *lname);
  void (*timings)(pull_env_t *env, up_fetch_t *f, up_timings_t *t);
  /** 1 when fetches can be started now (an upstream client exists and the mirror is online). */
  int (*online)(pull_env_t *env);
  /** Resume a fetch whose on_data returned UP_DATA_PAUSE (up_fetch_resume's contract). */
  void (*resume)(pull_env_t *env, up_fetch_t *f);
} pull_fetch_ops_t;

struct pull_env {
  uv_loop_t *loop;
  store_t *store;
  const pull_fetch_ops_t *fetch;
  void *fetch_ctx;              /**< for the seam (the daemon_t in production) */
  const uint64_t *max_manifest; /**< bytes; a bigger manifest fails its job (read at its start) */
  const long *join_stall_ms;    /**< a request does not join a fill stalled this long (fill.h
                                     fill_stalled; read at each join; 0 = join any); may be NULL */
  int64_t (*now)(void);         /**< wall-clock seconds (pc_now_sec; a fake clock in tests) */
  mirror_stats_t st;
  pc_list_t fills;                   /**< fill_t.link */
  pc_list_t jobs;                    /**< mjob_t.link */
  pc_list_t metas;                   /**< meta_t (daemon/meta.c): referrers and tag lists */
  pc_list_t scopes;                  /**< scope_job_t (daemon/scope.c): HEADs confirming */
  pc_list_t sights;                  /**< sights being written (daemon/scope.c) */
  unsigned live;                     /**< fills and jobs not yet freed */
  int closing;                       /**< mirror_free ran: free the env when live reaches 0 */
  void (*released)(pull_env_t *env); /**< called after a fill, job or relay is freed */
  /** Free bytes on the store's disk, or UINT64_MAX when unknown (statvfs; a fake in tests).
   * A fill that would not fit goes pass-through from its start (fill.h). May be NULL. */
  uint64_t (*disk_free)(pull_env_t *env);
  /** The hook for eviction: called (may be NULL) when a fill found no room (need: its bytes
   * still to come) or a write or commit failed with ENOSPC/EDQUOT (need: 0). It may free
   * space for the next fills; the fill that called it goes on in pass-through regardless. */
  void (*on_store_full)(pull_env_t *env, uint64_t need);
  /** A blob was committed (the store grew): eviction may look at the budget at once instead of
   * at its next tick (daemon/evict.h evict_kick). May be NULL. */
  void (*on_committed)(pull_env_t *env);
  size_t relay_max; /**< bytes a pass-through relay holds at most (0: RELAY_MAX_DEFAULT) */
  /** The store writes of fills, jobs and sights (daemon/bgwrite.h); NULL: the thread pool. */
  struct bgwrite *writer;
  /** The job that makes the store's spare temp files there (fill.c spare_refill; counted in
   * live), and whether it is queued. */
  uv_work_t spare_work;
  int spare_busy;
};

struct daemon_urls;
/** The URLs of /v2/<repo>/<kind>/<ref> on an upstream (its mirrors, then its url: see
 * daemon_upstream_urls) into urls, and r pointed at them (daemon_upstream_req_urls). Free
 * urls (daemon_urls_free) once the fetch started. */
void pull_req_urls(up_req_t *r, struct daemon_upstream *up, const char *repo, const char *kind,
                   const char *ref, struct daemon_urls *urls);
/** The fetch fields every request to an upstream shares (CA, credentials, pool, the Via chain
 * of daemon/tier). */
void pull_req_init(up_req_t *r, const struct daemon_upstream *up);
/** The client answer for an upstream outcome that is not a usable 200: rc when < 0, else
 * by status (404 -> unknown, 401/403 -> DENIED, 429, 503, 504, 508 -> LOOP, other ->
 * UPSTREAM). */
int pull_map_upstream(int rc, int status, int unknown);

#endif
