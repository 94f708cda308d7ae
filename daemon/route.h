/* daemon/route — the OCI pull-API request parser: method + raw path + raw query -> route.
 *
 * Pure: no I/O, no allocation, no globals. Everything in a route_t is percent-decoded and
 * validated against the OCI grammar (distribution-spec "Pulling"): a repository name matches
 * [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)* and is at most 255
 * bytes, a tag matches [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, a digest passes store_digest_parse.
 * Nothing here is ever a filesystem path; the store only sees validated digests.
 *
 * Paths are parsed from the right, so names may contain "blobs", "manifests", "tags" components:
 *   /v2/ (or /v2)                        ROUTE_ROOT
 *   /v2/<name>/manifests/<tag|digest>    ROUTE_MANIFEST (ref with ':' is a digest)
 *   /v2/<name>/blobs/<digest>            ROUTE_BLOB
 *   /v2/<name>/tags/list                 ROUTE_TAGS_LIST (query n, last)
 *   /v2/<name>/referrers/<digest>        ROUTE_REFERRERS (query artifactType)
 *   /healthz, /readyz, /metrics, /status GET/HEAD only
 * Each path segment is percent-decoded on its own, so an encoded '/' (%2F) can never add a
 * segment; a decoded segment must then match the grammar of its position (which excludes '/',
 * NUL and every other byte outside the grammar).
 *
 * Upstream selection (names = the configured upstream names, [0] the default):
 *   - `ns=<host>` in the query (percent-decoded: host%3A5000 -> host:5000) picks that upstream;
 *     the name is then used as it is (no prefix stripping). An ns that is not configured is
 *     PC_E_UPSTREAM_UNKNOWN.
 *   - else, when the first name segment equals a configured upstream name and more segments
 *     follow (CRI-O/podman path-prefix addressing, /v2/registry.k8s.io/pause/manifests/3.10),
 *     that segment is stripped and names that upstream. The segment is compared before the
 *     grammar check, so "host:5000" works as a prefix too. A first segment that looks like a
 *     registry host (it has a dot or a colon, the Docker reference rule) but is not configured
 *     is PC_E_UPSTREAM_UNKNOWN: it is never forwarded to the default upstream as a repository.
 *   - else the default upstream (index 0; -1 when nnames is 0).
 * Names compare case-insensitively.
 */
#ifndef ROUTE_H
#define ROUTE_H

#include <stddef.h>
#include <stdint.h>

#include "store/digest.h"

#define ROUTE_NAME_MAX 255 /**< longest repository name (bytes) */
#define ROUTE_TAG_MAX 128  /**< longest tag */
#define ROUTE_N_MAX 10000  /**< tags/list `n` above this is clamped to it */

typedef enum route_kind {
  ROUTE_UNKNOWN = 0, /**< no route: answer 404 */
  ROUTE_ROOT,
  ROUTE_MANIFEST,
  ROUTE_BLOB,
  ROUTE_TAGS_LIST,
  ROUTE_REFERRERS,
  ROUTE_HEALTHZ,
  ROUTE_READYZ,
  ROUTE_METRICS,
  ROUTE_STATUS, /**< GET /status: the status page (daemon/status.h) */
} route_kind;

typedef struct route {
  route_kind kind;
  int is_v2;                     /**< the path is under /v2 (answer errors as OCI JSON) */
  int upstream;                  /**< index into the names given to route_parse; -1 if none */
  int ns_given;                  /**< `ns=` was in the query */
  char ns[256];                  /**< decoded ns value when ns_given */
  char name[ROUTE_NAME_MAX + 1]; /**< repository, without an upstream path prefix */
  char ref[STORE_DIGEST_MAX];    /**< tag or digest (manifest), digest (blob, referrers) */
  int is_digest;                 /**< ref is a digest */
  int has_n;                     /**< `n=` given */
  unsigned n;                    /**< clamped to ROUTE_N_MAX */
  char last[ROUTE_TAG_MAX + 1];  /**< `last=` value, "" if none */
  char artifact_type[256];       /**< `artifactType=` value, "" if none */
} route_t;

/** Parse one request. method is the HTTP method ("GET"), path the raw path (no query), query
 * the raw query string without '?' ("" or NULL when none). names/nnames: the configured
 * upstream names (names[0] is the default). out is always fully written.
 *
 * Returns 0 (out->kind says what; ROUTE_UNKNOWN for paths that match nothing), or:
 *   PC_E_UNSUPPORTED      any method other than GET/HEAD on a /v2 path (read-only mirror)
 *   PC_E_NAME_INVALID     a repository name outside the grammar or longer than 255 bytes
 *   PC_E_DIGEST_INVALID   a digest (manifest ref with ':', blob, referrers) outside the grammar
 *   PC_E_MANIFEST_UNKNOWN a manifest tag outside the tag grammar (the conformance suite wants
 *                         404 for /manifests/.INVALID_MANIFEST_NAME)
 *   PC_E_UPSTREAM_UNKNOWN `ns=` names no configured upstream
 *   PC_E_TAG_INVALID      `last=` outside the tag grammar
 *   PC_E_SIZE_INVALID     `n=` not a decimal number, `artifactType=` longer than 255 bytes
 * On error out->kind and out->is_v2 still describe the path as far as it was understood. */
int route_parse(const char *method, const char *path, const char *query, const char *const *names,
                int nnames, route_t *out);

/** Grammar checks on s[0..len), exposed for tests and the fuzz target: 1 if valid, else 0. */
int route_name_valid(const char *s, size_t len);
int route_tag_valid(const char *s, size_t len);

/** Percent-decode src[0..len) into dst (room for dstlen bytes including the NUL). Returns the
 * decoded length, or -1 on a bad escape, a decoded NUL, or no room. '+' stays '+'. */
int route_pct_decode(const char *src, size_t len, char *dst, size_t dstlen);

/** Who a route is for, which decides who may use it (daemon/access.h): pulls (the OCI API, and
 * what matches no route) or operations (health, readiness, metrics, the status page: [server]
 * ops_allow). A new operations endpoint is classed ROUTE_CLASS_OPS here and is then guarded
 * like /metrics. */
typedef enum route_class {
  ROUTE_CLASS_PULL = 0,
  ROUTE_CLASS_OPS,
} route_class;
route_class route_kind_class(route_kind k);

/** A short constant name for a kind ("manifest", "blob", ...), for logs and metrics. */
const char *route_kind_name(route_kind k);

#endif
