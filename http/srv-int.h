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

#include <llhttp.h>
/** llhttp_execute as the server calls it. */
typedef llhttp_errno_t (*srv__parse_fn)(llhttp_t *parser, const char *data, size_t len);
enum { SRV_PARSER_BEST, SRV_PARSER_PLAIN, SRV_PARSER_SSE42 };
/** BEST: what srv_new picks (the SSE4.2 build of llhttp.c where the build has it and the CPU
 * has SSE4.2, else llhttp's own); PLAIN: llhttp's own; SSE42: the SSE4.2 build (NULL when the
 * build has none). The two parse alike: only their header-value scan differs. */
srv__parse_fn srv__parser(int which);

#endif
