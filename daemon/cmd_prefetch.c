/* cmd_prefetch — `pullcache prefetch`: send an image list to the running daemon (its control
 * socket, daemon/control.c) and show what it does (daemon/prefetch.h): on a terminal one live
 * line (images done/total, bytes, rate, ETA); otherwise one line per image when it ends; then a
 * table; --json one JSON document instead. Exit 0 every image done, 1 some failed (named in the
 * table), 2 usage error. Nothing is fetched by this process itself: the daemon's fills, with
 * their single flight, verification, caps and tokens, do the work.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/num.h"
#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/cmd_store.h"
#include "daemon/prefetch.h"

#define LIST_MAX (200u << 10) /* the daemon takes a request of 256 KiB */
#define LINE_MAX_ 1024

static void usage(FILE *f)
{
  fprintf(f,
          "usage: pullcache prefetch [--platform OS/ARCH[,...] | --all-platforms] [--signatures]\n"
          "         [--pin] [--jobs N] [--json] [--store DIR] FILE|-\n"
          "\n"
          "Fill the cache of the running daemon from an image list (one reference a line, as\n"
          "`kubeadm config images list` prints them; `#` comments; NAME@sha256:... too; the\n"
          "host must be a configured upstream). The daemon fetches through its own machinery:\n"
          "a node pulling the same image meanwhile joins the same fill. What is cached is\n"
          "checked, not fetched again.\n"
          "\n"
          "  --platform L       the platforms of an index to take (default: this host's, %s)\n"
          "  --all-platforms    every manifest of an index\n"
          "  --signatures       also the cosign tags sha256-<digest>.sig/.att and the referrers\n"
          "  --pin              pin each image that was fully fetched (never evicted)\n"
          "  --jobs N           images at a time (default %d, at most %d)\n"
          "  --json             one JSON document on stdout instead of the table\n"
          "  --store DIR        the daemon's store directory (default ./pullcache-data)\n"
          "\n"
          "Exit status: 0 every image done, 1 some failed (see the table), 2 usage error.\n",
          prefetch_host_platform(), PREFETCH_JOBS_DEFAULT, PREFETCH_JOBS_MAX);
}

/* The list: "LINENO\tTEXT" per line that is not blank or a comment, appended to req. */
static int read_list(const char *file, pc_buf_t *req, int *nlines)
{
  FILE *f = strcmp(file, "-") ? fopen(file, "r") : stdin;
  char line[LINE_MAX_];
  int no = 0;
  if (!f) {
    fprintf(stderr, "pullcache prefetch: %s: %s\n", file, strerror(errno));
    return 2;
  }
  while (fgets(line, sizeof(line), f)) {
    size_t n = strlen(line);
    no++;
    if (n && line[n - 1] != '\n' && !feof(f)) {
      int ch; /* too long: keep its start (the daemon refuses it) and skip the rest */
      while ((ch = fgetc(f)) != EOF && ch != '\n')
        ;
    }
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
      line[--n] = '\0';
    const char *p = line + strspn(line, " \t");
    if (!*p || *p == '#')
      continue;
    char num[16];
    snprintf(num, sizeof(num), "%d\t", no);
    if (pc_buf_adds(req, num) || pc_buf_add(req, p, strlen(p) + 1)) {
      fprintf(stderr, "pullcache prefetch: %s: the list is longer than %u KiB\n", file,
              LIST_MAX >> 10);
      if (f != stdin)
        fclose(f);
      return 2;
    }
    (*nlines)++;
  }
  if (f != stdin)
    fclose(f);
  return 0;
}

typedef struct view {
  int tty, json;
  json_t *images;
  uint64_t t0;
  int code, ended;
  char error[400];
} view_t;

static void on_progress(view_t *v, json_t *ev)
{
  if (!v->tty)
    return;
  double secs = (double)(pc_mono_ms() - v->t0) / 1000.0;
  uint64_t b = (uint64_t)json_integer_value(json_object_get(ev, "bytes"));
  uint64_t t = (uint64_t)json_integer_value(json_object_get(ev, "bytes_total"));
  char bs[32], ts[32], rs[32], eta[32] = "";
  double rate = secs > 0.2 ? (double)b / secs : 0;
  cmd_store_fmt_size(b, bs, sizeof(bs));
  cmd_store_fmt_size(t, ts, sizeof(ts));
  cmd_store_fmt_size((uint64_t)rate, rs, sizeof(rs));
  if (rate > 0 && t > b)
    snprintf(eta, sizeof(eta), "  ETA %.0fs", (double)(t - b) / rate);
  fprintf(stderr, "\r\033[K[%lld/%lld images] %s of %s  %s/s%s",
          (long long)json_integer_value(json_object_get(ev, "done")),
          (long long)json_integer_value(json_object_get(ev, "images")), bs, ts, rs, eta);
  fflush(stderr);
}

static const char *js(json_t *o, const char *k)
{
  json_t *v = json_object_get(o, k);
  return json_is_string(v) ? json_string_value(v) : "";
}

static void on_image(view_t *v, json_t *ev)
{
  json_object_del(ev, "ev");
  json_array_append(v->images, ev);
  if (v->json || v->tty)
    return;
  char bs[32];
  cmd_store_fmt_size((uint64_t)json_integer_value(json_object_get(ev, "bytes")), bs, sizeof(bs));
  printf("%-7s %s %s %s %.1fs%s%s\n", js(ev, "status"), js(ev, "ref"), js(ev, "platforms"), bs,
         json_real_value(json_object_get(ev, "seconds")), *js(ev, "error") ? ": " : "",
         js(ev, "error"));
  fflush(stdout);
}

static void on_line(view_t *v, const char *line, size_t len)
{
  json_t *ev = json_loadb(line, len, 0, NULL);
  const char *kind = js(ev, "ev");
  if (!strcmp(kind, "progress"))
    on_progress(v, ev);
  else if (!strcmp(kind, "image"))
    on_image(v, ev);
  else if (!strcmp(kind, "end")) {
    v->ended = 1;
    v->code = (int)json_integer_value(json_object_get(ev, "code"));
    pc_strlcpy(v->error, sizeof(v->error), js(ev, "error"));
  }
  json_decref(ev);
}

static int by_line(const void *a, const void *b)
{
  json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "line"));
  json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "line"));
  return x < y ? -1 : x > y;
}

/* The images in the order of the list (they end in any order). */
static void sort_images(view_t *v)
{
  size_t n = json_array_size(v->images);
  json_t **a = pc_xcalloc(n ? n : 1, sizeof(*a));
  for (size_t i = 0; i < n; i++)
    a[i] = json_incref(json_array_get(v->images, i));
  qsort(a, n, sizeof(*a), by_line);
  json_array_clear(v->images);
  for (size_t i = 0; i < n; i++)
    json_array_append_new(v->images, a[i]);
  free(a);
}

static void print_table(view_t *v)
{
  size_t i, w = 5, pw = 9;
  json_t *im;
  uint64_t total = 0;
  int failed = 0, fetched = 0, cached = 0;
  json_array_foreach(v->images, i, im)
  {
    size_t n = strlen(js(im, "ref")), pn = strlen(js(im, "platforms"));
    w = n > w ? (n > 70 ? 70 : n) : w;
    pw = pn > pw ? (pn > 60 ? 60 : pn) : pw;
  }
  printf("%-*s %-*s %10s %-7s %7s  %s\n", (int)w, "IMAGE", (int)pw, "PLATFORMS", "BYTES", "STATUS",
         "SECONDS", "ERROR");
  json_array_foreach(v->images, i, im)
  {
    char bs[32];
    uint64_t b = (uint64_t)json_integer_value(json_object_get(im, "bytes"));
    const char *st = js(im, "status");
    total += b;
    failed += !strcmp(st, "failed");
    fetched += !strcmp(st, "fetched");
    cached += !strcmp(st, "cached");
    cmd_store_fmt_size(b, bs, sizeof(bs));
    printf("%-*s %-*s %10s %-7s %7.1f  %s\n", (int)w, js(im, "ref"), (int)pw,
           *js(im, "platforms") ? js(im, "platforms") : "-", bs, st,
           json_real_value(json_object_get(im, "seconds")), js(im, "error"));
  }
  char ts[32];
  cmd_store_fmt_size(total, ts, sizeof(ts));
  printf("%zu images: %d fetched, %d cached, %d failed; %s in %.1f s\n", json_array_size(v->images),
         fetched, cached, failed, ts, (double)(pc_mono_ms() - v->t0) / 1000.0);
}

int cmd_prefetch(int argc, char **argv)
{
  const char *dir = CONFIG_STORE_DEFAULT, *file = NULL, *sv;
  int missing = 0;
  pc_buf_t req;
  view_t v = {0};
  int rc;
  pc_buf_init(&req, LIST_MAX);
  pc_buf_add(&req, "prefetch", 9);
  for (int a = 1; a < argc; a++) {
    const char *x = argv[a];
    if (!strcmp(x, "-h") || !strcmp(x, "--help")) {
      usage(stdout);
      pc_buf_free(&req);
      return 0;
    }
    if (!strcmp(x, "--json")) {
      v.json = 1;
    } else if ((sv = pc_opt_value(argc, argv, &a, "--store", &missing))) {
      dir = sv;
    } else if (missing) {
      fprintf(stderr, "pullcache prefetch: --store needs a value\n");
      pc_buf_free(&req);
      return 2;
    } else if (!strcmp(x, "--all-platforms") || !strcmp(x, "--signatures") || !strcmp(x, "--pin")) {
      pc_buf_add(&req, x, strlen(x) + 1);
    } else if ((!strcmp(x, "--platform") || !strcmp(x, "--jobs")) && a + 1 < argc) {
      uint64_t n;
      if (!strcmp(x, "--jobs") &&
          (pc_parse_u64(argv[a + 1], PREFETCH_JOBS_MAX, &n) != 0 || n == 0)) {
        fprintf(stderr, "pullcache prefetch: --jobs: \"%s\" is not a number from 1 to %d\n",
                argv[a + 1], PREFETCH_JOBS_MAX);
        pc_buf_free(&req);
        return 2;
      }
      pc_buf_add(&req, x, strlen(x) + 1);
      pc_buf_add(&req, argv[a + 1], strlen(argv[a + 1]) + 1);
      a++;
    } else if ((x[0] != '-' || !strcmp(x, "-")) && !file) {
      file = x;
    } else {
      fprintf(stderr, "pullcache prefetch: unexpected argument '%s'\n", x);
      usage(stderr);
      pc_buf_free(&req);
      return 2;
    }
  }
  if (!file) {
    usage(stderr);
    pc_buf_free(&req);
    return 2;
  }
  pc_buf_add(&req, "--", 3);
  int nlines = 0;
  rc = read_list(file, &req, &nlines);
  if (!rc && nlines > 4000) {
    fprintf(stderr, "pullcache prefetch: %s: more than 4000 images; split the list\n", file);
    rc = 2;
  }
  if (rc || pc_buf_add(&req, "", 1)) {
    pc_buf_free(&req);
    return 2;
  }

  char sock[256];
  struct sockaddr_un sa;
  int fd = -1;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  if (cmd_store_socket_path(dir, sock, sizeof(sock)) == 0) {
    memcpy(sa.sun_path, sock, strlen(sock) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
      close(fd);
      fd = -1;
    }
  }
  if (fd < 0) {
    fprintf(stderr,
            "pullcache prefetch: no daemon answers on %s/control.sock: prefetch fills the store "
            "through the running daemon (start `pullcache serve --store %s`)\n",
            dir, dir);
    pc_buf_free(&req);
    return 1;
  }
  size_t off = 0;
  while (off < req.len) {
    ssize_t n = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      fprintf(stderr, "pullcache prefetch: the daemon's control socket: %s\n", strerror(errno));
      close(fd);
      pc_buf_free(&req);
      return 1;
    }
    off += (size_t)n;
  }
  pc_buf_free(&req);

  v.tty = !v.json && isatty(STDERR_FILENO);
  v.images = json_array();
  v.t0 = pc_mono_ms();
  pc_buf_t in;
  pc_buf_init(&in, 1u << 20);
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    if (pc_buf_add(&in, buf, (size_t)n))
      break;
    char *nl;
    while (in.len && (nl = memchr(in.p, '\n', in.len))) {
      on_line(&v, in.p, (size_t)(nl - in.p));
      pc_buf_consume(&in, (size_t)(nl - in.p) + 1);
    }
  }
  close(fd);
  pc_buf_free(&in);
  if (v.tty)
    fprintf(stderr, "\r\033[K");
  if (!v.ended) {
    fprintf(stderr, "pullcache prefetch: the daemon closed the connection before the end "
                    "(stopping?)\n");
    v.code = 1;
  } else if (v.code == 2) {
    fprintf(stderr, "pullcache prefetch: %s\n", v.error[0] ? v.error : "refused by the daemon");
  }
  sort_images(&v);
  if (v.json) {
    json_t *doc = json_pack("{s:O,s:i,s:f}", "images", v.images, "code", v.code, "seconds",
                            (double)(pc_mono_ms() - v.t0) / 1000.0);
    char *s = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) : NULL;
    printf("%s\n", s ? s : "{}");
    free(s);
    json_decref(doc);
  } else if (v.code != 2) {
    print_table(&v);
  }
  json_decref(v.images);
  return v.code;
}
