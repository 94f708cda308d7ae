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

/** A breaker: open after trouble until until_ms, then half-open (one request, the probe, is let
 * through; its outcome closes or re-opens it). The 429 breaker (rl) and each URL's down
 * breaker have this shape; daemon_breaker_admit is their one gate. */
typedef struct daemon_breaker {
  int open;          /**< trouble was seen: open (or half-open past until_ms) */
  uint64_t until_ms; /**< pc_mono_ms when the window ends */
  int probing;       /**< half-open: the one probe was let through (at probe_ms) */
  uint64_t probe_ms;
  uint64_t opened, rejected; /**< counters: times opened, requests not sent */
} daemon_breaker_t;

/** A probe that said nothing for this long (its fetch was cancelled) lets another through. */
#define DAEMON_BREAKER_PROBE_LOST_MS 60000

/** One URL of an upstream: the mirrors (conf.mirrors) in order, then conf.url (the origin). */
typedef struct daemon_upstream_url {
  char base[1024];       /**< "http://regional:5000" */
  int mirror;            /**< a mirror: asked with ?ns=NAME, anonymously, skipped while down */
  unsigned fails;        /**< consecutive failures */
  daemon_breaker_t down; /**< open: the URL is down (skipped until the back-off ends) */
  uint64_t tries, served, failures, skipped; /**< counters (/metrics) */
} daemon_upstream_url_t;

#define DAEMON_UPSTREAM_MAX_URLS (DAEMON_MAX_MIRRORS + 1)

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
  daemon_breaker_t rl; /**< the 429 breaker (daemon_upstream_admit) */
  struct {
    int rc, status; /**< the last failed fetch or probe: its rc and HTTP status (429, 5xx) */
    int64_t time;   /**< epoch s; 0: none yet */
  } last_err;       /**< set by daemon_upstream_seen, shown by /status */
  daemon_upstream_url_t urls[DAEMON_UPSTREAM_MAX_URLS]; /**< mirrors..., then conf.url */
  unsigned nurls;
  /** config_upstream_name_valid(conf.name) (case-blind, as the name's matches are): an ns=
   * that named this upstream may be echoed as OCI-Namespace without a check per request */
  int name_is_host;
};

/** Keep an upstream alive while a fetch for it runs (a reload may drop it from d->ups). */
daemon_upstream_t *daemon_upstream_ref(daemon_upstream_t *u);
/** Drop a reference; the last one frees u (and releases its pool). */
void daemon_upstream_unref(daemon_upstream_t *u);

/** d->ups := the upstreams of cfg: objects whose target (name, url, mirrors, CA, credentials) did
 * not change are kept and take the new tag_ttl and caps; the others are made new, and the old ones
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

/** Start a GET /v2/ probe of u's URLs in fetch order (mirrors first, failing over like a fetch;
 * no auth, outside the caps; any HTTP answer means reachable)
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

/* ---- URLs, failover and the down breakers ----------------------------------------------
 * An upstream has 1 + its mirrors URLs (daemon_upstream_t.urls, mirrors first, conf.url last).
 * A fetch gets them in order (http/up moves on at a transport error or 5xx, up_req_t
 * more_urls), less the mirrors that are down. A URL's outcome (daemon_upstream_url_tried):
 * any answer but a 5xx resets its failure count and closes its breaker; a transport error or
 * a 5xx counts, and down_after of them in a row open it for down_backoff (the URL is skipped,
 * counted in skipped); then one fetch probes it. conf.url is never skipped (there is nowhere
 * else to go), its breaker only counts. */

/** The URLs of one request: full URLs (base + path, and ?ns=NAME or &ns=NAME for a mirror). */
typedef struct daemon_urls {
  char *v[DAEMON_UPSTREAM_MAX_URLS];
  unsigned n;
} daemon_urls_t;

/** Build the URLs for path_query ("/v2/<repo>/blobs/<digest>", may carry "?n=10") on u, in
 * order, skipping mirrors that are down. Free with daemon_urls_free. */
void daemon_upstream_urls(daemon_upstream_t *u, const char *path_query, daemon_urls_t *out);
void daemon_urls_free(daemon_urls_t *urls);
/** Point r at urls (r->url, more_urls, nmore) with u's failover settings and per-URL outcome
 * callback (u must outlive the fetch: its owner holds a reference). urls must live until
 * up_fetch_start returned (the strings are copied). */
void daemon_upstream_req_urls(up_req_t *r, daemon_upstream_t *u, const daemon_urls_t *urls);
/** The outcome of one URL of a fetch (up_try_cb): url is a full URL of u. */
void daemon_upstream_url_tried(daemon_upstream_t *u, const char *url, int rc, int status);
/** The configured base of a full URL of u (for the access log), or NULL. */
const char *daemon_upstream_url_base(const daemon_upstream_t *u, const char *url);
/** daemon_breaker_t's gate: 1 when a request may go (closed, or it is the probe), 0 when not
 * (counted in b->rejected). */
int daemon_breaker_admit(daemon_breaker_t *b, uint64_t now_ms);

/** A failed or unknown upstream is probed again at most this often (driven by /readyz). */
#define DAEMON_UPSTREAM_PROBE_INTERVAL_MS 2000

#endif
