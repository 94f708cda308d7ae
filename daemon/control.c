/* daemon/control — the control socket: <store>/control.sock runs the cache commands
 * (daemon/cmd_store.h) on the daemon's store.
 *
 * A connection sends its arguments as NUL-terminated strings followed by one empty string
 * (at most CTL_REQ_MAX bytes, CTL_ARGS strings); the command runs on the thread pool
 * (store_images and store_evict block); the reply is "<exit code>\n" and the command's output,
 * then the daemon closes the connection. Peers whose uid is neither the daemon's nor root are
 * closed at once. At most CTL_CONNS connections at a time (others are closed); a request not
 * complete within CTL_READ_MS is dropped, so silent clients cannot hold every slot.
 *
 *   conn: READING --request complete--> RUNNING (pool) --after--> WRITING --written--> closed
 *         READING --"prefetch"--> STREAMING (daemon/prefetch.h: JSON lines as they come)
 *                     --done, lines written--> closed;  --EOF (client gone)--> cancelled, closed
 *         READING --EOF, error, too big, CTL_READ_MS, stopping--> closed
 *
 * Loop thread only, except cmd_store_exec on the pool (it touches the store and its own
 * output buffer only).
 */
#include "daemon/control.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/list.h"
#include "core/pc.h"
#include "daemon/cmd_store.h"
#include "daemon/upstream.h"
#include "daemon/evict.h"
#include "daemon/prefetch.h"

#define CTL_REQ_MAX (256u << 10) /* a prefetch sends its image list */
#define CTL_ARGS 4096
#define CTL_CONNS 8
#define CTL_READ_MS 10000 /* a request not complete by then is dropped */

typedef enum {
  CONN_READING,
  CONN_RUNNING,
  CONN_WRITING,
  CONN_STREAMING,
  CONN_CLOSING
} conn_state_t;

typedef struct ctl_conn {
  pc_list_t link;
  daemon_control_t *ctl;
  uv_pipe_t pipe;
  uv_timer_t timer; /* READING only: a silent client cannot hold a slot */
  int handles;      /* open handles: freed when both are closed */
  conn_state_t state;
  char req[CTL_REQ_MAX];
  size_t len;
  int argc;
  char *argv[CTL_ARGS + 1];
  uv_work_t work;
  cmd_store_ctx_t x;
  pc_buf_t out;
  int code;
  char head[8];
  uv_write_t wr;
  prefetch_t *pf;   /* STREAMING: the run, until done */
  unsigned writes;  /* STREAMING: lines being written */
  int ended;        /* STREAMING: done was called; close once the lines are written */
  char scratch[64]; /* STREAMING: what the client sends after its request (ignored) */
} ctl_conn_t;

struct daemon_control {
  daemon_t *d;
  uv_pipe_t listener;
  int listening;
  char path[256];
  pc_list_t conns;
  int nconns;
};

static void on_conn_closed(uv_handle_t *h)
{
  ctl_conn_t *c = h->data;
  daemon_control_t *ctl = c->ctl;
  if (--c->handles > 0)
    return;
  pc_list_remove(&c->link);
  ctl->nconns--;
  pc_buf_free(&c->out);
  free(c);
  if (ctl->nconns == 0 && !ctl->listening && ctl->d->control != ctl)
    free(ctl); /* closed, and the last connection is gone */
}

static void conn_close(ctl_conn_t *c)
{
  if (c->state == CONN_CLOSING)
    return;
  c->state = CONN_CLOSING;
  uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
  uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

/* ---- prefetch: a stream of lines ---- */

typedef struct line_wr {
  uv_write_t wr;
  ctl_conn_t *c;
  char data[];
} line_wr_t;

static void on_line_written(uv_write_t *w, int status)
{
  line_wr_t *l = container_of(w, line_wr_t, wr);
  ctl_conn_t *c = l->c;
  (void)status;
  free(l);
  if (--c->writes == 0 && c->ended)
    conn_close(c);
}

static void pf_emit(void *arg, const char *line, size_t len)
{
  ctl_conn_t *c = arg;
  if (c->state != CONN_STREAMING && c->state != CONN_READING)
    return;
  line_wr_t *l = pc_xmalloc(sizeof(*l) + len);
  l->c = c;
  memcpy(l->data, line, len);
  uv_buf_t b = uv_buf_init(l->data, (unsigned)len);
  if (uv_write(&l->wr, (uv_stream_t *)&c->pipe, &b, 1, on_line_written) != 0) {
    free(l);
    return;
  }
  c->writes++;
}

static void pf_done(void *arg, int code)
{
  ctl_conn_t *c = arg;
  (void)code;
  c->pf = NULL;
  c->ended = 1;
  if (c->writes == 0)
    conn_close(c);
}

static void start_prefetch(ctl_conn_t *c, daemon_t *d)
{
  c->state = CONN_STREAMING;
  c->pf = prefetch_start(d, c->argc, c->argv, pf_emit, pf_done, c);
  if (!c->pf)
    pf_done(c, 2); /* bad arguments: the reason was emitted */
}

static void on_written(uv_write_t *w, int status)
{
  ctl_conn_t *c = w->data;
  (void)status;
  conn_close(c);
}

static void work_cb(uv_work_t *w)
{
  ctl_conn_t *c = container_of(w, ctl_conn_t, work);
  c->code = cmd_store_exec(&c->x, c->argc, c->argv, &c->out);
}

static void after_cb(uv_work_t *w, int status)
{
  ctl_conn_t *c = container_of(w, ctl_conn_t, work);
  daemon_t *d = c->ctl->d;
  (void)status;
  if (c->x.manual_runs)
    evict_note_manual(d, c->x.manual_blobs, c->x.manual_bytes);
  if (c->state == CONN_CLOSING)
    return;
  snprintf(c->head, sizeof(c->head), "%d\n", c->code);
  uv_buf_t bufs[2] = {uv_buf_init(c->head, (unsigned)strlen(c->head)),
                      uv_buf_init(c->out.p ? c->out.p : c->head, (unsigned)c->out.len)};
  c->state = CONN_WRITING;
  c->wr.data = c;
  if (uv_write(&c->wr, (uv_stream_t *)&c->pipe, bufs, 2, on_written) != 0)
    conn_close(c);
}

/* The request is complete when it ends with an empty string: parse it into argv. */
static int request_done(ctl_conn_t *c)
{
  size_t i = 0;
  c->argc = 0;
  while (i < c->len) {
    const char *z = memchr(c->req + i, '\0', c->len - i);
    if (!z)
      return 0;
    if (z == c->req + i)
      return c->argc > 0 ? 1 : -1; /* the terminator */
    if (c->argc == CTL_ARGS)
      return -1;
    c->argv[c->argc++] = c->req + i;
    i = (size_t)(z - c->req) + 1;
  }
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
  ctl_conn_t *c = h->data;
  (void)hint;
  if (c->state == CONN_STREAMING) /* the request's strings stay as they are */
    *b = uv_buf_init(c->scratch, sizeof(c->scratch));
  else
    *b = uv_buf_init(c->req + c->len, (unsigned)(sizeof(c->req) - c->len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
  ctl_conn_t *c = s->data;
  daemon_t *d = c->ctl->d;
  (void)b;
  if (c->state == CONN_STREAMING) {
    if (n < 0 && c->pf) { /* the client went away: the fills go on without it */
      prefetch_cancel(c->pf);
      c->pf = NULL;
      conn_close(c);
    } else if (n < 0 && c->writes == 0) {
      conn_close(c);
    }
    return; /* anything else it sends is ignored */
  }
  if (n < 0) {
    conn_close(c);
    return;
  }
  c->len += (size_t)n;
  int done = request_done(c);
  if (done == 0 && c->len < sizeof(c->req))
    return;
  uv_timer_stop(&c->timer);
  int streams = done > 0 && !strcmp(c->argv[0], "prefetch");
  if (!streams || d->stopping)
    uv_read_stop(s);
  if (done <= 0 || d->stopping) {
    conn_close(c);
    return;
  }
  c->argv[c->argc] = NULL;
  if (streams) {
    start_prefetch(c, d); /* reading goes on: EOF says the client went away */
    return;
  }
  c->x.store = d->store;
  c->x.upstream = d->nups ? d->ups[0]->conf.name : "registry.k8s.io";
  c->x.gc_target = d->cfg.store_max_size ? evict_low_mark(&d->cfg) : 0;
  c->x.via_daemon = 1;
  pc_buf_init(&c->out, 64u << 20);
  c->state = CONN_RUNNING;
  if (uv_queue_work(d->loop, &c->work, work_cb, after_cb) != 0)
    conn_close(c);
}

static void on_read_timeout(uv_timer_t *t)
{
  ctl_conn_t *c = t->data;
  pc_log(PC_LOG_WARN, "control-request-timeout bytes=%zu", c->len);
  conn_close(c);
}

static int peer_allowed(uv_pipe_t *p)
{
  uv_os_fd_t fd;
  struct ucred cr;
  socklen_t len = sizeof(cr);
  if (uv_fileno((uv_handle_t *)p, &fd) != 0 ||
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0)
    return 0;
  return cr.uid == 0 || cr.uid == getuid();
}

static void on_connection(uv_stream_t *server, int status)
{
  daemon_control_t *ctl = server->data;
  if (status < 0)
    return;
  ctl_conn_t *c = pc_xcalloc(1, sizeof(*c));
  c->ctl = ctl;
  c->state = CONN_READING;
  uv_pipe_init(ctl->d->loop, &c->pipe, 0);
  c->pipe.data = c;
  uv_timer_init(ctl->d->loop, &c->timer);
  c->timer.data = c;
  c->handles = 2;
  pc_list_push_back(&ctl->conns, &c->link);
  ctl->nconns++;
  if (uv_accept(server, (uv_stream_t *)&c->pipe) != 0) {
    conn_close(c);
    return;
  }
  if (!peer_allowed(&c->pipe) || ctl->nconns > CTL_CONNS || ctl->d->stopping) {
    if (!peer_allowed(&c->pipe))
      pc_log(PC_LOG_WARN, "control-peer-refused reason=uid");
    conn_close(c);
    return;
  }
  uv_timer_start(&c->timer, on_read_timeout, CTL_READ_MS, 0);
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
}

static void on_listener_closed(uv_handle_t *h)
{
  daemon_control_t *ctl = h->data;
  ctl->listening = 0;
  if (ctl->nconns == 0)
    free(ctl);
}

int control_start(daemon_t *d)
{
  daemon_control_t *ctl = pc_xcalloc(1, sizeof(*ctl));
  ctl->d = d;
  pc_list_init(&ctl->conns);
  int rc = cmd_store_socket_path(d->cfg.store_dir, ctl->path, sizeof(ctl->path));
  if (rc) {
    free(ctl);
    return rc;
  }
  /* We hold the store's lock, so a socket file left here is a dead daemon's. */
  unlink(ctl->path);
  uv_pipe_init(d->loop, &ctl->listener, 0);
  ctl->listener.data = ctl;
  mode_t old = umask(0177); /* the socket is created 0600 */
  rc = uv_pipe_bind(&ctl->listener, ctl->path);
  umask(old);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&ctl->listener, 8, on_connection);
  if (rc) {
    unlink(ctl->path);
    d->control = NULL;
    uv_close((uv_handle_t *)&ctl->listener, on_listener_closed); /* frees ctl */
    return rc;
  }
  ctl->listening = 1;
  d->control = ctl;
  return 0;
}

void control_close(daemon_t *d)
{
  daemon_control_t *ctl = d->control;
  if (!ctl)
    return;
  d->control = NULL;
  unlink(ctl->path);
  pc_list_foreach_safe(it, nx, &ctl->conns)
  {
    ctl_conn_t *c = container_of(it, ctl_conn_t, link);
    if (c->state == CONN_READING)
      conn_close(c);
  }
  uv_close((uv_handle_t *)&ctl->listener, on_listener_closed);
}
