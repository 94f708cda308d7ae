/* Unit tests: daemon/route (path/query parsing, upstream selection) and the range helpers of
 * daemon/registry. */
#include "daemon/answer.h"
#include "daemon/route.h"
#include "unit.h"

static const char *const UPS[] = {"registry.k8s.io", "ghcr.io", "host:5000"};
#define NUPS 3

#define D64 "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int parse(const char *method, const char *path, const char *query, route_t *r)
{
  return route_parse(method, path, query, UPS, NUPS, r);
}

TEST(root)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/", "", &r));
  ASSERT_EQ(ROUTE_ROOT, r.kind);
  ASSERT_EQ(1, r.is_v2);
  ASSERT_OK(parse("HEAD", "/v2", NULL, &r));
  ASSERT_EQ(ROUTE_ROOT, r.kind);
  ASSERT_OK(parse("GET", "/v2x/", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_EQ(0, r.is_v2);
  ASSERT_OK(parse("GET", "/", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(parse("GET", "/healthz", "", &r));
  ASSERT_EQ(ROUTE_HEALTHZ, r.kind);
  ASSERT_OK(parse("GET", "/readyz", "", &r));
  ASSERT_EQ(ROUTE_READYZ, r.kind);
  ASSERT_OK(parse("GET", "/metrics", "", &r));
  ASSERT_EQ(ROUTE_METRICS, r.kind);
  ASSERT_OK(parse("POST", "/healthz", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
}

TEST(manifest_tag_and_digest)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "", &r));
  ASSERT_EQ(ROUTE_MANIFEST, r.kind);
  ASSERT_STREQ("pause", r.name);
  ASSERT_STREQ("3.10", r.ref);
  ASSERT_EQ(0, r.is_digest);
  ASSERT_EQ(0, r.upstream);
  ASSERT_EQ(0, r.ns_given);

  ASSERT_OK(parse("HEAD", "/v2/a/b/c/manifests/" D64, "", &r));
  ASSERT_EQ(ROUTE_MANIFEST, r.kind);
  ASSERT_STREQ("a/b/c", r.name);
  ASSERT_STREQ(D64, r.ref);
  ASSERT_EQ(1, r.is_digest);

  /* 128-character tag is the maximum */
  char path[512];
  char tag[130];
  memset(tag, 'a', 128);
  tag[128] = '\0';
  snprintf(path, sizeof(path), "/v2/x/manifests/%s", tag);
  ASSERT_OK(parse("GET", path, "", &r));
  ASSERT_STREQ(tag, r.ref);
  tag[128] = 'a';
  tag[129] = '\0';
  snprintf(path, sizeof(path), "/v2/x/manifests/%s", tag);
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("GET", path, "", &r));
  ASSERT_OK(parse("GET", "/v2/x/manifests/_A-b.C_9", "", &r));
}

TEST(blob_tags_referrers)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/library/busybox/blobs/" D64, "", &r));
  ASSERT_EQ(ROUTE_BLOB, r.kind);
  ASSERT_STREQ("library/busybox", r.name);
  ASSERT_STREQ(D64, r.ref);
  ASSERT_EQ(1, r.is_digest);

  ASSERT_OK(parse("GET", "/v2/pause/tags/list", "n=2&last=3.1", &r));
  ASSERT_EQ(ROUTE_TAGS_LIST, r.kind);
  ASSERT_STREQ("pause", r.name);
  ASSERT_EQ(1, r.has_n);
  ASSERT_EQ(2, r.n);
  ASSERT_STREQ("3.1", r.last);

  ASSERT_OK(parse("GET", "/v2/pause/tags/list", "", &r));
  ASSERT_EQ(0, r.has_n);
  ASSERT_STREQ("", r.last);
  ASSERT_OK(parse("GET", "/v2/pause/tags/list", "n=0", &r));
  ASSERT_EQ(1, r.has_n);
  ASSERT_EQ(0, r.n);
  ASSERT_OK(parse("GET", "/v2/pause/tags/list", "n=99999999999999999999999", &r));
  ASSERT_EQ(ROUTE_N_MAX, r.n);
  ASSERT_EQ(PC_E_SIZE_INVALID, parse("GET", "/v2/pause/tags/list", "n=abc", &r));
  ASSERT_EQ(PC_E_SIZE_INVALID, parse("GET", "/v2/pause/tags/list", "n=-1", &r));
  ASSERT_EQ(PC_E_SIZE_INVALID, parse("GET", "/v2/pause/tags/list", "n=", &r));
  ASSERT_EQ(PC_E_TAG_INVALID, parse("GET", "/v2/pause/tags/list", "last=..", &r));

  ASSERT_OK(parse("GET", "/v2/pause/referrers/" D64,
                  "artifactType=application%2Fvnd.example%2Bjson", &r));
  ASSERT_EQ(ROUTE_REFERRERS, r.kind);
  ASSERT_STREQ(D64, r.ref);
  ASSERT_STREQ("application/vnd.example+json", r.artifact_type);
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/pause/referrers/latest", "", &r));

  /* unknown shapes */
  ASSERT_OK(parse("GET", "/v2/pause/tags/other", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(parse("GET", "/v2/pause", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(parse("GET", "/v2/_catalog", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(parse("GET", "/v2/pause/tags/list/", "", &r));
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
  ASSERT_OK(parse("GET", "/v2/manifests/x", "", &r)); /* no name: only 2 segments */
  ASSERT_EQ(ROUTE_UNKNOWN, r.kind);
}

TEST(names_with_keyword_components)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/blobs/manifests/manifests/latest", "", &r));
  ASSERT_EQ(ROUTE_MANIFEST, r.kind);
  ASSERT_STREQ("blobs/manifests", r.name);
  ASSERT_STREQ("latest", r.ref);

  ASSERT_OK(parse("GET", "/v2/a/blobs/x/blobs/" D64, "", &r));
  ASSERT_EQ(ROUTE_BLOB, r.kind);
  ASSERT_STREQ("a/blobs/x", r.name);

  ASSERT_OK(parse("GET", "/v2/manifests/tags/list", "", &r));
  ASSERT_EQ(ROUTE_TAGS_LIST, r.kind);
  ASSERT_STREQ("manifests", r.name);

  ASSERT_OK(parse("GET", "/v2/x/tags/list/manifests/list", "", &r));
  ASSERT_EQ(ROUTE_MANIFEST, r.kind);
  ASSERT_STREQ("x/tags/list", r.name);
  ASSERT_STREQ("list", r.ref);

  ASSERT_OK(parse("GET", "/v2/referrers/referrers/" D64, "", &r));
  ASSERT_EQ(ROUTE_REFERRERS, r.kind);
  ASSERT_STREQ("referrers", r.name);
}

TEST(invalid_names)
{
  route_t r;
  static const char *bad[] = {
      "/v2/UPPER/manifests/x",
      "/v2/a//b/manifests/x",
      "/v2/-a/manifests/x",
      "/v2/a-/manifests/x",
      "/v2/a..b/manifests/x",
      "/v2/a___b/manifests/x",
      "/v2/../manifests/x",
      "/v2/a/../b/manifests/x",
      "/v2/./manifests/x",
      "/v2/a%2Fb/manifests/x",
      "/v2/a%00/manifests/x",
      "/v2/a%zz/manifests/x",
      "/v2/a%2/manifests/x",
      "/v2/a b/manifests/x",
      "/v2//manifests/x",
      "/v2/a./manifests/x",
      ("/v2/a/blobs/b%2F..%2Fc/blobs/" D64),
  };
  for (size_t i = 0; i < PC_ARRAY_SIZE(bad); i++) {
    int rc = parse("GET", bad[i], "", &r);
    if (rc != PC_E_NAME_INVALID)
      unit__fail(__FILE__, __LINE__, "%s: %s", bad[i], pc_errname(rc));
  }
  /* valid separators */
  ASSERT_OK(parse("GET", "/v2/f/a.b_c__d---e/manifests/x", "", &r));
  ASSERT_STREQ("f/a.b_c__d---e", r.name);
  /* percent-decoding of ordinary characters is fine */
  ASSERT_OK(parse("GET", "/v2/p%61use/manifests/3%2E9", "", &r));
  ASSERT_STREQ("pause", r.name);
  ASSERT_STREQ("3.9", r.ref);

  /* 255 bytes is the maximum name */
  char path[700], name[300];
  memset(name, 'a', 255);
  name[255] = '\0';
  for (int i = 10; i < 255; i += 10)
    name[i] = '/';
  snprintf(path, sizeof(path), "/v2/%s/manifests/x", name);
  ASSERT_OK(parse("GET", path, "", &r));
  ASSERT_STREQ(name, r.name);
  snprintf(path, sizeof(path), "/v2/%sa/manifests/x", name);
  ASSERT_EQ(PC_E_NAME_INVALID, parse("GET", path, "", &r));
  /* very many segments */
  char many[1024];
  size_t pos = (size_t)snprintf(many, sizeof(many), "/v2");
  for (int i = 0; i < 100; i++)
    pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "/a");
  snprintf(many + pos, sizeof(many) - pos, "/manifests/x");
  ASSERT_EQ(PC_E_NAME_INVALID, parse("GET", many, "", &r));
}

TEST(invalid_refs)
{
  route_t r;
  /* conformance: invalid tag -> 404 MANIFEST_UNKNOWN, bad digest -> 400 DIGEST_INVALID */
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("HEAD", "/v2/x/manifests/.INVALID_MANIFEST_NAME", "", &r));
  ASSERT_EQ(ROUTE_MANIFEST, r.kind);
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("GET", "/v2/x/manifests/-x", "", &r));
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("GET", "/v2/x/manifests/", "", &r));
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("GET", "/v2/x/manifests/a%2Fb", "", &r));
  ASSERT_EQ(PC_E_MANIFEST_UNKNOWN, parse("GET", "/v2/x/manifests/a%00", "", &r));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/x/manifests/sha256:totallywrong", "", &r));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/x/manifests/sha256:baddigeststring", "", &r));
  ASSERT_EQ(
      PC_E_DIGEST_INVALID,
      parse(
          "GET",
          "/v2/x/manifests/sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
          "", &r));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/x/blobs/latest", "", &r));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/x/blobs/", "", &r));
  ASSERT_EQ(PC_E_DIGEST_INVALID, parse("GET", "/v2/x/blobs/sha256%3Ax", "", &r));
  /* an encoded ':' still makes a digest */
  ASSERT_OK(
      parse("GET",
            "/v2/x/blobs/sha256%3A0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "", &r));
  ASSERT_STREQ(D64, r.ref);
  /* a grammatical unknown algorithm passes (the store won't have it) */
  ASSERT_OK(parse("GET",
                  "/v2/x/blobs/multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8", "",
                  &r));
  ASSERT_EQ(1, r.is_digest);
}

TEST(push_methods_unsupported)
{
  route_t r;
  static const char *m[] = {"POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
  for (size_t i = 0; i < PC_ARRAY_SIZE(m); i++) {
    ASSERT_EQ(PC_E_UNSUPPORTED, parse(m[i], "/v2/x/blobs/uploads/", "", &r));
    ASSERT_EQ(PC_E_UNSUPPORTED, parse(m[i], "/v2/x/manifests/latest", "", &r));
    ASSERT_EQ(PC_E_UNSUPPORTED, parse(m[i], "/v2/", "", &r));
    ASSERT_EQ(1, r.is_v2);
  }
  ASSERT_EQ(PC_E_UNSUPPORTED, parse(NULL, "/v2/", "", &r));
}

TEST(ns_selects_upstream)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "ns=registry.k8s.io", &r));
  ASSERT_EQ(0, r.upstream);
  ASSERT_EQ(1, r.ns_given);
  ASSERT_STREQ("registry.k8s.io", r.ns);
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "ns=ghcr.io", &r));
  ASSERT_EQ(1, r.upstream);
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "foo=bar&ns=host%3A5000&x", &r));
  ASSERT_EQ(2, r.upstream);
  ASSERT_STREQ("host:5000", r.ns);
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "ns=GHCR.IO", &r));
  ASSERT_EQ(1, r.upstream);
  /* first ns wins */
  ASSERT_OK(parse("GET", "/v2/pause/manifests/3.10", "ns=ghcr.io&ns=evil.example", &r));
  ASSERT_EQ(1, r.upstream);
  /* with ns, a path prefix is part of the name */
  ASSERT_OK(parse("GET", "/v2/ghcr.io/pause/manifests/3.10", "ns=registry.k8s.io", &r));
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("ghcr.io/pause", r.name);

  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/pause/manifests/3.10", "ns=docker.io", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/pause/blobs/" D64, "ns=", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/pause/blobs/" D64, "ns=host%3", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/pause/blobs/" D64, "ns=ghcr.io%00", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/pause/tags/list", "ns=registry.k8s.io.", &r));
  /* no upstreams at all */
  ASSERT_OK(route_parse("GET", "/v2/pause/manifests/x", "", NULL, 0, &r));
  ASSERT_EQ(-1, r.upstream);
}

/* The reference grammar takes "localhost" as a registry host, like a name with a dot or a colon:
 * an unconfigured one is refused, never forwarded as repository "localhost/pause". */
TEST(path_prefix_localhost_is_a_host)
{
  route_t r;
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/localhost/pause/manifests/3.10", "", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/localhost/pause/blobs/" D64, "", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/localhost/a/b/tags/list", "", &r));
  /* a repository merely starting with it is a repository */
  ASSERT_OK(parse("GET", "/v2/localhostx/pause/manifests/3.10", "", &r));
  ASSERT_STREQ("localhostx/pause", r.name);
  /* a one-component name "localhost" is a repository name (no host part) */
  ASSERT_OK(parse("GET", "/v2/localhost/manifests/3.10", "", &r));
  ASSERT_STREQ("localhost", r.name);
}

TEST(path_prefix_selects_upstream)
{
  route_t r;
  ASSERT_OK(parse("GET", "/v2/registry.k8s.io/pause/manifests/3.10", "", &r));
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("pause", r.name);
  ASSERT_EQ(0, r.ns_given);
  ASSERT_OK(parse("GET", "/v2/ghcr.io/org/img/blobs/" D64, "", &r));
  ASSERT_EQ(1, r.upstream);
  ASSERT_STREQ("org/img", r.name);
  ASSERT_OK(parse("GET", "/v2/host%3A5000/img/tags/list", "", &r));
  ASSERT_EQ(2, r.upstream);
  ASSERT_STREQ("img", r.name);
  ASSERT_OK(parse("GET", "/v2/host:5000/img/tags/list", "", &r));
  ASSERT_EQ(2, r.upstream);
  /* a single component equal to an upstream is a plain name on the default upstream */
  ASSERT_OK(parse("GET", "/v2/ghcr.io/manifests/x", "", &r));
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("ghcr.io", r.name);
  /* an unconfigured host-like first component (a dot or a colon) is refused, never forwarded
   * to the default upstream as a repository */
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN,
            parse("GET", "/v2/docker.io/library/x/manifests/latest", "", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/evil.example/x/blobs/" D64, "", &r));
  /* a first component without a dot or colon is an ordinary name component */
  ASSERT_OK(parse("GET", "/v2/library/x/manifests/latest", "", &r));
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("library/x", r.name);
  /* the rest must still be valid */
  ASSERT_EQ(PC_E_NAME_INVALID, parse("GET", "/v2/ghcr.io/Bad/manifests/x", "", &r));
  ASSERT_EQ(PC_E_NAME_INVALID, parse("GET", "/v2/host:5000//manifests/x", "", &r));
  ASSERT_EQ(PC_E_UPSTREAM_UNKNOWN, parse("GET", "/v2/other:5000/img/manifests/x", "", &r));
}

TEST(grammar_helpers)
{
  ASSERT_EQ(1, route_name_valid("a", 1));
  ASSERT_EQ(0, route_name_valid("", 0));
  ASSERT_EQ(0, route_name_valid("a/", 2));
  ASSERT_EQ(0, route_name_valid("/a", 2));
  ASSERT_EQ(1, route_name_valid("a__b", 4));
  ASSERT_EQ(0, route_name_valid("a_.b", 4));
  ASSERT_EQ(1, route_tag_valid("_", 1));
  ASSERT_EQ(0, route_tag_valid(".a", 2));
  ASSERT_EQ(0, route_tag_valid("a:b", 3));
  char buf[8];
  ASSERT_EQ(3, route_pct_decode("a%41b", 5, buf, sizeof(buf)));
  ASSERT_STREQ("aAb", buf);
  ASSERT_EQ(-1, route_pct_decode("%4", 2, buf, sizeof(buf)));
  ASSERT_EQ(-1, route_pct_decode("%", 1, buf, sizeof(buf)));
  ASSERT_EQ(-1, route_pct_decode("%00", 3, buf, sizeof(buf)));
  ASSERT_EQ(-1, route_pct_decode("12345678", 8, buf, sizeof(buf))); /* no room for NUL */
  ASSERT_EQ(7, route_pct_decode("1234567", 7, buf, sizeof(buf)));
  ASSERT_EQ(1, route_pct_decode("+", 1, buf, sizeof(buf)));
  ASSERT_STREQ("+", buf);
  ASSERT_STREQ("manifest", route_kind_name(ROUTE_MANIFEST));
}

/* ---- ranges ------------------------------------------------------------------------------- */

static int resolve(const char *hdr, uint64_t size, uint64_t *start, uint64_t *len)
{
  answer_range_t r;
  int rc = answer_parse_range(hdr, &r);
  if (!r.has)
    return 1; /* no range: whole body */
  int rc2 = answer_range_resolve(&r, size, start, len);
  if (rc)
    ASSERT_EQ(PC_E_RANGE_INVALID, rc2); /* a parse failure never resolves */
  return rc2;
}

TEST(range_parse_resolve)
{
  uint64_t s = 0, l = 0;
  ASSERT_OK(resolve("bytes=0-0", 2048, &s, &l));
  ASSERT_EQ(0, s);
  ASSERT_EQ(1, l);
  ASSERT_OK(resolve("bytes=500-1499", 2048, &s, &l));
  ASSERT_EQ(500, s);
  ASSERT_EQ(1000, l);
  ASSERT_OK(resolve("bytes=500-", 2048, &s, &l));
  ASSERT_EQ(500, s);
  ASSERT_EQ(1548, l);
  ASSERT_OK(resolve("bytes=-500", 2048, &s, &l));
  ASSERT_EQ(1548, s);
  ASSERT_EQ(500, l);
  ASSERT_OK(resolve("bytes=-5000", 2048, &s, &l)); /* suffix longer than the body */
  ASSERT_EQ(0, s);
  ASSERT_EQ(2048, l);
  ASSERT_OK(resolve("bytes=2000-5000", 2048, &s, &l)); /* clamped */
  ASSERT_EQ(2000, s);
  ASSERT_EQ(48, l);
  ASSERT_OK(resolve("bytes=2047-2047", 2048, &s, &l));
  ASSERT_EQ(2047, s);
  ASSERT_EQ(1, l);
  ASSERT_OK(resolve(" bytes = 1-2 ", 2048, &s, &l));
  ASSERT_EQ(1, s);
  ASSERT_EQ(2, l);
  ASSERT_OK(resolve("bytes=0-18446744073709551615", 10, &s, &l));
  ASSERT_EQ(10, l);

  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=500-0", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=5000-10000", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=2048-", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=-0", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=0-0", 0, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=-5", 0, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=x-", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=1", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=1-2x", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=-", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=99999999999999999999999-", 2048, &s, &l));
  ASSERT_EQ(PC_E_RANGE_INVALID, resolve("bytes=+1-2", 2048, &s, &l));

  /* ignored: served whole */
  ASSERT_EQ(1, resolve(NULL, 2048, &s, &l));
  ASSERT_EQ(1, resolve("items=0-1", 2048, &s, &l));
  ASSERT_EQ(1, resolve("bytes=0-1,5-6", 2048, &s, &l));
  ASSERT_EQ(1, resolve("bytesx", 2048, &s, &l));
}

TEST(route_classes)
{
  /* the operations endpoints are one class ([server] ops_allow guards them) */
  ASSERT_EQ(ROUTE_CLASS_OPS, route_kind_class(ROUTE_HEALTHZ));
  ASSERT_EQ(ROUTE_CLASS_OPS, route_kind_class(ROUTE_READYZ));
  ASSERT_EQ(ROUTE_CLASS_OPS, route_kind_class(ROUTE_METRICS));
  ASSERT_EQ(ROUTE_CLASS_OPS, route_kind_class(ROUTE_STATUS));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_ROOT));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_MANIFEST));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_BLOB));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_TAGS_LIST));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_REFERRERS));
  ASSERT_EQ(ROUTE_CLASS_PULL, route_kind_class(ROUTE_UNKNOWN));
}
