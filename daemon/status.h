/* daemon/status — GET /status: what the mirror is doing, for a person (HTML) or a script (JSON).
 *
 * One server-rendered page, no script and no external asset (the answer carries a
 * Content-Security-Policy that forbids loading anything: default-src 'none', inline style
 * only), refreshed by <meta http-equiv="refresh">; `?format=json` is the same model as JSON.
 * Both are built on the loop thread, at the request, from the figures /metrics renders (the
 * daemon's counters, the mirror's stats, each upstream pool's stats and 429 breaker, the
 * store's stats, eviction's figures, the egress table) plus what only a page shows: the fills
 * in flight (fill_each), each upstream's last error, the ring of the last requests and the
 * per-minute ring of cache outcomes (daemon/counters.h; written by counters_on_finish without
 * allocating). Nothing here runs on another request's path, and nothing is changed.
 *
 * `[server] status = off` turns the page off (404, as an unknown path); the registry routes
 * /status where it routes /metrics, so whatever guards /metrics guards it too.
 *
 * Model (JSON keys; HTML shows the same): version, now, start_time, uptime_s, ready{ok,
 * reason}, config{...}, upstreams[{name, url, state, reachable, breaker{open, half_open,
 * retry_after_s, opened, rejected}, last_error, active, queued, fetches, requests, errors{...},
 * received_bytes, first_byte{count, p50_s, p90_s, p99_s}}], fills[{digest, repo, upstream,
 * state, written, total, subscribers, age_s, rate_bps, resumes}], cache{blob_bytes, max_size,
 * usage_ratio, pinned_bytes, disk_free, min_free, store_full, blobs, manifests, tags,
 * served_bytes{store, upstream}, requests{manifest{outcome}, blob{outcome}}, hit_ratio{m1, m5,
 * m15}, window{...}, evictions{runs, blobs, bytes}}, mirror{...}, reloads{ok, failed},
 * egress[{scheme, host, port, upstream, count, last}], recent[{time, method, path, route,
 * status, cache, bytes}] (newest first).
 */
#ifndef STATUS_H
#define STATUS_H

#include <jansson.h>
#include <stddef.h>

#include "daemon/daemon.h"
#include "http/srv.h"

/** Answer GET/HEAD /status (HTML, or JSON with ?format=json), or 404 when the page is off. */
void status_handle(daemon_t *d, srv_req_t *req);

/** The model at time now (epoch s): a new reference (json_decref it). Never fails. */
json_t *status_model(daemon_t *d, int64_t now);
/** The HTML page of a model (heap memory, the caller frees it; *len its length). */
char *status_html(const json_t *model, size_t *len);

/** The q-quantile (0..1) of a first-byte histogram (non-cumulative slots, up_pool_stats_t),
 * interpolated inside its bucket as PromQL's histogram_quantile does; -1 when it is empty. */
double status_quantile(const uint64_t *hist, double q);

#endif
