/* http/up — the upstream HTTP client: the fetch/hop machine and the libcurl multi glue (see
 * http/up.h for the contract; http/up-int.h for the structures and the split: authentication
 * is in up_auth.c, pools in up_pool.c).
 *
 * Wiring (curl multi_socket API): curl tells us which sockets to watch (on_curl_socket: one
 * uv_poll_t per socket, attached with curl_multi_assign) and when to call it back
 * (on_curl_timer: the one uv_timer_t of up_t). Readiness and timer expiry go back into
 * curl_multi_socket_action; after each call check_multi_info drains the finished transfers.
 * curl_multi_socket_action is never called from inside a curl callback. The client's own life
 * is enum up__state (OPEN, CLOSING after up_close, TORN_DOWN once the idle handle tore it down;
 * freed when its last uv handle closed).
 *
 * A fetch is a series of hops, one curl transfer each, on the same easy handle. curl does not
 * follow redirects (we do, so a token never crosses hosts) and the header callback classifies
 * each response when its header block ends (f->hop). The states are enum up__fetch_state
 * (up-int.h; the UP__F_ prefix is left out here), every one of them below:
 *
 *   up_fetch_start ──▶ NEW ──(its pool has no slot or rate token free, or a queue)──▶ QUEUED
 *                       │                                                  │ pool dispatch
 *                       ▼                                                  ▼
 *     hop_start ──▶ HEADERS, or ADDING when called inside a curl callback
 *     ADDING ──(the idle handle adds the easy handle to the multi)──▶ HEADERS
 *     HEADERS ──(the header block is complete; a 1xx stays)──▶ BODY (a status line, which
 *             starts a response, always means HEADERS)
 *     BODY ──(the hop is complete: 3xx + Location, at most max_redirects; 401 Basic from the
 *             registry, with userpwd, once; 401 Bearer with a cached token)──▶ hop_start
 *     BODY ──(the hop is complete: 401 Bearer, no usable token)──▶ TOKEN
 *     TOKEN ──(the token fetch got a token)──▶ hop_start
 *     BODY ──(the hop is complete: a 5xx while another URL is left, UP__HOP_NEXT)──▶ the next
 *             URL's first hop (up__failover ──▶ hop_start)
 *     BODY ──(the final response is complete)──▶ DONE
 *     (in BODY, on_data may pause the transfer, UP_DATA_PAUSE: f->paused, not a state; the
 *     stall timer waits; up_fetch_resume unpauses it from the idle handle. A body that got
 *     UP__TURN_BYTES in one call into curl pauses itself the same way, f->yielded, and the
 *     idle handle resumes it on the next loop turn)
 *     HEADERS, BODY ──(a curl callback fails: header block too big, on_headers or on_data
 *             returned an error)──▶ ABORTING (curl stops the transfer; abort_rc is kept)
 *   The one fail path, up__fetch_fail ──▶ DONE, from QUEUED (its start failed, or it waited
 *     queue_wait_ms: PC_E_UPSTREAM_BUSY), ADDING (curl
 *     refused the handle), HEADERS and BODY (transport error, timeout, incomplete header
 *     block, too many or bad redirects, bad token realm), ABORTING (curl ended the transfer:
 *     abort_rc), TOKEN (the token fetch failed). Before on_headers ran and while another URL
 *     is left, a transport error goes instead ──▶ up__failover ──▶ the next URL's first hop.
 *   DONE: on_done runs, then fetch_release ──▶ RELEASED: easy handle freed, timer closed, the
 *     memory freed in the timer's close callback.
 *   up_fetch_cancel, up_close (any state before DONE) ──▶ CANCELLED: no more callbacks; the
 *     release (──▶ RELEASED) happens at once, or from the idle handle when we are inside a
 *     curl callback (curl forbids removing handles there). A queued fetch leaves the queue at
 *     once in any case. A start refused before any callback goes NEW ──▶ CANCELLED ──▶
 *     RELEASED, and up_fetch_start returns the error.
 *
 * The token fetch is a fetch of kind UP__FETCH_TOKEN started by up_auth.c for its parent
 * (same machinery, no auth of its own); its on_done resumes the parent from TOKEN.
 *
 * Timeouts: curl enforces connect_timeout_ms. Each fetch has one uv_timer_t: in QUEUED it is
 * the queue-wait limit (queue_wait_ms, armed by up_pool.c when the fetch is queued); in HEADERS it
 * fires first_byte ms after the request went out (CURLOPT_PREREQFUNCTION; until then it is
 * armed for connect + first_byte as a backstop); in BODY it checks that some bytes arrived in
 * the last stall_timeout_ms and, with min_rate set, that the final body averaged min_rate over
 * each min_rate_window_ms (a tumbling window; a trickle that beats the stall timer ends too).
 *
 * Timings (up_fetch_timings) are uv_hrtime stamps kept in ns: t_created in up_fetch_start,
 * t_begin when the fetch starts (leaves the queue; queue_ns is the difference), t_hop per hop
 * (a hop that ends as a redirect or an answered 401 adds to redirect_ns), t_token around the
 * token fetch; first_byte_ns is set when the final header block ends.
 */
#include "http/up.h"

#include <ctype.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/netaddr.h"
#include "core/num.h"
#include "core/pc.h"
#include "http/up-int.h"

#define UP_HDR_MAX_BYTES (64 * 1024) /* header block of one response */
#define UP_HDR_MAX_COUNT 128
#define UP_LOG_ERR_MAX 256 /* curl's error text in log lines */

/* Forward declarations, in the order things happen. */
static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp);
static int on_curl_timer(CURLM *m, long timeout_ms, void *userp);
static void on_up_timer(uv_timer_t *t);
static void on_poll(uv_poll_t *p, int status, int events);
static int on_curl_prereq(void *arg, char *ip, char *local_ip, int port, int local_port);
static size_t on_curl_header(char *buf, size_t size, size_t n, void *arg);
static size_t on_curl_write(char *buf, size_t size, size_t n, void *arg);

static void check_multi_info(up_t *u);
static void defer_push(struct up_fetch *f);
static void on_hop_done(struct up_fetch *f, CURLcode res);
static void on_idle(uv_idle_t *h);
static void on_fetch_closed(uv_handle_t *h);
static void on_sock_closed(uv_handle_t *h);
static void on_up_handle_closed(uv_handle_t *h);

static int hop_start(struct up_fetch *f, const char *token);
static void egress_note(struct up_fetch *f);
static long first_byte_ms(const struct up_fetch *f);
static void fetch_release(struct up_fetch *f);
static void teardown(up_t *u);

/* ---------------------------------------------------------------------------------------- */
/* Response headers                                                                          */

static void hdrs_reset(struct up_fetch *f)
{
  for (size_t i = 0; i < f->nhdrs; i++) {
    free(f->hdrs[i].name);
    free(f->hdrs[i].value);
  }
  f->nhdrs = 0;
  f->hdr_bytes = 0;
}

const char *up__hdr_get(const up_fetch_t *f, const char *name)
{
  for (size_t i = 0; i < f->nhdrs; i++)
    if (strcasecmp(f->hdrs[i].name, name) == 0)
      return f->hdrs[i].value;
  return NULL;
}

/* Trim spaces and tabs on both sides of [*s, *s + *n). */
static void trim(const char **s, size_t *n)
{
  while (*n && (**s == ' ' || **s == '\t')) {
    (*s)++;
    (*n)--;
  }
  while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
    (*n)--;
}

static int hdr_add(struct up_fetch *f, const char *line, size_t len)
{
  const char *colon = memchr(line, ':', len), *name = line, *val;
  size_t nlen, vlen;

  f->hdr_bytes += len;
  if (f->hdr_bytes > UP_HDR_MAX_BYTES)
    return PC_E_UPSTREAM;
  if ((line[0] == ' ' || line[0] == '\t') && f->nhdrs > 0) {
    /* obs-fold: a continuation of the previous value. */
    struct up__hdr *h = &f->hdrs[f->nhdrs - 1];
    size_t old = strlen(h->value);
    val = line;
    vlen = len;
    trim(&val, &vlen);
    h->value = pc_xrealloc(h->value, old + vlen + 2);
    h->value[old] = ' ';
    memcpy(h->value + old + 1, val, vlen);
    h->value[old + 1 + vlen] = '\0';
    return 0;
  }
  if (!colon)
    return 0; /* not a header; ignored */
  nlen = (size_t)(colon - line);
  trim(&name, &nlen);
  val = colon + 1;
  vlen = len - (size_t)(val - line);
  trim(&val, &vlen);
  if (nlen == 0)
    return 0;
  if (f->nhdrs == UP_HDR_MAX_COUNT)
    return PC_E_UPSTREAM;
  if (f->nhdrs == f->hdrs_cap) {
    f->hdrs_cap = f->hdrs_cap ? 2 * f->hdrs_cap : 16;
    f->hdrs = pc_xrealloc(f->hdrs, f->hdrs_cap * sizeof(*f->hdrs));
  }
  f->hdrs[f->nhdrs].name = pc_xstrndup(name, nlen);
  f->hdrs[f->nhdrs].value = pc_xstrndup(val, vlen);
  f->nhdrs++;
  return 0;
}

static int is_redirect(int status)
{
  return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* Decide what the response whose header block just ended is. */
static enum up__hop classify(struct up_fetch *f)
{
  if (is_redirect(f->status) && up__hdr_get(f, "Location"))
    return UP__HOP_REDIRECT;
  if (f->status >= 500 && f->kind == UP__FETCH_USER && f->cur + 1 < f->nurls)
    return UP__HOP_NEXT;
  if (f->status != 401 || f->kind == UP__FETCH_TOKEN || f->no_auth)
    return UP__HOP_FINAL;
  return up__auth_classify(f);
}

/* Tell the owner how the URL tried now ended (once per URL; user fetches with on_try). */
static void try_note(struct up_fetch *f, int rc, int status)
{
  if (f->on_try && f->kind == UP__FETCH_USER)
    f->on_try(f->try_arg, f->urls[f->cur], f->cur, rc, status);
}

/* Call on_headers once. Returns 0 to go on, or the rc that aborts the transfer (also when the
 * callback cancelled the fetch; then it stays CANCELLED). */
static int deliver_headers(struct up_fetch *f)
{
  int r;
  if (!f->on_headers)
    return 0;
  f->u->in_curl_cb++;
  r = f->on_headers(f, f->status, f->arg);
  f->u->in_curl_cb--;
  if (f->state == UP__F_CANCELLED)
    return PC_E_UPSTREAM;
  return r == 0 ? 0 : r < 0 ? r : PC_E_UPSTREAM;
}

/* ---------------------------------------------------------------------------------------- */
/* curl callbacks                                                                            */

static int on_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
  up_t *u = userp;
  struct up__sock *c = socketp;
  int events = 0;

  if (what == CURL_POLL_REMOVE) {
    if (c) {
      /* curl may close the fd right after we return: stop watching it now. */
      uv_poll_stop(&c->poll);
      curl_multi_assign(u->multi, s, NULL);
      pc_list_remove(&c->link);
      uv_close((uv_handle_t *)&c->poll, on_sock_closed);
    }
    return 0;
  }
  if (!c) {
    c = pc_xcalloc(1, sizeof(*c));
    c->fd = s;
    c->u = u;
    if (uv_poll_init_socket(u->loop, &c->poll, s) != 0) {
      free(c);
      return -1;
    }
    u->handles++;
    pc_list_push_front(&u->socks, &c->link);
    curl_multi_assign(u->multi, s, c);
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  uv_poll_start(&c->poll, events, on_poll);
  return 0;
}

static int on_curl_timer(CURLM *m, long timeout_ms, void *userp)
{
  up_t *u = userp;
  if (timeout_ms < 0)
    uv_timer_stop(&u->timer);
  else
    uv_timer_start(&u->timer, on_up_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static void on_up_timer(uv_timer_t *t)
{
  up_t *u = container_of(t, up_t, timer);
  int running;
  if (u->state != UP__OPEN)
    return;
  u->turn_bytes = 0;
  curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(u);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
  struct up__sock *c = container_of(p, struct up__sock, poll);
  up_t *u = c->u;
  int flags = 0, running;

  if (u->state != UP__OPEN)
    return;
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    if (events & UV_READABLE)
      flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
      flags |= CURL_CSELECT_OUT;
  }
  u->turn_bytes = 0;
  curl_multi_socket_action(u->multi, c->fd, flags, &running);
  check_multi_info(u);
}

/* ---- the redirect policy (see up_req_t.redirect_allow) -------------------------------------- */

/* https -> http is never followed. */
static int redirect_downgrade(const char *from, const char *to)
{
  return strncasecmp(from, "https://", 8) == 0 && strncasecmp(to, "https://", 8) != 0;
}

/* Called with the address a hop connected to (after DNS): the first hop of a user fetch sets
 * the origin class; a later one must be public, of that class, or listed. */
static int redirect_address_refused(struct up_fetch *f, const char *ip)
{
  pc_addr_class_t c = pc_addr_class(ip);
  if (f->origin_cls < 0) {
    f->origin_cls = (int)c;
    return 0;
  }
  if (c == PC_ADDR_PUBLIC || (int)c == f->origin_cls ||
      (f->redirect_allow && pc_cidr_list_match(f->redirect_allow, ip)))
    return 0;
  char q[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];
  pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
  pc_log(PC_LOG_WARN, "upstream-redirect-refused url=%s ip=%s reason=%s-address", q, ip ? ip : "-",
         pc_addr_class_name(c));
  f->refused = "address";
  return 1;
}

/* A new connection for a hop: a later hop's address is checked before anything is sent to it
 * (reused connections are checked in on_curl_prereq). */
static curl_socket_t on_curl_opensocket(void *arg, curlsocktype purpose, struct curl_sockaddr *a)
{
  struct up_fetch *f = arg;
  char ip[INET6_ADDRSTRLEN] = "";
  (void)purpose;
  if (f->origin_cls >= 0) {
    const void *src = NULL;
    if (a->family == AF_INET)
      src = &((const struct sockaddr_in *)(const void *)&a->addr)->sin_addr;
    else if (a->family == AF_INET6)
      src = &((const struct sockaddr_in6 *)(const void *)&a->addr)->sin6_addr;
    if (!src || !inet_ntop(a->family, src, ip, sizeof(ip)) || redirect_address_refused(f, ip))
      return CURL_SOCKET_BAD;
    f->refused = NULL; /* an earlier address of the name was refused, this one is not */
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* The connection is up and the request is about to go: the first-byte clock starts. */
static int on_curl_prereq(void *arg, char *ip, char *local_ip, int port, int local_port)
{
  struct up_fetch *f = arg;
  if (redirect_address_refused(f, ip))
    return CURL_PREREQFUNC_ABORT; /* on_hop_done fails the fetch */
  egress_note(f);
  if (f->state == UP__F_HEADERS)
    uv_timer_start(&f->timer, up__fetch_timer_cb, (uint64_t)first_byte_ms(f), 0);
  return CURL_PREREQFUNC_OK;
}

/* The status code of a status line ("HTTP/1.1 200 OK"), 0 when it has none. */
static int status_code(const char *buf, size_t len)
{
  const char *sp = memchr(buf, ' ', len);
  size_t n = 0;
  uint64_t v;
  if (!sp)
    return 0;
  sp++;
  while (sp + n < buf + len && sp[n] >= '0' && sp[n] <= '9')
    n++;
  return pc_parse_u64_n(sp, n, 999, &v) == 0 ? (int)v : 0;
}

/* One header line (status line, header, or the empty line ending the block). Returns 0, or
 * an rc that aborts the transfer. */
static int header_line(struct up_fetch *f, const char *buf, size_t len)
{
  up_t *u = f->u;
  while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
    len--;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    hdrs_reset(f);
    f->hop = UP__HOP_NONE;
    f->state = UP__F_HEADERS;
    f->status = status_code(buf, len);
    return 0;
  }
  if (f->state != UP__F_HEADERS)
    return 0; /* trailers: ignored */
  if (len > 0)
    return hdr_add(f, buf, len);
  /* The header block ended. */
  if (f->status >= 100 && f->status < 200)
    return 0; /* an interim response; the real one follows */
  f->hop = classify(f);
  f->state = UP__F_BODY;
  f->last_activity = uv_now(u->loop);
  f->rate_t0 = f->last_activity;
  f->rate_bytes = 0;
  uv_timer_start(&f->timer, up__fetch_timer_cb, (uint64_t)u->stall_timeout_ms, 0);
  if (f->hop == UP__HOP_FINAL) {
    if (f->kind == UP__FETCH_USER && !f->delivered) {
      f->delivered = 1;
      try_note(f, 0, f->status);
    }
    f->first_byte_ns = uv_hrtime() - f->t_begin;
    if (f->pool && f->kind == UP__FETCH_USER)
      up__pool_first_byte(f, f->first_byte_ns / 1000);
    return deliver_headers(f);
  }
  return 0;
}

/* A curl callback fails the hop: curl stops the transfer when we return a short count, and
 * on_hop_done fails the fetch with rc. A cancelled fetch stays cancelled. */
static void hop_abort(struct up_fetch *f, int rc)
{
  if (f->state == UP__F_CANCELLED)
    return;
  f->abort_rc = rc;
  f->state = UP__F_ABORTING;
}

/* Only HEADERS and BODY take bytes: ABORTING and CANCELLED refuse them (curl then fails the
 * transfer). */
static int takes_bytes(const struct up_fetch *f)
{
  return f->state == UP__F_HEADERS || f->state == UP__F_BODY;
}

static size_t on_curl_header(char *buf, size_t size, size_t n, void *arg)
{
  struct up_fetch *f = arg;
  size_t len = size * n;
  int rc;
  if (!takes_bytes(f))
    return 0;
  rc = header_line(f, buf, len);
  if (rc != 0)
    hop_abort(f, rc);
  return rc == 0 ? len : 0;
}

static size_t on_curl_write(char *buf, size_t size, size_t n, void *arg)
{
  struct up_fetch *f = arg;
  up_t *u = f->u;
  size_t len = size * n;
  int r;

  if (!takes_bytes(f))
    return 0; /* any count but len fails the transfer (CURLE_WRITE_ERROR) */
  f->last_activity = uv_now(u->loop);
  if (f->state != UP__F_BODY || f->hop != UP__HOP_FINAL)
    return len; /* body of a redirect or a 401: discarded */
  if (f->on_data && u->turn_bytes >= UP__TURN_BYTES) {
    /* This call into curl delivered enough: give the loop a turn (the fill's clients send
     * what was written) and take these bytes again from the idle handle. */
    f->paused = 1;
    f->yielded = 1;
    u->yields++;
    defer_push(f);
    return CURL_WRITEFUNC_PAUSE;
  }
  if (f->on_data) {
    u->in_curl_cb++;
    r = f->on_data(f, buf, len, f->arg);
    u->in_curl_cb--;
    if (f->state == UP__F_CANCELLED)
      return 0;
    if (r < 0) {
      hop_abort(f, r);
      return 0;
    }
    if (r == UP_DATA_PAUSE) {
      /* Not taken: curl keeps the bytes and gives them again once unpaused (on_idle). */
      f->paused = 1;
      return CURL_WRITEFUNC_PAUSE;
    }
  }
  f->rate_bytes += len; /* taken (a paused piece counts when curl gives it again) */
  u->turn_bytes += len;
  if (f->kind == UP__FETCH_USER) {
    u->stats.body_bytes += len;
    if (f->pool)
      f->pool->stats.body_bytes += len;
  }
  return len;
}

/* ---------------------------------------------------------------------------------------- */
/* Fetch life cycle                                                                          */

void up__idle_start(up_t *u)
{
  uv_idle_start(&u->idle, on_idle);
}

/* Have the idle handle look at f (a release, or an add). */
static void defer_push(struct up_fetch *f)
{
  if (pc_list_linked(&f->defer_link))
    return;
  pc_list_push_back(&f->u->defer, &f->defer_link);
  up__idle_start(f->u);
}

static void detach(struct up_fetch *f)
{
  if (f->in_multi) {
    curl_multi_remove_handle(f->u->multi, f->easy);
    f->in_multi = 0;
  }
}

/* The easy handle goes into the multi: now (HEADERS), or from the idle handle (ADDING). */
static int attach(struct up_fetch *f)
{
  up_t *u = f->u;
  if (u->in_curl_cb > 0) {
    /* curl refuses curl_multi_add_handle inside its callbacks. */
    f->state = UP__F_ADDING;
    defer_push(f);
    return 0;
  }
  if (curl_multi_add_handle(u->multi, f->easy) != CURLM_OK)
    return PC_E_INTERNAL;
  f->in_multi = 1;
  f->state = UP__F_HEADERS;
  return 0;
}

#define SETOPT(opt, val)                                                                           \
  do {                                                                                             \
    if (curl_easy_setopt(e, (opt), (val)) != CURLE_OK)                                             \
      goto out;                                                                                    \
  } while (0)

/* The connect timeout of f's current URL: a URL with another after it may have a shorter one. */
static long connect_ms(const struct up_fetch *f)
{
  long ms = f->u->connect_timeout_ms;
  if (f->cur + 1 < f->nurls && f->failover_connect_ms > 0 && f->failover_connect_ms < ms)
    ms = f->failover_connect_ms;
  return ms;
}

/* The first-byte timeout of f's current URL, likewise. */
static long first_byte_ms(const struct up_fetch *f)
{
  long ms = f->u->first_byte_timeout_ms;
  if (f->cur + 1 < f->nurls && f->failover_first_byte_ms > 0 && f->failover_first_byte_ms < ms)
    ms = f->failover_first_byte_ms;
  return ms;
}

/* Set up the easy handle for a hop of f (the header list is built). */
static int hop_setopts(struct up_fetch *f, int basic)
{
  up_t *u = f->u;
  CURL *e = f->easy;
  char range[32];

  curl_easy_reset(e);
  SETOPT(CURLOPT_PRIVATE, (char *)f);
  SETOPT(CURLOPT_URL, f->url);
  SETOPT(CURLOPT_ERRORBUFFER, f->errbuf);
  SETOPT(CURLOPT_NOSIGNAL, 1L);
  SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
  SETOPT(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
  SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
  SETOPT(CURLOPT_BUFFERSIZE, (long)UP__RECV_BUFFER);
  SETOPT(CURLOPT_CONNECTTIMEOUT_MS, connect_ms(f));
  SETOPT(CURLOPT_USERAGENT, u->user_agent);
  SETOPT(CURLOPT_HEADERFUNCTION, on_curl_header);
  SETOPT(CURLOPT_HEADERDATA, f);
  SETOPT(CURLOPT_WRITEFUNCTION, on_curl_write);
  SETOPT(CURLOPT_WRITEDATA, f);
  SETOPT(CURLOPT_PREREQFUNCTION, on_curl_prereq);
  SETOPT(CURLOPT_PREREQDATA, f);
  SETOPT(CURLOPT_OPENSOCKETFUNCTION, on_curl_opensocket);
  SETOPT(CURLOPT_OPENSOCKETDATA, f);
  if (f->slist)
    SETOPT(CURLOPT_HTTPHEADER, f->slist);
  if (f->head)
    SETOPT(CURLOPT_NOBODY, 1L);
  else
    SETOPT(CURLOPT_HTTPGET, 1L);
  if (f->range_from > 0) {
    snprintf(range, sizeof(range), "%" PRIu64 "-", f->range_from);
    SETOPT(CURLOPT_RANGE, range);
  }
  if (f->ca_file)
    SETOPT(CURLOPT_CAINFO, f->ca_file);
  if (basic) {
    /* curl does the base64; with CURLAUTH_BASIC alone it sends it on the first request. */
    SETOPT(CURLOPT_USERPWD, f->userpwd);
    SETOPT(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
  }
  return 0;
out:
  return PC_E_INTERNAL;
}

#undef SETOPT

/* ---- egress: the hosts contacted ---------------------------------------------------------- */

void up_set_egress(up_t *u, up_egress_cb cb, void *arg)
{
  u->egress_cb = cb;
  u->egress_arg = arg;
}

/* Tell the egress callback where this hop goes (after redirects: every hop is told), once per
 * hop: when its connection is up (on_curl_prereq), or when it ended without one (a host that
 * could not be reached is one the firewall must let through) — never for a host the redirect
 * policy refused (it must not be let through). */
static void egress_note(struct up_fetch *f)
{
  if (f->egress_noted || f->refused)
    return;
  f->egress_noted = 1;
  if (f->u->egress_cb)
    f->u->egress_cb(f->u->egress_arg, f->hostkey, f->label);
}

/* Start a hop to f->url. token: Bearer token to send (it belongs to f->hostkey), or NULL to
 * send a cached one if a hint says this repository needs it. Returns 0 (f is ADDING or
 * HEADERS), or an error (f is as it was). */
static int hop_start(struct up_fetch *f, const char *token)
{
  up_t *u = f->u;
  char line[UP__TOKEN_MAX + 64];
  int basic, rc;

  f->t_hop = uv_hrtime();
  hdrs_reset(f);
  f->hop = UP__HOP_NONE;
  f->status = 0;
  curl_slist_free_all(f->slist);
  f->slist = NULL;
  free(f->sent_token);
  f->sent_token = NULL;
  if (up__host_key(f->url, f->hostkey, sizeof(f->hostkey)) != 0)
    return PC_E_UPSTREAM;
  f->egress_noted = 0;
  /* Credentials only to the host that asked for them (a Basic challenge of the registry, or
   * the token realm); a Bearer token to answer a challenge goes instead. */
  basic = !token && f->userpwd && strcmp(f->hostkey, f->basic_host) == 0;
  if (!token && !basic)
    token = up__auth_proactive_token(f);
  if (f->accept) {
    snprintf(line, sizeof(line), "Accept: %s", f->accept);
    f->slist = curl_slist_append(f->slist, line);
    PC_ASSERT(f->slist);
  }
  if (f->via) {
    snprintf(line, sizeof(line), "Via: %s", f->via);
    f->slist = curl_slist_append(f->slist, line);
    PC_ASSERT(f->slist);
  }
  if (token) {
    snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
    f->slist = curl_slist_append(f->slist, line);
    PC_ASSERT(f->slist);
    f->sent_token = pc_xstrdup(token);
  }
  rc = hop_setopts(f, basic);
  if (rc == 0)
    rc = attach(f);
  if (rc)
    return rc;
  u->stats.requests++;
  if (f->pool)
    f->pool->stats.requests++;
  if (f->kind == UP__FETCH_USER)
    f->hops++;
  f->last_activity = uv_now(u->loop);
  uv_timer_start(&f->timer, up__fetch_timer_cb,
                 (uint64_t)connect_ms(f) + (uint64_t)first_byte_ms(f), 0);
  return 0;
}

void up__hop_next(up_fetch_t *f, const char *token)
{
  int rc = hop_start(f, token);
  if (rc)
    up__fetch_fail(f, rc, 0);
}

static int map_curl_error(CURLcode res)
{
  switch (res) {
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return PC_E_UPSTREAM_UNAVAILABLE;
  case CURLE_OPERATION_TIMEDOUT:
    return PC_E_UPSTREAM_TIMEOUT;
  default:
    return PC_E_UPSTREAM;
  }
}

void up__fetch_timer_cb(uv_timer_t *t)
{
  struct up_fetch *f = container_of(t, struct up_fetch, timer);
  up_t *u = f->u;
  uint64_t now = uv_now(u->loop), stall = (uint64_t)u->stall_timeout_ms;
  char q[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];

  if (u->state == UP__OPEN && f->state == UP__F_QUEUED) {
    pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_WARN, "upstream-queue-timeout url=%s waited_ms=%" PRIu64, q, u->queue_wait_ms);
    f->pool->stats.queue_timeouts++;
    up__pool_unqueue(f);      /* out of the queue before on_done runs */
    f->t_begin = uv_hrtime(); /* timings: all of it was queue time */
    up__fetch_fail(f, PC_E_UPSTREAM_BUSY, 0);
    return;
  }
  if (u->state != UP__OPEN ||
      (f->state != UP__F_ADDING && f->state != UP__F_HEADERS && f->state != UP__F_BODY))
    return;
  if (f->state == UP__F_BODY && f->paused) {
    uv_timer_start(&f->timer, up__fetch_timer_cb, stall, 0); /* our consumer waits, not the peer */
    return;
  }
  if (f->state == UP__F_BODY && now - f->last_activity < stall) {
    uint64_t next = stall - (now - f->last_activity);
    if (u->min_rate && f->hop == UP__HOP_FINAL) {
      uint64_t win = u->min_rate_window_ms, age = now - f->rate_t0;
      if (age >= win) {
        /* bytes in the window against min_rate * window (no overflow: both are capped) */
        if (f->rate_bytes * 1000 < u->min_rate * age) {
          pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
          pc_log(PC_LOG_WARN,
                 "upstream-too-slow url=%s bytes=%" PRIu64 " ms=%" PRIu64 " min_rate=%" PRIu64, q,
                 f->rate_bytes, age, u->min_rate);
          if (f->pool && f->kind == UP__FETCH_USER)
            f->pool->stats.too_slow++;
          up__fetch_fail(f, PC_E_UPSTREAM_TIMEOUT, f->status);
          return;
        }
        f->rate_t0 = now;
        f->rate_bytes = 0;
        age = 0;
      }
      if (win - age < next)
        next = win - age;
    }
    uv_timer_start(&f->timer, up__fetch_timer_cb, next ? next : 1, 0);
    return;
  }
  pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
  pc_log(PC_LOG_INFO, "upstream-timeout url=%s phase=%s", q,
         f->state == UP__F_BODY ? "body" : "headers");
  up__fetch_fail(f, PC_E_UPSTREAM_TIMEOUT, f->hop == UP__HOP_FINAL ? f->status : 0);
}

static void check_multi_info(up_t *u)
{
  for (;;) {
    int left;
    CURLMsg *m;
    char *priv = NULL;
    struct up_fetch *f;
    CURLcode res;

    if (u->state != UP__OPEN)
      break;
    m = curl_multi_info_read(u->multi, &left);
    if (!m)
      break;
    if (m->msg != CURLMSG_DONE)
      continue;
    res = m->data.result;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
    f = (struct up_fetch *)priv;
    /* The message dies with the remove: res is copied above. */
    detach(f);
    on_hop_done(f, res);
  }
}

static void follow_redirect(struct up_fetch *f)
{
  char *loc = NULL;
  char key[UP__HOSTKEY_MAX];
  char q[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];

  if (f->redirects >= f->u->max_redirects) {
    pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-too-many-redirects url=%s max=%d", q, f->u->max_redirects);
    up__fetch_fail(f, PC_E_UPSTREAM, f->status);
    return;
  }
  /* curl resolves a relative Location against the current URL for us. */
  curl_easy_getinfo(f->easy, CURLINFO_REDIRECT_URL, &loc);
  if (!loc || up__host_key(loc, key, sizeof(key)) != 0) {
    pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_INFO, "upstream-bad-redirect url=%s", q);
    up__fetch_fail(f, PC_E_UPSTREAM, f->status);
    return;
  }
  if (redirect_downgrade(f->url, loc)) {
    pc_log_quote(q, sizeof(q), f->url, UP__LOG_URL_MAX);
    pc_log(PC_LOG_WARN, "upstream-redirect-refused url=%s reason=https-to-http", q);
    up__fetch_fail(f, PC_E_UPSTREAM, f->status);
    return;
  }
  if (strcmp(key, f->hostkey) != 0)
    f->fresh_auth = 0; /* a new host may challenge on its own */
  loc = pc_xstrdup(loc);
  free(f->url);
  f->url = loc;
  f->redirects++;
  up__hop_next(f, NULL);
}

static void fetch_end(struct up_fetch *f, int rc, int status);

/* The hop's transfer ended (the easy handle is out of the multi). */
static void on_hop_done(struct up_fetch *f, CURLcode res)
{
  uv_timer_stop(&f->timer);
  if (f->state == UP__F_CANCELLED) {
    fetch_release(f);
    return;
  }
  egress_note(f); /* a hop that never got a connection (refused by the policy: not told) */
  if (f->state == UP__F_ABORTING) {
    up__fetch_fail(f, f->abort_rc, f->status);
    return;
  }
  if (res != CURLE_OK && f->refused) {
    up__fetch_fail(f, PC_E_UPSTREAM, 0); /* logged by the policy */
    return;
  }
  if (res != CURLE_OK) {
    char qu[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)], qe[PC_LOG_QUOTE_SIZE(UP_LOG_ERR_MAX)];
    pc_log_quote(qu, sizeof(qu), f->url, UP__LOG_URL_MAX);
    pc_log_quote(qe, sizeof(qe), f->errbuf[0] ? f->errbuf : curl_easy_strerror(res),
                 UP_LOG_ERR_MAX);
    pc_log(PC_LOG_INFO, "upstream-transfer-failed url=%s curl=%d err=%s", qu, (int)res, qe);
    up__fetch_fail(f, map_curl_error(res), f->hop == UP__HOP_FINAL ? f->status : 0);
    return;
  }
  if (f->state != UP__F_BODY) {
    /* The transfer ended without a complete header block. */
    up__fetch_fail(f, PC_E_UPSTREAM, 0);
    return;
  }
  if (f->hop != UP__HOP_FINAL)
    f->redirect_ns += uv_hrtime() - f->t_hop;
  switch (f->hop) {
  case UP__HOP_FINAL:
    fetch_end(f, 0, f->status);
    return;
  case UP__HOP_REDIRECT:
    follow_redirect(f);
    return;
  case UP__HOP_AUTH:
    up__auth_answer(f);
    return;
  case UP__HOP_BASIC:
    up__auth_basic(f);
    return;
  case UP__HOP_NEXT:
    if (!up__failover(f, 0, f->status))
      fetch_end(f, 0, f->status); /* not reached: NEXT means another URL is left */
    return;
  case UP__HOP_NONE:
  default:
    up__fetch_fail(f, PC_E_UPSTREAM, 0); /* not reached: BODY always has a hop kind */
    return;
  }
}

/* The fetch ends (DONE): on_done, then the release. */
static void fetch_end(struct up_fetch *f, int rc, int status)
{
  detach(f);
  uv_timer_stop(&f->timer);
  f->state = UP__F_DONE;
  f->last_byte_ns = uv_hrtime() - f->t_begin;
  f->on_done(f, rc, status, f->arg);
  fetch_release(f);
}

/* f gives up on its current URL (rc < 0: a transport error; rc 0: status is a 5xx) and starts
 * again from the next one: 1 when it moved on (its next hop started, or failed and the fail path
 * took over), 0 when it cannot (a token fetch, headers given to the user already, no URL left,
 * or an rc that is ours rather than the network's). Never from inside a curl callback. */
int up__failover(up_fetch_t *f, int rc, int status)
{
  char qa[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)], qb[PC_LOG_QUOTE_SIZE(UP__LOG_URL_MAX)];
  if (f->kind != UP__FETCH_USER || f->delivered || f->cur + 1 >= f->nurls ||
      f->state == UP__F_CANCELLED)
    return 0;
  if (rc < 0 && rc != PC_E_UPSTREAM_TIMEOUT && rc != PC_E_UPSTREAM_UNAVAILABLE &&
      rc != PC_E_UPSTREAM)
    return 0;
  try_note(f, rc, status);
  if (f->child) {
    up_fetch_cancel(f->child);
    f->child = NULL;
  }
  detach(f);
  uv_timer_stop(&f->timer);
  pc_log_quote(qa, sizeof(qa), f->urls[f->cur], UP__LOG_URL_MAX);
  pc_log_quote(qb, sizeof(qb), f->urls[f->cur + 1], UP__LOG_URL_MAX);
  pc_log(PC_LOG_INFO, "upstream-failover url=%s next=%s rc=%s status=%d", qa, qb,
         rc < 0 ? pc_errname(rc) : "-", status);
  f->cur++;
  free(f->url);
  f->url = pc_xstrdup(f->urls[f->cur]);
  /* A new first hop: nothing learnt on the other URL's hosts applies. */
  f->redirects = 0;
  f->fresh_auth = 0;
  f->basic_host[0] = '\0';
  f->origin_cls = -1;
  f->refused = NULL;
  if (up__host_key(f->url, f->origin, sizeof(f->origin)) != 0)
    f->origin[0] = '\0';
  if (f->cur + 1 == f->nurls && f->later_userpwd) {
    up__auth_set_cred(f, f->later_userpwd);
    explicit_bzero(f->later_userpwd, strlen(f->later_userpwd));
    free(f->later_userpwd);
    f->later_userpwd = NULL;
  }
  up__hop_next(f, NULL);
  return 1;
}

void up__fetch_fail(up_fetch_t *f, int rc, int status)
{
  up_t *u = f->u;
  PC_ASSERT(rc < 0 && f->state != UP__F_DONE && f->state != UP__F_RELEASED);
  if (f->state == UP__F_CANCELLED) {
    /* No callback for a cancelled fetch (and no error counted). */
    detach(f);
    fetch_release(f);
    return;
  }
  if (up__failover(f, rc, status))
    return;
  if (f->kind == UP__FETCH_USER && !f->delivered) {
    f->delivered = 1; /* this URL's outcome is told once */
    try_note(f, rc, status);
  }
  if (f->kind == UP__FETCH_USER) {
    u->stats.errors++;
    if (f->pool && rc == PC_E_UPSTREAM_TIMEOUT)
      f->pool->stats.errors_timeout++;
    else if (f->pool && rc == PC_E_UPSTREAM_UNAVAILABLE)
      f->pool->stats.errors_unavailable++;
    else if (f->pool)
      f->pool->stats.errors_other++;
  }
  fetch_end(f, rc, status);
}

/* Free everything but the memory of f, which goes in the timer's close callback. Never from
 * inside a curl callback (it removes the easy handle). */
static void fetch_release(struct up_fetch *f)
{
  if (f->state == UP__F_RELEASED)
    return;
  f->state = UP__F_RELEASED;
  if (f->child) {
    up_fetch_cancel(f->child);
    f->child = NULL;
  }
  up__pool_leave(f);
  detach(f);
  pc_list_remove(&f->defer_link);
  pc_list_remove(&f->link);
  curl_easy_cleanup(f->easy);
  f->easy = NULL;
  curl_slist_free_all(f->slist);
  f->slist = NULL;
  hdrs_reset(f);
  free(f->hdrs);
  f->hdrs = NULL;
  up__challenge_free(&f->chal);
  uv_timer_stop(&f->timer);
  uv_close((uv_handle_t *)&f->timer, on_fetch_closed);
}

static void maybe_free(up_t *u)
{
  void (*cb)(void *);
  void *arg;
  if (u->state != UP__TORN_DOWN || u->handles > 0)
    return;
  cb = u->close_cb;
  arg = u->close_arg;
  free(u->user_agent);
  free(u);
  curl_global_cleanup();
  if (cb)
    cb(arg);
}

static void on_fetch_closed(uv_handle_t *h)
{
  struct up_fetch *f = container_of((uv_timer_t *)h, struct up_fetch, timer);
  up_t *u = f->u;
  free(f->label);
  free(f->url);
  for (unsigned i = 0; i < f->nurls; i++)
    free(f->urls[i]);
  free(f->urls);
  free(f->via);
  free(f->accept);
  free(f->ca_file);
  free(f->redirect_allow);
  if (f->userpwd) {
    explicit_bzero(f->userpwd, strlen(f->userpwd));
    free(f->userpwd);
  }
  if (f->later_userpwd) {
    explicit_bzero(f->later_userpwd, strlen(f->later_userpwd));
    free(f->later_userpwd);
  }
  free(f->sent_token);
  pc_buf_free(&f->body);
  free(f);
  u->handles--;
  maybe_free(u);
}

static void on_sock_closed(uv_handle_t *h)
{
  struct up__sock *c = container_of((uv_poll_t *)h, struct up__sock, poll);
  up_t *u = c->u;
  free(c);
  u->handles--;
  maybe_free(u);
}

static void on_up_handle_closed(uv_handle_t *h)
{
  up_t *u = h->data;
  u->handles--;
  maybe_free(u);
}

/* Deferred work, run from the loop where no curl callback is on the stack. */
static void on_idle(uv_idle_t *h)
{
  up_t *u = container_of(h, up_t, idle);
  pc_list_t *l;

  while ((l = pc_list_first(&u->defer))) {
    struct up_fetch *f = pc_list_entry(l, struct up_fetch, defer_link);
    pc_list_remove(l);
    if (f->state == UP__F_CANCELLED) {
      fetch_release(f);
    } else if (f->state == UP__F_ADDING) {
      if (curl_multi_add_handle(u->multi, f->easy) != CURLM_OK) {
        up__fetch_fail(f, PC_E_INTERNAL, 0);
        continue;
      }
      f->in_multi = 1;
      f->state = UP__F_HEADERS;
    } else if ((f->resume || f->yielded) && f->state == UP__F_BODY) {
      /* Unpausing delivers the held bytes at once: on_curl_write runs inside this call. */
      if (f->resume) {
        f->rate_t0 = uv_now(u->loop); /* a pause is our reader's, not the peer's: a new window */
        f->rate_bytes = 0;
      }
      f->resume = 0;
      f->yielded = 0;
      f->paused = 0;
      u->turn_bytes = 0;
      f->last_activity = uv_now(u->loop);
      u->in_curl_cb++;
      curl_easy_pause(f->easy, CURLPAUSE_CONT);
      u->in_curl_cb--;
    }
  }
  if (u->kick_pending && u->state == UP__OPEN)
    up__pool_run_kicks(u);
  if (u->state == UP__CLOSING)
    teardown(u);
  else if (pc_list_empty(&u->defer) && !u->kick_pending)
    uv_idle_stop(&u->idle);
}

static void teardown(up_t *u)
{
  pc_list_t *l;
  u->state = UP__TORN_DOWN;
  uv_idle_stop(&u->idle);
  while ((l = pc_list_first(&u->fetches))) {
    struct up_fetch *f = pc_list_entry(l, struct up_fetch, link);
    f->state = UP__F_CANCELLED;
    fetch_release(f);
  }
  /* Closing the cached connections reports their sockets with CURL_POLL_REMOVE. */
  curl_multi_cleanup(u->multi);
  u->multi = NULL;
  while ((l = pc_list_first(&u->socks))) {
    struct up__sock *c = pc_list_entry(l, struct up__sock, link);
    pc_list_remove(l);
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, on_sock_closed);
  }
  up__auth_free_cache(u);
  /* Every fetch let go of its pool above; what is left belongs to owners. */
  up__pool_free_all(u);
  uv_close((uv_handle_t *)&u->timer, on_up_handle_closed);
  uv_close((uv_handle_t *)&u->idle, on_up_handle_closed);
  uv_close((uv_handle_t *)&u->pool_timer, on_up_handle_closed);
}

/* A queued fetch starts. From the loop only (it may call on_done when curl refuses it). */
void up__fetch_begin(up_fetch_t *f)
{
  f->t_begin = uv_hrtime();
  f->queue_ns = f->t_begin - f->t_created;
  f->pool->stats.fetches++;
  up__hop_next(f, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* API                                                                                       */

void up_set_opts(up_t *u, const up_opts_t *opts)
{
  u->connect_timeout_ms = opts && opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 10000;
  u->first_byte_timeout_ms =
      opts && opts->first_byte_timeout_ms > 0 ? opts->first_byte_timeout_ms : 30000;
  u->stall_timeout_ms = opts && opts->stall_timeout_ms > 0 ? opts->stall_timeout_ms : 30000;
  u->max_redirects = opts && opts->max_redirects > 0 ? opts->max_redirects : 10;
  u->min_rate = opts ? opts->min_rate : 0;
  if (u->min_rate > (1ULL << 34))
    u->min_rate = 1ULL << 34; /* 16 GiB/s: keeps min_rate * window inside 64 bits */
  u->min_rate_window_ms =
      opts && opts->min_rate_window_ms > 0 ? (uint64_t)opts->min_rate_window_ms : 30000;
  if (u->min_rate_window_ms > 24ULL * 3600 * 1000)
    u->min_rate_window_ms = 24ULL * 3600 * 1000;
  u->queue_wait_ms = opts && opts->queue_wait_ms > 0 ? (uint64_t)opts->queue_wait_ms : 0;
}

/* u's multi handle, wired to the socket and timer callbacks. 0 or PC_E_INTERNAL. */
static int multi_new(up_t *u)
{
  u->multi = curl_multi_init();
  if (!u->multi)
    return PC_E_INTERNAL;
  if (curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u) != CURLM_OK ||
      curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 64L) != CURLM_OK)
    return PC_E_INTERNAL;
  return 0;
}

int up_new(uv_loop_t *loop, const up_opts_t *opts, up_t **out)
{
  int rc = PC_E_INTERNAL;
  up_t *u = NULL;
  int curl_inited = 0;

  *out = NULL;
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    goto out;
  curl_inited = 1;
  u = pc_xcalloc(1, sizeof(*u));
  u->loop = loop;
  pc_list_init(&u->fetches);
  pc_list_init(&u->defer);
  pc_list_init(&u->socks);
  pc_list_init(&u->tokens);
  pc_list_init(&u->hints);
  pc_list_init(&u->pools);
  up_set_opts(u, opts);
  u->user_agent = pc_xstrdup(opts && opts->user_agent ? opts->user_agent : "pullcache/0.1");
  if (strpbrk(u->user_agent, "\r\n")) {
    rc = UV_EINVAL;
    goto out;
  }
  if (multi_new(u) != 0)
    goto out;
  rc = uv_timer_init(loop, &u->timer);
  if (rc)
    goto out;
  rc = uv_idle_init(loop, &u->idle);
  PC_ASSERT(rc == 0); /* cannot fail once the timer could be made */
  rc = uv_timer_init(loop, &u->pool_timer);
  PC_ASSERT(rc == 0);
  u->timer.data = u;
  u->idle.data = u;
  u->pool_timer.data = u;
  u->handles = 3;
  *out = u;
  rc = 0;
out:
  if (rc) {
    if (u) {
      if (u->multi)
        curl_multi_cleanup(u->multi);
      free(u->user_agent);
      free(u);
    }
    if (curl_inited)
      curl_global_cleanup();
  }
  return rc;
}

void up_close(up_t *u, void (*cb)(void *arg), void *arg)
{
  if (!u || u->state != UP__OPEN)
    return;
  u->state = UP__CLOSING;
  u->close_cb = cb;
  u->close_arg = arg;
  pc_list_foreach(it, &u->fetches)
  {
    struct up_fetch *f = pc_list_entry(it, struct up_fetch, link);
    if (f->state != UP__F_DONE)
      f->state = UP__F_CANCELLED;
    uv_timer_stop(&f->timer);
  }
  /* The teardown runs from the idle handle, out of any curl or up callback. */
  up__idle_start(u);
}

void up_get_stats(const up_t *u, up_stats_t *out)
{
  *out = u->stats;
}

static int valid_header_value(const char *s)
{
  return !s || !strpbrk(s, "\r\n");
}

/* A new fetch of r (checked), in state NEW, on u->fetches. */
static struct up_fetch *fetch_new(up_t *u, const up_req_t *r, up_fetch_t *parent, int head,
                                  const char *key, int *rc)
{
  struct up_fetch *f = pc_xcalloc(1, sizeof(*f));
  f->u = u;
  f->easy = curl_easy_init();
  if (!f->easy) {
    free(f);
    *rc = UV_ENOMEM;
    return NULL;
  }
  *rc = uv_timer_init(u->loop, &f->timer);
  if (*rc) {
    curl_easy_cleanup(f->easy);
    free(f);
    return NULL;
  }
  u->handles++;
  f->kind = parent ? UP__FETCH_TOKEN : UP__FETCH_USER;
  f->state = UP__F_NEW;
  pc_list_init(&f->defer_link);
  pc_list_init(&f->qlink);
  f->head = head;
  f->url = pc_xstrdup(r->url);
  f->nurls = 1 + (parent ? 0 : r->nmore);
  f->urls = pc_xcalloc(f->nurls, sizeof(*f->urls));
  f->urls[0] = pc_xstrdup(r->url);
  for (unsigned i = 1; i < f->nurls; i++)
    f->urls[i] = pc_xstrdup(r->more_urls[i - 1]);
  f->failover_connect_ms = r->failover_connect_ms;
  f->failover_first_byte_ms = r->failover_first_byte_ms;
  if (!parent) {
    f->on_try = r->on_try;
    f->try_arg = r->try_arg;
  }
  {
    const char *via = parent ? NULL : r->via;
    f->via = via && *via ? pc_xstrdup(via) : NULL;
  }
  if (r->label)
    f->label = pc_xstrdup(r->label);
  else if (parent && parent->label)
    f->label = pc_xstrdup(parent->label);
  f->accept = r->accept ? pc_xstrdup(r->accept) : NULL;
  f->range_from = r->range_from;
  f->ca_file = r->ca_file ? pc_xstrdup(r->ca_file) : NULL;
  /* A token fetch is a later hop of its parent: the parent's origin class and list apply. */
  f->origin_cls = parent ? parent->origin_cls : -1;
  {
    const char *ra = parent ? parent->redirect_allow : r->redirect_allow;
    f->redirect_allow = ra && *ra ? pc_xstrdup(ra) : NULL;
  }
  f->no_auth = r->no_auth != 0;
  memcpy(f->origin, key, sizeof(f->origin));
  if (r->userpwd && *r->userpwd && !f->no_auth) {
    if (f->nurls > 1)
      f->later_userpwd = pc_xstrdup(r->userpwd); /* for the last URL only */
    else
      up__auth_set_cred(f, r->userpwd);
  }
  f->on_headers = r->on_headers;
  f->on_data = r->on_data;
  f->on_done = r->on_done;
  f->arg = r->arg;
  if (f->kind == UP__FETCH_TOKEN) {
    pc_buf_init(&f->body, UP__TOKEN_BODY_MAX);
    if (f->userpwd)
      memcpy(f->basic_host, key, sizeof(f->basic_host)); /* the realm */
  }
  pc_list_push_front(&u->fetches, &f->link);
  f->t_created = uv_hrtime();
  if (r->pool)
    up__pool_join(r->pool, f);
  return f;
}

int up__fetch_start(up_t *u, const up_req_t *r, up_fetch_t *parent, up_fetch_t **out)
{
  char key[UP__HOSTKEY_MAX];
  struct up_fetch *f;
  struct up_pool *p;
  int rc, head;

  if (out)
    *out = NULL;
  if (!u || !r || !r->url || !r->on_done || !r->method)
    return UV_EINVAL;
  if (u->state != UP__OPEN)
    return UV_ECANCELED;
  p = r->pool;
  /* A token fetch may still use a released pool: its parent keeps it alive. */
  if (p && (p->u != u || (p->released && !parent)))
    return UV_EINVAL;
  if (strcasecmp(r->method, "GET") == 0)
    head = 0;
  else if (strcasecmp(r->method, "HEAD") == 0)
    head = 1;
  else
    return UV_EINVAL;
  if (!valid_header_value(r->accept) || !valid_header_value(r->via) ||
      up__host_key(r->url, key, sizeof(key)) != 0 || (r->nmore && !r->more_urls))
    return UV_EINVAL;
  for (unsigned i = 0; !parent && i < r->nmore; i++) {
    char k2[UP__HOSTKEY_MAX];
    if (!r->more_urls[i] || up__host_key(r->more_urls[i], k2, sizeof(k2)) != 0)
      return UV_EINVAL;
  }

  f = fetch_new(u, r, parent, head, key, &rc);
  if (!f)
    return rc;
  if (p && f->kind == UP__FETCH_USER && up__pool_admit(f)) {
    if (out)
      *out = f; /* QUEUED */
    return 0;
  }
  f->t_begin = f->t_created;
  rc = hop_start(f, NULL);
  if (rc) {
    f->state = UP__F_CANCELLED; /* refused: no callback */
    fetch_release(f);
    return rc;
  }
  if (p && f->kind == UP__FETCH_USER)
    p->stats.fetches++;
  if (out)
    *out = f;
  return 0;
}

int up_fetch_start(up_t *u, const up_req_t *r, up_fetch_t **out)
{
  return up__fetch_start(u, r, NULL, out);
}

void up_fetch_cancel(up_fetch_t *f)
{
  if (!f || f->state == UP__F_CANCELLED || f->state == UP__F_DONE || f->state == UP__F_RELEASED)
    return;
  f->state = UP__F_CANCELLED;
  uv_timer_stop(&f->timer);
  up__pool_unqueue(f); /* at once: no dispatch may start it */
  if (f->child) {
    up_fetch_cancel(f->child);
    f->child = NULL;
  }
  if (f->u->in_curl_cb > 0)
    defer_push(f); /* released from the idle handle */
  else
    fetch_release(f);
}

void up_fetch_resume(up_fetch_t *f)
{
  if (!f || !f->paused || f->state != UP__F_BODY)
    return;
  f->resume = 1;
  defer_push(f);
}

const char *up_fetch_header(const up_fetch_t *f, const char *name)
{
  return up__hdr_get(f, name);
}

const char *up_fetch_url(const up_fetch_t *f)
{
  return f->url;
}

unsigned up_fetch_url_pos(const up_fetch_t *f)
{
  return f->cur;
}

const char *up_fetch_base_url(const up_fetch_t *f)
{
  return f->urls[f->cur];
}

void up_fetch_timings(const up_fetch_t *f, up_timings_t *out)
{
  memset(out, 0, sizeof(*out));
  out->queue_us = f->queue_ns / 1000;
  out->token_us = f->token_ns / 1000;
  out->redirect_us = f->redirect_ns / 1000;
  out->first_byte_us = f->first_byte_ns / 1000;
  out->last_byte_us = f->last_byte_ns / 1000;
  out->hops = f->hops;
  out->token_fetches = f->token_fetches;
  out->url_pos = f->cur;
  out->url = f->urls[f->cur];
}
