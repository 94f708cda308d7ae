/* tests/fuzz/harness — see harness.h. */
#include "tests/fuzz/harness.h"

#include "core/pc.h"
#include "http/srv-int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FUZZ_HEAD_KEEP 16 /* always kept, for the "HTTP/1.1 " check */

void fuzz_setup(void)
{
  signal(SIGPIPE, SIG_IGN);
  pc_log_level = PC_LOG_ERR; /* no access log lines */
}

static void on_guard(uv_timer_t *t)
{
  fuzz_harness_t *h = t->data;
  h->guard_fired = 1;
}

void fuzz_harness_init(fuzz_harness_t *h, uv_loop_t *loop, srv_t *srv, size_t out_cap,
                       int half_close)
{
  memset(h, 0, sizeof(*h));
  h->loop = loop;
  h->srv = srv;
  h->out_cap = out_cap > FUZZ_HEAD_KEEP ? out_cap : FUZZ_HEAD_KEEP;
  h->out = pc_xmalloc(h->out_cap);
  h->half_close = half_close;
  h->dump = getenv("FUZZ_DUMP") != NULL;
  uv_timer_init(loop, &h->guard);
  h->guard.data = h;
}

/* Read what the server wrote and keep the start of it; check that it looks like responses.
 * Returns 0 on EOF or error, 1 when there is nothing more to read for now. */
static int drain(fuzz_harness_t *h, int fd)
{
  char b[65536];
  for (;;) {
    ssize_t n = read(fd, b, sizeof(b));
    if (n == 0)
      return 0;
    if (n < 0)
      return errno == EAGAIN ? 1 : 0;
    size_t room = h->out_cap - h->out_len;
    size_t keep = (size_t)n < room ? (size_t)n : room;
    int had_head = h->out_len >= 9;
    memcpy(h->out + h->out_len, b, keep);
    h->out_len += keep;
    h->out_total += (size_t)n;
    if (!had_head && h->out_len >= 9)
      PC_ASSERT(memcmp(h->out, "HTTP/1.1 ", 9) == 0);
  }
}

int fuzz_serve(fuzz_harness_t *h, const uint8_t *data, size_t size)
{
  int sv[2];
  h->out_len = h->out_total = 0;
  if (size < 2 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return -1;
  uint32_t seed = (uint32_t)data[0] | (uint32_t)data[1] << 8;
  data += 2;
  size -= 2;
  fcntl(sv[1], F_SETFL, O_NONBLOCK);
  PC_ASSERT(srv__adopt(h->srv, sv[0]) == 0);
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
    uv_run(h->loop, UV_RUN_NOWAIT);
    if (!drain(h, sv[1]))
      break;
  }
  if (h->half_close) {
    /* Read every answer: end the request stream and read until the server closes (it answers
     * what it has received, then closes), bounded by the guard. */
    shutdown(sv[1], SHUT_WR);
    h->guard_fired = 0;
    uv_timer_start(&h->guard, on_guard, FUZZ_CLOSE_BOUND_MS, 0);
    while (srv_conn_count(h->srv) > 0 && !h->guard_fired) {
      uv_run(h->loop, UV_RUN_ONCE);
      (void)drain(h, sv[1]);
    }
    uv_timer_stop(&h->guard);
    (void)drain(h, sv[1]);
    if (srv_conn_count(h->srv) > 0) {
      fprintf(stderr, "connection still open after the client's EOF\n");
      abort();
    }
  } else {
    /* let pending answers go out, then leave */
    for (int i = 0; i < 8; i++) {
      uv_run(h->loop, UV_RUN_NOWAIT);
      if (!drain(h, sv[1]))
        break;
    }
  }
  close(sv[1]);
  if (h->dump)
    fprintf(stderr, "--- %zu bytes out:\n%.*s\n---\n", h->out_total, (int)h->out_len, h->out);
  /* Wait for the close. A sendfile may still be in the threadpool, which a loaded machine can
   * delay by seconds (seen: over 5 s with two builds running), so the bound is a generous time
   * (the guard timer also keeps UV_RUN_ONCE from blocking forever). */
  h->guard_fired = 0;
  uv_timer_start(&h->guard, on_guard, FUZZ_CLOSE_BOUND_MS, 0);
  while (srv_conn_count(h->srv) > 0 && !h->guard_fired)
    uv_run(h->loop, UV_RUN_ONCE);
  uv_timer_stop(&h->guard);
  if (srv_conn_count(h->srv) > 0) {
    fprintf(stderr, "connection still open after the client closed\n");
    abort();
  }
  return 0;
}
