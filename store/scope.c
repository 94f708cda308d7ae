/* store/scope — where content was seen: (upstream, repository, digest) records in the "seen"
 * database, the ground for repository scoping (see store.h, "where content was seen").
 *
 * Key: upstream NUL repository NUL digest; value: the first-seen time (8 bytes, big endian).
 * The key "\0legacy" marks a store that held content before these records existed (opened by
 * a pullcache that did not write them): see store_seen_legacy. */
#include <errno.h>
#include <string.h>

#include "core/pc.h"
#include "store/store-int.h"
#include "store/store.h"

static const char LEGACY_KEY[] = "\0legacy";

static int seen_key(store_t *s, const char *up, const char *repo, const char *digest,
                    unsigned char *buf, size_t buflen)
{
  if (!up || !repo || !digest || !*up || !*repo || !*digest)
    return -EINVAL;
  size_t ul = strlen(up), rl = strlen(repo), dl = strlen(digest);
  size_t n = ul + 1 + rl + 1 + dl;
  if (n > buflen || n > (size_t)mdb_env_get_maxkeysize(s->env))
    return -ENAMETOOLONG;
  memcpy(buf, up, ul + 1);
  memcpy(buf + ul + 1, repo, rl + 1);
  memcpy(buf + ul + 1 + rl + 1, digest, dl);
  return (int)n;
}

int store__seen_open(store_t *s, MDB_txn *txn)
{
  int rc = mdb_dbi_open(txn, "seen", 0, &s->seen);
  if (rc == 0) {
    MDB_val k = {sizeof(LEGACY_KEY) - 1, (void *)LEGACY_KEY}, v;
    s->seen_legacy = mdb_get(txn, s->seen, &k, &v) == 0;
    return 0;
  }
  if (rc != MDB_NOTFOUND || s->read_only)
    return store__mdb_err(rc, "dbi_open");
  rc = store__mdb_err(mdb_dbi_open(txn, "seen", MDB_CREATE, &s->seen), "dbi_open");
  if (rc)
    return rc;
  /* A store with content and no records of where it was seen: written before scoping. */
  MDB_stat st;
  rc = store__mdb_err(mdb_stat(txn, s->blobs, &st), "stat");
  if (rc)
    return rc;
  if (st.ms_entries > 0) {
    MDB_val k = {sizeof(LEGACY_KEY) - 1, (void *)LEGACY_KEY}, v = {0, (void *)""};
    rc = store__mdb_err(mdb_put(txn, s->seen, &k, &v, 0), "put");
    if (rc)
      return rc;
    s->seen_legacy = 1;
    pc_log(PC_LOG_NOTICE,
           "store-seen-legacy blobs=%zu (content from before repository scoping: "
           "served offline under any repository, confirmed upstream online)",
           st.ms_entries);
  }
  return 0;
}

int store__seen_put_txn(store_t *s, store__wtxn_t *w, const char *upstream, const char *repo,
                        const char *digest, int64_t now)
{
  unsigned char key[1024], val[8];
  int kl = seen_key(s, upstream, repo, digest, key, sizeof(key));
  if (kl < 0)
    return kl;
  MDB_val k = {(size_t)kl, key}, v = {sizeof(val), val}, old;
  if (mdb_get(w->txn, s->seen, &k, &old) == 0)
    return 0; /* the first sight is kept */
  for (int i = 0; i < 8; i++)
    val[i] = (unsigned char)((uint64_t)now >> (56 - 8 * i));
  return store__mdb_err(mdb_put(w->txn, s->seen, &k, &v, 0), "put");
}

int store_seen_put(store_t *s, const char *upstream, const char *repo, const char *digest,
                   int64_t now)
{
  unsigned char key[1024], val[8];
  int kl = seen_key(s, upstream, repo, digest, key, sizeof(key));
  if (kl < 0)
    return kl;
  if (store_seen_has(s, upstream, repo, digest) == 0)
    return 0; /* the first sight is kept; no write transaction (and fsync) for nothing */
  for (int i = 0; i < 8; i++)
    val[i] = (unsigned char)((uint64_t)now >> (56 - 8 * i));
  MDB_val k = {(size_t)kl, key}, v = {sizeof(val), val};
  store__wtxn_t w;
  int rc = store__wtxn_begin(s, &w);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_put(w.txn, s->seen, &k, &v, 0), "put");
  if (rc == 0)
    rc = store__wtxn_commit(s, &w);
  else
    store__wtxn_abort(&w);
  return rc;
}

int store_seen_put_many(store_t *s, const char *upstream, const char *repo,
                        const char *const *digests, size_t n, int64_t now)
{
  unsigned char key[1024], val[8];
  store__wtxn_t w;
  int open = 0, rc = 0;
  for (int i = 0; i < 8; i++)
    val[i] = (unsigned char)((uint64_t)now >> (56 - 8 * i));
  for (size_t i = 0; i < n && rc == 0; i++) {
    int kl = seen_key(s, upstream, repo, digests[i], key, sizeof(key));
    if (kl < 0) {
      rc = kl;
      break;
    }
    MDB_val k = {(size_t)kl, key}, v = {sizeof(val), val}, old;
    if (open ? mdb_get(w.txn, s->seen, &k, &old) == 0
             : store_seen_has(s, upstream, repo, digests[i]) == 0)
      continue; /* the first sight is kept */
    if (!open) {
      rc = store__wtxn_begin(s, &w);
      if (rc)
        return rc;
      open = 1;
    }
    rc = store__mdb_err(mdb_put(w.txn, s->seen, &k, &v, 0), "put");
  }
  if (!open)
    return rc;
  if (rc == 0)
    return store__wtxn_commit(s, &w);
  store__wtxn_abort(&w);
  return rc;
}

int store_seen_has(store_t *s, const char *upstream, const char *repo, const char *digest)
{
  unsigned char key[1024];
  MDB_txn *txn = NULL;
  int kl = seen_key(s, upstream, repo, digest, key, sizeof(key));
  if (kl < 0)
    return kl;
  MDB_val k = {(size_t)kl, key}, v;
  int rc = store__rtxn_begin(s, &txn);
  if (rc)
    return rc;
  rc = store__mdb_err(mdb_get(txn, s->seen, &k, &v), "get");
  store__rtxn_end(s, txn);
  return rc;
}

int store_seen_legacy(const store_t *s)
{
  return s->seen_legacy;
}
