/* daemon — the process-wide context: one struct owns the loop, the store, the server, the
 * upstream client and the configuration, and is passed explicitly (no globals). */
#ifndef DAEMON_H
#define DAEMON_H

#include <stdint.h>
#include <uv.h>

#include "http/srv.h"
#include "http/up.h"
#include "store/store.h"

typedef struct up_pool up_pool_t; /* http/up.h */

#define DAEMON_MAX_UPSTREAMS 16
#define DAEMON_MAX_LISTEN 8

/** One configured upstream (plain data, as configured): NAME is the registry host as clients
 * name it (what `ns=` and the path prefix carry), URL where it is fetched from. */
typedef struct daemon_upstream_conf {
  char name[256];             /**< "registry.k8s.io" */
  char url[1024];             /**< "https://registry.k8s.io" (no trailing slash) */
  char ca_file[1024];         /**< CA bundle for this upstream; "" = system store */
  char credentials_file[1024]; /**< "user:password" file; "" = anonymous */
  char userpwd[512];          /**< read from credentials_file when the config is loaded */
  int64_t tag_ttl;            /**< seconds a tag is served without revalidation; default 300 */
  unsigned max_connections;   /**< concurrent upstream fetches; 0 = no cap */
  double rate_limit;          /**< fetch starts per second; 0 = no cap */
  unsigned rate_burst;        /**< token bucket size; 0 = about one second's worth */
} daemon_upstream_conf_t;

enum { DAEMON_LOG_TEXT = 0, DAEMON_LOG_JSON = 1 };

typedef struct daemon_config {
  char path[1024];                     /**< the config file read; "" = none */
  char listen[DAEMON_MAX_LISTEN][128]; /**< "127.0.0.1:5000", "[::1]:5000" */
  int nlisten;
  srv_opts_t srv;                      /**< server limits and timeouts */
  unsigned drain_timeout_ms;           /**< SIGTERM: answers in progress may run this long */
  int offline;                         /**< never contact an upstream */
  uint64_t max_manifest;               /**< bytes; default 4 MiB */
  up_opts_t up;                        /**< upstream client timeouts */
  char store_dir[1024];
  uint64_t store_max_size;             /**< size budget (0 = none); for eviction */
  uint64_t store_min_free;             /**< /readyz fails below this much free disk */
  daemon_upstream_conf_t upstreams[DAEMON_MAX_UPSTREAMS]; /**< [0] is the default */
  int nupstreams;
  int log_level;                       /**< PC_LOG_* */
  int log_format;                      /**< DAEMON_LOG_TEXT | DAEMON_LOG_JSON */
} daemon_config_t;

/** A configured upstream at run time: reference counted, because a config reload may replace
 * it while fetches started for it are still running (they keep the old one until they end). */
typedef struct daemon_upstream {
  unsigned refs;
  daemon_upstream_conf_t conf;
  up_pool_t *pool;        /**< connection and rate caps, per-upstream stats */
  int reachable;          /**< last probe or fetch reached it: 1, 0, or -1 unknown */
  uint64_t reach_ms;      /**< when reachable was last set (pc_mono_ms) */
  up_fetch_t *probe;      /**< a /v2/ reachability probe in flight */
  struct daemon *d;
  struct daemon_upstream *live_next; /**< every object not yet freed (daemon.c) */
} daemon_upstream_t;

typedef struct mirror mirror_t;

/** Cache outcomes, as sent in X-Cache and counted on /metrics. */
enum daemon_cache {
  DAEMON_CACHE_HIT,         /**< answered from the store */
  DAEMON_CACHE_MISS,        /**< fetched from the upstream for this request */
  DAEMON_CACHE_JOIN,        /**< joined a fetch already running for the same content */
  DAEMON_CACHE_STALE,       /**< the upstream failed; an expired tag was served */
  DAEMON_CACHE_REVALIDATED, /**< an expired tag confirmed unchanged by the upstream */
  DAEMON_CACHE_N
};

#define DAEMON_ROUTES 9   /**< route_kind values (daemon/route.h) */
#define DAEMON_CODES 20   /**< distinct statuses counted per route (metrics.c) */

/** Counters kept on the loop thread for /metrics. */
typedef struct daemon_counters {
  uint64_t requests[DAEMON_ROUTES][DAEMON_CODES]; /**< by route and status (metrics_code_idx) */
  uint64_t cache[2][DAEMON_CACHE_N];              /**< [0] manifests, [1] blobs */
  uint64_t served_store, served_upstream;         /**< body bytes by source */
  uint64_t reloads_ok, reloads_failed;
  int64_t reload_time;                            /**< last successful (re)load, epoch s */
} daemon_counters_t;

typedef struct daemon {
  uv_loop_t *loop;
  daemon_config_t cfg;
  store_t *store;
  srv_t *srv;
  up_t *up;           /**< NULL while offline and never online */
  mirror_t *mirror;
  daemon_upstream_t *ups[DAEMON_MAX_UPSTREAMS]; /**< the configured upstreams, [0] default */
  int nups;
  daemon_upstream_t *live; /**< every upstream object not yet freed (shutdown detaches pools) */
  struct readyz_wait *readyz_waiting; /**< /readyz requests waiting for probes */
  uv_timer_t readyz_timer;            /**< bounds that wait */
  int readyz_timer_init;
  uv_timer_t atime_timer; /**< flushes batched access times */
  uv_signal_t sigterm, sigint, sighup;
  int stopping;
  int64_t start_time;     /**< epoch seconds */
  daemon_counters_t counters;
} daemon_t;

/** Keep an upstream alive while a fetch for it runs (a reload may drop it from d->ups). */
daemon_upstream_t *daemon_upstream_ref(daemon_upstream_t *u);
void daemon_upstream_unref(daemon_upstream_t *u);
/** d->ups := the upstreams of cfg: objects whose target (name, url, CA, credentials) did not
 * change are kept and take the new tag_ttl and caps; the others are made new, and the old ones
 * released (fetches still running hold them). Pools exist when d->up does. */
void daemon_upstreams_apply(daemon_t *d, const daemon_config_t *cfg);
/** Record what a fetch learned about reachability: rc/status of an upstream fetch. */
void daemon_upstream_seen(daemon_upstream_t *u, int rc, int status);
/** Readiness: 1 when the daemon may take traffic (store open, its disk above min_free, an
 * upstream reachable by its last probe or fetch, or offline), 0 when not, -1 while probes that
 * decide it run; *reason says why in a few words. probe = 1 starts GET /v2/ probes of the
 * upstreams not known reachable (at most every 2 s each); probes run only when asked. */
int daemon_ready(daemon_t *d, int probe, const char **reason);
/** Answer GET /readyz: 200 "ready" or 503 "not ready: <reason>", once the probes it starts
 * have answered, or after 2 s ("not ready: probing upstreams"). */
void daemon_readyz(daemon_t *d, srv_req_t *req);

#endif
