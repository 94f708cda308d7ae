/* daemon/metrics — the Prometheus text exposition behind GET /metrics. */
#ifndef METRICS_H
#define METRICS_H

#include <stddef.h>

#include "daemon/daemon.h"

/** Render every counter and gauge in Prometheus text format 0.0.4. *out is heap memory owned by
 * the caller (free it); *len its length. */
void metrics_render(daemon_t *d, char **out, size_t *len);

#endif
