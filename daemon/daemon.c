/* daemon/daemon — the serve lifecycle: open the store, listen, run, reload, stop cleanly.
 *
 *   cmd_serve: config -> loop -> store_open -> srv_new + srv_listen (each address) -> up_new
 *   (unless offline) -> upstream objects (pools) -> mirror_new -> atime timer + signals ->
 *   "ready" log line + READY=1 -> uv_run. Upstreams are probed only when /readyz asks.
 *   SIGHUP: RELOADING=1; the config is built again from the same flags and file; on success
 *   log level/format, server limits, fetch timeouts, offline and the upstreams are replaced
 *   (fetches in flight keep the upstream object they started with); listen addresses and the
 *   store path need a restart (warned, kept); on failure nothing changes; then READY=1.
 *   SIGTERM/SIGINT: STOPPING=1, stop the timer, srv_drain (no new connections, idle ones
 *   closed, answers in progress finish) bounded by drain_timeout, then srv_close (whatever is
 *   left ends); when the server is closed: mirror_free, upstream pools released, up_close;
 *   the loop then runs dry (queued store work finishes), the store is closed and the loop
 *   closed (must return 0).
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/metrics.h"
#include "daemon/mirror.h"
#include "daemon/registry.h"
#include "daemon/reqctx.h"

#define ATIME_FLUSH_MS 5000
/** A failed or unknown upstream is probed again at most this often (driven by /readyz). */
#define PROBE_INTERVAL_MS 2000
/** A /readyz request waits at most this long for the probes it started (then 503). */
#define READYZ_WAIT_MS 2000
/* Values in log lines are cut here (see pc_log_quote): error text, and paths or reasons. */
#define LOG_ERR_MAX 128
#define LOG_TEXT_MAX 512

static void readyz_settle(daemon_t *d);

/* The daemon plus what only the lifecycle needs. */
typedef struct serve {
  daemon_t d;
  uv_loop_t loop;
  int argc;         /**< the serve flags, kept for SIGHUP */
  char **argv;
  uv_work_t atime_work;
  int atime_busy;
  int timer_init, sig_init;
  uv_timer_t drain_timer; /**< bounds the graceful drain on SIGTERM/SIGINT */
  int drain_init;
} serve_t;

/* ---- systemd ------------------------------------------------------------------------------ */

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET; no-op without it. */
static void sd_notify_msg(const char *msg)
{
  const char *path = getenv("NOTIFY_SOCKET");
  struct sockaddr_un sa;
  size_t len;
  int fd;
  if (!path || (path[0] != '/' && path[0] != '@'))
    return;
  len = strlen(path);
  if (len >= sizeof(sa.sun_path))
    return;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, len);
  if (sa.sun_path[0] == '@')
    sa.sun_path[0] = '\0';
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return;
  if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sa,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
    int e = errno;
    char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(q, sizeof(q), strerror(e), LOG_ERR_MAX);
    pc_log(PC_LOG_WARN, "sd-notify-failed rc=%s err=%s", pc_errname(-e), q);
  }
  close(fd);
}

/* ---- upstream objects --------------------------------------------------------------------- */

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
  daemon_upstream_t **pp = &u->d->live;
  while (*pp != u)
    pp = &(*pp)->live_next;
  *pp = u->live_next;
  if (u->pool)
    up_pool_release(u->pool);
  explicit_bzero(u->conf.userpwd, sizeof(u->conf.userpwd));
  free(u);
}

void daemon_upstream_seen(daemon_upstream_t *u, int rc, int status)
{
  int reached = status > 0 || rc == 0;
  if (!reached && rc != PC_E_UPSTREAM_UNAVAILABLE && rc != PC_E_UPSTREAM_TIMEOUT &&
      rc != PC_E_UPSTREAM)
    return; /* our own refusal (size cap, digest): says nothing about the network */
  if (u->reachable != reached && reached)
    pc_log(PC_LOG_NOTICE, "upstream-reachable upstream=%s", u->conf.name);
  else if (u->reachable != reached)
    pc_log(PC_LOG_WARN, "upstream-unreachable upstream=%s rc=%s", u->conf.name, pc_errname(rc));
  u->reachable = reached;
  u->reach_ms = pc_mono_ms();
}

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
  u->live_next = d->live;
  d->live = u;
  upstream_set_pool(d, u);
  return u;
}

/* Can a running upstream object take this configuration in place? Only when where and how it
 * fetches stay the same; tag_ttl and the caps may change under running fetches. */
static int upstream_same_target(const daemon_upstream_conf_t *a, const daemon_upstream_conf_t *b)
{
  return !strcasecmp(a->name, b->name) && !strcmp(a->url, b->url) &&
         !strcmp(a->ca_file, b->ca_file) && !strcmp(a->userpwd, b->userpwd);
}

void daemon_upstreams_apply(daemon_t *d, const daemon_config_t *cfg)
{
  daemon_upstream_t *old[DAEMON_MAX_UPSTREAMS];
  int nold = d->nups;
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

static void on_probe_done(up_fetch_t *f, int rc, int status, void *arg)
{
  daemon_upstream_t *u = arg;
  (void)f;
  daemon_t *d = u->d;
  u->probe = NULL;
  daemon_upstream_seen(u, rc, status);
  daemon_upstream_unref(u);
  readyz_settle(d);
}

/* GET <url>/v2/ without answering challenges: any HTTP answer means reachable. */
static void probe_start(daemon_t *d, daemon_upstream_t *u)
{
  char url[1100];
  up_req_t r;
  if (!d->up || u->probe || d->stopping)
    return;
  snprintf(url, sizeof(url), "%s/v2/", u->conf.url);
  memset(&r, 0, sizeof(r));
  r.method = "GET";
  r.url = url;
  r.ca_file = u->conf.ca_file[0] ? u->conf.ca_file : NULL;
  r.no_auth = 1;
  r.on_done = on_probe_done;
  r.arg = daemon_upstream_ref(u);
  u->reach_ms = pc_mono_ms();
  if (up_fetch_start(d->up, &r, &u->probe) != 0) {
    u->probe = NULL;
    daemon_upstream_seen(u, PC_E_UPSTREAM_UNAVAILABLE, 0);
    daemon_upstream_unref(u);
  }
}

static void probes_cancel(daemon_t *d)
{
  for (daemon_upstream_t *u = d->live, *next; u; u = next) {
    next = u->live_next;
    if (u->probe) {
      up_fetch_cancel(u->probe);
      u->probe = NULL;
      daemon_upstream_unref(u); /* may free u: next was read first */
    }
  }
}

static int probes_running(const daemon_t *d)
{
  for (int i = 0; i < d->nups; i++)
    if (d->ups[i]->probe)
      return 1;
  return 0;
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
  if (statvfs(d->cfg.store_dir, &sv) == 0 &&
      (uint64_t)sv.f_bavail * sv.f_frsize < d->cfg.store_min_free) {
    *reason = "store disk below min_free";
    return 0;
  }
  if (d->cfg.offline) {
    *reason = "offline";
    return 1;
  }
  for (int i = 0; i < d->nups; i++)
    if (d->ups[i]->reachable == 1) {
      *reason = "ok";
      return 1;
    }
  /* None known reachable: ask again (at most every PROBE_INTERVAL_MS per upstream). */
  for (int i = 0; probe && i < d->nups; i++) {
    daemon_upstream_t *u = d->ups[i];
    if (!u->probe && (u->reachable < 0 || pc_mono_ms() - u->reach_ms >= PROBE_INTERVAL_MS))
      probe_start(d, u);
  }
  if (probes_running(d)) {
    *reason = "probing upstreams";
    return -1;
  }
  *reason = "no upstream reachable";
  return 0;
}

/* ---- /readyz ------------------------------------------------------------------------------ */

/* A /readyz request waiting for the probes it started. */
typedef struct readyz_wait {
  srv_req_t *req;
  struct readyz_wait *next;
} readyz_wait_t;

static void readyz_answer(srv_req_t *req, int ready, const char *reason)
{
  char msg[96];
  int n;
  if (ready > 0) {
    srv_respond(req, 200, "text/plain", "ready\n", 6);
    return;
  }
  n = snprintf(msg, sizeof(msg), "not ready: %s\n", reason);
  srv_req_log(req, "reason", reason);
  srv_respond(req, 503, "text/plain", msg, (size_t)n);
}

static void on_readyz_gone(reqctx_t *ctx, void *arg)
{
  daemon_t *d = arg;
  for (readyz_wait_t **pp = &d->readyz_waiting; *pp; pp = &(*pp)->next) {
    if ((*pp)->req == ctx->req) {
      readyz_wait_t *w = *pp;
      *pp = w->next;
      free(w);
      return;
    }
  }
}

/* Answer the waiting /readyz requests once the outcome is known (or when out of time: force). */
static void readyz_answer_all(daemon_t *d, int force)
{
  const char *reason;
  int ready;
  if (!d->readyz_waiting)
    return;
  ready = daemon_ready(d, 0, &reason);
  if (ready < 0 && !force)
    return;
  if (d->readyz_timer_init)
    uv_timer_stop(&d->readyz_timer);
  while (d->readyz_waiting) {
    readyz_wait_t *w = d->readyz_waiting;
    d->readyz_waiting = w->next;
    reqctx_unpark(reqctx_of(w->req));
    readyz_answer(w->req, ready, reason);
    free(w);
  }
}

static void readyz_settle(daemon_t *d)
{
  readyz_answer_all(d, 0);
}

static void on_readyz_timeout(uv_timer_t *t)
{
  readyz_answer_all(container_of(t, daemon_t, readyz_timer), 1);
}

void daemon_readyz(daemon_t *d, srv_req_t *req)
{
  const char *reason;
  int ready = daemon_ready(d, 1, &reason);
  if (ready >= 0 || !d->readyz_timer_init) {
    readyz_answer(req, ready, reason);
    return;
  }
  if (!d->readyz_waiting)
    uv_timer_start(&d->readyz_timer, on_readyz_timeout, READYZ_WAIT_MS, 0);
  readyz_wait_t *w = pc_xcalloc(1, sizeof(*w));
  w->req = req;
  w->next = d->readyz_waiting;
  d->readyz_waiting = w;
  reqctx_park(reqctx_of(req), on_readyz_gone, d);
}

/* ---- store upkeep ------------------------------------------------------------------------- */

static void atime_work(uv_work_t *w)
{
  serve_t *s = container_of(w, serve_t, atime_work);
  int rc = store_flush_atimes(s->d.store);
  if (rc) {
    char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
    pc_log(PC_LOG_WARN, "store-atime-flush-failed rc=%s err=%s", pc_errname(rc), q);
  }
}

static void atime_after(uv_work_t *w, int status)
{
  serve_t *s = container_of(w, serve_t, atime_work);
  (void)status;
  s->atime_busy = 0;
}

static void on_atime_timer(uv_timer_t *t)
{
  serve_t *s = container_of(t, serve_t, d.atime_timer);
  if (s->atime_busy || s->d.stopping)
    return;
  s->atime_busy = 1;
  if (uv_queue_work(&s->loop, &s->atime_work, atime_work, atime_after) != 0)
    s->atime_busy = 0;
}

/* ---- stopping ----------------------------------------------------------------------------- */

static void on_up_closed(void *arg)
{
  (void)arg;
}

static void on_srv_closed(void *arg)
{
  serve_t *s = arg;
  daemon_t *d = &s->d;
  d->srv = NULL;
  if (s->sig_init) {
    uv_close((uv_handle_t *)&d->sigterm, NULL);
    uv_close((uv_handle_t *)&d->sigint, NULL);
    uv_close((uv_handle_t *)&d->sighup, NULL);
    s->sig_init = 0;
  }
  if (d->readyz_timer_init) {
    uv_close((uv_handle_t *)&d->readyz_timer, NULL);
    d->readyz_timer_init = 0;
  }
  mirror_free(d->mirror);
  d->mirror = NULL;
  probes_cancel(d);
  /* Objects still held by store work finishing on a worker outlive the client: detach their
   * pools now (up_close frees every pool). */
  for (daemon_upstream_t *u = d->live; u; u = u->live_next) {
    if (u->pool)
      up_pool_release(u->pool);
    u->pool = NULL;
  }
  for (int i = 0; i < d->nups; i++)
    daemon_upstream_unref(d->ups[i]);
  d->nups = 0;
  if (d->up) {
    up_close(d->up, on_up_closed, s);
    d->up = NULL;
  }
}

/* Drained, or out of time: close what is left (srv_close aborts it), then the rest. */
static void on_drained(void *arg)
{
  serve_t *s = arg;
  if (s->drain_init) {
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    s->drain_init = 0;
  }
  if (s->d.srv)
    srv_close(s->d.srv, on_srv_closed, s);
}

static void on_drain_timeout(uv_timer_t *t)
{
  serve_t *s = container_of(t, serve_t, drain_timer);
  pc_log(PC_LOG_WARN, "drain-timeout open_connections=%u",
         s->d.srv ? srv_conn_count(s->d.srv) : 0u);
  on_drained(s);
}

static void stop(serve_t *s)
{
  daemon_t *d = &s->d;
  if (d->stopping)
    return;
  d->stopping = 1;
  readyz_settle(d); /* waiting /readyz requests learn "stopping" now */
  if (s->timer_init)
    uv_close((uv_handle_t *)&d->atime_timer, NULL);
  s->timer_init = 0;
  /* The signal handlers stay until the server is closed: a second signal cuts the drain. */
  if (d->srv) {
    /* Graceful: no new connections; answers in progress finish (bounded by the timer). */
    if (uv_timer_init(&s->loop, &s->drain_timer) == 0) {
      s->drain_init = 1;
      uv_timer_start(&s->drain_timer, on_drain_timeout, d->cfg.drain_timeout_ms, 0);
      srv_drain(d->srv, on_drained, s);
    } else {
      srv_close(d->srv, on_srv_closed, s);
    }
  } else {
    on_srv_closed(s);
  }
}

/* ---- reload ------------------------------------------------------------------------------- */

static void apply_logging(const daemon_config_t *cfg)
{
  pc_log_level = cfg->log_level;
  pc_log_setup(cfg->log_format == DAEMON_LOG_JSON ? PC_LOG_JSON : PC_LOG_TEXT);
}

static void reload(serve_t *s)
{
  daemon_t *d = &s->d;
  daemon_config_t *cfg = pc_xmalloc(sizeof(*cfg));
  char err[512] = "", msg[96];
  char q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  struct timespec ts;
  int rc;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
  sd_notify_msg(msg);
  rc = config_from_args(cfg, s->argc, s->argv, err, sizeof(err));
  if (rc < 0) {
    pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
    d->counters.reloads_failed++;
    pc_log(PC_LOG_ERR, "reload-failed configuration=unchanged reason=%s", q);
    goto out;
  }
  if (d->cfg.path[0] && strcmp(cfg->path, d->cfg.path) != 0) {
    /* The file the daemon runs from is gone (without --config the default is read only when
     * it exists): built-in defaults are not what the operator meant. */
    d->counters.reloads_failed++;
    pc_log_quote(q, sizeof(q), d->cfg.path, LOG_TEXT_MAX);
    pc_log(PC_LOG_ERR,
           "reload-failed configuration=unchanged reason=\"the file is gone\" config=%s", q);
    goto out;
  }
  /* What only a restart can change: keep the running values. */
  if (cfg->nlisten != d->cfg.nlisten ||
      memcmp(cfg->listen, d->cfg.listen, sizeof(cfg->listen)) != 0) {
    pc_log(PC_LOG_WARN,
           "reload-restart-needed key=listen hint=\"the running addresses stay until a restart\"");
    memcpy(cfg->listen, d->cfg.listen, sizeof(cfg->listen));
    cfg->nlisten = d->cfg.nlisten;
  }
  if (strcmp(cfg->store_dir, d->cfg.store_dir) != 0) {
    pc_log(PC_LOG_WARN,
           "reload-restart-needed key=store.path hint=\"the running store stays until a restart\"");
    memcpy(cfg->store_dir, d->cfg.store_dir, sizeof(cfg->store_dir));
  }
  if (!cfg->offline && !d->up) {
    rc = up_new(d->loop, &cfg->up, &d->up);
    if (rc) {
      d->counters.reloads_failed++;
      snprintf(err, sizeof(err), "cannot create the upstream client: %s", pc_strerror(rc));
      pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
      pc_log(PC_LOG_ERR, "reload-failed configuration=unchanged reason=%s", q);
      goto out;
    }
  } else if (d->up) {
    up_set_opts(d->up, &cfg->up);
  }
  apply_logging(cfg);
  srv_set_opts(d->srv, &cfg->srv);
  daemon_upstreams_apply(d, cfg);
  explicit_bzero(&d->cfg, sizeof(d->cfg));
  d->cfg = *cfg;
  d->counters.reloads_ok++;
  d->counters.reload_time = pc_now_sec();
  pc_log_quote(q, sizeof(q), d->cfg.path[0] ? d->cfg.path : "-", LOG_TEXT_MAX);
  pc_log(PC_LOG_NOTICE, "reloaded config=%s upstreams=%d log_level=%d%s", q, d->nups,
         d->cfg.log_level, d->cfg.offline ? " offline=1" : "");
out:
  explicit_bzero(cfg, sizeof(*cfg));
  free(cfg);
  readyz_settle(d); /* offline now, or the upstream being probed replaced */
  sd_notify_msg("READY=1");
}

static void on_signal(uv_signal_t *h, int signum)
{
  serve_t *s = h->data;
  if (signum == SIGHUP) {
    if (!s->d.stopping)
      reload(s);
    return;
  }
  if (s->d.stopping) {
    pc_log(PC_LOG_NOTICE, "stopping-now signal=%s reason=second-signal",
           signum == SIGTERM ? "TERM" : "INT");
    on_drained(s);
    return;
  }
  pc_log(PC_LOG_NOTICE, "stopping signal=%s drain_timeout_ms=%u",
         signum == SIGTERM ? "TERM" : "INT", s->d.cfg.drain_timeout_ms);
  sd_notify_msg("STOPPING=1");
  stop(s);
}

/* ---- serve -------------------------------------------------------------------------------- */

static void on_walk_close(uv_handle_t *h, void *arg)
{
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* "127.0.0.1:0" + 41234 -> "127.0.0.1:41234" */
static void with_port(const char *addr, int port, char *out, size_t outlen)
{
  const char *colon = strrchr(addr, ':');
  int hl = colon ? (int)(colon - addr) : (int)strlen(addr);
  snprintf(out, outlen, "%.*s:%d", hl, addr, port);
}

static void log_ready(daemon_t *d)
{
  char ready[1024], ports[128];
  char qs[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)], qc[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  size_t rl = 0, pl = 0;
  ready[0] = ports[0] = '\0';
  for (int i = 0; i < d->cfg.nlisten; i++) {
    char a[160];
    int n;
    with_port(d->cfg.listen[i], srv_port(d->srv, i), a, sizeof(a));
    n = snprintf(ready + rl, sizeof(ready) - rl, "%s%s", i ? "," : "", a);
    if (n > 0 && (size_t)n < sizeof(ready) - rl)
      rl += (size_t)n;
    n = snprintf(ports + pl, sizeof(ports) - pl, "%s%d", i ? "," : "", srv_port(d->srv, i));
    if (n > 0 && (size_t)n < sizeof(ports) - pl)
      pl += (size_t)n;
  }
  pc_log_quote(qs, sizeof(qs), d->cfg.store_dir, LOG_TEXT_MAX);
  pc_log_quote(qc, sizeof(qc), d->cfg.path[0] ? d->cfg.path : "-", LOG_TEXT_MAX);
  pc_log(PC_LOG_NOTICE, "ready listen=%s ports=%s store=%s upstream=%s config=%s%s", ready, ports,
         qs, d->ups[0]->conf.name, qc, d->cfg.offline ? " offline=1" : "");
}

/* A start-up step failed: "event rc=NAME err=TEXT". */
static void log_start_failed(const char *event, int rc)
{
  char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
  pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
  pc_log(PC_LOG_ERR, "%s rc=%s err=%s", event, pc_errname(rc), q);
}

int cmd_serve(int argc, char **argv)
{
  serve_t *s = pc_xcalloc(1, sizeof(*s));
  daemon_t *d = &s->d;
  char err[512] = "";
  int code = 1, rc, loop_init = 0;

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: pullcache serve [--config FILE | --no-config] [--listen ADDR:PORT]...\n"
             "                      [--store DIR] [--upstream NAME=URL]... [--tag-ttl DURATION]\n"
             "                      [--offline] [--log-level err|warn|notice|info|debug]\n"
             "                      [--log-format text|json]\n"
             "Without --config, " DAEMON_CONFIG_DEFAULT " is read when it exists.\n"
             "SIGHUP reloads the configuration; SIGTERM drains and stops.\n");
      free(s);
      return 0;
    }
  }
  s->argc = argc - 1;
  s->argv = argv + 1;
  if (config_from_args(&d->cfg, s->argc, s->argv, err, sizeof(err)) < 0) {
    fprintf(stderr, "pullcache serve: %s\n", err);
    explicit_bzero(&d->cfg, sizeof(d->cfg));
    free(s);
    return 2;
  }
  apply_logging(&d->cfg);
  signal(SIGPIPE, SIG_IGN);
  d->start_time = pc_now_sec();
  d->counters.reload_time = d->start_time;

  rc = uv_loop_init(&s->loop);
  if (rc) {
    log_start_failed("uv-loop-init-failed", rc);
    goto out;
  }
  loop_init = 1;
  d->loop = &s->loop;

  rc = store_open(d->cfg.store_dir, NULL, &d->store);
  if (rc) {
    char qp[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)], qe[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(qp, sizeof(qp), d->cfg.store_dir, LOG_TEXT_MAX);
    pc_log_quote(qe, sizeof(qe), rc == -EBUSY ? "in use by another process" : pc_strerror(rc),
                 LOG_ERR_MAX);
    pc_log(PC_LOG_ERR, "store-open-failed path=%s rc=%s err=%s", qp, pc_errname(rc), qe);
    goto out;
  }
  rc = srv_new(d->loop, &d->cfg.srv, registry_handle, d, &d->srv);
  if (rc) {
    log_start_failed("srv-create-failed", rc);
    goto out;
  }
  srv_set_finish_cb(d->srv, metrics_on_finish, d);
  for (int i = 0; i < d->cfg.nlisten; i++) {
    rc = srv_listen(d->srv, d->cfg.listen[i]);
    if (rc) {
      char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
      pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
      const char *a = d->cfg.listen[i]; /* validated ADDR:PORT, a plain value */
      pc_log(PC_LOG_ERR, "listen-failed listen=%s rc=%s err=%s", a, pc_errname(rc), q);
      goto out;
    }
  }
  if (!d->cfg.offline) {
    rc = up_new(d->loop, &d->cfg.up, &d->up);
    if (rc) {
      log_start_failed("upstream-client-create-failed", rc);
      goto out;
    }
  }
  daemon_upstreams_apply(d, &d->cfg);
  rc = mirror_new(d, &d->mirror);
  if (rc) {
    log_start_failed("mirror-create-failed", rc);
    goto out;
  }
  uv_timer_init(d->loop, &d->atime_timer);
  uv_timer_start(&d->atime_timer, on_atime_timer, ATIME_FLUSH_MS, ATIME_FLUSH_MS);
  s->timer_init = 1;
  uv_signal_init(d->loop, &d->sigterm);
  uv_signal_init(d->loop, &d->sigint);
  uv_signal_init(d->loop, &d->sighup);
  d->sigterm.data = d->sigint.data = d->sighup.data = s;
  uv_signal_start(&d->sigterm, on_signal, SIGTERM);
  uv_signal_start(&d->sigint, on_signal, SIGINT);
  uv_signal_start(&d->sighup, on_signal, SIGHUP);
  s->sig_init = 1;
  uv_timer_init(d->loop, &d->readyz_timer);
  d->readyz_timer_init = 1;
  log_ready(d);
  sd_notify_msg("READY=1");

  uv_run(d->loop, UV_RUN_DEFAULT);
  code = 0;

out:
  if (code != 0 && loop_init) {
    /* A start-up failure: tear down what exists through the same path. */
    stop(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
  }
  if (loop_init) {
    if (uv_loop_close(&s->loop) != 0) {
      pc_log(PC_LOG_ERR, "handles-left-open-at-exit");
      uv_walk(&s->loop, on_walk_close, NULL);
      uv_run(&s->loop, UV_RUN_DEFAULT);
      uv_loop_close(&s->loop);
      code = code ? code : 1;
    }
  }
  store_close(d->store);
  if (code == 0)
    pc_log(PC_LOG_NOTICE, "stopped");
  explicit_bzero(&d->cfg, sizeof(d->cfg));
  free(s);
  return code;
}
