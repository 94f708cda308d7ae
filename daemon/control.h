/* daemon/control — the control socket <store>/control.sock through which `pullcache ls|du|
 * pin|unpin|pins|gc` reach a running daemon (protocol and protection: daemon/control.c and
 * daemon/cmd_store.h). Loop thread only. */
#ifndef DAEMON_CONTROL_H
#define DAEMON_CONTROL_H

#include "daemon/daemon.h"

/** Listen on <store>/control.sock (d->control). 0, or an error (logged by the caller; the
 * daemon serves without it). */
int control_start(daemon_t *d);
/** Stop listening, remove the socket file, close idle connections; commands running on the
 * pool finish and their connections close after the reply. Idempotent. */
void control_close(daemon_t *d);

#endif
