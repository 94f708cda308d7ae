/* daemon/mirror — the pull-through policy (see mirror.h).
 *
 * A blob miss reads in one direction:
 *   registry (route) -> mirror_blob (policy: offline? join or start a fill) -> fill.c (the
 *   fetch, the writer, verification) -> the request's client subscriber here -> answer.c ->
 *   srv. Manifests the same way through mjob.c.
 *
 * A client is the subscriber a waiting request gets (one object, parked on the request's
 * context): it embeds a fill_sub_t and an mjob_sub_t, and is freed when its answer is complete
 * (for a body that follows a fill: when the fill ends) or when the request goes away
 * (client_gone), whichever is first.
 *
 * Policy decisions made here, not in the machines:
 *   - tags: fresh within tag_ttl of checked_at (mirror_tag_fresh) or offline -> HIT from the
 *     store; else the job revalidates (HEAD) or fetches; an answered job serves requests that
 *     arrive during its store write (HIT);
 *   - blobs: a request joins the fill of its digest (JOIN; HIT when the fill is already
 *     verified); a fill that has made no progress for [fetch] join_stall is restarted on a
 *     fresh upstream connection first (fill_restart), so no request waits on a trickle; "not here"
 * (404/401/403) from one upstream/repository is no answer for a request that joined from another:
 * that request gets a fill of its own.
 */
#include "daemon/mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/bgwrite.h"
#include "daemon/egress.h"
#include "daemon/fill.h"
#include "daemon/meta.h"
#include "daemon/mjob.h"
#include "daemon/relay.h"
#include "daemon/reqctx.h"
#include "daemon/scope.h"
#include "store/digest.h"
#include "daemon/upstream.h"

struct mirror {
  daemon_t *d;
  pull_env_t env;
  egress_t *egress; /**< the hosts the upstream client contacts (daemon/egress.c) */
  pc_list_t parked; /**< parked_t.link: misses waiting for a 429 breaker to let them go */
  unsigned nparked;
  uv_timer_t rlq_timer; /**< looks at the parked misses while there are some */
  int rlq_timer_init;
};

/* A miss that came while its upstream's 429 breaker was open, waiting (at most
 * MIRROR_RLQ_WAIT_MS past the window) for the window to end. */
typedef struct parked {
  pc_list_t link;
  mirror_t *m;
  srv_req_t *req;
  reqctx_t *ctx;
  daemon_upstream_t *up; /**< a reference */
  int is_blob, by_digest;
  char repo[256];
  char ref[STORE_DIGEST_MAX];
  answer_range_t range;
  uint64_t deadline_ms;
} parked_t;

typedef struct client {
  mirror_t *m;
  srv_req_t *req;
  reqctx_t *ctx;
  fill_sub_t fs;
  mjob_sub_t ms;
  answer_range_t range;  /**< blobs */
  daemon_upstream_t *up; /**< blobs: where this request asked (a reference) */
  char repo[256];
  char digest[STORE_DIGEST_MAX];
  int joined;     /**< joined a job or fill another request started */
  int late;       /**< the content was verified before it came: HIT */
  int streaming;  /**< answered with a body that follows the fill */
  uint64_t start; /**< the first file byte this answer sends */
  uint64_t end;   /**< one past the last file byte this answer sends */
  uint64_t total; /**< the blob's length (live answers) */
} client_t;

/* ---- the upstream seam: http/up ----------------------------------------------------------- */

static int up_start(pull_env_t *env, const up_req_t *r, up_fetch_t **out)
{
  daemon_t *d = env->fetch_ctx;
  return up_fetch_start(d->up, r, out);
}

static void up_cancel(pull_env_t *env, up_fetch_t *f)
{
  (void)env;
  up_fetch_cancel(f);
}

static const char *up_header(pull_env_t *env, up_fetch_t *f, const char *lname)
{
  (void)env;
  return up_fetch_header(f, lname);
}

static void up_timings(pull_env_t *env, up_fetch_t *f, up_timings_t *t)
{
  (void)env;
  up_fetch_timings(f, t);
}

static int up_online(pull_env_t *env)
{
  daemon_t *d = env->fetch_ctx;
  return !d->cfg.offline && d->up != NULL;
}

static void up_resume(pull_env_t *env, up_fetch_t *f)
{
  (void)env;
  up_fetch_resume(f);
}

static const pull_fetch_ops_t up_ops = {up_start,   up_cancel, up_header,
                                        up_timings, up_online, up_resume};

/* ---- clients ------------------------------------------------------------------------------ */

static void client_gone(reqctx_t *ctx, void *arg);

static client_t *client_new(mirror_t *m, srv_req_t *req)
{
  client_t *c = pc_xcalloc(1, sizeof(*c));
  c->m = m;
  c->req = req;
  c->ctx = reqctx_of(req);
  reqctx_park(c->ctx, client_gone, c);
  pc_list_init(&c->fs.link);
  pc_list_init(&c->ms.link);
  return c;
}

/* The client's answer is given (or about to be): let go of the request and free. */
static void client_free(client_t *c)
{
  if (c->fs.fill)
    fill_unsubscribe(&c->fs);
  if (c->ms.job)
    mjob_unsubscribe(&c->ms);
  if (c->ctx && c->ctx->gone_arg == c)
    reqctx_unpark(c->ctx);
  if (c->up)
    daemon_upstream_unref(c->up);
  free(c);
}

/* The request went away: leave the job or fill. */
static void client_gone(reqctx_t *ctx, void *arg)
{
  client_t *c = arg;
  (void)ctx;
  c->ctx = NULL; /* already unparked by reqctx */
  client_free(c);
}

/* Per-phase timings of the fetch on the request's access-log line. */
static void log_timings(srv_req_t *req, const up_timings_t *t)
{
  char v[32];
  if (t->queue_us) {
    snprintf(v, sizeof(v), "%.1f", (double)t->queue_us / 1000.0);
    srv_req_log(req, "up_queue_ms", v);
  }
  snprintf(v, sizeof(v), "%.1f", (double)t->token_us / 1000.0);
  srv_req_log(req, "up_token_ms", v);
  snprintf(v, sizeof(v), "%.1f", (double)t->redirect_us / 1000.0);
  srv_req_log(req, "up_redirect_ms", v);
  snprintf(v, sizeof(v), "%.1f", (double)t->first_byte_us / 1000.0);
  srv_req_log(req, "up_first_byte_ms", v);
  snprintf(v, sizeof(v), "%.1f", (double)t->last_byte_us / 1000.0);
  srv_req_log(req, "up_last_byte_ms", v);
  if (t->url) {
    /* which of the upstream's URLs served (its base: up to the /v2/ of the path) */
    const char *v2 = strstr(t->url, "/v2/");
    char base[256];
    snprintf(base, sizeof(base), "%.*s", v2 ? (int)(v2 - t->url) : (int)strlen(t->url), t->url);
    srv_req_log(req, "up_url", base);
  }
}

void mirror_tags_storing(mirror_t *m, const daemon_upstream_t *up, const char *repo,
                         void (*cb)(void *arg, const char *tag), void *arg)
{
  mjob_each_storing_tag(&m->env, up->conf.name, repo, cb, arg);
}

int mirror_tag_fresh(const store_tag_t *t, int64_t now, int64_t ttl)
{
  return now - t->checked_at < ttl;
}

/* ---- manifests ---------------------------------------------------------------------------- */

/* Answer a manifest request from a job's result. */
static void manifest_answer(mirror_t *m, srv_req_t *req, const mjob_result_t *r, int late,
                            int joined)
{
  int outcome = r->outcome == MJOB_STALE         ? DAEMON_CACHE_STALE
                : r->outcome == MJOB_REVALIDATED ? DAEMON_CACHE_REVALIDATED
                : late                           ? DAEMON_CACHE_HIT
                : joined                         ? DAEMON_CACHE_JOIN
                                                 : DAEMON_CACHE_MISS;
  switch (r->outcome) {
  case MJOB_FETCHED: {
    answer_content_t a = {.kind = ANSWER_MANIFEST,
                          .outcome = outcome,
                          .digest = r->digest,
                          .media_type = r->media_type,
                          .size = r->len,
                          .mem = r->body,
                          .fd = -1};
    answer_content(req, &a, NULL, NULL);
    return;
  }
  case MJOB_REVALIDATED:
  case MJOB_STALE: {
    int rc = answer_store_manifest(req, m->d->store, r->digest, outcome);
    if (rc)
      answer_content_error(req, ANSWER_MANIFEST, outcome,
                           rc == PC_E_NOTFOUND ? PC_E_MANIFEST_UNKNOWN : rc,
                           rc == PC_E_NOTFOUND ? NULL : "stored manifest unreadable", NULL);
    return;
  }
  case MJOB_FAILED:
    answer_content_error(req, ANSWER_MANIFEST, outcome, r->rc, r->detail, r->retry_after);
    return;
  }
}

static void manifest_on_fetched(mjob_sub_t *s, const up_timings_t *t)
{
  client_t *c = container_of(s, client_t, ms);
  log_timings(c->req, t);
}

static void manifest_on_end(mjob_sub_t *s, const mjob_result_t *r)
{
  client_t *c = container_of(s, client_t, ms);
  srv_req_t *req = c->req;
  mirror_t *m = c->m;
  int joined = c->joined;
  client_free(c); /* answering never runs the done callback before it returns (srv) */
  manifest_answer(m, req, r, 0, joined);
}

static const mjob_sub_ops_t manifest_ops = {manifest_on_fetched, manifest_on_end};

static void env_released(pull_env_t *env);

/* ---- misses while a 429 breaker is open: a bounded wait ------------------------------------ */

static void parked_free(parked_t *p)
{
  p->m->nparked--;
  pc_list_remove(&p->link);
  if (p->ctx && p->ctx->gone_arg == p)
    reqctx_unpark(p->ctx);
  daemon_upstream_unref(p->up);
  free(p);
}

static void parked_gone(reqctx_t *ctx, void *arg)
{
  parked_t *p = arg;
  (void)ctx;
  p->ctx = NULL;
  parked_free(p);
}

/* Let a parked miss go: ask again (it may become the breaker's probe, or park again). */
static void parked_replay(parked_t *p, int timed_out)
{
  mirror_t *m = p->m;
  srv_req_t *req = p->req;
  daemon_upstream_t *up = daemon_upstream_ref(p->up);
  int is_blob = p->is_blob, by_digest = p->by_digest;
  char repo[256], ref[STORE_DIGEST_MAX];
  answer_range_t range = p->range;
  pc_strlcpy(repo, sizeof(repo), p->repo);
  pc_strlcpy(ref, sizeof(ref), p->ref);
  parked_free(p);
  if (timed_out) {
    char ra[24];
    daemon_upstream_retry_after(up, ra, sizeof(ra));
    answer_content_error(req, is_blob ? ANSWER_BLOB : ANSWER_MANIFEST, DAEMON_CACHE_MISS,
                         PC_E_TOOMANYREQUESTS, "the upstream is rate-limiting this mirror", ra);
  } else if (is_blob) {
    mirror_blob(m, req, up, repo, ref, &range);
  } else {
    mirror_manifest(m, req, up, repo, ref, by_digest);
  }
  daemon_upstream_unref(up);
}

static void rlq_tick(uv_timer_t *t)
{
  mirror_t *m = container_of(t, mirror_t, rlq_timer);
  uint64_t now = pc_mono_ms();
  /* One pass over the misses parked before this tick (a replay may park again at the end). */
  pc_list_t *last = m->parked.prev;
  pc_list_foreach_safe(l, nx, &m->parked)
  {
    parked_t *p = pc_list_entry(l, parked_t, link);
    int done = l == last;
    if (!p->up->rl.open || (now >= p->up->rl.until_ms && !p->up->rl.probing))
      parked_replay(p, 0); /* closed, or the probe's turn */
    else if (now >= p->deadline_ms)
      parked_replay(p, 1);
    if (done)
      break;
  }
  if (pc_list_empty(&m->parked))
    uv_timer_stop(t);
}

/* Park a miss refused by the breaker: 1 if parked, 0 if the queue is full (answer 429). */
static int rlq_park(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                    const char *ref, int is_blob, int by_digest, const answer_range_t *range)
{
  if (m->nparked >= MIRROR_RLQ_MAX || m->env.closing || !m->rlq_timer_init)
    return 0;
  parked_t *p = pc_xcalloc(1, sizeof(*p));
  p->m = m;
  p->req = req;
  p->ctx = reqctx_of(req);
  p->up = daemon_upstream_ref(up);
  p->is_blob = is_blob;
  p->by_digest = by_digest;
  pc_strlcpy(p->repo, sizeof(p->repo), repo);
  pc_strlcpy(p->ref, sizeof(p->ref), ref);
  if (range)
    p->range = *range;
  uint64_t now = pc_mono_ms();
  p->deadline_ms = (up->rl.until_ms > now ? up->rl.until_ms : now) + MIRROR_RLQ_WAIT_MS;
  pc_list_push_back(&m->parked, &p->link);
  m->nparked++;
  reqctx_park(p->ctx, parked_gone, p);
  srv_req_log(req, "rate_limited", "queued");
  if (!uv_is_active((uv_handle_t *)&m->rlq_timer))
    uv_timer_start(&m->rlq_timer, rlq_tick, MIRROR_RLQ_TICK_MS, MIRROR_RLQ_TICK_MS);
  return 1;
}

static void rlq_closed(uv_handle_t *h)
{
  mirror_t *m = container_of((uv_timer_t *)h, mirror_t, rlq_timer);
  m->env.live--;
  env_released(&m->env);
}

void mirror_manifest(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                     const char *ref, int ref_is_digest)
{
  daemon_t *d = m->d;
  pull_env_t *env = &m->env;
  store_tag_t t;
  int have_tag = 0;
  int online = env->fetch->online(env);

  if (!ref_is_digest) {
    have_tag = store_tag_get(d->store, up->conf.name, repo, ref, &t) == 0;
    if (have_tag && (!online || mirror_tag_fresh(&t, env->now(), up->conf.tag_ttl))) {
      /* A fresh tag: the answer opens its manifest (no stat before it) */
      if (answer_store_manifest(req, d->store, t.digest, DAEMON_CACHE_HIT) == 0)
        return;
      have_tag = 0; /* the tag points at a manifest we no longer have */
    } else if (have_tag) {
      have_tag = store_manifest_stat(d->store, t.digest, NULL) == 0;
    }
  }
  if (env->closing) {
    answer_content_error(req, ANSWER_MANIFEST, DAEMON_CACHE_MISS, PC_E_UPSTREAM_UNAVAILABLE,
                         "the mirror is shutting down", NULL);
    return;
  }
  if (!online) {
    answer_content_error(req, ANSWER_MANIFEST, DAEMON_CACHE_MISS, PC_E_MANIFEST_UNKNOWN,
                         "not cached and the mirror is offline", NULL);
    return;
  }
  if (ref_is_digest && store_digest_parse(ref, strlen(ref)) != STORE_DIGEST_SHA256) {
    answer_content_error(req, ANSWER_MANIFEST, DAEMON_CACHE_MISS, PC_E_MANIFEST_UNKNOWN,
                         "only sha256 content is mirrored", NULL);
    return;
  }
  mjob_t *j = mjob_find(env, up, repo, ref);
  if (!j && ref_is_digest)
    j = mjob_find_answered_digest(env, up, ref);
  if (j && mjob_answered(j)) {
    /* Fetched and verified a moment ago; its store write is still running. */
    manifest_answer(m, req, mjob_answered(j), 1, 0);
    return;
  }
  if (!j && !daemon_upstream_admit(up)) {
    /* The upstream's 429 breaker is open: a known tag is served stale, a miss is a 429. */
    char ra[24];
    daemon_upstream_retry_after(up, ra, sizeof(ra));
    int too_old = up->conf.max_stale > 0 && env->now() - t.checked_at > up->conf.max_stale;
    if (have_tag && !too_old &&
        answer_store_manifest(req, d->store, t.digest, DAEMON_CACHE_STALE) == 0)
      return;
    if (rlq_park(m, req, up, repo, ref, 0, ref_is_digest, NULL))
      return;
    answer_content_error(req, ANSWER_MANIFEST, DAEMON_CACHE_MISS, PC_E_TOOMANYREQUESTS,
                         "the upstream is rate-limiting this mirror", ra);
    return;
  }
  client_t *c = client_new(m, req);
  c->ms.ops = &manifest_ops;
  if (j) {
    c->joined = 1;
    mjob_subscribe(j, &c->ms);
    return;
  }
  mjob_start(env, up, repo, ref, ref_is_digest, have_tag ? &t : NULL, &c->ms);
}

/* ---- blobs -------------------------------------------------------------------------------- */

static int blob_outcome(const client_t *c)
{
  return c->late ? DAEMON_CACHE_HIT : c->joined ? DAEMON_CACHE_JOIN : DAEMON_CACHE_MISS;
}

/* The length is known: answer from the fill's temp file, then follow it. */
static void blob_on_length(fill_sub_t *s, uint64_t total, uint64_t avail)
{
  client_t *c = container_of(s, client_t, fs);
  relay_t *relay = fill_relay(s->fill);
  int fd = fill_open(s->fill);
  if (fd < 0 && !relay) {
    int err = -errno;
    srv_req_t *req = c->req;
    int outcome = blob_outcome(c);
    client_free(c);
    answer_content_error(req, ANSWER_BLOB, outcome, err, "cannot read the blob being filled", NULL);
    return;
  }
  answer_content_t a = {.kind = ANSWER_BLOB,
                        .outcome = blob_outcome(c),
                        .digest = c->digest,
                        .size = total,
                        .range = &c->range,
                        .fd = fd,
                        .avail = avail,
                        .live = 1,
                        .relay = relay};
  c->total = total;
  if (answer_content(c->req, &a, &c->start, &c->end) == ANSWER_STREAMING)
    c->streaming = 1; /* follows the fill until the request or the fill ends */
  else
    client_free(c); /* 304, 416 */
}

/* Until the fill verified (avail < total), the last byte of this answer is held, whatever
 * its range (answer_content); after, everything may go. */
static void blob_on_avail(fill_sub_t *s, uint64_t avail)
{
  client_t *c = container_of(s, client_t, fs);
  uint64_t lim = avail >= c->total ? c->end : avail < c->end - 1 ? avail : c->end - 1;
  srv_file_avail(c->req, lim);
}

/* The fill lost its disk: the rest of this answer's bytes come from the relay. */
static void blob_on_passthrough(fill_sub_t *s, relay_t *relay)
{
  client_t *c = container_of(s, client_t, fs);
  uint64_t from = relay_from(relay);
  if (!c->streaming || c->end <= from)
    return; /* no byte of this answer is missing from the file */
  srv_source_t *src = relay_reader(relay, c->start > from ? c->start : from, c->end);
  if (src)
    srv_file_source(c->req, from, src);
  else
    srv_abort(c->req); /* cannot happen: the relay is new */
}

static void blob_on_fetched(fill_sub_t *s, const up_timings_t *t)
{
  client_t *c = container_of(s, client_t, fs);
  log_timings(c->req, t);
}

static void blob_on_end(fill_sub_t *s, const fill_result_t *r)
{
  client_t *c = container_of(s, client_t, fs);
  mirror_t *m = c->m;
  srv_req_t *req = c->req;
  int outcome = blob_outcome(c);
  /* A failed fill was no hit, even for a request that came after its verification. */
  int failed = c->joined ? DAEMON_CACHE_JOIN : DAEMON_CACHE_MISS;
  /* "Not here" (404, 401, 403) is an answer about one repository of one upstream: a request
   * that joined from another one gets a fill of its own instead of this failure. */
  int repo_refusal = r->rc && (r->status == 404 || r->status == 401 || r->status == 403);
  if (repo_refusal && !c->streaming && (c->up != r->up || strcmp(c->repo, r->repo) != 0)) {
    daemon_upstream_t *up = daemon_upstream_ref(c->up);
    char repo[256];
    answer_range_t range = c->range;
    pc_strlcpy(repo, sizeof(repo), c->repo);
    client_free(c);
    mirror_blob(m, req, up, repo, r->digest, &range);
    daemon_upstream_unref(up);
    return;
  }
  if (c->streaming) {
    uint64_t end = c->end;
    client_free(c);
    if (r->verified)
      srv_file_avail(req, end); /* the bytes are good even if the commit failed */
    else
      srv_abort(req); /* promised the full length; a short body tells the client */
    return;
  }
  answer_range_t range = c->range;
  client_free(c);
  if (r->rc && r->verified && r->fd >= 0) {
    /* Verified, but the commit failed (a full disk): the bytes are in the fill's file. */
    answer_content_t a = {.kind = ANSWER_BLOB,
                          .outcome = failed,
                          .digest = r->digest,
                          .size = r->size,
                          .range = &range,
                          .fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0),
                          .avail = r->size};
    if (a.fd >= 0) {
      answer_content(req, &a, NULL, NULL);
      return;
    }
  }
  if (r->rc == 0) {
    int rc = answer_store_blob(req, m->d->store, r->digest, &range, outcome);
    if (rc)
      answer_content_error(req, ANSWER_BLOB, outcome, rc == PC_E_NOTFOUND ? PC_E_BLOB_UNKNOWN : rc,
                           NULL, NULL);
    return;
  }
  answer_content_error(req, ANSWER_BLOB, failed, r->rc,
                       r->rc == PC_E_UPSTREAM_DIGEST
                           ? "the upstream blob did not match its digest; nothing was cached"
                           : NULL,
                       r->retry_after);
}

static const fill_sub_ops_t blob_ops = {blob_on_length, blob_on_avail, blob_on_passthrough,
                                        blob_on_fetched, blob_on_end};

void mirror_blob(mirror_t *m, srv_req_t *req, daemon_upstream_t *up, const char *repo,
                 const char *digest, const answer_range_t *range)
{
  pull_env_t *env = &m->env;
  if (env->closing) {
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_MISS, PC_E_UPSTREAM_UNAVAILABLE,
                         "the mirror is shutting down", NULL);
    return;
  }
  if (!env->fetch->online(env)) {
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_MISS, PC_E_BLOB_UNKNOWN,
                         "not cached and the mirror is offline", NULL);
    return;
  }
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256) {
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_MISS, PC_E_BLOB_UNKNOWN,
                         "only sha256 content is mirrored", NULL);
    return;
  }
  fill_t *f = fill_find(env, digest);
  if (f && env->join_stall_ms && fill_stalled(f, (uint64_t)*env->join_stall_ms) && fill_restart(f))
    f = fill_find(env, digest); /* restarted on a fresh connection, or ended: look again */
  if (!f && !daemon_upstream_admit(up)) {
    if (rlq_park(m, req, up, repo, digest, 1, 1, range))
      return;
    char ra[24];
    daemon_upstream_retry_after(up, ra, sizeof(ra));
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_MISS, PC_E_TOOMANYREQUESTS,
                         "the upstream is rate-limiting this mirror", ra);
    return;
  }
  client_t *c = client_new(m, req);
  c->fs.ops = &blob_ops;
  if (range)
    c->range = *range;
  c->up = daemon_upstream_ref(up);
  pc_strlcpy(c->repo, sizeof(c->repo), repo);
  pc_strlcpy(c->digest, sizeof(c->digest), digest);
  if (f) {
    /* A fill already verified is content we have (its store write is finishing): a hit. */
    c->late = fill_verified(f);
    c->joined = !c->late;
    env->st.waiters_joined += (uint64_t)c->joined;
    fill_subscribe(f, &c->fs);
    return;
  }
  int rc = fill_start(env, up, repo, digest, &c->fs);
  if (rc) {
    client_free(c);
    answer_content_error(req, ANSWER_BLOB, DAEMON_CACHE_MISS, rc, "cannot start a fill", NULL);
    return;
  }
}

int mirror_fill(mirror_t *m, daemon_upstream_t *up, const char *repo, const char *digest,
                fill_sub_t *s, int *joined)
{
  fill_t *f = fill_find(&m->env, digest);
  *joined = f != NULL;
  if (f) {
    fill_subscribe(f, s);
    return 0;
  }
  return fill_start(&m->env, up, repo, digest, s);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void env_released(pull_env_t *env)
{
  mirror_t *m = container_of(env, mirror_t, env);
  if (env->closing && env->live == 0) {
    bgwrite_free(env->writer); /* every write it ran was a live object's: none is pending */
    free(m);
  }
}

static int64_t now_sec(void)
{
  return pc_now_sec();
}

/* Free bytes on the store's disk (statvfs: metadata, no I/O wait worth a worker). */
static uint64_t disk_free(pull_env_t *env)
{
  struct statvfs sv;
  if (statvfs(store_root(env->store), &sv) != 0)
    return UINT64_MAX;
  return (uint64_t)sv.f_bavail * sv.f_frsize;
}

int mirror_new_with(daemon_t *d, const pull_fetch_ops_t *ops, void *ctx, int64_t (*now)(void),
                    mirror_t **out)
{
  mirror_t *m = pc_xcalloc(1, sizeof(*m));
  m->d = d;
  m->env.loop = d->loop;
  m->env.store = d->store;
  m->env.fetch = ops;
  m->env.fetch_ctx = ctx;
  m->env.max_manifest = &d->cfg.max_manifest;
  m->env.join_stall_ms = &d->cfg.join_stall_ms;
  m->env.now = now ? now : now_sec;
  m->env.released = env_released;
  m->env.disk_free = disk_free;
  m->env.writer = d->loop ? bgwrite_new(d->loop) : NULL; /* NULL: the thread pool */
  if (d->store)
    (void)store_spare_make(d->store); /* the first fill's temp file (fill.c makes the next) */
  pc_list_init(&m->env.fills);
  pc_list_init(&m->env.jobs);
  pc_list_init(&m->env.metas);
  pc_list_init(&m->env.scopes);
  pc_list_init(&m->env.sights);
  pc_list_init(&m->parked);
  if (d->loop && uv_timer_init(d->loop, &m->rlq_timer) == 0) {
    m->rlq_timer_init = 1;
    m->env.live++; /* the timer handle lives in m: released in rlq_closed */
  }
  m->egress = egress_new(d->cfg.store_dir, d->loop);
  if (d->up)
    up_set_egress(d->up, egress_note, m->egress);
  *out = m;
  return 0;
}

int mirror_new(daemon_t *d, mirror_t **out)
{
  return mirror_new_with(d, &up_ops, d, NULL, out);
}

int mirror_manifest_storing(mirror_t *m, const daemon_upstream_t *up, const char *digest)
{
  return mjob_find_answered_digest(&m->env, up, digest) != NULL;
}

int mirror_blob_filling(mirror_t *m, const daemon_upstream_t *up, const char *repo,
                        const char *digest)
{
  fill_t *f = fill_find(&m->env, digest);
  if (!f)
    return 0;
  return up && repo && fill_started_in(f, up->conf.name, repo) ? 2 : 1;
}

egress_t *mirror_egress(mirror_t *m)
{
  return m->egress;
}

pull_env_t *mirror_env(mirror_t *m)
{
  return &m->env;
}

void mirror_get_stats(const mirror_t *m, mirror_stats_t *out)
{
  *out = m->env.st;
  out->fills_in_flight = pc_list_count(&m->env.fills);
  out->jobs_in_flight = pc_list_count(&m->env.jobs);
  out->rl_parked = m->nparked;
  out->fills_stalled =
      m->env.join_stall_ms ? fill_count_stalled(&m->env, (uint64_t)*m->env.join_stall_ms) : 0;
}

void mirror_free(mirror_t *m)
{
  if (!m)
    return;
  /* No new fill or job from here on (a subscriber answered below may ask again: it gets a
   * 503). Fetches are cancelled (no callbacks) and their subscribers answered; work already
   * queued on a worker finishes before the loop ends, and the last object freed frees m. The
   * extra count keeps m alive through the loops. */
  m->env.closing = 1;
  if (m->d->up)
    up_set_egress(m->d->up, NULL, NULL);
  egress_free(m->egress);
  m->egress = NULL;
  m->env.live++;
  while (!pc_list_empty(&m->parked)) {
    parked_t *p = pc_list_entry(pc_list_first(&m->parked), parked_t, link);
    srv_req_t *req = p->req;
    int kind = p->is_blob ? ANSWER_BLOB : ANSWER_MANIFEST;
    parked_free(p);
    answer_content_error(req, kind, DAEMON_CACHE_MISS, PC_E_UPSTREAM_UNAVAILABLE,
                         "the mirror is shutting down", NULL);
  }
  if (m->rlq_timer_init) {
    m->rlq_timer_init = 0;
    uv_close((uv_handle_t *)&m->rlq_timer, rlq_closed);
  }
  mjob_cancel_all(&m->env, PC_E_UPSTREAM_UNAVAILABLE);
  fill_cancel_all(&m->env, PC_E_UPSTREAM_UNAVAILABLE);
  meta_free_all(&m->env, PC_E_UPSTREAM_UNAVAILABLE);
  scope_cancel_all(&m->env, PC_E_UPSTREAM_UNAVAILABLE);
  m->env.live--;
  env_released(&m->env);
}
