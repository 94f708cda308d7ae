/* fuzz-registry — libFuzzer target for the whole request path: srv connection code, route
 * parsing and the daemon's real registry handlers over a real store.
 *
 * Each input is served by tests/fuzz/harness (fuzz_serve): on one end of an AF_UNIX socketpair
 * adopted by a real srv_t, in arbitrary pieces seeded by the first two input bytes. The handler
 * is registry_handle with a real daemon_t: config_defaults plus the upstreams "ghcr.io" and
 * "localhost:5000" (so ns= and path-prefix selection run), offline (a miss never reaches a
 * network: the mirror answers 404), and a store in a temporary directory seeded once with
 * blobs (a layer, a config, the empty blob), an image manifest and an index, and tags:
 *   registry.k8s.io pause:            3.10, latest -> index; 3.9 -> manifest
 *   registry.k8s.io coredns/coredns:  v1.11.1, v1.11.3, v1.12.0 -> index; v1.10.0 -> a digest
 *                                     the store lacks (a dangling tag)
 *   ghcr.io fuzz/app:                 1.0 -> manifest
 * so hits, Range requests, tags/list paging and If-None-Match all run. The digests are fixed
 * (tests/fuzz/corpus/registry and registry.dict name them) and checked at start-up.
 *
 * The harness runs with half_close: after the input the client shuts down its sending side and
 * reads until the server closes, so every answer is read whole.
 *
 * Oracles: sanitizers; the harness's ("HTTP/1.1 " first, the connection gone within 30 s);
 * and, over the responses read back (split by Content-Length, matched in order with the
 * requests the handler saw): each starts with "HTTP/1.1 " and a 3-digit status and carries
 * Content-Length (unless 1xx/204/304); every request the handler saw got exactly one complete
 * answer, followed at most by the server's own answer to what it could not parse, and nothing
 * else; an answer >= 400 to a non-HEAD request on a /v2/ path has a JSON body with a string
 * errors[0].code; a 206 has a Content-Range that agrees with its length, and a 200/206 of the
 * seeded layer carries exactly the bytes it names.
 */
#include "tests/fuzz/harness.h"

#include "core/pc.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/mirror.h"
#include "daemon/registry.h"
#include "daemon/upstream.h"

#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define LAYER_LEN 3000
#define LAYER_DIGEST "sha256:9c81a321274950833a44af66aea4d47aaac4957b66e728aa3f2744b9a30e541e"
#define CONFIG_DIGEST "sha256:c5b1d63604f273462ef36fadac3182d43ae6a6138731cf594b314835cf1c034f"
#define EMPTY_DIGEST "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define MANIFEST_DIGEST "sha256:40ab60e1a1b95a56c47b6b7385f50a26708b6a4bad9319729428dbab309012b6"
#define INDEX_DIGEST "sha256:f5fdb67d38b2d900159acd09fe590eecc4b6b2b95f5348f912451e76019cdead"
#define GONE_DIGEST "sha256:283bb9deef02e6843abfb538efa1eca70801bd8a701c3f98191e123496339247"

#define CT_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define CT_INDEX "application/vnd.oci.image.index.v1+json"
#define CT_CONFIG "application/vnd.oci.image.config.v1+json"
#define CT_LAYER "application/vnd.oci.image.layer.v1.tar+gzip"

static const char config_json[] =
    "{\"architecture\":\"amd64\",\"os\":\"linux\",\"rootfs\":{\"type\":\"layers\","
    "\"diff_ids\":[]}}";
static const char manifest_json[] =
    "{\"schemaVersion\":2,\"mediaType\":\"" CT_MANIFEST "\",\"config\":{\"mediaType\":\"" CT_CONFIG
    "\",\"digest\":\"" CONFIG_DIGEST "\",\"size\":78},\"layers\":[{\"mediaType\":\"" CT_LAYER
    "\",\"digest\":\"" LAYER_DIGEST "\",\"size\":3000}]}";
static const char index_json[] = "{\"schemaVersion\":2,\"mediaType\":\"" CT_INDEX
                                 "\",\"manifests\":[{\"mediaType\":\"" CT_MANIFEST
                                 "\",\"digest\":\"" MANIFEST_DIGEST "\",\"size\":401,\"platform\":{"
                                 "\"architecture\":\"amd64\",\"os\":\"linux\"}}]}";

#define OUT_CAP (1024u * 1024u) /* output kept per input for the response checks */
#define REQ_MAX 512             /* requests remembered per input */

static uv_loop_t loop;
static daemon_t d;
static fuzz_harness_t harness;
static char store_dir[] = "/tmp/fuzz-registry-XXXXXX";

/* The requests the handler saw for the current input, in order. */
typedef struct seen {
  int head;
  int v2;
} seen_t;
static seen_t seen[REQ_MAX];
static size_t nseen;

static void handler(srv_req_t *req, void *arg)
{
  if (nseen < REQ_MAX) {
    seen[nseen].head = srv_req_is_head(req);
    seen[nseen].v2 = strncmp(srv_req_path(req), "/v2/", 4) == 0;
  }
  nseen++;
  registry_handle(req, arg);
}

static void put_blob(const void *bytes, size_t len, const char *media_type, const char *digest)
{
  store_writer_t *w = NULL;
  char got[STORE_DIGEST_MAX];
  PC_ASSERT(store_writer_new(d.store, digest, (int64_t)len, &w) == 0);
  PC_ASSERT(store_writer_write(w, bytes, len) == 0);
  PC_ASSERT(store_writer_commit(w, media_type, got) == 0);
  PC_ASSERT(strcmp(got, digest) == 0);
}

static void put_tag(const char *upstream, const char *repo, const char *tag, const char *digest,
                    const char *media_type, uint64_t size)
{
  store_tag_t t;
  memset(&t, 0, sizeof(t));
  snprintf(t.digest, sizeof(t.digest), "%s", digest);
  snprintf(t.media_type, sizeof(t.media_type), "%s", media_type);
  t.size = size;
  t.fetched_at = t.checked_at = pc_now_sec();
  PC_ASSERT(store_tag_put(d.store, upstream, repo, tag, &t) == 0);
}

static void seed_store(void)
{
  char layer[LAYER_LEN];
  char got[STORE_DIGEST_MAX];
  for (int i = 0; i < LAYER_LEN; i++)
    layer[i] = (char)('a' + i % 26);
  put_blob(layer, sizeof(layer), CT_LAYER, LAYER_DIGEST);
  put_blob(config_json, sizeof(config_json) - 1, CT_CONFIG, CONFIG_DIGEST);
  put_blob("", 0, NULL, EMPTY_DIGEST);
  PC_ASSERT(store_manifest_put(d.store, manifest_json, sizeof(manifest_json) - 1, CT_MANIFEST, NULL,
                               got) == 0);
  PC_ASSERT(strcmp(got, MANIFEST_DIGEST) == 0);
  PC_ASSERT(store_manifest_put(d.store, index_json, sizeof(index_json) - 1, CT_INDEX, NULL, got) ==
            0);
  PC_ASSERT(strcmp(got, INDEX_DIGEST) == 0);

  const uint64_t ml = sizeof(manifest_json) - 1, il = sizeof(index_json) - 1;
  put_tag("registry.k8s.io", "pause", "3.10", INDEX_DIGEST, CT_INDEX, il);
  put_tag("registry.k8s.io", "pause", "latest", INDEX_DIGEST, CT_INDEX, il);
  put_tag("registry.k8s.io", "pause", "3.9", MANIFEST_DIGEST, CT_MANIFEST, ml);
  put_tag("registry.k8s.io", "coredns/coredns", "v1.11.1", INDEX_DIGEST, CT_INDEX, il);
  put_tag("registry.k8s.io", "coredns/coredns", "v1.11.3", INDEX_DIGEST, CT_INDEX, il);
  put_tag("registry.k8s.io", "coredns/coredns", "v1.12.0", INDEX_DIGEST, CT_INDEX, il);
  put_tag("registry.k8s.io", "coredns/coredns", "v1.10.0", GONE_DIGEST, CT_INDEX, il);
  put_tag("ghcr.io", "fuzz/app", "1.0", MANIFEST_DIGEST, CT_MANIFEST, ml);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

static void cleanup(void)
{
  store_close(d.store);
  d.store = NULL;
  nftw(store_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void add_upstream(const char *name, const char *url)
{
  daemon_upstream_conf_t *u = &d.cfg.upstreams[d.cfg.nupstreams++];
  snprintf(u->name, sizeof(u->name), "%s", name);
  snprintf(u->url, sizeof(u->url), "%s", url);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  fuzz_setup();
  PC_ASSERT(uv_loop_init(&loop) == 0);
  d.loop = &loop;
  config_defaults(&d.cfg);
  add_upstream("ghcr.io", "https://ghcr.io");
  add_upstream("localhost:5000", "http://localhost:5000");
  d.cfg.offline = 1;
  PC_ASSERT(mkdtemp(store_dir) != NULL);
  snprintf(d.cfg.store_dir, sizeof(d.cfg.store_dir), "%s", store_dir);
  PC_ASSERT(store_open(store_dir, NULL, &d.store) == 0);
  atexit(cleanup);
  seed_store();
  PC_ASSERT(srv_new(&loop, &d.cfg.srv, handler, &d, &d.srv) == 0);
  daemon_upstreams_apply(&d, &d.cfg);
  PC_ASSERT(mirror_new(&d, &d.mirror) == 0);
  fuzz_harness_init(&harness, &loop, d.srv, OUT_CAP, 1);
  return 0;
}

/* Find the end of the head ("\r\n\r\n") in p[0..len); returns its offset past the blank line,
 * or 0 when the head is incomplete. */
static size_t head_end(const char *p, size_t len)
{
  for (size_t i = 0; i + 4 <= len; i++)
    if (memcmp(p + i, "\r\n\r\n", 4) == 0)
      return i + 4;
  return 0;
}

/* The value of header `name` (lower case, with the colon: "content-length:") in the head
 * p[0..len), after optional spaces; NULL when absent. The value ends at '\r'. */
static const char *header_value(const char *p, size_t len, const char *name)
{
  size_t nl = strlen(name);
  for (size_t i = 0; i + 2 + nl <= len; i++) {
    if (p[i] != '\r' || p[i + 1] != '\n' || strncasecmp(p + i + 2, name, nl) != 0)
      continue;
    size_t j = i + 2 + nl;
    while (j < len && p[j] == ' ')
      j++;
    return p + j;
  }
  return NULL;
}

/* Decimal digits at *v (up to 18); advances *v. -1 when there are none. */
static long long decimal(const char **v)
{
  long long n = 0;
  int digits = 0;
  while (**v >= '0' && **v <= '9' && digits < 18) {
    n = n * 10 + (**v - '0');
    digits++;
    (*v)++;
  }
  return digits ? n : -1;
}

/* Content-Length in the head p[0..len); -1 when absent. Aborts on a malformed value. */
static long long content_length(const char *p, size_t len)
{
  const char *v = header_value(p, len, "content-length:");
  if (!v)
    return -1;
  long long n = decimal(&v);
  PC_ASSERT(n >= 0 && *v == '\r');
  return n;
}

/* A blob answer (200/206) for the seeded layer: the body is bytes [start, start + len) of it,
 * and a 206 says which in a consistent Content-Range. */
static void check_blob(const char *head, size_t hlen, int status, const char *body, size_t blen)
{
  const char *dcd = header_value(head, hlen, "docker-content-digest:");
  long long start = 0, end = LAYER_LEN - 1;
  if (status == 206) {
    const char *cr = header_value(head, hlen, "content-range:");
    PC_ASSERT(cr && strncmp(cr, "bytes ", 6) == 0);
    cr += 6;
    start = decimal(&cr);
    PC_ASSERT(start >= 0 && *cr++ == '-');
    end = decimal(&cr);
    PC_ASSERT(end >= start && *cr++ == '/');
    long long size = decimal(&cr);
    PC_ASSERT(size > end && *cr == '\r');
    PC_ASSERT((long long)blen == end - start + 1);
  }
  if (!dcd || strncmp(dcd, LAYER_DIGEST "\r", sizeof(LAYER_DIGEST)) != 0)
    return;
  PC_ASSERT(end < LAYER_LEN && (long long)blen == end - start + 1);
  for (size_t i = 0; i < blen; i++)
    PC_ASSERT(body[i] == (char)('a' + (start + (long long)i) % 26));
}

/* errors[0].code must be a string in body[0..len). */
static void check_oci_error(const char *body, size_t len, int status)
{
  json_error_t jerr;
  json_t *root = json_loadb(body, len, 0, &jerr);
  json_t *code = NULL;
  if (root)
    code = json_object_get(json_array_get(json_object_get(root, "errors"), 0), "code");
  if (!json_is_string(code)) {
    fprintf(stderr, "status %d on a /v2/ path without an OCI error body: %.*s\n", status,
            (int)(len < 512 ? len : 512), body);
    abort();
  }
  json_decref(root);
}

/* Walk the responses read back, in order: one per request the handler saw, then possibly the
 * server's own answer (400, 414, 431...) to what it could not parse. complete = the whole
 * output is in p[0..len) (not cut by OUT_CAP): then nothing may be missing or left over. */
static void check_responses(const char *p, size_t len, int complete)
{
  size_t pos = 0, i = 0;
  int own = 0;
  while (pos < len && !own) {
    const char *r = p + pos;
    size_t avail = len - pos;
    size_t he = head_end(r, avail);
    if (he == 0) {
      PC_ASSERT(!complete); /* a response head cut short */
      return;
    }
    PC_ASSERT(he >= 13 && memcmp(r, "HTTP/1.1 ", 9) == 0);
    PC_ASSERT(r[9] >= '1' && r[9] <= '9' && r[10] >= '0' && r[10] <= '9' && r[11] >= '0' &&
              r[11] <= '9');
    int status = (r[9] - '0') * 100 + (r[10] - '0') * 10 + (r[11] - '0');
    own = !(i < nseen && i < REQ_MAX);
    int head = !own && seen[i].head;
    long long cl = content_length(r, he);
    size_t body = 0;
    if (status != 204 && status != 304 && status >= 200)
      PC_ASSERT(cl >= 0); /* srv.h: every response carries Content-Length */
    if (status == 204 || status == 304 || status < 200 || head)
      body = 0;
    else if (own && avail == he)
      body = 0; /* the server's answer to a HEAD it could not parse has no body */
    else
      body = (size_t)cl;
    if (body > avail - he) {
      PC_ASSERT(!complete); /* a body cut short */
      return;
    }
    if (!own && seen[i].v2 && !head && status >= 400)
      check_oci_error(r + he, body, status);
    if (!own && !head && (status == 200 || status == 206))
      check_blob(r, he, status, r + he, body);
    pos += he + body;
    if (status >= 200 && !own)
      i++;
  }
  if (complete && nseen <= REQ_MAX) {
    /* every request the handler saw was answered, and nothing else was written */
    if (i != nseen || pos != len) {
      fprintf(stderr, "%zu requests, %zu answers read, %zu of %zu bytes parsed\n", nseen, i, pos,
              len);
      abort();
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  nseen = 0;
  if (fuzz_serve(&harness, data, size) == 0)
    check_responses(harness.out, harness.out_len, harness.out_len == harness.out_total);
  return 0;
}
