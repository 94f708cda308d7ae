/* pullcache — entry point: dispatch `pullcache <command>` to daemon/cmd.h. */
#include <stdio.h>
#include <string.h>

#include "core/pc.h"
#include "daemon/cmd.h"
#include "daemon/cmd_store.h"

static void usage(FILE *f)
{
  fprintf(f, "usage: pullcache <command> [options]\n"
             "\n"
             "A caching pull-through mirror for OCI registries (registry.k8s.io by default).\n"
             "\n"
             "commands:\n"
             "  serve    run the mirror: pullcache serve [--config FILE | --no-config]\n"
             "           [--listen ADDR:PORT]... [--store DIR] [--upstream NAME=URL]...\n"
             "           [--tag-ttl DURATION] [--offline] [--log-level LEVEL] [--log-format F]\n"
             "  check-config  validate the configuration and print it: pullcache check-config\n"
             "           [--quiet] [serve flags]\n"
             "  import   copy an OCI image layout into the store: pullcache import --store DIR\n"
             "           --upstream NAME --repo NAME [--tag TAG] OCI_LAYOUT_DIR\n"
             "  prefetch fill the running daemon's cache from an image list: pullcache prefetch\n"
             "           [--platform OS/ARCH,... | --all-platforms] [--signatures] [--pin] FILE|-\n"
             "  export   images of the store as an OCI layout (dir or tar): pullcache export\n"
             "           [--platform L | --all-platforms] [--signatures] [--since BUNDLE]\n"
             "           (--all | REF... | --file FILE) OUT|OUT.tar|-\n"
             "  fsck     verify and repair the store: pullcache fsck [--store DIR]\n"
             "  config   print client configuration for the mirror: pullcache config\n"
             "           containerd|crio|podman --mirror URL [--upstream NAME]... [--write]\n"
             "  ls       what is cached: pullcache ls [--json] [--store DIR]; du: by repository\n"
             "  pin      never evict: pullcache pin|unpin REF [--upstream NAME]; pins: list\n"
             "  gc       evict now: pullcache gc [--dry-run] [--to SIZE] [--store DIR]\n"
             "  egress   the hosts the mirror contacted, as a firewall allow-list: pullcache\n"
             "           egress [--store DIR] [--check]\n"
             "  help     show this help (also --help); `pullcache <command> --help` for details\n"
             "  version  show the version (also --version)\n");
}

int main(int argc, char **argv)
{
  const char *cmd = argc > 1 ? argv[1] : NULL;
  if (!cmd) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(cmd, "serve"))
    return cmd_serve(argc - 1, argv + 1);
  if (!strcmp(cmd, "check-config"))
    return cmd_check_config(argc - 1, argv + 1);
  if (!strcmp(cmd, "import"))
    return cmd_import(argc - 1, argv + 1);
  if (!strcmp(cmd, "prefetch"))
    return cmd_prefetch(argc - 1, argv + 1);
  if (!strcmp(cmd, "export"))
    return cmd_export(argc - 1, argv + 1);
  if (!strcmp(cmd, "fsck"))
    return cmd_fsck(argc - 1, argv + 1);
  if (!strcmp(cmd, "config"))
    return cmd_config(argc - 1, argv + 1);
  if (cmd_store_is_command(cmd))
    return cmd_cache(argc - 1, argv + 1);
  if (!strcmp(cmd, "egress"))
    return cmd_egress(argc - 1, argv + 1);
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("pullcache %s\n", PC_VERSION);
    return 0;
  }
  fprintf(stderr, "pullcache: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return 2;
}
