/* pullcache egress — the mirror's own egress allow-list (daemon/egress.h), and --check: can
 * each host still be reached (DNS, TCP, TLS)? */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/num.h"
#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/egress.h"

#define CHECK_TIMEOUT_MS 5000

static void usage(FILE *f)
{
  fprintf(f,
          "usage: pullcache egress [--store DIR] [--check]\n"
          "\n"
          "Print the hosts this mirror has contacted (after redirects, token endpoints\n"
          "included) as an allow-list for its own firewall: scheme, host, port, the upstream\n"
          "served, requests, first and last seen (UTC). Read from DIR/" EGRESS_FILE ", which the\n"
          "daemon keeps up to date (it may be running).\n"
          "\n"
          "  --store DIR   the store directory (default ./pullcache-data)\n"
          "  --check       resolve (DNS), connect (TCP) and, for https, handshake (TLS, the\n"
          "                system CAs, the host name checked) to each host, and say which\n"
          "                step fails: what a firewall change broke\n"
          "  -h, --help    show this help\n"
          "\n"
          "Exit status: 0 ok (--check: every host reached), 1 a host failed a check,\n"
          "2 usage or error.\n");
}

static void fmt_time(int64_t t, char *out, size_t n)
{
  struct tm tm;
  time_t tt = (time_t)t;
  if (!gmtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
    snprintf(out, n, "%lld", (long long)t);
}

/* TCP connect with a timeout: a connected fd, or -1 with why set. */
static int tcp_connect(const struct addrinfo *ai, const char **why)
{
  int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
  if (fd < 0) {
    *why = strerror(errno);
    return -1;
  }
  if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
    *why = strerror(errno);
    close(fd);
    return -1;
  }
  struct pollfd p = {.fd = fd, .events = POLLOUT};
  int err = 0;
  socklen_t el = sizeof(err);
  if (poll(&p, 1, CHECK_TIMEOUT_MS) != 1) {
    *why = "timed out";
    close(fd);
    return -1;
  }
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err) {
    *why = strerror(err ? err : errno);
    close(fd);
    return -1;
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0)
    (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  struct timeval tv = {CHECK_TIMEOUT_MS / 1000, 0};
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  return fd;
}

/* A TLS handshake on fd to host (SNI, certificate and name verified). 0 or -1 with why. */
static int tls_handshake(int fd, const char *host, char *why, size_t n)
{
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  SSL *ssl = NULL;
  int rc = -1;
  if (!ctx || SSL_CTX_set_default_verify_paths(ctx) != 1) {
    snprintf(why, n, "no TLS context");
    goto out;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  ssl = SSL_new(ctx);
  if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, host) != 1 ||
      SSL_set1_host(ssl, host) != 1) {
    snprintf(why, n, "TLS setup failed");
    goto out;
  }
  if (SSL_connect(ssl) != 1) {
    long v = SSL_get_verify_result(ssl);
    unsigned long e = ERR_get_error();
    if (v != X509_V_OK)
      snprintf(why, n, "%s", X509_verify_cert_error_string(v));
    else
      snprintf(why, n, "%s", e ? ERR_reason_error_string(e) : "handshake failed");
    goto out;
  }
  rc = 0;
out:
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return rc;
}

/* DNS, TCP, TLS for one entry; prints one line. 0 reached, 1 not. */
static int check_one(const egress_entry_t *x)
{
  char port[8], host[256], why[256];
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  snprintf(port, sizeof(port), "%u", x->port);
  /* [v6] -> v6 for the resolver */
  size_t hl = strlen(x->host);
  if (hl > 2 && x->host[0] == '[' && x->host[hl - 1] == ']')
    snprintf(host, sizeof(host), "%.*s", (int)(hl - 2), x->host + 1);
  else
    snprintf(host, sizeof(host), "%s", x->host);
  int g = getaddrinfo(host, port, &hints, &res);
  if (g != 0) {
    printf("FAIL %s://%s:%u dns: %s\n", x->scheme, x->host, x->port, gai_strerror(g));
    return 1;
  }
  const char *terr = "no address";
  int fd = -1;
  for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
    fd = tcp_connect(ai, &terr);
  freeaddrinfo(res);
  if (fd < 0) {
    printf("FAIL %s://%s:%u dns ok, tcp: %s\n", x->scheme, x->host, x->port, terr);
    return 1;
  }
  if (strcmp(x->scheme, "https") == 0) {
    int t = tls_handshake(fd, host, why, sizeof(why));
    close(fd);
    if (t) {
      printf("FAIL %s://%s:%u dns ok, tcp ok, tls: %s\n", x->scheme, x->host, x->port, why);
      return 1;
    }
    printf("ok   %s://%s:%u dns, tcp, tls\n", x->scheme, x->host, x->port);
    return 0;
  }
  close(fd);
  printf("ok   %s://%s:%u dns, tcp (plain http: no tls)\n", x->scheme, x->host, x->port);
  return 0;
}

int cmd_egress(int argc, char **argv)
{
  const char *dir = CONFIG_STORE_DEFAULT, *sv;
  int missing = 0;
  int check = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else if ((sv = pc_opt_value(argc, argv, &i, "--store", &missing))) {
      dir = sv;
    } else if (strcmp(argv[i], "--check") == 0) {
      check = 1;
    } else if (missing) {
      fprintf(stderr, "pullcache egress: %s needs a value\n", argv[i]);
      return 2;
    } else {
      fprintf(stderr, "pullcache egress: unexpected argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  char path[1100];
  egress_entry_t *v = NULL;
  size_t n = 0;
  snprintf(path, sizeof(path), "%s/%s", dir, EGRESS_FILE);
  int rc = egress_load(path, &v, &n);
  if (rc == -ENOENT) {
    printf("# no egress recorded yet in %s (the mirror has contacted no host)\n", dir);
    return 0;
  }
  if (rc) {
    fprintf(stderr, "pullcache egress: %s: %s\n", path, pc_strerror(rc));
    return 2;
  }
  printf("# scheme host port upstream requests first_seen last_seen\n");
  for (size_t i = 0; i < n; i++) {
    char f[32], l[32];
    fmt_time(v[i].first, f, sizeof(f));
    fmt_time(v[i].last, l, sizeof(l));
    printf("%s %s %u %s %llu %s %s\n", v[i].scheme, v[i].host, v[i].port,
           v[i].upstream[0] ? v[i].upstream : "-", (unsigned long long)v[i].count, f, l);
  }
  int bad = 0;
  if (check) {
    /* one check per scheme://host:port, whatever the upstreams it served */
    for (size_t i = 0; i < n; i++) {
      int dup = 0;
      for (size_t j = 0; j < i && !dup; j++)
        dup = v[j].port == v[i].port && !strcmp(v[j].host, v[i].host) &&
              !strcmp(v[j].scheme, v[i].scheme);
      if (!dup)
        bad |= check_one(&v[i]);
    }
  }
  free(v);
  fflush(stdout);
  return bad ? 1 : 0;
}
