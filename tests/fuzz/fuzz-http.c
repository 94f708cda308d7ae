/* fuzz-http — libFuzzer target for the HTTP/1.1 server's connection code.
 *
 * Each input is served by tests/fuzz/harness (fuzz_serve): on one end of an AF_UNIX socketpair
 * adopted by a real srv_t, in arbitrary pieces seeded by the first two input bytes. The
 * handler here is a toy that answers every request: in memory, from a file (complete or
 * growing), later from a timer, or by aborting, depending on the path. Oracles (the harness's):
 * sanitizers; the output starts with "HTTP/1.1 "; after the client closes, the connection is
 * gone within FUZZ_CLOSE_BOUND_MS (no hang, no leak).
 */
#include "tests/fuzz/harness.h"

#include "core/pc.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static uv_loop_t loop;
static srv_t *srv;
static int file_fd = -1;
static fuzz_harness_t harness;

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
    srv_respond_file(r, 200, "application/octet-stream", dup(file_fd), 10, FILE_LEN - 10, FILE_LEN);
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
  fuzz_setup();
  PC_ASSERT(uv_loop_init(&loop) == 0);
  srv_opts_t o = {.max_header_bytes = 2048, .max_url_bytes = 512, .max_headers = 20};
  PC_ASSERT(srv_new(&loop, &o, handler, NULL, &srv) == 0);
  fuzz_harness_init(&harness, &loop, srv, 0, 0);
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  (void)fuzz_serve(&harness, data, size);
  return 0;
}
