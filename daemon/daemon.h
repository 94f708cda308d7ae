/* daemon — the process-wide context: one struct owns the loop, the store, the server, the
 * upstream client, the upstream objects and the configuration, and is passed explicitly (no
 * globals).
 *
 * This header is data only, no functions: the modules that work on the daemon include it and
 * it includes none of them (only the plain types it holds by value: daemon/config.h,
 * daemon/counters.h), so daemon/ has no include circle (tests/unit/test-layers.c checks that).
 *
 *   daemon/serve     cmd_serve: creates and destroys everything here; signals, reload, drain
 *   daemon/upstream  ups, nups, live: the reference-counted upstream objects
 *   daemon/ready     readyz: readiness and the /readyz requests waiting for probes
 *   daemon/counters  counters; daemon/metrics renders them with everyone's statistics
 *   daemon/registry, daemon/mirror   the answers (they read cfg, store, up, ups, mirror)
 *
 * Every field is touched on the loop thread only.
 */
#ifndef DAEMON_H
#define DAEMON_H

#include <stdint.h>
#include <uv.h>

#include "core/list.h"
#include "daemon/config.h"
#include "daemon/counters.h"
#include "http/srv.h"
#include "http/up.h"
#include "store/store.h"

typedef struct daemon_upstream daemon_upstream_t; /* daemon/upstream.h */
typedef struct mirror mirror_t;                   /* daemon/mirror.h */
typedef struct daemon_evict daemon_evict_t;       /* daemon/evict.h */
typedef struct daemon_control daemon_control_t;   /* daemon/control.h */
typedef struct daemon_access daemon_access_t;     /* daemon/access.h */

typedef struct daemon {
  uv_loop_t *loop;
  daemon_config_t cfg;
  store_t *store;
  srv_t *srv;
  up_t *up; /**< NULL while offline and never online */
  mirror_t *mirror;
  daemon_upstream_t *ups[DAEMON_MAX_UPSTREAMS]; /**< the configured upstreams, [0] default */
  int nups;
  pc_list_t live; /**< every upstream object not yet freed, by live_link (daemon/upstream.c) */
  struct {
    pc_list_t waiting; /**< /readyz requests waiting for probes (daemon/ready.c) */
    uv_timer_t timer;  /**< bounds that wait */
    int timer_init;    /**< daemon_ready_init ran and daemon_ready_close did not yet */
  } readyz;
  int stopping;
  int64_t start_time;        /**< epoch seconds */
  daemon_evict_t *evict;     /**< background eviction (daemon/evict.c) */
  daemon_control_t *control; /**< the control socket (daemon/control.c) */
  daemon_counters_t counters;
  struct {
    char id[128];   /**< this mirror's name in Via chains (daemon/tier.c) */
    char self[140]; /**< its Via entry, "1.1 <id>" ("" until first used) */
    char from[128]; /**< the cfg.tier_id self was made from (a reload may change it) */
    char *out;      /**< during a dispatch: the Via chain its fetches send (tier_enter) */
    uint64_t loops; /**< requests refused 508 (a loop or too many hops) */
  } tier;
  daemon_access_t *access; /**< the client credentials in force (daemon/access.c) */
  struct srv_tls *tls;     /**< the TLS listener's configuration (serve.c), or NULL */
  int ktls_available;      /**< srv_tls_ktls_probe at start (logged once) */
} daemon_t;

#endif
