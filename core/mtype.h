/* mtype — grammar checks for values an upstream puts in its headers, before pullcache uses or
 * stores them (RFC 6838 §4.2 media types, RFC 9110 §8.3 Content-Type with parameters).
 *
 * Pure functions: no allocation, no state, safe from any thread. A value that fails a check is
 * an upstream fault (the caller answers 502 and stores nothing); it is never copied into a
 * response head.
 */
#ifndef PC_MTYPE_H
#define PC_MTYPE_H

#include <stddef.h>

/** 1 when s[0..n) is "type/subtype" with RFC 6838 restricted names (each 1-127 characters,
 * starting with a letter or digit, then letters, digits and ! # $ & - ^ _ . +), else 0. */
int pc_mtype_ok(const char *s, size_t n);

/** 1 when the NUL-terminated Content-Type value v is a valid media type optionally followed
 * by parameters (";" name "=" token or quoted-string, with optional spaces and tabs around the
 * ";"), else 0. On success *type_len (may be NULL) gets the length of the bare media type, so
 * v[0..*type_len) is what pc_mtype_ok accepted. */
int pc_mtype_header_ok(const char *v, size_t *type_len);

#endif
