/* daemon/mirror — pull-through: fill the store from the upstream on a miss.
 *
 * Two kinds of work, each single-flight (one upstream transfer however many clients ask):
 *
 *   manifest job (key "m" upstream repo ref): GET (or HEAD to revalidate a tag) upstream,
 *     the body in a capped memory buffer, sha256 checked against the requested digest or the
 *     upstream's Docker-Content-Digest; every waiting request is answered at once from the
 *     verified bytes, then they are stored (and the tag recorded) on a worker thread. Requests
 *     for the same tag, or for the same digest, that arrive during the store write are answered
 *     from the job too, so the fsyncs never sit on a client's critical path.
 *
 *       NEW --fetch--> HEADERS --body--> verified: ANSWER waiters --work(store)--> freed
 *
 *   blob fill (key: digest): GET upstream into a store writer (temp file, hashed as written).
 *     Waiters are answered as soon as the upstream's length is known: each gets its own
 *     descriptor on the temp file and the server sends what is written so far, then follows
 *     the transfer (srv_file_avail). The last byte of a full-length answer is held back until
 *     the digest has been verified (on the loop, before the fsync and rename run on a worker),
 *     so no client ever receives a complete blob that does not match its digest. A broken
 *     upstream connection is resumed with a Range request from the last byte written (the
 *     running hash goes on).
 *
 *       FETCHING --headers--> STREAMING --done--> COMMITTING --work--> COMMITTED | FAILED
 *          ^                      | transport error, written > 0, attempts left
 *          +------- resume -------+
 *
 * Waiters are srv requests; a request that goes away unlinks itself in its done callback, and
 * the fill goes on without it (a fill with no waiters still completes and commits).
 */
#include "daemon/mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/registry.h"
#include "daemon/upstream.h"

#define MIRROR_ACCEPT                                                                              \
  "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "       \
  "application/vnd.docker.distribution.manifest.list.v2+json, "                                 \
  "application/vnd.docker.distribution.manifest.v2+json, "                                      \
  "application/vnd.docker.distribution.manifest.v1+prettyjws, "                                 \
  "application/vnd.docker.distribution.manifest.v1+json"
#define MIRROR_RESUMES 3

typedef struct waiter waiter_t;
typedef struct mjob mjob_t;
typedef struct fill fill_t;

/* A request waiting on a manifest job or a blob fill. Freed in its srv done callback. */
struct waiter {
  srv_req_t *req;
  mjob_t *job;         /**< set while waiting on a manifest job */
  fill_t *fill;        /**< set while attached to a blob fill */
  mirror_range_t range;
  int streaming;       /**< srv_respond_file was called: follows the fill */
  uint64_t end;        /**< one past the last byte this answer sends (file offsets) */
  daemon_upstream_t *up; /**< blob waiters: where this request asked (a reference) */
  int joined;          /**< joined a job or fill another request started */
  int late;            /**< came after the job had answered: served from its memory (HIT) */
  char repo[256];
  waiter_t *next, *prev;
};

typedef struct wlist {
  waiter_t *head;
} wlist_t;

enum mjob_kind { MJOB_DIGEST, MJOB_TAG_FETCH, MJOB_TAG_REVALIDATE };

struct mjob {
  mirror_t *m;
  enum mjob_kind kind;
  char *key;
  daemon_upstream_t *up;  /**< a reference */
  char up_name[256];      /**< its name now (the store write runs on a worker; a reload may
                               rewrite up->conf meanwhile) */
  char repo[256];
  char ref[STORE_DIGEST_MAX];
  store_tag_t old;        /**< the known tag (revalidate: served if upstream fails) */
  int have_old;
  up_fetch_t *fetch;
  int status;             /**< upstream final status */
  int rc;                 /**< outcome: 0, or a pc error for the waiters */
  char retry_after[32];
  char up_digest[STORE_DIGEST_MAX];
  char media_type[128];
  char *body;
  size_t len, cap;
  char digest[STORE_DIGEST_MAX]; /**< what waiters are served */
  int answered;           /**< outcome given to the waiters; only the store write is left */
  int stale, revalidated; /**< how a known tag was answered (X-Cache) */
  int store_rc;
  uv_work_t work;
  wlist_t waiters;
  mjob_t *next, *prev;
};

enum fill_state { FILL_FETCHING, FILL_STREAMING, FILL_COMMITTING, FILL_DONE };

struct fill {
  mirror_t *m;
  enum fill_state state;
  char digest[STORE_DIGEST_MAX];
  char repo[256];
  daemon_upstream_t *up;   /**< a reference */
  store_writer_t *w;
  char *tmp_path;          /**< copy of the writer's path, for waiters' descriptors */
  up_fetch_t *fetch;
  int64_t total;           /**< upstream length; -1 until known (or when not given) */
  uint64_t skip;           /**< bytes of a 200 answer to a resume request to drop */
  int attempts;
  int verified;            /**< the bytes matched the digest: streams may complete */
  int rc;
  int status;
  char retry_after[32];
  uv_work_t work;
  wlist_t waiters;
  fill_t *next, *prev;
};

struct mirror {
  daemon_t *d;
  mjob_t *jobs;
  fill_t *fills;
  int closing;
  mirror_stats_t st; /**< counters for /metrics (fills_in_flight computed on read) */
};

/* ---- small helpers ------------------------------------------------------------------------ */

#define LIST_PUSH(head, x)                                                                         \
  do {                                                                                             \
    (x)->prev = NULL;                                                                              \
    (x)->next = (head);                                                                            \
    if (head)                                                                                      \
      (head)->prev = (x);                                                                          \
    (head) = (x);                                                                                  \
  } while (0)
#define LIST_UNLINK(head, x)                                                                       \
  do {                                                                                             \
    if ((x)->prev)                                                                                 \
      (x)->prev->next = (x)->next;                                                                 \
    else                                                                                           \
      (head) = (x)->next;                                                                          \
    if ((x)->next)                                                                                 \
      (x)->next->prev = (x)->prev;                                                                 \
    (x)->next = (x)->prev = NULL;                                                                  \
  } while (0)

static void copy_str(char *dst, size_t cap, const char *src)
{
  size_t n = src ? strlen(src) : 0;
  if (n >= cap)
    n = cap - 1;
  if (n)
    memcpy(dst, src, n);
  dst[n] = '\0';
}

/* "type; params" -> "type" */
static void copy_media_type(char *dst, size_t cap, const char *ct)
{
  copy_str(dst, cap, ct ? ct : "");
  char *semi = strchr(dst, ';');
  if (semi)
    *semi = '\0';
  size_t n = strlen(dst);
  while (n && (dst[n - 1] == ' ' || dst[n - 1] == '\t'))
    dst[--n] = '\0';
}

static char *upstream_url(const daemon_upstream_t *up, const char *repo, const char *kind,
                          const char *ref)
{
  size_t n = strlen(up->conf.url) + strlen(repo) + strlen(kind) + strlen(ref) + 8;
  char *url = pc_xmalloc(n);
  snprintf(url, n, "%s/v2/%s/%s/%s", up->conf.url, repo, kind, ref);
  return url;
}

/* The fetch fields every upstream request of an upstream shares. */
static void upstream_req(up_req_t *r, const daemon_upstream_t *up)
{
  r->ca_file = up->conf.ca_file[0] ? up->conf.ca_file : NULL;
  r->userpwd = up->conf.userpwd[0] ? up->conf.userpwd : NULL;
  r->pool = up->pool;
}

/* Per-phase timings of a finished fetch on the access-log line of every waiter still here. */
static void log_timings(waiter_t *head, up_fetch_t *f)
{
  up_timings_t t;
  char v[5][32];
  if (!head)
    return;
  up_fetch_timings(f, &t);
  snprintf(v[0], sizeof(v[0]), "%.1f", (double)t.queue_us / 1000.0);
  snprintf(v[1], sizeof(v[1]), "%.1f", (double)t.token_us / 1000.0);
  snprintf(v[2], sizeof(v[2]), "%.1f", (double)t.redirect_us / 1000.0);
  snprintf(v[3], sizeof(v[3]), "%.1f", (double)t.first_byte_us / 1000.0);
  snprintf(v[4], sizeof(v[4]), "%.1f", (double)t.last_byte_us / 1000.0);
  for (waiter_t *w = head; w; w = w->next) {
    if (t.queue_us)
      srv_req_log(w->req, "up_queue_ms", v[0]);
    srv_req_log(w->req, "up_token_ms", v[1]);
    srv_req_log(w->req, "up_redirect_ms", v[2]);
    srv_req_log(w->req, "up_first_byte_ms", v[3]);
    srv_req_log(w->req, "up_last_byte_ms", v[4]);
  }
}

/* The client answer for an upstream outcome that is not a usable 200. */
static int map_upstream(int rc, int status, int unknown)
{
  if (rc < 0)
    return rc;
  if (status == 404)
    return unknown;
  if (status == 401 || status == 403)
    return PC_E_DENIED; /* the upstream refused this mirror (its credentials, or none) */
  if (status == 429)
    return PC_E_TOOMANYREQUESTS;
  if (status == 503)
    return PC_E_UPSTREAM_UNAVAILABLE;
  if (status == 504)
    return PC_E_UPSTREAM_TIMEOUT;
  return PC_E_UPSTREAM;
}

static void answer_error(srv_req_t *req, int err, const char *retry_after, const char *detail)
{
  if (err == PC_E_TOOMANYREQUESTS && retry_after && retry_after[0])
    srv_resp_header(req, "Retry-After", retry_after);
  registry_error(req, err, detail);
}

static void on_waiter_done(srv_req_t *req, int status, void *arg);

static waiter_t *waiter_new(srv_req_t *req)
{
  waiter_t *w = pc_xcalloc(1, sizeof(*w));
  w->req = req;
  srv_req_on_done(req, on_waiter_done, w);
  return w;
}

static void waiter_free(waiter_t *w)
{
  if (w->up)
    daemon_upstream_unref(w->up);
  free(w);
}

/* ---- manifests ---------------------------------------------------------------------------- */

static void mjob_start(mjob_t *j);
static void mjob_work(uv_work_t *work);
static void mjob_after_work(uv_work_t *work, int status);

static mjob_t *mjob_find(mirror_t *m, const char *key)
{
  for (mjob_t *j = m->jobs; j; j = j->next)
    if (strcmp(j->key, key) == 0)
      return j;
  return NULL;
}

static void mirror_maybe_free(mirror_t *m)
{
  if (m->closing && !m->jobs && !m->fills)
    free(m);
}

/* A job of this upstream that has answered with the manifest `digest` (fetched by tag or by
 * digest, for any repository: content is content). */
static mjob_t *mjob_find_answered_digest(mirror_t *m, const daemon_upstream_t *up,
                                         const char *digest)
{
  for (mjob_t *j = m->jobs; j; j = j->next)
    if (j->answered && j->rc == 0 && j->body && j->up == up && strcmp(j->digest, digest) == 0)
      return j;
  return NULL;
}

static void mjob_free(mjob_t *j)
{
  mirror_t *m = j->m;
  LIST_UNLINK(m->jobs, j);
  daemon_upstream_unref(j->up);
  free(j->key);
  free(j->body);
  free(j);
  mirror_maybe_free(m);
}

/* Answer one waiter from the job's outcome. A verified manifest is answered from memory (the
 * store write runs afterwards on a worker); a revalidated or stale one from the store. */
static void mjob_answer(mjob_t *j, waiter_t *w)
{
  srv_req_t *req = w->req;
  daemon_t *d = j->m->d;
  int outcome = j->stale         ? DAEMON_CACHE_STALE
                : j->revalidated ? DAEMON_CACHE_REVALIDATED
                : w->late        ? DAEMON_CACHE_HIT
                : w->joined      ? DAEMON_CACHE_JOIN
                                 : DAEMON_CACHE_MISS;
  w->job = NULL;
  if (j->rc == 0 && j->body) {
    registry_cache(d, req, 0, outcome);
    char etag[STORE_DIGEST_MAX + 2];
    snprintf(etag, sizeof(etag), "\"%s\"", j->digest);
    registry_common_headers(req);
    srv_resp_header(req, "Docker-Content-Digest", j->digest);
    srv_resp_header(req, "ETag", etag);
    srv_respond(req, 200, j->media_type, j->body, j->len);
    return;
  }
  if (j->rc == 0) {
    int rc = registry_serve_manifest(d, req, j->digest, outcome);
    if (rc) {
      registry_cache(d, req, 0, outcome);
      registry_error(req, rc == PC_E_NOTFOUND ? PC_E_MANIFEST_UNKNOWN : rc,
                     rc == PC_E_NOTFOUND ? NULL : "stored manifest unreadable");
    }
    return;
  }
  const char *detail = NULL;
  if (j->rc == PC_E_UPSTREAM_DIGEST)
    detail = "the upstream manifest did not match its digest; nothing was cached";
  registry_cache(d, req, 0, outcome);
  answer_error(req, j->rc, j->retry_after, detail);
}

/* Answer every waiter. Afterwards the job is "answered": a request that arrives while its store
 * write is still running is answered at once, from the same outcome. */
static void mjob_answer_all(mjob_t *j)
{
  waiter_t *w;
  j->answered = 1;
  while ((w = j->waiters.head)) {
    LIST_UNLINK(j->waiters.head, w);
    mjob_answer(j, w);
  }
}

static void mjob_finish(mjob_t *j)
{
  mjob_answer_all(j);
  mjob_free(j);
}

/* Outcome known and good: answer now, then store on a worker (the job lives until then). */
static void mjob_answer_then_store(mjob_t *j)
{
  j->rc = 0;
  mjob_answer_all(j);
  uv_queue_work(j->m->d->loop, &j->work, mjob_work, mjob_after_work);
}

/* Worker thread: store the verified manifest and the tag. */
static void mjob_work(uv_work_t *work)
{
  mjob_t *j = container_of(work, mjob_t, work);
  store_t *s = j->m->d->store;
  int64_t now = pc_now_sec();
  int rc = 0;
  if (j->body) {
    rc = store_manifest_put(s, j->body, j->len, j->media_type, j->digest, NULL);
    if (rc)
      pc_log(PC_LOG_ERR, "store-manifest-put-failed digest=%s rc=%s", j->digest, pc_errname(rc));
  }
  if (rc == 0 && j->kind != MJOB_DIGEST) {
    store_tag_t t;
    memset(&t, 0, sizeof(t));
    if (j->kind == MJOB_TAG_REVALIDATE && !j->body) {
      t = j->old; /* unchanged: only the check time moves */
    } else {
      copy_str(t.digest, sizeof(t.digest), j->digest);
      copy_str(t.media_type, sizeof(t.media_type), j->media_type);
      t.size = j->len;
      t.fetched_at = now;
    }
    t.checked_at = now;
    rc = store_tag_put(s, j->up_name, j->repo, j->ref, &t);
    if (rc)
      pc_log(PC_LOG_ERR, "store-tag-put-failed repo=%s tag=%s rc=%s", j->repo, j->ref,
             pc_errname(rc));
  }
  j->store_rc = rc;
}

static void mjob_after_work(uv_work_t *work, int status)
{
  mjob_t *j = container_of(work, mjob_t, work);
  (void)status;
  mjob_free(j); /* its waiters were answered before the store write */
}

static int mjob_on_headers(up_fetch_t *f, int status, void *arg)
{
  mjob_t *j = arg;
  j->status = status;
  copy_media_type(j->media_type, sizeof(j->media_type), up_fetch_header(f, "content-type"));
  copy_str(j->up_digest, sizeof(j->up_digest), up_fetch_header(f, "docker-content-digest"));
  copy_str(j->retry_after, sizeof(j->retry_after), up_fetch_header(f, "retry-after"));
  return 0;
}

static int mjob_on_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  mjob_t *j = arg;
  (void)f;
  if (j->status != 200)
    return 0; /* error bodies are not kept */
  uint64_t max = j->m->d->cfg.max_manifest;
  if (j->len + len > max)
    return PC_E_TOOBIG;
  if (j->len + len > j->cap) {
    size_t cap = j->cap ? j->cap : 4096;
    while (cap < j->len + len)
      cap *= 2;
    j->body = pc_xrealloc(j->body, cap);
    j->cap = cap;
  }
  memcpy(j->body + j->len, buf, len);
  j->len += len;
  return 0;
}

static void mjob_fail(mjob_t *j, int err)
{
  /* A tag we knew, and an upstream that could not confirm or deny it: serve it stale. */
  if (j->have_old && err != PC_E_MANIFEST_UNKNOWN &&
      err != PC_E_UPSTREAM_DIGEST) {
    j->stale = 1;
    pc_log(PC_LOG_WARN, "stale-tag-served upstream=%s repo=%s tag=%s digest=%s rc=%s",
           j->up->conf.name, j->repo, j->ref, j->old.digest, pc_errname(err));
    copy_str(j->digest, sizeof(j->digest), j->old.digest);
    /* Whatever of a new manifest arrived before the failure is not the old one: drop it, so
     * the waiters are answered from the store with the bytes of the old digest. */
    free(j->body);
    j->body = NULL;
    j->len = j->cap = 0;
    j->rc = 0;
    mjob_finish(j);
    return;
  }
  j->rc = err;
  mjob_finish(j);
}

static void mjob_on_done(up_fetch_t *f, int rc, int status, void *arg)
{
  mjob_t *j = arg;
  j->fetch = NULL;
  daemon_upstream_seen(j->up, rc, status);
  if (!(j->kind == MJOB_TAG_REVALIDATE && rc == 0 && status == 200))
    log_timings(j->waiters.head, f); /* the final fetch of this job */
  if (rc < 0 || status != 200) {
    int err = map_upstream(rc, status, PC_E_MANIFEST_UNKNOWN);
    pc_log(PC_LOG_WARN, "upstream-manifest-failed upstream=%s repo=%s ref=%s status=%d rc=%s",
           j->up->conf.name, j->repo, j->ref, status, pc_errname(rc));
    mjob_fail(j, err);
    return;
  }
  if (j->kind == MJOB_TAG_REVALIDATE) {
    /* HEAD answered: unchanged -> touch the tag; changed -> fetch the new manifest. */
    if (j->up_digest[0] && strcmp(j->up_digest, j->old.digest) == 0) {
      log_timings(j->waiters.head, f);
      j->revalidated = 1;
      copy_str(j->digest, sizeof(j->digest), j->old.digest);
      mjob_answer_then_store(j);
      return;
    }
    j->kind = MJOB_TAG_FETCH;
    mjob_start(j);
    return;
  }
  if (j->len == 0) {
    pc_log(PC_LOG_WARN, "upstream-manifest-empty upstream=%s repo=%s ref=%s", j->up->conf.name,
           j->repo, j->ref);
    mjob_fail(j, PC_E_UPSTREAM);
    return;
  }
  char got[72];
  store_digest_of(j->body, j->len, got);
  const char *want = j->kind == MJOB_DIGEST ? j->ref : (j->up_digest[0] ? j->up_digest : NULL);
  if (want && strcmp(want, got) != 0) {
    j->m->st.digest_mismatches++;
    pc_log(PC_LOG_ERR,
           "upstream-manifest-digest-mismatch upstream=%s repo=%s ref=%s want=%s got=%s",
           j->up->conf.name, j->repo, j->ref, want, got);
    mjob_fail(j, PC_E_UPSTREAM_DIGEST);
    return;
  }
  if (!j->media_type[0])
    copy_str(j->media_type, sizeof(j->media_type), "application/vnd.oci.image.manifest.v1+json");
  copy_str(j->digest, sizeof(j->digest), got);
  j->m->st.manifests_fetched++;
  mjob_answer_then_store(j);
}

static void mjob_start(mjob_t *j)
{
  int head = j->kind == MJOB_TAG_REVALIDATE;
  char *url = upstream_url(j->up, j->repo, "manifests", j->ref);
  up_req_t r;
  memset(&r, 0, sizeof(r));
  r.method = head ? "HEAD" : "GET";
  r.url = url;
  r.accept = MIRROR_ACCEPT;
  upstream_req(&r, j->up);
  r.on_headers = mjob_on_headers;
  r.on_data = mjob_on_data;
  r.on_done = mjob_on_done;
  r.arg = j;
  j->status = 0;
  j->len = 0;
  int rc = up_fetch_start(j->m->d->up, &r, &j->fetch);
  free(url);
  if (rc) {
    j->fetch = NULL;
    mjob_fail(j, rc);
  }
}

void mirror_manifest(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                     const char *ref, int ref_is_digest)
{
  daemon_t *d = m->d;
  store_tag_t t;
  int have_tag = 0;

  if (!ref_is_digest) {
    have_tag = store_tag_get(d->store, up->conf.name, repo, ref, &t) == 0 &&
               store_manifest_stat(d->store, t.digest, NULL) == 0;
    if (have_tag) {
      int64_t age = pc_now_sec() - t.checked_at;
      if (d->cfg.offline || !d->up || age < up->conf.tag_ttl) {
        if (registry_serve_manifest(d, req, t.digest, DAEMON_CACHE_HIT) == 0)
          return;
        have_tag = 0; /* the tag points at a manifest we no longer have */
      }
    }
  }
  if (d->cfg.offline || !d->up) {
    registry_cache(d, req, 0, DAEMON_CACHE_MISS);
    registry_error(req, PC_E_MANIFEST_UNKNOWN, "not cached and the mirror is offline");
    return;
  }
  if (ref_is_digest && store_digest_parse(ref, strlen(ref)) != STORE_DIGEST_SHA256) {
    registry_cache(d, req, 0, DAEMON_CACHE_MISS);
    registry_error(req, PC_E_MANIFEST_UNKNOWN, "only sha256 content is mirrored");
    return;
  }

  size_t klen = strlen(up->conf.name) + strlen(repo) + strlen(ref) + 8;
  char *key = pc_xmalloc(klen);
  snprintf(key, klen, "m %s %s %s", up->conf.name, repo, ref);
  mjob_t *j = mjob_find(m, key);
  if (!j && ref_is_digest)
    j = mjob_find_answered_digest(m, up, ref);
  if (j && j->answered) {
    /* Fetched and verified a moment ago; its store write is still running. */
    free(key);
    waiter_t tmp = {.req = req, .late = 1};
    mjob_answer(j, &tmp);
    return;
  }
  waiter_t *w = waiter_new(req);
  if (j) {
    free(key);
    w->joined = 1;
    w->job = j;
    LIST_PUSH(j->waiters.head, w);
    return;
  }
  j = pc_xcalloc(1, sizeof(*j));
  j->m = m;
  j->key = key;
  j->up = daemon_upstream_ref(up);
  copy_str(j->up_name, sizeof(j->up_name), up->conf.name);
  copy_str(j->repo, sizeof(j->repo), repo);
  copy_str(j->ref, sizeof(j->ref), ref);
  if (ref_is_digest) {
    j->kind = MJOB_DIGEST;
  } else if (have_tag) {
    j->kind = MJOB_TAG_REVALIDATE;
    j->old = t;
    j->have_old = 1;
  } else {
    j->kind = MJOB_TAG_FETCH;
  }
  LIST_PUSH(m->jobs, j);
  w->job = j;
  LIST_PUSH(j->waiters.head, w);
  mjob_start(j);
}

/* ---- blobs -------------------------------------------------------------------------------- */

static void fill_start_fetch(fill_t *f);

static fill_t *fill_find(mirror_t *m, const char *digest)
{
  for (fill_t *f = m->fills; f; f = f->next)
    if (strcmp(f->digest, digest) == 0)
      return f;
  return NULL;
}

/* Start streaming one waiter from the temp file (the upstream length is known). */
static void fill_stream_waiter(fill_t *f, waiter_t *w, uint64_t written)
{
  srv_req_t *req = w->req;
  uint64_t size = (uint64_t)f->total, start = 0, len = size;
  int status = 200;
  registry_cache(f->m->d, req, 1, w->joined ? DAEMON_CACHE_JOIN : DAEMON_CACHE_MISS);
  if (w->range.has) {
    int rc = registry_range_resolve(&w->range, size, &start, &len);
    if (rc) {
      char cr[64];
      snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
      srv_resp_header(req, "Content-Range", cr);
      LIST_UNLINK(f->waiters.head, w);
      w->fill = NULL;
      registry_error(req, rc, NULL);
      return;
    }
    status = 206;
    char cr[96];
    snprintf(cr, sizeof(cr), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start, start + len - 1,
             size);
    srv_resp_header(req, "Content-Range", cr);
  }
  int fd = open(f->tmp_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    LIST_UNLINK(f->waiters.head, w);
    w->fill = NULL;
    registry_error(req, -errno, "cannot read the blob being filled");
    return;
  }
  w->streaming = 1;
  w->end = start + len;
  /* Hold back the final byte of the blob until it has been verified. */
  uint64_t avail = written < size ? written : size - 1;
  if (avail > w->end)
    avail = w->end;
  if (avail < start)
    avail = start;
  registry_common_headers(req);
  srv_resp_header(req, "Docker-Content-Digest", f->digest);
  char etag[STORE_DIGEST_MAX + 2];
  snprintf(etag, sizeof(etag), "\"%s\"", f->digest);
  srv_resp_header(req, "ETag", etag);
  srv_resp_header(req, "Accept-Ranges", "bytes");
  srv_respond_file(req, status, "application/octet-stream", fd,
                   start, len, avail);
}

static void fill_announce(fill_t *f, uint64_t written)
{
  /* The last byte of the blob waits for verification (see the top of the file). */
  uint64_t cap = f->total > 0 ? (uint64_t)f->total - 1 : 0;
  uint64_t avail = written < cap ? written : cap;
  for (waiter_t *w = f->waiters.head, *next; w; w = next) {
    next = w->next;
    if (w->streaming)
      srv_file_avail(w->req, avail < w->end ? avail : w->end);
  }
}

static void fill_free(fill_t *f)
{
  mirror_t *m = f->m;
  waiter_t *w;
  while ((w = f->waiters.head)) {
    LIST_UNLINK(f->waiters.head, w);
    w->fill = NULL;
  }
  LIST_UNLINK(f->m->fills, f);
  daemon_upstream_unref(f->up);
  store_writer_abort(f->w);
  free(f->tmp_path);
  free(f);
  mirror_maybe_free(m);
}

/* The fill is over: every waiter gets its outcome, then the fill goes away. */
static void fill_end(fill_t *f)
{
  mirror_t *m = f->m;
  waiter_t *w;
  wlist_t retry = {NULL};
  /* "Not here" (404, 401, 403) is an answer about one repository of one upstream: requests
   * that joined from another one get a fill of their own instead of this failure. */
  int repo_refusal = f->rc && (f->status == 404 || f->status == 401 || f->status == 403);
  f->state = FILL_DONE;
  if (f->rc == 0)
    m->st.fills_committed++;
  else
    m->st.fills_failed++;
  while ((w = f->waiters.head)) {
    LIST_UNLINK(f->waiters.head, w);
    w->fill = NULL;
    if (repo_refusal && !w->streaming && (w->up != f->up || strcmp(w->repo, f->repo) != 0)) {
      LIST_PUSH(retry.head, w);
      continue;
    }
    if (w->streaming) {
      if (f->rc == 0 || f->verified)
        srv_file_avail(w->req, w->end); /* the bytes are good even if the commit failed */
      else
        srv_abort(w->req); /* promised the full length; a short body tells the client */
    } else if (f->rc == 0) {
      int outcome = w->late     ? DAEMON_CACHE_HIT
                    : w->joined ? DAEMON_CACHE_JOIN
                                : DAEMON_CACHE_MISS;
      int rc = registry_serve_blob(m->d, w->req, f->digest, &w->range, outcome);
      if (rc) {
        registry_cache(m->d, w->req, 1, outcome);
        registry_error(w->req, rc == PC_E_NOTFOUND ? PC_E_BLOB_UNKNOWN : rc, NULL);
      }
    } else {
      const char *detail = f->rc == PC_E_UPSTREAM_DIGEST
                               ? "the upstream blob did not match its digest; nothing was cached"
                               : NULL;
      registry_cache(m->d, w->req, 1, w->joined ? DAEMON_CACHE_JOIN : DAEMON_CACHE_MISS);
      answer_error(w->req, f->rc, f->retry_after, detail);
    }
  }
  char digest[STORE_DIGEST_MAX];
  copy_str(digest, sizeof(digest), f->digest);
  fill_free(f);
  while ((w = retry.head)) {
    LIST_UNLINK(retry.head, w);
    srv_req_t *req = w->req;
    daemon_upstream_t *up = w->up;
    char repo[256];
    mirror_range_t range = w->range;
    copy_str(repo, sizeof(repo), w->repo);
    w->up = NULL;
    srv_req_on_done(req, NULL, NULL); /* mirror_blob may answer without a waiter (offline) */
    waiter_free(w);
    mirror_blob(m, req, up, repo, digest, &range);
    daemon_upstream_unref(up);
  }
}

static void fill_work(uv_work_t *work)
{
  fill_t *f = container_of(work, fill_t, work);
  store_writer_t *w = f->w;
  f->w = NULL;
  f->rc = store_writer_commit(w, NULL, NULL);
}

static void fill_after_work(uv_work_t *work, int status)
{
  fill_t *f = container_of(work, fill_t, work);
  (void)status;
  if (f->rc) {
    pc_log(PC_LOG_ERR, "store-commit-failed digest=%s rc=%s", f->digest, pc_errname(f->rc));
  }
  fill_end(f);
}

static int fill_on_headers(up_fetch_t *uf, int status, void *arg)
{
  fill_t *f = arg;
  f->status = status;
  uint64_t written = store_writer_size(f->w);
  copy_str(f->retry_after, sizeof(f->retry_after), up_fetch_header(uf, "retry-after"));
  if (status == 206 && written > 0) {
    /* Resumed: the answer must start at or before the first byte we lack. */
    const char *cr = up_fetch_header(uf, "content-range");
    unsigned long long start = 0;
    if (!cr || sscanf(cr, "bytes %llu-", &start) != 1 || start > written)
      return PC_E_UPSTREAM;
    f->skip = written - start;
    return 0;
  }
  if (status != 200)
    return 0; /* decided in on_done */
  if (written > 0) {
    f->skip = written; /* the upstream ignored Range: drop what we already have */
    return 0;
  }
  const char *cl = up_fetch_header(uf, "content-length");
  if (cl) {
    char *end = NULL;
    unsigned long long v = strtoull(cl, &end, 10);
    if (end != cl && *end == '\0')
      f->total = (int64_t)v;
  }
  if (f->total == 0) {
    /* An empty blob: nothing to stream; it is answered once committed. */
    f->state = FILL_STREAMING;
    return 0;
  }
  f->state = FILL_STREAMING;
  if (f->total > 0) {
    waiter_t *w = f->waiters.head;
    while (w) {
      waiter_t *next = w->next;
      if (!w->streaming)
        fill_stream_waiter(f, w, 0);
      w = next;
    }
  }
  return 0;
}

static int fill_on_data(up_fetch_t *uf, const char *buf, size_t len, void *arg)
{
  fill_t *f = arg;
  (void)uf;
  if (f->status != 200 && f->status != 206)
    return 0;
  if (f->skip) {
    size_t n = len < f->skip ? len : (size_t)f->skip;
    f->skip -= n;
    buf += n;
    len -= n;
    if (!len)
      return 0;
  }
  int rc = store_writer_write(f->w, buf, len);
  if (rc)
    return rc;
  if (f->total > 0)
    fill_announce(f, store_writer_size(f->w));
  return 0;
}

static void fill_fail(fill_t *f, int err)
{
  f->rc = err;
  fill_end(f);
}

static void fill_on_done(up_fetch_t *uf, int rc, int status, void *arg)
{
  fill_t *f = arg;
  f->fetch = NULL;
  daemon_upstream_seen(f->up, rc, status);
  uint64_t written = store_writer_size(f->w);
  int transport = rc == PC_E_UPSTREAM || rc == PC_E_UPSTREAM_TIMEOUT;
  if (transport && f->total > 0 && written == (uint64_t)f->total &&
      (status == 200 || status == 206)) {
    rc = 0; /* every byte arrived before the connection broke: verification decides */
  }
  if (transport && written > 0 && f->attempts < MIRROR_RESUMES &&
      (f->total < 0 || written < (uint64_t)f->total)) {
    f->attempts++;
    f->m->st.resumes++;
    pc_log(PC_LOG_WARN,
           "upstream-blob-resuming upstream=%s repo=%s digest=%s at=%" PRIu64 " attempt=%d rc=%s",
           f->up->conf.name, f->repo, f->digest, written, f->attempts, pc_errname(rc));
    fill_start_fetch(f);
    return;
  }
  log_timings(f->waiters.head, uf);
  if (rc < 0 || (status != 200 && status != 206)) {
    pc_log(PC_LOG_WARN, "upstream-blob-failed upstream=%s repo=%s digest=%s status=%d rc=%s",
           f->up->conf.name, f->repo, f->digest, status, pc_errname(rc));
    fill_fail(f, map_upstream(rc, status, PC_E_BLOB_UNKNOWN));
    return;
  }
  /* Verify on the loop (the hash is already computed as bytes came in): a good blob releases
   * the held-back last byte at once, before the fsync and rename on a worker. */
  rc = store_writer_verify(f->w);
  if (rc) {
    f->m->st.digest_mismatches++;
    pc_log(PC_LOG_ERR, "upstream-blob-digest-mismatch upstream=%s repo=%s digest=%s rc=%s",
           f->up->conf.name, f->repo, f->digest, pc_errname(rc));
    fill_fail(f, rc == PC_E_DIGEST_INVALID || rc == PC_E_SIZE_INVALID ? PC_E_UPSTREAM_DIGEST : rc);
    return;
  }
  f->verified = 1;
  for (waiter_t *w = f->waiters.head, *next; w; w = next) {
    next = w->next;
    if (w->streaming)
      srv_file_avail(w->req, w->end);
  }
  f->state = FILL_COMMITTING;
  uv_queue_work(f->m->d->loop, &f->work, fill_work, fill_after_work);
}

static void fill_start_fetch(fill_t *f)
{
  char *url = upstream_url(f->up, f->repo, "blobs", f->digest);
  up_req_t r;
  memset(&r, 0, sizeof(r));
  r.method = "GET";
  r.url = url;
  r.range_from = store_writer_size(f->w);
  upstream_req(&r, f->up);
  r.on_headers = fill_on_headers;
  r.on_data = fill_on_data;
  r.on_done = fill_on_done;
  r.arg = f;
  f->status = 0;
  f->skip = 0;
  int rc = up_fetch_start(f->m->d->up, &r, &f->fetch);
  free(url);
  if (rc) {
    f->fetch = NULL;
    fill_fail(f, rc);
  }
}

void mirror_blob(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                 const char *digest, const mirror_range_t *range)
{
  daemon_t *d = m->d;
  if (d->cfg.offline || !d->up) {
    registry_cache(d, req, 1, DAEMON_CACHE_MISS);
    registry_error(req, PC_E_BLOB_UNKNOWN, "not cached and the mirror is offline");
    return;
  }
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256) {
    registry_cache(d, req, 1, DAEMON_CACHE_MISS);
    registry_error(req, PC_E_BLOB_UNKNOWN, "only sha256 content is mirrored");
    return;
  }
  fill_t *f = fill_find(m, digest);
  waiter_t *w = waiter_new(req);
  if (range)
    w->range = *range;
  w->up = daemon_upstream_ref(up);
  copy_str(w->repo, sizeof(w->repo), repo);
  if (f) {
    /* A fill already verified is content we have (its store write is finishing): a hit. */
    w->late = f->verified;
    w->joined = !w->late;
    m->st.waiters_joined += (uint64_t)w->joined;
    w->fill = f;
    LIST_PUSH(f->waiters.head, w);
    if (f->state == FILL_STREAMING && f->total > 0)
      fill_stream_waiter(f, w, store_writer_size(f->w));
    return;
  }
  f = pc_xcalloc(1, sizeof(*f));
  f->m = m;
  f->total = -1;
  copy_str(f->digest, sizeof(f->digest), digest);
  copy_str(f->repo, sizeof(f->repo), repo);
  int rc = store_writer_new(d->store, digest, -1, &f->w);
  if (rc) {
    free(f);
    registry_cache(d, req, 1, DAEMON_CACHE_MISS);
    registry_error(req, rc, "cannot start a fill");
    return;
  }
  f->up = daemon_upstream_ref(up);
  f->tmp_path = pc_xstrdup(store_writer_path(f->w));
  LIST_PUSH(m->fills, f);
  m->st.fills_started++;
  w->fill = f;
  LIST_PUSH(f->waiters.head, w);
  fill_start_fetch(f);
}

/* ---- waiters and lifecycle ---------------------------------------------------------------- */

static void on_waiter_done(srv_req_t *req, int status, void *arg)
{
  waiter_t *w = arg;
  (void)req;
  (void)status;
  if (w->job)
    LIST_UNLINK(w->job->waiters.head, w);
  if (w->fill)
    LIST_UNLINK(w->fill->waiters.head, w);
  waiter_free(w);
}

void mirror_get_stats(const mirror_t *m, mirror_stats_t *out)
{
  *out = m->st;
  out->fills_in_flight = 0;
  for (const fill_t *f = m->fills; f; f = f->next)
    out->fills_in_flight++;
}

int mirror_new(daemon_t *d, mirror_t **out)
{
  mirror_t *m = pc_xcalloc(1, sizeof(*m));
  m->d = d;
  *out = m;
  return 0;
}

void mirror_free(mirror_t *m)
{
  if (!m)
    return;
  /* Fetches are cancelled (no callbacks) and their waiters answered; work already queued on a
   * worker finishes before the loop ends. */
  mjob_t *j = m->jobs;
  while (j) {
    mjob_t *next = j->next;
    if (j->fetch) {
      up_fetch_cancel(j->fetch);
      j->fetch = NULL;
      j->rc = PC_E_UPSTREAM_UNAVAILABLE;
      mjob_finish(j);
    }
    j = next;
  }
  fill_t *f = m->fills;
  while (f) {
    fill_t *next = f->next;
    if (f->fetch) {
      up_fetch_cancel(f->fetch);
      f->fetch = NULL;
      fill_fail(f, PC_E_UPSTREAM_UNAVAILABLE);
    }
    f = next;
  }
  /* Jobs and fills inside a worker end in their after-work callback; the last one frees m. */
  m->closing = 1;
  mirror_maybe_free(m);
}
