/* daemon/imgref — one line of an image list (see imgref.h). */
#include "daemon/imgref.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "store/digest.h"

static int bad(char *why, size_t whylen, int rc, const char *fmt, const char *arg, size_t alen)
{
  if (why && whylen)
    snprintf(why, whylen, fmt, (int)(alen > 200 ? 200 : alen), arg);
  return rc;
}

static int is_space(char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int imgref_parse(const char *line, size_t len, const char *const *names, int nnames, imgref_t *out,
                 char *why, size_t whylen)
{
  const char *p = line, *end = line + len;
  memset(out, 0, sizeof(*out));
  while (p < end && is_space(*p))
    p++;
  if (p == end || *p == '#')
    return IMGREF_SKIP;
  /* the reference ends at the first blank; after it only a comment may follow */
  const char *e = p;
  while (e < end && !is_space(*e))
    e++;
  const char *rest = e;
  while (rest < end && is_space(*rest))
    rest++;
  if (rest < end && *rest != '#')
    return bad(why, whylen, IMGREF_BAD, "more than one word on the line: \"%.*s\"", p,
               (size_t)(end - p));
  size_t n = (size_t)(e - p);
  if (nnames <= 0)
    return bad(why, whylen, IMGREF_UNKNOWN, "no upstream is configured for \"%.*s\"", p, n);
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e)
      return bad(why, whylen, IMGREF_BAD, "not printable ASCII: \"%.*s\"", p, n);

  /* host: the first component, when it looks like one */
  const char *slash = memchr(p, '/', n);
  const char *name = p;
  out->upstream = 0;
  if (slash) {
    size_t hl = (size_t)(slash - p);
    int hosty = memchr(p, '.', hl) || memchr(p, ':', hl) || (hl == 9 && !memcmp(p, "localhost", 9));
    if (hosty) {
      int found = -1;
      for (int i = 0; i < nnames && found < 0; i++)
        if (strlen(names[i]) == hl && strncasecmp(names[i], p, hl) == 0)
          found = i;
      if (found < 0)
        return bad(why, whylen, IMGREF_UNKNOWN, "unknown upstream \"%.*s\" (not configured)", p,
                   hl);
      out->upstream = found;
      name = slash + 1;
    }
  }
  const char *ne = e;
  /* @digest */
  const char *at = memchr(name, '@', (size_t)(ne - name));
  if (at) {
    size_t dl = (size_t)(ne - at - 1);
    if (store_digest_parse(at + 1, dl) != STORE_DIGEST_SHA256 || dl >= sizeof(out->digest))
      return bad(why, whylen, IMGREF_BAD, "not a sha256 digest: \"%.*s\"", at + 1, dl);
    memcpy(out->digest, at + 1, dl);
    out->digest[dl] = '\0';
    ne = at;
  }
  /* :tag after the last slash */
  const char *colon = NULL;
  for (const char *q = ne; q > name; q--)
    if (q[-1] == '/')
      break;
    else if (q[-1] == ':') {
      colon = q - 1;
      break;
    }
  if (colon) {
    size_t tl = (size_t)(ne - colon - 1);
    if (!route_tag_valid(colon + 1, tl) || tl >= sizeof(out->tag))
      return bad(why, whylen, IMGREF_BAD, "not a valid tag: \"%.*s\"", colon + 1, tl);
    memcpy(out->tag, colon + 1, tl);
    out->tag[tl] = '\0';
    ne = colon;
  } else if (!at) {
    memcpy(out->tag, "latest", 7);
  }
  size_t rl = (size_t)(ne - name);
  if (rl == 0 || rl >= sizeof(out->repo) || !route_name_valid(name, rl))
    return bad(why, whylen, IMGREF_BAD,
               "not a valid repository name (lower case, OCI grammar): \"%.*s\"", name, rl);
  memcpy(out->repo, name, rl);
  out->repo[rl] = '\0';
  return IMGREF_OK;
}

int imgref_pin_form(const imgref_t *r, char *buf, size_t len)
{
  int n = r->digest[0] ? snprintf(buf, len, "%s@%s", r->repo, r->digest)
                       : snprintf(buf, len, "%s:%s", r->repo, r->tag);
  return n > 0 && (size_t)n < len ? 0 : -1;
}

int imgref_platforms_parse(const char *list, char (*out)[IMGREF_PLATFORM_MAX], int max, char *why,
                           size_t whylen)
{
  int n = 0;
  const char *s = list;
  if (!*s)
    return bad(why, whylen, -1, "empty platform list%.*s", "", 0);
  while (*s) {
    size_t len = strcspn(s, ",");
    const char *sl = memchr(s, '/', len);
    if (len == 0 || len >= IMGREF_PLATFORM_MAX || !sl || sl == s || sl + 1 == s + len || n == max)
      return bad(why, whylen, -1, "\"%.*s\" is not OS/ARCH[/VARIANT]", s, len);
    memcpy(out[n], s, len);
    out[n++][len] = '\0';
    s += len;
    if (*s == ',')
      s++;
  }
  return n;
}

int imgref_platform_match(const char *want, const char *os, const char *arch, const char *variant)
{
  char w[IMGREF_PLATFORM_MAX];
  snprintf(w, sizeof(w), "%s", want);
  char *a = strchr(w, '/');
  if (!a)
    return 0;
  *a++ = '\0';
  char *v = strchr(a, '/');
  if (v)
    *v++ = '\0';
  if (strcmp(w, os) || strcmp(a, arch))
    return 0;
  return !v || !strcmp(v, variant);
}
