/* daemon/imgref — one line of an image list, as `kubeadm config images list` prints it:
 *
 *   registry.k8s.io/kube-apiserver:v1.32.0
 *   registry.k8s.io/coredns/coredns:v1.11.3
 *   registry.k8s.io/pause@sha256:<64 hex>          (or name:tag@sha256:...: the digest wins)
 *   # a comment; blank lines and text after " #" are ignored
 *
 * The first path component names the upstream when it looks like a registry host (it has a
 * dot or a colon, or is "localhost": the Docker reference rule); it must then be one of the
 * configured upstream names (compared case-insensitively), else the line is refused ("unknown
 * upstream"). A reference without a host belongs to the default upstream (names[0]). No tag
 * and no digest means ":latest". The repository and tag follow the OCI grammar (route.h).
 *
 * Pure: no I/O, no allocation. Used by the daemon for `pullcache prefetch` (daemon/prefetch.c)
 * and by `pullcache export` for its REF arguments.
 */
#ifndef IMGREF_H
#define IMGREF_H

#include <stddef.h>

#include "daemon/route.h"

typedef enum {
  IMGREF_OK = 0,       /**< *out holds a reference */
  IMGREF_SKIP = 1,     /**< blank or comment: nothing to do */
  IMGREF_BAD = -1,     /**< malformed (why says how) */
  IMGREF_UNKNOWN = -2, /**< the host is not a configured upstream (why names it) */
} imgref_rc;

typedef struct imgref {
  int upstream;                  /**< index into names */
  char repo[ROUTE_NAME_MAX + 1]; /**< without the host */
  char tag[ROUTE_TAG_MAX + 1];   /**< "" when only a digest was given */
  char digest[STORE_DIGEST_MAX]; /**< "" when by tag */
} imgref_t;

/** Parse one line (len bytes; need not be NUL-terminated). names: the configured upstream
 * names, [0] the default. why (may be NULL) gets a sentence on IMGREF_BAD/IMGREF_UNKNOWN. */
int imgref_parse(const char *line, size_t len, const char *const *names, int nnames, imgref_t *out,
                 char *why, size_t whylen);

/** "repo:tag" or "repo@sha256:..." (the pin form of store/evict.h) into buf. 0, or -1 when it
 * does not fit. */
int imgref_pin_form(const imgref_t *r, char *buf, size_t len);

/** Parse a platform list "OS/ARCH[/VARIANT][,...]" (as --platform takes it) into out[0..max):
 * the count (>= 1), or -1 with why set. */
#define IMGREF_PLATFORM_MAX 64
int imgref_platforms_parse(const char *list, char (*out)[IMGREF_PLATFORM_MAX], int max, char *why,
                           size_t whylen);
/** 1 when the platform of an index entry (os, arch, variant; "" when absent) is want:
 * "OS/ARCH" matches every variant, "OS/ARCH/VARIANT" only that one. */
int imgref_platform_match(const char *want, const char *os, const char *arch, const char *variant);

#endif
