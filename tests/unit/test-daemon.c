/* daemon/upstream, daemon/ready and daemon/counters without a server or a network: the
 * upstream objects across a reload, reachability, readiness, and the status slots of the
 * request counters. (Probes and /readyz waits need an upstream client: tests/e2e.) */
#include <string.h>

#include "core/list.h"
#include "daemon/config.h"
#include "daemon/counters.h"
#include "daemon/daemon.h"
#include "daemon/ready.h"
#include "daemon/tier.h"
#include "daemon/upstream.h"
#include "store/store.h"
#include "unit.h"

static void add_upstream(daemon_config_t *cfg, const char *name, const char *url, int64_t tag_ttl)
{
  daemon_upstream_conf_t *u = &cfg->upstreams[cfg->nupstreams++];
  memset(u, 0, sizeof(*u));
  snprintf(u->name, sizeof(u->name), "%s", name);
  snprintf(u->url, sizeof(u->url), "%s", url);
  u->tag_ttl = tag_ttl;
}

/* A reload keeps the objects whose target is unchanged (taking the new tag_ttl), makes new ones
 * for the rest, and an object a fetch still holds outlives its removal from the set. */
TEST(upstreams_apply_keeps_same_target)
{
  static daemon_t d; /* all zero, as the fuzz harness starts too; offline: no pools */
  static daemon_config_t a, b;
  add_upstream(&a, "one.example", "https://one.example", 300);
  add_upstream(&a, "two.example", "https://two.example", 300);
  add_upstream(&a, "three.example", "https://three.example", 300);
  daemon_upstreams_apply(&d, &a);
  ASSERT_EQ(3, d.nups);
  ASSERT_EQ(3, pc_list_count(&d.live));
  daemon_upstream_t *one = d.ups[0], *two = d.ups[1], *three = d.ups[2];
  ASSERT_EQ(1, one->refs);
  ASSERT_EQ(-1, one->reachable);
  ASSERT(one->pool == NULL);
  ASSERT_STREQ("https://two.example", two->conf.url);

  daemon_upstream_ref(two); /* a fetch for "two" is running */
  daemon_upstream_seen(one, 0, 200);

  /* one: same target (the name compares without case), new tag_ttl; two: another URL;
   * three: dropped; four: new. */
  add_upstream(&b, "ONE.example", "https://one.example", 60);
  add_upstream(&b, "two.example", "https://two-mirror.example", 300);
  add_upstream(&b, "four.example", "https://four.example", 300);
  daemon_upstreams_apply(&d, &b);
  ASSERT_EQ(3, d.nups);
  ASSERT(d.ups[0] == one);
  ASSERT_EQ(60, one->conf.tag_ttl);
  ASSERT_STREQ("ONE.example", one->conf.name);
  ASSERT_EQ(1, one->reachable); /* what was learnt stays with the object */
  ASSERT(d.ups[1] != two);
  ASSERT_STREQ("https://two-mirror.example", d.ups[1]->conf.url);
  ASSERT_EQ(-1, d.ups[1]->reachable);
  ASSERT_STREQ("four.example", d.ups[2]->conf.name);
  (void)three;                          /* freed by the apply: nothing held it */
  ASSERT_EQ(4, pc_list_count(&d.live)); /* one, new two, four, and the held old two */
  ASSERT_STREQ("https://two.example", two->conf.url);
  ASSERT_EQ(1, two->refs);
  daemon_upstream_unref(two); /* the fetch ends */
  ASSERT_EQ(3, pc_list_count(&d.live));

  /* Changed credentials are another target too. */
  snprintf(b.upstreams[0].userpwd, sizeof(b.upstreams[0].userpwd), "u:p");
  daemon_upstreams_apply(&d, &b);
  ASSERT_STREQ("u:p", d.ups[0]->conf.userpwd);
  ASSERT_EQ(-1, d.ups[0]->reachable); /* a new object: "one" (reachable) was released */
  ASSERT_EQ(3, pc_list_count(&d.live));

  daemon_upstreams_close(&d);
  ASSERT_EQ(0, d.nups);
  ASSERT(pc_list_empty(&d.live));
}

TEST(upstream_seen_records_reachability)
{
  static daemon_t d;
  static daemon_config_t c;
  add_upstream(&c, "one.example", "https://one.example", 300);
  daemon_upstreams_apply(&d, &c);
  daemon_upstream_t *u = d.ups[0];
  ASSERT_EQ(-1, u->reachable);
  daemon_upstream_seen(u, PC_E_TOOBIG, 0); /* our own refusal: says nothing */
  ASSERT_EQ(-1, u->reachable);
  daemon_upstream_seen(u, PC_E_UPSTREAM_DIGEST, 0);
  ASSERT_EQ(-1, u->reachable);
  daemon_upstream_seen(u, PC_E_UPSTREAM_TIMEOUT, 0);
  ASSERT_EQ(0, u->reachable);
  daemon_upstream_seen(u, PC_E_UPSTREAM, 503); /* an HTTP answer: reached */
  ASSERT_EQ(1, u->reachable);
  daemon_upstream_seen(u, PC_E_UPSTREAM_UNAVAILABLE, 0);
  ASSERT_EQ(0, u->reachable);
  daemon_upstream_seen(u, 0, 0);
  ASSERT_EQ(1, u->reachable);
  /* No upstream client (offline): a probe is never started. */
  u->reachable = -1;
  daemon_upstream_probe(u, NULL);
  ASSERT(u->probe == NULL);
  ASSERT_EQ(0, daemon_upstreams_probing(&d));
  daemon_upstreams_close(&d);
}

TEST(ready_reasons)
{
  static daemon_t d;
  const char *reason = NULL;
  store_t *st;
  config_defaults(&d.cfg);
  d.cfg.nupstreams = 0;
  d.cfg.store_min_free = 0;
  add_upstream(&d.cfg, "one.example", "https://one.example", 300);
  snprintf(d.cfg.store_dir, sizeof(d.cfg.store_dir), "%s", unit_tmpdir());
  daemon_upstreams_apply(&d, &d.cfg);

  ASSERT_EQ(0, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("store not open", reason);
  ASSERT_OK(store_open(d.cfg.store_dir, NULL, &st));
  d.store = st;
  /* Not known reachable, and no client to probe with. */
  ASSERT_EQ(0, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("no upstream reachable", reason);
  daemon_upstream_seen(d.ups[0], 0, 401);
  ASSERT_EQ(1, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("ok", reason);
  daemon_upstream_seen(d.ups[0], PC_E_UPSTREAM_UNAVAILABLE, 0);
  d.cfg.offline = 1;
  ASSERT_EQ(1, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("offline", reason);
  d.cfg.store_min_free = UINT64_MAX;
  ASSERT_EQ(0, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("store disk below min_free", reason);
  d.stopping = 1;
  ASSERT_EQ(0, daemon_ready(&d, 1, &reason));
  ASSERT_STREQ("stopping", reason);
  /* Before daemon_ready_init nothing is parked, and settling or closing is harmless. */
  daemon_ready_settle(&d);
  daemon_ready_close(&d);

  daemon_upstreams_close(&d);
  store_close(d.store);
}

TEST(counters_status_slots)
{
  static const int counted[] = {0,   200, 206, 304, 400, 401, 403, 404, 405,
                                413, 414, 416, 429, 431, 500, 502, 503, 504};
  int seen[DAEMON_CODES] = {0};
  for (size_t i = 0; i < PC_ARRAY_SIZE(counted); i++) {
    int idx = counters_code_idx(counted[i]);
    ASSERT(idx >= 0 && idx < DAEMON_CODES - 1);
    ASSERT_EQ(counted[i], counters_code(idx));
    ASSERT_EQ(0, seen[idx]++);
  }
  /* Anything else shares the last ("other") slot. */
  ASSERT_EQ(DAEMON_CODES - 1, counters_code_idx(201));
  ASSERT_EQ(DAEMON_CODES - 1, counters_code_idx(599));
  ASSERT_EQ(DAEMON_CODES - 1, counters_code_idx(-1));
  ASSERT_STREQ("hit", counters_cache_name(DAEMON_CACHE_HIT));
  ASSERT_STREQ("revalidated", counters_cache_name(DAEMON_CACHE_REVALIDATED));
}

/* ---- failover: an upstream's URLs and their down breakers ---------------------------------- */

/* Mirrors come first, asked with ns=NAME (& when the path has a query), the origin last and
 * without it. */
TEST(upstream_urls_mirrors_first_with_ns)
{
  static daemon_t d;
  static daemon_config_t c;
  add_upstream(&c, "registry.k8s.io", "http://127.0.0.1:9003", 300);
  snprintf(c.upstreams[0].mirrors, sizeof(c.upstreams[0].mirrors), "%s",
           "http://127.0.0.1:9001 http://10.0.0.2:5000/sub");
  daemon_upstreams_apply(&d, &c);
  daemon_upstream_t *u = d.ups[0];
  ASSERT_EQ(3, u->nurls);
  daemon_urls_t urls;
  daemon_upstream_urls(u, "/v2/pause/blobs/sha256:ab", &urls);
  ASSERT_EQ(3, urls.n);
  ASSERT_STREQ("http://127.0.0.1:9001/v2/pause/blobs/sha256:ab?ns=registry.k8s.io", urls.v[0]);
  ASSERT_STREQ("http://10.0.0.2:5000/sub/v2/pause/blobs/sha256:ab?ns=registry.k8s.io", urls.v[1]);
  ASSERT_STREQ("http://127.0.0.1:9003/v2/pause/blobs/sha256:ab", urls.v[2]);
  up_req_t r = {0};
  daemon_upstream_req_urls(&r, u, &urls);
  ASSERT(r.url == urls.v[0]);
  ASSERT_EQ(2, r.nmore);
  ASSERT(r.more_urls[1] == urls.v[2]);
  ASSERT(r.on_try != NULL);
  ASSERT_STREQ("http://10.0.0.2:5000/sub", daemon_upstream_url_base(u, urls.v[1]));
  daemon_urls_free(&urls);
  daemon_upstream_urls(u, "/v2/pause/tags/list?n=10", &urls);
  ASSERT_STREQ("http://127.0.0.1:9001/v2/pause/tags/list?n=10&ns=registry.k8s.io", urls.v[0]);
  ASSERT_STREQ("http://127.0.0.1:9003/v2/pause/tags/list?n=10", urls.v[2]);
  daemon_urls_free(&urls);
  /* A base that is a prefix of another's host is not mistaken for it. */
  ASSERT(daemon_upstream_url_base(u, "http://127.0.0.1:90011/v2/x") == NULL);
  daemon_upstreams_close(&d);
}

/* down_after failures in a row take a mirror out of the list for down_backoff; then one fetch
 * probes it (the others still skip it); a good answer brings it back. An answer that is not a
 * 5xx resets the count; the origin is never skipped. */
TEST(upstream_url_breaker_down_probe_up)
{
  static daemon_t d;
  static daemon_config_t c;
  add_upstream(&c, "registry.k8s.io", "http://127.0.0.1:9003", 300);
  snprintf(c.upstreams[0].mirrors, sizeof(c.upstreams[0].mirrors), "http://127.0.0.1:9001");
  c.upstreams[0].down_after = 3;
  c.upstreams[0].down_backoff_ms = 60000;
  daemon_upstreams_apply(&d, &c);
  daemon_upstream_t *u = d.ups[0];
  daemon_upstream_url_t *m = &u->urls[0], *o = &u->urls[1];
  const char *mu = "http://127.0.0.1:9001/v2/x/blobs/sha256:1?ns=registry.k8s.io";
  const char *ou = "http://127.0.0.1:9003/v2/x/blobs/sha256:1";
  daemon_urls_t urls;

  daemon_upstream_url_tried(u, mu, PC_E_UPSTREAM_UNAVAILABLE, 0);
  daemon_upstream_url_tried(u, mu, 0, 502);
  daemon_upstream_url_tried(u, mu, 0, 404); /* an answer: the count starts again */
  ASSERT_EQ(0, m->fails);
  daemon_upstream_url_tried(u, mu, PC_E_TOOBIG, 0); /* ours: says nothing */
  ASSERT_EQ(0, m->fails);
  daemon_upstream_url_tried(u, mu, PC_E_UPSTREAM_TIMEOUT, 0);
  daemon_upstream_url_tried(u, mu, PC_E_UPSTREAM, 0);
  ASSERT_EQ(0, m->down.open);
  daemon_upstream_url_tried(u, mu, 0, 503);
  ASSERT_EQ(1, m->down.open);
  ASSERT_EQ(1, m->down.opened);
  ASSERT_EQ(5, m->failures);

  /* Down: skipped, straight to the origin. */
  for (int i = 0; i < 3; i++) {
    daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
    ASSERT_EQ(1, urls.n);
    ASSERT_STREQ(ou, urls.v[0]);
    daemon_urls_free(&urls);
  }
  ASSERT_EQ(3, m->skipped);

  /* The back-off is over: one fetch probes the mirror, the next ones skip it meanwhile. */
  m->down.until_ms = 0;
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(2, urls.n);
  ASSERT_STREQ(mu, urls.v[0]);
  daemon_urls_free(&urls);
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(1, urls.n);
  daemon_urls_free(&urls);
  /* The probe fails: down again for a whole back-off. */
  daemon_upstream_url_tried(u, mu, PC_E_UPSTREAM_UNAVAILABLE, 0);
  ASSERT_EQ(1, m->down.open);
  ASSERT(m->down.until_ms > 0);
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(1, urls.n);
  daemon_urls_free(&urls);
  /* The next probe is answered: up again. */
  m->down.until_ms = 0;
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(2, urls.n);
  daemon_urls_free(&urls);
  daemon_upstream_url_tried(u, mu, 0, 200);
  ASSERT_EQ(0, m->down.open);
  ASSERT_EQ(0, m->fails);
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(2, urls.n);
  daemon_urls_free(&urls);

  /* The origin counts its failures but is never left out. */
  for (int i = 0; i < 10; i++)
    daemon_upstream_url_tried(u, ou, PC_E_UPSTREAM_UNAVAILABLE, 0);
  ASSERT_EQ(10, o->failures);
  ASSERT_EQ(0, o->down.open);
  daemon_upstream_urls(u, "/v2/x/blobs/sha256:1", &urls);
  ASSERT_EQ(2, urls.n);
  daemon_urls_free(&urls);
  daemon_upstreams_close(&d);
}

/* The Via chain: entries counted, this mirror found by its received-by name. */
TEST(tier_via_scan_counts_and_finds_self)
{
  unsigned n;
  int self;
  tier_via_scan(NULL, "a:5000", &n, &self);
  ASSERT_EQ(0, n);
  ASSERT_EQ(0, self);
  tier_via_scan("1.1 site-1:5000", "regional:5000", &n, &self);
  ASSERT_EQ(1, n);
  ASSERT_EQ(0, self);
  tier_via_scan("1.1 site-1:5000, 1.1 Regional:5000 (pullcache),HTTP/1.1 lb", "regional:5000", &n,
                &self);
  ASSERT_EQ(3, n);
  ASSERT_EQ(1, self);
  tier_via_scan("1.1 regional:50000", "regional:5000", &n, &self); /* not a prefix match */
  ASSERT_EQ(0, self);
  tier_via_scan(" , ,1.1 x", "x", &n, &self);
  ASSERT_EQ(1, n);
  ASSERT_EQ(1, self);
}
