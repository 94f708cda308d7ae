/* Unit tests: daemon/imgref (one line of a prefetch image list). */
#include <string.h>

#include "daemon/imgref.h"
#include "unit.h"

static const char *const UPS[] = {"registry.k8s.io", "ghcr.io", "host:5000", "localhost"};
#define NUPS 4
#define HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int parse(const char *line, imgref_t *r, char *why)
{
  return imgref_parse(line, strlen(line), UPS, NUPS, r, why, 300);
}

TEST(kubeadm_lines)
{
  imgref_t r;
  char why[300];
  ASSERT_EQ(IMGREF_OK, parse("registry.k8s.io/kube-apiserver:v1.32.0", &r, why));
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("kube-apiserver", r.repo);
  ASSERT_STREQ("v1.32.0", r.tag);
  ASSERT_STREQ("", r.digest);
  ASSERT_EQ(IMGREF_OK, parse("  registry.k8s.io/coredns/coredns:v1.11.3  # dns\r\n", &r, why));
  ASSERT_STREQ("coredns/coredns", r.repo);
  ASSERT_STREQ("v1.11.3", r.tag);
  ASSERT_EQ(IMGREF_OK, parse("REGISTRY.K8S.IO/pause:3.10", &r, why)); /* hosts: any case */
  ASSERT_EQ(0, r.upstream);
  ASSERT_EQ(IMGREF_OK, parse("registry.k8s.io/etcd:3.5.16-0", &r, why));
  ASSERT_STREQ("3.5.16-0", r.tag);
  char pin[400];
  ASSERT_OK(imgref_pin_form(&r, pin, sizeof(pin)));
  ASSERT_STREQ("etcd:3.5.16-0", pin);
}

TEST(hosts_digests_defaults)
{
  imgref_t r;
  char why[300];
  ASSERT_EQ(IMGREF_OK, parse("host:5000/team/app@sha256:" HEX, &r, why));
  ASSERT_EQ(2, r.upstream);
  ASSERT_STREQ("team/app", r.repo);
  ASSERT_STREQ("sha256:" HEX, r.digest);
  ASSERT_STREQ("", r.tag);
  ASSERT_EQ(IMGREF_OK, parse("ghcr.io/x/y:1.0@sha256:" HEX, &r, why)); /* the digest wins */
  ASSERT_EQ(1, r.upstream);
  ASSERT_STREQ("1.0", r.tag);
  ASSERT_STREQ("sha256:" HEX, r.digest);
  char pin[400];
  ASSERT_OK(imgref_pin_form(&r, pin, sizeof(pin)));
  ASSERT_STREQ("x/y@sha256:" HEX, pin);
  ASSERT_EQ(IMGREF_OK, parse("localhost/app", &r, why));
  ASSERT_EQ(3, r.upstream);
  ASSERT_STREQ("latest", r.tag);
  ASSERT_EQ(IMGREF_OK, parse("pause:3.10", &r, why)); /* no host: the default upstream */
  ASSERT_EQ(0, r.upstream);
  ASSERT_STREQ("pause", r.repo);
  ASSERT_EQ(IMGREF_OK, parse("library/busybox", &r, why)); /* "library" is no host */
  ASSERT_STREQ("library/busybox", r.repo);
}

TEST(skips_and_refusals)
{
  imgref_t r;
  char why[300];
  ASSERT_EQ(IMGREF_SKIP, parse("", &r, why));
  ASSERT_EQ(IMGREF_SKIP, parse("   \t\r\n", &r, why));
  ASSERT_EQ(IMGREF_SKIP, parse("# registry.k8s.io/pause:3.10", &r, why));
  ASSERT_EQ(IMGREF_UNKNOWN, parse("quay.io/coreos/etcd:v3", &r, why));
  ASSERT(strstr(why, "unknown upstream \"quay.io\""));
  ASSERT_EQ(IMGREF_UNKNOWN, parse("host:5001/x:1", &r, why));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pause:3.10 registry.k8s.io/etcd:1", &r, why));
  ASSERT(strstr(why, "more than one word"));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/Pause:3.10", &r, why));
  ASSERT(strstr(why, "repository"));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pause:", &r, why));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pause:-x", &r, why));
  ASSERT(strstr(why, "tag"));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pause@sha256:abc", &r, why));
  ASSERT(strstr(why, "digest"));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pause@sha512:" HEX HEX, &r, why));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/", &r, why));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io/pa\x01use:1", &r, why));
  ASSERT_EQ(IMGREF_BAD, parse("registry.k8s.io//pause:1", &r, why));
  /* not NUL-terminated: only len bytes are read */
  const char buf[] = {'p', 'a', 'u', 's', 'e', ':', '1', 'X'};
  ASSERT_EQ(IMGREF_OK, imgref_parse(buf, 7, UPS, NUPS, &r, NULL, 0));
  ASSERT_STREQ("1", r.tag);
  ASSERT_EQ(IMGREF_UNKNOWN, imgref_parse("pause:1", 7, UPS, 0, &r, why, sizeof(why)));
}
