/* daemon/upstream — the reference-counted upstream objects (see upstream.h). */
#include "daemon/upstream.h"

#include <inttypes.h>

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/num.h"
#include "core/pc.h"

daemon_upstream_t *daemon_upstream_ref(daemon_upstream_t *u)
{
  u->refs++;
  return u;
}

void daemon_upstream_unref(daemon_upstream_t *u)
{
  PC_ASSERT(u->refs > 0);
  if (--u->refs > 0)
    return;
  pc_list_remove(&u->live_link);
  if (u->pool)
    up_pool_release(u->pool);
  explicit_bzero(u->conf.userpwd, sizeof(u->conf.userpwd));
  free(u);
}

void daemon_upstream_seen(daemon_upstream_t *u, int rc, int status)
{
  int reached = status > 0 || rc == 0;
  if (status == 429) {
    daemon_upstream_rate_limited(u, NULL);
  } else if (u->rl.open && reached && pc_mono_ms() >= u->rl.until_ms) {
    u->rl.open = 0;
    u->rl.probing = 0;
    pc_log(PC_LOG_NOTICE, "upstream-rate-limit-closed upstream=%s status=%d", u->conf.name, status);
  }
  if (!reached && rc != PC_E_UPSTREAM_UNAVAILABLE && rc != PC_E_UPSTREAM_TIMEOUT &&
      rc != PC_E_UPSTREAM)
    return; /* our own refusal (size cap, digest): says nothing about the network */
  if (!reached || status == 429 || status >= 500) {
    u->last_err.rc = rc;
    u->last_err.status = status;
    u->last_err.time = pc_now_sec();
  }
  if (u->reachable != reached && reached)
    pc_log(PC_LOG_NOTICE, "upstream-reachable upstream=%s", u->conf.name);
  else if (u->reachable != reached)
    pc_log(PC_LOG_WARN, "upstream-unreachable upstream=%s rc=%s", u->conf.name, pc_errname(rc));
  u->reachable = reached;
  u->reach_ms = pc_mono_ms();
}

/* ---- the 429 breaker --------------------------------------------------------------------- */

void daemon_upstream_rate_limited(daemon_upstream_t *u, const char *retry_after)
{
  uint64_t now = pc_mono_ms(), secs = 0;
  int given =
      retry_after && retry_after[0] && pc_parse_u64(retry_after, 86400, &secs) == 0 && secs > 0;
  if (!given)
    secs = DAEMON_UPSTREAM_RETRY_AFTER_S;
  if (secs > 3600)
    secs = 3600;
  uint64_t until = now + secs * 1000;
  if (!given && u->rl.open && u->rl.until_ms > now)
    return; /* a window the upstream named is kept */
  if (!u->rl.open || now >= u->rl.until_ms) {
    u->rl.opened++;
    pc_log(PC_LOG_WARN, "upstream-rate-limited upstream=%s retry_after=%" PRIu64, u->conf.name,
           secs);
  }
  u->rl.open = 1;
  u->rl.probing = 0;
  u->rl.until_ms = until;
}

int daemon_breaker_admit(daemon_breaker_t *b, uint64_t now)
{
  if (!b->open)
    return 1;
  if (now >= b->until_ms && (!b->probing || now - b->probe_ms >= DAEMON_BREAKER_PROBE_LOST_MS)) {
    b->probing = 1;
    b->probe_ms = now;
    return 1;
  }
  b->rejected++;
  return 0;
}

int daemon_upstream_admit(daemon_upstream_t *u)
{
  if (!u->rl.open)
    return 1;
  if (daemon_breaker_admit(&u->rl, pc_mono_ms())) {
    pc_log(PC_LOG_INFO, "upstream-rate-limit-probe upstream=%s", u->conf.name);
    return 1;
  }
  return 0;
}

/* ---- URLs, failover and the down breakers ------------------------------------------------- */

/* urls := conf.mirrors (in order), then conf.url; counters and breakers start afresh. */
static void upstream_set_urls(daemon_upstream_t *u)
{
  const char *p = u->conf.mirrors;
  memset(u->urls, 0, sizeof(u->urls));
  u->nurls = 0;
  while (*p && u->nurls < DAEMON_UPSTREAM_MAX_URLS - 1) {
    p += strspn(p, " ");
    size_t w = strcspn(p, " ");
    if (!w)
      break;
    if (w < sizeof(u->urls[0].base)) {
      memcpy(u->urls[u->nurls].base, p, w);
      u->urls[u->nurls].base[w] = '\0';
      u->urls[u->nurls].mirror = 1;
      u->nurls++;
    }
    p += w;
  }
  pc_strlcpy(u->urls[u->nurls].base, sizeof(u->urls[0].base), u->conf.url);
  u->nurls++;
}

void daemon_upstream_urls(daemon_upstream_t *u, const char *path_query, daemon_urls_t *out)
{
  uint64_t now = pc_mono_ms();
  int has_q = strchr(path_query, '?') != NULL;
  memset(out, 0, sizeof(*out));
  for (unsigned i = 0; i < u->nurls; i++) {
    daemon_upstream_url_t *x = &u->urls[i];
    if (x->mirror && x->down.open && !daemon_breaker_admit(&x->down, now)) {
      x->skipped++;
      continue;
    }
    size_t n = strlen(x->base) + strlen(path_query) + strlen(u->conf.name) + 8;
    char *v = pc_xmalloc(n);
    if (x->mirror)
      snprintf(v, n, "%s%s%cns=%s", x->base, path_query, has_q ? '&' : '?', u->conf.name);
    else
      snprintf(v, n, "%s%s", x->base, path_query);
    out->v[out->n++] = v;
  }
}

void daemon_urls_free(daemon_urls_t *urls)
{
  for (unsigned i = 0; i < urls->n; i++)
    free(urls->v[i]);
  urls->n = 0;
}

static void on_url_try(void *arg, const char *url, unsigned pos, int rc, int status)
{
  (void)pos;
  daemon_upstream_url_tried(arg, url, rc, status);
}

void daemon_upstream_req_urls(up_req_t *r, daemon_upstream_t *u, const daemon_urls_t *urls)
{
  PC_ASSERT(urls->n > 0);
  r->url = urls->v[0];
  r->more_urls = (const char *const *)&urls->v[1];
  r->nmore = urls->n - 1;
  r->failover_connect_ms = u->conf.failover_connect_ms;
  r->failover_first_byte_ms = u->conf.failover_first_byte_ms;
  r->on_try = on_url_try;
  r->try_arg = u;
}

static daemon_upstream_url_t *url_of(const daemon_upstream_t *u, const char *url)
{
  /* the longest configured base the URL starts with, followed by '/' or its end */
  const daemon_upstream_url_t *best = NULL;
  size_t bl = 0;
  for (unsigned i = 0; i < u->nurls; i++) {
    size_t n = strlen(u->urls[i].base);
    if (n > bl && strncmp(url, u->urls[i].base, n) == 0 && (url[n] == '/' || !url[n])) {
      best = &u->urls[i];
      bl = n;
    }
  }
  return (daemon_upstream_url_t *)best;
}

const char *daemon_upstream_url_base(const daemon_upstream_t *u, const char *url)
{
  const daemon_upstream_url_t *x = url ? url_of(u, url) : NULL;
  return x ? x->base : NULL;
}

void daemon_upstream_url_tried(daemon_upstream_t *u, const char *url, int rc, int status)
{
  daemon_upstream_url_t *x = url_of(u, url);
  if (!x)
    return;
  x->tries++;
  int failed = rc < 0 ? (rc == PC_E_UPSTREAM_TIMEOUT || rc == PC_E_UPSTREAM_UNAVAILABLE ||
                         rc == PC_E_UPSTREAM)
                      : status >= 500;
  if (rc < 0 && !failed)
    return; /* ours, not the URL's */
  if (!failed) {
    x->served++;
    x->fails = 0;
    if (x->down.open) {
      x->down.open = 0;
      x->down.probing = 0;
      pc_log(PC_LOG_NOTICE, "upstream-url-up upstream=%s url=%s", u->conf.name, x->base);
    }
    return;
  }
  x->failures++;
  x->fails++;
  if (!x->mirror)
    return; /* the origin is never skipped */
  if (x->down.open || x->fails >= (u->conf.down_after ? u->conf.down_after : 1)) {
    uint64_t back = u->conf.down_backoff_ms > 0 ? (uint64_t)u->conf.down_backoff_ms : 30000;
    if (!x->down.open) {
      x->down.opened++;
      pc_log(PC_LOG_WARN,
             "upstream-url-down upstream=%s url=%s fails=%u backoff_ms=%" PRIu64 " rc=%s status=%d",
             u->conf.name, x->base, x->fails, back, rc < 0 ? pc_errname(rc) : "-", status);
    }
    x->down.open = 1;
    x->down.probing = 0;
    x->down.until_ms = pc_mono_ms() + back;
  }
}

void daemon_upstream_retry_after(const daemon_upstream_t *u, char *out, size_t outlen)
{
  uint64_t now = pc_mono_ms();
  uint64_t left = u->rl.until_ms > now ? (u->rl.until_ms - now + 999) / 1000 : 1;
  snprintf(out, outlen, "%" PRIu64, left ? left : 1);
}

/* ---- the configured set ------------------------------------------------------------------- */

static void upstream_set_pool(daemon_t *d, daemon_upstream_t *u)
{
  up_pool_opts_t o = {.max_active = u->conf.max_connections,
                      .rate = u->conf.rate_limit,
                      .burst = u->conf.rate_burst};
  if (!d->up)
    return;
  if (u->pool) {
    up_pool_set_opts(u->pool, &o);
    return;
  }
  if (up_pool_new(d->up, u->conf.name, &o, &u->pool) != 0) {
    pc_log(PC_LOG_ERR, "upstream-pool-create-failed upstream=%s", u->conf.name);
    u->pool = NULL;
  }
}

static daemon_upstream_t *upstream_new(daemon_t *d, const daemon_upstream_conf_t *c)
{
  daemon_upstream_t *u = pc_xcalloc(1, sizeof(*u));
  u->refs = 1;
  u->conf = *c;
  u->reachable = -1;
  u->d = d;
  u->name_is_host = config_upstream_name_valid(c->name);
  upstream_set_urls(u);
  pc_list_push_front(&d->live, &u->live_link);
  upstream_set_pool(d, u);
  return u;
}

/* Can a running upstream object take this configuration in place? Only when where and how it
 * fetches stay the same; tag_ttl and the caps may change under running fetches. */
static int upstream_same_target(const daemon_upstream_conf_t *a, const daemon_upstream_conf_t *b)
{
  return !strcasecmp(a->name, b->name) && !strcmp(a->url, b->url) &&
         !strcmp(a->mirrors, b->mirrors) && !strcmp(a->ca_file, b->ca_file) &&
         !strcmp(a->userpwd, b->userpwd);
}

void daemon_upstreams_apply(daemon_t *d, const daemon_config_t *cfg)
{
  daemon_upstream_t *old[DAEMON_MAX_UPSTREAMS];
  int nold = d->nups;
  if (!d->live.next)
    pc_list_init(&d->live); /* first use of an all-zero daemon_t */
  memcpy(old, d->ups, sizeof(old));
  d->nups = 0;
  for (int i = 0; i < cfg->nupstreams; i++) {
    const daemon_upstream_conf_t *c = &cfg->upstreams[i];
    daemon_upstream_t *u = NULL;
    for (int j = 0; j < nold; j++) {
      if (old[j] && upstream_same_target(&old[j]->conf, c)) {
        u = old[j];
        old[j] = NULL;
        break;
      }
    }
    if (u) {
      u->conf = *c;
      upstream_set_pool(d, u);
    } else {
      u = upstream_new(d, c);
    }
    d->ups[d->nups++] = u;
  }
  for (int j = 0; j < nold; j++)
    if (old[j])
      daemon_upstream_unref(old[j]);
}

/* ---- reachability probes ------------------------------------------------------------------ */

static void on_probe_done(up_fetch_t *f, int rc, int status, void *arg)
{
  daemon_upstream_t *u = arg;
  void (*done)(daemon_t *) = u->probe_done;
  daemon_t *d = u->d;
  (void)f;
  u->probe = NULL;
  u->probe_done = NULL;
  daemon_upstream_seen(u, rc, status);
  daemon_upstream_unref(u);
  if (done)
    done(d);
}

/* GET /v2/ of its URLs (mirrors first, as fetches go) without answering challenges: any HTTP
 * answer means reachable. */
void daemon_upstream_probe(daemon_upstream_t *u, void (*done)(daemon_t *d))
{
  daemon_t *d = u->d;
  daemon_urls_t urls;
  up_req_t r;
  int rc;
  if (!d->up || u->probe || d->stopping)
    return;
  if (u->reachable >= 0 && pc_mono_ms() - u->reach_ms < DAEMON_UPSTREAM_PROBE_INTERVAL_MS)
    return;
  memset(&r, 0, sizeof(r));
  /* Its URLs in order (mirrors first): reachable when any of them answers. */
  daemon_upstream_urls(u, "/v2/", &urls);
  daemon_upstream_req_urls(&r, u, &urls);
  r.method = "GET";
  r.ca_file = u->conf.ca_file[0] ? u->conf.ca_file : NULL;
  r.no_auth = 1;
  r.label = u->conf.name;
  r.on_done = on_probe_done;
  r.arg = daemon_upstream_ref(u);
  u->reach_ms = pc_mono_ms();
  u->probe_done = done;
  rc = up_fetch_start(d->up, &r, &u->probe);
  daemon_urls_free(&urls);
  if (rc != 0) {
    u->probe = NULL;
    u->probe_done = NULL;
    daemon_upstream_seen(u, PC_E_UPSTREAM_UNAVAILABLE, 0);
    daemon_upstream_unref(u);
  }
}

int daemon_upstreams_probing(const daemon_t *d)
{
  for (int i = 0; i < d->nups; i++)
    if (d->ups[i]->probe)
      return 1;
  return 0;
}

/* ---- shutdown ----------------------------------------------------------------------------- */

void daemon_upstreams_close(daemon_t *d)
{
  if (!d->live.next)
    pc_list_init(&d->live);
  pc_list_foreach_safe(it, next, &d->live)
  {
    daemon_upstream_t *u = pc_list_entry(it, daemon_upstream_t, live_link);
    if (u->probe) {
      up_fetch_cancel(u->probe);
      u->probe = NULL;
      u->probe_done = NULL;
      daemon_upstream_unref(u); /* may free u: next was read first */
    }
  }
  /* Objects still held by store work finishing on a worker outlive the client: detach their
   * pools now (up_close frees every pool). */
  pc_list_foreach(it, &d->live)
  {
    daemon_upstream_t *u = pc_list_entry(it, daemon_upstream_t, live_link);
    if (u->pool)
      up_pool_release(u->pool);
    u->pool = NULL;
  }
  for (int i = 0; i < d->nups; i++)
    daemon_upstream_unref(d->ups[i]);
  d->nups = 0;
}
