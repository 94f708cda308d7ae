/* daemon/prefetch — `pullcache prefetch`: fill the store from an image list inside the running
 * daemon, a fill with no client connection.
 *
 * The command line (daemon/cmd_prefetch.c) sends the list through the control socket
 * (daemon/control.c); the daemon runs it here on the loop thread with the same machines a
 * request uses: manifest jobs (mjob.h), blob fills (fill.h, started or joined through
 * mirror_fill, so a node pulling the same image at the same moment joins the prefetch's fill
 * and the other way round), repository scoping (scope.h) and the referrers cache (meta.h,
 * through listing_referrers_ask). Upstream caps, tokens, the 429 breaker and verification
 * apply as for a request. What is cached is checked, not fetched: a fresh tag and a present
 * blob seen in that repository cost nothing; a stale tag is revalidated (HEAD).
 *
 * Per image: the top manifest (tag or digest); of an index, the manifests of the chosen
 * platforms (default the host's; --platform OS/ARCH[/VARIANT],...; --all-platforms every one);
 * their config and layers; with --signatures the cosign tags sha256-<hex>.sig and .att and the
 * referrers of the top digest, with their blobs (none is no error). With --pin a pin (store/
 * evict.h) is added for each image that ended well (on a worker: one write transaction).
 *
 * Progress goes back as JSON lines through emit (one call per line, "\n" included):
 *   {"ev":"start","images":N}
 *   {"ev":"progress","done":i,"images":N,"bytes":b,"bytes_total":t}   at most every 250 ms
 *   {"ev":"image","line":L,"ref":..., "status":"cached"|"fetched"|"failed", "platforms":...,
 *    "bytes":..., "fetched_bytes":..., "blobs":..., "seconds":..., "signatures":..., "error":...}
 *   {"ev":"end","code":0|1|2,"images":N,"failed":F}                    always the last line
 * then done(arg, code) (code 0 all good, 1 some image failed, 2 bad arguments). --jobs N
 * images run at a time (default 4).
 *
 * Lifetime: prefetch_start copies what it needs. prefetch_cancel (the client went away) leaves
 * every job and fill (they go on without it), emits nothing more and never calls done. Loop
 * thread only.
 */
#ifndef PREFETCH_H
#define PREFETCH_H

#include <stddef.h>

#include "daemon/daemon.h"

typedef struct prefetch prefetch_t;

typedef void (*prefetch_emit_fn)(void *arg, const char *line, size_t len);
typedef void (*prefetch_done_fn)(void *arg, int code);

#define PREFETCH_JOBS_DEFAULT 4
#define PREFETCH_JOBS_MAX 64

/** argv[0] "prefetch", then options (--platform LIST, --all-platforms, --signatures, --pin,
 * --jobs N), then "--", then one "LINENO<TAB>TEXT" per list line. Returns the run (done is
 * called later, never inside), or NULL when the arguments are bad: then the lines were
 * emitted (an "end" with code 2 last) and done is not called. */
prefetch_t *prefetch_start(daemon_t *d, int argc, char **argv, prefetch_emit_fn emit,
                           prefetch_done_fn done, void *arg);
/** The client went away: stop (no more emit or done); frees the run. */
void prefetch_cancel(prefetch_t *p);

/** The host's platform as OS/ARCH[/VARIANT] ("linux/amd64", "linux/arm64", "linux/arm/v7"). */
const char *prefetch_host_platform(void);

#endif
