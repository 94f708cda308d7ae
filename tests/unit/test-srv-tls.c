/* test-srv-tls — the TLS transport (http/srv_tls.c) under the real server, in process: the loop
 * runs on a thread, the test is a blocking OpenSSL client (receive timeouts bound every wait).
 * The certificate is made here with the OpenSSL API. */
#include "core/pc.h"
#include "http/srv-tls.h"
#include "http/srv.h"
#include "tests/unit/unit.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <malloc.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define FILE_SIZE (3u * 1024 * 1024 + 123)
#define MEM_SIZE (1u * 1024 * 1024 + 7)

static struct {
  uv_loop_t loop;
  uv_async_t stop, sync;
  unsigned synced; /* on_sync runs (under mu) */
  pthread_t th;
  srv_t *srv;
  srv_tls_t *tls;
  srv_tls_stats_t stats; /* at ts_stop */
  int port, closed, ready;
  char file[512], crt[512], key[512], key2[512];
  char *mem;
  pthread_mutex_t mu;
  pthread_cond_t cv;
} T = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static unsigned char pattern(uint64_t i)
{
  return (unsigned char)((i * 7 + i / 251) % 251);
}

/* ---- server (loop thread) ----------------------------------------------------------------- */

static void handler(srv_req_t *r, void *arg)
{
  (void)arg;
  const char *p = srv_req_path(r);
  if (strcmp(p, "/file") == 0) {
    int fd = open(T.file, O_RDONLY | O_CLOEXEC);
    PC_ASSERT(fd >= 0);
    srv_respond_file(r, 200, "application/octet-stream", fd, 0, FILE_SIZE, FILE_SIZE);
  } else if (strcmp(p, "/stale-error") == 0) {
    /* Something else on the loop thread (libcurl, another connection) left an entry in this
     * thread's OpenSSL error queue: the TLS transport must not take it for its own. */
    ERR_raise(ERR_LIB_SSL, ERR_R_INTERNAL_ERROR);
    srv_respond(r, 200, "text/plain", "hi", 2);
  } else if (strcmp(p, "/mem") == 0) {
    srv_respond(r, 200, "application/octet-stream", T.mem, MEM_SIZE);
  } else {
    srv_respond(r, 200, "text/plain", "hi", 2);
  }
}

static void on_closed(void *arg)
{
  (void)arg;
  T.closed = 1;
}

static void on_sync(uv_async_t *a)
{
  (void)a;
  pthread_mutex_lock(&T.mu);
  T.synced++;
  pthread_cond_broadcast(&T.cv);
  pthread_mutex_unlock(&T.mu);
}

static void on_stop(uv_async_t *a)
{
  srv_close(T.srv, on_closed, NULL);
  uv_close((uv_handle_t *)a, NULL);
  uv_close((uv_handle_t *)&T.sync, NULL);
}

static void *loop_main(void *arg)
{
  (void)arg;
  PC_ASSERT(uv_loop_init(&T.loop) == 0);
  PC_ASSERT(uv_async_init(&T.loop, &T.stop, on_stop) == 0);
  PC_ASSERT(uv_async_init(&T.loop, &T.sync, on_sync) == 0);
  srv_opts_t o = {.access_log = -1};
  PC_ASSERT(srv_new(&T.loop, &o, handler, NULL, &T.srv) == 0);
  PC_ASSERT(srv_listen_tls(T.srv, "127.0.0.1:0", T.tls) == 0);
  T.port = srv_port(T.srv, 0);
  pthread_mutex_lock(&T.mu);
  T.ready = 1;
  pthread_cond_broadcast(&T.cv);
  pthread_mutex_unlock(&T.mu);
  uv_run(&T.loop, UV_RUN_DEFAULT);
  PC_ASSERT(uv_loop_close(&T.loop) == 0);
  return NULL;
}

/* A self-signed P-256 certificate for 127.0.0.1 into crt/key, and a second key into key2. */
static void write_key(EVP_PKEY *k, const char *path)
{
  FILE *f = fopen(path, "w");
  ASSERT(f);
  ASSERT_EQ(1, PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL));
  ASSERT_EQ(0, fclose(f));
}

static void make_cert(void)
{
  EVP_PKEY *k = EVP_EC_gen("P-256"), *k2 = EVP_EC_gen("P-256");
  ASSERT(k && k2);
  X509 *x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
  X509_gmtime_adj(X509_getm_notBefore(x), -60);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, k);
  X509_NAME *n = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
  X509_set_issuer_name(x, n);
  ASSERT(X509_sign(x, k, EVP_sha256()) > 0);
  FILE *f = fopen(T.crt, "w");
  ASSERT(f);
  ASSERT_EQ(1, PEM_write_X509(f, x));
  ASSERT_EQ(0, fclose(f));
  write_key(k, T.key);
  write_key(k2, T.key2);
  X509_free(x);
  EVP_PKEY_free(k);
  EVP_PKEY_free(k2);
}

static void ts_start(void)
{
  snprintf(T.file, sizeof(T.file), "%s/file", unit_tmpdir());
  snprintf(T.crt, sizeof(T.crt), "%s/srv.crt", unit_tmpdir());
  snprintf(T.key, sizeof(T.key), "%s/srv.key", unit_tmpdir());
  snprintf(T.key2, sizeof(T.key2), "%s/other.key", unit_tmpdir());
  FILE *f = fopen(T.file, "wb");
  ASSERT(f);
  for (uint64_t i = 0; i < FILE_SIZE; i++)
    fputc(pattern(i), f);
  ASSERT_EQ(0, fclose(f));
  T.mem = pc_xmalloc(MEM_SIZE);
  for (uint64_t i = 0; i < MEM_SIZE; i++)
    T.mem[i] = (char)pattern(i + 1);
  make_cert();
  char err[512];
  srv_tls_conf_t c = {.cert = T.crt, .key = T.key};
  ASSERT_OK(srv_tls_new(&c, err, sizeof(err), &T.tls));
  ASSERT_EQ(0, pthread_create(&T.th, NULL, loop_main, NULL));
  pthread_mutex_lock(&T.mu);
  while (!T.ready)
    pthread_cond_wait(&T.cv, &T.mu);
  pthread_mutex_unlock(&T.mu);
  ASSERT(T.port > 0);
}

static void ts_stop(void)
{
  uv_async_send(&T.stop);
  ASSERT_EQ(0, pthread_join(T.th, NULL));
  ASSERT(T.closed);
  srv_tls_get_stats(T.tls, &T.stats); /* the loop thread is gone: no race */
  srv_tls_free(T.tls);
  free(T.mem);
}

/* Let the loop run a few turns (each waits for the last): work it had queued for its next turn
 * (0 ms timers, write completions) is done when this returns. */
static void loop_settle(void)
{
  for (int i = 0; i < 4; i++) {
    pthread_mutex_lock(&T.mu);
    unsigned want = T.synced + 1;
    uv_async_send(&T.sync);
    while (T.synced < want)
      pthread_cond_wait(&T.cv, &T.mu);
    pthread_mutex_unlock(&T.mu);
  }
}

/* ---- client (test thread) ----------------------------------------------------------------- */

static int tcp_connect(void)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT(fd >= 0);
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)T.port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(0, connect(fd, (struct sockaddr *)&a, sizeof(a)));
  return fd;
}

typedef struct cli {
  SSL_CTX *ctx;
  SSL *ssl;
  int fd;
} cli_t;

static void cli_open(cli_t *c)
{
  c->ctx = SSL_CTX_new(TLS_client_method());
  ASSERT(c->ctx);
  ASSERT_EQ(1, SSL_CTX_load_verify_locations(c->ctx, T.crt, NULL));
  SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
  static const unsigned char alpn[] = "\x02h2\x08http/1.1";
  SSL_CTX_set_alpn_protos(c->ctx, alpn, sizeof(alpn) - 1);
  c->fd = tcp_connect();
  c->ssl = SSL_new(c->ctx);
  SSL_set_fd(c->ssl, c->fd);
  ASSERT_EQ(1, SSL_connect(c->ssl));
  const unsigned char *p;
  unsigned n;
  SSL_get0_alpn_selected(c->ssl, &p, &n);
  ASSERT(n == 8 && memcmp(p, "http/1.1", 8) == 0);
}

static void cli_close(cli_t *c)
{
  SSL_free(c->ssl);
  SSL_CTX_free(c->ctx);
  close(c->fd);
}

static void cli_send(cli_t *c, const char *s)
{
  ASSERT_EQ((int)strlen(s), SSL_write(c->ssl, s, (int)strlen(s)));
}

static void cli_read_exact(cli_t *c, char *buf, size_t n)
{
  size_t got = 0;
  while (got < n) {
    int r = SSL_read(c->ssl, buf + got, (int)(n - got > 65536 ? 65536 : n - got));
    ASSERT(r > 0);
    got += (size_t)r;
  }
}

/* Read one response head (byte by byte: simple, and never past it); returns Content-Length. */
static size_t cli_head(cli_t *c, int *status)
{
  char h[4096];
  size_t n = 0;
  while (n < 4 || memcmp(h + n - 4, "\r\n\r\n", 4) != 0) {
    ASSERT(n < sizeof(h) - 1);
    cli_read_exact(c, h + n, 1);
    n++;
  }
  h[n] = '\0';
  ASSERT(sscanf(h, "HTTP/1.1 %d", status) == 1);
  const char *cl = strstr(h, "Content-Length: ");
  ASSERT(cl);
  return (size_t)strtoull(cl + 16, NULL, 10);
}

static void get_body(cli_t *c, const char *path, size_t want, uint64_t shift, int slow)
{
  char req[128];
  snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path);
  cli_send(c, req);
  if (slow)
    usleep(300 * 1000); /* the server fills every buffer and waits for the socket */
  int status;
  size_t len = cli_head(c, &status);
  ASSERT_EQ(200, status);
  ASSERT_EQ(want, len);
  char *b = pc_xmalloc(len);
  cli_read_exact(c, b, len);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)b[i] != pattern(i + shift))
      unit__fail(__FILE__, __LINE__, "%s: byte %zu differs", path, i);
  free(b);
}

TEST(file_and_memory_bodies_exact_keepalive)
{
  ts_start();
  cli_t c;
  cli_open(&c);
  get_body(&c, "/file", FILE_SIZE, 0, 0);
  get_body(&c, "/mem", MEM_SIZE, 1, 0);
  get_body(&c, "/file", FILE_SIZE, 0, 1);
  get_body(&c, "/mem", MEM_SIZE, 1, 1);
  cli_close(&c);
  ts_stop();
  ASSERT_EQ(1, T.stats.handshakes);
  for (int i = 0; i < SRV_TLS_FAIL_N; i++)
    ASSERT_EQ(0, T.stats.failed[i]);
}

TEST(stale_openssl_error_on_the_loop_thread_is_not_ours)
{
  ts_start();
  cli_t c;
  cli_open(&c);
  for (int i = 0; i < 3; i++) {
    cli_send(&c, i == 1 ? "GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
                        : "GET /stale-error HTTP/1.1\r\nHost: x\r\n\r\n");
    int status;
    size_t len = cli_head(&c, &status);
    ASSERT_EQ(200, status);
    ASSERT_EQ((size_t)2, len);
    char b[2];
    cli_read_exact(&c, b, 2);
    ASSERT(memcmp(b, "hi", 2) == 0);
  }
  cli_close(&c);
  ts_stop();
}

TEST(pipelined_requests_in_order)
{
  ts_start();
  cli_t c;
  cli_open(&c);
  cli_send(&c, "GET /mem HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\n\r\n"
               "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
  int status;
  size_t n = cli_head(&c, &status);
  ASSERT_EQ(MEM_SIZE, n);
  char *b = pc_xmalloc(FILE_SIZE);
  cli_read_exact(&c, b, n);
  n = cli_head(&c, &status);
  ASSERT_EQ(2, n);
  cli_read_exact(&c, b, n);
  ASSERT(memcmp(b, "hi", 2) == 0);
  n = cli_head(&c, &status);
  ASSERT_EQ(FILE_SIZE, n);
  cli_read_exact(&c, b, n);
  ASSERT_EQ(pattern(FILE_SIZE - 1), (unsigned char)b[FILE_SIZE - 1]);
  free(b);
  cli_close(&c);
  ts_stop();
}

/* An idle keep-alive TLS connection keeps no buffer sized by its largest read: after a 12 KB
 * request head (one large ciphertext read into rbio) the heap in use is what it was after
 * small requests (rbio kept ~16 KiB per connection before it was replaced once empty). glibc's
 * mallinfo2 counts the whole process (the clients' SSL objects too: the same in both phases;
 * under ASan it counts nothing and the check is void). */
TEST(idle_tls_connections_keep_no_read_buffer)
{
  enum { N = 24 };
  ts_start();
  cli_t c[N];
  char *big = pc_xmalloc(13000);
  int n = snprintf(big, 13000, "GET /x HTTP/1.1\r\nHost: x\r\nX-Pad: ");
  memset(big + n, 'a', 12000);
  memcpy(big + n + 12000, "\r\n\r\n", 5);
  for (int i = 0; i < N; i++) {
    cli_open(&c[i]);
    get_body(&c[i], "/mem", MEM_SIZE, 1, 0); /* the output side at its largest once too */
  }
  loop_settle();
  size_t m0 = mallinfo2().uordblks;
  for (int i = 0; i < N; i++) {
    cli_send(&c[i], big);
    int status;
    size_t len = cli_head(&c[i], &status);
    ASSERT_EQ(200, status);
    ASSERT_EQ((size_t)2, len);
    char b[2];
    cli_read_exact(&c[i], b, 2);
  }
  loop_settle();
  size_t m1 = mallinfo2().uordblks;
  long grew = (long)m1 - (long)m0;
  if (grew > (long)N * 4096)
    unit__fail(__FILE__, __LINE__, "heap grew %ld bytes for %d idle connections", grew, N);
  for (int i = 0; i < N; i++)
    cli_close(&c[i]);
  free(big);
  ts_stop();
}

TEST(plain_http_gets_400_in_clear)
{
  ts_start();
  int fd = tcp_connect();
  const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ((ssize_t)strlen(req), write(fd, req, strlen(req)));
  char buf[1024];
  size_t n = 0;
  ssize_t r;
  while ((r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0)
    n += (size_t)r;
  buf[n] = '\0';
  ASSERT(strncmp(buf, "HTTP/1.1 400 ", 13) == 0);
  ASSERT(strstr(buf, "plain HTTP request sent to HTTPS port"));
  close(fd);
  ts_stop();
  ASSERT_EQ(1, T.stats.failed[SRV_TLS_FAIL_PLAIN_HTTP]);
  ASSERT_EQ(0, T.stats.handshakes);
}

TEST(client_gone_mid_body)
{
  ts_start();
  for (int i = 0; i < 10; i++) {
    cli_t c;
    cli_open(&c);
    cli_send(&c, "GET /file HTTP/1.1\r\nHost: x\r\n\r\n");
    char b[1000];
    cli_read_exact(&c, b, sizeof(b));
    cli_close(&c); /* no close_notify: a TCP close in the middle */
  }
  cli_t c;
  cli_open(&c);
  get_body(&c, "/mem", MEM_SIZE, 1, 0);
  cli_close(&c);
  ts_stop();
}

TEST(ktls_probe_says_what_it_found)
{
  char why[256] = "";
  int r = srv_tls_ktls_probe(why, sizeof(why));
  ASSERT(r == 0 || r == 1);
  ASSERT(why[0] != '\0');
}

TEST(conf_errors_name_the_file)
{
  ts_start();
  char err[1024], missing[600];
  snprintf(missing, sizeof(missing), "%s/none.pem", unit_tmpdir());
  srv_tls_conf_t c = {.cert = missing, .key = T.key};
  srv_tls_t *t = NULL;
  ASSERT(srv_tls_new(&c, err, sizeof(err), &t) < 0 && !t);
  ASSERT(strncmp(err, missing, strlen(missing)) == 0 && strstr(err, ": No such file"));
  c.cert = T.crt;
  c.key = T.key2; /* another key */
  ASSERT(srv_tls_new(&c, err, sizeof(err), &t) < 0);
  ASSERT(strncmp(err, T.key2, strlen(T.key2)) == 0 && strstr(err, ": key values mismatch"));
  c.key = T.file; /* not PEM */
  ASSERT(srv_tls_new(&c, err, sizeof(err), &t) < 0);
  ASSERT(strncmp(err, T.file, strlen(T.file)) == 0 && err[strlen(T.file)] == ':');
  c.key = T.key;
  c.client_ca = T.file; /* not a CA bundle */
  ASSERT(srv_tls_new(&c, err, sizeof(err), &t) < 0);
  ASSERT(strncmp(err, T.file, strlen(T.file)) == 0);
  /* A failed reload keeps the running configuration: the server still serves. */
  c.client_ca = NULL;
  c.key = T.key2;
  ASSERT(srv_tls_reload(T.tls, &c, err, sizeof(err)) < 0);
  cli_t cl;
  cli_open(&cl);
  get_body(&cl, "/mem", MEM_SIZE, 1, 0);
  cli_close(&cl);
  ts_stop();
}
