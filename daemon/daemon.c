/* daemon/daemon — the serve lifecycle: open the store, listen, run, stop cleanly.
 *
 *   cmd_serve: config -> loop -> store_open -> srv_new + srv_listen (each address) -> up_new
 *   (unless offline) -> mirror_new -> atime timer + signals -> "ready" log line (+ sd_notify)
 *   -> uv_run.
 *   SIGTERM/SIGINT: stop the timer and signals, srv_drain (no new connections, idle ones
 *   closed, answers in progress finish) bounded by DAEMON_DRAIN_MS, then srv_close (whatever
 *   is left ends); when the server is closed: mirror_free, up_close; the loop then runs dry
 *   (queued store work finishes), the store is closed and the loop closed (must return 0).
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/mirror.h"
#include "daemon/registry.h"

#define ATIME_FLUSH_MS 5000

const daemon_upstream_t *daemon_upstream_find(const daemon_t *d, const char *name, size_t len)
{
  for (int i = 0; i < d->cfg.nupstreams; i++) {
    const daemon_upstream_t *u = &d->cfg.upstreams[i];
    if (strlen(u->name) == len && strncasecmp(u->name, name, len) == 0)
      return u;
  }
  return NULL;
}

/* The daemon plus what only the lifecycle needs. */
typedef struct serve {
  daemon_t d;
  uv_loop_t loop;
  uv_work_t atime_work;
  int atime_busy;
  int timer_init, sig_init;
  uv_timer_t drain_timer; /**< bounds the graceful drain on SIGTERM/SIGINT */
  int drain_init;
} serve_t;

/** How long answers in progress may run on after SIGTERM before they are cut. */
#define DAEMON_DRAIN_MS 10000

/* systemd readiness (Type=notify): one datagram to $NOTIFY_SOCKET; no-op without it. */
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
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
    pc_log(PC_LOG_WARN, "sd_notify failed: %s", strerror(errno));
  close(fd);
}

static void atime_work(uv_work_t *w)
{
  serve_t *s = container_of(w, serve_t, atime_work);
  int rc = store_flush_atimes(s->d.store);
  if (rc)
    pc_log(PC_LOG_WARN, "atime flush failed: %s", pc_strerror(rc));
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

static void on_up_closed(void *arg)
{
  (void)arg;
}

static void on_srv_closed(void *arg)
{
  serve_t *s = arg;
  s->d.srv = NULL;
  if (s->sig_init) {
    uv_close((uv_handle_t *)&s->d.sigterm, NULL);
    uv_close((uv_handle_t *)&s->d.sigint, NULL);
    s->sig_init = 0;
  }
  mirror_free(s->d.mirror);
  s->d.mirror = NULL;
  if (s->d.up) {
    up_close(s->d.up, on_up_closed, s);
    s->d.up = NULL;
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
  pc_log(PC_LOG_WARN, "pullcache drain timed out: closing %u connection(s)",
         s->d.srv ? srv_conn_count(s->d.srv) : 0u);
  on_drained(s);
}

static void stop(serve_t *s)
{
  daemon_t *d = &s->d;
  if (d->stopping)
    return;
  d->stopping = 1;
  if (s->timer_init)
    uv_close((uv_handle_t *)&d->atime_timer, NULL);
  s->timer_init = 0;
  /* The signal handlers stay until the server is closed: a second signal cuts the drain. */
  if (d->srv) {
    /* Graceful: no new connections; answers in progress finish (bounded by the timer). */
    if (uv_timer_init(&s->loop, &s->drain_timer) == 0) {
      s->drain_init = 1;
      uv_timer_start(&s->drain_timer, on_drain_timeout, DAEMON_DRAIN_MS, 0);
      srv_drain(d->srv, on_drained, s);
    } else {
      srv_close(d->srv, on_srv_closed, s);
    }
  } else {
    on_srv_closed(s);
  }
}

static void on_signal(uv_signal_t *h, int signum)
{
  serve_t *s = h->data;
  if (s->d.stopping) {
    pc_log(PC_LOG_NOTICE, "pullcache second signal=%s: closing now",
           signum == SIGTERM ? "TERM" : "INT");
    on_drained(s);
    return;
  }
  pc_log(PC_LOG_NOTICE, "pullcache stopping signal=%s (draining up to %d s)",
         signum == SIGTERM ? "TERM" : "INT", DAEMON_DRAIN_MS / 1000);
  sd_notify_msg("STOPPING=1");
  stop(s);
}

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

int cmd_serve(int argc, char **argv)
{
  serve_t *s = pc_xcalloc(1, sizeof(*s));
  daemon_t *d = &s->d;
  char err[512] = "";
  char ready[1024];
  size_t rl = 0;
  int level = pc_log_level;
  int code = 1, rc, loop_init = 0;

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: pullcache serve [--config FILE] [--listen ADDR:PORT]... [--store DIR]\n"
             "                      [--upstream NAME=URL]... [--tag-ttl SECONDS] [--offline]\n"
             "                      [--log-level err|warn|notice|info|debug]\n");
      free(s);
      return 0;
    }
  }
  if (config_from_args(&d->cfg, argc - 1, argv + 1, &level, err, sizeof(err)) < 0) {
    fprintf(stderr, "pullcache serve: %s\n", err);
    free(s);
    return 2;
  }
  pc_log_level = level;
  signal(SIGPIPE, SIG_IGN);

  rc = uv_loop_init(&s->loop);
  if (rc) {
    pc_log(PC_LOG_ERR, "uv_loop_init: %s", uv_strerror(rc));
    goto out;
  }
  loop_init = 1;
  d->loop = &s->loop;

  rc = store_open(d->cfg.store_dir, NULL, &d->store);
  if (rc) {
    pc_log(PC_LOG_ERR, "cannot open store %s: %s", d->cfg.store_dir,
           rc == -EBUSY ? "in use by another process" : pc_strerror(rc));
    goto out;
  }
  rc = srv_new(d->loop, &d->cfg.srv, registry_handle, d, &d->srv);
  if (rc) {
    pc_log(PC_LOG_ERR, "cannot create the server: %s", pc_strerror(rc));
    goto out;
  }
  for (int i = 0; i < d->cfg.nlisten; i++) {
    rc = srv_listen(d->srv, d->cfg.listen[i]);
    if (rc) {
      pc_log(PC_LOG_ERR, "cannot listen on %s: %s", d->cfg.listen[i], pc_strerror(rc));
      goto out;
    }
  }
  if (!d->cfg.offline) {
    rc = up_new(d->loop, &d->cfg.up, &d->up);
    if (rc) {
      pc_log(PC_LOG_ERR, "cannot create the upstream client: %s", pc_strerror(rc));
      goto out;
    }
  }
  rc = mirror_new(d, &d->mirror);
  if (rc) {
    pc_log(PC_LOG_ERR, "cannot create the mirror: %s", pc_strerror(rc));
    goto out;
  }
  uv_timer_init(d->loop, &d->atime_timer);
  uv_timer_start(&d->atime_timer, on_atime_timer, ATIME_FLUSH_MS, ATIME_FLUSH_MS);
  s->timer_init = 1;
  uv_signal_init(d->loop, &d->sigterm);
  uv_signal_init(d->loop, &d->sigint);
  d->sigterm.data = d->sigint.data = s;
  uv_signal_start(&d->sigterm, on_signal, SIGTERM);
  uv_signal_start(&d->sigint, on_signal, SIGINT);
  s->sig_init = 1;

  for (int i = 0; i < d->cfg.nlisten; i++) {
    char a[160];
    with_port(d->cfg.listen[i], srv_port(d->srv, i), a, sizeof(a));
    int n = snprintf(ready + rl, sizeof(ready) - rl, "%s%s", i ? "," : "", a);
    if (n > 0 && (size_t)n < sizeof(ready) - rl)
      rl += (size_t)n;
  }
  ready[rl] = '\0';
  {
    char ports[128];
    size_t pl = 0;
    ports[0] = '\0';
    for (int i = 0; i < d->cfg.nlisten; i++) {
      int n = snprintf(ports + pl, sizeof(ports) - pl, "%s%d", i ? "," : "", srv_port(d->srv, i));
      if (n > 0 && (size_t)n < sizeof(ports) - pl)
        pl += (size_t)n;
    }
    pc_log(PC_LOG_NOTICE, "pullcache ready listen=%s ports=%s store=%s upstream=%s%s", ready,
           ports, d->cfg.store_dir, d->cfg.upstreams[0].name, d->cfg.offline ? " offline=1" : "");
  }
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
      pc_log(PC_LOG_ERR, "handles left open at exit");
      uv_walk(&s->loop, on_walk_close, NULL);
      uv_run(&s->loop, UV_RUN_DEFAULT);
      uv_loop_close(&s->loop);
      code = code ? code : 1;
    }
  }
  store_close(d->store);
  if (code == 0)
    pc_log(PC_LOG_NOTICE, "pullcache stopped");
  free(s);
  return code;
}
