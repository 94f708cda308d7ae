/* http/up-int.h — internals of http/up.c shared with its unit tests (not an API).
 *
 * Pure helpers for the Bearer token flow: the WWW-Authenticate parser, the token URL builder,
 * the token-response parser and the keys the token cache uses. None of them touches the loop.
 */
#ifndef UP_INT_H
#define UP_INT_H

#include <stddef.h>
#include <stdint.h>

/** Longest host key ("http://host:port"), NUL included. */
#define UP__HOSTKEY_MAX 320

/** The parameters of one Bearer challenge. Every string is malloc'd or NULL. */
typedef struct up__challenge {
  char *realm;   /**< token endpoint URL */
  char *service; /**< service parameter, or NULL */
  char *scope;   /**< space-separated scopes (repeated scope params are joined), or NULL */
  char *error;   /**< error parameter (e.g. "invalid_token"), or NULL */
} up__challenge_t;

/** Parse the first Bearer challenge in a WWW-Authenticate value, which may hold several
 * challenges ("Basic realm=\"x\", Bearer realm=\"y\",scope=\"a b\""). Quoted values may hold
 * commas, spaces and backslash escapes; parameter names are case-insensitive; unknown
 * parameters are ignored. Returns 0 when a Bearer challenge was found (its realm may still be
 * NULL), PC_E_NOTFOUND otherwise (out is then all NULL). Free with up__challenge_free. */
int up__challenge_parse(const char *value, up__challenge_t *out);
void up__challenge_free(up__challenge_t *c);

/** 1 when a WWW-Authenticate value holds a challenge of the auth-scheme scheme
 * (case-insensitive; "Basic"), else 0. Parameter values never count ("Bearer realm=\"Basic\""
 * has no Basic challenge). */
int up__challenge_has(const char *value, const char *scheme);

/** "<realm>?service=<service>&scope=<s1>&scope=<s2>" with every value URL-encoded, one scope
 * parameter per space-separated scope, '&' instead of '?' when realm has a query already.
 * service and scope may be NULL. Returns a malloc'd string (free()), or NULL when realm is not
 * an absolute http(s) URL. */
char *up__token_url(const char *realm, const char *service, const char *scope);

/** Parse a token endpoint's JSON body: "token" or "access_token" (the first non-empty one),
 * "expires_in" seconds (default 60 when absent or not positive) and the optional "issued_at"
 * (RFC 3339 UTC; when it lies in the past the age is deducted). now_sec is the wall clock.
 * On success *token gets a malloc'd string and *ttl_ms the time it may be cached (expiry minus
 * a small skew; may be 0). Returns 0, or PC_E_UPSTREAM for bad JSON, no token, or a token
 * that could not be sent in a header (control characters, longer than 16 KiB). */
int up__token_parse(const char *buf, size_t len, int64_t now_sec, char **token, uint64_t *ttl_ms);

/** The key of an URL's server: "scheme://host:port" (lower-case, default port filled in).
 * Returns 0, or PC_E_UPSTREAM when url is not an absolute http(s) URL or the key is too long. */
int up__host_key(const char *url, char *out, size_t n);

/** The repository part of a registry URL's path: "/v2/<name>/" for /v2/<name>/manifests/<ref>,
 * /v2/<name>/blobs/<digest>, /v2/<name>/tags/list (the path less its last two segments).
 * Returns 0, or PC_E_NOTFOUND when the path is not of that shape. */
int up__repo_path(const char *url, char *out, size_t n);

#endif
