/* cmd_export — `pullcache export`: images of the store as an OCI image layout (a directory, a
 * tar file, or a tar stream on stdout), for carrying into an air-gapped site.
 *
 * The store is opened read-only (store_opts_t.read_only: no lock, LMDB MDB_RDONLY), so export
 * runs beside a live daemon; blobs are immutable files, read by validated digest only. Every
 * blob is hashed again as it is written and must match its name (a mismatch fails the export:
 * run `pullcache fsck`). The layout: `oci-layout`, `index.json` (one descriptor per image with
 * `org.opencontainers.image.ref.name` = HOST/REPO:TAG and the pullcache annotations
 * dev.pullcache.upstream / dev.pullcache.repository that `pullcache import` reads), and
 * `blobs/sha256/<hex>`; in a tar `oci-layout` and `index.json` come first, so an importer knows
 * the images before the blobs; the tar is reproducible (mtime 0, uid 0, mode 0644).
 * --since BUNDLE leaves out every blob that BUNDLE (a directory or tar written before) holds:
 * the index still names every image, so the bundle imports on top of the earlier one. A
 * directory is made complete before index.json appears (written last, renamed into place); a
 * tar file is written as OUT.partial and renamed at the end, so a failed export leaves no OUT.
 */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/cmd_store.h"
#include "daemon/imgref.h"
#include "daemon/prefetch.h"
#include "store/evict.h"
#include "store/store.h"

#define EXP_MAX_MANIFEST (16u << 20)
#define EXP_MAX_DEPTH 4
#define EXP_CHUNK (1u << 20)
#define EXP_PLATFORMS 16
#define ANN_UPSTREAM "dev.pullcache.upstream"
#define ANN_REPO "dev.pullcache.repository"
#define ANN_REF "org.opencontainers.image.ref.name"

typedef struct blob {
  char digest[STORE_DIGEST_MAX];
  uint64_t size;
} blob_t;

typedef struct exp {
  store_t *s;
  int all_platforms, signatures;
  char plat[EXP_PLATFORMS][IMGREF_PLATFORM_MAX];
  int nplat;
  json_t *index; /* descriptors for index.json */
  json_t *taken; /* digest -> true: in the blob list */
  json_t *since; /* digest -> true: in the earlier bundle */
  blob_t *blobs; /* in write order: what a manifest names before the manifest */
  size_t nblobs, skipped;
  uint64_t bytes, written;
  int failed, images;
  int tty;
  uint64_t t0;
} exp_t;

static void usage(FILE *f)
{
  fprintf(f,
          "usage: pullcache export [--store DIR] [--platform OS/ARCH[,...] | --all-platforms]\n"
          "         [--signatures] [--since BUNDLE] (--all | REF... | --file FILE) OUT\n"
          "\n"
          "Write images of the store as an OCI image layout: a directory OUT, a tar file when\n"
          "OUT ends in .tar, a tar stream on stdout when OUT is -. Runs beside a live daemon.\n"
          "\n"
          "  --all              every tag in the store\n"
          "  REF, --file FILE   references as `pullcache prefetch` takes them\n"
          "                     (registry.k8s.io/pause:3.10, HOST/REPO@sha256:...)\n"
          "  --platform L       the platforms of an index to carry (default this host's, %s)\n"
          "  --all-platforms    every manifest of an index (each must be in the store)\n"
          "  --signatures       also the cosign tags sha256-<digest>.sig/.att in the store\n"
          "  --since BUNDLE     leave out the blobs an earlier bundle (directory or tar) holds\n"
          "\n"
          "Every blob is hashed again as it is written. Exit status: 0 done, 1 an image could\n"
          "not be exported (named; the others are), 2 usage error.\n",
          prefetch_host_platform());
}

static const char *jstr(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  return json_is_string(v) ? json_string_value(v) : "";
}

/* ---- what to write --------------------------------------------------------------------------- */

typedef struct img {
  json_t *taken; /* this image's digests (merged into the run's when it is complete) */
  blob_t *blobs;
  size_t nblobs;
  uint64_t bytes;
  unsigned manifests;
  char plats[300];
  char err[400];
} img_t;

static void img_add(img_t *im, const char *digest, uint64_t size)
{
  if (json_object_get(im->taken, digest))
    return;
  json_object_set_new(im->taken, digest, json_true());
  im->blobs = pc_xrealloc(im->blobs, (im->nblobs + 1) * sizeof(*im->blobs));
  pc_strlcpy(im->blobs[im->nblobs].digest, STORE_DIGEST_MAX, digest);
  im->blobs[im->nblobs++].size = size;
  im->bytes += size;
}

static int collect(exp_t *e, img_t *im, const char *digest, int depth, int top)
{
  char *body = NULL;
  size_t len;
  if (depth > EXP_MAX_DEPTH) {
    snprintf(im->err, sizeof(im->err), "indexes nested too deeply");
    return -1;
  }
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256) {
    snprintf(im->err, sizeof(im->err), "\"%.80s\" is not a sha256 digest", digest);
    return -1;
  }
  store_manifest_info_t info;
  int rc = store_manifest_read(e->s, digest, EXP_MAX_MANIFEST, &body, &len, &info);
  if (rc) {
    snprintf(im->err, sizeof(im->err), "manifest %s: %s%s", digest, pc_strerror(rc),
             rc == PC_E_NOTFOUND ? " (not in the store: prefetch it first)" : "");
    return -1;
  }
  json_t *doc = json_loadb(body, len, 0, NULL), *arr, *c;
  size_t i;
  rc = 0;
  if (!json_is_object(doc)) {
    snprintf(im->err, sizeof(im->err), "manifest %s is not a JSON object", digest);
    rc = -1;
  } else if (json_is_array(arr = json_object_get(doc, "manifests"))) {
    int taken = 0;
    json_array_foreach(arr, i, c)
    {
      json_t *pl = json_object_get(c, "platform");
      const char *os = jstr(pl, "os"), *arch = jstr(pl, "architecture"), *var = jstr(pl, "variant");
      int want = e->all_platforms || !top;
      for (int k = 0; !want && k < e->nplat; k++)
        want = imgref_platform_match(e->plat[k], os, arch, var);
      if (!want)
        continue;
      taken++;
      if (top) {
        size_t n = strlen(im->plats);
        snprintf(im->plats + n, sizeof(im->plats) - n, "%s%s/%s%s%s", n ? "," : "", os, arch,
                 *var ? "/" : "", var);
      }
      if (collect(e, im, jstr(c, "digest"), depth + 1, 0)) {
        rc = -1;
        break;
      }
    }
    if (rc == 0 && top && !taken) {
      snprintf(im->err, sizeof(im->err), "no manifest for platform %s in the index",
               e->nplat ? e->plat[0] : "?");
      rc = -1;
    }
  } else {
    json_t *cfg = json_object_get(doc, "config");
    json_t *all = json_array();
    if (json_is_object(cfg))
      json_array_append(all, cfg);
    json_array_extend(all, json_object_get(doc, "layers"));
    json_array_foreach(all, i, c)
    {
      const char *dg = jstr(c, "digest");
      store_blob_info_t bi;
      if (store_digest_parse(dg, strlen(dg)) != STORE_DIGEST_SHA256 ||
          store_blob_stat(e->s, dg, &bi) != 0) {
        snprintf(im->err, sizeof(im->err), "blob %.80s of %s is not in the store (evicted?)", dg,
                 digest);
        rc = -1;
        break;
      }
      img_add(im, dg, bi.size);
    }
    json_decref(all);
    if (top)
      snprintf(im->plats, sizeof(im->plats), "single");
  }
  json_decref(doc);
  free(body);
  if (rc == 0) {
    img_add(im, digest, len);
    im->manifests++;
  }
  return rc;
}

/* Take one image (digest, named upstream/repo[:tag]) into the run; 0, or -1 (reported). */
static int take(exp_t *e, const char *up, const char *repo, const char *tag, const char *digest,
                const char *what)
{
  img_t im = {.taken = json_object()};
  char mt[128] = "";
  store_manifest_info_t info = {0};
  int rc = collect(e, &im, digest, 0, 1);
  if (rc == 0 && store_manifest_stat(e->s, digest, &info) == 0)
    pc_strlcpy(mt, sizeof(mt), info.media_type);
  else if (rc == 0) {
    snprintf(im.err, sizeof(im.err), "manifest %s left the store meanwhile", digest);
    rc = -1;
  }
  if (rc) {
    fprintf(stderr, "failed  %s: %s\n", what, im.err);
    e->failed++;
  } else {
    json_t *ann = json_pack("{s:s,s:s}", ANN_UPSTREAM, up, ANN_REPO, repo);
    if (tag && *tag) {
      char ref[800];
      snprintf(ref, sizeof(ref), "%s/%s:%s", up, repo, tag);
      json_object_set_new(ann, ANN_REF, json_string(ref));
    }
    json_array_append_new(e->index,
                          json_pack("{s:s,s:s,s:I,s:o}", "mediaType", mt, "digest", digest, "size",
                                    (json_int_t)info.size, "annotations", ann));
    for (size_t i = 0; i < im.nblobs; i++) {
      if (json_object_get(e->taken, im.blobs[i].digest))
        continue;
      json_object_set_new(e->taken, im.blobs[i].digest, json_true());
      if (e->since && json_object_get(e->since, im.blobs[i].digest)) {
        e->skipped++;
        continue;
      }
      e->blobs = pc_xrealloc(e->blobs, (e->nblobs + 1) * sizeof(*e->blobs));
      e->blobs[e->nblobs++] = im.blobs[i];
      e->bytes += im.blobs[i].size;
    }
    char bs[32];
    cmd_store_fmt_size(im.bytes, bs, sizeof(bs));
    fprintf(stderr, "image   %s %s %u manifests %zu blobs %s\n", what, im.plats, im.manifests,
            im.nblobs, bs);
    e->images++;
  }
  json_decref(im.taken);
  free(im.blobs);
  return rc;
}

/* An image and, with --signatures, its cosign tags. */
static void take_with_sigs(exp_t *e, const char *up, const char *repo, const char *tag,
                           const char *digest, const char *what)
{
  if (take(e, up, repo, tag, digest, what) || !e->signatures)
    return;
  static const char *const kinds[] = {"sig", "att"};
  for (size_t k = 0; k < PC_ARRAY_SIZE(kinds); k++) {
    char st[ROUTE_TAG_MAX + 1], w[900];
    store_tag_t t;
    snprintf(st, sizeof(st), "sha256-%s.%s", digest + 7, kinds[k]);
    if (store_tag_get(e->s, up, repo, st, &t) == 0 &&
        store_manifest_stat(e->s, t.digest, NULL) == 0) {
      snprintf(w, sizeof(w), "%s/%s:%s", up, repo, st);
      take(e, up, repo, st, t.digest, w);
    }
  }
}

static int is_sig_tag(const char *tag)
{
  size_t n = strlen(tag);
  return n == 7 + 64 + 4 && !strncmp(tag, "sha256-", 7) &&
         (!strcmp(tag + n - 4, ".sig") || !strcmp(tag + n - 4, ".att") ||
          !strcmp(tag + n - 5, ".sbom"));
}

typedef struct tag_row {
  char up[256], repo[256], tag[ROUTE_TAG_MAX + 1], digest[STORE_DIGEST_MAX];
} tag_row_t;

typedef struct rows {
  tag_row_t *r;
  size_t n;
} rows_t;

static int on_image(void *arg, const store_image_t *img)
{
  rows_t *rs = arg;
  rs->r = pc_xrealloc(rs->r, (rs->n + 1) * sizeof(*rs->r));
  tag_row_t *r = &rs->r[rs->n++];
  pc_strlcpy(r->up, sizeof(r->up), img->upstream);
  pc_strlcpy(r->repo, sizeof(r->repo), img->repo);
  pc_strlcpy(r->tag, sizeof(r->tag), img->tag);
  pc_strlcpy(r->digest, sizeof(r->digest), img->digest);
  return 0;
}

/* A reference (a list line or an argument). */
static void take_ref(exp_t *e, const char *text, const char *const *names, int nnames, int line)
{
  imgref_t r;
  char why[300], what[600];
  int rc = imgref_parse(text, strlen(text), names, nnames, &r, why, sizeof(why));
  if (rc == IMGREF_SKIP)
    return;
  snprintf(what, sizeof(what), "%.500s", text);
  if (rc != IMGREF_OK) {
    if (line)
      fprintf(stderr, "failed  %s: line %d: %s\n", what, line, why);
    else
      fprintf(stderr, "failed  %s: %s\n", what, why);
    e->failed++;
    return;
  }
  const char *up = names[r.upstream];
  if (r.digest[0]) {
    take_with_sigs(e, up, r.repo, r.digest[0] && r.tag[0] ? r.tag : NULL, r.digest, what);
    return;
  }
  store_tag_t t;
  if (store_tag_get(e->s, up, r.repo, r.tag, &t) != 0) {
    fprintf(stderr, "failed  %s: not in the store (prefetch it first)\n", what);
    e->failed++;
    return;
  }
  take_with_sigs(e, up, r.repo, r.tag, t.digest, what);
}

/* ---- --since: the digests an earlier bundle holds ------------------------------------------ */

/* A blob file's name: "<64 lowercase hex>" (the digest's hex) -> 1, anything else 0. */
static int hexname(const char *s)
{
  char dg[80];
  snprintf(dg, sizeof(dg), "sha256:%.70s", s);
  return store_digest_parse(dg, strlen(dg)) == STORE_DIGEST_SHA256;
}

static int read_since(exp_t *e, const char *bundle)
{
  struct stat sb;
  e->since = json_object();
  if (stat(bundle, &sb) != 0) {
    fprintf(stderr, "pullcache export: --since %s: %s\n", bundle, strerror(errno));
    return -1;
  }
  if (S_ISDIR(sb.st_mode)) {
    char p[4096];
    snprintf(p, sizeof(p), "%s/blobs/sha256", bundle);
    DIR *d = opendir(p);
    if (!d) {
      fprintf(stderr, "pullcache export: --since %s: not an OCI layout (%s)\n", bundle,
              strerror(errno));
      return -1;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
      if (hexname(de->d_name)) {
        char dg[80];
        snprintf(dg, sizeof(dg), "sha256:%.64s", de->d_name);
        json_object_set_new(e->since, dg, json_true());
      }
    }
    closedir(d);
    return 0;
  }
  struct archive *a = archive_read_new();
  struct archive_entry *en;
  archive_read_support_format_tar(a);
  int rc = archive_read_open_filename(a, bundle, 1 << 16);
  while (rc == ARCHIVE_OK && (rc = archive_read_next_header(a, &en)) == ARCHIVE_OK) {
    const char *name = archive_entry_pathname(en);
    if (name && !strncmp(name, "./", 2))
      name += 2;
    if (name && !strncmp(name, "blobs/sha256/", 13) && hexname(name + 13)) {
      char dg[80];
      snprintf(dg, sizeof(dg), "sha256:%.64s", name + 13);
      json_object_set_new(e->since, dg, json_true());
    }
    rc = archive_read_data_skip(a);
  }
  if (rc != ARCHIVE_EOF) {
    fprintf(stderr, "pullcache export: --since %s: %s\n", bundle, archive_error_string(a));
    archive_read_free(a);
    return -1;
  }
  archive_read_free(a);
  return 0;
}

/* ---- writing ----------------------------------------------------------------------------------
 */

typedef struct out {
  struct archive *a; /* tar, or NULL: a directory */
  const char *dir;
  char tmp[4096]; /* the tar file being written (OUT.partial), "" for stdout */
} out_t;

static void progress(exp_t *e)
{
  if (!e->tty)
    return;
  char w[32], t[32], r[32];
  double secs = (double)(pc_mono_ms() - e->t0) / 1000.0;
  cmd_store_fmt_size(e->written, w, sizeof(w));
  cmd_store_fmt_size(e->bytes, t, sizeof(t));
  cmd_store_fmt_size(secs > 0.1 ? (uint64_t)((double)e->written / secs) : 0, r, sizeof(r));
  fprintf(stderr, "\r\033[K%s of %s  %s/s", w, t, r);
}

static int tar_file(out_t *o, const char *name, const void *data, size_t len)
{
  struct archive_entry *en = archive_entry_new();
  archive_entry_set_pathname(en, name);
  archive_entry_set_size(en, (la_int64_t)len);
  archive_entry_set_filetype(en, AE_IFREG);
  archive_entry_set_perm(en, 0644);
  int rc = archive_write_header(o->a, en);
  archive_entry_free(en);
  if (rc == ARCHIVE_OK && len && archive_write_data(o->a, data, len) != (la_ssize_t)len)
    rc = ARCHIVE_FATAL;
  return rc == ARCHIVE_OK ? 0 : -1;
}

static int write_small(out_t *o, const char *name, const char *data)
{
  if (o->a) {
    if (tar_file(o, name, data, strlen(data)) == 0)
      return 0;
    fprintf(stderr, "pullcache export: %s: %s\n", name, archive_error_string(o->a));
    return -1;
  }
  char p[4096], t[4200];
  snprintf(p, sizeof(p), "%s/%s", o->dir, name);
  snprintf(t, sizeof(t), "%s.tmp", p);
  FILE *f = fopen(t, "w");
  int ok = f && fputs(data, f) >= 0;
  ok = f && fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
  if (f)
    fclose(f);
  if (!ok || rename(t, p) != 0) {
    fprintf(stderr, "pullcache export: %s: %s\n", p, strerror(errno));
    unlink(t);
    return -1;
  }
  return 0;
}

/* Copy one blob from the store, hashed again as it goes. */
static int write_blob(exp_t *e, out_t *o, const blob_t *b, char *buf)
{
  int fd, wfd = -1, rc = 0;
  uint64_t size;
  char name[100], path[4200] = "";
  rc = store_blob_open(e->s, b->digest, &fd, &size);
  if (rc) {
    fprintf(stderr, "pullcache export: blob %s: %s (evicted meanwhile?)\n", b->digest,
            pc_strerror(rc));
    return -1;
  }
  snprintf(name, sizeof(name), "blobs/sha256/%s", b->digest + 7);
  if (o->a) {
    struct archive_entry *en = archive_entry_new();
    archive_entry_set_pathname(en, name);
    archive_entry_set_size(en, (la_int64_t)size);
    archive_entry_set_filetype(en, AE_IFREG);
    archive_entry_set_perm(en, 0644);
    rc = archive_write_header(o->a, en) == ARCHIVE_OK ? 0 : -1;
    archive_entry_free(en);
  } else {
    snprintf(path, sizeof(path), "%s/%s", o->dir, name);
    wfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    rc = wfd < 0 ? -1 : 0;
  }
  store_hash_t h;
  store_hash_init(&h);
  uint64_t done = 0;
  while (rc == 0 && done < size) {
    ssize_t n = read(fd, buf, EXP_CHUNK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = -1;
      errno = n < 0 ? errno : EIO;
      break;
    }
    store_hash_update(&h, buf, (size_t)n);
    if (o->a) {
      if (archive_write_data(o->a, buf, (size_t)n) != n)
        rc = -1;
    } else {
      for (ssize_t off = 0; off < n && rc == 0;) {
        ssize_t w = write(wfd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
          continue;
        if (w <= 0)
          rc = -1;
        else
          off += w;
      }
    }
    done += (uint64_t)n;
    e->written += (uint64_t)n;
  }
  char dg[72];
  store_hash_final(&h, dg);
  store_hash_dispose(&h);
  close(fd);
  if (rc) {
    fprintf(stderr, "pullcache export: blob %s: %s\n", b->digest,
            o->a ? archive_error_string(o->a) : strerror(errno));
  } else if (strcmp(dg, b->digest) != 0) {
    fprintf(stderr,
            "pullcache export: blob %s: the stored bytes hash to %s: the store is corrupt "
            "(run pullcache fsck); nothing of it is exported\n",
            b->digest, dg);
    rc = -1;
  }
  if (wfd >= 0) {
    if (close(wfd) != 0 && rc == 0) {
      fprintf(stderr, "pullcache export: %s: %s\n", path, strerror(errno));
      rc = -1;
    }
    if (rc)
      unlink(path);
  }
  if (done % (64u << 20) < EXP_CHUNK || done == size)
    progress(e);
  return rc;
}

static int open_out(out_t *o, const char *out)
{
  size_t n = strlen(out);
  if (!strcmp(out, "-") || (n > 4 && !strcmp(out + n - 4, ".tar"))) {
    o->a = archive_write_new();
    archive_write_set_format_pax_restricted(o->a); /* ustar unless a name needs more */
    archive_write_set_bytes_in_last_block(o->a, 1);
    int rc;
    if (!strcmp(out, "-")) {
      rc = archive_write_open_fd(o->a, STDOUT_FILENO);
    } else {
      snprintf(o->tmp, sizeof(o->tmp), "%s.partial", out);
      rc = archive_write_open_filename(o->a, o->tmp);
    }
    if (rc != ARCHIVE_OK) {
      fprintf(stderr, "pullcache export: %s: %s\n", out, archive_error_string(o->a));
      archive_write_free(o->a);
      o->a = NULL;
      return -1;
    }
    return 0;
  }
  char p[4096];
  o->dir = out;
  if (mkdir(out, 0755) != 0 && errno != EEXIST) {
    fprintf(stderr, "pullcache export: %s: %s\n", out, strerror(errno));
    return -1;
  }
  DIR *d = opendir(out);
  struct dirent *de;
  int empty = 1;
  while (d && (de = readdir(d)))
    if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
      empty = 0;
  if (d)
    closedir(d);
  if (!d || !empty) {
    fprintf(stderr, "pullcache export: %s: %s\n", out,
            d ? "exists and is not empty (give a new directory)" : strerror(errno));
    return -1;
  }
  snprintf(p, sizeof(p), "%s/blobs", out);
  mkdir(p, 0755);
  snprintf(p, sizeof(p), "%s/blobs/sha256", out);
  if (mkdir(p, 0755) != 0) {
    fprintf(stderr, "pullcache export: %s: %s\n", p, strerror(errno));
    return -1;
  }
  return 0;
}

int cmd_export(int argc, char **argv)
{
  const char *dir = CONFIG_STORE_DEFAULT, *file = NULL, *since = NULL, *out = NULL, *sv;
  int missing = 0;
  const char *refs[256];
  int nrefs = 0, all = 0, code = 2;
  exp_t e = {0};
  out_t o = {0};
  rows_t rows = {0};
  char *buf = NULL;
  for (int a = 1; a < argc; a++) {
    const char *x = argv[a];
    if (!strcmp(x, "-h") || !strcmp(x, "--help")) {
      usage(stdout);
      return 0;
    } else if ((sv = pc_opt_value(argc, argv, &a, "--store", &missing))) {
      dir = sv;
    } else if (missing) {
      fprintf(stderr, "pullcache export: --store needs a value\n");
      return 2;
    } else if (!strcmp(x, "--all")) {
      all = 1;
    } else if (!strcmp(x, "--all-platforms")) {
      e.all_platforms = 1;
    } else if (!strcmp(x, "--signatures")) {
      e.signatures = 1;
    } else if (a + 1 < argc &&
               (!strcmp(x, "--file") || !strcmp(x, "--since") || !strcmp(x, "--platform"))) {
      const char *v = argv[++a];
      if (!strcmp(x, "--file"))
        file = v;
      else if (!strcmp(x, "--since"))
        since = v;
      else {
        char why[200];
        e.nplat = imgref_platforms_parse(v, e.plat, EXP_PLATFORMS, why, sizeof(why));
        if (e.nplat < 0) {
          fprintf(stderr, "pullcache export: --platform: %s\n", why);
          return 2;
        }
      }
    } else if (x[0] == '-' && strcmp(x, "-") != 0) {
      fprintf(stderr, "pullcache export: unexpected argument '%s'\n", x);
      usage(stderr);
      return 2;
    } else if (nrefs < (int)PC_ARRAY_SIZE(refs)) {
      refs[nrefs++] = x;
    } else {
      fprintf(stderr, "pullcache export: too many references (use --file)\n");
      return 2;
    }
  }
  if (nrefs == 0) {
    usage(stderr);
    return 2;
  }
  out = refs[--nrefs]; /* the last word is OUT */
  if ((all ? 1 : 0) + (file ? 1 : 0) + (nrefs ? 1 : 0) != 1) {
    fprintf(stderr, "pullcache export: give exactly one of --all, REF... or --file FILE\n");
    return 2;
  }
  if (e.all_platforms && e.nplat) {
    fprintf(stderr, "pullcache export: --platform and --all-platforms exclude each other\n");
    return 2;
  }
  if (!e.nplat)
    e.nplat = imgref_platforms_parse(prefetch_host_platform(), e.plat, EXP_PLATFORMS, NULL, 0);

  code = 1;
  store_opts_t so = {.read_only = 1};
  int rc = store_open(dir, &so, &e.s);
  if (rc) {
    fprintf(stderr, "pullcache export: cannot open store %s: %s\n", dir,
            rc == PC_E_NOTFOUND ? "no store there" : pc_strerror(rc));
    return rc == PC_E_NOTFOUND ? 2 : 1;
  }
  if (since && read_since(&e, since))
    goto done;
  e.index = json_array();
  e.taken = json_object();
  e.tty = isatty(STDERR_FILENO);
  e.t0 = pc_mono_ms();
  rc = store_images(e.s, on_image, &rows);
  if (rc) {
    fprintf(stderr, "pullcache export: listing the store: %s\n", pc_strerror(rc));
    goto done;
  }
  const char *names[64];
  int nnames = 0;
  names[nnames++] = "registry.k8s.io";
  for (size_t i = 0; i < rows.n && nnames < 64; i++) {
    int have = 0;
    for (int k = 0; k < nnames && !have; k++)
      have = !strcmp(names[k], rows.r[i].up);
    if (!have)
      names[nnames++] = rows.r[i].up;
  }
  if (all) {
    for (size_t i = 0; i < rows.n; i++) {
      char what[900];
      if (is_sig_tag(rows.r[i].tag))
        continue; /* carried with their image under --signatures */
      snprintf(what, sizeof(what), "%s/%s:%s", rows.r[i].up, rows.r[i].repo, rows.r[i].tag);
      take_with_sigs(&e, rows.r[i].up, rows.r[i].repo, rows.r[i].tag, rows.r[i].digest, what);
    }
  } else if (file) {
    FILE *f = strcmp(file, "-") ? fopen(file, "r") : stdin;
    char line[1024];
    int no = 0;
    if (!f) {
      fprintf(stderr, "pullcache export: %s: %s\n", file, strerror(errno));
      code = 2;
      goto done;
    }
    while (fgets(line, sizeof(line), f)) {
      line[strcspn(line, "\r\n")] = '\0';
      take_ref(&e, line, names, nnames, ++no);
    }
    if (f != stdin)
      fclose(f);
  } else {
    for (int i = 0; i < nrefs; i++)
      take_ref(&e, refs[i], names, nnames, 0);
  }
  if (e.images == 0) {
    fprintf(stderr, "pullcache export: nothing to export\n");
    goto done;
  }

  if (open_out(&o, out))
    goto done;
  json_t *idx = json_pack("{s:i,s:s,s:O}", "schemaVersion", 2, "mediaType",
                          "application/vnd.oci.image.index.v1+json", "manifests", e.index);
  char *index = json_dumps(idx, JSON_INDENT(2) | JSON_SORT_KEYS);
  json_decref(idx);
  int bad = !index;
  if (o.a) /* a tar: the images first, so an importer knows them before the blobs */
    bad = write_small(&o, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}") ||
          write_small(&o, "index.json", index);
  buf = pc_xmalloc(EXP_CHUNK);
  for (size_t i = 0; !bad && i < e.nblobs; i++)
    bad = write_blob(&e, &o, &e.blobs[i], buf);
  if (!o.a && !bad)
    bad = write_small(&o, "oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}") ||
          write_small(&o, "index.json", index);
  free(index);
  if (o.a) {
    if (!bad && archive_write_close(o.a) != ARCHIVE_OK) {
      fprintf(stderr, "pullcache export: %s: %s\n", out, archive_error_string(o.a));
      bad = 1;
    }
    if (bad) /* a stream on stdout stays without its trailer: the importer sees the cut */
      archive_write_fail(o.a);
    archive_write_free(o.a);
    if (o.tmp[0] && (bad || rename(o.tmp, out) != 0)) {
      if (!bad)
        fprintf(stderr, "pullcache export: %s: %s\n", out, strerror(errno));
      unlink(o.tmp);
      bad = 1;
    }
  }
  if (e.tty)
    fprintf(stderr, "\r\033[K");
  if (bad) {
    fprintf(stderr, "pullcache export: failed; %s\n",
            o.a || o.tmp[0] ? "no bundle was written"
                            : "the directory is incomplete (no index.json)");
    goto done;
  }
  {
    char ws[32], rs[32];
    double secs = (double)(pc_mono_ms() - e.t0) / 1000.0;
    cmd_store_fmt_size(e.written, ws, sizeof(ws));
    cmd_store_fmt_size(secs > 0 ? (uint64_t)((double)e.written / secs) : 0, rs, sizeof(rs));
    char sk[100] = "";
    if (since)
      snprintf(sk, sizeof(sk), "; %zu blobs left out (in %s)", e.skipped, since);
    fprintf(stderr,
            "exported %d images, %zu blobs (%s, %llu bytes) to %s in %.1f s (%s/s)%s; %d failed\n",
            e.images, e.nblobs, ws, (unsigned long long)e.written, out, secs, rs, sk, e.failed);
  }
  code = e.failed ? 1 : 0;
done:
  free(buf);
  free(rows.r);
  free(e.blobs);
  json_decref(e.index);
  json_decref(e.taken);
  json_decref(e.since);
  store_close(e.s);
  return code;
}
