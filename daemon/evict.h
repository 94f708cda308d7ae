/* daemon/evict — the daemon's side of eviction: when to evict, on the thread pool, and what
 * the metrics and logs say about it. The engine is store/evict.h.
 *
 * A 250 ms timer on the loop makes an O(1) check (store_stats: one LMDB read txn; statvfs):
 *   store bytes > max_size                       -> evict to evict_to      (reason budget)
 *   disk free  < min_free                        -> evict the shortfall +10% (reason min_free)
 *   otherwise, every 5 minutes (and at start-up) -> a survey (a dry run that removes nothing:
 *                                                   the pinned bytes and the oldest entry's age)
 * Each commit also kicks the check at once (evict_kick, from the fill's on_committed hook set by
 * serve.c), so a fast stream of pulls cannot outrun the tick; the tick covers the rest. At most
 * one run at a time (busy); store_evict runs on the uv thread pool, never on the loop and never
 * on a request's path; after a run that removed nothing the next waits 30 s unless the store
 * grew (pins alone over the budget: logged once, exposed, serving goes on); a reload that
 * changes max_size ends that wait and brings the survey forward.
 *
 *   IDLE --tick over budget/min_free--> RUNNING --after_work--> IDLE
 *   IDLE --tick survey due-----------> SURVEYING --after_work--> IDLE
 *   any --evict_close--> CLOSED (the timer closes; a run in flight finishes, its result drops)
 *
 * Everything here is touched on the loop thread only, except the job fields the worker fills.
 * The configuration is read from d->cfg at each tick, so a reload takes effect at once.
 */
#ifndef DAEMON_EVICT_H
#define DAEMON_EVICT_H

#include <stdint.h>

#include "core/buf.h"
#include "daemon/daemon.h"

/** The effective low watermark: cfg->store_evict_to, or 90% of max_size when 0. */
uint64_t evict_low_mark(const daemon_config_t *cfg);

/** Check now rather than at the next tick (a commit grew the store): the same O(1) check, and
 * a run queued when over the budget; nothing while a run is in flight. Safe before
 * evict_start and after evict_close (does nothing). */
void evict_kick(daemon_t *d);
/** Start the checks (d->evict). 0 or an error. */
int evict_start(daemon_t *d);
/** Stop the timer (idempotent). A run in flight finishes on the pool; evict_free after the
 * loop has run dry. */
void evict_close(daemon_t *d);
/** Free d->evict (after uv_run returned). NULL-safe. */
void evict_free(daemon_t *d);
/** Count a manual run (`pullcache gc` through the control socket). */
void evict_note_manual(daemon_t *d, uint64_t blobs, uint64_t bytes);
/** The eviction figures summed over the reasons (the status page). */
typedef struct evict_figures {
  uint64_t runs, blobs, bytes; /**< eviction runs, blobs and bytes evicted, every reason */
  uint64_t pinned_bytes;       /**< as of the last run or survey */
  int pins_over;               /**< the pins alone exceed max_size */
  int64_t last_run;            /**< epoch s of the last run (0: none) */
} evict_figures_t;
/** Fill *out (all zero before evict_start). */
void evict_get_figures(const daemon_t *d, evict_figures_t *out);
/** Append the eviction metrics (Prometheus text). */
void evict_render(const daemon_t *d, pc_buf_t *o);

#endif
