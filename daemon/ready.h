/* daemon/ready — readiness, and GET /readyz with its wait for upstream probes.
 *
 * Ready means: not stopping, the store open, its disk above min_free, and an upstream known
 * reachable by its last fetch or probe (or offline). While the store is full (mirror stats
 * store_full: blobs pass through uncached, see daemon/fill.h) the reason says so: "ready: store
 * full: ..." (200, every pull is still served), or "not ready: store full: ... (disk below
 * min_free)" when min_free also fails. While an upstream is reachable, fills whose body
 * stopped flowing for [fetch] join_stall are said the same way: "ready: fills stalled: ..."
 * (200). When none is known
 * reachable, /readyz
 * starts probes (daemon_upstream_probe) and parks the request until they have answered, 2 s
 * at most; probes run only when asked, so an idle mirror sends nothing upstream.
 *
 * State: d->readyz (daemon/daemon.h), the list of parked requests and the timer bounding
 * their wait. A parked request is owned by the server; this module holds a record on the list
 * and parks it on the request's context (reqctx_park): when the client leaves first, the gone
 * callback drops the record and nothing is answered; otherwise the record is dropped, the
 * request unparked and answered. Every call runs on the loop thread and none fails.
 */
#ifndef READY_H
#define READY_H

#include "daemon/daemon.h"
#include "http/srv.h"

/** A /readyz request waits at most this long for the probes it started (then 503). */
#define DAEMON_READYZ_WAIT_MS 2000

/** 1 when the daemon may take traffic, 0 when not, -1 while probes that decide it run;
 * *reason says why in a few words. probe = 1 starts probes of the upstreams not known
 * reachable (at most every DAEMON_UPSTREAM_PROBE_INTERVAL_MS each). */
int daemon_ready(daemon_t *d, int probe, const char **reason);

/** Answer GET /readyz: 200 "ready" or 503 "not ready: <reason>", once the probes it starts
 * have answered, or after DAEMON_READYZ_WAIT_MS ("not ready: probing upstreams"). Before
 * daemon_ready_init (and after daemon_ready_close) the answer never waits. */
void daemon_readyz(daemon_t *d, srv_req_t *req);

/** Set up d->readyz on d->loop (the serve start). */
void daemon_ready_init(daemon_t *d);
/** Something that decides readiness changed (a probe ended, a reload, stopping): answer the
 * parked requests if the outcome is known now. */
void daemon_ready_settle(daemon_t *d);
/** Close the timer (the serve shutdown, once the server is closed: no request is parked). */
void daemon_ready_close(daemon_t *d);

#endif
