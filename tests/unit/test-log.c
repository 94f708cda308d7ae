/* Tests for core logging (core/log.c): the key=value quoting. */
#include "tests/unit/unit.h"

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
}
