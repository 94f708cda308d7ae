/* Tests for core logging (core/log.c): line prefixes, the text and JSON formats, quoting, the
 * parser of the key=value convention, the line cap and level filtering.
 *
 * Each test points fd 2 at a temp file (cap_start), logs, restores fd 2 (cap_end) and only
 * then asserts, so that a failure message is not written into the captured log. */
#include "tests/unit/unit.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char cap_path[512];
static int cap_saved = -1;

/* Strings handed out by cap_end and line_at, freed together by arena_free at a test's end. */
static void *arena[64];
static size_t narena;

static char *keep(char *p)
{
  ASSERT(narena < PC_ARRAY_SIZE(arena));
  arena[narena++] = p;
  return p;
}

static void arena_free(void)
{
  while (narena)
    free(arena[--narena]);
}

/* fd 2 -> a fresh temp file (O_APPEND). */
static void cap_start(void)
{
  snprintf(cap_path, sizeof(cap_path), "%s/log", unit_tmpdir());
  int fd = open(cap_path, O_CREAT | O_WRONLY | O_TRUNC | O_APPEND, 0600);
  ASSERT(fd >= 0);
  fflush(stderr);
  cap_saved = dup(2);
  ASSERT(cap_saved >= 0);
  ASSERT_EQ(2, dup2(fd, 2));
  close(fd);
}

/* Restore fd 2; returns what was written (NUL-terminated; *len without the NUL). */
static char *cap_end(size_t *len)
{
  fflush(stderr);
  dup2(cap_saved, 2);
  close(cap_saved);
  cap_saved = -1;
  FILE *f = fopen(cap_path, "rb");
  ASSERT(f);
  size_t cap = 1 << 16, n = 0;
  char *buf = pc_xmalloc(cap);
  for (;;) {
    n += fread(buf + n, 1, cap - n - 1, f);
    if (n < cap - 1)
      break;
    cap *= 2;
    buf = pc_xrealloc(buf, cap);
  }
  fclose(f);
  buf[n] = '\0';
  if (len)
    *len = n;
  return keep(buf);
}

/* Set $JOURNAL_STREAM to what fd 2 is now (the journal, as far as the logger can tell). */
static void pretend_journald(void)
{
  struct stat st;
  char v[64];
  ASSERT_EQ(0, fstat(2, &st));
  snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  ASSERT_EQ(0, setenv("JOURNAL_STREAM", v, 1));
}

static size_t count_lines(const char *s)
{
  size_t n = 0;
  for (; *s; s++)
    n += *s == '\n';
  return n;
}

/* Line i (0-based) of s, copied (without its newline); valid until arena_free. */
static char *line_at(const char *s, size_t i)
{
  for (; i; i--) {
    s = strchr(s, '\n');
    ASSERT(s);
    s++;
  }
  const char *e = strchr(s, '\n');
  ASSERT(e);
  return keep(pc_xstrndup(s, (size_t)(e - s)));
}

static int matches(const char *re, const char *s)
{
  regex_t rx;
  ASSERT_EQ(0, regcomp(&rx, re, REG_EXTENDED | REG_NOSUB));
  int ok = regexec(&rx, s, 0, NULL, 0) == 0;
  regfree(&rx);
  return ok;
}

/* Parse a JSON line (an optional "<N>" prefix is checked and skipped); fails the test when it
 * is not exactly one JSON object. */
static json_t *parse_line(const char *line, int want_prio)
{
  if (want_prio >= 0) {
    char p[16];
    snprintf(p, sizeof(p), "<%d>", want_prio);
    ASSERT(strncmp(line, p, 3) == 0);
    line += 3;
  }
  json_error_t err;
  json_t *o = json_loads(line, 0, &err);
  if (!o)
    unit__fail(__FILE__, __LINE__, "not JSON (%s): %s", err.text, line);
  ASSERT(json_is_object(o));
  return o;
}

/* o's keys are exactly keys (NULL-terminated), in this order. */
static void expect_keys(json_t *o, const char *const *keys)
{
  size_t i = 0;
  const char *k;
  json_t *v;
  json_object_foreach(o, k, v)
  {
    (void)v;
    if (!keys[i])
      unit__fail(__FILE__, __LINE__, "unexpected key %s", k);
    ASSERT_STREQ(keys[i], k);
    i++;
  }
  if (keys[i])
    unit__fail(__FILE__, __LINE__, "missing key %s", keys[i]);
}

static const char *jget_str(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  if (!json_is_string(v))
    unit__fail(__FILE__, __LINE__, "%s is not a string", k);
  return json_string_value(v);
}

static long long jget_int(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  if (!json_is_integer(v))
    unit__fail(__FILE__, __LINE__, "%s is not an integer", k);
  return json_integer_value(v);
}

/* A string field equals the n bytes at want (which may hold NULs). */
static void expect_strn(json_t *o, const char *k, const char *want, size_t n)
{
  json_t *v = json_object_get(o, k);
  if (!json_is_string(v))
    unit__fail(__FILE__, __LINE__, "%s is not a string", k);
  if (json_string_length(v) != n || memcmp(json_string_value(v), want, n) != 0)
    unit__fail(__FILE__, __LINE__, "%s = \"%s\", want \"%.*s\"", k, json_string_value(v), (int)n,
               want);
}

#define TS_RE "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z"

/* ---- text ---------------------------------------------------------------------------------- */

TEST(text_prefix_timestamp)
{
  unsetenv("JOURNAL_STREAM");
  pc_log_level = PC_LOG_DEBUG;
  cap_start();
  pc_log_setup(PC_LOG_TEXT);
  time_t before = time(NULL);
  pc_log(PC_LOG_NOTICE, "pullcache ready listen=%s:%d", "127.0.0.1", 5000);
  pc_log(PC_LOG_ERR, "e a=1");
  pc_log(PC_LOG_WARN, "w");
  pc_log(PC_LOG_INFO, "i");
  pc_log(PC_LOG_DEBUG, "d");
  time_t after = time(NULL);
  int jd = pc_log_journald();
  char *out = cap_end(NULL);

  ASSERT_EQ(0, jd);
  ASSERT_EQ(5, count_lines(out));
  char *l0 = line_at(out, 0);
  ASSERT(matches("^" TS_RE " notice pullcache ready listen=127\\.0\\.0\\.1:5000$", l0));
  ASSERT(matches("^" TS_RE " err e a=1$", line_at(out, 1)));
  ASSERT(matches("^" TS_RE " warn w$", line_at(out, 2)));
  ASSERT(matches("^" TS_RE " info i$", line_at(out, 3)));
  ASSERT(matches("^" TS_RE " debug d$", line_at(out, 4)));
  /* The timestamp is UTC and now. */
  struct tm tm = {0};
  ASSERT(strptime(l0, "%Y-%m-%dT%H:%M:%S", &tm) != NULL);
  time_t t = timegm(&tm);
  ASSERT(t >= before && t <= after);
  arena_free();
}

TEST(text_journald)
{
  pc_log_level = PC_LOG_DEBUG;
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_TEXT);
  int jd = pc_log_journald();
  pc_log(PC_LOG_ERR, "store: lmdb %s: %s", "put", "MDB_MAP_FULL");
  pc_log(PC_LOG_WARN, "srv accept failed err=%s", "EMFILE");
  pc_log(PC_LOG_NOTICE, "pullcache ready listen=127.0.0.1:5000");
  pc_log(PC_LOG_INFO, "req method=GET path=/v2/ status=200 bytes=0 ms=1 peer=127.0.0.1:9");
  pc_log(PC_LOG_DEBUG, "d");
  char *out = cap_end(NULL);

  ASSERT_EQ(1, jd);
  ASSERT_STREQ("<3>store: lmdb put: MDB_MAP_FULL\n"
               "<4>srv accept failed err=EMFILE\n"
               "<5>pullcache ready listen=127.0.0.1:5000\n"
               "<6>req method=GET path=/v2/ status=200 bytes=0 ms=1 peer=127.0.0.1:9\n"
               "<7>d\n",
               out);
  arena_free();
}

/* $JOURNAL_STREAM inherited by a process whose stderr went elsewhere: not the journal. */
TEST(text_journal_stream_mismatch)
{
  cap_start();
  struct stat st;
  char v[64];
  ASSERT_EQ(0, fstat(2, &st));
  snprintf(v, sizeof(v), "%llu:%llu", (unsigned long long)st.st_dev,
           (unsigned long long)st.st_ino + 1);
  setenv("JOURNAL_STREAM", v, 1);
  pc_log_setup(PC_LOG_TEXT);
  int jd1 = pc_log_journald();
  setenv("JOURNAL_STREAM", "garbage", 1);
  pc_log_setup(PC_LOG_TEXT);
  int jd2 = pc_log_journald();
  pc_log(PC_LOG_INFO, "x");
  char *out = cap_end(NULL);
  ASSERT_EQ(0, jd1);
  ASSERT_EQ(0, jd2);
  ASSERT(matches("^" TS_RE " info x\n$", out));
  arena_free();
}

/* Without pc_log_setup, journald is still detected (on the first line). */
TEST(text_journald_without_setup)
{
  cap_start();
  pretend_journald();
  pc_log(PC_LOG_INFO, "x a=1");
  char *out = cap_end(NULL);
  ASSERT_STREQ("<6>x a=1\n", out);
  arena_free();
}

/* A raw %s (not quoted by its caller) cannot start a second line in the text format. */
TEST(text_control_chars_escaped)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_TEXT);
  pc_log(PC_LOG_INFO, "up: bad url=%s", "x\n<0>fake\r\t\x7f\x01 y\xc3\xa9");
  char *out = cap_end(NULL);
  ASSERT_STREQ("<6>up: bad url=x\\x0a<0>fake\\x0d\\x09\\x7f\\x01 y\xc3\xa9\n", out);
  arena_free();
}

/* The text line's fast path checks 8 bytes at a time: a control character (or DEL) at every
 * position of a word and in the tail is still escaped; bytes >= 0x80 and the rest pass as is.
 * pc_log_str takes the same path without formatting. */
TEST(text_control_char_every_position)
{
  static const unsigned char bad[] = {0x00 + 1, 0x09, 0x0a, 0x1f, 0x7f};
  unsetenv("JOURNAL_STREAM");
  for (size_t k = 0; k < sizeof(bad); k++) {
    for (size_t pos = 0; pos < 19; pos++) {
      char msg[20], want[64];
      memset(msg, 'a', 19);
      msg[19] = '\0';
      msg[pos] = (char)bad[k];
      msg[(pos + 9) % 19] = (char)0xc3; /* a high byte elsewhere: no false alarm, no miss */
      size_t o = 0;
      memcpy(want, "<6>", 3), o = 3;
      for (size_t i = 0; i < 19; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c == 0x7f)
          o += (size_t)snprintf(want + o, sizeof(want) - o, "\\x%02x", c);
        else
          want[o++] = (char)c;
      }
      want[o++] = '\n';
      want[o] = '\0';
      cap_start();
      pretend_journald();
      pc_log_setup(PC_LOG_TEXT);
      if (pos % 2)
        pc_log_str(PC_LOG_INFO, msg, 19);
      else
        pc_log(PC_LOG_INFO, "%s", msg);
      char *out = cap_end(NULL);
      ASSERT_STREQ(want, out);
      arena_free();
    }
  }
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_TEXT);
  pc_log_str(PC_LOG_INFO, "plain words only", 16);
  char *out = cap_end(NULL);
  ASSERT_STREQ("<6>plain words only\n", out);
  arena_free();
}

TEST(text_long_line_capped)
{
  char big[3 * PC_LOG_LINE_MAX];
  memset(big, 'a', sizeof(big) - 1);
  big[sizeof(big) - 1] = '\0';
  char ctl[PC_LOG_LINE_MAX];
  memset(ctl, '\n', sizeof(ctl) - 1);
  ctl[sizeof(ctl) - 1] = '\0';
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_TEXT);
  pc_log(PC_LOG_INFO, "ev v=%s", big);
  pc_log(PC_LOG_INFO, "ev v=%s", ctl);
  pc_log(PC_LOG_INFO, "after");
  size_t len;
  char *out = cap_end(&len);
  ASSERT_EQ(3, count_lines(out));
  char *l0 = line_at(out, 0), *l1 = line_at(out, 1);
  ASSERT_EQ(PC_LOG_LINE_MAX - 1, strlen(l0));
  ASSERT(strlen(l1) <= PC_LOG_LINE_MAX - 1);
  ASSERT(strlen(l1) > PC_LOG_LINE_MAX - 5); /* only whole escapes: 4 bytes each */
  ASSERT(matches("(\\\\x0a)+$", l1));
  ASSERT(matches(" info after$", line_at(out, 2)));
  arena_free();
}

/* ---- quoting ------------------------------------------------------------------------------- */

static char *quoted(const char *v, size_t max)
{
  static char buf[PC_LOG_QUOTE_SIZE(64)];
  size_t n = pc_log_quote(buf, sizeof(buf), v, max);
  ASSERT_EQ(strlen(buf), n);
  return buf;
}

TEST(quote)
{
  ASSERT_STREQ("abc", quoted("abc", 64));
  ASSERT_STREQ("/v2/library/alpine/blobs/sha256:00ff",
               quoted("/v2/library/alpine/blobs/sha256:00ff", 64));
  ASSERT_STREQ("\"\"", quoted("", 64));
  ASSERT_STREQ("\"a b\"", quoted("a b", 64));
  ASSERT_STREQ("\"a=b\"", quoted("a=b", 64));
  ASSERT_STREQ("\"a\\\"b\\\\c\"", quoted("a\"b\\c", 64));
  ASSERT_STREQ("\"\\x0a<0>fake\"", quoted("\n<0>fake", 64));
  ASSERT_STREQ("\"\\x01\\x7f\\xc3\\xa9\"", quoted("\x01\x7f\xc3\xa9", 64));
  ASSERT_STREQ("\" key=evil\"", quoted(" key=evil", 64));
  /* Cut at max bytes, "..." inside the quotes; the quoting looks only at what is kept. */
  ASSERT_STREQ("abc...", quoted("abcdef", 3));
  ASSERT_STREQ("\"a b...\"", quoted("a bcdef", 3));
  ASSERT_STREQ("abc...", quoted("abc def", 3));
  ASSERT_STREQ("\"...\"", quoted("abc", 0));
  ASSERT_STREQ("abc", quoted("abc", 3));

  /* snprintf-like: the whole length is returned, dst is always terminated. */
  char small[4];
  ASSERT_EQ(7, pc_log_quote(small, sizeof(small), "a b\"", 64));
  ASSERT_EQ(3, strlen(small));
  ASSERT_EQ(7, pc_log_quote(NULL, 0, "a b\"", 64));
  /* The worst case fits PC_LOG_QUOTE_SIZE. */
  char worst[65], wbuf[PC_LOG_QUOTE_SIZE(64)];
  memset(worst, '\x01', 64);
  worst[64] = '\0';
  ASSERT_EQ(2 + 4 * 64, pc_log_quote(wbuf, sizeof(wbuf), worst, 64));
  memset(worst, '\x01', 64);
  ASSERT(pc_log_quote(wbuf, sizeof(wbuf), worst, 63) < sizeof(wbuf));

  char k[PC_LOG_KEY_MAX + 8];
  ASSERT_EQ(5, pc_log_key(k, sizeof(k), "cache"));
  ASSERT_STREQ("cache", k);
  ASSERT_EQ(8, pc_log_key(k, sizeof(k), "a b=c\"d\n"));
  ASSERT_STREQ("a_b_c_d_", k);
  ASSERT_EQ(0, pc_log_key(k, sizeof(k), ""));
  char longkey[200];
  memset(longkey, 'k', sizeof(longkey) - 1);
  longkey[sizeof(longkey) - 1] = '\0';
  ASSERT_EQ(PC_LOG_KEY_MAX, pc_log_key(k, sizeof(k), longkey));
  ASSERT_EQ(3, pc_log_key(k, 4, longkey));
  arena_free();
}

/* Every byte value at every position of a value long enough for the word-at-a-time check:
 * quoted exactly when the byte is not plain (the table and the words agree). */
TEST(quote_every_byte_every_position)
{
  char v[24], out[PC_LOG_QUOTE_SIZE(sizeof(v))];
  for (int b = 1; b < 256; b++) {
    int plain = b > ' ' && b < 0x7f && b != '"' && b != '\\' && b != '=';
    for (size_t pos = 0; pos < sizeof(v) - 1; pos++) {
      memset(v, 'a', sizeof(v) - 1);
      v[sizeof(v) - 1] = '\0';
      v[pos] = (char)b;
      size_t n = pc_log_quote(out, sizeof(out), v, sizeof(v));
      ASSERT(n < sizeof(out));
      ASSERT_EQ(plain ? 0 : 1, out[0] == '"');
    }
  }
}

/* ---- JSON ---------------------------------------------------------------------------------- */

TEST(json_shape)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_INFO, "req method=GET path=/v2/ status=200 bytes=123 ms=4 peer=127.0.0.1:5");
  char *out = cap_end(NULL);

  ASSERT_EQ(1, count_lines(out));
  ASSERT(matches("^\\{\"ts\":\"" TS_RE "\",\"level\":\"info\",\"event\":\"req\",\"method\":\"GET\","
                 "\"path\":\"/v2/\",\"status\":200,\"bytes\":123,\"ms\":4,"
                 "\"peer\":\"127\\.0\\.0\\.1:5\"\\}\n$",
                 out));
  arena_free();
}

TEST(json_journald)
{
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_WARN, "timeout url=%s phase=body", "http://u/x");
  char *out = cap_end(NULL);
  ASSERT_EQ(1, count_lines(out));
  json_t *o = parse_line(line_at(out, 0), 4);
  expect_keys(o, (const char *const[]){"ts", "level", "event", "url", "phase", NULL});
  ASSERT(matches("^" TS_RE "$", jget_str(o, "ts")));
  ASSERT_STREQ("warn", jget_str(o, "level"));
  ASSERT_STREQ("timeout", jget_str(o, "event"));
  ASSERT_STREQ("http://u/x", jget_str(o, "url"));
  ASSERT_STREQ("body", jget_str(o, "phase"));
  json_decref(o);
  arena_free();
}

TEST(json_values)
{
  /* Values a client or upstream could send, quoted as srv.c quotes them. */
  static const struct {
    const char *s;
    size_t n;
  } vals[] = {
      {"a b", 3},
      {"say \"hi\"", 8},
      {"back\\slash\\", 11},
      {"line\nbreak\r\n", 12},
      {"\x01\x02\x1f\x7f", 4},
      {"tab\there", 8},
      {"x=y z=w", 7},
      {"\xc3\xa9t\xc3\xa9 \xe2\x82\xac", 9},
      {"", 0},
      {"-", 1},
      {" key=evil", 9},
  };
  char msg[4096];
  size_t o = (size_t)snprintf(msg, sizeof(msg), "ev");
  for (size_t i = 0; i < PC_ARRAY_SIZE(vals); i++) {
    o += (size_t)snprintf(msg + o, sizeof(msg) - o, " v%zu=", i);
    o += pc_log_quote(msg + o, sizeof(msg) - o, vals[i].s, 64);
  }
  ASSERT(o < sizeof(msg));

  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_INFO, "%s", msg);
  pc_log(PC_LOG_INFO,
         "ints a=0 b=-5 c=200 max=9223372036854775807 min=-9223372036854775808 "
         "over=9223372036854775808 under=-9223372036854775809 lead=007 negzero=-0 plus=+1 "
         "hex=0x10 float=1.5 dash=- empty= q=\"12\" e=1e3");
  pc_log(PC_LOG_INFO, "raw path=/v2/x?a=b&c=d d=%s digest=sha256:%s", "\xc3\xa9", "ab");
  pc_log(PC_LOG_INFO, "bad v=\"\\xff\\xfe\" w=\xff ok=1");
  char *out = cap_end(NULL);
  ASSERT_EQ(4, count_lines(out));

  json_t *j = parse_line(line_at(out, 0), -1);
  ASSERT_STREQ("ev", jget_str(j, "event"));
  ASSERT_EQ(3 + PC_ARRAY_SIZE(vals), json_object_size(j));
  for (size_t i = 0; i < PC_ARRAY_SIZE(vals); i++) {
    char k[16];
    snprintf(k, sizeof(k), "v%zu", i);
    expect_strn(j, k, vals[i].s, vals[i].n);
  }
  json_decref(j);

  j = parse_line(line_at(out, 1), -1);
  ASSERT_EQ(0, jget_int(j, "a"));
  ASSERT_EQ(-5, jget_int(j, "b"));
  ASSERT_EQ(200, jget_int(j, "c"));
  ASSERT(jget_int(j, "max") == INT64_MAX);
  ASSERT(jget_int(j, "min") == INT64_MIN);
  ASSERT_STREQ("9223372036854775808", jget_str(j, "over"));
  ASSERT_STREQ("-9223372036854775809", jget_str(j, "under"));
  ASSERT_STREQ("007", jget_str(j, "lead"));
  ASSERT_STREQ("-0", jget_str(j, "negzero"));
  ASSERT_STREQ("+1", jget_str(j, "plus"));
  ASSERT_STREQ("0x10", jget_str(j, "hex"));
  ASSERT_STREQ("1.5", jget_str(j, "float"));
  ASSERT_STREQ("-", jget_str(j, "dash"));
  ASSERT_STREQ("", jget_str(j, "empty"));
  ASSERT_STREQ("12", jget_str(j, "q")); /* quoted: always a string */
  ASSERT_STREQ("1e3", jget_str(j, "e"));
  ASSERT(json_object_get(j, "msg") == NULL);
  json_decref(j);

  j = parse_line(line_at(out, 2), -1);
  ASSERT_STREQ("/v2/x?a=b&c=d", jget_str(j, "path")); /* '=' inside an unquoted value */
  ASSERT_STREQ("\xc3\xa9", jget_str(j, "d"));         /* raw UTF-8 */
  ASSERT_STREQ("sha256:ab", jget_str(j, "digest"));
  json_decref(j);

  /* Bytes that are not UTF-8 (quoted or raw) are kept as the text \xHH. */
  j = parse_line(line_at(out, 3), -1);
  ASSERT_STREQ("\\xff\\xfe", jget_str(j, "v"));
  ASSERT_STREQ("\\xff", jget_str(j, "w"));
  ASSERT_EQ(1, jget_int(j, "ok"));
  json_decref(j);
  arena_free();
}

TEST(json_free_text)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_NOTICE, "pullcache ready listen=127.0.0.1:5000 ports=5000");
  pc_log(PC_LOG_INFO, "conn a=1 b=x (closed; clients  fall back) k=v");
  pc_log(PC_LOG_INFO, "ev a=1 b=\"unterminated c=2");
  pc_log(PC_LOG_INFO, "ev a=1 b=\"bad escape \\n\" c=2");
  pc_log(PC_LOG_INFO, "ev a=1 b=\"x\"junk c=2");
  pc_log(PC_LOG_INFO, "ev a=1 b=x\"y c=2");
  pc_log(PC_LOG_INFO, "ev =1");
  pc_log(PC_LOG_INFO, "ev a=1  ");
  pc_log(PC_LOG_INFO, "lonely");
  pc_log(PC_LOG_INFO, "%s", "");
  pc_log(PC_LOG_INFO, "ev k=v trailing\nnewline");
  char *out = cap_end(NULL);
  ASSERT_EQ(11, count_lines(out));

  json_t *j = parse_line(line_at(out, 0), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "msg", NULL});
  ASSERT_STREQ("notice", jget_str(j, "level"));
  ASSERT_STREQ("pullcache", jget_str(j, "event"));
  ASSERT_STREQ("ready listen=127.0.0.1:5000 ports=5000", jget_str(j, "msg"));
  json_decref(j);

  j = parse_line(line_at(out, 1), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "a", "b", "msg", NULL});
  ASSERT_EQ(1, jget_int(j, "a"));
  ASSERT_STREQ("x", jget_str(j, "b"));
  ASSERT_STREQ("(closed; clients  fall back) k=v", jget_str(j, "msg"));
  json_decref(j);

  static const char *const rest[] = {"b=\"unterminated c=2", "b=\"bad escape \\n\" c=2",
                                     "b=\"x\"junk c=2", "b=x\"y c=2"};
  for (size_t i = 0; i < PC_ARRAY_SIZE(rest); i++) {
    j = parse_line(line_at(out, 2 + i), -1);
    expect_keys(j, (const char *const[]){"ts", "level", "event", "a", "msg", NULL});
    ASSERT_EQ(1, jget_int(j, "a"));
    ASSERT_STREQ(rest[i], jget_str(j, "msg"));
    json_decref(j);
  }

  j = parse_line(line_at(out, 6), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "msg", NULL});
  ASSERT_STREQ("=1", jget_str(j, "msg"));
  json_decref(j);

  j = parse_line(line_at(out, 7), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "a", NULL});
  json_decref(j);

  j = parse_line(line_at(out, 8), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", NULL});
  ASSERT_STREQ("lonely", jget_str(j, "event"));
  json_decref(j);

  j = parse_line(line_at(out, 9), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", NULL});
  ASSERT_STREQ("", jget_str(j, "event"));
  json_decref(j);

  j = parse_line(line_at(out, 10), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "k", "msg", NULL});
  ASSERT_STREQ("trailing\nnewline", jget_str(j, "msg"));
  json_decref(j);
  arena_free();
}

TEST(json_duplicate_keys)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_INFO, "ev a=1 a=2 ts=x level=y event=z msg=m truncated=t a_2=q a=3");
  char *out = cap_end(NULL);
  json_t *j = parse_line(line_at(out, 0), -1);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "a", "a_2", "ts_2", "level_2",
                                       "event_2", "msg_2", "truncated_2", "a_2_2", "a_3", NULL});
  ASSERT(matches("^" TS_RE "$", jget_str(j, "ts")));
  ASSERT_STREQ("info", jget_str(j, "level"));
  ASSERT_STREQ("ev", jget_str(j, "event"));
  ASSERT_EQ(1, jget_int(j, "a"));
  ASSERT_EQ(2, jget_int(j, "a_2"));
  ASSERT_STREQ("x", jget_str(j, "ts_2"));
  ASSERT_STREQ("m", jget_str(j, "msg_2"));
  ASSERT_STREQ("q", jget_str(j, "a_2_2"));
  ASSERT_EQ(3, jget_int(j, "a_3"));
  json_decref(j);
  arena_free();
}

/* A value trying to add a field or a line: quoted by srv.c's rules it stays one value, and
 * even raw it cannot add a line (in either format). */
TEST(injection)
{
  static const char *const evil[] = {" key=evil",
                                     "x key=evil",
                                     "\n<0>fake",
                                     "x\n<0>fake key=1",
                                     "\" key=evil \"",
                                     "\\\" key=evil",
                                     "\r\n{\"level\":\"emerg\"}"};
  unsetenv("JOURNAL_STREAM");
  for (int fmt = PC_LOG_TEXT; fmt <= PC_LOG_JSON; fmt++) {
    cap_start();
    pretend_journald();
    pc_log_setup(fmt);
    for (size_t i = 0; i < PC_ARRAY_SIZE(evil); i++) {
      char q[PC_LOG_QUOTE_SIZE(64)];
      pc_log_quote(q, sizeof(q), evil[i], 64);
      pc_log(PC_LOG_INFO, "req v=%s peer=p", q);
      pc_log(PC_LOG_INFO, "raw v=%s peer=p", evil[i]);
    }
    char *out = cap_end(NULL);

    ASSERT_EQ(2 * PC_ARRAY_SIZE(evil), count_lines(out));
    for (size_t i = 0; i < 2 * PC_ARRAY_SIZE(evil); i++) {
      char *l = line_at(out, i);
      ASSERT(strncmp(l, "<6>", 3) == 0);
      if (fmt == PC_LOG_TEXT) {
        for (const char *p = l; *p; p++)
          ASSERT((unsigned char)*p >= ' ' && *p != 0x7f);
        if (i % 2 == 0) {
          char want[PC_LOG_QUOTE_SIZE(64) + 32];
          size_t n = (size_t)snprintf(want, sizeof(want), "<6>req v=");
          n += pc_log_quote(want + n, sizeof(want) - n, evil[i / 2], 64);
          snprintf(want + n, sizeof(want) - n, " peer=p");
          ASSERT_STREQ(want, l);
        }
      } else {
        json_t *j = parse_line(l, 6);
        ASSERT_STREQ("info", jget_str(j, "level"));
        if (i % 2 == 0) {
          /* Quoted: exactly the one value, whatever it holds. */
          expect_keys(j, (const char *const[]){"ts", "level", "event", "v", "peer", NULL});
          ASSERT_STREQ(evil[i / 2], jget_str(j, "v"));
        }
        json_decref(j);
      }
    }
  }
  arena_free();
}

static void expect_truncated_json(const char *out, size_t nlines)
{
  ASSERT_EQ(nlines, count_lines(out));
  for (size_t i = 0; i < nlines; i++) {
    char *l = line_at(out, i);
    ASSERT(strlen(l) + 1 <= PC_LOG_LINE_MAX);
    json_t *j = parse_line(l, -1);
    ASSERT_STREQ("ev", jget_str(j, "event"));
    ASSERT(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);
  }
}

TEST(json_long_lines)
{
  /* Raw message over the cap (cut while formatting). */
  char *big = pc_xmalloc(3 * PC_LOG_LINE_MAX);
  memset(big, 'a', 3 * PC_LOG_LINE_MAX - 1);
  big[3 * PC_LOG_LINE_MAX - 1] = '\0';
  /* Fits as a message but not as JSON: control characters grow 6 times (\u0001). */
  char ctl[3000];
  memset(ctl, '\x01', sizeof(ctl) - 1);
  ctl[sizeof(ctl) - 1] = '\0';
  /* Many numeric fields, the last one to be cut. */
  char many[PC_LOG_LINE_MAX];
  size_t o = (size_t)snprintf(many, sizeof(many), "ev");
  for (int i = 0; o + 16 < sizeof(many); i++)
    o += (size_t)snprintf(many + o, sizeof(many) - o, " k%d=%d", i, 1234567);
  /* Quoted values full of escapes. */
  char q[PC_LOG_QUOTE_SIZE(800)];
  pc_log_quote(q, sizeof(q), ctl, 800);

  unsetenv("JOURNAL_STREAM");
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_INFO, "ev v=%s", big);
  pc_log(PC_LOG_INFO, "ev %s", ctl);
  pc_log(PC_LOG_INFO, "ev a=1 v=%s", ctl);
  pc_log(PC_LOG_INFO, "%s %s", many, many);
  pc_log(PC_LOG_INFO, "ev a=%s b=%s c=%s", q, q, q);
  pc_log(PC_LOG_INFO, "ev v=%s",
         "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff");
  char *out = cap_end(NULL);
  ASSERT_EQ(6, count_lines(out));

  char *l;
  json_t *j;
  for (size_t i = 0; i < 5; i++) {
    l = line_at(out, i);
    ASSERT(strlen(l) + 1 <= PC_LOG_LINE_MAX);
    ASSERT(strlen(l) + 1 > PC_LOG_LINE_MAX - 200); /* cut near the cap, not far below */
    j = parse_line(l, 6);
    ASSERT_STREQ("ev", jget_str(j, "event"));
    ASSERT(json_is_true(json_object_get(j, "truncated")));
    /* No number was shortened by the cut: every k* field is whole. */
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
      if (k[0] == 'k')
        ASSERT_EQ(1234567, json_integer_value(v));
    }
    json_decref(j);
  }
  l = line_at(out, 5);
  j = parse_line(l, 6);
  ASSERT(json_object_get(j, "truncated") == NULL);
  ASSERT_EQ(17 * 4, strlen(jget_str(j, "v")));
  json_decref(j);

  /* The first line's value was cut: an unquoted value reaching the cut goes to msg. */
  l = line_at(out, 0);
  j = parse_line(l, 6);
  expect_keys(j, (const char *const[]){"ts", "level", "event", "msg", "truncated", NULL});
  json_decref(j);
  free(big);

  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pc_log(PC_LOG_INFO, "ev %s", ctl);
  char *out2 = cap_end(NULL);
  expect_truncated_json(out2, 1);
  arena_free();
}

/* ---- levels, errno, fatal, threads --------------------------------------------------------- */

static int evaluated;

static int side_effect(void)
{
  evaluated++;
  return 1;
}

TEST(level_filter)
{
  cap_start();
  pretend_journald();
  pc_log_setup(PC_LOG_TEXT);
  pc_log_level = PC_LOG_WARN;
  pc_log(PC_LOG_DEBUG, "debug n=%d", side_effect());
  pc_log(PC_LOG_INFO, "info n=%d", side_effect());
  pc_log(PC_LOG_NOTICE, "notice n=%d", side_effect());
  pc_log(PC_LOG_WARN, "warn n=%d", side_effect());
  pc_log(PC_LOG_ERR, "err n=%d", side_effect());
  pc_log_level = PC_LOG_ERR;
  pc_log(PC_LOG_WARN, "warn2");
  pc_log_level = PC_LOG_DEBUG;
  pc_log(PC_LOG_DEBUG, "debug2");
  pc_log_setup(PC_LOG_JSON);
  pc_log_level = PC_LOG_NOTICE;
  pc_log(PC_LOG_INFO, "info3 n=%d", side_effect());
  pc_log(PC_LOG_NOTICE, "notice3");
  char *out = cap_end(NULL);
  ASSERT_EQ(2, evaluated);
  ASSERT_EQ(4, count_lines(out));
  ASSERT_STREQ("<4>warn n=1", line_at(out, 0));
  ASSERT_STREQ("<3>err n=1", line_at(out, 1));
  ASSERT_STREQ("<7>debug2", line_at(out, 2));
  json_t *j = parse_line(line_at(out, 3), 5);
  ASSERT_STREQ("notice3", jget_str(j, "event"));
  json_decref(j);
  arena_free();
}

TEST(errno_preserved)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  for (int fmt = PC_LOG_TEXT; fmt <= PC_LOG_JSON; fmt++) {
    errno = 0;
    pc_log_setup(fmt);
    ASSERT_EQ(0, errno);
    errno = ENOSPC;
    pc_log(PC_LOG_INFO, "x a=1");
    ASSERT_EQ(ENOSPC, errno);
  }
  cap_end(NULL);
  arena_free();
}

TEST(fatal_line)
{
  for (int fmt = PC_LOG_TEXT; fmt <= PC_LOG_JSON; fmt++) {
    cap_start();
    pretend_journald();
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
      signal(SIGABRT, SIG_DFL);
      pc_log_setup(fmt);
      pc_fatal("boom x=%d", 1);
    }
    int st;
    ASSERT_EQ(pid, waitpid(pid, &st, 0));
    char *out = cap_end(NULL);
    ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    ASSERT_EQ(1, count_lines(out));
    if (fmt == PC_LOG_TEXT) {
      ASSERT(matches("^<2>fatal file=[^ ]*test-log\\.c line=[0-9]+ reason=\"boom x=1\"\n$", out));
    } else {
      json_t *j = parse_line(line_at(out, 0), 2);
      ASSERT_STREQ("crit", jget_str(j, "level"));
      ASSERT_STREQ("fatal", jget_str(j, "event"));
      ASSERT(matches("test-log\\.c$", jget_str(j, "file")));
      ASSERT(jget_int(j, "line") > 0);
      ASSERT_STREQ("boom x=1", jget_str(j, "reason"));
      ASSERT(!json_object_get(j, "msg"));
      json_decref(j);
    }
  }
  arena_free();
}

#define THREADS 4
#define PER_THREAD 500

static void *log_thread(void *arg)
{
  int id = (int)(intptr_t)arg;
  char pad[3000];
  for (int i = 0; i < PER_THREAD; i++) {
    size_t n = (size_t)(i * 37 + id * 11) % sizeof(pad);
    memset(pad, 'a' + id, n);
    pad[n] = '\0';
    pc_log(PC_LOG_INFO, "th id=%d i=%d pad=%s", id, i, pad);
  }
  return NULL;
}

/* Lines from several threads never interleave (one write per line). */
TEST(threads)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_setup(PC_LOG_JSON);
  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    ASSERT_EQ(0, pthread_create(&t[i], NULL, log_thread, (void *)(intptr_t)i));
  for (int i = 0; i < THREADS; i++)
    ASSERT_EQ(0, pthread_join(t[i], NULL));
  char *out = cap_end(NULL);
  ASSERT_EQ(THREADS * PER_THREAD, count_lines(out));
  int seen[THREADS] = {0};
  char *p = out;
  for (size_t i = 0; i < THREADS * PER_THREAD; i++) {
    char *e = strchr(p, '\n');
    *e = '\0';
    json_t *j = parse_line(p, -1);
    long long id = jget_int(j, "id");
    ASSERT(id >= 0 && id < THREADS);
    ASSERT_EQ(seen[id], jget_int(j, "i"));
    seen[id]++;
    const char *pad = jget_str(j, "pad");
    for (const char *c = pad; *c; c++)
      ASSERT_EQ('a' + id, *c);
    json_decref(j);
    p = e + 1;
  }
  arena_free();
}

/* A reload sets the level and the format while other threads log (the daemon's workers do):
 * every line still comes out whole, in one format or the other, and a line at a level that
 * stays enabled throughout is never lost. Under ThreadSanitizer (.ci/run's TSan step) this is
 * also the check that the log globals are read and written without a data race. */
static atomic_int reload_done;

static void *reload_log_thread(void *arg)
{
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++)
    pc_log(PC_LOG_NOTICE, "th id=%d i=%d", id, i);
  return NULL;
}

static void *reload_thread(void *arg)
{
  for (int i = 0; !atomic_load(&reload_done); i++) {
    pc_log_level = i % 2 ? PC_LOG_DEBUG : PC_LOG_NOTICE;
    pc_log_setup(i % 2 ? PC_LOG_JSON : PC_LOG_TEXT);
  }
  return NULL;
}

TEST(reload_while_threads_log)
{
  unsetenv("JOURNAL_STREAM");
  cap_start();
  pc_log_level = PC_LOG_NOTICE;
  atomic_store(&reload_done, 0);
  pthread_t r, t[THREADS];
  ASSERT_EQ(0, pthread_create(&r, NULL, reload_thread, NULL));
  for (int i = 0; i < THREADS; i++)
    ASSERT_EQ(0, pthread_create(&t[i], NULL, reload_log_thread, (void *)(intptr_t)i));
  for (int i = 0; i < THREADS; i++)
    ASSERT_EQ(0, pthread_join(t[i], NULL));
  atomic_store(&reload_done, 1);
  ASSERT_EQ(0, pthread_join(r, NULL));
  pc_log_level = PC_LOG_INFO;
  pc_log_setup(PC_LOG_TEXT);
  char *out = cap_end(NULL);
  ASSERT_EQ(THREADS * PER_THREAD, count_lines(out));
  int seen[THREADS] = {0};
  char *p = out;
  for (size_t i = 0; i < THREADS * PER_THREAD; i++) {
    char *e = strchr(p, '\n');
    *e = '\0';
    int id, n;
    if (*p == '{') {
      json_t *j = parse_line(p, -1);
      ASSERT_STREQ("notice", jget_str(j, "level"));
      ASSERT_STREQ("th", jget_str(j, "event"));
      id = (int)jget_int(j, "id");
      n = (int)jget_int(j, "i");
      json_decref(j);
    } else {
      const char *m = strstr(p, " notice th id=");
      ASSERT(m && matches("^[0-9T:.-]+Z notice th id=[0-9]+ i=[0-9]+$", p));
      ASSERT_EQ(2, sscanf(m, " notice th id=%d i=%d", &id, &n));
    }
    ASSERT(id >= 0 && id < THREADS);
    ASSERT_EQ(seen[id], n);
    seen[id]++;
    p = e + 1;
  }
  arena_free();
}
