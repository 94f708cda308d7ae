/* test-evict — store/evict: recency through references, pins, eviction order, dry runs, the
 * crash-safe order (doomed files), and answers that keep their descriptor. */
#include "tests/unit/unit.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/pc.h"
#include "store/evict.h"
#include "store/store-int.h" /* raw LMDB: set access times, fake a crash mid-eviction */

#define MT_LAYER "application/vnd.oci.image.layer.v1.tar+gzip"
#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_INDEX "application/vnd.oci.image.index.v1+json"
#define UP "registry.test"

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
  return s;
}

/* A blob of n bytes of `seed`; digest into out. */
static void blob(store_t *s, int seed, size_t n, char out[72])
{
  store_writer_t *w = NULL;
  unsigned char *b = pc_xmalloc(n);
  for (size_t i = 0; i < n; i++)
    b[i] = (unsigned char)(seed * 31 + i * 7);
  ASSERT_OK(store_writer_new(s, NULL, (int64_t)n, &w));
  ASSERT_OK(store_writer_write(w, b, n));
  ASSERT_OK(store_writer_commit(w, MT_LAYER, out));
  free(b);
}

/* An image manifest with a config and layers; digest into out; tagged repo:tag when tag. */
static void manifest(store_t *s, const char *config, const char *const *layers, int n,
                     const char *repo, const char *tag, char out[72])
{
  char buf[8192];
  size_t l = (size_t)snprintf(buf, sizeof(buf),
                              "{\"schemaVersion\":2,\"mediaType\":\"" MT_MANIFEST "\","
                              "\"config\":{\"mediaType\":\"x\",\"digest\":\"%s\",\"size\":1},"
                              "\"layers\":[",
                              config);
  for (int i = 0; i < n; i++)
    l += (size_t)snprintf(buf + l, sizeof(buf) - l,
                          "%s{\"mediaType\":\"" MT_LAYER "\",\"digest\":\"%s\",\"size\":1}",
                          i ? "," : "", layers[i]);
  l += (size_t)snprintf(buf + l, sizeof(buf) - l, "]}");
  ASSERT_OK(store_manifest_put(s, buf, l, MT_MANIFEST, NULL, out));
  if (tag) {
    store_tag_t t;
    memset(&t, 0, sizeof(t));
    memcpy(t.digest, out, 72);
    memcpy(t.media_type, MT_MANIFEST, sizeof(MT_MANIFEST));
    t.size = l;
    t.fetched_at = t.checked_at = pc_now_sec();
    ASSERT_OK(store_tag_put(s, UP, repo, tag, &t));
  }
}

static void index_of(store_t *s, const char *const *mans, int n, const char *repo, const char *tag,
                     char out[72])
{
  char buf[4096];
  size_t l = (size_t)snprintf(
      buf, sizeof(buf), "{\"schemaVersion\":2,\"mediaType\":\"" MT_INDEX "\",\"manifests\":[");
  for (int i = 0; i < n; i++)
    l += (size_t)snprintf(buf + l, sizeof(buf) - l,
                          "%s{\"mediaType\":\"" MT_MANIFEST "\",\"digest\":\"%s\",\"size\":1}",
                          i ? "," : "", mans[i]);
  l += (size_t)snprintf(buf + l, sizeof(buf) - l, "]}");
  ASSERT_OK(store_manifest_put(s, buf, l, MT_INDEX, NULL, out));
  store_tag_t t;
  memset(&t, 0, sizeof(t));
  memcpy(t.digest, out, 72);
  t.size = l;
  ASSERT_OK(store_tag_put(s, UP, repo, tag, &t));
}

/* Set a blob record's last access (as if it had been read then). */
static store_t *open_store_for_cb; /* the store a callback pins in */

static void set_atime(store_t *s, const char *d, int64_t t)
{
  store__wtxn_t w;
  MDB_val k = {STORE__SHA256_LEN, (void *)d}, v;
  store__blob_rec_t r;
  ASSERT_OK(store__wtxn_begin(s, &w));
  ASSERT_EQ(0, mdb_get(w.txn, s->blobs, &k, &v));
  ASSERT_OK(store__blob_rec_decode(&v, &r));
  r.last_access = t;
  ASSERT_OK(store__wtxn_put_blob(s, &w, d, &r));
  ASSERT_OK(store__wtxn_commit(s, &w));
}

static int present(store_t *s, const char *d)
{
  return store_blob_stat(s, d, NULL) == 0;
}

static uint64_t bytes_now(store_t *s)
{
  store_stats_t st;
  ASSERT_OK(store_stats(s, &st));
  return st.blob_bytes;
}

static uint64_t size_of(store_t *s, const char *d)
{
  store_blob_info_t i;
  ASSERT_OK(store_blob_stat(s, d, &i));
  return i.size;
}

/* Every blob record has its file (a record without a file would be a lie). */
static void records_have_files(store_t *s)
{
  MDB_txn *txn;
  MDB_cursor *cur;
  MDB_val k, v;
  char d[72], p[PATH_MAX];
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
  ASSERT_EQ(0, mdb_cursor_open(txn, s->blobs, &cur));
  while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
    memcpy(d, k.mv_data, 71);
    d[71] = '\0';
    ASSERT_OK(store_blob_path(s, d, p, sizeof(p)));
    ASSERT_EQ(0, access(p, F_OK));
  }
  mdb_cursor_close(cur);
  mdb_txn_abort(txn);
}

/* Two images on one base layer: A is hot, C cold; then a cold third blob. */
typedef struct two {
  char base[72], a_cfg[72], a_l[72], a_m[72], c_cfg[72], c_l[72], c_m[72], loose[72];
} two_t;

static void two_images(store_t *s, two_t *t)
{
  blob(s, 1, 4000, t->base);
  blob(s, 2, 100, t->a_cfg);
  blob(s, 3, 1000, t->a_l);
  blob(s, 4, 101, t->c_cfg);
  blob(s, 5, 1001, t->c_l);
  blob(s, 6, 3000, t->loose);
  const char *la[] = {t->base, t->a_l}, *lc[] = {t->base, t->c_l};
  manifest(s, t->a_cfg, la, 2, "lib/a", "1", t->a_m);
  manifest(s, t->c_cfg, lc, 2, "lib/c", "1", t->c_m);
  /* Everything was stored long ago; then A's manifest was pulled now (nodes that have the
   * layers never fetch them again), C's a while ago, the loose blob in between. */
  const char *all[] = {t->base, t->a_cfg, t->a_l, t->c_cfg, t->c_l, t->a_m, t->c_m};
  for (size_t i = 0; i < PC_ARRAY_SIZE(all); i++)
    set_atime(s, all[i], 1000);
  set_atime(s, t->a_m, 9000);
  set_atime(s, t->c_m, 2000);
  set_atime(s, t->loose, 3000);
}

/* ---- recency ---------------------------------------------------------------------------- */

TEST(shared_base_layer_lives_with_the_hot_image)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  uint64_t before = bytes_now(s);
  /* Room for everything but about C's own bytes: C goes (it is the coldest), not the base. */
  uint64_t target = before - size_of(s, t.c_l) - size_of(s, t.c_m);
  store_evict_opts_t o = {.target = target, .reason = STORE_EVICT_BUDGET, .batch = 2};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT(r.after <= target);
  ASSERT_EQ(r.after, bytes_now(s));
  ASSERT_EQ(before, r.before);
  ASSERT_EQ(r.before - r.after, r.bytes);
  ASSERT(present(s, t.base));
  ASSERT(present(s, t.a_l) && present(s, t.a_cfg) && present(s, t.a_m));
  ASSERT(!present(s, t.c_m));
  ASSERT(!present(s, t.c_l));
  ASSERT(present(s, t.loose)); /* newer than C */
  ASSERT_EQ(1, r.manifests);
  ASSERT_EQ(1, r.tags);
  store_tag_t tag;
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(s, UP, "lib/c", "1", &tag));
  ASSERT_OK(store_tag_get(s, UP, "lib/a", "1", &tag));
  ASSERT(r.oldest >= 1000);
  records_have_files(s);

  /* Under the target already: nothing happens. */
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT_EQ(0, r.blobs);
  store_close(s);
}

TEST(cold_image_goes_with_its_exclusive_layers_first)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  /* Evict to nearly nothing: A (hot, 9000) goes last, and its base with it only at the end. */
  uint64_t keep = size_of(s, t.a_m) + size_of(s, t.a_l) + size_of(s, t.a_cfg) + size_of(s, t.base);
  store_evict_opts_t o = {.target = keep, .reason = STORE_EVICT_MANUAL};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT_EQ(keep, bytes_now(s));
  ASSERT(present(s, t.base) && present(s, t.a_m) && present(s, t.a_l));
  ASSERT(!present(s, t.loose) && !present(s, t.c_m) && !present(s, t.c_cfg));
  ASSERT_EQ(9000, r.oldest); /* what is left is A, used at 9000 through its manifest */
  store_close(s);
}

TEST(index_keeps_its_platform_manifests)
{
  store_t *s = open_store();
  char cfg[72], l[72], m[72], idx[72], other[72];
  blob(s, 10, 500, cfg);
  blob(s, 11, 5000, l);
  blob(s, 12, 5000, other);
  const char *ls[] = {l};
  manifest(s, cfg, ls, 1, "app", NULL, m);
  const char *ms[] = {m};
  index_of(s, ms, 1, "app", "v1", idx);
  set_atime(s, cfg, 100);
  set_atime(s, l, 100);
  set_atime(s, m, 100);
  set_atime(s, idx, 5000); /* clients resolve the tag to the index, then fetch by digest */
  set_atime(s, other, 1000);
  store_evict_opts_t o = {.target = bytes_now(s) - 1, .reason = STORE_EVICT_BUDGET};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT(!present(s, other));
  ASSERT(present(s, m) && present(s, l) && present(s, cfg) && present(s, idx));
  ASSERT_EQ(1, r.blobs);
  store_close(s);
}

/* ---- pins ------------------------------------------------------------------------------- */

static int count_pin(void *arg, const char *upstream, const char *ref, int64_t created)
{
  ASSERT_STREQ(UP, upstream);
  ASSERT(created > 0);
  ASSERT(strchr(ref, ':') != NULL);
  (*(int *)arg)++;
  return 0;
}

TEST(pins_parse_persist_and_protect)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  static const char *const bad[] = {
      "",         "nocolon",         "Lib/c:1", "lib/c:",          "lib//c:1",
      "lib/c:-x", "lib/c@sha256:zz", ":1",      "lib/c@sha512:00", "lib/c:1 "};
  for (size_t i = 0; i < PC_ARRAY_SIZE(bad); i++) {
    if (store_pin_add(s, UP, bad[i]) != -EINVAL)
      unit__fail(__FILE__, __LINE__, "accepted %s", bad[i]);
  }
  ASSERT_EQ(-EINVAL, store_pin_add(s, "", "lib/c:1"));
  ASSERT_OK(store_pin_add(s, UP, "lib/c:1"));
  ASSERT_OK(store_pin_add(s, UP, "lib/c:1")); /* twice is fine */
  char byd[200];
  snprintf(byd, sizeof(byd), "lib/x@%s", t.loose); /* a digest pin of a plain blob */
  ASSERT_OK(store_pin_add(s, UP, byd));
  uint64_t pinned;
  ASSERT_OK(store_pinned_bytes(s, &pinned));
  uint64_t want = size_of(s, t.c_m) + size_of(s, t.c_cfg) + size_of(s, t.c_l) + size_of(s, t.base) +
                  size_of(s, t.loose);
  ASSERT_EQ(want, pinned);
  store_close(s);
  s = open_store(); /* persisted */
  int n = 0;
  ASSERT_OK(store_pin_list(s, count_pin, &n));
  ASSERT_EQ(2, n);
  /* Evict to zero: only the pinned content stays, and the report says the pins are over. */
  store_evict_opts_t o = {.target = 0, .reason = STORE_EVICT_MANUAL};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT_EQ(want, bytes_now(s));
  ASSERT_EQ(want, r.pinned_bytes);
  ASSERT(r.pins_over);
  ASSERT(present(s, t.c_m) && present(s, t.c_l) && present(s, t.base) && present(s, t.loose));
  ASSERT(!present(s, t.a_m) && !present(s, t.a_l));
  /* Unpinned, it can go. */
  ASSERT_OK(store_pin_del(s, UP, "lib/c:1"));
  ASSERT_EQ(PC_E_NOTFOUND, store_pin_del(s, UP, "lib/c:1"));
  ASSERT_EQ(-EINVAL, store_pin_del(s, UP, "BAD"));
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT_EQ(size_of(s, t.loose), bytes_now(s));
  records_have_files(s);
  store_close(s);
}

/* A pin added while a run is under way protects its content from the next batch on. */
static void pin_a_on_first(void *arg, const store_evict_item_t *it)
{
  int *n = arg;
  (void)it;
  if ((*n)++ == 0 && store_pin_add(open_store_for_cb, UP, "lib/a:1") != 0)
    unit__fail(__FILE__, __LINE__, "pin during the run failed");
}

TEST(pin_added_during_a_run_protects_at_once)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  open_store_for_cb = s;
  int n = 0;
  store_evict_opts_t o = {
      .target = 0, .reason = STORE_EVICT_MANUAL, .batch = 1, .cb = pin_a_on_first, .arg = &n};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT(n >= 1);
  uint64_t want = size_of(s, t.a_m) + size_of(s, t.a_cfg) + size_of(s, t.a_l) + size_of(s, t.base);
  ASSERT(present(s, t.a_m) && present(s, t.a_cfg) && present(s, t.a_l) && present(s, t.base));
  ASSERT(!present(s, t.c_m) && !present(s, t.c_l) && !present(s, t.loose));
  ASSERT_EQ(want, bytes_now(s));
  ASSERT_EQ(want, r.pinned_bytes);
  records_have_files(s);
  open_store_for_cb = NULL;
  store_close(s);
}

/* ---- dry run ---------------------------------------------------------------------------- */

typedef struct listed {
  char d[16][72];
  int n;
} listed_t;

static void on_item(void *arg, const store_evict_item_t *it)
{
  listed_t *l = arg;
  if (l->n < 16)
    memcpy(l->d[l->n++], it->digest, 72);
}

TEST(dry_run_lists_what_a_real_run_removes)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  uint64_t before = bytes_now(s);
  listed_t dry = {.n = 0}, real = {.n = 0};
  store_evict_opts_t o = {.target = before / 2, .dry_run = 1, .cb = on_item, .arg = &dry};
  store_evict_report_t r1, r2;
  ASSERT_OK(store_evict(s, &o, &r1));
  ASSERT_EQ(before, bytes_now(s)); /* nothing changed */
  for (int i = 0; i < dry.n; i++)
    ASSERT(present(s, dry.d[i]));
  ASSERT(dry.n > 0);
  o.dry_run = 0;
  o.arg = &real;
  ASSERT_OK(store_evict(s, &o, &r2));
  ASSERT_EQ(dry.n, real.n);
  for (int i = 0; i < dry.n; i++) {
    ASSERT_STREQ(dry.d[i], real.d[i]);
    ASSERT(!present(s, real.d[i]));
  }
  ASSERT_EQ(r1.bytes, r2.bytes);
  ASSERT_EQ(r1.after, r2.after);
  store_close(s);
}

/* ---- listing ---------------------------------------------------------------------------- */

static int on_image(void *arg, const store_image_t *img)
{
  store_image_t *out = arg;
  int i = strcmp(img->repo, "lib/a") == 0 ? 0 : 1;
  out[i] = *img;
  out[i].upstream = out[i].repo = out[i].tag = NULL;
  return 0;
}

TEST(images_sizes_and_shared_bytes)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  ASSERT_OK(store_pin_add(s, UP, "lib/c:1"));
  store_image_t img[2];
  memset(img, 0, sizeof(img));
  ASSERT_OK(store_images(s, on_image, img));
  ASSERT_EQ(size_of(s, t.a_m) + size_of(s, t.a_cfg) + size_of(s, t.a_l) + size_of(s, t.base),
            img[0].bytes);
  ASSERT_EQ(size_of(s, t.base), img[0].shared);
  ASSERT_EQ(size_of(s, t.base), img[1].shared);
  ASSERT_EQ(9000, img[0].last_use);
  ASSERT_EQ(0, img[0].pinned);
  ASSERT_EQ(1, img[1].pinned);
  ASSERT_STREQ(t.a_m, img[0].digest);
  store_close(s);
}

/* ---- transfers and crashes -------------------------------------------------------------- */

TEST(open_descriptor_survives_eviction)
{
  store_t *s = open_store();
  char d[72];
  blob(s, 42, 70000, d);
  int fd;
  uint64_t sz;
  ASSERT_OK(store_blob_open(s, d, &fd, &sz));
  set_atime(s, d, 10); /* make it the coldest (the open's own atime is not flushed) */
  store_evict_opts_t o = {.target = 0};
  store_evict_report_t r;
  s->atime_n = 0; /* drop the pending access so the plan's view stands */
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT(!present(s, d));
  unsigned char *b = pc_xmalloc(sz);
  ASSERT_EQ((ssize_t)sz, pread(fd, b, sz, 0));
  char got[72];
  store_digest_of(b, sz, got);
  ASSERT_STREQ(d, got);
  free(b);
  close(fd);
  /* Committed again after the eviction: present, recorded. */
  char d2[72];
  blob(s, 42, 70000, d2);
  ASSERT_STREQ(d, d2);
  ASSERT(present(s, d));
  records_have_files(s);
  store_close(s);
}

TEST(used_since_the_plan_is_kept)
{
  store_t *s = open_store();
  char a[72], b[72];
  blob(s, 1, 1000, a);
  blob(s, 2, 1000, b);
  set_atime(s, a, 10);
  set_atime(s, b, 20);
  /* The evictor flushes the access times before it plans: a read of `a` now makes it the
   * newest, so `b` goes. */
  int fd;
  uint64_t sz;
  ASSERT_OK(store_blob_open(s, a, &fd, &sz));
  close(fd);
  store_evict_opts_t o = {.target = 1000};
  ASSERT_OK(store_evict(s, &o, NULL));
  ASSERT(present(s, a));
  ASSERT(!present(s, b));
  store_close(s);
}

/* A manifest used between the plan and its batch is kept, and so are the blobs it references
 * (they come after it in the order). */
static void touch_a_on_first(void *arg, const store_evict_item_t *it)
{
  two_t *t = arg;
  (void)it;
  if (open_store_for_cb) {
    set_atime(open_store_for_cb, t->a_m, 99999);
    open_store_for_cb = NULL;
  }
}

TEST(manifest_used_during_the_run_keeps_its_blobs)
{
  store_t *s = open_store();
  two_t t;
  two_images(s, &t);
  open_store_for_cb = s;
  store_evict_opts_t o = {
      .target = 0, .reason = STORE_EVICT_MANUAL, .batch = 1, .cb = touch_a_on_first, .arg = &t};
  store_evict_report_t r;
  ASSERT_OK(store_evict(s, &o, &r));
  ASSERT(open_store_for_cb == NULL); /* the callback ran */
  ASSERT(present(s, t.a_m) && present(s, t.a_cfg) && present(s, t.a_l) && present(s, t.base));
  ASSERT(!present(s, t.c_m) && !present(s, t.c_l) && !present(s, t.loose));
  ASSERT_EQ(4, r.skipped);
  records_have_files(s);
  store_close(s);
}

TEST(doomed_files_are_swept_at_open)
{
  store_t *s = open_store();
  char a[72], b[72], pa[PATH_MAX], pb[PATH_MAX];
  blob(s, 1, 1000, a);
  blob(s, 2, 1000, b);
  ASSERT_OK(store_blob_path(s, a, pa, sizeof(pa)));
  ASSERT_OK(store_blob_path(s, b, pb, sizeof(pb)));
  /* The state an eviction killed after its commit and before its unlinks leaves: a's record
   * gone, a doomed, its file still there; b doomed too but committed again since (record). */
  store__wtxn_t w;
  MDB_val ka = {STORE__SHA256_LEN, a}, kb = {STORE__SHA256_LEN, b}, e = {0, NULL};
  ASSERT_OK(store__wtxn_begin(s, &w));
  ASSERT_OK(store__wtxn_del(s, &w, s->blobs, &ka));
  ASSERT_EQ(0, mdb_put(w.txn, s->doomed, &ka, &e, 0));
  ASSERT_EQ(0, mdb_put(w.txn, s->doomed, &kb, &e, 0));
  ASSERT_OK(store__wtxn_commit(s, &w));
  /* Until then a flush of a's pending access must not record the doomed file again. */
  int fd;
  uint64_t sz;
  ASSERT_OK(store_blob_open(s, a, &fd, &sz)); /* the file is still served: whole, verified */
  close(fd);
  ASSERT_OK(store_flush_atimes(s));
  MDB_txn *txn;
  MDB_val v;
  ASSERT_EQ(0, mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn));
  ASSERT_EQ(MDB_NOTFOUND, mdb_get(txn, s->blobs, &ka, &v)); /* not recorded again */
  mdb_txn_abort(txn);
  store_close(s);
  s = open_store();
  ASSERT(access(pa, F_OK) != 0);
  ASSERT_EQ(0, access(pb, F_OK));
  ASSERT(present(s, b));
  store_fsck_report_t fr;
  ASSERT_OK(store_fsck(s, NULL, &fr));
  records_have_files(s);
  store_close(s);
}

TEST(kill_during_eviction_leaves_a_clean_store)
{
  /* Rounds: fill the store, fork an evictor with tiny batches, kill -9 it at a varying
   * moment, reopen, fsck must be clean and every record must have its file. */
  for (int round = 0; round < 20; round++) {
    store_t *s = open_store();
    char d[72];
    for (int i = 0; i < 60; i++)
      blob(s, round * 100 + i, 200 + (size_t)i * 13, d);
    store_close(s);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      store_t *c = NULL;
      if (store_open(root_dir(), NULL, &c) != 0)
        _exit(3);
      store_evict_opts_t o = {.target = 0, .batch = 1};
      store_evict(c, &o, NULL);
      _exit(0);
    }
    usleep((useconds_t)(2000 + round * 1500));
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    s = open_store();
    store_fsck_report_t fr;
    int rc = store_fsck(s, NULL, &fr);
    if (rc != 0)
      unit__fail(__FILE__, __LINE__,
                 "round %d: fsck rc=%d corrupt=%llu missing=%llu orphans=%llu totals=%llu", round,
                 rc, (unsigned long long)fr.corrupt, (unsigned long long)fr.missing_files,
                 (unsigned long long)fr.orphan_files, (unsigned long long)fr.totals_repaired);
    records_have_files(s);
    store_close(s);
  }
}
