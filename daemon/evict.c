/* daemon/evict — background eviction and its figures (see evict.h). */
#include "daemon/evict.h"

#include <inttypes.h>
#include <string.h>
#include <sys/statvfs.h>

#include "core/pc.h"
#include "store/evict.h"

#define TICK_MS 250
#define SURVEY_EVERY_S 300
#define BACKOFF_S 30

typedef enum { EV_IDLE, EV_RUNNING, EV_SURVEYING, EV_CLOSED } evict_state_t;

struct daemon_evict {
  daemon_t *d;
  evict_state_t state;
  int closing; /**< evict_close ran while a run was in flight */
  uv_timer_t timer;
  uv_work_t work;
  /* the job: set on the loop before queueing, the result filled by the worker */
  store_evict_opts_t opts;
  store_evict_report_t rep;
  int rc;
  /* figures (loop thread) */
  uint64_t runs[STORE_EVICT_NREASONS];
  uint64_t blobs[STORE_EVICT_NREASONS];
  uint64_t bytes[STORE_EVICT_NREASONS];
  uint64_t pinned_bytes;
  int64_t oldest;
  int pins_over; /**< the last run or survey found the pins alone over max_size */
  int64_t last_run;
  int last_removed_nothing;
  int64_t last_survey;
  uint64_t last_after;    /**< store bytes at the end of the last run */
  uint64_t seen_max_size; /**< a reload that changes max_size brings the survey forward */
};

uint64_t evict_low_mark(const daemon_config_t *cfg)
{
  if (cfg->store_evict_to)
    return cfg->store_evict_to;
  return cfg->store_max_size / 10 * 9 + cfg->store_max_size % 10 * 9 / 10;
}

static void work_cb(uv_work_t *w)
{
  daemon_evict_t *e = container_of(w, daemon_evict_t, work);
  e->rc = store_evict(e->d->store, &e->opts, &e->rep);
}

static void after_cb(uv_work_t *w, int status)
{
  daemon_evict_t *e = container_of(w, daemon_evict_t, work);
  daemon_t *d = e->d;
  int survey = e->state == EV_SURVEYING;
  (void)status;
  e->state = e->closing ? EV_CLOSED : EV_IDLE;
  if (e->rc) {
    char q[PC_LOG_QUOTE_SIZE(128)];
    pc_log_quote(q, sizeof(q), pc_strerror(e->rc), 128);
    pc_log(PC_LOG_ERR, "evict-failed reason=%s rc=%s err=%s",
           store_evict_reason_name(e->opts.reason), pc_errname(e->rc), q);
    e->last_removed_nothing = 1;
    e->last_run = pc_now_sec();
    return;
  }
  const store_evict_report_t *r = &e->rep;
  e->pinned_bytes = r->pinned_bytes;
  e->oldest = r->oldest;
  int over = d->cfg.store_max_size && r->pinned_bytes > d->cfg.store_max_size;
  if (over && !e->pins_over)
    pc_log(PC_LOG_WARN,
           "store-pins-over-budget pinned_bytes=%" PRIu64 " max_size=%" PRIu64
           " hint=\"pinned content is never evicted; unpin or raise max_size\"",
           r->pinned_bytes, d->cfg.store_max_size);
  else if (!over && e->pins_over)
    pc_log(PC_LOG_NOTICE, "store-pins-within-budget pinned_bytes=%" PRIu64, r->pinned_bytes);
  e->pins_over = over;
  if (survey) {
    e->last_survey = pc_now_sec();
    return;
  }
  int reason = e->opts.reason;
  e->runs[reason]++;
  e->blobs[reason] += r->blobs;
  e->bytes[reason] += r->bytes;
  e->last_run = pc_now_sec();
  e->last_survey = e->last_run; /* a run is a survey too */
  e->last_removed_nothing = r->blobs == 0;
  e->last_after = r->after;
  pc_log(PC_LOG_NOTICE,
         "evicted reason=%s blobs=%" PRIu64 " manifests=%" PRIu64 " tags=%" PRIu64 " bytes=%" PRIu64
         " kept_in_use=%" PRIu64 " store_bytes_before=%" PRIu64 " store_bytes_after=%" PRIu64
         " target=%" PRIu64 " pinned_bytes=%" PRIu64 " plan_ms=%" PRIu64 " ms=%" PRIu64,
         store_evict_reason_name(reason), r->blobs, r->manifests, r->tags, r->bytes, r->skipped,
         r->before, r->after, e->opts.target, r->pinned_bytes, r->plan_ms, r->ms);
}

static void queue(daemon_evict_t *e, evict_state_t st, uint64_t target, int reason, int dry)
{
  memset(&e->opts, 0, sizeof(e->opts));
  memset(&e->rep, 0, sizeof(e->rep));
  e->opts.target = target;
  e->opts.reason = reason;
  e->opts.dry_run = dry;
  e->state = st;
  if (uv_queue_work(e->d->loop, &e->work, work_cb, after_cb) != 0)
    e->state = EV_IDLE;
}

static void on_tick(uv_timer_t *t)
{
  daemon_evict_t *e = t->data;
  daemon_t *d = e->d;
  store_stats_t st;
  struct statvfs sv;
  if (e->state != EV_IDLE || d->stopping || !d->store || store_stats(d->store, &st) != 0)
    return;
  int64_t now = pc_now_sec();
  const daemon_config_t *c = &d->cfg;
  if (c->store_max_size != e->seen_max_size) {
    e->seen_max_size = c->store_max_size;
    e->last_survey = 0;
    e->last_removed_nothing = 0; /* a new budget: no back-off */
  }
  if (e->last_removed_nothing && now - e->last_run < BACKOFF_S && st.blob_bytes <= e->last_after)
    return; /* nothing could go last time, and nothing was added since */
  if (c->store_max_size && st.blob_bytes > c->store_max_size) {
    queue(e, EV_RUNNING, evict_low_mark(c), STORE_EVICT_BUDGET, 0);
    return;
  }
  if (c->store_min_free && statvfs(c->store_dir, &sv) == 0) {
    uint64_t free_b = (uint64_t)sv.f_bavail * sv.f_frsize;
    if (free_b < c->store_min_free) {
      uint64_t need = c->store_min_free - free_b + c->store_min_free / 10;
      queue(e, EV_RUNNING, st.blob_bytes > need ? st.blob_bytes - need : 0, STORE_EVICT_MIN_FREE,
            0);
      return;
    }
  }
  if (e->last_survey == 0 || now - e->last_survey >= SURVEY_EVERY_S)
    queue(e, EV_SURVEYING, UINT64_MAX, STORE_EVICT_BUDGET, 1);
}

void evict_kick(daemon_t *d)
{
  if (d->evict && !d->evict->closing)
    on_tick(&d->evict->timer);
}

int evict_start(daemon_t *d)
{
  daemon_evict_t *e = pc_xcalloc(1, sizeof(*e));
  e->d = d;
  e->state = EV_IDLE;
  int rc = uv_timer_init(d->loop, &e->timer);
  if (rc) {
    free(e);
    return rc;
  }
  e->timer.data = e;
  uv_timer_start(&e->timer, on_tick, TICK_MS, TICK_MS);
  d->evict = e;
  return 0;
}

void evict_close(daemon_t *d)
{
  daemon_evict_t *e = d->evict;
  if (!e || e->closing || e->state == EV_CLOSED)
    return;
  uv_close((uv_handle_t *)&e->timer, NULL);
  if (e->state == EV_IDLE)
    e->state = EV_CLOSED;
  else
    e->closing = 1;
}

void evict_free(daemon_t *d)
{
  free(d->evict);
  d->evict = NULL;
}

void evict_note_manual(daemon_t *d, uint64_t blobs, uint64_t bytes)
{
  daemon_evict_t *e = d->evict;
  if (!e)
    return;
  e->runs[STORE_EVICT_MANUAL]++;
  e->blobs[STORE_EVICT_MANUAL] += blobs;
  e->bytes[STORE_EVICT_MANUAL] += bytes;
  e->last_survey = 0; /* refresh the pinned bytes and the oldest age soon */
}

void evict_get_figures(const daemon_t *d, evict_figures_t *out)
{
  const daemon_evict_t *e = d->evict;
  memset(out, 0, sizeof(*out));
  if (!e)
    return;
  for (int r = 0; r < STORE_EVICT_NREASONS; r++) {
    out->runs += e->runs[r];
    out->blobs += e->blobs[r];
    out->bytes += e->bytes[r];
  }
  out->pinned_bytes = e->pinned_bytes;
  out->pins_over = e->pins_over;
  out->last_run = e->last_run;
}

void evict_render(const daemon_t *d, pc_buf_t *o)
{
  const daemon_evict_t *e = d->evict;
  store_stats_t st;
  memset(&st, 0, sizeof(st));
  if (d->store)
    store_stats(d->store, &st);
  pc_buf_printf(o, "# HELP pullcache_evictions_total Eviction runs, by reason.\n"
                   "# TYPE pullcache_evictions_total counter\n");
  for (int r = 0; r < STORE_EVICT_NREASONS; r++)
    pc_buf_printf(o, "pullcache_evictions_total{reason=\"%s\"} %" PRIu64 "\n",
                  store_evict_reason_name(r), e ? e->runs[r] : 0);
  pc_buf_printf(o, "# HELP pullcache_evicted_blobs_total Blobs (manifests included) evicted, by "
                   "reason.\n# TYPE pullcache_evicted_blobs_total counter\n");
  for (int r = 0; r < STORE_EVICT_NREASONS; r++)
    pc_buf_printf(o, "pullcache_evicted_blobs_total{reason=\"%s\"} %" PRIu64 "\n",
                  store_evict_reason_name(r), e ? e->blobs[r] : 0);
  pc_buf_printf(o, "# HELP pullcache_evicted_bytes_total Bytes evicted, by reason.\n"
                   "# TYPE pullcache_evicted_bytes_total counter\n");
  for (int r = 0; r < STORE_EVICT_NREASONS; r++)
    pc_buf_printf(o, "pullcache_evicted_bytes_total{reason=\"%s\"} %" PRIu64 "\n",
                  store_evict_reason_name(r), e ? e->bytes[r] : 0);
  pc_buf_printf(o,
                "# HELP pullcache_store_pinned_bytes Bytes reachable from pins (never evicted; "
                "as of the last run or survey).\n# TYPE pullcache_store_pinned_bytes gauge\n"
                "pullcache_store_pinned_bytes %" PRIu64 "\n",
                e ? e->pinned_bytes : 0);
  pc_buf_printf(o,
                "# HELP pullcache_store_pins_over_budget 1 when the pinned bytes alone exceed "
                "max_size.\n# TYPE pullcache_store_pins_over_budget gauge\n"
                "pullcache_store_pins_over_budget %d\n",
                e ? e->pins_over : 0);
  pc_buf_printf(o,
                "# HELP pullcache_store_evict_to_bytes The low watermark eviction brings the "
                "store to (0: no budget).\n# TYPE pullcache_store_evict_to_bytes gauge\n"
                "pullcache_store_evict_to_bytes %" PRIu64 "\n",
                d->cfg.store_max_size ? evict_low_mark(&d->cfg) : 0);
  if (d->cfg.store_max_size)
    pc_buf_printf(o,
                  "# HELP pullcache_store_usage_ratio Store bytes over max_size.\n"
                  "# TYPE pullcache_store_usage_ratio gauge\npullcache_store_usage_ratio %.4f\n",
                  (double)st.blob_bytes / (double)d->cfg.store_max_size);
  int64_t age = e && e->oldest ? pc_now_sec() - e->oldest : 0;
  pc_buf_printf(o,
                "# HELP pullcache_store_oldest_entry_age_seconds Age of the last use of the "
                "least recently used blob kept (as of the last run or survey).\n"
                "# TYPE pullcache_store_oldest_entry_age_seconds gauge\n"
                "pullcache_store_oldest_entry_age_seconds %" PRId64 "\n",
                age > 0 ? age : 0);
}
