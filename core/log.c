/* log — one line per event on stderr, as text or JSON, with journald priority prefixes.
 *
 * Every line goes out with a single write(2) of at most PC_LOG_LINE_MAX bytes (= PIPE_BUF on
 * Linux), so lines from several threads never interleave, not even on a pipe.
 *
 * pc__log formats the message into a PC_LOG_LINE_MAX buffer, then renders it:
 *   - text: the prefix ("<N>" under journald, else "<ts> <level> "), then the message with
 *     control characters escaped as \xHH (a raw %s cannot start a second line), cut to the cap;
 *   - JSON: the message is parsed back into fields by the convention documented in pc.h
 *     (msg_to_json) and dumped by jansson. When the dump does not fit the cap, a binary search
 *     finds the longest prefix of the message whose JSON (with "truncated":true) fits, so a
 *     truncated line is still one valid object. Should jansson fail (out of memory), the line
 *     is written in the text format instead: a log line is never dropped for that.
 *
 * No allocation happens on the text path; the JSON path allocates (jansson, one scratch
 * buffer). errno is preserved across pc__log.
 */
#include "core/pc.h"

#include "core/num.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Written by pc_log_setup (and the daemon's reload) while other threads log: atomics, and every
 * access here is relaxed, since each value stands alone (no other data is published with it). */
_Atomic int pc_log_level = PC_LOG_INFO;
_Atomic int pc_log_format = PC_LOG_TEXT;

/* -1: not detected yet (pc_log_setup was not called; the first line detects), 0 or 1. Any
 * thread racing on the first detection computes the same answer. */
static atomic_int journald = -1;

#define FATAL_FILE_MAX 256 /* a fatal line's file= value is cut here */

static const char *const level_names[8] = {"emerg", "alert",  "crit", "err",
                                           "warn",  "notice", "info", "debug"};

/* ---- setup --------------------------------------------------------------------------------- */

/* systemd sets JOURNAL_STREAM="DEV:INODE" (decimal st_dev and st_ino) for a service whose
 * stdout/stderr is connected to the journal. The variable is inherited by children whose
 * stderr may go elsewhere, hence the comparison with what fd 2 really is. */
static int detect_journald(void)
{
  const char *e = getenv("JOURNAL_STREAM");
  if (!e || !*e)
    return 0;
  const char *p = e;
  uint64_t dev, ino;
  if (pc_parse_u64_prefix(&p, &dev) < 0 || *p != ':' || pc_parse_u64(p + 1, UINT64_MAX, &ino) < 0)
    return 0;
  struct stat st;
  if (fstat(STDERR_FILENO, &st) < 0)
    return 0;
  return (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino;
}

void pc_log_setup(int format)
{
  int saved = errno;
  atomic_store_explicit(&pc_log_format, format == PC_LOG_JSON ? PC_LOG_JSON : PC_LOG_TEXT,
                        memory_order_relaxed);
  atomic_store_explicit(&journald, detect_journald(), memory_order_relaxed);
  errno = saved;
}

int pc_log_journald(void)
{
  int j = atomic_load_explicit(&journald, memory_order_relaxed);
  if (j < 0) {
    j = detect_journald();
    atomic_store_explicit(&journald, j, memory_order_relaxed);
  }
  return j;
}

/* ---- quoting (the writer's side of the convention) ----------------------------------------- */

/* [A-Za-z0-9_.-] (a table: pc_log_key runs for every access-log field) */
static const unsigned char key_tab[256] = {
    ['-'] = 1, ['.'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1,
    ['6'] = 1, ['7'] = 1, ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1,
    ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1,
    ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1,
    ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['_'] = 1, ['a'] = 1,
    ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1,
    ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1,
    ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1,
    ['z'] = 1,
};

static int is_key_char(unsigned char c)
{
  return key_tab[c];
}

/* 1 for a character a value may hold unquoted: > ' ', < 0x7f, not '"', '\\' or '=' (a table:
 * pc_log_quote runs for every access-log field) */
static const unsigned char plain_tab[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

static const char hexdig[] = "0123456789abcdef";

size_t pc_log_quote(char *dst, size_t dstlen, const char *value, size_t max)
{
  size_t n = strlen(value);
  size_t take = n > max ? max : n;
  int quote = take == 0;
  unsigned plain = 1;
  size_t i = 0;
  /* 8 bytes at a time. Outside 0x21..0x7e: a lane below 0x21 has its top bit set by x - 0x21,
   * one at 0x7f by x + 1, one at or above 0x80 already (a borrow or carry between lanes only
   * starts at a lane that is outside itself); then '"', '\\' and '=' as zero lanes of x ^ c. */
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  uint64_t bad = 0;
  for (; i + 8 <= take; i += 8) {
    uint64_t x, dq, db, de;
    memcpy(&x, value + i, 8);
    dq = x ^ (ones * '"'), db = x ^ (ones * '\\'), de = x ^ (ones * '=');
    bad |= ((x - ones * 0x21) | x | (x + ones) | ((dq - ones) & ~dq) | ((db - ones) & ~db) |
            ((de - ones) & ~de)) &
           highs;
  }
  plain = !bad;
  for (; i < take; i++)
    plain &= plain_tab[(unsigned char)value[i]];
  quote |= !plain;
  if (!quote && take == n && take < dstlen) { /* as is: the common case */
    memcpy(dst, value, take);
    dst[take] = '\0';
    return take;
  }

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
  for (i = 0; i < take; i++) {
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

/* ---- the text format ----------------------------------------------------------------------- */

/* "2026-11-25T14:36:24.123Z" (UTC, milliseconds); out has room for 32 bytes. */
static void timestamp(char *out)
{
  /* the seconds part is formatted once per second per thread (strftime costs ~900
   * instructions, a line of the access log ~2,000 in all) */
  static _Thread_local time_t last_sec = -1;
  static _Thread_local char last[24];
  static _Thread_local size_t last_n;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != last_sec) {
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    last_n = strftime(last, sizeof(last), "%Y-%m-%dT%H:%M:%S", &tm);
    last_sec = ts.tv_sec;
  }
  size_t n = last_n;
  memcpy(out, last, n);
  int ms = (int)(ts.tv_nsec / 1000000);
  out[n++] = '.';
  out[n++] = (char)('0' + ms / 100);
  out[n++] = (char)('0' + ms / 10 % 10);
  out[n++] = (char)('0' + ms % 10);
  out[n++] = 'Z';
  out[n] = '\0';
}

/* The message as is, except control characters (which could end the line or fool a terminal)
 * as \xHH; an escape is never cut. Returns the bytes written to dst (at most cap). */
static size_t text_body(char *dst, size_t cap, const char *msg, size_t mlen)
{
  size_t o = 0;
  if (mlen <= cap) { /* the common case: no control character, copied as is */
    /* 8 bytes at a time: a byte below 0x20 ("has less than", exact below 128: a byte >= 0x80
     * has its top bit set and is masked out by ~w), or 0x7f (a zero byte of w ^ 0x7f..7f). */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t ctl = 0;
    size_t i = 0;
    for (; i + 8 <= mlen; i += 8) {
      uint64_t w, d;
      memcpy(&w, msg + i, 8);
      d = w ^ (ones * 0x7f);
      ctl |= ((w - ones * 0x20) & ~w & highs) | ((d - ones) & ~d & highs);
    }
    for (; i < mlen; i++) {
      unsigned char c = (unsigned char)msg[i];
      ctl |= c < ' ' || c == 0x7f;
    }
    if (!ctl) {
      memcpy(dst, msg, mlen);
      return mlen;
    }
  }
  for (size_t i = 0; i < mlen; i++) {
    unsigned char c = (unsigned char)msg[i];
    if (c >= ' ' && c != 0x7f) {
      if (o + 1 > cap)
        break;
      dst[o++] = (char)c;
    } else {
      if (o + 4 > cap)
        break;
      dst[o++] = '\\';
      dst[o++] = 'x';
      dst[o++] = hexdig[c >> 4];
      dst[o++] = hexdig[c & 15];
    }
  }
  return o;
}

/* ---- the JSON format: parsing the convention back ------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when the byte at s does not start one
 * (overlong forms, surrogates and code points above U+10FFFF are invalid, as for jansson). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
  unsigned char c = s[0];
  if (c < 0x80)
    return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xbf;
  if (c >= 0xc2 && c <= 0xdf)
    len = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0)
      lo = 0xa0;
    else if (c == 0xed)
      hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0)
      lo = 0x90;
    else if (c == 0xf4)
      hi = 0x8f;
  } else
    return 0;
  if (n < len || s[1] < lo || s[1] > hi)
    return 0;
  for (size_t i = 2; i < len; i++)
    if (s[i] < 0x80 || s[i] > 0xbf)
      return 0;
  return len;
}

/* A JSON string of s[0..n) (which may hold NULs); bytes that are not valid UTF-8 become the
 * four characters \xHH, so that nothing is lost and jansson accepts the string. scratch has
 * room for 4 * n bytes. NULL when jansson fails. */
static json_t *jstr(const char *s, size_t n, char *scratch)
{
  const unsigned char *u = (const unsigned char *)s;
  size_t i = 0, len;
  while (i < n && (len = utf8_len(u + i, n - i)) != 0)
    i += len;
  if (i == n)
    return json_stringn(s, n);
  size_t o = 0;
  memcpy(scratch, s, i);
  o = i;
  while (i < n) {
    len = utf8_len(u + i, n - i);
    if (len) {
      memcpy(scratch + o, s + i, len);
      o += len;
      i += len;
    } else {
      scratch[o++] = '\\';
      scratch[o++] = 'x';
      scratch[o++] = hexdig[u[i] >> 4];
      scratch[o++] = hexdig[u[i] & 15];
      i++;
    }
  }
  return json_stringn(scratch, o);
}

/* A plain decimal integer: optional '-', no leading zero (but "0"), no "-0", fits int64. The
 * form is checked here; the number itself is pc_parse_i64's. */
static int parse_int(const char *s, size_t n, json_int_t *out)
{
  int neg = n && s[0] == '-';
  size_t i = (size_t)neg;
  int64_t v;
  if (i == n || (s[i] == '0' && (n - i > 1 || neg)))
    return 0;
  if (pc_parse_i64_n(s, n, INT64_MIN, INT64_MAX, &v) < 0)
    return 0;
  *out = (json_int_t)v;
  return 1;
}

/* Undo pc_log_quote: s points at the opening quote. Writes the value to out (room for end - s
 * bytes), sets *olen and returns the position just past the closing quote; NULL when this is
 * not a well-formed quoted value (unterminated, unknown escape, raw control character). */
static const char *unquote(const char *s, const char *end, char *out, size_t *olen)
{
  size_t o = 0;
  for (s++; s < end; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"') {
      *olen = o;
      return s + 1;
    }
    if (c < ' ' || c == 0x7f)
      return NULL;
    if (c != '\\') {
      out[o++] = (char)c;
      continue;
    }
    if (++s >= end)
      return NULL;
    if (*s == '"' || *s == '\\') {
      out[o++] = *s;
    } else if (*s == 'x' && end - s >= 3 && pc_hexval(s[1]) >= 0 && pc_hexval(s[2]) >= 0) {
      out[o++] = (char)(pc_hexval(s[1]) * 16 + pc_hexval(s[2]));
      s += 2;
    } else {
      return NULL;
    }
  }
  return NULL;
}

/* Names the line itself uses, which a message's keys cannot take. */
static int key_taken(json_t *o, const char *k)
{
  return json_object_get(o, k) || !strcmp(k, "msg") || !strcmp(k, "truncated");
}

/* Add k (klen <= PC_LOG_KEY_MAX) = v (stolen); a key already present (or reserved) gets the
 * first free suffix _2, _3, ... so that no field is lost or overwritten. */
static int add_field(json_t *o, const char *k, size_t klen, json_t *v)
{
  char key[PC_LOG_KEY_MAX + 16];
  memcpy(key, k, klen);
  key[klen] = '\0';
  for (unsigned i = 2; key_taken(o, key); i++)
    snprintf(key + klen, sizeof(key) - klen, "_%u", i);
  return json_object_set_new(o, key, v);
}

/* The JSON object for one message (see pc.h for the convention). cut: the message was cut, so
 * an unquoted value that reaches its end may be incomplete and goes to "msg" as free text.
 * scratch has room for 5 * mlen bytes. NULL when jansson fails. */
static json_t *msg_to_json(int lvl, const char *ts, const char *msg, size_t mlen, int cut,
                           char *scratch)
{
  json_t *o = json_object();
  char *vbuf = scratch, *sbuf = scratch + mlen;
  const char *p = msg, *end = msg + mlen;
  int bad = !o;

  if (!bad) {
    bad |= json_object_set_new(o, "ts", json_string(ts));
    bad |= json_object_set_new(o, "level", json_string(level_names[lvl]));
    const char *e = memchr(p, ' ', mlen);
    if (!e)
      e = end;
    bad |= json_object_set_new(o, "event", jstr(p, (size_t)(e - p), sbuf));
    p = e;
  }
  while (!bad) {
    while (p < end && *p == ' ')
      p++;
    if (p == end)
      break;
    const char *tok = p;
    while (p < end && is_key_char((unsigned char)*p))
      p++;
    size_t klen = (size_t)(p - tok);
    json_t *v = NULL;
    if (klen && klen <= PC_LOG_KEY_MAX && p < end && *p == '=') {
      p++;
      if (p < end && *p == '"') {
        size_t vl = 0;
        const char *q = unquote(p, end, vbuf, &vl);
        if (q && (q == end || *q == ' ')) {
          v = jstr(vbuf, vl, sbuf);
          bad |= !v;
          p = q;
        }
      } else {
        const char *vs = p;
        while (p < end && (unsigned char)*p > ' ' && *p != 0x7f && *p != '"')
          p++;
        json_int_t iv;
        if ((p == end && !cut) || (p < end && *p == ' ')) {
          v = parse_int(vs, (size_t)(p - vs), &iv) ? json_integer(iv)
                                                   : jstr(vs, (size_t)(p - vs), sbuf);
          bad |= !v;
        }
      }
    }
    if (bad)
      break;
    if (!v) {
      /* Free text: everything from this token on, verbatim. */
      bad |= json_object_set_new(o, "msg", jstr(tok, (size_t)(end - tok), sbuf));
      break;
    }
    bad |= add_field(o, tok, klen, v);
  }
  if (!bad && cut)
    bad |= json_object_set_new(o, "truncated", json_true());
  if (bad) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* Dump the line for msg[0..mlen) into dst (cap bytes); returns the length it needs (which may
 * exceed cap: then dst holds a partial dump), or 0 when jansson failed. */
static size_t json_render(char *dst, size_t cap, int lvl, const char *ts, const char *msg,
                          size_t mlen, int cut, char *scratch)
{
  json_t *o = msg_to_json(lvl, ts, msg, mlen, cut, scratch);
  if (!o)
    return 0;
  size_t n = json_dumpb(o, dst, cap, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(o);
  return n;
}

/* The JSON body of a line into dst (room bytes); 0 when it cannot be built (the caller writes
 * the text format instead). */
static size_t json_body(char *dst, size_t room, int lvl, const char *msg, size_t mlen, int cut)
{
  char ts[32];
  timestamp(ts);
  /* Plain malloc, not pc_xmalloc: the out-of-memory report itself comes through here. */
  char *scratch = malloc(5 * mlen + 8);
  if (!scratch)
    return 0;
  size_t n = json_render(dst, room, lvl, ts, msg, mlen, cut, scratch);
  if (n > room) {
    /* Too long: the longest message prefix whose line fits (length 0 always fits: ts, level,
     * an empty event and "truncated"; PC_LOG_LINE_MAX is far above that). */
    size_t lo = 0, hi = mlen;
    while (n && hi - lo > 1) {
      size_t mid = lo + (hi - lo) / 2;
      n = json_render(dst, room, lvl, ts, msg, mid, 1, scratch);
      if (n && n <= room)
        lo = mid;
      else
        hi = mid;
    }
    if (n)
      n = json_render(dst, room, lvl, ts, msg, lo, 1, scratch);
    if (n > room)
      n = 0;
  }
  free(scratch);
  return n;
}

/* ---- output -------------------------------------------------------------------------------- */

static void write_all(const char *p, size_t n)
{
  while (n) {
    ssize_t w = write(STDERR_FILENO, p, n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

/* One line for msg[0..mlen) at level lvl; cut: the message was cut to fit its buffer. */
static void emit(int lvl, const char *msg, size_t mlen, int cut, int plain)
{
  char line[PC_LOG_LINE_MAX];
  size_t len = 0, body = 0;
  int jd = pc_log_journald();
  int json = atomic_load_explicit(&pc_log_format, memory_order_relaxed) == PC_LOG_JSON;

  if (lvl < 0)
    lvl = 0;
  if (lvl > 7)
    lvl = 7;
  if (jd) {
    line[len++] = '<';
    line[len++] = (char)('0' + lvl);
    line[len++] = '>';
  }
  if (json)
    body = json_body(line + len, sizeof(line) - len - 1, lvl, msg, mlen, cut);
  if (!body) {
    if (!jd) {
      timestamp(line + len);
      len += strlen(line + len);
      size_t ln = strlen(level_names[lvl]);
      line[len++] = ' ';
      memcpy(line + len, level_names[lvl], ln);
      len += ln;
      line[len++] = ' ';
    }
    size_t cap = sizeof(line) - len - 1;
    if (plain && mlen <= cap) { /* no control character in it: nothing to escape, no scan */
      memcpy(line + len, msg, mlen);
      body = mlen;
    } else {
      body = text_body(line + len, cap, msg, mlen);
    }
  }
  len += body;
  line[len++] = '\n';
  write_all(line, len);
}

void pc__log(int lvl, const char *fmt, ...)
{
  int saved = errno;
  char msg[PC_LOG_LINE_MAX];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (n < 0)
    n = 0;
  int cut = (size_t)n >= sizeof(msg);
  emit(lvl, msg, cut ? sizeof(msg) - 1 : (size_t)n, cut, 0);
  errno = saved;
}

void pc__log_str(int lvl, const char *msg, size_t len)
{
  int saved = errno;
  int cut = len >= PC_LOG_LINE_MAX;
  emit(lvl, msg, cut ? PC_LOG_LINE_MAX - 1 : len, cut, 0);
  errno = saved;
}

void pc__log_str_plain(int lvl, const char *msg, size_t len)
{
  int saved = errno;
  int cut = len >= PC_LOG_LINE_MAX;
  emit(lvl, msg, cut ? PC_LOG_LINE_MAX - 1 : len, cut, 1);
  errno = saved;
}

/* "fatal file=F line=N reason=R", the reason last: when a long one is cut, the file and line
 * still come out as fields. */
_Noreturn void pc__fatal(const char *file, int line, const char *fmt, ...)
{
  char why[PC_LOG_LINE_MAX], msg[PC_LOG_LINE_MAX];
  char qf[PC_LOG_QUOTE_SIZE(FATAL_FILE_MAX)], qr[PC_LOG_QUOTE_SIZE(PC_LOG_LINE_MAX)];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof(why), fmt, ap);
  va_end(ap);
  pc_log_quote(qf, sizeof(qf), file, FATAL_FILE_MAX);
  pc_log_quote(qr, sizeof(qr), why, sizeof(why));
  int n = snprintf(msg, sizeof(msg), "fatal file=%s line=%d reason=%s", qf, line, qr);
  if (n < 0)
    n = 0;
  int cut = (size_t)n >= sizeof(msg);
  emit(2, msg, cut ? sizeof(msg) - 1 : (size_t)n, cut, 0);
  abort();
}
