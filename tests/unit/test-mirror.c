/* Unit tests for the mirror policy and the fill and manifest machines (daemon/mirror.c,
 * fill.c, mjob.c, answer.c) against a fake upstream: the upstream seam (pull_fetch_ops_t) is
 * replaced by one that records every fetch and lets the test deliver headers, bytes and the
 * end when it chooses, and the clock is injected. Requests come from real HTTP clients on a
 * socketpair adopted by the real server (srv__adopt) and go through registry_handle; the store
 * is real, in a temp directory. No socket reaches any registry. */
#include <dirent.h>
#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <stdarg.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/counters.h"
#include "daemon/upstream.h"
#include "daemon/bgwrite.h"
#include "daemon/egress.h"
#include "daemon/mirror.h"
#include "daemon/listing.h"
#include "daemon/registry.h"
#include "daemon/relay.h"
#include "http/srv-int.h"
#include "store/digest.h"
#include "store/store-int.h"
#include "unit.h"

/* ---- fake upstream -------------------------------------------------------------------------- */

typedef struct ff {
  char method[8];
  char url[512];
  uint64_t range_from;
  up_headers_cb on_headers;
  up_data_cb on_data;
  up_done_cb on_done;
  void *arg;
  char hn[8][64], hv[8][256];
  int nh;
  int cancelled, ended;
  int resumes; /**< fk_resume calls (the fill let a paused fetch go on) */
} ff_t;

#define MAX_FF 64
static ff_t *fx[MAX_FF];
static int nfx;
static int online = 1;
static _Atomic int64_t fake_now = 1000000; /* read by store writes on worker threads */

static int fk_start_fail; /* the next starts fail (as a start refused by curl) */

static int fk_start(pull_env_t *env, const up_req_t *r, up_fetch_t **out)
{
  (void)env;
  if (fk_start_fail)
    return PC_E_INTERNAL;
  PC_ASSERT(nfx < MAX_FF);
  ff_t *f = pc_xcalloc(1, sizeof(*f));
  snprintf(f->method, sizeof(f->method), "%s", r->method);
  snprintf(f->url, sizeof(f->url), "%s", r->url);
  f->range_from = r->range_from;
  f->on_headers = r->on_headers;
  f->on_data = r->on_data;
  f->on_done = r->on_done;
  f->arg = r->arg;
  fx[nfx++] = f;
  *out = (up_fetch_t *)f;
  return 0;
}

static void fk_cancel(pull_env_t *env, up_fetch_t *uf)
{
  (void)env;
  ((ff_t *)uf)->cancelled = 1;
}

static const char *fk_header(pull_env_t *env, up_fetch_t *uf, const char *lname)
{
  ff_t *f = (ff_t *)uf;
  (void)env;
  for (int i = 0; i < f->nh; i++)
    if (strcasecmp(f->hn[i], lname) == 0)
      return f->hv[i];
  return NULL;
}

static void fk_timings(pull_env_t *env, up_fetch_t *uf, up_timings_t *t)
{
  (void)env;
  (void)uf;
  memset(t, 0, sizeof(*t));
  t->first_byte_us = 1500;
}

static int fk_online(pull_env_t *env)
{
  (void)env;
  return online;
}

static void fk_resume(pull_env_t *env, up_fetch_t *uf)
{
  (void)env;
  ((ff_t *)uf)->resumes++;
}

static const pull_fetch_ops_t fake_ops = {fk_start,   fk_cancel, fk_header,
                                          fk_timings, fk_online, fk_resume};

static int64_t now_fn(void)
{
  return fake_now;
}

/* The upstream answers a fetch's head: status, then name/value pairs, NULL-terminated. */
static int ff_headers(ff_t *f, int status, ...)
{
  va_list ap;
  va_start(ap, status);
  const char *n;
  while ((n = va_arg(ap, const char *))) {
    PC_ASSERT(f->nh < 8);
    snprintf(f->hn[f->nh], sizeof(f->hn[0]), "%s", n);
    snprintf(f->hv[f->nh], sizeof(f->hv[0]), "%s", va_arg(ap, const char *));
    f->nh++;
  }
  va_end(ap);
  return f->on_headers ? f->on_headers((up_fetch_t *)f, status, f->arg) : 0;
}

static int ff_body(ff_t *f, const void *p, size_t len)
{
  return f->on_data((up_fetch_t *)f, p, len, f->arg);
}

static void ff_done(ff_t *f, int rc, int status)
{
  PC_ASSERT(!f->ended);
  f->ended = 1;
  f->on_done((up_fetch_t *)f, rc, status, f->arg);
}

/* ---- the daemon under test ------------------------------------------------------------------ */

static uv_loop_t loop;
static daemon_t d;

#define UP "registry.k8s.io"

static void setup(void)
{
  signal(SIGPIPE, SIG_IGN);
  pc_log_level = PC_LOG_ERR;
  ASSERT_OK(uv_loop_init(&loop));
  memset(&d, 0, sizeof(d));
  d.loop = &loop;
  config_defaults(&d.cfg);
  d.cfg.upstreams[0].tag_ttl = 300;
  ASSERT_OK(store_open(unit_tmpdir(), NULL, &d.store));
  daemon_upstreams_apply(&d, &d.cfg);
  ASSERT_OK(mirror_new_with(&d, &fake_ops, NULL, now_fn, &d.mirror));
  ASSERT_OK(srv_new(&loop, NULL, registry_handle, &d, &d.srv));
  srv_set_finish_cb(d.srv, counters_on_finish, &d.counters);
}

/* One loop turn, and a short nap so worker-thread commits make progress. */
static void turn(void)
{
  uv_run(&loop, UV_RUN_NOWAIT);
  struct timespec ts = {0, 200000};
  nanosleep(&ts, NULL);
}

static void teardown(void)
{
  srv_close(d.srv, NULL, NULL);
  mirror_free(d.mirror);
  for (int i = 0; i < 2000 && uv_loop_alive(&loop); i++)
    turn();
  for (int i = 0; i < d.nups; i++)
    daemon_upstream_unref(d.ups[i]);
  store_close(d.store);
  for (int i = 0; i < nfx; i++)
    free(fx[i]);
  nfx = 0;
  ASSERT_OK(uv_loop_close(&loop));
}

/* ---- clients -------------------------------------------------------------------------------- */

typedef struct cli {
  int fd;
  char buf[1 << 18];
  size_t len;
  int eof;
} cli_t;

typedef struct resp {
  int status;
  char head[4096];
  const char *body;
  size_t body_len;
  long clen; /**< Content-Length, -1 if none */
} resp_t;

static void cli_drain(cli_t *c)
{
  for (;;) {
    if (c->len == sizeof(c->buf))
      return;
    ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    if (n > 0) {
      c->len += (size_t)n;
      continue;
    }
    if (n == 0)
      c->eof = 1;
    return;
  }
}

static cli_t *cli_get(const char *path, const char *extra)
{
  int sv[2];
  cli_t *c = pc_xcalloc(1, sizeof(*c));
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ? -errno : 0);
  c->fd = sv[0];
  fcntl(c->fd, F_SETFL, O_NONBLOCK);
  ASSERT_OK(srv__adopt(d.srv, sv[1]));
  char req[1024];
  int n =
      snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: m\r\n%s\r\n", path, extra ? extra : "");
  ASSERT_EQ(n, write(c->fd, req, (size_t)n));
  turn();
  turn();
  return c;
}

static void cli_close(cli_t *c)
{
  close(c->fd);
  free(c);
}

/* Parse what arrived; 1 when a whole head is there. */
static int parse(cli_t *c, resp_t *r)
{
  memset(r, 0, sizeof(*r));
  r->clen = -1;
  const char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
  if (!end)
    return 0;
  size_t hl = (size_t)(end - c->buf) + 4;
  PC_ASSERT(hl < sizeof(r->head));
  memcpy(r->head, c->buf, hl);
  r->head[hl] = '\0';
  uint64_t v = 0;
  PC_ASSERT(pc_parse_u64_n(r->head + 9, 3, 999, &v) == 0); /* "HTTP/1.1 NNN" */
  r->status = (int)v;
  const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
  if (cl) {
    cl += 18;
    PC_ASSERT(pc_parse_u64_prefix(&cl, &v) == 0);
    r->clen = (long)v;
  }
  r->body = c->buf + hl;
  r->body_len = c->len - hl;
  return 1;
}

/* Pump the loop until the client has its whole answer (or the connection ended). */
static void cli_wait(cli_t *c, resp_t *r)
{
  for (int i = 0; i < 5000; i++) {
    cli_drain(c);
    if (parse(c, r) && (r->status == 304 || (r->clen >= 0 && r->body_len >= (size_t)r->clen)))
      return;
    if (c->eof)
      return;
    turn();
  }
  unit__fail(__FILE__, __LINE__, "no complete answer");
}

/* Pump until the head and at least n body bytes arrived (bounded), then a few more turns so
 * that bytes the server should not send would show. */
static void cli_until(cli_t *c, resp_t *r, size_t n)
{
  int i;
  for (i = 0; i < 5000; i++) {
    cli_drain(c);
    if (parse(c, r) && r->body_len >= n)
      break;
    turn();
  }
  if (i == 5000)
    unit__fail(__FILE__, __LINE__, "fewer than %zu body bytes arrived", n);
  for (i = 0; i < 20; i++) {
    turn();
    cli_drain(c);
  }
  parse(c, r);
}

static const char *hdr(const resp_t *r, const char *name, char *out, size_t cap)
{
  char key[80];
  snprintf(key, sizeof(key), "\r\n%s: ", name);
  const char *p = strcasestr(r->head, key);
  if (!p)
    return NULL;
  p += strlen(key);
  size_t n = strcspn(p, "\r");
  if (n >= cap)
    n = cap - 1;
  memcpy(out, p, n);
  out[n] = '\0';
  return out;
}

#define ASSERT_HDR(r, name, want)                                                                  \
  do {                                                                                             \
    char v_[256];                                                                                  \
    ASSERT_STREQ(want, hdr((r), (name), v_, sizeof(v_)));                                          \
  } while (0)

/* Pump until the store has the blob (the commit runs on a worker). */
static void wait_stored(const char *digest)
{
  for (int i = 0; i < 5000; i++) {
    if (store_blob_stat(d.store, digest, NULL) == 0)
      return;
    turn();
  }
  unit__fail(__FILE__, __LINE__, "not committed: %s", digest);
}

static void wait_idle(void)
{
  mirror_stats_t st;
  for (int i = 0; i < 5000; i++) {
    mirror_get_stats(d.mirror, &st);
    if (st.fills_in_flight == 0 && st.jobs_in_flight == 0 && !mirror_env(d.mirror)->spare_busy)
      break;
    turn();
  }
  for (int i = 0; i < 50; i++)
    turn();
}

/* ---- content -------------------------------------------------------------------------------- */

#define BLOB_LEN 200000
static char blob[BLOB_LEN];
static char blob_digest[STORE_DIGEST_MAX];
static char blob_path[256];

static void make_blob(void)
{
  for (int i = 0; i < BLOB_LEN; i++)
    blob[i] = (char)(i * 7 + i / 251);
  store_digest_of(blob, BLOB_LEN, blob_digest);
  snprintf(blob_path, sizeof(blob_path), "/v2/pause/blobs/%s", blob_digest);
}

static const char manifest1[] = "{\"schemaVersion\":2,\"mediaType\":"
                                "\"application/vnd.oci.image.manifest.v1+json\",\"n\":1}";
static const char manifest2[] = "{\"schemaVersion\":2,\"mediaType\":"
                                "\"application/vnd.oci.image.manifest.v1+json\",\"n\":2}";
#define CT_M "application/vnd.oci.image.manifest.v1+json"

static void serve_manifest(ff_t *f, const char *body)
{
  char dg[STORE_DIGEST_MAX], cl[32];
  store_digest_of(body, strlen(body), dg);
  snprintf(cl, sizeof(cl), "%zu", strlen(body));
  ASSERT_OK(ff_headers(f, 200, "content-type", CT_M, "docker-content-digest", dg, "content-length",
                       cl, NULL));
  if (strcmp(f->method, "GET") == 0)
    ASSERT_OK(ff_body(f, body, strlen(body)));
  ff_done(f, 0, 200);
}

static char blen_s[32];
static void blob_headers(ff_t *f)
{
  snprintf(blen_s, sizeof(blen_s), "%d", BLOB_LEN);
  ASSERT_OK(ff_headers(f, 200, "content-length", blen_s, NULL));
}

/* ---- tests: blobs --------------------------------------------------------------------------- */

/* One upstream fetch for many clients; joiners get JOIN, later clients HIT from the store; the
 * answers from the live fill carry the same headers as store hits (Cache-Control, ETag). */
TEST(blob_fill_single_flight_and_join)
{
  make_blob();
  setup();
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  ASSERT_EQ(1, nfx);
  ASSERT_STREQ("GET", fx[0]->method);
  ASSERT(strstr(fx[0]->url, "/v2/pause/blobs/sha256:") != NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, BLOB_LEN / 2));
  cli_until(a, &r, BLOB_LEN / 2);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "MISS");
  ASSERT_HDR(&r, "Cache-Control", "max-age=31536000");
  ASSERT_HDR(&r, "Docker-Content-Digest", blob_digest);
  ASSERT_EQ(BLOB_LEN, r.clen);
  ASSERT_EQ(BLOB_LEN / 2, r.body_len); /* what the fill holds so far, streamed at once */

  cli_t *b = cli_get(blob_path, NULL); /* joins the running fill */
  ASSERT_EQ(1, nfx);
  cli_until(b, &r, BLOB_LEN / 2);
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  ASSERT_HDR(&r, "Cache-Control", "max-age=31536000");

  ASSERT_OK(ff_body(fx[0], blob + BLOB_LEN / 2, BLOB_LEN - BLOB_LEN / 2));
  /* Every byte is in, but not verified: the last byte is held back. */
  cli_until(a, &r, BLOB_LEN - 1);
  ASSERT_EQ(BLOB_LEN - 1, r.body_len);
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  cli_wait(b, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  wait_stored(blob_digest);

  cli_t *c = cli_get(blob_path, NULL);
  cli_wait(c, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "HIT");
  ASSERT_EQ(1, nfx); /* still the one upstream fetch */
  wait_idle();
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.fills_started);
  ASSERT_EQ(1, st.fills_committed);
  ASSERT_EQ(1, st.waiters_joined);
  ASSERT_EQ(1, d.counters.cache[ANSWER_BLOB][DAEMON_CACHE_MISS]);
  ASSERT_EQ(1, d.counters.cache[ANSWER_BLOB][DAEMON_CACHE_JOIN]);
  ASSERT_EQ(1, d.counters.cache[ANSWER_BLOB][DAEMON_CACHE_HIT]);
  cli_close(a);
  cli_close(b);
  cli_close(c);
  teardown();
}

/* Repository scoping holds for a running fill too: a request for the digest under another
 * repository does not join the fill until the upstream confirms that repository has it (one
 * HEAD); refused, it is a 404; confirmed, it joins. */
TEST(blob_fill_join_from_another_repository_is_confirmed)
{
  make_blob();
  setup();
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  ASSERT_EQ(1, nfx);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, BLOB_LEN / 2));
  cli_until(a, &r, BLOB_LEN / 2);
  char other[256], third[256];
  snprintf(other, sizeof(other), "/v2/team/secret/blobs/%s", blob_digest);
  snprintf(third, sizeof(third), "/v2/team/open/blobs/%s", blob_digest);
  cli_t *b = cli_get(other, NULL);
  ASSERT_EQ(2, nfx); /* a HEAD under team/secret, not a join */
  ASSERT_STREQ("HEAD", fx[1]->method);
  ASSERT(strstr(fx[1]->url, "/v2/team/secret/blobs/sha256:") != NULL);
  ASSERT_OK(ff_headers(fx[1], 404, NULL));
  ff_done(fx[1], 0, 404);
  cli_wait(b, &r);
  ASSERT_EQ(404, r.status);
  cli_t *c = cli_get(third, NULL);
  ASSERT_EQ(3, nfx);
  ASSERT_STREQ("HEAD", fx[2]->method);
  ASSERT_OK(ff_headers(fx[2], 200, "content-length", blen_s, NULL));
  ff_done(fx[2], 0, 200);
  cli_until(c, &r, BLOB_LEN / 2); /* confirmed: joins the running fill */
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  ASSERT_EQ(3, nfx);
  ASSERT_OK(ff_body(fx[0], blob + BLOB_LEN / 2, BLOB_LEN - BLOB_LEN / 2));
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_wait(c, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  wait_idle();
  cli_close(a);
  cli_close(b);
  cli_close(c);
  teardown();
}

/* If-None-Match and Range are honoured by answers from a live fill as by store hits. */
TEST(blob_live_fill_304_and_range)
{
  make_blob();
  setup();
  resp_t r;
  char inm[200];
  snprintf(inm, sizeof(inm), "If-None-Match: \"%s\"\r\n", blob_digest);
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 1000));
  cli_t *b = cli_get(blob_path, inm);
  cli_wait(b, &r);
  ASSERT_EQ(304, r.status);
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  char etag[STORE_DIGEST_MAX + 2];
  snprintf(etag, sizeof(etag), "\"%s\"", blob_digest);
  ASSERT_HDR(&r, "ETag", etag);
  cli_close(b);
  cli_t *c = cli_get(blob_path, "Range: bytes=100-199\r\n");
  cli_until(c, &r, 99);
  ASSERT_EQ(206, r.status);
  ASSERT_HDR(&r, "Content-Range", "bytes 100-199/200000");
  ASSERT_EQ(99, r.body_len); /* the last byte waits for the verification */
  cli_t *e = cli_get(blob_path, "Range: bytes=300000-\r\n");
  cli_wait(e, &r);
  ASSERT_EQ(416, r.status);
  ASSERT_HDR(&r, "Content-Range", "bytes */200000");
  cli_close(e);
  ASSERT_OK(ff_body(fx[0], blob + 1000, BLOB_LEN - 1000));
  ff_done(fx[0], 0, 200);
  cli_wait(c, &r);
  ASSERT_EQ(100, r.body_len);
  ASSERT(memcmp(r.body, blob + 100, 100) == 0);
  cli_close(c);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_close(a);
  wait_stored(blob_digest);
  ASSERT_EQ(1, nfx);
  teardown();
}

/* Bytes that do not match the digest: the streaming client is cut one byte short, nothing is
 * stored, and the next request starts a new fill. */
TEST(blob_digest_mismatch_never_delivered_whole)
{
  make_blob();
  setup();
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  blob[500] ^= 1;
  ASSERT_OK(ff_body(fx[0], blob, BLOB_LEN));
  blob[500] ^= 1;
  cli_until(a, &r, BLOB_LEN - 1);
  ASSERT_EQ(BLOB_LEN - 1, r.body_len); /* all but the held-back byte */
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT(a->eof); /* cut one byte short: the client sees a broken body */
  ASSERT_EQ(BLOB_LEN - 1, r.body_len);
  cli_close(a);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.digest_mismatches);
  ASSERT_EQ(1, st.fills_failed);
  cli_t *b = cli_get(blob_path, NULL);
  ASSERT_EQ(2, nfx);
  ff_headers(fx[1], 503, NULL);
  ff_done(fx[1], 0, 503);
  cli_wait(b, &r);
  ASSERT_EQ(503, r.status);
  ASSERT_HDR(&r, "X-Cache", "MISS");
  cli_close(b);
  teardown();
}

/* A bounded Range that joins a fill gets its last byte only once the fill verified: with a
 * byte corrupted upstream, the joiner is cut one byte short (never a complete 206 of bad
 * bytes); with good bytes it completes once the digest matched (issue 17). */
TEST(blob_range_join_last_byte_held_until_verified)
{
  make_blob();
  setup();
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  blob[1000] ^= 1;
  ASSERT_OK(ff_body(fx[0], blob, 8192));
  blob[1000] ^= 1;
  cli_t *b = cli_get(blob_path, "Range: bytes=0-4095\r\n");
  cli_until(b, &r, 4095);
  ASSERT_EQ(206, r.status);
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  ASSERT_HDR(&r, "Content-Range", "bytes 0-4095/200000");
  ASSERT_EQ(4096, r.clen);
  ASSERT_EQ(4095, r.body_len); /* every byte of the range is there: the last one is held */
  ASSERT(!b->eof);
  ASSERT_OK(ff_body(fx[0], blob + 8192, BLOB_LEN - 8192));
  cli_until(a, &r, BLOB_LEN - 1);
  ff_done(fx[0], 0, 200); /* the digest does not match */
  cli_wait(b, &r);
  ASSERT(b->eof);
  ASSERT_EQ(4095, r.body_len);
  cli_wait(a, &r);
  ASSERT(a->eof);
  ASSERT_EQ(BLOB_LEN - 1, r.body_len);
  cli_close(a);
  cli_close(b);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));

  /* Good bytes: the range completes once verified. */
  a = cli_get(blob_path, NULL);
  ASSERT_EQ(2, nfx);
  blob_headers(fx[1]);
  ASSERT_OK(ff_body(fx[1], blob, 8192));
  b = cli_get(blob_path, "Range: bytes=10-4095\r\n");
  cli_until(b, &r, 4085);
  ASSERT_EQ(4085, r.body_len);
  ASSERT_OK(ff_body(fx[1], blob + 8192, BLOB_LEN - 8192));
  ff_done(fx[1], 0, 200);
  cli_wait(b, &r);
  ASSERT_EQ(206, r.status);
  ASSERT_EQ(4086, r.body_len);
  ASSERT(memcmp(r.body, blob + 10, 4086) == 0);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_close(a);
  cli_close(b);
  wait_stored(blob_digest);
  teardown();
}

/* A broken upstream body is resumed with Range from the last byte written. */
TEST(blob_resume_after_break)
{
  make_blob();
  setup();
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 70000));
  ff_done(fx[0], PC_E_UPSTREAM, 200);
  ASSERT_EQ(2, nfx);
  ASSERT_EQ(70000, fx[1]->range_from);
  /* The upstream restarts a little earlier than asked: the overlap is skipped. */
  ASSERT_OK(ff_headers(fx[1], 206, "content-range", "bytes 69000-199999/200000", NULL));
  ASSERT_OK(ff_body(fx[1], blob + 69000, BLOB_LEN - 69000));
  ff_done(fx[1], 0, 206);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  cli_close(a);
  wait_stored(blob_digest);
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.resumes);
  teardown();
}

/* [fetch] join_stall: a request does not join a fill that has made no progress (no 16 KiB)
 * for join_stall; it restarts the fill on a fresh fetch with Range from the last byte
 * written and joins that; the first client's answer goes on and both get the verified blob.
 * A fill that moved within join_stall is joined as it is. */
TEST(blob_stalled_fill_restarted_for_a_joiner)
{
  make_blob();
  setup();
  d.cfg.join_stall_ms = 5000;
  resp_t r;
  mirror_stats_t st;
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 1000)); /* under the progress step: a trickle */
  cli_until(a, &r, 1000);
  cli_t *b = cli_get(blob_path, NULL); /* within join_stall: joins as it is */
  cli_until(b, &r, 1000);
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  ASSERT_EQ(1, nfx);
  ASSERT_EQ(0, fx[0]->cancelled);
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(0, st.fills_stalled);

  d.cfg.join_stall_ms = 50;
  struct timespec ts = {0, 80 * 1000000};
  nanosleep(&ts, NULL);
  turn(); /* the loop's clock moves on */
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.fills_stalled);
  cli_t *c = cli_get(blob_path, NULL); /* stalled: restarted, then joined */
  ASSERT_EQ(2, nfx);
  ASSERT_EQ(1, fx[0]->cancelled);
  ASSERT_EQ(1000, fx[1]->range_from);
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.stall_restarts);
  ASSERT_EQ(0, st.fills_stalled); /* the restart is progress */
  ASSERT_OK(ff_headers(fx[1], 206, "content-range", "bytes 1000-199999/200000", NULL));
  ASSERT_OK(ff_body(fx[1], blob + 1000, BLOB_LEN - 1000));
  ff_done(fx[1], 0, 206);
  cli_t *cs[] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    cli_wait(cs[i], &r);
    ASSERT_EQ(200, r.status);
    ASSERT_EQ(BLOB_LEN, r.body_len);
    ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  }
  wait_stored(blob_digest);
  wait_idle();
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.fills_started);
  ASSERT_EQ(1, st.fills_committed);
  for (int i = 0; i < 3; i++)
    cli_close(cs[i]);
  teardown();
}

/* A restart whose new fetch cannot even start ends the fill (its client's answer is cut short)
 * and the request that asked for the restart is answered with an error of its own: nothing
 * touches the freed fill (ASan). */
TEST(blob_stalled_fill_restart_that_cannot_start)
{
  make_blob();
  setup();
  d.cfg.join_stall_ms = 50;
  resp_t r;
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 1000));
  cli_until(a, &r, 1000);
  struct timespec ts = {0, 80 * 1000000};
  nanosleep(&ts, NULL);
  turn();
  fk_start_fail = 1;
  cli_t *c = cli_get(blob_path, NULL);
  fk_start_fail = 0;
  ASSERT_EQ(1, fx[0]->cancelled);
  cli_wait(c, &r);
  ASSERT(r.status >= 500);
  cli_wait(a, &r);
  ASSERT(r.body_len < BLOB_LEN); /* cut short: never the whole blob unverified */
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.stall_restarts);
  ASSERT_EQ(2, st.fills_failed);
  wait_idle();
  cli_close(a);
  cli_close(c);
  teardown();
}

/* The upstream confirms a repository-scoping HEAD (fx[i]): the request then joins. */
static void confirm_head(int i)
{
  ASSERT_STREQ("HEAD", fx[i]->method);
  ASSERT_OK(ff_headers(fx[i], 200, NULL));
  ff_done(fx[i], 0, 200);
}

/* "Not here" from one repository is no answer for a request that joined from another: it
 * gets a fill of its own. The first repository's request gets the 404. */
TEST(blob_repo_refusal_refills_for_other_repo)
{
  make_blob();
  setup();
  resp_t r;
  char other[256];
  snprintf(other, sizeof(other), "/v2/other/blobs/%s", blob_digest);
  cli_t *a = cli_get(blob_path, NULL);
  cli_t *b = cli_get(other, NULL); /* another repository: confirmed first, then it joins */
  ASSERT_EQ(2, nfx);
  confirm_head(1);
  ASSERT_EQ(2, nfx);
  ff_headers(fx[0], 404, NULL);
  ff_done(fx[0], 0, 404);
  cli_wait(a, &r);
  ASSERT_EQ(404, r.status);
  ASSERT(strstr(r.body, "BLOB_UNKNOWN") != NULL);
  ASSERT_EQ(3, nfx);
  ASSERT(strstr(fx[2]->url, "/v2/other/blobs/") != NULL);
  ASSERT_STREQ("GET", fx[2]->method);
  blob_headers(fx[2]);
  ASSERT_OK(ff_body(fx[2], blob, BLOB_LEN));
  ff_done(fx[2], 0, 200);
  cli_wait(b, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_close(a);
  cli_close(b);
  wait_stored(blob_digest);
  teardown();
}

/* A fill with no client left still completes and commits (a prefetch needs no connection). */
TEST(blob_fill_outlives_its_clients)
{
  make_blob();
  setup();
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 1000));
  cli_close(a);
  for (int i = 0; i < 20; i++)
    turn();
  ASSERT_OK(ff_body(fx[0], blob + 1000, BLOB_LEN - 1000));
  ff_done(fx[0], 0, 200);
  wait_stored(blob_digest);
  teardown();
}

/* Offline: a miss is a clean 404, no fetch. */
TEST(blob_offline_miss)
{
  make_blob();
  setup();
  resp_t r;
  online = 0;
  cli_t *a = cli_get(blob_path, NULL);
  cli_wait(a, &r);
  online = 1;
  ASSERT_EQ(404, r.status);
  ASSERT(strstr(r.body, "offline") != NULL);
  ASSERT_HDR(&r, "X-Cache", "MISS");
  ASSERT_EQ(0, nfx);
  cli_close(a);
  teardown();
}

/* ---- tests: manifests ----------------------------------------------------------------------- */

/* Two requests for one tag: one upstream GET; the second joins. A request that comes during
 * the store write is answered from the job's memory (HIT), with 304 when it asks. */
TEST(manifest_join_and_answer_from_memory)
{
  setup();
  resp_t r;
  char dg[STORE_DIGEST_MAX], inm[200];
  store_digest_of(manifest1, strlen(manifest1), dg);
  snprintf(inm, sizeof(inm), "If-None-Match: \"%s\"\r\n", dg);
  cli_t *a = cli_get("/v2/pause/manifests/3.10", NULL);
  cli_t *b = cli_get("/v2/pause/manifests/3.10", inm);
  ASSERT_EQ(1, nfx);
  serve_manifest(fx[0], manifest1);
  /* The store write is queued on a worker; this request is answered from memory. */
  cli_t *c = cli_get("/v2/pause/manifests/3.10", inm);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "MISS");
  ASSERT_HDR(&r, "Docker-Content-Digest", dg);
  ASSERT_HDR(&r, "Content-Type", CT_M);
  ASSERT_EQ(strlen(manifest1), r.body_len);
  cli_wait(b, &r);
  ASSERT_EQ(304, r.status); /* from memory, If-None-Match honoured */
  ASSERT_HDR(&r, "X-Cache", "JOIN");
  cli_wait(c, &r);
  ASSERT(r.status == 304);
  ASSERT_EQ(1, nfx);
  cli_close(a);
  cli_close(b);
  cli_close(c);
  wait_idle();
  store_tag_t t;
  ASSERT_OK(store_tag_get(d.store, UP, "pause", "3.10", &t));
  ASSERT_STREQ(dg, t.digest);
  ASSERT_EQ(fake_now, t.checked_at);
  teardown();
}

/* Tag freshness with the injected clock: within the TTL a HIT with no fetch; after it a HEAD
 * (unchanged: REVALIDATED); a changed digest is fetched with a GET. */
TEST(manifest_tag_ttl_revalidate_and_change)
{
  setup();
  resp_t r;
  cli_t *a = cli_get("/v2/pause/manifests/3.10", NULL);
  serve_manifest(fx[0], manifest1);
  cli_wait(a, &r);
  cli_close(a);
  wait_idle();
  fake_now += 299;
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  cli_wait(a, &r);
  ASSERT_HDR(&r, "X-Cache", "HIT");
  ASSERT_EQ(1, nfx);
  cli_close(a);

  fake_now += 1; /* the TTL (300 s) has run out */
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ASSERT_EQ(2, nfx);
  ASSERT_STREQ("HEAD", fx[1]->method);
  serve_manifest(fx[1], manifest1);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "REVALIDATED");
  ASSERT_EQ(strlen(manifest1), r.body_len);
  cli_close(a);
  wait_idle();

  fake_now += 301;
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ASSERT_STREQ("HEAD", fx[2]->method);
  serve_manifest(fx[2], manifest2); /* HEAD: a new digest */
  ASSERT_EQ(4, nfx);
  ASSERT_STREQ("GET", fx[3]->method);
  serve_manifest(fx[3], manifest2);
  cli_wait(a, &r);
  ASSERT_HDR(&r, "X-Cache", "MISS");
  ASSERT(r.body_len == strlen(manifest2) && memcmp(r.body, manifest2, r.body_len) == 0);
  cli_close(a);
  wait_idle();
  teardown();
}

/* Stale-if-error: after the TTL, an upstream that fails (503) gets the known manifest served
 * STALE; one that says 404 is believed. */
TEST(manifest_stale_if_error_but_not_on_404)
{
  setup();
  resp_t r;
  cli_t *a = cli_get("/v2/pause/manifests/3.10", NULL);
  serve_manifest(fx[0], manifest1);
  cli_wait(a, &r);
  cli_close(a);
  wait_idle();
  fake_now += 1000;
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ff_headers(fx[1], 503, NULL);
  ff_done(fx[1], 0, 503);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "STALE");
  ASSERT(r.body_len == strlen(manifest1) && memcmp(r.body, manifest1, r.body_len) == 0);
  cli_close(a);
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ASSERT_EQ(3, nfx); /* stale is not a revalidation: the next request asks again */
  ff_headers(fx[2], 404, NULL);
  ff_done(fx[2], 0, 404);
  cli_wait(a, &r);
  ASSERT_EQ(404, r.status);
  ASSERT(strstr(r.body, "MANIFEST_UNKNOWN") != NULL);
  cli_close(a);
  /* Offline, the known tag is served whatever its age. */
  online = 0;
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  cli_wait(a, &r);
  online = 1;
  ASSERT_HDR(&r, "X-Cache", "HIT");
  ASSERT_EQ(3, nfx);
  cli_close(a);
  teardown();
}

/* A manifest by digest whose bytes do not match is a 502, not cached; a too-large one fails. */
TEST(manifest_by_digest_mismatch_and_cap)
{
  setup();
  resp_t r;
  char dg[STORE_DIGEST_MAX], path[256];
  store_digest_of(manifest1, strlen(manifest1), dg);
  snprintf(path, sizeof(path), "/v2/pause/manifests/%s", dg);
  cli_t *a = cli_get(path, NULL);
  ASSERT_OK(ff_headers(fx[0], 200, "content-type", CT_M, NULL));
  ASSERT_OK(ff_body(fx[0], manifest2, strlen(manifest2)));
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(502, r.status);
  ASSERT(strstr(r.body, "did not match") != NULL);
  cli_close(a);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(d.store, dg, NULL));
  d.cfg.max_manifest = 10;
  a = cli_get(path, NULL);
  ASSERT_OK(ff_headers(fx[1], 200, "content-type", CT_M, NULL));
  ASSERT_EQ(PC_E_TOOBIG, ff_body(fx[1], manifest1, strlen(manifest1)));
  ff_done(fx[1], PC_E_TOOBIG, 200);
  cli_wait(a, &r);
  ASSERT_EQ(502, r.status); /* the upstream's fault, not the client's (was 413) */
  ASSERT(strstr(r.body, "malformed") != NULL);
  cli_close(a);
  teardown();
}

/* Upstream header values are checked before they are used or stored, and a manifest is checked
 * for what it claims: each bad answer is a 502 with nothing stored, nothing copied into the
 * head (issue 17: a bare CR in Content-Type was written into our head and stored). */
TEST(manifest_upstream_answers_checked)
{
  static const struct {
    const char *ct, *body, *digest; /* digest "" = none given, "self" = the body's */
  } bad[] = {
      {CT_M "\rX-Injected: yes", manifest1, "self"},
      {CT_M "\x1b[31m", manifest1, "self"},
      {"application/vnd.oci.image.manifest.v1+json\x7f", manifest1, "self"},
      {"text html", manifest1, "self"},
      {CT_M, manifest1, "sha256:XYZ"},
      {CT_M, "<html>not json</html>", ""},
      {CT_M, "[1,2]", ""},
      {CT_M, "{\"mediaType\":\"" CT_M "\"}", ""},
      {"application/vnd.docker.distribution.manifest.v2+json", manifest1, ""},
      {"text/html", "{\"schemaVersion\":2}", ""},
      {CT_M, "{\"schemaVersion\":2,\"mediaType\":\"a b\"}", ""},
  };
  setup();
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    char path[64], dg[STORE_DIGEST_MAX];
    snprintf(path, sizeof(path), "/v2/pause/manifests/bad%zu", i);
    store_digest_of(bad[i].body, strlen(bad[i].body), dg);
    const char *hd = strcmp(bad[i].digest, "self") == 0 ? dg : bad[i].digest;
    cli_t *a = cli_get(path, NULL);
    ff_t *f = fx[nfx - 1];
    int hrc = ff_headers(f, 200, "content-type", bad[i].ct, "docker-content-digest", hd, NULL);
    if (hrc == 0)
      (void)ff_body(f, bad[i].body, strlen(bad[i].body));
    ff_done(f, hrc, 200);
    resp_t r;
    cli_wait(a, &r);
    ASSERT_EQ(502, r.status);
    ASSERT(strstr(r.head, "X-Injected") == NULL);
    ASSERT(strchr(r.head, '\x1b') == NULL && strchr(r.head, '\x7f') == NULL);
    cli_close(a);
    wait_idle();
    store_tag_t t;
    char tag[16];
    snprintf(tag, sizeof(tag), "bad%zu", i);
    ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(d.store, UP, "pause", tag, &t));
    ASSERT_EQ(PC_E_NOTFOUND, store_manifest_stat(d.store, dg, NULL));
  }
  /* and good ones still pass: parameters on the type, no Content-Type (the mediaType stands in),
   * no digest (unconfirmed, the manifest's own hash) */
  static const char *const good_ct[] = {CT_M "; charset=utf-8", "", CT_M};
  for (size_t i = 0; i < 3; i++) {
    char path[64];
    snprintf(path, sizeof(path), "/v2/pause/manifests/good%zu", i);
    cli_t *a = cli_get(path, NULL);
    ff_t *f = fx[nfx - 1];
    ASSERT_OK(ff_headers(f, 200, "content-type", good_ct[i], NULL));
    ASSERT_OK(ff_body(f, manifest1, strlen(manifest1)));
    ff_done(f, 0, 200);
    resp_t r;
    cli_wait(a, &r);
    ASSERT_EQ(200, r.status);
    ASSERT_HDR(&r, "Content-Type", CT_M);
    wait_idle(); /* the store write done before the socket closes (TSan: fd reuse) */
    cli_close(a);
  }
  teardown();
}

/* The policy's pure part. */
TEST(tag_fresh_is_pure)
{
  store_tag_t t;
  memset(&t, 0, sizeof(t));
  t.checked_at = 1000;
  ASSERT(mirror_tag_fresh(&t, 1000, 300));
  ASSERT(mirror_tag_fresh(&t, 1299, 300));
  ASSERT(!mirror_tag_fresh(&t, 1300, 300));
  ASSERT(!mirror_tag_fresh(&t, 5000, 300));
  ASSERT(!mirror_tag_fresh(&t, 1000, 0)); /* tag_ttl 0: always revalidate */
}

/* A worker that holds a thread-pool thread until the test lets it go. */
static uv_sem_t hold_sem;
static void hold_work(uv_work_t *w)
{
  (void)w;
  uv_sem_wait(&hold_sem);
}
static void hold_after(uv_work_t *w, int status)
{
  (void)status;
  free(w);
}

/* Hold every thread a store write could run on: the mirror's writer (daemon/bgwrite.h) and the
 * four pool threads (UV_THREADPOOL_SIZE=4, set before the pool starts). Let go with HOLDS
 * posts of hold_sem. */
#define HOLDS 5
static void hold_store_writes(void)
{
  ASSERT_OK(bgwrite_queue(mirror_env(d.mirror)->writer, &loop, pc_xcalloc(1, sizeof(uv_work_t)),
                          hold_work, hold_after));
  for (int i = 0; i < HOLDS - 1; i++)
    ASSERT_OK(uv_queue_work(&loop, pc_xcalloc(1, sizeof(uv_work_t)), hold_work, hold_after));
}

/* A tag a job has answered is listed by tags/list even while its store write waits for a
 * worker (skopeo inspect lists the tags right after pulling one). */
TEST(tags_list_includes_a_tag_being_stored)
{
  setenv("UV_THREADPOOL_SIZE", "4", 1);
  setup();
  resp_t r;
  ASSERT_OK(uv_sem_init(&hold_sem, 0));
  hold_store_writes(); /* the tag write has to wait */
  cli_t *a = cli_get("/v2/pause/manifests/3.10", NULL);
  serve_manifest(fx[0], manifest1);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  cli_close(a);
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.jobs_in_flight); /* storing */
  store_tag_t t;
  ASSERT_EQ(PC_E_NOTFOUND, store_tag_get(d.store, UP, "pause", "3.10", &t));
  online = 0; /* the local list: what the mirror answers when the upstream cannot be asked */
  cli_t *b = cli_get("/v2/pause/tags/list", NULL);
  cli_wait(b, &r);
  ASSERT_EQ(200, r.status);
  ASSERT(r.body_len == strlen("{\"name\":\"pause\",\"tags\":[\"3.10\"]}") &&
         memcmp(r.body, "{\"name\":\"pause\",\"tags\":[\"3.10\"]}", r.body_len) == 0);
  cli_close(b);
  for (int i = 0; i < HOLDS; i++)
    uv_sem_post(&hold_sem);
  wait_idle();
  ASSERT_OK(store_tag_get(d.store, UP, "pause", "3.10", &t));
  b = cli_get("/v2/pause/tags/list?n=1", NULL);
  cli_wait(b, &r);
  ASSERT_EQ(200, r.status);
  ASSERT(strstr(r.body, "\"3.10\"") != NULL);
  cli_close(b);
  online = 1;
  teardown();
  uv_sem_destroy(&hold_sem);
}

/* mirror_free with requests still waiting (a prefetch or tier subscriber will do this): the
 * fetch is cancelled, every request is answered 503, the joiners that the refusal would send
 * to a fill of their own start none (no fetch after mirror_free), and nothing is used after
 * it is freed (ASan). */
/* The store writer: work on a thread of its own at a lower priority, after on the loop, in
 * order; an idle writer does not keep the loop alive. */
typedef struct bgw_req {
  uv_work_t w;
  int i;
  pthread_t worked_on;
  int nice;
} bgw_req_t;
static int bgw_order[8], bgw_n;
static void bgw_work(uv_work_t *w)
{
  bgw_req_t *r = container_of(w, bgw_req_t, w);
  r->worked_on = pthread_self();
  errno = 0;
  r->nice = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
}
static void bgw_after(uv_work_t *w, int status)
{
  bgw_req_t *r = container_of(w, bgw_req_t, w);
  ASSERT_EQ(0, status);
  bgw_order[bgw_n++] = r->i;
}

TEST(bgwrite_order_thread_priority)
{
  uv_loop_t l;
  ASSERT_OK(uv_loop_init(&l));
  bgwrite_t *b = bgwrite_new(&l);
  ASSERT(b != NULL);
  ASSERT_EQ(0, uv_run(&l, UV_RUN_DEFAULT)); /* idle: nothing keeps the loop */
  bgw_req_t r[8];
  bgw_n = 0;
  for (int i = 0; i < 8; i++) {
    r[i].i = i;
    ASSERT_OK(bgwrite_queue(b, &l, &r[i].w, bgw_work, bgw_after));
  }
  ASSERT_EQ(8, bgwrite_pending(b));
  uv_run(&l, UV_RUN_DEFAULT); /* returns once every after ran */
  ASSERT_EQ(8, bgw_n);
  ASSERT_EQ(0, bgwrite_pending(b));
  int mine = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
  for (int i = 0; i < 8; i++) {
    ASSERT_EQ(i, bgw_order[i]);
    ASSERT(!pthread_equal(r[i].worked_on, pthread_self()));
    ASSERT(pthread_equal(r[i].worked_on, r[0].worked_on)); /* one thread */
    ASSERT_EQ(mine + BGWRITE_NICE > 19 ? 19 : mine + BGWRITE_NICE, r[i].nice);
  }
  bgwrite_free(b);
  uv_run(&l, UV_RUN_DEFAULT);
  ASSERT_OK(uv_loop_close(&l));
}

/* egress.tsv is written on the thread pool, one write at a time: a host noted while a write is
 * on its way is in the file once the loop ran; egress_free during a write leaves the last state
 * in the file. */
static int file_has(const char *path, const char *needle)
{
  char buf[4096];
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, needle) != NULL;
}

TEST(egress_file_written_off_the_loop)
{
  uv_loop_t l;
  char dir[512], path[600];
  snprintf(dir, sizeof(dir), "%s/egress", unit_tmpdir());
  ASSERT(mkdir(dir, 0755) == 0 || errno == EEXIST);
  snprintf(path, sizeof(path), "%s/" EGRESS_FILE, dir);
  unlink(path);
  ASSERT_OK(uv_loop_init(&l));
  egress_t *e = egress_new(dir, &l);
  egress_note(e, "http://a.example:80", "up");
  egress_note(e, "https://b.example:443", "up"); /* while the first write is on its way */
  uv_run(&l, UV_RUN_DEFAULT);
  ASSERT(file_has(path, "a.example\t80"));
  ASSERT(file_has(path, "b.example\t443"));
  egress_note(e, "https://c.example:443", "up");
  egress_note(e, "https://c.example:443", "up"); /* a count: written with the table at the end */
  egress_free(e); /* during the write of c: its callback writes the count and frees */
  uv_run(&l, UV_RUN_DEFAULT);
  ASSERT(file_has(path, "c.example\t443\tup\t2\t"));
  egress_entry_t *v;
  size_t n;
  ASSERT_OK(egress_load(path, &v, &n));
  ASSERT_EQ(3, n);
  free(v);
  ASSERT_OK(uv_loop_close(&l));
}

TEST(mirror_free_with_waiting_clients)
{
  make_blob();
  setup();
  resp_t r;
  char other[256], third[256];
  snprintf(other, sizeof(other), "/v2/other/blobs/%s", blob_digest);
  snprintf(third, sizeof(third), "/v2/third/blobs/%s", blob_digest);
  cli_t *a = cli_get(blob_path, NULL);
  cli_t *b = cli_get(other, NULL);
  confirm_head(1); /* other repositories join once confirmed */
  cli_t *c = cli_get(third, NULL);
  confirm_head(2);
  ASSERT_EQ(3, nfx);
  ASSERT_OK(ff_headers(fx[0], 404, NULL)); /* refused; the error body is still coming */
  mirror_free(d.mirror);
  d.mirror = NULL;
  ASSERT(fx[0]->cancelled);
  ASSERT_EQ(3, nfx);
  cli_t *all[] = {a, b, c};
  for (int i = 0; i < 3; i++) {
    cli_wait(all[i], &r);
    ASSERT_EQ(503, r.status);
    ASSERT_HDR(&r, "X-Cache", "MISS");
    cli_close(all[i]);
  }
  teardown();
}

#define D64M "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* ---- listings (daemon/listing.c, meta.c): the upstream's answers, single flight ---------- */

static const char referrers1[] =
    "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\","
    "\"manifests\":[]}";

/* Two askers of one referrers key: one fetch; the bytes, media type, filter and Link (pointed
 * at the mirror) pass through; within the TTL no fetch; past it and the upstream failing, the
 * cached answer (stale, Warning); an upstream 404 stays 404. */
TEST(referrers_single_flight_cache_stale)
{
  setup();
  resp_t r;
  const char *path = "/v2/pause/referrers/" D64M "?artifactType=application%2Fspdx%2Bjson";
  cli_t *a = cli_get(path, NULL);
  cli_t *b = cli_get(path, NULL);
  ASSERT_EQ(1, nfx);
  ASSERT(strstr(fx[0]->url, "/v2/pause/referrers/" D64M "?artifactType=application%2Fspdx%2Bjson"));
  ASSERT_OK(ff_headers(fx[0], 200, "Content-Type", "application/vnd.oci.image.index.v1+json",
                       "OCI-Filters-Applied", "artifactType", "Link",
                       "</v2/k8s/pause/referrers/" D64M "?page=2>; rel=\"next\"", NULL));
  ASSERT_OK(ff_body(fx[0], referrers1, strlen(referrers1)));
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "Content-Type", "application/vnd.oci.image.index.v1+json");
  ASSERT_HDR(&r, "OCI-Filters-Applied", "artifactType");
  ASSERT_HDR(&r, "Link", "</v2/pause/referrers/" D64M "?page=2>; rel=\"next\"");
  ASSERT_EQ(strlen(referrers1), r.body_len);
  cli_wait(b, &r);
  ASSERT_EQ(200, r.status);
  cli_close(a);
  cli_close(b);
  /* within the TTL: no fetch */
  a = cli_get(path, NULL);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, nfx);
  cli_close(a);
  /* past it, the upstream failing: the cached answer, stale */
  fake_now += 3600;
  a = cli_get(path, NULL);
  ASSERT_EQ(2, nfx);
  ASSERT_OK(ff_headers(fx[1], 503, NULL));
  ff_done(fx[1], 0, 503);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  char w[200];
  ASSERT(hdr(&r, "Warning", w, sizeof(w)) && strncmp(w, "299 - ", 6) == 0);
  cli_close(a);
  /* an upstream 404 stays 404 */
  a = cli_get("/v2/pause/referrers/" D64M, NULL);
  ASSERT_EQ(3, nfx);
  ASSERT_OK(ff_headers(fx[2], 404, NULL));
  ff_done(fx[2], 0, 404);
  cli_wait(a, &r);
  ASSERT_EQ(404, r.status);
  cli_close(a);
  /* offline, nothing cached: 404; cached: served */
  online = 0;
  a = cli_get("/v2/pause/referrers/" D64M "?x=1", NULL);
  cli_wait(a, &r);
  ASSERT_EQ(404, r.status);
  cli_close(a);
  a = cli_get(path, NULL);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  cli_close(a);
  online = 1;
  ASSERT_EQ(3, nfx);
  teardown();
}

/* A request that goes away leaves the fetch; the fetch still fills the cache. A body that is
 * not a JSON object is no answer. */
TEST(listing_gone_and_invalid_body)
{
  setup();
  resp_t r;
  cli_t *a = cli_get("/v2/pause/tags/list", NULL);
  ASSERT_EQ(1, nfx);
  ASSERT(strstr(fx[0]->url, "/v2/pause/tags/list"));
  cli_close(a);
  turn();
  ASSERT_OK(ff_headers(fx[0], 200, "Content-Type", "application/json", NULL));
  ASSERT_OK(ff_body(fx[0], "{\"name\":\"pause\",\"tags\":[\"a\"]}", 29));
  ff_done(fx[0], 0, 200);
  a = cli_get("/v2/pause/tags/list", NULL);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(29, r.body_len);
  ASSERT_EQ(1, nfx);
  cli_close(a);
  a = cli_get("/v2/pause/tags/list?n=1", NULL);
  ASSERT_EQ(2, nfx);
  ASSERT(strstr(fx[1]->url, "/v2/pause/tags/list?n=1"));
  ASSERT_OK(ff_headers(fx[1], 200, NULL));
  ASSERT_OK(ff_body(fx[1], "[1,2]", 5));
  ff_done(fx[1], 0, 200);
  cli_wait(a, &r);
  /* no answer from the upstream and no tag stored: the local list has nothing, 404 */
  ASSERT_EQ(404, r.status);
  cli_close(a);
  teardown();
}

TEST(listing_link_rewrite_cases)
{
  char out[256];
  ASSERT_OK(listing_link_rewrite("</v2/k8s-artifacts-prod/images/pause/tags/list?n=2&last=b>; "
                                 "rel=\"next\"",
                                 "/v2/registry.k8s.io/pause/tags/list", NULL, out, sizeof(out)));
  ASSERT_STREQ("</v2/registry.k8s.io/pause/tags/list?n=2&last=b>; rel=\"next\"", out);
  ASSERT_OK(listing_link_rewrite("<https://up.example/v2/p/tags/list?n=2&last=b>; rel=\"next\"",
                                 "/v2/p/tags/list", "ghcr.io", out, sizeof(out)));
  ASSERT_STREQ("</v2/p/tags/list?n=2&last=b&ns=ghcr.io>; rel=\"next\"", out);
  ASSERT_OK(listing_link_rewrite("</x?ns=a&n=1>; rel=\"next\"", "/v2/p/tags/list", "b", out,
                                 sizeof(out)));
  ASSERT_STREQ("</v2/p/tags/list?ns=a&n=1>; rel=\"next\"", out);
  ASSERT_EQ(-1, listing_link_rewrite("no url", "/v2/p", NULL, out, sizeof(out)));
  ASSERT_EQ(
      -1, listing_link_rewrite("</v2/p/tags/list>; rel=\"next\"", "/v2/p", NULL, out, sizeof(out)));
  ASSERT_EQ(-1, listing_link_rewrite("</v2/p?a=\x01>", "/v2/p", NULL, out, sizeof(out)));
  ASSERT_EQ(-1, listing_link_rewrite("</v2/p?n=1>", "/v2/p", NULL, out, 8));
}

/* max_stale: a tag whose revalidation fails is served stale only while its last check is
 * younger than max_stale; past it the upstream's error passes through. 0 = no limit. */
TEST(max_stale_bounds_stale_tags)
{
  setup();
  resp_t r;
  cli_t *a = cli_get("/v2/pause/manifests/3.10", NULL);
  serve_manifest(fx[0], manifest1);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  cli_close(a);
  wait_idle();
  d.ups[0]->conf.max_stale = 600;
  fake_now += 3600; /* past tag_ttl and past max_stale */
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ASSERT_EQ(2, nfx);
  ASSERT_STREQ("HEAD", fx[1]->method);
  ASSERT_OK(ff_headers(fx[1], 503, NULL));
  ff_done(fx[1], 0, 503);
  cli_wait(a, &r);
  ASSERT_EQ(503, r.status);
  cli_close(a);
  d.ups[0]->conf.max_stale = 0; /* no limit: stale */
  a = cli_get("/v2/pause/manifests/3.10", NULL);
  ASSERT_EQ(3, nfx);
  ASSERT_OK(ff_headers(fx[2], 503, NULL));
  ff_done(fx[2], 0, 503);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_HDR(&r, "X-Cache", "STALE");
  cli_close(a);
  teardown();
}
/* ---- tests: the full disk (pass-through) ------------------------------------------------------
 */

/* A client whose socket buffers are as small as the kernel allows: it reads only when drained,
 * so the server cannot get ahead of it (a slow reader). */
static cli_t *cli_get_slow(const char *path)
{
  int sv[2], small = 4096;
  cli_t *c = pc_xcalloc(1, sizeof(*c));
  ASSERT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ? -errno : 0);
  setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  c->fd = sv[0];
  fcntl(c->fd, F_SETFL, O_NONBLOCK);
  ASSERT_OK(srv__adopt(d.srv, sv[1]));
  char req[512];
  int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: m\r\n\r\n", path);
  ASSERT_EQ(n, write(c->fd, req, (size_t)n));
  turn();
  turn();
  return c;
}

static size_t relay_peak;

static void note_relay(void)
{
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  if (st.relay_bytes > relay_peak)
    relay_peak = st.relay_bytes;
}

/* Deliver [off, off+len) of body in pieces of 16 KiB, as curl does; a piece the fill refuses
 * (UP_DATA_PAUSE) is given again once the fill resumed the fetch, the clients in cs (NULL-ended)
 * reading meanwhile. Returns how many times the fetch was paused. */
static int feed(ff_t *f, const char *body, size_t off, size_t len, cli_t **cs)
{
  int pauses = 0;
  size_t end = off + len;
  while (off < end) {
    size_t n = end - off < 16384 ? end - off : 16384;
    int before = f->resumes;
    int rc = ff_body(f, body + off, n);
    note_relay();
    if (rc == UP_DATA_PAUSE) {
      pauses++;
      int i;
      for (i = 0; i < 5000 && f->resumes == before; i++) {
        for (cli_t **c = cs; c && *c; c++)
          cli_drain(*c);
        turn();
        note_relay();
      }
      ASSERT(f->resumes > before); /* the readers freed room: the fetch goes on */
      continue;
    }
    ASSERT_OK(rc);
    off += n;
  }
  return pauses;
}

/* Temp files under tmp/ other than the store's spares (store_spare_make: empty files made
 * ahead for the next fills), which must be empty. */
static int tmp_files(void)
{
  char p[1024];
  snprintf(p, sizeof(p), "%s/tmp", store_root(d.store));
  DIR *dh = opendir(p);
  struct dirent *de;
  int n = 0;
  ASSERT(dh != NULL);
  pthread_mutex_lock(&d.store->spare_mu);
  while ((de = readdir(dh))) {
    if (de->d_name[0] == '.')
      continue;
    int spare = 0;
    for (int i = 0; i < d.store->nspares && !spare; i++) {
      if (strcmp(de->d_name, strrchr(d.store->spares[i].path, '/') + 1) == 0) {
        struct stat st;
        ASSERT_EQ(0, fstat(d.store->spares[i].fd, &st));
        ASSERT_EQ(0, (int)st.st_size);
        spare = 1;
      }
    }
    n += !spare;
  }
  pthread_mutex_unlock(&d.store->spare_mu);
  closedir(dh);
  return n;
}

/* ENOSPC in the middle of a fill: the client that was streaming, a joiner and a slow reader all
 * get the whole blob, verified (the last byte held until then), through a relay that never holds
 * more than its bound while the upstream is paused for the slow reader; nothing is stored, the
 * temp file is gone, the state is flagged; with room again the next miss is cached. */
TEST(blob_enospc_mid_fill_passthrough)
{
  make_blob();
  setup();
  resp_t r;
  pull_env_t *env = mirror_env(d.mirror);
  env->relay_max = RELAY_CHUNK; /* 64 KiB: the 200 kB blob must pause the upstream */
  store__fault_space(d.store, 50000, 0);
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 30000));
  cli_until(a, &r, 30000);
  ASSERT_EQ(30000, r.body_len);
  /* 20,000 of these fit, then ENOSPC: the fill goes on from byte 30,000 without the disk. */
  ASSERT_OK(ff_body(fx[0], blob + 30000, 40000));
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.passthrough_fills);
  ASSERT_EQ(1, st.passthrough_active);
  ASSERT_EQ(1, st.store_full);
  cli_t *b = cli_get(blob_path, NULL);   /* joins: the relay still has every byte */
  cli_t *slow = cli_get_slow(blob_path); /* joins too, and reads only when told */
  ASSERT_EQ(1, nfx);
  cli_until(a, &r, 70000);
  ASSERT_EQ(70000, r.body_len);
  ASSERT(memcmp(r.body, blob, 70000) == 0);

  /* The slow reader does not read: the relay fills up and the upstream stays paused. */
  int before = fx[0]->resumes, rc = 0;
  size_t off = 70000;
  for (int i = 0; i < 20 && rc != UP_DATA_PAUSE; i++) {
    rc = ff_body(fx[0], blob + off, 16384);
    note_relay();
    if (rc == 0)
      off += 16384;
    for (int k = 0; k < 5; k++) {
      cli_drain(a);
      cli_drain(b);
      turn();
    }
  }
  ASSERT_EQ(UP_DATA_PAUSE, rc);
  for (int i = 0; i < 200; i++) {
    cli_drain(a);
    cli_drain(b);
    turn();
  }
  note_relay();
  ASSERT_EQ(before, fx[0]->resumes); /* paced by the slowest reader */
  ASSERT(relay_peak <= 3 * RELAY_CHUNK);
  cli_t *all[] = {a, b, slow, NULL};
  int pauses = feed(fx[0], blob, off, BLOB_LEN - off, all);
  ASSERT(relay_peak <= 3 * RELAY_CHUNK); /* max, plus the one piece taken before it was full */
  (void)pauses;
  cli_until(a, &r, BLOB_LEN - 1);
  ASSERT_EQ(BLOB_LEN - 1, r.body_len); /* every byte is in: the last one waits */
  ff_done(fx[0], 0, 200);
  cli_t *c3[] = {a, b, slow};
  for (int i = 0; i < 3; i++) {
    cli_wait(c3[i], &r);
    ASSERT_EQ(200, r.status);
    ASSERT_EQ(BLOB_LEN, r.body_len);
    ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
    cli_close(c3[i]);
  }
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));
  ASSERT_EQ(0, tmp_files());
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(0, st.passthrough_active);
  ASSERT_EQ(0, st.relay_bytes);
  ASSERT_EQ(1, st.store_full);
  ASSERT_EQ(0, st.fills_failed);
  ASSERT_EQ(0, st.fills_committed);

  /* Room again: the next miss is cached, and the state clears. */
  store__fault_space(d.store, -1, 0);
  a = cli_get(blob_path, NULL);
  ASSERT_EQ(2, nfx);
  blob_headers(fx[1]);
  ASSERT_OK(ff_body(fx[1], blob, BLOB_LEN));
  ff_done(fx[1], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_close(a);
  wait_stored(blob_digest);
  wait_idle();
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(0, st.store_full);
  ASSERT_EQ(1, st.fills_committed);
  teardown();
}

/* A corrupted byte in a pass-through: every client is cut one byte short, nothing is stored. */
TEST(blob_passthrough_digest_mismatch_cut_short)
{
  make_blob();
  setup();
  resp_t r;
  mirror_env(d.mirror)->relay_max = RELAY_CHUNK;
  store__fault_space(d.store, 10000, 0);
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, 8000));
  cli_t *b = cli_get(blob_path, "Range: bytes=100000-100999\r\n");
  blob[150000] ^= 1;
  cli_t *all[] = {a, b, NULL};
  feed(fx[0], blob, 8000, BLOB_LEN - 8000, all);
  blob[150000] ^= 1;
  cli_until(b, &r, 999);
  ASSERT_EQ(206, r.status);
  ASSERT_EQ(999, r.body_len); /* the range's last byte waits for the verdict */
  cli_until(a, &r, BLOB_LEN - 1);
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT(a->eof);
  ASSERT_EQ(BLOB_LEN - 1, r.body_len);
  cli_wait(b, &r);
  ASSERT(b->eof);
  ASSERT_EQ(999, r.body_len);
  cli_close(a);
  cli_close(b);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));
  ASSERT_EQ(0, tmp_files());
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.digest_mismatches);
  ASSERT_EQ(1, st.fills_failed);
  ASSERT_EQ(0, st.relay_bytes);
  teardown();
}

static uint64_t fake_free = UINT64_MAX;
static uint64_t fake_disk_free(pull_env_t *env)
{
  (void)env;
  return fake_free;
}
static int store_full_calls;
static uint64_t store_full_need;
static void on_full(pull_env_t *env, uint64_t need)
{
  (void)env;
  store_full_calls++;
  store_full_need = need;
}

/* No room when the length is known: pass-through from byte 0 (the eviction hook is told how
 * much was needed); a reader that left early does not hold the others; a Range is served. */
TEST(blob_no_room_at_start_passthrough)
{
  make_blob();
  setup();
  resp_t r;
  pull_env_t *env = mirror_env(d.mirror);
  env->disk_free = fake_disk_free;
  env->on_store_full = on_full;
  fake_free = 1000;
  cli_t *a = cli_get(blob_path, NULL);
  cli_t *gone = cli_get(blob_path, NULL);
  cli_t *b = cli_get(blob_path, "Range: bytes=-100\r\n");
  blob_headers(fx[0]);
  ASSERT_EQ(1, store_full_calls);
  ASSERT_EQ(BLOB_LEN, store_full_need);
  ASSERT_OK(ff_body(fx[0], blob, 4096));
  cli_until(gone, &r, 4096);
  cli_close(gone); /* its reader goes; the relay must not wait for it */
  cli_t *all[] = {a, b, NULL};
  feed(fx[0], blob, 4096, BLOB_LEN - 4096, all);
  ff_done(fx[0], 0, 200);
  cli_wait(a, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  cli_wait(b, &r);
  ASSERT_EQ(206, r.status);
  ASSERT_EQ(100, r.body_len);
  ASSERT(memcmp(r.body, blob + BLOB_LEN - 100, 100) == 0);
  cli_close(a);
  cli_close(b);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));
  ASSERT_EQ(0, tmp_files());
  fake_free = UINT64_MAX;
  teardown();
}

/* The commit fails with ENOSPC after verification: the client streaming has its bytes, and one
 * that came while the commit waited for a worker gets them from the fill's file (not a 5xx). */
TEST(blob_commit_enospc_still_answers)
{
  setenv("UV_THREADPOOL_SIZE", "4", 1);
  make_blob();
  setup();
  resp_t r;
  ASSERT_OK(uv_sem_init(&hold_sem, 0));
  store__fault_space(d.store, -1, -ENOSPC);
  cli_t *a = cli_get(blob_path, NULL);
  blob_headers(fx[0]);
  ASSERT_OK(ff_body(fx[0], blob, BLOB_LEN));
  hold_store_writes(); /* the commit waits */
  ff_done(fx[0], 0, 200);
  cli_t *late = cli_get(blob_path, NULL); /* the fill is verified, committing */
  for (int i = 0; i < HOLDS; i++)
    uv_sem_post(&hold_sem);
  cli_wait(a, &r);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  cli_wait(late, &r);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(BLOB_LEN, r.body_len);
  ASSERT(memcmp(r.body, blob, BLOB_LEN) == 0);
  cli_close(a);
  cli_close(late);
  wait_idle();
  ASSERT_EQ(PC_E_NOTFOUND, store_blob_stat(d.store, blob_digest, NULL));
  ASSERT_EQ(0, tmp_files());
  mirror_stats_t st;
  mirror_get_stats(d.mirror, &st);
  ASSERT_EQ(1, st.passthrough_fills);
  ASSERT_EQ(1, st.store_full);
  store__fault_space(d.store, -1, 0);
  teardown();
  uv_sem_destroy(&hold_sem);
}
