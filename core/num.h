/* core/num — the one number parser and the one bounded string copy.
 *
 * Every parser returns 0 and writes *out, or returns a negative error and leaves *out alone:
 *   -EINVAL  not a number of the form asked (empty, sign, non-digit, trailing bytes)
 *   -ERANGE  a number outside [min, max] (or past 64 bits)
 * Decimal digits only: no sign for unsigned values, no leading or trailing space, no "0x".
 * The _n variants read exactly len bytes (not NUL-terminated input); the others the C string.
 * pc_parse_u64_prefix reads the digits at *p, advances *p past them and ignores what follows
 * (for grammars such as "bytes=100-200"). Pure, thread-safe.
 *
 * pc_opt_value is the one reader of a command-line option's value ("--opt VALUE" or
 * "--opt=VALUE").
 */
#ifndef PC_NUM_H
#define PC_NUM_H

#include <stddef.h>
#include <stdint.h>

int pc_parse_u64(const char *s, uint64_t max, uint64_t *out);
int pc_parse_u64_n(const char *s, size_t len, uint64_t max, uint64_t *out);
int pc_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
int pc_parse_i64_n(const char *s, size_t len, int64_t min, int64_t max, int64_t *out);
int pc_parse_u64_prefix(const char **p, uint64_t *out);

/** Copy the C string src (NULL = "") into dst of cap bytes (cap > 0), always NUL-terminated.
 * Returns 0 when all of it fit, PC_E_TOOBIG when it was cut to cap - 1 bytes (callers for
 * whom a cut is an error check it; those for whom it cannot happen or is fine ignore it). */
int pc_strlcpy(char *dst, size_t cap, const char *src);

/** The value of option opt at argv[*i] ("--opt VALUE", *i then moves to VALUE, or
 * "--opt=VALUE"), or NULL when argv[*i] is not opt. Sets *missing when opt has no value (none
 * follows, or it is empty). */
const char *pc_opt_value(int argc, char **argv, int *i, const char *opt, int *missing);

#endif
