/* core/buf — growable byte buffer with a hard cap (see buf.h). */
#include "core/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/pc.h"

void pc_buf_init(pc_buf_t *b, size_t max)
{
  b->p = NULL;
  b->len = b->cap = 0;
  b->max = max;
}

/* Room for need bytes of content plus the NUL. */
static int reserve(pc_buf_t *b, size_t need)
{
  if (b->max && need > b->max)
    return PC_E_TOOBIG;
  if (need + 1 <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need + 1) {
    PC_ASSERT(cap <= SIZE_MAX / 2);
    cap *= 2;
  }
  b->p = pc_xrealloc(b->p, cap);
  b->cap = cap;
  return 0;
}

int pc_buf_reserve(pc_buf_t *b, size_t n)
{
  if (n > SIZE_MAX - 1 - b->len)
    return PC_E_TOOBIG;
  return reserve(b, b->len + n);
}

int pc__buf_add(pc_buf_t *b, const void *p, size_t n)
{
  if (n > SIZE_MAX - 1 - b->len)
    return PC_E_TOOBIG;
  int rc = reserve(b, b->len + n);
  if (rc)
    return rc;
  if (n)
    memcpy(b->p + b->len, p, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

int pc_buf_printf(pc_buf_t *b, const char *fmt, ...)
{
  va_list ap;
  char tmp[256];
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0)
    return PC_E_INTERNAL;
  if ((size_t)n < sizeof(tmp))
    return pc_buf_add(b, tmp, (size_t)n);
  int rc = reserve(b, b->len + (size_t)n);
  if (rc)
    return rc;
  va_start(ap, fmt);
  vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void pc_buf_consume(pc_buf_t *b, size_t n)
{
  PC_ASSERT(n <= b->len);
  if (!n)
    return;
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
  b->p[b->len] = '\0';
}

void pc_buf_free(pc_buf_t *b)
{
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

char *pc_buf_steal(pc_buf_t *b, size_t *len)
{
  char *p = b->p;
  if (len)
    *len = b->len;
  b->p = NULL;
  b->len = b->cap = 0;
  return p;
}
