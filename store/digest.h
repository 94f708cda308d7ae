/* store/digest — content digests: validation by the OCI grammar and streaming sha256.
 *
 * A digest string is "algorithm:encoded". sha256 needs 64 lowercase hex, sha512 128; any other
 * algorithm that is grammatical (image-spec descriptor.md) is accepted as STORE_DIGEST_OTHER so
 * it can be passed through, but the store only keeps sha256 content.
 */
#ifndef STORE_DIGEST_H
#define STORE_DIGEST_H

#include <stddef.h>
#include <stdint.h>

/** Room for the longest digest we keep as a string ("sha512:" + 128 hex + NUL). */
#define STORE_DIGEST_MAX 136

typedef enum { STORE_DIGEST_SHA256 = 1, STORE_DIGEST_SHA512, STORE_DIGEST_OTHER } store_digest_alg;

/** Validate s[0..len). Returns the algorithm (> 0), or PC_E_DIGEST_INVALID. A grammatical digest
 * with an unknown algorithm returns STORE_DIGEST_OTHER; "sha256:" with anything but 64
 * lowercase hex is invalid. len must be < STORE_DIGEST_MAX for sha256/sha512. */
int store_digest_parse(const char *s, size_t len);

/** Incremental sha256 (OpenSSL EVP). Embed it; init/update/final; free with dispose. */
typedef struct store_hash {
  void *ctx; /**< EVP_MD_CTX*, owned */
} store_hash_t;

/** Make the sha256 implementation ready (OpenSSL fetches it from its default provider once per
 * process: about 1 ms the first time). store_open calls it, so no request pays it; any thread,
 * any number of times. */
void store_hash_prepare(void);
void store_hash_init(store_hash_t *h);
void store_hash_update(store_hash_t *h, const void *data, size_t len);
/** Writes "sha256:<64 hex>" + NUL into out (>= 72 bytes). The hash can't be updated after. */
void store_hash_final(store_hash_t *h, char out[72]);
void store_hash_dispose(store_hash_t *h);
/** One-shot: the sha256 digest string of a buffer. */
void store_digest_of(const void *data, size_t len, char out[72]);

#endif
