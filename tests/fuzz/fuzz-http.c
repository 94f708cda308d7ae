/* fuzz-http — libFuzzer target for the HTTP/1.1 server's connection code.
 *
 * Each input is served on one end of an AF_UNIX socketpair adopted by a real srv_t
 * (srv__adopt): the bytes go through the same read buffer, llhttp parser, limits, pipelining,
 * response writes and lingering close as a TCP connection. The first two input bytes seed the
 * split points, so the rest arrives in arbitrary pieces, with the loop run between them. The
 * handler answers every request: in memory, from a file (complete or growing), later from a
 * timer, or by aborting, depending on the path. Oracles: sanitizers; every response starts with
 * "HTTP/1.1 "; after the client closes, the connection is gone within 5 s (no hang, no leak).
 */
#include "http/srv-int.h"

#include "core/pc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static uv_loop_t loop;
static srv_t *srv;
static int file_fd = -1;
static uv_timer_t guard;
static int guard_fired;

static void on_guard(uv_timer_t *t)
{
  guard_fired = 1;
}
#define FILE_LEN 3000

typedef struct actx {
  uv_timer_t t;
  srv_req_t *r;
  int kind;
} actx_t;

static void on_ctx_close(uv_handle_t *h)
{
  free(h->data);
}

static void on_done(srv_req_t *r, int status, void *arg)
{
  actx_t *x = arg;
  uv_close((uv_handle_t *)&x->t, on_ctx_close);
}

static void on_timer(uv_timer_t *t)
{
  actx_t *x = t->data;
  uv_timer_stop(t);
  switch (x->kind) {
  case 1:
    srv_respond(x->r, 200, "text/plain", "later", 5);
    break;
  case 2:
    srv_file_avail(x->r, FILE_LEN);
    break;
  default:
    srv_abort(x->r);
    break;
  }
}

static void handler(srv_req_t *r, void *arg)
{
  const char *p = srv_req_path(r);
  actx_t *x = pc_xcalloc(1, sizeof(*x));
  x->r = r;
  uv_timer_init(&loop, &x->t);
  x->t.data = x;
  srv_req_on_done(r, on_done, x);
  srv_req_log(r, "q", srv_req_query(r));
  const char *acc = srv_req_header(r, "Accept");
  const char *ns = srv_req_header(r, "x-ns");
  (void)ns;
  if (strstr(p, "later")) {
    x->kind = 1;
    uv_timer_start(&x->t, on_timer, 0, 0);
  } else if (strstr(p, "grow")) {
    x->kind = 2;
    srv_respond_file(r, 200, NULL, dup(file_fd), 0, FILE_LEN, FILE_LEN / 3);
    uv_timer_start(&x->t, on_timer, 0, 0);
  } else if (strstr(p, "blob")) {
    srv_resp_header(r, "Docker-Content-Digest", "sha256:00");
    srv_respond_file(r, 200, "application/octet-stream", dup(file_fd), 10, FILE_LEN - 10,
                     FILE_LEN);
  } else if (strstr(p, "abort")) {
    x->kind = 3;
    srv_respond_file(r, 200, NULL, dup(file_fd), 0, FILE_LEN, 100);
    uv_timer_start(&x->t, on_timer, 0, 0);
  } else if (strcmp(srv_req_method(r), "GET") && strcmp(srv_req_method(r), "HEAD")) {
    srv_respond(r, 405, "text/plain", "method", 6);
  } else {
    srv_resp_header(r, "X-Echo", acc ? acc : "-");
    srv_respond(r, 200, "text/plain", p, strlen(p));
  }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  signal(SIGPIPE, SIG_IGN);
  pc_log_level = PC_LOG_ERR; /* no access log lines */
  PC_ASSERT(uv_loop_init(&loop) == 0);
  srv_opts_t o = {.max_header_bytes = 2048, .max_url_bytes = 512, .max_headers = 20};
  PC_ASSERT(srv_new(&loop, &o, handler, NULL, &srv) == 0);
  uv_timer_init(&loop, &guard);
  char path[] = "/tmp/fuzz-http-XXXXXX";
  file_fd = mkstemp(path);
  PC_ASSERT(file_fd >= 0);
  unlink(path);
  char b[FILE_LEN];
  for (int i = 0; i < FILE_LEN; i++)
    b[i] = (char)('a' + i % 26);
  PC_ASSERT(write(file_fd, b, FILE_LEN) == FILE_LEN);
  return 0;
}

/* Read what the server wrote; check that it looks like responses. Returns 0 on EOF. */
static int drain(int fd, size_t *total, int *first)
{
  char b[65536];
  for (;;) {
    ssize_t n = read(fd, b, sizeof(b));
    if (n == 0)
      return 0;
    if (n < 0)
      return errno == EAGAIN ? 1 : 0;
    if (*first && n >= 9) {
      PC_ASSERT(memcmp(b, "HTTP/1.1 ", 9) == 0);
      *first = 0;
    }
    *total += (size_t)n;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  int sv[2];
  if (size < 2 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return 0;
  uint32_t seed = (uint32_t)data[0] | (uint32_t)data[1] << 8;
  data += 2;
  size -= 2;
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  PC_ASSERT(srv__adopt(srv, sv[0]) == 0);
  size_t out = 0;
  int first = 1;
  size_t off = 0;
  while (off < size) {
    size_t n = size - off;
    if (seed) { /* xorshift: pieces of 1..64 bytes */
      seed ^= seed << 13;
      seed ^= seed >> 17;
      seed ^= seed << 5;
      size_t k = seed % 64 + 1;
      n = n < k ? n : k;
    }
    ssize_t w = write(sv[1], data + off, n);
    if (w > 0)
      off += (size_t)w;
    else if (w < 0 && errno != EAGAIN)
      break; /* the server closed */
    uv_run(&loop, UV_RUN_NOWAIT);
    if (!drain(sv[1], &out, &first))
      break;
  }
  /* let pending answers go out, then leave */
  for (int i = 0; i < 8; i++) {
    uv_run(&loop, UV_RUN_NOWAIT);
    if (!drain(sv[1], &out, &first))
      break;
  }
  close(sv[1]);
  /* Wait for the close. A sendfile may still be in the threadpool, which a loaded machine can
   * delay by seconds (seen: over 5 s with two builds running), so the bound is a generous time
   * (a guard timer keeps UV_RUN_ONCE from blocking forever). */
  guard_fired = 0;
  uv_timer_start(&guard, on_guard, 30000, 0);
  while (srv_conn_count(srv) > 0 && !guard_fired)
    uv_run(&loop, UV_RUN_ONCE);
  uv_timer_stop(&guard);
  if (srv_conn_count(srv) > 0) {
    fprintf(stderr, "connection still open after the client closed\n");
    abort();
  }
  return 0;
}
