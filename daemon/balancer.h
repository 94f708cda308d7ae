/* daemon/balancer — `pullcache config haproxy|nginx`: the configuration of a load balancer in
 * front of N pullcache replicas, each with its own store.
 *
 * The balancer hashes consistently on what a request is for, so each piece of content lives on
 * one replica and the others never fetch it: a blob on its digest (the last path segment: the
 * same layer asked under two repository names lands on one replica), a manifest on its
 * repository and reference (the path, and the ns= parameter), everything else on its path. When
 * a replica goes, only its keys move (about 1/N of them) and the others fill those once.
 * Replicas are health-checked with GET /readyz (HAProxy; open-source nginx checks passively:
 * a replica that fails a connection is taken out for fail_timeout).
 *
 * Plain text generation from validated arguments: no network, no files, no daemon. Errors go
 * to the err buffer; nothing is printed for an invalid argument list.
 */
#ifndef DAEMON_BALANCER_H
#define DAEMON_BALANCER_H

#include <stddef.h>
#include <stdio.h>

#define BALANCER_MAX_REPLICAS 64

enum balancer_kind { BALANCER_HAPROXY, BALANCER_NGINX };

typedef struct balancer_args {
  enum balancer_kind kind;
  const char *replicas[BALANCER_MAX_REPLICAS]; /**< "HOST:PORT" / "[v6]:PORT", as given */
  int nreplicas;
  const char *listen; /**< "ADDR:PORT" (default 0.0.0.0:5000) */
  const char *tls;    /**< PEM with the certificate chain and the key, or NULL: plain HTTP */
} balancer_args_t;

/** Parse the arguments after `config haproxy|nginx` (argv[0] is "haproxy" or "nginx"). Returns
 * 0, or -EINVAL with the reason in err. */
int balancer_parse(int argc, char **argv, balancer_args_t *a, char *err, size_t errlen);
/** Write the whole configuration file for a. */
void balancer_emit(FILE *f, const balancer_args_t *a);
/** `pullcache config haproxy|nginx ...`: parse, print to stdout. 0, 1 (stdout), 2 (usage). */
int balancer_main(int argc, char **argv);

#endif
