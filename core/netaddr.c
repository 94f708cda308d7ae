/* netaddr — address classes and CIDR lists (see netaddr.h). */
#include "core/netaddr.h"

#include <arpa/inet.h>
#include <string.h>

#include "core/num.h"

/* A numeric address as 16 bytes; IPv4 (and IPv4-mapped IPv6) as ::ffff:a.b.c.d. */
static int addr16(const char *s, unsigned char out[16])
{
  unsigned char v4[4];
  if (inet_pton(AF_INET, s, v4) == 1) {
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    memcpy(out + 12, v4, 4);
    return 0;
  }
  return inet_pton(AF_INET6, s, out) == 1 ? 0 : -1;
}

static int is_v4(const unsigned char a[16])
{
  static const unsigned char pre[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(a, pre, 12) == 0;
}

pc_addr_class_t pc_addr_class(const char *ip)
{
  unsigned char a[16];
  if (!ip || addr16(ip, a) != 0)
    return PC_ADDR_INVALID;
  if (is_v4(a)) {
    const unsigned char *b = a + 12;
    if (b[0] == 127)
      return PC_ADDR_LOOPBACK;
    if (b[0] == 169 && b[1] == 254)
      return PC_ADDR_LINKLOCAL;
    if (b[0] == 10 || (b[0] == 172 && (b[1] & 0xf0) == 16) || (b[0] == 192 && b[1] == 168) ||
        (b[0] == 100 && (b[1] & 0xc0) == 64))
      return PC_ADDR_PRIVATE;
    if (b[0] == 0 || b[0] >= 224)
      return PC_ADDR_UNSPECIFIED;
    return PC_ADDR_PUBLIC;
  }
  static const unsigned char zero[16] = {0};
  if (memcmp(a, zero, 15) == 0 && a[15] == 1)
    return PC_ADDR_LOOPBACK;
  if (memcmp(a, zero, 16) == 0 || a[0] == 0xff)
    return PC_ADDR_UNSPECIFIED;
  if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
    return PC_ADDR_LINKLOCAL;
  if ((a[0] & 0xfe) == 0xfc)
    return PC_ADDR_PRIVATE;
  return PC_ADDR_PUBLIC;
}

const char *pc_addr_class_name(pc_addr_class_t c)
{
  switch (c) {
  case PC_ADDR_PUBLIC:
    return "public";
  case PC_ADDR_LOOPBACK:
    return "loopback";
  case PC_ADDR_LINKLOCAL:
    return "link-local";
  case PC_ADDR_PRIVATE:
    return "private";
  case PC_ADDR_UNSPECIFIED:
    return "unspecified";
  case PC_ADDR_INVALID:
    break;
  }
  return "invalid";
}

/* One entry "ADDR" or "ADDR/BITS" (n bytes at s) -> network and prefix length in 128-bit
 * space. */
static int entry_parse(const char *s, size_t n, unsigned char net[16], unsigned *bits)
{
  char buf[64];
  if (n == 0 || n >= sizeof(buf))
    return -1;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *slash = strchr(buf, '/');
  uint64_t b = 128;
  if (slash)
    *slash = '\0';
  if (addr16(buf, net) != 0)
    return -1;
  int v4 = strchr(buf, ':') == NULL;
  if (slash) {
    if (pc_parse_u64(slash + 1, v4 ? 32 : 128, &b) != 0)
      return -1;
    if (v4)
      b += 96;
  }
  *bits = (unsigned)b;
  return 0;
}

static int in_net(const unsigned char a[16], const unsigned char net[16], unsigned bits)
{
  unsigned full = bits / 8, rest = bits % 8;
  if (memcmp(a, net, full) != 0)
    return 0;
  if (rest == 0)
    return 1;
  unsigned char mask = (unsigned char)(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

/* Calls fn on each entry; stops at the first non-zero return. */
static int each_entry(const char *list, int (*fn)(const char *, size_t, void *), void *arg)
{
  const char *p = list ? list : "";
  while (*p) {
    while (*p == ',' || *p == ' ' || *p == '\t')
      p++;
    size_t n = strcspn(p, ", \t");
    if (n) {
      int rc = fn(p, n, arg);
      if (rc)
        return rc;
    }
    p += n;
  }
  return 0;
}

typedef struct {
  char *bad;
  size_t badlen;
} check_arg_t;

static int check_one(const char *s, size_t n, void *arg)
{
  check_arg_t *c = arg;
  unsigned char net[16];
  unsigned bits;
  if (entry_parse(s, n, net, &bits) == 0)
    return 0;
  if (c->bad && c->badlen) {
    size_t k = n < c->badlen - 1 ? n : c->badlen - 1;
    memcpy(c->bad, s, k);
    c->bad[k] = '\0';
  }
  return -1;
}

int pc_cidr_list_check(const char *list, char *bad, size_t badlen)
{
  check_arg_t c = {bad, badlen};
  return each_entry(list, check_one, &c);
}

typedef struct {
  unsigned char a[16];
} match_arg_t;

static int match_one(const char *s, size_t n, void *arg)
{
  match_arg_t *m = arg;
  unsigned char net[16];
  unsigned bits;
  return entry_parse(s, n, net, &bits) == 0 && in_net(m->a, net, bits);
}

int pc_cidr_list_match(const char *list, const char *ip)
{
  match_arg_t m;
  if (!ip || addr16(ip, m.a) != 0)
    return 0;
  return each_entry(list, match_one, &m) == 1;
}
