/* daemon/metrics — request accounting and the Prometheus text exposition behind GET /metrics.
 *
 * Everything lives on the loop thread: counters are plain integers, and rendering reads them
 * together with the server's, the mirror's, each upstream pool's and the store's own figures.
 * The exposition is text format 0.0.4 and is checked with `promtool check metrics` in the
 * tests (tests/e2e/test_appliance.py).
 */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/daemon.h"

/** Render every metric. *out is heap memory owned by the caller (free it); *len its length. */
void metrics_render(daemon_t *d, char **out, size_t *len);

/** The srv finish callback (srv_set_finish_cb, arg = the daemon_t): counts the request by
 * the route and cache outcome its context (daemon/reqctx.h) recorded, its status, and its
 * body bytes by source. */
void metrics_on_finish(srv_req_t *req, int status, uint64_t body_bytes, void *daemon);

/** Index of an HTTP status in daemon_counters_t.requests (the last one is "other"). */
int metrics_code_idx(int status);

#endif
