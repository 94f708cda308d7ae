/* daemon/reqctx — the daemon's per-request context, kept in the srv request's one user slot.
 *
 * registry_handle makes one for every request it is given (reqctx_new) and registers the
 * request's one done callback; nothing else in the daemon calls srv_req_set_data or
 * srv_req_on_done. The context records what the accounting needs at the end (the route, the
 * cache outcome of a manifest or blob answer: answer.c sets it) and who holds the request
 * while it waits for something that is not the server (a mirror subscriber, a parked
 * /readyz): that holder parks it with a gone callback, and unparks it when it answers.
 *
 * It lives in the request's own room (srv_req_room): no allocation per request.
 * Lifetime: from reqctx_new until the request's done callback, which first calls the gone
 * callback of a holder that is still parked (the client left or the connection was cut:
 * the holder must forget the request there and may not answer it), then frees the context.
 * The srv finish callback (counters_on_finish) runs before that and may read it.
 */
#ifndef REQCTX_H
#define REQCTX_H

#include "http/srv.h"

struct daemon;
typedef struct reqctx reqctx_t;

/** A holder's callback: the request is gone (its done callback is running). */
typedef void (*reqctx_gone_cb)(reqctx_t *ctx, void *arg);

struct reqctx {
  struct daemon *d;
  srv_req_t *req;
  int route;           /**< route_kind; ROUTE_UNKNOWN (0) until routed */
  int cache_kind;      /**< ANSWER_MANIFEST / ANSWER_BLOB once an outcome is set, else -1 */
  int outcome;         /**< enum daemon_cache of the answer, or -1 */
  reqctx_gone_cb gone; /**< the holder parked on the request, or NULL */
  void *gone_arg;
  int access_ok; /**< its credentials passed a check (daemon/access.c) */
  /** OCI-Namespace for the answers (answer_common_headers): 0 unknown (the query is read
   * again), 1 none, 2 ns (the route's ns= value, a configured upstream's name as sent) */
  int ns_state;
  char ns[256];
};

/** Make the context of req (and its done callback). Never fails. */
reqctx_t *reqctx_new(struct daemon *d, srv_req_t *req);
/** The context of req, or NULL for a request the daemon never got (a server-side answer). */
reqctx_t *reqctx_of(const srv_req_t *req);
/** Park: cb(ctx, arg) runs if the request goes away before reqctx_unpark. One holder at a
 * time (parking twice is a bug). */
void reqctx_park(reqctx_t *ctx, reqctx_gone_cb cb, void *arg);
/** The holder lets go (before or as it answers). */
void reqctx_unpark(reqctx_t *ctx);

#endif
