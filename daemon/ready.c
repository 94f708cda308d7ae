/* daemon/ready — readiness and /readyz (see ready.h). */
#include "daemon/ready.h"

#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/pc.h"
#include "daemon/mirror.h"
#include "daemon/reqctx.h"
#include "daemon/upstream.h"

/* A /readyz request waiting for the probes it started. */
typedef struct readyz_wait {
  srv_req_t *req;
  pc_list_t link; /**< on d->readyz.waiting */
} readyz_wait_t;

static void on_probe_settled(daemon_t *d)
{
  daemon_ready_settle(d);
}

int daemon_ready(daemon_t *d, int probe, const char **reason)
{
  struct statvfs sv;
  if (d->stopping) {
    *reason = "stopping";
    return 0;
  }
  if (!d->store) {
    *reason = "store not open";
    return 0;
  }
  mirror_stats_t ms = {0};
  if (d->mirror)
    mirror_get_stats(d->mirror, &ms);
  int low = statvfs(d->cfg.store_dir, &sv) == 0 &&
            (uint64_t)sv.f_bavail * sv.f_frsize < d->cfg.store_min_free;
  if (ms.store_full && low) {
    *reason = "store full: blobs pass through, not cached (disk below min_free)";
    return 0;
  }
  if (low) {
    *reason = "store disk below min_free";
    return 0;
  }
  if (ms.store_full) {
    /* Still serving every pull (verified, pass-through): ready, and says why it is degraded. */
    *reason = "store full: blobs pass through, not cached";
    return 1;
  }
  if (d->cfg.offline) {
    *reason = "offline";
    return 1;
  }
  for (int i = 0; i < d->nups; i++)
    if (d->ups[i]->reachable == 1) {
      /* Ready; stalled fills (bodies that stopped flowing: pullcache_fills_stalled) are said,
       * new requests restart what they would join. */
      *reason = ms.fills_stalled ? "fills stalled: an upstream body stopped flowing (see [fetch] "
                                   "join_stall)"
                                 : "ok";
      return 1;
    }
  /* None known reachable: ask again (at most every probe interval per upstream). */
  for (int i = 0; probe && i < d->nups; i++)
    daemon_upstream_probe(d->ups[i], on_probe_settled);
  if (daemon_upstreams_probing(d)) {
    *reason = "probing upstreams";
    return -1;
  }
  *reason = "no upstream reachable";
  return 0;
}

/* ---- /readyz ------------------------------------------------------------------------------ */

static void readyz_answer(daemon_t *d, srv_req_t *req, int ready, const char *reason)
{
  char msg[96];
  int n;
  if (ready > 0 &&
      (strncmp(reason, "store full", 10) == 0 || strncmp(reason, "fills stalled", 13) == 0)) {
    n = snprintf(msg, sizeof(msg), "ready: %s\n", reason);
    srv_req_log(req, "reason", reason);
    srv_respond(req, 200, "text/plain", msg, (size_t)n);
    return;
  }
  if (ready > 0) {
    /* Ready (cached content is served), and says which upstreams have asked it to back off
     * (their 429 breaker is open: tags stale, misses 429). */
    char body[64 + DAEMON_MAX_UPSTREAMS * 320];
    size_t len = (size_t)snprintf(body, sizeof(body), "ready\n");
    for (int i = 0; i < d->nups; i++) {
      daemon_upstream_t *u = d->ups[i];
      if (!u->rl.open || len >= sizeof(body))
        continue;
      char ra[24];
      daemon_upstream_retry_after(u, ra, sizeof(ra));
      int k = snprintf(body + len, sizeof(body) - len, "rate-limited: %s retry_after=%s\n",
                       u->conf.name, ra);
      if (k > 0)
        len += (size_t)k;
    }
    if (len > sizeof(body) - 1)
      len = sizeof(body) - 1;
    srv_respond(req, 200, "text/plain", body, len);
    return;
  }
  n = snprintf(msg, sizeof(msg), "not ready: %s\n", reason);
  srv_req_log(req, "reason", reason);
  srv_respond(req, 503, "text/plain", msg, (size_t)n);
}

/* The client left while its /readyz waited: forget it. */
static void on_readyz_gone(reqctx_t *ctx, void *arg)
{
  readyz_wait_t *w = arg;
  (void)ctx;
  pc_list_remove(&w->link);
  free(w);
}

/* Answer the waiting /readyz requests once the outcome is known (or when out of time: force). */
static void readyz_answer_all(daemon_t *d, int force)
{
  const char *reason;
  int ready;
  if (!d->readyz.timer_init || pc_list_empty(&d->readyz.waiting))
    return;
  ready = daemon_ready(d, 0, &reason);
  if (ready < 0 && !force)
    return;
  uv_timer_stop(&d->readyz.timer);
  /* Newest first, as they were always answered. */
  while (!pc_list_empty(&d->readyz.waiting)) {
    readyz_wait_t *w = pc_list_entry(d->readyz.waiting.next, readyz_wait_t, link);
    pc_list_remove(&w->link);
    reqctx_unpark(reqctx_of(w->req));
    readyz_answer(d, w->req, ready, reason);
    free(w);
  }
}

void daemon_ready_settle(daemon_t *d)
{
  readyz_answer_all(d, 0);
}

static void on_readyz_timeout(uv_timer_t *t)
{
  daemon_t *d = container_of(t, daemon_t, readyz.timer);
  readyz_answer_all(d, 1);
}

void daemon_readyz(daemon_t *d, srv_req_t *req)
{
  const char *reason;
  int ready = daemon_ready(d, 1, &reason);
  if (ready >= 0 || !d->readyz.timer_init) {
    readyz_answer(d, req, ready, reason);
    return;
  }
  if (pc_list_empty(&d->readyz.waiting))
    uv_timer_start(&d->readyz.timer, on_readyz_timeout, DAEMON_READYZ_WAIT_MS, 0);
  readyz_wait_t *w = pc_xcalloc(1, sizeof(*w));
  w->req = req;
  pc_list_push_front(&d->readyz.waiting, &w->link);
  reqctx_park(reqctx_of(req), on_readyz_gone, w);
}

void daemon_ready_init(daemon_t *d)
{
  pc_list_init(&d->readyz.waiting);
  uv_timer_init(d->loop, &d->readyz.timer);
  d->readyz.timer_init = 1;
}

void daemon_ready_close(daemon_t *d)
{
  if (!d->readyz.timer_init)
    return;
  uv_close((uv_handle_t *)&d->readyz.timer, NULL);
  d->readyz.timer_init = 0;
}
