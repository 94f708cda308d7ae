/* store-int — private declarations shared by the store/ sources. Never included outside store/.
 *
 * The struct store is immutable after store_open except for the access-time batch (guarded by
 * atime_mu) and the temp-name counter (atomic), so every thread may use one store_t at once.
 */
#ifndef STORE_INT_H
#define STORE_INT_H

#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "store/store.h"

/** How many pending access times are kept; past this the oldest are dropped. */
#define STORE__ATIME_MAX 4096
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
  int lock_fd; /**< flock(LOCK_EX) on <root>/lock: one process per store */
  MDB_env *env;
  MDB_dbi blobs, manifests, tags;
  atomic_uint_fast64_t tmp_seq;

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

#endif
