/* test-store — the content-addressed store: commits, verification, metadata, atimes, tags,
 * running totals, concurrency, crash safety (SIGKILL of a writing child) and fsck. */
#include "tests/unit/unit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/cmd.h"
#include "store/store.h"
#include "store/store-int.h" /* raw LMDB: independent recounts, damaging the totals record */

#define MT_LAYER "application/vnd.oci.image.layer.v1.tar+gzip"
#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"

/* ---- helpers ---------------------------------------------------------------------------- */

static char root_buf[1024];

static const char *root_dir(void)
{
  if (!root_buf[0])
    snprintf(root_buf, sizeof(root_buf), "%s/store", unit_tmpdir());
  return root_buf;
}

static store_t *open_store(void)
{
  store_t *s = NULL;
  ASSERT_OK(store_open(root_dir(), NULL, &s));
  ASSERT(s != NULL);
  return s;
}

/* Deterministic content number i of series seed: 1..6000 bytes. Caller frees. */
static unsigned char *content(unsigned seed, unsigned i, size_t *len)
{
  uint64_t x = ((uint64_t)seed << 32 | i) * 0x9e3779b97f4a7c15ULL + 1;
  size_t n = 1 + (size_t)(x >> 40) % 6000;
  unsigned char *b = pc_xmalloc(n);
  for (size_t k = 0; k < n; k++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[k] = (unsigned char)x;
  }
  *len = n;
  return b;
}

static int put_blob(store_t *s, const void *b, size_t n, const char *expected, int64_t size,
                    char *out)
{
  store_writer_t *w = NULL;
  int rc = store_writer_new(s, expected, size, &w);
  if (rc)
    return rc;
  size_t half = n / 2;
  rc = store_writer_write(w, b, half);
  if (rc == 0)
    rc = store_writer_write(w, (const char *)b + half, n - half);
  if (rc) {
    store_writer_abort(w);
    return rc;
  }
  return store_writer_commit(w, MT_LAYER, out);
}

static int count_entries(const char *dir)
{
  DIR *d = opendir(dir);
  ASSERT(d != NULL);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      n++;
  closedir(d);
  return n;
}

static int count_sub(const char *sub)
{
  char p[PATH_MAX];
  snprintf(p, sizeof(p), "%s/%s", root_dir(), sub);
  return count_entries(p);
}

static int blob_files_n;
static int blob_files_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  if (flag != FTW_F)
    return 0;
  blob_files_n++;
  const char *name = path + ftw->base;
  ASSERT_EQ(64, strlen(name));
  int fd = open(path, O_RDONLY);
  ASSERT(fd >= 0);
  unsigned char *buf = pc_xmalloc((size_t)st->st_size + 1);
  ASSERT_EQ(st->st_size, read(fd, buf, (size_t)st->st_size + 1));
  close(fd);
  char d[72];
  store_digest_of(buf, (size_t)st->st_size, d);
  free(buf);
  if (strcmp(d + 7, name) != 0)
    unit__fail(__FILE__, __LINE__, "%s hashes to %s", path, d);
  return 0;
}

/* Every file under blobs/ hashes to its name; returns how many there are. */
static int check_blob_files(void)
{
  char p[PATH_MAX];
  snprintf(p, sizeof(p), "%s/blobs", root_dir());
  blob_files_n = 0;
  ASSERT_EQ(0, nftw(p, blob_files_cb, 16, FTW_PHYS));
  return blob_files_n;
}

/* Open the blob and compare its bytes with b[0..n). */
static void expect_blob(store_t *s, const char *digest, const void *b, size_t n)
{
  int fd = -1;
  uint64_t size = 0;
  ASSERT_OK(store_blob_open(s, digest, &fd, &size));
  ASSERT_EQ(n, size);
  unsigned char *got = pc_xmalloc(n + 1);
  ASSERT_EQ(n, pread(fd, got, n + 1, 0));
  ASSERT(memcmp(got, b, n) == 0);
  free(got);
  close(fd);
}

static void write_file(const char *path, const void *b, size_t n)
{
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT(fd >= 0);
  ASSERT_EQ(n, write(fd, b, n));
  close(fd);
}

/* Recount the totals by walking every record, independently of the totals record and of
 * LMDB's entry counts: the number of records of each database and the sizes of the decodable
 * blob and manifest records. */
static void recount(store_t *s, store_stats_t *out)
{
  MDB_txn *txn = NULL;
  const MDB_dbi dbis[3] = {s->blobs, s->manifests, s->tags};
  uint64_t n[3] = {0, 0, 0}, bytes[2] = {0, 0};
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
  for (int i = 0; i < 3; i++) {
    MDB_cursor *cur = NULL;
    MDB_val k, v;
    int rc;
    ASSERT_EQ(0, mdb_cursor_open(txn, dbis[i], &cur));
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
      store__blob_rec_t r;
      store_manifest_info_t mi;
      n[i]++;
      if (i == 0 && store__blob_rec_decode(&v, &r) == 0)
        bytes[0] += r.size;
      if (i == 1 && store__manifest_rec_decode(&v, &mi) == 0)
        bytes[1] += mi.size;
    }
    ASSERT_EQ(MDB_NOTFOUND, rc);
    mdb_cursor_close(cur);
  }
  mdb_txn_abort(txn);
  out->blobs = n[0];
  out->blob_bytes = bytes[0];
  out->manifests = n[1];
  out->manifest_bytes = bytes[1];
  out->tags = n[2];
}

static void stats_fail(int line, const char *what, const store_stats_t *a, const store_stats_t *b)
{
  unit__fail(__FILE__, line,
             "%s: blobs %llu/%llu blob_bytes %llu/%llu manifests %llu/%llu manifest_bytes "
             "%llu/%llu tags %llu/%llu",
             what, (unsigned long long)a->blobs, (unsigned long long)b->blobs,
             (unsigned long long)a->blob_bytes, (unsigned long long)b->blob_bytes,
             (unsigned long long)a->manifests, (unsigned long long)b->manifests,
             (unsigned long long)a->manifest_bytes, (unsigned long long)b->manifest_bytes,
             (unsigned long long)a->tags, (unsigned long long)b->tags);
}

/* store_stats succeeds, equals a recount, and (when want is not NULL) equals *want. */
static void expect_stats_at(int line, store_t *s, const store_stats_t *want)
{
  store_stats_t got, rc;
  memset(&got, 0xa5, sizeof(got));
  int e = store_stats(s, &got);
  if (e != 0)
    unit__fail(__FILE__, line, "store_stats: %s", pc_errname(e));
  recount(s, &rc);
  if (memcmp(&got, &rc, sizeof(got)) != 0)
    stats_fail(line, "store_stats/recount", &got, &rc);
  if (want && memcmp(&got, want, sizeof(got)) != 0)
    stats_fail(line, "store_stats/expected", &got, want);
}

#define EXPECT_STATS(s, nb, bb, nm, mb, nt)                                                        \
  do {                                                                                             \
    store_stats_t w_ = {(uint64_t)(nb), (uint64_t)(bb), (uint64_t)(nm), (uint64_t)(mb),            \
                        (uint64_t)(nt)};                                                           \
    expect_stats_at(__LINE__, (s), &w_);                                                           \
  } while (0)
#define EXPECT_STATS_RECOUNT(s) expect_stats_at(__LINE__, (s), NULL)

/* ---- basic commits ---------------------------------------------------------------------- */

TEST(commit_roundtrip)
{
  store_t *s = open_store();
  size_t n;
  unsigned char *b = content(1, 1, &n);
  char want[72], got[72], path[PATH_MAX];
  store_digest_of(b, n, want);
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, want, NULL));
  ASSERT_OK(put_blob(s, b, n, want, (int64_t)n, got));
  ASSERT_STREQ(want, got);
  expect_blob(s, want, b, n);

  store_blob_info_t info;
  ASSERT_OK(store_blob_stat(s, want, &info));
  ASSERT_EQ(n, info.size);
  ASSERT_STREQ(MT_LAYER, info.media_type);
  ASSERT(info.created > 0 && info.last_access >= info.created);

  ASSERT_OK(store_blob_path(s, want, path, sizeof(path)));
  char expect_path[PATH_MAX];
  snprintf(expect_path, sizeof(expect_path), "%s/blobs/sha256/%.2s/%s", root_dir(), want + 7,
           want + 7);
  ASSERT_STREQ(expect_path, path);
  struct stat st;
  ASSERT_EQ(0, stat(path, &st));
  ASSERT_EQ(0644, st.st_mode & 0777);
  ASSERT_EQ(0, count_sub("tmp"));

  /* unknown digest and unknown size: the digest is whatever the bytes hash to */
  size_t n2;
  unsigned char *b2 = content(1, 2, &n2);
  char d2[72];
  ASSERT_OK(put_blob(s, b2, n2, NULL, -1, d2));
  char w2[72];
  store_digest_of(b2, n2, w2);
  ASSERT_STREQ(w2, d2);
  expect_blob(s, d2, b2, n2);

  /* the empty blob */
  char de[72];
  ASSERT_OK(put_blob(s, "", 0, NULL, 0, de));
  expect_blob(s, de, "", 0);
  free(b);
  free(b2);
  store_close(s);
}

/* A new store has its 256 fan-out directories: a first pull's commits make none. A store that
 * has only some of them (one made by an older pullcache) gets the rest at its next open. */
TEST(open_makes_the_fanout_directories)
{
  char p[PATH_MAX];
  struct stat st;
  for (int pass = 0; pass < 2; pass++) {
    store_t *s = open_store();
    for (int i = 0; i < 256; i++) {
      snprintf(p, sizeof(p), "%s/blobs/sha256/%02x", root_dir(), i);
      ASSERT_EQ(0, stat(p, &st));
      ASSERT(S_ISDIR(st.st_mode));
    }
    snprintf(p, sizeof(p), "%s/blobs/sha256/100", root_dir());
    ASSERT_EQ(-1, stat(p, &st));
    store_close(s);
    /* the upgrade case: all but 00 and 7f removed */
    for (int i = 1; i < 256; i++) {
      if (i == 0x7f)
        continue;
      snprintf(p, sizeof(p), "%s/blobs/sha256/%02x", root_dir(), i);
      ASSERT_EQ(0, rmdir(p));
    }
  }
}

/* A commit whose fan-out directory is missing (removed by hand, or a store_open that could not
 * make it) makes it and commits. */
TEST(commit_makes_a_missing_fanout_directory)
{
  store_t *s = open_store();
  char d[72], p[PATH_MAX];
  store_digest_of("abc", 3, d);
  snprintf(p, sizeof(p), "%s/blobs/sha256/%.2s", root_dir(), d + 7);
  ASSERT_EQ(0, rmdir(p));
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, d, 3, &w));
  ASSERT_OK(store_writer_write(w, "abc", 3));
  ASSERT_OK(store_writer_commit(w, NULL, NULL));
  ASSERT_OK(store_blob_stat(s, d, NULL));
  struct stat st;
  ASSERT_EQ(0, stat(p, &st));
  ASSERT_EQ(0, count_sub("tmp"));
  store_close(s);
}

/* Spare temp files: made up to STORE_SPARES (a second call keeps them), taken by the next blob
 * writers with their read-only descriptors (no new file), not by a manifest put; once they are
 * gone a writer makes its own; commit and abort leave nothing in tmp/; store_close removes the
 * untaken ones. */
TEST(spare_temp_files)
{
  store_t *s = open_store();
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_OK(store_spare_make(s));
  ASSERT_OK(store_spare_make(s));
  ASSERT_EQ(STORE_SPARES, count_sub("tmp"));
  ASSERT_EQ(STORE_SPARES, s->nspares);
  char spare[PATH_MAX];
  snprintf(spare, sizeof(spare), "%s", s->spares[STORE_SPARES - 1].path);

  char md[72];
  const char *man = "{\"schemaVersion\":2}";
  ASSERT_OK(store_manifest_put(s, man, strlen(man), "application/vnd.oci.image.manifest.v1+json",
                               NULL, md));
  ASSERT_EQ(STORE_SPARES, count_sub("tmp"));
  ASSERT_EQ(STORE_SPARES, s->nspares);

  char d[72];
  store_digest_of("abc", 3, d);
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, d, 3, &w));
  ASSERT_STREQ(spare, store_writer_path(w));
  ASSERT_EQ(STORE_SPARES - 1, s->nspares);
  ASSERT_EQ(STORE_SPARES, count_sub("tmp"));
  int rfd = store_writer_reader(w);
  ASSERT(rfd >= 0);
  ASSERT_OK(store_writer_write(w, "abc", 3));
  char buf[4] = {0};
  ASSERT_EQ(3, pread(rfd, buf, sizeof(buf), 0));
  ASSERT_STREQ("abc", buf);
  close(rfd);
  /* the other spares, then writers that make their own file (their reader opens the path) */
  store_writer_t *ws[STORE_SPARES + 1];
  for (int i = 0; i < STORE_SPARES; i++) {
    ASSERT_OK(store_writer_new(s, NULL, -1, &ws[i]));
    ASSERT_EQ(STORE_SPARES + (i == STORE_SPARES - 1), count_sub("tmp"));
    rfd = store_writer_reader(ws[i]);
    ASSERT(rfd >= 0);
    close(rfd);
  }
  ASSERT_EQ(0, s->nspares);
  for (int i = 0; i < STORE_SPARES; i++)
    store_writer_abort(ws[i]);
  ASSERT_OK(store_writer_commit(w, NULL, NULL));
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_OK(store_blob_stat(s, d, NULL));

  ASSERT_OK(store_spare_make(s));
  ASSERT_EQ(STORE_SPARES, count_sub("tmp"));
  store_close(s);
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_EQ(-1, access(spare, F_OK));
}

/* A hash-only writer (no temp file: the full-disk pass-through) owns no descriptor: its abort
 * and its commit close none (an unset descriptor field once closed fd 0), and it has no reader. */
TEST(hash_only_writer_closes_no_descriptor)
{
  store_t *s = open_store();
  char d[72];
  store_digest_of("abc", 3, d);
  for (int commit = 0; commit < 2; commit++) {
    store_writer_t *w = NULL;
    ASSERT_OK(store_writer_new_hash_only(s, d, 3, &w));
    ASSERT_EQ(-EBADF, store_writer_reader(w));
    ASSERT_OK(store_writer_write(w, "abc", 3));
    if (commit)
      ASSERT_EQ(-ENOSPC, store_writer_commit(w, NULL, NULL));
    else
      store_writer_abort(w);
    ASSERT(fcntl(0, F_GETFD) >= 0);
  }
  store_close(s);
}

TEST(abort_leaves_nothing)
{
  store_t *s = open_store();
  store_writer_t *w = NULL;
  char d[72];
  store_digest_of("abc", 3, d);
  ASSERT_OK(store_writer_new(s, d, 3, &w));
  ASSERT_OK(store_writer_write(w, "ab", 2));
  ASSERT_EQ(2, store_writer_size(w));
  ASSERT(store_writer_fd(w) >= 0);
  ASSERT_EQ(1, count_sub("tmp"));
  ASSERT_EQ(0, access(store_writer_path(w), F_OK));
  store_writer_abort(w);
  store_writer_abort(NULL);
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, d, NULL));
  ASSERT_EQ(0, check_blob_files());
  store_close(s);
}

TEST(open_with_info)
{
  store_t *s = open_store();
  static const char man[] = "{\"schemaVersion\":2}";
  char md[72], bd[72];
  int fd = -1;
  store_blob_info_t bi;
  store_manifest_info_t mi;
  ASSERT_OK(store_manifest_put(s, man, sizeof(man) - 1, "application/vnd.oci.image.index.v1+json",
                               NULL, md));
  ASSERT_OK(put_blob(s, "layer-bytes", 11, NULL, -1, bd));

  ASSERT_OK(store_manifest_open(s, md, &fd, &mi));
  ASSERT_EQ(sizeof(man) - 1, mi.size);
  ASSERT_STREQ("application/vnd.oci.image.index.v1+json", mi.media_type);
  char buf[64];
  ASSERT_EQ((long long)(sizeof(man) - 1), (long long)read(fd, buf, sizeof(buf)));
  close(fd);
  /* a layer is not a manifest; an unknown digest is not found; a bad one is invalid */
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_open(s, bd, &fd, &mi));
  char none[72];
  store_digest_of("none", 4, none);
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_open(s, none, &fd, NULL));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_manifest_open(s, "sha256:xyz", &fd, NULL));

  ASSERT_OK(store_blob_open_info(s, bd, &fd, &bi));
  ASSERT_EQ(11, bi.size);
  ASSERT(bi.created > 0);
  close(fd);
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_open_info(s, none, &fd, &bi));

  /* a truncated file is reported, not served */
  char path[PATH_MAX];
  ASSERT_OK(store_blob_path(s, md, path, sizeof(path)));
  ASSERT_EQ(0, truncate(path, 3));
  ASSERT_EQ(PC_E_CORRUPT, store_manifest_open(s, md, &fd, &mi));
  store_close(s);
}

TEST(verify_before_commit)
{
  store_t *s = open_store();
  char d[72], wrong[72];
  store_digest_of("hello", 5, d);
  store_digest_of("other", 5, wrong);

  /* good bytes: verify says so, later writes are refused, commit reuses the verdict */
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, d, -1, &w));
  ASSERT_OK(store_writer_write(w, "hello", 5));
  ASSERT_OK(store_writer_verify(w));
  ASSERT_OK(store_writer_verify(w));
  ASSERT_EQ(-EINVAL, store_writer_write(w, "x", 1));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, d, NULL)); /* not visible before commit */
  ASSERT_OK(store_writer_commit(w, NULL, NULL));
  expect_blob(s, d, "hello", 5);

  /* bad bytes: verify reports the mismatch and commit stores nothing */
  ASSERT_OK(store_writer_new(s, wrong, -1, &w));
  ASSERT_OK(store_writer_write(w, "hellO", 5));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_writer_verify(w));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_writer_commit(w, NULL, NULL));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, wrong, NULL));
  ASSERT_EQ(0, count_sub("tmp"));

  /* a short write against an expected size */
  ASSERT_OK(store_writer_new(s, NULL, 6, &w));
  ASSERT_OK(store_writer_write(w, "hello", 5));
  ASSERT_EQ(PC_E_SIZE_INVALID, store_writer_verify(w));
  store_writer_abort(w);
  ASSERT_EQ(0, count_sub("tmp"));
  store_close(s);
}

TEST(digest_mismatch)
{
  store_t *s = open_store();
  char wrong[72], d[72];
  store_digest_of("other", 5, wrong);
  store_digest_of("hello", 5, d);
  ASSERT_EQ(PC_E_DIGEST_INVALID, put_blob(s, "hello", 5, wrong, 5, NULL));
  ASSERT_EQ(PC_E_DIGEST_INVALID, put_blob(s, "hello", 5, wrong, -1, NULL));
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, wrong, NULL));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, d, NULL));
  ASSERT_EQ(0, check_blob_files());

  /* expected digests that are not sha256 content */
  store_writer_t *w = NULL;
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_writer_new(s, "sha256:abc", -1, &w));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_writer_new(s, "../../etc/passwd", -1, &w));
  ASSERT_EQ(PC_E_UNSUPPORTED, store_writer_new(s, "foo:bar", -1, &w));
  ASSERT(w == NULL);

  /* lookups by bad digests never touch the filesystem */
  char path[PATH_MAX];
  int fd;
  uint64_t sz;
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_blob_stat(s, "sha256:../../x", NULL));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_blob_open(s, "nonsense", &fd, &sz));
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_blob_path(s, "sha256:..", path, sizeof(path)));
  ASSERT_EQ(-ENAMETOOLONG, store_blob_path(s, d, path, 20));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, "foo:bar", NULL));
  store_close(s);
}

TEST(size_mismatch)
{
  store_t *s = open_store();
  char d[72];
  store_digest_of("hello", 5, d);
  /* fewer bytes than announced */
  ASSERT_EQ(PC_E_SIZE_INVALID, put_blob(s, "hello", 5, d, 6, NULL));
  ASSERT_EQ(PC_E_SIZE_INVALID, put_blob(s, "hello", 5, NULL, 6, NULL));
  /* more bytes than announced: refused at the write, and the writer stays failed */
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, d, 4, &w));
  ASSERT_OK(store_writer_write(w, "hel", 3));
  ASSERT_EQ(PC_E_SIZE_INVALID, store_writer_write(w, "lo", 2));
  ASSERT_EQ(3, store_writer_size(w));
  ASSERT_EQ(PC_E_SIZE_INVALID, store_writer_write(w, "l", 1));
  ASSERT_EQ(PC_E_SIZE_INVALID, store_writer_commit(w, NULL, NULL));
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, d, NULL));
  ASSERT_EQ(0, check_blob_files());
  store_close(s);
}

TEST(commit_existing)
{
  store_t *s = open_store();
  size_t n;
  unsigned char *b = content(2, 1, &n);
  char d[72], d2[72];
  ASSERT_OK(put_blob(s, b, n, NULL, -1, d));
  store_blob_info_t a, c;
  ASSERT_OK(store_blob_stat(s, d, &a));
  ASSERT_OK(put_blob(s, b, n, d, (int64_t)n, d2));
  ASSERT_STREQ(d, d2);
  ASSERT_OK(store_blob_stat(s, d, &c));
  ASSERT_EQ(a.created, c.created);
  ASSERT_EQ(n, c.size);
  ASSERT_EQ(0, count_sub("tmp"));
  ASSERT_EQ(1, check_blob_files());
  expect_blob(s, d, b, n);
  free(b);
  store_close(s);
}

TEST(open_busy)
{
  store_t *s = open_store(), *s2 = NULL;
  ASSERT_EQ(-EBUSY, store_open(root_dir(), NULL, &s2));
  ASSERT(s2 == NULL);
  store_close(s);
  store_close(NULL);
  s = open_store();
  store_close(s);
}

/* Read-only beside the lock holder (export beside a live daemon): no lock, no sweep, no
 * writes; it sees what the holder committed, also after it opened. */
TEST(open_read_only_beside_holder)
{
  store_opts_t ro = {.read_only = 1};
  store_t *r = NULL;
  char missing[PATH_MAX];
  snprintf(missing, sizeof(missing), "%s/nothing-here", unit_tmpdir());
  ASSERT_EQ(PC_E_NOTFOUND, store_open(missing, &ro, &r)); /* nothing created */
  struct stat sb;
  ASSERT(stat(missing, &sb) != 0);
  store_t *s = open_store();
  char d1[72], d2[72];
  ASSERT_OK(put_blob(s, "one", 3, NULL, -1, d1));
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, NULL, -1, &w)); /* the holder's fill in tmp/ */
  ASSERT_OK(store_writer_write(w, "partial", 7));
  ASSERT_OK(store_open(root_dir(), &ro, &r));
  ASSERT_EQ(1, count_sub("tmp")); /* not swept */
  ASSERT_OK(store_blob_stat(r, d1, NULL));
  ASSERT_OK(put_blob(s, "two", 3, NULL, -1, d2)); /* committed after the reader opened */
  int fd;
  uint64_t size;
  ASSERT_OK(store_blob_open(r, d2, &fd, &size));
  ASSERT_EQ(3, (int)size);
  close(fd);
  store_stats_t st;
  ASSERT_OK(store_stats(r, &st));
  ASSERT_EQ(2, (int)st.blobs);
  ASSERT(store_manifest_put(r, "{}", 2, MT_MANIFEST, NULL, NULL) != 0); /* no writes */
  store_close(r);
  ASSERT_OK(store_writer_write(w, "more", 4)); /* the holder goes on */
  store_writer_abort(w);
  store_close(s);
}

/* A record whose file is gone is absent; a file without a record is present and served. */
TEST(presence_rules)
{
  store_t *s = open_store();
  char d[72], path[PATH_MAX];
  ASSERT_OK(put_blob(s, "gone", 4, NULL, 4, d));
  ASSERT_OK(store_blob_path(s, d, path, sizeof(path)));
  ASSERT_EQ(0, unlink(path));
  int fd;
  uint64_t sz;
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, d, NULL));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_open(s, d, &fd, &sz));

  /* a file renamed into place whose record never made it (crash before the LMDB commit) */
  char d2[72], p2[PATH_MAX], dir[PATH_MAX];
  store_digest_of("orphan!", 7, d2);
  ASSERT_OK(store_blob_path(s, d2, p2, sizeof(p2)));
  snprintf(dir, sizeof(dir), "%s/blobs/sha256/%.2s", root_dir(), d2 + 7);
  mkdir(dir, 0755);
  write_file(p2, "orphan!", 7);
  store_blob_info_t info;
  ASSERT_OK(store_blob_stat(s, d2, &info));
  ASSERT_EQ(7, info.size);
  expect_blob(s, d2, "orphan!", 7);
  /* the access-time flush records it, so fsck then finds it recorded */
  ASSERT_OK(store_flush_atimes(s));
  store_fsck_report_t r;
  int rc = store_fsck(s, NULL, &r);
  ASSERT_EQ(0, r.orphan_files);
  ASSERT_EQ(1, r.missing_files); /* the first blob's record */
  ASSERT_EQ(PC_E_CORRUPT, rc);
  ASSERT_OK(store_fsck(s, NULL, &r));
  store_close(s);
}

/* ---- manifests and tags ----------------------------------------------------------------- */

/* A commit also writes where the content was seen and a manifest's tag, in its own transaction;
 * a record those functions would refuse is left out and the content committed all the same. */
TEST(commit_also_records)
{
  store_t *s = open_store();
  unsigned char b[] = "blob seen under a repository";
  char dg[72], got[72];
  store_digest_of(b, sizeof(b), dg);
  store_writer_t *w;
  ASSERT_OK(store_writer_new(s, dg, (int64_t)sizeof(b), &w));
  ASSERT_OK(store_writer_write(w, b, sizeof(b)));
  store_also_t also = {.upstream = "up", .repo = "team/app", .now = 100};
  ASSERT_OK(store_writer_commit_also(w, NULL, &also, got));
  ASSERT_STREQ(dg, got);
  ASSERT_OK(store_blob_stat(s, dg, NULL));
  ASSERT_OK(store_seen_has(s, "up", "team/app", dg));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "other", dg));

  /* a manifest by tag: manifest, sight and tag together */
  const char *m = "{\"schemaVersion\":2,\"mediaType\":\"" MT_MANIFEST "\"}";
  char md[72];
  store_digest_of(m, strlen(m), md);
  store_tag_t t = {.size = strlen(m), .fetched_at = 5, .checked_at = 6}, tg;
  snprintf(t.digest, sizeof(t.digest), "%s", md);
  snprintf(t.media_type, sizeof(t.media_type), "%s", MT_MANIFEST);
  store_also_t mt = {.upstream = "up", .repo = "team/app", .now = 7, .tag = "v1", .t = &t};
  ASSERT_OK(store_manifest_put_also(s, m, strlen(m), MT_MANIFEST, md, &mt, NULL));
  ASSERT_OK(store_manifest_stat(s, md, NULL));
  ASSERT_OK(store_seen_has(s, "up", "team/app", md));
  ASSERT_OK(store_tag_get(s, "up", "team/app", "v1", &tg));
  ASSERT_STREQ(md, tg.digest);
  ASSERT_EQ(6, tg.checked_at);

  /* a sight whose key is too long: left out, the content is committed */
  char repo[600];
  memset(repo, 'r', sizeof(repo) - 1);
  repo[sizeof(repo) - 1] = '\0';
  unsigned char b2[] = "another blob";
  char d2[72];
  store_digest_of(b2, sizeof(b2), d2);
  ASSERT_OK(store_writer_new(s, d2, (int64_t)sizeof(b2), &w));
  ASSERT_OK(store_writer_write(w, b2, sizeof(b2)));
  store_also_t bad = {.upstream = "up", .repo = repo, .now = 1};
  ASSERT_OK(store_writer_commit_also(w, NULL, &bad, NULL));
  ASSERT_OK(store_blob_stat(s, d2, NULL));
  ASSERT_EQ(-ENAMETOOLONG, store_seen_has(s, "up", repo, d2));
  store_close(s);
}

TEST(manifest_put_stat)
{
  store_t *s = open_store();
  const char *m = "{\"schemaVersion\":2,\"mediaType\":\"" MT_MANIFEST "\"}";
  size_t n = strlen(m);
  char want[72], got[72], wrong[72];
  store_digest_of(m, n, want);
  store_digest_of("x", 1, wrong);
  store_manifest_info_t mi;
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(s, want, &mi));

  ASSERT_EQ(PC_E_DIGEST_INVALID, store_manifest_put(s, m, n, MT_MANIFEST, wrong, got));
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(s, want, &mi));
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(s, wrong, &mi));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, want, NULL));
  ASSERT_EQ(0, count_sub("tmp"));

  ASSERT_OK(store_manifest_put(s, m, n, MT_MANIFEST, want, got));
  ASSERT_STREQ(want, got);
  ASSERT_OK(store_manifest_stat(s, want, &mi));
  ASSERT_EQ(n, mi.size);
  ASSERT_STREQ(MT_MANIFEST, mi.media_type);
  ASSERT_OK(store_manifest_stat(s, want, NULL));
  expect_blob(s, want, m, n); /* the bytes are a CAS blob, byte for byte */
  store_blob_info_t bi;
  ASSERT_OK(store_blob_stat(s, want, &bi));
  ASSERT_STREQ(MT_MANIFEST, bi.media_type);

  /* by tag: no expected digest */
  const char *m2 = "{\"manifests\":[]}";
  char d2[72];
  ASSERT_OK(
      store_manifest_put(s, m2, strlen(m2), "application/vnd.oci.image.index.v1+json", NULL, d2));
  ASSERT_OK(store_manifest_stat(s, d2, &mi));
  ASSERT_STREQ("application/vnd.oci.image.index.v1+json", mi.media_type);

  /* its blob gone: the manifest is gone */
  char path[PATH_MAX];
  ASSERT_OK(store_blob_path(s, d2, path, sizeof(path)));
  ASSERT_EQ(0, unlink(path));
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(s, d2, &mi));
  store_close(s);
}

struct tag_list {
  char tags[64][64];
  char digests[64][STORE_DIGEST_MAX];
  int n;
  int stop_at;
};

static int tag_collect(void *arg, const char *tag, const store_tag_t *t)
{
  struct tag_list *l = arg;
  ASSERT(l->n < 64);
  snprintf(l->tags[l->n], sizeof(l->tags[0]), "%s", tag);
  snprintf(l->digests[l->n], sizeof(l->digests[0]), "%s", t->digest);
  l->n++;
  return l->stop_at && l->n == l->stop_at ? 7 : 0;
}

static void tag_set(store_t *s, const char *up, const char *repo, const char *tag, int v)
{
  store_tag_t t;
  memset(&t, 0, sizeof(t));
  char buf[64];
  snprintf(buf, sizeof(buf), "%s/%s:%s#%d", up, repo, tag, v);
  store_digest_of(buf, strlen(buf), t.digest);
  snprintf(t.media_type, sizeof(t.media_type), "%s", MT_MANIFEST);
  t.size = (uint64_t)v;
  t.fetched_at = 1000 + v;
  t.checked_at = 2000 + v;
  ASSERT_OK(store_tag_put(s, up, repo, tag, &t));
}

/* A read batch: the lookups inside it share one snapshot (a write made meanwhile is seen
 * after the end), batches nest, and without one every lookup sees the latest commit. */
TEST(read_batch_one_snapshot)
{
  store_t *s = open_store();
  store_tag_t got;
  tag_set(s, "u", "r", "a", 1);
  store_read_batch_begin(s);
  ASSERT_OK(store_tag_get(s, "u", "r", "a", &got));
  tag_set(s, "u", "r", "b", 2);
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "u", "r", "b", &got));
  store_read_batch_begin(s); /* nested: the same snapshot */
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "u", "r", "b", &got));
  store_read_batch_end(s);
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "u", "r", "b", &got));
  store_read_batch_end(s);
  ASSERT_OK(store_tag_get(s, "u", "r", "b", &got));
  ASSERT_EQ(2, got.size);
  tag_set(s, "u", "r", "c", 3);
  ASSERT_OK(store_tag_get(s, "u", "r", "c", &got));
  store_read_batch_begin(s); /* a batch with no read in it begins no txn */
  store_read_batch_end(s);
  store_close(s);
}

TEST(tags_put_get_list)
{
  store_t *s = open_store();
  const char *ups[] = {"registry.k8s.io", "registry.k8s.io.example"};
  const char *repos[] = {"pause", "pause/x", "pausex"};
  const char *tags[] = {"v1", "3.10", "latest", "3.9", "A", "v1.0"};
  for (int u = 0; u < 2; u++)
    for (int r = 0; r < 3; r++)
      for (int t = 0; t < 6; t++)
        tag_set(s, ups[u], repos[r], tags[t], 100 * u + 10 * r + t);

  store_tag_t got;
  ASSERT_OK(store_tag_get(s, "registry.k8s.io", "pause", "3.10", &got));
  ASSERT_EQ(1, got.size);
  ASSERT_EQ(1001, got.fetched_at);
  ASSERT_EQ(2001, got.checked_at);
  ASSERT_STREQ(MT_MANIFEST, got.media_type);
  ASSERT_EQ(STORE_DIGEST_SHA256, store_digest_parse(got.digest, strlen(got.digest)));
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "registry.k8s.io", "pause", "3.1", &got));
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "registry.k8s.io", "paus", "3.10", &got));
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, "other", "pause", "3.10", &got));

  /* replace */
  tag_set(s, "registry.k8s.io", "pause", "3.10", 77);
  ASSERT_OK(store_tag_get(s, "registry.k8s.io", "pause", "3.10", &got));
  ASSERT_EQ(77, got.size);

  /* lexical order, one (upstream, repo) only */
  const char *order[] = {"3.10", "3.9", "A", "latest", "v1", "v1.0"};
  for (int u = 0; u < 2; u++) {
    for (int r = 0; r < 3; r++) {
      struct tag_list l = {.n = 0};
      ASSERT_OK(store_tag_list(s, ups[u], repos[r], NULL, tag_collect, &l));
      ASSERT_EQ(6, l.n);
      for (int i = 0; i < 6; i++) {
        ASSERT_STREQ(order[i], l.tags[i]);
        store_tag_t t;
        ASSERT_OK(store_tag_get(s, ups[u], repos[r], order[i], &t));
        ASSERT_STREQ(t.digest, l.digests[i]);
      }
    }
  }
  /* paging with `after`: strictly after, also for a tag that does not exist */
  struct tag_list l = {.n = 0};
  ASSERT_OK(store_tag_list(s, "registry.k8s.io", "pause", "A", tag_collect, &l));
  ASSERT_EQ(3, l.n);
  ASSERT_STREQ("latest", l.tags[0]);
  ASSERT_STREQ("v1.0", l.tags[2]);
  l.n = 0;
  ASSERT_OK(store_tag_list(s, "registry.k8s.io", "pause", "B", tag_collect, &l));
  ASSERT_EQ(3, l.n);
  ASSERT_STREQ("latest", l.tags[0]);
  l.n = 0;
  ASSERT_OK(store_tag_list(s, "registry.k8s.io", "pause", "v1.0", tag_collect, &l));
  ASSERT_EQ(0, l.n);
  ASSERT_OK(store_tag_list(s, "registry.k8s.io", "pause", "", tag_collect, &l));
  ASSERT_EQ(6, l.n);
  /* the callback stops the walk and its value is returned */
  l.n = 0;
  l.stop_at = 2;
  ASSERT_EQ(7, store_tag_list(s, "registry.k8s.io", "pause", NULL, tag_collect, &l));
  ASSERT_EQ(2, l.n);
  /* an unknown repository has no tags */
  l.n = 0;
  l.stop_at = 0;
  ASSERT_OK(store_tag_list(s, "registry.k8s.io", "paus", NULL, tag_collect, &l));
  ASSERT_OK(store_tag_list(s, "registry.k8s.i", "pause", NULL, tag_collect, &l));
  ASSERT_EQ(0, l.n);

  /* bad input */
  store_tag_t bad;
  memset(&bad, 0, sizeof(bad));
  snprintf(bad.digest, sizeof(bad.digest), "nonsense");
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_tag_put(s, "u", "r", "t", &bad));
  ASSERT_EQ(-EINVAL, store_tag_put(s, "", "r", "t", &got));
  ASSERT_EQ(-EINVAL, store_tag_put(s, "u", "r", "", &got));
  store_close(s);
}

/* More tags than one internal batch, and a callback that writes into the store. */
struct tag_rewrite {
  store_t *s;
  int n;
  char last[64];
};

static int tag_rewrite_cb(void *arg, const char *tag, const store_tag_t *t)
{
  struct tag_rewrite *r = arg;
  ASSERT(strcmp(r->last, tag) < 0);
  snprintf(r->last, sizeof(r->last), "%s", tag);
  store_tag_t t2 = *t;
  t2.checked_at = 42;
  ASSERT_OK(store_tag_put(r->s, "up", "repo", tag, &t2));
  r->n++;
  return 0;
}

TEST(tags_list_many)
{
  store_t *s = open_store();
  char tag[32];
  for (int i = 0; i < 150; i++) {
    snprintf(tag, sizeof(tag), "t%03d", (i * 37) % 150);
    tag_set(s, "up", "repo", tag, i);
  }
  tag_set(s, "up", "repo2", "t000", 1);
  struct tag_rewrite r = {.s = s, .n = 0, .last = ""};
  ASSERT_OK(store_tag_list(s, "up", "repo", NULL, tag_rewrite_cb, &r));
  ASSERT_EQ(150, r.n);
  ASSERT_STREQ("t149", r.last);
  store_tag_t t;
  ASSERT_OK(store_tag_get(s, "up", "repo", "t077", &t));
  ASSERT_EQ(42, t.checked_at);
  ASSERT_OK(store_tag_get(s, "up", "repo2", "t000", &t));
  ASSERT_EQ(2001, t.checked_at);
  store_close(s);
}

/* ---- running totals --------------------------------------------------------------------- */

TEST(stats_totals)
{
  store_t *s = open_store();
  EXPECT_STATS(s, 0, 0, 0, 0, 0);
  size_t n1, n2;
  unsigned char *b1 = content(4, 1, &n1), *b2 = content(4, 2, &n2);
  char d1[72], d2[72], de[72], dh[72], wrong[72];
  ASSERT_OK(put_blob(s, b1, n1, NULL, -1, d1));
  ASSERT_OK(put_blob(s, b2, n2, NULL, (int64_t)n2, d2));
  ASSERT_OK(put_blob(s, "", 0, NULL, 0, de));
  ASSERT_OK(put_blob(s, "hello", 5, NULL, 5, dh));
  EXPECT_STATS(s, 4, n1 + n2 + 5, 0, 0, 0);

  /* committing digests that are already present changes nothing */
  ASSERT_OK(put_blob(s, b1, n1, d1, (int64_t)n1, NULL));
  ASSERT_OK(put_blob(s, b1, n1, NULL, -1, NULL));
  ASSERT_OK(put_blob(s, "", 0, de, 0, NULL));
  EXPECT_STATS(s, 4, n1 + n2 + 5, 0, 0, 0);
  /* nor do failed commits and aborted writers */
  store_digest_of("other", 5, wrong);
  ASSERT_EQ(PC_E_DIGEST_INVALID, put_blob(s, "new bytes", 9, wrong, -1, NULL));
  ASSERT_EQ(PC_E_SIZE_INVALID, put_blob(s, "new bytes", 9, NULL, 10, NULL));
  store_writer_t *w = NULL;
  ASSERT_OK(store_writer_new(s, NULL, -1, &w));
  ASSERT_OK(store_writer_write(w, "abandoned", 9));
  store_writer_abort(w);
  EXPECT_STATS(s, 4, n1 + n2 + 5, 0, 0, 0);

  /* a manifest is a blob too; putting it again does not count it twice */
  const char *m = "{\"schemaVersion\":2}";
  size_t lm = strlen(m);
  char md[72];
  ASSERT_OK(store_manifest_put(s, m, lm, MT_MANIFEST, NULL, md));
  EXPECT_STATS(s, 5, n1 + n2 + 5 + lm, 1, lm, 0);
  ASSERT_OK(store_manifest_put(s, m, lm, MT_MANIFEST, md, NULL));
  ASSERT_OK(put_blob(s, m, lm, md, (int64_t)lm, NULL)); /* the same bytes as a layer */
  EXPECT_STATS(s, 5, n1 + n2 + 5 + lm, 1, lm, 0);
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_manifest_put(s, "{}", 2, MT_MANIFEST, wrong, NULL));
  /* bytes already stored as a layer become a manifest: one more manifest, no more blobs */
  ASSERT_OK(store_manifest_put(s, "hello", 5, MT_MANIFEST, dh, NULL));
  EXPECT_STATS(s, 5, n1 + n2 + 5 + lm, 2, lm + 5, 0);

  /* tags: a replaced tag is still one tag */
  tag_set(s, "up", "repo", "v1", 1);
  tag_set(s, "up", "repo", "v2", 2);
  tag_set(s, "up2", "repo", "v1", 3);
  tag_set(s, "up", "repo", "v1", 4);
  EXPECT_STATS(s, 5, n1 + n2 + 5 + lm, 2, lm + 5, 3);

  /* a file whose record never made it (a crash between rename and record) is counted once
   * the access-time flush records it */
  char d3[72], p3[PATH_MAX], dir[PATH_MAX];
  store_digest_of("orphan!", 7, d3);
  ASSERT_OK(store_blob_path(s, d3, p3, sizeof(p3)));
  snprintf(dir, sizeof(dir), "%s/blobs/sha256/%.2s", root_dir(), d3 + 7);
  mkdir(dir, 0755);
  write_file(p3, "orphan!", 7);
  EXPECT_STATS(s, 5, n1 + n2 + 5 + lm, 2, lm + 5, 3);
  expect_blob(s, d3, "orphan!", 7);
  expect_blob(s, d1, b1, n1);
  ASSERT_OK(store_flush_atimes(s));
  EXPECT_STATS(s, 6, n1 + n2 + 5 + lm + 7, 2, lm + 5, 3);
  ASSERT_OK(store_flush_atimes(s)); /* access times only: no change */
  EXPECT_STATS(s, 6, n1 + n2 + 5 + lm + 7, 2, lm + 5, 3);

  /* they persist, and reopening does not scan */
  ASSERT_EQ(0, atomic_load(&s->totals_scans));
  store_close(s);
  s = open_store();
  ASSERT_EQ(0, atomic_load(&s->totals_scans));
  EXPECT_STATS(s, 6, n1 + n2 + 5 + lm + 7, 2, lm + 5, 3);
  store_fsck_report_t r;
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(0, r.totals_repaired);
  ASSERT_EQ(6, r.blobs_checked);
  ASSERT_EQ(n1 + n2 + 5 + lm + 7, r.bytes_checked);
  free(b1);
  free(b2);
  store_close(s);
}

/* Raw LMDB writes, bypassing store__wtxn_*: what an older pullcache (or a damaged record)
 * leaves behind. */
static void raw_totals_del(store_t *s)
{
  MDB_txn *txn = NULL;
  MDB_val k = {6, (void *)"totals"};
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_EQ(0, mdb_del(txn, s->stats, &k, NULL));
  ASSERT_EQ(0, mdb_txn_commit(txn));
}

static void raw_totals_put(store_t *s, const void *val, size_t len)
{
  MDB_txn *txn = NULL;
  MDB_val k = {6, (void *)"totals"}, v = {len, (void *)val};
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_EQ(0, mdb_put(txn, s->stats, &k, &v, 0));
  ASSERT_EQ(0, mdb_txn_commit(txn));
}

/* Add a blob record the way a pullcache without totals commits one. */
static void raw_blob_put(store_t *s, const char *digest, uint64_t size)
{
  MDB_txn *txn = NULL;
  unsigned char buf[160];
  store__blob_rec_t r;
  memset(&r, 0, sizeof(r));
  r.size = size;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v = {store__blob_rec_encode(&r, buf), buf};
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_EQ(0, mdb_put(txn, s->blobs, &k, &v, 0));
  ASSERT_EQ(0, mdb_txn_commit(txn));
}

TEST(stats_recomputed_at_open)
{
  store_t *s = open_store();
  size_t n;
  unsigned char *b = content(5, 1, &n);
  ASSERT_OK(put_blob(s, b, n, NULL, -1, NULL));
  ASSERT_OK(put_blob(s, "abcd", 4, NULL, -1, NULL));
  ASSERT_OK(store_manifest_put(s, "{}", 2, MT_MANIFEST, NULL, NULL));
  tag_set(s, "up", "repo", "v1", 1);
  store_stats_t want = {3, n + 6, 1, 2, 1}, got;
  expect_stats_at(__LINE__, s, &want);
  ASSERT_EQ(0, atomic_load(&s->totals_scans)); /* a new store starts at zero without a scan */

  /* a store written by the previous version: no stats database at all */
  MDB_txn *txn = NULL;
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_EQ(0, mdb_drop(txn, s->stats, 1));
  ASSERT_EQ(0, mdb_txn_commit(txn));
  store_close(s);
  s = open_store();
  ASSERT_EQ(1, atomic_load(&s->totals_scans));
  expect_stats_at(__LINE__, s, &want);
  store_close(s);
  s = open_store(); /* recomputed once, stored: the next open does not scan */
  ASSERT_EQ(0, atomic_load(&s->totals_scans));
  expect_stats_at(__LINE__, s, &want);

  /* the record deleted, then an undecodable record */
  raw_totals_del(s);
  ASSERT_EQ(PC_E_CORRUPT, store_stats(s, &got));
  store_close(s);
  s = open_store();
  ASSERT_EQ(1, atomic_load(&s->totals_scans));
  expect_stats_at(__LINE__, s, &want);
  raw_totals_put(s, "\x01xyz", 4);
  ASSERT_EQ(PC_E_CORRUPT, store_stats(s, &got));
  store_close(s);
  s = open_store();
  ASSERT_EQ(1, atomic_load(&s->totals_scans));
  expect_stats_at(__LINE__, s, &want);

  /* a pullcache without totals committed into a store that has them: the record is stale */
  char dx[72], dy[72];
  store_digest_of("x", 1, dx);
  store_digest_of("y", 1, dy);
  raw_blob_put(s, dx, 1000);
  store_close(s);
  s = open_store();
  ASSERT_EQ(1, atomic_load(&s->totals_scans));
  want.blobs++;
  want.blob_bytes += 1000;
  expect_stats_at(__LINE__, s, &want);

  /* left stale while open (store_stats cannot tell): the next write of the store recomputes it */
  raw_blob_put(s, dy, 77);
  tag_set(s, "up", "repo", "v2", 2);
  ASSERT_EQ(2, atomic_load(&s->totals_scans));
  want.blobs++;
  want.blob_bytes += 77;
  want.tags++;
  expect_stats_at(__LINE__, s, &want);
  free(b);
  store_close(s);
}

/* ---- access times, persistence, sweep --------------------------------------------------- */

TEST(atime_batching)
{
  store_t *s = open_store();
  char d[72], d2[72];
  ASSERT_OK(put_blob(s, "atime", 5, NULL, 5, d));
  ASSERT_OK(put_blob(s, "atime2", 6, NULL, 6, d2));
  store_blob_info_t a, b;
  ASSERT_OK(store_blob_stat(s, d, &a));
  ASSERT_EQ(a.created, a.last_access);
  struct timespec ts = {1, 100000000};
  nanosleep(&ts, NULL);
  int fd;
  uint64_t sz;
  /* more opens than the batch holds: the newest survive */
  for (int i = 0; i < 5000; i++) {
    ASSERT_OK(store_blob_open(s, d, &fd, &sz));
    close(fd);
  }
  ASSERT_OK(store_blob_stat(s, d, &b));
  ASSERT_EQ(a.last_access, b.last_access); /* batched, not written yet */
  ASSERT_OK(store_flush_atimes(s));
  ASSERT_OK(store_blob_stat(s, d, &b));
  ASSERT(b.last_access > a.last_access);
  ASSERT_EQ(a.created, b.created);
  ASSERT_EQ(a.size, b.size);
  ASSERT_STREQ(a.media_type, b.media_type);
  ASSERT_OK(store_flush_atimes(s)); /* empty batch */

  /* store_close flushes */
  store_blob_info_t c, e;
  ASSERT_OK(store_blob_stat(s, d2, &c));
  ASSERT_OK(store_blob_open(s, d2, &fd, &sz));
  close(fd);
  store_close(s);
  s = open_store();
  ASSERT_OK(store_blob_stat(s, d2, &e));
  ASSERT(e.last_access > c.last_access);
  store_close(s);
}

TEST(reopen_persists)
{
  store_t *s = open_store();
  size_t n;
  unsigned char *b = content(3, 1, &n);
  char d[72], md[72];
  ASSERT_OK(put_blob(s, b, n, NULL, (int64_t)n, d));
  ASSERT_OK(store_manifest_put(s, "{}", 2, MT_MANIFEST, NULL, md));
  tag_set(s, "up", "repo", "v1", 5);
  store_blob_info_t bi;
  ASSERT_OK(store_blob_stat(s, d, &bi));
  store_close(s);

  s = open_store();
  ASSERT_STREQ(root_dir(), store_root(s));
  expect_blob(s, d, b, n);
  store_blob_info_t bi2;
  ASSERT_OK(store_blob_stat(s, d, &bi2));
  ASSERT_EQ(bi.created, bi2.created);
  ASSERT_STREQ(MT_LAYER, bi2.media_type);
  store_manifest_info_t mi;
  ASSERT_OK(store_manifest_stat(s, md, &mi));
  ASSERT_EQ(2, mi.size);
  store_tag_t t;
  ASSERT_OK(store_tag_get(s, "up", "repo", "v1", &t));
  ASSERT_EQ(5, t.size);
  store_fsck_report_t r;
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(2, r.blobs_checked);
  ASSERT_EQ(n + 2, r.bytes_checked);
  free(b);
  store_close(s);
}

TEST(tmp_sweep_at_open)
{
  store_t *s = open_store();
  store_writer_t *w1 = NULL, *w2 = NULL;
  ASSERT_OK(store_writer_new(s, NULL, -1, &w1));
  ASSERT_OK(store_writer_new(s, NULL, -1, &w2));
  ASSERT(strcmp(store_writer_path(w1), store_writer_path(w2)) != 0);
  ASSERT_OK(store_writer_write(w1, "partial", 7));
  char leftover[PATH_MAX];
  snprintf(leftover, sizeof(leftover), "%s/tmp/leftover-from-a-crash", root_dir());
  write_file(leftover, "junk", 4);
  ASSERT_EQ(3, count_sub("tmp"));
  /* simulate a crash: forget the writers without aborting them */
  store_writer_abort(w1);
  store_writer_abort(w2);
  write_file(leftover, "junk", 4);
  char p2[PATH_MAX];
  snprintf(p2, sizeof(p2), "%s/tmp/another", root_dir());
  write_file(p2, "", 0);
  store_close(s);
  ASSERT_EQ(2, count_sub("tmp"));
  s = open_store();
  ASSERT_EQ(0, count_sub("tmp"));
  store_close(s);
}

/* ---- concurrency ------------------------------------------------------------------------ */

#define CONC_N 300

struct conc {
  store_t *s;
  char digests[CONC_N][72];
  uint64_t prefix[CONC_N + 1]; /**< prefix[k]: the bytes of blobs 0..k-1 */
  atomic_int done;
  atomic_long opened;
  atomic_long absent;
  atomic_long stats_calls;
};

static void *conc_reader(void *arg)
{
  struct conc *c = arg;
  unsigned seed = (unsigned)(uintptr_t)pthread_self();
  while (!atomic_load(&c->done)) {
    unsigned i = (unsigned)rand_r(&seed) % CONC_N;
    int fd = -1;
    uint64_t sz = 0;
    int rc = store_blob_open(c->s, c->digests[i], &fd, &sz);
    if (rc == PC_E_NOTFOUND) {
      atomic_fetch_add(&c->absent, 1);
      continue;
    }
    ASSERT_OK(rc);
    size_t n;
    unsigned char *want = content(9, i, &n);
    unsigned char *got = pc_xmalloc(n + 1);
    ASSERT_EQ(n, sz);
    ASSERT_EQ(n, pread(fd, got, n + 1, 0));
    ASSERT(memcmp(want, got, n) == 0);
    free(want);
    free(got);
    close(fd);
    store_blob_info_t info;
    ASSERT_OK(store_blob_stat(c->s, c->digests[i], &info));
    ASSERT_EQ(n, info.size);
    atomic_fetch_add(&c->opened, 1);
  }
  return NULL;
}

/* store_stats from another thread while commits run. Blobs are committed one after another
 * (also when the flusher records a file first), so a snapshot with k blobs holds exactly blobs
 * 0..k-1: its byte total must be theirs, i.e. count and bytes come from one snapshot. */
static void *conc_stats(void *arg)
{
  struct conc *c = arg;
  store_stats_t st;
  while (!atomic_load(&c->done)) {
    ASSERT_OK(store_stats(c->s, &st));
    ASSERT(st.blobs <= CONC_N);
    ASSERT_EQ(c->prefix[st.blobs], st.blob_bytes);
    ASSERT_EQ(0, st.manifests);
    atomic_fetch_add(&c->stats_calls, 1);
  }
  return NULL;
}

static void *conc_flusher(void *arg)
{
  struct conc *c = arg;
  while (!atomic_load(&c->done)) {
    ASSERT_OK(store_flush_atimes(c->s));
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

TEST(concurrent_readers)
{
  static struct conc c;
  c.s = open_store();
  for (unsigned i = 0; i < CONC_N; i++) {
    size_t n;
    unsigned char *b = content(9, i, &n);
    store_digest_of(b, n, c.digests[i]);
    c.prefix[i + 1] = c.prefix[i] + n;
    free(b);
  }
  pthread_t th[6];
  for (int i = 0; i < 4; i++)
    ASSERT_EQ(0, pthread_create(&th[i], NULL, conc_reader, &c));
  ASSERT_EQ(0, pthread_create(&th[4], NULL, conc_flusher, &c));
  ASSERT_EQ(0, pthread_create(&th[5], NULL, conc_stats, &c));
  for (unsigned i = 0; i < CONC_N; i++) {
    size_t n;
    unsigned char *b = content(9, i, &n);
    char d[72];
    ASSERT_OK(put_blob(c.s, b, n, c.digests[i], (int64_t)n, d));
    free(b);
  }
  atomic_store(&c.done, 1);
  for (int i = 0; i < 6; i++)
    ASSERT_EQ(0, pthread_join(th[i], NULL));
  ASSERT(atomic_load(&c.stats_calls) > 0);
  EXPECT_STATS(c.s, CONC_N, c.prefix[CONC_N], 0, 0, 0);
  for (unsigned i = 0; i < CONC_N; i++) {
    size_t n;
    unsigned char *b = content(9, i, &n);
    expect_blob(c.s, c.digests[i], b, n);
    free(b);
  }
  fprintf(stderr, "concurrent: %ld opens verified, %ld not-yet-present\n",
          (long)atomic_load(&c.opened), (long)atomic_load(&c.absent));
  ASSERT(atomic_load(&c.opened) > 0);
  ASSERT_EQ(0, count_sub("tmp"));
  store_close(c.s);
}

/* ---- crash safety ----------------------------------------------------------------------- */

#define CRASH_ROUNDS 20
#define CRASH_MAX 100000

/* The child: commit blobs (and every third a tag, every fifth a manifest) as fast as it can,
 * reporting each acknowledged index on the pipe. */
_Noreturn static void crash_child(unsigned round, int ack)
{
  store_t *s = NULL;
  if (store_open(root_dir(), NULL, &s) != 0)
    _exit(3);
  for (unsigned i = 0; i < CRASH_MAX; i++) {
    size_t n;
    unsigned char *b = content(100 + round, i, &n);
    char d[72], got[72];
    store_digest_of(b, n, d);
    if (put_blob(s, b, n, d, (int64_t)n, got) != 0)
      _exit(4);
    if (i % 5 == 0 && store_manifest_put(s, b, n / 2 + 1, MT_MANIFEST, NULL, NULL) != 0)
      _exit(5);
    free(b);
    if (i % 3 == 0) {
      char tag[32];
      store_tag_t t;
      memset(&t, 0, sizeof(t));
      memcpy(t.digest, d, 72);
      t.size = n;
      snprintf(tag, sizeof(tag), "r%u-%u", round, i);
      if (store_tag_put(s, "up", "crash", tag, &t) != 0)
        _exit(6);
    }
    if (write(ack, &i, sizeof(i)) != (ssize_t)sizeof(i))
      _exit(7);
  }
  _exit(0);
}

TEST(crash_safety)
{
  unsigned seed = (unsigned)time(NULL);
  fprintf(stderr, "crash_safety seed %u\n", seed);
  srand(seed);
  long total_acked = 0;
  for (unsigned round = 0; round < CRASH_ROUNDS; round++) {
    int p[2];
    ASSERT_EQ(0, pipe(p));
    fflush(NULL);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      close(p[0]);
      crash_child(round, p[1]);
    }
    close(p[1]);
    unsigned idx, acked = 0;
    ssize_t r;
    /* Odd rounds first wait for one acknowledged commit (however slow the disk is), so the
     * kill lands inside the commit loop; even rounds may kill during store_open. */
    if (round % 2 == 1) {
      ASSERT_EQ(sizeof(idx), read(p[0], &idx, sizeof(idx)));
      ASSERT_EQ(0, idx);
      acked = 1;
    }
    long us = round == 0 ? 0 : (long)(rand() % 120000);
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
    ASSERT_EQ(0, kill(pid, SIGKILL));
    int status;
    ASSERT_EQ(pid, waitpid(pid, &status, 0));
    ASSERT(WIFSIGNALED(status));
    while ((r = read(p[0], &idx, sizeof(idx))) == (ssize_t)sizeof(idx)) {
      ASSERT_EQ(acked, idx);
      acked++;
    }
    ASSERT_EQ(0, r);
    close(p[0]);
    total_acked += acked;

    store_t *s = open_store();
    ASSERT_EQ(0, count_sub("tmp"));
    /* the totals were committed with the records: never stale after a kill (no scan at open),
     * and equal to a recount of the records */
    ASSERT_EQ(0, atomic_load(&s->totals_scans));
    EXPECT_STATS_RECOUNT(s);
    /* every acknowledged commit survived, with its bytes and its tag */
    for (unsigned i = 0; i < acked; i++) {
      size_t n;
      unsigned char *b = content(100 + round, i, &n);
      char d[72];
      store_digest_of(b, n, d);
      expect_blob(s, d, b, n);
      if (i % 5 == 0) {
        char md[72];
        store_manifest_info_t mi;
        store_digest_of(b, n / 2 + 1, md);
        ASSERT_OK(store_manifest_stat(s, md, &mi));
        ASSERT_EQ(n / 2 + 1, mi.size);
      }
      if (i % 3 == 0) {
        char tag[32];
        store_tag_t t;
        snprintf(tag, sizeof(tag), "r%u-%u", round, i);
        ASSERT_OK(store_tag_get(s, "up", "crash", tag, &t));
        ASSERT_STREQ(d, t.digest);
      }
      free(b);
    }
    int files = check_blob_files();
    store_fsck_report_t rep;
    int rc = store_fsck(s, stderr, &rep);
    ASSERT(rc == 0 || rc == PC_E_CORRUPT);
    ASSERT_EQ(0, rep.corrupt);
    ASSERT_EQ(0, rep.missing_files);
    ASSERT_EQ(0, rep.stray_files);
    ASSERT(rep.orphan_files <= 1); /* at most the one commit cut between rename and record */
    ASSERT_EQ(0, rep.totals_repaired);
    ASSERT_EQ(files, rep.blobs_checked);
    EXPECT_STATS_RECOUNT(s);
    ASSERT_OK(store_fsck(s, NULL, &rep)); /* and it is clean now */
    /* now every file has its record and no record lacks its file: the totals are the files' */
    store_stats_t st;
    ASSERT_OK(store_stats(s, &st));
    ASSERT_EQ(rep.blobs_checked, st.blobs);
    ASSERT_EQ(rep.bytes_checked, st.blob_bytes);
    ASSERT(st.tags >= (uint64_t)(total_acked + 2) / 3);
    store_close(s);
    fprintf(stderr, "round %u: killed after %ld us, %u acknowledged, %d files\n", round, us, acked,
            files);
  }
  ASSERT(total_acked > 0);
}

/* ---- fsck ------------------------------------------------------------------------------- */

TEST(fsck_repairs)
{
  store_t *s = open_store();
  char a[72], m[72], ok[72], orphan[72], path[PATH_MAX], dir[PATH_MAX];
  ASSERT_OK(put_blob(s, "blob-a-contents", 15, NULL, -1, a));
  ASSERT_OK(store_manifest_put(s, "{\"m\":1}", 7, MT_MANIFEST, NULL, m));
  ASSERT_OK(put_blob(s, "fine", 4, NULL, -1, ok));
  store_fsck_report_t r;
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(3, r.blobs_checked);

  /* flip a byte in a committed blob */
  ASSERT_OK(store_blob_path(s, a, path, sizeof(path)));
  int fd = open(path, O_RDWR);
  ASSERT(fd >= 0);
  ASSERT_EQ(1, pwrite(fd, "B", 1, 0));
  close(fd);
  /* lose the manifest's file (both its blob and manifest records are now dangling) */
  ASSERT_OK(store_blob_path(s, m, path, sizeof(path)));
  ASSERT_EQ(0, unlink(path));
  /* a verified file with no record */
  store_digest_of("orphan", 6, orphan);
  ASSERT_OK(store_blob_path(s, orphan, path, sizeof(path)));
  snprintf(dir, sizeof(dir), "%s/blobs/sha256/%.2s", root_dir(), orphan + 7);
  mkdir(dir, 0755);
  write_file(path, "orphan", 6);
  /* stray names */
  snprintf(dir, sizeof(dir), "%s/blobs/sha256/zz", root_dir());
  ASSERT_EQ(0, mkdir(dir, 0755));
  snprintf(path, sizeof(path), "%s/blobs/sha256/%.2s/not-a-digest", root_dir(), ok + 7);
  write_file(path, "x", 1);

  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  ASSERT(out != NULL);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, out, &r));
  fclose(out);
  fprintf(stderr, "%s", buf);
  ASSERT_EQ(3, r.blobs_checked);
  ASSERT_EQ(1, r.corrupt);
  ASSERT_EQ(2, r.missing_files);
  ASSERT_EQ(1, r.orphan_files);
  ASSERT_EQ(2, r.stray_files);
  ASSERT(strstr(buf, "corrupt:") && strstr(buf, a));
  ASSERT(strstr(buf, "missing:") && strstr(buf, m));
  ASSERT(strstr(buf, "orphan:") && strstr(buf, orphan));
  ASSERT(strstr(buf, "stray:") && strstr(buf, "not-a-digest"));
  free(buf);

  /* the corrupt blob is quarantined and no longer served */
  int f2;
  uint64_t sz;
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_open(s, a, &f2, &sz));
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(s, a, NULL));
  ASSERT_EQ(1, count_sub("quarantine"));
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(s, m, NULL));
  expect_blob(s, orphan, "orphan", 6);
  expect_blob(s, ok, "fine", 4);

  /* a second pass finds only the strays (reported, never deleted): nothing was repaired, so
   * the store is healthy */
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(0, r.corrupt + r.missing_files + r.orphan_files);
  ASSERT_EQ(2, r.stray_files);
  ASSERT_EQ(0, rmdir(dir));
  ASSERT_EQ(0, unlink(path));
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(2, r.blobs_checked);
  ASSERT_EQ(10, r.bytes_checked);

  /* the blob can be fetched again after quarantine */
  char a2[72];
  ASSERT_OK(put_blob(s, "blob-a-contents", 15, a, 15, a2));
  expect_blob(s, a, "blob-a-contents", 15);
  store_close(s);
}

/* The totals follow every fsck repair: quarantine, dropped records, recorded files, a record
 * whose size was wrong. */
TEST(stats_follow_fsck_repairs)
{
  store_t *s = open_store();
  char a[72], m[72], ok[72], orphan[72], path[PATH_MAX], dir[PATH_MAX];
  store_fsck_report_t r;
  ASSERT_OK(put_blob(s, "blob-a-contents", 15, NULL, -1, a));
  ASSERT_OK(store_manifest_put(s, "{\"m\":1}", 7, MT_MANIFEST, NULL, m));
  ASSERT_OK(put_blob(s, "fine", 4, NULL, -1, ok));
  EXPECT_STATS(s, 3, 26, 1, 7, 0);

  /* a corrupted blob is quarantined: the totals drop by it */
  ASSERT_OK(store_blob_path(s, a, path, sizeof(path)));
  int fd = open(path, O_RDWR);
  ASSERT(fd >= 0);
  ASSERT_EQ(1, pwrite(fd, "B", 1, 0));
  close(fd);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, NULL, &r));
  ASSERT_EQ(1, r.corrupt);
  ASSERT_EQ(0, r.totals_repaired);
  EXPECT_STATS(s, 2, 11, 1, 7, 0);

  /* a manifest's file lost: both of its records go, and their sizes */
  ASSERT_OK(store_blob_path(s, m, path, sizeof(path)));
  ASSERT_EQ(0, unlink(path));
  EXPECT_STATS(s, 2, 11, 1, 7, 0); /* records, not files, until fsck */
  /* a verified file without a record is recorded and counted */
  store_digest_of("orphan", 6, orphan);
  ASSERT_OK(store_blob_path(s, orphan, path, sizeof(path)));
  snprintf(dir, sizeof(dir), "%s/blobs/sha256/%.2s", root_dir(), orphan + 7);
  mkdir(dir, 0755);
  write_file(path, "orphan", 6);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, NULL, &r));
  ASSERT_EQ(2, r.missing_files);
  ASSERT_EQ(1, r.orphan_files);
  ASSERT_EQ(0, r.totals_repaired);
  EXPECT_STATS(s, 2, 10, 0, 0, 0);

  /* a record with the wrong size, counted as such, is corrected by fsck: so are the totals */
  store__wtxn_t w;
  store__blob_rec_t rec;
  memset(&rec, 0, sizeof(rec));
  rec.size = 999;
  ASSERT_OK(store__wtxn_begin(s, &w));
  ASSERT_OK(store__wtxn_put_blob(s, &w, ok, &rec));
  ASSERT_OK(store__wtxn_commit(s, &w));
  EXPECT_STATS(s, 2, 1005, 0, 0, 0);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, NULL, &r));
  ASSERT_EQ(1, r.orphan_files);
  ASSERT_EQ(0, r.totals_repaired);
  EXPECT_STATS(s, 2, 10, 0, 0, 0);
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(0, atomic_load(&s->totals_scans));
  store_close(s);
}

/* A totals record that is well formed and current but wrong (what a bug would leave) is
 * trusted by store_stats and repaired by fsck, which reports it. */
TEST(fsck_repairs_totals)
{
  store_t *s = open_store();
  char d[72];
  ASSERT_OK(put_blob(s, "some bytes", 10, NULL, -1, d));
  ASSERT_OK(store_manifest_put(s, "{\"a\":2}", 7, MT_MANIFEST, NULL, NULL));
  tag_set(s, "up", "repo", "v1", 1);
  store_stats_t want = {2, 17, 1, 7, 1}, got;
  expect_stats_at(__LINE__, s, &want);

  store__totals_t bad = {17 + 12345, 8, 0};
  MDB_txn *txn = NULL;
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_OK(store__totals_write(s, txn, &bad)); /* stamped with this txn: current */
  ASSERT_EQ(0, mdb_txn_commit(txn));
  ASSERT_OK(store_stats(s, &got));
  ASSERT_EQ(17 + 12345, got.blob_bytes);
  ASSERT_EQ(8, got.manifest_bytes);

  char *buf = NULL;
  size_t len = 0;
  store_fsck_report_t r;
  FILE *out = open_memstream(&buf, &len);
  ASSERT(out != NULL);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, out, &r));
  fclose(out);
  fprintf(stderr, "%s", buf);
  ASSERT_EQ(1, r.totals_repaired);
  ASSERT_EQ(0, r.corrupt + r.missing_files + r.orphan_files + r.stray_files);
  ASSERT(strstr(buf, "totals:") && strstr(buf, "12362") && strstr(buf, "rewritten"));
  free(buf);
  expect_stats_at(__LINE__, s, &want);
  ASSERT_OK(store_fsck(s, NULL, &r));
  ASSERT_EQ(0, r.totals_repaired);

  /* a record deleted under an open store: store_stats refuses, fsck rewrites it */
  raw_totals_del(s);
  ASSERT_EQ(PC_E_CORRUPT, store_stats(s, &got));
  buf = NULL;
  out = open_memstream(&buf, &len);
  ASSERT(out != NULL);
  ASSERT_EQ(PC_E_CORRUPT, store_fsck(s, out, &r));
  fclose(out);
  ASSERT_EQ(1, r.totals_repaired);
  ASSERT(strstr(buf, "totals: the totals record is missing"));
  free(buf);
  expect_stats_at(__LINE__, s, &want);

  /* the CLI: exit 1 when it repaired the totals, then 0 */
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_OK(store__totals_write(s, txn, &bad));
  ASSERT_EQ(0, mdb_txn_commit(txn));
  store_close(s);
  char *args[] = {(char *)"fsck", (char *)"--store", root_buf, NULL};
  ASSERT_EQ(1, cmd_fsck(3, args));
  ASSERT_EQ(0, cmd_fsck(3, args));
  s = open_store();
  ASSERT_EQ(0, atomic_load(&s->totals_scans));
  expect_stats_at(__LINE__, s, &want);
  store_close(s);
}

/* cmd_fsck is the CLI glue around store_fsck. */
TEST(cmd_fsck_exit_codes)
{
  store_t *s = open_store();
  char d[72], path[PATH_MAX];
  ASSERT_OK(put_blob(s, "cmd", 3, NULL, -1, d));
  store_close(s);
  char *args[] = {(char *)"fsck", (char *)"--store", root_buf, NULL};
  ASSERT_EQ(0, cmd_fsck(3, args));
  s = open_store();
  ASSERT_OK(store_blob_path(s, d, path, sizeof(path)));
  store_close(s);
  write_file(path, "CMD", 3);
  ASSERT_EQ(1, cmd_fsck(3, args));
  ASSERT_EQ(0, cmd_fsck(3, args));
  char *bad[] = {(char *)"fsck", (char *)"--bogus", NULL};
  ASSERT_EQ(2, cmd_fsck(2, bad));
  char *help[] = {(char *)"fsck", (char *)"--help", NULL};
  ASSERT_EQ(0, cmd_fsck(2, help));
  /* a store held by another opener: error, not a sweep of its temp files */
  s = open_store();
  ASSERT_EQ(2, cmd_fsck(3, args));
  store_close(s);
}

/* Where content was seen (store/scope.c): put/has per (upstream, repository, digest), the first
 * sight kept, bad keys refused; a store that had content before "seen" existed is legacy. */
TEST(seen_records_and_legacy)
{
  store_t *s = open_store();
  const char *dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
  ASSERT_EQ(0, store_seen_legacy(s)); /* empty store: nothing from before */
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "team/secret", dg));
  ASSERT_OK(store_seen_put(s, "up", "team/secret", dg, 100));
  ASSERT_OK(store_seen_put(s, "up", "team/secret", dg, 200));
  ASSERT_OK(store_seen_has(s, "up", "team/secret", dg));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "anything/else", dg));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "other", "team/secret", dg));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "team", dg));
  ASSERT_EQ(-EINVAL, store_seen_put(s, "", "r", dg, 1));
  ASSERT_EQ(-EINVAL, store_seen_has(s, "up", "", dg));
  /* many in one transaction: the new ones recorded, the known one kept, nothing for nothing */
  const char *many[] = {dg,
                        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
                        "sha256:2222222222222222222222222222222222222222222222222222222222222222"};
  ASSERT_OK(store_seen_put_many(s, "up", "team/secret", many, 3, 300));
  for (int i = 0; i < 3; i++)
    ASSERT_OK(store_seen_has(s, "up", "team/secret", many[i]));
  ASSERT_OK(store_seen_put_many(s, "up", "team/secret", many, 3, 400));
  ASSERT_OK(store_seen_put_many(s, "up", "team/secret", many, 0, 400));
  ASSERT_EQ(-EINVAL, store_seen_put_many(s, "", "r", many, 3, 1));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "other/repo", many[1]));
  /* a blob, then the "seen" database dropped (a store from before scoping): legacy at open */
  unsigned char b[] = "legacy content";
  ASSERT_OK(put_blob(s, b, sizeof(b), NULL, -1, NULL));
  MDB_txn *txn;
  ASSERT_OK(mdb_txn_begin(s->env, NULL, 0, &txn));
  ASSERT_OK(mdb_drop(txn, s->seen, 1));
  ASSERT_OK(mdb_txn_commit(txn));
  store_close(s);
  s = open_store();
  ASSERT_EQ(1, store_seen_legacy(s));
  ASSERT_EQ(PC_E_NOTFOUND, store_seen_has(s, "up", "team/secret", dg));
  store_close(s);
  s = open_store(); /* the mark is kept */
  ASSERT_EQ(1, store_seen_legacy(s));
  store_close(s);
}
