/* daemon/metrics — counters from the server, the upstream client, the mirror and the registry
 * handlers, rendered in Prometheus text format. Reading them is cheap (no locks: everything
 * lives on the loop thread). */
#include "daemon/metrics.h"

#include <inttypes.h>
#include <stdarg.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/mirror.h"

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

static void metric(out_t *o, const char *name, const char *type, const char *help, uint64_t v)
{
  emit(o, "# HELP %s %s\n# TYPE %s %s\n%s %" PRIu64 "\n", name, help, name, type, name, v);
}

void metrics_render(daemon_t *d, char **outp, size_t *lenp)
{
  out_t o = {pc_xmalloc(4096), 0, 4096};
  srv_stats_t ss = {0};
  up_stats_t us = {0};
  mirror_stats_t ms = {0};
  if (d->srv)
    srv_get_stats(d->srv, &ss);
  if (d->up)
    up_get_stats(d->up, &us);
  if (d->mirror)
    mirror_get_stats(d->mirror, &ms);

  metric(&o, "pullcache_connections", "gauge", "Open client connections.",
         d->srv ? srv_conn_count(d->srv) : 0);
  emit(&o, "# HELP pullcache_requests_total Requests answered, by status class (aborted = the "
           "client left or the answer was cut).\n# TYPE pullcache_requests_total counter\n");
  static const char *cls[6] = {"aborted", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (int i = 0; i < 6; i++)
    emit(&o, "pullcache_requests_total{code=\"%s\"} %" PRIu64 "\n", cls[i], ss.by_class[i]);
  metric(&o, "pullcache_response_body_bytes_total", "counter", "Response body bytes sent.",
         ss.body_bytes);
  emit(&o, "# HELP pullcache_cache_hits_total Requests answered from the store without the "
           "upstream.\n# TYPE pullcache_cache_hits_total counter\n"
           "pullcache_cache_hits_total{kind=\"manifest\"} %" PRIu64 "\n"
           "pullcache_cache_hits_total{kind=\"blob\"} %" PRIu64 "\n",
       d->counters.manifest_hits, d->counters.blob_hits);
  metric(&o, "pullcache_fills_started_total", "counter", "Blob fills started (cache misses).",
         ms.fills_started);
  metric(&o, "pullcache_fills_committed_total", "counter", "Blob fills verified and committed.",
         ms.fills_committed);
  metric(&o, "pullcache_fills_failed_total", "counter", "Blob fills that failed.",
         ms.fills_failed);
  metric(&o, "pullcache_fills_in_flight", "gauge", "Blob fills running now.", ms.fills_in_flight);
  metric(&o, "pullcache_fill_joins_total", "counter",
         "Requests that joined a fill already running (single flight).", ms.waiters_joined);
  metric(&o, "pullcache_upstream_resumes_total", "counter",
         "Broken upstream bodies continued with a Range request.", ms.resumes);
  metric(&o, "pullcache_digest_mismatches_total", "counter",
         "Upstream content that failed verification (nothing stored).", ms.digest_mismatches);
  metric(&o, "pullcache_manifests_fetched_total", "counter", "Manifests fetched upstream.",
         ms.manifests_fetched);
  metric(&o, "pullcache_tags_revalidated_total", "counter",
         "Tags confirmed unchanged by an upstream HEAD.", ms.tags_revalidated);
  metric(&o, "pullcache_stale_served_total", "counter",
         "Tags served stale because the upstream failed (stale-if-error).", ms.stale_served);
  metric(&o, "pullcache_upstream_requests_total", "counter",
         "HTTP requests sent upstream, redirect hops and token requests included.", us.requests);
  metric(&o, "pullcache_upstream_bytes_total", "counter", "Body bytes received from upstreams.",
         us.body_bytes);
  metric(&o, "pullcache_upstream_tokens_total", "counter", "Bearer tokens fetched.", us.tokens);
  metric(&o, "pullcache_upstream_errors_total", "counter", "Upstream fetches that failed.",
         us.errors);
  *outp = o.p;
  *lenp = o.len;
}
