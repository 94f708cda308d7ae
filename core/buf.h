/* core/buf — one growable byte buffer with a hard cap.
 *
 * A pc_buf_t owns its bytes (p, freed by pc_buf_free). It grows by doubling up to max bytes of
 * content; an append that would pass max changes nothing and returns PC_E_TOOBIG, so a buffer
 * filled from the network can never grow without bound. The content is always followed by a
 * NUL that is not counted in len (p may be used as a C string when it holds no NUL itself).
 * A zeroed pc_buf_t is an empty buffer with no cap: give every buffer that takes outside input
 * a cap with pc_buf_init. Not thread-safe.
 */
#ifndef PC_BUF_H
#define PC_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct pc_buf {
  char *p;    /**< content, NUL-terminated; NULL until the first append */
  size_t len; /**< bytes of content */
  size_t cap; /**< bytes allocated */
  size_t max; /**< most content allowed; 0 = no cap */
} pc_buf_t;

/** An empty buffer that holds at most max bytes (0 = no cap). */
void pc_buf_init(pc_buf_t *b, size_t max);
/** The out-of-line part of pc_buf_add: growth and the cap check. */
int pc__buf_add(pc_buf_t *b, const void *p, size_t n);

/** Append n bytes (p may be NULL when n is 0). 0, or PC_E_TOOBIG (nothing appended). The
 * common case (room allocated, cap not reached) is inline: the server appends some 60 small
 * tokens per request, and the call cost ~1,800 instructions per warm request (callgrind). */
static inline int pc_buf_add(pc_buf_t *b, const void *p, size_t n)
{
  if (n && b->cap - b->len > n && (b->max == 0 || b->max - b->len >= n)) {
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
  }
  return pc__buf_add(b, p, n);
}

/** Make room for n more bytes of content (and the NUL) without adding any: 0, or PC_E_TOOBIG
 * when len + n would pass the cap (nothing changes). */
int pc_buf_reserve(pc_buf_t *b, size_t n);

/** Append a C string. */
static inline int pc_buf_adds(pc_buf_t *b, const char *s)
{
  return pc_buf_add(b, s, strlen(s));
}
/** Append formatted text (whole, or nothing and PC_E_TOOBIG). */
int pc_buf_printf(pc_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Drop the first n bytes of content (n <= len), keeping the allocation. */
void pc_buf_consume(pc_buf_t *b, size_t n);
/** Empty the buffer, keeping its allocation and cap. */
static inline void pc_buf_reset(pc_buf_t *b)
{
  b->len = 0;
  if (b->p)
    b->p[0] = '\0';
}
/** Free the bytes; the buffer is empty (cap kept) and may be used again. */
void pc_buf_free(pc_buf_t *b);
/** Take the bytes (the caller frees them; NULL if never appended to); the buffer is empty. */
char *pc_buf_steal(pc_buf_t *b, size_t *len);

#endif
