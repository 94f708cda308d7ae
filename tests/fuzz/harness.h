/* tests/fuzz/harness — the connection harness shared by the libFuzzer targets that drive a real
 * srv_t (fuzz-http, fuzz-registry).
 *
 * fuzz_serve serves one input on one end of an AF_UNIX socketpair adopted by the server
 * (srv__adopt), so the bytes go through the same read buffer, llhttp parser, limits,
 * pipelining, response writes and lingering close as a TCP connection. The first two input
 * bytes seed the split points (xorshift; 0 = one piece), so the rest arrives in pieces of 1..64
 * bytes with the loop run between them. What the server writes back is read as it comes and
 * kept (up to the capture limit given to fuzz_harness_init). Then the client either
 *   - (half_close = 0) runs the loop a few more times, reading, and closes the socket: answers
 *     still in progress (a sendfile in the threadpool) are cut off, the server sees a reset;
 *   - (half_close = 1) shuts down its sending side and reads until the server has answered
 *     everything it received and closed (bounded by FUZZ_CLOSE_BOUND_MS): every answer is read
 *     whole, so the caller can check each one.
 *
 * Oracles checked here (abort() on failure, which libFuzzer reports as a crash):
 *   - the server's output starts with "HTTP/1.1 " (when it wrote at least 9 bytes);
 *   - after the client closes, the connection is gone within FUZZ_CLOSE_BOUND_MS (no hang, no
 *     leaked connection). The bound is a generous time, not a tight one: a sendfile may still
 *     be queued in the libuv threadpool, which a loaded machine can delay by seconds.
 *
 * With FUZZ_DUMP set in the environment, the output kept for each input is printed to stderr
 * (to see what a crashing input or a corpus file gets back).
 */
#ifndef FUZZ_HARNESS_H
#define FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "http/srv.h"

#define FUZZ_CLOSE_BOUND_MS 30000

typedef struct fuzz_harness {
  uv_loop_t *loop;
  srv_t *srv;
  uv_timer_t guard; /**< bounds the wait for the close */
  int guard_fired;
  char *out; /**< the first out_cap bytes the server wrote for the last input */
  size_t out_cap;
  size_t out_len;   /**< bytes kept in out (<= out_cap) */
  size_t out_total; /**< bytes the server wrote for the last input (may exceed out_len) */
  int half_close;   /**< see above */
  int dump;         /**< FUZZ_DUMP set in the environment: print each input's output kept */
} fuzz_harness_t;

/** Process-wide setup for a target: ignore SIGPIPE, silence logging below errors (no access
 * log lines). Call once from LLVMFuzzerInitialize. */
void fuzz_setup(void);

/** Prepare h for srv on loop (both stay the caller's), keeping up to out_cap bytes of each
 * input's output (0: keep none; only the first 9 bytes are looked at then), ending each input
 * as half_close says (above). Inits a timer on loop, which stays for the life of the process. */
void fuzz_harness_init(fuzz_harness_t *h, uv_loop_t *loop, srv_t *srv, size_t out_cap,
                       int half_close);

/** Serve one input (see above) and wait for the connection to close. Returns 0 when the input
 * was served (h->out, h->out_len, h->out_total describe the output), -1 when the input is too
 * short (under 2 bytes) or no socketpair could be made. Aborts when an oracle fails. */
int fuzz_serve(fuzz_harness_t *h, const uint8_t *data, size_t size);

#endif
