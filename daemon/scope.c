/* daemon/scope — repository scoping (see scope.h).
 *
 *   scope_confirm: HEAD sent --200--> recorded (worker), subscribers: ok
 *                            --404/401/403--> subscribers: refused
 *                            --other--> subscribers: the error
 */
#include "daemon/scope.h"

#include <string.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/bgwrite.h"
#include "daemon/upstream.h"
#include "store/store.h"

struct scope_job {
  pull_env_t *env;
  char key[1024];
  char up_name[256], repo[256], digest[STORE_DIGEST_MAX];
  daemon_upstream_t *up;
  up_fetch_t *fetch;
  char retry_after[32];
  pc_list_t subs;
  pc_list_t link;
};

typedef struct scope_rec {
  uv_work_t work;
  pc_list_t link; /**< in env->sights until written: they count as seen meanwhile */
  pull_env_t *env;
  store_t *store;
  int64_t now;
  char up_name[256], repo[256], digest[STORE_DIGEST_MAX];
} scope_rec_t;

static int sight_pending(pull_env_t *env, const char *up_name, const char *repo, const char *digest)
{
  pc_list_foreach(l, &env->sights)
  {
    scope_rec_t *r = pc_list_entry(l, scope_rec_t, link);
    if (!strcmp(r->digest, digest) && !strcmp(r->repo, repo) && !strcmp(r->up_name, up_name))
      return 1;
  }
  return 0;
}

int scope_seen(pull_env_t *env, const char *up_name, const char *repo, const char *digest)
{
  if (store_seen_has(env->store, up_name, repo, digest) == 0 ||
      sight_pending(env, up_name, repo, digest))
    return 1;
  return !env->fetch->online(env) && store_seen_legacy(env->store);
}

static void rec_work(uv_work_t *w)
{
  scope_rec_t *r = container_of(w, scope_rec_t, work);
  int rc = store_seen_put(r->store, r->up_name, r->repo, r->digest, r->now);
  if (rc)
    pc_log(PC_LOG_WARN, "store-seen-put-failed upstream=%s repo=%s digest=%s rc=%s", r->up_name,
           r->repo, r->digest, pc_errname(rc));
}

static void rec_after(uv_work_t *w, int status)
{
  scope_rec_t *r = container_of(w, scope_rec_t, work);
  pull_env_t *env = r->env;
  (void)status;
  pc_list_remove(&r->link);
  free(r);
  env->live--; /* the env outlives its writes (pull.h) */
  if (env->released)
    env->released(env);
}

void scope_record(pull_env_t *env, const char *up_name, const char *repo, const char *digest)
{
  if (store_seen_has(env->store, up_name, repo, digest) == 0 ||
      sight_pending(env, up_name, repo, digest))
    return;
  scope_rec_t *r = pc_xcalloc(1, sizeof(*r));
  r->store = env->store;
  r->env = env;
  r->now = env->now();
  pc_strlcpy(r->up_name, sizeof(r->up_name), up_name);
  pc_strlcpy(r->repo, sizeof(r->repo), repo);
  pc_strlcpy(r->digest, sizeof(r->digest), digest);
  if (bgwrite_queue(env->writer, env->loop, &r->work, rec_work, rec_after) != 0) {
    free(r);
    return;
  }
  pc_list_push_back(&env->sights, &r->link);
  env->live++;
}

static void job_end(scope_job_t *j, int ok, int rc)
{
  pc_list_t *l;
  pc_list_remove(&j->link);
  while ((l = pc_list_first(&j->subs))) {
    scope_sub_t *s = pc_list_entry(l, scope_sub_t, link);
    scope_unsubscribe(s);
    s->ops->on_end(s, ok, rc, j->retry_after);
  }
  daemon_upstream_unref(j->up);
  free(j);
}

static int on_headers(up_fetch_t *f, int status, void *arg)
{
  scope_job_t *j = arg;
  (void)status;
  pc_strlcpy(j->retry_after, sizeof(j->retry_after),
             j->env->fetch->header(j->env, f, "retry-after"));
  return 0;
}

static void on_done(up_fetch_t *f, int rc, int status, void *arg)
{
  scope_job_t *j = arg;
  (void)f;
  j->fetch = NULL;
  if (status == 429) /* first: the window the upstream named (seen's default keeps it) */
    daemon_upstream_rate_limited(j->up, j->retry_after);
  daemon_upstream_seen(j->up, rc, status);
  if (rc == 0 && status == 200) {
    j->env->st.scope_confirmed++;
    scope_record(j->env, j->up_name, j->repo, j->digest);
    job_end(j, 1, 0);
  } else if (rc == 0 && (status == 404 || status == 401 || status == 403)) {
    j->env->st.scope_refused++;
    pc_log(PC_LOG_INFO, "scope-refused upstream=%s repo=%s digest=%s status=%d", j->up_name,
           j->repo, j->digest, status);
    job_end(j, 0, 0);
  } else {
    j->env->st.scope_failed++;
    job_end(j, 0, pull_map_upstream(rc, status, PC_E_NOTFOUND));
  }
}

void scope_confirm(pull_env_t *env, daemon_upstream_t *up, const char *repo, const char *digest,
                   int is_manifest, scope_sub_t *s)
{
  char key[1024];
  snprintf(key, sizeof(key), "%s %s %s", up->conf.name, repo, digest);
  pc_list_init(&s->link);
  pc_list_foreach(l, &env->scopes)
  {
    scope_job_t *j = pc_list_entry(l, scope_job_t, link);
    if (strcmp(j->key, key) == 0) {
      s->job = j;
      pc_list_push_back(&j->subs, &s->link);
      return;
    }
  }
  if (!daemon_upstream_admit(up)) {
    char ra[24];
    daemon_upstream_retry_after(up, ra, sizeof(ra));
    s->job = NULL;
    s->ops->on_end(s, 0, PC_E_TOOMANYREQUESTS, ra);
    return;
  }
  scope_job_t *j = pc_xcalloc(1, sizeof(*j));
  j->env = env;
  pc_strlcpy(j->key, sizeof(j->key), key);
  pc_strlcpy(j->up_name, sizeof(j->up_name), up->conf.name);
  pc_strlcpy(j->repo, sizeof(j->repo), repo);
  pc_strlcpy(j->digest, sizeof(j->digest), digest);
  j->up = daemon_upstream_ref(up);
  pc_list_init(&j->subs);
  pc_list_push_back(&env->scopes, &j->link);
  s->job = j;
  pc_list_push_back(&j->subs, &s->link);
  daemon_urls_t urls;
  up_req_t r;
  pull_req_init(&r, up);
  pull_req_urls(&r, up, repo, is_manifest ? "manifests" : "blobs", digest, &urls);
  r.method = "HEAD";
  r.accept = is_manifest ? "application/vnd.oci.image.index.v1+json, "
                           "application/vnd.oci.image.manifest.v1+json, "
                           "application/vnd.docker.distribution.manifest.list.v2+json, "
                           "application/vnd.docker.distribution.manifest.v2+json"
                         : NULL;
  r.on_headers = on_headers;
  r.on_done = on_done;
  r.arg = j;
  int rc = env->fetch->start(env, &r, &j->fetch);
  daemon_urls_free(&urls);
  if (rc) {
    j->fetch = NULL;
    env->st.scope_failed++;
    job_end(j, 0, rc);
  }
}

void scope_unsubscribe(scope_sub_t *s)
{
  if (!s->job)
    return;
  pc_list_remove(&s->link);
  s->job = NULL;
}

void scope_cancel_all(pull_env_t *env, int err)
{
  pc_list_foreach_safe(l, nx, &env->scopes)
  {
    scope_job_t *j = pc_list_entry(l, scope_job_t, link);
    if (j->fetch)
      env->fetch->cancel(env, j->fetch);
    j->fetch = NULL;
    job_end(j, 0, err);
  }
}
