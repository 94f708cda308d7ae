/* daemon/status - the status page (see status.h).
 *
 * status_model gathers one JSON model (jansson) from the same sources as daemon/metrics;
 * ?format=json dumps it, and status_html renders the page from it, so the two can never say
 * different things. The HTML is plain tables, <progress> and <meter> bars and one inline
 * style sheet (a grid that stacks on a phone); every value that comes from outside (paths,
 * repository names, hosts, errors) is escaped.
 */
#include "daemon/status.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/buf.h"
#include "core/pc.h"
#include "daemon/egress.h"
#include "daemon/evict.h"
#include "daemon/fill.h"
#include "daemon/mirror.h"
#include "daemon/ready.h"
#include "daemon/route.h"
#include "daemon/upstream.h"

#define REFRESH_S 5 /* the page reloads itself this often */

/* ---- the model ------------------------------------------------------------------------------ */

double status_quantile(const uint64_t *hist, double q)
{
  uint64_t total = 0, cum = 0;
  for (int b = 0; b <= UP_HIST_BUCKETS; b++)
    total += hist[b];
  if (!total)
    return -1;
  double rank = q * (double)total;
  for (int b = 0; b < UP_HIST_BUCKETS; b++) {
    if ((double)(cum + hist[b]) >= rank && hist[b]) {
      double lo = b ? up_hist_bounds_s[b - 1] : 0, hi = up_hist_bounds_s[b];
      return lo + (hi - lo) * ((rank - (double)cum) / (double)hist[b]);
    }
    cum += hist[b];
  }
  return up_hist_bounds_s[UP_HIST_BUCKETS - 1]; /* in +Inf: the highest finite bound */
}

static json_t *jq(double v)
{
  return v < 0 ? json_null() : json_real(v);
}

static json_t *ju(uint64_t v)
{
  return json_integer((json_int_t)v);
}

static const char *up_state(const daemon_upstream_t *u, int64_t *retry_s)
{
  uint64_t now = pc_mono_ms();
  *retry_s = 0;
  if (u->rl.open && now < u->rl.until_ms) {
    *retry_s = (int64_t)((u->rl.until_ms - now + 999) / 1000);
    return "rate-limited";
  }
  if (u->rl.open)
    return "half-open";
  return u->reachable > 0 ? "reachable" : u->reachable == 0 ? "unreachable" : "unknown";
}

static json_t *model_upstream(const daemon_t *d, const daemon_upstream_t *u, int64_t now)
{
  up_pool_stats_t st;
  int64_t retry_s;
  memset(&st, 0, sizeof(st));
  if (u->pool)
    up_pool_get_stats(u->pool, &st);
  const char *state = up_state(u, &retry_s);
  json_t *o = json_object();
  json_object_set_new(o, "name", json_string(u->conf.name));
  json_object_set_new(o, "url", json_string(u->conf.url));
  json_object_set_new(o, "state", json_string(d->cfg.offline ? "offline" : state));
  json_object_set_new(o, "reachable", json_integer(u->reachable));
  json_object_set_new(o, "breaker",
                      json_pack("{s:b,s:b,s:I,s:I,s:I}", "open", u->rl.open != 0, "half_open",
                                u->rl.open && retry_s == 0, "retry_after_s", (json_int_t)retry_s,
                                "opened", (json_int_t)u->rl.opened, "rejected",
                                (json_int_t)u->rl.rejected));
  if (u->last_err.time)
    json_object_set_new(o, "last_error",
                        json_pack("{s:s,s:s,s:i,s:I,s:I}", "error",
                                  u->last_err.rc ? pc_errname(u->last_err.rc) : "HTTP", "message",
                                  u->last_err.rc ? pc_strerror(u->last_err.rc) : "upstream answer",
                                  "status", u->last_err.status, "time",
                                  (json_int_t)u->last_err.time, "age_s",
                                  (json_int_t)(now - u->last_err.time)));
  else
    json_object_set_new(o, "last_error", json_null());
  json_object_set_new(o, "active", ju(st.active));
  json_object_set_new(o, "queued", ju(st.queued));
  json_object_set_new(o, "fetches", ju(st.fetches));
  json_object_set_new(o, "requests", ju(st.requests));
  json_object_set_new(o, "errors",
                      json_pack("{s:o,s:o,s:o}", "timeout", ju(st.errors_timeout), "unavailable",
                                ju(st.errors_unavailable), "other", ju(st.errors_other)));
  json_object_set_new(o, "received_bytes", ju(st.body_bytes));
  uint64_t n = 0;
  for (int b = 0; b <= UP_HIST_BUCKETS; b++)
    n += st.first_byte_hist[b];
  json_object_set_new(o, "first_byte",
                      json_pack("{s:o,s:o,s:o,s:o}", "count", ju(n), "p50_s",
                                jq(status_quantile(st.first_byte_hist, 0.5)), "p90_s",
                                jq(status_quantile(st.first_byte_hist, 0.9)), "p99_s",
                                jq(status_quantile(st.first_byte_hist, 0.99))));
  return o;
}

static void model_fill(void *arg, const fill_info_t *fi)
{
  json_t *a = arg;
  uint64_t age_ms = pc_mono_ms() - fi->started_ms;
  json_t *o = json_object();
  json_object_set_new(o, "digest", json_string(fi->digest));
  json_object_set_new(o, "repo", json_string(fi->repo));
  json_object_set_new(o, "upstream", json_string(fi->upstream));
  json_object_set_new(o, "state", json_string(fill_state_name(fi->state)));
  json_object_set_new(o, "written", ju(fi->written));
  json_object_set_new(o, "total", fi->total >= 0 ? json_integer(fi->total) : json_null());
  json_object_set_new(o, "subscribers", ju(fi->subscribers));
  json_object_set_new(o, "age_s", json_real((double)age_ms / 1000.0));
  json_object_set_new(o, "rate_bps",
                      json_real(age_ms ? (double)fi->written * 1000.0 / (double)age_ms : 0));
  json_object_set_new(o, "resumes", json_integer(fi->resumes));
  json_array_append_new(a, o);
}

static json_t *ratio(uint64_t num, uint64_t den)
{
  return den ? json_real((double)num / (double)den) : json_null();
}

static json_t *window(const daemon_t *d, int64_t now, int minutes, uint64_t *hits, uint64_t *all)
{
  counters_minute_t w;
  counters_window(&d->counters, now, minutes, &w);
  *hits = w.outcomes[DAEMON_CACHE_HIT];
  *all = 0;
  json_t *o = json_object();
  for (int i = 0; i < DAEMON_CACHE_N; i++) {
    *all += w.outcomes[i];
    json_object_set_new(o, counters_cache_name((enum daemon_cache)i), ju(w.outcomes[i]));
  }
  json_object_set_new(o, "served_store", ju(w.served_store));
  json_object_set_new(o, "served_upstream", ju(w.served_upstream));
  return o;
}

static json_t *model_cache(const daemon_t *d, const mirror_stats_t *ms, int64_t now)
{
  store_stats_t st;
  struct statvfs sv;
  evict_figures_t ev;
  memset(&st, 0, sizeof(st));
  if (d->store)
    store_stats(d->store, &st);
  evict_get_figures(d, &ev);
  json_t *o = json_object();
  json_object_set_new(o, "blob_bytes", ju(st.blob_bytes));
  json_object_set_new(o, "blobs", ju(st.blobs));
  json_object_set_new(o, "manifests", ju(st.manifests));
  json_object_set_new(o, "tags", ju(st.tags));
  json_object_set_new(o, "max_size", ju(d->cfg.store_max_size));
  json_object_set_new(o, "usage_ratio", ratio(st.blob_bytes, d->cfg.store_max_size));
  json_object_set_new(o, "evict_to", ju(d->cfg.store_max_size ? evict_low_mark(&d->cfg) : 0));
  json_object_set_new(o, "pinned_bytes", ju(ev.pinned_bytes));
  json_object_set_new(o, "pins_over_budget", json_boolean(ev.pins_over));
  if (statvfs(d->cfg.store_dir, &sv) == 0)
    json_object_set_new(o, "disk_free", ju((uint64_t)sv.f_bavail * sv.f_frsize));
  else
    json_object_set_new(o, "disk_free", json_null());
  json_object_set_new(o, "min_free", ju(d->cfg.store_min_free));
  json_object_set_new(o, "store_full", json_boolean(ms->store_full != 0));
  json_object_set_new(o, "served_bytes",
                      json_pack("{s:o,s:o}", "store", ju(d->counters.served_store), "upstream",
                                ju(d->counters.served_upstream)));
  json_t *req = json_object();
  for (int k = 0; k < 2; k++) {
    json_t *kk = json_object();
    for (int i = 0; i < DAEMON_CACHE_N; i++)
      json_object_set_new(kk, counters_cache_name((enum daemon_cache)i),
                          ju(d->counters.cache[k][i]));
    json_object_set_new(req, k ? "blob" : "manifest", kk);
  }
  json_object_set_new(o, "requests", req);
  json_t *hr = json_object(), *win = json_object();
  static const int mins[] = {1, 5, 15};
  static const char *const keys[] = {"m1", "m5", "m15"};
  for (int i = 0; i < 3; i++) {
    uint64_t hits, all;
    json_object_set_new(win, keys[i], window(d, now, mins[i], &hits, &all));
    json_object_set_new(hr, keys[i], ratio(hits, all));
  }
  json_object_set_new(o, "hit_ratio", hr);
  json_object_set_new(o, "window", win);
  json_object_set_new(o, "evictions",
                      json_pack("{s:o,s:o,s:o,s:I}", "runs", ju(ev.runs), "blobs", ju(ev.blobs),
                                "bytes", ju(ev.bytes), "last_run", (json_int_t)ev.last_run));
  return o;
}

static json_t *model_config(const daemon_t *d)
{
  const daemon_config_t *c = &d->cfg;
  json_t *o = json_object(), *l = json_array();
  for (int i = 0; i < c->nlisten; i++)
    json_array_append_new(l, json_string(c->listen[i]));
  json_object_set_new(o, "listen", l);
  json_object_set_new(o, "tls_listen", json_string(c->tls_listen));
  json_object_set_new(o, "offline", json_boolean(c->offline));
  json_object_set_new(o, "store_path", json_string(c->store_dir));
  json_object_set_new(o, "max_size", ju(c->store_max_size));
  json_object_set_new(o, "min_free", ju(c->store_min_free));
  json_object_set_new(o, "max_conns", ju(c->srv.max_conns));
  json_object_set_new(o, "config_file", json_string(c->path));
  json_t *ups = json_array();
  for (int i = 0; i < c->nupstreams; i++) {
    const daemon_upstream_conf_t *u = &c->upstreams[i];
    json_array_append_new(
        ups, json_pack("{s:s,s:s,s:I,s:i,s:f,s:b}", "name", u->name, "url", u->url, "tag_ttl_s",
                       (json_int_t)u->tag_ttl, "max_connections", (int)u->max_connections,
                       "rate_limit", u->rate_limit, "credentials", u->credentials_file[0] != 0));
  }
  json_object_set_new(o, "upstreams", ups);
  return o;
}

static json_t *model_recent(const daemon_t *d)
{
  const daemon_counters_t *c = &d->counters;
  json_t *a = json_array();
  uint64_t n = c->nrecent < COUNTERS_RECENT ? c->nrecent : COUNTERS_RECENT;
  for (uint64_t i = 0; i < n; i++) {
    const counters_recent_t *r = &c->recent[(c->nrecent - 1 - i) % COUNTERS_RECENT];
    json_array_append_new(
        a, json_pack("{s:I,s:s,s:s,s:s,s:i,s:s?,s:I}", "time", (json_int_t)r->time, "method",
                     r->method, "path", r->path, "route", route_kind_name((route_kind)r->route),
                     "status", r->status, "cache",
                     r->outcome >= 0 ? counters_cache_name((enum daemon_cache)r->outcome) : NULL,
                     "bytes", (json_int_t)r->bytes));
  }
  return a;
}

json_t *status_model(daemon_t *d, int64_t now)
{
  mirror_stats_t ms;
  const char *reason = "";
  int ready = daemon_ready(d, 0, &reason);
  memset(&ms, 0, sizeof(ms));
  if (d->mirror)
    mirror_get_stats(d->mirror, &ms);
  json_t *m = json_object();
  json_object_set_new(m, "version", json_string(PC_VERSION));
  json_object_set_new(m, "now", json_integer(now));
  json_object_set_new(m, "start_time", json_integer(d->start_time));
  json_object_set_new(m, "uptime_s", json_integer(now - d->start_time));
  json_object_set_new(m, "ready",
                      json_pack("{s:b,s:s}", "ok", ready > 0, "reason", reason ? reason : ""));
  json_object_set_new(m, "connections", ju(d->srv ? srv_conn_count(d->srv) : 0));
  json_object_set_new(m, "config", model_config(d));
  json_t *ups = json_array();
  for (int i = 0; i < d->nups; i++)
    json_array_append_new(ups, model_upstream(d, d->ups[i], now));
  json_object_set_new(m, "upstreams", ups);
  json_t *fills = json_array();
  if (d->mirror)
    fill_each(mirror_env(d->mirror), model_fill, fills);
  json_object_set_new(m, "fills", fills);
  json_object_set_new(m, "cache", model_cache(d, &ms, now));
  json_object_set_new(m, "mirror",
                      json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "fills_started",
                                ju(ms.fills_started), "fills_committed", ju(ms.fills_committed),
                                "fills_failed", ju(ms.fills_failed), "fills_in_flight",
                                ju(ms.fills_in_flight), "fill_joins", ju(ms.waiters_joined),
                                "digest_mismatches", ju(ms.digest_mismatches), "passthrough_fills",
                                ju(ms.passthrough_fills), "passthrough_active",
                                ju(ms.passthrough_active), "manifest_jobs_in_flight",
                                ju(ms.jobs_in_flight), "manifests_fetched",
                                ju(ms.manifests_fetched), "rate_limit_parked", ju(ms.rl_parked)));
  json_object_set_new(m, "reloads",
                      json_pack("{s:o,s:o,s:I}", "ok", ju(d->counters.reloads_ok), "failed",
                                ju(d->counters.reloads_failed), "last",
                                (json_int_t)d->counters.reload_time));
  json_t *eg = json_array();
  egress_t *e = d->mirror ? mirror_egress(d->mirror) : NULL;
  if (e) {
    size_t n;
    const egress_entry_t *v = egress_entries(e, &n);
    for (size_t i = 0; i < n; i++)
      json_array_append_new(eg, json_pack("{s:s,s:s,s:i,s:s,s:I,s:I}", "scheme", v[i].scheme,
                                          "host", v[i].host, "port", (int)v[i].port, "upstream",
                                          v[i].upstream, "count", (json_int_t)v[i].count, "last",
                                          (json_int_t)v[i].last));
  }
  json_object_set_new(m, "egress", eg);
  json_object_set_new(m, "recent", model_recent(d));
  return m;
}

/* ---- HTML ----------------------------------------------------------------------------------- */

static const char css[] =
    "*{box-sizing:border-box}"
    "body{font:14px/1.4 "
    "system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2330}"
    "h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}"
    ".sub{color:#5b6475;margin-bottom:12px}"
    ".grid{display:grid;gap:12px;grid-template-columns:repeat(auto-fit,minmax(min(100%,460px),1fr))"
    "}"
    "section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px;min-width:0}"
    "section.wide{grid-column:1/-1}"
    ".scroll{overflow-x:auto}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:3px 6px;border-bottom:1px solid #eceff3;vertical-align:top}"
    "th{font-weight:600;color:#5b6475;white-space:nowrap}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    "table.kv th{white-space:normal;width:45%}table.kv td{overflow-wrap:anywhere}"
    "table.kv td.n{white-space:normal}"
    "code{font:12px ui-monospace,monospace;word-break:break-all}"
    "progress,meter{width:100%;height:14px}"
    ".st{display:inline-block;padding:0 6px;border-radius:3px;font-weight:600;color:#fff}"
    ".st-reachable,.st-ok{background:#2e7d32}.st-unknown,.st-offline{background:#6b7280}"
    ".st-unreachable,.st-rate-limited,.st-bad{background:#c62828}.st-half-open{background:#ef6c00}"
    ".muted{color:#8a93a3}"
    "@media(max-width:600px){body{padding:6px}th,td{padding:2px 4px}.hide-s{display:none}}";

static void esc(pc_buf_t *o, const char *s)
{
  for (; s && *s; s++) {
    switch (*s) {
    case '&':
      pc_buf_adds(o, "&amp;");
      break;
    case '<':
      pc_buf_adds(o, "&lt;");
      break;
    case '>':
      pc_buf_adds(o, "&gt;");
      break;
    case '"':
      pc_buf_adds(o, "&quot;");
      break;
    case '\'':
      pc_buf_adds(o, "&#39;");
      break;
    default:
      pc_buf_add(o, s, 1);
    }
  }
}

static const char *S(const json_t *o, const char *k)
{
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

static json_int_t I(const json_t *o, const char *k)
{
  return json_integer_value(json_object_get(o, k));
}

static void bytes(pc_buf_t *o, double v)
{
  static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (v >= 1024 && i < 4)
    v /= 1024, i++;
  if (i)
    pc_buf_printf(o, "%.1f %s", v, u[i]);
  else
    pc_buf_printf(o, "%.0f B", v);
}

static void dur(pc_buf_t *o, json_int_t s)
{
  if (s >= 86400)
    pc_buf_printf(o, "%" JSON_INTEGER_FORMAT " %" JSON_INTEGER_FORMAT "h", s / 86400,
                  s % 86400 / 3600);
  else if (s >= 3600)
    pc_buf_printf(o, "%" JSON_INTEGER_FORMAT "h %" JSON_INTEGER_FORMAT "m", s / 3600,
                  s % 3600 / 60);
  else if (s >= 60)
    pc_buf_printf(o, "%" JSON_INTEGER_FORMAT "m %" JSON_INTEGER_FORMAT "s", s / 60, s % 60);
  else
    pc_buf_printf(o, "%" JSON_INTEGER_FORMAT "s", s);
}

static void pct(pc_buf_t *o, const json_t *v)
{
  if (json_is_number(v))
    pc_buf_printf(o, "%.1f%%", json_number_value(v) * 100);
  else
    pc_buf_adds(o, "<span class=\"muted\">&ndash;</span>");
}

static void secs(pc_buf_t *o, const json_t *v)
{
  if (!json_is_number(v))
    pc_buf_adds(o, "<span class=\"muted\">&ndash;</span>");
  else if (json_number_value(v) < 1)
    pc_buf_printf(o, "%.0f ms", json_number_value(v) * 1000);
  else
    pc_buf_printf(o, "%.2f s", json_number_value(v));
}

static void row(pc_buf_t *o, const char *k, const char *v)
{
  pc_buf_adds(o, "<tr><th>");
  esc(o, k);
  pc_buf_adds(o, "</th><td>");
  esc(o, v);
  pc_buf_adds(o, "</td></tr>");
}

static void html_head(pc_buf_t *o, const json_t *m)
{
  const json_t *ready = json_object_get(m, "ready");
  int ok = json_is_true(json_object_get(ready, "ok"));
  pc_buf_printf(o,
                "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
                "<meta http-equiv=\"refresh\" content=\"%d\">"
                "<title>pullcache status</title><style>%s</style></head><body>",
                REFRESH_S, css);
  pc_buf_printf(o, "<h1>pullcache %s <span id=\"ready\" class=\"st st-%s\" data-ready=\"%d\">",
                S(m, "version"), ok ? "ok" : "bad", ok);
  esc(o, ok ? "ready" : "not ready");
  pc_buf_adds(o, "</span></h1><div class=\"sub\">up ");
  dur(o, I(m, "uptime_s"));
  pc_buf_printf(o, " &middot; %" JSON_INTEGER_FORMAT " connections", I(m, "connections"));
  if (!ok || strcmp(S(ready, "reason"), "ok") != 0) { /* "offline", "store full: ...", why not */
    pc_buf_adds(o, " &middot; <span id=\"ready-reason\">");
    esc(o, S(ready, "reason"));
    pc_buf_adds(o, "</span>");
  }
  pc_buf_printf(
      o,
      " &middot; refreshes every %d s &middot; <a href=\"/status?format=json\">JSON</a> &middot; "
      "<a href=\"/metrics\">metrics</a></div><div class=\"grid\">",
      REFRESH_S);
}

static void html_upstreams(pc_buf_t *o, const json_t *m)
{
  size_t i;
  const json_t *u;
  pc_buf_adds(o,
              "<section class=\"wide\" id=\"upstreams\"><h2>Upstreams</h2><div class=\"scroll\">"
              "<table><tr><th>Name</th><th class=\"hide-s\">URL</th><th>State</th><th>Active</th>"
              "<th>Queued</th><th>Fetches</th><th class=\"hide-s\">Errors</th>"
              "<th>First byte p50 / p90 / p99</th><th>Last error</th></tr>");
  json_array_foreach(json_object_get(m, "upstreams"), i, u)
  {
    const json_t *br = json_object_get(u, "breaker"), *err = json_object_get(u, "errors"),
                 *fb = json_object_get(u, "first_byte"), *le = json_object_get(u, "last_error");
    pc_buf_adds(o, "<tr class=\"upstream\" data-name=\"");
    esc(o, S(u, "name"));
    pc_buf_printf(o, "\" data-state=\"%s\"><td>", S(u, "state"));
    esc(o, S(u, "name"));
    pc_buf_adds(o, "</td><td class=\"hide-s\"><code>");
    esc(o, S(u, "url"));
    pc_buf_printf(o, "</code></td><td><span class=\"st st-%s\">%s</span>", S(u, "state"),
                  S(u, "state"));
    if (I(br, "retry_after_s"))
      pc_buf_printf(o, " <span class=\"muted\">%" JSON_INTEGER_FORMAT " s left</span>",
                    I(br, "retry_after_s"));
    pc_buf_printf(o,
                  "<br><span class=\"muted\">429 breaker opened %" JSON_INTEGER_FORMAT
                  "&times;, %" JSON_INTEGER_FORMAT " held back</span></td>",
                  I(br, "opened"), I(br, "rejected"));
    pc_buf_printf(o,
                  "<td class=\"n\">%" JSON_INTEGER_FORMAT
                  "</td><td class=\"n\">%" JSON_INTEGER_FORMAT
                  "</td><td class=\"n\">%" JSON_INTEGER_FORMAT
                  "</td><td class=\"n hide-s\">%" JSON_INTEGER_FORMAT "</td><td class=\"n\">",
                  I(u, "active"), I(u, "queued"), I(u, "fetches"),
                  I(err, "timeout") + I(err, "unavailable") + I(err, "other"));
    secs(o, json_object_get(fb, "p50_s"));
    pc_buf_adds(o, " / ");
    secs(o, json_object_get(fb, "p90_s"));
    pc_buf_adds(o, " / ");
    secs(o, json_object_get(fb, "p99_s"));
    pc_buf_adds(o, "</td><td>");
    if (json_is_object(le)) {
      esc(o, S(le, "error"));
      if (I(le, "status"))
        pc_buf_printf(o, " (HTTP %" JSON_INTEGER_FORMAT ")", I(le, "status"));
      pc_buf_adds(o, " <span class=\"muted\">");
      dur(o, I(le, "age_s"));
      pc_buf_adds(o, " ago</span>");
    } else {
      pc_buf_adds(o, "<span class=\"muted\">none</span>");
    }
    pc_buf_adds(o, "</td></tr>");
  }
  pc_buf_adds(o, "</table></div></section>");
}

static void html_fills(pc_buf_t *o, const json_t *m)
{
  size_t i;
  const json_t *f, *fills = json_object_get(m, "fills");
  pc_buf_printf(o, "<section class=\"wide\" id=\"fills\"><h2>Fills in flight (%zu)</h2>",
                json_array_size(fills));
  if (!json_array_size(fills)) {
    pc_buf_adds(o, "<p class=\"muted\">none</p></section>");
    return;
  }
  pc_buf_adds(o, "<div class=\"scroll\"><table><tr><th>Digest</th><th>Repository</th>"
                 "<th>Progress</th><th>Rate</th><th>Clients</th><th>State</th></tr>");
  json_array_foreach(fills, i, f)
  {
    const json_t *total = json_object_get(f, "total");
    json_int_t w = I(f, "written");
    pc_buf_adds(o, "<tr class=\"fill\" data-digest=\"");
    esc(o, S(f, "digest"));
    pc_buf_printf(o,
                  "\" data-written=\"%" JSON_INTEGER_FORMAT "\" data-total=\"%" JSON_INTEGER_FORMAT
                  "\" data-subscribers=\"%" JSON_INTEGER_FORMAT "\"><td><code>",
                  w, json_is_integer(total) ? json_integer_value(total) : -1, I(f, "subscribers"));
    esc(o, S(f, "digest"));
    pc_buf_adds(o, "</code></td><td>");
    esc(o, S(f, "upstream"));
    pc_buf_adds(o, "/");
    esc(o, S(f, "repo"));
    pc_buf_adds(o, "</td><td>");
    if (json_is_integer(total) && json_integer_value(total) > 0) {
      json_int_t t = json_integer_value(total);
      pc_buf_printf(o,
                    "<progress value=\"%" JSON_INTEGER_FORMAT "\" max=\"%" JSON_INTEGER_FORMAT
                    "\"></progress><br>",
                    w, t);
      bytes(o, (double)w);
      pc_buf_adds(o, " of ");
      bytes(o, (double)t);
      pc_buf_printf(o, " (%.0f%%)", 100.0 * (double)w / (double)t);
    } else {
      pc_buf_adds(o, "<progress></progress><br>");
      bytes(o, (double)w);
      pc_buf_adds(o, " of ?");
    }
    pc_buf_adds(o, "</td><td class=\"n\">");
    bytes(o, json_number_value(json_object_get(f, "rate_bps")));
    pc_buf_printf(o, "/s</td><td class=\"n\">%" JSON_INTEGER_FORMAT "</td><td>%s",
                  I(f, "subscribers"), S(f, "state"));
    if (I(f, "resumes"))
      pc_buf_printf(o, " (%" JSON_INTEGER_FORMAT " resumes)", I(f, "resumes"));
    pc_buf_adds(o, "</td></tr>");
  }
  pc_buf_adds(o, "</table></div></section>");
}

static void html_cache(pc_buf_t *o, const json_t *m)
{
  const json_t *c = json_object_get(m, "cache"), *hr = json_object_get(c, "hit_ratio"),
               *sb = json_object_get(c, "served_bytes"), *ev = json_object_get(c, "evictions"),
               *mi = json_object_get(m, "mirror");
  json_int_t used = I(c, "blob_bytes"), max = I(c, "max_size");
  pc_buf_adds(o, "<section id=\"cache\"><h2>Cache</h2>");
  if (max > 0) {
    pc_buf_printf(o,
                  "<meter id=\"usage\" min=\"0\" max=\"%" JSON_INTEGER_FORMAT
                  "\" high=\"%" JSON_INTEGER_FORMAT "\" value=\"%" JSON_INTEGER_FORMAT "\">"
                  "</meter><div>",
                  max, I(c, "evict_to") ? I(c, "evict_to") : max, used);
    bytes(o, (double)used);
    pc_buf_adds(o, " of ");
    bytes(o, (double)max);
    pc_buf_adds(o, " (");
    pct(o, json_object_get(c, "usage_ratio"));
    pc_buf_adds(o, ")</div>");
  } else {
    pc_buf_printf(o, "<div id=\"usage\" data-value=\"%" JSON_INTEGER_FORMAT "\">", used);
    bytes(o, (double)used);
    pc_buf_adds(o, " stored, no max_size</div>");
  }
  pc_buf_adds(o, "<table class=\"kv\">");
  pc_buf_adds(o, "<tr><th>Pinned</th><td class=\"n\">");
  bytes(o, (double)I(c, "pinned_bytes"));
  pc_buf_adds(o, "</td></tr><tr><th>Disk free (min_free)</th><td class=\"n\">");
  if (json_is_integer(json_object_get(c, "disk_free")))
    bytes(o, (double)I(c, "disk_free"));
  pc_buf_adds(o, " (");
  bytes(o, (double)I(c, "min_free"));
  pc_buf_printf(
      o,
      ")</td></tr><tr><th>Blobs / manifests / tags</th><td class=\"n\">%" JSON_INTEGER_FORMAT
      " / %" JSON_INTEGER_FORMAT " / %" JSON_INTEGER_FORMAT "</td></tr>",
      I(c, "blobs"), I(c, "manifests"), I(c, "tags"));
  pc_buf_adds(o, "<tr><th>Hit ratio 1 / 5 / 15 min</th><td class=\"n\" id=\"hit-ratio\">");
  pct(o, json_object_get(hr, "m1"));
  pc_buf_adds(o, " / ");
  pct(o, json_object_get(hr, "m5"));
  pc_buf_adds(o, " / ");
  pct(o, json_object_get(hr, "m15"));
  pc_buf_adds(o, "</td></tr><tr><th>Served from store / upstream</th><td class=\"n\">");
  bytes(o, (double)I(sb, "store"));
  pc_buf_adds(o, " / ");
  bytes(o, (double)I(sb, "upstream"));
  pc_buf_printf(o,
                "</td></tr><tr><th>Evictions</th><td class=\"n\" id=\"evictions\" "
                "data-runs=\"%" JSON_INTEGER_FORMAT "\">%" JSON_INTEGER_FORMAT
                " runs, %" JSON_INTEGER_FORMAT " blobs, ",
                I(ev, "runs"), I(ev, "runs"), I(ev, "blobs"));
  bytes(o, (double)I(ev, "bytes"));
  pc_buf_printf(o,
                "</td></tr><tr><th>Fills started / committed / failed</th><td "
                "class=\"n\">%" JSON_INTEGER_FORMAT " / %" JSON_INTEGER_FORMAT
                " / %" JSON_INTEGER_FORMAT "</td></tr>"
                "<tr><th>Digest mismatches</th><td class=\"n\">%" JSON_INTEGER_FORMAT "</td></tr>"
                "<tr><th>Pass-through fills</th><td class=\"n\">%" JSON_INTEGER_FORMAT
                "%s</td></tr>",
                I(mi, "fills_started"), I(mi, "fills_committed"), I(mi, "fills_failed"),
                I(mi, "digest_mismatches"), I(mi, "passthrough_fills"),
                json_is_true(json_object_get(c, "store_full")) ? " (store full now)" : "");
  pc_buf_adds(o, "</table></section>");
}

static void html_config(pc_buf_t *o, const json_t *m)
{
  const json_t *c = json_object_get(m, "config"), *v, *rl = json_object_get(m, "reloads");
  size_t i;
  pc_buf_t l;
  pc_buf_init(&l, 0);
  json_array_foreach(json_object_get(c, "listen"), i, v)
  {
    pc_buf_printf(&l, "%s%s", i ? ", " : "", json_string_value(v));
  }
  pc_buf_adds(o, "<section id=\"config\"><h2>Configuration</h2><table class=\"kv\">");
  row(o, "Listen", l.p ? l.p : "");
  pc_buf_free(&l);
  if (S(c, "tls_listen")[0])
    row(o, "TLS listen", S(c, "tls_listen"));
  row(o, "Offline", json_is_true(json_object_get(c, "offline")) ? "yes" : "no");
  row(o, "Store", S(c, "store_path"));
  row(o, "Config file", S(c, "config_file")[0] ? S(c, "config_file") : "(none)");
  pc_buf_adds(o, "<tr><th>max_size / min_free</th><td>");
  if (I(c, "max_size"))
    bytes(o, (double)I(c, "max_size"));
  else
    pc_buf_adds(o, "none");
  pc_buf_adds(o, " / ");
  bytes(o, (double)I(c, "min_free"));
  pc_buf_printf(o,
                "</td></tr><tr><th>Reloads ok / failed</th><td>%" JSON_INTEGER_FORMAT
                " / %" JSON_INTEGER_FORMAT "</td></tr>",
                I(rl, "ok"), I(rl, "failed"));
  json_array_foreach(json_object_get(c, "upstreams"), i, v)
  {
    pc_buf_adds(o, "<tr><th>Upstream ");
    esc(o, S(v, "name"));
    pc_buf_printf(o,
                  "</th><td>tag_ttl %" JSON_INTEGER_FORMAT
                  " s, max_connections %" JSON_INTEGER_FORMAT ", rate_limit %g%s</td></tr>",
                  I(v, "tag_ttl_s"), I(v, "max_connections"),
                  json_number_value(json_object_get(v, "rate_limit")),
                  json_is_true(json_object_get(v, "credentials")) ? ", credentials" : "");
  }
  pc_buf_adds(o, "</table></section>");
}

static void html_egress(pc_buf_t *o, const json_t *m)
{
  size_t i;
  const json_t *e, *eg = json_object_get(m, "egress");
  pc_buf_printf(o, "<section id=\"egress\"><h2>Egress hosts (%zu)</h2>", json_array_size(eg));
  if (!json_array_size(eg)) {
    pc_buf_adds(o, "<p class=\"muted\">none yet</p></section>");
    return;
  }
  pc_buf_adds(o, "<div class=\"scroll\"><table><tr><th>Host</th><th>For</th><th>Requests</th>"
                 "<th>Last</th></tr>");
  json_array_foreach(eg, i, e)
  {
    pc_buf_adds(o, "<tr><td><code>");
    esc(o, S(e, "scheme"));
    pc_buf_adds(o, "://");
    esc(o, S(e, "host"));
    pc_buf_printf(o, ":%" JSON_INTEGER_FORMAT "</code></td><td>", I(e, "port"));
    esc(o, S(e, "upstream"));
    pc_buf_printf(o, "</td><td class=\"n\">%" JSON_INTEGER_FORMAT "</td><td class=\"n\">",
                  I(e, "count"));
    dur(o, I(m, "now") - I(e, "last"));
    pc_buf_adds(o, " ago</td></tr>");
  }
  pc_buf_adds(o, "</table></div></section>");
}

static void html_recent(pc_buf_t *o, const json_t *m)
{
  size_t i;
  const json_t *r, *rec = json_object_get(m, "recent");
  pc_buf_printf(o,
                "<section class=\"wide\" id=\"recent\"><h2>Last %zu requests</h2><div "
                "class=\"scroll\"><table><tr><th>Age</th><th>Request</th><th>Status</th>"
                "<th>Cache</th><th class=\"hide-s\">Bytes</th></tr>",
                json_array_size(rec));
  json_array_foreach(rec, i, r)
  {
    pc_buf_adds(o, "<tr class=\"req\"><td class=\"n\">");
    dur(o, I(m, "now") - I(r, "time"));
    pc_buf_adds(o, "</td><td><code>");
    esc(o, S(r, "method"));
    pc_buf_adds(o, " ");
    esc(o, S(r, "path"));
    pc_buf_printf(o,
                  "</code></td><td class=\"n\">%" JSON_INTEGER_FORMAT
                  "</td><td>%s</td><td class=\"n hide-s\">",
                  I(r, "status"), S(r, "cache")[0] ? S(r, "cache") : "&ndash;");
    bytes(o, (double)I(r, "bytes"));
    pc_buf_adds(o, "</td></tr>");
  }
  pc_buf_adds(o, "</table></div></section>");
}

char *status_html(const json_t *m, size_t *len)
{
  pc_buf_t o;
  pc_buf_init(&o, 0); /* no cap: bounded by the configuration and the fixed rings */
  html_head(&o, m);
  html_upstreams(&o, m);
  html_fills(&o, m);
  html_cache(&o, m);
  html_config(&o, m);
  html_egress(&o, m);
  html_recent(&o, m);
  pc_buf_adds(&o, "</div></body></html>\n");
  return pc_buf_steal(&o, len);
}

/* ---- the route ------------------------------------------------------------------------------ */

static int wants_json(const char *q)
{
  size_t n = strlen("format=json");
  for (const char *p = q; p && *p;) {
    const char *amp = strchr(p, '&');
    size_t len = amp ? (size_t)(amp - p) : strlen(p);
    if (len == n && memcmp(p, "format=json", n) == 0)
      return 1;
    p = amp ? amp + 1 : p + len;
  }
  return 0;
}

void status_handle(daemon_t *d, srv_req_t *req)
{
  if (!d->cfg.status_page) {
    srv_respond(req, 404, "text/plain", "404 page not found\n", 19);
    return;
  }
  json_t *m = status_model(d, pc_now_sec());
  size_t len = 0;
  char *body;
  srv_resp_header(req, "Cache-Control", "no-store");
  if (wants_json(srv_req_query(req))) {
    body = json_dumps(m, JSON_COMPACT);
    PC_ASSERT(body);
    len = strlen(body);
    srv_respond(req, 200, "application/json", body, len);
  } else {
    body = status_html(m, &len);
    srv_resp_header(req, "Content-Security-Policy",
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; "
                    "frame-ancestors 'none'");
    srv_resp_header(req, "X-Content-Type-Options", "nosniff");
    srv_respond(req, 200, "text/html; charset=utf-8", body, len);
  }
  free(body);
  json_decref(m);
}
