/* pc — shared core: error table, logging, allocation helpers, clocks. */
#include "core/pc.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

int pc_log_level = PC_LOG_INFO;

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
  fprintf(stderr, "<2>fatal: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
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

void pc__log(int lvl, const char *fmt, ...)
{
  char line[4096];
  int n = snprintf(line, sizeof(line), "<%d>", lvl);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
  va_end(ap);
  /* One write per line so concurrent writers (helper threads) never interleave a line. */
  size_t len = strlen(line);
  if (len < sizeof(line) - 1)
    line[len++] = '\n';
  else
    line[sizeof(line) - 2] = '\n', len = sizeof(line) - 1;
  fwrite(line, 1, len, stderr);
  fflush(stderr);
}

_Noreturn void pc__fatal(const char *file, int line, const char *fmt, ...)
{
  va_list ap;
  fprintf(stderr, "<2>fatal: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (%s:%d)\n", file, line);
  abort();
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
