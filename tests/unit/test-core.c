/* Unit tests for the shared core pieces: core/list.h, core/buf.h, core/num.h. */
#include <errno.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/list.h"
#include "core/mtype.h"
#include "core/netaddr.h"
#include "core/num.h"
#include "unit.h"

struct item {
  int v;
  pc_list_t link;
};

TEST(list_order_and_remove)
{
  pc_list_t h;
  struct item it[4];
  pc_list_init(&h);
  ASSERT(pc_list_empty(&h));
  ASSERT(pc_list_first(&h) == NULL);
  for (int i = 0; i < 4; i++) {
    it[i].v = i;
    pc_list_init(&it[i].link);
    ASSERT(!pc_list_linked(&it[i].link));
    pc_list_push_back(&h, &it[i].link);
    ASSERT(pc_list_linked(&it[i].link));
  }
  ASSERT_EQ(4, pc_list_count(&h));
  int want = 0;
  pc_list_foreach(l, &h) ASSERT_EQ(want++, pc_list_entry(l, struct item, link)->v);
  /* Removing while iterating, and removing twice, are both fine. */
  pc_list_foreach_safe(l, nx, &h)
  {
    struct item *x = pc_list_entry(l, struct item, link);
    if (x->v % 2 == 0)
      pc_list_remove(&x->link);
  }
  pc_list_remove(&it[0].link);
  ASSERT_EQ(2, pc_list_count(&h));
  ASSERT_EQ(1, pc_list_entry(pc_list_first(&h), struct item, link)->v);
  pc_list_push_front(&h, &it[2].link);
  ASSERT_EQ(2, pc_list_entry(pc_list_first(&h), struct item, link)->v);
  /* A zeroed link (calloc) is on no list, and removing it is harmless. */
  struct item z;
  memset(&z, 0, sizeof(z));
  ASSERT(!pc_list_linked(&z.link));
  pc_list_remove(&z.link);
  ASSERT(!pc_list_linked(&z.link));
}

TEST(buf_cap_is_hard)
{
  pc_buf_t b;
  pc_buf_init(&b, 10);
  ASSERT_OK(pc_buf_adds(&b, "hello"));
  ASSERT_OK(pc_buf_printf(&b, "%d", 1234));
  ASSERT_STREQ("hello1234", b.p);
  ASSERT_EQ(PC_E_TOOBIG, pc_buf_adds(&b, "xy"));
  ASSERT_STREQ("hello1234", b.p); /* nothing appended */
  ASSERT_OK(pc_buf_adds(&b, "z"));
  ASSERT_EQ(10, b.len);
  ASSERT_EQ(PC_E_TOOBIG, pc_buf_add(&b, "q", 1));
  pc_buf_consume(&b, 5);
  ASSERT_STREQ("1234z", b.p);
  pc_buf_reset(&b);
  ASSERT_EQ(0, b.len);
  ASSERT_STREQ("", b.p);
  /* Reserving room adds nothing and obeys the cap. */
  ASSERT_OK(pc_buf_reserve(&b, 10));
  ASSERT(b.cap >= 11);
  ASSERT_EQ(0, b.len);
  ASSERT_EQ(PC_E_TOOBIG, pc_buf_reserve(&b, 11));
  /* A long formatted append (past the stack buffer) is whole or nothing. */
  pc_buf_t big;
  pc_buf_init(&big, 1000);
  ASSERT_OK(pc_buf_printf(&big, "%600s", "x"));
  ASSERT_EQ(600, big.len);
  ASSERT_EQ(PC_E_TOOBIG, pc_buf_printf(&big, "%500s", "y"));
  ASSERT_EQ(600, big.len);
  size_t n = 0;
  char *p = pc_buf_steal(&big, &n);
  ASSERT_EQ(600, n);
  ASSERT_EQ('x', p[599]);
  free(p);
  ASSERT(big.p == NULL);
  pc_buf_free(&b);
  pc_buf_free(&big);
}

TEST(num_parsers)
{
  uint64_t u = 7;
  int64_t i = 7;
  ASSERT_OK(pc_parse_u64("0", UINT64_MAX, &u));
  ASSERT_EQ(0, u);
  ASSERT_OK(pc_parse_u64("18446744073709551615", UINT64_MAX, &u));
  ASSERT(u == UINT64_MAX);
  ASSERT_EQ(-ERANGE, pc_parse_u64("18446744073709551616", UINT64_MAX, &u));
  ASSERT_EQ(-ERANGE, pc_parse_u64("101", 100, &u));
  u = 5;
  ASSERT_EQ(-EINVAL, pc_parse_u64("", 100, &u));
  ASSERT_EQ(-EINVAL, pc_parse_u64("+1", 100, &u));
  ASSERT_EQ(-EINVAL, pc_parse_u64("-1", 100, &u));
  ASSERT_EQ(-EINVAL, pc_parse_u64(" 1", 100, &u));
  ASSERT_EQ(-EINVAL, pc_parse_u64("1 ", 100, &u));
  ASSERT_EQ(-EINVAL, pc_parse_u64("0x1", 100, &u));
  ASSERT_EQ(5, u); /* untouched on error */
  ASSERT_OK(pc_parse_u64_n("12345", 3, 1000, &u));
  ASSERT_EQ(123, u);
  ASSERT_OK(pc_parse_i64("-9223372036854775808", INT64_MIN, INT64_MAX, &i));
  ASSERT(i == INT64_MIN);
  ASSERT_EQ(-ERANGE, pc_parse_i64("9223372036854775808", INT64_MIN, INT64_MAX, &i));
  ASSERT_EQ(-ERANGE, pc_parse_i64("-5", 0, 10, &i));
  ASSERT_EQ(-EINVAL, pc_parse_i64("-", 0, 10, &i));
  ASSERT_OK(pc_parse_i64("-5", -10, 10, &i));
  ASSERT_EQ(-5, i);
  const char *s = "100-200";
  ASSERT_OK(pc_parse_u64_prefix(&s, &u));
  ASSERT_EQ(100, u);
  ASSERT_STREQ("-200", s);
  ASSERT_EQ(-EINVAL, pc_parse_u64_prefix(&s, &u));
  ASSERT_STREQ("-200", s);
}

TEST(strlcpy_reports_cuts)
{
  char d[4];
  ASSERT_OK(pc_strlcpy(d, sizeof(d), "abc"));
  ASSERT_STREQ("abc", d);
  ASSERT_EQ(PC_E_TOOBIG, pc_strlcpy(d, sizeof(d), "abcd"));
  ASSERT_STREQ("abc", d);
  ASSERT_OK(pc_strlcpy(d, sizeof(d), NULL));
  ASSERT_STREQ("", d);
}

/* ---- core/mtype ---------------------------------------------------------------------------- */

TEST(mtype_grammar)
{
  size_t tl;
  static const char *const good[] = {
      "application/vnd.oci.image.manifest.v1+json",
      "application/vnd.docker.distribution.manifest.v1+prettyjws",
      "text/plain; charset=utf-8",
      "text/plain;charset=\"utf-8\"",
      "a/b ; x=1 ;y=\"q\\\"uoted\"",
      "a/b;",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    ASSERT(pc_mtype_header_ok(good[i], NULL));
  ASSERT(pc_mtype_header_ok("text/plain; charset=utf-8", &tl));
  ASSERT_EQ(10, tl);
  static const char *const bad[] = {
      "",
      "text",
      "/json",
      "text/",
      "a/b/c",
      "a b/c",
      "-a/b",
      "a/b\rX-Injected: yes",
      "a/b\x1b[0m",
      "a/b\x7f",
      "a/b; x",
      "a/b; =1",
      "a/b; x=\"open",
      "a/b; x=\"\x01\"",
      "a/b junk",
      "a\xc3\xa9/b",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ASSERT(!pc_mtype_header_ok(bad[i], NULL));
  char longt[300];
  memset(longt, 'a', sizeof(longt));
  longt[127] = '/';
  longt[255] = '\0'; /* subtype of 127: fine */
  ASSERT(pc_mtype_header_ok(longt, NULL));
  longt[127] = 'a';
  longt[128] = '/'; /* type of 128 characters: too long */
  ASSERT(!pc_mtype_header_ok(longt, NULL));
}

/* ---- core/netaddr -------------------------------------------------------------------------- */

TEST(netaddr_classes_and_lists)
{
  static const struct {
    const char *ip;
    pc_addr_class_t c;
  } cases[] = {
      {"127.0.0.1", PC_ADDR_LOOPBACK},
      {"127.255.1.2", PC_ADDR_LOOPBACK},
      {"::1", PC_ADDR_LOOPBACK},
      {"::ffff:127.0.0.1", PC_ADDR_LOOPBACK},
      {"169.254.169.254", PC_ADDR_LINKLOCAL},
      {"fe80::1", PC_ADDR_LINKLOCAL},
      {"10.1.2.3", PC_ADDR_PRIVATE},
      {"172.16.0.1", PC_ADDR_PRIVATE},
      {"172.31.255.255", PC_ADDR_PRIVATE},
      {"172.32.0.1", PC_ADDR_PUBLIC},
      {"192.168.0.1", PC_ADDR_PRIVATE},
      {"100.64.0.1", PC_ADDR_PRIVATE},
      {"fd00::1", PC_ADDR_PRIVATE},
      {"::ffff:10.0.0.1", PC_ADDR_PRIVATE},
      {"0.0.0.0", PC_ADDR_UNSPECIFIED},
      {"::", PC_ADDR_UNSPECIFIED},
      {"224.0.0.1", PC_ADDR_UNSPECIFIED},
      {"ff02::1", PC_ADDR_UNSPECIFIED},
      {"8.8.8.8", PC_ADDR_PUBLIC},
      {"2001:db8::1", PC_ADDR_PUBLIC},
      {"localhost", PC_ADDR_INVALID},
      {"1.2.3", PC_ADDR_INVALID},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    ASSERT_EQ((int)cases[i].c, (int)pc_addr_class(cases[i].ip));
  char bad[64];
  ASSERT_OK(pc_cidr_list_check("", bad, sizeof(bad)));
  ASSERT_OK(pc_cidr_list_check("10.0.0.0/8, fd00::/8 192.0.2.7,::1/128", bad, sizeof(bad)));
  ASSERT_EQ(-1, pc_cidr_list_check("10.0.0.0/8, 10.0.0.0/33", bad, sizeof(bad)));
  ASSERT_STREQ("10.0.0.0/33", bad);
  ASSERT_EQ(-1, pc_cidr_list_check("example.com", bad, sizeof(bad)));
  ASSERT_EQ(-1, pc_cidr_list_check("::/129", bad, sizeof(bad)));
  ASSERT_EQ(-1, pc_cidr_list_check("1.2.3.4/", bad, sizeof(bad)));
  const char *l = "10.0.0.0/8, 192.168.1.0/25 fd00::/8,192.0.2.7";
  ASSERT_EQ(1, pc_cidr_list_match(l, "10.200.0.1"));
  ASSERT_EQ(1, pc_cidr_list_match(l, "::ffff:10.0.0.1"));
  ASSERT_EQ(1, pc_cidr_list_match(l, "192.168.1.127"));
  ASSERT_EQ(0, pc_cidr_list_match(l, "192.168.1.128"));
  ASSERT_EQ(1, pc_cidr_list_match(l, "fd12::5"));
  ASSERT_EQ(0, pc_cidr_list_match(l, "fe80::1"));
  ASSERT_EQ(1, pc_cidr_list_match(l, "192.0.2.7"));
  ASSERT_EQ(0, pc_cidr_list_match(l, "192.0.2.8"));
  ASSERT_EQ(0, pc_cidr_list_match(l, "not-an-ip"));
  ASSERT_EQ(0, pc_cidr_list_match("", "10.0.0.1"));
  ASSERT_EQ(1, pc_cidr_list_match("0.0.0.0/0", "8.8.8.8"));
}
