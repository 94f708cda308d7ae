/* http/up — the upstream HTTP client: libcurl multi driven by the libuv loop.
 *
 * One up_t per daemon: one uv_timer plus one uv_poll per socket (curl multi_socket API). It
 * follows redirects itself (301/302/303/307/308, at most max_redirects hops, 307/308 keep the
 * method, HEAD stays HEAD), answers Bearer challenges with tokens from the realm (cached per
 * host+scope+credentials until expires_in) and never sends an Authorization header to a host
 * other than the one whose challenge produced the token. Intermediate responses (redirects,
 * 401s) are consumed internally: the callbacks see only the final response. Once a repository
 * path (/v2/<name>/) of a host needed a token, later requests for that path send the cached
 * token at once. Accept, Range and the method go to every hop; Authorization only to its host.
 *
 * Credentials (up_req_t.userpwd, "user:password"; NULL = anonymous) never go to a host that
 * did not ask for them. They are only ever sent as HTTP Basic, and only
 *   - to the token realm named by a Bearer challenge of the registry host (the host of
 *     up_req_t.url): the token request carries them, and a redirect of the token request to
 *     another host does not;
 *   - to the registry host itself after it answered with a Basic challenge (and no Bearer
 *     one): the request is repeated once with Basic; a second 401 is final. Later hops of the
 *     same fetch back to that host carry Basic too; other hosts never do.
 * A challenge from a host the fetch was redirected to is answered anonymously. Tokens are
 * cached per credentials (a SHA-256 of userpwd is the key; anonymous is a key of its own), so
 * a token obtained with credentials is never sent by an anonymous fetch or one with other
 * credentials. With up_req_t.no_auth nothing is sent and no challenge is answered: a 401 is
 * the final response (health probes of /v2/).
 *
 * Pools (up_pool_t) cap the fetches of one upstream: at most max_active at a time, and at
 * most `rate` fetch starts per second (token bucket of `burst`). A fetch that cannot start is
 * queued, FIFO, and starts from the loop when a slot and a rate token are free; it holds its
 * slot for its whole life (redirect hops and token requests included). A fetch that waits
 * longer than queue_wait_ms ends unsent with PC_E_UPSTREAM_BUSY. Each pool keeps its own
 * stats (up_pool_get_stats); up_get_stats counts every fetch, with a pool or not.
 *
 * Timings: every fetch measures its phases (up_fetch_timings) with the monotonic clock
 * (uv_hrtime), in microseconds.
 *
 * TLS is verified with the system CA store (or a per-request CA file). Proxy environment
 * variables (http_proxy, https_proxy, no_proxy) are honoured, as libcurl does.
 *
 * If up_fetch_start returns an error, no callback is ever called. Otherwise exactly one
 * on_done call ends the fetch (unless up_fetch_cancel was called first), after which the
 * up_fetch_t is freed by up and must not be touched. A queued fetch has had no callback yet;
 * cancelling it ends it without any.
 */
#ifndef UP_H
#define UP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct up up_t;
typedef struct up_fetch up_fetch_t;
typedef struct up_pool up_pool_t;

/** Final response headers are in (status after redirects and auth). Called exactly once per
 * fetch that gets a final response, before its first on_data, also for HEAD and empty bodies;
 * never for intermediate responses (redirects, 401s answered with a token). up_fetch_header
 * works from here on. Return 0 to go on, or non-zero to stop the fetch: on_done then gets the
 * returned value if it is negative, else PC_E_UPSTREAM. */
typedef int (*up_headers_cb)(up_fetch_t *f, int status, void *arg);
/** Body bytes of the final response (buf is valid during the call only). Return 0 to go on, a
 * negative value to abort (on_done gets it), or UP_DATA_PAUSE: the bytes were NOT taken and the
 * fetch pauses (curl keeps them and reads no more from the socket; no stall timeout runs) until
 * up_fetch_resume, after which the same bytes come again (a consumer applying back-pressure). */
typedef int (*up_data_cb)(up_fetch_t *f, const char *buf, size_t len, void *arg);
#define UP_DATA_PAUSE 1
/** The fetch ended: rc 0 when the whole final response was received (whatever its status,
 * e.g. 404, or a 401 that a Bearer token or Basic credentials did not cure, a Basic challenge
 * to an anonymous fetch, any 401 with no_auth);
 * else PC_E_UPSTREAM_TIMEOUT (connect/first byte/stall), PC_E_UPSTREAM (transport, TLS, body
 * shorter than Content-Length, too many redirects, bad Location, token endpoint answered
 * non-200 or without a token, e.g. 401 for wrong credentials), PC_E_UPSTREAM_UNAVAILABLE
 * (connection refused / DNS), PC_E_INTERNAL (curl refused a queued fetch when it started), or
 * the negative value on_headers/on_data returned. A transport error of the token request is
 * reported as such (timeout/unavailable/upstream). status is the final HTTP status, 0 if none;
 * when the token endpoint failed, its status; after too many redirects, the last 3xx. */
typedef void (*up_done_cb)(up_fetch_t *f, int rc, int status, void *arg);

typedef struct up_opts {
  long connect_timeout_ms;    /**< default 10000 */
  long first_byte_timeout_ms; /**< request sent -> end of response headers, per hop;
                                   default 30000 */
  long stall_timeout_ms;      /**< no body bytes for this long; default 30000 */
  uint64_t min_rate;          /**< a final body must average at least this many bytes/s over
                                   each min_rate_window_ms, or the fetch ends with
                                   PC_E_UPSTREAM_TIMEOUT (a trickle that beats the stall timer
                                   still ends); 0 = no floor (the default) */
  long min_rate_window_ms;    /**< default 30000 */
  long queue_wait_ms;         /**< a fetch queued by its pool's caps longer than this ends with
                                   PC_E_UPSTREAM_BUSY (on_done, no request sent; counted in
                                   queue_timeouts and errors_other); 0 = no limit (the
                                   default). Read when a fetch is queued: after up_set_opts,
                                   fetches already queued keep the limit they got */
  int max_redirects;          /**< default 10 */
  const char *user_agent;     /**< default "pullcache/<version>" */
} up_opts_t;

/** A hop goes to scheme://host:port (hostkey, lower case), for the fetch whose up_req_t.label
 * is label (NULL if none; token requests carry their parent's). Called on the loop thread,
 * once for every hop (the first one, each redirect, each token request): when its connection
 * is up and the request is about to go, or when the hop ended without a connection (DNS,
 * refused, timeout: a host a firewall blocks is still reported); a hop cancelled before it
 * connected is not reported. Never for a hop the redirect
 * policy refused (up_req_t.redirect_allow): a host that must not be reached is not reported
 * as one to let through. */
typedef void (*up_egress_cb)(void *arg, const char *hostkey, const char *label);

typedef struct up_req {
  const char *method;         /**< "GET" or "HEAD" */
  const char *url;            /**< absolute http(s) URL */
  const char *accept;         /**< Accept header value, or NULL */
  uint64_t range_from;        /**< > 0: send "Range: bytes=<range_from>-" */
  const char *ca_file;        /**< CA bundle for this request, or NULL for the system store */
  const char *redirect_allow; /**< CIDRs (pc_cidr_list_match) a redirect or token realm may
                                   reach though not public, or NULL. The redirect policy: never
                                   https -> http; a later hop (redirect, token realm) connects
                                   only to a public address, to one of the class the fetch's
                                   first hop connected to (an upstream configured on loopback
                                   may redirect to loopback), or to one listed here; checked on
                                   the address curl connected to, i.e. after DNS. A refusal
                                   ends the fetch with PC_E_UPSTREAM. */
  up_headers_cb on_headers;   /**< may be NULL */
  up_data_cb on_data;         /**< may be NULL (body discarded) */
  up_done_cb on_done;         /**< required */
  void *arg;
  const char *userpwd; /**< "user:password" for the registry of url (see the top of this
                            file for where it goes), or NULL (or "") for anonymous */
  int no_auth;         /**< non-zero: send no Authorization at all (no cached token, no
                            credentials) and answer no challenge; a 401 is final */
  const char *label;   /**< who the fetch is for (the daemon: the upstream's name), given to
                            the egress callback; may be NULL. Copied */
  up_pool_t *pool;     /**< the pool whose caps apply and whose stats count this fetch (it
                            keeps the pool alive until it ends), or NULL: no caps, counted
                            only in up_get_stats */
} up_req_t;

typedef struct up_stats {
  uint64_t requests;   /**< HTTP requests sent, including redirect hops and token fetches */
  uint64_t body_bytes; /**< final-response body bytes received */
  uint64_t tokens;     /**< tokens fetched */
  uint64_t errors;     /**< fetches that ended with rc < 0 */
} up_stats_t;

/** Phase timings of one fetch, in microseconds of the monotonic clock. They cover the fetch
 * itself, not the token requests it made (except token_us), and are 0 for a phase that did not
 * happen (yet). */
typedef struct up_timings {
  uint64_t token_us;      /**< waiting for token endpoint requests (redirects of those
                               included) */
  uint64_t redirect_us;   /**< hops that ended in a redirect (3xx with Location), and 401 hops
                               that up answered (with a token or Basic credentials) */
  uint64_t first_byte_us; /**< from the start of the fetch to the final response's headers.
                               The start is up_fetch_start, or the moment the fetch left its
                               pool's queue: queue time is not included (see queue_us) */
  uint64_t last_byte_us;  /**< from the same start to the end of the fetch (the last body
                               byte, or the error); 0 before on_done */
  unsigned hops;          /**< HTTP requests sent for this fetch, token requests excluded */
  unsigned token_fetches; /**< token endpoint requests this fetch started */
  uint64_t queue_us;      /**< waiting in the pool queue (0 when it started at once) */
} up_timings_t;

/** Caps of a pool. Zeroes mean no cap. */
typedef struct up_pool_opts {
  unsigned max_active; /**< fetches at a time; 0 = unlimited */
  double rate;         /**< fetch starts per second (token bucket); 0 = unlimited */
  unsigned burst;      /**< token bucket size (starts at once after a quiet spell);
                            0 = max(1, ceil(rate)). Ignored when rate is 0 */
} up_pool_opts_t;

/** Number of finite first-byte histogram buckets. */
#define UP_HIST_BUCKETS 11
/** Upper bounds of the first-byte histogram buckets, in seconds, increasing:
 * 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10. */
extern const double up_hist_bounds_s[UP_HIST_BUCKETS];

typedef struct up_pool_stats {
  uint64_t fetches;            /**< fetches that started (left the queue, or never waited) */
  uint64_t requests;           /**< HTTP requests, redirect hops and token requests included */
  uint64_t errors_timeout;     /**< fetches that ended with PC_E_UPSTREAM_TIMEOUT */
  uint64_t errors_unavailable; /**< ... with PC_E_UPSTREAM_UNAVAILABLE */
  uint64_t errors_other;       /**< ... with any other rc < 0 (cancels are not counted) */
  uint64_t too_slow;           /**< of errors_timeout: bodies that fell under min_rate */
  uint64_t queue_timeouts;     /**< fetches that waited queue_wait_ms and ended unsent */
  uint64_t body_bytes;         /**< final-response body bytes received */
  uint64_t tokens;             /**< tokens fetched */
  unsigned active;             /**< fetches holding a slot now */
  unsigned queued;             /**< fetches waiting in the queue now */
  /** first_byte_us of every fetch that got a final response, NOT cumulative: slot i counts
   * the observations in (up_hist_bounds_s[i-1], up_hist_bounds_s[i]] (slot 0 from 0), the
   * last slot those above the last bound (+Inf). Prometheus buckets are the running sums. */
  uint64_t first_byte_hist[UP_HIST_BUCKETS + 1];
  uint64_t first_byte_sum_us; /**< the sum of those observations */
} up_pool_stats_t;

/** Make a client on loop. opts may be NULL; fields <= 0 (NULL) take their defaults. Calls
 * curl_global_init (reference counted by libcurl; the matching cleanup is in up_close), so
 * create clients from one thread. Returns 0, UV_EINVAL (CR/LF in user_agent), PC_E_INTERNAL
 * (curl init failed) or a libuv error. */
int up_new(uv_loop_t *loop, const up_opts_t *opts, up_t **out);
/** Cancel every fetch (no callbacks), close the handles, free u and every pool (released or
 * not: no up_pool_* call is allowed after up_close), then call cb (may be NULL) from a later
 * loop iteration. Safe from any callback, including up's own. After cb the loop holds no
 * handle of up (uv_loop_close succeeds). Idempotent: a second call does nothing. */
void up_close(up_t *u, void (*cb)(void *arg), void *arg);
/** Call cb(arg, hostkey, label) before every hop (NULL: none). */
void up_set_egress(up_t *u, up_egress_cb cb, void *arg);
/** Replace the timeouts and max_redirects (a config reload; user_agent stays). Fields <= 0 take
 * their defaults. Applies to hops and timers started after the call. */
void up_set_opts(up_t *u, const up_opts_t *opts);
void up_get_stats(const up_t *u, up_stats_t *out);

/** Start a fetch. All strings in r are copied. *out (may be NULL) gets the handle. Returns 0,
 * UV_EINVAL (method not GET/HEAD, url not absolute http(s), CR/LF in accept, no on_done, a
 * pool of another up_t), UV_ECANCELED (up_close was called),
 * UV_ENOMEM / PC_E_INTERNAL (curl refused). May be called from any callback, including up's
 * own. With a pool at its caps (or with fetches queued already) the fetch is queued and 0 is
 * returned; it starts later from the loop, in order. */
int up_fetch_start(up_t *u, const up_req_t *r, up_fetch_t **out);
/** Stop a fetch; no further callbacks; the handle is freed. Safe inside its own callbacks
 * (on_done excepted: the fetch is over then, and the call does nothing) and other fetches'.
 * A queued fetch leaves the queue at once (the next one may start from the loop). */
void up_fetch_cancel(up_fetch_t *f);
/** Resume a fetch that on_data paused (UP_DATA_PAUSE); anything else does nothing. Safe from
 * any callback: the transfer is resumed from the loop (never inside this call), its stall timer
 * restarts then, and the bytes on_data refused come first. */
void up_fetch_resume(up_fetch_t *f);
/** A header of the final response (case-insensitive), or NULL. Valid from on_headers until
 * on_done returns. */
const char *up_fetch_header(const up_fetch_t *f, const char *name);
/** The final URL after redirects. */
const char *up_fetch_url(const up_fetch_t *f);
/** The fetch's timings so far (see up_timings_t). Meant for on_headers through on_done
 * (inclusive), where first_byte_us (and in on_done last_byte_us) are set; any time the handle
 * is valid it gives the phases completed so far. */
void up_fetch_timings(const up_fetch_t *f, up_timings_t *out);

/** Make a pool of u. name (copied) labels it in logs and metrics; o may be NULL (no caps).
 * Returns 0, UV_EINVAL (name NULL, rate negative or not finite) or UV_ECANCELED (up_close was
 * called). The pool lives until up_pool_release and the end of the last fetch using it, or
 * until up_close. */
int up_pool_new(up_t *u, const char *name, const up_pool_opts_t *o, up_pool_t **out);
/** Change the caps at once (config reload): fetches now allowed start from the loop, in queue
 * order; fetches already running are never stopped, even above a lowered max_active. A rate
 * change keeps the tokens in the bucket (at most the new burst); a rate newly set starts with
 * a full bucket. A negative or non-finite rate counts as 0. o NULL = no caps. */
void up_pool_set_opts(up_pool_t *p, const up_pool_opts_t *o);
/** The owner lets go (call once; p NULL does nothing). Fetches using p go on, queued ones
 * still start; p is freed when the last of them ended, at once when there is none. p must
 * not be used after this call, not even for new fetches. */
void up_pool_release(up_pool_t *p);
void up_pool_get_stats(const up_pool_t *p, up_pool_stats_t *out);
/** The name given to up_pool_new; valid as long as p is. */
const char *up_pool_name(const up_pool_t *p);

#endif
