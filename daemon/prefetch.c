/* daemon/prefetch — an image list filled inside the daemon (see prefetch.h).
 *
 * A run holds its images; an image holds tasks, each one a subscriber of one machine:
 *
 *   image: PENDING --a job slot--> RUNNING --its last task ended--> DONE (its line emitted)
 *   task:  MANIFEST (mjob, or the store)  -> the manifest's children: MANIFEST or BLOB tasks
 *          BLOB     (present and seen: cached; present, not seen here: SCOPE; else a fill)
 *          SCOPE    (scope_confirm: the upstream confirms the repository has it)
 *          REFS     (the referrers index; its manifests become MANIFEST tasks)
 *          PIN      (store_pin_add on a worker once the image ended well)
 *
 * An image counts its tasks in `pending` (+1 while a manifest is being expanded, so a task
 * that ends inside the call that started it cannot end the image early). Every live task is on
 * the run's list, so prefetch_cancel can unsubscribe each one; a PIN task on a worker cannot
 * be taken back: the run is freed when its after-work callback has run.
 */
#include "daemon/prefetch.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "core/list.h"
#include "core/num.h"
#include "core/pc.h"
#include "daemon/fill.h"
#include "daemon/imgref.h"
#include "daemon/listing.h"
#include "daemon/meta.h"
#include "daemon/mirror.h"
#include "daemon/mjob.h"
#include "daemon/scope.h"
#include "daemon/upstream.h"
#include "store/digest.h"
#include "store/evict.h"

#define PF_MAX_PLATFORMS 16
#define PF_MAX_MANIFEST (16u << 20)
#define PF_PROGRESS_MS 250

typedef enum { IMG_PENDING, IMG_RUNNING, IMG_DONE } img_state;
typedef enum { T_MANIFEST, T_BLOB, T_SCOPE, T_REFS, T_PIN } task_kind;
typedef enum { M_TOP, M_CHILD, M_SIG, M_ARTIFACT } manifest_role;

typedef struct pf_img pf_img_t;

typedef struct pf_task {
  pc_list_t link; /* in the run's tasks */
  pf_img_t *img;
  task_kind kind;
  manifest_role role;
  int by_digest;
  int joined;  /* BLOB: joined a fill that was running */
  int retried; /* BLOB: a fill of another repository refused; ours was started */
  char ref[STORE_DIGEST_MAX];
  uint64_t size, got;
  fill_sub_t fs;
  mjob_sub_t ms;
  scope_sub_t ss;
  meta_sub_t mts;
  uv_work_t work;
  int pin_rc;
  char pin_ref[ROUTE_NAME_MAX + STORE_DIGEST_MAX + 2];
  char pin_up[256];
} pf_task_t;

struct pf_img {
  prefetch_t *p;
  img_state state;
  int line;
  char text[512];
  int parsed; /* ref is valid */
  imgref_t ref;
  daemon_upstream_t *up; /* a reference while RUNNING */
  unsigned pending;
  uint64_t t0_ms, ms;
  uint64_t bytes, fetched_bytes;
  unsigned blobs, fetched, signatures;
  int failed, pinned;
  char up_name[256];
  char error[600];
  char digest[STORE_DIGEST_MAX];
  char platforms[400];
  char (*seen)[STORE_DIGEST_MAX]; /* digests already taken for this image */
  size_t nseen;
};

struct prefetch {
  daemon_t *d;
  pull_env_t *env;
  prefetch_emit_fn emit;
  prefetch_done_fn done;
  void *arg;
  int all_platforms, signatures, pin, jobs;
  char plat[PF_MAX_PLATFORMS][IMGREF_PLATFORM_MAX];
  int nplat;
  pf_img_t *imgs;
  int nimgs, next, running, ended, failed;
  uint64_t bytes_done, bytes_total, last_bytes;
  int last_done;
  pc_list_t tasks;
  unsigned works; /* PIN tasks on a worker */
  uv_timer_t timer;
  int started, cancelled, finished, timer_closed;
  int in_next; /* run_next is running (an image that ends inside it does not recurse) */
};

static void img_task_end(pf_img_t *im);
static void task_free(pf_task_t *t);
static void run_next(prefetch_t *p);
static void manifest_task(pf_img_t *im, const char *ref, int by_digest, manifest_role role);

const char *prefetch_host_platform(void)
{
  static const struct {
    const char *machine, *plat;
  } map[] = {{"x86_64", "linux/amd64"},    {"aarch64", "linux/arm64"},   {"armv7l", "linux/arm/v7"},
             {"armv6l", "linux/arm/v6"},   {"ppc64le", "linux/ppc64le"}, {"s390x", "linux/s390x"},
             {"riscv64", "linux/riscv64"}, {"i686", "linux/386"}};
  struct utsname u;
  if (uname(&u) == 0)
    for (size_t i = 0; i < PC_ARRAY_SIZE(map); i++)
      if (!strcmp(u.machine, map[i].machine))
        return map[i].plat;
  return "linux/amd64";
}

/* ---- output ------------------------------------------------------------------------------ */

static void emit_json(prefetch_t *p, json_t *o)
{
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
  json_decref(o);
  if (!s || p->cancelled) {
    free(s);
    return;
  }
  size_t n = strlen(s);
  char *line = pc_xmalloc(n + 2);
  memcpy(line, s, n);
  line[n] = '\n';
  line[n + 1] = '\0';
  free(s);
  p->emit(p->arg, line, n + 1);
  free(line);
}

static void emit_progress(prefetch_t *p)
{
  if (p->bytes_done == p->last_bytes && p->ended == p->last_done)
    return;
  p->last_bytes = p->bytes_done;
  p->last_done = p->ended;
  emit_json(p, json_pack("{s:s,s:i,s:i,s:I,s:I}", "ev", "progress", "done", p->ended, "images",
                         p->nimgs, "bytes", (json_int_t)p->bytes_done, "bytes_total",
                         (json_int_t)p->bytes_total));
}

static void on_tick(uv_timer_t *t)
{
  prefetch_t *p = t->data;
  if (!p->started) {
    p->started = 1;
    run_next(p);
    return;
  }
  emit_progress(p);
}

static void img_fail(pf_img_t *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void img_fail(pf_img_t *im, const char *fmt, ...)
{
  if (!im->failed) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(im->error, sizeof(im->error), fmt, ap);
    va_end(ap);
  }
  im->failed = 1;
}

/* ---- the run's end -------------------------------------------------------------------------- */

static void run_free_cb(uv_handle_t *h)
{
  prefetch_t *p = h->data;
  p->timer_closed = 1;
  if (p->works)
    return; /* the last PIN after-work frees */
  for (int i = 0; i < p->nimgs; i++) {
    free(p->imgs[i].seen);
    if (p->imgs[i].up)
      daemon_upstream_unref(p->imgs[i].up);
  }
  free(p->imgs);
  free(p);
}

static void run_close(prefetch_t *p)
{
  uv_timer_stop(&p->timer);
  uv_close((uv_handle_t *)&p->timer, run_free_cb);
}

static void run_finish(prefetch_t *p)
{
  if (p->finished)
    return;
  p->finished = 1;
  int code = p->failed ? 1 : 0;
  emit_progress(p);
  emit_json(p, json_pack("{s:s,s:i,s:i,s:i,s:I}", "ev", "end", "code", code, "images", p->nimgs,
                         "failed", p->failed, "bytes", (json_int_t)p->bytes_done));
  if (!p->cancelled)
    p->done(p->arg, code);
  run_close(p);
}

/* ---- images ------------------------------------------------------------------------------- */

static void img_emit(pf_img_t *im)
{
  prefetch_t *p = im->p;
  const char *status = im->failed ? "failed" : im->fetched ? "fetched" : "cached";
  json_t *o = json_pack(
      "{s:s,s:i,s:s,s:s,s:s,s:I,s:I,s:i,s:i,s:i,s:f}", "ev", "image", "line", im->line, "ref",
      im->text, "status", status, "platforms", im->platforms, "bytes", (json_int_t)im->bytes,
      "fetched_bytes", (json_int_t)im->fetched_bytes, "blobs", (int)im->blobs, "fetched",
      (int)im->fetched, "signatures", (int)im->signatures, "seconds", (double)im->ms / 1000.0);
  if (!o)
    return;
  if (im->parsed) {
    char pin[sizeof(((pf_task_t *)0)->pin_ref)];
    json_object_set_new(o, "upstream", json_string(im->up_name));
    json_object_set_new(o, "repository", json_string(im->ref.repo));
    if (im->ref.tag[0])
      json_object_set_new(o, "tag", json_string(im->ref.tag));
    if (imgref_pin_form(&im->ref, pin, sizeof(pin)) == 0)
      json_object_set_new(o, "pin_ref", json_string(pin));
  }
  if (im->digest[0])
    json_object_set_new(o, "digest", json_string(im->digest));
  if (im->failed)
    json_object_set_new(o, "error", json_string(im->error));
  emit_json(p, o);
}

static void img_done(pf_img_t *im)
{
  prefetch_t *p = im->p;
  im->state = IMG_DONE;
  im->ms = pc_mono_ms() - im->t0_ms;
  if (im->failed)
    p->failed++;
  img_emit(im);
  if (im->up) {
    daemon_upstream_unref(im->up);
    im->up = NULL;
  }
  p->ended++;
  p->running--;
  if (p->cancelled)
    return;
  run_next(p);
}

/* A task of im ended (or the expansion guard is let go). */
static void pin_task(pf_img_t *im);

static void img_task_end(pf_img_t *im)
{
  PC_ASSERT(im->pending > 0);
  if (--im->pending != 0 || im->state != IMG_RUNNING)
    return;
  if (im->p->pin && !im->failed && im->parsed && !im->pinned && !im->p->cancelled) {
    im->pinned = 1; /* everything it names is here: pin it */
    pin_task(im);
    return;
  }
  img_done(im);
}

static pf_task_t *task_new(pf_img_t *im, task_kind kind)
{
  pf_task_t *t = pc_xcalloc(1, sizeof(*t));
  t->img = im;
  t->kind = kind;
  pc_list_init(&t->fs.link);
  pc_list_init(&t->ms.link);
  pc_list_init(&t->ss.link);
  pc_list_init(&t->mts.link);
  pc_list_push_back(&im->p->tasks, &t->link);
  im->pending++;
  return t;
}

static void task_free(pf_task_t *t)
{
  pc_list_remove(&t->link);
  free(t);
}

/* A task ended: free it, then tell its image. */
static void task_end(pf_task_t *t)
{
  pf_img_t *im = t->img;
  task_free(t);
  img_task_end(im);
}

static int img_seen(pf_img_t *im, const char *digest)
{
  for (size_t i = 0; i < im->nseen; i++)
    if (!strcmp(im->seen[i], digest))
      return 1;
  im->seen = pc_xrealloc(im->seen, (im->nseen + 1) * sizeof(*im->seen));
  pc_strlcpy(im->seen[im->nseen++], STORE_DIGEST_MAX, digest);
  return 0;
}

static int online(prefetch_t *p)
{
  return p->env->fetch->online(p->env) && !p->env->closing && !p->d->stopping;
}

/* ---- blobs -------------------------------------------------------------------------------- */

static void blob_fill(pf_task_t *t);

static void blob_on_length(fill_sub_t *s, uint64_t total, uint64_t avail)
{
  pf_task_t *t = container_of(s, pf_task_t, fs);
  (void)total;
  if (avail > t->got) {
    t->img->p->bytes_done += avail - t->got;
    t->got = avail;
  }
}

static void blob_on_avail(fill_sub_t *s, uint64_t avail)
{
  blob_on_length(s, 0, avail);
}

static void blob_on_end(fill_sub_t *s, const fill_result_t *r)
{
  pf_task_t *t = container_of(s, pf_task_t, fs);
  pf_img_t *im = t->img;
  prefetch_t *p = im->p;
  int refusal = r->rc && (r->status == 404 || r->status == 401 || r->status == 403);
  if (refusal && t->joined && !t->retried &&
      (r->up != im->up || strcmp(r->repo, im->ref.repo) != 0) && online(p)) {
    /* "not here" about another repository: ask under ours */
    t->retried = 1;
    p->bytes_done -= t->got < p->bytes_done ? t->got : p->bytes_done;
    t->got = 0;
    blob_fill(t);
    return;
  }
  if (r->rc == 0) {
    if (t->size > t->got)
      p->bytes_done += t->size - t->got;
    im->fetched++;
    im->fetched_bytes += t->size;
    scope_record(p->env, im->up->conf.name, im->ref.repo, t->ref);
  } else {
    p->bytes_done -= t->got < p->bytes_done ? t->got : p->bytes_done;
    img_fail(im, "blob %s: %s%s", t->ref, pc_strerror(r->rc),
             r->passthrough ? " (the store is full: nothing was stored)" : "");
  }
  task_end(t);
}

static const fill_sub_ops_t blob_ops = {blob_on_length, blob_on_avail, NULL, NULL, blob_on_end};

static void blob_fill(pf_task_t *t)
{
  pf_img_t *im = t->img;
  prefetch_t *p = im->p;
  if (!online(p)) {
    img_fail(im, "blob %s: not cached and the mirror is %s", t->ref,
             p->env->closing || p->d->stopping ? "shutting down" : "offline");
    task_end(t);
    return;
  }
  if (!fill_find(p->env, t->ref) && !daemon_upstream_admit(im->up)) {
    img_fail(im, "blob %s: the upstream is rate-limiting this mirror", t->ref);
    task_end(t);
    return;
  }
  t->fs.ops = &blob_ops;
  int rc = mirror_fill(p->d->mirror, im->up, im->ref.repo, t->ref, &t->fs, &t->joined);
  if (rc) {
    img_fail(im, "blob %s: cannot start a fill: %s", t->ref, pc_strerror(rc));
    task_end(t);
  }
}

static void scope_on_end(scope_sub_t *s, int ok, int rc, const char *retry_after)
{
  pf_task_t *t = container_of(s, pf_task_t, ss);
  pf_img_t *im = t->img;
  (void)retry_after;
  if (ok) {
    im->p->bytes_done += t->size; /* cached, and now known to belong here */
    task_end(t);
    return;
  }
  if (rc == 0)
    img_fail(im, "blob %s: the upstream does not have it in %s", t->ref, im->ref.repo);
  else
    img_fail(im, "blob %s: cannot confirm the repository has it: %s", t->ref, pc_strerror(rc));
  task_end(t);
}

static const scope_sub_ops_t scope_ops = {scope_on_end};

static void blob_task(pf_img_t *im, const char *digest, uint64_t size)
{
  prefetch_t *p = im->p;
  if (store_digest_parse(digest, strlen(digest)) != STORE_DIGEST_SHA256) {
    img_fail(im, "blob \"%.80s\": not a sha256 digest (only sha256 content is mirrored)", digest);
    return;
  }
  if (img_seen(im, digest))
    return;
  im->blobs++;
  im->bytes += size;
  p->bytes_total += size;
  pf_task_t *t = task_new(im, T_BLOB);
  pc_strlcpy(t->ref, sizeof(t->ref), digest);
  t->size = size;
  if (store_blob_stat(p->d->store, digest, NULL) == 0) {
    if (scope_seen(p->env, im->up->conf.name, im->ref.repo, digest) || !online(p)) {
      p->bytes_done += size; /* cached: checked, not fetched */
      task_end(t);
      return;
    }
    t->kind = T_SCOPE;
    t->ss.ops = &scope_ops;
    scope_confirm(p->env, im->up, im->ref.repo, digest, 0, &t->ss);
    return;
  }
  blob_fill(t);
}

/* ---- manifests ---------------------------------------------------------------------------- */

static void add_platform(pf_img_t *im, const char *plat)
{
  size_t n = strlen(im->platforms);
  if (strstr(im->platforms, plat))
    return;
  snprintf(im->platforms + n, sizeof(im->platforms) - n, "%s%s", n ? "," : "", plat);
}

static const char *jstr(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  return json_is_string(v) ? json_string_value(v) : "";
}

static void expand_index(pf_task_t *t, json_t *doc)
{
  pf_img_t *im = t->img;
  prefetch_t *p = im->p;
  json_t *arr = json_object_get(doc, "manifests"), *c;
  size_t i;
  int taken = 0;
  char have[300] = "";
  json_array_foreach(arr, i, c)
  {
    json_t *pl = json_object_get(c, "platform");
    const char *os = jstr(pl, "os"), *arch = jstr(pl, "architecture"), *var = jstr(pl, "variant");
    const char *dg = jstr(c, "digest");
    char plat[200];
    snprintf(plat, sizeof(plat), "%s/%s%s%s", *os ? os : "unknown", *arch ? arch : "unknown",
             *var ? "/" : "", var);
    size_t hl = strlen(have);
    if (hl + strlen(plat) + 2 < sizeof(have))
      snprintf(have + hl, sizeof(have) - hl, "%s%s", hl ? "," : "", plat);
    int want = p->all_platforms || t->role != M_TOP;
    for (int k = 0; !want && k < p->nplat; k++)
      want = imgref_platform_match(p->plat[k], os, arch, var);
    if (!want)
      continue;
    if (store_digest_parse(dg, strlen(dg)) != STORE_DIGEST_SHA256) {
      img_fail(im, "index entry %s: not a sha256 digest", plat);
      continue;
    }
    taken++;
    if (t->role == M_TOP)
      add_platform(im, plat);
    json_t *sz = json_object_get(c, "size");
    im->bytes += json_is_integer(sz) ? (uint64_t)json_integer_value(sz) : 0;
    manifest_task(im, dg, 1, t->role == M_TOP ? M_CHILD : t->role);
  }
  if (!taken && t->role == M_TOP)
    img_fail(im, "no manifest for platform %s (the index has %s)", p->nplat ? p->plat[0] : "?",
             have[0] ? have : "none");
}

static void expand_image(pf_task_t *t, json_t *doc)
{
  pf_img_t *im = t->img;
  json_t *cfg = json_object_get(doc, "config"), *layers = json_object_get(doc, "layers"), *l;
  size_t i;
  if (json_is_object(cfg)) {
    json_t *sz = json_object_get(cfg, "size");
    blob_task(im, jstr(cfg, "digest"), json_is_integer(sz) ? (uint64_t)json_integer_value(sz) : 0);
  }
  json_array_foreach(layers, i, l)
  {
    json_t *sz = json_object_get(l, "size");
    blob_task(im, jstr(l, "digest"), json_is_integer(sz) ? (uint64_t)json_integer_value(sz) : 0);
  }
  if (t->role == M_TOP && !im->platforms[0])
    add_platform(im, "single");
}

static void refs_on_end(meta_sub_t *s, const meta_result_t *r);
static const meta_sub_ops_t refs_ops = {refs_on_end};

/* The manifest bytes of t are known (verified): take what it names. */
static void manifest_got(pf_task_t *t, const char *body, size_t len, const char *digest)
{
  pf_img_t *im = t->img;
  prefetch_t *p = im->p;
  im->pending++; /* the guard: tasks started below may end at once */
  im->bytes += t->role == M_TOP ? len : 0;
  if (t->role == M_TOP)
    pc_strlcpy(im->digest, sizeof(im->digest), digest);
  if (t->role == M_SIG || t->role == M_ARTIFACT)
    im->signatures++;
  json_t *doc = json_loadb(body, len, 0, NULL);
  if (!json_is_object(doc))
    img_fail(im, "manifest %s is not a JSON object", digest);
  else if (json_is_array(json_object_get(doc, "manifests")))
    expand_index(t, doc);
  else
    expand_image(t, doc);
  json_decref(doc);
  if (t->role == M_TOP && p->signatures && !im->failed) {
    char tag[ROUTE_TAG_MAX + 1];
    snprintf(tag, sizeof(tag), "sha256-%s.sig", digest + 7);
    manifest_task(im, tag, 0, M_SIG);
    snprintf(tag, sizeof(tag), "sha256-%s.att", digest + 7);
    manifest_task(im, tag, 0, M_SIG);
    pf_task_t *rt = task_new(im, T_REFS);
    pc_strlcpy(rt->ref, sizeof(rt->ref), digest);
    rt->mts.ops = &refs_ops;
    listing_referrers_ask(p->d, im->up, im->ref.repo, digest, &rt->mts);
  }
  task_end(t);
  img_task_end(im);
}

static void manifest_from_store(pf_task_t *t, const char *digest)
{
  char *body;
  size_t len;
  char dg[STORE_DIGEST_MAX];
  pc_strlcpy(dg, sizeof(dg), digest);
  int rc = store_manifest_read(t->img->p->d->store, dg, PF_MAX_MANIFEST, &body, &len, NULL);
  if (rc) {
    img_fail(t->img, "manifest %s: stored copy unreadable: %s", dg, pc_strerror(rc));
    task_end(t);
    return;
  }
  manifest_got(t, body, len, dg); /* small: read on the loop */
  free(body);
}

static int not_there(int rc)
{
  return rc == PC_E_MANIFEST_UNKNOWN || rc == PC_E_NAME_UNKNOWN || rc == PC_E_NOTFOUND ||
         rc == PC_E_OFFLINE;
}

static void manifest_result(pf_task_t *t, const mjob_result_t *r)
{
  pf_img_t *im = t->img;
  switch (r->outcome) {
  case MJOB_FETCHED:
    im->fetched++;
    im->fetched_bytes += r->len;
    manifest_got(t, r->body, r->len, r->digest);
    return;
  case MJOB_REVALIDATED:
  case MJOB_STALE:
    manifest_from_store(t, r->digest);
    return;
  case MJOB_FAILED:
    if (t->role == M_SIG && not_there(r->rc)) {
      task_end(t); /* no such signature: nothing to take */
      return;
    }
    img_fail(im, "%s %s: %s%s%s", t->by_digest ? "manifest" : "tag", t->ref, pc_strerror(r->rc),
             r->detail ? ": " : "", r->detail ? r->detail : "");
    task_end(t);
    return;
  }
}

static void manifest_on_end(mjob_sub_t *s, const mjob_result_t *r)
{
  manifest_result(container_of(s, pf_task_t, ms), r);
}

static const mjob_sub_ops_t manifest_ops = {NULL, manifest_on_end};

static void manifest_task(pf_img_t *im, const char *ref, int by_digest, manifest_role role)
{
  prefetch_t *p = im->p;
  store_t *st = p->d->store;
  if (by_digest && img_seen(im, ref))
    return;
  pf_task_t *t = task_new(im, T_MANIFEST);
  t->role = role;
  t->by_digest = by_digest;
  pc_strlcpy(t->ref, sizeof(t->ref), ref);
  store_tag_t tag;
  int have_tag = 0;
  if (by_digest) {
    if (store_manifest_stat(st, ref, NULL) == 0) {
      manifest_from_store(t, ref);
      return;
    }
  } else {
    have_tag = store_tag_get(st, im->up->conf.name, im->ref.repo, ref, &tag) == 0 &&
               store_manifest_stat(st, tag.digest, NULL) == 0;
    if (have_tag && (!online(p) || mirror_tag_fresh(&tag, p->env->now(), im->up->conf.tag_ttl))) {
      manifest_from_store(t, tag.digest);
      return;
    }
  }
  if (!online(p)) {
    if (role == M_SIG) {
      task_end(t);
      return;
    }
    img_fail(im, "%s %s: not cached and the mirror is %s", by_digest ? "manifest" : "tag", ref,
             p->env->closing || p->d->stopping ? "shutting down" : "offline");
    task_end(t);
    return;
  }
  mjob_t *j = mjob_find(p->env, im->up, im->ref.repo, ref);
  if (!j && by_digest)
    j = mjob_find_answered_digest(p->env, im->up, ref);
  if (j && mjob_answered(j)) {
    manifest_result(t, mjob_answered(j));
    return;
  }
  t->ms.ops = &manifest_ops;
  if (j) {
    mjob_subscribe(j, &t->ms);
    return;
  }
  if (!daemon_upstream_admit(im->up)) {
    if (have_tag) {
      manifest_from_store(t, tag.digest); /* served stale, as a request would be */
      return;
    }
    img_fail(im, "%s %s: the upstream is rate-limiting this mirror", by_digest ? "manifest" : "tag",
             ref);
    task_end(t);
    return;
  }
  mjob_start(p->env, im->up, im->ref.repo, ref, by_digest, have_tag ? &tag : NULL, &t->ms);
}

static void refs_on_end(meta_sub_t *s, const meta_result_t *r)
{
  pf_task_t *t = container_of(s, pf_task_t, mts);
  pf_img_t *im = t->img;
  im->pending++;
  if (r->rc == 0 && r->status == 200) {
    json_t *doc = json_loadb(r->body, r->len, 0, NULL), *c;
    size_t i;
    json_array_foreach(json_object_get(doc, "manifests"), i, c)
    {
      const char *dg = jstr(c, "digest");
      if (store_digest_parse(dg, strlen(dg)) == STORE_DIGEST_SHA256)
        manifest_task(im, dg, 1, M_ARTIFACT);
    }
    json_decref(doc);
  }
  task_end(t); /* no referrers (404, an error): nothing to take */
  img_task_end(im);
}

/* ---- pins --------------------------------------------------------------------------------- */

static void pin_work(uv_work_t *w)
{
  pf_task_t *t = container_of(w, pf_task_t, work);
  t->pin_rc = store_pin_add(t->img->p->d->store, t->pin_up, t->pin_ref);
}

static void pin_after(uv_work_t *w, int status)
{
  pf_task_t *t = container_of(w, pf_task_t, work);
  pf_img_t *im = t->img;
  prefetch_t *p = im->p;
  (void)status;
  p->works--;
  if (p->cancelled) {
    task_free(t);
    if (p->works == 0 && p->timer_closed)
      run_free_cb((uv_handle_t *)&p->timer);
    return;
  }
  if (t->pin_rc)
    img_fail(im, "pin %s: %s", t->pin_ref, pc_strerror(t->pin_rc));
  task_end(t);
}

static void pin_task(pf_img_t *im)
{
  prefetch_t *p = im->p;
  pf_task_t *t = task_new(im, T_PIN);
  pc_strlcpy(t->pin_up, sizeof(t->pin_up), im->up->conf.name);
  imgref_pin_form(&im->ref, t->pin_ref, sizeof(t->pin_ref));
  if (uv_queue_work(p->d->loop, &t->work, pin_work, pin_after) != 0) {
    img_fail(im, "pin %s: cannot queue the store write", t->pin_ref);
    task_end(t);
    return;
  }
  p->works++;
}

/* ---- the run ------------------------------------------------------------------------------ */

static void img_start(pf_img_t *im)
{
  prefetch_t *p = im->p;
  im->state = IMG_RUNNING;
  im->t0_ms = pc_mono_ms();
  p->running++;
  im->pending++; /* the guard */
  if (im->parsed && (im->ref.upstream >= p->d->nups))
    img_fail(im, "the upstream of this line is no longer configured");
  else if (im->parsed) {
    im->up = daemon_upstream_ref(p->d->ups[im->ref.upstream]);
    if (im->ref.digest[0])
      manifest_task(im, im->ref.digest, 1, M_TOP);
    else
      manifest_task(im, im->ref.tag, 0, M_TOP);
  }
  img_task_end(im);
}

/* Start images while there are job slots. An image may end inside img_start (a bad line, a
 * cached image): that call comes back here, and only notes it (no recursion per image). */
static void run_next(prefetch_t *p)
{
  if (p->in_next)
    return;
  p->in_next = 1;
  while (!p->cancelled && p->next < p->nimgs && p->running < p->jobs)
    img_start(&p->imgs[p->next++]);
  p->in_next = 0;
  if (!p->cancelled && p->ended == p->nimgs)
    run_finish(p);
}

static int usage_end(prefetch_emit_fn emit, void *arg, const char *why)
{
  json_t *o = json_pack("{s:s,s:i,s:s}", "ev", "end", "code", 2, "error", why);
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6));
  json_decref(o);
  if (s) {
    size_t n = strlen(s);
    char *line = pc_xmalloc(n + 1);
    memcpy(line, s, n);
    line[n] = '\n';
    emit(arg, line, n + 1);
    free(line);
    free(s);
  }
  return 2;
}

prefetch_t *prefetch_start(daemon_t *d, int argc, char **argv, prefetch_emit_fn emit,
                           prefetch_done_fn done, void *arg)
{
  prefetch_t *p = pc_xcalloc(1, sizeof(*p));
  char why[400];
  int a = 1;
  p->d = d;
  p->emit = emit;
  p->done = done;
  p->arg = arg;
  p->jobs = PREFETCH_JOBS_DEFAULT;
  pc_list_init(&p->tasks);
  for (; a < argc && strcmp(argv[a], "--") != 0; a++) {
    const char *x = argv[a];
    if (!strcmp(x, "--all-platforms")) {
      p->all_platforms = 1;
    } else if (!strcmp(x, "--signatures")) {
      p->signatures = 1;
    } else if (!strcmp(x, "--pin")) {
      p->pin = 1;
    } else if (!strcmp(x, "--jobs") && a + 1 < argc) {
      uint64_t n;
      if (pc_parse_u64(argv[++a], PREFETCH_JOBS_MAX, &n) != 0 || n == 0) {
        snprintf(why, sizeof(why), "--jobs: \"%.40s\" is not a number from 1 to %d", argv[a],
                 PREFETCH_JOBS_MAX);
        goto bad;
      }
      p->jobs = (int)n;
    } else if (!strcmp(x, "--platform") && a + 1 < argc) {
      char err[200];
      int n = imgref_platforms_parse(argv[++a], p->plat, PF_MAX_PLATFORMS, err, sizeof(err));
      if (n < 0) {
        snprintf(why, sizeof(why), "--platform: %s", err);
        goto bad;
      }
      p->nplat = n;
    } else {
      snprintf(why, sizeof(why), "unexpected argument \"%.100s\"", x);
      goto bad;
    }
  }
  if (p->all_platforms && p->nplat) {
    snprintf(why, sizeof(why), "--platform and --all-platforms exclude each other");
    goto bad;
  }
  if (!p->nplat)
    pc_strlcpy(p->plat[p->nplat++], sizeof(p->plat[0]), prefetch_host_platform());
  if (!d->mirror || d->nups == 0) {
    snprintf(why, sizeof(why), "the daemon has no mirror running");
    goto bad;
  }
  p->env = mirror_env(d->mirror);
  const char *names[DAEMON_MAX_UPSTREAMS];
  for (int i = 0; i < d->nups; i++)
    names[i] = d->ups[i]->conf.name;
  p->imgs = pc_xcalloc((size_t)(argc > a ? argc - a : 1), sizeof(*p->imgs));
  for (a++; a < argc; a++) {
    const char *tab = strchr(argv[a], '\t');
    uint64_t line = 0;
    if (!tab || pc_parse_u64_n(argv[a], (size_t)(tab - argv[a]), 1u << 30, &line) != 0) {
      snprintf(why, sizeof(why), "a list line without its number");
      goto bad;
    }
    const char *text = tab + 1;
    imgref_t r;
    char err[300];
    int rc = imgref_parse(text, strlen(text), names, d->nups, &r, err, sizeof(err));
    if (rc == IMGREF_SKIP)
      continue;
    pf_img_t *im = &p->imgs[p->nimgs++];
    im->p = p;
    im->line = (int)line;
    text += strspn(text, " \t");
    size_t tl = strcspn(text, "#"); /* the line without its comment */
    while (tl && (text[tl - 1] == ' ' || text[tl - 1] == '\t' || text[tl - 1] == '\r'))
      tl--;
    snprintf(im->text, sizeof(im->text), "%.*s", (int)(tl > 500 ? 500 : tl), text);
    if (rc == IMGREF_OK) {
      im->ref = r;
      im->parsed = 1;
      pc_strlcpy(im->up_name, sizeof(im->up_name), names[r.upstream]);
    } else {
      img_fail(im, "line %d: %s", im->line, err);
    }
  }
  uv_timer_init(d->loop, &p->timer);
  p->timer.data = p;
  emit_json(p, json_pack("{s:s,s:i,s:s,s:i}", "ev", "start", "images", p->nimgs, "platforms",
                         p->all_platforms ? "all" : p->plat[0], "jobs", p->jobs));
  /* The first tick starts the images (done is never called inside prefetch_start). */
  uv_timer_start(&p->timer, on_tick, 0, PF_PROGRESS_MS);
  return p;
bad:
  usage_end(emit, arg, why);
  free(p->imgs);
  free(p);
  return NULL;
}

void prefetch_cancel(prefetch_t *p)
{
  if (p->cancelled)
    return;
  p->cancelled = 1;
  pc_list_foreach_safe(l, nx, &p->tasks)
  {
    pf_task_t *t = pc_list_entry(l, pf_task_t, link);
    switch (t->kind) {
    case T_BLOB:
      if (t->fs.fill)
        fill_unsubscribe(&t->fs);
      break;
    case T_MANIFEST:
      if (t->ms.job)
        mjob_unsubscribe(&t->ms);
      break;
    case T_SCOPE:
      scope_unsubscribe(&t->ss);
      break;
    case T_REFS:
      meta_unsubscribe(&t->mts);
      break;
    case T_PIN:
      continue; /* on a worker: freed by its after-work callback */
    }
    task_free(t);
  }
  if (!p->finished) {
    p->finished = 1;
    run_close(p);
  }
}
