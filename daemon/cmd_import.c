/* cmd_import — `pullcache import`: OCI image layouts into the store: a directory, a tar file or
 * a tar stream on stdin, one image or many (what `pullcache export` writes, or any layout, e.g.
 * `skopeo copy --all ... oci:DIR`).
 *
 * Every descriptor of index.json is one image, imported on its own: its manifests (indexes
 * recursively, image manifests with their config and layers) and blobs, each verified against
 * its digest (and size) before it is stored; only when all of them are in the store are its
 * manifests recorded and its tag set (and pinned with --pin). An image with a bad or missing
 * blob fails alone, named with the reason; the others are imported. A blob already in the store
 * is not read again (an incremental bundle from `export --since` holds only new blobs: the rest
 * must be in the store). Where an image belongs: --upstream/--repo (and --tag) when given, else
 * the descriptor's dev.pullcache.upstream / dev.pullcache.repository annotations and the tag of
 * its org.opencontainers.image.ref.name (HOST/REPO:TAG, or just TAG). Importing the same bundle
 * twice changes nothing: present content is skipped, a tag already on the same digest is kept
 * as it is, a pin already there stays.
 *
 * A tar is read once, in any order (libarchive): blobs not in the store are streamed into store
 * writers as they come (verified, committed), JSON documents up to IMPORT_KEEP bytes
 * (manifests, configs) are kept in memory until the images are walked. A truncated tar stops
 * the reading; what was verified before the cut stays, and the images it completes are imported.
 * Blobs are read only by validated sha256 digests: the bundle path is the only path taken from
 * the command line. The store is opened for writing: stop the daemon first.
 */
#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/num.h"
#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/route.h"
#include "store/evict.h"
#include "store/store.h"

#define IMPORT_MAX_MANIFEST (64u << 20)
#define IMPORT_KEEP (4u << 20) /* a JSON blob up to this size is kept in memory (tar) */
#define IMPORT_MAX_DEPTH 4
#define IMPORT_CHUNK (1u << 20)
#define ANN_UPSTREAM "dev.pullcache.upstream"
#define ANN_REPO "dev.pullcache.repository"
#define ANN_REF "org.opencontainers.image.ref.name"

typedef struct kept {
  char *data;
  size_t len;
} kept_t;

typedef struct import {
  store_t *store;
  const char *bundle;
  int is_tar;
  json_t *kept_idx; /* tar: digest -> index into kept */
  kept_t *kept;
  size_t nkept;
  json_t *bad;   /* tar: digest -> why its bytes were refused */
  char cut[300]; /* tar: why the reading stopped early, "" if it did not */
  char *index;   /* index.json */
  size_t index_len;
  const char *upstream, *repo; /* of the image being imported */
  unsigned blobs, present, manifests, images, failed, tags;
  uint64_t bytes;
  char (*sights)[STORE_DIGEST_MAX]; /* digests of the image being imported (recorded at its end) */
  size_t nsights;
  int tty;     /* stderr is a terminal: a live line of what was copied */
  uint64_t t0; /* pc_mono_ms at the start */
  char err[600];
} import_t;

/* Note that digest belongs to the image's (upstream, repository): recorded in one write
 * transaction at the image's end (sight_flush), not one fsync each. */
static int sight(import_t *im, const char *digest)
{
  im->sights = pc_xrealloc(im->sights, (im->nsights + 1) * sizeof(*im->sights));
  pc_strlcpy(im->sights[im->nsights++], STORE_DIGEST_MAX, digest);
  return 0;
}

static int sight_flush(import_t *im)
{
  const char **v = pc_xcalloc(im->nsights ? im->nsights : 1, sizeof(*v));
  for (size_t i = 0; i < im->nsights; i++)
    v[i] = im->sights[i];
  int rc = im->nsights ? store_seen_put_many(im->store, im->upstream, im->repo, v, im->nsights,
                                             pc_now_sec())
                       : 0;
  free(v);
  im->nsights = 0;
  return rc;
}

/* The live line (a terminal only): blobs and bytes copied, the rate. */
static void progress(import_t *im)
{
  if (!im->tty)
    return;
  double secs = (double)(pc_mono_ms() - im->t0) / 1000.0;
  fprintf(stderr, "\r\033[K%u blobs, %.1f MB copied, %.1f MB/s", im->blobs, (double)im->bytes / 1e6,
          secs > 0.1 ? (double)im->bytes / 1e6 / secs : 0.0);
}

static void progress_clear(import_t *im)
{
  if (im->tty)
    fprintf(stderr, "\r\033[K");
}

static void usage(FILE *f)
{
  fprintf(f, "usage: pullcache import [--store DIR] [--upstream NAME --repo NAME [--tag TAG]]\n"
             "         [--pin] BUNDLE|BUNDLE.tar|-\n"
             "\n"
             "Copy every image of an OCI image layout (a directory, a tar file, or a tar on\n"
             "stdin: what `pullcache export` writes, or e.g. `skopeo copy --all ... oci:DIR`)\n"
             "into the store, each blob verified against its digest, and record its tag.\n"
             "Where an image belongs: --upstream/--repo (and --tag) if given, else the\n"
             "bundle's dev.pullcache.* annotations and its org.opencontainers.image.ref.name.\n"
             "--pin pins each image imported. Importing a bundle twice changes nothing. Run it\n"
             "while the daemon is stopped (a running daemon holds the store's lock).\n"
             "\n"
             "Exit status: 0 every image imported, 1 some failed (named), 2 usage error.\n");
}

static int fail(import_t *im, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(import_t *im, int rc, const char *fmt, ...)
{
  if (!im->err[0]) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->err, sizeof(im->err), fmt, ap);
    va_end(ap);
  }
  return rc ? rc : PC_E_INTERNAL;
}

static int read_fd_all(int fd, size_t max, char **out, size_t *outlen)
{
  struct stat st;
  if (fstat(fd, &st) < 0)
    return -errno;
  if ((uint64_t)st.st_size > max)
    return PC_E_TOOBIG;
  char *buf = pc_xmalloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      free(buf);
      return n < 0 ? -errno : -EIO;
    }
    got += (size_t)n;
  }
  buf[got] = '\0';
  *out = buf;
  *outlen = got;
  return 0;
}

/* BUNDLE/blobs/sha256/<hex> of a validated sha256 digest. */
static int blob_path(const import_t *im, const char *digest, char *buf, size_t len)
{
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256)
    return PC_E_DIGEST_INVALID;
  int n = snprintf(buf, len, "%s/blobs/sha256/%s", im->bundle, digest + 7);
  return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static int commit_mem(import_t *im, const char *digest, const char *data, size_t len,
                      const char *mt)
{
  store_writer_t *w;
  int rc = store_writer_new(im->store, digest, (int64_t)len, &w);
  if (rc == 0)
    rc = store_writer_write(w, data, len);
  if (rc) {
    store_writer_abort(w);
    return rc;
  }
  return store_writer_commit(w, mt, NULL);
}

/* Why a digest is not in a tar bundle. */
static const char *tar_missing(const import_t *im, const char *digest)
{
  json_t *b = json_object_get(im->bad, digest);
  if (b)
    return json_string_value(b);
  return im->cut[0] ? "not in the bundle (its reading stopped early: see above)"
                    : "neither in the bundle nor in the store (import the earlier bundle first)";
}

/* A blob (config or layer) into the store, verified; present ones are left as they are. */
static int import_blob(import_t *im, const char *digest, int64_t size, const char *mt)
{
  char path[4096];
  int rc = blob_path(im, digest, path, sizeof(path));
  if (rc)
    return fail(im, rc, "blob \"%.80s\": not a sha256 digest", digest);
  store_blob_info_t bi;
  if (store_blob_stat(im->store, digest, &bi) == 0) {
    im->present++;
    return sight(im, digest);
  }
  if (im->is_tar) {
    json_t *k = json_object_get(im->kept_idx, digest);
    if (!k)
      return fail(im, PC_E_BLOB_UNKNOWN, "blob %s: %s", digest, tar_missing(im, digest));
    kept_t *kp = &im->kept[json_integer_value(k)];
    if (size >= 0 && (uint64_t)size != kp->len)
      return fail(im, PC_E_SIZE_INVALID, "blob %s: %zu bytes, the manifest says %lld", digest,
                  kp->len, (long long)size);
    rc = commit_mem(im, digest, kp->data, kp->len, mt);
    if (rc)
      return fail(im, rc, "blob %s: %s", digest, pc_strerror(rc));
    im->blobs++;
    im->bytes += kp->len;
    return sight(im, digest);
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(im, -errno, "blob %s: %s", digest,
                errno == ENOENT ? "neither in the bundle nor in the store (import the earlier "
                                  "bundle first)"
                                : strerror(errno));
  store_writer_t *w = NULL;
  char *buf = pc_xmalloc(IMPORT_CHUNK);
  rc = store_writer_new(im->store, digest, size, &w);
  while (rc == 0) {
    ssize_t n = read(fd, buf, IMPORT_CHUNK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : 0;
      break;
    }
    rc = store_writer_write(w, buf, (size_t)n);
  }
  free(buf);
  close(fd);
  uint64_t got = w ? store_writer_size(w) : 0;
  if (rc) {
    store_writer_abort(w);
    return fail(im, rc, "blob %s: %s", digest, pc_strerror(rc));
  }
  rc = store_writer_commit(w, mt, NULL);
  if (rc)
    return fail(im, rc, "blob %s: %s", digest,
                rc == PC_E_DIGEST_INVALID || rc == PC_E_SIZE_INVALID
                    ? "the bundle's bytes do not match the digest (corrupt bundle); not stored"
                    : pc_strerror(rc));
  im->blobs++;
  im->bytes += got;
  progress(im);
  return sight(im, digest);
}

/* A manifest's bytes: kept from the tar, the bundle's file, else the store (an incremental
 * bundle); verified against the digest. */
static int manifest_bytes(import_t *im, const char *digest, char **out, size_t *len, int *stored)
{
  char path[4096], dg[72];
  int rc = blob_path(im, digest, path, sizeof(path));
  *stored = 0;
  if (rc)
    return fail(im, rc, "manifest \"%.80s\": not a sha256 digest", digest);
  json_t *k = im->is_tar ? json_object_get(im->kept_idx, digest) : NULL;
  if (k) {
    kept_t *kp = &im->kept[json_integer_value(k)];
    *out = pc_xmalloc(kp->len + 1);
    memcpy(*out, kp->data, kp->len);
    (*out)[kp->len] = '\0';
    *len = kp->len;
    return 0; /* verified as it was read */
  }
  int fd = im->is_tar ? -1 : open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && store_manifest_open(im->store, digest, &fd, NULL) == 0)
    *stored = 1;
  if (fd < 0)
    return fail(im, PC_E_MANIFEST_UNKNOWN, "manifest %s: %s", digest,
                im->is_tar ? tar_missing(im, digest)
                           : "neither in the bundle nor in the store (import the earlier bundle "
                             "first)");
  rc = read_fd_all(fd, IMPORT_MAX_MANIFEST, out, len);
  close(fd);
  if (rc)
    return fail(im, rc, "manifest %s: %s", digest, pc_strerror(rc));
  store_digest_of(*out, *len, dg);
  if (strcmp(dg, digest) != 0) {
    free(*out);
    return fail(im, PC_E_DIGEST_INVALID,
                "manifest %s: the bytes do not match the digest (corrupt %s); not stored", digest,
                *stored ? "store: run pullcache fsck" : "bundle");
  }
  return 0;
}

static const char *str_field(json_t *o, const char *key)
{
  json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

/* A manifest named by desc, and everything below it; recorded after its children. */
static int import_manifest(import_t *im, json_t *desc, int depth)
{
  char *bytes = NULL;
  size_t len = 0, i;
  int stored, rc;
  json_t *doc = NULL, *arr, *c;
  const char *digest = str_field(desc, "digest");
  const char *mt = str_field(desc, "mediaType");
  if (depth > IMPORT_MAX_DEPTH)
    return fail(im, PC_E_INTERNAL, "indexes nested too deeply");
  if (!digest)
    return fail(im, PC_E_DIGEST_INVALID, "a manifest descriptor without a digest");
  rc = manifest_bytes(im, digest, &bytes, &len, &stored);
  if (rc)
    return rc;
  doc = json_loadb(bytes, len, 0, NULL);
  if (!json_is_object(doc)) {
    rc = fail(im, PC_E_INTERNAL, "manifest %s is not a JSON object", digest);
    goto out;
  }
  if (!mt)
    mt = str_field(doc, "mediaType");
  if (!mt) {
    rc = fail(im, PC_E_INTERNAL, "manifest %s has no media type", digest);
    goto out;
  }
  arr = json_object_get(doc, "manifests");
  if (json_is_array(arr)) {
    json_array_foreach(arr, i, c)
    {
      /* An index may name platforms the bundle does not carry (exported for some): those
       * that are in neither the bundle nor the store are left out, as a mirror would. */
      const char *cd = str_field(c, "digest");
      char p[4096];
      if (cd && blob_path(im, cd, p, sizeof(p)) == 0 && store_manifest_stat(im->store, cd, NULL) &&
          (im->is_tar
               ? !im->cut[0] && !json_object_get(im->kept_idx, cd) && !json_object_get(im->bad, cd)
               : access(p, F_OK) != 0))
        continue;
      rc = import_manifest(im, c, depth + 1);
      if (rc)
        goto out;
    }
  } else {
    json_t *all = json_array();
    json_t *cfg = json_object_get(doc, "config");
    if (json_is_object(cfg))
      json_array_append(all, cfg);
    json_array_extend(all, json_object_get(doc, "layers"));
    json_array_foreach(all, i, c)
    {
      const char *bd = str_field(c, "digest");
      json_t *sz = json_object_get(c, "size");
      rc = bd ? import_blob(im, bd, json_is_integer(sz) ? (int64_t)json_integer_value(sz) : -1,
                            str_field(c, "mediaType"))
              : fail(im, PC_E_DIGEST_INVALID, "manifest %s: a descriptor without a digest", digest);
      if (rc)
        break;
    }
    json_decref(all);
    if (rc)
      goto out;
  }
  if (store_manifest_stat(im->store, digest, NULL) != 0) {
    rc = store_manifest_put(im->store, bytes, len, mt, digest, NULL);
    if (rc) {
      rc = fail(im, rc, "manifest %s: %s", digest, pc_strerror(rc));
      goto out;
    }
    im->manifests++;
  }
  rc = sight(im, digest);
out:
  json_decref(doc);
  free(bytes);
  return rc;
}

/* ---- a tar, read once --------------------------------------------------------------------- */

/* A blob file's name: "<64 lowercase hex>" (the digest's hex) -> 1, anything else 0. */
static int hexname(const char *s)
{
  char dg[80];
  snprintf(dg, sizeof(dg), "sha256:%.70s", s);
  return store_digest_parse(dg, strlen(dg)) == STORE_DIGEST_SHA256;
}

static void refuse(import_t *im, const char *digest, const char *why)
{
  json_object_set_new(im->bad, digest, json_string(why));
  fprintf(stderr, "pullcache import: blob %s: %s\n", digest, why);
}

/* One blob entry of the tar: keep it (JSON, small), stream it into the store, or skip it. */
static int tar_blob(import_t *im, struct archive *a, const char *digest, int64_t size, char *buf)
{
  if (store_blob_stat(im->store, digest, NULL) == 0 || json_object_get(im->kept_idx, digest))
    return archive_read_data_skip(a) == ARCHIVE_OK ? 0 : -1;
  la_ssize_t n = archive_read_data(a, buf, IMPORT_CHUNK);
  if (n < 0)
    return -1;
  size_t lead = 0;
  while (lead < (size_t)n && (buf[lead] == ' ' || buf[lead] == '\n' || buf[lead] == '\t'))
    lead++;
  if (size <= (int64_t)IMPORT_KEEP && lead < (size_t)n && buf[lead] == '{') {
    pc_buf_t b;
    pc_buf_init(&b, IMPORT_KEEP);
    int bad = pc_buf_add(&b, buf, (size_t)n);
    while (!bad && (n = archive_read_data(a, buf, IMPORT_CHUNK)) > 0)
      bad = pc_buf_add(&b, buf, (size_t)n);
    if (n < 0) {
      pc_buf_free(&b);
      return -1;
    }
    char dg[72];
    store_digest_of(b.p ? b.p : "", b.len, dg);
    if (bad || strcmp(dg, digest) != 0 || (size >= 0 && (uint64_t)size != b.len)) {
      refuse(im, digest, "the bundle's bytes do not match the digest (corrupt bundle); not stored");
      pc_buf_free(&b);
      return 0;
    }
    im->kept = pc_xrealloc(im->kept, (im->nkept + 1) * sizeof(*im->kept));
    im->kept[im->nkept].data = pc_buf_steal(&b, &im->kept[im->nkept].len);
    if (!im->kept[im->nkept].data)
      im->kept[im->nkept].data = pc_xstrdup("");
    json_object_set_new(im->kept_idx, digest, json_integer((json_int_t)im->nkept++));
    return 0;
  }
  store_writer_t *w;
  int rc = store_writer_new(im->store, digest, size, &w);
  if (rc) {
    refuse(im, digest, pc_strerror(rc));
    return archive_read_data_skip(a) == ARCHIVE_OK ? 0 : -1;
  }
  while (rc == 0 && n > 0) {
    rc = store_writer_write(w, buf, (size_t)n);
    if (rc == 0)
      n = archive_read_data(a, buf, IMPORT_CHUNK);
  }
  if (n < 0) {
    store_writer_abort(w);
    return -1;
  }
  if (rc) {
    store_writer_abort(w);
    refuse(im, digest, rc == PC_E_SIZE_INVALID ? "more bytes than its size" : pc_strerror(rc));
    return archive_read_data_skip(a) == ARCHIVE_OK ? 0 : -1;
  }
  uint64_t got = store_writer_size(w);
  rc = store_writer_commit(w, NULL, NULL);
  if (rc) {
    refuse(im, digest,
           rc == PC_E_DIGEST_INVALID || rc == PC_E_SIZE_INVALID
               ? "the bundle's bytes do not match the digest (corrupt bundle); not stored"
               : pc_strerror(rc));
    return 0;
  }
  im->blobs++;
  im->bytes += got;
  progress(im);
  return 0;
}

static int read_tar(import_t *im)
{
  struct archive *a = archive_read_new();
  struct archive_entry *en;
  char *buf = pc_xmalloc(IMPORT_CHUNK);
  int rc;
  archive_read_support_format_tar(a);
  rc = !strcmp(im->bundle, "-") ? archive_read_open_fd(a, STDIN_FILENO, 1 << 16)
                                : archive_read_open_filename(a, im->bundle, 1 << 16);
  if (rc != ARCHIVE_OK) {
    fprintf(stderr, "pullcache import: %s: %s\n", im->bundle, archive_error_string(a));
    archive_read_free(a);
    free(buf);
    return -1;
  }
  while ((rc = archive_read_next_header(a, &en)) == ARCHIVE_OK) {
    const char *name = archive_entry_pathname(en);
    int64_t size = archive_entry_size_is_set(en) ? archive_entry_size(en) : -1;
    int r = 0;
    if (!name)
      name = "";
    if (!strncmp(name, "./", 2))
      name += 2;
    if (!strcmp(name, "index.json") && archive_entry_filetype(en) == AE_IFREG) {
      pc_buf_t b;
      la_ssize_t n;
      int big = 0;
      pc_buf_init(&b, IMPORT_MAX_MANIFEST);
      while ((n = archive_read_data(a, buf, IMPORT_CHUNK)) > 0 && !big)
        big = pc_buf_add(&b, buf, (size_t)n);
      free(im->index);
      im->index = pc_buf_steal(&b, &im->index_len);
      r = n < 0 ? -1 : 0;
    } else if (!strncmp(name, "blobs/sha256/", 13) && hexname(name + 13) &&
               archive_entry_filetype(en) == AE_IFREG) {
      char dg[80];
      snprintf(dg, sizeof(dg), "sha256:%.64s", name + 13);
      r = tar_blob(im, a, dg, size, buf);
    } else {
      r = archive_read_data_skip(a) == ARCHIVE_OK ? 0 : -1;
    }
    if (r) {
      rc = ARCHIVE_FATAL;
      break;
    }
  }
  progress_clear(im);
  if (rc != ARCHIVE_EOF) {
    snprintf(im->cut, sizeof(im->cut), "%s",
             archive_error_string(a) ? archive_error_string(a) : "unreadable");
    fprintf(stderr, "pullcache import: %s: the tar stops early (%s): what came before is kept\n",
            im->bundle, im->cut);
  }
  archive_read_free(a);
  free(buf);
  return 0;
}

/* ---- the images ----------------------------------------------------------------------------- */

/* The tag of a ref.name annotation: "HOST/REPO:TAG", "REPO:TAG" or "TAG"; NULL if none. */
static const char *ref_tag(const char *ref)
{
  if (!ref)
    return NULL;
  if (route_tag_valid(ref, strlen(ref)))
    return ref;
  const char *colon = strrchr(ref, ':'), *slash = strrchr(ref, '/');
  if (colon && (!slash || colon > slash) && route_tag_valid(colon + 1, strlen(colon + 1)))
    return colon + 1;
  return NULL;
}

static int import_one(import_t *im, json_t *desc, size_t n, const char *up_opt,
                      const char *repo_opt, const char *tag_opt, int pin)
{
  json_t *ann = json_object_get(desc, "annotations");
  const char *up = up_opt ? up_opt : str_field(ann, ANN_UPSTREAM);
  const char *repo = repo_opt ? repo_opt : str_field(ann, ANN_REPO);
  const char *ref = str_field(ann, ANN_REF);
  const char *tag = tag_opt ? tag_opt : ref_tag(ref);
  const char *digest = str_field(desc, "digest");
  char what[900];
  int rc = 0;
  im->err[0] = '\0';
  snprintf(what, sizeof(what), "%s%s%s%s%s", up ? up : "?", "/", repo ? repo : "?", tag ? ":" : "@",
           tag      ? tag
           : digest ? digest
                    : "?");
  if (!up || !repo)
    rc = fail(im, -EINVAL, "image %zu: no dev.pullcache annotations: give --upstream and --repo",
              n + 1);
  else if (!config_upstream_name_valid(up))
    rc = fail(im, -EINVAL, "upstream \"%.100s\" is not a registry host[:port]", up);
  else if (!route_name_valid(repo, strlen(repo)))
    rc = fail(im, -EINVAL, "repository name \"%.200s\" is invalid", repo);
  else if (!digest || store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256)
    rc = fail(im, PC_E_DIGEST_INVALID, "image %zu: no sha256 digest", n + 1);
  if (rc == 0) {
    im->upstream = up;
    im->repo = repo;
    rc = import_manifest(im, desc, 0);
  }
  if (im->nsights) { /* where the content belongs, before the tag that names it */
    int src = sight_flush(im);
    if (src && rc == 0)
      rc = fail(im, src, "recording the repository's content: %s", pc_strerror(src));
  }
  if (rc == 0 && tag) {
    store_tag_t st, old;
    if (store_tag_get(im->store, up, repo, tag, &old) != 0 || strcmp(old.digest, digest) != 0) {
      const char *mt = str_field(desc, "mediaType");
      store_manifest_info_t info;
      memset(&st, 0, sizeof(st));
      pc_strlcpy(st.digest, sizeof(st.digest), digest);
      if (store_manifest_stat(im->store, digest, &info) == 0) {
        pc_strlcpy(st.media_type, sizeof(st.media_type), info.media_type);
        st.size = info.size;
      } else if (mt) {
        pc_strlcpy(st.media_type, sizeof(st.media_type), mt);
      }
      st.fetched_at = st.checked_at = pc_now_sec();
      rc = store_tag_put(im->store, up, repo, tag, &st);
      if (rc)
        rc = fail(im, rc, "tag %s: %s", tag, pc_strerror(rc));
    }
  }
  if (rc == 0 && tag)
    im->tags++;
  if (rc == 0 && pin) {
    char pref[600];
    if (tag)
      snprintf(pref, sizeof(pref), "%s:%s", repo, tag);
    else
      snprintf(pref, sizeof(pref), "%s@%s", repo, digest);
    rc = store_pin_add(im->store, up, pref);
    if (rc)
      rc = fail(im, rc, "pin %s: %s", pref, pc_strerror(rc));
  }
  progress_clear(im);
  if (rc) {
    printf("failed    %s: %s\n", what, im->err);
    im->failed++;
  } else {
    printf("imported  %s\n", what);
    im->images++;
  }
  fflush(stdout);
  return rc;
}

int cmd_import(int argc, char **argv)
{
  const char *store_dir = CONFIG_STORE_DEFAULT, *upstream = NULL, *repo = NULL, *tag = NULL;
  const char *bundle = NULL;
  int pin = 0, code = 2, rc;
  import_t im = {0};
  json_t *index = NULL, *arr, *desc;
  size_t i;

  for (int a = 1; a < argc; a++) {
    const char **dst = NULL;
    if (!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(argv[a], "--pin")) {
      pin = 1;
      continue;
    }
    int missing = 0;
    const char *sv = pc_opt_value(argc, argv, &a, "--store", &missing);
    if (sv || missing) {
      if (missing) {
        fprintf(stderr, "pullcache import: --store needs a value\n");
        return 2;
      }
      store_dir = sv;
      continue;
    }
    if (!strcmp(argv[a], "--upstream"))
      dst = &upstream;
    else if (!strcmp(argv[a], "--repo"))
      dst = &repo;
    else if (!strcmp(argv[a], "--tag"))
      dst = &tag;
    if (dst) {
      if (a + 1 >= argc) {
        fprintf(stderr, "pullcache import: %s needs a value\n", argv[a]);
        return 2;
      }
      *dst = argv[++a];
    } else if ((argv[a][0] == '-' && strcmp(argv[a], "-") != 0) || bundle) {
      fprintf(stderr, "pullcache import: unexpected argument '%s'\n", argv[a]);
      usage(stderr);
      return 2;
    } else {
      bundle = argv[a];
    }
  }
  if (!bundle || (!upstream != !repo) || (tag && !repo)) {
    if (bundle)
      fprintf(stderr, "pullcache import: --upstream and --repo go together (--tag with them)\n");
    usage(stderr);
    return 2;
  }
  if (upstream && !config_upstream_name_valid(upstream)) {
    fprintf(stderr, "pullcache import: upstream '%s' is not a registry host[:port]\n", upstream);
    return 2;
  }
  if (repo && !route_name_valid(repo, strlen(repo))) {
    fprintf(stderr, "pullcache import: repository name '%s' is invalid\n", repo);
    return 2;
  }
  if (tag && !route_tag_valid(tag, strlen(tag))) {
    fprintf(stderr, "pullcache import: tag '%s' is invalid\n", tag);
    return 2;
  }
  struct stat sb;
  if (strcmp(bundle, "-") != 0 && stat(bundle, &sb) != 0) {
    fprintf(stderr, "pullcache import: %s: %s\n", bundle, strerror(errno));
    return 2;
  }
  code = 1;
  im.bundle = bundle;
  im.is_tar = !strcmp(bundle, "-") || !S_ISDIR(sb.st_mode);
  im.kept_idx = json_object();
  im.bad = json_object();
  uint64_t t0 = pc_mono_ms();
  im.t0 = t0;
  im.tty = isatty(STDERR_FILENO);
  rc = store_open(store_dir, NULL, &im.store);
  if (rc) {
    fprintf(stderr, "pullcache import: cannot open store %s: %s\n", store_dir,
            rc == -EBUSY ? "in use by another process (stop the daemon first)" : pc_strerror(rc));
    goto out;
  }
  if (im.is_tar) {
    if (read_tar(&im))
      goto out;
  } else {
    char path[4096];
    snprintf(path, sizeof(path), "%s/index.json", bundle);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      read_fd_all(fd, IMPORT_MAX_MANIFEST, &im.index, &im.index_len);
      close(fd);
    }
  }
  index = im.index ? json_loadb(im.index, im.index_len, 0, NULL) : NULL;
  arr = json_object_get(index, "manifests");
  if (!json_is_array(arr)) {
    fprintf(stderr, "pullcache import: %s: no OCI image layout index (index.json)%s\n", bundle,
            im.cut[0] ? " before the tar stopped" : "");
    goto out;
  }
  if (tag && json_array_size(arr) != 1) {
    fprintf(stderr, "pullcache import: --tag needs a layout with exactly one image\n");
    code = 2;
    goto out;
  }
  json_array_foreach(arr, i, desc) import_one(&im, desc, i, upstream, repo, tag, pin);
  double secs = (double)(pc_mono_ms() - t0) / 1000.0;
  printf("imported %u of %u images from %s: %u manifests, %u blobs (%llu bytes) copied in %.1f s "
         "(%.1f MB/s), %u already present, %u tags; %u failed\n",
         im.images, im.images + im.failed, bundle, im.manifests, im.blobs,
         (unsigned long long)im.bytes, secs, secs > 0 ? (double)im.bytes / 1e6 / secs : 0.0,
         im.present, im.tags, im.failed);
  code = im.failed || im.cut[0] ? 1 : 0;
out:
  store_close(im.store);
  json_decref(index);
  json_decref(im.kept_idx);
  json_decref(im.bad);
  for (size_t k = 0; k < im.nkept; k++)
    free(im.kept[k].data);
  free(im.kept);
  free(im.index);
  free(im.sights);
  return code;
}
