/* daemon/egress — the hosts the mirror contacts (see egress.h). */
#include "daemon/egress.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/num.h"
#include "core/buf.h"
#include "core/pc.h"

struct egress {
  char path[1100]; /**< "" when not persisted */
  uv_loop_t *loop; /**< the file is written on its thread pool; NULL: at once */
  egress_entry_t *v;
  size_t n;
  int dirty, full_logged;
  int writing;     /**< a write is on the thread pool */
  int again;       /**< a new host came while it was: write again after it */
  int freed;       /**< egress_free came while it was: its after callback frees */
  int64_t written; /**< when the file was last written */
};

int egress_load(const char *path, egress_entry_t **out, size_t *n)
{
  FILE *f = fopen(path, "re");
  char line[1024];
  *out = NULL;
  *n = 0;
  if (!f)
    return -errno;
  size_t cap = 0;
  while (fgets(line, sizeof(line), f)) {
    egress_entry_t e;
    char *fld[7], *save = NULL, *p = line;
    int k = 0;
    line[strcspn(line, "\n")] = '\0';
    if (line[0] == '#' || !line[0])
      continue;
    for (char *t = strtok_r(p, "\t", &save); t && k < 7; t = strtok_r(NULL, "\t", &save))
      fld[k++] = t;
    uint64_t port, count, first, last;
    if (k != 7 || pc_parse_u64(fld[2], 65535, &port) || pc_parse_u64(fld[4], UINT64_MAX, &count) ||
        pc_parse_u64(fld[5], INT64_MAX, &first) || pc_parse_u64(fld[6], INT64_MAX, &last))
      continue; /* a line this version cannot read: skipped */
    memset(&e, 0, sizeof(e));
    pc_strlcpy(e.scheme, sizeof(e.scheme), fld[0]);
    pc_strlcpy(e.host, sizeof(e.host), fld[1]);
    pc_strlcpy(e.upstream, sizeof(e.upstream), strcmp(fld[3], "-") ? fld[3] : "");
    e.port = (unsigned)port;
    e.count = count;
    e.first = (int64_t)first;
    e.last = (int64_t)last;
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      *out = pc_xrealloc(*out, cap * sizeof(**out));
    }
    (*out)[(*n)++] = e;
  }
  fclose(f);
  return 0;
}

/* The file's text (the caller frees it). */
static char *egress_render_file(const egress_t *e, size_t *len)
{
  pc_buf_t b;
  pc_buf_init(&b, 0);
  pc_buf_printf(&b, "# scheme\thost\tport\tupstream\tcount\tfirst\tlast (pullcache egress)\n");
  for (size_t i = 0; i < e->n; i++) {
    const egress_entry_t *x = &e->v[i];
    pc_buf_printf(&b, "%s\t%s\t%u\t%s\t%" PRIu64 "\t%" PRId64 "\t%" PRId64 "\n", x->scheme, x->host,
                  x->port, x->upstream[0] ? x->upstream : "-", x->count, x->first, x->last);
  }
  *len = b.len;
  return b.p ? b.p : pc_xstrdup("");
}

/* A temp file and a rename (any thread). Returns 0 or -errno; logs a failure. */
static int write_file(const char *path, const char *text, size_t len)
{
  char tmp[1200];
  snprintf(tmp, sizeof(tmp), "%s.tmp", path);
  FILE *f = fopen(tmp, "we");
  if (!f) {
    int rc = -errno;
    pc_log(PC_LOG_WARN, "egress-write-failed path=%s rc=%s", tmp, pc_errname(rc));
    return rc;
  }
  size_t put = fwrite(text, 1, len, f);
  int rc = fclose(f) != 0 || put != len || rename(tmp, path) != 0 ? -errno : 0;
  if (rc) {
    pc_log(PC_LOG_WARN, "egress-write-failed path=%s rc=%s", path, pc_errname(rc ? rc : -EIO));
    unlink(tmp);
  }
  return rc;
}

/* Write the table now, on this thread (the last write, when the mirror goes). */
static void write_now(const egress_t *e)
{
  size_t len;
  char *text = egress_render_file(e, &len);
  (void)write_file(e->path, text, len);
  free(text);
}

/* A write on the thread pool: it owns a copy of the text (the table goes on changing). */
typedef struct egress_job {
  uv_work_t work;
  egress_t *e;
  char *text;
  size_t len;
} egress_job_t;

static void egress_write(egress_t *e);

static void job_work(uv_work_t *w)
{
  egress_job_t *j = container_of(w, egress_job_t, work);
  (void)write_file(j->e->path, j->text, j->len); /* path is fixed for the table's life */
}

static void job_after(uv_work_t *w, int status)
{
  egress_job_t *j = container_of(w, egress_job_t, work);
  egress_t *e = j->e;
  (void)status;
  free(j->text);
  free(j);
  e->writing = 0;
  if (e->freed) {
    /* egress_free waited for this write: the last state goes now, on the loop. */
    if (e->dirty)
      write_now(e);
    free(e->v);
    free(e);
    return;
  }
  if (e->again) /* a new host came while the file was written: it must be in the file */
    egress_write(e);
}

/* Write the table: on the thread pool when the table has a loop (one write at a time, in order:
 * a new host that comes meanwhile is written right after), else here. The loop never waits on
 * the file system for it (a new inode and a rename over the old file, which makes ext4 start
 * writing the new one out). */
static void egress_write(egress_t *e)
{
  if (!e->path[0])
    return;
  if (e->writing) {
    e->again = 1;
    return;
  }
  size_t len;
  char *text = egress_render_file(e, &len);
  e->dirty = 0;
  e->again = 0;
  e->written = pc_now_sec();
  if (e->loop) {
    egress_job_t *j = pc_xcalloc(1, sizeof(*j));
    j->e = e;
    j->text = text;
    j->len = len;
    if (uv_queue_work(e->loop, &j->work, job_work, job_after) == 0) {
      e->writing = 1;
      return;
    }
    free(j);
  }
  if (write_file(e->path, text, len) != 0)
    e->dirty = 1;
  free(text);
}

egress_t *egress_new(const char *store_dir, uv_loop_t *loop)
{
  egress_t *e = pc_xcalloc(1, sizeof(*e));
  e->loop = loop;
  if (store_dir && store_dir[0]) {
    snprintf(e->path, sizeof(e->path), "%s/%s", store_dir, EGRESS_FILE);
    (void)egress_load(e->path, &e->v, &e->n); /* none yet is fine */
  }
  return e;
}

/* "https://host:443" -> scheme, host, port ([v6] kept with its brackets). */
static int split_hostkey(const char *key, egress_entry_t *x)
{
  const char *sep = strstr(key, "://");
  const char *colon = sep ? strrchr(sep + 3, ':') : NULL;
  uint64_t port;
  if (!sep || !colon || (size_t)(sep - key) >= sizeof(x->scheme) ||
      (size_t)(colon - sep - 3) >= sizeof(x->host) || pc_parse_u64(colon + 1, 65535, &port))
    return -1;
  memcpy(x->scheme, key, (size_t)(sep - key));
  x->scheme[sep - key] = '\0';
  memcpy(x->host, sep + 3, (size_t)(colon - sep - 3));
  x->host[colon - sep - 3] = '\0';
  x->port = (unsigned)port;
  return 0;
}

void egress_note(void *arg, const char *hostkey, const char *label)
{
  egress_t *e = arg;
  egress_entry_t k;
  int64_t now = pc_now_sec();
  memset(&k, 0, sizeof(k));
  if (split_hostkey(hostkey, &k) != 0)
    return;
  pc_strlcpy(k.upstream, sizeof(k.upstream), label ? label : "");
  for (size_t i = 0; i < e->n; i++) {
    egress_entry_t *x = &e->v[i];
    if (x->port == k.port && !strcmp(x->host, k.host) && !strcmp(x->scheme, k.scheme) &&
        !strcmp(x->upstream, k.upstream)) {
      x->count++;
      x->last = now;
      e->dirty = 1;
      if (now - e->written >= EGRESS_WRITE_S)
        egress_write(e);
      return;
    }
  }
  if (e->n >= EGRESS_MAX) {
    if (!e->full_logged)
      pc_log(PC_LOG_WARN, "egress-table-full max=%d host=%s", EGRESS_MAX, k.host);
    e->full_logged = 1;
    return;
  }
  pc_log(PC_LOG_NOTICE, "egress-new-host scheme=%s host=%s port=%u upstream=%s", k.scheme, k.host,
         k.port, k.upstream[0] ? k.upstream : "-");
  k.count = 1;
  k.first = k.last = now;
  e->v = pc_xrealloc(e->v, (e->n + 1) * sizeof(*e->v));
  e->v[e->n++] = k;
  e->dirty = 1;
  egress_write(e); /* a new host is written at once: the allow-list must not miss it */
}

void egress_render(const egress_t *e, pc_buf_t *o)
{
  pc_buf_printf(o, "# HELP pullcache_egress_requests_total Requests the mirror sent to each host "
                   "(every hop: redirects and token requests too), by the upstream served.\n"
                   "# TYPE pullcache_egress_requests_total counter\n");
  for (size_t i = 0; i < e->n; i++)
    pc_buf_printf(o,
                  "pullcache_egress_requests_total{scheme=\"%s\",host=\"%s\",port=\"%u\","
                  "upstream=\"%s\"} %" PRIu64 "\n",
                  e->v[i].scheme, e->v[i].host, e->v[i].port, e->v[i].upstream, e->v[i].count);
  pc_buf_printf(o, "# HELP pullcache_egress_last_seen_seconds When the mirror last contacted the "
                   "host (epoch seconds).\n# TYPE pullcache_egress_last_seen_seconds gauge\n");
  for (size_t i = 0; i < e->n; i++)
    pc_buf_printf(o,
                  "pullcache_egress_last_seen_seconds{scheme=\"%s\",host=\"%s\",port=\"%u\","
                  "upstream=\"%s\"} %" PRId64 "\n",
                  e->v[i].scheme, e->v[i].host, e->v[i].port, e->v[i].upstream, e->v[i].last);
}

const egress_entry_t *egress_entries(const egress_t *e, size_t *n)
{
  *n = e->n;
  return e->v;
}

void egress_free(egress_t *e)
{
  if (!e)
    return;
  if (e->writing) {
    e->freed = 1; /* the write's after callback writes what changed since, and frees */
    return;
  }
  if (e->dirty && e->path[0])
    write_now(e); /* the last write: here, so that it is done when the mirror is gone */
  free(e->v);
  free(e);
}
