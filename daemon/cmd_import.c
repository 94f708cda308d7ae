/* cmd_import — `pullcache import`: copy an OCI image layout into the store.
 *
 * Reads LAYOUT/index.json, walks every descriptor it lists (indexes recursively, image
 * manifests with their config and layers), copies each blob from LAYOUT/blobs/sha256/<hex>
 * through a store writer (hashed and verified against its digest and size), stores each
 * manifest with its media type, and records the top-level tags under (upstream, repo) with
 * fetched_at = now. The tag comes from --tag, else from the descriptor's
 * org.opencontainers.image.ref.name annotation (a "name:tag" value keeps the part after the
 * last ':'). Blobs are read only by validated sha256 digests: the layout path is the only
 * path taken from the command line.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/route.h"
#include "store/store.h"

#define IMPORT_MAX_MANIFEST (64u << 20)
#define IMPORT_MAX_DEPTH 4

typedef struct import {
  store_t *store;
  const char *layout;
  const char *upstream, *repo; /**< every digest imported is recorded as seen there */
  unsigned blobs, manifests, tags;
  uint64_t bytes;
} import_t;

static void usage(FILE *f)
{
  fprintf(f, "usage: pullcache import --store DIR --upstream NAME --repo NAME [--tag TAG] "
             "OCI_LAYOUT_DIR\n"
             "\n"
             "Copy every manifest and blob of an OCI image layout into the store (each verified\n"
             "against its digest) and record its tags for repository NAME of upstream NAME\n"
             "(e.g. --upstream registry.k8s.io --repo pause). The tag is --tag, else the\n"
             "layout's org.opencontainers.image.ref.name annotation. Run it while the daemon\n"
             "is stopped (the store is locked by a running daemon).\n");
}

/* LAYOUT/blobs/<alg>/<hex> for a validated sha256 digest. */
static int blob_path(const import_t *im, const char *digest, char *buf, size_t len)
{
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256)
    return PC_E_DIGEST_INVALID;
  int n = snprintf(buf, len, "%s/blobs/sha256/%s", im->layout, digest + 7);
  return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static int read_file(const char *path, size_t max, char **out, size_t *outlen)
{
  struct stat st;
  char *buf = NULL;
  size_t got = 0;
  int rc = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  if (fstat(fd, &st) < 0) {
    rc = -errno;
    goto out;
  }
  if ((uint64_t)st.st_size > max) {
    rc = PC_E_TOOBIG;
    goto out;
  }
  buf = pc_xmalloc((size_t)st.st_size + 1);
  while (got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      rc = n < 0 ? -errno : -EIO;
      goto out;
    }
    got += (size_t)n;
  }
  buf[got] = '\0';
  *out = buf;
  *outlen = got;
  buf = NULL;
out:
  free(buf);
  close(fd);
  return rc;
}

/* Copy one blob (config or layer) into the store, verified. */
static int import_blob(import_t *im, const char *digest, int64_t size, const char *media_type)
{
  char path[4096];
  char *buf = NULL;
  store_writer_t *w = NULL;
  int fd = -1;
  int rc = blob_path(im, digest, path, sizeof(path));
  if (rc)
    goto out;
  rc = store_seen_put(im->store, im->upstream, im->repo, digest, pc_now_sec());
  if (rc)
    goto out;
  if (store_blob_stat(im->store, digest, NULL) == 0) {
    rc = 0; /* already there (shared layer) */
    goto out;
  }
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    rc = -errno;
    fprintf(stderr, "pullcache import: %s: %s\n", path, strerror(errno));
    goto out;
  }
  rc = store_writer_new(im->store, digest, size, &w);
  if (rc)
    goto out;
  buf = pc_xmalloc(1u << 20);
  for (;;) {
    ssize_t n = read(fd, buf, 1u << 20);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      rc = -errno;
      goto out;
    }
    if (n == 0)
      break;
    rc = store_writer_write(w, buf, (size_t)n);
    if (rc)
      goto out;
  }
  im->bytes += store_writer_size(w);
  rc = store_writer_commit(w, media_type, NULL);
  w = NULL;
  if (rc) {
    fprintf(stderr, "pullcache import: blob %s: %s\n", digest, pc_strerror(rc));
    goto out;
  }
  im->blobs++;
out:
  store_writer_abort(w);
  free(buf);
  if (fd >= 0)
    close(fd);
  return rc;
}

static const char *str_field(json_t *o, const char *key)
{
  json_t *v = json_object_get(o, key);
  return json_is_string(v) ? json_string_value(v) : NULL;
}

static int import_descriptor_blob(import_t *im, json_t *desc)
{
  const char *digest = str_field(desc, "digest");
  json_t *size = json_object_get(desc, "size");
  if (!digest || !json_is_integer(size)) {
    fprintf(stderr, "pullcache import: descriptor without digest or size\n");
    return PC_E_DIGEST_INVALID;
  }
  return import_blob(im, digest, (int64_t)json_integer_value(size), str_field(desc, "mediaType"));
}

/* Import a manifest (and everything below it) named by desc. */
static int import_manifest(import_t *im, json_t *desc, int depth)
{
  char path[4096];
  char *bytes = NULL;
  size_t len = 0;
  json_t *doc = NULL, *arr;
  size_t i;
  const char *digest = str_field(desc, "digest");
  const char *mt = str_field(desc, "mediaType");
  int rc;

  if (depth > IMPORT_MAX_DEPTH) {
    fprintf(stderr, "pullcache import: indexes nested too deeply\n");
    return PC_E_INTERNAL;
  }
  if (!digest) {
    fprintf(stderr, "pullcache import: manifest descriptor without a digest\n");
    return PC_E_DIGEST_INVALID;
  }
  rc = blob_path(im, digest, path, sizeof(path));
  if (rc) {
    fprintf(stderr, "pullcache import: unsupported digest %s\n", digest);
    goto out;
  }
  rc = read_file(path, IMPORT_MAX_MANIFEST, &bytes, &len);
  if (rc) {
    fprintf(stderr, "pullcache import: %s: %s\n", path, pc_strerror(rc));
    goto out;
  }
  doc = json_loadb(bytes, len, 0, NULL);
  if (!json_is_object(doc)) {
    fprintf(stderr, "pullcache import: %s is not a JSON manifest\n", digest);
    rc = PC_E_INTERNAL;
    goto out;
  }
  if (!mt)
    mt = str_field(doc, "mediaType");
  if (!mt) {
    fprintf(stderr, "pullcache import: %s has no media type\n", digest);
    rc = PC_E_INTERNAL;
    goto out;
  }
  arr = json_object_get(doc, "manifests");
  if (json_is_array(arr)) {
    json_t *child;
    json_array_foreach(arr, i, child)
    {
      rc = import_manifest(im, child, depth + 1);
      if (rc)
        goto out;
    }
  } else {
    json_t *cfg = json_object_get(doc, "config"), *layer;
    if (json_is_object(cfg)) {
      rc = import_descriptor_blob(im, cfg);
      if (rc)
        goto out;
    }
    arr = json_object_get(doc, "layers");
    json_array_foreach(arr, i, layer)
    {
      rc = import_descriptor_blob(im, layer);
      if (rc)
        goto out;
    }
  }
  rc = store_manifest_put(im->store, bytes, len, mt, digest, NULL);
  if (rc == 0)
    rc = store_seen_put(im->store, im->upstream, im->repo, digest, pc_now_sec());
  if (rc) {
    fprintf(stderr, "pullcache import: manifest %s: %s\n", digest, pc_strerror(rc));
    goto out;
  }
  im->manifests++;
out:
  json_decref(doc);
  free(bytes);
  return rc;
}

/* The tag for a top-level descriptor: --tag, else the ref.name annotation; NULL if none. */
static const char *descriptor_tag(json_t *desc, const char *tag_opt)
{
  const char *ref, *colon;
  if (tag_opt)
    return tag_opt;
  ref = str_field(json_object_get(desc, "annotations"), "org.opencontainers.image.ref.name");
  if (!ref)
    return NULL;
  if (route_tag_valid(ref, strlen(ref)))
    return ref;
  colon = strrchr(ref, ':');
  if (colon && route_tag_valid(colon + 1, strlen(colon + 1)))
    return colon + 1;
  return NULL;
}

int cmd_import(int argc, char **argv)
{
  const char *store_dir = NULL, *upstream = NULL, *repo = NULL, *tag = NULL, *layout = NULL;
  import_t im = {0};
  char path[4096];
  json_t *index = NULL, *arr, *desc;
  size_t i;
  int code = 2, rc;

  for (int a = 1; a < argc; a++) {
    const char **dst = NULL;
    if (!strcmp(argv[a], "-h") || !strcmp(argv[a], "--help")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(argv[a], "--store"))
      dst = &store_dir;
    else if (!strcmp(argv[a], "--upstream"))
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
    } else if (argv[a][0] == '-' || layout) {
      fprintf(stderr, "pullcache import: unexpected argument '%s'\n", argv[a]);
      usage(stderr);
      return 2;
    } else {
      layout = argv[a];
    }
  }
  if (!store_dir || !upstream || !repo || !layout) {
    usage(stderr);
    return 2;
  }
  if (!config_upstream_name_valid(upstream)) {
    fprintf(stderr, "pullcache import: upstream '%s' is not a registry host[:port]\n", upstream);
    return 2;
  }
  if (!route_name_valid(repo, strlen(repo))) {
    fprintf(stderr, "pullcache import: repository name '%s' is invalid\n", repo);
    return 2;
  }
  if (tag && !route_tag_valid(tag, strlen(tag))) {
    fprintf(stderr, "pullcache import: tag '%s' is invalid\n", tag);
    return 2;
  }

  code = 1;
  im.layout = layout;
  im.upstream = upstream;
  im.repo = repo;
  snprintf(path, sizeof(path), "%s/index.json", layout);
  index = json_load_file(path, 0, NULL);
  arr = json_object_get(index, "manifests");
  if (!json_is_array(arr)) {
    fprintf(stderr, "pullcache import: %s: not an OCI image layout index\n", path);
    goto out;
  }
  if (tag && json_array_size(arr) != 1) {
    fprintf(stderr, "pullcache import: --tag needs a layout with exactly one image\n");
    code = 2;
    goto out;
  }
  rc = store_open(store_dir, NULL, &im.store);
  if (rc) {
    fprintf(stderr, "pullcache import: cannot open store %s: %s\n", store_dir,
            rc == -EBUSY ? "in use by another process (stop the daemon first)" : pc_strerror(rc));
    goto out;
  }
  json_array_foreach(arr, i, desc)
  {
    const char *t;
    rc = import_manifest(&im, desc, 0);
    if (rc)
      goto out;
    t = descriptor_tag(desc, tag);
    if (t) {
      store_tag_t st;
      const char *digest = str_field(desc, "digest");
      const char *mt = str_field(desc, "mediaType");
      json_t *size = json_object_get(desc, "size");
      memset(&st, 0, sizeof(st));
      snprintf(st.digest, sizeof(st.digest), "%s", digest);
      snprintf(st.media_type, sizeof(st.media_type), "%s", mt ? mt : "");
      st.size = json_is_integer(size) ? (uint64_t)json_integer_value(size) : 0;
      st.fetched_at = st.checked_at = pc_now_sec();
      rc = store_tag_put(im.store, upstream, repo, t, &st);
      if (rc) {
        fprintf(stderr, "pullcache import: tag %s: %s\n", t, pc_strerror(rc));
        goto out;
      }
      im.tags++;
    }
  }
  printf("imported %s into %s/%s: %u manifests, %u blobs (%llu bytes), %u tags\n", layout, upstream,
         repo, im.manifests, im.blobs, (unsigned long long)im.bytes, im.tags);
  code = 0;
out:
  store_close(im.store);
  json_decref(index);
  return code;
}
