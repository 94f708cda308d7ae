/* http/up_pool — pools of the upstream client: caps, the queue and its dispatch, per-pool
 * stats (see http/up.h for the contract, http/up-int.h for the layout of http/up).
 *
 * A user fetch with a pool takes a slot (max_active) and a rate token (a bucket refilled from
 * uv_hrtime, so the refill is exact whatever the loop's cached time) when it starts
 * (up__pool_admit), or waits in the pool's FIFO queue in state UP__F_QUEUED. The slot is given
 * back when the fetch is released (up__pool_leave). Queues move only from the loop: pool_kick
 * marks the pool and starts the idle handle, whose up__pool_run_kicks calls pool_dispatch,
 * which may start fetches (up__fetch_begin) and so call on_done (a fetch curl refuses); hence
 * never from a caller's stack. A queue that waits for a rate token only notes when it is due
 * (wake_ns); the one pool_timer of up_t is armed for the earliest of those. Every fetch holds
 * a reference on its pool (token fetches too, for the stats; they never queue nor take a
 * slot); a pool is freed when its owner released it and the last reference went, or in
 * teardown.
 */
#include <math.h>
#include <string.h>

#include "core/pc.h"
#include "http/up-int.h"

const double up_hist_bounds_s[UP_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                  0.5,   1,    2.5,   5,    10};
/* The same bounds in microseconds, so that the comparison is exact. */
static const uint64_t hist_bounds_us[UP_HIST_BUCKETS] = {
    5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

static void on_pool_timer(uv_timer_t *t);

void up__pool_first_byte(up_fetch_t *f, uint64_t us)
{
  up_pool_stats_t *st = &f->pool->stats;
  size_t i = 0;
  while (i < UP_HIST_BUCKETS && us > hist_bounds_us[i])
    i++;
  st->first_byte_hist[i]++;
  st->first_byte_sum_us += us;
}

static void queue_push(struct up_pool *p, struct up_fetch *f)
{
  pc_list_push_back(&p->queue, &f->qlink);
  f->state = UP__F_QUEUED;
  p->stats.queued++;
  if (p->u->queue_wait_ms)
    uv_timer_start(&f->timer, up__fetch_timer_cb, p->u->queue_wait_ms, 0);
}

void up__pool_unqueue(up_fetch_t *f)
{
  if (!pc_list_linked(&f->qlink))
    return;
  pc_list_remove(&f->qlink);
  f->pool->stats.queued--;
  uv_timer_stop(&f->timer); /* the queue-wait limit; a hop arms its own */
}

/* Add the rate tokens earned since the last refill (at most burst). */
static void pool_refill(struct up_pool *p, uint64_t now)
{
  if (p->rate > 0 && now > p->refill_ns) {
    p->tokens += (double)(now - p->refill_ns) * 1e-9 * p->rate;
    if (p->tokens > p->burst)
      p->tokens = p->burst;
  }
  p->refill_ns = now;
}

static int pool_has_slot(const struct up_pool *p)
{
  return p->max_active == 0 || p->stats.active < p->max_active;
}

/* The epsilon absorbs the rounding of the refill sums: a token due now counts as there. */
static int pool_has_token(const struct up_pool *p)
{
  return p->rate <= 0 || p->tokens >= 1.0 - 1e-9;
}

/* The fetch takes a slot and a rate token. */
static void pool_take(struct up_pool *p, struct up_fetch *f)
{
  p->stats.active++;
  f->has_slot = 1;
  if (p->rate > 0)
    p->tokens -= 1.0;
}

static void pool_apply_opts(struct up_pool *p, const up_pool_opts_t *o)
{
  uint64_t now = uv_hrtime();
  double rate = o ? o->rate : 0;
  int had_rate = p->rate > 0;

  if (!isfinite(rate) || rate < 0)
    rate = 0;
  pool_refill(p, now); /* what the old rate earned so far */
  p->max_active = o ? o->max_active : 0;
  p->rate = rate;
  p->burst = o && o->burst ? (double)o->burst : fmax(1.0, ceil(rate));
  if (rate > 0 && !had_rate)
    p->tokens = p->burst;
  if (p->tokens > p->burst)
    p->tokens = p->burst;
  p->wake_ns = 0;
}

/* Ask for a dispatch of p's queue from the idle handle (no user callback can run from the
 * caller's stack that way). */
static void pool_kick(struct up_pool *p)
{
  up_t *u = p->u;
  if (u->state != UP__OPEN)
    return;
  p->kick = 1;
  u->kick_pending = 1;
  up__idle_start(u);
}

static void pool_free(struct up_pool *p)
{
  PC_ASSERT(pc_list_empty(&p->queue));
  pc_list_remove(&p->link);
  free(p->name);
  free(p);
}

static void pool_unref(struct up_pool *p)
{
  PC_ASSERT(p->refs > 0);
  p->refs--;
  if (p->refs == 0 && p->released)
    pool_free(p);
}

void up__pool_join(struct up_pool *p, up_fetch_t *f)
{
  f->pool = p;
  p->refs++;
}

int up__pool_admit(up_fetch_t *f)
{
  struct up_pool *p = f->pool;
  pool_refill(p, f->t_created);
  if (!pc_list_empty(&p->queue) || !pool_has_slot(p) || !pool_has_token(p)) {
    /* Behind the others; the dispatch works out when a rate token is due. */
    queue_push(p, f);
    pool_kick(p);
    return 1;
  }
  pool_take(p, f);
  return 0;
}

void up__pool_leave(up_fetch_t *f)
{
  struct up_pool *p = f->pool;
  if (!p)
    return;
  up__pool_unqueue(f);
  f->pool = NULL;
  if (f->has_slot) {
    f->has_slot = 0;
    p->stats.active--;
    pool_kick(p);
  }
  pool_unref(p);
}

/* Start queued fetches while p has a slot and a rate token for them; when only the token is
 * missing, note when it is due (the pool timer is armed by the caller). */
static void pool_dispatch(struct up_pool *p)
{
  up_t *u = p->u;
  uint64_t now = uv_hrtime();
  pc_list_t *l;

  p->refs++; /* a fetch's on_done may release p */
  p->wake_ns = 0;
  pool_refill(p, now);
  while ((l = pc_list_first(&p->queue)) && u->state == UP__OPEN && pool_has_slot(p)) {
    struct up_fetch *f = pc_list_entry(l, struct up_fetch, qlink);
    if (!pool_has_token(p)) {
      double wait = (1.0 - p->tokens) / p->rate * 1e9;
      p->wake_ns = now + (wait < 1e15 ? (uint64_t)wait : (uint64_t)1e15) + 1;
      break;
    }
    up__pool_unqueue(f);
    pool_take(p, f);
    up__fetch_begin(f);
    now = uv_hrtime();
    pool_refill(p, now);
  }
  pool_unref(p);
}

/* Arm the pool timer for the earliest rate token a queue waits for. */
static void pool_timer_arm(up_t *u)
{
  uint64_t next = 0, now, ms;
  pc_list_foreach(it, &u->pools)
  {
    struct up_pool *p = pc_list_entry(it, struct up_pool, link);
    if (!pc_list_empty(&p->queue) && p->wake_ns && (next == 0 || p->wake_ns < next))
      next = p->wake_ns;
  }
  if (next == 0) {
    uv_timer_stop(&u->pool_timer);
    return;
  }
  now = uv_hrtime();
  ms = next > now ? (next - now + 999999) / 1000000 : 0;
  uv_timer_start(&u->pool_timer, on_pool_timer, ms, 0);
}

/* Dispatch every kicked pool. A dispatch runs user callbacks, which may kick, release or free
 * pools: start over from the head after each one. */
void up__pool_run_kicks(up_t *u)
{
again:
  pc_list_foreach(it, &u->pools)
  {
    struct up_pool *p = pc_list_entry(it, struct up_pool, link);
    if (u->state != UP__OPEN)
      break;
    if (!p->kick)
      continue;
    p->kick = 0;
    pool_dispatch(p);
    goto again;
  }
  u->kick_pending = 0;
  if (u->state == UP__OPEN)
    pool_timer_arm(u);
}

static void on_pool_timer(uv_timer_t *t)
{
  up_t *u = container_of(t, up_t, pool_timer);
  if (u->state != UP__OPEN)
    return;
  pc_list_foreach(it, &u->pools)
  {
    struct up_pool *p = pc_list_entry(it, struct up_pool, link);
    if (!pc_list_empty(&p->queue))
      p->kick = 1;
  }
  up__pool_run_kicks(u);
}

void up__pool_free_all(up_t *u)
{
  pc_list_t *l;
  while ((l = pc_list_first(&u->pools)))
    pool_free(pc_list_entry(l, struct up_pool, link));
}

int up_pool_new(up_t *u, const char *name, const up_pool_opts_t *o, up_pool_t **out)
{
  struct up_pool *p;
  *out = NULL;
  if (!u || !name || (o && (!isfinite(o->rate) || o->rate < 0)))
    return UV_EINVAL;
  if (u->state != UP__OPEN)
    return UV_ECANCELED;
  p = pc_xcalloc(1, sizeof(*p));
  p->u = u;
  p->name = pc_xstrdup(name);
  pc_list_init(&p->queue);
  pool_apply_opts(p, o);
  pc_list_push_front(&u->pools, &p->link);
  *out = p;
  return 0;
}

void up_pool_set_opts(up_pool_t *p, const up_pool_opts_t *o)
{
  pool_apply_opts(p, o);
  if (!pc_list_empty(&p->queue))
    pool_kick(p);
}

void up_pool_release(up_pool_t *p)
{
  if (!p)
    return;
  PC_ASSERT(!p->released);
  p->released = 1;
  if (p->refs == 0)
    pool_free(p);
}

void up_pool_get_stats(const up_pool_t *p, up_pool_stats_t *out)
{
  *out = p->stats;
}

const char *up_pool_name(const up_pool_t *p)
{
  return p->name;
}
