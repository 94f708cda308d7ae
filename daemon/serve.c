/* daemon/serve — the serve lifecycle (cmd_serve, daemon/cmd.h): open the store, listen, run,
 * reload, stop cleanly; signals, sd_notify and the access-time flush timer. It creates and
 * destroys the daemon_t (daemon/daemon.h); the upstream objects are daemon/upstream, readiness
 * and /readyz daemon/ready, the request counters daemon/counters.
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
#include "daemon/cmd.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/access.h"
#include "daemon/config.h"
#include "http/srv-tls.h"
#include "daemon/counters.h"
#include "daemon/daemon.h"
#include "daemon/control.h"
#include "daemon/evict.h"
#include "daemon/mirror.h"
#include "daemon/ready.h"
#include "daemon/registry.h"
#include "daemon/upstream.h"

#define ATIME_FLUSH_MS 5000
/* Values in log lines are cut here (see pc_log_quote): error text, and paths or reasons. */
#define LOG_ERR_MAX 128
#define LOG_TEXT_MAX 512

/* The daemon plus what only the lifecycle needs. */
typedef struct serve {
  daemon_t d;
  uv_loop_t loop;
  int argc; /**< the serve flags, kept for SIGHUP */
  char **argv;
  uv_timer_t atime_timer; /**< flushes batched access times */
  uv_work_t atime_work;
  int atime_busy;
  int timer_init, sig_init;
  uv_signal_t sigterm, sigint, sighup;
  uv_timer_t drain_timer; /**< bounds the graceful drain on SIGTERM/SIGINT */
  int drain_init;
  srv_tls_t *tls; /**< [server] tls_listen's configuration, or NULL */
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
  serve_t *s = container_of(t, serve_t, atime_timer);
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
    uv_close((uv_handle_t *)&s->sigterm, NULL);
    uv_close((uv_handle_t *)&s->sigint, NULL);
    uv_close((uv_handle_t *)&s->sighup, NULL);
    s->sig_init = 0;
  }
  daemon_ready_close(d);
  mirror_free(d->mirror);
  d->mirror = NULL;
  daemon_upstreams_close(d);
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
  daemon_ready_settle(d); /* waiting /readyz requests learn "stopping" now */
  if (s->timer_init)
    uv_close((uv_handle_t *)&s->atime_timer, NULL);
  s->timer_init = 0;
  evict_close(d);
  control_close(d);
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

/* A reload that changes nothing: count it and say why. */
static int reload_failed(daemon_t *d, const char *reason, const char *config)
{
  char q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)], qc[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  d->counters.reloads_failed++;
  pc_log_quote(q, sizeof(q), reason, LOG_TEXT_MAX);
  if (config) {
    pc_log_quote(qc, sizeof(qc), config, LOG_TEXT_MAX);
    pc_log(PC_LOG_ERR, "reload-failed configuration=unchanged reason=%s config=%s", q, qc);
  } else {
    pc_log(PC_LOG_ERR, "reload-failed configuration=unchanged reason=%s", q);
  }
  return -1;
}

/* Build the configuration a reload would run (into cfg) and get the upstream client it needs;
 * 0, or -1 when nothing may change (counted and logged). */
static int reload_prepare(serve_t *s, daemon_config_t *cfg)
{
  daemon_t *d = &s->d;
  char err[512] = "";
  int rc = config_from_args(cfg, s->argc, s->argv, err, sizeof(err));
  if (rc < 0)
    return reload_failed(d, err, NULL);
  /* The file the daemon runs from is gone (without --config the default is read only when it
   * exists): built-in defaults are not what the operator meant. */
  if (d->cfg.path[0] && strcmp(cfg->path, d->cfg.path) != 0)
    return reload_failed(d, "the file is gone", d->cfg.path);
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
  if (strcmp(cfg->tls_listen, d->cfg.tls_listen) != 0) {
    pc_log(PC_LOG_WARN, "reload-restart-needed key=tls_listen hint=\"the running TLS listener "
                        "stays until a restart\"");
    memcpy(cfg->tls_listen, d->cfg.tls_listen, sizeof(cfg->tls_listen));
  }
  if (!cfg->offline && !d->up) {
    rc = up_new(d->loop, &cfg->up, &d->up);
    if (rc) {
      snprintf(err, sizeof(err), "cannot create the upstream client: %s", pc_strerror(rc));
      return reload_failed(d, err, NULL);
    }
  } else if (d->up) {
    up_set_opts(d->up, &cfg->up);
  }
  return 0;
}

/* The tls_* keys as srv_tls wants them. */
static srv_tls_conf_t tls_conf(const daemon_config_t *c)
{
  srv_tls_conf_t t = {c->tls_cert, c->tls_key, c->tls_client_ca,
                      strcmp(c->tls_client_auth, "optional") == 0 ? SRV_TLS_CLIENT_OPTIONAL
                                                                  : SRV_TLS_CLIENT_REQUIRED,
                      c->tls_handshake_timeout_ms};
  return t;
}

/* SIGHUP with a TLS listener: load certificate, key and client CA again for new connections;
 * a bad file keeps the running ones. */
static void reload_tls(serve_t *s, const daemon_config_t *cfg)
{
  char err[1024], q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  srv_tls_conf_t tc = tls_conf(cfg);
  if (!s->tls)
    return;
  if (srv_tls_reload(s->tls, &tc, err, sizeof(err)) != 0) {
    pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
    pc_log(PC_LOG_ERR, "tls-reload-failed err=%s action=kept-running-certificate", q);
    return;
  }
  pc_log(PC_LOG_NOTICE, "tls-reloaded");
}

/* SIGHUP: load the credential files again; a bad file keeps the running credentials. */
static void reload_access(daemon_t *d, const daemon_config_t *cfg)
{
  char err[1024], q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  daemon_access_t *a;
  if (access_creds_load(cfg, err, sizeof(err), &a) != 0) {
    pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
    pc_log(PC_LOG_ERR, "auth-reload-failed err=%s action=kept-running-credentials", q);
    return;
  }
  access_creds_free(d->access);
  d->access = a;
}

/* SIGHUP: RELOADING=1, build and apply the configuration (or keep the running one), READY=1. */
static void reload(serve_t *s)
{
  daemon_t *d = &s->d;
  daemon_config_t *cfg = pc_xmalloc(sizeof(*cfg));
  char msg[96], q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
           (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
  sd_notify_msg(msg);
  if (reload_prepare(s, cfg) == 0) {
    apply_logging(cfg);
    srv_set_opts(d->srv, &cfg->srv);
    reload_tls(s, cfg);
    reload_access(d, cfg);
    daemon_upstreams_apply(d, cfg);
    explicit_bzero(&d->cfg, sizeof(d->cfg));
    d->cfg = *cfg;
    d->counters.reloads_ok++;
    d->counters.reload_time = pc_now_sec();
    pc_log_quote(q, sizeof(q), d->cfg.path[0] ? d->cfg.path : "-", LOG_TEXT_MAX);
    pc_log(PC_LOG_NOTICE, "reloaded config=%s upstreams=%d log_level=%d%s", q, d->nups,
           d->cfg.log_level, d->cfg.offline ? " offline=1" : "");
  }
  explicit_bzero(cfg, sizeof(*cfg));
  free(cfg);
  daemon_ready_settle(d); /* offline now, or the upstream being probed replaced */
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
  char tl[64] = "";
  if (d->cfg.tls_listen[0])
    snprintf(tl, sizeof(tl), " tls_port=%d", srv_port(d->srv, d->cfg.nlisten));
  pc_log(PC_LOG_NOTICE, "ready listen=%s ports=%s store=%s upstream=%s config=%s%s%s", ready, ports,
         qs, d->ups[0]->conf.name, qc, d->cfg.offline ? " offline=1" : "", tl);
}

/* A start-up step failed: "event rc=NAME err=TEXT". */
static void log_start_failed(const char *event, int rc)
{
  char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
  pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
  pc_log(PC_LOG_ERR, "%s rc=%s err=%s", event, pc_errname(rc), q);
}

/* `serve --help`: print the usage and return 1; 0 when not asked. */
static int serve_help(int argc, char **argv)
{
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: pullcache serve [--config FILE | --no-config] [--listen ADDR:PORT]...\n"
             "                      [--store DIR] [--upstream NAME=URL]... [--tag-ttl DURATION]\n"
             "                      [--offline] [--log-level err|warn|notice|info|debug]\n"
             "                      [--log-format text|json]\n"
             "Without --config, " DAEMON_CONFIG_DEFAULT " is read when it exists.\n"
             "SIGHUP reloads the configuration; SIGTERM drains and stops.\n");
      return 1;
    }
  }
  return 0;
}

/* Store, server and listeners, upstream client and objects, mirror: 0, or -1 (logged; what
 * exists is torn down by stop). */
static int serve_open(serve_t *s)
{
  daemon_t *d = &s->d;
  int rc = store_open(d->cfg.store_dir, NULL, &d->store);
  if (rc) {
    char qp[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)], qe[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(qp, sizeof(qp), d->cfg.store_dir, LOG_TEXT_MAX);
    pc_log_quote(qe, sizeof(qe), rc == -EBUSY ? "in use by another process" : pc_strerror(rc),
                 LOG_ERR_MAX);
    pc_log(PC_LOG_ERR, "store-open-failed path=%s rc=%s err=%s", qp, pc_errname(rc), qe);
    return -1;
  }
  {
    char err[1024], q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
    if (access_creds_load(&d->cfg, err, sizeof(err), &d->access) != 0) {
      pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
      pc_log(PC_LOG_ERR, "auth-config-failed err=%s", q);
      fprintf(stderr, "pullcache serve: %s\n", err);
      return -1;
    }
  }
  rc = srv_new(d->loop, &d->cfg.srv, registry_handle, d, &d->srv);
  if (rc) {
    log_start_failed("srv-create-failed", rc);
    return -1;
  }
  srv_set_finish_cb(d->srv, counters_on_finish, &d->counters);
  srv_set_accept_filter(d->srv, access_conn_ok, d);
  for (int i = 0; i < d->cfg.nlisten; i++) {
    rc = srv_listen(d->srv, d->cfg.listen[i]);
    if (rc) {
      char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
      pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
      const char *a = d->cfg.listen[i]; /* validated ADDR:PORT, a plain value */
      pc_log(PC_LOG_ERR, "listen-failed listen=%s rc=%s err=%s", a, pc_errname(rc), q);
      return -1;
    }
  }
  if (d->cfg.tls_listen[0]) {
    char err[1024], q[PC_LOG_QUOTE_SIZE(LOG_TEXT_MAX)];
    srv_tls_conf_t tc = tls_conf(&d->cfg);
    rc = srv_tls_new(&tc, err, sizeof(err), &s->tls);
    if (rc) {
      pc_log_quote(q, sizeof(q), err, LOG_TEXT_MAX);
      pc_log(PC_LOG_ERR, "tls-config-failed err=%s", q);
      fprintf(stderr, "pullcache serve: %s\n", err);
      return -1;
    }
    d->tls = s->tls;
    char why[256], qw[PC_LOG_QUOTE_SIZE(256)];
    d->ktls_available = srv_tls_ktls_probe(why, sizeof(why));
    pc_log_quote(qw, sizeof(qw), why, 256);
    pc_log(PC_LOG_NOTICE, "tls-send mode=userspace ktls=%s reason=%s%s",
           d->ktls_available ? "available" : "unavailable", qw,
           d->ktls_available ? " hint=\"this transport encrypts in user space: kernel TLS is "
                               "not used\""
                             : "");
    rc = srv_listen_tls(d->srv, d->cfg.tls_listen, s->tls);
    if (rc) {
      char qe[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
      pc_log_quote(qe, sizeof(qe), pc_strerror(rc), LOG_ERR_MAX);
      pc_log(PC_LOG_ERR, "listen-failed tls_listen=%s rc=%s err=%s", d->cfg.tls_listen,
             pc_errname(rc), qe);
      return -1;
    }
  }
  if (!d->cfg.offline) {
    rc = up_new(d->loop, &d->cfg.up, &d->up);
    if (rc) {
      log_start_failed("upstream-client-create-failed", rc);
      return -1;
    }
  }
  daemon_upstreams_apply(d, &d->cfg);
  rc = mirror_new(d, &d->mirror);
  if (rc) {
    log_start_failed("mirror-create-failed", rc);
    return -1;
  }
  return 0;
}

/* A commit grew the store: eviction looks at the budget now (daemon/evict.h). */
static void on_blob_committed(pull_env_t *env)
{
  evict_kick(env->fetch_ctx);
}

/* The access-time flush timer, the signal handlers and the /readyz timer. */
static void serve_arm(serve_t *s)
{
  daemon_t *d = &s->d;
  uv_timer_init(d->loop, &s->atime_timer);
  uv_timer_start(&s->atime_timer, on_atime_timer, ATIME_FLUSH_MS, ATIME_FLUSH_MS);
  s->timer_init = 1;
  if (evict_start(d) != 0)
    pc_log(PC_LOG_ERR, "evict-start-failed hint=\"max_size and min_free are not enforced\"");
  else if (d->mirror)
    mirror_env(d->mirror)->on_committed = on_blob_committed;
  int crc = control_start(d);
  if (crc)
    pc_log(PC_LOG_WARN,
           "control-socket-failed rc=%s hint=\"pullcache ls/pin/gc cannot reach this daemon\"",
           pc_errname(crc));
  uv_signal_init(d->loop, &s->sigterm);
  uv_signal_init(d->loop, &s->sigint);
  uv_signal_init(d->loop, &s->sighup);
  s->sigterm.data = s->sigint.data = s->sighup.data = s;
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sighup, on_signal, SIGHUP);
  s->sig_init = 1;
  daemon_ready_init(d);
}

/* After uv_run: the loop must close with nothing open (else 1 when code was 0). */
static int serve_close_loop(serve_t *s, int code)
{
  if (uv_loop_close(&s->loop) != 0) {
    pc_log(PC_LOG_ERR, "handles-left-open-at-exit");
    uv_walk(&s->loop, on_walk_close, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    code = code ? code : 1;
  }
  return code;
}

int cmd_serve(int argc, char **argv)
{
  serve_t *s;
  daemon_t *d;
  char err[512] = "";
  int code = 1, rc;

  if (serve_help(argc, argv))
    return 0;
  s = pc_xcalloc(1, sizeof(*s));
  d = &s->d;
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
  } else {
    d->loop = &s->loop;
    if (serve_open(s) == 0) {
      serve_arm(s);
      log_ready(d);
      sd_notify_msg("READY=1");
      uv_run(d->loop, UV_RUN_DEFAULT);
      code = 0;
    } else {
      /* A start-up failure: tear down what exists through the same path. */
      stop(s);
      uv_run(&s->loop, UV_RUN_DEFAULT);
    }
    code = serve_close_loop(s, code);
  }
  evict_free(d);
  store_close(d->store);
  srv_tls_free(s->tls);
  access_creds_free(d->access);
  if (code == 0)
    pc_log(PC_LOG_NOTICE, "stopped");
  explicit_bzero(&d->cfg, sizeof(d->cfg));
  free(s);
  return code;
}
