/* srv_tls — the TLS transport of http/srv (see srv-tls.h, srv-transport.h for the rules).
 *
 * Layering. A TLS transport wraps a TCP transport (`in`, http/srv_tcp.c) and drives an SSL
 * object over two BIOs: ciphertext read from `in` is written into rbio, SSL_read gives
 * plaintext to srv.c; SSL_write puts ciphertext into wbio, a BIO of ours that appends it to
 * one buffer (`cout`), written to `in` from there, one write at a time (no copy through a
 * memory BIO on the way out). Everything runs on the loop
 * thread except pread(2) of file bodies.
 *
 * Bounded memory. The output buffer exists only while ciphertext is on its way out, the 16 KiB
 * read buffer only from in_alloc to in_read (an idle connection holds OpenSSL's state and
 * what rbio keeps; SSL_MODE_RELEASE_BUFFERS).
 * Plaintext is given to SSL_write TLS_REC bytes at a time and only while
 * wbio holds less than TLS_OUT bytes; a file body is pread into a TLS_FILE buffer on the
 * thread pool (one chunk per send_file op: the op reports fewer bytes than asked, which the
 * seam allows), then written like a memory body. Reading stops on `in` while srv.c does not
 * read and rbio holds TLS_IN_MAX bytes. No buffer depends on the body size.
 *
 * States (tls_t.state):
 *
 *   T_FIRST --first byte 0x16--> T_HS --handshake done--> T_OPEN
 *      |                           |                        |
 *      | first byte a letter       | alert, bad cert, timeout, garbage
 *      v                           v                        v
 *   T_PLAIN (clear 400 written) --> T_DEAD (error kept: delivered to read, ops fail) <--+
 *
 * A read error (T_DEAD) reaches srv.c through its read callback (now if it reads, else from
 * the kick timer after its next read_start), and srv.c closes. Callbacks never run from
 * inside an op: work an op cannot finish at once is finished from the inner transport's
 * callbacks or from the 0 ms kick timer.
 *
 * Closing: stop reading, wait for a pread on the thread pool, close the timers and `in` (its
 * pending write completes with UV_ECANCELED), then complete our own pending op with
 * UV_ECANCELED, SSL_free, close callback, free.
 */
#include "http/srv-tls.h"

#include "core/pc.h"
#include "http/srv-transport.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TLS_REC 16384u             /* plaintext per SSL_write */
#define TLS_OUT (64u * 1024u)      /* ciphertext queued towards the socket before SSL_write waits */
#define TLS_OUT_CAP (128u * 1024u) /* the output buffer's first size (TLS_OUT + records) */
#define TLS_IN (16u * 1024u + 64)  /* ciphertext read buffer */
#define TLS_IN_MAX (64u * 1024u)   /* ciphertext kept in rbio while srv.c does not read */
#define TLS_FILE (256u * 1024u)    /* file bytes per send_file op */
#define TLS_RBIO_KEEP 4096u        /* rbio buffer kept once empty (larger: replaced) */

/* The counters, shared by the configuration and every connection it wrapped (a connection may
 * outlive srv_tls_free: it holds a reference). Loop thread only. */
typedef struct tls_stats {
  int refs;
  srv_tls_stats_t s;
} tls_stats_t;

struct srv_tls {
  SSL_CTX *ctx;
  unsigned hs_timeout_ms;
  tls_stats_t *stats;
};

static void stats_unref(tls_stats_t *st)
{
  if (st && --st->refs == 0)
    free(st);
}

void srv_tls_get_stats(const srv_tls_t *t, srv_tls_stats_t *out)
{
  *out = t->stats->s;
}

const char *srv_tls_fail_name(enum srv_tls_fail f)
{
  static const char *const n[SRV_TLS_FAIL_N] = {"timeout",         "closed",   "no_client_cert",
                                                "bad_client_cert", "protocol", "plain_http"};
  return (unsigned)f < SRV_TLS_FAIL_N ? n[f] : "protocol";
}

/* What OpenSSL does to enable kernel TLS: the "tls" upper-layer protocol on an established TCP
 * socket (a loopback connection made for the question). 0 or the errno. No /proc read: the
 * unit's ProcSubset=pid hides /proc/sys. */
static int ulp_tls_errno(void)
{
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  int err = 0, c = -1, l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (struct sockaddr *)&sa, &sl) != 0) {
    err = errno;
    goto out;
  }
  c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0)
    err = errno;
out:
  if (c >= 0)
    close(c);
  if (l >= 0)
    close(l);
  return err;
}

int srv_tls_ktls_probe(char *why, size_t cap)
{
#if defined(OPENSSL_NO_KTLS)
  snprintf(why, cap, "this OpenSSL is built without kernel TLS");
  return 0;
#else
  int e = ulp_tls_errno();
  if (e) {
    snprintf(why, cap, "the kernel refuses the tls ULP: %s%s", strerror(e),
             e == ENOENT ? " (no tls module: modprobe tls)" : "");
    return 0;
  }
  snprintf(why, cap, "OpenSSL %s and the kernel offer it", OpenSSL_version(OPENSSL_VERSION_STRING));
  return 1;
#endif
}

/* ---- configuration ------------------------------------------------------------------------ */

static void file_err(char *err, size_t errlen, const char *file, const char *why)
{
  unsigned long e = ERR_peek_last_error();
  const char *r = why ? why : (e ? ERR_reason_error_string(e) : NULL);
  snprintf(err, errlen, "%s: %s", file, r ? r : "cannot be loaded");
  ERR_clear_error();
}

static int readable(const char *file, char *err, size_t errlen)
{
  FILE *f = fopen(file, "r");
  if (!f) {
    int e = errno;
    file_err(err, errlen, file, strerror(e));
    return -e;
  }
  fclose(f);
  return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
  static const unsigned char h11[] = "\x08http/1.1";
  unsigned char *o;
  (void)ssl;
  (void)arg;
  if (SSL_select_next_proto(&o, outlen, h11, sizeof(h11) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK; /* no http/1.1 offered: go on without ALPN */
  *out = o;
  return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *ctx_load(const srv_tls_conf_t *c, char *err, size_t errlen, int *rc)
{
  ERR_clear_error();
  *rc = UV_EINVAL;
  if (!c->cert || !c->cert[0] || !c->key || !c->key[0]) {
    snprintf(err, errlen, "tls_cert and tls_key are both needed");
    return NULL;
  }
  if ((*rc = readable(c->cert, err, errlen)) || (*rc = readable(c->key, err, errlen)))
    return NULL;
  int mtls = c->client_ca && c->client_ca[0];
  if (mtls && (*rc = readable(c->client_ca, err, errlen)))
    return NULL;
  *rc = UV_EINVAL;
  SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    snprintf(err, errlen, "SSL_CTX_new failed");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  static const unsigned char sid[] = "pullcache";
  SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
  if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
    file_err(err, errlen, c->cert, NULL);
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
    file_err(err, errlen, c->key, NULL);
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    file_err(err, errlen, c->key, "does not match the certificate");
    goto fail;
  }
  if (mtls) {
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(c->client_ca);
    if (!names || SSL_CTX_load_verify_locations(ctx, c->client_ca, NULL) != 1) {
      if (names)
        sk_X509_NAME_pop_free(names, X509_NAME_free);
      file_err(err, errlen, c->client_ca, names ? NULL : "no CA certificate in the file");
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    int mode = SSL_VERIFY_PEER;
    if (c->client_auth != SRV_TLS_CLIENT_OPTIONAL)
      mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
  }
  *rc = 0;
  return ctx;
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

int srv_tls_new(const srv_tls_conf_t *conf, char *err, size_t errlen, srv_tls_t **out)
{
  int rc;
  *out = NULL;
  SSL_CTX *ctx = ctx_load(conf, err, errlen, &rc);
  if (!ctx)
    return rc;
  srv_tls_t *t = pc_xcalloc(1, sizeof(*t));
  t->ctx = ctx;
  t->stats = pc_xcalloc(1, sizeof(*t->stats));
  t->stats->refs = 1;
  t->hs_timeout_ms = conf->handshake_timeout_ms ? conf->handshake_timeout_ms : 10000;
  *out = t;
  return 0;
}

int srv_tls_reload(srv_tls_t *t, const srv_tls_conf_t *conf, char *err, size_t errlen)
{
  int rc;
  SSL_CTX *ctx = ctx_load(conf, err, errlen, &rc);
  if (!ctx)
    return rc;
  SSL_CTX_free(t->ctx); /* connections hold their own reference (SSL_new) */
  t->ctx = ctx;
  t->hs_timeout_ms = conf->handshake_timeout_ms ? conf->handshake_timeout_ms : 10000;
  return 0;
}

void srv_tls_free(srv_tls_t *t)
{
  if (!t)
    return;
  SSL_CTX_free(t->ctx);
  stats_unref(t->stats);
  free(t);
}

/* ---- the transport ------------------------------------------------------------------------ */

enum tls_state { T_FIRST, T_HS, T_OPEN, T_PLAIN, T_DEAD };
enum op { OP_NONE, OP_WRITE, OP_FILE_READ, OP_FILE_WRITE };

typedef struct tls {
  srv_tr_t tr; /* first */
  srv_tr_t *in;
  SSL *ssl;
  BIO *rbio, *wbio; /* network side: we write rbio, we read wbio */
  enum tls_state state;
  int err; /* T_DEAD: the error for srv.c's read */
  uv_timer_t kick, hs_timer;
  srv_tr_alloc_cb alloc_cb;
  srv_tr_read_cb read_cb;
  srv_tr_done_cb op_cb, shutdown_cb;
  srv_tr_close_cb close_cb;
  enum op op;
  uv_buf_t *bufs; /* OP_WRITE: copy of the caller's array (the bytes stay the caller's) */
  uv_buf_t bufs1[4];
  unsigned nbufs, bi;
  size_t boff;
  char *fbuf; /* OP_FILE_*: TLS_FILE bytes */
  size_t flen, fdone;
  int ffd;
  uint64_t foff;
  ssize_t fres;
  uv_work_t work;
  char *cin;          /* TLS_IN bytes for a read from `in`: only between in_alloc and in_read */
  char *cout;         /* ciphertext towards `in` (the out BIO appends; NULL while idle) */
  size_t cout_cap;    /* its size */
  size_t cout_len;    /* bytes in it */
  size_t cout_off;    /* bytes of it written (completed) */
  size_t cout_busy;   /* bytes of it in the write in flight, from cout_off */
  char *cout_retired; /* the buffer a write in flight points into, after a growth moved cout */
  int pending;        /* handles (kick, hs_timer, in) still to be closed */
  unsigned reading : 1, in_reading : 1, out_busy : 1, work_busy : 1, closing : 1, shut_wanted : 1,
      shut_sent : 1, err_told : 1, notify_sent : 1, in_eof : 1, eof_told : 1;
  char peer[64];
  char subject[256];
  tls_stats_t *stats; /* a reference */
} tls_t;

static void count_fail(tls_t *t, enum srv_tls_fail f)
{
  t->stats->s.failed[f]++;
}

static const srv_tr_ops_t tls_ops;
static void pump(tls_t *t);
static void flush_out(tls_t *t);
static void in_alloc(srv_tr_t *in, uv_buf_t *b);
static void in_read(srv_tr_t *in, ssize_t n, const uv_buf_t *b);

static void on_kick(uv_timer_t *h)
{
  pump(h->data);
}

static void kick(tls_t *t)
{
  if (!t->closing)
    uv_timer_start(&t->kick, on_kick, 0, 0);
}

static const char plain_400[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                "Content-Length: 38\r\nConnection: close\r\n\r\n"
                                "plain HTTP request sent to HTTPS port\n";

static void die(tls_t *t, int err)
{
  if (t->state == T_DEAD)
    return;
  t->state = T_DEAD;
  t->err = err;
  uv_timer_stop(&t->hs_timer);
  kick(t);
}

/* Why a handshake failed, for the log: the verify result if it is the cause, else OpenSSL's
 * reason. */
static void hs_failed(tls_t *t, int code)
{
  char why[256];
  long v = SSL_get_verify_result(t->ssl);
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  enum srv_tls_fail f = SRV_TLS_FAIL_PROTOCOL;
  int verify_failed = e && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED;
  if (v != X509_V_OK && (SSL_get0_peer_certificate(t->ssl) || verify_failed)) {
    snprintf(why, sizeof(why), "client certificate: %s", X509_verify_cert_error_string(v));
    f = SRV_TLS_FAIL_BAD_CLIENT_CERT;
  } else if (code == SSL_ERROR_SYSCALL || code == SSL_ERROR_ZERO_RETURN) {
    snprintf(why, sizeof(why), "connection closed during the handshake");
    f = SRV_TLS_FAIL_CLOSED;
  } else {
    snprintf(why, sizeof(why), "%s", r ? r : "handshake failed");
    if (e && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
      f = SRV_TLS_FAIL_NO_CLIENT_CERT;
    else if (verify_failed) /* a server verifies only the client's certificate */
      f = SRV_TLS_FAIL_BAD_CLIENT_CERT;
  }
  count_fail(t, f);
  ERR_clear_error();
  char q[PC_LOG_QUOTE_SIZE(256)];
  pc_log_quote(q, sizeof(q), why, 256);
  pc_log(PC_LOG_NOTICE, "tls-handshake-failed peer=%s reason=%s action=closed", t->peer, q);
  die(t, UV_EPROTO);
}

static void hs_done(tls_t *t)
{
  t->state = T_OPEN;
  uv_timer_stop(&t->hs_timer);
  t->stats->s.handshakes++;
  if (SSL_session_reused(t->ssl))
    t->stats->s.resumed++;
  X509 *x = SSL_get0_peer_certificate(t->ssl); /* verified, or absent (optional mode) */
  if (x) {
    BIO *m = BIO_new(BIO_s_mem());
    if (m) {
      X509_NAME_print_ex(m, X509_get_subject_name(x), 0, XN_FLAG_RFC2253);
      int n = BIO_read(m, t->subject, (int)sizeof(t->subject) - 1);
      t->subject[n > 0 ? n : 0] = '\0';
      BIO_free(m);
    }
  }
  pc_log(PC_LOG_DEBUG, "tls-handshake-done peer=%s version=%s resumed=%d", t->peer,
         SSL_get_version(t->ssl), SSL_session_reused(t->ssl));
}

/* ---- output: SSL -> the out BIO (cout) -> in ----------------------------------------------- */

/* The write BIO: SSL's records are appended to cout, and written to `in` from there (no copy
 * through a memory BIO). Bytes of a write in flight never move: a growth while busy copies into
 * a new buffer and keeps the old one (cout_retired) until the write completes. Never fails, so
 * SSL never sees a retry on its write side. */
static size_t out_queued(const tls_t *t)
{
  return t->cout_len - t->cout_off;
}

static int out_bio_write(BIO *b, const char *data, int n)
{
  tls_t *t = BIO_get_data(b);
  size_t need = (size_t)(n > 0 ? n : 0);
  if (!need)
    return 0;
  if (t->cout_len + need > t->cout_cap && !t->out_busy && t->cout_off) {
    memmove(t->cout, t->cout + t->cout_off, out_queued(t)); /* compact */
    t->cout_len -= t->cout_off;
    t->cout_off = 0;
  }
  if (t->cout_len + need > t->cout_cap) {
    size_t cap = t->cout_cap ? t->cout_cap * 2 : TLS_OUT_CAP;
    while (cap < t->cout_len + need)
      cap *= 2;
    if (t->out_busy && !t->cout_retired) {
      char *nb = pc_xmalloc(cap);
      memcpy(nb, t->cout, t->cout_len);
      t->cout_retired = t->cout;
      t->cout = nb;
    } else {
      t->cout = pc_xrealloc(t->cout, cap); /* nothing in flight points into it */
    }
    t->cout_cap = cap;
  }
  memcpy(t->cout + t->cout_len, data, need);
  t->cout_len += need;
  return n;
}

static long out_bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
  tls_t *t = BIO_get_data(b);
  (void)num;
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_FLUSH:
    return 1;
  case BIO_CTRL_PENDING:
  case BIO_CTRL_WPENDING:
    return t ? (long)out_queued(t) : 0;
  default:
    return 0;
  }
}

static int out_bio_create(BIO *b)
{
  BIO_set_init(b, 1);
  return 1;
}

static BIO_METHOD *out_bio_method;
static pthread_once_t out_bio_once = PTHREAD_ONCE_INIT;

static void out_bio_init(void)
{
  BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pullcache-tls-out");
  PC_ASSERT(m != NULL);
  BIO_meth_set_write(m, out_bio_write);
  BIO_meth_set_ctrl(m, out_bio_ctrl);
  BIO_meth_set_create(m, out_bio_create);
  out_bio_method = m; /* process-wide, kept for the process's life */
}

static void on_out(srv_tr_t *in, ssize_t status)
{
  tls_t *t = in->data;
  t->out_busy = 0;
  if (t->closing)
    return;
  free(t->cout_retired);
  t->cout_retired = NULL;
  t->cout_off += t->cout_busy;
  t->cout_busy = 0;
  if (out_queued(t) == 0) {
    free(t->cout); /* idle connections keep no output buffer */
    t->cout = NULL;
    t->cout_cap = t->cout_len = t->cout_off = 0;
  }
  if (status < 0) {
    die(t, (int)status);
    pump(t); /* also when already T_DEAD (die does not kick then): the op waited for us */
    return;
  }
  if (t->state == T_PLAIN) {
    die(t, UV_EPROTO);
    return;
  }
  pump(t);
}

static void flush_out(tls_t *t)
{
  if (t->out_busy || t->closing || t->state == T_PLAIN)
    return;
  size_t n = out_queued(t);
  if (n == 0)
    return;
  uv_buf_t b = uv_buf_init(t->cout + t->cout_off, (unsigned)n);
  int rc = t->in->ops->write(t->in, &b, 1, on_out);
  if (rc != 0) {
    die(t, rc);
    return;
  }
  t->out_busy = 1;
  t->cout_busy = n;
}

static int out_idle(tls_t *t)
{
  return !t->out_busy && out_queued(t) == 0;
}

/* ---- the pending op ----------------------------------------------------------------------- */

static void op_complete(tls_t *t, ssize_t res)
{
  if (t->op != OP_WRITE && !t->work_busy) {
    free(t->fbuf); /* a connection between file ops holds no file buffer */
    t->fbuf = NULL;
  }
  t->op = OP_NONE;
  t->op_cb(&t->tr, res);
}

/* Feed plaintext of the pending write into SSL while wbio has room. 0, or an error. */
static int write_step(tls_t *t)
{
  while (BIO_ctrl_pending(t->wbio) < TLS_OUT) {
    const char *p;
    size_t n;
    if (t->op == OP_WRITE) {
      while (t->bi < t->nbufs && t->boff >= t->bufs[t->bi].len) {
        t->bi++;
        t->boff = 0;
      }
      if (t->bi >= t->nbufs)
        return 0;
      p = t->bufs[t->bi].base + t->boff;
      n = t->bufs[t->bi].len - t->boff;
    } else {
      if (t->fdone >= t->flen)
        return 0;
      p = t->fbuf + t->fdone;
      n = t->flen - t->fdone;
    }
    if (n > TLS_REC)
      n = TLS_REC;
    ERR_clear_error();
    int r = SSL_write(t->ssl, p, (int)n);
    if (r <= 0) {
      ERR_clear_error();
      return UV_EPROTO;
    }
    if (t->op == OP_WRITE)
      t->boff += (size_t)r;
    else
      t->fdone += (size_t)r;
  }
  return 0;
}

static int write_done(tls_t *t)
{
  if (t->op == OP_WRITE)
    return t->bi >= t->nbufs;
  return t->fdone >= t->flen;
}

static void on_in_shutdown(srv_tr_t *in, ssize_t status)
{
  tls_t *t = in->data;
  t->shut_wanted = 0;
  t->shutdown_cb(&t->tr, status);
}

/* A memory BIO keeps the largest buffer it ever held: once a large read (a big request head, a
 * body) is consumed, a fresh empty one replaces it, so an idle connection keeps none of it. */
static void release_rbio(tls_t *t)
{
  BUF_MEM *bm = NULL;
  if (BIO_ctrl_pending(t->rbio) != 0 || BIO_get_mem_ptr(t->rbio, &bm) != 1 || !bm ||
      bm->max <= TLS_RBIO_KEEP)
    return;
  BIO *nb = BIO_new(BIO_s_mem());
  if (!nb)
    return; /* keep the old one */
  BIO_set_mem_eof_return(nb, -1);
  SSL_set0_rbio(t->ssl, nb); /* frees the old one */
  t->rbio = nb;
}

/* Progress everything: handshake, reads for srv.c, the pending op, output, shutdown. */
static void pump(tls_t *t)
{
  if (t->closing)
    return;
  if (t->state == T_HS) {
    ERR_clear_error(); /* SSL_get_error reads the thread's queue: nothing stale in it */
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
      hs_done(t);
    } else {
      int code = SSL_get_error(t->ssl, r);
      if (code != SSL_ERROR_WANT_READ) {
        flush_out(t); /* the alert */
        hs_failed(t, code);
      }
    }
    flush_out(t);
  }
  if (t->state == T_DEAD) {
    if (t->op != OP_NONE && t->op != OP_FILE_READ && !t->out_busy)
      op_complete(t, t->err);
    if (t->shut_wanted && !t->shut_sent && !t->out_busy) {
      t->shut_wanted = 0;
      t->shutdown_cb(&t->tr, t->err);
    }
    if (t->closing)
      return;
    if (t->reading && !t->err_told) {
      t->err_told = 1;
      t->read_cb(&t->tr, t->err, NULL);
    }
    return;
  }
  if (t->state != T_OPEN)
    return;
  /* Plaintext for srv.c. */
  while (t->reading && !t->closing && t->state == T_OPEN && !t->eof_told) {
    uv_buf_t b = uv_buf_init(NULL, 0);
    t->alloc_cb(&t->tr, &b);
    if (b.len == 0) {
      t->read_cb(&t->tr, UV_ENOBUFS, &b);
      break;
    }
    ERR_clear_error();
    int r = SSL_read(t->ssl, b.base, (int)(b.len > INT32_MAX ? INT32_MAX : b.len));
    if (r > 0) {
      t->read_cb(&t->tr, r, &b);
      continue;
    }
    int code = SSL_get_error(t->ssl, r);
    t->read_cb(&t->tr, 0, &b); /* give the buffer back */
    if (code == SSL_ERROR_WANT_READ && !t->in_eof)
      break;
    ERR_clear_error();
    if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_ZERO_RETURN) {
      /* The peer sends no more (close_notify or TCP EOF); writing goes on. */
      t->eof_told = 1;
      if (t->reading && !t->closing)
        t->read_cb(&t->tr, UV_EOF, NULL);
      break;
    }
    die(t, UV_EPROTO);
    pump(t);
    return;
  }
  if (t->closing)
    return;
  release_rbio(t);
  /* Backpressure: rbio is bounded while srv.c does not read. */
  if (!t->reading && t->in_reading && BIO_ctrl_pending(t->rbio) >= TLS_IN_MAX) {
    t->in->ops->read_stop(t->in);
    t->in_reading = 0;
  } else if (!t->in_reading && !t->in_eof &&
             (t->reading || BIO_ctrl_pending(t->rbio) < TLS_IN_MAX)) {
    if (t->in->ops->read_start(t->in, in_alloc, in_read) == 0)
      t->in_reading = 1;
  }
  if (t->op == OP_WRITE || t->op == OP_FILE_WRITE) {
    int rc = write_step(t);
    if (rc != 0) {
      die(t, rc);
      pump(t);
      return;
    }
  }
  flush_out(t);
  if ((t->op == OP_WRITE || t->op == OP_FILE_WRITE) && write_done(t) && out_idle(t)) {
    op_complete(t, t->op == OP_WRITE ? 0 : (ssize_t)t->flen);
    if (t->closing)
      return;
  }
  if (t->shut_wanted && !t->shut_sent && t->op == OP_NONE) {
    if (!t->notify_sent) {
      t->notify_sent = 1;
      SSL_shutdown(t->ssl); /* close_notify into wbio */
      ERR_clear_error();
      flush_out(t);
    }
    if (out_idle(t)) {
      t->shut_sent = 1;
      int rc = t->in->ops->shutdown(t->in, on_in_shutdown);
      if (rc != 0) {
        t->shut_wanted = 0;
        t->shutdown_cb(&t->tr, rc);
      }
    }
  }
}

/* ---- input: in -> rbio -------------------------------------------------------------------- */

static void in_alloc(srv_tr_t *in, uv_buf_t *b)
{
  tls_t *t = in->data;
  if (!t->cin)
    t->cin = pc_xmalloc(TLS_IN); /* an idle connection keeps none (in_read frees it) */
  *b = uv_buf_init(t->cin, TLS_IN);
}

static int looks_like_http(unsigned char c)
{
  return c >= 'A' && c <= 'Z';
}

static void in_read_bytes(tls_t *t, ssize_t n, const uv_buf_t *b);

static void in_read(srv_tr_t *in, ssize_t n, const uv_buf_t *b)
{
  tls_t *t = in->data;
  in_read_bytes(t, n, b);
  /* Everything was copied into rbio (or dropped): the read buffer goes until the next read. t is
   * still allocated here (its free runs from close callbacks on a later loop turn). */
  free(t->cin);
  t->cin = NULL;
}

static void in_read_bytes(tls_t *t, ssize_t n, const uv_buf_t *b)
{
  if (n == 0 || t->closing)
    return;
  if (n == UV_EOF && t->state == T_OPEN) {
    t->in_eof = 1;
    t->in->ops->read_stop(t->in);
    t->in_reading = 0;
    pump(t);
    return;
  }
  if (n < 0) {
    if (t->state == T_HS || t->state == T_FIRST) {
      pc_log(PC_LOG_DEBUG, "tls-handshake-failed peer=%s reason=\"connection closed\"", t->peer);
      count_fail(t, SRV_TLS_FAIL_CLOSED);
    }
    die(t, (int)n);
    pump(t);
    return;
  }
  if (t->state == T_PLAIN || t->state == T_DEAD)
    return; /* discarded */
  if (t->state == T_FIRST) {
    if (looks_like_http((unsigned char)b->base[0])) {
      /* A plain HTTP client on the TLS port: a clear answer, then the connection ends. */
      pc_log(PC_LOG_NOTICE, "tls-plain-http-on-https peer=%s action=400", t->peer);
      count_fail(t, SRV_TLS_FAIL_PLAIN_HTTP);
      t->state = T_PLAIN;
      uv_timer_stop(&t->hs_timer);
      uv_buf_t ub = uv_buf_init((char *)plain_400, sizeof(plain_400) - 1);
      if (t->in->ops->write(t->in, &ub, 1, on_out) == 0)
        t->out_busy = 1;
      else
        die(t, UV_EPROTO);
      return;
    }
    t->state = T_HS;
  }
  if (BIO_write(t->rbio, b->base, (int)n) != (int)n) {
    die(t, UV_ENOMEM);
  }
  pump(t);
}

static void on_hs_timeout(uv_timer_t *h)
{
  tls_t *t = h->data;
  pc_log(PC_LOG_NOTICE, "tls-handshake-failed peer=%s reason=timeout action=closed", t->peer);
  count_fail(t, SRV_TLS_FAIL_TIMEOUT);
  die(t, UV_ETIMEDOUT);
}

/* ---- ops ---------------------------------------------------------------------------------- */

static int tls_read_start(srv_tr_t *tr, srv_tr_alloc_cb alloc, srv_tr_read_cb read)
{
  tls_t *t = (tls_t *)tr;
  t->alloc_cb = alloc;
  t->read_cb = read;
  t->reading = 1;
  kick(t); /* decrypted bytes or an error may be waiting */
  return 0;
}

static void tls_read_stop(srv_tr_t *tr)
{
  tls_t *t = (tls_t *)tr;
  t->reading = 0;
}

static int tls_write(srv_tr_t *tr, const uv_buf_t *bufs, unsigned nbufs, srv_tr_done_cb cb)
{
  tls_t *t = (tls_t *)tr;
  PC_ASSERT(t->op == OP_NONE);
  if (t->state == T_DEAD || t->state == T_PLAIN)
    return UV_EPIPE;
  t->op = OP_WRITE;
  t->op_cb = cb;
  if (t->bufs != t->bufs1)
    free(t->bufs);
  t->bufs = nbufs <= 4 ? t->bufs1 : pc_xmalloc(nbufs * sizeof(*bufs));
  memcpy(t->bufs, bufs, nbufs * sizeof(*bufs));
  t->nbufs = nbufs;
  t->bi = 0;
  t->boff = 0;
  kick(t); /* a write before the handshake ends waits for it (pump runs only in T_OPEN) */
  return 0;
}

static void pread_work(uv_work_t *w)
{
  tls_t *t = container_of(w, tls_t, work);
  ssize_t r;
  do
    r = pread(t->ffd, t->fbuf, t->flen, (off_t)t->foff);
  while (r < 0 && errno == EINTR);
  t->fres = r < 0 ? -errno : r;
}

static void tls_close_handles(tls_t *t);

static void on_pread(uv_work_t *w, int status)
{
  tls_t *t = container_of(w, tls_t, work);
  t->work_busy = 0;
  if (t->closing) {
    tls_close_handles(t);
    return;
  }
  ssize_t r = status < 0 ? status : t->fres;
  if (r <= 0) {
    op_complete(t, r); /* 0: the file ended */
    return;
  }
  t->op = OP_FILE_WRITE;
  t->flen = (size_t)r;
  t->fdone = 0;
  pump(t);
}

static int tls_send_file(srv_tr_t *tr, int fd, uint64_t off, size_t len, srv_tr_done_cb cb)
{
  tls_t *t = (tls_t *)tr;
  PC_ASSERT(t->op == OP_NONE && len > 0);
  if (t->state != T_OPEN)
    return UV_EPIPE;
  if (!t->fbuf)
    t->fbuf = pc_xmalloc(TLS_FILE);
  t->op_cb = cb;
  t->ffd = fd;
  t->foff = off;
  t->flen = len < TLS_FILE ? len : TLS_FILE;
  int rc = uv_queue_work(t->kick.loop, &t->work, pread_work, on_pread);
  if (rc != 0)
    return rc;
  t->op = OP_FILE_READ;
  t->work_busy = 1;
  return 0;
}

static size_t tls_write_queue_size(const srv_tr_t *tr)
{
  const tls_t *t = (const tls_t *)tr;
  size_t n = out_queued(t); /* in flight too */
  if (t->op == OP_FILE_WRITE)
    n += t->flen - t->fdone;
  return n + t->in->ops->write_queue_size(t->in);
}

static int tls_shutdown(srv_tr_t *tr, srv_tr_done_cb cb)
{
  tls_t *t = (tls_t *)tr;
  if (t->shut_wanted || t->shut_sent)
    return UV_EALREADY;
  t->shutdown_cb = cb;
  t->shut_wanted = 1;
  kick(t);
  return 0;
}

static void on_handle_closed(tls_t *t)
{
  if (--t->pending > 0)
    return;
  if (t->op != OP_NONE)
    op_complete(t, UV_ECANCELED);
  if (t->shut_wanted) {
    t->shut_wanted = 0;
    t->shutdown_cb(&t->tr, UV_ECANCELED);
  }
  srv_tr_close_cb cb = t->close_cb;
  if (cb)
    cb(&t->tr);
  SSL_free(t->ssl);
  stats_unref(t->stats);
  if (t->bufs != t->bufs1)
    free(t->bufs);
  free(t->fbuf);
  free(t->cout);
  free(t->cout_retired);
  free(t->cin);
  free(t);
}

static void on_timer_closed(uv_handle_t *h)
{
  on_handle_closed(h->data);
}

static void on_in_closed(srv_tr_t *in)
{
  on_handle_closed(in->data);
}

static void tls_close_handles(tls_t *t)
{
  t->pending = 3;
  uv_close((uv_handle_t *)&t->kick, on_timer_closed);
  uv_close((uv_handle_t *)&t->hs_timer, on_timer_closed);
  t->in->ops->close(t->in, on_in_closed); /* its pending write or shutdown: UV_ECANCELED */
}

static void tls_close(srv_tr_t *tr, srv_tr_close_cb cb)
{
  tls_t *t = (tls_t *)tr;
  PC_ASSERT(!t->closing);
  t->closing = 1;
  t->close_cb = cb;
  t->reading = 0;
  if (t->work_busy)
    return; /* on_pread closes */
  tls_close_handles(t);
}

static void tls_peer(srv_tr_t *tr, char *buf, size_t cap)
{
  tls_t *t = (tls_t *)tr;
  snprintf(buf, cap, "%s", t->peer);
}

static void tls_client(srv_tr_t *tr, char *buf, size_t cap)
{
  tls_t *t = (tls_t *)tr;
  snprintf(buf, cap, "%s", t->subject);
}

static const srv_tr_ops_t tls_ops = {
    .read_start = tls_read_start,
    .read_stop = tls_read_stop,
    .write = tls_write,
    .send_file = tls_send_file,
    .write_queue_size = tls_write_queue_size,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .peer = tls_peer,
    .client = tls_client,
};

int srv_tls_wrap(srv_tls_t *cfg, uv_loop_t *loop, srv_tr_t *in, srv_tr_t **out)
{
  *out = NULL;
  PC_ASSERT(pthread_once(&out_bio_once, out_bio_init) == 0);
  SSL *ssl = SSL_new(cfg->ctx);
  BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(out_bio_method);
  if (!ssl || !rb || !wb) {
    SSL_free(ssl);
    BIO_free(rb);
    BIO_free(wb);
    in->ops->close(in, NULL);
    return UV_ENOMEM;
  }
  tls_t *t = pc_xcalloc(1, sizeof(*t));
  t->tr.ops = &tls_ops;
  t->bufs = t->bufs1;
  t->in = in;
  in->data = t;
  t->ssl = ssl;
  t->rbio = rb;
  t->wbio = wb;
  BIO_set_data(wb, t);
  t->ffd = -1;
  t->stats = cfg->stats;
  t->stats->refs++;
  BIO_set_mem_eof_return(rb, -1); /* empty = want more, not EOF */
  SSL_set_bio(ssl, rb, wb);       /* ssl owns both */
  SSL_set_accept_state(ssl);
  in->ops->peer(in, t->peer, sizeof(t->peer));
  uv_timer_init(loop, &t->kick);
  uv_timer_init(loop, &t->hs_timer);
  t->kick.data = t;
  t->hs_timer.data = t;
  uv_timer_start(&t->hs_timer, on_hs_timeout, cfg->hs_timeout_ms, 0);
  int rc = in->ops->read_start(in, in_alloc, in_read);
  if (rc != 0) {
    t->closing = 1;
    tls_close_handles(t);
    return rc;
  }
  t->in_reading = 1;
  *out = &t->tr;
  return 0;
}
