/* store/digest — digest grammar and streaming sha256 (OpenSSL EVP). */
#include "store/digest.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "core/pc.h"

static int is_lower_alnum(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int is_lower_hex(char c)
{
  return (c >= 'a' && c <= 'f') || (c >= '0' && c <= '9');
}

static int is_encoded_char(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '=' ||
         c == '_' || c == '-';
}

/* algorithm: [a-z0-9]+([+._-][a-z0-9]+)*   encoded: [a-zA-Z0-9=_-]+ */
int store_digest_parse(const char *s, size_t len)
{
  if (len == 71 && memcmp(s, "sha256:", 7) == 0) {
    /* The common case (every request names one), by table: "sha256:" and 64 lower-case hex
     * digits; anything else there falls to the general grammar, which gives the same answer. */
    /* 8 digits at a time, lane-wise without borrows: a lane of (x | H) - c has its top bit
     * set when the byte is >= c, a lane of (c + 0x80) - x when it is <= c (bytes < 0x80). */
    const uint64_t ones = 0x0101010101010101ull, H = 0x8080808080808080ull;
    uint64_t bad = 0;
    for (size_t i = 7; i < 71; i += 8) {
      uint64_t x;
      memcpy(&x, s + i, 8);
      uint64_t digit = ((x | H) - ones * 0x30) & ((ones * 0xb9) - x) & H;
      uint64_t alpha = ((x | H) - ones * 0x61) & ((ones * 0xe6) - x) & H;
      bad |= (x & H) | ((digit | alpha) ^ H);
    }
    if (!bad)
      return STORE_DIGEST_SHA256;
  }
  const char *colon = memchr(s, ':', len);
  if (!colon || colon == s || (size_t)(colon - s) + 1 >= len)
    return PC_E_DIGEST_INVALID;
  size_t alen = (size_t)(colon - s);
  int prev_sep = 1;
  for (size_t i = 0; i < alen; i++) {
    char c = s[i];
    if (is_lower_alnum(c)) {
      prev_sep = 0;
    } else if (c == '+' || c == '.' || c == '_' || c == '-') {
      if (prev_sep)
        return PC_E_DIGEST_INVALID;
      prev_sep = 1;
    } else {
      return PC_E_DIGEST_INVALID;
    }
  }
  if (prev_sep)
    return PC_E_DIGEST_INVALID;
  const char *enc = colon + 1;
  size_t elen = len - alen - 1;
  for (size_t i = 0; i < elen; i++)
    if (!is_encoded_char(enc[i]))
      return PC_E_DIGEST_INVALID;

  size_t want = 0;
  int alg = STORE_DIGEST_OTHER;
  if (alen == 6 && memcmp(s, "sha256", 6) == 0)
    want = 64, alg = STORE_DIGEST_SHA256;
  else if (alen == 6 && memcmp(s, "sha512", 6) == 0)
    want = 128, alg = STORE_DIGEST_SHA512;
  if (want) {
    if (elen != want)
      return PC_E_DIGEST_INVALID;
    for (size_t i = 0; i < elen; i++)
      if (!is_lower_hex(enc[i]))
        return PC_E_DIGEST_INVALID;
  } else if (len >= STORE_DIGEST_MAX) {
    return PC_E_DIGEST_INVALID;
  }
  return alg;
}

/* Fetched once (an implicit fetch by EVP_sha256() on every init costs a lookup each time, and the
 * first one sets up the provider). Never freed: it lives as long as the process. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void store_hash_prepare(void)
{
  pthread_once(&sha256_once, sha256_fetch);
}

void store_hash_init(store_hash_t *h)
{
  store_hash_prepare();
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx || EVP_DigestInit_ex(ctx, sha256_md ? sha256_md : EVP_sha256(), NULL) != 1)
    pc_fatal("EVP sha256 init failed");
  h->ctx = ctx;
}

void store_hash_update(store_hash_t *h, const void *data, size_t len)
{
  if (len && EVP_DigestUpdate(h->ctx, data, len) != 1)
    pc_fatal("EVP sha256 update failed");
}

void store_hash_final(store_hash_t *h, char out[72])
{
  static const char hex[] = "0123456789abcdef";
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(h->ctx, md, &n) != 1 || n != 32)
    pc_fatal("EVP sha256 final failed");
  memcpy(out, "sha256:", 7);
  for (unsigned i = 0; i < n; i++) {
    out[7 + 2 * i] = hex[md[i] >> 4];
    out[7 + 2 * i + 1] = hex[md[i] & 15];
  }
  out[71] = '\0';
}

void store_hash_dispose(store_hash_t *h)
{
  if (h->ctx)
    EVP_MD_CTX_free(h->ctx);
  h->ctx = NULL;
}

void store_digest_of(const void *data, size_t len, char out[72])
{
  store_hash_t h;
  store_hash_init(&h);
  store_hash_update(&h, data, len);
  store_hash_final(&h, out);
  store_hash_dispose(&h);
}
