/* daemon/counters — request counting (see counters.h). */
#include "daemon/counters.h"

#include <stddef.h>

#include "core/pc.h"
#include "daemon/reqctx.h"
#include "daemon/route.h"

/* Statuses counted one by one; anything else is "other" (the last slot). */
static const int codes[] = {0,   200, 206, 304, 400, 401, 403, 404, 405,
                            413, 414, 416, 429, 431, 500, 502, 503, 504};
_Static_assert(PC_ARRAY_SIZE(codes) < DAEMON_CODES, "DAEMON_CODES too small");
_Static_assert(ROUTE_METRICS < DAEMON_ROUTES, "DAEMON_ROUTES too small");

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

void counters_on_finish(srv_req_t *req, int status, uint64_t body_bytes, void *arg)
{
  daemon_counters_t *c = arg;
  const reqctx_t *ctx = reqctx_of(req); /* NULL: answered by the server before the daemon */
  int route = ctx ? ctx->route : ROUTE_UNKNOWN, outcome = ctx ? ctx->outcome : -1;
  c->requests[route][counters_code_idx(status)]++;
  if (status < 200 || status > 299)
    return; /* error bodies are not content served */
  if (outcome == DAEMON_CACHE_MISS || outcome == DAEMON_CACHE_JOIN)
    c->served_upstream += body_bytes;
  else if (outcome >= 0)
    c->served_store += body_bytes;
}
