/* log — logging: one line per event on stderr, and the key=value quoting the lines use. */
#include "core/pc.h"

#include <stdarg.h>
#include <string.h>

int pc_log_level = PC_LOG_INFO;

/* ---- quoting (the writer's side of the convention) ----------------------------------------- */

static int is_key_char(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.' || c == '-';
}

static int is_plain_char(unsigned char c)
{
  return c > ' ' && c < 0x7f && c != '"' && c != '\\' && c != '=';
}

static const char hexdig[] = "0123456789abcdef";

size_t pc_log_quote(char *dst, size_t dstlen, const char *value, size_t max)
{
  size_t n = strlen(value);
  size_t take = n > max ? max : n;
  int quote = take == 0;
  for (size_t i = 0; i < take && !quote; i++)
    quote = !is_plain_char((unsigned char)value[i]);

  /* o counts the whole output; bytes are stored only while they fit (snprintf-like). */
  size_t o = 0;
#define PUT(ch)                                                                                    \
  do {                                                                                             \
    if (o + 1 < dstlen)                                                                            \
      dst[o] = (char)(ch);                                                                         \
    o++;                                                                                           \
  } while (0)
  if (quote)
    PUT('"');
  for (size_t i = 0; i < take; i++) {
    unsigned char c = (unsigned char)value[i];
    if (!quote || (c >= ' ' && c < 0x7f && c != '"' && c != '\\')) {
      PUT(c);
    } else if (c == '"' || c == '\\') {
      PUT('\\');
      PUT(c);
    } else {
      PUT('\\');
      PUT('x');
      PUT(hexdig[c >> 4]);
      PUT(hexdig[c & 15]);
    }
  }
  if (take < n) {
    PUT('.');
    PUT('.');
    PUT('.');
  }
  if (quote)
    PUT('"');
#undef PUT
  if (dstlen)
    dst[o < dstlen ? o : dstlen - 1] = '\0';
  return o;
}

size_t pc_log_key(char *dst, size_t dstlen, const char *key)
{
  size_t o = 0;
  if (!dstlen)
    return 0;
  for (; key[o] && o + 1 < dstlen && o < PC_LOG_KEY_MAX; o++)
    dst[o] = is_key_char((unsigned char)key[o]) ? key[o] : '_';
  dst[o] = '\0';
  return o;
}

/* ---- output -------------------------------------------------------------------------------- */

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
