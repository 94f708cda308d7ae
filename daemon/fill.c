/* daemon/fill — a blob fill with subscribers (see fill.h).
 *
 *   FETCHING --200/206 headers--> STREAMING --all bytes, digest ok--> COMMITTING --work--> DONE
 *      |                            |    ^      |                         |
 *      |      transport error after |    |      | ENOSPC/EDQUOT           | commit failed
 *      |      some bytes, tries left v    |      v  on a write             v (verified: DONE)
 *      |                          RESUMING <--> PASSTHROUGH --all bytes, digest ok--> DONE
 *      |                                 ^          (nothing stored; rc -ENOSPC)
 *      +--200 headers, no room (disk_free) or no temp file--+
 *      +------------+---------------+------------+--- any other error, bad digest,
 *                                                      no subscriber left --> FAILED (fill_fail)
 *
 * STREAMING --no progress for join_stall, a request would join (fill_restart: the fetch is
 *   cancelled, at most FILL_RESTARTS times)--> RESUMING.
 * RESUMING goes back to STREAMING, or to PASSTHROUGH when the fill has a relay (the mode is
 * kept across a resume: f->relay). The last byte of the blob is never announced before
 * verification (fill_avail), so no subscriber sends a complete blob that does not match its
 * digest. Verification runs on the loop (the hash was computed as the bytes came in); the
 * fsync, rename and LMDB record follow on a worker. A broken upstream body is resumed with
 * Range from the last byte written, up to FILL_RESUMES times (restarts of a stalled body are
 * counted apart, FILL_RESTARTS); the running hash goes on.
 *
 * The full-disk state of the mirror (env->st.store_full) is set by the first fill that goes
 * pass-through and cleared by the next one that commits: one log line at each change.
 */
#include "daemon/fill.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/bgwrite.h"
#include "daemon/relay.h"
#include "daemon/upstream.h"
#include "store/digest.h"

#define FILL_RESUMES 3
/* Progress, for the no-join rule: FILL_PROGRESS_STEP more bytes received (or the last of the
 * blob). A fill restarts for a joiner at most FILL_RESTARTS times (then min_rate ends it). */
#define FILL_PROGRESS_STEP 16384
#define FILL_RESTARTS 3

struct fill {
  pull_env_t *env;
  fill_state state;
  char digest[STORE_DIGEST_MAX];
  char repo[256];
  char up_name[256];     /**< up's name at the start (the commit runs on a worker; a reload may
                              rewrite up->conf meanwhile) */
  daemon_upstream_t *up; /**< a reference */
  store_writer_t *w;     /**< NULL once handed to the commit */
  int rfd;               /**< O_RDONLY on the temp file (fill_open dups it), or -1: no file */
  int no_room;           /**< no temp file could be made: pass-through once the length is known */
  relay_t *relay;        /**< pass-through: the relay of the bytes from relay_from on */
  int paused;            /**< on_data returned UP_DATA_PAUSE: the relay is full */
  up_fetch_t *fetch;     /**< the fetch in flight, or NULL */
  int64_t total;         /**< upstream length; -1 until known (or when not given) */
  uint64_t written;      /**< bytes in the writer */
  uint64_t skip;         /**< bytes of the current answer to drop (a resume overlap) */
  int attempts;          /**< resumes so far */
  uint64_t seen;         /**< body bytes received, resume overlaps (skip) included */
  uint64_t mark_ms;      /**< loop time of the last progress mark (fill_stalled) */
  uint64_t mark_seen;    /**< seen at that mark */
  int restarts;          /**< fill_restart calls so far (at most FILL_RESTARTS) */
  int rc;
  int status; /**< the current fetch's HTTP status */
  char retry_after[32];
  uv_work_t work;
  pc_list_t subs;      /**< fill_sub_t.link */
  pc_list_t link;      /**< in env->fills */
  uint64_t started_ms; /**< pc_mono_ms at fill_start (fill_each) */
};

static void fill_fetch(fill_t *f);

static void mark(fill_t *f)
{
  f->mark_ms = uv_now(f->env->loop);
  f->mark_seen = f->seen;
}

int fill_stalled(const fill_t *f, uint64_t ms)
{
  if (!ms || f->paused || (f->state != FILL_STREAMING && f->state != FILL_PASSTHROUGH))
    return 0; /* header phases and queues have their own bounds; a paused body waits for us */
  return uv_now(f->env->loop) - f->mark_ms >= ms;
}

unsigned fill_count_stalled(const pull_env_t *env, uint64_t ms)
{
  unsigned n = 0;
  pc_list_foreach(l, &env->fills)
  {
    n += (unsigned)fill_stalled(pc_list_entry(l, fill_t, link), ms);
  }
  return n;
}

/* A fresh fetch would start at once: its pool has no queue (a restart must not lose its slot
 * to the queue and then wait out queue_wait) and its 429 breaker is closed. */
static int can_start_now(const fill_t *f)
{
  up_pool_stats_t st;
  if (f->up->rl.open)
    return 0;
  if (!f->up->pool)
    return 1;
  up_pool_get_stats(f->up->pool, &st);
  return st.queued == 0;
}

int fill_restart(fill_t *f)
{
  pull_env_t *env = f->env;
  if (f->state != FILL_STREAMING || !f->fetch || f->paused || f->restarts >= FILL_RESTARTS ||
      !can_start_now(f))
    return 0;
  f->restarts++;
  env->fetch->cancel(env, f->fetch);
  f->fetch = NULL;
  env->st.stall_restarts++;
  pc_log(PC_LOG_WARN,
         "upstream-blob-stalled-restart upstream=%s repo=%s digest=%s at=%" PRIu64
         " idle_ms=%" PRIu64,
         f->up->conf.name, f->repo, f->digest, f->written, uv_now(env->loop) - f->mark_ms);
  f->state = FILL_RESUMING;
  mark(f);
  fill_fetch(f); /* may end the fill (the fetch could not start): the caller looks again */
  return 1;
}

/* A pass-through fill takes a new subscriber only while its relay has every byte from its
 * start (a joiner needs them all); a fill that has a relay but no length yet cannot happen. */
static int joinable(const fill_t *f)
{
  return !f->relay || relay_intact(f->relay);
}

fill_t *fill_find(pull_env_t *env, const char *digest)
{
  pc_list_foreach(l, &env->fills)
  {
    fill_t *f = pc_list_entry(l, fill_t, link);
    if (strcmp(f->digest, digest) == 0 && joinable(f))
      return f;
  }
  return NULL;
}

int fill_started_in(const fill_t *f, const char *up_name, const char *repo)
{
  return strcmp(f->up->conf.name, up_name) == 0 && strcmp(f->repo, repo) == 0;
}

int fill_verified(const fill_t *f)
{
  return f->state == FILL_COMMITTING || f->state == FILL_DONE;
}

int fill_open(const fill_t *f)
{
  if (f->rfd < 0) {
    errno = ENOENT;
    return -1;
  }
  return fcntl(f->rfd, F_DUPFD_CLOEXEC, 0);
}

relay_t *fill_relay(const fill_t *f)
{
  return f->relay;
}

static int disk_full_err(int rc)
{
  return rc == -ENOSPC || rc == -EDQUOT;
}

/* Bytes that may be sent now: the last byte waits for verification. */
static uint64_t fill_avail(const fill_t *f)
{
  if (f->total <= 0)
    return 0;
  if (fill_verified(f))
    return (uint64_t)f->total;
  uint64_t cap = (uint64_t)f->total - 1; /* the last byte waits for verification */
  return f->written < cap ? f->written : cap;
}

/* The length is known and bytes may be streamed to a new subscriber (STREAMING, RESUMING;
 * once COMMITTING a new subscriber waits for on_end and is served from the store). */
static int length_known(const fill_t *f)
{
  return f->total > 0 &&
         (f->state == FILL_STREAMING || f->state == FILL_RESUMING || f->state == FILL_PASSTHROUGH);
}

static void sub_start(fill_t *f, fill_sub_t *s)
{
  s->streamed = 1;
  s->ops->on_length(s, (uint64_t)f->total, fill_avail(f));
}

void fill_subscribe(fill_t *f, fill_sub_t *s)
{
  PC_ASSERT(f->state != FILL_DONE && f->state != FILL_FAILED);
  s->fill = f;
  s->streamed = 0;
  pc_list_push_back(&f->subs, &s->link);
  if (length_known(f))
    sub_start(f, s);
}

void fill_unsubscribe(fill_sub_t *s)
{
  pc_list_remove(&s->link);
  s->fill = NULL;
}

/* Announce to every started subscriber (a callback may unsubscribe itself, not others). */
static void announce(fill_t *f, uint64_t avail)
{
  pc_list_foreach_safe(l, nx, &f->subs)
  {
    fill_sub_t *s = pc_list_entry(l, fill_sub_t, link);
    if (s->streamed)
      s->ops->on_avail(s, avail);
  }
}

static void fill_free(fill_t *f)
{
  pull_env_t *env = f->env;
  daemon_upstream_unref(f->up);
  store_writer_abort(f->w); /* the temp file goes (readers keep their descriptors) */
  if (f->rfd >= 0)
    close(f->rfd);
  relay_detach(f->relay); /* lives on for its readers */
  free(f);
  env->live--;
  if (env->released)
    env->released(env);
}

/* The one way out: every subscriber gets the outcome, then the fill goes away. */
static void fill_end(fill_t *f)
{
  pull_env_t *env = f->env;
  int verified = fill_verified(f);
  if (f->rc == 0) {
    env->st.fills_committed++;
    if (env->st.store_full) {
      env->st.store_full = 0;
      pc_log(PC_LOG_NOTICE, "store-space-back mode=caching digest=%s", f->digest);
    }
  } else if (!verified || !f->relay) {
    env->st.fills_failed++; /* (a pass-through that verified did what it could: not failed) */
  }
  if (f->relay)
    env->st.passthrough_active--;
  f->state = verified ? FILL_DONE : FILL_FAILED; /* FAILED: fill_fail's path, nothing stored */
  pc_list_remove(&f->link); /* a subscriber may start a new fill of this digest in on_end */
  fill_result_t r = {.rc = f->rc,
                     .verified = verified,
                     .status = f->status,
                     .retry_after = f->retry_after,
                     .digest = f->digest,
                     .repo = f->repo,
                     .up = f->up,
                     .passthrough = f->relay != NULL,
                     .size = f->total > 0 ? (uint64_t)f->total : 0,
                     .fd = verified && f->rc && !f->relay ? f->rfd
                                                          : -1}; /* a relay's file: a prefix */
  pc_list_t *l;
  while ((l = pc_list_first(&f->subs))) {
    fill_sub_t *s = pc_list_entry(l, fill_sub_t, link);
    fill_unsubscribe(s);
    s->ops->on_end(s, &r);
  }
  fill_free(f);
}

static void fill_fail(fill_t *f, int err)
{
  f->rc = err;
  fill_end(f);
}

static void fill_work(uv_work_t *work)
{
  fill_t *f = container_of(work, fill_t, work);
  store_writer_t *w = f->w;
  f->w = NULL;
  /* Where the blob was seen goes in the commit's own transaction (repository scoping). */
  store_also_t also = {.upstream = f->up_name, .repo = f->repo, .now = f->env->now()};
  f->rc = store_writer_commit_also(w, NULL, &also, NULL);
}

/* The mirror-wide state change (one log line), the count, and the hook for eviction. */
static void store_full(fill_t *f, uint64_t need, const char *why)
{
  pull_env_t *env = f->env;
  env->st.passthrough_fills++;
  if (!env->st.store_full) {
    env->st.store_full = 1;
    pc_log(PC_LOG_WARN, "store-full mode=pass-through why=%s digest=%s", why, f->digest);
  }
  pc_log(PC_LOG_DEBUG, "fill-pass-through digest=%s why=%s at=%" PRIu64, f->digest, why,
         f->written);
  if (env->on_store_full)
    env->on_store_full(env, need);
}

static void fill_after_work(uv_work_t *work, int status)
{
  fill_t *f = container_of(work, fill_t, work);
  (void)status;
  if (f->rc)
    pc_log(PC_LOG_ERR, "store-commit-failed digest=%s rc=%s", f->digest, pc_errname(f->rc));
  if (disk_full_err(f->rc))
    store_full(f, 0, pc_errname(f->rc)); /* verified bytes, served from f->rfd: not cached */
  if (!f->rc && f->env->on_committed)
    f->env->on_committed(f->env);
  fill_end(f);
}

/* The relay has room again: take bytes from the upstream again. */
static void on_room(void *arg)
{
  fill_t *f = arg;
  if (!f->paused)
    return;
  f->paused = 0;
  if (f->fetch)
    f->env->fetch->resume(f->env, f->fetch);
}

/* Go on without the disk: the bytes from here (f->written) on go through a relay. */
static void fill_passthrough(fill_t *f, uint64_t need, const char *why)
{
  pull_env_t *env = f->env;
  int rc = store_writer_hash_only(f->w);
  PC_ASSERT(rc == 0); /* called only for no room or a full-disk error */
  f->relay = relay_new(env, f->written, env->relay_max, on_room, f);
  f->state = FILL_PASSTHROUGH;
  env->st.passthrough_active++;
  store_full(f, need, why);
  /* Streaming subscribers continue from the relay (readers made before any byte is added). */
  pc_list_foreach_safe(l, nx, &f->subs)
  {
    fill_sub_t *s = pc_list_entry(l, fill_sub_t, link);
    if (s->streamed && s->ops->on_passthrough)
      s->ops->on_passthrough(s, f->relay);
  }
}

/* Room for need more bytes: the free space less what the other caching fills still need. */
static int room_for(const fill_t *f, uint64_t need)
{
  pull_env_t *env = f->env;
  if (!env->disk_free)
    return 1;
  uint64_t free_b = env->disk_free(env), reserved = 0;
  if (free_b == UINT64_MAX)
    return 1;
  pc_list_foreach(l, &env->fills)
  {
    const fill_t *o = pc_list_entry(l, fill_t, link);
    if (o != f && !o->relay && o->total > 0 && (uint64_t)o->total > o->written &&
        o->state != FILL_COMMITTING)
      reserved += (uint64_t)o->total - o->written;
  }
  return free_b >= reserved && free_b - reserved >= need;
}

static int on_headers(up_fetch_t *uf, int status, void *arg)
{
  fill_t *f = arg;
  pull_env_t *env = f->env;
  f->status = status;
  mark(f);
  pc_strlcpy(f->retry_after, sizeof(f->retry_after), env->fetch->header(env, uf, "retry-after"));
  if (status != 200 && status != 206)
    return 0; /* an error: decided in on_done */
  if (f->written > 0) {
    if (status == 200) {
      f->skip = f->written; /* the upstream ignored Range: drop what we already have */
    } else {
      /* Resumed: the answer must start at or before the first byte we lack. */
      const char *cr = env->fetch->header(env, uf, "content-range");
      uint64_t start = 0;
      if (!cr || strncmp(cr, "bytes ", 6) != 0)
        return PC_E_UPSTREAM;
      cr += 6;
      if (pc_parse_u64_prefix(&cr, &start) < 0 || *cr != '-' || start > f->written)
        return PC_E_UPSTREAM;
      f->skip = f->written - start;
    }
    f->state = f->relay ? FILL_PASSTHROUGH : FILL_STREAMING;
    return 0;
  }
  f->state = f->relay ? FILL_PASSTHROUGH : FILL_STREAMING;
  if (status != 200)
    return 0; /* a 206 without our Range: no length to stream by; verification decides */
  uint64_t v;
  const char *cl = env->fetch->header(env, uf, "content-length");
  if (cl && pc_parse_u64(cl, INT64_MAX, &v) == 0)
    f->total = (int64_t)v;
  if (f->total > 0 && !f->relay && (f->no_room || !room_for(f, (uint64_t)f->total)))
    fill_passthrough(f, (uint64_t)f->total, f->no_room ? "no-temp-file" : "no-room");
  if (f->total > 0) {
    /* Every subscriber starts (an empty blob is answered once committed). */
    pc_list_foreach_safe(l, nx, &f->subs)
    {
      fill_sub_t *s = pc_list_entry(l, fill_sub_t, link);
      if (!s->streamed)
        sub_start(f, s);
    }
  }
  return 0;
}

/* Pass-through: hash the bytes, hand them to the relay (or pause while it is full). */
static int passthrough_data(fill_t *f, const char *buf, size_t len)
{
  if (pc_list_empty(&f->subs))
    return -ENOSPC; /* nobody to pass the bytes to, nowhere to keep them: stop */
  if (relay_full(f->relay)) {
    f->paused = 1;
    return UP_DATA_PAUSE; /* not taken: the same bytes come again after on_room */
  }
  int rc = store_writer_write(f->w, buf, len); /* hash only */
  if (rc)
    return rc;
  relay_append(f->relay, buf, len);
  return 0;
}

static int on_data(up_fetch_t *uf, const char *buf, size_t len, void *arg)
{
  fill_t *f = arg;
  (void)uf;
  if (f->state != FILL_STREAMING && f->state != FILL_PASSTHROUGH)
    return 0; /* an error body */
  f->seen += len;
  if (f->seen - f->mark_seen >= FILL_PROGRESS_STEP)
    mark(f); /* skipped overlap bytes are progress too: the upstream is sending */
  if (f->skip) {
    size_t n = len < f->skip ? len : (size_t)f->skip;
    f->skip -= n;
    buf += n;
    len -= n;
    if (!len)
      return 0;
  }
  int rc = 0;
  if (f->state == FILL_STREAMING) {
    rc = store_writer_write(f->w, buf, len);
    if (disk_full_err(rc) && f->total > 0)
      fill_passthrough(f, 0, pc_errname(rc)); /* this write's bytes go to the relay below */
    else if (rc)
      return rc;
  }
  if (f->state == FILL_PASSTHROUGH) {
    rc = passthrough_data(f, buf, len);
    if (rc)
      return rc;
  }
  f->written = store_writer_size(f->w);
  if (f->total > 0 && f->written == (uint64_t)f->total)
    mark(f);
  if (f->total > 0)
    announce(f, fill_avail(f));
  return 0;
}

static void tell_fetched(fill_t *f, up_fetch_t *uf)
{
  up_timings_t t;
  if (pc_list_empty(&f->subs))
    return;
  f->env->fetch->timings(f->env, uf, &t);
  pc_list_foreach_safe(l, nx, &f->subs)
  {
    fill_sub_t *s = pc_list_entry(l, fill_sub_t, link);
    if (s->ops->on_fetched)
      s->ops->on_fetched(s, &t);
  }
}

static void on_done(up_fetch_t *uf, int rc, int status, void *arg)
{
  fill_t *f = arg;
  pull_env_t *env = f->env;
  f->fetch = NULL;
  daemon_upstream_seen(f->up, rc, status);
  int transport = rc == PC_E_UPSTREAM || rc == PC_E_UPSTREAM_TIMEOUT;
  int body = f->state == FILL_STREAMING || f->state == FILL_PASSTHROUGH;
  if (transport && body && f->total > 0 && f->written == (uint64_t)f->total)
    rc = 0; /* every byte arrived before the connection broke: verification decides */
  if (transport && f->written > 0 && f->attempts < FILL_RESUMES &&
      (f->total < 0 || f->written < (uint64_t)f->total)) {
    f->attempts++;
    env->st.resumes++;
    pc_log(PC_LOG_WARN,
           "upstream-blob-resuming upstream=%s repo=%s digest=%s at=%" PRIu64 " attempt=%d rc=%s",
           f->up->conf.name, f->repo, f->digest, f->written, f->attempts, pc_errname(rc));
    f->state = FILL_RESUMING;
    fill_fetch(f);
    return;
  }
  tell_fetched(f, uf);
  if (rc < 0 || !body) {
    pc_log(PC_LOG_WARN, "upstream-blob-failed upstream=%s repo=%s digest=%s status=%d rc=%s",
           f->up->conf.name, f->repo, f->digest, status, pc_errname(rc));
    fill_fail(f, pull_map_upstream(rc, status, PC_E_BLOB_UNKNOWN));
    return;
  }
  rc = store_writer_verify(f->w);
  if (rc) {
    env->st.digest_mismatches++;
    pc_log(PC_LOG_ERR, "upstream-blob-digest-mismatch upstream=%s repo=%s digest=%s rc=%s",
           f->up->conf.name, f->repo, f->digest, pc_errname(rc));
    fill_fail(f, rc == PC_E_DIGEST_INVALID || rc == PC_E_SIZE_INVALID ? PC_E_UPSTREAM_DIGEST : rc);
    return;
  }
  if (f->relay) {
    /* Verified, and nothing to store: the last byte goes, the relay drains to the readers. */
    f->state = FILL_DONE;
    if (f->total > 0)
      announce(f, (uint64_t)f->total);
    f->rc = -ENOSPC;
    fill_end(f);
    return;
  }
  /* Verified: the held-back last byte goes out at once, before the fsync and rename. */
  f->state = FILL_COMMITTING;
  if (f->total > 0)
    announce(f, (uint64_t)f->total);
  bgwrite_queue(env->writer, env->loop, &f->work, fill_work, fill_after_work);
}

static void fill_fetch(fill_t *f)
{
  pull_env_t *env = f->env;
  daemon_urls_t urls;
  up_req_t r;
  pull_req_init(&r, f->up);
  pull_req_urls(&r, f->up, f->repo, "blobs", f->digest, &urls);
  r.method = "GET";
  r.range_from = f->written;
  r.on_headers = on_headers;
  r.on_data = on_data;
  r.on_done = on_done;
  r.arg = f;
  f->status = 0;
  f->skip = 0;
  f->paused = 0;
  int rc = env->fetch->start(env, &r, &f->fetch);
  daemon_urls_free(&urls);
  if (rc) {
    f->fetch = NULL;
    fill_fail(f, rc);
  }
}

/* The next fills' temp files (store_spare_make keeps STORE_SPARES), made on the store writer
 * thread while this fill fetches: a fill then makes no inode on the loop (an inode can cost a
 * millisecond of kernel CPU, and can wait for the file system's journal). One job at a time;
 * counted in live, so the env outlives it. */
static void spare_work(uv_work_t *w)
{
  pull_env_t *env = container_of(w, pull_env_t, spare_work);
  static int told;                       /* one job at a time: no race */
  int rc = store_spare_make(env->store); /* none made: the next fills make their own */
  if (rc && !told) {
    told = 1;
    pc_log(PC_LOG_NOTICE,
           "store-spare-failed rc=%s hint=\"fills make their temp files on the loop\"",
           pc_errname(rc));
  }
}

static void spare_after(uv_work_t *w, int status)
{
  pull_env_t *env = container_of(w, pull_env_t, spare_work);
  (void)status;
  env->spare_busy = 0;
  env->live--;
  if (env->released)
    env->released(env);
}

static void spare_refill(pull_env_t *env)
{
  if (env->spare_busy || env->closing || !env->loop)
    return;
  env->spare_busy = 1;
  env->live++;
  if (bgwrite_queue(env->writer, env->loop, &env->spare_work, spare_work, spare_after) != 0) {
    env->spare_busy = 0;
    env->live--;
  }
}

int fill_start(pull_env_t *env, daemon_upstream_t *up, const char *repo, const char *digest,
               fill_sub_t *first)
{
  fill_t *f = pc_xcalloc(1, sizeof(*f));
  f->env = env;
  f->state = FILL_FETCHING;
  f->total = -1;
  f->started_ms = pc_mono_ms();
  pc_strlcpy(f->digest, sizeof(f->digest), digest);
  pc_strlcpy(f->repo, sizeof(f->repo), repo);
  pc_strlcpy(f->up_name, sizeof(f->up_name), up->conf.name);
  pc_list_init(&f->subs);
  f->rfd = -1;
  int rc = store_writer_new(env->store, digest, -1, &f->w);
  if (disk_full_err(rc)) {
    /* Not even an empty temp file: verify the bytes anyway, they go through (on_headers). */
    rc = store_writer_new_hash_only(env->store, digest, -1, &f->w);
    f->no_room = 1;
  }
  if (rc) {
    free(f);
    return rc;
  }
  if (!f->no_room) {
    f->rfd = store_writer_reader(f->w);
    if (f->rfd < 0) {
      rc = f->rfd;
      store_writer_abort(f->w);
      free(f);
      return rc;
    }
    spare_refill(env);
  }
  f->up = daemon_upstream_ref(up);
  mark(f);
  pc_list_push_back(&env->fills, &f->link);
  env->live++;
  env->st.fills_started++;
  if (first)
    fill_subscribe(f, first);
  fill_fetch(f);
  return 0;
}

void fill_cancel_all(pull_env_t *env, int err)
{
  pc_list_foreach_safe(l, nx, &env->fills)
  {
    fill_t *f = pc_list_entry(l, fill_t, link);
    if (f->fetch) {
      env->fetch->cancel(env, f->fetch);
      f->fetch = NULL;
      fill_fail(f, err);
    }
  }
}

/* ---- what the status page shows (fill_each) ------------------------------------------------ */

const char *fill_state_name(fill_state s)
{
  static const char *const names[] = {"fetching",   "streaming", "resuming", "passthrough",
                                      "committing", "done",      "failed"};
  return (unsigned)s < PC_ARRAY_SIZE(names) ? names[s] : "?";
}

void fill_each(pull_env_t *env, void (*cb)(void *arg, const fill_info_t *fi), void *arg)
{
  pc_list_foreach(l, &env->fills)
  {
    const fill_t *f = pc_list_entry(l, fill_t, link);
    unsigned readers = 0;
    pc_list_foreach(sl, &f->subs)
    {
      readers += pc_list_entry(sl, fill_sub_t, link)->ops->on_passthrough != NULL;
    }
    fill_info_t fi = {f->digest, f->repo, f->up->conf.name, f->state,   f->written,
                      f->total,  readers, f->started_ms,    f->attempts};
    cb(arg, &fi);
  }
}
