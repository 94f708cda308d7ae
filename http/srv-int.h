/* srv-int — private entry points of http/srv.c, for tests and the fuzz target only. */
#ifndef SRV_INT_H
#define SRV_INT_H

#include "http/srv-transport.h"
#include "http/srv.h"

/** Serve one already-connected stream socket fd (any family, e.g. one end of an AF_UNIX
 * socketpair) exactly as an accepted TCP connection: same parser, limits, pipelining, writes
 * and timers (it runs over the TCP transport, srv_tcp_open). Takes ownership of fd (also on
 * error, where it is closed). Returns 0 or a libuv error. The connection counts in
 * srv_conn_count and is closed by srv_close. */
int srv__adopt(srv_t *s, int fd);
/** Serve a connection over transport t (any implementation of srv-transport.h, on s's loop).
 * Takes ownership of t: the server sets t->data and ends it with t->ops->close; on error
 * (s closing or draining: UV_EINVAL) it is closed at once. Returns 0 or a libuv error. */
int srv__adopt_transport(srv_t *s, srv_tr_t *t);

#endif
