/* daemon/relay — a bounded memory relay of one stream to several readers (see relay.h).
 *
 * The kept bytes are a list of chunks in stream order, [first chunk's off, head). After every
 * change the chunks wholly below the slowest reader's position (the head when there is no
 * reader: nobody needs them) are freed, but the last one while it is being filled. held counts
 * allocated chunks, the memory truth; full and room are decided on the bytes kept.
 */
#include "daemon/relay.h"

#include <string.h>

#include "core/list.h"
#include "core/pc.h"

typedef struct chunk {
  pc_list_t link;
  uint64_t off; /**< stream position of data[0] */
  size_t len;
  char data[RELAY_CHUNK];
} chunk_t;

typedef struct reader {
  srv_source_t src;
  relay_t *r;
  uint64_t pos; /**< every byte before it was sent */
  uint64_t end; /**< one past its last byte */
  int stashed;  /**< only its held last byte is left: kept here, the chunks may go */
  char stash;
  pc_list_t link;
} reader_t;

struct relay {
  pull_env_t *env;
  uint64_t from, head;
  size_t max, held;
  int dropped;   /**< a byte at or after from was freed (or never kept) */
  int want_room; /**< relay_full said 1: call on_room once there is room */
  int detached;  /**< the producer let go */
  void (*on_room)(void *arg);
  void *arg;
  pc_list_t chunks;  /**< chunk_t.link, by position */
  pc_list_t readers; /**< reader_t.link */
};

static const srv_source_ops_t reader_ops;

relay_t *relay_new(pull_env_t *env, uint64_t from, size_t max, void (*on_room)(void *arg),
                   void *arg)
{
  relay_t *r = pc_xcalloc(1, sizeof(*r));
  r->env = env;
  r->from = r->head = from;
  r->max = max ? max : RELAY_MAX_DEFAULT;
  if (r->max < RELAY_CHUNK)
    r->max = RELAY_CHUNK;
  r->on_room = on_room;
  r->arg = arg;
  pc_list_init(&r->chunks);
  pc_list_init(&r->readers);
  env->live++;
  return r;
}

static void relay_free(relay_t *r)
{
  pull_env_t *env = r->env;
  pc_list_t *l;
  while ((l = pc_list_first(&r->chunks))) {
    pc_list_remove(l);
    free(pc_list_entry(l, chunk_t, link));
  }
  env->st.relay_bytes -= r->held;
  free(r);
  env->live--;
  if (env->released)
    env->released(env); /* may free env */
}

static void maybe_free(relay_t *r)
{
  if (r->detached && pc_list_empty(&r->readers))
    relay_free(r);
}

static const char *byte_at(const relay_t *r, uint64_t pos)
{
  pc_list_foreach(l, &r->chunks)
  {
    chunk_t *c = pc_list_entry(l, chunk_t, link);
    if (pos >= c->off && pos < c->off + c->len)
      return c->data + (pos - c->off);
  }
  return NULL;
}

/* Bytes kept: from the oldest chunk's start to the head. */
static uint64_t kept(const relay_t *r)
{
  pc_list_t *first = pc_list_first(&r->chunks);
  return first ? r->head - pc_list_entry(first, chunk_t, link)->off : 0;
}

/* Free what no reader needs; wake the producer when room came back. A reader that has every
 * byte but its last (held until the fill verified) keeps that byte itself, so it holds no
 * chunk: else a bounded range would pin the relay while the fill waits for the bytes after. The
 * chunk being filled stays until full (a joiner may still start at `from`). */
static void trim(relay_t *r)
{
  uint64_t low = r->head;
  pc_list_foreach(l, &r->readers)
  {
    reader_t *rd = pc_list_entry(l, reader_t, link);
    if (!rd->stashed && rd->pos + 1 == rd->end) {
      const char *b = byte_at(r, rd->pos);
      if (b) {
        rd->stash = *b;
        rd->stashed = 1;
      }
    }
    if (!rd->stashed && rd->pos < rd->end && rd->pos < low)
      low = rd->pos;
  }
  pc_list_foreach_safe(l, nx, &r->chunks)
  {
    chunk_t *c = pc_list_entry(l, chunk_t, link);
    if (c->off + c->len > low || (nx == &r->chunks && c->len < RELAY_CHUNK))
      break;
    pc_list_remove(l);
    free(c);
    r->held -= RELAY_CHUNK;
    r->env->st.relay_bytes -= RELAY_CHUNK;
    r->dropped = 1;
  }
  if (r->want_room && kept(r) < r->max && !r->detached) {
    r->want_room = 0;
    if (r->on_room)
      r->on_room(r->arg);
  }
}

void relay_append(relay_t *r, const void *p, size_t len)
{
  const char *b = p;
  while (len) {
    pc_list_t *last = r->chunks.prev;
    chunk_t *c = last != &r->chunks ? pc_list_entry(last, chunk_t, link) : NULL;
    if (!c || c->len == RELAY_CHUNK || c->off + c->len != r->head) {
      c = pc_xmalloc(sizeof(*c));
      c->off = r->head;
      c->len = 0;
      pc_list_push_back(&r->chunks, &c->link);
      r->held += RELAY_CHUNK;
      r->env->st.relay_bytes += RELAY_CHUNK;
      if (r->held > r->env->st.relay_peak_bytes)
        r->env->st.relay_peak_bytes = r->held;
    }
    size_t n = RELAY_CHUNK - c->len;
    if (n > len)
      n = len;
    memcpy(c->data + c->len, b, n);
    c->len += n;
    r->head += n;
    b += n;
    len -= n;
  }
  trim(r);
}

int relay_full(relay_t *r)
{
  if (kept(r) < r->max)
    return 0;
  r->want_room = 1;
  return 1;
}

int relay_intact(const relay_t *r)
{
  return !r->dropped;
}

uint64_t relay_from(const relay_t *r)
{
  return r->from;
}

size_t relay_held(const relay_t *r)
{
  return r->held;
}

srv_source_t *relay_reader(relay_t *r, uint64_t pos, uint64_t end)
{
  pc_list_t *first = pc_list_first(&r->chunks);
  uint64_t oldest = first ? pc_list_entry(first, chunk_t, link)->off : r->head;
  if (pos < r->from || (r->dropped && pos < oldest))
    return NULL;
  reader_t *rd = pc_xcalloc(1, sizeof(*rd));
  rd->src.ops = &reader_ops;
  rd->r = r;
  rd->pos = pos;
  rd->end = end;
  pc_list_push_back(&r->readers, &rd->link);
  return &rd->src;
}

void relay_detach(relay_t *r)
{
  if (!r)
    return;
  r->detached = 1;
  r->on_room = NULL;
  maybe_free(r);
}

/* ---- readers: the srv_source_t ops ---------------------------------------------------------- */

static size_t reader_peek(srv_source_t *s, uint64_t pos, const char **p)
{
  reader_t *rd = container_of(s, reader_t, src);
  if (rd->stashed && pos + 1 == rd->end) {
    *p = &rd->stash;
    return 1;
  }
  pc_list_foreach(l, &rd->r->chunks)
  {
    chunk_t *c = pc_list_entry(l, chunk_t, link);
    if (pos >= c->off && pos < c->off + c->len) {
      *p = c->data + (pos - c->off);
      return (size_t)(c->off + c->len - pos);
    }
  }
  return 0;
}

static void reader_sent(srv_source_t *s, uint64_t pos)
{
  reader_t *rd = container_of(s, reader_t, src);
  rd->pos = pos;
  trim(rd->r);
}

static void reader_release(srv_source_t *s)
{
  reader_t *rd = container_of(s, reader_t, src);
  relay_t *r = rd->r;
  pc_list_remove(&rd->link);
  free(rd);
  trim(r);
  maybe_free(r);
}

void relay_reader_drop(srv_source_t *s)
{
  reader_release(s);
}

static const srv_source_ops_t reader_ops = {reader_peek, reader_sent, reader_release};
