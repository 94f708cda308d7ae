/* http/up-int.h — internals of the upstream client (not an API; libuv's internal.h style).
 *
 * http/up is three files, one job each, that share the structures below:
 *   up.c       the fetch/hop machine and the curl multi glue: up_t, the life of a fetch (the
 *              state enum below), hops, redirects, response headers, timeouts, timings, and
 *              the public up_* calls of http/up.h but the pool ones;
 *   up_auth.c  authentication: WWW-Authenticate parsing, the token fetch (a fetch of kind
 *              UP__FETCH_TOKEN), the token cache and the per-repository scope hints, Basic
 *              credentials and whose credentials a hop uses;
 *   up_pool.c  pools: the max_active slots, the rate token bucket, the FIFO queue and its
 *              dispatch from the loop, the pool timer, the first-byte histogram, up_pool_*.
 * The pure helpers (parsers, URL keys) are declared here for the unit tests
 * (tests/unit/test-up-auth.c); tests/unit/test-up.c reads the state of a fetch through these
 * structures. Nothing outside http/up*.c and those tests includes this header.
 *
 * Ownership: up_t owns every fetch (u->fetches) until its release, every pool (u->pools) and
 * the token cache; a fetch owns its easy handle, its timer and its copies of the request; a
 * token fetch is owned by up like any other fetch and pointed at by its parent (f->child)
 * while it runs. Everything runs on the loop's thread.
 */
#ifndef UP_INT_H
#define UP_INT_H

#include <curl/curl.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/list.h"
#include "http/up.h"

/** Longest host key ("http://host:port"), NUL included. */
#define UP__HOSTKEY_MAX 320
#define UP__TOKEN_MAX (16 * 1024)      /* longest token we send */
#define UP__TOKEN_BODY_MAX (64 * 1024) /* token endpoint response */
#define UP__CRED_LEN 32                /* SHA-256 of userpwd: the token cache's credentials key */
#define UP__LOG_URL_MAX 1024           /* URLs in log lines are cut here (see pc_log_quote) */

/* ---------------------------------------------------------------------------------------- */
/* Pure helpers (up_auth.c)                                                                  */

/** The parameters of one Bearer challenge. Every string is malloc'd or NULL. */
typedef struct up__challenge {
  char *realm;   /**< token endpoint URL */
  char *service; /**< service parameter, or NULL */
  char *scope;   /**< space-separated scopes (repeated scope params are joined), or NULL */
  char *error;   /**< error parameter (e.g. "invalid_token"), or NULL */
} up__challenge_t;

/** Parse the first Bearer challenge in a WWW-Authenticate value, which may hold several
 * challenges ("Basic realm=\"x\", Bearer realm=\"y\",scope=\"a b\""). Quoted values may hold
 * commas, spaces and backslash escapes; parameter names are case-insensitive; unknown
 * parameters are ignored. Returns 0 when a Bearer challenge was found (its realm may still be
 * NULL), PC_E_NOTFOUND otherwise (out is then all NULL). Free with up__challenge_free. */
int up__challenge_parse(const char *value, up__challenge_t *out);
void up__challenge_free(up__challenge_t *c);

/** 1 when a WWW-Authenticate value holds a challenge of the auth-scheme scheme
 * (case-insensitive; "Basic"), else 0. Parameter values never count ("Bearer realm=\"Basic\""
 * has no Basic challenge). */
int up__challenge_has(const char *value, const char *scheme);

/** "<realm>?service=<service>&scope=<s1>&scope=<s2>" with every value URL-encoded, one scope
 * parameter per space-separated scope, '&' instead of '?' when realm has a query already.
 * service and scope may be NULL. Returns a malloc'd string (free()), or NULL when realm is not
 * an absolute http(s) URL. */
char *up__token_url(const char *realm, const char *service, const char *scope);

/** Parse a token endpoint's JSON body: "token" or "access_token" (the first non-empty one),
 * "expires_in" seconds (default 60 when absent or not positive) and the optional "issued_at"
 * (RFC 3339 UTC; when it lies in the past the age is deducted). now_sec is the wall clock.
 * On success *token gets a malloc'd string and *ttl_ms the time it may be cached (expiry minus
 * a small skew; may be 0). Returns 0, or PC_E_UPSTREAM for bad JSON, no token, or a token
 * that could not be sent in a header (control characters, longer than 16 KiB). */
int up__token_parse(const char *buf, size_t len, int64_t now_sec, char **token, uint64_t *ttl_ms);

/** The key of an URL's server: "scheme://host:port" (lower-case, default port filled in).
 * Returns 0, or PC_E_UPSTREAM when url is not an absolute http(s) URL or the key is too long. */
int up__host_key(const char *url, char *out, size_t n);

/** The repository part of a registry URL's path: "/v2/<name>/" for /v2/<name>/manifests/<ref>,
 * /v2/<name>/blobs/<digest>, /v2/<name>/tags/list (the path less its last two segments).
 * Returns 0, or PC_E_NOTFOUND when the path is not of that shape. */
int up__repo_path(const char *url, char *out, size_t n);

/* ---------------------------------------------------------------------------------------- */
/* Structures                                                                                */

/** What a fetch is for. A token fetch is started by up_auth.c for a parent fetch (its
 * f->child) through up__fetch_start: it uses no auth of its own (no cached token, no challenge
 * answered: its 401 is final), sends Basic only to its realm, never queues nor takes a pool
 * slot (the parent's covers it), may use a released pool, and is left out of the fetch, body
 * byte and error counts and of the hops and histogram. */
enum up__fetch_kind {
  UP__FETCH_USER,  /* started by up_fetch_start */
  UP__FETCH_TOKEN, /* a token endpoint request of its parent */
};

/** The life of a fetch (the diagram is in up.c and follows this enum). Exactly one state at a
 * time; the fail path is up__fetch_fail, from any live state, to DONE. */
enum up__fetch_state {
  UP__F_NEW,       /* made by up__fetch_start, not started yet */
  UP__F_QUEUED,    /* in its pool's queue: no hop; its timer is the queue-wait limit */
  UP__F_ADDING,    /* a hop is set up; the easy handle goes into the multi from the idle
                      handle (the hop was started inside a curl callback) */
  UP__F_HEADERS,   /* a hop is in flight; its header block is not complete (first-byte
                      timer) */
  UP__F_BODY,      /* the hop's header block is complete (f->hop says what it is): body phase,
                      stall timer */
  UP__F_ABORTING,  /* a curl callback failed the hop (f->abort_rc): curl is stopping the
                      transfer; the hop's end fails the fetch with abort_rc */
  UP__F_TOKEN,     /* waiting for its token fetch (f->child); no timer of its own */
  UP__F_DONE,      /* ended: on_done runs (or ran); the release follows at once */
  UP__F_CANCELLED, /* cancelled (up_fetch_cancel, up_close, a refused start): no callback any
                      more; the release follows, from the idle handle when a curl callback is
                      on the stack */
  UP__F_RELEASED,  /* everything but its memory is freed (the timer's close callback frees
                      that) */
};

/** What the response of the current hop is, once its header block is complete. */
enum up__hop {
  UP__HOP_NONE,     /* header block not complete yet */
  UP__HOP_REDIRECT, /* 3xx with Location: body discarded, next hop follows */
  UP__HOP_AUTH,     /* 401 with a Bearer challenge: body discarded, retried with a token */
  UP__HOP_BASIC,    /* 401 with a Basic challenge from the registry: retried once with userpwd */
  UP__HOP_FINAL,    /* what the user sees */
  UP__HOP_NEXT,     /* a 5xx with another URL left to try (up_req_t.more_urls): body
                       discarded, the next URL follows */
};

struct up__hdr {
  char *name;
  char *value;
};

/** A socket curl asked us to watch. */
struct up__sock {
  uv_poll_t poll;
  curl_socket_t fd;
  up_t *u;
  pc_list_t link; /* in u->socks */
};

struct up_pool {
  up_t *u;
  pc_list_t link; /* in u->pools */
  char *name;
  unsigned max_active; /* 0: unlimited */
  double rate;         /* starts per second; 0: unlimited */
  double burst;        /* bucket size */
  double tokens;       /* rate tokens in the bucket */
  uint64_t refill_ns;  /* uv_hrtime of the last refill */
  uint64_t wake_ns;    /* queued fetches wait for the token due then (0: not for a token) */
  pc_list_t queue;     /* fetches in UP__F_QUEUED, FIFO (their qlink) */
  unsigned refs; /* fetches using the pool (queued, running, token fetches), dispatch running */
  int released;  /* the owner let go: freed when refs drops to 0 */
  int kick;      /* dispatch from the idle handle */
  up_pool_stats_t stats; /* active and queued are kept up to date in here */
};

/** The life of an up_t: OPEN ──(up_close)──▶ CLOSING ──(the idle handle: teardown)──▶
 * TORN_DOWN ──(the last of its uv handles closed)──▶ freed, close callback. */
enum up__state {
  UP__OPEN,      /* fetches and pools may be made */
  UP__CLOSING,   /* up_close was called: every fetch is CANCELLED, nothing new starts, curl is
                    not driven any more; the teardown runs from the idle handle */
  UP__TORN_DOWN, /* fetches released, multi and caches freed, handles closing */
};

/** curl's receive buffer (CURLOPT_BUFFERSIZE; its default is 16 KiB): one recv, one on_data,
 * one file write and one hash update per buffer, so a bigger one costs fewer of each per MB. */
#define UP__RECV_BUFFER (64 * 1024)
/** Final body bytes one call into curl hands to on_data before the body yields to the loop.
 * curl reads a readable socket in a loop of up to 100 buffers per call (6.4 MB at 64 KiB):
 * without a bound, a fill's clients would get none of those bytes until the whole call
 * returned, and no other transfer or client would be served meanwhile. */
#define UP__TURN_BYTES (256 * 1024)

struct up {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;      /* curl's timeout */
  uv_idle_t idle;        /* deferred work: releases, handle adds, pool dispatch, teardown */
  uv_timer_t pool_timer; /* the earliest rate token any pool queue waits for */
  long connect_timeout_ms;
  long first_byte_timeout_ms;
  long stall_timeout_ms;
  uint64_t min_rate; /* bytes/s a body must average over each window; 0 = no floor */
  uint64_t min_rate_window_ms;
  uint64_t queue_wait_ms; /* a QUEUED fetch's timer; 0 = wait without limit */
  int max_redirects;
  char *user_agent;
  pc_list_t fetches; /* every fetch not yet released (their link), newest first */
  pc_list_t defer;   /* fetches for the idle handle: CANCELLED ones, ADDING ones */
  pc_list_t socks;   /* struct up__sock */
  pc_list_t tokens;  /* the token cache (up_auth.c), newest first */
  pc_list_t hints;   /* the scope hints (up_auth.c), newest first */
  size_t ntokens, nhints;
  up_stats_t stats;
  pc_list_t pools;   /* struct up_pool, newest first */
  int kick_pending;  /* some pool wants a dispatch */
  int in_curl_cb;    /* depth of curl callbacks on the stack */
  size_t turn_bytes; /* final body bytes handed to on_data since the loop last called into curl:
                        past UP__TURN_BYTES a body yields (see on_curl_write) */
  uint64_t yields;   /* bodies that yielded so (for the tests) */
  enum up__state state;
  int handles; /* uv handles not yet closed */
  void (*close_cb)(void *arg);
  void *close_arg;
  up_egress_cb egress_cb; /* every hop's host (up_set_egress) */
  void *egress_arg;
};

struct up_fetch {
  up_t *u;
  char *label; /* up_req_t.label (a token fetch: its parent's), for the egress record */
  enum up__fetch_kind kind;
  enum up__fetch_state state;
  pc_list_t link;       /* in u->fetches until the release */
  pc_list_t defer_link; /* in u->defer */
  pc_list_t qlink;      /* in pool->queue while QUEUED */
  struct up_pool *pool; /* NULL: none; token fetches point at their parent's */
  /* Two resources held, which are not states: */
  int has_slot; /* holds one of pool's max_active slots (from its start to its release) */
  int in_multi; /* the easy handle is in the multi */
  CURL *easy;
  uv_timer_t timer; /* first byte / stall; its close callback frees the fetch */
  char errbuf[CURL_ERROR_SIZE];
  /* the request */
  int head;
  char *url; /* current hop */
  char *accept;
  uint64_t range_from;
  char *ca_file;
  char *redirect_allow; /* see up_req_t */
  int origin_cls;       /* pc_addr_class_t of the first hop's address; -1 before it */
  const char *refused;  /* the redirect policy refused this hop: why (a static string) */
  int egress_noted;     /* this hop's host was told to the egress callback */
  int no_auth;
  up_headers_cb on_headers;
  up_data_cb on_data;
  up_done_cb on_done;
  void *arg;
  /* auth (up_auth.c) */
  char *userpwd;                    /* NULL: anonymous */
  unsigned char cred[UP__CRED_LEN]; /* SHA-256 of userpwd, all zero when anonymous */
  char origin[UP__HOSTKEY_MAX];     /* host key of the request URL: the registry */
  char basic_host[UP__HOSTKEY_MAX]; /* Basic credentials go to this host ("": nowhere; set
                                       once the registry's Basic challenge was answered, or
                                       the realm for a token fetch) */
  char *sent_token;                 /* Bearer token sent on this hop */
  int fresh_auth;                   /* a freshly fetched token was already tried on this host */
  up__challenge_t chal;
  struct up_fetch *child; /* token fetch in flight (state UP__F_TOKEN) */
  pc_buf_t body;          /* token fetches: the response body (capped) */
  /* failover (up_req_t.more_urls): urls[0] is up_req_t.url */
  char **urls;
  unsigned nurls, cur; /* cur: the URL tried now */
  long failover_connect_ms, failover_first_byte_ms;
  int delivered; /* on_headers ran (or would have): the fetch stays on urls[cur] */
  up_try_cb on_try;
  void *try_arg;
  char *via;           /* Via header value, or NULL */
  char *later_userpwd; /* up_req_t.userpwd of a fetch with more URLs: for the last one only */
  /* the current hop */
  int redirects;
  enum up__hop hop;
  int abort_rc; /* the rc of UP__F_ABORTING */
  int status;
  struct up__hdr *hdrs;
  size_t nhdrs, hdrs_cap, hdr_bytes;
  struct curl_slist *slist;
  char hostkey[UP__HOSTKEY_MAX];
  uint64_t last_activity;
  uint64_t rate_t0;    /* start of the current min_rate window (ms, loop clock) */
  uint64_t rate_bytes; /* body bytes in the current window */
  int paused;          /* on_data returned UP_DATA_PAUSE: curl holds the bytes; no stall timeout */
  int resume;          /* up_fetch_resume asked: the idle handle unpauses the transfer */
  int yielded;         /* paused by on_curl_write itself to give the loop a turn (not the
                          consumer): the idle handle unpauses it */
  /* timings (uv_hrtime ns) */
  uint64_t t_created; /* up_fetch_start */
  uint64_t t_begin;   /* the fetch started (left the queue) */
  uint64_t t_hop;     /* the current hop started */
  uint64_t t_token;   /* the token fetch in flight started */
  uint64_t queue_ns, token_ns, redirect_ns, first_byte_ns, last_byte_ns;
  unsigned hops, token_fetches;
};

/* ---------------------------------------------------------------------------------------- */
/* up.c: the machine, for up_auth.c and up_pool.c                                            */

/** up_fetch_start, with parent non-NULL for a token fetch of parent (kind UP__FETCH_TOKEN). */
int up__fetch_start(up_t *u, const up_req_t *r, up_fetch_t *parent, up_fetch_t **out);
/** Start the next hop of f to f->url (token: Bearer token to send, or NULL for a cached one a
 * hint names); when it cannot start, fail f. */
void up__hop_next(up_fetch_t *f, const char *token);
/** The one fail path: f ends with rc < 0 and status (counted, on_done unless cancelled,
 * released). Never from inside a curl callback. */
void up__fetch_fail(up_fetch_t *f, int rc, int status);
/** f leaves its current URL for the next one (up_req_t.more_urls): 1 when it moved on, 0
 * when it cannot (see up.c). Never from inside a curl callback. */
int up__failover(up_fetch_t *f, int rc, int status);
/** A queued fetch leaves its pool's queue and starts (from the loop; it may fail). */
void up__fetch_begin(up_fetch_t *f);
/** Have the idle handle run (deferred releases and adds, pool dispatch, teardown). */
void up__idle_start(up_t *u);
/** A header of the current hop's response (case-insensitive), or NULL. */
const char *up__hdr_get(const up_fetch_t *f, const char *name);

/* up_auth.c: authentication, for up.c */

/** Set f's credentials (userpwd non-empty; the cache key is its SHA-256). */
void up__auth_set_cred(up_fetch_t *f, const char *userpwd);
/** A cached token to send on this hop without being asked (a hint says its repository needs
 * one), or NULL. */
const char *up__auth_proactive_token(up_fetch_t *f);
/** What a 401 of the current hop of a user fetch is: UP__HOP_AUTH (f->chal is set),
 * UP__HOP_BASIC or UP__HOP_FINAL. */
enum up__hop up__auth_classify(up_fetch_t *f);
/** A hop ended with a Bearer challenge: retry with a cached token, or start a token fetch
 * (f goes to UP__F_TOKEN), or fail f. */
void up__auth_answer(up_fetch_t *f);
/** A hop ended with the registry's Basic challenge: retry once with the credentials. */
void up__auth_basic(up_fetch_t *f);
/** Free the token cache and the hints (teardown). */
void up__auth_free_cache(up_t *u);

/* up_auth.c: the token cache and the hints (here for the unit tests). At most UP__CACHE_MAX
 * of each, newest first: storing one drops the oldest beyond that. Times are uv_now. */
#define UP__CACHE_MAX 256
/** Cache value for (host key, scope, credentials key) for ttl_ms: the entry for the same key
 * and every expired one are dropped first; ttl_ms 0 caches nothing. */
void up__token_store(up_t *u, const char *host, const char *scope, const unsigned char *cred,
                     const char *value, uint64_t ttl_ms);
/** The unexpired token for (host, scope, cred), or NULL. */
const char *up__token_get(up_t *u, const char *host, const char *scope, const unsigned char *cred);
/** Note that the repository of url (up__repo_path) on host needed scope (the note for the same
 * host and path is replaced; an url with no repository path notes nothing). */
void up__hint_store(up_t *u, const char *host, const char *url, const char *scope);
/** The scope noted for (host, repository path), or NULL. */
const char *up__hint_find(up_t *u, const char *host, const char *path);

/* up_pool.c: pools, for up.c */

/** f uses p (a reference on p, for its whole life). */
void up__pool_join(struct up_pool *p, up_fetch_t *f);
/** A user fetch of a pool is about to start: 1 when it must wait (it is then QUEUED and a
 * dispatch is asked for), 0 when it took a slot and a rate token and may start now. */
int up__pool_admit(up_fetch_t *f);
/** The fetch timer (up.c): the queue-wait limit while QUEUED, then first byte, stall and
 * min_rate per hop. */
void up__fetch_timer_cb(uv_timer_t *t);
/** f leaves its pool's queue, if it is in it (at once: no dispatch may start it; its
 * queue-wait timer stops). */
void up__pool_unqueue(up_fetch_t *f);
/** f lets go of its pool: queue, slot (a dispatch follows) and reference (release). */
void up__pool_leave(up_fetch_t *f);
/** Count a first-byte time in f's pool (user fetches with a pool). */
void up__pool_first_byte(up_fetch_t *f, uint64_t us);
/** Dispatch the kicked pools (from the idle handle). */
void up__pool_run_kicks(up_t *u);
/** Free every pool (teardown; no fetch uses one any more). */
void up__pool_free_all(up_t *u);

#endif
