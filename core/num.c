/* core/num — number parsing and bounded copies (see num.h). */
#include "core/num.h"

#include <errno.h>
#include <string.h>

#include "core/pc.h"

/* Digits of s[0..len) as an unsigned value; -EINVAL or -ERANGE. */
static int digits(const char *s, size_t len, uint64_t *out)
{
  uint64_t v = 0;
  if (len == 0)
    return -EINVAL;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -EINVAL;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -ERANGE;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

int pc_parse_u64_n(const char *s, size_t len, uint64_t max, uint64_t *out)
{
  uint64_t v;
  int rc = digits(s, len, &v);
  if (rc)
    return rc;
  if (v > max)
    return -ERANGE;
  *out = v;
  return 0;
}

int pc_parse_u64(const char *s, uint64_t max, uint64_t *out)
{
  return pc_parse_u64_n(s, strlen(s), max, out);
}

int pc_parse_i64_n(const char *s, size_t len, int64_t min, int64_t max, int64_t *out)
{
  int neg = len > 0 && s[0] == '-';
  uint64_t v;
  int rc = digits(s + neg, len - (size_t)neg, &v);
  if (rc)
    return rc;
  int64_t r;
  if (neg) {
    if (v > (uint64_t)INT64_MAX + 1)
      return -ERANGE;
    r = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  } else {
    if (v > (uint64_t)INT64_MAX)
      return -ERANGE;
    r = (int64_t)v;
  }
  if (r < min || r > max)
    return -ERANGE;
  *out = r;
  return 0;
}

int pc_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
  return pc_parse_i64_n(s, strlen(s), min, max, out);
}

int pc_parse_u64_prefix(const char **p, uint64_t *out)
{
  const char *s = *p;
  size_t n = 0;
  while (s[n] >= '0' && s[n] <= '9')
    n++;
  int rc = digits(s, n, out);
  if (rc == 0)
    *p = s + n;
  return rc;
}

int pc_strlcpy(char *dst, size_t cap, const char *src)
{
  size_t n = src ? strlen(src) : 0;
  int rc = 0;
  PC_ASSERT(cap > 0);
  if (n >= cap) {
    n = cap - 1;
    rc = PC_E_TOOBIG;
  }
  if (n)
    memcpy(dst, src, n);
  dst[n] = '\0';
  return rc;
}

const char *pc_opt_value(int argc, char **argv, int *i, const char *opt, int *missing)
{
  size_t n = strlen(opt);
  if (strncmp(argv[*i], opt, n) != 0)
    return NULL;
  if (argv[*i][n] == '=')
    return argv[*i][n + 1] ? argv[*i] + n + 1 : (*missing = 1, NULL);
  if (argv[*i][n] != '\0')
    return NULL;
  if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
    *missing = 1;
    return NULL;
  }
  return argv[++*i];
}
