/* daemon/metrics — the Prometheus text exposition behind GET /metrics.
 *
 * Rendering only: it reads the daemon's counters (daemon/counters) together with the server's,
 * the mirror's, each upstream pool's and the store's own figures, on the loop thread, and
 * changes nothing. The exposition is text format 0.0.4 and is checked with
 * `promtool check metrics` in the tests (tests/e2e/test_appliance.py).
 */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/counters.h"
#include "daemon/daemon.h"

/** Render every metric. *out is heap memory owned by the caller (free it); *len its length.
 * Never fails (allocation failure aborts, as everywhere). */
void metrics_render(daemon_t *d, char **out, size_t *len);

#endif
