/* daemon/config — defaults, the INI config file (libinih) and `serve` command-line flags.
 *
 * Precedence: built-in defaults < config file < command-line flags.
 *
 * Config file (--config FILE):
 *
 *   [server]
 *   listen = 127.0.0.1:5000        ; repeatable, or a comma-separated list; [::1]:5000 for IPv6
 *   store = /var/lib/pullcache     ; store directory
 *   tag_ttl = 300                  ; seconds a tag is served from the store before revalidation
 *   offline = false                ; true: never contact an upstream (serve the store only)
 *   max_manifest = 4194304         ; bytes
 *   max_conns = 4096               ; open client connections
 *   log_level = info               ; err | warn | notice | info | debug
 *
 *   [upstream "registry.k8s.io"]   ; one section per upstream; the name is the registry host[:port]
 *   url = https://registry.k8s.io  ; as clients name it (ns= or the path prefix); the first
 *   ca_file = /path/ca.pem         ; section is the default upstream. Optional ca_file.
 *
 * Any [upstream "..."] section in the file replaces the built-in upstream list; the first
 * `listen` in the file replaces the default address. Unknown sections or keys are errors.
 *
 * Flags (`pullcache serve ...`): --config FILE, --listen ADDR:PORT (repeatable), --store DIR,
 * --upstream NAME=URL (repeatable), --tag-ttl SECONDS, --offline, --log-level LEVEL. Each may
 * be written --flag VALUE or --flag=VALUE. The first --listen (--upstream) replaces the list
 * from the defaults and the file; later ones append.
 */
#ifndef CONFIG_H
#define CONFIG_H

#include <stddef.h>

#include "daemon/daemon.h"

/** Fill cfg with the defaults: listen 127.0.0.1:5000, store ./pullcache-data, upstream
 * registry.k8s.io=https://registry.k8s.io, tag_ttl 300, max_manifest 4 MiB, log level info,
 * server and upstream limits zeroed (= the modules' defaults). */
void config_defaults(daemon_config_t *cfg);

/** Apply an INI file on top of cfg. Returns 0, or -EINVAL with a message in err (which names
 * the file and line), or -errno when the file can't be read. */
int config_load_file(daemon_config_t *cfg, const char *path, char *err, size_t errlen);

/** Build the whole `serve` configuration: defaults, then --config FILE (wherever it appears),
 * then the other flags in order, then config_validate. argv[0] is the first flag (not the
 * command name). *log_level (may be NULL) gets the level from the file or --log-level, or is
 * left as it was. Returns 0, or -EINVAL with a message in err (exit code 2). */
int config_from_args(daemon_config_t *cfg, int argc, char **argv, int *log_level, char *err,
                     size_t errlen);

/** Check names, URLs, listen addresses, counts. Returns 0 or -EINVAL with a message. */
int config_validate(const daemon_config_t *cfg, char *err, size_t errlen);

/** Validators exposed for tests: 1 if valid. */
int config_upstream_name_valid(const char *name);
int config_url_valid(const char *url);
/** "err" | "warn" | "notice" | "info" | "debug" -> PC_LOG_*; -1 if unknown. */
int config_log_level(const char *s);

#endif
