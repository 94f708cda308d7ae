/* srv — the HTTP/1.1 server: llhttp parsing, keep-alive, pipelining, limits, timers, access
 * log, over a transport (http/srv-transport.h; TCP is http/srv_tcp.c).
 *
 * Connection states (enum conn_state, conn_t.state), one request at a time:
 *
 *   C_IDLE --first byte--> C_HEAD --headers complete--> C_HANDLER --srv_respond*--> C_WRITE
 *     ^                      |                                                        |
 *     |                      +--limit or parse error: short plain answer (close_after)-+
 *     |                                                                  file body    |
 *     |                                                                               v
 *     |                   C_FILE_WAIT <--the file's producer is behind-- C_FILE (send_file)
 *     |                        +----------------srv_file_avail-------------->  |
 *     |                                                                        |
 *     +------ answer done, keep-alive: resume the parser on buffered bytes <---+-- (or WRITE)
 *                                                                              |
 *             answer done, close_after: C_LINGER (shutdown, discard input) <---+
 *
 *   any state --abort: srv_abort, read error, EOF while waiting, timeout, srv_close--> C_CLOSED
 *   C_LINGER --EOF, linger timeout, too much input--> C_CLOSED
 *   C_WRITE/C_FILE --a write or send_file that cannot start--> C_HANDLER, aborted by a 0 ms
 *   timer (abort_soon: srv_respond* never runs a done callback before it returns)
 *
 * Reading and parsing. Bytes land in a per-connection buffer (SRV_RBUF_MIN, doubled when full up
 * to SRV_RBUF; made by the first on_alloc and freed when a read brings nothing while the
 * connection is idle with nothing buffered, so idle TLS connections hold none). The parser is
 * paused (HPE_PAUSED) in on_message_begin (to know where a head starts, so the head size is
 * counted exactly) and in on_headers_complete (the dispatch point). While a request is in
 * flight the parser stays paused and later bytes (pipelined requests) wait in the buffer; when
 * the buffer is full reading stops (read_stop) until the response is done, then parsing
 * resumes at llhttp_get_error_pos. URL and header tokens are copied out of the buffer into the
 * request as they are parsed (into pc_buf_t's capped at the limits), so the buffer can be
 * compacted at any time. Request bodies are never read: a body on GET/HEAD is a 400; on other
 * methods the handler answers (the daemon says 405) and the connection is closed after the
 * response.
 *
 * Closing. A completed response on a connection that must close (Connection: close, HTTP/1.0,
 * an error, a body we did not read) is followed by a lingering close: the transport's shutdown,
 * then input is read and discarded for up to SRV_LINGER_MS so the kernel does not answer unread
 * input with a RST that would destroy the response in flight. An abort (srv_abort, read
 * error, write stall, srv_close) closes at once. The connection is freed when both its timer
 * and its transport have closed (`pending` counts them); the transport completes any op in
 * flight before its close callback.
 *
 * Writing. Small complete file bodies (<= SRV_SMALL_FILE: manifests, configs) are read inline
 * and written with the head in one write. A response given inside the handler call is tried at
 * once with the transport's try_write: when the socket takes it whole, the request completes
 * right after the handler returns (conn_dispatch; the done callback still runs after srv_respond*
 * returned) and the parse loop goes on with the next pipelined request, with no write request
 * and no loop turn for its callback; the rest of a partial write goes the usual way. Larger ones go
 * out with the transport's send_file, SRV_FILE_CHUNK bytes at most per op (TCP: sendfile(2) from
 * the loop when the range is in the page cache, else on the thread pool; see http/srv_tcp.c); the
 * file fd is the connection's and stays open until the transport has closed. Nothing else is
 * written while a file body is in flight (responses are strictly ordered). Per connection memory is
 * the read buffer, the request and the response head: it does not depend on the body size. Finished
 * requests and written response buffers are kept by the server for reuse (srv.spare, srv.wspare: at
 * most one of each per open connection, at least SRV_SPARE, none whose buffers grew past
 * SRV_SPARE_BUF_MAX; trimmed as connections close), so a warm answer allocates nothing here. A file
 * body may continue from a body source (srv_file_source; or be all source, srv_respond_source):
 * from r->src_from on, each chunk is peeked from the source and written with the transport's write
 * (the bytes stay the source's until its sent call); the source is released where the file would be
 * closed.
 *
 * The process must ignore SIGPIPE (libuv and sendfile write to sockets that may be closed).
 */
#include "http/srv.h"

#include "core/buf.h"
#include "core/list.h"
#include "core/num.h"
#include "core/pc.h"
#include "http/srv-int.h"
#include "http/srv-transport.h"

#include <errno.h>
#include <llhttp.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define SRV_RBUF 16384u                /* read buffer per connection, at most */
#define SRV_RBUF_MIN 2048u             /* ... at first (doubled while it is full) */
#define SRV_FILE_CHUNK (1024u * 1024u) /* bytes per send_file op */
#define SRV_SMALL_FILE 65536u          /* complete file bodies up to this are read inline */
#define SRV_LINGER_MS 2000u            /* lingering close: discard input this long at most */
#define SRV_LINGER_MAX (1024u * 1024u) /* ... and this many bytes at most */
#define SRV_LOG_PATH_MAX 256u          /* paths longer than this are cut in the access log */
#define SRV_LOGF_MAX 1024u             /* srv_req_log fields per request */
#define SRV_LOG_VALUE_MAX 256u         /* longest value (before quoting) in the access log */
#define SRV_LOG_LINE_MAX 4096u         /* an access-log line (bounded by the above anyway) */
#define SRV_RESP_HDR_MAX 16384u        /* srv_resp_header bytes per response */
#define SRV_BACKLOG 511
#define SRV_SPARE                                                                                  \
  32 /* requests and write buffers kept for reuse: this many, or one per open conn */
#define SRV_SPARE_BUF_MAX 8192u /* ... when none of their buffers grew past this */
#define SRV_SMALL_STACK 16384u  /* small file bodies up to this are read into the stack */

enum conn_state { C_IDLE, C_HEAD, C_HANDLER, C_WRITE, C_FILE, C_FILE_WAIT, C_LINGER, C_CLOSED };
enum pause_why { P_NONE, P_BEGIN, P_HEADERS };

typedef struct conn conn_t;

typedef struct hdr {
  size_t name, value; /* offsets into srv_req.arena; the name's length is value - name - 1 */
} hdr_t;

/* 1 when header i of r is named name (nl bytes), case-insensitively: lengths first. */
#define HDR_IS(r, i, nm, nl)                                                                       \
  ((r)->h[i].value - (r)->h[i].name - 1 == (nl) &&                                                 \
   strcasecmp((r)->arena.p + (r)->h[i].name, (nm)) == 0)

struct srv_req {
  conn_t *c;
  const char *method;
  int is_head;
  int dispatched; /* handed to the handler (or answered by the server): gets a log line */
  int responded;
  pc_buf_t url;   /* the request target, then split: path NUL query NUL; cap max_url_bytes */
  char *query;    /* into url.p */
  pc_buf_t arena; /* header names and values, NUL-terminated; cap max_header_bytes + NULs */
  hdr_t *h;
  size_t nh, hcap;
  char **merged; /* lazily: merged value per first occurrence of a repeated header */
  int cur;       /* 0 between headers, 1 in a name, 2 in a value */
  uint64_t t0;   /* uv_now at the first byte */
  /* response */
  int status;
  pc_buf_t rh;   /* user headers, "Name: value\r\n"...; cap SRV_RESP_HDR_MAX */
  pc_buf_t logf; /* " key=value" fields; cap SRV_LOGF_MAX */
  int is_file;
  uint64_t pos, end, avail; /* file body: next byte, end, announced end */
  uint64_t src_from;        /* file body with a source (conn.src): its bytes from here on */
  uint64_t body_bytes;      /* body bytes written */
  srv_done_cb done;
  void *done_arg;
  void *data;
  /* last: req_new zeroes what comes before it only */
  _Alignas(max_align_t) unsigned char room[SRV_REQ_ROOM]; /* srv_req_room */
};

struct conn {
  srv_tr_t *tr;      /* the byte stream (owned: closed by conn_close_handles) */
  uv_timer_t timer;  /* lazy: runs until `armed`; what is due is `deadline` (timer_set) */
  uint64_t deadline; /* loop time (ms) the current timeout is due, or 0: none */
  uint64_t armed;    /* when the timer runs out while it is active */
  llhttp_t parser;
  srv_t *s;
  pc_list_t link; /* in srv.conns while open and not closing */
  enum conn_state state;
  char *rbuf;        /* NULL until on_alloc, and again while idle (on_read of nothing) */
  size_t rcap;       /* its size (0 without one): SRV_RBUF_MIN, doubled up to SRV_RBUF when full */
  size_t rlen, rpos; /* bytes in rbuf; bytes of them already parsed */
  int got_bytes;     /* anything read yet (the first byte tells a TLS client apart) */
  size_t linger_bytes;
  uint64_t head_bytes; /* bytes of the current request head so far */
  int in_head;
  enum pause_why why;
  int err_status; /* set by a parser callback that returns HPE_USER */
  unsigned reading : 1, eof : 1, closing : 1, close_after : 1, reject : 1, fs_busy : 1;
  unsigned head_timer : 1; /* a head began in this parse: its timeout is due from now */
  unsigned in_handler : 1; /* inside the handler call of conn_dispatch */
  unsigned wrote_sync : 1; /* the response went out whole there: completed after the call */
  unsigned parsing : 1;    /* inside conn_parse: finish_req leaves the next request to it */
  int ffd;                 /* file being sent, or -1 (owned by the connection; see fs_busy) */
  srv_source_t *src;       /* body source (srv_file_source), or NULL; released like ffd is closed */
  size_t src_len;          /* bytes of the source write in flight (fs_busy) */
  int pending;             /* the timer and the transport, still to be closed before the free */
  char *wbuf;              /* response head (+ memory body) being written */
  size_t wcap;             /* its allocation */
  srv_req_t *req;
  uint64_t progress, last_progress; /* write stall detection */
  size_t last_wqs;
  char peer[64];
  char ip[48];     /* the peer's numeric address ("" when none) */
  unsigned is_tls; /* over a TLS listener */
};

struct srv {
  uv_loop_t *loop;
  srv__parse_fn parse; /* llhttp_execute, or its SSE4.2 build (srv__parser) */
  srv_opts_t o;
  srv_handler_cb cb;
  void *arg;
  srv_tcp_listener_t **ls;
  struct srv_tls **ltls; /* per listener: its TLS configuration, or NULL (plain) */
  int nls;
  unsigned lpending; /* listeners not yet closed (incl. failed ones) */
  pc_list_t conns;   /* conn_t.link: open, not closing */
  unsigned nconns;   /* connections not yet freed */
  unsigned nactive;  /* open, not closing, not rejected */
  int closing;
  srv_closed_cb closed_cb;
  void *closed_arg;
  int draining;           /* srv_drain: no listeners, connections close after their answer */
  srv_closed_cb drain_cb; /* called once when the last connection is gone */
  void *drain_arg;
  srv_stats_t stats;
  srv_finish_cb finish_cb; /* srv_set_finish_cb */
  void *finish_arg;
  /* Reuse instead of malloc/free per request (a warm hit allocates nothing here): finished
   * requests with their buffers, and write buffers, a few per server, not per connection. */
  srv_req_t **spare;
  unsigned nspare, spare_cap;
  struct wspare {
    char *p;
    size_t cap;
  } * wspare;
  unsigned nwspare, wspare_cap;
  srv_accept_cb accept_cb; /* srv_set_accept_filter */
  void *accept_arg;
};

static void conn_parse(conn_t *c);
static void conn_abort(conn_t *c);
static void conn_end(conn_t *c);
static void file_pump(conn_t *c);
static void finish_req(conn_t *c, int status);
static void srv_maybe_free(srv_t *s);

/* ---- small helpers ------------------------------------------------------------------------ */

static const char *reason_phrase(int status)
{
  switch (status) {
  case 200:
    return "OK";
  case 201:
    return "Created";
  case 202:
    return "Accepted";
  case 204:
    return "No Content";
  case 206:
    return "Partial Content";
  case 301:
    return "Moved Permanently";
  case 302:
    return "Found";
  case 304:
    return "Not Modified";
  case 307:
    return "Temporary Redirect";
  case 308:
    return "Permanent Redirect";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 403:
    return "Forbidden";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 409:
    return "Conflict";
  case 413:
    return "Content Too Large";
  case 414:
    return "URI Too Long";
  case 416:
    return "Range Not Satisfiable";
  case 429:
    return "Too Many Requests";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  case 504:
    return "Gateway Timeout";
  case 507:
    return "Insufficient Storage";
  case 508:
    return "Loop Detected";
  default:
    break;
  }
  if (status >= 200 && status < 300)
    return "OK";
  if (status >= 300 && status < 400)
    return "Redirect";
  if (status >= 400 && status < 500)
    return "Client Error";
  return "Server Error";
}

/* ---- requests ----------------------------------------------------------------------------- */

static srv_req_t *req_new(conn_t *c)
{
  srv_t *s = c->s;
  srv_req_t *r;
  if (s->nspare) { /* a finished one: zeroed, but its buffers keep their allocations */
    r = s->spare[--s->nspare];
    pc_buf_t url = r->url, arena = r->arena, rh = r->rh, logf = r->logf;
    hdr_t *h = r->h;
    size_t hcap = r->hcap;
    memset(r, 0, offsetof(srv_req_t, room));
    pc_buf_reset(&url);
    pc_buf_reset(&arena);
    pc_buf_reset(&rh);
    pc_buf_reset(&logf);
    r->url = url, r->arena = arena, r->rh = rh, r->logf = logf;
    r->h = h;
    r->hcap = hcap;
  } else {
    r = pc_xcalloc(1, sizeof(*r));
  }
  r->c = c;
  r->method = "-";
  r->t0 = uv_now(c->s->loop);
  /* empty buffers with their caps (as pc_buf_init makes them; r is zeroed) */
  r->url.max = c->s->o.max_url_bytes;
  r->arena.max = c->s->o.max_header_bytes + 2 * c->s->o.max_headers;
  r->rh.max = SRV_RESP_HDR_MAX;
  r->logf.max = SRV_LOGF_MAX;
  if (!r->url.p)
    (void)pc_buf_add(&r->url, "", 0); /* url.p is a string from the start */
  return r;
}

static void req_free(srv_req_t *r)
{
  if (r->merged) {
    for (size_t i = 0; i < r->nh; i++)
      free(r->merged[i]);
    free(r->merged);
  }
  free(r->h);
  pc_buf_free(&r->url);
  pc_buf_free(&r->arena);
  pc_buf_free(&r->rh);
  pc_buf_free(&r->logf);
  free(r);
}

/* Spares kept: SRV_SPARE, or one per open connection (with many connections, as many requests
 * and write buffers are in flight at once); spares_trim gives back the surplus when they go. */
static unsigned spare_max(const srv_t *s)
{
  return s->nactive > SRV_SPARE ? s->nactive : SRV_SPARE;
}

static void spares_trim(srv_t *s)
{
  unsigned max = s->closing ? 0 : spare_max(s);
  while (s->nspare > max)
    req_free(s->spare[--s->nspare]);
  while (s->nwspare > max)
    free(s->wspare[--s->nwspare].p);
}

/* A finished request: kept for the next one (req_new) when there is room and it is small. */
static void req_release(srv_t *s, srv_req_t *r)
{
  if (s->closing || s->nspare >= spare_max(s) || r->url.cap > SRV_SPARE_BUF_MAX ||
      r->arena.cap > SRV_SPARE_BUF_MAX || r->rh.cap > SRV_SPARE_BUF_MAX ||
      r->logf.cap > SRV_SPARE_BUF_MAX || r->hcap > 64) {
    req_free(r);
    return;
  }
  if (r->merged) {
    for (size_t i = 0; i < r->nh; i++)
      free(r->merged[i]);
    free(r->merged);
    r->merged = NULL;
  }
  if (s->nspare == s->spare_cap) {
    s->spare_cap = s->spare_cap ? s->spare_cap * 2 : SRV_SPARE;
    s->spare = pc_xrealloc(s->spare, s->spare_cap * sizeof(*s->spare));
  }
  s->spare[s->nspare++] = r;
}

/* The connection's write buffer is written: kept for the next response (resp_send). */
static void wbuf_release(conn_t *c)
{
  srv_t *s = c->s;
  if (!c->wbuf)
    return;
  if (!s->closing && s->nwspare < spare_max(s) && c->wcap <= SRV_SPARE_BUF_MAX) {
    if (s->nwspare == s->wspare_cap) {
      s->wspare_cap = s->wspare_cap ? s->wspare_cap * 2 : SRV_SPARE;
      s->wspare = pc_xrealloc(s->wspare, s->wspare_cap * sizeof(*s->wspare));
    }
    s->wspare[s->nwspare].p = c->wbuf;
    s->wspare[s->nwspare].cap = c->wcap;
    s->nwspare++;
  } else {
    free(c->wbuf);
  }
  c->wbuf = NULL;
  c->wcap = 0;
}

/* Append v in decimal (no stdio on the access-log path). */
static void buf_u64(pc_buf_t *b, uint64_t v)
{
  char num[24];
  size_t i = sizeof(num);
  do
    num[--i] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  (void)pc_buf_add(b, num + i, sizeof(num) - i);
}

/* Append v as a log value to the access-log line b (on the stack, cap > max), quoted in place:
 * the whole value or nothing (as log_value, without the copy). */
static void line_value(pc_buf_t *b, const char *v, size_t max)
{
  size_t room = b->max - b->len + 1; /* the content may reach max: the NUL after it fits */
  size_t n = pc_log_quote(b->p + b->len, room, v, max);
  if (n < room)
    b->len += n;
  else
    b->p[b->len] = '\0';
}

/* 1 when answered requests get an access-log line. */
static int access_log_on(const srv_t *s)
{
  return s->o.access_log >= 0 &&
         PC_LOG_INFO <= atomic_load_explicit(&pc_log_level, memory_order_relaxed);
}

static void req_log(srv_req_t *r)
{
  conn_t *c = r->c;
  if (!access_log_on(c->s))
    return; /* not written: not built either */
  /* On the stack: with cap > max the buffer never grows (an append past max is refused), so
   * it is never realloc'd or freed. */
  char line[SRV_LOG_LINE_MAX + 1];
  pc_buf_t b = {.p = line, .cap = sizeof(line), .max = SRV_LOG_LINE_MAX};
  line[0] = '\0';
  (void)pc_buf_adds(&b, "req method=");
  line_value(&b, r->method, 32);
  (void)pc_buf_adds(&b, " path=");
  line_value(&b, r->url.p && r->url.p[0] ? r->url.p : "-", SRV_LOG_PATH_MAX);
  (void)pc_buf_adds(&b, " status=");
  buf_u64(&b, (uint64_t)(r->status < 0 ? 0 : r->status));
  (void)pc_buf_adds(&b, " bytes=");
  buf_u64(&b, r->body_bytes);
  (void)pc_buf_adds(&b, " ms=");
  buf_u64(&b, uv_now(c->s->loop) - r->t0);
  (void)pc_buf_adds(&b, " peer=");
  line_value(&b, c->peer, 64);
  if (c->tr->ops->client) {
    char id[256];
    c->tr->ops->client(c->tr, id, sizeof(id));
    if (id[0]) {
      (void)pc_buf_adds(&b, " tls_subject=");
      line_value(&b, id, sizeof(id));
    }
  }
  (void)pc_buf_add(&b, r->logf.p, r->logf.len);
  /* every part is a constant, a number, a log key or a quoted value: no control character */
  pc_log_str_plain(PC_LOG_INFO, b.p, b.len);
}

/* ---- connections: closing ----------------------------------------------------------------- */

/* One of the connection's two closables (its timer, its transport) is closed. */
static void conn_closed_one(conn_t *c)
{
  if (--c->pending > 0)
    return;
  srv_t *s = c->s;
  if (c->ffd >= 0)
    close(c->ffd);
  if (c->src)
    c->src->ops->release(c->src);
  free(c->rbuf);
  free(c->wbuf);
  free(c);
  s->nconns--;
  if (s->draining && !s->closing && s->nconns == 0 && s->drain_cb) {
    /* Last: the callback may srv_close (and so free) s. */
    srv_closed_cb cb = s->drain_cb;
    s->drain_cb = NULL;
    cb(s->drain_arg);
    return;
  }
  srv_maybe_free(s);
}

static void on_timer_close(uv_handle_t *h)
{
  conn_closed_one(h->data);
}

/* Every op in flight on the transport has completed by now (srv-transport.h). */
static void on_tr_close(srv_tr_t *t)
{
  conn_closed_one(t->data);
}

/* Close the timer and the transport; the free happens in the last close callback. */
static void conn_close_handles(conn_t *c)
{
  c->state = C_CLOSED;
  c->pending = 2;
  uv_close((uv_handle_t *)&c->timer, on_timer_close);
  c->tr->ops->close(c->tr, on_tr_close);
}

static void conn_unlink(conn_t *c)
{
  pc_list_remove(&c->link);
  if (!c->reject) {
    c->s->nactive--;
    spares_trim(c->s);
  }
}

/* Close at once. A request in flight ends with status 0. Idempotent. */
static void conn_abort(conn_t *c)
{
  if (c->closing)
    return;
  c->closing = 1;
  conn_unlink(c);
  uv_timer_stop(&c->timer);
  c->tr->ops->read_stop(c->tr);
  c->reading = 0;
  if (c->req) {
    if (c->req->dispatched)
      finish_req(c, 0); /* returns early: closing is set */
    else {
      req_free(c->req);
      c->req = NULL;
    }
  }
  /* A send_file in flight is cut short by the transport's close, and completes before it. */
  conn_close_handles(c);
}

static void timer_set(conn_t *c, unsigned ms);

static void on_timer(uv_timer_t *t)
{
  conn_t *c = container_of(t, conn_t, timer);
  uint64_t now = uv_now(c->s->loop);
  if (c->deadline == 0)
    return;                /* nothing is due: the timer was left to run out (timer_clear) */
  if (now < c->deadline) { /* the deadline moved on since the timer was started */
    c->armed = c->deadline;
    uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
    return;
  }
  c->deadline = 0;
  switch (c->state) {
  case C_WRITE:
  case C_FILE: {
    size_t wqs = c->tr->ops->write_queue_size(c->tr);
    if (c->progress != c->last_progress || wqs != c->last_wqs) {
      c->last_progress = c->progress;
      c->last_wqs = wqs;
      timer_set(c, c->s->o.write_timeout_ms);
      return;
    }
    pc_log(PC_LOG_NOTICE, "srv-write-stalled peer=%s", c->peer);
    conn_abort(c);
    return;
  }
  default:
    conn_abort(c);
    return;
  }
}

/* The connection's one timeout is due in ms (replacing any). Lazy, as nginx's timers: the libuv
 * timer is only restarted when it would run out after the new deadline (or is not running);
 * one that runs out early is started again for what is left (on_timer). So the timeouts of a
 * keep-alive request (head, write, idle) cost no timer heap operation per request. */
static void timer_set(conn_t *c, unsigned ms)
{
  uint64_t due = uv_now(c->s->loop) + ms;
  c->deadline = due;
  if (!uv_is_active((uv_handle_t *)&c->timer) || c->armed > due) {
    c->armed = due;
    uv_timer_start(&c->timer, on_timer, ms, 0);
  }
}

/* Nothing is due (the timer may still run out: on_timer then does nothing). */
static void timer_clear(conn_t *c)
{
  c->deadline = 0;
}

/* Abort on the next loop turn, not now: srv_respond* and srv_file_avail never run a done
 * callback before they return (callers may still touch the request). */
static void abort_soon(conn_t *c)
{
  c->state = C_HANDLER; /* on_timer aborts in any state but the write states */
  timer_set(c, 0);
}

static void write_timer_arm(conn_t *c)
{
  c->last_progress = c->progress;
  c->last_wqs = c->tr->ops->write_queue_size(c->tr);
  timer_set(c, c->s->o.write_timeout_ms);
}

static void on_linger_read(srv_tr_t *t, ssize_t nread, const uv_buf_t *b)
{
  conn_t *c = t->data;
  if (nread == 0)
    return;
  if (nread < 0) {
    conn_abort(c);
    return;
  }
  c->linger_bytes += (size_t)nread;
  if (c->linger_bytes > SRV_LINGER_MAX)
    conn_abort(c);
}

static void on_alloc(srv_tr_t *t, uv_buf_t *b);
static void read_start(conn_t *c);

static void on_shutdown(srv_tr_t *t, ssize_t status)
{
  conn_t *c = t->data;
  if (c->closing)
    return;
  if (status < 0 || c->eof)
    conn_abort(c);
}

/* After a complete response on a connection that must close: lingering close. */
static void conn_end(conn_t *c)
{
  if (c->closing)
    return;
  if (c->eof) {
    conn_abort(c);
    return;
  }
  c->state = C_LINGER;
  c->tr->ops->read_stop(c->tr);
  if (c->tr->ops->shutdown(c->tr, on_shutdown) != 0 ||
      c->tr->ops->read_start(c->tr, on_alloc, on_linger_read) != 0) {
    conn_abort(c);
    return;
  }
  c->reading = 1;
  timer_set(c, SRV_LINGER_MS);
}

/* ---- responses ---------------------------------------------------------------------------- */

/* The request is over: log it, tell the handler, go on with the next one (or close). */
static void finish_req(conn_t *c, int status)
{
  srv_req_t *r = c->req;
  c->req = NULL;
  if (c->ffd >= 0 && !c->fs_busy) {
    close(c->ffd);
    c->ffd = -1;
  }
  if (c->src && !c->fs_busy) {
    srv_source_t *src = c->src;
    c->src = NULL;
    src->ops->release(src);
  }
  r->status = status ? r->status : 0;
  c->s->stats.requests++;
  c->s->stats.by_class[r->status >= 100 && r->status < 600 ? r->status / 100 : 0]++;
  c->s->stats.body_bytes += r->body_bytes;
  if (c->s->finish_cb)
    c->s->finish_cb(r, r->status, r->body_bytes, c->s->finish_arg);
  req_log(r);
  if (r->done)
    r->done(r, status, r->done_arg);
  req_release(c->s, r);
  if (c->closing)
    return;
  if (c->close_after) {
    conn_end(c);
    return;
  }
  c->state = C_IDLE;
  timer_clear(c);
  llhttp_resume(&c->parser);
  if (!c->parsing) /* else the conn_parse below us goes on with the next request */
    conn_parse(c);
}

/* The response head (and memory body) is written: go on with a file body or finish. */
static void write_done(conn_t *c, ssize_t status)
{
  wbuf_release(c);
  if (c->closing)
    return;
  if (status < 0) {
    conn_abort(c);
    return;
  }
  c->progress++;
  srv_req_t *r = c->req;
  if (!r) { /* a 503 rejection */
    conn_end(c);
    return;
  }
  if (r->is_file && !r->is_head) {
    c->state = C_FILE;
    file_pump(c);
    return;
  }
  finish_req(c, r->status);
}

static void on_write(srv_tr_t *t, ssize_t status)
{
  write_done(t->data, status);
}

static void on_file_sent(srv_tr_t *t, ssize_t res)
{
  conn_t *c = t->data;
  c->fs_busy = 0;
  if (c->closing)
    return;
  srv_req_t *r = c->req;
  if (res > 0) {
    r->pos += (uint64_t)res;
    r->body_bytes += (uint64_t)res;
    c->progress++;
    file_pump(c);
    return;
  }
  if (res == 0)
    pc_log(PC_LOG_WARN, "srv-file-shorter-than-announced peer=%s", c->peer);
  else if (res != UV_EPIPE && res != UV_ECONNRESET)
    pc_log(PC_LOG_WARN, "srv-sendfile-failed err=%s peer=%s", pc_errname((int)res), c->peer);
  conn_abort(c);
}

static void on_src_sent(srv_tr_t *t, ssize_t status)
{
  conn_t *c = t->data;
  c->fs_busy = 0;
  if (c->closing)
    return;
  if (status < 0) {
    conn_abort(c);
    return;
  }
  srv_req_t *r = c->req;
  r->pos += c->src_len;
  r->body_bytes += c->src_len;
  c->progress++;
  c->src->ops->sent(c->src, r->pos);
  file_pump(c);
}

static void file_wait(conn_t *c)
{
  if (c->eof) { /* the client left while we wait for the producer */
    conn_abort(c);
    return;
  }
  c->state = C_FILE_WAIT; /* the producer is behind, not the client: no stall timer */
  timer_clear(c);
}

/* Send the next chunk of a file body (from the file, or from its source past src_from), or
 * wait for srv_file_avail. */
static void file_pump(conn_t *c)
{
  srv_req_t *r = c->req;
  if (r->pos >= r->end) {
    finish_req(c, r->status);
    return;
  }
  if (r->pos >= r->avail) {
    file_wait(c);
    return;
  }
  uint64_t n = r->avail - r->pos;
  if (n > SRV_FILE_CHUNK)
    n = SRV_FILE_CHUNK;
  if (c->src && r->pos >= r->src_from) {
    const char *p = NULL;
    size_t got = c->src->ops->peek(c->src, r->pos, &p);
    if (got == 0) {
      file_wait(c);
      return;
    }
    if (got > n)
      got = (size_t)n;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)got);
    if (c->tr->ops->write(c->tr, &b, 1, on_src_sent) != 0) {
      abort_soon(c);
      return;
    }
    c->src_len = got;
    c->fs_busy = 1;
    if (c->state != C_FILE || !c->deadline) {
      c->state = C_FILE;
      write_timer_arm(c);
    }
    return;
  }
  if (c->src && n > r->src_from - r->pos)
    n = r->src_from - r->pos;
  if (c->tr->ops->send_file(c->tr, c->ffd, r->pos, (size_t)n, on_file_sent) != 0) {
    abort_soon(c);
    return;
  }
  c->fs_busy = 1;
  if (c->state != C_FILE || !c->deadline) {
    c->state = C_FILE;
    write_timer_arm(c);
  }
}

/* RFC 9110 §5.5: a field value is visible characters, obs-text, spaces and tabs; no other
 * control character (CR, LF, NUL, ESC, DEL...) ever goes into a response head. */
static const unsigned char header_bad[256] = {
    [0x01] = 1, [0x02] = 1, [0x03] = 1, [0x04] = 1, [0x05] = 1, [0x06] = 1, [0x07] = 1, [0x08] = 1,
    [0x0a] = 1, [0x0b] = 1, [0x0c] = 1, [0x0d] = 1, [0x0e] = 1, [0x0f] = 1, [0x10] = 1, [0x11] = 1,
    [0x12] = 1, [0x13] = 1, [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, [0x19] = 1,
    [0x1a] = 1, [0x1b] = 1, [0x1c] = 1, [0x1d] = 1, [0x1e] = 1, [0x1f] = 1, [0x7f] = 1,
};

/* The length of s when every character may be in a head, else -1 (a table: it runs over every
 * response header's name and value). */
static ssize_t header_len(const char *s)
{
  size_t n = strlen(s), i = 0;
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  for (; i + 8 <= n; i += 8) { /* 8 at a time: a byte below 0x20 or 0x7f, then by table */
    uint64_t w, d;
    memcpy(&w, s + i, 8);
    d = w ^ (ones * 0x7f);
    if (((w - ones * 0x20) & ~w & highs) | ((d - ones) & ~d & highs))
      break; /* a control character in this word (maybe a tab, which is allowed) */
  }
  unsigned bad = 0;
  for (; i < n; i++)
    bad |= header_bad[(unsigned char)s[i]];
  return bad ? -1 : (ssize_t)n;
}

static int header_ok(const char *s)
{
  return header_len(s) >= 0;
}

/* Queue the response head (and an in-memory body) for the current request. */
static void resp_send(srv_req_t *r, int status, const char *ctype, uint64_t clen, const void *body,
                      size_t blen)
{
  conn_t *c = r->c;
  PC_ASSERT(c->req == r && !r->responded);
  r->responded = 1;
  if (status < 100 || status > 999)
    status = 500;
  r->status = status;
  if (c->closing)
    return;
  /* No cap: the head is bounded by the capped rh, the body is the caller's (copied once). */
  pc_buf_t b = {.max = 0};
  srv_t *s = c->s;
  if (s->nwspare) {
    s->nwspare--;
    b.p = s->wspare[s->nwspare].p;
    b.cap = s->wspare[s->nwspare].cap;
    b.p[0] = '\0';
  }
  char num[24] = "HTTP/1.1 ";
  num[9] = (char)('0' + status / 100), num[10] = (char)('0' + status / 10 % 10);
  num[11] = (char)('0' + status % 10), num[12] = ' ';
  (void)pc_buf_add(&b, num, 13);
  (void)pc_buf_adds(&b, reason_phrase(status));
  (void)pc_buf_add(&b, "\r\n", 2);
  (void)pc_buf_add(&b, r->rh.p, r->rh.len);
  if (ctype && !header_ok(ctype)) { /* the one checked path: no unchecked byte in a head */
    pc_log(PC_LOG_WARN, "srv-response-header-dropped reason=invalid name=Content-Type");
    ctype = NULL;
  }
  if (ctype) {
    (void)pc_buf_adds(&b, "Content-Type: ");
    (void)pc_buf_adds(&b, ctype);
    (void)pc_buf_adds(&b, "\r\n");
  }
  if (status != 204 && status != 304 && status >= 200) {
    size_t i = sizeof(num);
    uint64_t v = clen;
    do
      num[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    (void)pc_buf_add(&b, "Content-Length: ", 16);
    (void)pc_buf_add(&b, num + i, sizeof(num) - i);
    (void)pc_buf_add(&b, "\r\n", 2);
  }
  if (c->close_after)
    (void)pc_buf_adds(&b, "Connection: close\r\n");
  else if (c->parser.http_major == 1 && c->parser.http_minor == 0)
    (void)pc_buf_adds(&b, "Connection: keep-alive\r\n");
  (void)pc_buf_adds(&b, "\r\n");
  if (blen && !r->is_head) {
    (void)pc_buf_add(&b, body, blen);
    r->body_bytes = blen;
  }
  c->wbuf = b.p;
  c->wcap = b.cap;
  uv_buf_t ub = uv_buf_init(b.p, (unsigned)b.len);
  c->state = C_WRITE;
  if (c->in_handler && c->tr->ops->try_write) {
    /* Answered inside the handler (a warm hit): write it now; when the socket takes it all,
     * the request completes as soon as the handler returns (conn_dispatch), without a write
     * request and a loop turn for its callback. What is left goes the usual way. */
    int n = c->tr->ops->try_write(c->tr, &ub, 1);
    if (n == (int)ub.len) {
      c->wrote_sync = 1;
      return;
    }
    if (n > 0) {
      ub.base += n;
      ub.len -= (unsigned)n;
    }
  }
  int rc = c->tr->ops->write(c->tr, &ub, 1, on_write);
  if (rc != 0) {
    wbuf_release(c);
    abort_soon(c);
    return;
  }
  write_timer_arm(c);
}

/* A short plain answer from the server itself (limits, parse errors); closes afterwards. */
static void conn_fail(conn_t *c, int status)
{
  if (!c->req)
    c->req = req_new(c);
  srv_req_t *r = c->req;
  r->dispatched = 1;
  c->close_after = 1;
  timer_clear(c);
  char body[80];
  int n = snprintf(body, sizeof(body), "%d %s\n", status, reason_phrase(status));
  resp_send(r, status, "text/plain", (uint64_t)n, body, (size_t)n);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int limit(conn_t *c, int status)
{
  c->err_status = status;
  llhttp_set_error_reason(&c->parser, status == 414 ? "URL too long" : "header too large");
  return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
  conn_t *c = container_of(p, conn_t, parser);
  c->req = req_new(c);
  c->why = P_BEGIN;
  return HPE_PAUSED;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
  conn_t *c = container_of(p, conn_t, parser);
  srv_req_t *r = c->req;
  if (pc_buf_add(&r->url, at, len) != 0)
    return limit(c, 414);
  return 0;
}

static int arena_add(conn_t *c, const char *at, size_t len)
{
  srv_req_t *r = c->req;
  if (pc_buf_add(&r->arena, at, len) != 0) /* cap: max_header_bytes plus the NULs */
    return limit(c, 431);
  return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
  conn_t *c = container_of(p, conn_t, parser);
  srv_req_t *r = c->req;
  if (r->cur != 1) {
    if (r->nh >= c->s->o.max_headers)
      return limit(c, 431);
    if (r->nh == r->hcap) {
      r->hcap = r->hcap ? r->hcap * 2 : 16;
      r->h = pc_xrealloc(r->h, r->hcap * sizeof(*r->h));
    }
    r->h[r->nh].name = r->arena.len;
    r->h[r->nh].value = 0;
    r->cur = 1;
  }
  return arena_add(c, at, len);
}

static int on_header_field_complete(llhttp_t *p)
{
  conn_t *c = container_of(p, conn_t, parser);
  if (c->req->cur != 1) /* an empty name never reaches here in strict mode; be safe */
    return -1;
  return arena_add(c, "", 1);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
  conn_t *c = container_of(p, conn_t, parser);
  srv_req_t *r = c->req;
  if (r->cur != 2) {
    r->h[r->nh].value = r->arena.len;
    r->cur = 2;
  }
  return arena_add(c, at, len);
}

static int on_header_value_complete(llhttp_t *p)
{
  conn_t *c = container_of(p, conn_t, parser);
  srv_req_t *r = c->req;
  if (r->cur == 1) { /* empty value: on_header_value never ran */
    r->h[r->nh].value = r->arena.len;
    r->cur = 2;
  }
  if (r->cur != 2)
    return -1;
  while (r->arena.len > r->h[r->nh].value &&
         (r->arena.p[r->arena.len - 1] == ' ' || r->arena.p[r->arena.len - 1] == '\t'))
    r->arena.len--;
  int rc = arena_add(c, "", 1);
  r->nh++;
  r->cur = 0;
  return rc;
}

static int on_headers_complete(llhttp_t *p)
{
  conn_t *c = container_of(p, conn_t, parser);
  c->why = P_HEADERS;
  return HPE_PAUSED;
}

#if PC_LLHTTP_SSE42
/* llhttp.c built with -msse4.2 (http/llhttp_sse42.c), its names prefixed. */
int pc_sse42_llhttp__internal_execute(llhttp_t *state, const char *p, const char *endp);

static llhttp_errno_t execute_sse42(llhttp_t *parser, const char *data, size_t len)
{
  /* api.c's llhttp_execute, with the other build's internal execute */
  return (llhttp_errno_t)pc_sse42_llhttp__internal_execute(parser, data, data + len);
}
#endif

srv__parse_fn srv__parser(int which)
{
#if PC_LLHTTP_SSE42
  if (which == SRV_PARSER_SSE42 || (which == SRV_PARSER_BEST && __builtin_cpu_supports("sse4.2")))
    return execute_sse42;
#else
  if (which == SRV_PARSER_SSE42)
    return NULL;
#endif
  return llhttp_execute;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
};

/* The head is complete: check it, fill the request, hand it to the handler. */
static void conn_dispatch(conn_t *c)
{
  srv_t *s = c->s;
  srv_req_t *r = c->req;
  llhttp_t *p = &c->parser;
  c->in_head = 0;
  c->head_timer = 0;
  timer_clear(c);
  r->method = llhttp_method_name((llhttp_method_t)p->method);
  r->is_head = p->method == HTTP_HEAD;
  if (c->head_bytes > s->o.max_header_bytes) {
    conn_fail(c, 431);
    return;
  }
  int has_body = (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length);
  if (has_body && (p->method == HTTP_GET || p->method == HTTP_HEAD)) {
    conn_fail(c, 400);
    return;
  }
  /* RFC 9112 §3.2: an HTTP/1.1 request without a Host header, or with more than one, is a
   * 400 (HTTP/1.0 requests need none). */
  size_t hosts = 0;
  for (size_t i = 0; i < r->nh; i++)
    if (HDR_IS(r, i, "host", 4))
      hosts++;
  if (hosts > 1 || (hosts == 0 && p->http_major == 1 && p->http_minor >= 1)) {
    conn_fail(c, 400);
    return;
  }
  /* p->upgrade is computed after on_headers_complete returns, so look at the flags here */
  int upgrade =
      p->method == HTTP_CONNECT || ((p->flags & F_UPGRADE) && (p->flags & F_CONNECTION_UPGRADE));
  if (has_body || upgrade || !llhttp_should_keep_alive(p))
    c->close_after = 1; /* the body (or another protocol) is never read */
  char *q = memchr(r->url.p, '?', r->url.len);
  if (q) {
    *q = '\0';
    r->query = q + 1;
  } else {
    r->query = r->url.p + r->url.len;
  }
  r->dispatched = 1;
  c->state = C_HANDLER;
  c->in_handler = 1;
  s->cb(r, s->arg);
  c->in_handler = 0;
  /* r may be gone (answered and finished later, or aborted); c lives until its close cb */
  if (c->wrote_sync) { /* written whole inside the call: its write is done now */
    c->wrote_sync = 0;
    if (!c->closing)
      write_done(c, 0);
  }
}

/* Parse buffered bytes while no request is in flight. */
static void conn_parse_buffered(conn_t *c);

static void conn_parse(conn_t *c)
{
  c->parsing = 1;
  conn_parse_buffered(c);
  c->parsing = 0; /* c outlives this: it is freed only from its close callbacks */
}

static void conn_parse_buffered(conn_t *c)
{
  while (!c->closing && (c->state == C_IDLE || c->state == C_HEAD) && c->rpos < c->rlen) {
    const char *p = c->rbuf + c->rpos;
    size_t n = c->rlen - c->rpos;
    c->why = P_NONE;
    c->err_status = 0;
    llhttp_errno_t err = c->s->parse(&c->parser, p, n);
    size_t used = n;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE)
      used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
    if (c->in_head)
      c->head_bytes += used;
    c->rpos += used;
    if (err == HPE_OK) {
      if (c->in_head && c->head_bytes > c->s->o.max_header_bytes)
        conn_fail(c, 431);
      break;
    }
    if (err == HPE_PAUSED && c->why == P_BEGIN) {
      llhttp_resume(&c->parser);
      c->in_head = 1;
      c->head_bytes = 0;
      c->state = C_HEAD;
      c->head_timer = 1; /* armed below if the head is not complete in this parse */
      continue;
    }
    if (err == HPE_PAUSED && c->why == P_HEADERS) {
      conn_dispatch(c);
      continue; /* done already (answered and written inside it): the next one; else out */
    }
    if (err == HPE_PAUSED_UPGRADE || (c->req && c->req->dispatched)) {
      conn_abort(c); /* cannot happen: upgrades close after their response */
      return;
    }
    /* a limit (err_status set by the callback) or a parse error */
    conn_fail(c, c->err_status ? c->err_status : 400);
    break;
  }
  if (c->closing)
    return;
  if (c->rpos == c->rlen)
    c->rpos = c->rlen = 0;
  if (c->state == C_IDLE || c->state == C_HEAD) {
    if (c->eof) {
      conn_abort(c); /* the peer sent all it will; an incomplete head is dropped */
      return;
    }
    if (c->state == C_IDLE)
      timer_set(c, c->s->o.idle_timeout_ms);
    else if (c->head_timer) /* uv_now has not moved since the head began */
      timer_set(c, c->s->o.header_timeout_ms);
    c->head_timer = 0;
    read_start(c);
  }
}

static void on_alloc(srv_tr_t *t, uv_buf_t *b)
{
  conn_t *c = t->data;
  if (!c->rbuf) {
    c->rcap = SRV_RBUF_MIN;
    c->rbuf = pc_xmalloc(c->rcap);
  }
  if (c->state == C_LINGER) {
    *b = uv_buf_init(c->rbuf, (unsigned)c->rcap);
    return;
  }
  if (c->rpos > 0) {
    /* tokens are copied out as they are parsed: moving the unparsed bytes is safe */
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  if (c->rlen == c->rcap && c->rcap < SRV_RBUF) {
    /* full: grow (for the same reason, no pointer into the buffer outlives a parse) */
    c->rcap *= 2;
    c->rbuf = pc_xrealloc(c->rbuf, c->rcap);
  }
  *b = uv_buf_init(c->rbuf + c->rlen, (unsigned)(c->rcap - c->rlen));
}

static void read_stop(conn_t *c)
{
  if (c->reading)
    c->tr->ops->read_stop(c->tr);
  c->reading = 0;
}

static void on_read(srv_tr_t *t, ssize_t nread, const uv_buf_t *b)
{
  conn_t *c = t->data;
  if (nread == 0 && c->rlen == 0 && c->state == C_IDLE) {
    /* Nothing came and nothing is buffered: an idle connection keeps no read buffer (the TLS
     * transport gives the buffer back this way after every record it decrypted). */
    free(c->rbuf);
    c->rbuf = NULL;
    c->rcap = 0;
    return;
  }
  if (nread == 0 || c->closing)
    return;
  if (nread == UV_ENOBUFS) {
    read_stop(c);
    return;
  }
  if (nread == UV_EOF) {
    /* The client will send no more. Waiting for the handler or for a growing file: it is gone
     * (as nginx assumes), abort. Writing: finish this response and the requests already
     * buffered, then close (conn_parse closes on eof once the buffer is exhausted). */
    c->eof = 1;
    read_stop(c);
    if (c->state == C_IDLE || c->state == C_HEAD)
      conn_parse(c);
    else if (c->state == C_HANDLER || c->state == C_FILE_WAIT)
      conn_abort(c);
    return;
  }
  if (nread < 0) {
    conn_abort(c);
    return;
  }
  if (!c->got_bytes) {
    c->got_bytes = 1;
    /* A TLS ClientHello (record type 0x16) on this plain-HTTP port: containers/image tries TLS
     * first on an "insecure" mirror. An HTTP 400 would mean nothing to it; say so in the log
     * and close, and the client falls back to plain HTTP. */
    if ((unsigned char)c->rbuf[c->rlen] == 0x16) {
      pc_log(PC_LOG_INFO,
             "tls-handshake-on-plain-http peer=%s action=closed hint=\"clients fall back to http\"",
             c->peer);
      conn_abort(c);
      return;
    }
  }
  c->rlen += (size_t)nread;
  if (c->state == C_IDLE || c->state == C_HEAD) {
    conn_parse(c);
    if (c->closing)
      return;
  }
  /* A request is in flight and the buffer is full: stop until the response is done. */
  if (c->state != C_IDLE && c->state != C_HEAD && c->state != C_LINGER && c->rlen == c->rcap &&
      c->rcap >= SRV_RBUF)
    read_stop(c);
}

static void read_start(conn_t *c)
{
  if (c->reading || c->eof || c->closing)
    return;
  if (c->tr->ops->read_start(c->tr, on_alloc, on_read) == 0)
    c->reading = 1;
  else
    conn_abort(c);
}

/* ---- accepting ---------------------------------------------------------------------------- */

static const char reject_503[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                                 "Content-Length: 24\r\nConnection: close\r\n\r\n"
                                 "503 Service Unavailable\n";

/* A connection over transport t (owned from here on). */
static conn_t *conn_new(srv_t *s, srv_tr_t *t)
{
  conn_t *c = pc_xcalloc(1, sizeof(*c));
  c->s = s;
  c->tr = t;
  t->data = c;
  c->ffd = -1;
  pc_list_init(&c->link); /* rbuf: allocated by the first on_alloc */
  uv_timer_init(s->loop, &c->timer);
  c->timer.data = c;
  llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
  s->nconns++;
  return c;
}

/* The address part of a peer text ("1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1"; else ""). */
static void peer_ip(const char *peer, char *ip, size_t cap)
{
  const char *b = peer, *e = strrchr(peer, ':');
  if (peer[0] == '[') {
    b = peer + 1;
    e = strchr(b, ']');
  }
  size_t n = e && e > b ? (size_t)(e - b) : 0;
  if (n >= cap)
    n = 0;
  memcpy(ip, b, n);
  ip[n] = '\0';
}

/* The transport is connected: start serving it (or reject it past max_conns). */
static void conn_start(conn_t *c)
{
  srv_t *s = c->s;
  pc_list_push_front(&s->conns, &c->link);
  c->tr->ops->peer(c->tr, c->peer, sizeof(c->peer));
  peer_ip(c->peer, c->ip, sizeof(c->ip));
  if (s->nactive >= s->o.max_conns) {
    c->reject = 1;
    pc_log(PC_LOG_WARN, "srv-max-conns-reached peer=%s max_conns=%u", c->peer, s->o.max_conns);
    uv_buf_t ub = uv_buf_init((char *)reject_503, sizeof(reject_503) - 1);
    c->state = C_WRITE;
    if (c->tr->ops->write(c->tr, &ub, 1, on_write) != 0)
      conn_abort(c);
    else
      write_timer_arm(c);
    return;
  }
  s->nactive++;
  c->state = C_IDLE;
  timer_set(c, s->o.idle_timeout_ms);
  read_start(c);
}

static void on_connection(srv_tcp_listener_t *l, int status, void *arg)
{
  srv_t *s = arg;
  srv_tr_t *t;
  struct srv_tls *tls = NULL;
  int rc = status < 0 ? status : srv_tcp_accept(l, &t);
  for (int i = 0; i < s->nls; i++)
    if (s->ls[i] == l)
      tls = s->ltls[i];
  if (rc == 0 && s->accept_cb) {
    char peer[64], ip[48];
    t->ops->peer(t, peer, sizeof(peer));
    peer_ip(peer, ip, sizeof(ip));
    if (!s->accept_cb(ip, tls != NULL, s->accept_arg)) {
      t->ops->close(t, NULL); /* nothing read: closed before any parsing or handshake */
      return;
    }
  }
  if (rc == 0 && tls)
    rc = srv_tls_wrap(tls, s->loop, t, &t);
  if (rc != 0) {
    pc_log(PC_LOG_WARN, "srv-accept-failed err=%s", pc_errname(rc));
    return;
  }
  conn_t *c = conn_new(s, t);
  c->is_tls = tls != NULL;
  conn_start(c);
}

void srv_set_accept_filter(srv_t *s, srv_accept_cb cb, void *arg)
{
  s->accept_cb = cb;
  s->accept_arg = arg;
}

int srv__adopt_transport(srv_t *s, srv_tr_t *t)
{
  if (s->closing || s->draining) {
    t->ops->close(t, NULL);
    return UV_EINVAL;
  }
  conn_start(conn_new(s, t));
  return 0;
}

int srv__adopt(srv_t *s, int fd)
{
  if (s->closing || s->draining) {
    close(fd);
    return UV_EINVAL;
  }
  srv_tr_t *t;
  int rc = srv_tcp_open(s->loop, fd, &t);
  if (rc != 0)
    return rc;
  return srv__adopt_transport(s, t);
}

/* ---- the server --------------------------------------------------------------------------- */

void srv_set_opts(srv_t *s, const srv_opts_t *opts)
{
  memset(&s->o, 0, sizeof(s->o));
  if (opts)
    s->o = *opts;
  if (!s->o.max_header_bytes)
    s->o.max_header_bytes = 16384;
  if (!s->o.max_url_bytes)
    s->o.max_url_bytes = 8192;
  if (!s->o.max_headers)
    s->o.max_headers = 100;
  if (!s->o.header_timeout_ms)
    s->o.header_timeout_ms = 15000;
  if (!s->o.idle_timeout_ms)
    s->o.idle_timeout_ms = 60000;
  if (!s->o.write_timeout_ms)
    s->o.write_timeout_ms = 120000;
  if (!s->o.max_conns)
    s->o.max_conns = 4096;
}

void srv_set_finish_cb(srv_t *s, srv_finish_cb cb, void *arg)
{
  s->finish_cb = cb;
  s->finish_arg = arg;
}

int srv_new(uv_loop_t *loop, const srv_opts_t *opts, srv_handler_cb cb, void *arg, srv_t **out)
{
  if (!loop || !cb || !out)
    return UV_EINVAL;
  srv_t *s = pc_xcalloc(1, sizeof(*s));
  s->loop = loop;
  s->cb = cb;
  s->arg = arg;
  s->parse = srv__parser(SRV_PARSER_BEST);
  pc_list_init(&s->conns);
  srv_set_opts(s, opts);
  *out = s;
  return 0;
}

static void on_listener_close(void *arg)
{
  srv_t *s = arg;
  s->lpending--;
  srv_maybe_free(s);
}

static int parse_addr(const char *addr, struct sockaddr_storage *ss)
{
  char host[INET6_ADDRSTRLEN + 2];
  const char *colon;
  const char *h = addr;
  size_t hl;
  if (addr[0] == '[') {
    const char *e = strchr(addr, ']');
    if (!e || e[1] != ':')
      return UV_EINVAL;
    h = addr + 1;
    hl = (size_t)(e - h);
    colon = e + 1;
  } else {
    colon = strrchr(addr, ':');
    if (!colon)
      return UV_EINVAL;
    hl = (size_t)(colon - addr);
  }
  if (hl == 0 || hl >= sizeof(host))
    return UV_EINVAL;
  memcpy(host, h, hl);
  host[hl] = '\0';
  uint64_t port;
  if (pc_parse_u64(colon + 1, 65535, &port) != 0)
    return UV_EINVAL;
  if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0)
    return 0;
  if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  return UV_EINVAL;
}

static int listen_on(srv_t *s, const char *addr, struct srv_tls *tls);

int srv_listen(srv_t *s, const char *addr)
{
  return listen_on(s, addr, NULL);
}

int srv_listen_tls(srv_t *s, const char *addr, struct srv_tls *tls)
{
  return tls ? listen_on(s, addr, tls) : UV_EINVAL;
}

static int listen_on(srv_t *s, const char *addr, struct srv_tls *tls)
{
  struct sockaddr_storage ss;
  int rc = s->closing || s->draining || !addr ? UV_EINVAL : parse_addr(addr, &ss);
  if (rc != 0)
    return rc;
  srv_tcp_listener_t *l;
  s->lpending++;
  rc = srv_tcp_listen(s->loop, (struct sockaddr *)&ss, SRV_BACKLOG, on_connection, s, &l);
  if (rc != 0) {
    srv_tcp_listener_close(l, on_listener_close, s);
    return rc;
  }
  s->ls = pc_xrealloc(s->ls, (size_t)(s->nls + 1) * sizeof(*s->ls));
  s->ltls = pc_xrealloc(s->ltls, (size_t)(s->nls + 1) * sizeof(*s->ltls));
  s->ltls[s->nls] = tls;
  s->ls[s->nls++] = l;
  return 0;
}

int srv_port(const srv_t *s, int idx)
{
  if (!s || idx < 0 || idx >= s->nls || s->closing)
    return -1;
  return srv_tcp_listener_port(s->ls[idx]);
}

static void srv_maybe_free(srv_t *s)
{
  if (!s->closing || s->nconns || s->lpending)
    return;
  srv_closed_cb cb = s->closed_cb;
  void *arg = s->closed_arg;
  free(s->ls);
  free(s->ltls);
  spares_trim(s); /* closing: all of them */
  free(s->spare);
  free(s->wspare);
  free(s);
  if (cb)
    cb(arg);
}

void srv_close(srv_t *s, srv_closed_cb cb, void *arg)
{
  if (!s || s->closing)
    return;
  s->closing = 1;
  s->closed_cb = cb;
  s->closed_arg = arg;
  for (int i = 0; i < s->nls; i++)
    srv_tcp_listener_close(s->ls[i], on_listener_close, s);
  s->nls = 0;
  /* Each abort unlinks its connection first, so this ends even if a done callback aborts
   * another connection. nconns keeps s alive until the last close callback. */
  s->nconns++;
  while (!pc_list_empty(&s->conns))
    conn_abort(pc_list_entry(pc_list_first(&s->conns), conn_t, link));
  s->nconns--;
  srv_maybe_free(s);
}

void srv_drain(srv_t *s, srv_closed_cb cb, void *arg)
{
  if (!s || s->closing || s->draining)
    return;
  s->draining = 1;
  s->drain_cb = cb;
  s->drain_arg = arg;
  for (int i = 0; i < s->nls; i++)
    srv_tcp_listener_close(s->ls[i], on_listener_close, s);
  s->nls = 0;
  /* Idle keep-alive connections (and half-received heads) go now; a connection with a request
   * in progress finishes that answer and then closes. */
  pc_list_foreach_safe(it, next, &s->conns)
  {
    conn_t *c = pc_list_entry(it, conn_t, link);
    if (c->state == C_IDLE || c->state == C_HEAD)
      conn_abort(c);
    else
      c->close_after = 1;
  }
  if (s->nconns == 0 && s->drain_cb) {
    s->drain_cb = NULL;
    cb(arg);
  }
}

unsigned srv_conn_count(const srv_t *s)
{
  return s ? s->nconns : 0;
}

void srv_get_stats(const srv_t *s, srv_stats_t *out)
{
  *out = s->stats;
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *srv_req_method(const srv_req_t *r)
{
  return r->method;
}

int srv_req_is_head(const srv_req_t *r)
{
  return r->is_head;
}

const char *srv_req_path(const srv_req_t *r)
{
  return r->url.p;
}

const char *srv_req_query(const srv_req_t *r)
{
  return r->query ? r->query : "";
}

const char *srv_req_header(const srv_req_t *r, const char *name)
{
  srv_req_t *rw = (srv_req_t *)r; /* the merged cache is filled lazily */
  size_t first = r->nh, count = 0, total = 0, nl = strlen(name);
  for (size_t i = 0; i < r->nh; i++) {
    if (HDR_IS(r, i, name, nl)) {
      if (count++ == 0)
        first = i;
      total += strlen(r->arena.p + r->h[i].value) + 2;
    }
  }
  if (count == 0)
    return NULL;
  if (count == 1)
    return r->arena.p + r->h[first].value;
  if (!rw->merged)
    rw->merged = pc_xcalloc(r->nh, sizeof(char *));
  if (!rw->merged[first]) {
    char *m = pc_xmalloc(total + 1);
    size_t len = 0;
    for (size_t i = first; i < r->nh; i++) {
      if (!HDR_IS(r, i, name, nl))
        continue;
      const char *v = r->arena.p + r->h[i].value;
      size_t vl = strlen(v);
      if (len) {
        memcpy(m + len, ", ", 2);
        len += 2;
      }
      memcpy(m + len, v, vl);
      len += vl;
    }
    m[len] = '\0';
    rw->merged[first] = m;
  }
  return rw->merged[first];
}

const char *srv_req_peer(const srv_req_t *r)
{
  return r->c->peer;
}

const char *srv_req_peer_ip(const srv_req_t *r)
{
  return r->c->ip;
}

int srv_req_is_tls(const srv_req_t *r)
{
  return (int)r->c->is_tls;
}

void srv_req_log(srv_req_t *r, const char *key, const char *value)
{
  char k[PC_LOG_KEY_MAX + 1];
  if (!key || !value || !access_log_on(r->c->s))
    return; /* no line is written: its fields are not built either */
  srv__req_log_field(r, k, pc_log_key(k, sizeof(k), key), value);
}

void srv__req_log_field(srv_req_t *r, const char *k, size_t kn, const char *value)
{
  pc_buf_t *b = &r->logf;
  if (!value || !access_log_on(r->c->s))
    return;
  size_t room = b->max - b->len; /* content bytes a field may take */
  if (!kn || kn + 3 > room)
    return;
  /* The value is quoted in place: room for this field (the most its value can quote to, or
   * what is left), so the buffer grows by what the fields need, never to its cap at once. */
  size_t vl = strnlen(value, SRV_LOG_VALUE_MAX + 1);
  size_t want = kn + 2 + PC_LOG_QUOTE_SIZE(vl); /* the field and its NUL */
  if (want > room + 1)
    want = room + 1;
  if (pc_buf_reserve(b, want - 1) != 0)
    return;
  char *o = b->p + b->len;
  o[0] = ' ';
  memcpy(o + 1, k, kn);
  o[1 + kn] = '=';
  size_t vn = pc_log_quote(o + 2 + kn, want - kn - 2, value, SRV_LOG_VALUE_MAX);
  if (vn >= want - kn - 2 || kn + vn + 2 > room) { /* a whole field or none */
    b->p[b->len] = '\0';
    return;
  }
  b->len += kn + vn + 2;
}

void srv_req_on_done(srv_req_t *r, srv_done_cb cb, void *arg)
{
  r->done = cb;
  r->done_arg = arg;
}

void srv_req_set_data(srv_req_t *r, void *data)
{
  r->data = data;
}

void *srv_req_data(const srv_req_t *r)
{
  return r->data;
}

void *srv_req_room(srv_req_t *r)
{
  return r->room;
}

/* ---- responses (API) ---------------------------------------------------------------------- */

/* Append "name: value\r\n" to the response head: a whole header or none. */
static void header_append(srv_req_t *r, const char *name, size_t nl, const char *value, size_t vl)
{
  if (r->rh.len + nl + vl + 4 > r->rh.max) {
    pc_log(PC_LOG_WARN, "srv-response-header-dropped reason=too-large");
    return;
  }
  (void)pc_buf_add(&r->rh, name, nl);
  (void)pc_buf_add(&r->rh, ": ", 2);
  (void)pc_buf_add(&r->rh, value, vl);
  (void)pc_buf_add(&r->rh, "\r\n", 2);
}

void srv_resp_header(srv_req_t *r, const char *name, const char *value)
{
  ssize_t nls = name ? header_len(name) : -1, vls = value ? header_len(value) : -1;
  if (nls <= 0 || vls < 0 || memchr(name, ':', (size_t)nls)) {
    pc_log(PC_LOG_WARN, "srv-response-header-dropped reason=invalid");
    return;
  }
  size_t nl = (size_t)nls, vl = (size_t)vls;
  /* the server's own: compared only at their lengths */
  if ((nl == 14 && strcasecmp(name, "Content-Length") == 0) ||
      (nl == 10 && strcasecmp(name, "Connection") == 0) ||
      (nl == 4 && strcasecmp(name, "Date") == 0) ||
      (nl == 17 && strcasecmp(name, "Transfer-Encoding") == 0))
    return;
  header_append(r, name, nl, value, vl);
}

void srv__resp_header_named(srv_req_t *r, const char *name, size_t nl, const char *value)
{
  ssize_t vls = value ? header_len(value) : -1;
  if (vls < 0) {
    pc_log(PC_LOG_WARN, "srv-response-header-dropped reason=invalid");
    return;
  }
  header_append(r, name, nl, value, (size_t)vls);
}

void srv__resp_header_line(srv_req_t *r, const char *line, size_t len)
{
  if (r->rh.len + len > r->rh.max) { /* a whole header or none */
    pc_log(PC_LOG_WARN, "srv-response-header-dropped reason=too-large");
    return;
  }
  (void)pc_buf_add(&r->rh, line, len);
}

void srv_respond(srv_req_t *r, int status, const char *content_type, const void *body, size_t len)
{
  resp_send(r, status, content_type, len, body, len);
}

void srv_respond_file(srv_req_t *r, int status, const char *content_type, int fd, uint64_t off,
                      uint64_t len, uint64_t avail_end)
{
  conn_t *c = r->c;
  PC_ASSERT(c->ffd < 0 && !c->src);
  if (!r->is_head && !c->closing && len <= SRV_SMALL_FILE && avail_end >= off + len) {
    /* Small and complete (manifests, configs): one read and one write with the head beats two
     * threadpool round trips. RWF_NOWAIT: only from the page cache; a read that would wait for
     * the disk returns EAGAIN and the body takes the threadpool path, so the loop never blocks
     * on a disk. */
    char stack[SRV_SMALL_STACK];
    char *b = len <= sizeof(stack) ? stack : pc_xmalloc((size_t)len);
    size_t got = 0;
    while (got < len) {
      struct iovec iov = {b + got, (size_t)len - got};
      ssize_t n = preadv2(fd, &iov, 1, (off_t)(off + got), RWF_NOWAIT);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      got += (size_t)n;
    }
    if (got == len) {
      close(fd);
      resp_send(r, status, content_type, len, b, (size_t)len);
      if (b != stack)
        free(b);
      return;
    }
    /* Not all in the page cache, short, or failed: take the sendfile path (it reports a short
     * file asynchronously; a done callback never runs inside srv_respond_file). */
    if (b != stack)
      free(b);
  }
  if (r->is_head || c->closing) {
    close(fd);
  } else {
    c->ffd = fd;
    r->is_file = 1;
    r->pos = off;
    r->end = off + len;
    r->avail = avail_end < off ? off : avail_end > r->end ? r->end : avail_end;
  }
  resp_send(r, status, content_type, len, NULL, 0);
}

void srv_file_avail(srv_req_t *r, uint64_t avail_end)
{
  if (!r->is_file)
    return;
  if (avail_end > r->end)
    avail_end = r->end;
  if (avail_end > r->avail)
    r->avail = avail_end;
  if (r->c->state == C_FILE_WAIT && !r->c->closing) {
    r->c->state = C_FILE;
    write_timer_arm(r->c);
    file_pump(r->c);
  }
}

void srv_file_source(srv_req_t *r, uint64_t from, srv_source_t *src)
{
  conn_t *c = r->c;
  if (!r->is_file || c->closing || c->src || from >= r->end) {
    src->ops->release(src);
    return;
  }
  c->src = src;
  r->src_from = from;
}

void srv_respond_source(srv_req_t *r, int status, const char *content_type, srv_source_t *src,
                        uint64_t off, uint64_t len, uint64_t avail_end)
{
  conn_t *c = r->c;
  PC_ASSERT(c->ffd < 0 && !c->src);
  if (r->is_head || c->closing || len == 0) {
    src->ops->release(src);
  } else {
    c->src = src;
    r->is_file = 1;
    r->src_from = off;
    r->pos = off;
    r->end = off + len;
    r->avail = avail_end < off ? off : avail_end > r->end ? r->end : avail_end;
  }
  resp_send(r, status, content_type, len, NULL, 0);
}

void srv_abort(srv_req_t *r)
{
  conn_abort(r->c);
}
