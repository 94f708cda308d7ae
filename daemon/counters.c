/* daemon/counters — request counting (see counters.h). */
#include "daemon/counters.h"

#include <stddef.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/reqctx.h"
#include "daemon/route.h"

/* Statuses counted one by one; anything else is "other" (the last slot). */
static const int codes[] = {0,   200, 206, 304, 400, 401, 403, 404, 405,
                            413, 414, 416, 429, 431, 500, 502, 503, 504};
_Static_assert(PC_ARRAY_SIZE(codes) < DAEMON_CODES, "DAEMON_CODES too small");
_Static_assert(ROUTE_STATUS < DAEMON_ROUTES, "DAEMON_ROUTES too small");

static const char *const cache_names[DAEMON_CACHE_N] = {"hit", "miss", "join", "stale",
                                                        "revalidated"};

int counters_code_idx(int status)
{
  for (size_t i = 0; i < PC_ARRAY_SIZE(codes); i++)
    if (codes[i] == status)
      return (int)i;
  return DAEMON_CODES - 1;
}

int counters_code(int i)
{
  return i >= 0 && (size_t)i < PC_ARRAY_SIZE(codes) ? codes[i] : 0;
}

const char *counters_cache_name(enum daemon_cache outcome)
{
  return (unsigned)outcome < DAEMON_CACHE_N ? cache_names[outcome] : "?";
}

/* Copy at most n-1 bytes of s (NULL: "") and a NUL. */
static void copy_cut(char *dst, size_t n, const char *s)
{
  size_t len = s ? strnlen(s, n - 1) : 0;
  if (len)
    memcpy(dst, s, len);
  dst[len] = '\0';
}

void counters_note(daemon_counters_t *c, int64_t now, int route, int outcome, int status,
                   uint64_t body_bytes, const char *method, const char *path)
{
  c->requests[route][counters_code_idx(status)]++;
  if (route != ROUTE_STATUS) { /* the page's own refreshes would push the others out */
    counters_recent_t *r = &c->recent[c->nrecent++ % COUNTERS_RECENT];
    r->time = now;
    r->status = status;
    r->route = (signed char)route;
    r->outcome = (signed char)outcome;
    r->bytes = body_bytes;
    copy_cut(r->method, sizeof(r->method), method);
    copy_cut(r->path, sizeof(r->path), path);
  }
  counters_minute_t *m = &c->minutes[(uint64_t)(now / 60) % COUNTERS_MINUTES];
  if (m->minute != now / 60) {
    memset(m, 0, sizeof(*m));
    m->minute = now / 60;
  }
  if (outcome >= 0 && outcome < DAEMON_CACHE_N)
    m->outcomes[outcome]++;
  if (status < 200 || status > 299)
    return; /* error bodies are not content served */
  if (outcome == DAEMON_CACHE_MISS || outcome == DAEMON_CACHE_JOIN) {
    c->served_upstream += body_bytes;
    m->served_upstream += body_bytes;
  } else if (outcome >= 0) {
    c->served_store += body_bytes;
    m->served_store += body_bytes;
  }
}

void counters_on_finish(srv_req_t *req, int status, uint64_t body_bytes, void *arg)
{
  const reqctx_t *ctx = reqctx_of(req); /* NULL: answered by the server before the daemon */
  counters_note(arg, pc_now_sec(), ctx ? ctx->route : ROUTE_UNKNOWN, ctx ? ctx->outcome : -1,
                status, body_bytes, srv_req_method(req), srv_req_path(req));
}

void counters_window(const daemon_counters_t *c, int64_t now, int minutes, counters_minute_t *out)
{
  memset(out, 0, sizeof(*out));
  out->minute = now / 60;
  if (minutes > COUNTERS_MINUTES)
    minutes = COUNTERS_MINUTES;
  for (int i = 0; i < minutes; i++) {
    const counters_minute_t *m = &c->minutes[(uint64_t)(out->minute - i) % COUNTERS_MINUTES];
    if (m->minute != out->minute - i)
      continue; /* nothing was counted in that minute */
    for (int k = 0; k < DAEMON_CACHE_N; k++)
      out->outcomes[k] += m->outcomes[k];
    out->served_store += m->served_store;
    out->served_upstream += m->served_upstream;
  }
}
