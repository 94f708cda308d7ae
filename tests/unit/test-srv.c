/* test-srv — the HTTP/1.1 server, in process: the loop runs on a thread, the test is the client
 * with plain blocking sockets (receive timeouts bound every wait). */
#include "core/buf.h"
#include "http/srv-int.h"
#include "http/srv.h"
#include "tests/unit/unit.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <strings.h>
#include <linux/magic.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define FILE_SIZE (3u * 1024 * 1024 + 123) /* spans several sendfile chunks */
#define BIG_MEM (8u * 1024 * 1024)
#define BIGFILE_SIZE (256ull * 1024 * 1024) /* sparse */
#define MAX_DONE 64

static struct {
  uv_loop_t loop;
  uv_async_t stop;
  pthread_t th;
  srv_t *srv;
  srv_opts_t opts;
  int want_ipv6;
  int port, port6;
  int listen6_rc;
  int closed;
  int loop_close_rc;
  char file[512], bigfile[512];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int ready;
  int ndone;
  int nstarted; /* handler calls */
  struct {
    char path[64];
    int status;
  } done[MAX_DONE];
} T = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static unsigned char pattern(uint64_t i)
{
  return (unsigned char)((i * 7 + i / 251) % 251);
}

/* ---- server side (loop thread) ------------------------------------------------------------ */

typedef struct actx {
  uv_timer_t t;
  srv_req_t *r;
  uint64_t avail, size;
  char path[64];
} actx_t;

static void on_ctx_close(uv_handle_t *h)
{
  free(h->data);
}

static actx_t *abort_ctx; /* loop thread only */

static void on_done(srv_req_t *r, int status, void *arg)
{
  actx_t *x = arg;
  if (x == abort_ctx)
    abort_ctx = NULL;
  pthread_mutex_lock(&T.mu);
  if (T.ndone < MAX_DONE) {
    snprintf(T.done[T.ndone].path, sizeof(T.done[0].path), "%s", x->path);
    T.done[T.ndone].status = status;
    T.ndone++;
  }
  pthread_cond_broadcast(&T.cv);
  pthread_mutex_unlock(&T.mu);
  uv_close((uv_handle_t *)&x->t, on_ctx_close);
}

static void on_async_timer(uv_timer_t *t)
{
  actx_t *x = t->data;
  uv_timer_stop(t);
  srv_respond(x->r, 200, "text/plain", "async", 5);
}

static void on_grow_timer(uv_timer_t *t)
{
  actx_t *x = t->data;
  x->avail += 100000;
  if (x->avail >= x->size) {
    x->avail = x->size;
    uv_timer_stop(t);
  }
  srv_file_avail(x->r, x->avail);
}

static void on_abort_timer(uv_timer_t *t)
{
  actx_t *x = t->data;
  uv_timer_stop(t);
  srv_abort(x->r); /* runs on_done, which closes this timer: fine from its own callback */
}

static int open_file(const char *p)
{
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  PC_ASSERT(fd >= 0);
  return fd;
}

static void handler(srv_req_t *r, void *arg)
{
  const char *path = srv_req_path(r);
  actx_t *x = pc_xcalloc(1, sizeof(*x));
  x->r = r;
  snprintf(x->path, sizeof(x->path), "%s", path);
  uv_timer_init(&T.loop, &x->t);
  x->t.data = x;
  srv_req_on_done(r, on_done, x);
  srv_req_log(r, "test", "a value");
  pthread_mutex_lock(&T.mu);
  T.nstarted++;
  pthread_mutex_unlock(&T.mu);

  if (strcmp(path, "/hello") == 0) {
    srv_resp_header(r, "X-Test", "yes");
    srv_respond(r, 200, "text/plain", "hello", 5);
  } else if (strcmp(path, "/badctype") == 0) {
    /* what a hostile upstream's Content-Type would make: a bare CR, an ESC, a DEL */
    const char *q = srv_req_query(r);
    srv_respond(r, 200,
                q[0] == 'c'   ? "a/b\rX-Injected: yes"
                : q[0] == 'e' ? "a/b\x1b[0m"
                              : "a/b\x7f",
                "x", 1);
  } else if (strcmp(path, "/echo") == 0) {
    char b[1024];
    const char *acc = srv_req_header(r, "accept");
    const char *ua = srv_req_header(r, "USER-AGENT");
    int n = snprintf(b, sizeof(b), "%s %s q=%s accept=%s ua=%s", srv_req_method(r), path,
                     srv_req_query(r), acc ? acc : "(none)", ua ? ua : "(none)");
    srv_respond(r, 200, "text/plain", b, (size_t)n);
  } else if (strcmp(path, "/async") == 0) {
    uv_timer_start(&x->t, on_async_timer, 50, 0);
  } else if (strcmp(path, "/hang") == 0) {
    /* never answers: ends by disconnect or srv_close */
  } else if (strcmp(path, "/file") == 0) {
    srv_respond_file(r, 200, "application/octet-stream", open_file(T.file), 0, FILE_SIZE,
                     FILE_SIZE);
  } else if (strcmp(path, "/slice") == 0) {
    srv_respond_file(r, 206, NULL, open_file(T.file), 1000, 5000, 1000 + 5000);
  } else if (strcmp(path, "/grow") == 0) {
    x->size = FILE_SIZE;
    srv_respond_file(r, 200, NULL, open_file(T.file), 0, FILE_SIZE, 0);
    uv_timer_start(&x->t, on_grow_timer, 5, 5);
  } else if (strcmp(path, "/stall") == 0) {
    srv_respond_file(r, 200, NULL, open_file(T.file), 0, FILE_SIZE, 1000);
  } else if (strcmp(path, "/abort") == 0) {
    srv_respond_file(r, 200, NULL, open_file(T.file), 0, FILE_SIZE, 1000);
    abort_ctx = x; /* aborted by a later request to /do-abort */
  } else if (strcmp(path, "/do-abort") == 0) {
    if (abort_ctx)
      uv_timer_start(&abort_ctx->t, on_abort_timer, 0, 0);
    srv_respond(r, abort_ctx ? 200 : 404, NULL, NULL, 0);
  } else if (strcmp(path, "/big") == 0) {
    char *b = pc_xmalloc(BIG_MEM);
    memset(b, 'x', BIG_MEM);
    srv_respond(r, 200, NULL, b, BIG_MEM);
    free(b);
  } else if (strcmp(path, "/caps") == 0) {
    char v[1001];
    memset(v, 'v', 1000);
    v[1000] = '\0';
    for (int i = 0; i < 20; i++) /* 20 x 1009 bytes: past the 16 KiB of response headers */
      srv_resp_header(r, "X-Big", v);
    srv_respond(r, 200, NULL, NULL, 0);
  } else if (strcmp(path, "/hdrscan") == 0) {
    /* ?BB-PP: byte 0xBB at position PP of a 20-byte header value, and of a 20-byte name */
    unsigned b = 0, pos = 0;
    (void)sscanf(srv_req_query(r), "%2x-%2u", &b, &pos);
    char v[21], n[21];
    memset(v, 'v', 20);
    memcpy(n, "X-Name-nnnnnnnnnnnnn", 20);
    v[20] = n[20] = '\0';
    v[pos] = (char)b;
    n[pos < 2 ? 2 : pos] = (char)b; /* keep the "X-" */
    srv_resp_header(r, "X-Value", v);
    srv_resp_header(r, n, "n");
    srv_resp_header(r, "X-Ok", "ok");
    srv_respond(r, 200, NULL, NULL, 0);
  } else if (strcmp(path, "/bigfile") == 0) {
    srv_respond_file(r, 200, NULL, open_file(T.bigfile), 0, BIGFILE_SIZE, BIGFILE_SIZE);
  } else if (strcmp(srv_req_method(r), "GET") != 0 && strcmp(srv_req_method(r), "HEAD") != 0) {
    srv_respond(r, 405, "text/plain", "no", 2);
  } else {
    srv_respond(r, 404, NULL, NULL, 0);
  }
}

static void on_closed(void *arg)
{
  T.closed = 1;
}

static void on_stop(uv_async_t *a)
{
  srv_close(T.srv, on_closed, NULL);
  uv_close((uv_handle_t *)a, NULL);
}

static void *loop_main(void *arg)
{
  PC_ASSERT(uv_loop_init(&T.loop) == 0);
  PC_ASSERT(uv_async_init(&T.loop, &T.stop, on_stop) == 0);
  PC_ASSERT(srv_new(&T.loop, &T.opts, handler, NULL, &T.srv) == 0);
  PC_ASSERT(srv_listen(T.srv, "127.0.0.1:0") == 0);
  T.port = srv_port(T.srv, 0);
  if (T.want_ipv6) {
    T.listen6_rc = srv_listen(T.srv, "[::1]:0");
    T.port6 = T.listen6_rc == 0 ? srv_port(T.srv, 1) : -1;
  }
  pthread_mutex_lock(&T.mu);
  T.ready = 1;
  pthread_cond_broadcast(&T.cv);
  pthread_mutex_unlock(&T.mu);
  uv_run(&T.loop, UV_RUN_DEFAULT);
  T.loop_close_rc = uv_loop_close(&T.loop);
  return NULL;
}

static void make_files(void)
{
  snprintf(T.file, sizeof(T.file), "%s/file", unit_tmpdir());
  snprintf(T.bigfile, sizeof(T.bigfile), "%s/bigfile", unit_tmpdir());
  FILE *f = fopen(T.file, "wb");
  ASSERT(f);
  for (uint64_t i = 0; i < FILE_SIZE; i++)
    fputc(pattern(i), f);
  ASSERT_EQ(0, fclose(f));
  int fd = open(T.bigfile, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  ASSERT(fd >= 0);
  ASSERT_EQ(0, ftruncate(fd, (off_t)BIGFILE_SIZE));
  close(fd);
}

static void ts_start(const srv_opts_t *o)
{
  if (o)
    T.opts = *o;
  if (!T.opts.access_log)
    T.opts.access_log = getenv("SRV_TEST_LOG") ? 1 : -1;
  make_files();
  ASSERT_EQ(0, pthread_create(&T.th, NULL, loop_main, NULL));
  pthread_mutex_lock(&T.mu);
  while (!T.ready)
    pthread_cond_wait(&T.cv, &T.mu);
  pthread_mutex_unlock(&T.mu);
  ASSERT(T.port > 0);
}

static void ts_stop(void)
{
  uv_async_send(&T.stop);
  ASSERT_EQ(0, pthread_join(T.th, NULL));
  ASSERT(T.closed);
  ASSERT_EQ(0, T.loop_close_rc);
}

/* Wait (bounded) for the done callback of the n-th request to path; returns its status. */
static int wait_done(const char *path, int nth)
{
  struct timespec dl;
  clock_gettime(CLOCK_REALTIME, &dl);
  dl.tv_sec += 10;
  int st = -1;
  pthread_mutex_lock(&T.mu);
  for (;;) {
    int seen = 0;
    for (int i = 0; i < T.ndone; i++)
      if (strcmp(T.done[i].path, path) == 0 && seen++ == nth)
        st = T.done[i].status;
    if (st != -1)
      break;
    if (pthread_cond_timedwait(&T.cv, &T.mu, &dl) == ETIMEDOUT)
      break;
  }
  pthread_mutex_unlock(&T.mu);
  return st;
}

static int count_done(void)
{
  pthread_mutex_lock(&T.mu);
  int n = T.ndone;
  pthread_mutex_unlock(&T.mu);
  return n;
}

/* ---- client side (test thread) ------------------------------------------------------------ */

typedef struct cli {
  int fd;
  char buf[65536];
  size_t len;
} cli_t;

typedef struct resp {
  int status;
  char head[32768];
  long long clen;
  char *body;
  size_t blen;
} resp_t;

static void cli_open_family(cli_t *c, int family, int port)
{
  c->len = 0;
  c->fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT(c->fd >= 0);
  struct timeval tv = {10, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  int rc;
  if (family == AF_INET) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    rc = connect(c->fd, (struct sockaddr *)&a, sizeof(a));
  } else {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    inet_pton(AF_INET6, "::1", &a.sin6_addr);
    rc = connect(c->fd, (struct sockaddr *)&a, sizeof(a));
  }
  ASSERT_EQ(0, rc);
}

static void cli_open(cli_t *c)
{
  cli_open_family(c, AF_INET, T.port);
}

static void cli_send(cli_t *c, const char *s, size_t n)
{
  while (n) {
    ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
    ASSERT(w > 0);
    s += w;
    n -= (size_t)w;
  }
}

static void cli_sends(cli_t *c, const char *s)
{
  cli_send(c, s, strlen(s));
}

/* Read more into the buffer; returns bytes read (0 on EOF, -1 on error/timeout). */
static ssize_t cli_fill(cli_t *c)
{
  if (c->len == sizeof(c->buf))
    return -1;
  ssize_t r = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
  if (r > 0)
    c->len += (size_t)r;
  return r < 0 ? -1 : r;
}

static void cli_consume(cli_t *c, size_t n)
{
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* Read one response; for HEAD (or no_body) the body is not read. Returns 0, or -1 on EOF. */
static int cli_read(cli_t *c, resp_t *r, int no_body)
{
  memset(r, 0, offsetof(resp_t, clen));
  r->clen = -1;
  r->body = NULL;
  r->blen = 0;
  char *e;
  for (;;) {
    e = c->len ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
    if (e)
      break;
    if (cli_fill(c) <= 0)
      return -1;
  }
  size_t hl = (size_t)(e - c->buf) + 4;
  ASSERT(hl < sizeof(r->head));
  memcpy(r->head, c->buf, hl);
  r->head[hl] = '\0';
  cli_consume(c, hl);
  ASSERT_EQ(0, strncmp(r->head, "HTTP/1.1 ", 9));
  r->status = (int)strtol(r->head + 9, NULL, 10);
  const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
  if (cl)
    r->clen = strtoll(cl + 18, NULL, 10);
  if (no_body || r->clen <= 0)
    return 0;
  r->body = pc_xmalloc((size_t)r->clen + 1);
  while (r->blen < (size_t)r->clen) {
    if (!c->len && cli_fill(c) <= 0)
      break;
    size_t n = c->len < (size_t)r->clen - r->blen ? c->len : (size_t)r->clen - r->blen;
    memcpy(r->body + r->blen, c->buf, n);
    r->blen += n;
    cli_consume(c, n);
  }
  r->body[r->blen] = '\0';
  return 0;
}

static void resp_free(resp_t *r)
{
  free(r->body);
  r->body = NULL;
}

/* The server closed: recv returns 0 (or ECONNRESET) before the receive timeout. */
static int cli_eof(cli_t *c)
{
  char b[4096];
  for (int i = 0; i < 100000; i++) {
    ssize_t r = recv(c->fd, b, sizeof(b), 0);
    if (r == 0 || (r < 0 && errno == ECONNRESET))
      return 1;
    if (r < 0)
      return 0;
  }
  return 0;
}

static void cli_close(cli_t *c)
{
  close(c->fd);
  c->fd = -1;
}

static int has_header(const resp_t *r, const char *line)
{
  return strcasestr(r->head, line) != NULL;
}

/* ---- tests -------------------------------------------------------------------------------- */

TEST(get_simple)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(strncmp(r.head, "HTTP/1.1 200 OK\r\n", 17) == 0);
  ASSERT(has_header(&r, "\r\nX-Test: yes\r\n"));
  ASSERT(has_header(&r, "\r\nContent-Type: text/plain\r\n"));
  ASSERT_EQ(5, r.clen);
  ASSERT_STREQ("hello", r.body);
  ASSERT(!has_header(&r, "Connection: close"));
  resp_free(&r);
  ASSERT_EQ(200, wait_done("/hello", 0));
  cli_close(&c);
  ts_stop();
}

TEST(head_has_length_no_body)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  /* HEAD then GET on one connection: if HEAD had sent a body, the GET response would not parse */
  cli_sends(&c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 1));
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(5, r.clen);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(strncmp(r.body, "GET /echo", 9) == 0);
  resp_free(&r);
  /* HEAD on a file response: headers with the file length, no body */
  cli_sends(&c, "HEAD /file HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 1));
  ASSERT_EQ(FILE_SIZE, r.clen);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("hello", r.body);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

TEST(keepalive_two_requests)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  for (int i = 0; i < 2; i++) {
    cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_OK(cli_read(&c, &r, 0));
    ASSERT_EQ(200, r.status);
    ASSERT_STREQ("hello", r.body);
    resp_free(&r);
  }
  ASSERT_EQ(200, wait_done("/hello", 1));
  cli_close(&c);
  ts_stop();
}

TEST(pipelining_in_order)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /echo?n=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /async HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /echo?n=3 HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT(strstr(r.body, "q=n=1") != NULL);
  resp_free(&r);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("async", r.body);
  resp_free(&r);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT(strstr(r.body, "q=n=3") != NULL);
  resp_free(&r);
  /* many pipelined requests: more than the read buffer holds, so reading must pause/resume */
  char req[] =
      "GET /echo?n=xxxxx HTTP/1.1\r\nHost: x\r\nUser-Agent: pipelining-test-client/1.0\r\n\r\n";
  size_t rl = strlen(req);
  size_t nreq = 1000;
  char *all = pc_xmalloc(rl * nreq);
  for (size_t i = 0; i < nreq; i++) {
    char num[8];
    snprintf(num, sizeof(num), "%05zu", i);
    memcpy(req + 12, num, 5);
    memcpy(all + i * rl, req, rl);
  }
  cli_send(&c, all, rl * nreq);
  free(all);
  for (size_t i = 0; i < nreq; i++) {
    char want[16];
    snprintf(want, sizeof(want), "q=n=%05zu", i);
    ASSERT_OK(cli_read(&c, &r, 0));
    ASSERT(strstr(r.body, want) != NULL);
    resp_free(&r);
  }
  cli_close(&c);
  ts_stop();
}

/* The read buffer starts small and grows while it is full: a head of 12 KB (under the 16 KiB
 * limit) still parses, with a request after it in the same write, on one connection. */
TEST(head_bigger_than_the_first_read_buffer)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  size_t pad = 12000;
  char *req = pc_xmalloc(pad + 200);
  int n = snprintf(req, 200, "GET /echo?n=big HTTP/1.1\r\nHost: x\r\nX-Pad: ");
  memset(req + n, 'p', pad);
  memcpy(req + (size_t)n + pad, "\r\n\r\nGET /echo?n=next HTTP/1.1\r\nHost: x\r\n\r\n", 42);
  cli_send(&c, req, (size_t)n + pad + 42);
  free(req);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(strstr(r.body, "q=n=big") != NULL);
  resp_free(&r);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(strstr(r.body, "q=n=next") != NULL);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

TEST(async_handler)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /async HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT_STREQ("async", r.body);
  resp_free(&r);
  ASSERT_EQ(200, wait_done("/async", 0));
  cli_close(&c);
  ts_stop();
}

TEST(connection_close)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(has_header(&r, "\r\nConnection: close\r\n"));
  resp_free(&r);
  ASSERT(cli_eof(&c));
  ASSERT_EQ(0, c.len);
  cli_close(&c);
  ts_stop();
  ASSERT_EQ(1, count_done()); /* the second request was never served */
}

TEST(http10)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.0\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(has_header(&r, "\r\nConnection: close\r\n"));
  ASSERT_STREQ("hello", r.body);
  resp_free(&r);
  ASSERT(cli_eof(&c));
  cli_close(&c);
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT(has_header(&r, "\r\nConnection: keep-alive\r\n"));
  resp_free(&r);
  cli_sends(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("hello", r.body);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

static void expect_error_head(const char *req, size_t len, int status, int head)
{
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_send(&c, req, len);
  ASSERT_OK(cli_read(&c, &r, head));
  ASSERT_EQ(status, r.status);
  ASSERT(has_header(&r, "\r\nConnection: close\r\n"));
  ASSERT(r.clen > 0);
  ASSERT_EQ(head ? 0 : r.clen, r.blen);
  resp_free(&r);
  ASSERT(cli_eof(&c));
  ASSERT_EQ(0, c.len); /* no body after a HEAD answer */
  cli_close(&c);
}

static void expect_error(const char *req, size_t len, int status)
{
  expect_error_head(req, len, status, 0);
}

TEST(limit_431_huge_header)
{
  ts_start(NULL);
  size_t n = 40000;
  char *req = pc_xmalloc(n + 100);
  int h = snprintf(req, 100, "GET /hello HTTP/1.1\r\nX-Big: ");
  memset(req + h, 'a', n);
  memcpy(req + h + n, "\r\n\r\n", 4);
  expect_error(req, (size_t)h + n + 4, 431);
  /* just over the limit across several small headers */
  size_t len = (size_t)snprintf(req, 100, "GET /hello HTTP/1.1\r\n");
  for (int i = 0; len < 16500; i++)
    len += (size_t)snprintf(req + len, 100, "X-H%d: %060d\r\n", i, i);
  memcpy(req + len, "\r\n", 2);
  expect_error(req, len + 2, 431);
  free(req);
  ts_stop();
}

TEST(limit_431_too_many_headers)
{
  ts_start(NULL);
  char *req = pc_xmalloc(8192);
  size_t len = (size_t)snprintf(req, 100, "GET /hello HTTP/1.1\r\n");
  for (int i = 0; i < 150; i++)
    len += (size_t)snprintf(req + len, 100, "X-%d: v\r\n", i);
  memcpy(req + len, "\r\n", 2);
  expect_error(req, len + 2, 431);
  /* 100 headers are fine (Host and 99 more) */
  len = (size_t)snprintf(req, 100, "GET /hello HTTP/1.1\r\nHost: h\r\n");
  for (int i = 0; i < 99; i++)
    len += (size_t)snprintf(req + len, 100, "X-%d: v\r\n", i);
  memcpy(req + len, "\r\n", 2);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_send(&c, req, len + 2);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  resp_free(&r);
  cli_close(&c);
  free(req);
  ts_stop();
}

TEST(limit_414)
{
  ts_start(NULL);
  size_t n = 9000;
  char *req = pc_xmalloc(n + 100);
  memcpy(req, "GET /", 5);
  memset(req + 5, 'u', n);
  size_t len = 5 + n;
  len += (size_t)snprintf(req + len, 90, " HTTP/1.1\r\nHost: x\r\n\r\n");
  expect_error(req, len, 414);
  free(req);
  ts_stop();
}

TEST(bad_request_400)
{
  ts_start(NULL);
  static const char bad1[] = "GARBAGE\r\n\r\n";
  static const char bad2[] = "FOO /hello HTTP/1.1\r\nHost: x\r\n\r\n";
  static const char bad3[] = "GET /hello HTTP/1.1\r\nNoColonHere\r\n\r\n";
  static const char bad4[] = "GET /hello HTTP/9.9\r\n\r\n";
  expect_error(bad1, sizeof(bad1) - 1, 400);
  expect_error(bad2, sizeof(bad2) - 1, 400);
  expect_error(bad3, sizeof(bad3) - 1, 400);
  expect_error(bad4, sizeof(bad4) - 1, 400);
  ts_stop();
  ASSERT_EQ(0, count_done()); /* the handler never saw them */
}

/* RFC 9112 §3.2: an HTTP/1.1 request needs exactly one Host; HTTP/1.0 may have none. */
TEST(host_header_exactly_one)
{
  ts_start(NULL);
  static const char none[] = "GET /hello HTTP/1.1\r\n\r\n";
  static const char two[] = "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
  expect_error(none, sizeof(none) - 1, 400);
  expect_error(two, sizeof(two) - 1, 400);
  ASSERT_EQ(0, count_done()); /* the handler never saw them */
  static const char v10[] = "GET /hello HTTP/1.0\r\n\r\n";
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_send(&c, v10, sizeof(v10) - 1);
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

/* Response headers: a value with a control character (a tab is allowed) and a name with one or a
 * colon are dropped, at every position of a string long enough for the word-at-a-time scan;
 * the others go out as given. */
TEST(response_header_checked_at_every_position)
{
  ts_start(NULL);
  cli_t c;
  cli_open(&c);
  for (unsigned b = 1; b < 256; b++) {
    int ctl = (b < 0x20 && b != '\t') || b == 0x7f;
    for (unsigned pos = 0; pos < 20; pos++) {
      char req[96];
      int n =
          snprintf(req, sizeof(req), "GET /hdrscan?%02x-%02u HTTP/1.1\r\nHost: h\r\n\r\n", b, pos);
      cli_send(&c, req, (size_t)n);
      resp_t r;
      ASSERT_OK(cli_read(&c, &r, 0));
      ASSERT_EQ(200, r.status);
      ASSERT(strstr(r.head, "X-Ok: ok\r\n") != NULL);
      ASSERT_EQ(!ctl, strstr(r.head, "X-Value: ") != NULL);
      int name_bad = ctl || b == ':' || b == '\t' || b == ' ';
      if (b != ' ' && b != '\t') /* a space or tab in a name: not checked here */
        ASSERT_EQ(!name_bad, strstr(r.head, ": n\r\n") != NULL);
      resp_free(&r);
    }
  }
  cli_close(&c);
  ts_stop();
}

/* A Content-Type with a control character never reaches the head: dropped, the rest stands. */
TEST(content_type_with_control_chars_dropped)
{
  ts_start(NULL);
  static const char *const q[] = {"c", "e", "d"};
  for (int i = 0; i < 3; i++) {
    char req[128];
    int n = snprintf(req, sizeof(req), "GET /badctype?%s HTTP/1.1\r\nHost: h\r\n\r\n", q[i]);
    cli_t c;
    resp_t r;
    cli_open(&c);
    cli_send(&c, req, (size_t)n);
    ASSERT_OK(cli_read(&c, &r, 0));
    ASSERT_EQ(200, r.status);
    ASSERT(strstr(r.head, "Content-Type") == NULL);
    ASSERT(strstr(r.head, "X-Injected") == NULL);
    ASSERT(strchr(r.head, '\x1b') == NULL && strchr(r.head, '\x7f') == NULL);
    resp_free(&r);
    cli_close(&c);
  }
  ts_stop();
}

TEST(tls_hello_on_plain_port_closes)
{
  ts_start(NULL);
  /* The first bytes of a TLS ClientHello: record type 0x16, version 3.1. */
  static const char hello[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
  cli_t c;
  cli_open(&c);
  cli_send(&c, hello, sizeof(hello) - 1);
  /* closed without an HTTP answer (a TLS client could not read one): the first recv is EOF */
  char b[256];
  ssize_t r = recv(c.fd, b, sizeof(b), 0);
  ASSERT(r == 0 || (r < 0 && errno == ECONNRESET));
  cli_close(&c);
  ts_stop();
  ASSERT_EQ(0, count_done());
}

TEST(body_on_get_400)
{
  ts_start(NULL);
  static const char b1[] = "GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  static const char b2[] = "HEAD /hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhello\r\n0\r\n\r\n";
  expect_error(b1, sizeof(b1) - 1, 400);
  expect_error_head(b2, sizeof(b2) - 1, 400, 1);
  /* Content-Length: 0 is no body */
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

TEST(post_body_handler_answers_then_close)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "POST /v2/x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
                "0123456789GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(405, r.status);
  ASSERT(has_header(&r, "\r\nConnection: close\r\n"));
  resp_free(&r);
  ASSERT(cli_eof(&c));
  ASSERT_EQ(0, c.len);
  cli_close(&c);
  ts_stop();
  ASSERT_EQ(1, count_done());
}

TEST(merged_headers)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /echo HTTP/1.1\r\nHost: x\r\n"
                "Accept: application/vnd.oci.image.manifest.v1+json\r\n"
                "user-agent: ua1  \r\n"
                "accept: application/vnd.docker.distribution.manifest.v2+json\r\n"
                "ACCEPT: */*\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("GET /echo q= accept=application/vnd.oci.image.manifest.v1+json, "
               "application/vnd.docker.distribution.manifest.v2+json, */* ua=ua1",
               r.body);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

static void check_pattern(const char *b, size_t n, uint64_t off)
{
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)b[i] != pattern(off + i))
      unit__fail(__FILE__, __LINE__, "byte %zu differs", i);
}

TEST(file_exact_bytes)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT(has_header(&r, "\r\nContent-Type: application/octet-stream\r\n"));
  ASSERT_EQ(FILE_SIZE, r.clen);
  ASSERT_EQ(FILE_SIZE, r.blen);
  check_pattern(r.body, r.blen, 0);
  resp_free(&r);
  cli_sends(&c, "GET /slice HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(206, r.status);
  ASSERT_EQ(5000, r.blen);
  check_pattern(r.body, r.blen, 1000);
  resp_free(&r);
  ASSERT_EQ(200, wait_done("/file", 0));
  ASSERT_EQ(206, wait_done("/slice", 0));
  cli_close(&c);
  ts_stop();
}

/* The TCP transport sends page-cached ranges with sendfile(2) from the loop and the rest from
 * the thread pool: the same bytes either way, in any mix. The file's pages are dropped from the
 * page cache first (fdatasync + POSIX_FADV_DONTNEED; a file system that keeps them, like tmpfs,
 * makes this the cached case twice), then it is served twice on one connection: cold (the
 * pool), then warm (the loop). */
TEST(file_out_of_page_cache)
{
  ts_start(NULL);
  int fd = open(T.file, O_RDONLY);
  ASSERT(fd >= 0);
  ASSERT_EQ(0, fdatasync(fd));
  ASSERT_EQ(0, posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED));
  close(fd);
  cli_t c;
  resp_t r;
  cli_open(&c);
  for (int i = 0; i < 2; i++) {
    cli_sends(&c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_OK(cli_read(&c, &r, 0));
    ASSERT_EQ(200, r.status);
    ASSERT_EQ(FILE_SIZE, r.blen);
    check_pattern(r.body, r.blen, 0);
    resp_free(&r);
    ASSERT_EQ(200, wait_done("/file", 0));
  }
  cli_close(&c);
  ts_stop();
}

/* The page-cache check before a sendfile on the loop: yes for written pages, no past the end
 * or for an empty range, and cachestat(2) and mincore(2) agree on every range, before and after
 * the pages are dropped (no after that where the file system surely drops them: ext4, XFS,
 * btrfs; not tmpfs). */
TEST(page_cache_residency)
{
  char path[600];
  snprintf(path, sizeof(path), "%s/resident", unit_tmpdir());
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT(fd >= 0);
  static char buf[65536];
  memset(buf, 'r', sizeof(buf));
  ASSERT_EQ((ssize_t)sizeof(buf), write(fd, buf, sizeof(buf)));
  struct {
    uint64_t off;
    size_t len;
  } ranges[] = {{0, 65536},    {100, 1000}, {4095, 2}, {61440, 4096},
                {61440, 8192}, {70000, 10}, {0, 0}};
  int expect[] = {1, 1, 1, 1, 0, 0, 0};
  int have_cachestat = srv_tcp__resident(fd, 0, 4096, SRV_TCP_RESIDENT_CACHESTAT) >= 0;
  for (int drop = 0; drop < 2; drop++) {
    if (drop) {
      ASSERT_EQ(0, fdatasync(fd));
      ASSERT_EQ(0, posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED));
    }
    struct statfs sf;
    ASSERT_EQ(0, fstatfs(fd, &sf));
    /* where the fadvise surely dropped the pages (a network or FUSE file system may not) */
    int dropped = drop && (sf.f_type == EXT4_SUPER_MAGIC || sf.f_type == XFS_SUPER_MAGIC ||
                           sf.f_type == BTRFS_SUPER_MAGIC);
    for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
      int m = srv_tcp__resident(fd, ranges[i].off, ranges[i].len, SRV_TCP_RESIDENT_MINCORE);
      int any = srv_tcp__resident(fd, ranges[i].off, ranges[i].len, SRV_TCP_RESIDENT_ANY);
      ASSERT_EQ(dropped ? 0 : expect[i], m);
      ASSERT_EQ(m, any);
      if (have_cachestat)
        ASSERT_EQ(m,
                  srv_tcp__resident(fd, ranges[i].off, ranges[i].len, SRV_TCP_RESIDENT_CACHESTAT));
    }
  }
  close(fd);
  unlink(path);
}

/* ---- the two llhttp builds (srv__parser) -------------------------------------------------- */

static char pev[8192];
static size_t pevn;

static void pev_add(const char *tag, const char *at, size_t len)
{
  int n = snprintf(pev + pevn, sizeof(pev) - pevn, "%s[", tag);
  ASSERT(n > 0 && (size_t)n < sizeof(pev) - pevn);
  pevn += (size_t)n;
  ASSERT(pevn + len + 2 < sizeof(pev));
  memcpy(pev + pevn, at, len);
  pevn += len;
  pev[pevn++] = ']';
  pev[pevn] = '\0';
}

static int pev_url(llhttp_t *p, const char *at, size_t len)
{
  (void)p;
  pev_add("u", at, len);
  return 0;
}

static int pev_field(llhttp_t *p, const char *at, size_t len)
{
  (void)p;
  pev_add("f", at, len);
  return 0;
}

static int pev_value(llhttp_t *p, const char *at, size_t len)
{
  (void)p;
  pev_add("v", at, len);
  return 0;
}

static int pev_pause; /* on_headers_complete pauses the parser, as the server's does */

static int pev_headers(llhttp_t *p)
{
  const char *m = llhttp_method_name((llhttp_method_t)p->method);
  pev_add("h", m, strlen(m));
  return pev_pause ? HPE_PAUSED : 0;
}

static int pev_done(llhttp_t *p)
{
  (void)p;
  pev_add("m", "", 0);
  return 0;
}

/* Parse in with fn in two calls split at k; the events, then the error and where it stopped. */
static void pev_parse(srv__parse_fn fn, const char *in, size_t len, size_t k)
{
  llhttp_settings_t st;
  llhttp_settings_init(&st);
  st.on_url = pev_url;
  st.on_header_field = pev_field;
  st.on_header_value = pev_value;
  st.on_headers_complete = pev_headers;
  st.on_message_complete = pev_done;
  llhttp_t p;
  llhttp_init(&p, HTTP_REQUEST, &st);
  pevn = 0;
  pev[0] = '\0';
  llhttp_errno_t e = HPE_OK;
  const char *cut[2][2] = {{in, in + k}, {in + k, in + len}};
  for (int part = 0; part < 2 && e == HPE_OK; part++) {
    const char *at = cut[part][0];
    for (;;) { /* a pause: resume where it stopped, as the server does */
      e = fn(&p, at, (size_t)(cut[part][1] - at));
      if (e != HPE_PAUSED)
        break;
      pev_add("p", "", 0);
      at = llhttp_get_error_pos(&p);
      llhttp_resume(&p);
    }
  }
  const char *pos = llhttp_get_error_pos(&p);
  char tail[64];
  snprintf(tail, sizeof(tail), "|%d@%td", (int)e, e == HPE_OK || !pos ? (ptrdiff_t)-1 : pos - in);
  size_t tl = strlen(tail);
  ASSERT(pevn + tl < sizeof(pev));
  memcpy(pev + pevn, tail, tl + 1);
  pevn += tl;
}

/* Where the build has the SSE4.2 llhttp and the CPU runs it, the server uses it, and it parses
 * exactly as llhttp's own build: the same callbacks with the same bytes and the same errors at
 * the same place, for requests split at every byte, with and without a pause after each head
 * (resumed where it stopped, as the server does): header values, names and URL paths long
 * enough for its 16-byte steps, with tabs and obs-text, and with a control byte, DEL or a bare
 * CR inside a step. Elsewhere the server uses llhttp's own build. */
TEST(llhttp_sse42_build_parses_alike)
{
  srv__parse_fn plain = srv__parser(SRV_PARSER_PLAIN), sse = srv__parser(SRV_PARSER_SSE42);
  ASSERT(plain == llhttp_execute);
#if PC_LLHTTP_SSE42
  ASSERT(sse != NULL);
  if (!__builtin_cpu_supports("sse4.2")) {
    ASSERT(srv__parser(SRV_PARSER_BEST) == plain);
    return;
  }
  ASSERT(srv__parser(SRV_PARSER_BEST) == sse);
#else
  ASSERT(sse == NULL);
  ASSERT(srv__parser(SRV_PARSER_BEST) == plain);
  return;
#endif
  static const char accept[] =
      "application/vnd.docker.distribution.manifest.v2+json, "
      "application/vnd.docker.distribution.manifest.list.v2+json, "
      "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
  char reqs[11][1024];
  snprintf(reqs[0], sizeof(reqs[0]),
           "HEAD /v2/pause/manifests/3.10?ns=registry.k8s.io HTTP/1.1\r\nHost: mirror:5000\r\n"
           "User-Agent: containerd/v2.0.0\r\nAccept: %s\r\nAccept-Encoding: gzip\r\n\r\n",
           accept);
  snprintf(reqs[1], sizeof(reqs[1]),
           "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Long: a\tb \x80\xff\xc3\xa9 value with tabs\t"
           "and obs-text \xe2\x82\xac and more than sixteen bytes\r\n\r\nGET /v2/x HTTP/1.1\r\n"
           "Host: y\r\nAccept: %s\r\n\r\n",
           accept);
  snprintf(reqs[2], sizeof(reqs[2]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: 0123456789abcdef0123\x01yz and more text\r\n\r\n");
  snprintf(reqs[3], sizeof(reqs[3]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Del: 0123456789abcdef0123\x7fyz and more text\r\n\r\n");
  snprintf(reqs[4], sizeof(reqs[4]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Cr: 0123456789abcdef0123\ryz and more text\r\n\r\n");
  snprintf(reqs[5], sizeof(reqs[5]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Lf: 0123456789abcdef0123\nyz and more text\r\n\r\n");
  snprintf(reqs[6], sizeof(reqs[6]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Nul: 0123456789abcdef0123%cyz\r\n\r\n", '\0');
  snprintf(reqs[7], sizeof(reqs[7]), "GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-Sp:   \r\n\r\n");
  /* bad bytes in a long header name and in a long URL path (llhttp scans those 16 at a time
   * too), and a long clean path */
  snprintf(reqs[8], sizeof(reqs[8]),
           "GET / HTTP/1.1\r\nHost: x\r\nX-Header-Name-Long\x01er: v\r\n\r\n");
  snprintf(reqs[9], sizeof(reqs[9]),
           "GET /v2/library/some-long-name/blo\x7f"
           "bs/sha256:0123 HTTP/1.1\r\nHost: x\r\n\r\n");
  snprintf(reqs[10], sizeof(reqs[10]),
           "GET /v2/library/some-long-repository-name/blobs/sha256:0123456789abcdef"
           "0123456789abcdef?ns=registry.k8s.io HTTP/1.1\r\nHost: x\r\nX-Header-Name-"
           "Longer-Than-Sixteen: v\r\n\r\n");
  size_t lens[11];
  for (int i = 0; i < 11; i++)
    lens[i] = strlen(reqs[i]);
  lens[6] = strlen(reqs[6]) + 1 + strlen(reqs[6] + strlen(reqs[6]) + 1);
  for (int n = 0; n < 22; n++) {
    int i = n % 11;
    pev_pause = n >= 11;
    static char want[8192];
    for (size_t k = 0; k <= lens[i]; k++) {
      pev_parse(plain, reqs[i], lens[i], k);
      size_t wantn = pevn;
      memcpy(want, pev, pevn + 1);
      pev_parse(sse, reqs[i], lens[i], k);
      if (wantn != pevn || memcmp(want, pev, pevn) != 0) {
        fprintf(stderr, "request %d split at %zu:\n  plain %s\n  sse42 %s\n", i, k, want, pev);
        ASSERT(0);
      }
    }
    /* unsplit: the long value whole; the bad bytes refused (2-6), the others parsed */
    if (i == 0)
      ASSERT(strstr(pev, accept) != NULL);
    int refused = strstr(pev, "|0@-1") == NULL;
    ASSERT_EQ((i >= 2 && i <= 6) || i == 8 || i == 9, refused);
    if (pev_pause && !refused)
      ASSERT(strstr(pev, "p[]") != NULL);
  }
}

TEST(file_growing)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /grow HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(FILE_SIZE, r.blen);
  check_pattern(r.body, r.blen, 0);
  resp_free(&r);
  ASSERT_EQ(200, wait_done("/grow", 0));
  /* the connection is still usable */
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("hello", r.body);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

TEST(client_disconnect_mid_response)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  /* a growing file that never completes: the client reads what exists and leaves */
  cli_open(&c);
  cli_sends(&c, "GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 1));
  ASSERT_EQ(FILE_SIZE, r.clen);
  cli_close(&c);
  ASSERT_EQ(0, wait_done("/stall", 0));
  /* a big in-memory body: the client reads a little and resets */
  cli_open(&c);
  cli_sends(&c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 1));
  ASSERT_EQ(BIG_MEM, r.clen);
  cli_close(&c);
  ASSERT_EQ(0, wait_done("/big", 0));
  /* a big file body */
  cli_open(&c);
  cli_sends(&c, "GET /bigfile HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 1));
  cli_close(&c);
  ASSERT_EQ(0, wait_done("/bigfile", 0));
  /* a handler that never answers */
  cli_open(&c);
  cli_sends(&c, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_close(&c);
  ASSERT_EQ(0, wait_done("/hang", 0));
  ts_stop();
}

TEST(srv_abort_short_body)
{
  ts_start(NULL);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /abort HTTP/1.1\r\nHost: x\r\n\r\n");
  /* the head and the 1000 available bytes arrive, then (from another connection) the abort */
  for (;;) {
    char *e = memmem(c.buf, c.len, "\r\n\r\n", 4);
    if (e && c.len - (size_t)(e + 4 - c.buf) >= 1000)
      break;
    ASSERT(cli_fill(&c) > 0);
  }
  cli_t d;
  resp_t rd;
  cli_open(&d);
  cli_sends(&d, "GET /do-abort HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&d, &rd, 0));
  ASSERT_EQ(200, rd.status);
  cli_close(&d);
  ASSERT_OK(cli_read(&c, &r, 0)); /* reads until EOF: short */
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(FILE_SIZE, r.clen);
  ASSERT_EQ(1000, r.blen);
  check_pattern(r.body, r.blen, 0);
  resp_free(&r);
  ASSERT_EQ(0, wait_done("/abort", 0));
  cli_close(&c);
  ts_stop();
}

TEST(header_timeout_closes)
{
  srv_opts_t o = {.header_timeout_ms = 200};
  ts_start(&o);
  cli_t c;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost:");
  ASSERT(cli_eof(&c));
  cli_close(&c);
  ts_stop();
  ASSERT_EQ(0, count_done());
}

TEST(idle_timeout_closes)
{
  srv_opts_t o = {.idle_timeout_ms = 200};
  ts_start(&o);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  resp_free(&r);
  ASSERT(cli_eof(&c));
  cli_close(&c);
  ts_stop();
}

TEST(write_stall_timeout)
{
  srv_opts_t o = {.write_timeout_ms = 300};
  ts_start(&o);
  cli_t c;
  cli_open(&c);
  int small = 4096;
  setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  cli_sends(&c, "GET /bigfile HTTP/1.1\r\nHost: x\r\n\r\n");
  /* never read: the server must give up */
  ASSERT_EQ(0, wait_done("/bigfile", 0));
  cli_close(&c);
  ts_stop();
}

TEST(max_conns_503)
{
  srv_opts_t o = {.max_conns = 2};
  ts_start(&o);
  cli_t a, b, c;
  resp_t r;
  cli_open(&a);
  cli_open(&b);
  cli_sends(&a, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_sends(&b, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&a, &r, 0));
  resp_free(&r);
  ASSERT_OK(cli_read(&b, &r, 0));
  resp_free(&r);
  cli_open(&c);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(503, r.status);
  resp_free(&r);
  ASSERT(cli_eof(&c));
  cli_close(&c);
  /* a slot frees up when a connection closes */
  cli_close(&a);
  int ok = 0;
  for (int i = 0; i < 200 && !ok; i++) {
    cli_open(&c);
    cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_OK(cli_read(&c, &r, 0));
    ok = r.status == 200;
    resp_free(&r);
    cli_close(&c);
    if (!ok)
      usleep(10000);
  }
  ASSERT(ok);
  cli_close(&b);
  ts_stop();
}

TEST(ipv6_listen)
{
  T.want_ipv6 = 1;
  ts_start(NULL);
  int s6 = socket(AF_INET6, SOCK_STREAM, 0);
  if (s6 < 0 || T.listen6_rc != 0) {
    fprintf(stderr, "# no IPv6 loopback here (rc=%d): skipped\n", T.listen6_rc);
    if (s6 >= 0)
      close(s6);
    ts_stop();
    return;
  }
  close(s6);
  ASSERT(T.port6 > 0);
  cli_t c;
  resp_t r;
  cli_open_family(&c, AF_INET6, T.port6);
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_STREQ("hello", r.body);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
}

TEST(close_with_open_connections)
{
  ts_start(NULL);
  cli_t a, b, c;
  resp_t r;
  cli_open(&a);
  cli_open(&b);
  cli_open(&c);
  cli_sends(&a, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n");
  cli_sends(&b, "GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&b, &r, 1));
  cli_sends(&c, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  resp_free(&r);
  /* The client can have the bytes before the loop ran the write callback that ends the
   * request: wait for its done callback before closing the server under it. */
  ASSERT_EQ(200, wait_done("/hello", 0));
  cli_sends(&c, "GET /hel"); /* a half-received head */
  /* wait (bounded) until all three requests reached the handler */
  for (int i = 0; i < 10000; i++) {
    pthread_mutex_lock(&T.mu);
    int n = T.nstarted;
    pthread_mutex_unlock(&T.mu);
    if (n >= 3)
      break;
    usleep(1000);
  }
  ts_stop(); /* srv_close: everything freed, uv_loop_close returned 0 */
  ASSERT_EQ(0, wait_done("/hang", 0));
  ASSERT_EQ(0, wait_done("/stall", 0));
  ASSERT(cli_eof(&a));
  ASSERT(cli_eof(&c));
  cli_close(&a);
  cli_close(&b);
  cli_close(&c);
}

static void api_handler(srv_req_t *r, void *arg)
{
  srv_respond(r, 200, NULL, NULL, 0);
}

TEST(listen_addresses)
{
  uv_loop_t loop;
  srv_t *s;
  ASSERT_OK(uv_loop_init(&loop));
  ASSERT_OK(srv_new(&loop, NULL, api_handler, NULL, &s));
  ASSERT_NE(0, srv_listen(s, "127.0.0.1"));
  ASSERT_NE(0, srv_listen(s, "localhost:0"));
  ASSERT_NE(0, srv_listen(s, "127.0.0.1:99999"));
  ASSERT_NE(0, srv_listen(s, "[::1:0"));
  ASSERT_NE(0, srv_listen(s, "127.0.0.1:x"));
  ASSERT_NE(0, srv_listen(s, "127.0.0.1:+80")); /* digits only (core/num.h) */
  ASSERT_NE(0, srv_listen(s, "127.0.0.1: 80"));
  ASSERT_NE(0, srv_listen(s, "127.0.0.1:"));
  ASSERT_NE(0, srv_listen(s, "[::1]:65536"));
  ASSERT_OK(srv_listen(s, "127.0.0.1:0"));
  int p = srv_port(s, 0);
  ASSERT(p > 0);
  char addr[32];
  snprintf(addr, sizeof(addr), "127.0.0.1:%d", p);
  ASSERT_NE(0, srv_listen(s, addr)); /* in use */
  ASSERT_EQ(-1, srv_port(s, 1));
  ASSERT_EQ(0, srv_conn_count(s));
  srv_close(s, NULL, NULL);
  ASSERT_OK(uv_run(&loop, UV_RUN_DEFAULT));
  ASSERT_OK(uv_loop_close(&loop));
}

TEST(access_log_line)
{
  char logp[512];
  snprintf(logp, sizeof(logp), "%s/log", unit_tmpdir());
  int lfd = open(logp, O_CREAT | O_WRONLY | O_TRUNC, 0600);
  ASSERT(lfd >= 0);
  int saved = dup(2);
  ASSERT_EQ(2, dup2(lfd, 2));
  close(lfd);
  srv_opts_t o = {.access_log = 1};
  ts_start(&o);
  cli_t c;
  resp_t r;
  cli_open(&c);
  cli_sends(&c, "GET /hello?ns=registry.k8s.io HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  resp_free(&r);
  cli_sends(&c, "GET /a\"b HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_OK(cli_read(&c, &r, 0));
  ASSERT_EQ(404, r.status);
  resp_free(&r);
  cli_close(&c);
  ts_stop();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  FILE *f = fopen(logp, "r");
  ASSERT(f);
  char text[4096] = "";
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  text[n] = '\0';
  fclose(f);
  ASSERT(strstr(text, "req method=GET path=/hello status=200 bytes=5 ms=") != NULL);
  ASSERT(strstr(text, " peer=127.0.0.1:") != NULL);
  ASSERT(strstr(text, " test=\"a value\"\n") != NULL);
  ASSERT(strstr(text, "req method=GET path=\"/a\\\"b\" status=404 bytes=0 ") != NULL);
}

/* ---- a second transport: in memory, no socket at all ------------------------------------- */

/* What the in-memory transport did, owned by the test (the transport frees itself on close). */
typedef struct mem_log {
  pc_buf_t out;         /* every byte written or "sent from the file", in order */
  int nwrites, nfiles;  /* ops started */
  int nshutdown, nread; /* shutdowns started; reads delivered */
  int file_fd;          /* the fd of the last send_file */
  int cancelled;        /* completions with UV_ECANCELED */
  int closed;           /* close callbacks run */
  char order[16];       /* 'F' file completed, 'W' write completed, 'C' closed */
} mem_log_t;

typedef struct mem_tr {
  srv_tr_t tr;    /* first */
  uv_idle_t idle; /* drives every callback on a later loop turn */
  mem_log_t *log;
  const char *in;
  size_t in_len, in_pos, piece; /* input, delivered piece by piece */
  size_t file_max;              /* bytes per send_file op at most (partial sends) */
  int hold_file;                /* never complete a send_file (a client that stopped reading) */
  srv_tr_alloc_cb alloc;
  srv_tr_read_cb read;
  srv_tr_done_cb wcb, fcb, scb;
  ssize_t fres;
  int reading, wpend, fpend, spend, shut, eof_sent, closing;
  srv_tr_close_cb close_cb;
} mem_tr_t;

static void mem_order(mem_log_t *l, char what)
{
  size_t n = strlen(l->order);
  if (n + 1 < sizeof(l->order))
    l->order[n] = what;
}

static void mem_on_idle_close(uv_handle_t *h)
{
  mem_tr_t *m = h->data;
  m->log->closed++;
  mem_order(m->log, 'C');
  if (m->close_cb)
    m->close_cb(&m->tr);
  free(m);
}

/* Closing: every op still pending completes with UV_ECANCELED, then the close callback. */
static void mem_cancel_all(mem_tr_t *m)
{
  mem_log_t *l = m->log;
  if (m->wpend) {
    m->wpend = 0;
    l->cancelled++;
    m->wcb(&m->tr, UV_ECANCELED);
  }
  if (m->fpend) {
    m->fpend = 0;
    l->cancelled++;
    mem_order(l, 'F');
    m->fcb(&m->tr, UV_ECANCELED);
  }
  if (m->spend) {
    m->spend = 0;
    l->cancelled++;
    m->scb(&m->tr, UV_ECANCELED);
  }
  uv_close((uv_handle_t *)&m->idle, mem_on_idle_close);
}

/* One step per loop turn: a completion, or a read; stop when there is nothing to do. */
static void mem_on_idle(uv_idle_t *h)
{
  mem_tr_t *m = h->data;
  mem_log_t *l = m->log;
  if (m->closing) {
    mem_cancel_all(m);
    return;
  }
  if (m->wpend) {
    m->wpend = 0;
    mem_order(l, 'W');
    m->wcb(&m->tr, 0);
  } else if (m->fpend && !m->hold_file) {
    m->fpend = 0;
    mem_order(l, 'F');
    m->fcb(&m->tr, m->fres);
  } else if (m->spend) {
    m->spend = 0;
    m->shut = 1;
    m->scb(&m->tr, 0);
  } else if (m->reading && m->in_pos < m->in_len) {
    uv_buf_t b;
    m->alloc(&m->tr, &b);
    size_t n = m->in_len - m->in_pos;
    if (n > m->piece)
      n = m->piece;
    if (n > b.len)
      n = b.len;
    if (n == 0) {
      m->read(&m->tr, UV_ENOBUFS, &b);
      return;
    }
    memcpy(b.base, m->in + m->in_pos, n);
    m->in_pos += n;
    l->nread++;
    m->read(&m->tr, (ssize_t)n, &b);
  } else if (m->reading && m->shut && !m->eof_sent) {
    /* the peer saw our FIN and closes its side too */
    m->eof_sent = 1;
    uv_buf_t b = uv_buf_init(NULL, 0);
    m->read(&m->tr, UV_EOF, &b);
  } else {
    uv_idle_stop(h);
  }
}

static void mem_kick(mem_tr_t *m)
{
  uv_idle_start(&m->idle, mem_on_idle);
}

static int mem_read_start(srv_tr_t *t, srv_tr_alloc_cb alloc, srv_tr_read_cb read)
{
  mem_tr_t *m = (mem_tr_t *)t;
  ASSERT(!m->closing);
  m->alloc = alloc;
  m->read = read;
  m->reading = 1;
  mem_kick(m);
  return 0;
}

static void mem_read_stop(srv_tr_t *t)
{
  ((mem_tr_t *)t)->reading = 0;
}

static int mem_write(srv_tr_t *t, const uv_buf_t *bufs, unsigned nbufs, srv_tr_done_cb cb)
{
  mem_tr_t *m = (mem_tr_t *)t;
  ASSERT(!m->closing && !m->wpend && !m->fpend); /* one write or send_file at a time */
  for (unsigned i = 0; i < nbufs; i++)
    ASSERT_OK(pc_buf_add(&m->log->out, bufs[i].base, bufs[i].len));
  m->log->nwrites++;
  m->wcb = cb;
  m->wpend = 1;
  mem_kick(m);
  return 0;
}

static int mem_send_file(srv_tr_t *t, int fd, uint64_t off, size_t len, srv_tr_done_cb cb)
{
  mem_tr_t *m = (mem_tr_t *)t;
  ASSERT(!m->closing && !m->wpend && !m->fpend && len > 0);
  size_t n = len < m->file_max ? len : m->file_max;
  char *b = pc_xmalloc(n);
  ssize_t got = pread(fd, b, n, (off_t)off);
  ASSERT(got >= 0);
  ASSERT_OK(pc_buf_add(&m->log->out, b, (size_t)got));
  free(b);
  m->log->nfiles++;
  m->log->file_fd = fd;
  m->fres = got;
  m->fcb = cb;
  m->fpend = 1;
  mem_kick(m);
  return 0;
}

static size_t mem_write_queue_size(const srv_tr_t *t)
{
  (void)t;
  return 0;
}

static int mem_shutdown(srv_tr_t *t, srv_tr_done_cb cb)
{
  mem_tr_t *m = (mem_tr_t *)t;
  ASSERT(!m->closing && !m->wpend && !m->fpend); /* after the last write */
  m->log->nshutdown++;
  m->scb = cb;
  m->spend = 1;
  mem_kick(m);
  return 0;
}

static void mem_close(srv_tr_t *t, srv_tr_close_cb cb)
{
  mem_tr_t *m = (mem_tr_t *)t;
  ASSERT(!m->closing);
  m->closing = 1;
  m->reading = 0;
  m->close_cb = cb;
  mem_kick(m); /* completions and the close callback on later loop turns */
}

static void mem_peer(srv_tr_t *t, char *buf, size_t cap)
{
  (void)t;
  snprintf(buf, cap, "mem");
}

static const srv_tr_ops_t mem_ops = {
    .read_start = mem_read_start,
    .read_stop = mem_read_stop,
    .write = mem_write,
    .send_file = mem_send_file,
    .write_queue_size = mem_write_queue_size,
    .shutdown = mem_shutdown,
    .close = mem_close,
    .peer = mem_peer,
};

static mem_tr_t *mem_new(uv_loop_t *loop, mem_log_t *log, const char *in)
{
  mem_tr_t *m = pc_xcalloc(1, sizeof(*m));
  m->tr.ops = &mem_ops;
  m->log = log;
  m->in = in;
  m->in_len = strlen(in);
  m->piece = 7; /* heads arrive split across reads */
  m->file_max = 300000;
  uv_idle_init(loop, &m->idle);
  m->idle.data = m;
  return m;
}

/* Parse one response from *p (a complete one must be there). */
static void mem_resp(const char **p, const char *end, resp_t *r)
{
  memset(r, 0, sizeof(*r));
  const char *e = memmem(*p, (size_t)(end - *p), "\r\n\r\n", 4);
  ASSERT(e);
  size_t hl = (size_t)(e - *p) + 4;
  ASSERT(hl < sizeof(r->head));
  memcpy(r->head, *p, hl);
  ASSERT_EQ(0, strncmp(r->head, "HTTP/1.1 ", 9));
  r->status = (int)strtol(r->head + 9, NULL, 10);
  const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
  ASSERT(cl);
  r->clen = strtoll(cl + 18, NULL, 10);
  ASSERT((size_t)(end - *p) >= hl + (size_t)r->clen);
  r->body = (char *)*p + hl; /* not owned */
  r->blen = (size_t)r->clen;
  *p += hl + (size_t)r->clen;
}

static void mem_finish(srv_req_t *r, int status, uint64_t body_bytes, void *arg)
{
  (void)status;
  (void)body_bytes;
  snprintf(arg, 16, "%s", srv_req_peer(r));
}

/* A full exchange through srv over the in-memory transport: pipelined requests split across
 * reads, a file body in several partial send_file ops, a small file inline, a memory body, and
 * the lingering close (shutdown, then the peer's EOF) — no TCP handle anywhere. */
TEST(transport_in_memory_full_exchange)
{
  mem_log_t log = {0};
  pc_buf_init(&log.out, 16u * 1024 * 1024);
  make_files();
  ASSERT_OK(uv_loop_init(&T.loop));
  srv_opts_t o = {.access_log = -1};
  ASSERT_OK(srv_new(&T.loop, &o, handler, NULL, &T.srv));
  char peer[16] = "";
  srv_set_finish_cb(T.srv, mem_finish, peer);
  mem_tr_t *m = mem_new(&T.loop, &log,
                        "GET /file HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /slice HTTP/1.1\r\nHost: x\r\n\r\n"
                        "GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ASSERT_OK(srv__adopt_transport(T.srv, &m->tr));
  ASSERT_EQ(1, srv_conn_count(T.srv));
  ASSERT_OK(uv_run(&T.loop, UV_RUN_DEFAULT)); /* ends when the connection is gone */
  ASSERT_EQ(0, srv_conn_count(T.srv));
  ASSERT_EQ(1, log.closed);
  ASSERT_EQ(1, log.nshutdown); /* Connection: close -> lingering close via the transport */
  ASSERT_EQ(0, log.cancelled);
  ASSERT_EQ(3, log.nwrites); /* one head per response; small bodies inline with it */
  ASSERT_EQ((FILE_SIZE + 299999) / 300000, log.nfiles); /* partial sends resume at pos */
  ASSERT_STREQ("mem", peer);

  const char *p = log.out.p, *end = log.out.p + log.out.len;
  resp_t r;
  mem_resp(&p, end, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(FILE_SIZE, r.blen);
  for (uint64_t i = 0; i < FILE_SIZE; i++)
    if ((unsigned char)r.body[i] != pattern(i))
      ASSERT_EQ(pattern(i), (unsigned char)r.body[i]);
  ASSERT(!has_header(&r, "Connection: close"));
  mem_resp(&p, end, &r);
  ASSERT_EQ(206, r.status);
  ASSERT_EQ(5000, r.blen);
  for (uint64_t i = 0; i < 5000; i++)
    if ((unsigned char)r.body[i] != pattern(1000 + i))
      ASSERT_EQ(pattern(1000 + i), (unsigned char)r.body[i]);
  mem_resp(&p, end, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(5, r.blen);
  ASSERT(memcmp(r.body, "hello", 5) == 0);
  ASSERT(has_header(&r, "\r\nConnection: close\r\n"));
  ASSERT(p == end); /* nothing else was written */

  ASSERT_EQ(3, T.ndone);
  ASSERT_STREQ("/file", T.done[0].path);
  ASSERT_EQ(200, T.done[0].status);
  ASSERT_STREQ("/slice", T.done[1].path);
  ASSERT_EQ(206, T.done[1].status);
  ASSERT_STREQ("/hello", T.done[2].path);
  ASSERT_EQ(200, T.done[2].status);
  srv_stats_t st;
  srv_get_stats(T.srv, &st);
  ASSERT_EQ(3, st.requests);
  ASSERT_EQ(FILE_SIZE + 5000 + 5, st.body_bytes);
  ASSERT_EQ(-1, fcntl(log.file_fd, F_GETFD)); /* the file body's fd was closed */

  T.closed = 0;
  srv_close(T.srv, on_closed, NULL);
  ASSERT_OK(uv_run(&T.loop, UV_RUN_DEFAULT));
  ASSERT(T.closed);
  ASSERT_OK(uv_loop_close(&T.loop));
  pc_buf_free(&log.out);
}

/* srv_close while a send_file is in flight (the client stopped reading): the transport
 * completes the op with UV_ECANCELED before its close callback, the request ends with status
 * 0, the file is closed only after the transport let go of it, and srv frees everything. */
TEST(transport_close_with_file_in_flight)
{
  mem_log_t log = {0};
  pc_buf_init(&log.out, 16u * 1024 * 1024);
  make_files();
  ASSERT_OK(uv_loop_init(&T.loop));
  srv_opts_t o = {.access_log = -1};
  ASSERT_OK(srv_new(&T.loop, &o, handler, NULL, &T.srv));
  mem_tr_t *m = mem_new(&T.loop, &log, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
  m->hold_file = 1;
  ASSERT_OK(srv__adopt_transport(T.srv, &m->tr));
  for (int i = 0; i < 10000 && log.nfiles == 0; i++)
    uv_run(&T.loop, UV_RUN_NOWAIT);
  ASSERT_EQ(1, log.nfiles);
  ASSERT_EQ(0, T.ndone);
  ASSERT(fcntl(log.file_fd, F_GETFD) != -1); /* in use by the transport */
  T.closed = 0;
  srv_close(T.srv, on_closed, NULL);
  ASSERT_EQ(1, T.ndone); /* pending requests get their done callback from inside srv_close */
  ASSERT_EQ(0, T.done[0].status);
  ASSERT_EQ(0, log.closed); /* the transport's close runs no callback itself */
  ASSERT_OK(uv_run(&T.loop, UV_RUN_DEFAULT));
  ASSERT_EQ(1, log.closed);
  ASSERT_EQ(1, log.cancelled);
  ASSERT_STREQ("WFC", log.order); /* head written; the file op completed before the close */
  ASSERT(T.closed);
  ASSERT_EQ(-1, fcntl(log.file_fd, F_GETFD));
  ASSERT_OK(uv_loop_close(&T.loop));
  pc_buf_free(&log.out);
}

/* The response-header buffer is capped (16 KiB): a header past it is dropped whole. */
TEST(transport_resp_header_cap)
{
  mem_log_t log = {0};
  pc_buf_init(&log.out, 1024 * 1024);
  ASSERT_OK(uv_loop_init(&T.loop));
  srv_opts_t o = {.access_log = -1};
  ASSERT_OK(srv_new(&T.loop, &o, handler, NULL, &T.srv));
  mem_tr_t *m =
      mem_new(&T.loop, &log, "GET /caps HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
  m->piece = 4096;
  ASSERT_OK(srv__adopt_transport(T.srv, &m->tr));
  ASSERT_OK(uv_run(&T.loop, UV_RUN_DEFAULT));
  const char *p = log.out.p, *end = log.out.p + log.out.len;
  resp_t r;
  mem_resp(&p, end, &r);
  ASSERT_EQ(200, r.status);
  int n = 0;
  for (const char *h = r.head; (h = strstr(h, "\r\nX-Big: ")) != NULL; h += 9) {
    ASSERT_EQ(0, strncmp(h + 9 + 1000, "\r\n", 2)); /* every one whole */
    n++;
  }
  ASSERT_EQ(16384 / 1009, n);
  T.closed = 0;
  srv_close(T.srv, on_closed, NULL);
  ASSERT_OK(uv_run(&T.loop, UV_RUN_DEFAULT));
  ASSERT(T.closed);
  ASSERT_OK(uv_loop_close(&T.loop));
  pc_buf_free(&log.out);
}
