/* cmd — the `pullcache <command>` entry points, dispatched by daemon/main.c.
 *
 * Each takes the arguments after the command name (argv[0] is the command itself) and returns
 * a process exit code. Keep this a plain list of declarations.
 */
#ifndef CMD_H
#define CMD_H

/** `pullcache fsck [--store DIR]`: verify and repair the store. Returns 0 when the store was
 * clean, 1 when problems were found and repaired, 2 on a usage or runtime error. */
int cmd_fsck(int argc, char **argv);

/** `pullcache serve [flags]` (daemon/serve.c): run the mirror until SIGTERM/SIGINT. Returns 0
 * after a clean stop, 1 on a runtime error (store, listen), 2 on a usage/config error. */
int cmd_serve(int argc, char **argv);

/** `pullcache check-config [--quiet] [serve flags]` (daemon/cmd_check.c): build the `serve`
 * configuration and print it. Returns 0 when valid, 2 otherwise (the reason on stderr). */
int cmd_check_config(int argc, char **argv);

/** `pullcache import --store DIR --upstream NAME --repo NAME [--tag TAG] LAYOUT_DIR`
 * (daemon/cmd_import.c): copy an OCI image layout into the store. Returns 0, 1 on a runtime
 * error (bad layout, digest mismatch), 2 on a usage error. */
int cmd_import(int argc, char **argv);

/** `pullcache config containerd|crio|podman --mirror URL [--upstream NAME]...`
 * (daemon/cmd_config.c): print the client configuration that sends pulls through the mirror
 * (containerd hosts.toml, containers-registries.conf entries); `--write` creates
 * DIR/NAME/hosts.toml for containerd. Returns 0, 1 when a file cannot be written, 2 on a usage
 * error. */
int cmd_config(int argc, char **argv);
/** pullcache egress: the hosts the mirror contacted, as an allow-list; --check reaches each
 * (daemon/cmd_egress.c). */
int cmd_egress(int argc, char **argv);

/** `pullcache ls|du|pin|unpin|pins|gc [--store DIR] ...` (daemon/cmd_store.c): the cache
 * commands, through the running daemon's control socket or on the store directly when no daemon
 * runs. argv[0] is the command name. Returns 0, 1 on a runtime error, 2 on bad input. */
int cmd_cache(int argc, char **argv);

/** `pullcache prefetch [...] FILE|-` (daemon/cmd_prefetch.c): fill the running daemon's store
 * from an image list (daemon/prefetch.h). Returns 0, 1 when an image failed or no daemon
 * answers, 2 on a usage error. */
int cmd_prefetch(int argc, char **argv);

/** `pullcache export [...] (--all | REF... | --file FILE) OUT` (daemon/cmd_export.c): images
 * of the store (opened read-only: a live daemon may run) as an OCI layout directory or tar.
 * Returns 0, 1 when an image could not be exported, 2 on a usage error. */
int cmd_export(int argc, char **argv);

#endif
