/* daemon/cmd_store — the cache commands (ls, du, pin, unpin, pins, gc) as one runner over an
 * open store, shared by the command line (daemon/cmd_store.c: the store opened directly when no
 * daemon runs) and the daemon's control socket (daemon/control.c: the same runner on the
 * daemon's own store, on the thread pool).
 *
 * Why through the daemon: the store holds an exclusive flock while the daemon runs (a second
 * opener would sweep its temp files), so a command cannot open it then. The daemon listens on
 * <store>/control.sock, a unix socket (never TCP) created 0600 inside the store directory, and
 * accepts only peers whose uid (SO_PEERCRED) is its own or root: whoever may run the commands
 * may already read and write the store's files. No daemon: the command opens the store itself;
 * a store locked by a daemon whose socket does not answer is refused (exit 1), nothing done.
 *
 * Exit codes: 0 done, 1 runtime error (or `unpin` of what is not pinned), 2 bad input (usage,
 * malformed REF, bad --to SIZE) — with bad input nothing is changed.
 */
#ifndef DAEMON_CMD_STORE_H
#define DAEMON_CMD_STORE_H

#include <stdint.h>

#include "core/buf.h"
#include "store/store.h"

typedef struct cmd_store_ctx {
  store_t *store;
  const char *upstream;  /**< the default upstream for pin/unpin without --upstream */
  uint64_t gc_target;    /**< `gc` without --to: the daemon's evict_to; 0 = none known */
  int via_daemon;        /**< 1 inside the daemon (for the messages) */
  uint64_t manual_blobs; /**< out: what a `gc` evicted (for the daemon's metrics) */
  uint64_t manual_bytes;
  int manual_runs;
} cmd_store_ctx_t;

/** Is argv[0] one of the cache commands? */
int cmd_store_is_command(const char *name);

/** Check the arguments only (no store): 0, or 2 with the reason in out. */
int cmd_store_check(int argc, char **argv, pc_buf_t *out);

/** Run argv (argv[0] the command name) on ctx->store; output to out; returns the exit code. */
int cmd_store_exec(cmd_store_ctx_t *ctx, int argc, char **argv, pc_buf_t *out);

/** A byte count for people: "512B", "1.5KiB", "20.0MiB", ... (binary units, one decimal). */
void cmd_store_fmt_size(uint64_t v, char *buf, size_t len);

/** The control socket's path for a store directory into buf: 0, or -ENAMETOOLONG when it
 * would not fit a sockaddr_un. */
int cmd_store_socket_path(const char *store_dir, char *buf, size_t buflen);

#endif
