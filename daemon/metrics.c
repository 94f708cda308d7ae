/* daemon/metrics — counters from the server, the upstream pools, the mirror, the store and the
 * registry handlers, rendered in Prometheus text format (see metrics.h). */
#include "daemon/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/pc.h"
#include "daemon/mirror.h"
#include "daemon/reqctx.h"
#include "daemon/route.h"

/* Statuses counted one by one; anything else is "other" (the last slot). */
static const int codes[] = {0,   200, 206, 304, 400, 401, 403, 404, 405, 413,
                            414, 416, 429, 431, 500, 502, 503, 504};
_Static_assert(PC_ARRAY_SIZE(codes) < DAEMON_CODES, "DAEMON_CODES too small");
_Static_assert(ROUTE_METRICS < DAEMON_ROUTES, "DAEMON_ROUTES too small");

static const char *const cache_names[DAEMON_CACHE_N] = {"hit", "miss", "join", "stale",
                                                        "revalidated"};

int metrics_code_idx(int status)
{
  for (size_t i = 0; i < PC_ARRAY_SIZE(codes); i++)
    if (codes[i] == status)
      return (int)i;
  return DAEMON_CODES - 1;
}

void metrics_on_finish(srv_req_t *req, int status, uint64_t body_bytes, void *arg)
{
  daemon_t *d = arg;
  const reqctx_t *ctx = reqctx_of(req); /* NULL: answered by the server before the daemon */
  int route = ctx ? ctx->route : ROUTE_UNKNOWN, outcome = ctx ? ctx->outcome : -1;
  d->counters.requests[route][metrics_code_idx(status)]++;
  if (status < 200 || status > 299)
    return; /* error bodies are not content served */
  if (outcome == DAEMON_CACHE_MISS || outcome == DAEMON_CACHE_JOIN)
    d->counters.served_upstream += body_bytes;
  else if (outcome >= 0)
    d->counters.served_store += body_bytes;
}

/* ---- rendering ---------------------------------------------------------------------------- */

typedef struct out {
  char *p;
  size_t len, cap;
} out_t;

static void emit(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(out_t *o, const char *fmt, ...)
{
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
    va_end(ap);
    PC_ASSERT(n >= 0);
    if ((size_t)n < o->cap - o->len) {
      o->len += (size_t)n;
      return;
    }
    o->cap = o->cap * 2 + (size_t)n;
    o->p = pc_xrealloc(o->p, o->cap);
  }
}

static void family(out_t *o, const char *name, const char *type, const char *help)
{
  emit(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
  family(o, name, type, help);
  emit(o, "%s %" PRIu64 "\n", name, v);
}

static void render_requests(out_t *o, const daemon_t *d, const srv_stats_t *ss)
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
        snprintf(code, sizeof(code), "%d", codes[c]);
      emit(o, "pullcache_requests_total{route=\"%s\",code=\"%s\"} %" PRIu64 "\n",
           route_kind_name((route_kind)r), code, n);
    }
  }
  metric(o, "pullcache_response_body_bytes_total", "counter", "Response body bytes sent.",
         ss->body_bytes);
  family(o, "pullcache_cache_requests_total", "counter",
         "Manifest and blob requests by cache outcome (also sent as X-Cache).");
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < DAEMON_CACHE_N; i++)
      emit(o, "pullcache_cache_requests_total{kind=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
           k ? "blob" : "manifest", cache_names[i], d->counters.cache[k][i]);
  family(o, "pullcache_served_bytes_total", "counter",
         "Manifest and blob body bytes of 2xx answers, by where they came from (store: a "
         "hit, stale or revalidated answer; upstream: a miss or a join, streamed during the "
         "fetch).");
  emit(o, "pullcache_served_bytes_total{source=\"store\"} %" PRIu64 "\n",
       d->counters.served_store);
  emit(o, "pullcache_served_bytes_total{source=\"upstream\"} %" PRIu64 "\n",
       d->counters.served_upstream);
}

static void render_mirror(out_t *o, const mirror_stats_t *ms)
{
  metric(o, "pullcache_fills_started_total", "counter", "Blob fills started (cache misses).",
         ms->fills_started);
  metric(o, "pullcache_fills_committed_total", "counter", "Blob fills verified and committed.",
         ms->fills_committed);
  metric(o, "pullcache_fills_failed_total", "counter", "Blob fills that failed.",
         ms->fills_failed);
  metric(o, "pullcache_fills_in_flight", "gauge", "Blob fills running now.", ms->fills_in_flight);
  metric(o, "pullcache_fill_joins_total", "counter",
         "Blob requests that joined a fill already running (single flight), retried ones "
         "included.",
         ms->waiters_joined);
  metric(o, "pullcache_upstream_resumes_total", "counter",
         "Broken upstream bodies continued with a Range request.", ms->resumes);
  metric(o, "pullcache_digest_mismatches_total", "counter",
         "Upstream content that failed verification (nothing stored, nothing delivered "
         "complete).",
         ms->digest_mismatches);
  metric(o, "pullcache_manifests_fetched_total", "counter", "Manifests fetched upstream.",
         ms->manifests_fetched);
}

static void render_upstreams(out_t *o, const daemon_t *d)
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
  };
  up_pool_stats_t st[DAEMON_MAX_UPSTREAMS];
  for (int i = 0; i < d->nups; i++) {
    memset(&st[i], 0, sizeof(st[i]));
    if (d->ups[i]->pool)
      up_pool_get_stats(d->ups[i]->pool, &st[i]);
  }
  for (size_t f = 0; f < PC_ARRAY_SIZE(fams); f++) {
    family(o, fams[f].name, fams[f].type, fams[f].help);
    for (int i = 0; i < d->nups; i++) {
      const char *n = d->ups[i]->conf.name;
      const up_pool_stats_t *s = &st[i];
      switch (f) {
      case 0: emit(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fams[f].name, n, s->fetches); break;
      case 1: emit(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fams[f].name, n, s->requests); break;
      case 2:
        emit(o, "%s{upstream=\"%s\",kind=\"timeout\"} %" PRIu64 "\n", fams[f].name, n,
             s->errors_timeout);
        emit(o, "%s{upstream=\"%s\",kind=\"unavailable\"} %" PRIu64 "\n", fams[f].name, n,
             s->errors_unavailable);
        emit(o, "%s{upstream=\"%s\",kind=\"other\"} %" PRIu64 "\n", fams[f].name, n,
             s->errors_other);
        break;
      case 3: emit(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fams[f].name, n, s->body_bytes); break;
      case 4: emit(o, "%s{upstream=\"%s\"} %" PRIu64 "\n", fams[f].name, n, s->tokens); break;
      case 5: emit(o, "%s{upstream=\"%s\"} %u\n", fams[f].name, n, s->active); break;
      case 6: emit(o, "%s{upstream=\"%s\"} %u\n", fams[f].name, n, s->queued); break;
      case 7:
        if (d->ups[i]->reachable >= 0)
          emit(o, "%s{upstream=\"%s\"} %d\n", fams[f].name, n, d->ups[i]->reachable);
        break;
      }
    }
  }
  family(o, "pullcache_upstream_first_byte_seconds", "histogram",
         "Time from the start of an upstream fetch to its final response headers (token and "
         "redirect hops included).");
  for (int i = 0; i < d->nups; i++) {
    const char *n = d->ups[i]->conf.name;
    uint64_t cum = 0;
    for (int b = 0; b < UP_HIST_BUCKETS; b++) {
      cum += st[i].first_byte_hist[b];
      emit(o, "pullcache_upstream_first_byte_seconds_bucket{upstream=\"%s\",le=\"%g\"} %" PRIu64
              "\n",
           n, up_hist_bounds_s[b], cum);
    }
    cum += st[i].first_byte_hist[UP_HIST_BUCKETS];
    emit(o, "pullcache_upstream_first_byte_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} %" PRIu64
            "\n",
         n, cum);
    emit(o, "pullcache_upstream_first_byte_seconds_sum{upstream=\"%s\"} %.6f\n", n,
         (double)st[i].first_byte_sum_us / 1e6);
    emit(o, "pullcache_upstream_first_byte_seconds_count{upstream=\"%s\"} %" PRIu64 "\n", n,
         cum);
  }
}

static void render_store(out_t *o, const daemon_t *d)
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
  if (statvfs(d->cfg.store_dir, &sv) == 0)
    metric(o, "pullcache_store_disk_free_bytes", "gauge",
           "Free bytes on the store's file system (for unprivileged users).",
           (uint64_t)sv.f_bavail * sv.f_frsize);
}

void metrics_render(daemon_t *d, char **outp, size_t *lenp)
{
  out_t o = {pc_xmalloc(16384), 0, 16384};
  srv_stats_t ss;
  mirror_stats_t ms;
  const char *reason;
  int ready = daemon_ready(d, 0, &reason) > 0;
  memset(&ss, 0, sizeof(ss));
  memset(&ms, 0, sizeof(ms));
  if (d->srv)
    srv_get_stats(d->srv, &ss);
  if (d->mirror)
    mirror_get_stats(d->mirror, &ms);

  family(&o, "pullcache_build_info", "gauge", "The running version (always 1).");
  emit(&o, "pullcache_build_info{version=\"%s\"} 1\n", PC_VERSION);
  metric(&o, "pullcache_start_time_seconds", "gauge", "When the daemon started (Unix time).",
         (uint64_t)d->start_time);
  metric(&o, "pullcache_ready", "gauge", "1 when /readyz answers 200.", (uint64_t)ready);
  family(&o, "pullcache_config_reloads_total", "counter", "SIGHUP reloads, by result.");
  emit(&o, "pullcache_config_reloads_total{result=\"ok\"} %" PRIu64 "\n",
       d->counters.reloads_ok);
  emit(&o, "pullcache_config_reloads_total{result=\"failed\"} %" PRIu64 "\n",
       d->counters.reloads_failed);
  metric(&o, "pullcache_config_last_reload_success_timestamp_seconds", "gauge",
         "When the running configuration was loaded (Unix time).",
         (uint64_t)d->counters.reload_time);
  metric(&o, "pullcache_connections", "gauge", "Open client connections.",
         d->srv ? srv_conn_count(d->srv) : 0);
  render_requests(&o, d, &ss);
  render_mirror(&o, &ms);
  render_upstreams(&o, d);
  render_store(&o, d);
  *outp = o.p;
  *lenp = o.len;
}
