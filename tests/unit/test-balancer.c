/* test-balancer — `pullcache config haproxy|nginx` (daemon/balancer.c): argument checks and the
 * text of the generated configurations (the e2e test test_balancer.py runs them for real). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/balancer.h"
#include "unit.h"

static char *emit(const balancer_args_t *a)
{
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  ASSERT(f != NULL);
  balancer_emit(f, a);
  ASSERT_EQ(0, fclose(f));
  return buf;
}

static int parse(balancer_args_t *a, char *err, int argc, ...)
{
  char *argv[16];
  va_list ap;
  va_start(ap, argc);
  for (int i = 0; i < argc; i++)
    argv[i] = va_arg(ap, char *);
  va_end(ap);
  err[0] = '\0';
  return balancer_parse(argc, argv, a, err, 300);
}

TEST(haproxy_hashes_digest_and_checks_readyz)
{
  balancer_args_t a;
  char err[300];
  ASSERT_OK(parse(&a, err, 7, "haproxy", "--replica", "10.0.0.1:5000", "--replica=10.0.0.2:5000",
                  "--replica", "[fd00::3]:5000", "--listen=127.0.0.1:8080"));
  ASSERT_EQ(3, a.nreplicas);
  char *t = emit(&a);
  ASSERT(strstr(t, "bind 127.0.0.1:8080\n") != NULL);
  ASSERT(strstr(t, "balance hash var(txn.pc_key)") != NULL);
  ASSERT(strstr(t, "hash-type consistent") != NULL);
  ASSERT(strstr(t, "path,field(-1,/) if { path -m reg ^/v2/.+/blobs/[^/]+$ }") != NULL);
  ASSERT(strstr(t, "option httpchk GET /readyz") != NULL);
  ASSERT(strstr(t, "server replica1 10.0.0.1:5000 check\n") != NULL);
  ASSERT(strstr(t, "server replica3 [fd00::3]:5000 check\n") != NULL);
  ASSERT(strstr(t, "about 1/3 of them") != NULL);
  ASSERT(strstr(t, "ssl") == NULL);
  free(t);
  ASSERT_OK(parse(&a, err, 5, "haproxy", "--replica", "r1:5000", "--tls", "/etc/pc/lb.pem"));
  ASSERT_STREQ("0.0.0.0:5000", a.listen);
  t = emit(&a);
  ASSERT(strstr(t, "bind 0.0.0.0:5000 ssl crt /etc/pc/lb.pem\n") != NULL);
  free(t);
}

TEST(nginx_hash_consistent_on_the_key)
{
  balancer_args_t a;
  char err[300];
  ASSERT_OK(
      parse(&a, err, 5, "nginx", "--replica", "127.0.0.1:5001", "--replica", "127.0.0.1:5002"));
  char *t = emit(&a);
  ASSERT(strstr(t, "hash $pullcache_key consistent;") != NULL);
  ASSERT(strstr(t, "\"~^/v2/.+/blobs/(?<pc_digest>[^/]+)$\" $pc_digest;") != NULL);
  ASSERT(strstr(t, "server 127.0.0.1:5002 max_fails=1 fail_timeout=10s;") != NULL);
  ASSERT(strstr(t, "listen 0.0.0.0:5000;") != NULL);
  ASSERT(strstr(t, "proxy_buffering off;") != NULL);
  ASSERT(strstr(t, "proxy_next_upstream error timeout") != NULL);
  free(t);
  ASSERT_OK(parse(&a, err, 5, "nginx", "--replica", "127.0.0.1:5001", "--tls", "/x/lb.pem"));
  t = emit(&a);
  ASSERT(strstr(t, "listen 0.0.0.0:5000 ssl;") != NULL);
  ASSERT(strstr(t, "ssl_certificate_key /x/lb.pem;") != NULL);
  free(t);
}

/* Nothing that could break out of the generated file gets in. */
TEST(bad_arguments_are_refused)
{
  balancer_args_t a;
  char err[300];
  ASSERT_EQ(-EINVAL, parse(&a, err, 1, "haproxy"));
  ASSERT(strstr(err, "--replica") != NULL);
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "haproxy", "--replica", "10.0.0.1"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "haproxy", "--replica", "10.0.0.1:99999"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "haproxy", "--replica", "a b:5000"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "nginx", "--replica", "x;y:5000"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "nginx", "--replica", "[zz]:5000"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 5, "nginx", "--replica", "h:1", "--replica", "h:1"));
  ASSERT(strstr(err, "twice") != NULL);
  ASSERT_EQ(-EINVAL, parse(&a, err, 5, "nginx", "--replica", "h:1", "--tls", "rel.pem"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 5, "nginx", "--replica", "h:1", "--tls", "/a;b.pem"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 5, "nginx", "--replica", "h:1", "--listen", "x"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 4, "nginx", "--replica", "h:1", "--bogus"));
  ASSERT_EQ(-EINVAL, parse(&a, err, 2, "nginx", "--replica"));
  ASSERT(strstr(err, "needs a value") != NULL);
  ASSERT_EQ(-EINVAL, parse(&a, err, 3, "envoy", "--replica", "h:1"));
}
