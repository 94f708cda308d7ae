/* unit — a tiny test runner: one process per test under ctest, TAP-ish output.
 *
 *   TEST(commit_roundtrip) { ASSERT_EQ(0, f()); }
 *
 * `test-x NAME` runs one test in this process (ctest registers one entry per TEST, parsed from
 * the sources); `test-x` alone runs every test, each in a forked child, and prints a summary.
 * Every test has a timeout (UNIT_TIMEOUT seconds, default 120).
 */
#ifndef UNIT_H
#define UNIT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*unit_fn)(void);
void unit__register(const char *name, unit_fn fn);
void unit__fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

#define TEST(name)                                                                                 \
  static void test_##name(void);                                                                   \
  __attribute__((constructor)) static void unit_reg_##name(void)                                   \
  {                                                                                                \
    unit__register(#name, test_##name);                                                            \
  }                                                                                                \
  static void test_##name(void)

#define ASSERT(e)                                                                                  \
  do {                                                                                             \
    if (!(e))                                                                                      \
      unit__fail(__FILE__, __LINE__, "assertion failed: %s", #e);                                  \
  } while (0)
#define ASSERT_EQ(a, b)                                                                            \
  do {                                                                                             \
    long long a_ = (long long)(a), b_ = (long long)(b);                                            \
    if (a_ != b_)                                                                                  \
      unit__fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_);                    \
  } while (0)
#define ASSERT_NE(a, b)                                                                            \
  do {                                                                                             \
    long long a_ = (long long)(a), b_ = (long long)(b);                                            \
    if (a_ == b_)                                                                                  \
      unit__fail(__FILE__, __LINE__, "%s != %s: both %lld", #a, #b, a_);                           \
  } while (0)
#define ASSERT_STREQ(a, b)                                                                         \
  do {                                                                                             \
    const char *a_ = (a), *b_ = (b);                                                               \
    if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                         \
      unit__fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b, a_ ? a_ : "(null)",     \
                 b_ ? b_ : "(null)");                                                              \
  } while (0)
/** rc must be 0; prints pc_errname on failure. */
#define ASSERT_OK(rc)                                                                              \
  do {                                                                                             \
    int rc_ = (rc);                                                                                \
    if (rc_ != 0)                                                                                  \
      unit__fail(__FILE__, __LINE__, "%s: %d (%s)", #rc, rc_, pc_errname(rc_));                    \
  } while (0)

/** A fresh empty directory, removed (recursively) when the test process exits. */
const char *unit_tmpdir(void);
/** Write text to unit_tmpdir()/name; the path (one of 4 static buffers, reused in turn). */
const char *unit_write_file(const char *name, const char *text);

#include "core/pc.h"

#endif
