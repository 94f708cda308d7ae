/* store/evict — recency through references, pins, eviction, listing (see store/evict.h).
 *
 * LMDB databases (integers little-endian):
 *   refs    key manifest digest (71 bytes)   val u8 version=1 | n x 32 bytes raw sha256
 *   pins    key upstream "\0" ref            val u8 version=1 | i64 created
 *   doomed  key blob digest (71 bytes)       val empty
 *
 * The plan (model_load) is one read transaction over blobs, manifests and refs: an array of
 * entries in the blobs database's key order (so lookups are binary searches on the raw digest),
 * and the references as edges in CSR form (parent -> children). Last use is propagated down the
 * edges to a fixed point (index -> manifest -> blobs: three rounds at most in practice, eight
 * at most here, against cycles in hostile manifests).
 */
#include "store/evict.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/pc.h"
#include "store/store-int.h"

#define REC_VERSION 1
#define DEFAULT_BATCH 256
#define PROPAGATE_ROUNDS 8
#define FLUSH_EVERY_MS 1000

enum { E_MANIFEST = 1, E_PINNED = 2, E_VICTIM = 4, E_SKIPPED = 8, E_SEEN = 16 };

typedef struct ent {
  unsigned char d[32];
  uint64_t size;
  int64_t own; /**< the record's last access */
  int64_t eff; /**< last use through the references */
  uint32_t flags;
  uint32_t nparents;
} ent_t;

typedef struct model {
  ent_t *e;
  size_t n;
  uint32_t *off;   /**< n + 1 offsets into child */
  uint32_t *child; /**< child entry indexes */
  uint64_t total;  /**< blob bytes per the totals record */
} model_t;

const char *store_evict_reason_name(int reason)
{
  static const char *const names[] = {"budget", "min_free", "manual"};
  return reason >= 0 && reason < STORE_EVICT_NREASONS ? names[reason] : "unknown";
}

/* ---- digests ---------------------------------------------------------------------------- */

static int hexval(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1;
}

/* "sha256:<64 hex>" (at least 71 bytes at p) -> 32 bytes; 0 or -1. */
static int digest_bin(const char *p, unsigned char out[32])
{
  if (memcmp(p, "sha256:", 7) != 0)
    return -1;
  for (int i = 0; i < 32; i++) {
    int hi = hexval(p[7 + 2 * i]), lo = hexval(p[8 + 2 * i]);
    if (hi < 0 || lo < 0)
      return -1;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return 0;
}

static void digest_str(const unsigned char d[32], char out[72])
{
  static const char hex[] = "0123456789abcdef";
  memcpy(out, "sha256:", 7);
  for (int i = 0; i < 32; i++) {
    out[7 + 2 * i] = hex[d[i] >> 4];
    out[8 + 2 * i] = hex[d[i] & 15];
  }
  out[71] = '\0';
}

static uint64_t get_u64(const unsigned char *p)
{
  uint64_t v = 0;
  for (int i = 0; i < 8; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

/* ---- refs ------------------------------------------------------------------------------- */

static void refs_add(json_t *desc, unsigned char **buf, size_t *n, size_t *cap)
{
  json_t *d = json_is_object(desc) ? json_object_get(desc, "digest") : NULL;
  const char *s = json_string_value(d);
  if (!s || !store__is_sha256(s))
    return;
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 16;
    *buf = pc_xrealloc(*buf, 1 + *cap * 32);
  }
  digest_bin(s, *buf + 1 + *n * 32);
  (*n)++;
}

int store__refs_put(store_t *s, store__wtxn_t *w, const char *digest, const void *bytes, size_t len)
{
  static const char *const lists[] = {"layers", "manifests", "blobs"};
  json_error_t err;
  json_t *root = json_loadb(bytes, len, JSON_REJECT_DUPLICATES, &err);
  unsigned char *buf = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  if (!json_is_object(root))
    goto out;
  refs_add(json_object_get(root, "config"), &buf, &n, &cap);
  for (size_t l = 0; l < PC_ARRAY_SIZE(lists); l++) {
    json_t *a = json_object_get(root, lists[l]);
    size_t i;
    json_t *x;
    if (json_is_array(a))
      json_array_foreach(a, i, x) refs_add(x, &buf, &n, &cap);
  }
  if (n == 0)
    goto out;
  buf[0] = REC_VERSION;
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v = {1 + n * 32, buf};
  rc = store__mdb_err(mdb_put(w->txn, s->refs, &k, &v, 0), "put");
out:
  json_decref(root);
  free(buf);
  return rc;
}

/* ---- doomed ------------------------------------------------------------------------------ */

int store__is_doomed(store_t *s, MDB_txn *txn, const char *digest)
{
  MDB_val k = {STORE__SHA256_LEN, (void *)digest}, v;
  return mdb_get(txn, s->doomed, &k, &v) == 0;
}

int store__doomed_sweep(store_t *s)
{
  store__wtxn_t w;
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  char digest[72], path[PATH_MAX];
  unsigned unlinked = 0, kept = 0;
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  MDB_stat st;
  rc = store__mdb_err(mdb_stat(w.txn, s->doomed, &st), "stat");
  if (rc || st.ms_entries == 0) {
    store__wtxn_abort(&w);
    return rc;
  }
  rc = store__mdb_err(mdb_cursor_open(w.txn, s->doomed, &cur), "cursor_open");
  if (rc)
    goto fail;
  int mrc;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != STORE__SHA256_LEN)
      continue;
    memcpy(digest, k.mv_data, STORE__SHA256_LEN);
    digest[STORE__SHA256_LEN] = '\0';
    MDB_val bk = {STORE__SHA256_LEN, digest}, bv;
    if (mdb_get(w.txn, s->blobs, &bk, &bv) == 0) {
      kept++; /* committed again after the eviction: the file is the new copy */
      continue;
    }
    if (store_blob_path(s, digest, path, sizeof(path)) == 0 && unlink(path) == 0)
      unlinked++;
  }
  mdb_cursor_close(cur);
  cur = NULL;
  if (mrc != MDB_NOTFOUND) {
    rc = store__mdb_err(mrc, "cursor_get");
    goto fail;
  }
  rc = store__mdb_err(mdb_drop(w.txn, s->doomed, 0), "drop");
  if (rc)
    goto fail;
  rc = store__wtxn_commit(s, &w);
  pc_log(PC_LOG_NOTICE, "store-doomed-swept entries=%zu unlinked=%u kept=%u", st.ms_entries,
         unlinked, kept);
  return rc;
fail:
  if (cur)
    mdb_cursor_close(cur);
  store__wtxn_abort(&w);
  return rc;
}

/* ---- the model ---------------------------------------------------------------------------- */

static void model_free(model_t *m)
{
  free(m->e);
  free(m->off);
  free(m->child);
  memset(m, 0, sizeof(*m));
}

static int ent_cmp_key(const void *key, const void *elem)
{
  return memcmp(key, ((const ent_t *)elem)->d, 32);
}

static ent_t *model_find(const model_t *m, const unsigned char d[32])
{
  return m->n ? bsearch(d, m->e, m->n, sizeof(ent_t), ent_cmp_key) : NULL;
}

static ent_t *model_find_str(const model_t *m, const char *digest)
{
  unsigned char d[32];
  if (!store__is_sha256(digest) || digest_bin(digest, d) != 0)
    return NULL;
  return model_find(m, d);
}

/* Read the blobs, manifests and refs in one snapshot. */
static int model_load(store_t *s, model_t *m)
{
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  MDB_stat st;
  MDB_val k, v;
  size_t cap = 0, nedges = 0, ecap = 0;
  uint32_t *epar = NULL, *echi = NULL;
  store__totals_t tot;
  int mrc, rc;
  memset(m, 0, sizeof(*m));
  rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = store__totals_read(s, txn, &tot);
  m->total = rc == 0 ? tot.blob_bytes : 0;
  rc = store__mdb_err(mdb_stat(txn, s->blobs, &st), "stat");
  if (rc)
    goto out;
  cap = st.ms_entries + 1;
  m->e = pc_xmalloc(cap * sizeof(ent_t));
  rc = store__mdb_err(mdb_cursor_open(txn, s->blobs, &cur), "cursor_open");
  if (rc)
    goto out;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0 && m->n < cap;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    store__blob_rec_t r;
    ent_t *e = &m->e[m->n];
    if (k.mv_size != STORE__SHA256_LEN || digest_bin(k.mv_data, e->d) != 0 ||
        store__blob_rec_decode(&v, &r) != 0)
      continue;
    e->size = r.size;
    e->own = e->eff = r.last_access;
    e->flags = 0;
    e->nparents = 0;
    m->n++;
  }
  mdb_cursor_close(cur);
  cur = NULL;
  if (mrc != 0 && mrc != MDB_NOTFOUND) {
    rc = store__mdb_err(mrc, "cursor_get");
    goto out;
  }
  rc = store__mdb_err(mdb_cursor_open(txn, s->manifests, &cur), "cursor_open");
  if (rc)
    goto out;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    unsigned char d[32];
    ent_t *e;
    if (k.mv_size == STORE__SHA256_LEN && digest_bin(k.mv_data, d) == 0 &&
        (e = model_find(m, d)) != NULL)
      e->flags |= E_MANIFEST;
  }
  mdb_cursor_close(cur);
  cur = NULL;
  rc = store__mdb_err(mdb_cursor_open(txn, s->refs, &cur), "cursor_open");
  if (rc)
    goto out;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    unsigned char d[32];
    ent_t *p;
    const unsigned char *val = v.mv_data;
    if (k.mv_size != STORE__SHA256_LEN || digest_bin(k.mv_data, d) != 0 ||
        (p = model_find(m, d)) == NULL || v.mv_size < 1 || val[0] != REC_VERSION ||
        (v.mv_size - 1) % 32 != 0)
      continue;
    for (size_t i = 0; i < (v.mv_size - 1) / 32; i++) {
      ent_t *c = model_find(m, val + 1 + 32 * i);
      if (!c || c == p)
        continue;
      if (nedges == ecap) {
        ecap = ecap ? ecap * 2 : 1024;
        epar = pc_xrealloc(epar, ecap * sizeof(*epar));
        echi = pc_xrealloc(echi, ecap * sizeof(*echi));
      }
      epar[nedges] = (uint32_t)(p - m->e);
      echi[nedges] = (uint32_t)(c - m->e);
      nedges++;
      c->nparents++;
    }
  }
  mdb_cursor_close(cur);
  cur = NULL;
  /* CSR: the refs were read in parent order, so the edges already are. */
  m->off = pc_xcalloc(m->n + 1, sizeof(uint32_t));
  m->child = pc_xmalloc((nedges ? nedges : 1) * sizeof(uint32_t));
  for (size_t i = 0; i < nedges; i++)
    m->off[epar[i] + 1]++;
  for (size_t i = 0; i < m->n; i++)
    m->off[i + 1] += m->off[i];
  if (nedges)
    memcpy(m->child, echi, nedges * sizeof(uint32_t));
  /* Last use flows from parents to children. */
  for (int round = 0; round < PROPAGATE_ROUNDS; round++) {
    int changed = 0;
    for (size_t i = 0; i < nedges; i++) {
      ent_t *p = &m->e[epar[i]], *c = &m->e[echi[i]];
      if (p->eff > c->eff) {
        c->eff = p->eff;
        changed = 1;
      }
    }
    if (!changed)
      break;
  }
  rc = 0;
out:
  if (cur)
    mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  free(epar);
  free(echi);
  if (rc)
    model_free(m);
  return rc;
}

/* Set `flag` on everything reachable from e (itself included); returns the bytes newly
 * flagged. Iterative (a stack), so a deep or cyclic graph cannot overflow anything. */
static uint64_t model_mark(model_t *m, ent_t *root, uint32_t flag, uint32_t **vis, size_t *nvis)
{
  uint64_t bytes = 0;
  size_t sp = 0, cap = 64;
  uint32_t *stack = pc_xmalloc(cap * sizeof(*stack));
  if (!(root->flags & flag)) {
    root->flags |= flag;
    bytes += root->size;
    stack[sp++] = (uint32_t)(root - m->e);
  }
  while (sp) {
    uint32_t i = stack[--sp];
    if (vis) {
      *vis = pc_xrealloc(*vis, (*nvis + 1) * sizeof(**vis));
      (*vis)[(*nvis)++] = i;
    }
    for (uint32_t j = m->off[i]; j < m->off[i + 1]; j++) {
      ent_t *c = &m->e[m->child[j]];
      if (c->flags & flag)
        continue;
      c->flags |= flag;
      bytes += c->size;
      if (sp == cap) {
        cap *= 2;
        stack = pc_xrealloc(stack, cap * sizeof(*stack));
      }
      stack[sp++] = m->child[j];
    }
  }
  free(stack);
  return bytes;
}

/* ---- pins ------------------------------------------------------------------------------- */

static int is_alnum_lower(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* The OCI repository grammar: components [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/'. */
static int repo_valid(const char *s, size_t n)
{
  size_t i = 0;
  if (n == 0 || n > 255)
    return 0;
  for (;;) {
    if (i >= n || !is_alnum_lower(s[i]))
      return 0;
    while (i < n && is_alnum_lower(s[i]))
      i++;
    if (i == n)
      return 1;
    if (s[i] == '/') {
      i++;
      continue;
    }
    if (s[i] == '.' || (s[i] == '_' && (i + 1 >= n || s[i + 1] != '_')))
      i++;
    else if (s[i] == '_')
      i += 2;
    else if (s[i] == '-')
      while (i < n && s[i] == '-')
        i++;
    else
      return 0;
  }
}

/* [A-Za-z0-9_][A-Za-z0-9_.-]{0,127} */
static int tag_valid(const char *s, size_t n)
{
  if (n == 0 || n > 128)
    return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || (i > 0 && (c == '.' || c == '-'));
    if (!ok)
      return 0;
  }
  return 1;
}

int store_ref_parse(const char *ref, store_ref_t *out)
{
  memset(out, 0, sizeof(*out));
  if (!ref)
    return -EINVAL;
  size_t n = strnlen(ref, 512);
  if (n >= 512)
    return -EINVAL;
  const char *at = memchr(ref, '@', n);
  if (at) {
    size_t rl = (size_t)(at - ref);
    if (!repo_valid(ref, rl) || !store__is_sha256(at + 1))
      return -EINVAL;
    memcpy(out->repo, ref, rl);
    memcpy(out->digest, at + 1, STORE__SHA256_LEN + 1);
    return 0;
  }
  const char *colon = strrchr(ref, ':');
  if (!colon)
    return -EINVAL;
  size_t rl = (size_t)(colon - ref), tl = n - rl - 1;
  if (!repo_valid(ref, rl) || !tag_valid(colon + 1, tl))
    return -EINVAL;
  memcpy(out->repo, ref, rl);
  memcpy(out->tag, colon + 1, tl);
  return 0;
}

static int pin_key(store_t *s, const char *upstream, const char *ref, unsigned char *buf,
                   size_t buflen)
{
  store_ref_t r;
  if (!upstream || !*upstream || store_ref_parse(ref, &r) != 0)
    return -EINVAL;
  size_t ul = strlen(upstream), rl = strlen(ref);
  if (ul + 1 + rl > buflen || ul + 1 + rl > (size_t)mdb_env_get_maxkeysize(s->env))
    return -ENAMETOOLONG;
  memcpy(buf, upstream, ul + 1);
  memcpy(buf + ul + 1, ref, rl);
  return (int)(ul + 1 + rl);
}

int store_pin_add(store_t *s, const char *upstream, const char *ref)
{
  unsigned char key[1024], val[9];
  store__wtxn_t w;
  int kl = pin_key(s, upstream, ref, key, sizeof(key));
  if (kl < 0)
    return kl;
  val[0] = REC_VERSION;
  put_u64(val + 1, (uint64_t)pc_now_sec());
  MDB_val k = {(size_t)kl, key}, v = {sizeof(val), val};
  /* Under evict_mu: never between an eviction batch's pin check and its commit. */
  pthread_mutex_lock(&s->evict_mu);
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    goto out;
  int mrc = mdb_put(w.txn, s->pins, &k, &v, MDB_NOOVERWRITE);
  if (mrc == MDB_KEYEXIST) {
    store__wtxn_abort(&w); /* pinned already: keep its creation time */
    goto out;
  }
  rc = store__mdb_err(mrc, "put");
  if (rc) {
    store__wtxn_abort(&w);
    goto out;
  }
  rc = store__wtxn_commit(s, &w);
  if (rc == 0)
    atomic_fetch_add(&s->pins_gen, 1);
out:
  pthread_mutex_unlock(&s->evict_mu);
  return rc;
}

int store_pin_del(store_t *s, const char *upstream, const char *ref)
{
  unsigned char key[1024];
  store__wtxn_t w;
  int kl = pin_key(s, upstream, ref, key, sizeof(key));
  if (kl < 0)
    return kl;
  MDB_val k = {(size_t)kl, key};
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_del(w.txn, s->pins, &k, NULL), "del");
  if (rc) {
    store__wtxn_abort(&w);
    return rc;
  }
  return store__wtxn_commit(s, &w);
}

typedef struct pin_ent {
  char upstream[256];
  char ref[512];
  int64_t created;
} pin_ent_t;

/* Copy every pin out (pins are few). *out is the caller's (free). */
static int pins_read(store_t *s, MDB_txn *txn, pin_ent_t **out, size_t *n)
{
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  size_t cap = 0;
  *out = NULL;
  *n = 0;
  int rc = store__mdb_err(mdb_cursor_open(txn, s->pins, &cur), "cursor_open");
  if (rc)
    return rc;
  int mrc;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    const char *kp = k.mv_data;
    const char *z = memchr(kp, '\0', k.mv_size);
    if (!z)
      continue;
    size_t ul = (size_t)(z - kp), rl = k.mv_size - ul - 1;
    if (ul >= sizeof((*out)->upstream) || rl >= sizeof((*out)->ref))
      continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      *out = pc_xrealloc(*out, cap * sizeof(**out));
    }
    pin_ent_t *p = &(*out)[*n];
    memcpy(p->upstream, kp, ul);
    p->upstream[ul] = '\0';
    memcpy(p->ref, z + 1, rl);
    p->ref[rl] = '\0';
    p->created = v.mv_size == 9 ? (int64_t)get_u64((const unsigned char *)v.mv_data + 1) : 0;
    (*n)++;
  }
  mdb_cursor_close(cur);
  if (mrc != MDB_NOTFOUND) {
    free(*out);
    *out = NULL;
    *n = 0;
    return store__mdb_err(mrc, "cursor_get");
  }
  return 0;
}

int store_pin_list(store_t *s, store_pin_cb cb, void *arg)
{
  MDB_txn *txn = NULL;
  pin_ent_t *p = NULL;
  size_t n = 0;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = pins_read(s, txn, &p, &n);
  mdb_txn_abort(txn);
  for (size_t i = 0; rc == 0 && i < n; i++)
    rc = cb(arg, p[i].upstream, p[i].ref, p[i].created);
  free(p);
  return rc;
}

/* The manifest digest a pin names now ("" when its tag is unknown). */
static void pin_resolve(store_t *s, MDB_txn *txn, const pin_ent_t *p, char out[72])
{
  store_ref_t r;
  out[0] = '\0';
  if (store_ref_parse(p->ref, &r) != 0)
    return;
  if (r.digest[0]) {
    memcpy(out, r.digest, sizeof(r.digest));
    return;
  }
  unsigned char key[1024];
  size_t ul = strlen(p->upstream), rl = strlen(r.repo), tl = strlen(r.tag);
  if (ul + rl + tl + 2 > sizeof(key))
    return;
  memcpy(key, p->upstream, ul + 1);
  memcpy(key + ul + 1, r.repo, rl + 1);
  memcpy(key + ul + rl + 2, r.tag, tl);
  MDB_val k = {ul + rl + tl + 2, key}, v;
  if (mdb_get(txn, s->tags, &k, &v) != 0)
    return;
  /* tag record: u8 version | u64 size | i64 fetched | i64 checked | u8 dlen | digest | ... */
  const unsigned char *q = v.mv_data;
  if (v.mv_size < 27 || q[0] != REC_VERSION || q[25] != STORE__SHA256_LEN ||
      v.mv_size < 26 + (size_t)STORE__SHA256_LEN)
    return;
  memcpy(out, q + 26, STORE__SHA256_LEN);
  out[STORE__SHA256_LEN] = '\0';
  if (!store__is_sha256(out))
    out[0] = '\0';
}

/* Flag everything reachable from the pins; returns the pinned bytes. */
static int model_pin(store_t *s, model_t *m, uint64_t *bytes)
{
  MDB_txn *txn = NULL;
  pin_ent_t *p = NULL;
  size_t n = 0;
  *bytes = 0;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = pins_read(s, txn, &p, &n);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    char d[72];
    pin_resolve(s, txn, &p[i], d);
    ent_t *e = d[0] ? model_find_str(m, d) : NULL;
    if (e)
      *bytes += model_mark(m, e, E_PINNED, NULL, NULL);
  }
  mdb_txn_abort(txn);
  free(p);
  return rc;
}

int store_pinned_bytes(store_t *s, uint64_t *bytes)
{
  MDB_txn *txn = NULL;
  pin_ent_t *p = NULL;
  size_t n = 0, sp = 0, scap = 0, nseen = 0, seencap = 0;
  char(*stack)[72] = NULL;
  char(*seen)[72] = NULL;
  uint64_t total = 0;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = pins_read(s, txn, &p, &n);
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (sp == scap) {
      scap = scap ? scap * 2 : 64;
      stack = pc_xrealloc(stack, scap * sizeof(*stack));
    }
    pin_resolve(s, txn, &p[i], stack[sp]);
    if (stack[sp][0])
      sp++;
  }
  while (rc == 0 && sp) {
    char d[72];
    memcpy(d, stack[--sp], sizeof(d));
    int dup = 0;
    for (size_t j = 0; j < nseen && !dup; j++)
      dup = memcmp(seen[j], d, STORE__SHA256_LEN) == 0;
    if (dup)
      continue;
    if (nseen == seencap) {
      seencap = seencap ? seencap * 2 : 64;
      seen = pc_xrealloc(seen, seencap * sizeof(*seen));
    }
    memcpy(seen[nseen++], d, sizeof(d));
    MDB_val k = {STORE__SHA256_LEN, d}, v;
    store__blob_rec_t r;
    if (mdb_get(txn, s->blobs, &k, &v) != 0 || store__blob_rec_decode(&v, &r) != 0)
      continue;
    total += r.size;
    if (mdb_get(txn, s->refs, &k, &v) != 0 || v.mv_size < 1 || (v.mv_size - 1) % 32)
      continue;
    for (size_t j = 0; j < (v.mv_size - 1) / 32; j++) {
      if (sp == scap) {
        scap = scap ? scap * 2 : 64;
        stack = pc_xrealloc(stack, scap * sizeof(*stack));
      }
      digest_str((const unsigned char *)v.mv_data + 1 + 32 * j, stack[sp++]);
    }
  }
  mdb_txn_abort(txn);
  free(p);
  free(stack);
  free(seen);
  if (rc == 0)
    *bytes = total;
  return rc;
}

/* ---- tags ---------------------------------------------------------------------------------- */

typedef struct tag_ent {
  unsigned char *key;
  size_t klen;
  char digest[72];
  char media_type[128];
  int64_t fetched_at;
  uint32_t ent; /**< model index of its manifest, UINT32_MAX when not present */
  uint32_t pos; /**< eviction order of that manifest (store_evict) */
} tag_ent_t;

static void tags_free(tag_ent_t *t, size_t n)
{
  for (size_t i = 0; i < n; i++)
    free(t[i].key);
  free(t);
}

/* Copy the tags out; when only_victims, just those whose manifest is a victim. */
static int tags_read(store_t *s, const model_t *m, int only_victims, tag_ent_t **out, size_t *n)
{
  MDB_txn *txn = NULL;
  MDB_cursor *cur = NULL;
  MDB_val k, v;
  size_t cap = 0;
  *out = NULL;
  *n = 0;
  int rc = store__mdb_err(mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn), "txn_begin");
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_cursor_open(txn, s->tags, &cur), "cursor_open");
  if (rc)
    goto out;
  int mrc;
  for (mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); mrc == 0;
       mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    const unsigned char *q = v.mv_data;
    if (v.mv_size < 27 || q[0] != REC_VERSION || q[25] >= STORE_DIGEST_MAX ||
        v.mv_size < 27 + (size_t)q[25])
      continue;
    size_t dl = q[25], ml = q[26 + dl];
    if (dl >= 72 || ml > STORE__MT_MAX || v.mv_size != 27 + dl + ml)
      continue;
    char d[72];
    memcpy(d, q + 26, dl);
    d[dl] = '\0';
    ent_t *e = model_find_str(m, d);
    if (only_victims && (!e || !(e->flags & E_VICTIM)))
      continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 64;
      *out = pc_xrealloc(*out, cap * sizeof(**out));
    }
    tag_ent_t *t = &(*out)[(*n)++];
    t->key = pc_xmalloc(k.mv_size + 1);
    memcpy(t->key, k.mv_data, k.mv_size);
    t->key[k.mv_size] = '\0';
    t->klen = k.mv_size;
    memcpy(t->digest, d, dl + 1);
    memcpy(t->media_type, q + 27 + dl, ml);
    t->media_type[ml] = '\0';
    t->fetched_at = (int64_t)get_u64(q + 9);
    t->ent = e ? (uint32_t)(e - m->e) : UINT32_MAX;
    t->pos = 0;
  }
  if (mrc != MDB_NOTFOUND)
    rc = store__mdb_err(mrc, "cursor_get");
out:
  if (cur)
    mdb_cursor_close(cur);
  mdb_txn_abort(txn);
  if (rc) {
    tags_free(*out, *n);
    *out = NULL;
    *n = 0;
  }
  return rc;
}

/* ---- eviction ----------------------------------------------------------------------------- */

static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one store_evict at a time */
static const model_t *sort_model; /* qsort has no argument; guarded by sort_mu */
static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER;

/* Oldest last use first; on a tie a manifest before what it references, then by digest. */
static int victim_cmp(const void *a, const void *b)
{
  const ent_t *x = &sort_model->e[*(const uint32_t *)a], *y = &sort_model->e[*(const uint32_t *)b];
  if (x->eff != y->eff)
    return x->eff < y->eff ? -1 : 1;
  int xm = (x->flags & E_MANIFEST) != 0, ym = (y->flags & E_MANIFEST) != 0;
  if (xm != ym)
    return ym - xm;
  return memcmp(x->d, y->d, 32);
}

static int tag_pos_cmp(const void *a, const void *b)
{
  const tag_ent_t *x = a, *y = b;
  return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* Delete the doomed entries of the last batch (their files are unlinked). */
static int doomed_clear(store_t *s, store__wtxn_t *w, const model_t *m, const uint32_t *v, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    char d[72];
    digest_str(m->e[v[i]].d, d);
    MDB_val k = {STORE__SHA256_LEN, d};
    int rc = mdb_del(w->txn, s->doomed, &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
      return store__mdb_err(rc, "del");
  }
  return 0;
}

/* Remove one victim's records inside w: 1 removed, 0 kept (gone or used since), <0 error. */
static int evict_one(store_t *s, store__wtxn_t *w, ent_t *e, const char *d)
{
  MDB_val k = {STORE__SHA256_LEN, (void *)d}, v;
  store__blob_rec_t r;
  int grc = mdb_get(w->txn, s->blobs, &k, &v);
  if (grc == MDB_NOTFOUND)
    return 0;
  if (grc)
    return store__mdb_err(grc, "get");
  if (store__blob_rec_decode(&v, &r) != 0 || r.last_access > e->own)
    return 0;
  int rc = store__wtxn_del(s, w, s->blobs, &k);
  if (rc == 0)
    rc = store__wtxn_del(s, w, s->manifests, &k);
  if (rc == PC_E_NOTFOUND)
    rc = 0;
  if (rc == 0) {
    int drc = mdb_del(w->txn, s->refs, &k, NULL);
    if (drc && drc != MDB_NOTFOUND)
      rc = store__mdb_err(drc, "del");
  }
  MDB_val empty = {0, NULL};
  if (rc == 0)
    rc = store__mdb_err(mdb_put(w->txn, s->doomed, &k, &empty, 0), "put");
  return rc ? rc : 1;
}

/* Delete the tags of the removed manifests of this batch that still name them. */
static uint64_t evict_tags(store_t *s, store__wtxn_t *w, const model_t *m, tag_ent_t *t, size_t nt,
                           size_t *ti, uint32_t pos_end, int *err)
{
  uint64_t n = 0;
  while (*ti < nt && t[*ti].pos < pos_end) {
    tag_ent_t *x = &t[(*ti)++];
    if (x->ent == UINT32_MAX || (m->e[x->ent].flags & E_SKIPPED))
      continue;
    MDB_val k = {x->klen, x->key}, v;
    if (mdb_get(w->txn, s->tags, &k, &v) != 0)
      continue;
    const unsigned char *q = v.mv_data;
    if (v.mv_size < 27 + STORE__SHA256_LEN || q[25] != STORE__SHA256_LEN ||
        memcmp(q + 26, x->digest, STORE__SHA256_LEN) != 0)
      continue; /* re-pointed since */
    int rc = mdb_del(w->txn, s->tags, &k, NULL);
    if (rc) {
      *err = store__mdb_err(rc, "del");
      return n;
    }
    n++;
  }
  return n;
}

int store_evict(store_t *s, const store_evict_opts_t *o, store_evict_report_t *rep)
{
  store_evict_report_t tmp;
  model_t m;
  uint32_t *vict = NULL;
  tag_ent_t *tags = NULL;
  size_t nv = 0, ntags = 0;
  uint64_t t0 = pc_mono_ms();
  unsigned batch = o->batch ? o->batch : DEFAULT_BATCH;
  if (!rep)
    rep = &tmp;
  memset(rep, 0, sizeof(*rep));
  memset(&m, 0, sizeof(m));
  /* One run at a time (a manual gc and the daemon's own): the second waits. */
  pthread_mutex_lock(&run_mu);
  int rc = o->dry_run ? 0 : store_flush_atimes(s);
  if (rc == 0)
    rc = model_load(s, &m);
  if (rc)
    goto out;
  rep->records = m.n;
  rep->before = rep->after = m.total;
  uint_fast64_t pins_seen = atomic_load(&s->pins_gen);
  rc = model_pin(s, &m, &rep->pinned_bytes);
  if (rc)
    goto out;
  rep->pins_over = rep->pinned_bytes > o->target;

  /* The candidates, oldest first, and how many of them bring the bytes to the target. */
  vict = pc_xmalloc((m.n ? m.n : 1) * sizeof(*vict));
  for (size_t i = 0; i < m.n; i++)
    if (!(m.e[i].flags & E_PINNED))
      vict[nv++] = (uint32_t)i;
  pthread_mutex_lock(&sort_mu);
  sort_model = &m;
  if (nv)
    qsort(vict, nv, sizeof(*vict), victim_cmp);
  sort_model = NULL;
  pthread_mutex_unlock(&sort_mu);
  uint64_t planned = 0;
  size_t take = 0;
  while (take < nv && m.total > o->target && m.total - planned > o->target)
    planned += m.e[vict[take++]].size;
  for (size_t i = 0; i < take; i++)
    m.e[vict[i]].flags |= E_VICTIM;
  rep->oldest = 0;
  for (size_t i = 0; i < m.n; i++)
    if (!(m.e[i].flags & E_VICTIM) && (rep->oldest == 0 || m.e[i].eff < rep->oldest))
      rep->oldest = m.e[i].eff;
  rep->plan_ms = pc_mono_ms() - t0;

  if (o->dry_run) {
    for (size_t i = 0; i < take; i++) {
      ent_t *e = &m.e[vict[i]];
      store_evict_item_t it;
      digest_str(e->d, it.digest);
      it.size = e->size;
      it.last_use = e->eff;
      it.manifest = (e->flags & E_MANIFEST) != 0;
      rep->blobs++;
      rep->manifests += (uint64_t)it.manifest;
      rep->bytes += e->size;
      if (o->cb)
        o->cb(o->arg, &it);
    }
    rep->after = m.total - rep->bytes;
    goto out;
  }
  if (take == 0)
    goto out;
  for (size_t i = 0; i < take; i++)
    m.e[vict[i]].nparents = (uint32_t)i; /* reused: the position in the order */
  rc = tags_read(s, &m, 1, &tags, &ntags);
  if (rc)
    goto out;
  for (size_t i = 0; i < ntags; i++)
    tags[i].pos = tags[i].ent == UINT32_MAX ? 0 : m.e[tags[i].ent].nparents;
  if (ntags)
    qsort(tags, ntags, sizeof(*tags), tag_pos_cmp);

  size_t ti = 0, prev = 0, prev_n = 0;
  uint64_t last_flush = pc_mono_ms(); /* flushed just before the plan */
  int done = 0;
  for (size_t b = 0; b < take && !done; b += batch) {
    size_t end = b + batch < take ? b + batch : take;
    store__wtxn_t w;
    store_evict_item_t *items = pc_xmalloc((end - b) * sizeof(*items));
    size_t nitems = 0;
    /* So a hit since the plan shows in the records; at most once a second (a flush under a
     * heavy hit load writes up to 4096 scattered records: per batch it would dominate). */
    if (pc_mono_ms() - last_flush >= FLUSH_EVERY_MS) {
      rc = store_flush_atimes(s);
      last_flush = pc_mono_ms();
    }
    if (rc) {
      free(items);
      goto out;
    }
    pthread_mutex_lock(&s->evict_mu);
    if (atomic_load(&s->pins_gen) != pins_seen) {
      /* A pin was added since the plan: flag what it reaches before this batch. */
      pins_seen = atomic_load(&s->pins_gen);
      for (size_t i = 0; i < m.n; i++)
        m.e[i].flags &= ~(uint32_t)E_PINNED;
      rc = model_pin(s, &m, &rep->pinned_bytes);
      rep->pins_over = rep->pinned_bytes > o->target;
    }
    if (rc == 0)
      rc = store__wtxn_begin(s, &w);
    if (rc) {
      pthread_mutex_unlock(&s->evict_mu);
      free(items);
      goto out;
    }
    rc = doomed_clear(s, &w, &m, vict + prev, prev_n);
    for (size_t i = b; rc == 0 && i < end; i++) {
      if (w.tot.blob_bytes <= o->target) {
        done = 1;
        break;
      }
      ent_t *e = &m.e[vict[i]];
      char d[72];
      digest_str(e->d, d);
      int r1 = (e->flags & (E_PINNED | E_SKIPPED)) ? 0 : evict_one(s, &w, e, d);
      if (r1 < 0) {
        rc = r1;
        break;
      }
      if (r1 == 0) {
        /* Kept: so is what it references (a manifest pulled since the plan keeps its layers,
         * which come after it in the order, their last use being at least its own). */
        if ((e->flags & E_MANIFEST) && !(e->flags & E_SKIPPED))
          model_mark(&m, e, E_SKIPPED, NULL, NULL);
        e->flags |= E_SKIPPED;
        rep->skipped++;
        continue;
      }
      store_evict_item_t *it = &items[nitems++];
      memcpy(it->digest, d, sizeof(d));
      it->size = e->size;
      it->last_use = e->eff;
      it->manifest = (e->flags & E_MANIFEST) != 0;
    }
    uint64_t ntag = 0;
    if (rc == 0)
      ntag = evict_tags(s, &w, &m, tags, ntags, &ti, (uint32_t)end, &rc);
    if (rc) {
      store__wtxn_abort(&w);
      pthread_mutex_unlock(&s->evict_mu);
      free(items);
      goto out;
    }
    rep->after = w.tot.blob_bytes;
    rc = store__wtxn_commit(s, &w);
    if (rc) {
      pthread_mutex_unlock(&s->evict_mu);
      free(items);
      goto out;
    }
    /* Committed: the records are gone and the digests doomed; now the files. */
    for (size_t i = 0; i < nitems; i++) {
      char path[PATH_MAX];
      if (store_blob_path(s, items[i].digest, path, sizeof(path)) == 0)
        unlink(path);
    }
    pthread_mutex_unlock(&s->evict_mu);
    rep->tags += ntag;
    for (size_t i = 0; i < nitems; i++) {
      rep->blobs++;
      rep->manifests += (uint64_t)items[i].manifest;
      rep->bytes += items[i].size;
      if (o->cb)
        o->cb(o->arg, &items[i]);
    }
    free(items);
    prev = b;
    prev_n = end - b;
  }
  if (prev_n) {
    store__wtxn_t w;
    rc = store__wtxn_begin(s, &w);
    if (rc == 0)
      rc = doomed_clear(s, &w, &m, vict + prev, prev_n);
    if (rc == 0)
      rc = store__wtxn_commit(s, &w);
    else
      store__wtxn_abort(&w);
  }
out:
  pthread_mutex_unlock(&run_mu);
  tags_free(tags, ntags);
  free(vict);
  model_free(&m);
  rep->ms = pc_mono_ms() - t0;
  return rc;
}

/* ---- listing ------------------------------------------------------------------------------ */

int store_images(store_t *s, store_image_cb cb, void *arg)
{
  model_t m;
  tag_ent_t *tags = NULL;
  size_t ntags = 0;
  uint64_t pinned;
  int rc = store_flush_atimes(s);
  if (rc)
    return rc;
  rc = model_load(s, &m);
  if (rc)
    return rc;
  rc = model_pin(s, &m, &pinned);
  if (rc == 0)
    rc = tags_read(s, &m, 0, &tags, &ntags);
  for (size_t i = 0; rc == 0 && i < ntags; i++) {
    tag_ent_t *t = &tags[i];
    store_image_t img;
    memset(&img, 0, sizeof(img));
    img.upstream = (const char *)t->key;
    img.repo = img.upstream + strlen(img.upstream) + 1;
    img.tag = img.repo + strlen(img.repo) + 1;
    memcpy(img.digest, t->digest, sizeof(img.digest));
    memcpy(img.media_type, t->media_type, sizeof(img.media_type));
    img.fetched_at = t->fetched_at;
    if (t->ent != UINT32_MAX) {
      ent_t *e = &m.e[t->ent];
      img.last_use = e->eff;
      img.pinned = (e->flags & E_PINNED) != 0;
      uint32_t *vis = NULL;
      size_t nvis = 0;
      img.bytes = model_mark(&m, e, E_SEEN, &vis, &nvis);
      for (size_t j = 0; j < nvis; j++) {
        ent_t *x = &m.e[vis[j]];
        x->flags &= ~(uint32_t)E_SEEN;
        if (x->nparents > 1)
          img.shared += x->size;
      }
      free(vis);
    }
    rc = cb(arg, &img);
  }
  tags_free(tags, ntags);
  model_free(&m);
  return rc;
}
