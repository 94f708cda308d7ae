/* store/evict — what the cache keeps: reference-aware recency, pins, eviction to a byte
 * budget, and the listing of what is cached. Part of the store module (store_ prefix); its
 * state is the LMDB databases refs, pins and doomed of the store's environment.
 *
 * Recency. Every blob record carries its own last access (store_blob_open and
 * store_manifest_open note it in memory; store_flush_atimes writes the batch in one write
 * transaction on the daemon's timer, so a hit never costs an LMDB write). When a manifest is
 * stored (store_manifest_put) the digests it references — config, layers, an index's
 * manifests — are recorded in the refs database in the same transaction as its record. A
 * blob's *last use* is the latest of its own last access and the last use of every stored
 * manifest that references it (so an index keeps its platform manifests, and a manifest its
 * layers, alive as long as it is pulled: a base layer shared by a hot image lives although
 * nodes that have it never download it again). Tags go with their manifest.
 *
 * Pins. A pin is (upstream, "repo:tag" or "repo@sha256:..."): whatever is reachable from the
 * manifest it names (through the refs) is never evicted. Pins persist in LMDB. A pin added
 * while a run is under way counts from the run's next batch on (store_pin_add and a batch's
 * pin check are serialised by the store's evict_mu).
 *
 * Eviction (store_evict): one read transaction takes a snapshot of every blob record and
 * reference (plan: O(records), about 64 bytes of memory per blob), candidates are the unpinned
 * blobs, oldest last use first (a manifest before the blobs it references on a tie); they are
 * then removed in bounded batches, each one short write transaction, so hits and commits go on
 * between batches. A candidate whose own access time moved since the plan is kept, and a kept
 * manifest keeps what it references (the pending
 * access times are flushed before the plan and then at most once a second). The crash-
 * safe order per batch: the records (and totals, refs, tags) are deleted and the digests added
 * to the doomed table in one commit; then the files are unlinked; the next transaction empties
 * the doomed entries. A crash in between leaves doomed files with no record: store_open unlinks
 * them (and keeps a doomed digest whose record came back). A record therefore never outlives
 * its file, except when the unlink itself is lost in a crash, which leaves a complete blob
 * without a record (served, and recorded again like any such file). Open descriptors keep
 * working after the unlink (Linux), so an answer in progress is never cut; nothing in the
 * daemon reopens a blob by path mid-answer, and blobs being filled live in tmp/, not blobs/.
 *
 * Threads: like the rest of the store, every call may run on any thread; store_evict and
 * store_images block (seconds on a million blobs) and belong on a worker thread. Return values:
 * 0 or a negative pc error.
 */
#ifndef STORE_EVICT_H
#define STORE_EVICT_H

#include <stdint.h>

#include "store/store.h"

typedef enum {
  STORE_EVICT_BUDGET = 0,   /**< the store passed max_size */
  STORE_EVICT_MIN_FREE = 1, /**< the disk's free space fell under min_free */
  STORE_EVICT_MANUAL = 2,   /**< `pullcache gc` */
  STORE_EVICT_NREASONS
} store_evict_reason_t;

/** "budget", "min_free", "manual". */
const char *store_evict_reason_name(int reason);

/** One blob removed (or, in a dry run, that would be). */
typedef struct store_evict_item {
  char digest[72];
  uint64_t size;
  int64_t last_use; /**< its effective last use, seconds since the epoch */
  int manifest;     /**< 1 when it is a manifest */
} store_evict_item_t;

typedef void (*store_evict_cb)(void *arg, const store_evict_item_t *it);

typedef struct store_evict_opts {
  uint64_t target;   /**< remove until the blob bytes are <= target */
  int reason;        /**< store_evict_reason_t, for the report */
  int dry_run;       /**< plan only: nothing changes */
  unsigned batch;    /**< records per write transaction; 0 = 256 */
  store_evict_cb cb; /**< may be NULL; called for each item, in order, with no txn open */
  void *arg;
} store_evict_opts_t;

typedef struct store_evict_report {
  uint64_t blobs;        /**< blob records removed (manifests included) */
  uint64_t manifests;    /**< of those, manifests */
  uint64_t tags;         /**< tags removed with their manifest */
  uint64_t bytes;        /**< bytes removed */
  uint64_t skipped;      /**< candidates used again since the plan, kept */
  uint64_t before;       /**< blob bytes when the plan was made */
  uint64_t after;        /**< blob bytes at the end */
  uint64_t records;      /**< blob records in the plan */
  uint64_t pinned_bytes; /**< bytes reachable from the pins */
  int pins_over;         /**< the pinned bytes alone exceed the target */
  int64_t oldest;        /**< last use of the oldest blob kept (0: none) */
  uint64_t plan_ms, ms;  /**< time to plan, and in all */
} store_evict_report_t;

/** Evict down to o->target bytes (see the top). Flushes the access times first. *r (may be
 * NULL) is filled in every case. Under the target already: nothing removed, 0. */
int store_evict(store_t *s, const store_evict_opts_t *o, store_evict_report_t *r);

/* ---- pins ----------------------------------------------------------------------------- */

/** A parsed reference: repo plus exactly one of tag / digest. */
typedef struct store_ref {
  char repo[256];
  char tag[129];   /**< "" when the reference is by digest */
  char digest[72]; /**< "" when by tag */
} store_ref_t;

/** Parse "repo:tag" or "repo@sha256:<64 hex>" by the OCI grammar. 0, or -EINVAL. */
int store_ref_parse(const char *ref, store_ref_t *out);

/** Pin (upstream, ref). -EINVAL for a malformed ref or empty upstream; pinning twice is 0.
 * Blocking (one write txn). */
int store_pin_add(store_t *s, const char *upstream, const char *ref);
/** Remove a pin: 0, PC_E_NOTFOUND when there was none, -EINVAL for a malformed ref. */
int store_pin_del(store_t *s, const char *upstream, const char *ref);

typedef int (*store_pin_cb)(void *arg, const char *upstream, const char *ref, int64_t created);
/** Every pin in (upstream, ref) order; the callback runs with no txn open; non-zero stops. */
int store_pin_list(store_t *s, store_pin_cb cb, void *arg);

/** Bytes reachable from the pins (each blob once): a walk from the pins, O(pinned content). */
int store_pinned_bytes(store_t *s, uint64_t *bytes);

/* ---- listing -------------------------------------------------------------------------- */

/** One tag of the store and what it holds. */
typedef struct store_image {
  const char *upstream, *repo, *tag;
  char digest[72];
  char media_type[128];
  uint64_t bytes;     /**< the manifest and every present blob reachable from it */
  uint64_t shared;    /**< of those, bytes also referenced by another manifest */
  int64_t last_use;   /**< effective last use of the manifest */
  int64_t fetched_at; /**< when the tag was last fetched */
  int pinned;         /**< reachable from a pin */
} store_image_t;

typedef int (*store_image_cb)(void *arg, const store_image_t *img);
/** Every tag in (upstream, repo, tag) order with its sizes (one plan as in store_evict).
 * Blocking. */
int store_images(store_t *s, store_image_cb cb, void *arg);

#endif
