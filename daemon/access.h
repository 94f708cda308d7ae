/* daemon/access — who may use the mirror: address allow-lists ([server] allow, ops_allow) and
 * client credentials ([server] auth_token_file, htpasswd, auth_on).
 *
 * Allow-lists. Two lists of CIDRs or addresses (core/netaddr.h; IPv4 and IPv6, an IPv4-mapped
 * IPv6 peer matches as its IPv4 address), read from the running configuration (daemon_t.cfg)
 * at each check, so a SIGHUP that changes them applies to the next connection and request:
 *
 *   pull_ok(ip) = allow is empty, or ip is in allow
 *   ops_ok(ip)  = ops_allow is empty ? pull_ok(ip) : ip is in ops_allow
 *
 * - At accept (access_conn_ok, the srv accept filter): a peer for which neither holds is
 *   closed before anything is read from it (on the TLS listener before the handshake): no
 *   answer, no parsing, no upstream request. Counted (pullcache_connections_refused_total)
 *   and logged at most once a second (conn-refused peer=IP reason=allow suppressed=N).
 * - Per request (access_request): a peer that got in through one list asking for a route of
 *   the other class (route_kind_class: ROUTE_CLASS_OPS for /healthz, /readyz, /metrics and
 *   /status) gets 403 DENIED (pullcache_requests_refused_total{reason}).
 *
 * Credentials (pull routes only; the operations routes are guarded by ops_allow alone, so
 * probes and scrapes need none). With a token file and/or an htpasswd file, a pull request on
 * a listener auth_on names (all, tls or plain) must carry one of:
 *   Authorization: Bearer TOKEN                (containerd hosts.toml [host."..".header])
 *   Authorization: Basic base64(USER:PASSWORD) with USER:PASSWORD an htpasswd entry (bcrypt,
 *                  checked with libcrypt's crypt_r), or any USER and PASSWORD = TOKEN (podman
 *                  and skopeo auth files, which only speak Basic)
 * Anything else is 401 UNAUTHORIZED with `WWW-Authenticate: Basic realm="pullcache"` (the
 * challenge that makes containers/image send its auth file's Basic credentials). bcrypt is
 * slow by design, so it runs on the thread pool (the request is parked; at most
 * ACCESS_MAX_CHECKS at once, beyond: 503 with Retry-After), and a credential that passed is
 * remembered (its SHA-256, never the text) until the next reload, so a pull's many requests
 * cost one bcrypt. Tokens and passwords are never logged; the access line gets auth=token or
 * auth_user=USER on success, refused=credentials on failure.
 *
 * Threads: every call on the loop thread (the bcrypt runs on the pool on copies).
 * Lifetime: daemon_access_t from access_creds_load to access_creds_free (a check in flight
 * holds a reference, so freeing it with checks running is fine).
 */
#ifndef ACCESS_H
#define ACCESS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "daemon/daemon.h"
#include "daemon/route.h"
#include "http/srv.h"

#define ACCESS_MAX_CHECKS 32 /**< bcrypt checks running at once */

/** Load the credential files of cfg (auth_token_file, htpasswd). With neither, *out is a
 * configuration that asks for nothing. 0, or a negative errno with "FILE[:LINE]: reason" in
 * err. */
int access_creds_load(const daemon_config_t *cfg, char *err, size_t errlen, daemon_access_t **out);
/** Drop the caller's reference (NULL: nothing). */
void access_creds_free(daemon_access_t *a);
/** 1 when a has anything to check (a token or htpasswd users). */
int access_creds_active(const daemon_access_t *a);

/** The srv accept filter (srv_set_accept_filter, arg = the daemon_t). 1: serve, 0: close. */
int access_conn_ok(const char *ip, int tls, void *daemon);

/** Called when a parked request passed its credential check: route it again (its context's
 * access_ok is then set, so access_request lets it through at once). */
typedef void (*access_resume_cb)(daemon_t *d, srv_req_t *req);

/** Check req (routed as kind) against the lists and d->access. 1: go on; 0: answered here
 * (403, 401, 503) or parked for a bcrypt check (resume runs if it passes). */
int access_request(daemon_t *d, srv_req_t *req, route_kind kind, access_resume_cb resume);

/** The pullcache_connections_refused_total, pullcache_requests_refused_total and
 * pullcache_auth_accepted_total families. */
void access_render(const daemon_t *d, pc_buf_t *o);

/* ---- exposed for the unit tests ------------------------------------------------------------ */

/** The verdict on an Authorization header value against a (without the bcrypt: see above).
 * ACCESS_BCRYPT: a Basic USER:PASSWORD of an htpasswd user, not yet remembered; *hash is its
 * htpasswd hash, pass its password (NUL-terminated, in the caller's passcap buffer). */
enum access_verdict {
  ACCESS_NONE,   /**< no Authorization header */
  ACCESS_BAD,    /**< wrong credentials or an unknown scheme */
  ACCESS_TOKEN,  /**< the token (Bearer, or as a Basic password) */
  ACCESS_CACHED, /**< an htpasswd credential that passed before */
  ACCESS_BCRYPT, /**< an htpasswd user: its password must be checked */
};
enum access_verdict access_judge(daemon_access_t *a, const char *authorization, char *user,
                                 size_t usercap, char *pass, size_t passcap, const char **hash);
/** crypt_r(pass, hash) == hash, compared in constant time. */
int access_bcrypt_ok(const char *pass, const char *hash);

#endif
