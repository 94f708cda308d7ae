/* srv-transport — the byte stream under one server connection (internal to http/srv*.c and
 * the unit tests; not part of the srv.h API).
 *
 * http/srv.c (parsing, requests, keep-alive, limits, timers, access log) talks to its peer only
 * through a srv_tr_t: an ops table plus the object it works on. http/srv_tcp.c is the first
 * implementation (libuv TCP, sendfile(2) from the loop or the thread pool); a TLS transport
 * would be a second one (read: decrypt before delivering; write: encrypt; send_file: pread +
 * encrypt), without
 * touching srv.c, routes or the mirror. An implementation embeds srv_tr_t as its first member
 * (or recovers itself with container_of) and fills ops.
 *
 * Rules every implementation keeps and srv.c relies on:
 * - One loop thread. Every op is called and every callback runs on the loop of the transport.
 *   No callback ever runs from inside the op call that started it (so the caller's state is
 *   consistent when it runs); an op that fails synchronously returns a negative libuv error
 *   and never calls its callback.
 * - Every async op that returned 0 (write, send_file, shutdown) calls its completion exactly
 *   once: with its result, or with UV_ECANCELED (or another error) when the transport is
 *   closed first. Those completions run before the close callback, never after it.
 * - The server has at most one write or send_file in flight (responses are strictly ordered),
 *   and calls shutdown only when none is in flight. The bytes given to write and the fd given
 *   to send_file must stay valid until that op's completion (the caller owns them).
 * - Reading: between read_start and read_stop (or close) the transport asks alloc for room and
 *   delivers plaintext bytes to read (nread > 0), or UV_EOF once (the peer sends no more), or
 *   another negative error; nread == 0 means nothing (ignore). alloc may give a zero-length
 *   buffer, then read is called with UV_ENOBUFS. read_start again with other callbacks
 *   replaces them. After read_stop or close, read is not called again; read_stop when not
 *   reading does nothing.
 * - close(t, cb) is the end, and may be called at any time, once, also with ops in flight. It
 *   runs no callback itself: the transport stops reading, makes pending ops complete on later
 *   loop turns (a send_file running on a worker is cut short, e.g. by shutdown(2), and
 *   completes when the worker returns), releases its resources, then calls cb (may be NULL)
 *   exactly once, last. t is freed by the implementation after cb returns. No other op may be
 *   called after close.
 * - write_queue_size: bytes accepted by write but not yet handed to the kernel (the write
 *   stall detector compares it between timer runs).
 * - peer: the peer address as text for the access log ("1.2.3.4:5", "[::1]:5", "unix", ...).
 */
#ifndef SRV_TRANSPORT_H
#define SRV_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

typedef struct srv_tr srv_tr_t;

typedef void (*srv_tr_alloc_cb)(srv_tr_t *t, uv_buf_t *buf);
typedef void (*srv_tr_read_cb)(srv_tr_t *t, ssize_t nread, const uv_buf_t *buf);
/** write and shutdown: 0 or a negative libuv error. send_file: bytes sent (> 0, possibly fewer
 * than asked), 0 when the file ended before off + len, or a negative libuv error. */
typedef void (*srv_tr_done_cb)(srv_tr_t *t, ssize_t result);
typedef void (*srv_tr_close_cb)(srv_tr_t *t);

typedef struct srv_tr_ops {
  int (*read_start)(srv_tr_t *t, srv_tr_alloc_cb alloc, srv_tr_read_cb read);
  void (*read_stop)(srv_tr_t *t);
  /** Write nbufs buffers in order (a response head, with or without a memory body). */
  int (*write)(srv_tr_t *t, const uv_buf_t *bufs, unsigned nbufs, srv_tr_done_cb cb);
  /** Send bytes [off, off + len) of fd (len > 0). Waiting for a full socket to drain is the
   * transport's job: cb runs when some bytes went out, the file ended, or it failed. */
  int (*send_file)(srv_tr_t *t, int fd, uint64_t off, size_t len, srv_tr_done_cb cb);
  size_t (*write_queue_size)(const srv_tr_t *t);
  /** Close the sending side once written bytes are out (for a lingering close). */
  int (*shutdown)(srv_tr_t *t, srv_tr_done_cb cb);
  void (*close)(srv_tr_t *t, srv_tr_close_cb cb);
  void (*peer)(srv_tr_t *t, char *buf, size_t cap);
  /** Optional (NULL: none): the verified client identity for the access log (TLS: the
   * client certificate's subject, RFC 2253), "" when there is none. */
  void (*client)(srv_tr_t *t, char *buf, size_t cap);
  /** Optional (NULL: none): write what the peer takes at once, synchronously, without a
   * callback (uv_try_write): the bytes written (0 when none could be), or a negative libuv
   * error. Called only while no write or send_file of the transport is in flight. */
  int (*try_write)(srv_tr_t *t, const uv_buf_t *bufs, unsigned nbufs);
} srv_tr_ops_t;

struct srv_tr {
  const srv_tr_ops_t *ops;
  void *data; /**< the user's (srv.c: its connection); set by the user, never read by ops */
};

/* ---- the TCP transport (http/srv_tcp.c) --------------------------------------------------- */

typedef struct srv_tcp_listener srv_tcp_listener_t;
/** A new connection arrived on l: accept it with srv_tcp_accept. */
typedef void (*srv_tcp_conn_cb)(srv_tcp_listener_t *l, int status, void *arg);
typedef void (*srv_tcp_listener_closed_cb)(void *arg);

/** Bind and listen on addr (IPv6 addresses are v6-only). *out freed by srv_tcp_listener_close
 * (on error too: the caller closes what it got, *out is set whenever a handle was made). */
int srv_tcp_listen(uv_loop_t *loop, const struct sockaddr *addr, int backlog, srv_tcp_conn_cb cb,
                   void *arg, srv_tcp_listener_t **out);
/** The bound port, or -1. */
int srv_tcp_listener_port(const srv_tcp_listener_t *l);
/** Close l; cb(arg) runs from its close callback, after which l is freed. */
void srv_tcp_listener_close(srv_tcp_listener_t *l, srv_tcp_listener_closed_cb cb, void *arg);
/** Accept one connection from l as a transport (TCP_NODELAY set). On error *out is NULL. */
int srv_tcp_accept(srv_tcp_listener_t *l, srv_tr_t **out);
/** A transport over an already-connected stream socket fd (any family, e.g. AF_UNIX). Takes
 * ownership of fd, also on error (closed). On error *out is NULL. */
int srv_tcp_open(uv_loop_t *loop, int fd, srv_tr_t **out);

enum { SRV_TCP_RESIDENT_ANY, SRV_TCP_RESIDENT_CACHESTAT, SRV_TCP_RESIDENT_MINCORE };
/** Is every page of [off, off + len) of fd in the page cache (the check before a sendfile on
 * the loop)? 1 yes, 0 no or in doubt (len 0, past the end, more than 1024 pages, a file
 * cachestat refuses). how: ANY (cachestat(2), mincore(2) where the kernel or the seccomp
 * filter lacks it), or one of them only (for the tests: CACHESTAT returns -1 where cachestat
 * is not available). */
int srv_tcp__resident(int fd, uint64_t off, size_t len, int how);

/* ---- the TLS transport (http/srv_tls.c, configuration in srv-tls.h) ------------------------ */

struct srv_tls;
/** Wrap the connected transport in (TCP) in TLS with cfg's current SSL_CTX. Takes ownership
 * of in (closed on error too). The handshake starts at once; a TLS handshake timeout closes
 * it (reported to the reader as UV_ETIMEDOUT). On error *out is NULL. */
int srv_tls_wrap(struct srv_tls *cfg, uv_loop_t *loop, srv_tr_t *in, srv_tr_t **out);

#endif
