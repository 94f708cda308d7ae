/* daemon/scope — repository scoping: a digest is served under (upstream, repository) only if
 * the store has seen it there, or the upstream confirms it.
 *
 *   scope_seen      the store's word (store_seen_has); offline, also content from before
 *                   scoping (store_seen_legacy). Cheap: one LMDB read.
 *   scope_confirm   ask the upstream with a HEAD of /v2/<repo>/{blobs,manifests}/<digest>: 200
 *                   confirms (and is recorded), 404/401/403 refuses, anything else is an error
 *                   for the client (503, 429 with Retry-After, ...). One HEAD per key however
 *                   many ask (single flight); not while offline (the caller answers 404).
 *   scope_record    record a sight from the loop thread (the store write runs on a worker).
 *
 * Subscribers embed a scope_sub_t and get on_end(ok, rc, retry_after) once, unsubscribed
 * before the call (never inside scope_confirm unless the fetch could not be sent). A job holds
 * a reference on its upstream. scope_cancel_all (mirror_free) ends every job with err. Loop
 * thread only. The HEADs' outcomes are counted in env->st (scope_confirmed, _refused, _failed;
 * on /metrics).
 */
#ifndef SCOPE_H
#define SCOPE_H

#include <stdint.h>

#include "core/list.h"
#include "daemon/pull.h"

struct daemon_upstream;
typedef struct scope_job scope_job_t;
typedef struct scope_sub scope_sub_t;

typedef struct scope_sub_ops {
  /** ok 1: confirmed; ok 0 and rc 0: refused (not in that repository); else rc the error. */
  void (*on_end)(scope_sub_t *s, int ok, int rc, const char *retry_after);
} scope_sub_ops_t;

struct scope_sub {
  const scope_sub_ops_t *ops;
  scope_job_t *job;
  pc_list_t link;
};

int scope_seen(pull_env_t *env, const char *up_name, const char *repo, const char *digest);
void scope_confirm(pull_env_t *env, struct daemon_upstream *up, const char *repo,
                   const char *digest, int is_manifest, scope_sub_t *s);
void scope_unsubscribe(scope_sub_t *s);
void scope_record(pull_env_t *env, const char *up_name, const char *repo, const char *digest);
void scope_cancel_all(pull_env_t *env, int err);

#endif
