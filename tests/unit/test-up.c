/* test-up — http/up against a local fixture upstream (tests/tools/up-fixture.py, two ports on
 * 127.0.0.1, started and killed by PID in each test). The fixture logs every request it gets,
 * which is how the tests see what went over the wire (methods, Authorization, Range). */
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "http/up-int.h" /* the state of a fetch, for the white-box tests */
#include "http/up.h"
#include "tests/unit/unit.h"

struct fx {
  pid_t pid;
  int a, b; /* ports */
  char log[600];
};

static void fx_start(struct fx *x)
{
  char ports[600], script[1024];
  const char *dir = unit_tmpdir(), *file = __FILE__, *slash = strrchr(file, '/');
  FILE *fp;
  int i;

  ASSERT(slash);
  snprintf(ports, sizeof(ports), "%s/ports", dir);
  snprintf(x->log, sizeof(x->log), "%s/log", dir);
  snprintf(script, sizeof(script), "%.*s/../tools/up-fixture.py", (int)(slash - file), file);
  fp = fopen(x->log, "w");
  ASSERT(fp);
  fclose(fp);
  x->pid = fork();
  ASSERT(x->pid >= 0);
  if (x->pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execl("/usr/bin/python3", "python3", script, ports, x->log, (char *)NULL);
    _exit(127);
  }
  for (i = 0; i < 1500; i++) {
    fp = fopen(ports, "r");
    if (fp)
      break;
    usleep(10000);
  }
  ASSERT(fp);
  ASSERT_EQ(2, fscanf(fp, "%d %d", &x->a, &x->b));
  fclose(fp);
}

static void fx_stop(struct fx *x)
{
  kill(x->pid, SIGKILL);
  waitpid(x->pid, NULL, 0);
}

/* Number of fixture log lines containing needle. */
static int log_count(const struct fx *x, const char *needle)
{
  FILE *fp = fopen(x->log, "r");
  char *line = NULL;
  size_t cap = 0;
  int n = 0;
  ASSERT(fp);
  while (getline(&line, &cap, fp) > 0)
    if (strstr(line, needle))
      n++;
  free(line);
  fclose(fp);
  return n;
}

struct res {
  int done, rc, status;
  int hdr_calls, hdr_status, data_before_hdr;
  char *body;
  size_t len;
  char ctype[128], fixture[64], clen[32], url[256];
  /* behaviours */
  int chunks;         /* on_data calls */
  int cancel_in_data; /* cancel inside the first on_data */
  int cancelled;
  int cancel_in_headers;
  int hdr_rc, data_rc; /* what on_headers, on_data return */
  /* the fetch's state seen in on_headers, in on_done, right after the cancel in on_data, and
   * of the other fetch right after cancel_other */
  int st_hdr, st_done, st_cancel, st_other;
  up_t *u;           /* for the re-entrant calls below */
  struct res *start; /* start this fetch (url start_url) from inside on_data */
  const char *start_url;
  int *close_in_done; /* up_close from inside on_done; the flag is set by its callback */
  up_fetch_t *f;
  up_timings_t th, td;       /* timings seen in on_headers, in on_done */
  int hdr_seq, done_seq;     /* order of events across fetches (seq below) */
  up_fetch_t **cancel_other; /* cancel this fetch from inside the first on_data */
  const struct fx *chk_fx;   /* in on_done, count the fixture log lines with chk_absent */
  const char *chk_absent;
  int chk_count;
  int hdr_sleep_ms;          /* sleep in on_headers (the peer fills the socket meanwhile) */
  size_t turn_len, turn_max; /* body bytes since the loop's check phase last ran, the most */
};

static int seq;

static void on_done(up_fetch_t *f, int rc, int status, void *arg);

static void copy_hdr(up_fetch_t *f, const char *name, char *out, size_t n)
{
  const char *v = up_fetch_header(f, name);
  snprintf(out, n, "%s", v ? v : "");
}

static int on_headers(up_fetch_t *f, int status, void *arg)
{
  struct res *r = arg;
  r->hdr_calls++;
  r->hdr_status = status;
  r->hdr_seq = ++seq;
  up_fetch_timings(f, &r->th);
  copy_hdr(f, "content-type", r->ctype, sizeof(r->ctype));
  copy_hdr(f, "X-FIXTURE", r->fixture, sizeof(r->fixture));
  copy_hdr(f, "Content-Length", r->clen, sizeof(r->clen));
  r->st_hdr = (int)f->state;
  if (r->hdr_sleep_ms)
    usleep((useconds_t)r->hdr_sleep_ms * 1000);
  if (r->cancel_in_headers) {
    up_fetch_cancel(f);
    r->cancelled = 1;
  }
  return r->hdr_rc;
}

static int on_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  struct res *r = arg;
  if (!r->hdr_calls)
    r->data_before_hdr = 1;
  r->body = realloc(r->body, r->len + len);
  ASSERT(r->body);
  memcpy(r->body + r->len, buf, len);
  r->len += len;
  r->chunks++;
  r->turn_len += len;
  if (r->turn_len > r->turn_max)
    r->turn_max = r->turn_len;
  if (r->cancel_in_data) {
    up_fetch_cancel(f);
    up_fetch_cancel(f); /* twice is harmless */
    r->st_cancel = (int)f->state;
    r->cancelled = 1;
    return 0;
  }
  if (r->cancel_other) {
    up_fetch_cancel(*r->cancel_other);
    r->st_other = (int)(*r->cancel_other)->state;
    r->cancel_other = NULL;
  }
  if (r->data_rc)
    return r->data_rc;
  if (r->start) {
    up_req_t req = {.method = "GET",
                    .url = r->start_url,
                    .on_headers = on_headers,
                    .on_data = on_data,
                    .on_done = on_done,
                    .arg = r->start};
    ASSERT_OK(up_fetch_start(r->u, &req, &r->start->f));
    r->start = NULL;
  }
  return 0;
}

static void on_up_closed(void *arg);

static void on_done(up_fetch_t *f, int rc, int status, void *arg)
{
  struct res *r = arg;
  if (r->close_in_done) {
    up_close(r->u, on_up_closed, r->close_in_done);
    up_fetch_cancel(f); /* the fetch is over: does nothing */
  }
  r->done++;
  r->st_done = (int)f->state;
  r->rc = rc;
  r->status = status;
  r->done_seq = ++seq;
  up_fetch_timings(f, &r->td);
  if (r->chk_absent)
    r->chk_count = log_count(r->chk_fx, r->chk_absent);
  snprintf(r->url, sizeof(r->url), "%s", up_fetch_url(f));
  if (!r->hdr_calls && rc == 0)
    r->data_before_hdr = 1; /* on_headers must have run for a complete response */
}

static void run_until(uv_loop_t *loop, const int *flag)
{
  for (int i = 0; !*flag && i < 200000; i++)
    uv_run(loop, UV_RUN_ONCE);
  ASSERT(*flag);
}

static void on_up_closed(void *arg)
{
  *(int *)arg = 1;
}

static void close_all(uv_loop_t *loop, up_t *u)
{
  int closed = 0;
  up_close(u, on_up_closed, &closed);
  run_until(loop, &closed);
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT_EQ(0, uv_loop_close(loop));
}

static int body_ok(const struct res *r, size_t from, size_t n)
{
  if (r->len != n)
    return 0;
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)r->body[i] != (7 * (i + from) + 3) % 251)
      return 0;
  return 1;
}

/* Start one fetch, run the loop until it is done. */
static void fetch(up_t *u, uv_loop_t *loop, const char *method, const char *url, uint64_t from,
                  struct res *r)
{
  up_req_t req = {.method = method,
                  .url = url,
                  .range_from = from,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = r};
  ASSERT_OK(up_fetch_start(u, &req, &r->f));
  run_until(loop, &r->done);
  ASSERT_EQ(1, r->done);
}

/* fetch() with credentials and no_auth. */
static void fetch_auth(up_t *u, uv_loop_t *loop, const char *url, const char *userpwd, int no_auth,
                       struct res *r)
{
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = r,
                  .userpwd = userpwd,
                  .no_auth = no_auth};
  ASSERT_OK(up_fetch_start(u, &req, &r->f));
  run_until(loop, &r->done);
  ASSERT_EQ(1, r->done);
}

static up_t *mk(uv_loop_t *loop, const up_opts_t *o)
{
  up_t *u;
  ASSERT_OK(uv_loop_init(loop));
  ASSERT_OK(up_new(loop, o, &u));
  return u;
}

TEST(get_body_and_headers)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.user_agent = "pc-test/1"};
  up_t *u;
  struct res r = {0};
  char url[128], needle[128];
  up_stats_t st;
  up_req_t req = {.method = "GET",
                  .url = url,
                  .accept = "application/x-test, */*",
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = &r};

  fx_start(&x);
  u = mk(&loop, &o);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/70000", x.a);
  ASSERT_OK(up_fetch_start(u, &req, NULL));
  run_until(&loop, &r.done);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT_EQ(200, r.hdr_status);
  ASSERT_EQ(0, r.data_before_hdr);
  ASSERT(body_ok(&r, 0, 70000));
  ASSERT_STREQ("application/octet-stream", r.ctype);
  ASSERT_STREQ("blob", r.fixture);
  ASSERT_STREQ(url, r.url);
  snprintf(needle, sizeof(needle), "%d GET /blob/70000 auth=[-] range=[-]", x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  ASSERT_EQ(1, log_count(&x, "accept=[application/x-test, */*] ua=[pc-test/1]"));
  up_get_stats(u, &st);
  ASSERT_EQ(1, st.requests);
  ASSERT_EQ(70000, st.body_bytes);
  ASSERT_EQ(0, st.errors);

  /* Bad requests are refused at once. */
  req.method = "POST";
  ASSERT_EQ(UV_EINVAL, up_fetch_start(u, &req, NULL));
  req.method = "GET";
  req.url = "ftp://127.0.0.1/x";
  ASSERT_EQ(UV_EINVAL, up_fetch_start(u, &req, NULL));
  req.url = url;
  req.accept = "a\r\nX-Evil: 1";
  ASSERT_EQ(UV_EINVAL, up_fetch_start(u, &req, NULL));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(head)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/5000", x.a);
  fetch(u, &loop, "HEAD", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT_EQ(0, r.len);
  ASSERT_STREQ("5000", r.clen);
  ASSERT_EQ(1, log_count(&x, "HEAD /blob/5000"));
  close_all(&loop, u);
  fx_stop(&x);
}

TEST(redirect_307_two_ports)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0}, h = {0};
  char url[128], want[128], needle[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/r307/5000", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT(body_ok(&r, 0, 5000));
  ASSERT_STREQ("blob", r.fixture);
  snprintf(want, sizeof(want), "http://127.0.0.1:%d/blob/5000", x.b);
  ASSERT_STREQ(want, r.url);
  snprintf(needle, sizeof(needle), "%d GET /r307b/5000", x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(needle, sizeof(needle), "%d GET /blob/5000", x.b);
  ASSERT_EQ(1, log_count(&x, needle));

  /* HEAD stays HEAD on every hop. */
  fetch(u, &loop, "HEAD", url, 0, &h);
  ASSERT_OK(h.rc);
  ASSERT_EQ(200, h.status);
  ASSERT_EQ(0, h.len);
  ASSERT_EQ(1, h.hdr_calls);
  ASSERT_STREQ(want, h.url);
  snprintf(needle, sizeof(needle), "%d HEAD /r307/5000", x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(needle, sizeof(needle), "%d HEAD /r307b/5000", x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(needle, sizeof(needle), "%d HEAD /blob/5000", x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  up_get_stats(u, &st);
  ASSERT_EQ(6, st.requests);
  ASSERT_EQ(5000, st.body_bytes); /* redirect bodies are not counted */
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(redirect_loop)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.max_redirects = 3};
  up_t *u;
  struct res r = {0};
  char url[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, &o);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/loop", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM, r.rc);
  ASSERT_EQ(302, r.status);
  ASSERT_EQ(0, r.hdr_calls);
  ASSERT_EQ(4, log_count(&x, "GET /loop")); /* the request and 3 hops */
  up_get_stats(u, &st);
  ASSERT_EQ(1, st.errors);
  close_all(&loop, u);
  fx_stop(&x);
}

TEST(bearer_token_flow)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128], needle[160];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/manifests/v1", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT_EQ(strlen("manifest:lib/app"), r.len);
  ASSERT(memcmp(r.body, "manifest:lib/app", r.len) == 0);
  ASSERT_STREQ("application/vnd.oci.image.manifest.v1+json", r.ctype);
  /* One anonymous token request with the challenge's service and (encoded) scope. */
  ASSERT_EQ(1, log_count(&x, "GET /token?service=fixture&scope=repository%3Alib%2Fapp%3Apull "
                             "auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/lib/app/manifests/v1 auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/lib/app/manifests/v1 auth=[Bearer tok-1]"));
  snprintf(needle, sizeof(needle), "%d GET /v2/lib/app/manifests/v1", x.a);
  ASSERT_EQ(2, log_count(&x, needle));
  up_get_stats(u, &st);
  ASSERT_EQ(1, st.tokens);
  ASSERT_EQ(3, st.requests);
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(bearer_token_cached)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r1 = {0}, r2 = {0}, r3 = {0};
  char url[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/manifests/v1", x.a);
  fetch(u, &loop, "GET", url, 0, &r1);
  ASSERT_EQ(200, r1.status);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/manifests/v2", x.a);
  fetch(u, &loop, "HEAD", url, 0, &r2);
  ASSERT_OK(r2.rc);
  ASSERT_EQ(200, r2.status);
  ASSERT_EQ(1, log_count(&x, "GET /token"));
  /* The cached token went out at once: no 401 round trip for v2. */
  ASSERT_EQ(1, log_count(&x, "HEAD /v2/lib/app/manifests/v2 auth=[Bearer tok-1]"));
  ASSERT_EQ(0, log_count(&x, "HEAD /v2/lib/app/manifests/v2 auth=[-]"));
  /* Another repository is another scope: a second token. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/other/manifests/v1", x.a);
  fetch(u, &loop, "GET", url, 0, &r3);
  ASSERT_EQ(200, r3.status);
  ASSERT_EQ(2, log_count(&x, "GET /token"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/other/manifests/v1 auth=[Bearer tok-2]"));
  up_get_stats(u, &st);
  ASSERT_EQ(2, st.tokens);
  ASSERT_EQ(7, st.requests);
  close_all(&loop, u);
  free(r1.body);
  free(r3.body);
  fx_stop(&x);
}

TEST(no_authorization_across_hosts)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128], needle[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/blobs/sha256:abc", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 100));
  ASSERT_EQ(1, log_count(&x, "GET /v2/lib/app/blobs/sha256:abc auth=[Bearer tok-1]"));
  snprintf(needle, sizeof(needle), "%d GET /blob/100 auth=[-]", x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  ASSERT_EQ(0, log_count(&x, "/blob/100 auth=[Bearer"));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(token_endpoint_error)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0}, b = {0};
  char url[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/failtok/manifests/v1", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM, r.rc);
  ASSERT_EQ(500, r.status);
  ASSERT_EQ(0, r.hdr_calls);
  ASSERT_EQ(1, log_count(&x, "GET /token500"));
  ASSERT_EQ(1, log_count(&x, "/v2/failtok/manifests/v1"));
  /* A Basic challenge is a final 401 for an anonymous client. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/basic", x.a);
  fetch(u, &loop, "GET", url, 0, &b);
  ASSERT_OK(b.rc);
  ASSERT_EQ(401, b.status);
  ASSERT_EQ(1, b.hdr_calls);
  up_get_stats(u, &st);
  ASSERT_EQ(0, st.tokens);
  ASSERT_EQ(1, st.errors);
  close_all(&loop, u);
  free(b.body);
  fx_stop(&x);
}

TEST(range_request)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/1000", x.a);
  fetch(u, &loop, "GET", url, 100, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(206, r.status);
  ASSERT(body_ok(&r, 100, 900));
  ASSERT_EQ(1, log_count(&x, "GET /blob/1000 auth=[-] range=[bytes=100-]"));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(connection_refused)
{
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  /* A port nobody listens on: bound (not listening) by us, so nobody else can take it. */
  ASSERT(fd >= 0);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
  ASSERT_OK(getsockname(fd, (struct sockaddr *)&sa, &sl));
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/1", ntohs(sa.sin_port));
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, r.rc);
  ASSERT_EQ(0, r.status);
  ASSERT_EQ(0, r.hdr_calls);
  close_all(&loop, u);
  close(fd);
}

TEST(stall_timeout)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.stall_timeout_ms = 300, .first_byte_timeout_ms = 300};
  up_t *u;
  struct res r = {0}, h = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, &o);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/stall", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM_TIMEOUT, r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT(body_ok(&r, 0, 10));
  /* No status line at all: the first-byte timeout. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/stallhdr", x.a);
  fetch(u, &loop, "GET", url, 0, &h);
  ASSERT_EQ(PC_E_UPSTREAM_TIMEOUT, h.rc);
  ASSERT_EQ(0, h.status);
  ASSERT_EQ(0, h.hdr_calls);
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

/* A body that beats the stall timer byte by byte but averages under min_rate ends with a
 * timeout (the fill then resumes on a fresh connection). */
TEST(min_rate_ends_a_trickle)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.stall_timeout_ms = 2000, .min_rate = 100, .min_rate_window_ms = 1000};
  up_t *u;
  struct res r = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, &o);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/trickle", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM_TIMEOUT, r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(r.len > 0 && r.len < 100); /* ~10 bytes/s for about a window */
  ASSERT(body_ok(&r, 0, r.len));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(truncated_body)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/trunc", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_EQ(PC_E_UPSTREAM, r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 100));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

/* A body of many chunks arrives whole, once and in order, and is counted. */
TEST(big_body_in_chunks)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/3000000", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(r.chunks > 10);
  ASSERT(body_ok(&r, 0, 3000000)); /* every byte once, in order */
  up_get_stats(u, &st);
  ASSERT_EQ(3000000, st.body_bytes);
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

static void on_turn(uv_check_t *h)
{
  struct res *r = h->data;
  r->turn_len = 0;
}

/* curl reads a readable socket in a loop of up to 100 buffers per call: a body gives the loop a
 * turn after UP__TURN_BYTES (so a fill's clients are sent what was written), every byte still
 * comes once and in order. */
TEST(body_yields_to_the_loop)
{
  struct fx x;
  uv_loop_t loop;
  uv_check_t chk;
  up_t *u;
  struct res r = {.hdr_sleep_ms = 200};
  char url[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(uv_check_init(&loop, &chk));
  chk.data = &r;
  ASSERT_OK(uv_check_start(&chk, on_turn));
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/3000000", x.a);
  fetch(u, &loop, "GET", url, 0, &r);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 3000000));
  ASSERT(u->yields > 0); /* the peer had filled the socket while on_headers slept */
  ASSERT(r.turn_max <= UP__TURN_BYTES + 2 * UP__RECV_BUFFER);
  uv_close((uv_handle_t *)&chk, NULL);
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

TEST(cancel_in_on_data)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {.cancel_in_data = 1}, r2 = {0};
  char url[128];
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = &r};

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/2000000", x.a);
  ASSERT_OK(up_fetch_start(u, &req, &r.f));
  run_until(&loop, &r.cancelled);
  ASSERT_EQ(UP__F_CANCELLED, r.st_cancel); /* the release waits for the idle handle */
  for (int i = 0; i < 20; i++)
    uv_run(&loop, UV_RUN_NOWAIT);
  ASSERT_EQ(0, r.done);
  ASSERT(r.len > 0 && r.len < 2000000);
  /* The client still works. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/1000", x.a);
  fetch(u, &loop, "GET", url, 0, &r2);
  ASSERT_OK(r2.rc);
  ASSERT(body_ok(&r2, 0, 1000));
  ASSERT_EQ(0, r.done);
  close_all(&loop, u);
  free(r.body);
  free(r2.body);
  fx_stop(&x);
}

TEST(close_with_fetches_in_flight)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r[4];
  char url[4][128];
  /* Two fetches in their body phase (the stalled bodies), one in the token flow, one waiting
   * for its status line. */
  const char *paths[4] = {"/stall", "/stall", "/v2/lib/app/manifests/v1", "/stallhdr"};
  int done2;

  fx_start(&x);
  u = mk(&loop, NULL);
  memset(r, 0, sizeof(r));
  for (int i = 0; i < 4; i++) {
    up_req_t req = {.method = "GET",
                    .url = url[i],
                    .on_headers = on_headers,
                    .on_data = on_data,
                    .on_done = on_done,
                    .arg = &r[i]};
    snprintf(url[i], sizeof(url[i]), "http://127.0.0.1:%d%s", x.a, paths[i]);
    ASSERT_OK(up_fetch_start(u, &req, &r[i].f));
  }
  /* Until both stalled bodies are flowing (the token flow may be anywhere). */
  for (int i = 0; i < 200000 && (r[0].len == 0 || r[1].len == 0); i++)
    uv_run(&loop, UV_RUN_ONCE);
  ASSERT(r[0].len > 0 && r[1].len > 0);
  ASSERT_EQ(0, r[0].done + r[1].done + r[3].done);
  done2 = r[2].done; /* the small manifest may have finished already */
  close_all(&loop, u);
  for (int i = 0; i < 4; i++) {
    ASSERT_EQ(i == 2 ? done2 : 0, r[i].done);
    free(r[i].body);
  }
  fx_stop(&x);
}

TEST(reentrant_calls)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res a = {0}, b = {0}, c = {.cancel_in_headers = 1}, d = {0}, e = {0};
  char url[128], burl[128];
  int closed = 0;
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done};

  fx_start(&x);
  u = mk(&loop, NULL);
  /* A fetch started from inside another one's on_data. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/200000", x.a);
  snprintf(burl, sizeof(burl), "http://127.0.0.1:%d/r307/1000", x.a);
  a.u = u;
  a.start = &b;
  a.start_url = burl;
  req.arg = &a;
  ASSERT_OK(up_fetch_start(u, &req, &a.f));
  /* Cancelled inside on_headers, and cancelled at once from the loop (token flow pending). */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/5000", x.a);
  req.arg = &c;
  ASSERT_OK(up_fetch_start(u, &req, &c.f));
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/manifests/v1", x.a);
  req.arg = &d;
  ASSERT_OK(up_fetch_start(u, &req, &d.f));
  up_fetch_cancel(d.f);
  run_until(&loop, &a.done);
  run_until(&loop, &b.done);
  run_until(&loop, &c.cancelled);
  ASSERT_OK(a.rc);
  ASSERT(body_ok(&a, 0, 200000));
  ASSERT_OK(b.rc);
  ASSERT(body_ok(&b, 0, 1000));
  /* up_close from inside on_done. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/10", x.b);
  e.u = u;
  e.close_in_done = &closed;
  req.arg = &e;
  ASSERT_OK(up_fetch_start(u, &req, &e.f));
  run_until(&loop, &closed);
  ASSERT_EQ(1, e.done);
  ASSERT_OK(e.rc);
  ASSERT_EQ(0, c.done);
  ASSERT_EQ(0, c.len);
  ASSERT_EQ(0, d.done + d.hdr_calls);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT_EQ(0, uv_loop_close(&loop));
  free(a.body);
  free(b.body);
  free(e.body);
  fx_stop(&x);
}

TEST(timings_phases)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res s = {0}, d = {0}, t = {0}, c = {0};
  char url[128];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  fx_start(&x);
  u = mk(&loop, NULL);
  /* A slow first byte: all of it is first_byte, nothing else. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/sleep/200/1000", x.a);
  fetch(u, &loop, "GET", url, 0, &s);
  ASSERT_OK(s.rc);
  ASSERT(body_ok(&s, 0, 1000));
  ASSERT(s.th.first_byte_us >= 150000);
  ASSERT_EQ(0, s.th.last_byte_us); /* not over yet in on_headers */
  ASSERT_EQ(s.th.first_byte_us, s.td.first_byte_us);
  ASSERT(s.td.last_byte_us >= s.td.first_byte_us);
  ASSERT_EQ(1, s.td.hops);
  ASSERT_EQ(0, s.td.redirect_us + s.td.token_us + s.td.token_fetches);

  /* A slow redirect: counted as redirect time, inside first_byte. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/slowredir/200", x.a);
  fetch(u, &loop, "GET", url, 0, &d);
  ASSERT_OK(d.rc);
  ASSERT(body_ok(&d, 0, 10));
  ASSERT_EQ(2, d.td.hops);
  ASSERT(d.td.redirect_us >= 150000);
  ASSERT(d.td.first_byte_us >= d.td.redirect_us);
  ASSERT(d.td.last_byte_us >= d.td.first_byte_us);
  ASSERT_EQ(0, d.td.token_us + d.td.token_fetches);

  /* A slow token endpoint: token time; the 401 hop is redirect time; both inside first_byte. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/slowtok/manifests/v1", x.a);
  fetch(u, &loop, "GET", url, 0, &t);
  ASSERT_OK(t.rc);
  ASSERT_EQ(200, t.status);
  ASSERT_EQ(1, log_count(&x, "GET /token?delay=250"));
  ASSERT_EQ(2, t.td.hops); /* the 401 and the retry; the token request is not a hop */
  ASSERT_EQ(1, t.td.token_fetches);
  ASSERT(t.td.token_us >= 200000);
  ASSERT(t.td.redirect_us > 0);
  ASSERT(t.td.first_byte_us >= t.td.token_us + t.td.redirect_us);
  ASSERT_EQ(t.th.token_us, t.td.token_us);

  /* The token is cached now: one hop, no token time. */
  free(t.body);
  memset(&t, 0, sizeof(t));
  fetch(u, &loop, "GET", url, 0, &t);
  ASSERT_EQ(200, t.status);
  ASSERT_EQ(1, t.td.hops);
  ASSERT_EQ(0, t.td.token_us + t.td.token_fetches + t.td.redirect_us);

  /* A failed fetch has an end but no first byte (a port bound by us, not listening). */
  ASSERT(fd >= 0);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
  ASSERT_OK(getsockname(fd, (struct sockaddr *)&sa, &sl));
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/1", ntohs(sa.sin_port));
  fetch(u, &loop, "GET", url, 0, &c);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, c.rc);
  ASSERT_EQ(1, c.td.hops);
  ASSERT_EQ(0, c.td.first_byte_us);
  ASSERT(c.td.last_byte_us > 0);
  close_all(&loop, u);
  close(fd);
  free(s.body);
  free(d.body);
  free(t.body);
  fx_stop(&x);
}

#define ALICE "alice:secret"
#define ALICE_B64 "YWxpY2U6c2VjcmV0"
#define BOB "bob:wrong"
#define BOB_B64 "Ym9iOndyb25n"

TEST(credentials_token_realm)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res a1 = {0}, an = {0}, b = {0}, a2 = {0}, rd = {0};
  char url[128], needle[200];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/priv/manifests/v1", x.a);
  /* With credentials: the token request to the realm (port B) carries them as Basic, the
   * registry (port A) never sees them. */
  fetch_auth(u, &loop, url, ALICE, 0, &a1);
  ASSERT_OK(a1.rc);
  ASSERT_EQ(200, a1.status);
  ASSERT_EQ(strlen("manifest:priv"), a1.len);
  snprintf(needle, sizeof(needle),
           "%d GET /ctoken?service=fixture&scope=repository%%3Apriv%%3Apull auth=[Basic " ALICE_B64
           "]",
           x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  ASSERT_EQ(1, log_count(&x, "GET /v2/priv/manifests/v1 auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/priv/manifests/v1 auth=[Bearer ctok-1]"));
  ASSERT_EQ(0, log_count(&x, "/v2/priv/manifests/v1 auth=[Basic"));

  /* Anonymous: the credentialed token is not offered; an anonymous one is fetched (without
   * Authorization) and the registry refuses it: a final 401. */
  fetch_auth(u, &loop, url, NULL, 0, &an);
  ASSERT_OK(an.rc);
  ASSERT_EQ(401, an.status);
  ASSERT_EQ(1, log_count(&x, "GET /v2/priv/manifests/v1 auth=[Bearer ctok-1]"));
  ASSERT_EQ(1, log_count(&x, "/ctoken?service=fixture&scope=repository%3Apriv%3Apull auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/priv/manifests/v1 auth=[Bearer anon-2]"));

  /* Other credentials: their own token request, which the realm refuses. */
  fetch_auth(u, &loop, url, BOB, 0, &b);
  ASSERT_EQ(PC_E_UPSTREAM, b.rc);
  ASSERT_EQ(401, b.status);
  ASSERT_EQ(0, b.hdr_calls);
  ASSERT_EQ(1, log_count(&x, "/ctoken?service=fixture&scope=repository%3Apriv%3Apull "
                             "auth=[Basic " BOB_B64 "]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/priv/manifests/v1 auth=[Bearer ctok-1]"));

  /* Alice again: her cached token goes out at once; no new token request. */
  fetch_auth(u, &loop, url, ALICE, 0, &a2);
  ASSERT_EQ(200, a2.status);
  ASSERT_EQ(2, log_count(&x, "GET /v2/priv/manifests/v1 auth=[Bearer ctok-1]"));
  ASSERT_EQ(1, log_count(&x, "auth=[Basic " ALICE_B64 "]"));
  /* Requests to the registry: a1 twice, an twice, b once (its token failed), a2 once. */
  ASSERT_EQ(6, log_count(&x, "GET /v2/priv/manifests/v1 auth=["));
  ASSERT_EQ(3, log_count(&x, "GET /v2/priv/manifests/v1 auth=[-]"));

  /* The realm redirects the token request to another host: the credentials stay behind. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/privredir/manifests/v1", x.a);
  fetch_auth(u, &loop, url, ALICE, 0, &rd);
  ASSERT_OK(rd.rc);
  ASSERT_EQ(401, rd.status); /* the anonymous token it got is refused */
  snprintf(needle, sizeof(needle),
           "%d GET /ctokenredir?service=fixture&scope=repository%%3A"
           "privredir%%3Apull auth=[Basic " ALICE_B64 "]",
           x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(needle, sizeof(needle),
           "%d GET /ctoken?service=fixture&scope=repository%%3A"
           "privredir%%3Apull auth=[-]",
           x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  ASSERT_EQ(2, log_count(&x, "auth=[Basic " ALICE_B64 "]"));
  up_get_stats(u, &st);
  ASSERT_EQ(3, st.tokens); /* ctok-1, anon-2, and privredir's anonymous one; none for bob */
  close_all(&loop, u);
  free(a1.body);
  free(an.body);
  free(a2.body);
  free(rd.body);
  fx_stop(&x);
}

TEST(credentials_basic_challenge)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res an = {0}, a = {0}, b = {0}, rd = {0}, plain = {0}, far = {0}, farb = {0};
  char url[128], needle[160];

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/basicauth/1000", x.a);
  /* Anonymous: the Basic challenge is final. */
  fetch_auth(u, &loop, url, NULL, 0, &an);
  ASSERT_OK(an.rc);
  ASSERT_EQ(401, an.status);
  ASSERT_EQ(1, an.td.hops);
  /* With credentials: asked once without, then once with Basic. */
  fetch_auth(u, &loop, url, ALICE, 0, &a);
  ASSERT_OK(a.rc);
  ASSERT_EQ(200, a.status);
  ASSERT_EQ(1, a.hdr_calls);
  ASSERT(body_ok(&a, 0, 1000));
  ASSERT_EQ(2, a.td.hops);
  ASSERT(a.td.redirect_us > 0); /* the 401 hop */
  ASSERT_EQ(2, log_count(&x, "GET /basicauth/1000 auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /basicauth/1000 auth=[Basic " ALICE_B64 "]"));
  /* Wrong credentials: answered once only; the second 401 is final. */
  fetch_auth(u, &loop, url, BOB, 0, &b);
  ASSERT_OK(b.rc);
  ASSERT_EQ(401, b.status);
  ASSERT_EQ(2, b.td.hops);
  ASSERT_EQ(1, log_count(&x, "GET /basicauth/1000 auth=[Basic " BOB_B64 "]"));
  ASSERT_EQ(5, log_count(&x, "GET /basicauth/1000 auth=["));

  /* After the Basic answer the registry redirects to another host: no credentials there. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/basicauth/redir", x.a);
  fetch_auth(u, &loop, url, ALICE, 0, &rd);
  ASSERT_OK(rd.rc);
  ASSERT_EQ(200, rd.status);
  ASSERT(body_ok(&rd, 0, 100));
  ASSERT_EQ(3, rd.td.hops);
  snprintf(needle, sizeof(needle), "%d GET /blob/100 auth=[-]", x.b);
  ASSERT_EQ(1, log_count(&x, needle));

  /* No challenge, no credentials. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/10", x.a);
  fetch_auth(u, &loop, url, ALICE, 0, &plain);
  ASSERT_EQ(200, plain.status);
  ASSERT_EQ(1, log_count(&x, "GET /blob/10 auth=[-]"));

  /* A host the fetch was redirected to challenges: it is not the registry the credentials
   * are for. Basic is not answered; a Bearer realm is asked anonymously. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/tobasic/10", x.a);
  fetch_auth(u, &loop, url, ALICE, 0, &far);
  ASSERT_OK(far.rc);
  ASSERT_EQ(401, far.status);
  ASSERT_EQ(2, far.td.hops);
  snprintf(needle, sizeof(needle), "%d GET /basicauth/10 auth=[-]", x.b);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/topriv", x.a);
  fetch_auth(u, &loop, url, ALICE, 0, &farb);
  ASSERT_OK(farb.rc);
  ASSERT_EQ(401, farb.status); /* the anonymous token does not open priv2 */
  ASSERT_EQ(1, log_count(&x, "/ctoken?service=fixture&scope=repository%3Apriv2%3Apull "
                             "auth=[-]"));
  ASSERT_EQ(0, log_count(&x, "/v2/priv2/manifests/v1 auth=[Basic"));
  /* Alice's password went out exactly twice in all, both times to /basicauth on port A. */
  ASSERT_EQ(2, log_count(&x, "auth=[Basic " ALICE_B64 "]"));
  snprintf(needle, sizeof(needle), "%d GET /basicauth/1000 auth=[Basic " ALICE_B64 "]", x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  snprintf(needle, sizeof(needle), "%d GET /basicauth/redir auth=[Basic " ALICE_B64 "]", x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  close_all(&loop, u);
  free(an.body);
  free(a.body);
  free(b.body);
  free(rd.body);
  free(plain.body);
  free(far.body);
  free(farb.body);
  fx_stop(&x);
}

TEST(no_auth)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res p1 = {0}, n = {0}, p2 = {0}, pb = {0};
  char url[128];
  up_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/lib/app/manifests/v1", x.a);
  /* The Bearer challenge is the final response: no token request. */
  fetch_auth(u, &loop, url, NULL, 1, &p1);
  ASSERT_OK(p1.rc);
  ASSERT_EQ(401, p1.status);
  ASSERT_EQ(1, p1.hdr_calls);
  ASSERT_EQ(1, p1.td.hops);
  ASSERT_EQ(0, p1.td.token_fetches);
  ASSERT_EQ(0, log_count(&x, "GET /token"));
  /* A normal fetch caches a token for the repository ... */
  fetch_auth(u, &loop, url, NULL, 0, &n);
  ASSERT_EQ(200, n.status);
  ASSERT_EQ(1, log_count(&x, "GET /token"));
  /* ... which a no_auth fetch does not send. */
  fetch_auth(u, &loop, url, NULL, 1, &p2);
  ASSERT_EQ(401, p2.status);
  ASSERT_EQ(3, log_count(&x, "GET /v2/lib/app/manifests/v1 auth=[-]"));
  ASSERT_EQ(1, log_count(&x, "GET /v2/lib/app/manifests/v1 auth=[Bearer"));
  /* Credentials with no_auth: not sent, even to a Basic challenge. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/basicauth/10", x.a);
  fetch_auth(u, &loop, url, ALICE, 1, &pb);
  ASSERT_OK(pb.rc);
  ASSERT_EQ(401, pb.status);
  ASSERT_EQ(1, log_count(&x, "GET /basicauth/10 auth=["));
  ASSERT_EQ(0, log_count(&x, "auth=[Basic"));
  up_get_stats(u, &st);
  ASSERT_EQ(1, st.tokens);
  ASSERT_EQ(0, st.errors);
  close_all(&loop, u);
  free(p1.body);
  free(n.body);
  free(p2.body);
  free(pb.body);
  fx_stop(&x);
}

/* ---------------------------------------------------------------------------------------- */
/* Pools                                                                                     */

/* Let a /hold/<name> request of the fixture answer. */
static void fx_go(const struct fx *x, const char *name)
{
  char path[700];
  const char *slash = strrchr(x->log, '/');
  FILE *fp;
  snprintf(path, sizeof(path), "%.*s/go-%s", (int)(slash - x->log), x->log, name);
  fp = fopen(path, "w");
  ASSERT(fp);
  fclose(fp);
}

/* The t= of the first fixture log line containing needle. */
static double log_time(const struct fx *x, const char *needle)
{
  FILE *fp = fopen(x->log, "r");
  char *line = NULL, *t;
  size_t cap = 0;
  double v = -1;
  ASSERT(fp);
  while (v < 0 && getline(&line, &cap, fp) > 0)
    if (strstr(line, needle)) {
      t = strstr(line, " t=");
      ASSERT(t);
      v = strtod(t + 3, NULL);
    }
  free(line);
  fclose(fp);
  ASSERT(v >= 0);
  return v;
}

static void on_tick(uv_timer_t *t)
{
  (void)t;
}

/* Run the loop (waking at least every 5 ms) until cond(arg) holds; fail after limit_ms. */
static void run_while(uv_loop_t *loop, int (*cond)(const void *arg), const void *arg,
                      uint64_t limit_ms)
{
  uv_timer_t tick;
  uint64_t end = uv_hrtime() + limit_ms * 1000000;
  ASSERT_OK(uv_timer_init(loop, &tick));
  ASSERT_OK(uv_timer_start(&tick, on_tick, 5, 5));
  while (!cond(arg) && uv_hrtime() < end)
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
  ASSERT(cond(arg));
}

static int never(const void *arg)
{
  (void)arg;
  return 0;
}

/* Run the loop for ms (a run in which nothing must happen). */
static void spin(uv_loop_t *loop, uint64_t ms)
{
  uv_timer_t tick;
  uint64_t end = uv_hrtime() + ms * 1000000;
  ASSERT_OK(uv_timer_init(loop, &tick));
  ASSERT_OK(uv_timer_start(&tick, on_tick, 5, 5));
  while (uv_hrtime() < end && !never(NULL))
    uv_run(loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(loop, UV_RUN_NOWAIT);
}

struct logwait {
  const struct fx *x;
  const char *needle;
  int n;
};

static int log_has(const void *arg)
{
  const struct logwait *w = arg;
  return log_count(w->x, w->needle) >= w->n;
}

static void wait_log(uv_loop_t *loop, const struct fx *x, const char *needle, int n)
{
  struct logwait w = {x, needle, n};
  run_while(loop, log_has, &w, 30000);
}

static int is_done(const void *arg)
{
  return ((const struct res *)arg)->done > 0;
}

/* Start a GET of path on port A through pool p. */
static void start_pooled(up_t *u, up_pool_t *p, const struct fx *x, const char *path, struct res *r)
{
  char url[128];
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = r,
                  .pool = p};
  snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", x->a, path);
  ASSERT_OK(up_fetch_start(u, &req, &r->f));
}

static void pool_counts(up_pool_t *p, unsigned active, unsigned queued)
{
  up_pool_stats_t st;
  up_pool_get_stats(p, &st);
  ASSERT_EQ(active, st.active);
  ASSERT_EQ(queued, st.queued);
}

TEST(pool_max_active_serializes)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t po = {.max_active = 1};
  struct res a = {0}, b = {0};
  up_pool_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  ASSERT_STREQ("fx", up_pool_name(p));
  a.chk_fx = &x;
  a.chk_absent = "GET /hold/b";
  start_pooled(u, p, &x, "/hold/a", &a);
  start_pooled(u, p, &x, "/hold/b", &b);
  pool_counts(p, 1, 1);
  wait_log(&loop, &x, "GET /hold/a", 1);
  /* a is held by the server: b must not go out meanwhile. */
  spin(&loop, 300);
  ASSERT_EQ(0, log_count(&x, "GET /hold/b"));
  pool_counts(p, 1, 1);
  fx_go(&x, "a");
  run_while(&loop, is_done, &a, 30000);
  ASSERT_OK(a.rc);
  ASSERT_EQ(0, a.chk_count); /* when a ended, b had not reached the server */
  wait_log(&loop, &x, "GET /hold/b", 1);
  pool_counts(p, 1, 0);
  fx_go(&x, "b");
  run_while(&loop, is_done, &b, 30000);
  ASSERT_OK(b.rc);
  ASSERT(body_ok(&b, 0, 10));
  ASSERT(a.done_seq < b.hdr_seq);
  ASSERT_EQ(0, a.td.queue_us);     /* a never waited */
  ASSERT(b.td.queue_us >= 250000); /* b waited for a, which the server held >= 300 ms */
  ASSERT(b.td.last_byte_us >= b.td.first_byte_us); /* measured from leaving the queue */
  up_pool_get_stats(p, &st);
  ASSERT_EQ(2, st.fetches);
  ASSERT_EQ(2, st.requests);
  ASSERT_EQ(0, st.active + st.queued);
  ASSERT_EQ(20, st.body_bytes);
  close_all(&loop, u); /* frees the pool, which was never released */
  free(a.body);
  free(b.body);
  fx_stop(&x);
}

TEST(pool_cancel_queued)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t po = {.max_active = 1};
  struct res a = {0}, b = {0}, c = {0}, d = {0};
  up_pool_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  a.cancel_other = &b.f; /* b is cancelled from inside a's on_data (a curl callback) */
  start_pooled(u, p, &x, "/hold/a", &a);
  start_pooled(u, p, &x, "/blob/10", &b);
  start_pooled(u, p, &x, "/blob/20", &c);
  start_pooled(u, p, &x, "/blob/30", &d);
  pool_counts(p, 1, 3);
  ASSERT_EQ(UP__F_QUEUED, c.f->state);
  up_fetch_cancel(c.f); /* from the loop: released at once (the memory goes with the loop) */
  ASSERT_EQ(UP__F_RELEASED, c.f->state);
  pool_counts(p, 1, 2);
  wait_log(&loop, &x, "GET /hold/a", 1);
  fx_go(&x, "a");
  run_while(&loop, is_done, &d, 30000);
  ASSERT_OK(a.rc);
  ASSERT_OK(d.rc);
  ASSERT(body_ok(&d, 0, 30));
  spin(&loop, 50);
  ASSERT_EQ(0, b.done + b.hdr_calls + c.done + c.hdr_calls);
  ASSERT_EQ(UP__F_CANCELLED, a.st_other); /* inside a curl callback: released from the idle */
  ASSERT_EQ(0, log_count(&x, "GET /blob/10 "));
  ASSERT_EQ(0, log_count(&x, "GET /blob/20 "));
  up_pool_get_stats(p, &st);
  ASSERT_EQ(2, st.fetches);
  ASSERT_EQ(0, st.active + st.queued);
  close_all(&loop, u);
  free(a.body);
  free(d.body);
  fx_stop(&x);
}

/* [fetch] queue_wait: a fetch queued behind a held one longer than queue_wait_ms ends unsent
 * with PC_E_UPSTREAM_BUSY (counted); one dispatched before its limit is not touched. */
TEST(pool_queue_wait_limit)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t po = {.max_active = 1};
  up_opts_t o = {.queue_wait_ms = 200};
  struct res a = {0}, b = {0}, c = {0};
  up_pool_stats_t st;

  fx_start(&x);
  u = mk(&loop, &o);
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  start_pooled(u, p, &x, "/hold/a", &a);
  start_pooled(u, p, &x, "/blob/10", &b);
  pool_counts(p, 1, 1);
  run_while(&loop, is_done, &b, 30000); /* a is held: b waits out its limit */
  ASSERT_EQ(PC_E_UPSTREAM_BUSY, b.rc);
  ASSERT_EQ(0, b.status);
  ASSERT_EQ(0, b.hdr_calls);
  ASSERT_EQ(0, a.done);
  ASSERT_EQ(0, log_count(&x, "GET /blob/10 "));
  pool_counts(p, 1, 0);
  o.queue_wait_ms = 30000; /* a reload: the next queued fetch gets the new limit */
  up_set_opts(u, &o);
  start_pooled(u, p, &x, "/blob/20", &c); /* queued again, let go well before its limit */
  pool_counts(p, 1, 1);
  fx_go(&x, "a");
  run_while(&loop, is_done, &c, 30000);
  ASSERT_OK(a.rc);
  ASSERT_OK(c.rc);
  ASSERT(body_ok(&c, 0, 20));
  up_pool_get_stats(p, &st);
  ASSERT_EQ(1, st.queue_timeouts);
  ASSERT_EQ(2, st.fetches);
  ASSERT_EQ(0, st.active + st.queued);
  close_all(&loop, u);
  free(a.body);
  free(c.body);
  fx_stop(&x);
}

TEST(pool_rate)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t po = {.rate = 2, .burst = 1};
  struct res r[3];
  const char *paths[3] = {"/blob/10", "/blob/11", "/blob/12"};
  double t0, t1, t2;
  up_pool_stats_t st;

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < 3; i++)
    start_pooled(u, p, &x, paths[i], &r[i]);
  pool_counts(p, 1, 2); /* one token in the bucket */
  run_while(&loop, is_done, &r[2], 30000);
  for (int i = 0; i < 3; i++) {
    ASSERT_OK(r[i].rc);
    ASSERT(body_ok(&r[i], 0, 10 + (size_t)i));
  }
  ASSERT(r[0].done_seq < r[1].hdr_seq && r[1].done_seq < r[2].hdr_seq);
  /* 2/s: a token every 500 ms (lower bounds only). */
  ASSERT_EQ(0, r[0].td.queue_us);
  ASSERT(r[1].td.queue_us >= 400000);
  ASSERT(r[2].td.queue_us >= 900000);
  t0 = log_time(&x, "GET /blob/10 ");
  t1 = log_time(&x, "GET /blob/11 ");
  t2 = log_time(&x, "GET /blob/12 ");
  ASSERT(t0 <= t1 && t1 <= t2);
  ASSERT(t2 - t0 >= 0.3);
  up_pool_get_stats(p, &st);
  ASSERT_EQ(3, st.fetches);
  close_all(&loop, u);
  for (int i = 0; i < 3; i++)
    free(r[i].body);
  fx_stop(&x);
}

TEST(pool_burst_and_rate_change)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t po = {.rate = 0.01, .burst = 2}, off = {0};
  struct res r[3];

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < 3; i++)
    start_pooled(u, p, &x, "/blob/10", &r[i]);
  pool_counts(p, 2, 1); /* the burst of 2 at once; the third waits ~100 s for a token */
  run_while(&loop, is_done, &r[1], 30000);
  spin(&loop, 100);
  ASSERT_EQ(0, r[2].done);
  pool_counts(p, 0, 1);
  /* Dropping the rate cap starts it now, from the loop. */
  up_pool_set_opts(p, &off);
  pool_counts(p, 0, 1);
  run_while(&loop, is_done, &r[2], 10000);
  ASSERT_OK(r[2].rc);
  ASSERT(r[2].td.queue_us >= 100000);
  ASSERT_EQ(3, log_count(&x, "GET /blob/10 "));
  close_all(&loop, u);
  for (int i = 0; i < 3; i++)
    free(r[i].body);
  fx_stop(&x);
}

TEST(pool_set_opts_starts_queued)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p;
  up_pool_opts_t one = {.max_active = 1}, three = {.max_active = 3};
  struct res a = {0}, b = {0}, c = {0}, d = {0}, e = {0};

  fx_start(&x);
  u = mk(&loop, NULL);
  ASSERT_OK(up_pool_new(u, "fx", &one, &p));
  start_pooled(u, p, &x, "/hold/a", &a);
  start_pooled(u, p, &x, "/hold/b", &b);
  start_pooled(u, p, &x, "/hold/c", &c);
  pool_counts(p, 1, 2);
  wait_log(&loop, &x, "GET /hold/a", 1);
  up_pool_set_opts(p, &three);
  pool_counts(p, 1, 2); /* they start from the loop, not from inside set_opts */
  /* b and c reach the server while a is still held. */
  wait_log(&loop, &x, "GET /hold/b", 1);
  wait_log(&loop, &x, "GET /hold/c", 1);
  ASSERT_EQ(0, a.done);
  pool_counts(p, 3, 0);
  /* Lowering the cap stops nothing that runs, but holds back new fetches. */
  up_pool_set_opts(p, &one);
  pool_counts(p, 3, 0);
  start_pooled(u, p, &x, "/hold/d", &d);
  pool_counts(p, 3, 1);
  fx_go(&x, "a");
  fx_go(&x, "b");
  run_while(&loop, is_done, &b, 30000);
  run_while(&loop, is_done, &a, 30000);
  spin(&loop, 100);
  ASSERT_EQ(0, log_count(&x, "GET /hold/d")); /* c still runs: 1 active is the cap */
  pool_counts(p, 1, 1);
  fx_go(&x, "c");
  wait_log(&loop, &x, "GET /hold/d", 1);
  start_pooled(u, p, &x, "/hold/e", &e);
  pool_counts(p, 1, 1);
  fx_go(&x, "d");
  fx_go(&x, "e");
  run_while(&loop, is_done, &e, 30000);
  ASSERT(d.done_seq < e.hdr_seq);
  ASSERT_OK(a.rc + b.rc + c.rc + d.rc + e.rc);
  ASSERT_EQ(5, a.done + b.done + c.done + d.done + e.done);
  close_all(&loop, u);
  free(a.body);
  free(b.body);
  free(c.body);
  free(d.body);
  free(e.body);
  fx_stop(&x);
}

TEST(pool_release_while_in_use)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  up_pool_t *p, *q, *t;
  up_pool_opts_t po = {.max_active = 1};
  struct res a = {0}, b = {0}, tk = {0}, after = {0};
  char url[128];

  fx_start(&x);
  u = mk(&loop, NULL);
  /* Released with no fetch: freed at once (LeakSanitizer would see it otherwise). */
  ASSERT_OK(up_pool_new(u, "idle", NULL, &q));
  up_pool_release(q);
  up_pool_release(NULL);

  /* Released with one fetch running and one queued: both still run. */
  ASSERT_OK(up_pool_new(u, "fx", &po, &p));
  start_pooled(u, p, &x, "/hold/a", &a);
  start_pooled(u, p, &x, "/blob/10", &b);
  up_pool_release(p);
  wait_log(&loop, &x, "GET /hold/a", 1);
  fx_go(&x, "a");
  run_while(&loop, is_done, &b, 30000);
  ASSERT_OK(a.rc);
  ASSERT_OK(b.rc);
  ASSERT(body_ok(&b, 0, 10));

  /* Released while the fetch waits for its token: the token fetch counts in the pool too,
   * and the pool lives until both ended. */
  ASSERT_OK(up_pool_new(u, "tok", NULL, &t));
  start_pooled(u, t, &x, "/v2/slowtok/manifests/v1", &tk);
  wait_log(&loop, &x, "GET /token?delay=250", 1);
  up_pool_release(t);
  run_while(&loop, is_done, &tk, 30000);
  ASSERT_OK(tk.rc);
  ASSERT_EQ(200, tk.status);
  ASSERT_EQ(1, tk.td.token_fetches);

  /* The client goes on without pools. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/10", x.a);
  fetch(u, &loop, "GET", url, 0, &after);
  ASSERT_OK(after.rc);
  close_all(&loop, u);
  free(a.body);
  free(b.body);
  free(tk.body);
  free(after.body);
  fx_stop(&x);
}

TEST(pool_stats)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.first_byte_timeout_ms = 1000, .stall_timeout_ms = 1000};
  up_t *u;
  up_pool_t *p;
  struct res r[9];
  const char *paths[8] = {"/blob/1000", "/r307/500",    "/v2/lib/app/manifests/v1",
                          "/nothing",   NULL,           "/stallhdr",
                          "/trunc",     "/sleep/300/10"};
  uint64_t hist[UP_HIST_BUCKETS + 1] = {0}, sum = 0, n = 0;
  up_pool_stats_t st;
  up_stats_t gs;
  char url[128];
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0);

  ASSERT(fd >= 0);
  ASSERT_OK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)));
  ASSERT_OK(getsockname(fd, (struct sockaddr *)&sa, &sl));
  fx_start(&x);
  u = mk(&loop, &o);
  ASSERT_OK(up_pool_new(u, "fx", NULL, &p));
  memset(r, 0, sizeof(r));
  for (int i = 0; i < 8; i++) {
    if (paths[i]) {
      start_pooled(u, p, &x, paths[i], &r[i]);
    } else {
      /* refused: a port bound by us, not listening */
      up_req_t req = {.method = "GET",
                      .url = url,
                      .on_headers = on_headers,
                      .on_data = on_data,
                      .on_done = on_done,
                      .arg = &r[i],
                      .pool = p};
      snprintf(url, sizeof(url), "http://127.0.0.1:%d/x", ntohs(sa.sin_port));
      ASSERT_OK(up_fetch_start(u, &req, &r[i].f));
    }
    run_while(&loop, is_done, &r[i], 30000);
  }
  /* Not in the pool. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/10", x.a);
  fetch(u, &loop, "GET", url, 0, &r[8]);

  ASSERT_EQ(404, r[3].status);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, r[4].rc);
  ASSERT_EQ(PC_E_UPSTREAM_TIMEOUT, r[5].rc);
  ASSERT_EQ(PC_E_UPSTREAM, r[6].rc);
  up_pool_get_stats(p, &st);
  ASSERT_EQ(8, st.fetches);
  ASSERT_EQ(1 + 3 + 3 + 1 + 1 + 1 + 1 + 1, st.requests); /* hops and the token request */
  ASSERT_EQ(1, st.tokens);
  ASSERT_EQ(1, st.errors_unavailable);
  ASSERT_EQ(1, st.errors_timeout);
  ASSERT_EQ(1, st.errors_other);
  ASSERT_EQ(1000 + 500 + strlen("manifest:lib/app") + strlen("not found") + 100 + 10,
            st.body_bytes);
  ASSERT_EQ(0, st.active + st.queued);
  /* The histogram holds exactly the first_byte_us of the fetches with a final response. */
  for (int i = 0; i < 8; i++) {
    size_t b = 0;
    if (r[i].hdr_calls == 0)
      continue;
    while (b < UP_HIST_BUCKETS && (double)r[i].td.first_byte_us > up_hist_bounds_s[b] * 1e6)
      b++;
    hist[b]++;
    sum += r[i].td.first_byte_us;
    n++;
  }
  ASSERT_EQ(6, n);
  for (int b = 0; b <= UP_HIST_BUCKETS; b++)
    ASSERT_EQ(hist[b], st.first_byte_hist[b]);
  ASSERT_EQ(sum, st.first_byte_sum_us);
  /* The slow one is above 0.25 s (bucket 5): in bucket 6 (0.5 s) or later. */
  ASSERT(r[7].td.first_byte_us >= 300000);
  ASSERT(up_hist_bounds_s[5] == 0.25);
  ASSERT(st.first_byte_hist[0] + st.first_byte_hist[1] + st.first_byte_hist[2] +
             st.first_byte_hist[3] + st.first_byte_hist[4] + st.first_byte_hist[5] <=
         5);
  /* The global stats count everything. */
  up_get_stats(u, &gs);
  ASSERT_EQ(st.requests + 1, gs.requests);
  ASSERT_EQ(st.body_bytes + 10, gs.body_bytes);
  ASSERT_EQ(3, gs.errors);
  close_all(&loop, u);
  close(fd);
  for (int i = 0; i < 9; i++)
    free(r[i].body);
  fx_stop(&x);
}

/* ---------------------------------------------------------------------------------------- */
/* States (white box: http/up-int.h)                                                        */

/* The states a fetch goes through, as http/up-int.h names them: HEADERS once started, BODY in
 * on_headers, DONE in on_done; the fail path from an error of on_headers or on_data (counted,
 * on_done gets the rc); a cancel from the loop releases at once. */
TEST(fetch_states_on_fail_and_cancel)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res ok = {0}, hdr_fail = {.hdr_rc = 1}, data_fail = {.data_rc = -42}, c = {0};
  char url[128];
  up_stats_t st;
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = &c};

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/1000", x.a);
  fetch(u, &loop, "GET", url, 0, &ok);
  ASSERT_OK(ok.rc);
  ASSERT_EQ(UP__F_BODY, ok.st_hdr);
  ASSERT_EQ(UP__F_DONE, ok.st_done);

  /* on_headers returns non-zero, not negative: the fetch fails with PC_E_UPSTREAM. */
  fetch(u, &loop, "GET", url, 0, &hdr_fail);
  ASSERT_EQ(PC_E_UPSTREAM, hdr_fail.rc);
  ASSERT_EQ(200, hdr_fail.status);
  ASSERT_EQ(0, hdr_fail.len);
  ASSERT_EQ(UP__F_DONE, hdr_fail.st_done);
  /* on_data returns an error: on_done gets it. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/200000", x.a);
  fetch(u, &loop, "GET", url, 0, &data_fail);
  ASSERT_EQ(-42, data_fail.rc);
  ASSERT_EQ(200, data_fail.status);
  ASSERT(data_fail.len > 0 && data_fail.len < 200000);
  ASSERT_EQ(UP__F_DONE, data_fail.st_done);
  up_get_stats(u, &st);
  ASSERT_EQ(2, st.errors);

  /* A cancel outside any callback: released at once, never a callback. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/stallhdr", x.a);
  ASSERT_OK(up_fetch_start(u, &req, &c.f));
  ASSERT_EQ(UP__F_HEADERS, c.f->state);
  up_fetch_cancel(c.f);
  ASSERT_EQ(UP__F_RELEASED, c.f->state);
  spin(&loop, 50);
  ASSERT_EQ(0, c.done + c.hdr_calls);
  up_get_stats(u, &st);
  ASSERT_EQ(2, st.errors); /* a cancel is no error */
  close_all(&loop, u);
  free(ok.body);
  free(data_fail.body);
  fx_stop(&x);
}

/* A token request is a fetch of its own kind, marked so when the auth code starts it: the
 * parent waits in TOKEN with the child in f->child, and the child's work is not counted as a
 * fetch's (hops, body bytes). */
TEST(token_fetch_is_marked)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  char url[128];
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = &r};
  up_stats_t st;
  int saw = 0;

  fx_start(&x);
  u = mk(&loop, NULL);
  /* "slowtok": the token endpoint waits 250 ms, so the parent is seen waiting. */
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/slowtok/manifests/v1", x.a);
  ASSERT_OK(up_fetch_start(u, &req, &r.f));
  for (int i = 0; i < 200000 && !r.done && !saw; i++) {
    uv_run(&loop, UV_RUN_ONCE);
    if (!r.done && r.f->state == UP__F_TOKEN) {
      saw = 1;
      ASSERT(r.f->child != NULL);
      ASSERT_EQ(UP__FETCH_TOKEN, r.f->child->kind);
      ASSERT_EQ(UP__FETCH_USER, r.f->kind);
      ASSERT(r.f->child->child == NULL);
      ASSERT(r.f->child->state == UP__F_ADDING || r.f->child->state == UP__F_HEADERS ||
             r.f->child->state == UP__F_BODY);
    }
  }
  ASSERT(saw);
  run_until(&loop, &r.done);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(UP__F_BODY, r.st_hdr); /* the parent's final response, not the token's */
  ASSERT_EQ(2, r.td.hops);         /* the 401 and the retry; the token request is not a hop */
  ASSERT_EQ(1, r.td.token_fetches);
  up_get_stats(u, &st);
  ASSERT_EQ(3, st.requests);
  ASSERT_EQ(1, st.tokens);
  ASSERT_EQ(r.len, st.body_bytes); /* the token response's body is not counted */
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

/* Back-pressure: on_data refuses bytes (UP_DATA_PAUSE) now and then; the fetch pauses (longer
 * than the stall timeout, which must not fire), up_fetch_resume from a timer goes on, and the
 * refused bytes come again: the body arrives whole, once, in order, and is counted once. */
struct pz {
  struct res r;
  uv_timer_t t;
  int calls, pauses, paused;
};

static void pz_resume(uv_timer_t *t)
{
  struct pz *p = t->data;
  p->paused = 0;
  up_fetch_resume(p->r.f);
  up_fetch_resume(p->r.f); /* twice is harmless */
}

static int pz_data(up_fetch_t *f, const char *buf, size_t len, void *arg)
{
  struct pz *p = arg;
  ASSERT(!p->paused); /* nothing comes while paused */
  if (++p->calls % 7 == 0 && p->pauses < 3) {
    p->pauses++;
    p->paused = 1;
    uv_timer_start(&p->t, pz_resume, p->pauses == 1 ? 450 : 20, 0);
    return UP_DATA_PAUSE;
  }
  return on_data(f, buf, len, &p->r);
}

static int pz_headers(up_fetch_t *f, int status, void *arg)
{
  return on_headers(f, status, &((struct pz *)arg)->r);
}

static void pz_done(up_fetch_t *f, int rc, int status, void *arg)
{
  on_done(f, rc, status, &((struct pz *)arg)->r);
}

TEST(pause_and_resume)
{
  struct fx x;
  uv_loop_t loop;
  up_opts_t o = {.stall_timeout_ms = 300};
  up_t *u;
  struct pz p;
  char url[128];
  up_stats_t st;

  memset(&p, 0, sizeof(p));
  fx_start(&x);
  u = mk(&loop, &o);
  uv_timer_init(&loop, &p.t);
  p.t.data = &p;
  snprintf(url, sizeof(url), "http://127.0.0.1:%d/blob/3000000", x.a);
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = pz_headers,
                  .on_data = pz_data,
                  .on_done = pz_done,
                  .arg = &p};
  ASSERT_OK(up_fetch_start(u, &req, &p.r.f));
  run_until(&loop, &p.r.done);
  ASSERT_OK(p.r.rc);
  ASSERT_EQ(200, p.r.status);
  ASSERT_EQ(3, p.pauses);
  ASSERT(body_ok(&p.r, 0, 3000000)); /* every byte once, in order */
  up_get_stats(u, &st);
  ASSERT_EQ(3000000, st.body_bytes);
  uv_close((uv_handle_t *)&p.t, NULL);
  close_all(&loop, u);
  free(p.r.body);
  fx_stop(&x);
}

/* ---- failover: up_req_t.more_urls ---------------------------------------------------------- */

struct tries {
  int n;
  unsigned pos[8];
  int rc[8], status[8];
  char url[8][160];
};

static void on_try(void *arg, const char *url, unsigned pos, int rc, int status)
{
  struct tries *t = arg;
  ASSERT(t->n < 8);
  t->pos[t->n] = pos;
  t->rc[t->n] = rc;
  t->status[t->n] = status;
  snprintf(t->url[t->n], sizeof(t->url[0]), "%s", url);
  t->n++;
}

/* A port bound by us and not listening: connecting to it is refused. */
static int dead_port(int *fd)
{
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof(sa);
  *fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT(*fd >= 0);
  ASSERT_OK(bind(*fd, (struct sockaddr *)&sa, sizeof(sa)));
  ASSERT_OK(getsockname(*fd, (struct sockaddr *)&sa, &sl));
  return ntohs(sa.sin_port);
}

static void fetch_urls(up_t *u, uv_loop_t *loop, const char *url, const char *const *more,
                       unsigned nmore, const char *userpwd, struct res *r, struct tries *t)
{
  up_req_t req = {.method = "GET",
                  .url = url,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = r,
                  .userpwd = userpwd,
                  .more_urls = more,
                  .nmore = nmore,
                  .failover_connect_ms = 500,
                  .on_try = on_try,
                  .try_arg = t,
                  .via = "1.1 tier-a (pullcache)"};
  ASSERT_OK(up_fetch_start(u, &req, &r->f));
  run_until(loop, &r->done);
  ASSERT_EQ(1, r->done);
}

/* A refused first URL moves the fetch to the second; each URL's outcome is told once. */
TEST(failover_refused_then_next)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  struct tries t = {0};
  char dead[128], live[128], needle[160];
  int fd, port;
  const char *more[1] = {live};

  fx_start(&x);
  port = dead_port(&fd);
  u = mk(&loop, NULL);
  snprintf(dead, sizeof(dead), "http://127.0.0.1:%d/blob/1", port);
  snprintf(live, sizeof(live), "http://127.0.0.1:%d/blob/3000", x.a);
  fetch_urls(u, &loop, dead, more, 1, NULL, &r, &t);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 3000));
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT_EQ(2, t.n);
  ASSERT_EQ(0, t.pos[0]);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, t.rc[0]);
  ASSERT_STREQ(dead, t.url[0]);
  ASSERT_EQ(1, t.pos[1]);
  ASSERT_OK(t.rc[1]);
  ASSERT_EQ(200, t.status[1]);
  ASSERT_STREQ(live, r.url);
  /* The Via value goes on the request. */
  snprintf(needle, sizeof(needle), "%d GET /blob/3000 ", x.a);
  ASSERT_EQ(1, log_count(&x, needle));
  ASSERT_EQ(1, log_count(&x, "via=[1.1 tier-a (pullcache)]"));
  close_all(&loop, u);
  free(r.body);
  close(fd);
  fx_stop(&x);
}

/* A 5xx moves on while another URL is left; the last URL's 5xx is the answer. The user never
 * sees the 5xx that moved the fetch. */
TEST(failover_on_5xx_and_last_is_final)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0}, r2 = {0};
  struct tries t = {0}, t2 = {0};
  char bad[128], bad2[128], live[128];
  const char *more[1] = {live}, *more2[1] = {bad2};

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(bad, sizeof(bad), "http://127.0.0.1:%d/token500", x.a);
  snprintf(bad2, sizeof(bad2), "http://127.0.0.1:%d/token500", x.b);
  snprintf(live, sizeof(live), "http://127.0.0.1:%d/blob/100", x.b);
  fetch_urls(u, &loop, bad, more, 1, NULL, &r, &t);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, r.hdr_calls);
  ASSERT(body_ok(&r, 0, 100));
  ASSERT_EQ(2, t.n);
  ASSERT_OK(t.rc[0]);
  ASSERT_EQ(500, t.status[0]);
  ASSERT_EQ(200, t.status[1]);

  fetch_urls(u, &loop, bad, more2, 1, NULL, &r2, &t2);
  ASSERT_OK(r2.rc);
  ASSERT_EQ(500, r2.status);
  ASSERT_EQ(1, r2.hdr_calls);
  ASSERT_EQ(500, r2.hdr_status);
  ASSERT_EQ(2, t2.n);
  ASSERT_EQ(1, t2.pos[1]);
  ASSERT_EQ(500, t2.status[1]);
  close_all(&loop, u);
  free(r.body);
  free(r2.body);
  fx_stop(&x);
}

/* Once on_headers ran, a broken body is the fetch's end: it does not move to the next URL. */
TEST(failover_never_after_headers)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  struct tries t = {0};
  char trunc[128], live[128];
  const char *more[1] = {live};

  fx_start(&x);
  u = mk(&loop, NULL);
  snprintf(trunc, sizeof(trunc), "http://127.0.0.1:%d/trunc", x.a);
  snprintf(live, sizeof(live), "http://127.0.0.1:%d/blob/100", x.b);
  fetch_urls(u, &loop, trunc, more, 1, NULL, &r, &t);
  ASSERT_EQ(PC_E_UPSTREAM, r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT_EQ(1, t.n);
  ASSERT_EQ(0, t.pos[0]);
  ASSERT_EQ(0, log_count(&x, "GET /blob/100"));
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}

/* All URLs dead: the last one's error is the fetch's; credentials go to the last URL only. */
TEST(failover_all_dead_and_credentials_last_only)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0}, r2 = {0};
  struct tries t = {0}, t2 = {0};
  char d1[128], d2[128], mirror[128], origin[128];
  int fd1, fd2;
  const char *more[1] = {d2}, *more2[1] = {origin};

  fx_start(&x);
  snprintf(d1, sizeof(d1), "http://127.0.0.1:%d/blob/1", dead_port(&fd1));
  snprintf(d2, sizeof(d2), "http://127.0.0.1:%d/blob/1", dead_port(&fd2));
  u = mk(&loop, NULL);
  fetch_urls(u, &loop, d1, more, 1, NULL, &r, &t);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, r.rc);
  ASSERT_EQ(0, r.hdr_calls);
  ASSERT_EQ(2, t.n);
  ASSERT_EQ(PC_E_UPSTREAM_UNAVAILABLE, t.rc[1]);

  /* The mirror (first) asks for Basic: it is answered anonymously, and its 401 is final (a
   * 4xx does not move on). The origin's credentials never reach it. */
  snprintf(mirror, sizeof(mirror), "http://127.0.0.1:%d/basicauth/10", x.a);
  snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/basicauth/10", x.b);
  fetch_urls(u, &loop, mirror, more2, 1, "alice:secret", &r2, &t2);
  ASSERT_OK(r2.rc);
  ASSERT_EQ(401, r2.status);
  ASSERT_EQ(1, t2.n);
  ASSERT_EQ(0, log_count(&x, "auth=[Basic"));
  close_all(&loop, u);
  free(r2.body);
  close(fd1);
  close(fd2);
  fx_stop(&x);
}

/* The origin (last) gets the credentials after a failover from a dead mirror. */
TEST(failover_credentials_reach_the_origin)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  struct tries t = {0};
  char d1[128], origin[128];
  int fd1;
  const char *more[1] = {origin};

  fx_start(&x);
  snprintf(d1, sizeof(d1), "http://127.0.0.1:%d/basicauth/10", dead_port(&fd1));
  snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/basicauth/10", x.b);
  u = mk(&loop, NULL);
  fetch_urls(u, &loop, d1, more, 1, "alice:secret", &r, &t);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 10));
  ASSERT_EQ(1, log_count(&x, "auth=[Basic"));
  close_all(&loop, u);
  free(r.body);
  close(fd1);
  fx_stop(&x);
}

/* A first URL that accepts and never answers ends at the failover first-byte timeout (not the
 * client's 30 s) and the fetch moves on. */
TEST(failover_first_byte_timeout)
{
  struct fx x;
  uv_loop_t loop;
  up_t *u;
  struct res r = {0};
  struct tries t = {0};
  char hung[128], live[128];
  const char *more[1] = {live};
  up_req_t req = {.method = "GET",
                  .url = hung,
                  .on_headers = on_headers,
                  .on_data = on_data,
                  .on_done = on_done,
                  .arg = &r,
                  .more_urls = more,
                  .nmore = 1,
                  .failover_first_byte_ms = 300,
                  .on_try = on_try,
                  .try_arg = &t};

  /* The client waits longer than the hold (60 s): only the failover timeout moves the fetch. */
  up_opts_t o = {.first_byte_timeout_ms = 120000};
  fx_start(&x);
  u = mk(&loop, &o);
  snprintf(hung, sizeof(hung), "http://127.0.0.1:%d/hold/never", x.a); /* 200 after 60 s */
  snprintf(live, sizeof(live), "http://127.0.0.1:%d/blob/100", x.b);
  ASSERT_OK(up_fetch_start(u, &req, &r.f));
  run_until(&loop, &r.done);
  ASSERT_OK(r.rc);
  ASSERT_EQ(200, r.status);
  ASSERT(body_ok(&r, 0, 100));
  ASSERT_EQ(2, t.n);
  ASSERT_EQ(PC_E_UPSTREAM_TIMEOUT, t.rc[0]);
  close_all(&loop, u);
  free(r.body);
  fx_stop(&x);
}
