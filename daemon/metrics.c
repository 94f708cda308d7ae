/* daemon/metrics — the daemon's counters and the figures of the server, the upstream pools, the
 * mirror and the store, rendered in Prometheus text format (see metrics.h). */
#include "daemon/metrics.h"

#include <inttypes.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/buf.h"
#include "core/pc.h"
#include "daemon/access.h"
#include "http/srv-tls.h"
#include "daemon/evict.h"
#include "daemon/egress.h"
#include "daemon/mirror.h"
#include "daemon/ready.h"
#include "daemon/route.h"
#include "daemon/upstream.h"

/* ---- rendering ---------------------------------------------------------------------------- */

static void family(pc_buf_t *o, const char *name, const char *type, const char *help)
{
  pc_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric(pc_buf_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
  family(o, name, type, help);
  pc_buf_printf(o, "%s %" PRIu64 "\n", name, v);
}

static void render_requests(pc_buf_t *o, const daemon_t *d, const srv_stats_t *ss)
{
  family(o, "pullcache_requests_total", "counter",
         "Requests finished, by route and HTTP status (code 0: the client left or the answer "
         "was cut).");
  for (int r = 0; r < DAEMON_ROUTES; r++) {
    for (int c = 0; c < DAEMON_CODES; c++) {
      uint64_t n = d->counters.requests[r][c];
      if (!n)
        continue;
      char code[16];
      if (c == DAEMON_CODES - 1)
        snprintf(code, sizeof(code), "other");
      else
        snprintf(code, sizeof(code), "%d", counters_code(c));
      pc_buf_printf(o, "pullcache_requests_total{route=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                    route_kind_name((route_kind)r), code, n);
    }
  }
  metric(o, "pullcache_response_body_bytes_total", "counter", "Response body bytes sent.",
         ss->body_bytes);
  family(o, "pullcache_cache_requests_total", "counter",
         "Manifest and blob requests by cache outcome (also sent as X-Cache).");
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < DAEMON_CACHE_N; i++)
      pc_buf_printf(o, "pullcache_cache_requests_total{kind=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
                    k ? "blob" : "manifest", counters_cache_name((enum daemon_cache)i),
                    d->counters.cache[k][i]);
  family(o, "pullcache_served_bytes_total", "counter",
         "Manifest and blob body bytes of 2xx answers, by where they came from (store: a "
         "hit, stale or revalidated answer; upstream: a miss or a join, streamed during the "
         "fetch).");
  pc_buf_printf(o, "pullcache_served_bytes_total{source=\"store\"} %" PRIu64 "\n",
                d->counters.served_store);
  pc_buf_printf(o, "pullcache_served_bytes_total{source=\"upstream\"} %" PRIu64 "\n",
                d->counters.served_upstream);
}

static void render_mirror(pc_buf_t *o, const mirror_stats_t *ms)
{
  metric(o, "pullcache_fills_started_total", "counter", "Blob fills started (cache misses).",
         ms->fills_started);
  metric(o, "pullcache_fills_committed_total", "counter", "Blob fills verified and committed.",
         ms->fills_committed);
  metric(o, "pullcache_fills_failed_total", "counter", "Blob fills that failed.", ms->fills_failed);
  metric(o, "pullcache_fills_in_flight", "gauge", "Blob fills running now.", ms->fills_in_flight);
  metric(o, "pullcache_manifest_jobs_in_flight", "gauge",
         "Manifest jobs running now (fetching, or storing what they answered).",
         ms->jobs_in_flight);
  metric(o, "pullcache_fill_joins_total", "counter",
         "Blob requests that joined a fill already running (single flight), retried ones "
         "included.",
         ms->waiters_joined);
  metric(o, "pullcache_upstream_resumes_total", "counter",
         "Broken upstream bodies continued with a Range request.", ms->resumes);
  metric(o, "pullcache_fills_stalled", "gauge",
         "Blob fills with no progress for [fetch] join_stall (a trickling or stuck upstream).",
         ms->fills_stalled);
  metric(o, "pullcache_fill_stall_restarts_total", "counter",
         "Stalled fills restarted on a fresh upstream connection for a request that would have "
         "joined them.",
         ms->stall_restarts);
  metric(o, "pullcache_digest_mismatches_total", "counter",
         "Upstream content that failed verification (nothing stored, nothing delivered "
         "complete).",
         ms->digest_mismatches);
  metric(o, "pullcache_manifests_fetched_total", "counter", "Manifests fetched upstream.",
         ms->manifests_fetched);
  metric(o, "pullcache_rate_limit_parked", "gauge",
         "Misses waiting for an upstream's 429 window to end (at most 256).", ms->rl_parked);
  family(o, "pullcache_scope_checks_total", "counter",
         "Repository-scoping HEADs: a stored digest asked under a repository it was not seen in.");
  pc_buf_printf(o, "pullcache_scope_checks_total{result=\"confirmed\"} %" PRIu64 "\n",
                ms->scope_confirmed);
  pc_buf_printf(o, "pullcache_scope_checks_total{result=\"refused\"} %" PRIu64 "\n",
                ms->scope_refused);
  pc_buf_printf(o, "pullcache_scope_checks_total{result=\"failed\"} %" PRIu64 "\n",
                ms->scope_failed);
  metric(o, "pullcache_passthrough_fills_total", "counter",
         "Blob fills served without the disk (no room, ENOSPC, EDQUOT): verified, not cached.",
         ms->passthrough_fills);
  metric(o, "pullcache_passthrough_fills_active", "gauge", "Pass-through blob fills running now.",
         ms->passthrough_active);
  metric(o, "pullcache_store_full", "gauge",
         "1 from a fill that found no room until the next fill commits (caching again).",
         ms->store_full);
  metric(o, "pullcache_passthrough_relay_bytes", "gauge",
         "Memory held now by pass-through relays (bounded per fill).", ms->relay_bytes);
}

/* The first-byte histogram of every upstream pool (st: their stats, in d->ups order). */
static void render_first_byte(pc_buf_t *o, const daemon_t *d, const up_pool_stats_t *st)
{
  family(o, "pullcache_upstream_first_byte_seconds", "histogram",
         "Time from the start of an upstream fetch to its final response headers (token and "
         "redirect hops included).");
  for (int i = 0; i < d->nups; i++) {
    const char *n = d->ups[i]->conf.name;
    uint64_t cum = 0;
    for (int b = 0; b < UP_HIST_BUCKETS; b++) {
      cum += st[i].first_byte_hist[b];
      pc_buf_printf(
          o,
          "pullcache_upstream_first_byte_seconds_bucket{upstream=\"%s\",le=\"%g\"} %" PRIu64 "\n",
          n, up_hist_bounds_s[b], cum);
    }
    cum += st[i].first_byte_hist[UP_HIST_BUCKETS];
    pc_buf_printf(
        o,
        "pullcache_upstream_first_byte_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} %" PRIu64 "\n",
        n, cum);
    pc_buf_printf(o, "pullcache_upstream_first_byte_seconds_sum{upstream=\"%s\"} %.6f\n", n,
                  (double)st[i].first_byte_sum_us / 1e6);
    pc_buf_printf(o, "pullcache_upstream_first_byte_seconds_count{upstream=\"%s\"} %" PRIu64 "\n",
                  n, cum);
  }
}

/* One sample line (or three, for errors) of upstream family f for upstream n. */
static void upstream_sample(pc_buf_t *o, size_t f, const char *fam, const char *n,
                            const up_pool_stats_t *s, int reachable)
{
  switch (f) {
  case 0:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->fetches);
    break;
  case 1:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->requests);
    break;
  case 2:
    pc_buf_printf(o, "%s{upstream=\"%s\",kind=\"timeout\"} %" PRIu64 "\n", fam, n,
                  s->errors_timeout);
    pc_buf_printf(o, "%s{upstream=\"%s\",kind=\"unavailable\"} %" PRIu64 "\n", fam, n,
                  s->errors_unavailable);
    pc_buf_printf(o, "%s{upstream=\"%s\",kind=\"other\"} %" PRIu64 "\n", fam, n, s->errors_other);
    break;
  case 8:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->too_slow);
    break;
  case 9:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->queue_timeouts);
    break;
  case 3:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->body_bytes);
    break;
  case 4:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fam, n, s->tokens);
    break;
  case 5:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %u\n", fam, n, s->active);
    break;
  case 6:
    pc_buf_printf(o, "%s{upstream=\"%s\"} %u\n", fam, n, s->queued);
    break;
  case 7:
    if (reachable >= 0)
      pc_buf_printf(o, "%s{upstream=\"%s\"} %d\n", fam, n, reachable);
    break;
  }
}

static void render_upstream_urls(pc_buf_t *o, const daemon_t *d);

static void render_upstreams(pc_buf_t *o, const daemon_t *d)
{
  static const struct {
    const char *name, *type, *help;
  } fams[] = {
      {"pullcache_upstream_fetches_total", "counter",
       "Upstream fetches started (one per manifest or blob transfer, redirects included)."},
      {"pullcache_upstream_requests_total", "counter",
       "HTTP requests sent upstream, redirect hops and token requests included."},
      {"pullcache_upstream_errors_total", "counter",
       "Upstream fetches that failed, by kind (timeout, unavailable = refused or DNS, other)."},
      {"pullcache_upstream_received_bytes_total", "counter",
       "Body bytes received from the upstream."},
      {"pullcache_upstream_tokens_total", "counter", "Bearer tokens fetched."},
      {"pullcache_upstream_active_fetches", "gauge", "Fetches running now."},
      {"pullcache_upstream_queued_fetches", "gauge",
       "Fetches waiting for max_connections or rate_limit."},
      {"pullcache_upstream_reachable", "gauge",
       "1 when the last probe or fetch reached the upstream, 0 when it did not."},
      {"pullcache_upstream_too_slow_total", "counter",
       "Transfers ended for averaging under [fetch] min_rate (then resumed on a fresh "
       "connection; also counted as timeout errors)."},
      {"pullcache_upstream_queue_timeouts_total", "counter",
       "Fetches that waited [fetch] queue_wait in the queue and were answered 503 unsent (also "
       "counted as other errors)."},
  };
  up_pool_stats_t st[DAEMON_MAX_UPSTREAMS];
  for (int i = 0; i < d->nups; i++) {
    memset(&st[i], 0, sizeof(st[i]));
    if (d->ups[i]->pool)
      up_pool_get_stats(d->ups[i]->pool, &st[i]);
  }
  for (size_t f = 0; f < PC_ARRAY_SIZE(fams); f++) {
    family(o, fams[f].name, fams[f].type, fams[f].help);
    for (int i = 0; i < d->nups; i++)
      upstream_sample(o, f, fams[f].name, d->ups[i]->conf.name, &st[i], d->ups[i]->reachable);
  }
  render_first_byte(o, d, st);
  family(o, "pullcache_upstream_rate_limited", "gauge",
         "1 while the upstream's 429 breaker is open (nothing sent but one probe per window).");
  for (int i = 0; i < d->nups; i++)
    pc_buf_printf(o, "pullcache_upstream_rate_limited{upstream=\"%s\"} %d\n", d->ups[i]->conf.name,
                  d->ups[i]->rl.open);
  family(o, "pullcache_upstream_rate_limit_opened_total", "counter",
         "Times a 429 opened the upstream's breaker.");
  for (int i = 0; i < d->nups; i++)
    pc_buf_printf(o, "pullcache_upstream_rate_limit_opened_total{upstream=\"%s\"} %" PRIu64 "\n",
                  d->ups[i]->conf.name, d->ups[i]->rl.opened);
  family(o, "pullcache_upstream_rate_limit_rejected_total", "counter",
         "Requests not sent upstream because its breaker was open (served stale or 429).");
  for (int i = 0; i < d->nups; i++)
    pc_buf_printf(o, "pullcache_upstream_rate_limit_rejected_total{upstream=\"%s\"} %" PRIu64 "\n",
                  d->ups[i]->conf.name, d->ups[i]->rl.rejected);
  render_upstream_urls(o, d);
}

/* Per URL of each upstream (its mirrors, then url): failover and the down breakers. */
static void render_upstream_urls(pc_buf_t *o, const daemon_t *d)
{
  static const struct {
    const char *name, *type, *help;
  } fams[] = {
      {"pullcache_upstream_url_tries_total", "counter", "Fetches that tried this URL."},
      {"pullcache_upstream_url_served_total", "counter",
       "Fetches this URL answered (any answer but a 5xx)."},
      {"pullcache_upstream_url_failures_total", "counter",
       "Fetches this URL failed (connect failure, timeout, 5xx): the next URL was tried."},
      {"pullcache_upstream_url_skipped_total", "counter",
       "Fetches that skipped this mirror URL while it was down."},
      {"pullcache_upstream_url_down", "gauge",
       "1 while this mirror URL is down (skipped until its back-off ends)."},
  };
  for (size_t f = 0; f < PC_ARRAY_SIZE(fams); f++) {
    family(o, fams[f].name, fams[f].type, fams[f].help);
    for (int i = 0; i < d->nups; i++) {
      const daemon_upstream_t *u = d->ups[i];
      for (unsigned k = 0; k < u->nurls; k++) {
        const daemon_upstream_url_t *x = &u->urls[k];
        uint64_t v = f == 0   ? x->tries
                     : f == 1 ? x->served
                     : f == 2 ? x->failures
                     : f == 3 ? x->skipped
                              : (uint64_t)(x->down.open != 0);
        pc_buf_printf(o, "%s{upstream=\"%s\",url=\"%s\"} %" PRIu64 "\n", fams[f].name, u->conf.name,
                      x->base, v);
      }
    }
  }
  family(o, "pullcache_tier_loops_refused_total", "counter",
         "Requests refused 508: their Via chain named this mirror, or passed max_hops tiers.");
  pc_buf_printf(o, "pullcache_tier_loops_refused_total %" PRIu64 "\n", d->tier.loops);
}

static void render_store(pc_buf_t *o, const daemon_t *d)
{
  store_stats_t st;
  struct statvfs sv;
  memset(&st, 0, sizeof(st));
  if (d->store)
    store_stats(d->store, &st);
  metric(o, "pullcache_store_blobs", "gauge",
         "Content-addressed files in the store (layers, configs and manifests).", st.blobs);
  metric(o, "pullcache_store_blob_bytes", "gauge",
         "Bytes of the content-addressed files in the store (the disk the cache uses).",
         st.blob_bytes);
  metric(o, "pullcache_store_manifests", "gauge", "Manifests in the store (also counted as blobs).",
         st.manifests);
  metric(o, "pullcache_store_manifest_bytes", "gauge", "Bytes of the manifests in the store.",
         st.manifest_bytes);
  metric(o, "pullcache_store_tags", "gauge", "Tags recorded in the store.", st.tags);
  if (d->cfg.store_max_size)
    metric(o, "pullcache_store_max_size_bytes", "gauge", "The configured size budget.",
           d->cfg.store_max_size);
  metric(o, "pullcache_store_min_free_bytes", "gauge",
         "The configured min_free: below it eviction frees space and /readyz fails.",
         d->cfg.store_min_free);
  if (statvfs(d->cfg.store_dir, &sv) == 0)
    metric(o, "pullcache_store_disk_free_bytes", "gauge",
           "Free bytes on the store's file system (for unprivileged users).",
           (uint64_t)sv.f_bavail * sv.f_frsize);
  evict_render(d, o);
}

/* The TLS listener's handshakes (http/srv-tls.h), when there is one. */
static void render_tls(pc_buf_t *o, const daemon_t *d)
{
  srv_tls_stats_t t;
  if (!d->tls)
    return;
  srv_tls_get_stats(d->tls, &t);
  metric(o, "pullcache_tls_handshakes_total", "counter", "TLS handshakes completed.", t.handshakes);
  metric(o, "pullcache_tls_resumed_handshakes_total", "counter",
         "Completed TLS handshakes that resumed a session.", t.resumed);
  family(o, "pullcache_tls_handshake_failures_total", "counter",
         "TLS handshakes that failed, by reason (plain_http: a plain request answered 400).");
  for (int i = 0; i < SRV_TLS_FAIL_N; i++)
    pc_buf_printf(o, "pullcache_tls_handshake_failures_total{reason=\"%s\"} %" PRIu64 "\n",
                  srv_tls_fail_name((enum srv_tls_fail)i), t.failed[i]);
  metric(o, "pullcache_tls_mtls_refusals_total", "counter",
         "Clients refused by mutual TLS (no certificate, or one that does not verify).",
         t.failed[SRV_TLS_FAIL_NO_CLIENT_CERT] + t.failed[SRV_TLS_FAIL_BAD_CLIENT_CERT]);
  metric(o, "pullcache_tls_kernel_tls_available", "gauge",
         "1 when OpenSSL and the kernel offer kernel TLS (bodies are encrypted in user space "
         "either way).",
         (uint64_t)d->ktls_available);
}

void metrics_render(daemon_t *d, char **outp, size_t *lenp)
{
  pc_buf_t o;
  srv_stats_t ss;
  mirror_stats_t ms;
  const char *reason;
  int ready = daemon_ready(d, 0, &reason) > 0;
  pc_buf_init(&o, 0); /* no cap: our own text, bounded by the configuration */
  memset(&ss, 0, sizeof(ss));
  memset(&ms, 0, sizeof(ms));
  if (d->srv)
    srv_get_stats(d->srv, &ss);
  if (d->mirror)
    mirror_get_stats(d->mirror, &ms);

  if (d->mirror && mirror_egress(d->mirror))
    egress_render(mirror_egress(d->mirror), &o);
  family(&o, "pullcache_build_info", "gauge", "The running version (always 1).");
  pc_buf_printf(&o, "pullcache_build_info{version=\"%s\"} 1\n", PC_VERSION);
  metric(&o, "pullcache_start_time_seconds", "gauge", "When the daemon started (Unix time).",
         (uint64_t)d->start_time);
  metric(&o, "pullcache_ready", "gauge", "1 when /readyz answers 200.", (uint64_t)ready);
  family(&o, "pullcache_config_reloads_total", "counter", "SIGHUP reloads, by result.");
  pc_buf_printf(&o, "pullcache_config_reloads_total{result=\"ok\"} %" PRIu64 "\n",
                d->counters.reloads_ok);
  pc_buf_printf(&o, "pullcache_config_reloads_total{result=\"failed\"} %" PRIu64 "\n",
                d->counters.reloads_failed);
  metric(&o, "pullcache_config_last_reload_success_timestamp_seconds", "gauge",
         "When the running configuration was loaded (Unix time).",
         (uint64_t)d->counters.reload_time);
  metric(&o, "pullcache_connections", "gauge", "Open client connections.",
         d->srv ? srv_conn_count(d->srv) : 0);
  render_requests(&o, d, &ss);
  access_render(d, &o);
  render_tls(&o, d);
  render_mirror(&o, &ms);
  render_upstreams(&o, d);
  render_store(&o, d);
  *outp = pc_buf_steal(&o, lenp);
}
