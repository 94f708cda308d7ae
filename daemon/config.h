/* daemon/config — the configuration types (daemon_config_t, daemon_upstream_conf_t), their
 * defaults, the INI config file (libinih) and `serve` command-line flags.
 *
 * The types are plain data: a configuration is built whole (config_from_args) and then copied
 * by value into the daemon (daemon/daemon.h) or into an upstream object (daemon/upstream.h);
 * nothing here knows the running daemon, and nothing here allocates.
 *
 * Precedence: built-in defaults < config file < command-line flags. The file is
 * --config FILE, or DAEMON_CONFIG_DEFAULT when that exists and neither --config nor
 * --no-config is given. Every key is in one table (config.c), which also drives
 * `pullcache check-config` output; README.md "Configuration" documents each one.
 *
 *   [server]   listen (repeatable or comma-separated), max_conns, header_timeout,
 *              idle_timeout, write_timeout, max_header_bytes, max_url_bytes, max_headers,
 *              max_manifest, drain_timeout, offline
 *   [fetch]    connect_timeout, first_byte_timeout, stall_timeout, min_rate, min_rate_window,
 *              join_stall, queue_wait, max_redirects
 *   [store]    path, max_size, min_free, evict_to
 *   [log]      level, format, access
 *   [upstream "NAME"]  url, tag_ttl, max_stale, ca_file, credentials_file, allow_redirect_to,
 * max_connections,
 * rate_limit, rate_burst, mirrors, failover_connect_timeout, down_after, down_backoff — one section
 * per upstream; NAME is the registry host[:port] as clients name it (ns= or the path prefix); the
 * first one is the default.
 *
 * Values: durations are a number with an optional unit (ms, s, m, h, d; none = seconds);
 * sizes a number with an optional K, M, G or T (powers of 1024, "KiB"/"KB" also accepted);
 * booleans true/false/yes/no/on/off/1/0. Unknown sections or keys, bad values and duplicate
 * upstreams are errors that name the file, the line and the reason.
 *
 * Any [upstream "..."] section in the file replaces the built-in upstream list; the first
 * `listen` in the file replaces the default address; the first --listen (--upstream) flag
 * replaces those of the defaults and the file, later ones append. --tag-ttl applies to every
 * upstream.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "http/srv.h"
#include "http/up.h"

/** The store directory of the daemon and of every command when neither --store nor
 * [store] path names one. */
#define CONFIG_STORE_DEFAULT "./pullcache-data"

#define DAEMON_CONFIG_DEFAULT "/etc/pullcache/pullcache.conf"

#define DAEMON_MAX_UPSTREAMS 16
#define DAEMON_MAX_LISTEN 8

/** One configured upstream (plain data, as configured): NAME is the registry host as clients
 * name it (what `ns=` and the path prefix carry), URL where it is fetched from. */
typedef struct daemon_upstream_conf {
  char name[256];              /**< "registry.k8s.io" */
  char url[1024];              /**< "https://registry.k8s.io" (no trailing slash) */
  char ca_file[1024];          /**< CA bundle for this upstream; "" = system store */
  char credentials_file[1024]; /**< "user:password" file; "" = anonymous */
  char userpwd[512];           /**< read from credentials_file when the config is loaded */
  int64_t tag_ttl;             /**< seconds a tag is served without revalidation; default 300 */
  unsigned max_connections;    /**< concurrent upstream fetches; 0 = no cap */
  double rate_limit;           /**< fetch starts per second; 0 = no cap */
  unsigned rate_burst;         /**< token bucket size; 0 = about one second's worth */
  char allow_redirect_to[512]; /**< CIDRs a redirect may reach though not public ("" = none;
                                    see up_req_t.redirect_allow) */
  int64_t max_stale; /**< seconds after its last check a tag or listing may still be served
                          stale when the upstream fails; 0 = no limit (default) */
  /* Tiers and failover (docs/OPERATIONS.md "Tiers and replicas"): */
  char mirrors[1024];          /**< other mirrors of NAME tried in order before url, each asked
                                    with ?ns=NAME: URLs separated by spaces ("" = none; at most
                                    DAEMON_MAX_MIRRORS) */
  long failover_connect_ms;    /**< connect timeout of a URL with another after it; default 2 s */
  long failover_first_byte_ms; /**< first-byte timeout of a URL with another after it;
                                    default 10 s */
  unsigned down_after;         /**< consecutive failures that mark a mirror URL down; default 3 */
  long down_backoff_ms;        /**< a down URL is skipped this long, then probed by one request;
                                    default 30 s */
} daemon_upstream_conf_t;

#define DAEMON_MAX_MIRRORS 3

enum { DAEMON_LOG_TEXT = 0, DAEMON_LOG_JSON = 1 };

/** The whole configuration of `serve` (plain data; copied by value, no pointers inside). */
typedef struct daemon_config {
  char path[1024];                     /**< the config file read; "" = none */
  char listen[DAEMON_MAX_LISTEN][128]; /**< "127.0.0.1:5000", "[::1]:5000" */
  int nlisten;
  srv_opts_t srv;            /**< server limits and timeouts */
  unsigned drain_timeout_ms; /**< SIGTERM: answers in progress may run this long */
  int offline;               /**< never contact an upstream */
  uint64_t max_manifest;     /**< bytes; default 4 MiB */
  long join_stall_ms;        /**< [fetch] join_stall: a fill with no progress this long is restarted
                                  before a request joins it; default 10 s, 0 = off */
  up_opts_t up;              /**< upstream client timeouts */
  char store_dir[1024];
  uint64_t store_max_size; /**< size budget (0 = none); for eviction */
  uint64_t store_min_free; /**< /readyz fails below this much free disk; eviction starts */
  uint64_t store_evict_to; /**< eviction's low watermark; 0 = 90% of store_max_size */
  daemon_upstream_conf_t upstreams[DAEMON_MAX_UPSTREAMS]; /**< [0] is the default */
  int nupstreams;
  int log_level;  /**< PC_LOG_* */
  int log_format; /**< DAEMON_LOG_TEXT | DAEMON_LOG_JSON */
  /* [server] HTTPS (http/srv-tls.h): a TLS listener beside the plain ones. */
  char tls_listen[128];              /**< "0.0.0.0:5443"; "" = no TLS listener */
  char tls_cert[1024];               /**< PEM certificate chain, leaf first */
  char tls_key[1024];                /**< PEM private key */
  char tls_client_ca[1024];          /**< PEM CA for client certificates; "" = no mTLS */
  char tls_client_auth[16];          /**< "required" (default with a CA) | "optional" */
  unsigned tls_handshake_timeout_ms; /**< default 10 s */
  int status_page;                   /**< [server] status: GET /status is served (default on) */
  /* Tiers: loops and hop limits (daemon/tier.h). */
  char tier_id[128]; /**< this mirror's name in Via chains; "" = <hostname>:<first listen port> */
  unsigned max_hops; /**< a request that passed this many tiers (Via entries) is refused 508 */
  /* [server] who may connect (daemon/access.h): CIDR lists, "" = anyone. */
  char allow[512];     /**< pulls (and ops, without ops_allow); others closed at accept */
  char ops_allow[512]; /**< /healthz, /readyz, /metrics (ROUTE_CLASS_OPS); "" = as allow */
  /* [server] client credentials for pull routes (daemon/access.h) */
  char auth_token_file[1024]; /**< first line: the token ("" = none) */
  char htpasswd[1024];        /**< USER:BCRYPT lines ("" = none) */
  char auth_on[8];            /**< "all" (default), "tls" or "plain": the listeners asking */
} daemon_config_t;

/** Fill cfg with the built-in defaults (listen 127.0.0.1:5000, store ./pullcache-data, one
 * upstream registry.k8s.io=https://registry.k8s.io, and the defaults of every key). */
void config_defaults(daemon_config_t *cfg);

/** Apply an INI file on top of cfg (records the path in cfg->path). Returns 0, -EINVAL with
 * "FILE:LINE: reason" in err, or -errno when the file can't be read. */
int config_load_file(daemon_config_t *cfg, const char *path, char *err, size_t errlen);

/** Build the whole `serve` configuration: defaults, then the config file, then the other
 * flags in order, then config_validate. argv[0] is the first flag (not the command name).
 * Returns 0, or -EINVAL with a message in err (exit code 2). */
int config_from_args(daemon_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/** Check names, URLs, listen addresses (numeric IPv4/IPv6 with a port), counts. Returns 0 or
 * -EINVAL with a message. */
int config_validate(const daemon_config_t *cfg, char *err, size_t errlen);

/** Write cfg as a complete config file (every key, effective values; credentials are never
 * printed, only the file they come from). */
void config_print(const daemon_config_t *cfg, FILE *out);

/** Call cb for every key the file accepts: section ("upstream" for [upstream "NAME"]), key,
 * and its default as written by config_print. For documentation checks. */
void config_each_key(void (*cb)(void *arg, const char *section, const char *key, const char *def),
                     void *arg);

/** Validators exposed for tests: 1 if valid. */
int config_upstream_name_valid(const char *name);
int config_url_valid(const char *url);
/** "err" | "warn" | "notice" | "info" | "debug" -> PC_LOG_*; -1 if unknown. */
int config_log_level(const char *s);
/** "15", "15s", "250ms", "5m", "2h", "1d" -> milliseconds; -1 if invalid. */
int64_t config_parse_duration_ms(const char *s);
/** "4096", "4K", "4KiB", "16M", "1G" -> bytes; -1 if invalid. */
int64_t config_parse_size(const char *s);

#endif
