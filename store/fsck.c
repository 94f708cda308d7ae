/* store/fsck — full verification and repair of the store.
 *
 * Pass 1 walks blobs/sha256/<2 hex>/<64 hex> and rehashes every file: a mismatch is moved to
 * quarantine/ and its records dropped; a verified file without a record (or with a record of
 * the wrong size) is recorded; a name that is not a digest is reported as stray and left
 * alone. Pass 2 walks the blobs and manifests databases and drops records whose file is gone.
 * Each repair is its own short write transaction, so readers are never blocked for long, and
 * moves the running totals with the records (store__wtxn_*). Pass 3 recomputes the totals from
 * the records in one write transaction and rewrites the totals record if it disagrees: with
 * every write going through store__wtxn_* that finds nothing unless the record was damaged.
 */
#include "store/store-int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/pc.h"

static void say(FILE *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(FILE *out, const char *fmt, ...)
{
  if (!out)
    return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(out, fmt, ap);
  va_end(ap);
  fputc('\n', out);
}

static int is_hex(const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return s[n] == '\0';
}

/* Delete the blob and manifest records of digest (either may be absent). */
static int drop_records(store_t *s, const char *digest)
{
  store__wtxn_t w;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest};
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  rc = store__wtxn_del(s, &w, s->blobs, &k);
  if (rc == 0 || rc == PC_E_NOTFOUND)
    rc = store__wtxn_del(s, &w, s->manifests, &k);
  if (rc == 0 || rc == PC_E_NOTFOUND) {
    int drc = mdb_del(w.txn, s->refs, &k, NULL); /* its references go with it */
    rc = drc == 0 || drc == MDB_NOTFOUND ? 0 : store__mdb_err(drc, "del");
  }
  if (rc && rc != PC_E_NOTFOUND) {
    store__wtxn_abort(&w);
    return rc;
  }
  return store__wtxn_commit(s, &w);
}

/* Record a verified file. Keeps the media type and creation time of a wrong-sized record. */
static int record_file(store_t *s, const char *digest, uint64_t size, int64_t mtime)
{
  store__wtxn_t w;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  store__blob_rec_t r;
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  if (mdb_get(w.txn, s->blobs, &k, &v) != 0 || store__blob_rec_decode(&v, &r) != 0) {
    memset(&r, 0, sizeof(r));
    r.created = mtime;
    r.last_access = mtime;
    store_manifest_info_t mi;
    if (mdb_get(w.txn, s->manifests, &k, &v) == 0 && store__manifest_rec_decode(&v, &mi) == 0)
      memcpy(r.media_type, mi.media_type, sizeof(r.media_type));
  }
  r.size = size;
  rc = store__wtxn_put_blob(s, &w, digest, &r);
  if (rc) {
    store__wtxn_abort(&w);
    return rc;
  }
  return store__wtxn_commit(s, &w);
}

static int quarantine(store_t *s, const char *path, const char *name)
{
  char q[PATH_MAX];
  int n = snprintf(q, sizeof(q), "%s/quarantine/%s.%lld", s->root, name, (long long)pc_now_sec());
  if (n < 0 || (size_t)n >= sizeof(q))
    return -ENAMETOOLONG;
  for (int i = 1; access(q, F_OK) == 0 && i < 1000; i++)
    snprintf(q, sizeof(q), "%s/quarantine/%s.%lld.%d", s->root, name, (long long)pc_now_sec(), i);
  if (rename(path, q) != 0)
    return -errno;
  return 0;
}

/* Check one file of a fan-out directory. */
static int check_file(store_t *s, FILE *out, store_fsck_report_t *r, const char *sub,
                      const char *name, const char *path)
{
  char digest[STORE__SHA256_LEN + 1], actual[72];
  struct stat st;
  uint64_t size = 0;
  int rc = 0;
  if (lstat(path, &st) != 0)
    return errno == ENOENT ? 0 : -errno;
  if (!S_ISREG(st.st_mode) || strlen(name) != 64 || !is_hex(name, 64) ||
      memcmp(name, sub, 2) != 0) {
    r->stray_files++;
    say(out, "stray: %s (not a blob file name)", path);
    return 0;
  }
  memcpy(digest, "sha256:", 7);
  memcpy(digest + 7, name, 65);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  rc = store__hash_fd(fd, actual, &size);
  close(fd);
  if (rc)
    return rc;
  r->blobs_checked++;
  r->bytes_checked += size;
  if (strcmp(actual, digest) != 0) {
    r->corrupt++;
    rc = quarantine(s, path, name);
    say(out, "corrupt: %s hashes to %s; %s", digest, actual,
        rc ? "could not quarantine it" : "moved to quarantine/, records dropped");
    if (rc)
      return rc;
    return drop_records(s, digest);
  }
  store__blob_rec_t rec;
  MDB_txn *txn = NULL;
  MDB_val k = {STORE__SHA256_LEN, digest}, v;
  rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  int grc = mdb_get(txn, s->blobs, &k, &v);
  int ok = grc == 0 && store__blob_rec_decode(&v, &rec) == 0 && rec.size == size;
  mdb_txn_abort(txn);
  if (grc != 0 && grc != MDB_NOTFOUND)
    return store__mdb_err(grc, "get");
  if (!ok) {
    r->orphan_files++;
    say(out, "orphan: %s (%llu bytes) %s; recorded", digest, (unsigned long long)size,
        grc == MDB_NOTFOUND ? "had no record" : "had a wrong record");
    return record_file(s, digest, size, (int64_t)st.st_mtime);
  }
  return 0;
}

static int walk_files(store_t *s, FILE *out, store_fsck_report_t *r)
{
  char top[PATH_MAX], sub[PATH_MAX], path[PATH_MAX];
  int rc = 0;
  DIR *d = NULL, *d2 = NULL;
  int n = snprintf(top, sizeof(top), "%s/blobs/sha256", s->root);
  if (n < 0 || (size_t)n >= sizeof(top))
    return -ENAMETOOLONG;
  d = opendir(top);
  if (!d)
    return -errno;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    n = snprintf(sub, sizeof(sub), "%s/%s", top, e->d_name);
    if (n < 0 || (size_t)n >= sizeof(sub))
      continue;
    struct stat st;
    if (strlen(e->d_name) != 2 || !is_hex(e->d_name, 2) || lstat(sub, &st) != 0 ||
        !S_ISDIR(st.st_mode)) {
      r->stray_files++;
      say(out, "stray: %s (not a fan-out directory)", sub);
      continue;
    }
    d2 = opendir(sub);
    if (!d2) {
      rc = -errno;
      goto out;
    }
    struct dirent *f;
    while ((f = readdir(d2)) != NULL) {
      if (strcmp(f->d_name, ".") == 0 || strcmp(f->d_name, "..") == 0)
        continue;
      n = snprintf(path, sizeof(path), "%s/%s", sub, f->d_name);
      if (n < 0 || (size_t)n >= sizeof(path))
        continue;
      rc = check_file(s, out, r, e->d_name, f->d_name, path);
      if (rc)
        goto out;
    }
    closedir(d2);
    d2 = NULL;
  }
out:
  if (d2)
    closedir(d2);
  closedir(d);
  return rc;
}

/* Drop records of dbi whose blob file is gone: a read pass collects them, then one short
 * write txn deletes those whose file is still missing. */
static int walk_records(store_t *s, FILE *out, store_fsck_report_t *r, MDB_dbi dbi,
                        const char *what)
{
  char path[PATH_MAX], digest[STORE_DIGEST_MAX];
  MDB_txn *txn = NULL;
  store__wtxn_t w = {NULL, {0, 0, 0}};
  MDB_cursor *cur = NULL;
  struct gone {
    size_t len;
    char key[STORE_DIGEST_MAX];
  } *gone = NULL;
  size_t ngone = 0, cap = 0;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_cursor_open(txn, dbi, &cur), "cursor_open");
  if (rc)
    goto out;
  MDB_val k, v;
  int mrc;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    size_t kl = k.mv_size < sizeof(digest) - 1 ? k.mv_size : sizeof(digest) - 1;
    memcpy(digest, k.mv_data, kl);
    digest[kl] = '\0';
    int missing = 1;
    if (k.mv_size == STORE__SHA256_LEN && store__is_sha256(digest) &&
        store_blob_path(s, digest, path, sizeof(path)) == 0)
      missing = access(path, F_OK) != 0 && errno == ENOENT;
    if (!missing)
      continue;
    if (ngone == cap) {
      cap = cap ? 2 * cap : 16;
      gone = pc_xrealloc(gone, cap * sizeof(*gone));
    }
    gone[ngone].len = kl;
    memcpy(gone[ngone].key, digest, kl + 1);
    ngone++;
  }
  if (mrc != MDB_NOTFOUND) {
    rc = store__mdb_err(mrc, "cursor_get");
    goto out;
  }
  mdb_cursor_close(cur);
  cur = NULL;
  mdb_txn_abort(txn);
  txn = NULL;
  if (!ngone)
    goto out;

  rc = store__wtxn_begin(s, &w);
  if (rc)
    goto out;
  for (size_t i = 0; i < ngone; i++) {
    if (gone[i].len == STORE__SHA256_LEN && store__is_sha256(gone[i].key) &&
        store_blob_path(s, gone[i].key, path, sizeof(path)) == 0 && access(path, F_OK) == 0)
      continue; /* committed again meanwhile */
    MDB_val dk = {gone[i].len, gone[i].key};
    rc = store__wtxn_del(s, &w, dbi, &dk);
    if (rc == PC_E_NOTFOUND) {
      rc = 0;
      continue; /* dropped meanwhile */
    }
    if (rc)
      goto out;
    r->missing_files++;
    say(out, "missing: %s record %s has no file; record removed", what, gone[i].key);
  }
  rc = store__wtxn_commit(s, &w);
out:
  if (cur)
    mdb_cursor_close(cur);
  if (txn)
    mdb_txn_abort(txn);
  store__wtxn_abort(&w);
  free(gone);
  return rc;
}

/* Recompute the byte totals from the records and rewrite the totals record when it is missing,
 * undecodable, stale or different. One write transaction, so no commit can slip in between
 * the scan and the rewrite (it holds the writer lock for one scan of the records). Not through
 * store__wtxn_begin, which would quietly repair what this reports. */
static int check_totals(store_t *s, FILE *out, store_fsck_report_t *r)
{
  MDB_txn *txn = NULL;
  store__totals_t rec, sum;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, 0, &txn), "txn_begin");
  if (rc)
    return rc;
  int rrc = store__totals_read(s, txn, &rec);
  if (rrc && rrc != PC_E_NOTFOUND && rrc != PC_E_CORRUPT) {
    rc = rrc;
    goto out;
  }
  rc = store__totals_scan(s, txn, &sum);
  if (rc)
    goto out;
  if (rrc == 0 && rec.txnid == (uint64_t)mdb_txn_id(txn) - 1 && rec.blob_bytes == sum.blob_bytes &&
      rec.manifest_bytes == sum.manifest_bytes)
    goto out; /* agrees: nothing to write */
  r->totals_repaired++;
  if (rrc == PC_E_NOTFOUND)
    say(out, "totals: the totals record is missing; rewritten");
  else if (rrc == PC_E_CORRUPT)
    say(out, "totals: the totals record does not decode; rewritten");
  else
    say(out,
        "totals: the record says blob_bytes=%llu manifest_bytes=%llu (txn %llu), the records "
        "sum to %llu and %llu (txn %llu); rewritten",
        (unsigned long long)rec.blob_bytes, (unsigned long long)rec.manifest_bytes,
        (unsigned long long)rec.txnid, (unsigned long long)sum.blob_bytes,
        (unsigned long long)sum.manifest_bytes, (unsigned long long)mdb_txn_id(txn) - 1);
  rc = store__totals_write(s, txn, &sum);
  if (rc)
    goto out;
  rc = store__mdb_err(mdb_txn_commit(txn), "commit");
  txn = NULL;
out:
  if (txn)
    mdb_txn_abort(txn);
  return rc;
}

int store_fsck(store_t *s, FILE *out, store_fsck_report_t *report)
{
  store_fsck_report_t r;
  memset(&r, 0, sizeof(r));
  int rc = walk_files(s, out, &r);
  if (rc == 0)
    rc = walk_records(s, out, &r, s->blobs, "blob");
  if (rc == 0)
    rc = walk_records(s, out, &r, s->manifests, "manifest");
  if (rc == 0)
    rc = check_totals(s, out, &r);
  if (report)
    *report = r;
  if (rc) {
    say(out, "error: fsck stopped: %s", pc_strerror(rc));
    return rc;
  }
  return r.corrupt || r.missing_files || r.orphan_files || r.totals_repaired ? PC_E_CORRUPT : 0;
}
