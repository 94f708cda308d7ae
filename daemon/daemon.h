/* daemon — the process-wide context: one struct owns the loop, the store, the server, the
 * upstream client and the configuration, and is passed explicitly (no globals). */
#ifndef DAEMON_H
#define DAEMON_H

#include <stdint.h>
#include <uv.h>

#include "http/srv.h"
#include "http/up.h"
#include "store/store.h"

#define DAEMON_MAX_UPSTREAMS 16
#define DAEMON_MAX_LISTEN 8

/** One configured upstream: NAME is the registry host as clients name it (what `ns=` and the
 * path prefix carry), URL where it is fetched from. */
typedef struct daemon_upstream {
  char name[256];   /**< "registry.k8s.io" */
  char url[1024];   /**< "https://registry.k8s.io" (no trailing slash) */
  char ca_file[1024]; /**< CA bundle for this upstream; "" = system store */
} daemon_upstream_t;

typedef struct daemon_config {
  char listen[DAEMON_MAX_LISTEN][128]; /**< "127.0.0.1:5000", "[::1]:5000" */
  int nlisten;
  char store_dir[1024];
  daemon_upstream_t upstreams[DAEMON_MAX_UPSTREAMS]; /**< [0] is the default */
  int nupstreams;
  int64_t tag_ttl;          /**< seconds a tag is served without revalidation; default 300 */
  int offline;              /**< never contact an upstream */
  uint64_t max_manifest;    /**< bytes; default 4 MiB */
  srv_opts_t srv;           /**< server limits */
  up_opts_t up;             /**< upstream client timeouts */
} daemon_config_t;

typedef struct mirror mirror_t;

typedef struct daemon {
  uv_loop_t *loop;
  daemon_config_t cfg;
  store_t *store;
  srv_t *srv;
  up_t *up;           /**< NULL when offline */
  mirror_t *mirror;
  uv_timer_t atime_timer; /**< flushes batched access times */
  uv_signal_t sigterm, sigint;
  int stopping;
  struct {
    uint64_t manifest_hits, blob_hits; /**< answered from the store (for /metrics) */
  } counters;
} daemon_t;

/** Look up a configured upstream by its name (exact, case-insensitive); NULL if none. */
const daemon_upstream_t *daemon_upstream_find(const daemon_t *d, const char *name, size_t len);

#endif
