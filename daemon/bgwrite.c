/* daemon/bgwrite — the pull path's store writes on one lower-priority thread (see bgwrite.h).
 *
 * A request is a node on `todo` (the thread takes them in order), then on `done` (the loop's
 * async callback gives each to its after callback). The async handle is referenced only while
 * something is pending, so an idle writer never keeps the loop alive. bgwrite_free from inside
 * an after callback (the mirror's last object freed) is finished by the async callback.
 */
#include "daemon/bgwrite.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/pc.h"

typedef struct bg_node {
  uv_work_t *req;
  uv_work_cb work;
  uv_after_work_cb after;
  struct bg_node *next;
} bg_node_t;

struct bgwrite {
  uv_loop_t *loop;
  uv_async_t async;
  pthread_t th;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bg_node_t *todo, **todo_tail; /* under mu */
  bg_node_t *done, **done_tail; /* under mu */
  int stop;                     /* under mu: the thread ends once todo is empty */
  unsigned pending;             /* loop thread: queued, after not yet called */
  int in_cb;                    /* loop thread: the async callback is running */
  int freeing;                  /* bgwrite_free was called inside it */
};

static void *bg_main(void *arg)
{
  bgwrite_t *b = arg;
  /* Lower this thread only (a thread id is a process id for setpriority on Linux), relative to
   * what it inherited from the loop thread. */
  id_t tid = (id_t)syscall(SYS_gettid);
  errno = 0;
  int cur = getpriority(PRIO_PROCESS, tid);
  if (errno == 0)
    (void)setpriority(PRIO_PROCESS, tid, cur + BGWRITE_NICE > 19 ? 19 : cur + BGWRITE_NICE);
  pthread_mutex_lock(&b->mu);
  for (;;) {
    while (!b->todo && !b->stop)
      pthread_cond_wait(&b->cv, &b->mu);
    if (!b->todo)
      break; /* stop, and nothing left */
    bg_node_t *n = b->todo;
    b->todo = n->next;
    if (!b->todo)
      b->todo_tail = &b->todo;
    pthread_mutex_unlock(&b->mu);
    n->work(n->req);
    pthread_mutex_lock(&b->mu);
    n->next = NULL;
    *b->done_tail = n;
    b->done_tail = &n->next;
    uv_async_send(&b->async);
  }
  pthread_mutex_unlock(&b->mu);
  return NULL;
}

static void bg_closed(uv_handle_t *h)
{
  bgwrite_t *b = h->data;
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
}

static void bg_stop(bgwrite_t *b)
{
  pthread_mutex_lock(&b->mu);
  b->stop = 1;
  pthread_cond_signal(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(b->th, NULL);
  uv_close((uv_handle_t *)&b->async, bg_closed);
}

static void bg_async(uv_async_t *h)
{
  bgwrite_t *b = h->data;
  b->in_cb = 1;
  for (;;) {
    pthread_mutex_lock(&b->mu);
    bg_node_t *n = b->done;
    b->done = NULL;
    b->done_tail = &b->done;
    pthread_mutex_unlock(&b->mu);
    if (!n)
      break;
    while (n) {
      bg_node_t *next = n->next;
      if (--b->pending == 0)
        uv_unref((uv_handle_t *)&b->async);
      n->after(n->req, 0); /* may free what owns b: bgwrite_free then sets freeing */
      free(n);
      n = next;
    }
  }
  b->in_cb = 0;
  if (b->freeing)
    bg_stop(b);
}

bgwrite_t *bgwrite_new(uv_loop_t *loop)
{
  bgwrite_t *b = pc_xcalloc(1, sizeof(*b));
  b->loop = loop;
  b->todo_tail = &b->todo;
  b->done_tail = &b->done;
  if (pthread_mutex_init(&b->mu, NULL) != 0) {
    free(b);
    return NULL;
  }
  if (pthread_cond_init(&b->cv, NULL) != 0) {
    pthread_mutex_destroy(&b->mu);
    free(b);
    return NULL;
  }
  if (uv_async_init(loop, &b->async, bg_async) != 0) {
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
    return NULL;
  }
  b->async.data = b;
  uv_unref((uv_handle_t *)&b->async);
  if (pthread_create(&b->th, NULL, bg_main, b) != 0) {
    pc_log(PC_LOG_WARN, "bgwrite-thread-failed (store writes use the thread pool)");
    uv_close((uv_handle_t *)&b->async, bg_closed);
    return NULL;
  }
  return b;
}

int bgwrite_queue(bgwrite_t *b, uv_loop_t *loop, uv_work_t *req, uv_work_cb work,
                  uv_after_work_cb after)
{
  if (!b)
    return uv_queue_work(loop, req, work, after);
  bg_node_t *n = pc_xcalloc(1, sizeof(*n));
  n->req = req;
  n->work = work;
  n->after = after;
  if (b->pending++ == 0)
    uv_ref((uv_handle_t *)&b->async);
  pthread_mutex_lock(&b->mu);
  *b->todo_tail = n;
  b->todo_tail = &n->next;
  pthread_cond_signal(&b->cv);
  pthread_mutex_unlock(&b->mu);
  return 0;
}

unsigned bgwrite_pending(const bgwrite_t *b)
{
  return b ? b->pending : 0;
}

void bgwrite_free(bgwrite_t *b)
{
  if (!b)
    return;
  PC_ASSERT(b->pending == 0);
  if (b->in_cb) {
    b->freeing = 1; /* bg_async stops the thread once it returns from the after callback */
    return;
  }
  bg_stop(b);
}
