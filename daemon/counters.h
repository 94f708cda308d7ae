/* daemon/counters — the request counters behind /metrics, and the calls that count.
 *
 * Plain integers, touched only on the loop thread: a daemon_counters_t lives inside the daemon
 * (daemon_t.counters) for the life of the process. This module only counts; rendering them is
 * daemon/metrics. It knows nothing of the daemon: every call takes the counters (or the
 * request) it changes, and none can fail.
 *
 * A request's route and cache outcome are recorded in its context (daemon/reqctx.h: the
 * registry sets the route, daemon/answer counts the outcome in cache[][] as it answers); the
 * server's finish callback (counters_on_finish, registered with srv_set_finish_cb) then counts
 * it by route and status and its body bytes by where they came from.
 */
#ifndef COUNTERS_H
#define COUNTERS_H

#include <stdint.h>

#include "http/srv.h"

/** Cache outcomes, as sent in X-Cache and counted on /metrics. */
enum daemon_cache {
  DAEMON_CACHE_HIT,         /**< answered from the store */
  DAEMON_CACHE_MISS,        /**< fetched from the upstream for this request */
  DAEMON_CACHE_JOIN,        /**< joined a fetch already running for the same content */
  DAEMON_CACHE_STALE,       /**< the upstream failed; an expired tag was served */
  DAEMON_CACHE_REVALIDATED, /**< an expired tag confirmed unchanged by the upstream */
  DAEMON_CACHE_N
};

#define DAEMON_ROUTES 10 /**< route_kind values (daemon/route.h) */
#define DAEMON_CODES 20  /**< distinct statuses counted per route (counters_code_idx) */

#define COUNTERS_RECENT 64      /**< requests kept in the ring of the last ones (/status) */
#define COUNTERS_RECENT_PATH 96 /**< bytes of a path kept there (longer ones are cut) */
#define COUNTERS_MINUTES 16     /**< per-minute cache counters kept (/status hit ratio) */

/** One finished request, as the /status page lists it. */
typedef struct counters_recent {
  int64_t time;        /**< epoch seconds; 0: an empty slot */
  int status;          /**< 0: the client left or the answer was cut */
  signed char route;   /**< route_kind */
  signed char outcome; /**< enum daemon_cache, or -1 */
  char method[8];
  char path[COUNTERS_RECENT_PATH];
  uint64_t bytes; /**< body bytes sent */
} counters_recent_t;

/** The cache outcomes and served bytes of one wall-clock minute. */
typedef struct counters_minute {
  int64_t minute; /**< epoch seconds / 60; slot i holds minute % COUNTERS_MINUTES == i */
  uint64_t outcomes[DAEMON_CACHE_N];
  uint64_t served_store, served_upstream;
} counters_minute_t;

/** Counters kept on the loop thread for /metrics. */
typedef struct daemon_counters {
  uint64_t requests[DAEMON_ROUTES][DAEMON_CODES]; /**< by route and status (counters_code_idx) */
  uint64_t cache[2][DAEMON_CACHE_N];              /**< [0] manifests, [1] blobs */
  uint64_t served_store, served_upstream;         /**< body bytes by source */
  uint64_t reloads_ok, reloads_failed;
  int64_t reload_time; /**< last successful (re)load, epoch s */
  /* For /status (daemon/status.h): fixed rings, written by counters_on_finish, never allocated. */
  counters_recent_t recent[COUNTERS_RECENT]; /**< the last requests; next slot: nrecent % N */
  uint64_t nrecent;                          /**< requests ever written into recent[] */
  counters_minute_t minutes[COUNTERS_MINUTES];
  /* daemon/access: refusals */
  uint64_t conns_refused;         /**< closed at accept: outside allow and ops_allow */
  uint64_t refused_pull;          /**< 403: a pull route from outside allow */
  uint64_t refused_ops;           /**< 403: an ops route from outside ops_allow */
  uint64_t refuse_log_ms;         /**< when the last conn-refused line was logged (uv_now) */
  uint64_t refuse_log_suppressed; /**< conn-refused lines not logged since */
  uint64_t refused_nocred;        /**< 401: no Authorization */
  uint64_t refused_badcred;       /**< 401: wrong credentials */
  uint64_t refused_busy;          /**< 503: too many bcrypt checks at once */
  uint64_t auth_ok[3];            /**< let in: [0] token, [1] htpasswd (bcrypt), [2] cached */
} daemon_counters_t;

/** The srv finish callback (srv_set_finish_cb, arg = the daemon_counters_t): counts the request
 * by route (ROUTE_UNKNOWN without a context) and status, and for 2xx answers its body bytes by
 * source (upstream for a miss or a join, store for the other outcomes, none without one).
 * It also writes the request into the ring of the last ones and its outcome and bytes into
 * the slot of the current minute (one clock read, no allocation); /status requests are
 * counted but not put in the ring (the page's refreshes would push the others out). */
void counters_on_finish(srv_req_t *req, int status, uint64_t body_bytes, void *counters);

/** Index of an HTTP status in daemon_counters_t.requests (the last one is "other"). */
int counters_code_idx(int status);
/** The status counted at index i, or 0 for the last ("other") slot. */
int counters_code(int i);
/** Record a finished request at time now (epoch s): counters_on_finish without the srv request
 * (for it and the unit tests). method and path may be NULL. */
void counters_note(daemon_counters_t *c, int64_t now, int route, int outcome, int status,
                   uint64_t body_bytes, const char *method, const char *path);
/** Sum the minute slots of the last `minutes` minutes up to now (the current one included)
 * into *out (its minute field is set to the current minute). */
void counters_window(const daemon_counters_t *c, int64_t now, int minutes, counters_minute_t *out);
/** "hit", "miss", "join", "stale", "revalidated". */
const char *counters_cache_name(enum daemon_cache outcome);

#endif
