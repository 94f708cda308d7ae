/* daemon/status and the rings it reads (daemon/counters) without a server: the ring of the
 * last requests, the per-minute window, the first-byte quantiles, the model of a daemon with
 * no server or mirror, and the escaping of the HTML. (The page in a browser: e2e test_status.) */
#include <jansson.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/daemon.h"
#include "daemon/route.h"
#include "daemon/status.h"
#include "daemon/upstream.h"
#include "unit.h"

TEST(recent_ring_keeps_the_last_requests)
{
  static daemon_counters_t c;
  char path[32];
  for (int i = 0; i < COUNTERS_RECENT + 5; i++) {
    snprintf(path, sizeof(path), "/v2/x/blobs/%d", i);
    counters_note(&c, 6000 + i, ROUTE_BLOB, DAEMON_CACHE_MISS, 200, 10, "GET", path);
  }
  ASSERT_EQ((uint64_t)COUNTERS_RECENT + 5, c.nrecent);
  /* the newest is in the slot before the next one; the oldest five were overwritten */
  const counters_recent_t *newest = &c.recent[(c.nrecent - 1) % COUNTERS_RECENT];
  snprintf(path, sizeof(path), "/v2/x/blobs/%d", COUNTERS_RECENT + 4);
  ASSERT_STREQ(path, newest->path);
  ASSERT_EQ(6000 + COUNTERS_RECENT + 4, newest->time);
  for (int i = 0; i < COUNTERS_RECENT; i++)
    ASSERT(c.recent[i].time >= 6005);
  /* a /status request is counted but kept out of the ring; a long path is cut, NUL-ended */
  char longp[300];
  memset(longp, 'a', sizeof(longp) - 1);
  longp[sizeof(longp) - 1] = '\0';
  counters_note(&c, 7000, ROUTE_STATUS, -1, 200, 5, "GET", "/status");
  ASSERT_EQ((uint64_t)COUNTERS_RECENT + 5, c.nrecent);
  ASSERT_EQ(1, (int)c.requests[ROUTE_STATUS][counters_code_idx(200)]);
  counters_note(&c, 7001, ROUTE_UNKNOWN, -1, 404, 19, NULL, longp);
  newest = &c.recent[(c.nrecent - 1) % COUNTERS_RECENT];
  ASSERT_EQ(COUNTERS_RECENT_PATH - 1, (int)strlen(newest->path));
  ASSERT_STREQ("", newest->method);
}

TEST(minute_window_sums_recent_minutes_only)
{
  static daemon_counters_t c;
  counters_minute_t w;
  int64_t t0 = 60 * 1000; /* minute 1000 */
  counters_note(&c, t0, ROUTE_BLOB, DAEMON_CACHE_HIT, 200, 100, "GET", "/a");
  counters_note(&c, t0 + 60, ROUTE_BLOB, DAEMON_CACHE_MISS, 200, 7, "GET", "/b");
  counters_note(&c, t0 + 61, ROUTE_BLOB, DAEMON_CACHE_HIT, 404, 50, "GET", "/c"); /* no bytes */
  counters_window(&c, t0 + 61, 1, &w);
  ASSERT_EQ(1, (int)w.outcomes[DAEMON_CACHE_HIT]);
  ASSERT_EQ(1, (int)w.outcomes[DAEMON_CACHE_MISS]);
  ASSERT_EQ(7, (int)w.served_upstream);
  ASSERT_EQ(0, (int)w.served_store);
  counters_window(&c, t0 + 61, 5, &w);
  ASSERT_EQ(2, (int)w.outcomes[DAEMON_CACHE_HIT]);
  ASSERT_EQ(100, (int)w.served_store);
  /* the same slot a ring length later holds another minute: it is reset, not added to */
  counters_note(&c, t0 + 60 * COUNTERS_MINUTES, ROUTE_BLOB, DAEMON_CACHE_JOIN, 200, 3, "GET", "/d");
  counters_window(&c, t0 + 60 * COUNTERS_MINUTES, COUNTERS_MINUTES, &w);
  ASSERT_EQ(1, (int)w.outcomes[DAEMON_CACHE_HIT]); /* minute 1000's went with its slot */
  ASSERT_EQ(1, (int)w.outcomes[DAEMON_CACHE_JOIN]);
  ASSERT_EQ(1, (int)w.outcomes[DAEMON_CACHE_MISS]); /* minute 1001 is still in the window */
  ASSERT_EQ(0, (int)w.served_store);
  /* far later: nothing in the window */
  counters_window(&c, t0 + 3600 * 24, 15, &w);
  for (int i = 0; i < DAEMON_CACHE_N; i++)
    ASSERT_EQ(0, (int)w.outcomes[i]);
  /* the lifetime totals are the same counters /metrics renders */
  ASSERT_EQ(100, (int)c.served_store);
  ASSERT_EQ(10, (int)c.served_upstream);
}

TEST(quantiles_interpolate_like_promql)
{
  uint64_t h[UP_HIST_BUCKETS + 1] = {0};
  ASSERT(status_quantile(h, 0.5) < 0);
  /* 10 observations in (0.05, 0.1]: the median is in the middle of that bucket */
  h[4] = 10;
  double q = status_quantile(h, 0.5);
  ASSERT(q > 0.074 && q < 0.076);
  ASSERT(status_quantile(h, 1.0) <= 0.1 + 1e-9);
  /* everything above the last bound: the highest finite bound */
  memset(h, 0, sizeof(h));
  h[UP_HIST_BUCKETS] = 3;
  ASSERT(status_quantile(h, 0.99) == up_hist_bounds_s[UP_HIST_BUCKETS - 1]);
}

TEST(route_status)
{
  route_t r;
  ASSERT_OK(route_parse("GET", "/status", "format=json", NULL, 0, &r));
  ASSERT_EQ(ROUTE_STATUS, r.kind);
  ASSERT_STREQ("status", route_kind_name(ROUTE_STATUS));
  ASSERT_OK(route_parse("POST", "/status", "", NULL, 0, &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(route_parse("GET", "/status/x", "", NULL, 0, &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
}

TEST(config_status_key)
{
  daemon_config_t c;
  char err[256] = "", path[512];
  config_defaults(&c);
  ASSERT_EQ(1, c.status_page);
  snprintf(path, sizeof(path), "%s/st.conf", unit_tmpdir());
  FILE *f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs("[server]\nstatus = off\n", f);
  fclose(f);
  ASSERT_OK(config_load_file(&c, path, err, sizeof(err)));
  ASSERT_EQ(0, c.status_page);
}

/* A daemon with no server, store or mirror still has a model; what comes from outside (a path
 * of the ring, an upstream's name and error) is escaped in the HTML. */
TEST(model_and_html_of_a_bare_daemon)
{
  static daemon_t d;
  config_defaults(&d.cfg);
  d.cfg.store_max_size = 1000;
  snprintf(d.cfg.store_dir, sizeof(d.cfg.store_dir), "%s", unit_tmpdir());
  daemon_upstreams_apply(&d, &d.cfg);
  d.start_time = 5000;
  daemon_upstream_seen(d.ups[0], PC_E_UPSTREAM_UNAVAILABLE, 0);
  counters_note(&d.counters, 5100, ROUTE_MANIFEST, DAEMON_CACHE_HIT, 200, 42, "GET",
                "/v2/<script>alert(1)</script>/manifests/\"x'");
  json_t *m = status_model(&d, 5120);
  ASSERT_EQ(120, (int)json_integer_value(json_object_get(m, "uptime_s")));
  json_t *u = json_array_get(json_object_get(m, "upstreams"), 0);
  ASSERT_STREQ("unreachable", json_string_value(json_object_get(u, "state")));
  json_t *le = json_object_get(u, "last_error");
  ASSERT_STREQ(pc_errname(PC_E_UPSTREAM_UNAVAILABLE),
               json_string_value(json_object_get(le, "error")));
  json_t *cache = json_object_get(m, "cache");
  ASSERT_EQ(1000, (int)json_integer_value(json_object_get(cache, "max_size")));
  ASSERT_EQ(42, (int)json_integer_value(
                    json_object_get(json_object_get(cache, "served_bytes"), "store")));
  json_t *hr = json_object_get(cache, "hit_ratio");
  ASSERT(json_real_value(json_object_get(hr, "m1")) == 1.0);
  ASSERT_EQ(0, (int)json_array_size(json_object_get(m, "fills")));
  ASSERT_EQ(1, (int)json_array_size(json_object_get(m, "recent")));
  size_t len = 0;
  char *html = status_html(m, &len);
  ASSERT_EQ(strlen(html), len);
  ASSERT(strstr(html, "<script") == NULL);
  ASSERT(strstr(html, "&lt;script&gt;alert(1)&lt;/script&gt;") != NULL);
  ASSERT(strstr(html, "&quot;x&#39;") != NULL);
  ASSERT(strstr(html, "<meta http-equiv=\"refresh\"") != NULL);
  ASSERT(strstr(html, "data-state=\"unreachable\"") != NULL);
  ASSERT(strstr(html, "<meter id=\"usage\"") != NULL);
  ASSERT(strstr(html, "<span id=\"ready-reason\">store not open</span>") != NULL);
  /* no external reference of any kind */
  ASSERT(strstr(html, "href=\"http") == NULL && strstr(html, "href=\"//") == NULL);
  ASSERT(strstr(html, "src=") == NULL);
  free(html);
  json_decref(m);
  daemon_upstreams_close(&d);
}
