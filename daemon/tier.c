/* daemon/tier — loops and hop limits of mirror chains (see tier.h). */
#include "daemon/tier.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"

void tier_via_scan(const char *via, const char *id, unsigned *entries, int *has_self)
{
  *entries = 0;
  *has_self = 0;
  if (!via)
    return;
  size_t idl = strlen(id);
  const char *p = via;
  while (*p) {
    size_t n = strcspn(p, ",");
    const char *e = p, *end = p + n;
    while (e < end && (*e == ' ' || *e == '\t'))
      e++;
    if (e < end) {
      (*entries)++;
      /* "protocol received-by [comment]": skip the protocol, compare received-by */
      while (e < end && *e != ' ' && *e != '\t')
        e++;
      while (e < end && (*e == ' ' || *e == '\t'))
        e++;
      size_t w = 0;
      while (e + w < end && e[w] != ' ' && e[w] != '\t')
        w++;
      if (w == idl && idl && strncasecmp(e, id, idl) == 0)
        *has_self = 1;
    }
    p = *end ? end + 1 : end;
  }
}

/* "1.1 <tier_id>": this mirror's entry, made again when a reload changed tier_id. */
static const char *self_entry(daemon_t *d)
{
  if (d->tier.self[0] && strcmp(d->tier.from, d->cfg.tier_id) == 0)
    return d->tier.self; /* made already, from the tier_id configured now */
  pc_strlcpy(d->tier.from, sizeof(d->tier.from), d->cfg.tier_id);
  if (d->cfg.tier_id[0]) {
    pc_strlcpy(d->tier.id, sizeof(d->tier.id), d->cfg.tier_id);
  } else {
    char host[96] = "";
    const char *port = d->cfg.nlisten > 0 ? strrchr(d->cfg.listen[0], ':') : NULL;
    if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
      pc_strlcpy(host, sizeof(host), "pullcache");
    host[strcspn(host, " \t,;()")] = '\0';
    snprintf(d->tier.id, sizeof(d->tier.id), "%s%s", host, port ? port : "");
  }
  snprintf(d->tier.self, sizeof(d->tier.self), "1.1 %s", d->tier.id);
  return d->tier.self;
}

int tier_enter(daemon_t *d, srv_req_t *req, char *detail, size_t detail_len)
{
  const char *self = self_entry(d);
  const char *via = srv_req_header(req, "Via");
  unsigned entries;
  int has_self;
  tier_via_scan(via, d->tier.id, &entries, &has_self);
  unsigned max = d->cfg.max_hops ? d->cfg.max_hops : 8;
  if (has_self || entries >= max) {
    if (has_self)
      snprintf(detail, detail_len, "the request came round to %s again (Via)", d->tier.id);
    else
      snprintf(detail, detail_len, "the request passed %u tiers (max_hops %u)", entries, max);
    srv_req_log(req, "loop", has_self ? "self" : "hops");
    d->tier.loops++;
    return PC_E_LOOP;
  }
  free(d->tier.out);
  d->tier.out = NULL;
  if (via && entries) {
    size_t n = strlen(via) + strlen(self) + 3;
    d->tier.out = pc_xmalloc(n);
    snprintf(d->tier.out, n, "%s, %s", via, self);
    srv_req_log(req, "via_hops", entries == 1 ? "1" : entries == 2 ? "2" : "3+");
  }
  return 0;
}

void tier_leave(daemon_t *d)
{
  free(d->tier.out);
  d->tier.out = NULL;
}

const char *tier_via(daemon_t *d)
{
  return d->tier.out ? d->tier.out : self_entry(d);
}
