/* store — the content-addressed blob store with LMDB metadata.
 *
 * Layout under root:
 *   blobs/sha256/<2 hex>/<64 hex>   committed blobs (manifests are blobs too), never modified
 *   tmp/                             writers stream here; swept at open
 *   quarantine/                      fsck moves mismatching files here
 *   meta/                            one LMDB environment: blobs, manifests, tags, totals,
 *                                    refs, pins, doomed (store/evict.h), seen (scoping)
 *   control.sock                     the daemon's control socket (daemon/control.c), not ours
 *   egress.tsv                       the hosts the daemon contacted (daemon/egress.c), not ours
 *
 * Invariants: a file is visible under blobs/ only after its bytes hashed to its name and were
 * fsynced; an LMDB record is written only after its file was renamed into place and its
 * directory fsynced. A crash at any point leaves at most a temp file (swept) or a file without
 * a record (which open() repairs lazily: a present file with no record is still served, and
 * fsck reports it). Eviction (store/evict.h) removes a record before its file, never the other
 * way round, through the doomed table that store_open sweeps. The running totals (store_stats) are
 * written in the same LMDB transaction as the records they sum, so no crash leaves them out of step
 * with the records.
 *
 * Threads: a store_t may be used from several threads at once (the loop and uv worker threads).
 * Read calls are cheap (one short LMDB read txn, no directory scan). Calls that fsync
 * (store_writer_commit, store_manifest_put) block: run them off the event loop.
 *
 * Return values: 0 or a negative pc error (core/pc.h). PC_E_NOTFOUND means "not present".
 */
#ifndef STORE_H
#define STORE_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>

#include "store/digest.h"

typedef struct store store_t;
typedef struct store_writer store_writer_t;

typedef struct store_opts {
  uint64_t map_size;  /**< LMDB map size in bytes; 0 = default (4 GiB) */
  int atime_flush_ms; /**< unused by the store itself; the daemon flushes on its own timer */
  int must_exist;     /**< 1: a root that holds no store is PC_E_NOTFOUND (nothing created);
                           commands that read a store set it, only `serve` and `import` create */
  int read_only;      /**< 1: read beside whoever holds the store (a running daemon): no lock
                           taken, nothing created, swept or repaired, LMDB opened read-only
                           (MDB_RDONLY: readers never block its writer); implies must_exist.
                           Write calls fail (EACCES); access times are not recorded.
                           `pullcache export` opens a live store this way. */
} store_opts_t;

/** Open (creating if needed, unless opts->must_exist) the store at root. Sweeps tmp/. *out owned by
 * caller, free with store_close. opts may be NULL. Takes an exclusive flock on <root>/lock for as
 * long as the store is open: -EBUSY when another opener (process or store_t) holds it, so
 * `pullcache fsck` never sweeps a running daemon's temp files. Open once per process, after any
 * fork (LMDB). Does not scan the records, except once when the totals record (store_stats) is
 * missing or stale, i.e. the store was written by a pullcache without totals: then the byte totals
 * are recomputed from the records (a NOTICE is logged) and stored. */
int store_open(const char *root, const store_opts_t *opts, store_t **out);
/** Flush pending access times and close. NULL is a no-op. */
void store_close(store_t *s);
/** One snapshot for the lookups of a short stretch of work on this thread (one request's
 * dispatch): from here to store_read_batch_end, s's short reads on the calling thread share
 * one read transaction (begun by the first of them), instead of one each. Other threads are
 * not affected. Writes made meanwhile (by other threads) are seen after the end: keep the
 * batch short, never across a return to the event loop. Batches nest: an inner one joins the
 * outer one (of the same store; another store's reads go unbatched meanwhile). */
void store_read_batch_begin(store_t *s);
void store_read_batch_end(store_t *s);
const char *store_root(const store_t *s);

/* ---- blobs ------------------------------------------------------------------------------- */

typedef struct store_blob_info {
  uint64_t size;
  char media_type[128]; /**< "" when unknown */
  int64_t created;      /**< seconds since epoch */
  int64_t last_access;  /**< seconds since epoch (may lag by one flush interval) */
} store_blob_info_t;

/** Metadata of a committed blob, or PC_E_NOTFOUND. info may be NULL (presence check).
 * PC_E_DIGEST_INVALID for an ungrammatical digest; PC_E_NOTFOUND for a grammatical digest of
 * another algorithm than sha256 (never stored). */
int store_blob_stat(store_t *s, const char *digest, store_blob_info_t *info);

/** Open a committed blob for reading. On success *fd is an O_RDONLY descriptor owned by the
 * caller (close it) and *size its length. PC_E_NOTFOUND when absent. Records an access time
 * (batched in memory; written by store_flush_atimes). PC_E_CORRUPT when the file's length
 * differs from its record (truncated on disk: run fsck). */
int store_blob_open(store_t *s, const char *digest, int *fd, uint64_t *size);

/** store_blob_open that also gives the blob's metadata (one record lookup, one open): info
 * (may be NULL) gets the size, and the media type and times when the blob has a record ("" and 0
 * for a file without one). Same return codes. */
int store_blob_open_info(store_t *s, const char *digest, int *fd, store_blob_info_t *info);

/** Write the path of a blob's file (committed or not) into buf. Returns 0 or -ENAMETOOLONG,
 * or PC_E_DIGEST_INVALID when digest is not "sha256:<64 lowercase hex>" (so no path is ever
 * built from anything else). */
int store_blob_path(const store_t *s, const char *digest, char *buf, size_t buflen);

/** Write batched access times in one LMDB write transaction. Blocking (one fsync). */
int store_flush_atimes(store_t *s);

/* ---- writers ----------------------------------------------------------------------------- */

/** Start a blob write into a new file under tmp/. expected_digest may be NULL (then the digest
 * is whatever the bytes hash to, used for manifests fetched by tag); expected_size is -1 when
 * unknown. *out owned by caller until store_writer_commit or store_writer_abort.
 * PC_E_DIGEST_INVALID for an ungrammatical expected_digest, PC_E_UNSUPPORTED for one that is
 * not sha256. */
int store_writer_new(store_t *s, const char *expected_digest, int64_t expected_size,
                     store_writer_t **out);
/** Spare temp files kept at most: a containerd pull starts 3 blobs at once. */
#define STORE_SPARES 4
/** Make spare temp files until STORE_SPARES are kept: empty files under tmp/, each with a
 * read-only descriptor, taken by the next store_writer_new calls (which then make no file), so
 * that inode creation runs off the event loop (the daemon calls this at start and, on its store
 * writer thread, after a fill took one). Any thread, but not while store_close runs; 0 or the
 * -errno of the first file that could not be made. Removed by store_close; those left by a
 * crash are swept with tmp/ by the next store_open. */
int store_spare_make(store_t *s);
/** A read-only descriptor on the writer's temp file, for readers following a live fill (the
 * caller owns it): the spare's, made with it, else a new open of the path. -errno on error
 * (-EBADF for a hash-only writer). */
int store_writer_reader(store_writer_t *w);
/** Append bytes; hashes them as they go. Returns 0, -errno (ENOSPC...), or PC_E_SIZE_INVALID
 * when more than expected_size bytes are written. */
int store_writer_write(store_writer_t *w, const void *buf, size_t len);
/** Bytes written so far. */
uint64_t store_writer_size(const store_writer_t *w);
/** The temp file's fd (valid until commit/abort; owned by the writer). Readers following a
 * live fill should open their own descriptor with store_writer_path. */
int store_writer_fd(const store_writer_t *w);
/** The temp file's path (valid until commit/abort). */
const char *store_writer_path(const store_writer_t *w);
/** Finish the hash and compare it (and the size) with what was expected, without committing:
 * 0 when the bytes are right, PC_E_DIGEST_INVALID / PC_E_SIZE_INVALID / the first write error
 * otherwise. Cheap (no I/O), so the loop can decide at once; afterwards the writer takes no more
 * writes (-EINVAL) and store_writer_commit reuses the verdict. */
int store_writer_verify(store_writer_t *w);
/** Verify, fsync, rename into blobs/, fsync the directory, record it (media_type may be NULL).
 * Frees w in every case. On success out_digest (if not NULL, >= 72 bytes) gets the digest.
 * PC_E_DIGEST_INVALID on a digest mismatch, PC_E_SIZE_INVALID on a size mismatch: the temp
 * file is deleted and nothing is recorded. Committing a digest that is already present is a
 * success (the new copy is dropped). -EINVAL for a media type longer than 127 bytes.
 * Blocking. */
int store_writer_commit(store_writer_t *w, const char *media_type, char *out_digest);
/** Records a commit writes in its own transaction, besides the content's: one fsync'd LMDB
 * commit instead of one per record. */
typedef struct store_also {
  const char *upstream, *repo; /**< where the content was seen (store_seen_put's record; the
                                    first sight is kept); NULL: none */
  int64_t now;                 /**< the sight's time */
  const char *tag;             /**< a manifest's tag under (upstream, repo) (store_tag_put's
                                    record, t); NULL: none */
  const struct store_tag *t;
} store_also_t;
/** store_writer_commit that also writes also's records (NULL: none) in the same transaction. A
 * record store_seen_put or store_tag_put would refuse (-EINVAL, -ENAMETOOLONG, a bad digest) is
 * left out (logged); the content is committed all the same. */
int store_writer_commit_also(store_writer_t *w, const char *media_type, const store_also_t *also,
                             char *out_digest);
/** Drop the temp file and free w. NULL is a no-op. */
void store_writer_abort(store_writer_t *w);
/** The disk is full (a write failed with -ENOSPC or -EDQUOT), or the caller knows it will be:
 * from now on the writer only hashes and counts the bytes it is given (store_writer_write
 * writes nothing, store_writer_verify works as before), and the temp file keeps exactly the
 * bytes counted so far (a partly written last write is cut off), readable by path or by fd
 * until abort. store_writer_commit then fails with -ENOSPC (nothing stored, the temp file
 * removed). Returns 0, or the writer's error when it is another one (nothing changed), -EINVAL
 * once verified. */
int store_writer_hash_only(store_writer_t *w);
/** A writer that is hash-only from the start (no temp file: store_writer_path is "" and
 * store_writer_fd -1), for bytes that cannot be stored but must be verified. Same arguments
 * and errors as store_writer_new but no I/O. */
int store_writer_new_hash_only(store_t *s, const char *expected_digest, int64_t expected_size,
                               store_writer_t **out);

/* ---- manifests and tags ------------------------------------------------------------------ */

/** Store manifest bytes (as a CAS blob) with their media type. If expected_digest is not NULL
 * the bytes must hash to it (else PC_E_DIGEST_INVALID, nothing stored). out_digest (>= 72
 * bytes, may be NULL) gets the digest. Blocking (fsync). */
/** store_manifest_put that also writes also's records (NULL: none) in the same transaction
 * (see store_writer_commit_also). */
int store_manifest_put_also(store_t *s, const void *bytes, size_t len, const char *media_type,
                            const char *expected_digest, const store_also_t *also,
                            char *out_digest);
int store_manifest_put(store_t *s, const void *bytes, size_t len, const char *media_type,
                       const char *expected_digest, char *out_digest);

typedef struct store_manifest_info {
  uint64_t size;
  char media_type[128];
} store_manifest_info_t;

/** Open a manifest for reading: one record lookup and one open. *fd is the caller's; info
 * (may be NULL) gets size and media type. PC_E_NOTFOUND when the digest is not a known manifest
 * or its file is gone; PC_E_CORRUPT when the file's length differs from the record. */
int store_manifest_open(store_t *s, const char *digest, int *fd, store_manifest_info_t *info);
/** A stored manifest read whole (*out malloc'd and NUL-terminated, the caller frees it; *len its
 * length) and its bytes hashed: PC_E_CORRUPT when they do not match the digest (run fsck),
 * PC_E_TOOBIG when the record says more than max bytes, else as store_manifest_open. info (may
 * be NULL) as there. Blocking: one open and read (manifests are small). */
int store_manifest_read(store_t *s, const char *digest, size_t max, char **out, size_t *len,
                        store_manifest_info_t *info);
/** Look up a manifest by digest. PC_E_NOTFOUND if unknown (or its blob is gone). */
int store_manifest_stat(store_t *s, const char *digest, store_manifest_info_t *info);

typedef struct store_tag {
  char digest[STORE_DIGEST_MAX];
  char media_type[128];
  uint64_t size;
  int64_t fetched_at; /**< when the upstream last gave this digest for the tag */
  int64_t checked_at; /**< when the upstream last confirmed it (HEAD revalidation) */
} store_tag_t;

/** Tags are keyed by (upstream name, repository, tag). */
int store_tag_get(store_t *s, const char *upstream, const char *repo, const char *tag,
                  store_tag_t *out);
/** Insert or replace. Blocking (one write txn). -EINVAL for an empty upstream, repo or tag,
 * -ENAMETOOLONG when the three together exceed LMDB's key size (511 bytes),
 * PC_E_DIGEST_INVALID when t->digest is not a grammatical digest. */
int store_tag_put(store_t *s, const char *upstream, const char *repo, const char *tag,
                  const store_tag_t *t);

/** Called once per tag, in lexical order; return non-zero to stop. */
typedef int (*store_tag_cb)(void *arg, const char *tag, const store_tag_t *t);
/** Walk the tags of (upstream, repo) in lexical order, starting strictly after `after`
 * (NULL or "" = from the first). Returns 0, or the callback's non-zero value. The callback
 * runs with no LMDB transaction open (tags are copied out in small batches), so it may call
 * any store function, including store_tag_put. */
int store_tag_list(store_t *s, const char *upstream, const char *repo, const char *after,
                   store_tag_cb cb, void *arg);

/* ---- totals ------------------------------------------------------------------------------ */

/** Totals of the LMDB records. Manifests are blobs too: each manifest has a blob record as
 * well, so manifests and manifest_bytes are (normally) included in blobs and blob_bytes, and
 * blob_bytes is what the committed files take. The counts are of records: a blob whose record
 * was lost in a crash (the file is present and served) is not counted until store_flush_atimes
 * or store_fsck records it; a record whose file was deleted by hand is counted until store_fsck
 * drops it. */
typedef struct store_stats {
  uint64_t blobs;          /**< committed blobs (blob records) */
  uint64_t blob_bytes;     /**< the sum of their sizes */
  uint64_t manifests;      /**< stored manifests (manifest records) */
  uint64_t manifest_bytes; /**< the sum of their sizes */
  uint64_t tags;           /**< tag records, over every (upstream, repository) */
} store_stats_t;

/** Totals of what is committed. Cheap (O(1): no scan; one short LMDB read transaction), safe
 * from any thread, consistent with the last committed transaction: the counts come from LMDB's
 * own entry counts and the byte sums from a totals record that every write transaction
 * rewrites along with the records, all read in one snapshot. Returns 0, or PC_E_CORRUPT when
 * the totals record is missing or undecodable, which only a writer other than this store_t (a
 * raw LMDB tool run on the open store) can cause; such a writer can also leave the sums stale
 * without an error here. The next write of this store_t, the next store_open or store_fsck
 * recomputes them. *out is untouched on error. */
int store_stats(store_t *s, store_stats_t *out);

/* ---- where content was seen (repository scoping; store/scope.c) ------------------------- */

/** Record that upstream served digest under repo (first sight kept; a write transaction only
 * when new). Blocking (fsync): off the event loop. */
int store_seen_put(store_t *s, const char *upstream, const char *repo, const char *digest,
                   int64_t now);
/** store_seen_put for n digests in one write transaction (one fsync; none when every one is
 * recorded already): bulk writers such as `pullcache import`. Blocking. */
int store_seen_put_many(store_t *s, const char *upstream, const char *repo,
                        const char *const *digests, size_t n, int64_t now);
/** 0 when (upstream, repo, digest) was recorded, PC_E_NOTFOUND when not, or an error. Cheap. */
int store_seen_has(store_t *s, const char *upstream, const char *repo, const char *digest);
/** 1 when the store held content before it recorded where content was seen (a store written
 * by an older pullcache): that content has no records. */
int store_seen_legacy(const store_t *s);

/* ---- fsck -------------------------------------------------------------------------------- */

typedef struct store_fsck_report {
  uint64_t blobs_checked;
  uint64_t bytes_checked;
  uint64_t corrupt;         /**< files whose bytes do not match their name: quarantined */
  uint64_t missing_files;   /**< records whose file is gone: records removed */
  uint64_t orphan_files;    /**< files without a (correct) record: recorded (they verified) */
  uint64_t stray_files;     /**< files under blobs/ whose name is not a digest */
  uint64_t totals_repaired; /**< 1 when the totals record disagreed with the records: rewritten */
} store_fsck_report_t;

/** Rehash every blob; quarantine mismatches (moved to quarantine/), drop records whose file
 * is missing, record verified files that had no record; every repair moves the totals with the
 * records. Last, recompute the byte totals from the records (one write transaction holding the
 * writer lock for one scan) and rewrite the totals record if it disagrees. Prints one line per
 * problem to out (may be NULL). Blocking; intended for the `pullcache fsck` command. Returns 0
 * when the store was healthy or held only strays (reported, never removed: they are not the
 * store's, and nothing was repaired), PC_E_CORRUPT when anything was found and repaired, or another
 * error if the walk itself failed; *report (may be NULL) is filled in every case. */
int store_fsck(store_t *s, FILE *out, store_fsck_report_t *report);

#endif
