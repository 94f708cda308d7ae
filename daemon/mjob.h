/* daemon/mjob — one manifest job: a manifest fetched (or a known tag revalidated) from an
 * upstream, with any number of subscribers.
 *
 * A job is keyed by (upstream, repository, reference). By digest, or by a tag not known yet,
 * it GETs the manifest into a capped memory buffer (env->max_manifest) and checks its sha256
 * against the requested digest or the upstream's Docker-Content-Digest. For a known tag whose
 * TTL has run out it first sends a HEAD: an unchanged digest is a revalidation, a changed one
 * turns into the GET. If the upstream cannot confirm or deny a known tag (unreachable,
 * failing, rate-limiting: not a 404 nor a bad digest), the known digest is the answer (stale).
 *
 * Subscribers embed an mjob_sub_t (container_of) and get on_end(result) once, unsubscribed
 * before the call, with the verified bytes in memory (FETCHED) or a digest to serve from the
 * store (REVALIDATED, STALE), or an error (FAILED). on_fetched(timings) (optional) follows the
 * job's last upstream fetch. After a FETCHED or REVALIDATED outcome the job stays until the
 * store write (manifest, tag: several fsyncs) on a worker has finished; mjob_answered gives
 * its result to requests that arrive meanwhile, so no fsync is on a client's critical path.
 * Callbacks run on the loop thread; only on_end may run inside mjob_start (the fetch could
 * not be sent). A job holds a reference on its upstream and copies every string it is given.
 */
#ifndef MJOB_H
#define MJOB_H

#include <stddef.h>

#include "core/list.h"
#include "daemon/pull.h"

struct daemon_upstream;
typedef struct mjob mjob_t;
typedef struct mjob_sub mjob_sub_t;

/** Explicit states; the diagram is at the top of mjob.c. */
typedef enum mjob_state {
  MJOB_HEAD,    /**< revalidating a known tag: HEAD sent */
  MJOB_GET,     /**< GET sent: the body goes into memory */
  MJOB_STORING, /**< answered (FETCHED/REVALIDATED); the store write runs on a worker */
  MJOB_ENDED,   /**< answered (STALE/FAILED, or stored): being freed */
} mjob_state;

typedef enum mjob_outcome {
  MJOB_FETCHED,     /**< body/len/media_type: verified bytes of digest */
  MJOB_REVALIDATED, /**< the known tag is unchanged: serve digest from the store */
  MJOB_STALE,       /**< the upstream failed: serve the known digest from the store */
  MJOB_FAILED,      /**< rc (and detail, retry_after) for the client */
} mjob_outcome;

/** A job's outcome. Valid during on_end, and while mjob_answered returns it. */
typedef struct mjob_result {
  mjob_outcome outcome;
  int rc;
  const char *detail;      /**< NULL or a sentence for the error's detail */
  const char *retry_after; /**< "" if none */
  const char *digest;      /**< FETCHED, REVALIDATED, STALE */
  const char *body;        /**< FETCHED */
  size_t len;
  const char *media_type;
} mjob_result_t;

typedef struct mjob_sub_ops {
  void (*on_fetched)(mjob_sub_t *s, const up_timings_t *t); /**< may be NULL */
  void (*on_end)(mjob_sub_t *s, const mjob_result_t *r);
} mjob_sub_ops_t;

struct mjob_sub {
  const mjob_sub_ops_t *ops; /**< set by the subscriber */
  mjob_t *job;               /**< while subscribed (mjob.c) */
  pc_list_t link;            /**< in the job's subscribers (mjob.c) */
};

/** The job for (up, repo, ref) still running, or answered and storing; NULL if none (a job
 * that has ENDED is never returned, even while it answers its subscribers). */
mjob_t *mjob_find(pull_env_t *env, const struct daemon_upstream *up, const char *repo,
                  const char *ref);
/** A job of up (any repository: content is content) that has answered with the manifest
 * digest and is storing it, or NULL. */
mjob_t *mjob_find_answered_digest(pull_env_t *env, const struct daemon_upstream *up,
                                  const char *digest);
/** Call cb(arg, tag) for every tag job of upstream up_name and repo that has answered and is
 * writing the tag (STORING). */
void mjob_each_storing_tag(pull_env_t *env, const char *up_name, const char *repo,
                           void (*cb)(void *arg, const char *tag), void *arg);
/** The result a job that has answered gives to late requests, or NULL while it runs. */
const mjob_result_t *mjob_answered(const mjob_t *j);

/** Start a job; old is the known tag record (a revalidation) or NULL; first (may be NULL) is
 * subscribed before the fetch is sent. */
void mjob_start(pull_env_t *env, struct daemon_upstream *up, const char *repo, const char *ref,
                int by_digest, const store_tag_t *old, mjob_sub_t *first);
/** Subscribe to a job that has not answered (mjob_answered(j) == NULL). */
void mjob_subscribe(mjob_t *j, mjob_sub_t *s);
void mjob_unsubscribe(mjob_sub_t *s);
/** End every job still fetching with err (their fetches cancelled) — mirror_free. */
void mjob_cancel_all(pull_env_t *env, int err);

#endif
