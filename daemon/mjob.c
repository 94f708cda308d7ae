/* daemon/mjob — a manifest job with subscribers (see mjob.h).
 *
 *   known tag, TTL over: HEAD --unchanged digest-----------------------------> STORING
 *                         | changed digest (or none given)                        |
 *                         v                                                       | work:
 *   digest / new tag:    GET --body verified----------------------------------> STORING --> ENDED
 *                         |                                                    (tag, manifest)
 *   HEAD/GET --error--> known tag and the upstream could not answer: STALE --> ENDED
 *                       otherwise: FAILED ------------------------------------> ENDED
 *
 * Every end goes through mjob_answer_all (subscribers get the result, unsubscribed first):
 * from STORING after the outcome is known (the job lives until its store write is done, so
 * late requests are answered from it), or straight to ENDED (mjob_finish) on STALE/FAILED.
 */
#include "daemon/mjob.h"

#include <string.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/mtype.h"
#include "core/num.h"
#include "core/pc.h"
#include "daemon/bgwrite.h"
#include "daemon/upstream.h"
#include "store/digest.h"

#define MJOB_ACCEPT                                                                                \
  "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, "          \
  "application/vnd.docker.distribution.manifest.list.v2+json, "                                    \
  "application/vnd.docker.distribution.manifest.v2+json, "                                         \
  "application/vnd.docker.distribution.manifest.v1+prettyjws, "                                    \
  "application/vnd.docker.distribution.manifest.v1+json"

struct mjob {
  pull_env_t *env;
  mjob_state state;
  char *key;
  int by_digest;
  daemon_upstream_t *up; /**< a reference */
  char up_name[256];     /**< its name now (the store write runs on a worker; a reload may
                              rewrite up->conf meanwhile) */
  char repo[256];
  char ref[STORE_DIGEST_MAX];
  store_tag_t old; /**< the known tag (revalidate: served if the upstream fails) */
  int have_old;
  up_fetch_t *fetch;
  int status; /**< upstream final status */
  char retry_after[32];
  char up_digest[STORE_DIGEST_MAX];
  char media_type[128];
  const char *invalid; /**< what of the upstream's answer failed its check (a static string) */
  pc_buf_t body;       /**< capped at env->max_manifest */
  char digest[STORE_DIGEST_MAX];
  mjob_result_t res; /**< set when answered */
  uv_work_t work;
  pc_list_t subs; /**< mjob_sub_t.link */
  pc_list_t link; /**< in env->jobs */
};

static void mjob_fetch(mjob_t *j);

static char *make_key(const daemon_upstream_t *up, const char *repo, const char *ref)
{
  size_t klen = strlen(up->conf.name) + strlen(repo) + strlen(ref) + 8;
  char *key = pc_xmalloc(klen);
  snprintf(key, klen, "m %s %s %s", up->conf.name, repo, ref);
  return key;
}

mjob_t *mjob_find(pull_env_t *env, const daemon_upstream_t *up, const char *repo, const char *ref)
{
  char *key = make_key(up, repo, ref);
  mjob_t *found = NULL;
  pc_list_foreach(l, &env->jobs)
  {
    mjob_t *j = pc_list_entry(l, mjob_t, link);
    if (j->state != MJOB_ENDED && strcmp(j->key, key) == 0) {
      found = j;
      break;
    }
  }
  free(key);
  return found;
}

mjob_t *mjob_find_answered_digest(pull_env_t *env, const daemon_upstream_t *up, const char *digest)
{
  pc_list_foreach(l, &env->jobs)
  {
    mjob_t *j = pc_list_entry(l, mjob_t, link);
    if (j->state == MJOB_STORING && j->res.outcome == MJOB_FETCHED && j->up == up &&
        strcmp(j->digest, digest) == 0)
      return j;
  }
  return NULL;
}

void mjob_each_storing_tag(pull_env_t *env, const char *up_name, const char *repo,
                           void (*cb)(void *arg, const char *tag), void *arg)
{
  pc_list_foreach(l, &env->jobs)
  {
    mjob_t *j = pc_list_entry(l, mjob_t, link);
    if (j->state == MJOB_STORING && !j->by_digest && strcmp(j->up_name, up_name) == 0 &&
        strcmp(j->repo, repo) == 0)
      cb(arg, j->ref);
  }
}

const mjob_result_t *mjob_answered(const mjob_t *j)
{
  return j->state == MJOB_STORING ? &j->res : NULL;
}

void mjob_subscribe(mjob_t *j, mjob_sub_t *s)
{
  PC_ASSERT(j->state == MJOB_HEAD || j->state == MJOB_GET);
  s->job = j;
  pc_list_push_back(&j->subs, &s->link);
}

void mjob_unsubscribe(mjob_sub_t *s)
{
  pc_list_remove(&s->link);
  s->job = NULL;
}

static void mjob_free(mjob_t *j)
{
  pull_env_t *env = j->env;
  pc_list_remove(&j->link);
  daemon_upstream_unref(j->up);
  free(j->key);
  pc_buf_free(&j->body);
  free(j);
  env->live--;
  if (env->released)
    env->released(env);
}

/* Give every subscriber the result (j->res, filled by the caller). */
static void mjob_answer_all(mjob_t *j)
{
  pc_list_t *l;
  while ((l = pc_list_first(&j->subs))) {
    mjob_sub_t *s = pc_list_entry(l, mjob_sub_t, link);
    mjob_unsubscribe(s);
    s->ops->on_end(s, &j->res);
  }
}

static void mjob_finish(mjob_t *j)
{
  j->state = MJOB_ENDED;
  mjob_answer_all(j);
  mjob_free(j);
}

/* Worker thread: store the verified manifest and the tag. */
static void mjob_work(uv_work_t *work)
{
  mjob_t *j = container_of(work, mjob_t, work);
  store_t *s = j->env->store;
  int64_t now = j->env->now();
  int rc = 0;
  store_tag_t t;
  memset(&t, 0, sizeof(t));
  if (j->res.outcome == MJOB_REVALIDATED) {
    t = j->old; /* unchanged: only the check time moves */
  } else {
    pc_strlcpy(t.digest, sizeof(t.digest), j->digest);
    pc_strlcpy(t.media_type, sizeof(t.media_type), j->media_type);
    t.size = j->body.len;
    t.fetched_at = now;
  }
  t.checked_at = now;
  if (j->res.outcome == MJOB_FETCHED) {
    /* The manifest, where it was seen and its tag: one transaction (one fsync'd commit). */
    store_also_t also = {.upstream = j->up_name,
                         .repo = j->repo,
                         .now = now,
                         .tag = j->by_digest ? NULL : j->ref,
                         .t = &t};
    rc = store_manifest_put_also(s, j->body.p, j->body.len, j->media_type, j->digest, &also, NULL);
    if (rc)
      pc_log(PC_LOG_ERR, "store-manifest-put-failed digest=%s rc=%s", j->digest, pc_errname(rc));
  } else if (!j->by_digest) {
    rc = store_tag_put(s, j->up_name, j->repo, j->ref, &t);
    if (rc)
      pc_log(PC_LOG_ERR, "store-tag-put-failed repo=%s tag=%s rc=%s", j->repo, j->ref,
             pc_errname(rc));
  }
}

static void mjob_after_work(uv_work_t *work, int status)
{
  mjob_t *j = container_of(work, mjob_t, work);
  (void)status;
  j->state = MJOB_ENDED;
  mjob_free(j); /* its subscribers were answered before the store write */
}

/* Outcome known and good: answer now, then store on a worker (the job lives until then). */
static void mjob_answer_then_store(mjob_t *j, mjob_outcome o)
{
  j->res = (mjob_result_t){.outcome = o,
                           .retry_after = j->retry_after,
                           .digest = j->digest,
                           .body = o == MJOB_FETCHED ? j->body.p : NULL,
                           .len = o == MJOB_FETCHED ? j->body.len : 0,
                           .media_type = j->media_type};
  j->state = MJOB_STORING;
  mjob_answer_all(j);
  bgwrite_queue(j->env->writer, j->env->loop, &j->work, mjob_work, mjob_after_work);
}

/* The one fail path. */
static void mjob_fail(mjob_t *j, int err)
{
  /* A tag we knew, and an upstream that could not confirm or deny it: serve it stale. */
  int64_t max_stale = j->up->conf.max_stale;
  int too_old = max_stale > 0 && j->env->now() - j->old.checked_at > max_stale;
  if (j->have_old && too_old)
    pc_log(PC_LOG_WARN, "stale-tag-too-old upstream=%s repo=%s tag=%s max_stale=%lld rc=%s",
           j->up->conf.name, j->repo, j->ref, (long long)max_stale, pc_errname(err));
  if (j->have_old && !too_old && err != PC_E_MANIFEST_UNKNOWN && err != PC_E_UPSTREAM_DIGEST) {
    pc_log(PC_LOG_WARN, "stale-tag-served upstream=%s repo=%s tag=%s digest=%s rc=%s",
           j->up->conf.name, j->repo, j->ref, j->old.digest, pc_errname(err));
    pc_strlcpy(j->digest, sizeof(j->digest), j->old.digest);
    /* Whatever of a new manifest arrived is not the old one: subscribers serve the old
     * digest from the store. */
    j->res = (mjob_result_t){.outcome = MJOB_STALE, .retry_after = "", .digest = j->digest};
    mjob_finish(j);
    return;
  }
  j->res = (mjob_result_t){
      .outcome = MJOB_FAILED,
      .rc = err,
      .retry_after = j->retry_after,
      .detail = err == PC_E_UPSTREAM_DIGEST
                    ? "the upstream manifest did not match its digest; nothing was cached"
                : err == PC_E_UPSTREAM_INVALID
                    ? "the upstream's manifest answer was malformed; nothing was cached"
                    : NULL};
  mjob_finish(j);
}

static int on_headers(up_fetch_t *f, int status, void *arg)
{
  mjob_t *j = arg;
  pull_env_t *env = j->env;
  j->status = status;
  const char *ct = env->fetch->header(env, f, "content-type");
  const char *dg = env->fetch->header(env, f, "docker-content-digest");
  if (status == 200) {
    /* Upstream values are checked before they are used or stored (never copied otherwise). */
    size_t tl = 0;
    if (ct && *ct && (!pc_mtype_header_ok(ct, &tl) || tl >= sizeof(j->media_type))) {
      j->invalid = "content-type";
      return PC_E_UPSTREAM_INVALID;
    }
    if (dg && *dg && store_digest_parse(dg, strlen(dg)) < 0) {
      j->invalid = "docker-content-digest";
      return PC_E_UPSTREAM_INVALID;
    }
    /* "type; params" -> "type" */
    j->media_type[0] = '\0';
    if (ct && *ct) {
      memcpy(j->media_type, ct, tl);
      j->media_type[tl] = '\0';
    }
    pc_strlcpy(j->up_digest, sizeof(j->up_digest), dg);
  }
  pc_strlcpy(j->retry_after, sizeof(j->retry_after), env->fetch->header(env, f, "retry-after"));
  return 0;
}

static int on_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  mjob_t *j = arg;
  (void)f;
  if (j->status != 200)
    return 0;                            /* error bodies are not kept */
  return pc_buf_add(&j->body, buf, len); /* PC_E_TOOBIG past max_manifest */
}

/* The manifest types pullcache knows (the ones it asks for: MJOB_ACCEPT); a manifest without a
 * mediaType field must come as one. */
static int known_manifest_type(const char *t)
{
  static const char accept[] = MJOB_ACCEPT;
  size_t n = strlen(t);
  if (n == 0)
    return 0;
  for (const char *p = accept; (p = strstr(p, t)) != NULL; p += n)
    if ((p == accept || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
      return 1;
  return 0;
}

/* A manifest is checked for what it claims before it is answered or stored: a JSON object with
 * a schemaVersion; its mediaType, when it has one, agrees with the Content-Type (and stands in
 * for a missing one); without one, it is Docker/OCI schema 2 (or a schema 1 manifest sent as
 * such) and the Content-Type is a manifest type or absent. Returns NULL when it holds (and sets
 * j->media_type), else the reason. */
static const char *manifest_check(mjob_t *j)
{
  json_error_t e;
  json_t *m = json_loadb(j->body.p, j->body.len, JSON_REJECT_DUPLICATES, &e);
  const char *why = NULL;
  if (!m || !json_is_object(m)) {
    why = m ? "not-a-json-object" : "not-json";
    goto out;
  }
  json_t *sv = json_object_get(m, "schemaVersion");
  json_t *mt = json_object_get(m, "mediaType");
  if (!json_is_integer(sv)) {
    why = "no-schemaVersion";
    goto out;
  }
  if (mt) {
    const char *v = json_string_value(mt);
    if (!v || !pc_mtype_ok(v, strlen(v)) || strlen(v) >= sizeof(j->media_type)) {
      why = "bad-mediaType";
      goto out;
    }
    if (j->media_type[0] && strcmp(j->media_type, v) != 0) {
      why = "mediaType-contradicts-content-type";
      goto out;
    }
    pc_strlcpy(j->media_type, sizeof(j->media_type), v);
    goto out;
  }
  if (j->media_type[0] && !known_manifest_type(j->media_type)) {
    why = "content-type-not-a-manifest";
    goto out;
  }
  json_int_t ver = json_integer_value(sv);
  if (ver == 1 && strstr(j->media_type, "manifest.v1") == NULL) {
    why = "schema1-without-its-type";
    goto out;
  }
  if (ver != 1 && ver != 2) {
    why = "unknown-schemaVersion";
    goto out;
  }
  if (!j->media_type[0])
    pc_strlcpy(j->media_type, sizeof(j->media_type), "application/vnd.oci.image.manifest.v1+json");
out:
  json_decref(m);
  return why;
}

static void tell_fetched(mjob_t *j, up_fetch_t *f)
{
  up_timings_t t;
  if (pc_list_empty(&j->subs))
    return;
  j->env->fetch->timings(j->env, f, &t);
  pc_list_foreach_safe(l, nx, &j->subs)
  {
    mjob_sub_t *s = pc_list_entry(l, mjob_sub_t, link);
    if (s->ops->on_fetched)
      s->ops->on_fetched(s, &t);
  }
}

static void on_done(up_fetch_t *f, int rc, int status, void *arg)
{
  mjob_t *j = arg;
  pull_env_t *env = j->env;
  j->fetch = NULL;
  if (status == 429) /* first: the window the upstream named (seen's default keeps it) */
    daemon_upstream_rate_limited(j->up, j->retry_after);
  daemon_upstream_seen(j->up, rc, status);
  if (rc == PC_E_TOOBIG || rc == PC_E_UPSTREAM_INVALID) {
    /* The upstream's fault, not the client's: 502 (never the 413 of a request too big). */
    tell_fetched(j, f);
    pc_log(PC_LOG_WARN, "upstream-manifest-invalid upstream=%s repo=%s ref=%s reason=%s",
           j->up->conf.name, j->repo, j->ref,
           rc == PC_E_TOOBIG ? "larger-than-max_manifest_size" : j->invalid);
    mjob_fail(j, PC_E_UPSTREAM_INVALID);
    return;
  }
  if (rc < 0 || status != 200) {
    tell_fetched(j, f);
    pc_log(PC_LOG_WARN, "upstream-manifest-failed upstream=%s repo=%s ref=%s status=%d rc=%s",
           j->up->conf.name, j->repo, j->ref, status, pc_errname(rc));
    mjob_fail(j, pull_map_upstream(rc, status, PC_E_MANIFEST_UNKNOWN));
    return;
  }
  if (j->state == MJOB_HEAD) {
    /* HEAD answered: unchanged -> touch the tag; changed -> fetch the new manifest. */
    if (j->up_digest[0] && strcmp(j->up_digest, j->old.digest) == 0) {
      tell_fetched(j, f);
      pc_strlcpy(j->digest, sizeof(j->digest), j->old.digest);
      pc_strlcpy(j->media_type, sizeof(j->media_type), j->old.media_type);
      mjob_answer_then_store(j, MJOB_REVALIDATED);
      return;
    }
    j->state = MJOB_GET;
    mjob_fetch(j);
    return;
  }
  tell_fetched(j, f);
  if (j->body.len == 0) {
    pc_log(PC_LOG_WARN, "upstream-manifest-empty upstream=%s repo=%s ref=%s", j->up->conf.name,
           j->repo, j->ref);
    mjob_fail(j, PC_E_UPSTREAM);
    return;
  }
  char got[STORE_DIGEST_MAX];
  store_digest_of(j->body.p, j->body.len, got);
  const char *want = j->by_digest ? j->ref : (j->up_digest[0] ? j->up_digest : NULL);
  if (want && strcmp(want, got) != 0) {
    env->st.digest_mismatches++;
    pc_log(PC_LOG_ERR,
           "upstream-manifest-digest-mismatch upstream=%s repo=%s ref=%s want=%s got=%s",
           j->up->conf.name, j->repo, j->ref, want, got);
    mjob_fail(j, PC_E_UPSTREAM_DIGEST);
    return;
  }
  const char *why = manifest_check(j);
  if (why) {
    pc_log(PC_LOG_WARN, "upstream-manifest-invalid upstream=%s repo=%s ref=%s reason=%s",
           j->up->conf.name, j->repo, j->ref, why);
    mjob_fail(j, PC_E_UPSTREAM_INVALID);
    return;
  }
  if (!want)
    pc_log(PC_LOG_NOTICE, "upstream-manifest-unconfirmed upstream=%s repo=%s ref=%s digest=%s",
           j->up->conf.name, j->repo, j->ref, got);
  pc_strlcpy(j->digest, sizeof(j->digest), got);
  env->st.manifests_fetched++;
  mjob_answer_then_store(j, MJOB_FETCHED);
}

static void mjob_fetch(mjob_t *j)
{
  pull_env_t *env = j->env;
  daemon_urls_t urls;
  up_req_t r;
  pull_req_init(&r, j->up);
  pull_req_urls(&r, j->up, j->repo, "manifests", j->ref, &urls);
  r.method = j->state == MJOB_HEAD ? "HEAD" : "GET";
  r.accept = MJOB_ACCEPT;
  r.on_headers = on_headers;
  r.on_data = on_data;
  r.on_done = on_done;
  r.arg = j;
  j->status = 0;
  pc_buf_reset(&j->body);
  int rc = env->fetch->start(env, &r, &j->fetch);
  daemon_urls_free(&urls);
  if (rc) {
    j->fetch = NULL;
    mjob_fail(j, rc);
  }
}

void mjob_start(pull_env_t *env, daemon_upstream_t *up, const char *repo, const char *ref,
                int by_digest, const store_tag_t *old, mjob_sub_t *first)
{
  mjob_t *j = pc_xcalloc(1, sizeof(*j));
  j->env = env;
  j->key = make_key(up, repo, ref);
  j->by_digest = by_digest;
  j->up = daemon_upstream_ref(up);
  pc_strlcpy(j->up_name, sizeof(j->up_name), up->conf.name);
  pc_strlcpy(j->repo, sizeof(j->repo), repo);
  pc_strlcpy(j->ref, sizeof(j->ref), ref);
  pc_buf_init(&j->body, *env->max_manifest);
  pc_list_init(&j->subs);
  if (old && !by_digest) {
    j->old = *old;
    j->have_old = 1;
  }
  j->state = j->have_old ? MJOB_HEAD : MJOB_GET;
  pc_list_push_back(&env->jobs, &j->link);
  env->live++;
  if (first)
    mjob_subscribe(j, first);
  mjob_fetch(j);
}

void mjob_cancel_all(pull_env_t *env, int err)
{
  pc_list_foreach_safe(l, nx, &env->jobs)
  {
    mjob_t *j = pc_list_entry(l, mjob_t, link);
    if (j->fetch) {
      env->fetch->cancel(env, j->fetch);
      j->fetch = NULL;
      j->have_old = 0; /* shutting down: an error, not a stale answer */
      mjob_fail(j, err);
    }
  }
}
