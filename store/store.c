/* store — the content-addressed blob store: blob files plus LMDB metadata.
 *
 * Files: <root>/blobs/sha256/<2 hex>/<64 hex> (committed, immutable), <root>/tmp/ (writers;
 * swept at open), <root>/quarantine/ (fsck), <root>/meta/ (the LMDB env), <root>/lock (flock
 * held while open, so a second process — e.g. `pullcache fsck` against a running daemon —
 * gets -EBUSY instead of sweeping the daemon's temp files).
 *
 * A writer's life:  new ──write*──▶ commit ──▶ verify size+digest ──ok──▶ fsync file, rename
 *                    │                            │                       into blobs/, fsync
 *                    └──abort──▶ unlink temp      └──mismatch──▶ unlink   dir, put LMDB record
 *
 * LMDB (one env, MDB_NOTLS so read txns are not tied to threads; every txn begins and ends in
 * one function; the short reads of a hit renew one kept reset read txn, store__rtxn_begin). Named
 * databases and their fixed encodings, integers little-endian:
 *
 *   blobs      key "sha256:<64 hex>" (71 bytes, no NUL)
 *              val u8 version=1 | u64 size | i64 created | i64 last_access | u8 mtlen | mt bytes
 *   manifests  key as blobs (the bytes are the CAS blob of the same digest)
 *              val u8 version=1 | u64 size | u8 mtlen | mt bytes
 *   tags       key upstream "\0" repo "\0" tag (no trailing NUL), so the keys of one
 *              (upstream, repo) are contiguous and in the tag's lexical order
 *              val u8 version=1 | u64 size | i64 fetched_at | i64 checked_at | u8 dlen | digest
 *                  | u8 mtlen | mt bytes
 *   stats      key "totals"
 *              val u8 version=1 | u64 blob_bytes | u64 manifest_bytes | u64 txnid
 *   refs, pins, doomed   see store/evict.c (written by store_manifest_put and store_evict)
 *
 * Totals (store_stats). The record counts are the databases' ms_entries, which LMDB keeps. The
 * byte sums live in the totals record, and every write transaction goes through store__wtxn_*,
 * which moves the sums with each put and del and rewrites the record just before the commit:
 * records and totals change in one commit or not at all, whatever is killed when. The record is
 * stamped with its transaction's id, so one left behind by a writer that does not know about it
 * (a store written by an older pullcache, which has none, or one used by it since) is detected
 * at store_open and recomputed there by one scan of the records; store_stats itself never
 * scans. The stamp is compared only in write transactions, whose id is exact under the writer
 * lock (see store_stats).
 *
 * Presence of a blob = its file exists. A record without its file is "not present"; a file
 * without a record (a crash between rename and the LMDB commit) is served, and the next
 * store_flush_atimes or store_fsck writes its record.
 */
#include "store/store-int.h"

#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/pc.h"

#define DEFAULT_MAP_SIZE (4ULL << 30)
#define REC_VERSION 1
#define TAG_BATCH 32
/* Log values cut at these many bytes: error text, and file paths (see pc_log_quote). */
#define LOG_ERR_MAX 128
#define LOG_PATH_MAX 512

struct store_writer {
  store_t *s;
  int fd;
  int err; /**< sticky: the first write error */
  int64_t expected_size;
  uint64_t size;
  store_hash_t hash;
  char expected[STORE__SHA256_LEN + 1]; /**< "" when unknown */
  char path[PATH_MAX];
  int verified;    /**< store_writer_verify ran: digest holds the final hash, no more writes */
  int hash_only;   /**< store_writer_hash_only: bytes are hashed and counted, not written */
  int verdict;     /**< its result */
  char digest[72]; /**< the final hash once verified */
  int rfd;         /**< the spare's read-only descriptor, until store_writer_reader takes it */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static void put_u64(unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
  uint64_t v; /* little-endian: one load (and a swap on a big-endian host) */
  memcpy(&v, p, 8);
  return le64toh(v);
}

int store__mdb_err(int rc, const char *what)
{
  if (rc == 0)
    return 0;
  if (rc == MDB_NOTFOUND)
    return PC_E_NOTFOUND;
  if (rc > 0)
    return -rc;
  char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
  pc_log_quote(q, sizeof(q), mdb_strerror(rc), LOG_ERR_MAX);
  pc_log(PC_LOG_ERR, "store-lmdb-error op=%s rc=%d err=%s", what, rc, q);
  if (rc == MDB_MAP_FULL)
    return -ENOSPC;
  return PC_E_INTERNAL;
}

int store__is_sha256(const char *s)
{
  return s && strlen(s) == STORE__SHA256_LEN &&
         store_digest_parse(s, STORE__SHA256_LEN) == STORE_DIGEST_SHA256;
}

/* The read batch of this thread (store_read_batch_begin): its store and its txn (NULL until
 * the first read). Thread-local: no other thread sees it, so no lock. */
static _Thread_local struct {
  store_t *s;
  MDB_txn *txn;
  unsigned depth; /* begins not yet ended (a nested batch joins the outer one) */
} rbatch;

static int rtxn_get(store_t *s, MDB_txn **txn);
static void rtxn_put(store_t *s, MDB_txn *txn);

void store_read_batch_begin(store_t *s)
{
  if (rbatch.depth++ > 0)
    return; /* nested (possibly for another store, whose reads then go unbatched) */
  rbatch.s = s;
  rbatch.txn = NULL;
}

void store_read_batch_end(store_t *s)
{
  (void)s;
  PC_ASSERT(rbatch.depth > 0);
  if (--rbatch.depth > 0)
    return;
  store_t *bs = rbatch.s;
  MDB_txn *t = rbatch.txn;
  rbatch.s = NULL;
  rbatch.txn = NULL;
  if (t)
    rtxn_put(bs, t);
}

int store__rtxn_begin(store_t *s, MDB_txn **txn)
{
  if (rbatch.s == s) {
    if (!rbatch.txn) {
      int rc = rtxn_get(s, &rbatch.txn);
      if (rc)
        return rc;
    }
    *txn = rbatch.txn;
    return 0;
  }
  return rtxn_get(s, txn);
}

void store__rtxn_end(store_t *s, MDB_txn *txn)
{
  if (rbatch.s == s && txn == rbatch.txn)
    return; /* the batch's: ended with it */
  rtxn_put(s, txn);
}

static int rtxn_get(store_t *s, MDB_txn **txn)
{
  MDB_txn *t = atomic_exchange_explicit(&s->rtxn_spare, NULL, memory_order_acquire);
  if (t) {
    if (mdb_txn_renew(t) == 0) {
      *txn = t;
      return 0;
    }
    mdb_txn_abort(t);
  }
  return store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn), "txn_begin");
}

static void rtxn_put(store_t *s, MDB_txn *txn)
{
  mdb_txn_reset(txn);
  MDB_txn *old = atomic_exchange_explicit(&s->rtxn_spare, txn, memory_order_acq_rel);
  if (old)
    mdb_txn_abort(old);
}

/* Validate a digest given by a caller: PC_E_DIGEST_INVALID if ungrammatical, PC_E_NOTFOUND
 * for a grammatical digest of an algorithm we never store, else 0. */
static int check_lookup_digest(const char *d)
{
  if (!d)
    return PC_E_DIGEST_INVALID;
  size_t n = strnlen(d, STORE_DIGEST_MAX);
  if (n >= STORE_DIGEST_MAX)
    return PC_E_DIGEST_INVALID;
  int alg = store_digest_parse(d, n);
  if (alg < 0)
    return alg;
  return alg == STORE_DIGEST_SHA256 ? 0 : PC_E_NOTFOUND;
}

static size_t mt_len(const char *mt)
{
  return mt ? strnlen(mt, STORE__MT_MAX + 1) : 0;
}

size_t store__blob_rec_encode(const store__blob_rec_t *r, unsigned char *buf)
{
  size_t ml = strnlen(r->media_type, STORE__MT_MAX);
  buf[0] = REC_VERSION;
  put_u64(buf + 1, r->size);
  put_u64(buf + 9, (uint64_t)r->created);
  put_u64(buf + 17, (uint64_t)r->last_access);
  buf[25] = (unsigned char)ml;
  memcpy(buf + 26, r->media_type, ml);
  return 26 + ml;
}

int store__blob_rec_decode(const MDB_val *v, store__blob_rec_t *r)
{
  const unsigned char *p = v->mv_data;
  if (v->mv_size < 26 || p[0] != REC_VERSION || p[25] > STORE__MT_MAX ||
      v->mv_size != 26 + (size_t)p[25])
    return PC_E_CORRUPT;
  r->size = get_u64(p + 1);
  r->created = (int64_t)get_u64(p + 9);
  r->last_access = (int64_t)get_u64(p + 17);
  memcpy(r->media_type, p + 26, p[25]);
  r->media_type[p[25]] = '\0';
  return 0;
}

static size_t manifest_rec_encode(uint64_t size, const char *mt, unsigned char *buf)
{
  size_t ml = mt_len(mt);
  buf[0] = REC_VERSION;
  put_u64(buf + 1, size);
  buf[9] = (unsigned char)ml;
  if (ml)
    memcpy(buf + 10, mt, ml);
  return 10 + ml;
}

int store__manifest_rec_decode(const MDB_val *v, store_manifest_info_t *info)
{
  const unsigned char *p = v->mv_data;
  if (v->mv_size < 10 || p[0] != REC_VERSION || p[9] > STORE__MT_MAX ||
      v->mv_size != 10 + (size_t)p[9])
    return PC_E_CORRUPT;
  info->size = get_u64(p + 1);
  memcpy(info->media_type, p + 10, p[9]);
  info->media_type[p[9]] = '\0';
  return 0;
}

/* ---- totals (see the comment at the top) ---------------------------------------------- */

#define TOTALS_KEY "totals"
#define TOTALS_LEN 25

static MDB_val totals_key(void)
{
  MDB_val k = {sizeof(TOTALS_KEY) - 1, (void *)TOTALS_KEY};
  return k;
}

int store__totals_read(store_t *s, MDB_txn *txn, store__totals_t *t)
{
  MDB_val k = totals_key(), v;
  int rc = store__mdb_err(mdb_get(txn, s->stats, &k, &v), "get");
  if (rc)
    return rc;
  const unsigned char *p = v.mv_data;
  if (v.mv_size != TOTALS_LEN || p[0] != REC_VERSION)
    return PC_E_CORRUPT;
  t->blob_bytes = get_u64(p + 1);
  t->manifest_bytes = get_u64(p + 9);
  t->txnid = get_u64(p + 17);
  return 0;
}

int store__totals_write(store_t *s, MDB_txn *txn, const store__totals_t *t)
{
  unsigned char buf[TOTALS_LEN];
  buf[0] = REC_VERSION;
  put_u64(buf + 1, t->blob_bytes);
  put_u64(buf + 9, t->manifest_bytes);
  put_u64(buf + 17, (uint64_t)mdb_txn_id(txn));
  MDB_val k = totals_key(), v = {sizeof(buf), buf};
  return store__mdb_err(mdb_put(txn, s->stats, &k, &v, 0), "put");
}

/* What a record of dbi adds to the totals: its size field, or 0 when it does not decode. */
static uint64_t rec_size(const store_t *s, MDB_dbi dbi, const MDB_val *v)
{
  if (dbi == s->manifests) {
    store_manifest_info_t mi;
    return store__manifest_rec_decode(v, &mi) == 0 ? mi.size : 0;
  }
  store__blob_rec_t r;
  return store__blob_rec_decode(v, &r) == 0 ? r.size : 0;
}

static uint64_t *totals_field(const store_t *s, store__wtxn_t *w, MDB_dbi dbi)
{
  return dbi == s->manifests ? &w->tot.manifest_bytes : &w->tot.blob_bytes;
}

static int sum_sizes(store_t *s, MDB_txn *txn, MDB_dbi dbi, uint64_t *sum)
{
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  uint64_t total = 0;
  int rc = store__mdb_err(mdb_cursor_open(txn, dbi, &cur), "cursor_open");
  if (rc)
    return rc;
  int mrc;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
    total += rec_size(s, dbi, &v);
  mdb_cursor_close(cur);
  if (mrc != MDB_NOTFOUND)
    return store__mdb_err(mrc, "cursor_get");
  *sum = total;
  return 0;
}

int store__totals_scan(store_t *s, MDB_txn *txn, store__totals_t *t)
{
  memset(t, 0, sizeof(*t));
  int rc = sum_sizes(s, txn, s->blobs, &t->blob_bytes);
  if (rc == 0)
    rc = sum_sizes(s, txn, s->manifests, &t->manifest_bytes);
  return rc;
}

/* Load the totals within the write txn. When the record is missing, undecodable or stale they
 * are recomputed (by a scan unless both record databases are empty) and *redo is set: the
 * caller must write the record before committing. */
static int totals_load(store_t *s, MDB_txn *txn, store__totals_t *t, int *redo)
{
  const char *why;
  MDB_stat bs, ms;
  *redo = 0;
  int rc = store__totals_read(s, txn, t);
  if (rc == 0 && t->txnid == (uint64_t)mdb_txn_id(txn) - 1)
    return 0; /* written by the last commit */
  if (rc == 0)
    why = "stale"; /* older than the last commit: a writer without totals (an older pullcache) */
  else if (rc == PC_E_NOTFOUND)
    why = "missing";
  else if (rc == PC_E_CORRUPT)
    why = "undecodable";
  else
    return rc;
  *redo = 1;
  rc = store__mdb_err(mdb_stat(txn, s->blobs, &bs), "stat");
  if (rc == 0)
    rc = store__mdb_err(mdb_stat(txn, s->manifests, &ms), "stat");
  if (rc)
    return rc;
  if (bs.ms_entries == 0 && ms.ms_entries == 0) {
    memset(t, 0, sizeof(*t)); /* a new store */
    return 0;
  }
  uint64_t t0 = pc_mono_ms();
  rc = store__totals_scan(s, txn, t);
  if (rc)
    return rc;
  atomic_fetch_add(&s->totals_scans, 1);
  pc_log(PC_LOG_NOTICE, "store-totals-recomputed record=%s blobs=%zu manifests=%zu ms=%llu", why,
         bs.ms_entries, ms.ms_entries, (unsigned long long)(pc_mono_ms() - t0));
  return 0;
}

int store__wtxn_begin(store_t *s, store__wtxn_t *w)
{
  int redo;
  w->txn = NULL;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, 0, &w->txn), "txn_begin");
  if (rc) {
    w->txn = NULL;
    return rc;
  }
  rc = totals_load(s, w->txn, &w->tot, &redo);
  if (rc)
    store__wtxn_abort(w);
  return rc;
}

int store__wtxn_commit(store_t *s, store__wtxn_t *w)
{
  int rc = store__totals_write(s, w->txn, &w->tot);
  if (rc) {
    store__wtxn_abort(w);
    return rc;
  }
  rc = store__mdb_err(mdb_txn_commit(w->txn), "commit");
  w->txn = NULL;
  return rc;
}

void store__wtxn_abort(store__wtxn_t *w)
{
  if (w->txn)
    mdb_txn_abort(w->txn);
  w->txn = NULL;
}

/* Put k/v into dbi, moving the totals by the size difference with the record it replaces. */
static int wtxn_put(store_t *s, store__wtxn_t *w, MDB_dbi dbi, MDB_val *k, MDB_val *v)
{
  MDB_val old;
  uint64_t old_size = 0;
  int grc = mdb_get(w->txn, dbi, k, &old);
  if (grc == 0)
    old_size = rec_size(s, dbi, &old);
  else if (grc != MDB_NOTFOUND)
    return store__mdb_err(grc, "get");
  uint64_t new_size = rec_size(s, dbi, v);
  int rc = store__mdb_err(mdb_put(w->txn, dbi, k, v, 0), "put");
  if (rc)
    return rc;
  uint64_t *f = totals_field(s, w, dbi);
  *f = *f - old_size + new_size;
  return 0;
}

int store__wtxn_put_blob(store_t *s, store__wtxn_t *w, const char *digest,
                         const store__blob_rec_t *r)
{
  unsigned char buf[160];
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v = {0, buf};
  v.mv_size = store__blob_rec_encode(r, buf);
  return wtxn_put(s, w, s->blobs, &k, &v);
}

int store__wtxn_put_manifest(store_t *s, store__wtxn_t *w, const char *digest, uint64_t size,
                             const char *mt)
{
  unsigned char buf[160];
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v = {0, buf};
  v.mv_size = manifest_rec_encode(size, mt, buf);
  return wtxn_put(s, w, s->manifests, &k, &v);
}

int store__wtxn_del(store_t *s, store__wtxn_t *w, MDB_dbi dbi, const MDB_val *key)
{
  MDB_val k = *key, v;
  int rc = store__mdb_err(mdb_get(w->txn, dbi, &k, &v), "get");
  if (rc)
    return rc;
  uint64_t old_size = rec_size(s, dbi, &v);
  rc = store__mdb_err(mdb_del(w->txn, dbi, &k, NULL), "del");
  if (rc)
    return rc;
  uint64_t *f = totals_field(s, w, dbi);
  *f -= old_size;
  return 0;
}

int store_stats(store_t *s, store_stats_t *out)
{
  MDB_txn *txn = NULL;
  MDB_stat bs, ms, ts;
  store__totals_t t;
  int rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  /* No staleness check here (unlike totals_load): a read txn's mdb_txn_id may lag the snapshot
   * it reads when commits race its start (LMDB 0.9 picks the meta page by that id without
   * rechecking it), while a write txn's is exact. */
  rc = store__totals_read(s, txn, &t);
  if (rc == PC_E_NOTFOUND)
    rc = PC_E_CORRUPT;
  if (rc == 0)
    rc = store__mdb_err(mdb_stat(txn, s->blobs, &bs), "stat");
  if (rc == 0)
    rc = store__mdb_err(mdb_stat(txn, s->manifests, &ms), "stat");
  if (rc == 0)
    rc = store__mdb_err(mdb_stat(txn, s->tags, &ts), "stat");
  store__rtxn_end(s, txn);
  if (rc)
    return rc;
  out->blobs = bs.ms_entries;
  out->blob_bytes = t.blob_bytes;
  out->manifests = ms.ms_entries;
  out->manifest_bytes = t.manifest_bytes;
  out->tags = ts.ms_entries;
  return 0;
}

static int fsync_path(const char *path)
{
  int rc = 0;
  int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fsync(fd) != 0)
    rc = -errno;
  close(fd);
  return rc;
}

static int mkdir_one(const char *path)
{
  if (mkdir(path, 0755) == 0 || errno == EEXIST)
    return 0;
  return -errno;
}

static int root_path(const store_t *s, const char *rel, char *buf, size_t buflen);

/* The 256 fan-out directories of blobs/sha256 (00..ff), made by store_open once it holds the
 * lock: the commits of a first pull then make none (each new one was a mkdir and an fsync of
 * blobs/sha256 on the writer thread, kernel CPU taken from the pull). Only by the owner of
 * blobs/sha256 (a command run as root on the daemon's store must not make directories the
 * daemon cannot write into), and best effort: a directory that cannot be made now (a full
 * disk) is made by the commit that needs it, as before. blobs/sha256 is fsync'd on every such
 * open (one fsync; a crash between the mkdirs and that fsync is healed by the next open). */
static void make_fanout(const store_t *s)
{
  static const char hexd[] = "0123456789abcdef";
  char p[PATH_MAX];
  struct stat st;
  if (root_path(s, "blobs/sha256/00", p, sizeof(p)) != 0)
    return;
  size_t n = strlen(p);
  p[n - 3] = '\0';
  if (stat(p, &st) != 0 || st.st_uid != geteuid())
    return;
  p[n - 3] = '/';
  int err = 0;
  for (int i = 0; i < 256; i++) {
    p[n - 2] = hexd[i >> 4];
    p[n - 1] = hexd[i & 15];
    if (mkdir(p, 0755) != 0 && errno != EEXIST && !err)
      err = -errno;
  }
  p[n - 3] = '\0';
  int rc = fsync_path(p);
  if (err || rc) {
    char qp[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)];
    pc_log_quote(qp, sizeof(qp), p, LOG_PATH_MAX);
    if (err)
      pc_log(PC_LOG_WARN, "store-fanout-incomplete path=%s err=%s", qp, pc_errname(err));
    else
      pc_log(PC_LOG_NOTICE, "store-dir-fsync-failed path=%s err=%s", qp, pc_errname(rc));
  }
}

/* Join root and a relative name into buf. */
static int root_path(const store_t *s, const char *rel, char *buf, size_t buflen)
{
  int n = snprintf(buf, buflen, "%s/%s", s->root, rel);
  return n < 0 || (size_t)n >= buflen ? -ENAMETOOLONG : 0;
}

int store__hash_fd(int fd, char out[72], uint64_t *size)
{
  int rc = 0;
  unsigned char *buf = pc_xmalloc(1 << 16);
  store_hash_t h;
  uint64_t total = 0;
  store_hash_init(&h);
  for (;;) {
    ssize_t n = pread(fd, buf, 1 << 16, (off_t)total);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      goto out;
    }
    if (n == 0)
      break;
    store_hash_update(&h, buf, (size_t)n);
    total += (uint64_t)n;
  }
  store_hash_final(&h, out);
  *size = total;
out:
  store_hash_dispose(&h);
  free(buf);
  return rc;
}

/* ---- open / close ----------------------------------------------------------------------- */

static void sweep_tmp(store_t *s)
{
  char dir[PATH_MAX], p[PATH_MAX];
  if (root_path(s, "tmp", dir, sizeof(dir)) != 0)
    return;
  DIR *d = opendir(dir);
  if (!d)
    return;
  unsigned swept = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    int n = snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
    if (n < 0 || (size_t)n >= sizeof(p))
      continue;
    if (unlink(p) == 0) {
      swept++;
    } else {
      char qp[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)], qe[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
      pc_log_quote(qe, sizeof(qe), strerror(errno), LOG_ERR_MAX);
      pc_log_quote(qp, sizeof(qp), p, LOG_PATH_MAX);
      pc_log(PC_LOG_WARN, "store-tmp-unlink-failed path=%s err=%s", qp, qe);
    }
  }
  closedir(d);
  if (swept) {
    char qd[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)];
    pc_log_quote(qd, sizeof(qd), dir, LOG_PATH_MAX);
    pc_log(PC_LOG_NOTICE, "store-tmp-swept files=%u dir=%s", swept, qd);
  }
}

int store_open(const char *root, const store_opts_t *opts, store_t **out)
{
  static const char *const dirs[] = {"blobs", "blobs/sha256", "tmp", "quarantine", "meta"};
  int rc = PC_E_INTERNAL;
  char p[PATH_MAX];
  MDB_txn *txn = NULL;
  *out = NULL;
  if (!root || !*root)
    return -EINVAL;
  int ro = opts && opts->read_only;
  store_hash_prepare(); /* OpenSSL's first fetch, here rather than in the first request */
  if (opts && (opts->must_exist || ro)) {
    struct stat sb;
    int pl = snprintf(p, sizeof(p), "%s/meta/data.mdb", root);
    if (pl < 0 || (size_t)pl >= sizeof(p))
      return -ENAMETOOLONG;
    if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode))
      return PC_E_NOTFOUND; /* no store here: never create one for a command that reads */
  }
  store_t *s = pc_xcalloc(1, sizeof(*s));
  s->lock_fd = -1;
  s->root = pc_xstrdup(root);
  s->rootlen = strlen(root);
  while (s->rootlen > 1 && s->root[s->rootlen - 1] == '/')
    s->root[--s->rootlen] = '\0';
  pthread_mutex_init(&s->atime_mu, NULL);
  pthread_mutex_init(&s->evict_mu, NULL);
  pthread_mutex_init(&s->spare_mu, NULL);
  s->atimes = pc_xcalloc(STORE__ATIME_MAX, sizeof(*s->atimes));
  atomic_store(&s->fault_space, -1);
  s->read_only = ro;
  if (ro)
    goto open_env; /* nothing made, locked or swept: the holder of the lock does that */

  /* mkdir -p root */
  for (size_t i = 1; i <= s->rootlen; i++) {
    if (i == s->rootlen || s->root[i] == '/') {
      if (i >= sizeof(p)) {
        rc = -ENAMETOOLONG;
        goto out;
      }
      memcpy(p, s->root, i);
      p[i] = '\0';
      rc = mkdir_one(p);
      if (rc)
        goto out;
    }
  }
  for (size_t i = 0; i < PC_ARRAY_SIZE(dirs); i++) {
    rc = root_path(s, dirs[i], p, sizeof(p));
    if (rc == 0)
      rc = mkdir_one(p);
    if (rc)
      goto out;
  }
  rc = root_path(s, "lock", p, sizeof(p));
  if (rc)
    goto out;
  s->lock_fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (s->lock_fd < 0) {
    rc = -errno;
    goto out;
  }
  if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
    char qr[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)];
    pc_log_quote(qr, sizeof(qr), s->root, LOG_PATH_MAX);
    pc_log(PC_LOG_ERR, "store-in-use path=%s hint=\"another pullcache holds its lock\"", qr);
    goto out;
  }

  sweep_tmp(s);
  make_fanout(s);

open_env:
  rc = store__mdb_err(mdb_env_create(&s->env), "env_create");
  if (rc)
    goto out;
  mdb_env_set_maxdbs(s->env,
                     16); /* blobs, manifests, tags, stats, refs, pins, doomed, seen, + room */
  mdb_env_set_maxreaders(s->env, 256);
  rc = store__mdb_err(
      mdb_env_set_mapsize(s->env, opts && opts->map_size ? opts->map_size : DEFAULT_MAP_SIZE),
      "set_mapsize");
  if (rc)
    goto out;
  rc = root_path(s, "meta", p, sizeof(p));
  if (rc)
    goto out;
  rc = store__mdb_err(mdb_env_open(s->env, p, MDB_NOTLS | (ro ? MDB_RDONLY : 0), 0644), "env_open");
  if (rc)
    goto out;
  int dead = 0;
  mdb_reader_check(s->env, &dead);
  if (dead)
    pc_log(PC_LOG_NOTICE, "store-stale-readers-cleared slots=%d", dead);

  rc = store__mdb_err(mdb_txn_begin(s->env, NULL, ro ? MDB_RDONLY : 0, &txn), "txn_begin");
  if (rc)
    goto out;
  {
    const struct {
      const char *name;
      MDB_dbi *dbi;
    } dbs[] = {{"blobs", &s->blobs},  {"manifests", &s->manifests}, {"tags", &s->tags},
               {"stats", &s->stats},  {"refs", &s->refs},           {"pins", &s->pins},
               {"doomed", &s->doomed}};
    for (size_t i = 0; rc == 0 && i < sizeof(dbs) / sizeof(dbs[0]); i++)
      rc = store__mdb_err(mdb_dbi_open(txn, dbs[i].name, ro ? 0 : MDB_CREATE, dbs[i].dbi),
                          "dbi_open");
  }
  if (rc == 0)
    rc = store__seen_open(s, txn); /* store/scope.c */
  if (rc)
    goto out;
  /* O(1) unless the totals record is missing or stale (a store written by a pullcache without
   * totals): then one scan of the records, once. A commit without changes writes nothing. */
  store__totals_t tot;
  int redo = 0;
  rc = ro ? 0 : totals_load(s, txn, &tot, &redo); /* read-only: store_stats reads them */
  if (rc == 0 && redo && !ro)
    rc = store__totals_write(s, txn, &tot);
  if (rc)
    goto out;
  rc = store__mdb_err(mdb_txn_commit(txn), "commit");
  txn = NULL;
  if (rc)
    goto out;
  /* An eviction killed between its commit and its unlinks left doomed files: remove them. */
  rc = ro ? 0 : store__doomed_sweep(s);
  if (rc)
    goto out;
  rc = 0;
out:
  if (txn)
    mdb_txn_abort(txn);
  if (rc) {
    if (s->env)
      mdb_env_close(s->env);
    if (s->lock_fd >= 0)
      close(s->lock_fd);
    pthread_mutex_destroy(&s->atime_mu);
    pthread_mutex_destroy(&s->evict_mu);
    pthread_mutex_destroy(&s->spare_mu);
    free(s->atimes);
    free(s->root);
    free(s);
    s = NULL;
  }
  *out = s;
  return rc;
}

void store_close(store_t *s)
{
  if (!s)
    return;
  int rc = s->read_only ? 0 : store_flush_atimes(s);
  if (rc) {
    char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
    pc_log(PC_LOG_WARN, "store-atime-flush-failed when=close rc=%s err=%s", pc_errname(rc), q);
  }
  MDB_txn *spare = atomic_exchange(&s->rtxn_spare, NULL);
  if (spare)
    mdb_txn_abort(spare);
  for (int i = 0; i < s->nspares; i++) {
    close(s->spares[i].fd);
    close(s->spares[i].rfd);
    unlink(s->spares[i].path);
  }
  pthread_mutex_destroy(&s->spare_mu);
  mdb_env_close(s->env);
  if (s->lock_fd >= 0)
    close(s->lock_fd);
  pthread_mutex_destroy(&s->atime_mu);
  pthread_mutex_destroy(&s->evict_mu);
  free(s->atimes);
  free(s->root);
  free(s);
}

const char *store_root(const store_t *s)
{
  return s->root;
}

/* ---- blobs ------------------------------------------------------------------------------ */

static int blob_path(const store_t *s, const char *digest, char *buf, size_t buflen);

int store_blob_path(const store_t *s, const char *digest, char *buf, size_t buflen)
{
  if (!store__is_sha256(digest))
    return PC_E_DIGEST_INVALID;
  return blob_path(s, digest, buf, buflen);
}

/* store_blob_path for a digest the caller has validated already */
static int blob_path(const store_t *s, const char *digest, char *buf, size_t buflen)
{
  /* "<root>/blobs/sha256/<2 hex>/<64 hex>", without stdio (once per warm hit) */
  const char *hex = digest + 7;
  size_t rl = strlen(s->root);
  if (rl + 14 + 2 + 1 + 64 + 1 > buflen)
    return -ENAMETOOLONG;
  char *o = buf;
  memcpy(o, s->root, rl);
  o += rl;
  memcpy(o, "/blobs/sha256/", 14);
  o += 14;
  o[0] = hex[0], o[1] = hex[1], o[2] = '/';
  memcpy(o + 3, hex, 64);
  o[67] = '\0';
  return 0;
}

/* Read the blob record into *r. 0, PC_E_NOTFOUND or another error. */
static int blob_rec_get(store_t *s, const char *digest, store__blob_rec_t *r)
{
  MDB_txn *txn = NULL;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  int rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_get(txn, s->blobs, &k, &v), "get");
  if (rc == 0)
    rc = store__blob_rec_decode(&v, r);
  store__rtxn_end(s, txn);
  return rc;
}

int store_blob_stat(store_t *s, const char *digest, store_blob_info_t *info)
{
  char path[PATH_MAX];
  struct stat st;
  store__blob_rec_t r;
  int rc = check_lookup_digest(digest);
  if (rc)
    return rc;
  rc = blob_rec_get(s, digest, &r);
  if (rc && rc != PC_E_NOTFOUND)
    return rc;
  int have_rec = rc == 0;
  rc = store_blob_path(s, digest, path, sizeof(path));
  if (rc)
    return rc;
  if (stat(path, &st) != 0)
    return errno == ENOENT || errno == ENOTDIR ? PC_E_NOTFOUND : -errno;
  if (info) {
    if (have_rec) {
      info->size = r.size;
      memcpy(info->media_type, r.media_type, sizeof(info->media_type));
      info->created = r.created;
      info->last_access = r.last_access;
    } else {
      info->size = (uint64_t)st.st_size;
      info->media_type[0] = '\0';
      info->created = (int64_t)st.st_mtime;
      info->last_access = (int64_t)st.st_mtime;
    }
  }
  return 0;
}

static void atime_note(store_t *s, const char *digest, int64_t now)
{
  pthread_mutex_lock(&s->atime_mu);
  /* The same digest among the newest few notes (a hot manifest, the blobs of one pull): that
   * note takes the later time. The flush keeps only the latest time per digest anyway, so this
   * changes nothing it writes and spares it a record read per repeated hit. */
  for (size_t k = 0; k < s->atime_n && k < STORE__ATIME_RECENT; k++) {
    store__atime_t *e = &s->atimes[(s->atime_head + s->atime_n - 1 - k) % STORE__ATIME_MAX];
    if (memcmp(e->digest, digest, STORE__SHA256_LEN) == 0) {
      if (e->t < now)
        e->t = now;
      pthread_mutex_unlock(&s->atime_mu);
      return;
    }
  }
  size_t idx;
  if (s->atime_n == STORE__ATIME_MAX) {
    idx = s->atime_head; /* overwrite the oldest */
    s->atime_head = (s->atime_head + 1) % STORE__ATIME_MAX;
  } else {
    idx = (s->atime_head + s->atime_n) % STORE__ATIME_MAX;
    s->atime_n++;
  }
  memcpy(s->atimes[idx].digest, digest, STORE__SHA256_LEN + 1);
  s->atimes[idx].t = now;
  pthread_mutex_unlock(&s->atime_mu);
}

/* Open the file of a digest whose record (if any) says `rec_size` bytes (-1: no record) and
 * check its length against it. The digest was validated by the caller. */
static int open_checked(store_t *s, const char *digest, int64_t rec_size, int *fd, uint64_t *size)
{
  char path[PATH_MAX];
  struct stat st;
  int rc = blob_path(s, digest, path, sizeof(path));
  if (rc)
    return rc;
  int f = open(path, O_RDONLY | O_CLOEXEC);
  if (f < 0)
    return errno == ENOENT || errno == ENOTDIR ? PC_E_NOTFOUND : -errno;
  if (fstat(f, &st) != 0) {
    rc = -errno;
    close(f);
    return rc;
  }
  if (rec_size >= 0 && (uint64_t)rec_size != (uint64_t)st.st_size) {
    pc_log(PC_LOG_ERR,
           "store-blob-size-mismatch digest=%s size=%lld recorded=%llu hint=\"run fsck\"", digest,
           (long long)st.st_size, (unsigned long long)rec_size);
    close(f);
    return PC_E_CORRUPT;
  }
  atime_note(s, digest, pc_now_sec());
  *fd = f;
  *size = (uint64_t)st.st_size;
  return 0;
}

int store_blob_open_info(store_t *s, const char *digest, int *fd, store_blob_info_t *info)
{
  store__blob_rec_t r;
  uint64_t size = 0;
  int rc = check_lookup_digest(digest);
  if (rc)
    return rc;
  rc = blob_rec_get(s, digest, &r);
  if (rc && rc != PC_E_NOTFOUND)
    return rc;
  int have_rec = rc == 0;
  rc = open_checked(s, digest, have_rec ? (int64_t)r.size : -1, fd, &size);
  if (rc)
    return rc;
  if (info) {
    info->size = size;
    if (have_rec) {
      memcpy(info->media_type, r.media_type, sizeof(info->media_type));
      info->created = r.created;
      info->last_access = r.last_access;
    } else {
      info->media_type[0] = '\0';
      info->created = info->last_access = 0;
    }
  }
  return 0;
}

int store_blob_open(store_t *s, const char *digest, int *fd, uint64_t *size)
{
  store_blob_info_t info;
  int rc = store_blob_open_info(s, digest, fd, &info);
  if (rc == 0)
    *size = info.size;
  return rc;
}

int store_flush_atimes(store_t *s)
{
  int rc = 0;
  store__wtxn_t w = {NULL, {0, 0, 0}};
  char path[PATH_MAX];
  pthread_mutex_lock(&s->atime_mu);
  size_t n = s->atime_n;
  store__atime_t *batch = NULL;
  if (n) {
    batch = pc_xmalloc(n * sizeof(*batch));
    for (size_t i = 0; i < n; i++)
      batch[i] = s->atimes[(s->atime_head + i) % STORE__ATIME_MAX];
    s->atime_head = s->atime_n = 0;
  }
  pthread_mutex_unlock(&s->atime_mu);
  if (!n)
    return 0;

  rc = store__wtxn_begin(s, &w);
  if (rc)
    goto out;
  for (size_t i = 0; i < n; i++) {
    MDB_val k = {STORE__SHA256_LEN, batch[i].digest}, v;
    store__blob_rec_t r;
    int grc = mdb_get(w.txn, s->blobs, &k, &v);
    if (grc == MDB_NOTFOUND) {
      /* A served file without a record (crash between rename and commit): record it now,
       * unless an eviction removed the record and is about to unlink the file. */
      struct stat st;
      if (store__is_doomed(s, w.txn, batch[i].digest))
        continue;
      if (store_blob_path(s, batch[i].digest, path, sizeof(path)) != 0 || stat(path, &st) != 0)
        continue;
      memset(&r, 0, sizeof(r));
      r.size = (uint64_t)st.st_size;
      r.created = (int64_t)st.st_mtime;
      r.last_access = batch[i].t;
    } else if (grc == 0) {
      if (store__blob_rec_decode(&v, &r) != 0 || r.last_access >= batch[i].t)
        continue;
      r.last_access = batch[i].t;
    } else {
      rc = store__mdb_err(grc, "get");
      goto out;
    }
    rc = store__wtxn_put_blob(s, &w, batch[i].digest, &r);
    if (rc)
      goto out;
  }
  rc = store__wtxn_commit(s, &w);
out:
  store__wtxn_abort(&w);
  free(batch);
  return rc;
}

/* ---- writers ---------------------------------------------------------------------------- */

/* A writer's expected digest: NULL (none), or a grammatical sha256 digest. */
static int expected_digest_check(const char *expected_digest)
{
  if (!expected_digest)
    return 0;
  size_t n = strnlen(expected_digest, STORE_DIGEST_MAX);
  int alg = n < STORE_DIGEST_MAX ? store_digest_parse(expected_digest, n) : PC_E_DIGEST_INVALID;
  if (alg < 0)
    return alg;
  return alg == STORE_DIGEST_SHA256 ? 0 : PC_E_UNSUPPORTED;
}

/* A new empty file under tmp/: its path into path (PATH_MAX), its descriptor (O_RDWR). */
static int tmp_create(store_t *s, char *path, int *fd)
{
  *fd = -1;
  for (int tries = 0; tries < 16; tries++) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seq = atomic_fetch_add(&s->tmp_seq, 1);
    int n = snprintf(path, PATH_MAX, "%s/tmp/%ld-%llu-%lx", s->root, (long)getpid(),
                     (unsigned long long)seq, (unsigned long)ts.tv_nsec);
    if (n < 0 || n >= PATH_MAX)
      return -ENAMETOOLONG;
    *fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (*fd >= 0)
      return 0;
    if (errno != EEXIST)
      break;
  }
  path[0] = '\0';
  return -errno;
}

int store_spare_make(store_t *s)
{
  if (s->read_only)
    return -EROFS;
  for (;;) {
    pthread_mutex_lock(&s->spare_mu);
    int full = s->nspares >= STORE_SPARES;
    pthread_mutex_unlock(&s->spare_mu);
    if (full)
      return 0;
    struct store__spare sp;
    int rc = tmp_create(s, sp.path, &sp.fd);
    if (rc)
      return rc;
    sp.rfd = open(sp.path, O_RDONLY | O_CLOEXEC);
    if (sp.rfd < 0) {
      rc = -errno;
      close(sp.fd);
      unlink(sp.path);
      return rc;
    }
    pthread_mutex_lock(&s->spare_mu);
    full = s->nspares >= STORE_SPARES;
    if (!full)
      s->spares[s->nspares++] = sp;
    pthread_mutex_unlock(&s->spare_mu);
    if (full) { /* another thread filled the set meanwhile */
      close(sp.fd);
      close(sp.rfd);
      unlink(sp.path);
      return 0;
    }
  }
}

/* Take a spare temp file into w (1), or leave w alone when there is none (0). */
static int spare_take(store_t *s, store_writer_t *w)
{
  pthread_mutex_lock(&s->spare_mu);
  int took = s->nspares > 0;
  if (took) {
    struct store__spare *sp = &s->spares[--s->nspares];
    w->fd = sp->fd;
    w->rfd = sp->rfd;
    memcpy(w->path, sp->path, sizeof(w->path));
  }
  pthread_mutex_unlock(&s->spare_mu);
  return took;
}

/* A writer with no file yet (fd and rfd -1), its hash started. */
static int writer_alloc(store_t *s, const char *expected_digest, int64_t expected_size,
                        store_writer_t **out)
{
  *out = NULL;
  int rc = expected_digest_check(expected_digest);
  if (rc)
    return rc;
  store_writer_t *w = pc_xcalloc(1, sizeof(*w));
  w->s = s;
  w->fd = w->rfd = -1;
  w->expected_size = expected_size;
  if (expected_digest)
    memcpy(w->expected, expected_digest, STORE__SHA256_LEN + 1);
  store_hash_init(&w->hash);
  *out = w;
  return 0;
}

static int writer_new(store_t *s, const char *expected_digest, int64_t expected_size, int spare,
                      store_writer_t **out)
{
  store_writer_t *w;
  int rc = writer_alloc(s, expected_digest, expected_size, &w);
  if (rc)
    return rc;
  if (!(spare && spare_take(s, w))) {
    rc = tmp_create(s, w->path, &w->fd);
    if (rc) {
      store_hash_dispose(&w->hash);
      free(w);
      return rc;
    }
  }
  *out = w;
  return 0;
}

int store_writer_new(store_t *s, const char *expected_digest, int64_t expected_size,
                     store_writer_t **out)
{
  return writer_new(s, expected_digest, expected_size, 1, out);
}

int store_writer_reader(store_writer_t *w)
{
  if (w->rfd >= 0) {
    int fd = w->rfd;
    w->rfd = -1;
    return fd;
  }
  if (!w->path[0] || w->hash_only)
    return -EBADF;
  int fd = open(w->path, O_RDONLY | O_CLOEXEC);
  return fd >= 0 ? fd : -errno;
}

/* The unit tests' small disk (store__fault_space): how many of len bytes fit. */
static size_t fault_fit(store_t *s, size_t len)
{
  int_fast64_t left = atomic_load(&s->fault_space);
  if (left < 0)
    return len;
  size_t fit = (uint64_t)left < len ? (size_t)left : len;
  atomic_fetch_sub(&s->fault_space, (int_fast64_t)fit);
  return fit;
}

void store__fault_space(store_t *s, int64_t bytes, int commit_err)
{
  atomic_store(&s->fault_space, bytes < 0 ? -1 : bytes);
  atomic_store(&s->fault_commit, commit_err);
}

int store_writer_write(store_writer_t *w, const void *buf, size_t len)
{
  if (w->verified)
    return -EINVAL;
  if (w->err)
    return w->err;
  if (w->expected_size >= 0 && len > (uint64_t)w->expected_size - w->size) {
    w->err = PC_E_SIZE_INVALID;
    return w->err;
  }
  if (w->hash_only) {
    store_hash_update(&w->hash, buf, len);
    w->size += len;
    return 0;
  }
  const char *p = buf;
  size_t left = len;
  while (left) {
    size_t fit = fault_fit(w->s, left);
    if (fit == 0) {
      w->err = -ENOSPC;
      return w->err;
    }
    ssize_t n = write(w->fd, p, fit);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      w->err = -errno;
      return w->err;
    }
    p += n;
    left -= (size_t)n;
  }
  store_hash_update(&w->hash, buf, len);
  w->size += len;
  return 0;
}

uint64_t store_writer_size(const store_writer_t *w)
{
  return w->size;
}

int store_writer_fd(const store_writer_t *w)
{
  return w->fd;
}

const char *store_writer_path(const store_writer_t *w)
{
  return w->path;
}

int store_writer_hash_only(store_writer_t *w)
{
  if (w->verified)
    return -EINVAL;
  if (w->err && w->err != -ENOSPC && w->err != -EDQUOT)
    return w->err;
  /* A failed write may have left part of its bytes past size: they go (a shrink needs no
   * space), so the file holds exactly the bytes counted. */
  if (w->fd >= 0 && ftruncate(w->fd, (off_t)w->size) != 0) {
    char q[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)];
    pc_log_quote(q, sizeof(q), w->path, LOG_PATH_MAX);
    pc_log(PC_LOG_WARN, "store-truncate-failed path=%s rc=%s", q, pc_errname(-errno));
  }
  w->err = 0;
  w->hash_only = 1;
  return 0;
}

int store_writer_new_hash_only(store_t *s, const char *expected_digest, int64_t expected_size,
                               store_writer_t **out)
{
  int rc = writer_alloc(s, expected_digest, expected_size, out);
  if (rc == 0)
    (*out)->hash_only = 1;
  return rc;
}

void store_writer_abort(store_writer_t *w)
{
  if (!w)
    return;
  if (w->rfd >= 0)
    close(w->rfd);
  if (w->fd >= 0)
    close(w->fd);
  if (w->path[0])
    unlink(w->path);
  store_hash_dispose(&w->hash);
  free(w);
}

static int tag_put_txn(store_t *s, store__wtxn_t *w, const char *upstream, const char *repo,
                       const char *tag, const store_tag_t *t);

/* also's records in w's transaction: one the record functions refuse is left out (logged). */
static int also_put(store_t *s, store__wtxn_t *w, const char *digest, const store_also_t *also)
{
  int rc = 0;
  if (!also)
    return 0;
  if (also->upstream && also->repo) {
    rc = store__seen_put_txn(s, w, also->upstream, also->repo, digest, also->now);
    if (rc == -EINVAL || rc == -ENAMETOOLONG) {
      pc_log(PC_LOG_WARN, "store-seen-put-failed digest=%s rc=%s", digest, pc_errname(rc));
      rc = 0;
    }
  }
  if (rc == 0 && also->tag && also->t) {
    rc = tag_put_txn(s, w, also->upstream, also->repo, also->tag, also->t);
    if (rc == -EINVAL || rc == -ENAMETOOLONG || rc == PC_E_DIGEST_INVALID) {
      pc_log(PC_LOG_WARN, "store-tag-put-failed digest=%s rc=%s", digest, pc_errname(rc));
      rc = 0;
    }
  }
  return rc;
}

/* Put the blob record (and the manifest record when manifest != 0), and also's records, in one
 * write txn. An existing blob record keeps its creation time. */
static int record_put(store_t *s, const char *digest, uint64_t size, const char *mt, int manifest,
                      const void *bytes, const store_also_t *also)
{
  store__wtxn_t w;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  store__blob_rec_t r;
  int64_t now = pc_now_sec();
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  memset(&r, 0, sizeof(r));
  if (mdb_get(w.txn, s->blobs, &k, &v) != 0 || store__blob_rec_decode(&v, &r) != 0) {
    memset(&r, 0, sizeof(r));
    r.created = now;
  }
  r.size = size;
  r.last_access = now;
  if (mt && *mt) {
    size_t ml = mt_len(mt);
    memcpy(r.media_type, mt, ml);
    r.media_type[ml] = '\0';
  }
  rc = store__wtxn_put_blob(s, &w, digest, &r);
  if (rc == 0 && manifest)
    rc = store__wtxn_put_manifest(s, &w, digest, size, mt);
  if (rc == 0 && manifest && bytes)
    rc = store__refs_put(s, &w, digest, bytes, (size_t)size);
  if (rc == 0)
    rc = also_put(s, &w, digest, also);
  if (rc) {
    store__wtxn_abort(&w);
    return rc;
  }
  return store__wtxn_commit(s, &w);
}

int store_writer_verify(store_writer_t *w)
{
  if (w->verified)
    return w->verdict;
  w->verified = 1;
  store_hash_final(&w->hash, w->digest);
  if (w->err)
    w->verdict = w->err;
  else if (w->expected_size >= 0 && w->size != (uint64_t)w->expected_size)
    w->verdict = PC_E_SIZE_INVALID;
  else if (w->expected[0] && strcmp(w->expected, w->digest) != 0)
    w->verdict = PC_E_DIGEST_INVALID;
  else
    w->verdict = 0;
  return w->verdict;
}

/* Make the fan-out directory dir (blobs/sha256/xx) if it is missing; a new one's entry in
 * blobs/sha256 is made durable first. 0 or -errno. */
static int fanout_dir(char *dir)
{
  if (mkdir(dir, 0755) != 0)
    return errno == EEXIST ? 0 : -errno;
  char *slash = strrchr(dir, '/');
  *slash = '\0';
  int rc = fsync_path(dir);
  *slash = '/';
  return rc;
}

static int commit(store_writer_t *w, const char *mt, int manifest, const void *bytes,
                  const store_also_t *also, char *out_digest)
{
  store_t *s = w->s;
  char digest[72], final[PATH_MAX], dir[PATH_MAX];
  struct stat st;
  int rc = w->err;
  if (rc)
    goto fail;
  if (mt_len(mt) > STORE__MT_MAX) {
    rc = -EINVAL;
    goto fail;
  }
  rc = store_writer_verify(w);
  if (rc)
    goto fail;
  if (w->hash_only) {
    rc = -ENOSPC; /* the bytes were right, but they are not on disk */
    goto fail;
  }
  rc = atomic_load(&s->fault_commit);
  if (rc)
    goto fail;
  memcpy(digest, w->digest, sizeof(digest));
  rc = store_blob_path(s, digest, final, sizeof(final));
  if (rc)
    goto fail;
  memcpy(dir, final, sizeof(dir));
  *strrchr(dir, '/') = '\0';

  /* The data fsync happens before the lock (it can be long); the presence check and
   * everything up to the record happen under it: never between an eviction's commit and its
   * unlinks (see evict_mu in store-int.h). */
  int synced = 0;
  if (stat(final, &st) != 0) {
    if (fsync(w->fd) != 0) {
      rc = -errno;
      goto fail;
    }
    synced = 1;
  }
  pthread_mutex_lock(&s->evict_mu);
  if (stat(final, &st) == 0) {
    /* Already present: keep the committed copy, drop ours, make sure it is recorded. */
    close(w->fd);
    w->fd = -1;
    unlink(w->path);
  } else {
    if (!synced && fsync(w->fd) != 0) {
      rc = -errno;
      pthread_mutex_unlock(&s->evict_mu);
      goto fail;
    }
    close(w->fd);
    w->fd = -1;
    /* The fan-out directory exists (store_open made them all) unless the rename says ENOENT. */
    rc = rename(w->path, final) == 0 ? 0 : -errno;
    if (rc == -ENOENT) {
      rc = fanout_dir(dir);
      if (rc == 0 && rename(w->path, final) != 0)
        rc = -errno;
    }
    if (rc) {
      pthread_mutex_unlock(&s->evict_mu);
      goto fail;
    }
    rc = fsync_path(dir);
    if (rc) {
      /* The file is in place but its entry may not be durable; still a valid blob. */
      char qd[PC_LOG_QUOTE_SIZE(LOG_PATH_MAX)], qe[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
      pc_log_quote(qd, sizeof(qd), dir, LOG_PATH_MAX);
      pc_log_quote(qe, sizeof(qe), pc_strerror(rc), LOG_ERR_MAX);
      pc_log(PC_LOG_WARN, "store-fsync-failed path=%s rc=%s err=%s", qd, pc_errname(rc), qe);
    }
  }
  rc = record_put(s, digest, w->size, mt, manifest, bytes, also);
  pthread_mutex_unlock(&s->evict_mu);
  if (rc) {
    /* The file is committed and will be served; its record is written lazily. */
    char q[PC_LOG_QUOTE_SIZE(LOG_ERR_MAX)];
    pc_log_quote(q, sizeof(q), pc_strerror(rc), LOG_ERR_MAX);
    pc_log(PC_LOG_ERR, "store-record-failed digest=%s rc=%s err=%s", digest, pc_errname(rc), q);
    if (manifest)
      goto done; /* without the manifest record the media type would be lost */
    rc = 0;
  }
  if (out_digest)
    memcpy(out_digest, digest, sizeof(digest));
done:
  if (w->rfd >= 0)
    close(w->rfd);
  store_hash_dispose(&w->hash);
  free(w);
  return rc;
fail:
  if (w->fd >= 0)
    close(w->fd);
  w->fd = -1;
  if (w->path[0])
    unlink(w->path);
  goto done;
}

int store_writer_commit(store_writer_t *w, const char *media_type, char *out_digest)
{
  return commit(w, media_type, 0, NULL, NULL, out_digest);
}

int store_writer_commit_also(store_writer_t *w, const char *media_type, const store_also_t *also,
                             char *out_digest)
{
  return commit(w, media_type, 0, NULL, also, out_digest);
}

/* ---- manifests -------------------------------------------------------------------------- */

int store_manifest_put(store_t *s, const void *bytes, size_t len, const char *media_type,
                       const char *expected_digest, char *out_digest)
{
  return store_manifest_put_also(s, bytes, len, media_type, expected_digest, NULL, out_digest);
}

int store_manifest_put_also(store_t *s, const void *bytes, size_t len, const char *media_type,
                            const char *expected_digest, const store_also_t *also, char *out_digest)
{
  store_writer_t *w = NULL;
  int rc = writer_new(s, expected_digest, (int64_t)len, 0, &w); /* the spare is the loop's */
  if (rc)
    return rc;
  rc = store_writer_write(w, bytes, len);
  if (rc) {
    store_writer_abort(w);
    return rc;
  }
  return commit(w, media_type, 1, bytes, also, out_digest);
}

int store_manifest_open(store_t *s, const char *digest, int *fd, store_manifest_info_t *info)
{
  store_manifest_info_t tmp;
  MDB_txn *txn = NULL;
  uint64_t size = 0;
  int rc = check_lookup_digest(digest);
  if (rc)
    return rc;
  if (!info)
    info = &tmp;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_get(txn, s->manifests, &k, &v), "get");
  if (rc == 0)
    rc = store__manifest_rec_decode(&v, info);
  store__rtxn_end(s, txn);
  if (rc)
    return rc;
  return open_checked(s, digest, (int64_t)info->size, fd, &size);
}

int store_manifest_read(store_t *s, const char *digest, size_t max, char **out, size_t *len,
                        store_manifest_info_t *info)
{
  int fd;
  store_manifest_info_t mi;
  int rc = store_manifest_open(s, digest, &fd, &mi);
  if (rc)
    return rc;
  if (mi.size > max) {
    close(fd);
    return PC_E_TOOBIG;
  }
  char *buf = pc_xmalloc((size_t)mi.size + 1);
  size_t got = 0;
  while (rc == 0 && got < mi.size) {
    ssize_t n = read(fd, buf + got, (size_t)mi.size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      rc = n < 0 ? -errno : PC_E_CORRUPT;
    else
      got += (size_t)n;
  }
  close(fd);
  char dg[72];
  if (rc == 0) {
    store_digest_of(buf, got, dg);
    if (strcmp(dg, digest) != 0)
      rc = PC_E_CORRUPT;
  }
  if (rc) {
    free(buf);
    return rc;
  }
  buf[got] = '\0';
  if (info)
    *info = mi;
  *out = buf;
  *len = got;
  return 0;
}

int store_manifest_stat(store_t *s, const char *digest, store_manifest_info_t *info)
{
  char path[PATH_MAX];
  store_manifest_info_t tmp;
  MDB_txn *txn = NULL;
  int rc = check_lookup_digest(digest);
  if (rc)
    return rc;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_get(txn, s->manifests, &k, &v), "get");
  if (rc == 0)
    rc = store__manifest_rec_decode(&v, info ? info : &tmp);
  store__rtxn_end(s, txn);
  if (rc)
    return rc;
  rc = store_blob_path(s, digest, path, sizeof(path));
  if (rc)
    return rc;
  if (access(path, F_OK) != 0)
    return errno == ENOENT || errno == ENOTDIR ? PC_E_NOTFOUND : -errno;
  return 0;
}

/* ---- tags ------------------------------------------------------------------------------- */

/* Build "upstream\0repo\0tag" into buf; returns the length or a negative error. */
static int tag_key(store_t *s, const char *up, const char *repo, const char *tag,
                   unsigned char *buf, size_t buflen)
{
  if (!up || !repo || !tag || !*up || !*repo)
    return -EINVAL;
  size_t ul = strlen(up), rl = strlen(repo), tl = strlen(tag);
  size_t n = ul + 1 + rl + 1 + tl;
  if (n > buflen || n > (size_t)mdb_env_get_maxkeysize(s->env))
    return -ENAMETOOLONG;
  memcpy(buf, up, ul + 1);
  memcpy(buf + ul + 1, repo, rl + 1);
  memcpy(buf + ul + 1 + rl + 1, tag, tl);
  return (int)n;
}

static int tag_decode(const MDB_val *v, store_tag_t *t)
{
  const unsigned char *p = v->mv_data;
  size_t n = v->mv_size;
  if (n < 26 || p[0] != REC_VERSION)
    return PC_E_CORRUPT;
  size_t dl = p[25];
  if (dl >= STORE_DIGEST_MAX || n < 27 + dl)
    return PC_E_CORRUPT;
  size_t ml = p[26 + dl];
  if (ml > STORE__MT_MAX || n != 27 + dl + ml)
    return PC_E_CORRUPT;
  t->size = get_u64(p + 1);
  t->fetched_at = (int64_t)get_u64(p + 9);
  t->checked_at = (int64_t)get_u64(p + 17);
  memcpy(t->digest, p + 26, dl);
  t->digest[dl] = '\0';
  memcpy(t->media_type, p + 27 + dl, ml);
  t->media_type[ml] = '\0';
  return 0;
}

int store_tag_get(store_t *s, const char *upstream, const char *repo, const char *tag,
                  store_tag_t *out)
{
  unsigned char key[1024];
  MDB_txn *txn = NULL;
  int kl = tag_key(s, upstream, repo, tag, key, sizeof(key));
  if (kl < 0)
    return kl;
  MDB_val k = {(size_t)kl, key}, v;
  int rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_get(txn, s->tags, &k, &v), "get");
  if (rc == 0)
    rc = tag_decode(&v, out);
  store__rtxn_end(s, txn);
  return rc;
}

/* The tag record in w's transaction; the argument errors come before anything is written. */
static int tag_put_txn(store_t *s, store__wtxn_t *w, const char *upstream, const char *repo,
                       const char *tag, const store_tag_t *t)
{
  unsigned char key[1024], val[8 * 3 + 3 + STORE_DIGEST_MAX + STORE__MT_MAX + 1];
  int kl = tag_key(s, upstream, repo, tag, key, sizeof(key));
  if (kl < 0)
    return kl;
  if (!*tag)
    return -EINVAL;
  size_t dl = strnlen(t->digest, STORE_DIGEST_MAX);
  if (dl >= STORE_DIGEST_MAX || store_digest_parse(t->digest, dl) < 0)
    return PC_E_DIGEST_INVALID;
  size_t ml = strnlen(t->media_type, sizeof(t->media_type));
  if (ml > STORE__MT_MAX)
    return -EINVAL;
  val[0] = REC_VERSION;
  put_u64(val + 1, t->size);
  put_u64(val + 9, (uint64_t)t->fetched_at);
  put_u64(val + 17, (uint64_t)t->checked_at);
  val[25] = (unsigned char)dl;
  memcpy(val + 26, t->digest, dl);
  val[26 + dl] = (unsigned char)ml;
  memcpy(val + 27 + dl, t->media_type, ml);
  MDB_val k = {(size_t)kl, key}, v = {27 + dl + ml, val};
  return store__mdb_err(mdb_put(w->txn, s->tags, &k, &v, 0), "put");
}

int store_tag_put(store_t *s, const char *upstream, const char *repo, const char *tag,
                  const store_tag_t *t)
{
  store__wtxn_t w;
  unsigned char key[1024];
  int kl = tag_key(s, upstream, repo, tag, key, sizeof(key));
  if (kl < 0)
    return kl;
  /* Tags add nothing to the byte totals (their count is the database's), but every write
   * transaction restamps the totals record. */
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  rc = tag_put_txn(s, &w, upstream, repo, tag, t);
  if (rc == 0)
    rc = store__wtxn_commit(s, &w);
  else
    store__wtxn_abort(&w);
  return rc;
}

struct tag_ent {
  char tag[512];
  store_tag_t t;
};

int store_tag_list(store_t *s, const char *upstream, const char *repo, const char *after,
                   store_tag_cb cb, void *arg)
{
  unsigned char key[1024];
  struct tag_ent *ents = NULL;
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  int rc;
  int pl = tag_key(s, upstream, repo, "", key, sizeof(key));
  if (pl < 0)
    return pl;
  size_t plen = (size_t)pl;
  /* The position to resume from: the prefix plus the last tag seen (strictly after it). */
  size_t klen = plen;
  int strict = 0;
  if (after && *after) {
    size_t al = strlen(after);
    if (plen + al > sizeof(key) || plen + al > (size_t)mdb_env_get_maxkeysize(s->env))
      return -ENAMETOOLONG;
    memcpy(key + plen, after, al);
    klen += al;
    strict = 1;
  }
  ents = pc_xmalloc(TAG_BATCH * sizeof(*ents));
  for (;;) {
    int n = 0;
    rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
    if (rc)
      goto out;
    rc = store__mdb_err(mdb_cursor_open(txn, s->tags, &cur), "cursor_open");
    if (rc)
      goto out;
    MDB_val k = {klen, key}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (mrc == 0 && strict && k.mv_size == klen && memcmp(k.mv_data, key, klen) == 0)
      mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    while (mrc == 0 && n < TAG_BATCH) {
      if (k.mv_size < plen || memcmp(k.mv_data, key, plen) != 0)
        break;
      size_t tl = k.mv_size - plen;
      if (tl < sizeof(ents[n].tag) && tag_decode(&v, &ents[n].t) == 0) {
        memcpy(ents[n].tag, (const char *)k.mv_data + plen, tl);
        ents[n].tag[tl] = '\0';
        n++;
      }
      mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    int more = mrc == 0 && n == TAG_BATCH;
    if (mrc != 0 && mrc != MDB_NOTFOUND) {
      rc = store__mdb_err(mrc, "cursor_get");
      goto out;
    }
    mdb_cursor_close(cur);
    cur = NULL;
    mdb_txn_abort(txn);
    txn = NULL;
    /* Callbacks run with no transaction open, so they may call back into the store. */
    for (int i = 0; i < n; i++) {
      rc = cb(arg, ents[i].tag, &ents[i].t);
      if (rc)
        goto out;
    }
    if (!more)
      break;
    size_t tl = strlen(ents[n - 1].tag);
    memcpy(key + plen, ents[n - 1].tag, tl);
    klen = plen + tl;
    strict = 1;
  }
  rc = 0;
out:
  if (cur)
    mdb_cursor_close(cur);
  if (txn)
    mdb_txn_abort(txn);
  free(ents);
  return rc;
}
