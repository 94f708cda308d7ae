/* mtype — media type grammar (see mtype.h). */
#include "core/mtype.h"

#include <string.h>

static int alnum(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* RFC 6838 restricted-name-chars after the first */
static int rchar(unsigned char c)
{
  return alnum(c) || (c && strchr("!#$&-^_.+", c) != NULL);
}

/* RFC 9110 tchar */
static int tchar(unsigned char c)
{
  return alnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static size_t rname(const char *s, size_t n)
{
  size_t i = 0;
  if (n == 0 || !alnum((unsigned char)s[0]))
    return 0;
  for (i = 1; i < n && i < 127 && rchar((unsigned char)s[i]); i++)
    ;
  return i;
}

int pc_mtype_ok(const char *s, size_t n)
{
  size_t a = rname(s, n);
  if (a == 0 || a >= n || s[a] != '/')
    return 0;
  size_t b = rname(s + a + 1, n - a - 1);
  return b > 0 && a + 1 + b == n;
}

static const char *ows(const char *p)
{
  while (*p == ' ' || *p == '\t')
    p++;
  return p;
}

int pc_mtype_header_ok(const char *v, size_t *type_len)
{
  size_t n = strcspn(v, "; \t");
  if (!pc_mtype_ok(v, n))
    return 0;
  if (type_len)
    *type_len = n;
  const char *p = ows(v + n);
  while (*p) {
    if (*p != ';')
      return 0;
    p = ows(p + 1);
    if (!*p) /* a trailing ";" is tolerated (seen in the wild), nothing after it */
      return 1;
    const char *q = p;
    while (tchar((unsigned char)*p))
      p++;
    if (p == q || *p != '=')
      return 0;
    p++;
    if (*p == '"') {
      for (p++; *p != '"'; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '\\' && p[1] && ((unsigned char)p[1] >= 0x20 || p[1] == '\t') && p[1] != 0x7f)
          p++;
        else if (!c || (c < 0x20 && c != '\t') || c == 0x7f)
          return 0;
      }
      p++;
    } else {
      q = p;
      while (tchar((unsigned char)*p))
        p++;
      if (p == q)
        return 0;
    }
    p = ows(p);
  }
  return 1;
}
