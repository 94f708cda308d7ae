/* daemon/pull — helpers shared by fills and manifest jobs (see pull.h). */
#include "daemon/pull.h"

#include <string.h>

#include "core/pc.h"
#include "daemon/tier.h"
#include "daemon/upstream.h"

void pull_req_urls(up_req_t *r, daemon_upstream_t *up, const char *repo, const char *kind,
                   const char *ref, daemon_urls_t *urls)
{
  size_t n = strlen(repo) + strlen(kind) + strlen(ref) + 8;
  char *path = pc_xmalloc(n);
  snprintf(path, n, "/v2/%s/%s/%s", repo, kind, ref);
  daemon_upstream_urls(up, path, urls);
  daemon_upstream_req_urls(r, up, urls);
  free(path);
}

void pull_req_init(up_req_t *r, const daemon_upstream_t *up)
{
  memset(r, 0, sizeof(*r));
  r->via = up->d ? tier_via(up->d) : NULL;
  r->ca_file = up->conf.ca_file[0] ? up->conf.ca_file : NULL;
  r->redirect_allow = up->conf.allow_redirect_to[0] ? up->conf.allow_redirect_to : NULL;
  r->userpwd = up->conf.userpwd[0] ? up->conf.userpwd : NULL;
  r->pool = up->pool;
  r->label = up->conf.name; /* the egress record: which upstream this host served */
}

int pull_map_upstream(int rc, int status, int unknown)
{
  if (rc < 0)
    return rc;
  if (status == 404)
    return unknown;
  if (status == 401 || status == 403)
    return PC_E_DENIED; /* the upstream refused this mirror (its credentials, or none) */
  if (status == 429)
    return PC_E_TOOMANYREQUESTS;
  if (status == 503)
    return PC_E_UPSTREAM_UNAVAILABLE;
  if (status == 504)
    return PC_E_UPSTREAM_TIMEOUT;
  if (status == 508)
    return PC_E_LOOP; /* a tier above saw this request before: pass the refusal down */
  return PC_E_UPSTREAM;
}
