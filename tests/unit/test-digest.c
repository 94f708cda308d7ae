/* test-digest — the OCI digest grammar and the streaming sha256. */
#include "tests/unit/unit.h"

#include "store/digest.h"

#include <string.h>

#define HEX64 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static int parse(const char *s)
{
  return store_digest_parse(s, strlen(s));
}

TEST(digest_sha256_valid)
{
  ASSERT_EQ(STORE_DIGEST_SHA256, parse("sha256:" HEX64));
}

TEST(digest_sha256_invalid)
{
  ASSERT_EQ(PC_E_DIGEST_INVALID,
            parse("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("sha256:" HEX64 "0"));
  ASSERT_EQ(PC_E_DIGEST_INVALID,
            parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85"));
  ASSERT_EQ(PC_E_DIGEST_INVALID,
            parse("sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("sha256:"));
  /* the length argument bounds the parse: a prefix of a valid digest is not valid */
  ASSERT_EQ(PC_E_DIGEST_INVALID, store_digest_parse("sha256:" HEX64, 70));
}

/* The sha256 fast path checks 8 hex digits at a time: every lower-case hex digit at every
 * position passes, and each byte just outside the ranges (or upper case, or >= 0x80) at every
 * position is refused. */
TEST(digest_sha256_every_position)
{
  static const unsigned char bad[] = {'0' - 1, '9' + 1, 'a' - 1, 'f' + 1, 'A', 'F',  'g',  'z',
                                      0x80,    0xb0,    0xe1,    0xff,    ' ', '\t', 0x7f, 0x01};
  static const char hex[] = "0123456789abcdef";
  char d[72];
  for (size_t pos = 7; pos < 71; pos++) {
    for (size_t k = 0; k < 16; k++) {
      memcpy(d, "sha256:", 7);
      memset(d + 7, '5', 64);
      d[71] = '\0';
      d[pos] = hex[k];
      ASSERT_EQ(STORE_DIGEST_SHA256, store_digest_parse(d, 71));
    }
    for (size_t k = 0; k < sizeof(bad); k++) {
      d[pos] = (char)bad[k];
      if (store_digest_parse(d, 71) == STORE_DIGEST_SHA256)
        unit__fail(__FILE__, __LINE__, "byte 0x%02x at %zu accepted", bad[k], pos);
    }
  }
}

TEST(digest_sha512)
{
  ASSERT_EQ(STORE_DIGEST_SHA512, parse("sha512:" HEX64 HEX64));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("sha512:" HEX64));
}

TEST(digest_other_algorithm)
{
  ASSERT_EQ(STORE_DIGEST_OTHER,
            parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8"));
  ASSERT_EQ(STORE_DIGEST_OTHER, parse("sha384:abc=_-XYZ"));
  ASSERT_EQ(STORE_DIGEST_OTHER, parse("b3.x:0"));
}

TEST(digest_garbage)
{
  static const char *const bad[] = {
      "",        ":",       "sha256",    ":abc",  "SHA256:" HEX64, "sha256 :" HEX64,
      "+sha:ab", "sha+:ab", "sha++x:ab", "a:b/c", "a:b c",         "../../etc:passwd"};
  for (size_t i = 0; i < PC_ARRAY_SIZE(bad); i++) {
    if (parse(bad[i]) != PC_E_DIGEST_INVALID)
      unit__fail(__FILE__, __LINE__, "'%s' parsed as valid", bad[i]);
  }
  char longd[200];
  memset(longd, 'a', sizeof(longd) - 1);
  longd[sizeof(longd) - 1] = '\0';
  longd[3] = ':';
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse(longd));
}

TEST(hash_vectors)
{
  char out[72];
  store_digest_of("", 0, out);
  ASSERT_STREQ("sha256:" HEX64, out);
  store_digest_of("hello world", 11, out);
  ASSERT_STREQ("sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9", out);
  ASSERT_EQ(STORE_DIGEST_SHA256, parse(out));
}

TEST(hash_streaming)
{
  char one[72], inc[72];
  store_hash_t h;
  store_hash_init(&h);
  store_hash_update(&h, "hello", 5);
  store_hash_update(&h, "", 0);
  store_hash_update(&h, " ", 1);
  store_hash_update(&h, "world", 5);
  store_hash_final(&h, inc);
  store_hash_dispose(&h);
  store_digest_of("hello world", 11, one);
  ASSERT_STREQ(one, inc);
}
