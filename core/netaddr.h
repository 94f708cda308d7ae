/* netaddr — address classes and CIDR lists, for policies on where pullcache may connect.
 *
 * Pure functions on numeric address strings ("127.0.0.1", "::1", "::ffff:10.0.0.1"): no DNS,
 * no allocation, no state, safe from any thread. IPv4-mapped IPv6 addresses are classed and
 * matched as the IPv4 address they carry.
 */
#ifndef PC_NETADDR_H
#define PC_NETADDR_H

#include <stddef.h>

typedef enum {
  PC_ADDR_INVALID = -1, /**< not a numeric address */
  PC_ADDR_PUBLIC = 0,   /**< everything below is not */
  PC_ADDR_LOOPBACK,     /**< 127/8, ::1 */
  PC_ADDR_LINKLOCAL,    /**< 169.254/16 (cloud metadata lives here), fe80::/10 */
  PC_ADDR_PRIVATE,      /**< 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7 */
  PC_ADDR_UNSPECIFIED,  /**< 0/8, ::, multicast and reserved (224/3, ff00::/8) */
} pc_addr_class_t;

/** The class of a numeric IPv4 or IPv6 address. */
pc_addr_class_t pc_addr_class(const char *ip);
/** A short name of a class ("public", "loopback", ...). Never NULL. */
const char *pc_addr_class_name(pc_addr_class_t c);

/** Check a list of CIDRs or bare addresses separated by commas and/or spaces
 * ("10.0.0.0/8, fd00::/8 192.0.2.7"). Returns 0 when every entry is valid (an empty list is
 * valid), else -1 with the first bad entry copied (NUL-terminated, truncated) into bad. */
int pc_cidr_list_check(const char *list, char *bad, size_t badlen);
/** 1 when ip (numeric) is inside an entry of list, else 0 (also for an invalid ip or entry). */
int pc_cidr_list_match(const char *list, const char *ip);

#endif
