/* bench_storefill — fill a pullcache store with N small distinct blobs (64..1087 bytes) through
 * the store API, then time store_open on it. Used by bench/compare for the "store open with
 * 1,000,000 blobs" figure; run it on tmpfs (every commit fsyncs, which tmpfs makes cheap).
 *
 *   bench_storefill DIR N [THREADS]    prints "fill: ..." then "store_open_ms: <ms>"
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/pc.h"
#include "store/store.h"

struct fill {
  store_t *s;
  unsigned long from, to;
  uint64_t seed;
};

static void make(uint64_t seed, unsigned long i, unsigned char *b, size_t *n)
{
  uint64_t x = (seed ^ ((uint64_t)i << 1)) * 0x9e3779b97f4a7c15ULL + 1;
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
      rc = store_writer_commit(w, "application/octet-stream", NULL);
    else
      store_writer_abort(w);
    if (rc)
      pc_fatal("commit %lu: %s", i, pc_strerror(rc));
  }
  return NULL;
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: bench_storefill DIR N [THREADS]\n");
    return 2;
  }
  char *end;
  unsigned long n = strtoul(argv[2], &end, 10);
  long threads = argc > 3 ? strtol(argv[3], NULL, 10) : 2;
  if (*end || threads < 1 || threads > 16) {
    fprintf(stderr, "bench_storefill: bad N or THREADS\n");
    return 2;
  }
  store_opts_t opts = {.map_size = (uint64_t)8 << 30};
  store_t *s = NULL;
  int rc = store_open(argv[1], &opts, &s);
  if (rc)
    pc_fatal("open %s: %s", argv[1], pc_strerror(rc));
  struct fill f[16];
  pthread_t th[16];
  uint64_t t0 = pc_mono_ms();
  for (long t = 0; t < threads; t++) {
    f[t] = (struct fill){s, n * (unsigned long)t / (unsigned long)threads,
                         n * (unsigned long)(t + 1) / (unsigned long)threads, (uint64_t)time(NULL)};
    if (pthread_create(&th[t], NULL, fill_thread, &f[t]))
      pc_fatal("pthread_create");
  }
  for (long t = 0; t < threads; t++)
    pthread_join(th[t], NULL);
  uint64_t ms = pc_mono_ms() - t0;
  printf("fill: %lu blobs in %llu ms (%.0f commits/s)\n", n, (unsigned long long)ms,
         ms ? 1000.0 * (double)n / (double)ms : 0.0);
  store_close(s);
  t0 = pc_mono_ms();
  rc = store_open(argv[1], &opts, &s);
  if (rc)
    pc_fatal("reopen: %s", pc_strerror(rc));
  printf("store_open_ms: %llu\n", (unsigned long long)(pc_mono_ms() - t0));
  store_close(s);
  fflush(stdout);
  return 0;
}
