/* daemon/cmd_store — `pullcache ls|du|pin|unpin|pins|gc` (see cmd_store.h). */
#include "daemon/cmd_store.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "store/evict.h"

#define MAX_ARGS 16
#define REPLY_MAX (64u << 20)

static const char *const commands[] = {"ls", "du", "pin", "unpin", "pins", "gc"};

int cmd_store_is_command(const char *name)
{
  for (size_t i = 0; i < PC_ARRAY_SIZE(commands); i++)
    if (strcmp(name, commands[i]) == 0)
      return 1;
  return 0;
}

int cmd_store_socket_path(const char *store_dir, char *buf, size_t buflen)
{
  struct sockaddr_un sa;
  int n = snprintf(buf, buflen, "%s/control.sock", store_dir);
  if (n < 0 || (size_t)n >= buflen || (size_t)n >= sizeof(sa.sun_path))
    return -ENAMETOOLONG;
  return 0;
}

/* The parsed arguments of one command. */
typedef struct args {
  const char *cmd;
  const char *ref;      /**< pin / unpin */
  const char *upstream; /**< --upstream */
  int json, dry_run;
  int have_to;
  uint64_t to;
} args_t;

static int usage_err(pc_buf_t *out, const char *cmd, const char *why)
{
  pc_buf_printf(out, "pullcache %s: %s\n", cmd, why);
  pc_buf_printf(out, "usage: pullcache ls [--json] | du | pin REF | unpin REF | pins |\n"
                     "       gc [--dry-run] [--to SIZE]   [--store DIR] [--upstream NAME]\n"
                     "REF is repo:tag or repo@sha256:<64 hex> of --upstream (default: the "
                     "first configured upstream)\n");
  return 2;
}

static int parse(int argc, char **argv, args_t *a, pc_buf_t *out)
{
  char why[300];
  memset(a, 0, sizeof(*a));
  a->cmd = argv[0];
  if (!cmd_store_is_command(a->cmd))
    return usage_err(out, a->cmd, "unknown command");
  for (int i = 1; i < argc; i++) {
    const char *x = argv[i];
    if (!strcmp(x, "--json") && !strcmp(a->cmd, "ls")) {
      a->json = 1;
    } else if (!strcmp(x, "--dry-run") && !strcmp(a->cmd, "gc")) {
      a->dry_run = 1;
    } else if (!strcmp(x, "--to") && !strcmp(a->cmd, "gc")) {
      if (i + 1 >= argc)
        return usage_err(out, a->cmd, "--to needs a SIZE (e.g. 50G)");
      int64_t v = config_parse_size(argv[++i]);
      if (v < 0) {
        snprintf(why, sizeof(why), "--to: \"%.200s\" is not a size (e.g. 500M, 50G)", argv[i]);
        return usage_err(out, a->cmd, why);
      }
      a->have_to = 1;
      a->to = (uint64_t)v;
    } else if (!strcmp(x, "--upstream") && (!strcmp(a->cmd, "pin") || !strcmp(a->cmd, "unpin"))) {
      if (i + 1 >= argc || !config_upstream_name_valid(argv[i + 1]))
        return usage_err(out, a->cmd, "--upstream needs a registry host name");
      a->upstream = argv[++i];
    } else if (x[0] != '-' && !a->ref && (!strcmp(a->cmd, "pin") || !strcmp(a->cmd, "unpin"))) {
      a->ref = x;
    } else {
      snprintf(why, sizeof(why), "unexpected argument \"%.200s\"", x);
      return usage_err(out, a->cmd, why);
    }
  }
  if (!strcmp(a->cmd, "pin") || !strcmp(a->cmd, "unpin")) {
    store_ref_t r;
    if (!a->ref)
      return usage_err(out, a->cmd, "needs a REF (repo:tag or repo@sha256:...)");
    if (store_ref_parse(a->ref, &r) != 0) {
      snprintf(why, sizeof(why),
               "\"%.200s\" is not a reference: repo:tag or repo@sha256:<64 hex>, the "
               "repository in lower case",
               a->ref);
      return usage_err(out, a->cmd, why);
    }
  }
  return 0;
}

int cmd_store_check(int argc, char **argv, pc_buf_t *out)
{
  args_t a;
  return parse(argc, argv, &a, out);
}

static void fmt_size(uint64_t v, char *buf, size_t len)
{
  static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double x = (double)v;
  int i = 0;
  while (x >= 1024 && i < 4) {
    x /= 1024;
    i++;
  }
  if (i == 0)
    snprintf(buf, len, "%" PRIu64 "B", v);
  else
    snprintf(buf, len, "%.1f%s", x, u[i]);
}

void cmd_store_fmt_size(uint64_t v, char *buf, size_t len)
{
  fmt_size(v, buf, len);
}

static void fmt_time(int64_t t, char *buf, size_t len)
{
  struct tm tm;
  time_t tt = (time_t)t;
  if (t <= 0 || !gmtime_r(&tt, &tm)) {
    snprintf(buf, len, "-");
    return;
  }
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- ls / du -------------------------------------------------------------------------------- */

typedef struct ls_ctx {
  pc_buf_t *out;
  json_t *arr;
  /* du: per (upstream, repo), bytes deduplicated by digest within it */
  struct du_row {
    char key[600];
    char (*digests)[72];
    size_t ndig;
    uint64_t tags, bytes, pinned;
  } * rows;
  size_t nrows;
  int du;
} ls_ctx_t;

static int on_image(void *arg, const store_image_t *img)
{
  ls_ctx_t *c = arg;
  char sz[32], sh[32], lu[32];
  if (c->du) {
    char key[600];
    snprintf(key, sizeof(key), "%s/%s", img->upstream, img->repo);
    struct du_row *r = NULL;
    for (size_t i = 0; i < c->nrows && !r; i++)
      if (!strcmp(c->rows[i].key, key))
        r = &c->rows[i];
    if (!r) {
      c->rows = pc_xrealloc(c->rows, (c->nrows + 1) * sizeof(*c->rows));
      r = &c->rows[c->nrows++];
      memset(r, 0, sizeof(*r));
      memcpy(r->key, key, sizeof(key));
    }
    r->tags++;
    int seen = 0;
    for (size_t i = 0; i < r->ndig && !seen; i++)
      seen = !strcmp(r->digests[i], img->digest);
    if (!seen) {
      r->digests = pc_xrealloc(r->digests, (r->ndig + 1) * sizeof(*r->digests));
      memcpy(r->digests[r->ndig++], img->digest, 72);
      r->bytes += img->bytes;
      if (img->pinned)
        r->pinned += img->bytes;
    }
    return 0;
  }
  if (c->arr) {
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:b}", "upstream", img->upstream,
                  "repository", img->repo, "tag", img->tag, "digest", img->digest, "media_type",
                  img->media_type, "bytes", (json_int_t)img->bytes, "shared_bytes",
                  (json_int_t)img->shared, "last_used", (json_int_t)img->last_use, "fetched_at",
                  (json_int_t)img->fetched_at, "pinned", img->pinned);
    if (o)
      json_array_append_new(c->arr, o);
    return 0;
  }
  fmt_size(img->bytes, sz, sizeof(sz));
  fmt_size(img->shared, sh, sizeof(sh));
  fmt_time(img->last_use, lu, sizeof(lu));
  pc_buf_printf(c->out, "%-20s %-30s %-20s %-19.19s %10s %10s %-20s %s\n", img->upstream, img->repo,
                img->tag, img->digest + 7, sz, sh, lu, img->pinned ? "yes" : "no");
  return 0;
}

static void rows_free(ls_ctx_t *c)
{
  for (size_t i = 0; i < c->nrows; i++)
    free(c->rows[i].digests);
  free(c->rows);
}

static int do_ls(cmd_store_ctx_t *x, const args_t *a, pc_buf_t *out, int du)
{
  ls_ctx_t c;
  store_stats_t st;
  uint64_t pinned = 0;
  memset(&c, 0, sizeof(c));
  c.out = out;
  c.du = du;
  if (a->json)
    c.arr = json_array();
  else if (!du)
    pc_buf_printf(out, "%-20s %-30s %-20s %-19s %10s %10s %-20s %s\n", "UPSTREAM", "REPOSITORY",
                  "TAG", "DIGEST", "SIZE", "SHARED", "LAST USED", "PINNED");
  int rc = store_images(x->store, on_image, &c);
  if (rc == 0)
    rc = store_stats(x->store, &st);
  if (rc == 0)
    rc = store_pinned_bytes(x->store, &pinned);
  if (rc) {
    pc_buf_printf(out, "pullcache %s: %s\n", a->cmd, pc_strerror(rc));
    json_decref(c.arr);
    rows_free(&c);
    return 1;
  }
  if (c.arr) {
    char *s = json_dumps(c.arr, JSON_INDENT(2));
    pc_buf_printf(out, "%s\n", s ? s : "[]");
    free(s);
    json_decref(c.arr);
    return 0;
  }
  if (du) {
    char b[32], p[32];
    pc_buf_printf(out, "%-50s %6s %10s %10s\n", "UPSTREAM/REPOSITORY", "TAGS", "SIZE", "PINNED");
    for (size_t i = 0; i < c.nrows; i++) {
      fmt_size(c.rows[i].bytes, b, sizeof(b));
      fmt_size(c.rows[i].pinned, p, sizeof(p));
      pc_buf_printf(out, "%-50s %6" PRIu64 " %10s %10s\n", c.rows[i].key, c.rows[i].tags, b, p);
    }
    rows_free(&c);
  }
  char tb[32], pb[32];
  fmt_size(st.blob_bytes, tb, sizeof(tb));
  fmt_size(pinned, pb, sizeof(pb));
  pc_buf_printf(out,
                "total %s (%" PRIu64 " bytes) in %" PRIu64 " blobs, %" PRIu64 " manifests, %" PRIu64
                " tags; pinned %s (%" PRIu64 " bytes)%s\n",
                tb, st.blob_bytes, st.blobs, st.manifests, st.tags, pb, pinned,
                du ? "; a layer shared by repositories counts in each" : "");
  return 0;
}

/* ---- pins ------------------------------------------------------------------------------------ */

static int on_pin(void *arg, const char *up, const char *ref, int64_t created)
{
  char t[32];
  fmt_time(created, t, sizeof(t));
  pc_buf_printf(arg, "%-30s %-60s %s\n", up, ref, t);
  return 0;
}

/* ---- gc ----------------------------------------------------------------------------------------
 */

typedef struct gc_ctx {
  pc_buf_t *out;
  int dry;
} gc_ctx_t;

static void on_item(void *arg, const store_evict_item_t *it)
{
  gc_ctx_t *g = arg;
  char sz[32], lu[32];
  fmt_size(it->size, sz, sizeof(sz));
  fmt_time(it->last_use, lu, sizeof(lu));
  pc_buf_printf(g->out, "%s %s %10s last used %s%s\n", g->dry ? "would evict" : "evicted",
                it->digest, sz, lu, it->manifest ? " (manifest)" : "");
}

static int do_gc(cmd_store_ctx_t *x, const args_t *a, pc_buf_t *out)
{
  uint64_t target = a->have_to ? a->to : x->gc_target;
  if (!a->have_to && !x->gc_target)
    return usage_err(out, "gc",
                     x->via_daemon ? "the daemon has no max_size: give --to SIZE"
                                   : "no daemon runs (so no budget is known): give --to SIZE");
  gc_ctx_t g = {out, a->dry_run};
  store_evict_opts_t o = {.target = target,
                          .reason = STORE_EVICT_MANUAL,
                          .dry_run = a->dry_run,
                          .cb = on_item,
                          .arg = &g};
  store_evict_report_t r;
  int rc = store_evict(x->store, &o, &r);
  if (rc) {
    pc_buf_printf(out, "pullcache gc: %s\n", pc_strerror(rc));
    return 1;
  }
  if (!a->dry_run) {
    x->manual_runs++;
    x->manual_blobs += r.blobs;
    x->manual_bytes += r.bytes;
  }
  pc_buf_printf(out,
                "gc%s: %s %" PRIu64 " blobs (%" PRIu64 " manifests, %" PRIu64 " tags), %" PRIu64
                " bytes; store %" PRIu64 " -> %" PRIu64 " bytes, target %" PRIu64
                ", pinned %" PRIu64 "%s; %" PRIu64 " ms\n",
                a->dry_run ? " --dry-run" : "", a->dry_run ? "would evict" : "evicted", r.blobs,
                r.manifests, r.tags, r.bytes, r.before, r.after, target, r.pinned_bytes,
                r.pins_over ? " (the pins alone exceed the target)" : "", r.ms);
  return 0;
}

int cmd_store_exec(cmd_store_ctx_t *x, int argc, char **argv, pc_buf_t *out)
{
  args_t a;
  int code = parse(argc, argv, &a, out);
  if (code)
    return code;
  const char *up = a.upstream ? a.upstream : x->upstream;
  int rc;
  if (!strcmp(a.cmd, "ls"))
    return do_ls(x, &a, out, 0);
  if (!strcmp(a.cmd, "du"))
    return do_ls(x, &a, out, 1);
  if (!strcmp(a.cmd, "gc"))
    return do_gc(x, &a, out);
  if (!strcmp(a.cmd, "pins")) {
    rc = store_pin_list(x->store, on_pin, out);
    if (rc) {
      pc_buf_printf(out, "pullcache pins: %s\n", pc_strerror(rc));
      return 1;
    }
    return 0;
  }
  if (!strcmp(a.cmd, "pin")) {
    rc = store_pin_add(x->store, up, a.ref);
    if (rc) {
      pc_buf_printf(out, "pullcache pin: %s\n", pc_strerror(rc));
      return rc == -EINVAL ? 2 : 1;
    }
    pc_buf_printf(out, "pinned %s %s\n", up, a.ref);
    return 0;
  }
  rc = store_pin_del(x->store, up, a.ref); /* unpin */
  if (rc == PC_E_NOTFOUND) {
    pc_buf_printf(out, "pullcache unpin: %s %s is not pinned\n", up, a.ref);
    return 1;
  }
  if (rc) {
    pc_buf_printf(out, "pullcache unpin: %s\n", pc_strerror(rc));
    return rc == -EINVAL ? 2 : 1;
  }
  pc_buf_printf(out, "unpinned %s %s\n", up, a.ref);
  return 0;
}

/* ---- the command line -------------------------------------------------------------------------
 */

/* Send argv (NUL-terminated strings, then one empty string) to the daemon; print the reply
 * ("<code>\n" + output). Returns the exit code, or -1 when no daemon listens. */
static int via_socket(const char *path, int argc, char **argv)
{
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  pc_buf_t req;
  pc_buf_init(&req, 0);
  for (int i = 0; i < argc; i++)
    pc_buf_add(&req, argv[i], strlen(argv[i]) + 1);
  pc_buf_add(&req, "", 1);
  size_t off = 0;
  while (off < req.len) {
    ssize_t n = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      pc_buf_free(&req);
      close(fd);
      fprintf(stderr, "pullcache %s: the daemon's control socket: %s\n", argv[0], strerror(errno));
      return 1;
    }
    off += (size_t)n;
  }
  pc_buf_free(&req);
  pc_buf_t rep;
  pc_buf_init(&rep, REPLY_MAX);
  char buf[65536];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if (pc_buf_add(&rep, buf, (size_t)n) != 0)
      break;
  }
  close(fd);
  const char *nl = rep.len ? memchr(rep.p, '\n', rep.len) : NULL;
  if (!nl || nl == rep.p || nl - rep.p > 3) {
    pc_buf_free(&rep);
    fprintf(stderr, "pullcache %s: no answer from the daemon's control socket\n", argv[0]);
    return 1;
  }
  int code = 0;
  for (const char *p = rep.p; p < nl; p++)
    code = code * 10 + (*p - '0');
  const char *body = nl + 1;
  size_t blen = rep.len - (size_t)(body - rep.p);
  fwrite(body, 1, blen, code == 0 ? stdout : stderr);
  pc_buf_free(&rep);
  return code;
}

int cmd_cache(int argc, char **argv)
{
  const char *dir = CONFIG_STORE_DEFAULT, *sv;
  int missing = 0;
  char *av[MAX_ARGS + 1];
  int ac = 0;
  pc_buf_t out;
  pc_buf_init(&out, 0);
  for (int i = 0; i < argc; i++) {
    if (i > 0 && (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))) {
      usage_err(&out, argv[0], "help");
      fwrite(out.p, 1, out.len, stdout);
      pc_buf_free(&out);
      return 0;
    }
    if (i > 0 && (sv = pc_opt_value(argc, argv, &i, "--store", &missing))) {
      dir = sv;
      continue;
    }
    if (missing) {
      fprintf(stderr, "pullcache %s: --store needs a value\n", argv[0]);
      pc_buf_free(&out);
      return 2;
    }
    if (ac == MAX_ARGS) {
      fprintf(stderr, "pullcache %s: too many arguments\n", argv[0]);
      pc_buf_free(&out);
      return 2;
    }
    av[ac++] = argv[i];
  }
  av[ac] = NULL;
  int code = cmd_store_check(ac, av, &out);
  if (code) {
    fwrite(out.p, 1, out.len, stderr);
    pc_buf_free(&out);
    return code; /* bad input: nothing contacted, nothing changed */
  }
  char sock[256];
  if (cmd_store_socket_path(dir, sock, sizeof(sock)) == 0) {
    code = via_socket(sock, ac, av);
    if (code >= 0) {
      pc_buf_free(&out);
      return code;
    }
  }
  store_t *s = NULL;
  store_opts_t so = {.must_exist = 1}; /* a mistyped --store is refused, never created */
  int rc = store_open(dir, &so, &s);
  if (rc == PC_E_NOTFOUND) {
    fprintf(stderr, "pullcache %s: no store at %s\n", av[0], dir);
    pc_buf_free(&out);
    return 2;
  }
  if (rc) {
    fprintf(stderr, "pullcache %s: cannot open store %s: %s\n", av[0], dir,
            rc == -EBUSY ? "in use by a daemon whose control socket does not answer "
                           "(nothing done)"
                         : pc_strerror(rc));
    pc_buf_free(&out);
    return 1;
  }
  daemon_config_t *cfg = pc_xmalloc(sizeof(*cfg));
  config_defaults(cfg);
  cmd_store_ctx_t x = {.store = s, .upstream = cfg->upstreams[0].name};
  code = cmd_store_exec(&x, ac, av, &out);
  fwrite(out.p, 1, out.len, code == 0 ? stdout : stderr);
  store_close(s);
  free(cfg);
  pc_buf_free(&out);
  return code;
}
