/* daemon/listing — the two listing routes of the pull API, answered with the upstream's truth:
 *
 *   GET /v2/<name>/referrers/<digest>[?artifactType=T]  asked upstream (the query passed on
 *     as it came, ns= left out: artifactType and whatever page key a Link carried); the index
 * bytes, their media type, OCI-Filters-Applied and Link (pointed at this mirror) are passed
 * through; an upstream 404 stays a 404 (clients then use the referrers tag schema). Cached for
 * LISTING_REFERRERS_TTL (at most the upstream's tag_ttl); when the upstream fails or the mirror is
 * offline: the cached answer (stale, with a Warning header), else 404 offline or the upstream's
 * error. Never synthesised. GET /v2/<name>/tags/list[?n=&last=]  asked upstream with the query (n,
 * last) passed on, Link pointed at this mirror, cached for the upstream's tag_ttl, stale-if-error;
 * when there is no upstream answer to give (offline, upstream down, failing, rate-limiting): the
 * tags this mirror knows (the store, and tags being stored), with `Warning: 299 - "..."` (the
 *     distribution spec's warning form) and a `tags-from-cache` log line.
 *
 * The upstream requests go through daemon/meta (single-flight, the cache). Both functions
 * answer req exactly once, now or later; a request that goes away leaves the fetch, which goes
 * on for the cache. Loop thread only.
 */
#ifndef LISTING_H
#define LISTING_H

#include "daemon/daemon.h"
#include "daemon/route.h"

#define LISTING_REFERRERS_TTL 60 /**< seconds; a referrers answer is asked again after this */

void listing_referrers(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up);
void listing_tags(daemon_t *d, srv_req_t *req, const route_t *r, daemon_upstream_t *up);

struct meta_sub;
/** Ask for the referrers of (up, repo, digest) as a request without a query would (the same
 * cache entry, so a prefetch warms what clients are answered, also stale when the upstream is
 * gone): s->ops->on_end gets the answer, perhaps inside this call. */
void listing_referrers_ask(daemon_t *d, daemon_upstream_t *up, const char *repo, const char *digest,
                           struct meta_sub *s);

/** The Link header for this mirror from an upstream's Link value: the query of its first
 * <URL> on the mirror's own path (req_path), plus &ns=<ns> when ns is not NULL and the query
 * names none. Pure. Returns 0 with out written, or -1 (nothing usable: no <URL>, no query, a
 * byte outside printable ASCII, or no room). */
int listing_link_rewrite(const char *up_link, const char *req_path, const char *ns, char *out,
                         size_t outlen);

#endif
