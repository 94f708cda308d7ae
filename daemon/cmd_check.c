/* cmd_check — `pullcache check-config`: build the configuration exactly as `serve` would (the
 * same flags, the same file, the same validation) and print the effective result, without
 * opening the store or a socket. */
#include <stdio.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/config.h"
#include "daemon/access.h"
#include "http/srv-tls.h"

/* With tls_listen: load the certificate, key and client CA as serve would (the key must match
 * the certificate). 0, or -1 with "FILE: reason" in err. */
static int check_tls(const daemon_config_t *c, char *err, size_t errlen)
{
  if (!c->tls_listen[0])
    return 0;
  srv_tls_conf_t tc = {c->tls_cert, c->tls_key, c->tls_client_ca, SRV_TLS_CLIENT_REQUIRED, 0};
  srv_tls_t *t;
  if (srv_tls_new(&tc, err, errlen, &t) != 0)
    return -1;
  srv_tls_free(t);
  return 0;
}

/* The credential files (auth_token_file, htpasswd) load as serve would load them. */
static int check_auth(const daemon_config_t *c, char *err, size_t errlen)
{
  daemon_access_t *a;
  if (access_creds_load(c, err, errlen, &a) != 0)
    return -1;
  access_creds_free(a);
  return 0;
}

int cmd_check_config(int argc, char **argv)
{
  daemon_config_t *cfg;
  char err[512] = "";
  int quiet = 0, n = 0;
  char **args = pc_xcalloc((size_t)argc + 1, sizeof(*args));

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
      printf("usage: pullcache check-config [--quiet] [--config FILE | --no-config] "
             "[serve flags]...\n"
             "Validates the configuration as `pullcache serve` would build it and prints the\n"
             "effective configuration (every key). Exit 0 when valid, 2 otherwise.\n");
      free(args);
      return 0;
    }
    if (!strcmp(argv[i], "--quiet") || !strcmp(argv[i], "-q"))
      quiet = 1;
    else
      args[n++] = argv[i];
  }
  cfg = pc_xmalloc(sizeof(*cfg));
  if (config_from_args(cfg, n, args, err, sizeof(err)) < 0 ||
      check_tls(cfg, err, sizeof(err)) < 0 || check_auth(cfg, err, sizeof(err)) < 0) {
    fprintf(stderr, "pullcache check-config: %s\n", err);
    explicit_bzero(cfg, sizeof(*cfg));
    free(cfg);
    free(args);
    return 2;
  }
  if (!quiet)
    config_print(cfg, stdout);
  fprintf(stderr, "pullcache check-config: ok (%s)\n", cfg->path[0] ? cfg->path : "no file");
  explicit_bzero(cfg, sizeof(*cfg));
  free(cfg);
  free(args);
  return 0;
}
