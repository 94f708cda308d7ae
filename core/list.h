/* core/list — one intrusive, circular, doubly linked list (the shape of libuv's queue.h).
 *
 * A list is a pc_list_t head; an element embeds a pc_list_t link and is recovered with
 * pc_list_entry (container_of). The list owns nothing: elements are allocated and freed by
 * their owner, which must unlink an element (pc_list_remove) before freeing it. A removed link
 * points at itself, so pc_list_linked tells whether an element is on a list and removing twice
 * is harmless. All operations are O(1) and never allocate. Not thread-safe.
 *
 *   pc_list_t waiters;                      struct waiter { pc_list_t link; ... };
 *   pc_list_init(&waiters);
 *   pc_list_push_back(&waiters, &w->link);
 *   pc_list_foreach_safe(it, next, &waiters) {
 *     struct waiter *w = pc_list_entry(it, struct waiter, link);
 *     pc_list_remove(&w->link);             (removing the current element is allowed)
 *   }
 */
#ifndef PC_LIST_H
#define PC_LIST_H

#include <stddef.h>

typedef struct pc_list {
  struct pc_list *next, *prev;
} pc_list_t;

#define pc_list_entry(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/** Make h an empty list (or a link that is on no list). */
static inline void pc_list_init(pc_list_t *h)
{
  h->next = h->prev = h;
}

static inline int pc_list_empty(const pc_list_t *h)
{
  return h->next == h;
}

/** 1 when the link is on a list (it was inserted and not removed since). */
static inline int pc_list_linked(const pc_list_t *l)
{
  return l->next != l && l->next != NULL;
}

static inline void pc_list_insert_after(pc_list_t *at, pc_list_t *l)
{
  l->prev = at;
  l->next = at->next;
  at->next->prev = l;
  at->next = l;
}

static inline void pc_list_push_back(pc_list_t *h, pc_list_t *l)
{
  pc_list_insert_after(h->prev, l);
}

static inline void pc_list_push_front(pc_list_t *h, pc_list_t *l)
{
  pc_list_insert_after(h, l);
}

/** Unlink l from its list (no-op when it is on none) and make it a lone link. */
static inline void pc_list_remove(pc_list_t *l)
{
  if (l->next == NULL || l->next == l) {
    pc_list_init(l);
    return;
  }
  l->prev->next = l->next;
  l->next->prev = l->prev;
  pc_list_init(l);
}

/** The first link, or NULL when empty. */
static inline pc_list_t *pc_list_first(const pc_list_t *h)
{
  return pc_list_empty(h) ? NULL : h->next;
}

/** Number of elements (O(n): for stats and tests). */
static inline size_t pc_list_count(const pc_list_t *h)
{
  size_t n = 0;
  for (const pc_list_t *l = h->next; l != h; l = l->next)
    n++;
  return n;
}

#define pc_list_foreach(it, h) for (pc_list_t *it = (h)->next; it != (h); it = it->next)
/** Iteration that allows removing (or freeing) the current element. */
#define pc_list_foreach_safe(it, nx, h)                                                            \
  for (pc_list_t *it = (h)->next, *nx = it->next; it != (h); it = nx, nx = it->next)

#endif
