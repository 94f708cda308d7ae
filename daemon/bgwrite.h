/* daemon/bgwrite — the store writes of the pull path (blob commits, manifest and tag writes,
 * sights) on one thread of their own at a lower CPU priority (the loop thread's nice value
 * +BGWRITE_NICE, at most 19).
 *
 * They are off every client's critical path by design (a fill's clients get the last byte once
 * the digest matched, a manifest job answers from memory), but each is CPU work in the kernel
 * (an fsync's writeback, an inode, LMDB's pages). On libuv's pool (4 threads at the loop's
 * priority) several of them at once took the cores from the loop thread while a client waited
 * on it. Here at most one runs, and the scheduler lets the loop go first when the CPU is short;
 * they serialise on LMDB's one writer anyway. The pool keeps what a client waits for (sendfile
 * from disk, TLS file reads, bcrypt).
 *
 * bgwrite_queue has uv_queue_work's contract: work runs on the writer thread, after on the loop
 * thread (status 0), exactly once each, in order. Ownership: the mirror makes one (bgwrite_new)
 * and frees it (bgwrite_free) once nothing it queued is pending; the loop stays alive while
 * anything is queued. With no writer (NULL, or one that could not start its thread)
 * bgwrite_queue is uv_queue_work. Errors: bgwrite_new returns NULL when the thread cannot be
 * made (then the pool is used); bgwrite_queue returns uv_queue_work's error in that case only.
 */
#ifndef BGWRITE_H
#define BGWRITE_H

#include <uv.h>

#define BGWRITE_NICE 10

typedef struct bgwrite bgwrite_t;

/** A writer on loop, its thread started; NULL when it cannot be made. */
bgwrite_t *bgwrite_new(uv_loop_t *loop);
/** Run work(req) on the writer thread, then after(req, 0) on the loop. b NULL: uv_queue_work. */
int bgwrite_queue(bgwrite_t *b, uv_loop_t *loop, uv_work_t *req, uv_work_cb work,
                  uv_after_work_cb after);
/** Number of requests queued and not yet given to after (0 for NULL). */
unsigned bgwrite_pending(const bgwrite_t *b);
/** Stop the thread and close the writer (NULL is a no-op). Only with nothing pending. */
void bgwrite_free(bgwrite_t *b);

#endif
