/* pc-evictbench — eviction of K blobs out of an N-blob store, and what it does to hits.
 *
 *   pc-evictbench DIR N K      build DIR with N 32-byte blobs (files written directly, records
 *                              in bulk transactions through store-int: minutes, not hours),
 *                              last access i seconds after a base for blob i; then
 *   1. hits/s without eviction: one thread opens (store_blob_open_info + close) random blobs
 *      from the newest half for HIT_MS;
 *   2. store_evict down to (N - K) blobs' bytes, while the same thread keeps hitting: the
 *      eviction's time (plan and whole) and the hits/s during it;
 *   prints both rates and their ratio side by side. Not part of ctest (a million files).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "store/evict.h"
#include "store/store-int.h"

#define BLOB 32
#define HIT_MS 3000
#define BULK 20000

static char (*digests)[72];
static unsigned long nblobs;
static atomic_int running;
static atomic_ulong hits;

static void make(unsigned long i, unsigned char *b)
{
  uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ULL + 7;
  for (int k = 0; k < BLOB; k++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[k] = (unsigned char)x;
  }
}

static void build(store_t *s, int64_t base)
{
  unsigned char b[BLOB];
  char path[PATH_MAX], dir[PATH_MAX];
  for (unsigned long i = 0; i < nblobs; i += BULK) {
    store__wtxn_t w;
    unsigned long end = i + BULK < nblobs ? i + BULK : nblobs;
    for (unsigned long j = i; j < end; j++) {
      make(j, b);
      store_digest_of(b, BLOB, digests[j]);
      store_blob_path(s, digests[j], path, sizeof(path));
      memcpy(dir, path, sizeof(dir));
      *strrchr(dir, '/') = '\0';
      mkdir(dir, 0755);
      int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0 || write(fd, b, BLOB) != BLOB)
        pc_fatal("write %s: %s", path, strerror(errno));
      close(fd);
    }
    if (store__wtxn_begin(s, &w) != 0)
      pc_fatal("txn");
    for (unsigned long j = i; j < end; j++) {
      store__blob_rec_t r;
      memset(&r, 0, sizeof(r));
      r.size = BLOB;
      r.created = base;
      r.last_access = base + (int64_t)j;
      if (store__wtxn_put_blob(s, &w, digests[j], &r) != 0)
        pc_fatal("put");
    }
    if (store__wtxn_commit(s, &w) != 0)
      pc_fatal("commit");
  }
}

static void *hitter(void *arg)
{
  store_t *s = arg;
  uint64_t x = 88172645463325252ULL;
  while (atomic_load(&running)) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    unsigned long i = nblobs / 2 + (unsigned long)(x % (nblobs - nblobs / 2));
    int fd;
    store_blob_info_t info;
    if (store_blob_open_info(s, digests[i], &fd, &info) != 0)
      pc_fatal("hit %lu failed", i);
    close(fd);
    atomic_fetch_add(&hits, 1);
  }
  return NULL;
}

int main(int argc, char **argv)
{
  uint64_t nv, kv;
  if (argc != 4 || pc_parse_u64(argv[2], 100000000, &nv) < 0 ||
      pc_parse_u64(argv[3], 100000000, &kv) < 0 || kv > nv || nv < 2) {
    fprintf(stderr, "usage: pc-evictbench DIR N K   (K of N blobs evicted)\n");
    return 2;
  }
  nblobs = (unsigned long)nv;
  digests = pc_xcalloc(nblobs, 72);
  store_t *s = NULL;
  if (store_open(argv[1], NULL, &s) != 0)
    pc_fatal("open");
  uint64_t t0 = pc_mono_ms();
  build(s, pc_now_sec() - 10 * (int64_t)nblobs);
  printf("build: %lu blobs in %llu ms\n", nblobs, (unsigned long long)(pc_mono_ms() - t0));
  fflush(stdout);

  pthread_t th;
  atomic_store(&running, 1);
  pthread_create(&th, NULL, hitter, s);
  usleep(200000);
  unsigned long h0 = atomic_load(&hits);
  t0 = pc_mono_ms();
  usleep(HIT_MS * 1000);
  double base_rate = (double)(atomic_load(&hits) - h0) * 1000.0 / (double)(pc_mono_ms() - t0);

  store_evict_opts_t o = {.target = (nv - kv) * BLOB, .reason = STORE_EVICT_MANUAL};
  store_evict_report_t r;
  h0 = atomic_load(&hits);
  t0 = pc_mono_ms();
  int rc = store_evict(s, &o, &r);
  uint64_t ms = pc_mono_ms() - t0;
  double ev_rate = (double)(atomic_load(&hits) - h0) * 1000.0 / (double)(ms ? ms : 1);
  atomic_store(&running, 0);
  pthread_join(th, NULL);
  if (rc)
    pc_fatal("evict: %s", pc_strerror(rc));
  printf("evict: %llu of %lu blobs (%llu bytes) in %llu ms (plan %llu ms, %llu records), "
         "kept_in_use=%llu\n",
         (unsigned long long)r.blobs, nblobs, (unsigned long long)r.bytes, (unsigned long long)r.ms,
         (unsigned long long)r.plan_ms, (unsigned long long)r.records,
         (unsigned long long)r.skipped);
  printf("hits/s without eviction: %.0f\nhits/s during eviction:  %.0f\nratio (during/without): "
         "%.2f\n",
         base_rate, ev_rate, ev_rate / base_rate);
  store_close(s);
  free(digests);
  return 0;
}
