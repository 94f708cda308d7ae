/* daemon/upstream — a configured upstream at run time: a reference-counted object holding its
 * configuration (a copy), its up_pool_t (the max_connections/rate_limit caps and per-upstream
 * statistics, http/up) and what is known of its reachability.
 *
 * Ownership and lifetime: daemon_t.ups[0..nups) hold one reference each (the configured set,
 * made and replaced by daemon_upstreams_apply). A manifest job, a blob fill, every blob waiter
 * and a running probe hold one more for as long as they use the object, so a reload that drops
 * an upstream from the set never frees one under a fetch: the fetch finishes against the
 * upstream it started with. The last daemon_upstream_unref frees the object and releases its
 * pool. Every object not yet freed is on daemon_t.live, so shutdown (daemon_upstreams_close)
 * can detach the pools of objects that store work still holds, before up_close frees them.
 *
 * Errors: nothing here fails towards the caller. A pool that cannot be made is logged and left
 * NULL (fetches then run uncapped); a probe that cannot start counts as "unreachable".
 * Everything runs on the loop thread.
 */
#ifndef UPSTREAM_H
#define UPSTREAM_H

#include <stdint.h>

#include "core/list.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "http/up.h"

struct daemon_upstream {
  unsigned refs;
  daemon_upstream_conf_t conf;
  up_pool_t *pool;   /**< connection and rate caps, per-upstream stats; NULL offline */
  int reachable;     /**< last probe or fetch reached it: 1, 0, or -1 unknown */
  uint64_t reach_ms; /**< when reachable was last set or a probe started (pc_mono_ms) */
  up_fetch_t *probe; /**< a /v2/ reachability probe in flight */
  void (*probe_done)(daemon_t *d); /**< called when that probe ends (not when cancelled) */
  daemon_t *d;
  pc_list_t live_link; /**< on d->live until freed */
  struct {
    int open;          /**< a 429 was seen: the breaker is open (or half-open past until_ms) */
    uint64_t until_ms; /**< pc_mono_ms when the window the upstream asked for ends */
    int probing;       /**< half-open: the one probe was let through */
    uint64_t opened, rejected; /**< counters: times opened, requests not sent */
  } rl;                        /**< the 429 breaker (daemon_upstream_admit) */
  struct {
    int rc, status; /**< the last failed fetch or probe: its rc and HTTP status (429, 5xx) */
    int64_t time;   /**< epoch s; 0: none yet */
  } last_err;       /**< set by daemon_upstream_seen, shown by /status */
};

/** Keep an upstream alive while a fetch for it runs (a reload may drop it from d->ups). */
daemon_upstream_t *daemon_upstream_ref(daemon_upstream_t *u);
/** Drop a reference; the last one frees u (and releases its pool). */
void daemon_upstream_unref(daemon_upstream_t *u);

/** d->ups := the upstreams of cfg: objects whose target (name, url, CA, credentials) did not
 * change are kept and take the new tag_ttl and caps; the others are made new, and the old ones
 * released (fetches still running hold them). Pools exist when d->up does. An all-zero
 * daemon_t is a valid start (d->live is set up on first use). */
void daemon_upstreams_apply(daemon_t *d, const daemon_config_t *cfg);
/** Shutdown, before up_close: cancel running probes (their done callbacks do not run), detach
 * the pools of every object still alive (up_close frees the pools), and drop d->ups. */
void daemon_upstreams_close(daemon_t *d);

/** Record what a fetch learned about reachability: rc/status of an upstream fetch (our own
 * refusals, such as a size cap or a digest mismatch, say nothing and are ignored). A fetch
 * that did not reach it, or a 429 or 5xx answer, is kept as u->last_err. */
void daemon_upstream_seen(daemon_upstream_t *u, int rc, int status);

/** Start a GET <url>/v2/ probe (no auth, outside the caps; any HTTP answer means reachable)
 * when none runs, the daemon is online and not stopping, and what is known of u is unknown or
 * older than DAEMON_UPSTREAM_PROBE_INTERVAL_MS. When it ends its result is recorded
 * (daemon_upstream_seen) and done(d) runs; a probe that cannot start is recorded as
 * unreachable at once, without done. */
void daemon_upstream_probe(daemon_upstream_t *u, void (*done)(daemon_t *d));
/** 1 while a probe of one of d->ups runs. */
int daemon_upstreams_probing(const daemon_t *d);

/* ---- the 429 breaker ----------------------------------------------------------------------
 * A 429 from an upstream (seen by daemon_upstream_seen, with the Retry-After the caller read
 * given to daemon_upstream_rate_limited; DAEMON_UPSTREAM_RETRY_AFTER_S if unsaid) opens its
 * breaker for that long: nothing is sent to it (daemon_upstream_admit says 0; the callers
 * serve tags and listings stale and answer misses 429 with the Retry-After left). Once the
 * window is over one request is let through as the probe (half-open); any answer but a 429
 * closes the breaker, a 429 opens it again. Blob fills and resumes already running are not
 * stopped. */

#define DAEMON_UPSTREAM_RETRY_AFTER_S 30

/** Open (or re-time) the breaker: retry_after is the upstream's header (seconds, or NULL / ""
 * / unparseable: DAEMON_UPSTREAM_RETRY_AFTER_S, without shortening a window already set). */
void daemon_upstream_rate_limited(daemon_upstream_t *u, const char *retry_after);
/** 1 when a request to u may be sent now (the breaker closed, or this is the probe), 0 when
 * not (counted in rl.rejected). */
int daemon_upstream_admit(daemon_upstream_t *u);
/** The seconds left in the window as a Retry-After value (at least "1"). */
void daemon_upstream_retry_after(const daemon_upstream_t *u, char *out, size_t outlen);

/** A failed or unknown upstream is probed again at most this often (driven by /readyz). */
#define DAEMON_UPSTREAM_PROBE_INTERVAL_MS 2000

#endif
