/* daemon/reqctx — per-request context in the srv user slot (see reqctx.h). */
#include "daemon/reqctx.h"

#include <stddef.h>
#include <string.h>

#include "core/pc.h"

_Static_assert(sizeof(reqctx_t) <= SRV_REQ_ROOM, "reqctx_t must fit the request's room");

static void on_req_done(srv_req_t *req, int status, void *arg)
{
  reqctx_t *ctx = arg;
  (void)req;
  (void)status;
  if (ctx->gone) {
    reqctx_gone_cb cb = ctx->gone;
    ctx->gone = NULL;
    cb(ctx, ctx->gone_arg);
  }
}

reqctx_t *reqctx_new(struct daemon *d, srv_req_t *req)
{
  reqctx_t *ctx = srv_req_room(req);
  memset(ctx, 0, offsetof(reqctx_t, ns));
  ctx->ns[0] = '\0';
  ctx->d = d;
  ctx->req = req;
  ctx->cache_kind = -1;
  ctx->outcome = -1;
  srv_req_set_data(req, ctx);
  srv_req_on_done(req, on_req_done, ctx);
  return ctx;
}

reqctx_t *reqctx_of(const srv_req_t *req)
{
  return srv_req_data(req);
}

void reqctx_park(reqctx_t *ctx, reqctx_gone_cb cb, void *arg)
{
  PC_ASSERT(ctx->gone == NULL);
  ctx->gone = cb;
  ctx->gone_arg = arg;
}

void reqctx_unpark(reqctx_t *ctx)
{
  ctx->gone = NULL;
  ctx->gone_arg = NULL;
}
