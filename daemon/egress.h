/* daemon/egress — the mirror's own egress allow-list: every host the upstream client sends a
 * request to (each hop: the first, every redirect, every token request), with the upstream it
 * served, a count and when it was first and last seen.
 *
 * Kept in memory on the loop thread (egress_note is the http/up egress callback), rendered on
 * /metrics (pullcache_egress_requests_total{host,port,scheme,upstream} and
 * pullcache_egress_last_seen_seconds), and persisted in the store directory as EGRESS_FILE
 * (tab-separated: scheme, host, port, upstream, count, first, last; written whole to a temp
 * file and renamed) whenever a new (host, upstream) appears, at most every EGRESS_WRITE_S
 * otherwise, and at egress_free. The file is read without the store's lock, so
 * `pullcache egress` works while the daemon runs. Loaded at egress_new: counts carry over.
 */
#ifndef EGRESS_H
#define EGRESS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/buf.h"

#define EGRESS_FILE "egress.tsv"
#define EGRESS_WRITE_S 10
#define EGRESS_MAX 512 /**< hosts kept (more are counted in none: logged once) */

typedef struct egress_entry {
  char scheme[8];
  char host[256];
  unsigned port;
  char upstream[256];
  uint64_t count;
  int64_t first, last; /**< epoch seconds */
} egress_entry_t;

typedef struct egress egress_t;

/** A table persisted under store_dir (may be NULL: memory only), its file written on loop's
 * thread pool (loop NULL: on the calling thread). Never fails. */
egress_t *egress_new(const char *store_dir, uv_loop_t *loop);
/** The http/up egress callback (arg is the egress_t). */
void egress_note(void *arg, const char *hostkey, const char *label);
void egress_render(const egress_t *e, pc_buf_t *o);
/** The hosts seen (*n of them; the table's own memory: valid until the next egress_note). */
const egress_entry_t *egress_entries(const egress_t *e, size_t *n);
/** Write if anything changed since the last write, and free (NULL is a no-op). With a write on
 * the thread pool, that write's callback does it (the loop must run on). */
void egress_free(egress_t *e);

/** Read a persisted file: *out (malloc'd, caller frees) and *n. 0, or -errno / PC_E_CORRUPT. */
int egress_load(const char *path, egress_entry_t **out, size_t *n);

#endif
