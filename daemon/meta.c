/* daemon/meta — referrers indexes and tag lists passed through from the upstream, cached
 * briefly, single-flight (see meta.h for the states and the rules). */
#include "daemon/meta.h"

#include <jansson.h>
#include <string.h>

#include "core/buf.h"
#include "core/num.h"
#include "core/pc.h"
#include "daemon/upstream.h"

struct meta {
  pull_env_t *env;
  meta_state state;
  char *key;
  daemon_upstream_t *up; /**< a reference while FETCHING */
  up_fetch_t *fetch;
  int status;    /**< of the fetch running */
  pc_buf_t body; /**< of the fetch running (capped) */
  char fetch_ct[128], fetch_filters[256], fetch_link[1024], fetch_retry[32];
  /* the cached answer */
  int have;
  int64_t at;
  int ans_status;
  char *ans_body;
  size_t ans_len;
  char ct[128], filters[256], link[1024];
  int64_t max_stale;
  pc_list_t subs;  /**< meta_sub_t.link */
  pc_list_t link_; /**< in env->metas */
};

static meta_t *meta_find(pull_env_t *env, const char *key)
{
  pc_list_foreach(l, &env->metas)
  {
    meta_t *e = pc_list_entry(l, meta_t, link_);
    if (strcmp(e->key, key) == 0)
      return e;
  }
  return NULL;
}

static void meta_free(meta_t *e)
{
  pc_list_remove(&e->link_);
  if (e->up)
    daemon_upstream_unref(e->up);
  pc_buf_free(&e->body);
  free(e->ans_body);
  free(e->key);
  free(e);
}

/* The cache stays bounded: the oldest idle answers go first (the list is oldest first). */
static void meta_trim(pull_env_t *env)
{
  size_t n = pc_list_count(&env->metas);
  pc_list_foreach_safe(l, nx, &env->metas)
  {
    if (n <= META_MAX_ENTRIES)
      break;
    meta_t *e = pc_list_entry(l, meta_t, link_);
    if (e->state == META_IDLE) {
      meta_free(e);
      n--;
    }
  }
}

static void cached_result(const meta_t *e, int stale, int64_t now, meta_result_t *r)
{
  *r = (meta_result_t){.rc = 0,
                       .status = e->ans_status,
                       .stale = stale,
                       .age = now - e->at,
                       .body = e->ans_body,
                       .len = e->ans_len,
                       .media_type = e->ct,
                       .filters = e->filters,
                       .link = e->link,
                       .retry_after = ""};
}

static void answer_subs(meta_t *e, const meta_result_t *r)
{
  pc_list_t *l;
  while ((l = pc_list_first(&e->subs))) {
    meta_sub_t *s = pc_list_entry(l, meta_sub_t, link);
    meta_unsubscribe(s);
    s->ops->on_end(s, r);
  }
}

/* The fetch ended without an answer to cache: the cached one (stale) or the error. */
static void meta_failed(meta_t *e, int err)
{
  int64_t now = e->env->now();
  meta_result_t r;
  if (e->have && (e->max_stale < 0 || now - e->at <= e->max_stale)) {
    pc_log(PC_LOG_WARN, "stale-meta-served key=\"%s\" age=%lld rc=%s", e->key,
           (long long)(now - e->at), pc_errname(err));
    cached_result(e, 1, now, &r);
  } else {
    r = (meta_result_t){.rc = err, .retry_after = e->fetch_retry};
  }
  answer_subs(e, &r);
}

static int on_headers(up_fetch_t *f, int status, void *arg)
{
  meta_t *e = arg;
  pull_env_t *env = e->env;
  e->status = status;
  pc_strlcpy(e->fetch_ct, sizeof(e->fetch_ct), env->fetch->header(env, f, "content-type"));
  pc_strlcpy(e->fetch_filters, sizeof(e->fetch_filters),
             env->fetch->header(env, f, "oci-filters-applied"));
  pc_strlcpy(e->fetch_link, sizeof(e->fetch_link), env->fetch->header(env, f, "link"));
  pc_strlcpy(e->fetch_retry, sizeof(e->fetch_retry), env->fetch->header(env, f, "retry-after"));
  return 0;
}

static int on_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  meta_t *e = arg;
  (void)f;
  if (e->status != 200)
    return 0;
  return pc_buf_add(&e->body, buf, len);
}

/* A 200 body must be a JSON object (an index, a tag list): anything else is no answer. */
static int body_valid(const char *p, size_t len)
{
  json_error_t jerr;
  json_t *j = json_loadb(p, len, 0, &jerr);
  int ok = j && json_is_object(j);
  json_decref(j);
  return ok;
}

static void on_done(up_fetch_t *f, int rc, int status, void *arg)
{
  meta_t *e = arg;
  (void)f;
  e->fetch = NULL;
  e->state = META_IDLE;
  if (status == 429) /* first: the window the upstream named (seen's default keeps it) */
    daemon_upstream_rate_limited(e->up, e->fetch_retry);
  daemon_upstream_seen(e->up, rc, status);
  daemon_upstream_unref(e->up);
  e->up = NULL;
  if (rc == 0 && status == 200 && !body_valid(e->body.p, e->body.len)) {
    pc_log(PC_LOG_WARN, "upstream-meta-invalid key=\"%s\" len=%zu", e->key, e->body.len);
    rc = PC_E_UPSTREAM;
  }
  if (rc < 0 || (status != 200 && status != 404)) {
    pc_log(PC_LOG_WARN, "upstream-meta-failed key=\"%s\" status=%d rc=%s", e->key, status,
           pc_errname(rc));
    meta_failed(e, pull_map_upstream(rc, status, PC_E_NAME_UNKNOWN));
    return;
  }
  /* An answer: it replaces the cached one. */
  free(e->ans_body);
  e->ans_body = NULL;
  e->ans_len = 0;
  if (status == 200) {
    e->ans_body = pc_xmalloc(e->body.len + 1);
    memcpy(e->ans_body, e->body.p, e->body.len);
    e->ans_body[e->body.len] = '\0';
    e->ans_len = e->body.len;
  }
  pc_buf_reset(&e->body);
  e->have = 1;
  e->at = e->env->now();
  e->ans_status = status;
  memcpy(e->ct, e->fetch_ct, sizeof(e->ct));
  char *semi = strchr(e->ct, ';');
  if (semi)
    *semi = '\0';
  memcpy(e->filters, e->fetch_filters, sizeof(e->filters));
  memcpy(e->link, e->fetch_link, sizeof(e->link));
  meta_result_t r;
  cached_result(e, 0, e->at, &r);
  answer_subs(e, &r);
}

void meta_ask(pull_env_t *env, daemon_upstream_t *up, const char *key, const char *path_query,
              const char *accept, int64_t ttl, int64_t max_stale, meta_sub_t *s)
{
  int64_t now = env->now();
  meta_t *e = meta_find(env, key);
  meta_result_t r;
  pc_list_init(&s->link);
  s->entry = NULL;
  if (e && e->state == META_FETCHING) {
    s->entry = e;
    pc_list_push_back(&e->subs, &s->link);
    return;
  }
  if (e && e->have && now - e->at < ttl) {
    cached_result(e, 0, now, &r);
    s->ops->on_end(s, &r);
    return;
  }
  int offline = !env->fetch->online(env);
  if (offline || !daemon_upstream_admit(up)) {
    /* Offline, or the upstream's 429 breaker is open: nothing is sent. */
    char ra[24] = "";
    if (!offline)
      daemon_upstream_retry_after(up, ra, sizeof(ra));
    if (e && e->have && (offline || e->max_stale < 0 || now - e->at <= e->max_stale))
      cached_result(e, 1, now, &r);
    else
      r = (meta_result_t){.rc = offline ? PC_E_OFFLINE : PC_E_TOOMANYREQUESTS, .retry_after = ra};
    s->ops->on_end(s, &r);
    return;
  }
  if (!e) {
    e = pc_xcalloc(1, sizeof(*e));
    e->env = env;
    e->key = pc_xstrdup(key);
    pc_buf_init(&e->body, META_MAX_BODY);
    pc_list_init(&e->subs);
  } else {
    pc_list_remove(&e->link_); /* to the young end */
  }
  pc_list_push_back(&env->metas, &e->link_);
  e->max_stale = max_stale;
  e->state = META_FETCHING;
  e->up = daemon_upstream_ref(up);
  e->status = 0;
  e->fetch_retry[0] = '\0';
  pc_buf_reset(&e->body);
  s->entry = e;
  pc_list_push_back(&e->subs, &s->link);

  up_req_t q;
  daemon_urls_t urls;
  pull_req_init(&q, up);
  daemon_upstream_urls(up, path_query, &urls);
  daemon_upstream_req_urls(&q, up, &urls);
  q.method = "GET";
  q.accept = accept;
  q.on_headers = on_headers;
  q.on_data = on_data;
  q.on_done = on_done;
  q.arg = e;
  int rc = env->fetch->start(env, &q, &e->fetch);
  daemon_urls_free(&urls);
  if (rc) {
    e->fetch = NULL;
    e->state = META_IDLE;
    daemon_upstream_unref(e->up);
    e->up = NULL;
    meta_failed(e, rc);
  }
  meta_trim(env);
}

void meta_unsubscribe(meta_sub_t *s)
{
  if (!s->entry)
    return;
  pc_list_remove(&s->link);
  s->entry = NULL;
}

void meta_free_all(pull_env_t *env, int err)
{
  pc_list_foreach_safe(l, nx, &env->metas)
  {
    meta_t *e = pc_list_entry(l, meta_t, link_);
    if (e->fetch) {
      env->fetch->cancel(env, e->fetch);
      e->fetch = NULL;
      meta_result_t r = {.rc = err, .retry_after = ""};
      answer_subs(e, &r);
    }
  }
  pc_list_foreach_safe(l, nx, &env->metas) meta_free(pc_list_entry(l, meta_t, link_));
}

size_t meta_count(const pull_env_t *env)
{
  return pc_list_count(&env->metas);
}
