/* daemon/registry — dispatch of the OCI pull API: make the request's context, route it, and
 * hand it to the store (hits, through answer.c), the mirror (misses) or the small handlers of
 * the other routes. Composes no answer itself (daemon/answer.h does).
 *
 * Access-log fields: route=<kind>, upstream=<name> (and ns=<ns>) for repository routes; the
 * answer adds cache=hit|miss|join|stale|revalidated for manifests and blobs.
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include "http/srv.h"

/** The srv handler; arg is the daemon_t. Answers every request exactly once (itself, or
 * through the mirror). */
void registry_handle(srv_req_t *req, void *daemon);

#endif
