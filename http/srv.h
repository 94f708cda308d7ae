/* http/srv — the HTTP/1.1 server: libuv TCP, llhttp parsing, keep-alive, pipelining, limits.
 *
 * One loop thread owns every connection. Requests on a connection are handled one at a time in
 * order (pipelined requests wait, parsed later); the handler may answer at once or later (after
 * an upstream fetch), but must answer every request exactly once with one of srv_respond*,
 * unless srv_req_on_done reported the request gone first.
 *
 * Lifetime of a srv_req_t: from the handler call until its done callback (srv_req_on_done) has
 * run; after that the pointer is invalid. srv_respond, srv_respond_file and srv_file_avail never
 * run the done callback before they return (a failure is handled on a later loop turn);
 * srv_abort and srv_close may. If the client disconnects before the answer, the done
 * callback runs with status 0 and any later srv_* call on the request is a bug, so a handler that
 * answers later must register a done callback and forget the request in it.
 *
 * Limits are answered, never crashed on: header block too large or too many headers -> 431,
 * URL too long -> 414, malformed request -> 400, a body on GET/HEAD -> 400, then the connection
 * is closed. Slow clients: a header-read timeout and a keep-alive idle timeout close the
 * connection; a client that stops reading its response is closed after a write stall timeout.
 * Past max_conns, new connections get a 503 and are closed.
 *
 * Responses stream: file bodies go out with sendfile(2) on the thread pool in
 * bounded chunks, waiting for the socket to drain; per-connection memory does not depend on
 * the body size. A file body may still be growing (a live fill): the server sends up to the
 * announced end and waits for srv_file_avail.
 *
 * Details of the contract (see http/srv.c for the design):
 * - The process must ignore SIGPIPE (the daemon's main does; so do the tests).
 * - A request with a body on a method other than GET/HEAD reaches the handler; the body is
 *   never read, and the connection closes after the response.
 * - When the client closes its sending side (EOF) while its request waits for the handler or
 *   for srv_file_avail, it is taken as gone: the done callback runs with 0. A response being
 *   written is finished, and requests already received are still answered, then it closes.
 * - A connection that must close after a response (Connection: close, HTTP/1.0, errors) does
 *   a lingering close: shutdown, then unread input is discarded for up to 2 s.
 * - Every response carries Content-Length (except 1xx/204/304) and, when the connection will
 *   close, "Connection: close". No Date header.
 * - Access log: one pc_log(PC_LOG_INFO) line per answered request, in the key=value
 *   convention of core/pc.h (so the JSON log format turns it into fields):
 *   `req method=GET path=/v2/... status=200 bytes=123 ms=4 peer=1.2.3.4:5 key=value...`;
 *   status=0 when the response did not complete. Method, path, peer and srv_req_log values
 *   go through pc_log_quote (quoted when not plain; the path is cut at 256 bytes), so a
 *   client cannot end the line or add a field. Over TLS with a verified client certificate the
 *   line has `tls_subject=` (its subject, RFC 2253).
 */
#ifndef SRV_H
#define SRV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct srv srv_t;
typedef struct srv_req srv_req_t;

/** Called once per request, in order per connection. */
typedef void (*srv_handler_cb)(srv_req_t *req, void *arg);
/** Called exactly once when a request ends: status is the HTTP status sent (0 if the client
 * went away or the connection was aborted before the response completed). req is invalid
 * after this returns. */
typedef void (*srv_done_cb)(srv_req_t *req, int status, void *arg);
/** Called after srv_close has closed every handle. */
typedef void (*srv_closed_cb)(void *arg);

typedef struct srv_opts {
  size_t max_header_bytes;    /**< whole header block; default 16384 -> 431 beyond */
  size_t max_url_bytes;       /**< request target; default 8192 -> 414 beyond */
  size_t max_headers;         /**< default 100 -> 431 beyond */
  unsigned header_timeout_ms; /**< to receive a whole request head; default 15000 */
  unsigned idle_timeout_ms;   /**< keep-alive idle between requests; default 60000 */
  unsigned write_timeout_ms;  /**< no write progress for this long closes; default 120000 */
  unsigned max_conns;         /**< default 4096 */
  int access_log;             /**< one log line per request (0 or 1: on; -1: off) */
} srv_opts_t;

/** Create a server on loop. opts may be NULL (defaults). *out freed by srv_close. */
int srv_new(uv_loop_t *loop, const srv_opts_t *opts, srv_handler_cb cb, void *arg, srv_t **out);
/** Replace the limits and timeouts (a config reload). New values apply to what starts after
 * the call: connections accepted, requests parsed and timers armed from now on. */
void srv_set_opts(srv_t *s, const srv_opts_t *opts);
/** Called for every request that ends (answered, aborted or client gone), before its
 * access-log line is written (so it may still add srv_req_log fields) and before the done
 * callback. status 0 = did not complete; body_bytes = body bytes sent. */
typedef void (*srv_finish_cb)(srv_req_t *r, int status, uint64_t body_bytes, void *arg);
void srv_set_finish_cb(srv_t *s, srv_finish_cb cb, void *arg);
/** Decide on a new connection before anything is read from it: on a TLS listener before the
 * handshake. ip is the peer's numeric address ("10.0.0.7", "::1"; "" when it has none), tls 1
 * on a TLS listener. Return 1 to serve it, 0 to close it at once (no byte is read or written:
 * the client sees the connection closed). NULL (the default): every connection is served. */
typedef int (*srv_accept_cb)(const char *ip, int tls, void *arg);
void srv_set_accept_filter(srv_t *s, srv_accept_cb cb, void *arg);
/** Listen on "IPv4:PORT", "[IPv6]:PORT" or "host:PORT" (numeric addresses only). Port 0 picks
 * a free port; srv_port tells which. May be called several times. */
int srv_listen(srv_t *s, const char *addr);
struct srv_tls;
/** Listen like srv_listen, but every connection is TLS with tls's configuration (http/srv-tls.h;
 * tls must outlive the listener: free it after srv_close). */
int srv_listen_tls(srv_t *s, const char *addr, struct srv_tls *tls);
/** The port of the idx-th listener (in srv_listen order), or -1. */
int srv_port(const srv_t *s, int idx);
/** Stop accepting, close every connection (pending requests get their done callback with 0,
 * from inside srv_close), close all handles, free s, then call cb (may be NULL) from the last
 * close callback (synchronously only if s never had a listener nor a connection). Idempotent. */
void srv_close(srv_t *s, srv_closed_cb cb, void *arg);
/** Graceful stop, step one: close the listeners (no new connections), close idle keep-alive
 * connections, and let every request in progress finish its answer, after which its connection
 * closes (pipelined requests not yet started are dropped). cb (may be NULL) runs once, when no
 * connection is left — possibly before srv_drain returns. The caller bounds the wait itself:
 * srv_close at any time aborts what is left and frees s. */
void srv_drain(srv_t *s, srv_closed_cb cb, void *arg);
/** Number of open connections (for metrics and tests). */
unsigned srv_conn_count(const srv_t *s);

typedef struct srv_stats {
  uint64_t requests;    /**< requests finished */
  uint64_t by_class[6]; /**< [0] aborted / client gone, [1]..[5] 1xx..5xx */
  uint64_t body_bytes;  /**< response body bytes sent */
} srv_stats_t;
/** Counters since srv_new. */
void srv_get_stats(const srv_t *s, srv_stats_t *out);

/* ---- request ------------------------------------------------------------------------------ */

const char *srv_req_method(const srv_req_t *r); /**< "GET", "HEAD", "POST", ... */
int srv_req_is_head(const srv_req_t *r);
/** Path part of the target, as sent (not percent-decoded), NUL-terminated. */
const char *srv_req_path(const srv_req_t *r);
/** Query string after '?', without it; "" when none. */
const char *srv_req_query(const srv_req_t *r);
/** Header value by case-insensitive name; repeated headers are merged with ", "; NULL if
 * absent. Valid until the done callback. */
const char *srv_req_header(const srv_req_t *r, const char *name);
/** The peer address as text ("127.0.0.1:53412"). */
const char *srv_req_peer(const srv_req_t *r);
/** The peer's numeric address alone ("127.0.0.1", "::1"; "" when it has none). */
const char *srv_req_peer_ip(const srv_req_t *r);
/** 1 when the request came over a TLS listener (srv_listen_tls), else 0. */
int srv_req_is_tls(const srv_req_t *r);
/** Add a key=value field to this request's access-log line (copied; e.g. "cache", "hit").
 * The key is made a log key (pc_log_key: other characters become '_'; an empty key adds
 * nothing); the value is quoted by pc_log_quote and cut at 256 bytes. Fields past 1 KiB per
 * request are dropped. Nothing is kept while the access log is off (srv_opts_t.access_log -1,
 * or the log level below info). */
void srv_req_log(srv_req_t *r, const char *key, const char *value);
/** srv_req_log with a key the program spells out as a string literal of log-key characters
 * ([A-Za-z0-9_.-], at most PC_LOG_KEY_MAX: the macro refuses anything but a literal), taken as
 * it is; the value is quoted as always. */
#define srv_req_log_lit(r, key, value) srv__req_log_field((r), "" key "", sizeof(key) - 1, (value))
void srv__req_log_field(srv_req_t *r, const char *key, size_t kn, const char *value);
/** Register the done callback (one per request; a second call replaces the first). */
void srv_req_on_done(srv_req_t *r, srv_done_cb cb, void *arg);
/** Opaque slot for the handler. */
void srv_req_set_data(srv_req_t *r, void *data);
void *srv_req_data(const srv_req_t *r);
/** Room for the handler's per-request context inside the request: SRV_REQ_ROOM bytes, aligned
 * for any type, not zeroed, valid from the handler call until the done callback has returned
 * (the request's own storage, reused with it: no allocation per request). */
#define SRV_REQ_ROOM 512
void *srv_req_room(srv_req_t *r);

/* ---- response ----------------------------------------------------------------------------- */

/** Add a response header (both copied). Call before srv_respond*. Content-Length, Connection
 * and Date are the server's. */
void srv_resp_header(srv_req_t *r, const char *name, const char *value);
/** Add a constant header, "Name: value" as a string literal (the macro refuses anything else):
 * copied as it is, without srv_resp_header's checks, which a literal the program spells out
 * does not need (data always goes through srv_resp_header). Not one of the server's own. */
#define srv_resp_header_lit(r, line) srv__resp_header_line((r), "" line "\r\n", sizeof(line) + 1)
void srv__resp_header_line(srv_req_t *r, const char *line, size_t len);
/** srv_resp_header with the name a string literal (not one of the server's own): only the
 * value, which is data, is checked. */
#define srv_resp_header_named(r, name, value)                                                      \
  srv__resp_header_named((r), "" name "", sizeof(name) - 1, (value))
void srv__resp_header_named(srv_req_t *r, const char *name, size_t nl, const char *value);
/** Answer with an in-memory body (copied; may be NULL with len 0). content_type may be NULL.
 * For HEAD the headers (with Content-Length: len) are sent without the body. */
void srv_respond(srv_req_t *r, int status, const char *content_type, const void *body, size_t len);
/** Answer with bytes [off, off+len) of fd. Takes ownership of fd (closed when done). Bytes of
 * the file beyond avail_end are not written yet (a live fill): the server sends what exists
 * and waits for srv_file_avail. Pass avail_end = off+len for a complete file. For HEAD only
 * the headers are sent. */
void srv_respond_file(srv_req_t *r, int status, const char *content_type, int fd, uint64_t off,
                      uint64_t len, uint64_t avail_end);
/** Announce that the file given to srv_respond_file now holds bytes up to avail_end. */
void srv_file_avail(srv_req_t *r, uint64_t avail_end);

/** A body source: bytes a producer hands out from memory (a relay of a live fill that cannot
 * write its file). Embed it in your object and recover it with container_of. srv calls:
 *   peek(s, pos, &p)  the bytes at pos (pos < the announced avail_end): *p points at n > 0 of
 *                     them (srv sends at most the announced ones), valid until sent(s, pos + m)
 *                     or release(s); 0 when none is there yet (srv waits for srv_file_avail);
 *   sent(s, pos)      every byte before pos went out: the producer may let them go;
 *   release(s)        srv is done with s (the body ended, complete or not): the last call. */
typedef struct srv_source srv_source_t;
typedef struct srv_source_ops {
  size_t (*peek)(srv_source_t *s, uint64_t pos, const char **p);
  void (*sent)(srv_source_t *s, uint64_t pos);
  void (*release)(srv_source_t *s);
} srv_source_ops_t;
struct srv_source {
  const srv_source_ops_t *ops;
};
/** The body of a srv_respond_file answer continues from src: its bytes at or after `from` come
 * from src, not from the file (which holds the bytes before from). Announcements go on with
 * srv_file_avail. Takes src: when the request has no body still to send from `from` on (HEAD,
 * a small file answered at once, an end at or before from), src is released at once. */
void srv_file_source(srv_req_t *r, uint64_t from, srv_source_t *src);
/** srv_respond_file with every body byte from src (no file). Takes src (released when the body
 * ends; at once for HEAD). */
void srv_respond_source(srv_req_t *r, int status, const char *content_type, srv_source_t *src,
                        uint64_t off, uint64_t len, uint64_t avail_end);
/** Abort a response in progress: the connection is closed at once (the client sees a short
 * body). The done callback runs with status 0. */
void srv_abort(srv_req_t *r);

#endif
