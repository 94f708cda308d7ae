/* pc — shared core: error table, allocation helpers, clocks (logging is in log.c). */
#include "core/pc.h"

#include <errno.h>
#include <string.h>
#include <time.h>

const char *pc_strerror(int err)
{
  switch (err) {
#define PC_ERR_GEN(name, val, st, code, msg)                                                       \
  case val:                                                                                        \
    return msg;
    PC_ERR_MAP(PC_ERR_GEN)
#undef PC_ERR_GEN
  case 0:
    return "success";
  default:
    break;
  }
  if (err < 0 && err > -4096)
    return strerror(-err);
  return "unknown error";
}

const char *pc_errname(int err)
{
  switch (err) {
#define PC_ERR_GEN(name, val, st, code, msg)                                                       \
  case val:                                                                                        \
    return #name;
    PC_ERR_MAP(PC_ERR_GEN)
#undef PC_ERR_GEN
  case 0:
    return "OK";
  default:
    break;
  }
  if (err < 0 && err > -4096) {
    const char *n = strerrorname_np(-err);
    if (n)
      return n;
  }
  return "EUNKNOWN";
}

int pc_err_status(int err)
{
  switch (err) {
#define PC_ERR_GEN(name, val, st, code, msg)                                                       \
  case val:                                                                                        \
    return st;
    PC_ERR_MAP(PC_ERR_GEN)
#undef PC_ERR_GEN
  case -ENOSPC:
  case -EDQUOT:
    return 507;
  default:
    return 500;
  }
}

const char *pc_err_code(int err)
{
  const char *c = NULL;
  switch (err) {
#define PC_ERR_GEN(name, val, st, code, msg)                                                       \
  case val:                                                                                        \
    c = code;                                                                                      \
    break;
    PC_ERR_MAP(PC_ERR_GEN)
#undef PC_ERR_GEN
  default:
    break;
  }
  return c ? c : "UNKNOWN";
}

static _Noreturn void oom(size_t n, const char *file, int line)
{
  char qf[PC_LOG_QUOTE_SIZE(256)]; /* no allocation on this path */
  pc_log_quote(qf, sizeof(qf), file, 256);
  pc__log(2, "fatal file=%s line=%d reason=\"out of memory\" bytes=%zu", qf, line, n);
  abort();
}

void *pc__xmalloc(size_t n, const char *file, int line)
{
  void *p = malloc(n ? n : 1);
  if (!p)
    oom(n, file, line);
  return p;
}

void *pc__xcalloc(size_t n, size_t m, const char *file, int line)
{
  void *p = calloc(n ? n : 1, m ? m : 1);
  if (!p)
    oom(n * m, file, line);
  return p;
}

void *pc__xrealloc(void *p, size_t n, const char *file, int line)
{
  void *q = realloc(p, n ? n : 1);
  if (!q)
    oom(n, file, line);
  return q;
}

char *pc__xstrdup(const char *s, const char *file, int line)
{
  return pc__xstrndup(s, strlen(s), file, line);
}

char *pc__xstrndup(const char *s, size_t n, const char *file, int line)
{
  char *p = pc__xmalloc(n + 1, file, line);
  memcpy(p, s, n);
  p[n] = '\0';
  return p;
}

int pc_hexval(int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int64_t pc_now_sec(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec;
}

uint64_t pc_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
