/* pc-storebench — fill a store with N small blobs, then time store_open, lookups and fsck.
 *
 *   pc-storebench [--no-fsck] DIR N [THREADS]   fill DIR with N new blobs (64..1087 bytes),
 *                                               then measure
 *   pc-storebench [--no-fsck] DIR 0             measure an existing store only
 *
 * Prints "store_open_ms: <ms>" (bench/compare reads it), then the time of store_stats on the
 * opened store (the first call, and the mean of 1000 more). Not part of ctest: run by hand or by
 * bench/compare (100,000 blobs take minutes to fill on a disk, every commit fsyncs; tmpfs makes
 * that cheap).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "store/store.h"

struct fill {
  store_t *s;
  unsigned long from, to;
  unsigned seed;
  char (*digests)[72];
};

static double mono_us(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void make(unsigned seed, unsigned long i, unsigned char *b, size_t *n)
{
  uint64_t x = ((uint64_t)seed << 40 ^ i) * 0x9e3779b97f4a7c15ULL + 1;
  *n = 64 + (size_t)(x >> 50) % 1024;
  for (size_t k = 0; k < *n; k++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b[k] = (unsigned char)x;
  }
}

static void *fill_thread(void *arg)
{
  struct fill *f = arg;
  unsigned char b[1100];
  for (unsigned long i = f->from; i < f->to; i++) {
    size_t n;
    store_writer_t *w = NULL;
    make(f->seed, i, b, &n);
    int rc = store_writer_new(f->s, NULL, (int64_t)n, &w);
    if (rc == 0)
      rc = store_writer_write(w, b, n);
    if (rc == 0)
      rc = store_writer_commit(w, "application/octet-stream", f->digests[i]);
    else
      store_writer_abort(w);
    if (rc)
      pc_fatal("commit %lu: %s", i, pc_strerror(rc));
  }
  return NULL;
}

int main(int argc, char **argv)
{
  int fsck = 1;
  if (argc > 1 && strcmp(argv[1], "--no-fsck") == 0) {
    fsck = 0;
    argv++;
    argc--;
  }
  if (argc < 3) {
    fprintf(stderr, "usage: pc-storebench [--no-fsck] DIR N [THREADS]\n");
    return 2;
  }
  const char *dir = argv[1];
  uint64_t nv = 0, tv = 2;
  if (pc_parse_u64(argv[2], 100000000, &nv) < 0 ||
      (argc > 3 && pc_parse_u64(argv[3], 16, &tv) < 0) || tv < 1) {
    fprintf(stderr, "pc-storebench: N is a count (at most 100000000), THREADS 1 to 16\n");
    return 2;
  }
  unsigned long n = (unsigned long)nv;
  int threads = (int)tv;
  store_t *s = NULL;
  int rc;
  uint64_t t0;

  if (n) {
    char(*digests)[72] = pc_xcalloc(n, 72);
    struct fill f[16];
    pthread_t th[16];
    rc = store_open(dir, NULL, &s);
    if (rc)
      pc_fatal("open: %s", pc_strerror(rc));
    t0 = pc_mono_ms();
    for (int t = 0; t < threads; t++) {
      f[t] = (struct fill){s, n * (unsigned long)t / (unsigned long)threads,
                           n * (unsigned long)(t + 1) / (unsigned long)threads,
                           (unsigned)time(NULL), digests};
      pthread_create(&th[t], NULL, fill_thread, &f[t]);
    }
    for (int t = 0; t < threads; t++)
      pthread_join(th[t], NULL);
    uint64_t ms = pc_mono_ms() - t0;
    printf("fill: %lu blobs in %llu ms (%.0f commits/s, %d threads)\n", n, (unsigned long long)ms,
           ms ? 1000.0 * (double)n / (double)ms : 0.0, threads);

    /* lookups: stat + open of every blob */
    t0 = pc_mono_ms();
    for (unsigned long i = 0; i < n; i++) {
      int fd;
      uint64_t size;
      if (store_blob_stat(s, digests[i], NULL) != 0 ||
          store_blob_open(s, digests[i], &fd, &size) != 0)
        pc_fatal("lookup %lu failed", i);
      close(fd);
    }
    ms = pc_mono_ms() - t0;
    printf("lookup: %lu stat+open in %llu ms (%.2f us each)\n", n, (unsigned long long)ms,
           1000.0 * (double)ms / (double)n);
    t0 = pc_mono_ms();
    store_close(s);
    printf("close (flushes %lu atimes, capped at the batch size): %llu ms\n", n,
           (unsigned long long)(pc_mono_ms() - t0));
    free(digests);
  }

  t0 = pc_mono_ms();
  rc = store_open(dir, NULL, &s);
  if (rc)
    pc_fatal("open: %s", pc_strerror(rc));
  printf("store_open_ms: %llu\n", (unsigned long long)(pc_mono_ms() - t0));
  store_stats_t st;
  double u0 = mono_us();
  rc = store_stats(s, &st);
  double first = mono_us() - u0;
  if (rc)
    pc_fatal("stats: %s", pc_strerror(rc));
  u0 = mono_us();
  for (int i = 0; i < 1000; i++)
    store_stats(s, &st);
  printf("store_stats_us: %.1f first, %.2f mean of 1000 (%llu blobs, %llu bytes)\n", first,
         (mono_us() - u0) / 1000, (unsigned long long)st.blobs, (unsigned long long)st.blob_bytes);
  fflush(stdout);
  if (!fsck) {
    store_close(s);
    return 0;
  }
  store_fsck_report_t r;
  t0 = pc_mono_ms();
  rc = store_fsck(s, stdout, &r);
  printf("fsck: %llu blobs, %llu bytes in %llu ms (rc %s)\n", (unsigned long long)r.blobs_checked,
         (unsigned long long)r.bytes_checked, (unsigned long long)(pc_mono_ms() - t0),
         rc ? pc_errname(rc) : "0");
  store_close(s);
  return rc == 0 ? 0 : 1;
}
