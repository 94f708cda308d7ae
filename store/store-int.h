/* store-int — private declarations shared by the store/ sources. Never included outside store/
 * (the unit tests include it to damage the LMDB records on purpose).
 *
 * The struct store is immutable after store_open except for the access-time batch (guarded by
 * atime_mu) and two counters (atomic), so every thread may use one store_t at once.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <limits.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "store/store.h"

/** How many pending access times are kept; past this the oldest are dropped. */
#define STORE__ATIME_MAX 4096
/** A hit whose digest is among this many newest pending notes updates that note. */
#define STORE__ATIME_RECENT 8
/** Length of "sha256:" + 64 hex (no NUL). */
#define STORE__SHA256_LEN 71
/** Longest media type we keep (the info structs hold 128 bytes with the NUL). */
#define STORE__MT_MAX 127

typedef struct store__atime {
  char digest[STORE__SHA256_LEN + 1];
  int64_t t;
} store__atime_t;

struct store {
  char *root;
  size_t rootlen;
  int lock_fd;   /**< flock(LOCK_EX) on <root>/lock: one process per store (-1 read-only) */
  int read_only; /**< store_opts_t.read_only */
  MDB_env *env;
  MDB_dbi blobs, manifests, tags;
  MDB_dbi stats;  /**< one record, "totals" (see store__totals_t) */
  MDB_dbi refs;   /**< manifest digest -> the sha256 digests it references (store/evict.c) */
  MDB_dbi pins;   /**< upstream "\0" ref -> pin record (store/evict.c) */
  MDB_dbi doomed; /**< digests whose records are gone and whose files are to be unlinked */
  /** Held by the evictor from an eviction batch's commit until its files are unlinked, and by
   * a writer's commit from its presence check to its record: so a commit never finds the file
   * of a blob that is about to be unlinked and records it (a record without a file). */
  pthread_mutex_t evict_mu;
  /** Bumped by store_pin_add (under evict_mu): an eviction run re-reads the pins before a
   * batch when it moved, so a pin added during a run protects its content at once. */
  atomic_uint_fast64_t pins_gen;
  MDB_dbi seen;    /**< (upstream, repository, digest) -> first seen (store/scope.c) */
  int seen_legacy; /**< the store held content before "seen" existed (store/scope.c) */
  atomic_uint_fast64_t tmp_seq;
  /** Spare temp files (store_spare_make): made off the loop, taken by the next blob writers
   * (store_writer_new), the newest first. Under spare_mu. */
  pthread_mutex_t spare_mu;
  int nspares;
  struct store__spare {
    int fd, rfd;
    char path[PATH_MAX];
  } spares[STORE_SPARES];
  atomic_uint_fast64_t totals_scans; /**< how often the totals were recomputed by a scan */
  /* Fault injection for the unit tests (store__fault_space): off (-1) in production. */
  _Atomic int_fast64_t fault_space; /**< bytes writers may still write, or -1: no limit */
  _Atomic int fault_commit;         /**< error every commit fails with before its rename, or 0 */

  /** A reset read transaction kept for the next short read (store__rtxn_begin): renewing it
   * costs no malloc and no reader-table lock, where mdb_txn_begin costs both. Taken and given
   * back with an atomic exchange, so any thread may use it; NULL when none is kept. A reset
   * txn holds a reader slot but no snapshot: it pins no pages. */
  _Atomic(MDB_txn *) rtxn_spare;

  pthread_mutex_t atime_mu;
  store__atime_t *atimes; /**< ring of STORE__ATIME_MAX */
  size_t atime_head;      /**< index of the oldest entry */
  size_t atime_n;
};

/** Decoded blob record (see the encoding comment in store.c). */
typedef struct store__blob_rec {
  uint64_t size;
  int64_t created;
  int64_t last_access;
  char media_type[STORE__MT_MAX + 1];
} store__blob_rec_t;

/** The running totals record: key "totals" in the stats database. The record counts come from
 * LMDB (mdb_stat ms_entries); the byte sums cannot, so they are kept here and changed in the same
 * write transaction as the records they sum. blob_bytes is the sum of the size fields of the
 * decodable blob records (an undecodable record adds 0), manifest_bytes the same over the
 * manifest records. txnid is the id of the write transaction that wrote the record: every write
 * transaction of the store rewrites it, so a record whose txnid is not the last committed one
 * was left behind by a writer that does not know about totals (an older pullcache, a raw LMDB
 * tool) and is recomputed. Compare it in write transactions only: a read transaction's
 * mdb_txn_id may lag the snapshot it reads. */
typedef struct store__totals {
  uint64_t blob_bytes;
  uint64_t manifest_bytes;
  uint64_t txnid;
} store__totals_t;

/** A write transaction of the store. Every LMDB write goes through one, so the totals record
 * is rewritten in every commit and can never disagree with the records after a crash. */
typedef struct store__wtxn {
  MDB_txn *txn;
  store__totals_t tot; /**< the totals as of this transaction, adjusted by the puts and dels */
} store__wtxn_t;

/** Begin a write transaction and load the totals. When the totals record is missing,
 * undecodable or stale (see store__totals_t) the totals are recomputed by a scan of the records
 * (logged; counted in s->totals_scans), so the commit also repairs the record. 0 or an error
 * (then no transaction is open). */
int store__wtxn_begin(store_t *s, store__wtxn_t *w);
/** Write the totals record (stamped with this transaction's id) and commit. Ends the
 * transaction in every case. */
int store__wtxn_commit(store_t *s, store__wtxn_t *w);
/** Abort (nothing is written). A wtxn whose txn is NULL is a no-op. */
void store__wtxn_abort(store__wtxn_t *w);
/** Insert or replace the blob record of digest (STORE__SHA256_LEN bytes), moving blob_bytes
 * by the difference with the old record's size. */
int store__wtxn_put_blob(store_t *s, store__wtxn_t *w, const char *digest,
                         const store__blob_rec_t *r);
/** Insert or replace the manifest record of digest, moving manifest_bytes likewise.
 * mt may be NULL; at most STORE__MT_MAX bytes of it are kept. */
int store__wtxn_put_manifest(store_t *s, store__wtxn_t *w, const char *digest, uint64_t size,
                             const char *mt);
/** Delete the record key from dbi (s->blobs or s->manifests), taking its size off the totals.
 * 0, PC_E_NOTFOUND when there was no such record, or another error. */
int store__wtxn_del(store_t *s, store__wtxn_t *w, MDB_dbi dbi, const MDB_val *key);

/** Read the totals record as stored. 0, PC_E_NOTFOUND, PC_E_CORRUPT (undecodable) or an
 * error. */
int store__totals_read(store_t *s, MDB_txn *txn, store__totals_t *t);
/** Recompute the byte sums by a scan of the blob and manifest records (O(records)); t->txnid
 * is set to 0. */
int store__totals_scan(store_t *s, MDB_txn *txn, store__totals_t *t);
/** Write the totals record, stamped with mdb_txn_id(txn) (a write transaction). */
int store__totals_write(store_t *s, MDB_txn *txn, const store__totals_t *t);

/** Parse manifest bytes and put their references (config, layers, blobs, manifests: the
 * sha256 digests among them) under digest in the refs database, replacing any. Bytes that are
 * not a JSON object with such fields put nothing (0). */
/** The seen record of (upstream, repo, digest) in w's transaction, unless there is one (the first
 * sight is kept). -EINVAL / -ENAMETOOLONG for a key store_seen_put refuses (nothing written). */
int store__seen_put_txn(store_t *s, store__wtxn_t *w, const char *upstream, const char *repo,
                        const char *digest, int64_t now);
int store__refs_put(store_t *s, store__wtxn_t *w, const char *digest, const void *bytes,
                    size_t len);
/** At open: unlink the files of doomed digests that have no record, then empty the table. */
int store__doomed_sweep(store_t *s);
/** 1 when digest is in the doomed table (txn may be a write txn). */
int store__is_doomed(store_t *s, MDB_txn *txn, const char *digest);
/** Open (create) the "seen" database in txn, at store_open (store/scope.c). */
int store__seen_open(store_t *s, MDB_txn *txn);

/** A short read transaction: the thread's read batch's (store_read_batch_begin), else the kept
 * reset one renewed, else a new one. 0 or an error (then none is open). End it with
 * store__rtxn_end (never mdb_txn_abort), in the same function. */
int store__rtxn_begin(store_t *s, MDB_txn **txn);
/** End a read transaction from store__rtxn_begin: reset and kept for the next (or aborted
 * when one is kept already). */
void store__rtxn_end(store_t *s, MDB_txn *txn);

/** Map an LMDB return code to a pc error (MDB_NOTFOUND -> PC_E_NOTFOUND). */
int store__mdb_err(int rc, const char *what);
/** 1 if s is "sha256:" + 64 lowercase hex (exactly STORE__SHA256_LEN bytes, NUL-terminated). */
int store__is_sha256(const char *s);
/** Encode/decode a blob record. encode returns the length written into buf (>= 160 bytes). */
size_t store__blob_rec_encode(const store__blob_rec_t *r, unsigned char *buf);
int store__blob_rec_decode(const MDB_val *v, store__blob_rec_t *r);
/** Decode a manifest record. */
int store__manifest_rec_decode(const MDB_val *v, store_manifest_info_t *info);
/** Hash an open file from its start; out gets "sha256:<hex>", *size its length. 0 or -errno. */
int store__hash_fd(int fd, char out[72], uint64_t *size);

/** Unit tests: a small disk. Writers may write `bytes` more in all (a write that goes past it
 * writes what fits and fails with -ENOSPC, as the kernel does), -1 = no limit again; and every
 * commit fails with commit_err (0 = none) after verification, before the rename (the temp file
 * is removed, as on a real failure). */
void store__fault_space(store_t *s, int64_t bytes, int commit_err);

#endif
