/* daemon/fill — one blob fill: a digest fetched from an upstream into the store, with any
 * number of subscribers.
 *
 * A fill is not tied to a client: a subscriber is any object that embeds a fill_sub_t and
 * recovers itself with container_of in the callbacks (a client request in mirror.c; a
 * prefetch or a parent-tier fill later). The fill writes the upstream's bytes into a store
 * writer (a temp file, hashed as written), tells subscribers how much of it may be sent, and
 * verifies the digest before anything is committed:
 *
 *   on_length(total, avail) once the upstream's length is known (at once for a subscriber that
 *             joins later, unless the fill is already verified: that one gets only on_end):
 *             the temp file (fill_tmp_path) holds [0, avail);
 *   on_avail(avail)         more bytes may be sent. avail stays below total (the last byte is
 *                           held) until the digest has been verified, then becomes total.
 *                           A subscriber that answers part of the blob holds the last byte of
 *                           its own part until then too (answer.h: nothing unverified is
 *                           delivered complete);
 *   on_passthrough(relay)   the fill lost its disk (pass-through, below) while this
 *                           subscriber streams: the bytes from relay_from(relay) on come from
 *                           the relay, not the temp file (which keeps those before);
 *   on_fetched(timings)     the last upstream fetch of the fill ended (optional);
 *   on_end(result)          the fill is over (committed, or failed: result->verified says
 *                           whether the bytes matched even if the commit failed). The
 *                           subscriber is unsubscribed before the call.
 * A subscriber may unsubscribe itself at any time, also from inside its own on_length,
 * on_avail or on_fetched (never another subscriber from a callback); the fill goes on without it,
 * and a fill with no subscribers still completes and commits. Callbacks run on the loop thread;
 * only on_length may run inside fill_subscribe (a late subscriber starts at once), and only on_end
 * inside fill_start (the fetch could not be sent).
 *
 * Full disk: pass-through. A fill that finds no room when the length is known (env->disk_free
 * less than its length plus what the other caching fills still need, or no temp file could be
 * made), or whose write fails with ENOSPC or EDQUOT, does not fail: it goes PASSTHROUGH. The
 * writer only hashes from then on (store_writer_hash_only: the temp file keeps the bytes
 * written before, X), and the bytes from X on go to the subscribers through a bounded memory
 * relay (daemon/relay.h): when it is full the upstream fetch pauses (UP_DATA_PAUSE) until the
 * slowest reader frees room. The last byte is still held until the digest matched; then every
 * subscriber gets on_end with verified = 1 and rc = -ENOSPC (nothing stored), and the temp file
 * goes. A commit that fails with ENOSPC/EDQUOT counts as a pass-through too (the bytes were
 * verified: subscribers waiting for on_end get them from result->fd). A pass-through fill with
 * no subscriber left stops. A request joins a pass-through fill only while its relay still has
 * every byte from X (relay_intact), else it gets a fill of its own (fill_find).
 *
 * Lifetime: a fill is in env->fills from fill_start until just before its on_end calls, and
 * is freed right after them; it holds a reference on its upstream. Its relay lives on until
 * the last reader is released.
 */
#ifndef FILL_H
#define FILL_H

#include <stdint.h>

#include "core/list.h"
#include "daemon/pull.h"

struct daemon_upstream;
struct relay;
typedef struct fill fill_t;
typedef struct fill_sub fill_sub_t;

/** How a fill ended. Strings live as long as the on_end call. */
typedef struct fill_result {
  int rc;                  /**< 0: verified and committed; else the error for a client */
  int verified;            /**< the bytes matched the digest (a commit may still have failed) */
  int status;              /**< the upstream's final HTTP status (0 if none) */
  const char *retry_after; /**< the upstream's Retry-After, "" if none */
  const char *digest;
  const char *repo; /**< where it was fetched from */
  const struct daemon_upstream *up;
  int passthrough; /**< the fill was a pass-through: nothing was stored */
  uint64_t size;   /**< the blob's length when known, else 0 */
  int fd;          /**< verified but not stored (rc != 0): a descriptor on the bytes (dup it to keep
                        it; closed after the on_end calls), else -1 */
} fill_result_t;

typedef struct fill_sub_ops {
  void (*on_length)(fill_sub_t *s, uint64_t total, uint64_t avail);
  void (*on_avail)(fill_sub_t *s, uint64_t avail);
  void (*on_passthrough)(fill_sub_t *s, struct relay *relay); /**< NULL: follows no body */
  void (*on_fetched)(fill_sub_t *s, const up_timings_t *t);   /**< may be NULL */
  void (*on_end)(fill_sub_t *s, const fill_result_t *r);
} fill_sub_ops_t;

struct fill_sub {
  const fill_sub_ops_t *ops; /**< set by the subscriber */
  fill_t *fill;              /**< the fill while subscribed (fill.c) */
  int streamed;              /**< on_length was called (fill.c) */
  pc_list_t link;            /**< in the fill's subscribers (fill.c) */
};

/** Explicit states; the diagram is at the top of fill.c. */
typedef enum fill_state {
  FILL_FETCHING,    /**< request sent, no usable answer yet */
  FILL_STREAMING,   /**< a 200/206 answer's bytes flow into the writer */
  FILL_RESUMING,    /**< the body broke after some bytes: asking again with Range */
  FILL_PASSTHROUGH, /**< no room on the disk: the bytes flow through a memory relay, hashed,
                         not stored */
  FILL_COMMITTING,  /**< verified; fsync + rename + LMDB record on a worker */
  FILL_DONE,        /**< committed (or the commit failed after verification) */
  FILL_FAILED,      /**< not verified: nothing stored */
} fill_state;

/** A fill of digest in flight that a new subscriber may join, or NULL (none, or only
 * pass-through fills whose relay has let bytes go). */
fill_t *fill_find(pull_env_t *env, const char *digest);
/** Start a fill of digest (sha256) from up/repo, with first (may be NULL) as its first
 * subscriber, and send the fetch. Its commit records, in the blob record's own transaction,
 * that up served the blob under repo (repository scoping: store_writer_commit_also). Returns 0, or
 * an error when no fill could be made (no temp file: nothing happened, no callback). When the fetch
 * cannot even be sent, the fill ends at once: first's on_end runs before fill_start returns 0. */
int fill_start(pull_env_t *env, struct daemon_upstream *up, const char *repo, const char *digest,
               fill_sub_t *first);
/** Subscribe (s->ops set). When the length is already known, on_length is called before this
 * returns. */
void fill_subscribe(fill_t *f, fill_sub_t *s);
void fill_unsubscribe(fill_sub_t *s);

/** 1 when f's body flows (STREAMING or PASSTHROUGH, not paused for a slow reader) and has made
 * no progress for ms (0: never): no FILL_PROGRESS_STEP (16 KiB) more bytes received (a resume's
 * overlap included), nor the blob's last byte, since its headers or its last restart. Header
 * phases and queued fetches are bounded by their own timers and are not "stalled". */
int fill_stalled(const fill_t *f, uint64_t ms);
/** The fills of env that fill_stalled(ms) calls stalled. */
unsigned fill_count_stalled(const pull_env_t *env, uint64_t ms);
/** A stalled body: the upstream fetch is cancelled and the fill resumes on a fresh fetch (and
 * connection) with Range from its last byte written, state RESUMING; its subscribers stay
 * and the running hash goes on (counted in stall_restarts). Only a caching fill in STREAMING
 * with a fetch running and not paused restarts, at most 3 times, and only when the new fetch
 * would start at once (its pool has no queue, its 429 breaker is closed): 1 then, else 0
 * (nothing changed). After 1 f may be gone (the new fetch could not start: the fill failed and
 * was freed): look it up again (fill_find). */
int fill_restart(fill_t *f);
/** 1 once the bytes matched the digest (COMMITTING or DONE). */
int fill_verified(const fill_t *f);
/** 1 when f was started for repository repo of the upstream named up_name (where its bytes are
 * known to belong: repository scoping). */
int fill_started_in(const fill_t *f, const char *up_name, const char *repo);
/** A new descriptor (the caller's) on the temp file: the bytes written so far (the prefix
 * before the relay in pass-through), or -1 when the fill has no file (pass-through from the
 * start without one) or on error (errno). Never by path: the file may be renamed or gone. */
int fill_open(const fill_t *f);
/** The pass-through relay (for a reader: relay_reader), or NULL while caching. */
struct relay *fill_relay(const fill_t *f);
/** A fill in flight as the status page shows it (fill_each). Strings live as long as the
 * callback. */
typedef struct fill_info {
  const char *digest, *repo, *upstream;
  fill_state state;
  uint64_t written;     /**< bytes received and hashed so far */
  int64_t total;        /**< the blob's length, -1 until known */
  unsigned subscribers; /**< subscribers following its body now (on_passthrough set: the
                             requests) */
  uint64_t started_ms;  /**< pc_mono_ms when it started */
  int resumes;          /**< Range resumes so far */
} fill_info_t;

/** Call cb for every fill in env->fills (read only: cb must not start or end fills). */
void fill_each(pull_env_t *env, void (*cb)(void *arg, const fill_info_t *fi), void *arg);
/** "fetching", "streaming", "resuming", "passthrough", "committing", "done", "failed". */
const char *fill_state_name(fill_state s);
/** Fail every fill that is not yet verified (their fetch cancelled) — mirror_free. */
void fill_cancel_all(pull_env_t *env, int err);

#endif
