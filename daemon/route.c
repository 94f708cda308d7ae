/* daemon/route — OCI pull-API path and query parsing (see route.h). */
#include "daemon/route.h"

#include <string.h>
#include <strings.h>

#include "core/pc.h"

#define MAX_SEGS 64

typedef struct seg {
  const char *p;
  size_t len;
} seg_t;

static int is_lower_alnum(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_alnum(unsigned char c)
{
  return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

/* One path component: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* */
static int component_valid(const char *s, size_t len)
{
  size_t i = 0;
  if (len == 0 || !is_lower_alnum((unsigned char)s[0]))
    return 0;
  while (i < len) {
    while (i < len && is_lower_alnum((unsigned char)s[i]))
      i++;
    if (i == len)
      return 1;
    /* separator */
    if (s[i] == '.') {
      i++;
    } else if (s[i] == '_') {
      i++;
      if (i < len && s[i] == '_')
        i++;
    } else if (s[i] == '-') {
      while (i < len && s[i] == '-')
        i++;
    } else {
      return 0;
    }
    if (i == len || !is_lower_alnum((unsigned char)s[i]))
      return 0;
  }
  return 1;
}

int route_name_valid(const char *s, size_t len)
{
  size_t start = 0;
  if (len == 0 || len > ROUTE_NAME_MAX)
    return 0;
  for (size_t i = 0; i <= len; i++) {
    if (i == len || s[i] == '/') {
      if (!component_valid(s + start, i - start))
        return 0;
      start = i + 1;
    }
  }
  return 1;
}

int route_tag_valid(const char *s, size_t len)
{
  if (len == 0 || len > ROUTE_TAG_MAX)
    return 0;
  if (!is_alnum((unsigned char)s[0]) && s[0] != '_')
    return 0;
  for (size_t i = 1; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!is_alnum(c) && c != '_' && c != '.' && c != '-')
      return 0;
  }
  return 1;
}

int route_pct_decode(const char *src, size_t len, char *dst, size_t dstlen)
{
  if (len < dstlen && !memchr(src, '%', len) && !memchr(src, '\0', len)) {
    memcpy(dst, src, len); /* nothing to decode: the common case, without a loop per byte */
    dst[len] = '\0';
    return (int)len;
  }
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)src[i];
    if (c == '%') {
      int hi, lo;
      if (i + 2 >= len)
        return -1;
      hi = pc_hexval(src[i + 1]);
      lo = pc_hexval(src[i + 2]);
      if (hi < 0 || lo < 0)
        return -1;
      c = (unsigned char)(hi * 16 + lo);
      i += 2;
    }
    if (c == '\0' || o + 1 >= dstlen)
      return -1;
    dst[o++] = (char)c;
  }
  if (dstlen == 0)
    return -1;
  dst[o] = '\0';
  return (int)o;
}

static int seg_is(const seg_t *s, const char *lit)
{
  size_t n = strlen(lit);
  return s->len == n && memcmp(s->p, lit, n) == 0;
}

/* Find an upstream by name (case-insensitive); -1 if none. */
static int find_upstream(const char *const *names, int nnames, const char *s, size_t len)
{
  for (int i = 0; i < nnames; i++) {
    if (names[i] && strlen(names[i]) == len && strncasecmp(names[i], s, len) == 0)
      return i;
  }
  return -1;
}

/* Parse the query into out (ns, n, last, artifactType). */
static int parse_query(const char *q, route_t *out)
{
  const char *p = q;
  char val[512];
  int have_ns = 0, have_n = 0, have_last = 0, have_at = 0;

  if (!q)
    return 0;
  while (*p) {
    const char *amp = strchr(p, '&');
    size_t plen = amp ? (size_t)(amp - p) : strlen(p);
    const char *eq = memchr(p, '=', plen);
    size_t klen = eq ? (size_t)(eq - p) : plen;
    const char *v = eq ? eq + 1 : p + plen;
    size_t vlen = eq ? plen - klen - 1 : 0;
    int *seen = NULL;

    if (klen == 2 && memcmp(p, "ns", 2) == 0)
      seen = &have_ns;
    else if (klen == 1 && p[0] == 'n')
      seen = &have_n;
    else if (klen == 4 && memcmp(p, "last", 4) == 0)
      seen = &have_last;
    else if (klen == 12 && memcmp(p, "artifactType", 12) == 0)
      seen = &have_at;

    if (seen && !*seen) { /* the first occurrence of a key wins */
      int dl = route_pct_decode(v, vlen, val, sizeof(val));
      *seen = 1;
      if (seen == &have_ns) {
        if (dl < 0 || (size_t)dl >= sizeof(out->ns))
          return PC_E_UPSTREAM_UNKNOWN;
        memcpy(out->ns, val, (size_t)dl + 1);
        out->ns_given = 1;
      } else if (seen == &have_n) {
        uint64_t n = 0;
        if (dl <= 0)
          return PC_E_SIZE_INVALID;
        for (int i = 0; i < dl; i++) {
          if (val[i] < '0' || val[i] > '9')
            return PC_E_SIZE_INVALID;
          if (n <= ROUTE_N_MAX)
            n = n * 10 + (uint64_t)(val[i] - '0');
        }
        out->has_n = 1;
        out->n = n > ROUTE_N_MAX ? ROUTE_N_MAX : (unsigned)n;
      } else if (seen == &have_last) {
        if (dl < 0 || (dl > 0 && !route_tag_valid(val, (size_t)dl)))
          return PC_E_TAG_INVALID;
        memcpy(out->last, val, (size_t)dl + 1);
      } else {
        if (dl < 0 || (size_t)dl >= sizeof(out->artifact_type))
          return PC_E_SIZE_INVALID;
        memcpy(out->artifact_type, val, (size_t)dl + 1);
      }
    }
    p += plen;
    if (*p == '&')
      p++;
  }
  return 0;
}

static int is_method(const char *m, const char *lit)
{
  return m && strcmp(m, lit) == 0;
}

int route_parse(const char *method, const char *path, const char *query, const char *const *names,
                int nnames, route_t *out)
{
  seg_t segs[MAX_SEGS];
  size_t nsegs = 0, name_end, name_start = 0;
  const char *p;
  char dec[ROUTE_NAME_MAX + 2];
  size_t pos = 0;
  int rc, get_or_head;

  memset(out, 0, sizeof(*out));
  out->upstream = nnames > 0 ? 0 : -1;
  if (!path)
    path = "";
  get_or_head = is_method(method, "GET") || is_method(method, "HEAD");

  if (strncmp(path, "/v2", 3) != 0 || (path[3] != '\0' && path[3] != '/')) {
    if (get_or_head) {
      if (strcmp(path, "/healthz") == 0)
        out->kind = ROUTE_HEALTHZ;
      else if (strcmp(path, "/readyz") == 0)
        out->kind = ROUTE_READYZ;
      else if (strcmp(path, "/metrics") == 0)
        out->kind = ROUTE_METRICS;
      else if (strcmp(path, "/status") == 0)
        out->kind = ROUTE_STATUS;
    }
    return 0;
  }
  out->is_v2 = 1;
  if (!get_or_head)
    return PC_E_UNSUPPORTED;

  /* Split what follows "/v2/" into raw segments (a trailing empty segment is kept). */
  p = path + 3;
  if (*p == '/')
    p++;
  if (*p == '\0') {
    out->kind = ROUTE_ROOT;
    return 0;
  }
  while (1) {
    const char *slash = strchr(p, '/');
    size_t len = slash ? (size_t)(slash - p) : strlen(p);
    if (nsegs == MAX_SEGS)
      return PC_E_NAME_INVALID; /* a name of >= 64 components can't fit in 255 bytes anyway */
    segs[nsegs].p = p;
    segs[nsegs].len = len;
    nsegs++;
    if (!slash)
      break;
    p = slash + 1;
  }

  if (nsegs < 3)
    return 0; /* ROUTE_UNKNOWN */
  if (seg_is(&segs[nsegs - 2], "manifests"))
    out->kind = ROUTE_MANIFEST;
  else if (seg_is(&segs[nsegs - 2], "blobs"))
    out->kind = ROUTE_BLOB;
  else if (seg_is(&segs[nsegs - 2], "referrers"))
    out->kind = ROUTE_REFERRERS;
  else if (seg_is(&segs[nsegs - 2], "tags") && seg_is(&segs[nsegs - 1], "list"))
    out->kind = ROUTE_TAGS_LIST;
  else
    return 0;
  name_end = nsegs - 2;

  rc = parse_query(query, out);
  if (rc == 0 && out->ns_given) {
    int idx = find_upstream(names, nnames, out->ns, strlen(out->ns));
    if (idx < 0)
      rc = PC_E_UPSTREAM_UNKNOWN;
    else
      out->upstream = idx;
  }
  if (rc)
    return rc;

  /* Path-prefix addressing: the first segment names a configured upstream. */
  if (!out->ns_given && name_end >= 2) {
    char first[256];
    int dl = route_pct_decode(segs[0].p, segs[0].len, first, sizeof(first));
    if (dl > 0) {
      int idx = find_upstream(names, nnames, first, (size_t)dl);
      if (idx >= 0) {
        out->upstream = idx;
        name_start = 1;
      } else if (memchr(first, '.', (size_t)dl) || memchr(first, ':', (size_t)dl) ||
                 (dl == 9 && memcmp(first, "localhost", 9) == 0)) {
        /* A first component with a dot or a colon, or "localhost", is a registry host (the
         * Docker reference rule): one that is not configured is refused, never forwarded as
         * a repository. */
        return PC_E_UPSTREAM_UNKNOWN;
      }
    }
  }

  /* Decode and join the name segments, then check the grammar on the whole. */
  for (size_t i = name_start; i < name_end; i++) {
    int dl;
    if (i > name_start) {
      if (pos + 1 >= sizeof(dec))
        return PC_E_NAME_INVALID;
      dec[pos++] = '/';
    }
    dl = route_pct_decode(segs[i].p, segs[i].len, dec + pos, sizeof(dec) - pos);
    if (dl < 0 || memchr(dec + pos, '/', (size_t)dl))
      return PC_E_NAME_INVALID;
    pos += (size_t)dl;
  }
  dec[pos] = '\0';
  if (!route_name_valid(dec, pos))
    return PC_E_NAME_INVALID;
  memcpy(out->name, dec, pos + 1);

  if (out->kind == ROUTE_TAGS_LIST)
    return 0;

  /* The reference. */
  {
    const seg_t *r = &segs[nsegs - 1];
    char ref[STORE_DIGEST_MAX];
    int dl = route_pct_decode(r->p, r->len, ref, sizeof(ref));
    int digest = dl > 0 ? memchr(ref, ':', (size_t)dl) != NULL : memchr(r->p, ':', r->len) != NULL;

    if (out->kind == ROUTE_MANIFEST && !digest) {
      if (dl <= 0 || !route_tag_valid(ref, (size_t)dl))
        return PC_E_MANIFEST_UNKNOWN;
    } else {
      /* A digest: with ':' in a manifest ref; always for blobs and referrers. Decoding
       * failures and overlong strings are invalid digests too. */
      if (dl <= 0 || store_digest_parse(ref, (size_t)dl) < 0)
        return PC_E_DIGEST_INVALID;
      out->is_digest = 1;
    }
    memcpy(out->ref, ref, (size_t)dl + 1);
  }
  return 0;
}

route_class route_kind_class(route_kind k)
{
  switch (k) {
  case ROUTE_HEALTHZ:
  case ROUTE_READYZ:
  case ROUTE_METRICS:
  case ROUTE_STATUS:
    return ROUTE_CLASS_OPS;
  default:
    return ROUTE_CLASS_PULL;
  }
}

const char *route_kind_name(route_kind k)
{
  switch (k) {
  case ROUTE_ROOT:
    return "root";
  case ROUTE_MANIFEST:
    return "manifest";
  case ROUTE_BLOB:
    return "blob";
  case ROUTE_TAGS_LIST:
    return "tags";
  case ROUTE_REFERRERS:
    return "referrers";
  case ROUTE_HEALTHZ:
    return "healthz";
  case ROUTE_READYZ:
    return "readyz";
  case ROUTE_METRICS:
    return "metrics";
  case ROUTE_STATUS:
    return "status";
  case ROUTE_UNKNOWN:
  default:
    return "unknown";
  }
}
