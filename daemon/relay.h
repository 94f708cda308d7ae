/* daemon/relay — a bounded memory relay: the bytes of one stream handed to several readers
 * without a file (a blob fill that lost its disk: pass-through, see fill.h).
 *
 * The producer appends bytes at the head (relay_append); each reader is a srv_source_t (see
 * http/srv.h) that the server peeks at its own position and tells when bytes went out. The
 * relay keeps the bytes from the slowest reader's position to the head, in chunks of
 * RELAY_CHUNK, and frees a chunk once every reader is past it. Memory is bounded by the
 * producer: relay_full says when the bytes kept reach the relay's max, and the producer then
 * stops taking bytes (the upstream fetch pauses); when readers freed a chunk (kept < max),
 * the relay calls the producer's on_room once. So the slowest reader paces the stream, the
 * fastest one only waits for bytes, and a relay never keeps more than max plus the one append
 * the producer took before it saw relay_full; allocated, at most two chunks more (the partly
 * used first and last ones).
 *
 * Positions are offsets in the whole stream: the relay starts at `from` (the bytes before it
 * are the reader's business, e.g. in a file); a reader starts at any position at or after the
 * oldest byte kept (relay_reader fails for one before: that byte is gone).
 *
 * Lifetime: the producer makes the relay (relay_new) and lets go of it with relay_detach; each
 * reader holds it until its release (srv calls it when the body ends). It is freed when both are
 * done. It counts in env->live (freed: env->released), and keeps env->st.relay_bytes (the
 * bytes held by every relay now) and relay_peak_bytes (the most one relay held). Loop thread
 * only.
 */
#ifndef RELAY_H
#define RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/pull.h"
#include "http/srv.h"

#define RELAY_CHUNK (64u * 1024u)
#define RELAY_MAX_DEFAULT (4u * 1024u * 1024u)

typedef struct relay relay_t;

/** A relay of the stream from position from; max bytes held (0: RELAY_MAX_DEFAULT, at least
 * one chunk). on_room(arg) (may be NULL) is the producer's: called when relay_full was 1 and
 * the readers freed room. */
relay_t *relay_new(pull_env_t *env, uint64_t from, size_t max, void (*on_room)(void *arg),
                   void *arg);
/** Append len bytes at the head (any length: relay_full is the producer's brake). */
void relay_append(relay_t *r, const void *p, size_t len);
/** 1 when the producer should take no more bytes until on_room. */
int relay_full(relay_t *r);
/** 1 while every byte from `from` is still kept (nothing freed yet): a reader may start at any
 * position. */
int relay_intact(const relay_t *r);
/** The position the relay started at. */
uint64_t relay_from(const relay_t *r);
/** A reader of [pos, end) (pos >= the oldest byte kept, else NULL). Hand it to srv
 * (srv_file_source / srv_respond_source), which releases it. Once it has every byte but its
 * last (which an unverified answer holds), it keeps that byte itself and pins no chunk. */
srv_source_t *relay_reader(relay_t *r, uint64_t pos, uint64_t end);
/** Release a reader that was never handed to srv. */
void relay_reader_drop(srv_source_t *s);
/** The producer is done (no more on_room): the relay lives on for its readers. NULL: no-op. */
void relay_detach(relay_t *r);
/** Bytes held now (chunks allocated). */
size_t relay_held(const relay_t *r);

#endif
