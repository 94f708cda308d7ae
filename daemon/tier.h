/* daemon/tier — this mirror as one tier of a chain of mirrors: loops and hop limits.
 *
 * Every request this mirror sends upstream carries a Via header (RFC 9110 7.6.3): the chain of
 * the client request that started the fetch, if any, then this mirror's own entry
 * "1.1 <tier_id>" ([server] tier_id; default <hostname>:<port of the first listen>). A
 * content request (manifest, blob, tags list, referrers) whose Via chain already names this
 * mirror (a loop: A -> B -> A, or a mirror listing itself as its upstream), or holds max_hops
 * entries or more, is refused at once with 508 and OCI error JSON (PC_E_LOOP); a tier below
 * that gets a 508 passes it on (pull_map_upstream), so the whole chain answers 508 and no
 * request goes round for ever.
 *
 * The chain reaches the fetch through the daemon: the registry dispatch calls tier_enter
 * before it hands a content request to the mirror and tier_leave after (the dispatch is
 * synchronous; fetches it starts copy the Via value in up_fetch_start). A fetch started later
 * (a resume, a parked miss) sends this mirror's entry alone. Loop thread only.
 */
#ifndef TIER_H
#define TIER_H

#include <stddef.h>

#include "daemon/daemon.h"
#include "http/srv.h"

/** Check req's Via chain: 0 (d's outgoing chain is set until tier_leave), or PC_E_LOOP with
 * why in detail (the caller answers it: 508, OCI error JSON). */
int tier_enter(daemon_t *d, srv_req_t *req, char *detail, size_t detail_len);
/** The dispatch of the request given to tier_enter is over. */
void tier_leave(daemon_t *d);
/** The Via value a fetch started now sends (valid until the next tier_* call). */
const char *tier_via(daemon_t *d);

/** Pure, for the tests: in the Via value via (NULL = none), the number of entries and whether
 * one of them was received by id (compared case-insensitively). */
void tier_via_scan(const char *via, const char *id, unsigned *entries, int *has_self);

#endif
