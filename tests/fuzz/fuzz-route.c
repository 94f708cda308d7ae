/* libFuzzer target: daemon/route parsing and the Range helpers of daemon/registry.
 *
 * Input: "METHOD\nPATH\nQUERY\nRANGE" (missing parts are empty). Invariants checked:
 *   - never crashes, reads out of bounds or leaks (ASan/UBSan);
 *   - a successful parse yields a name, tag or digest that re-validates on its own, an
 *     upstream index inside the configured list, and n <= ROUTE_N_MAX;
 *   - a resolved range lies inside the body and is never empty.
 */
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "core/pc.h"
#include "daemon/answer.h"
#include "daemon/route.h"

static const char *const UPS[] = {"registry.k8s.io", "ghcr.io", "host:5000"};

/* Split data at '\n' into up to 4 NUL-terminated fields inside buf. */
static void split(const uint8_t *data, size_t size, char *buf, const char *f[4])
{
  int k = 0;
  memcpy(buf, data, size);
  buf[size] = '\0';
  f[0] = buf;
  f[1] = f[2] = f[3] = "";
  for (size_t i = 0; i < size && k < 3; i++) {
    if (buf[i] == '\n') {
      buf[i] = '\0';
      f[++k] = buf + i + 1;
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char buf[4097];
  const char *f[4];
  route_t r;
  answer_range_t range;
  uint64_t start, len;

  if (size > 4096)
    return 0;
  split(data, size, buf, f);

  int rc = route_parse(f[0], f[1], f[2], UPS, 3, &r);
  if (rc == 0) {
    PC_ASSERT(r.upstream >= 0 && r.upstream < 3);
    PC_ASSERT(r.n <= ROUTE_N_MAX);
    switch (r.kind) {
    case ROUTE_MANIFEST:
    case ROUTE_BLOB:
    case ROUTE_REFERRERS:
      PC_ASSERT(route_name_valid(r.name, strlen(r.name)));
      if (r.is_digest)
        PC_ASSERT(store_digest_parse(r.ref, strlen(r.ref)) > 0);
      else
        PC_ASSERT(r.kind == ROUTE_MANIFEST && route_tag_valid(r.ref, strlen(r.ref)));
      PC_ASSERT(!strstr(r.name, "..") && r.name[0] != '/');
      break;
    case ROUTE_TAGS_LIST:
      PC_ASSERT(route_name_valid(r.name, strlen(r.name)));
      PC_ASSERT(r.last[0] == '\0' || route_tag_valid(r.last, strlen(r.last)));
      break;
    default:
      PC_ASSERT(r.name[0] == '\0');
      break;
    }
    if (r.ns_given)
      PC_ASSERT(strcasecmp(r.ns, UPS[r.upstream]) == 0);
  } else {
    PC_ASSERT(rc < 0 && pc_err_status(rc) >= 400);
  }

  rc = answer_parse_range(f[3][0] ? f[3] : NULL, &range);
  PC_ASSERT(rc == 0 || rc == PC_E_RANGE_INVALID);
  if (rc == PC_E_RANGE_INVALID)
    PC_ASSERT(range.has);
  if (range.has) {
    static const uint64_t sizes[] = {0, 1, 2048, UINT64_MAX};
    for (size_t i = 0; i < PC_ARRAY_SIZE(sizes); i++) {
      int rr = answer_range_resolve(&range, sizes[i], &start, &len);
      if (rc)
        PC_ASSERT(rr == PC_E_RANGE_INVALID);
      if (rr == 0) {
        PC_ASSERT(len > 0 && start < sizes[i] && len <= sizes[i] - start);
      }
    }
  }
  return 0;
}
