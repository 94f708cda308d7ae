/* srv_tcp — the TCP transport of http/srv (see srv-transport.h for the rules): libuv TCP for
 * reads and writes, sendfile(2) from the loop for file bodies in the page cache (the thread
 * pool for the rest), and the listeners.
 *
 * File bodies. A send_file op first waits (on the loop) for the socket to be writable, with a
 * uv_poll_t on a dup() of the socket (libuv forbids a uv_poll_t on the fd of a uv_tcp_t it
 * already watches, but epoll accepts a second descriptor of the same socket). When it is, and
 * every page of [off, off + len) is in the page cache (cachestat(2), or mincore(2) on a
 * PROT_READ mapping that is never touched where the kernel lacks it), sendfile(2) runs right there
 * on the non-blocking socket, as nginx does, until the range is out or the socket is full: no
 * thread pool round trip, and a full socket waits for the next writability event. A range not (all)
 * in the page cache would block the loop on disk reads, so that sendfile runs in the thread pool,
 * SRV_TCP_CHUNK bytes at most per op (the server asks for at most that much): on EAGAIN the worker
 * first waits up to SRV_TCP_POLL_MS for the socket to drain (cheaper than a loop round trip per
 * buffer); if it stays full the op goes back to the loop's writability poll, which checks the page
 * cache again. The op completes when some bytes went out, the file ended, or it failed; completions
 * run from the poll or work callbacks, never inside tcp_send_file. The poll is left running
 * after a completion (the server usually asks for the next chunk from the completion), and
 * stopped by the first event that finds no op.
 *
 * While a sendfile runs in the thread pool, the socket fd and the file fd must stay open (the
 * numbers could be reused by a new accept), so a close shuts the socket down at once (the
 * worker's sendfile fails fast) and defers uv_close to the work's after-callback (`busy`).
 *
 * States of a transport's file op (tcp_t.fstate):
 *
 *   F_NONE --send_file--> F_POLL --writable, in page cache: sendfile on the loop, bytes, end
 *                          |  ^      or error--> F_NONE (completion)
 *            writable, not |  | EAGAIN (socket full)
 *            in page cache v  |
 *                         F_WORK --bytes, end or error--> F_NONE (completion)
 *
 *   F_POLL --close or poll error--> F_NONE (completion with the error)
 *
 * A close in F_WORK waits for the worker; a close in F_POLL completes the op with UV_ECANCELED
 * once the handles are closed. Either way the completion runs before the close callback.
 */
#include "core/pc.h"
#include "http/srv-transport.h"

#include <errno.h>
#include <stdatomic.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SRV_TCP_POLL_MS 20         /* a worker waits this long for a full socket */
#define SRV_TCP_MINCORE_PAGES 1024 /* ranges of more pages go to the thread pool unchecked */

enum file_state { F_NONE, F_WORK, F_POLL };

typedef struct tcp {
  srv_tr_t tr; /* first: srv_tr_t * <-> tcp_t * */
  uv_tcp_t tcp;
  uv_poll_t poll; /* on dupfd, only while a file op waits for the socket to drain */
  uv_write_t wreq;
  uv_shutdown_t sreq;
  uv_work_t work; /* sendfile(2) on the thread pool */
  srv_tr_alloc_cb alloc_cb;
  srv_tr_read_cb read_cb;
  srv_tr_done_cb write_cb, shutdown_cb, file_cb;
  srv_tr_close_cb close_cb;
  enum file_state fstate;
  int sock;  /* the socket fd (for sendfile, shutdown, dup) */
  int dupfd; /* dup of the socket for uv_poll, or -1 */
  int ffd;   /* the file op's arguments and result */
  int64_t off;
  size_t len;
  ssize_t res;
  int pending; /* handles still to be closed before the free */
  unsigned closing : 1, poll_init : 1, polling : 1;
} tcp_t;

static const srv_tr_ops_t tcp_ops;

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
  tcp_t *t = container_of((uv_tcp_t *)h, tcp_t, tcp);
  (void)hint;
  t->alloc_cb(&t->tr, b);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
  tcp_t *t = container_of((uv_tcp_t *)st, tcp_t, tcp);
  t->read_cb(&t->tr, nread, b);
}

static int tcp_read_start(srv_tr_t *tr, srv_tr_alloc_cb alloc, srv_tr_read_cb read)
{
  tcp_t *t = (tcp_t *)tr;
  t->alloc_cb = alloc;
  t->read_cb = read;
  return uv_read_start((uv_stream_t *)&t->tcp, on_alloc, on_read);
}

static void tcp_read_stop(srv_tr_t *tr)
{
  tcp_t *t = (tcp_t *)tr;
  uv_read_stop((uv_stream_t *)&t->tcp);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void on_write(uv_write_t *w, int status)
{
  tcp_t *t = container_of(w, tcp_t, wreq);
  t->write_cb(&t->tr, status);
}

static int tcp_write(srv_tr_t *tr, const uv_buf_t *bufs, unsigned nbufs, srv_tr_done_cb cb)
{
  tcp_t *t = (tcp_t *)tr;
  t->write_cb = cb;
  return uv_write(&t->wreq, (uv_stream_t *)&t->tcp, bufs, nbufs, on_write);
}

static int tcp_try_write(srv_tr_t *tr, const uv_buf_t *bufs, unsigned nbufs)
{
  tcp_t *t = (tcp_t *)tr;
  int n = uv_try_write((uv_stream_t *)&t->tcp, bufs, nbufs);
  return n == UV_EAGAIN ? 0 : n;
}

static size_t tcp_write_queue_size(const srv_tr_t *tr)
{
  const tcp_t *t = (const tcp_t *)tr;
  return uv_stream_get_write_queue_size((const uv_stream_t *)&t->tcp);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
  tcp_t *t = container_of(req, tcp_t, sreq);
  t->shutdown_cb(&t->tr, status);
}

static int tcp_shutdown(srv_tr_t *tr, srv_tr_done_cb cb)
{
  tcp_t *t = (tcp_t *)tr;
  t->shutdown_cb = cb;
  return uv_shutdown(&t->sreq, (uv_stream_t *)&t->tcp, on_shutdown);
}

/* ---- file bodies -------------------------------------------------------------------------- */

/* Thread pool: one sendfile(2) op on the non-blocking socket. libuv's uv_fs_sendfile is not
 * used: on Linux it first tries copy_file_range, which fails on a socket, and then falls back to
 * copying through an 8 KiB user-space buffer instead of calling sendfile. */
static void sendfile_work(uv_work_t *w)
{
  tcp_t *t = container_of(w, tcp_t, work);
  off_t off = (off_t)t->off;
  size_t done = 0;
  int err = 0;
  while (done < t->len) {
    ssize_t r = sendfile(t->sock, t->ffd, &off, t->len - done);
    if (r > 0) {
      done += (size_t)r;
      continue;
    }
    if (r == 0)
      break; /* the file is shorter than announced */
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      err = -errno;
      break;
    }
    /* The socket buffer is full: wait a little here; a slow client is left to the loop's
     * writability poll, so no thread ever waits long on a client. */
    struct pollfd p = {t->sock, POLLOUT, 0};
    if (poll(&p, 1, SRV_TCP_POLL_MS) != 1) {
      err = UV_EAGAIN;
      break;
    }
  }
  t->res = done > 0 ? (ssize_t)done : err;
}

static void tcp_close_handles(tcp_t *t);

static void file_complete(tcp_t *t, ssize_t res)
{
  t->fstate = F_NONE;
  t->file_cb(&t->tr, res);
}

/* cachestat(2) (Linux 6.5): the page-cache state of a file range in one call, no mapping. The
 * kernel headers of older distributions lack it, hence these local definitions. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct tcp_cachestat_range {
  uint64_t off, len;
};
struct tcp_cachestat {
  uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

/* 1: every page of [start, start + span) is cached, 0: not (or in doubt), -1: cachestat is not
 * available here (an older kernel: ENOSYS; a seccomp filter that refuses it: EPERM on a file of
 * our own), which is then remembered. An EPERM on a file of another owner is cachestat refusing
 * that file (Linux 6.14 on: not owned and not writable): in doubt, for that call only, and not
 * mincore's answer either (mincore pretends such a file's pages are all cached). */
static int resident_cachestat(int fd, uint64_t start, size_t span, size_t pages)
{
  static atomic_int unusable;
  if (atomic_load_explicit(&unusable, memory_order_relaxed))
    return -1;
  struct tcp_cachestat_range r = {start, span};
  struct tcp_cachestat cs;
  if (syscall(__NR_cachestat, fd, &r, &cs, 0) == 0)
    return cs.nr_cache >= pages;
  struct stat st;
  if (errno == ENOSYS || (errno == EPERM && fstat(fd, &st) == 0 && st.st_uid == geteuid())) {
    atomic_store_explicit(&unusable, 1, memory_order_relaxed);
    return -1;
  }
  return 0;
}

/* The same answer from mincore(2) on a mapping that is never touched (no page is faulted in). */
static int resident_mincore(int fd, uint64_t start, size_t span, size_t pages)
{
  unsigned char vec[SRV_TCP_MINCORE_PAGES];
  void *m = mmap(NULL, span, PROT_READ, MAP_SHARED, fd, (off_t)start);
  if (m == MAP_FAILED)
    return 0;
  int ok = mincore(m, span, vec) == 0;
  munmap(m, span);
  /* the low bit of every byte: 8 pages at a time (a 1 MiB chunk is 256 of them) */
  const uint64_t lows = 0x0101010101010101ull;
  size_t i = 0;
  for (; ok && i + 8 <= pages; i += 8) {
    uint64_t w;
    memcpy(&w, vec + i, 8);
    ok = (w & lows) == lows;
  }
  for (; ok && i < pages; i++)
    ok = vec[i] & 1;
  return ok;
}

int srv_tcp__resident(int fd, uint64_t off, size_t len, int how)
{
  static long page;
  if (!page)
    page = sysconf(_SC_PAGESIZE);
  uint64_t start = off & ~(uint64_t)(page - 1);
  size_t span = (size_t)(off + len - start);
  size_t pages = (span + (size_t)page - 1) / (size_t)page;
  if (pages > SRV_TCP_MINCORE_PAGES || len == 0)
    return 0;
  if (how != SRV_TCP_RESIDENT_MINCORE) {
    int rc = resident_cachestat(fd, start, span, pages);
    if (rc >= 0 || how == SRV_TCP_RESIDENT_CACHESTAT)
      return rc;
  }
  return resident_mincore(fd, start, span, pages);
}

/* Is every page of [off, off + len) of fd in the page cache? cachestat(2) where the kernel has
 * it (one syscall: a mapping's mmap + munmap cost a TLB shootdown on every core the process
 * runs on), else mincore(2). Any doubt (an error, a range past the end of the file, a range
 * too long to check) says no: the thread pool then sends it. */
static int in_page_cache(int fd, uint64_t off, size_t len)
{
  return srv_tcp__resident(fd, off, len, SRV_TCP_RESIDENT_ANY) == 1;
}

/* On the loop, the range in the page cache and the socket writable: sendfile until the range
 * is out or the socket is full. Returns bytes sent (> 0), 0 (the file ended), UV_EAGAIN (full
 * before any byte went out: wait again) or a negative libuv error. */
static ssize_t sendfile_here(tcp_t *t)
{
  off_t off = (off_t)t->off;
  size_t done = 0;
  while (done < t->len) {
    ssize_t r = sendfile(t->sock, t->ffd, &off, t->len - done);
    if (r > 0) {
      done += (size_t)r;
      continue;
    }
    if (r == 0)
      break;
    if (errno == EINTR)
      continue;
    if (done > 0)
      break; /* full (or failing): report the bytes, the next op meets the error */
    return errno == EAGAIN || errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
  }
  return (ssize_t)done;
}

static void on_poll(uv_poll_t *p, int status, int events);

/* Wait (on the loop) for the socket to take more; on_poll then sends. */
static int wait_writable(tcp_t *t)
{
  int rc = 0;
  if (!t->poll_init) {
    t->dupfd = dup(t->sock);
    rc = t->dupfd < 0 ? -errno : uv_poll_init(t->tcp.loop, &t->poll, t->dupfd);
    if (rc != 0) {
      pc_log(PC_LOG_WARN, "srv-poll-setup-failed err=%s", pc_errname(rc));
      return rc;
    }
    t->poll.data = t;
    t->poll_init = 1;
  }
  if (t->polling)
    return 0;
  rc = uv_poll_start(&t->poll, UV_WRITABLE, on_poll);
  if (rc == 0)
    t->polling = 1;
  return rc;
}

static void poll_stop(tcp_t *t)
{
  if (t->polling)
    uv_poll_stop(&t->poll);
  t->polling = 0;
}

static void on_sendfile(uv_work_t *w, int status)
{
  tcp_t *t = container_of(w, tcp_t, work);
  ssize_t res = status < 0 ? status : t->res;
  if (t->closing) {
    file_complete(t, UV_ECANCELED);
    tcp_close_handles(t);
    return;
  }
  if (res == UV_EAGAIN) {
    int rc = wait_writable(t);
    t->fstate = F_POLL;
    if (rc != 0)
      file_complete(t, rc);
    return;
  }
  file_complete(t, res);
}

static int queue_sendfile(tcp_t *t)
{
  int rc = uv_queue_work(t->tcp.loop, &t->work, sendfile_work, on_sendfile);
  if (rc == 0)
    t->fstate = F_WORK;
  return rc;
}

static void on_poll(uv_poll_t *p, int status, int events)
{
  tcp_t *t = p->data;
  (void)events;
  if (t->fstate != F_POLL) { /* left running after the last op: nothing to send */
    poll_stop(t);
    return;
  }
  if (status < 0) {
    poll_stop(t);
    file_complete(t, status);
    return;
  }
  if (in_page_cache(t->ffd, (uint64_t)t->off, t->len)) {
    ssize_t res = sendfile_here(t);
    if (res == UV_EAGAIN)
      return; /* full before a byte went out: the poll stays on */
    if (res < 0)
      poll_stop(t);
    file_complete(t, res); /* the poll stays on for the next chunk */
    return;
  }
  poll_stop(t);
  int rc = queue_sendfile(t);
  if (rc != 0)
    file_complete(t, rc);
}

static int tcp_send_file(srv_tr_t *tr, int fd, uint64_t off, size_t len, srv_tr_done_cb cb)
{
  tcp_t *t = (tcp_t *)tr;
  PC_ASSERT(t->fstate == F_NONE && len > 0);
  t->file_cb = cb;
  t->ffd = fd;
  t->off = (int64_t)off;
  t->len = len;
  int rc = wait_writable(t);
  if (rc == 0)
    t->fstate = F_POLL;
  return rc;
}

/* ---- closing ------------------------------------------------------------------------------ */

static void on_handle_close(uv_handle_t *h)
{
  tcp_t *t = h->data;
  if (--t->pending > 0)
    return;
  if (t->dupfd >= 0)
    close(t->dupfd);
  if (t->fstate == F_POLL) /* closed while waiting for the socket to drain */
    file_complete(t, UV_ECANCELED);
  srv_tr_close_cb cb = t->close_cb;
  if (cb)
    cb(&t->tr);
  free(t);
}

static void tcp_close_handles(tcp_t *t)
{
  t->pending = 1;
  uv_close((uv_handle_t *)&t->tcp, on_handle_close);
  if (t->poll_init) {
    t->pending++;
    uv_close((uv_handle_t *)&t->poll, on_handle_close);
  }
}

static void tcp_close(srv_tr_t *tr, srv_tr_close_cb cb)
{
  tcp_t *t = (tcp_t *)tr;
  PC_ASSERT(!t->closing);
  t->closing = 1;
  t->close_cb = cb;
  uv_read_stop((uv_stream_t *)&t->tcp);
  if (t->fstate == F_WORK) {
    /* The thread pool is using the fds: make its sendfile fail fast, close when it returns. */
    shutdown(t->sock, SHUT_RDWR);
    return;
  }
  poll_stop(t);         /* an op in F_POLL completes (UV_ECANCELED) in on_handle_close */
  tcp_close_handles(t); /* a pending write or shutdown completes with UV_ECANCELED */
}

static void tcp_peer(srv_tr_t *tr, char *buf, size_t cap)
{
  tcp_t *t = (tcp_t *)tr;
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[INET6_ADDRSTRLEN] = "?";
  snprintf(buf, cap, "unix");
  if (uv_tcp_getpeername(&t->tcp, (struct sockaddr *)&ss, &len) != 0)
    return;
  if (ss.ss_family == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    uv_ip4_name(a, ip, sizeof(ip));
    snprintf(buf, cap, "%s:%u", ip, (unsigned)ntohs(a->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    uv_ip6_name(a, ip, sizeof(ip));
    snprintf(buf, cap, "[%s]:%u", ip, (unsigned)ntohs(a->sin6_port));
  }
}

static const srv_tr_ops_t tcp_ops = {
    .read_start = tcp_read_start,
    .read_stop = tcp_read_stop,
    .write = tcp_write,
    .send_file = tcp_send_file,
    .write_queue_size = tcp_write_queue_size,
    .try_write = tcp_try_write,
    .shutdown = tcp_shutdown,
    .close = tcp_close,
    .peer = tcp_peer,
};

/* ---- making transports -------------------------------------------------------------------- */

static tcp_t *tcp_new(uv_loop_t *loop)
{
  tcp_t *t = pc_xcalloc(1, sizeof(*t));
  t->tr.ops = &tcp_ops;
  t->dupfd = -1;
  t->ffd = -1;
  t->sock = -1;
  uv_tcp_init(loop, &t->tcp);
  t->tcp.data = t;
  return t;
}

/* The handle is connected: remember its fd, set TCP_NODELAY. */
static int tcp_ready(tcp_t *t, srv_tr_t **out)
{
  uv_os_fd_t fd;
  int rc = uv_fileno((uv_handle_t *)&t->tcp, &fd);
  if (rc != 0) {
    t->closing = 1;
    tcp_close_handles(t);
    *out = NULL;
    return rc;
  }
  t->sock = fd;
  uv_tcp_nodelay(&t->tcp, 1);
  *out = &t->tr;
  return 0;
}

struct srv_tcp_listener {
  uv_tcp_t tcp;
  srv_tcp_conn_cb cb;
  void *arg;
  srv_tcp_listener_closed_cb closed_cb;
  void *closed_arg;
};

static void on_connection(uv_stream_t *server, int status)
{
  srv_tcp_listener_t *l = container_of((uv_tcp_t *)server, srv_tcp_listener_t, tcp);
  l->cb(l, status, l->arg);
}

int srv_tcp_listen(uv_loop_t *loop, const struct sockaddr *addr, int backlog, srv_tcp_conn_cb cb,
                   void *arg, srv_tcp_listener_t **out)
{
  srv_tcp_listener_t *l = pc_xcalloc(1, sizeof(*l));
  l->cb = cb;
  l->arg = arg;
  uv_tcp_init(loop, &l->tcp);
  *out = l;
  int rc = uv_tcp_bind(&l->tcp, addr, addr->sa_family == AF_INET6 ? UV_TCP_IPV6ONLY : 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&l->tcp, backlog, on_connection);
  return rc;
}

int srv_tcp_listener_port(const srv_tcp_listener_t *l)
{
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &len) != 0)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return -1;
}

static void on_listener_close(uv_handle_t *h)
{
  srv_tcp_listener_t *l = container_of((uv_tcp_t *)h, srv_tcp_listener_t, tcp);
  srv_tcp_listener_closed_cb cb = l->closed_cb;
  void *arg = l->closed_arg;
  free(l);
  if (cb)
    cb(arg);
}

void srv_tcp_listener_close(srv_tcp_listener_t *l, srv_tcp_listener_closed_cb cb, void *arg)
{
  l->closed_cb = cb;
  l->closed_arg = arg;
  uv_close((uv_handle_t *)&l->tcp, on_listener_close);
}

int srv_tcp_accept(srv_tcp_listener_t *l, srv_tr_t **out)
{
  tcp_t *t = tcp_new(l->tcp.loop);
  int rc = uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&t->tcp);
  if (rc != 0) {
    t->closing = 1;
    tcp_close_handles(t);
    *out = NULL;
    return rc;
  }
  return tcp_ready(t, out);
}

int srv_tcp_open(uv_loop_t *loop, int fd, srv_tr_t **out)
{
  tcp_t *t = tcp_new(loop);
  int rc = uv_tcp_open(&t->tcp, fd);
  if (rc != 0) {
    close(fd);
    t->closing = 1;
    tcp_close_handles(t);
    *out = NULL;
    return rc;
  }
  return tcp_ready(t, out);
}
