/* srv-tls — the TLS transport of http/srv (HTTPS listeners): OpenSSL over BIOs of its own, driven
 * by the TCP transport underneath (http/srv_tcp.c), so srv.c, routes and the mirror do not
 * change. See http/srv_tls.c for the design and srv-transport.h for the transport rules.
 *
 * A srv_tls_t is a server TLS configuration: certificate chain + key (PEM), optionally a
 * client CA (mutual TLS), TLS 1.2 and 1.3 with OpenSSL's default ciphers, ALPN http/1.1,
 * session resumption (tickets; session ids cached). Each connection takes a reference to the
 * SSL_CTX current when it was accepted; srv_tls_reload builds a new SSL_CTX for connections
 * accepted from then on, so established connections keep theirs.
 *
 * Errors: every function that loads files writes "FILE: reason" into err (NUL-terminated,
 * cut at errlen) and returns a negative libuv error; on a failed reload the running
 * configuration stays.
 *
 * Threads: every call on the loop thread of the listeners that use it.
 *
 * Lifetime: srv_tls_free after the listeners that use it are closed (srv_close or srv_drain);
 * connections already wrapped do not use the srv_tls_t, only their SSL_CTX reference.
 */
#ifndef SRV_TLS_H
#define SRV_TLS_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_tls srv_tls_t;

enum srv_tls_client_auth {
  SRV_TLS_CLIENT_NONE,     /**< no client certificate asked for (no client_ca) */
  SRV_TLS_CLIENT_REQUIRED, /**< a certificate signed by client_ca is required */
  SRV_TLS_CLIENT_OPTIONAL, /**< asked for; none is fine, a bad one is refused */
};

typedef struct srv_tls_conf {
  const char *cert;                     /**< PEM certificate chain (leaf first) */
  const char *key;                      /**< PEM private key */
  const char *client_ca;                /**< PEM CA bundle for client certificates, or NULL/"" */
  enum srv_tls_client_auth client_auth; /**< ignored without client_ca */
  unsigned handshake_timeout_ms;        /**< 0: 10000 */
} srv_tls_conf_t;

/** Why a handshake failed (counted in srv_tls_stats_t.failed). */
enum srv_tls_fail {
  SRV_TLS_FAIL_TIMEOUT,         /**< not done within handshake_timeout_ms */
  SRV_TLS_FAIL_CLOSED,          /**< the peer closed during the handshake */
  SRV_TLS_FAIL_NO_CLIENT_CERT,  /**< mTLS required and the client sent no certificate */
  SRV_TLS_FAIL_BAD_CLIENT_CERT, /**< a client certificate that does not verify */
  SRV_TLS_FAIL_PROTOCOL,        /**< anything else OpenSSL refused (garbage, versions, ...) */
  SRV_TLS_FAIL_PLAIN_HTTP,      /**< plain HTTP on the TLS port (answered 400) */
  SRV_TLS_FAIL_N
};

/** Counters of every connection wrapped with a srv_tls_t since srv_tls_new (kept across
 * reloads; connections that outlive a reload still count). */
typedef struct srv_tls_stats {
  uint64_t handshakes; /**< completed */
  uint64_t resumed;    /**< of those, resumed sessions (tickets or the session cache) */
  uint64_t failed[SRV_TLS_FAIL_N];
} srv_tls_stats_t;

int srv_tls_new(const srv_tls_conf_t *conf, char *err, size_t errlen, srv_tls_t **out);
/** Load conf again (new SSL_CTX for new connections). On error the old one stays. */
int srv_tls_reload(srv_tls_t *t, const srv_tls_conf_t *conf, char *err, size_t errlen);
void srv_tls_free(srv_tls_t *t);
void srv_tls_get_stats(const srv_tls_t *t, srv_tls_stats_t *out);
/** "timeout", "closed", "no_client_cert", "bad_client_cert", "protocol", "plain_http". */
const char *srv_tls_fail_name(enum srv_tls_fail f);

/** Kernel TLS (SSL_sendfile): 1 when this OpenSSL and kernel offer it, else 0; why says what
 * was found either way (OpenSSL built without it; the kernel refusing the "tls" ULP on a
 * loopback TCP connection made for the question, as OpenSSL would ask). This transport
 * encrypts in user space (its BIOs are not the socket) whatever the answer (bounded buffers,
 * SSL_write): the caller logs the finding once. */
int srv_tls_ktls_probe(char *why, size_t cap);

#endif
