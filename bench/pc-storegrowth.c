/* pc-storegrowth — how the store's costs grow with its size: store_open, a record lookup and a
 * commit on a store of N blobs.
 *
 *   pc-storegrowth DIR N [K]
 *
 * Builds DIR as a synthetic store of N blob records (LMDB only, in bulk write transactions of
 * 20,000: a million real files would cost gigabytes of inodes and pages on tmpfs, ten million
 * would not fit), then measures, on that store:
 *   open_ms          store_open (it reads the totals record; no scan of the records)
 *   lookup_us        the mean of K random record lookups, each as a warm hit does it (a read
 *                    transaction, mdb_get, decode), K default 100,000
 *   commit_per_s     K / 100 (at least 50) real commits through the store API (temp file, write,
 *                    fsync, rename, LMDB write transaction) of new 1 KiB blobs
 * and prints them as "key: value" lines after "fill_s: <seconds to build>". DIR must not exist
 * or be empty. Not part of ctest (bench/compare runs it for 10k, 1M and, with --store-10m, 10M).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/num.h"
#include "core/pc.h"
#include "store/store-int.h"
#include "store/store.h"

#define BULK 20000

static double mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void digest_of(uint64_t i, char out[72])
{
  uint64_t x = i * 0x9e3779b97f4a7c15ULL + 11;
  store_digest_of(&x, sizeof(x), out);
}

int main(int argc, char **argv)
{
  uint64_t n = 0, k = 100000;
  if (argc < 3 || pc_parse_u64(argv[2], 100000000, &n) < 0 || n < 1 ||
      (argc > 3 && (pc_parse_u64(argv[3], 100000000, &k) < 0 || k < 1))) {
    fprintf(stderr, "usage: pc-storegrowth DIR N [K] (N, K: 1 to 100000000)\n");
    return 2;
  }
  const char *dir = argv[1];
  store_opts_t o = {.map_size = (n * 400 > (4ULL << 30)) ? n * 400 : 0};
  store_t *s = NULL;
  int rc = store_open(dir, &o, &s);
  if (rc)
    pc_fatal("open: %s", pc_strerror(rc));
  double t0 = mono_us();
  for (uint64_t i = 0; i < n; i += BULK) {
    store__wtxn_t w;
    uint64_t end = i + BULK < n ? i + BULK : n;
    if (store__wtxn_begin(s, &w) != 0)
      pc_fatal("txn");
    for (uint64_t j = i; j < end; j++) {
      char d[72];
      store__blob_rec_t r;
      memset(&r, 0, sizeof(r));
      digest_of(j, d);
      r.size = 1024;
      r.created = 1700000000;
      r.last_access = 1700000000 + (int64_t)j;
      memcpy(r.media_type, "application/octet-stream", 25);
      if (store__wtxn_put_blob(s, &w, d, &r) != 0)
        pc_fatal("put");
    }
    if (store__wtxn_commit(s, &w) != 0)
      pc_fatal("commit");
  }
  printf("fill_s: %.1f\n", (mono_us() - t0) / 1e6);
  store_close(s);

  t0 = mono_us();
  rc = store_open(dir, &o, &s);
  if (rc)
    pc_fatal("open: %s", pc_strerror(rc));
  printf("open_ms: %.2f\n", (mono_us() - t0) / 1e3);

  uint64_t x = 88172645463325252ULL, found = 0;
  t0 = mono_us();
  for (uint64_t i = 0; i < k; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    char d[72];
    digest_of(x % n, d);
    MDB_txn *txn = NULL;
    MDB_val key = {STORE__SHA256_LEN, d}, v;
    store__blob_rec_t r;
    if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
      pc_fatal("read txn");
    if (mdb_get(txn, s->blobs, &key, &v) == 0 && store__blob_rec_decode(&v, &r) == 0)
      found++;
    mdb_txn_abort(txn);
  }
  double lus = (mono_us() - t0) / (double)k;
  if (found != k)
    pc_fatal("lookups: %llu of %llu found", (unsigned long long)found, (unsigned long long)k);
  printf("lookup_us: %.3f\n", lus);

  uint64_t nc = k / 100 < 50 ? 50 : k / 100;
  unsigned char b[1024];
  t0 = mono_us();
  for (uint64_t i = 0; i < nc; i++) {
    store_writer_t *w = NULL;
    char d[72];
    for (size_t j = 0; j < sizeof(b); j++)
      b[j] = (unsigned char)((i * 131 + j * 7) ^ (i >> 8));
    memcpy(b, &i, sizeof(i));
    rc = store_writer_new(s, NULL, (int64_t)sizeof(b), &w);
    if (rc == 0)
      rc = store_writer_write(w, b, sizeof(b));
    if (rc == 0)
      rc = store_writer_commit(w, "application/octet-stream", d);
    else
      store_writer_abort(w);
    if (rc)
      pc_fatal("commit %llu: %s", (unsigned long long)i, pc_strerror(rc));
  }
  printf("commit_per_s: %.0f\n", (double)nc / ((mono_us() - t0) / 1e6));
  store_close(s);
  return 0;
}
