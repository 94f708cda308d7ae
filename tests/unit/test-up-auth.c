/* test-up-auth — the parts of http/up's token flow that need no network: the WWW-Authenticate
 * parser, the token URL, the token response, the cache keys, the token cache and the scope
 * hints (http/up-int.h). */
#include <curl/curl.h>

#include "http/up-int.h"
#include "tests/unit/unit.h"

TEST(challenge_basic_fields)
{
  up__challenge_t c;
  ASSERT_OK(up__challenge_parse("Bearer realm=\"https://auth.example/token\",service=\"registry."
                                "example\",scope=\"repository:samalba/my-app:pull,push\"",
                                &c));
  ASSERT_STREQ("https://auth.example/token", c.realm);
  ASSERT_STREQ("registry.example", c.service);
  ASSERT_STREQ("repository:samalba/my-app:pull,push", c.scope);
  ASSERT(c.error == NULL);
  up__challenge_free(&c);
}

TEST(challenge_quoting_and_case)
{
  up__challenge_t c;
  /* Commas and spaces inside quotes, escapes, odd spacing, case-insensitive names, and an
   * unquoted value. */
  ASSERT_OK(up__challenge_parse("  bearer   Realm = \"https://a.example/t?x=1,2\" ,  "
                                "SERVICE=svc.example , scope=\"repository:a/b:pull "
                                "repository:c/d:pull,push\", error=\"insufficient_scope\", "
                                "error_description=\"say \\\"hi\\\", then go\"",
                                &c));
  ASSERT_STREQ("https://a.example/t?x=1,2", c.realm);
  ASSERT_STREQ("svc.example", c.service);
  ASSERT_STREQ("repository:a/b:pull repository:c/d:pull,push", c.scope);
  ASSERT_STREQ("insufficient_scope", c.error);
  up__challenge_free(&c);
}

TEST(challenge_among_others)
{
  up__challenge_t c;
  ASSERT_OK(up__challenge_parse("Basic realm=\"basic, realm\", Negotiate abc==, Bearer "
                                "realm=\"https://r/token\",scope=\"s1\",scope=\"s2\", Basic "
                                "realm=\"later\"",
                                &c));
  ASSERT_STREQ("https://r/token", c.realm);
  ASSERT_STREQ("s1 s2", c.scope); /* repeated scope params add up */
  ASSERT(c.service == NULL);
  up__challenge_free(&c);

  /* Realm only (Artifact Registry's /v2/ challenge). */
  ASSERT_OK(up__challenge_parse("Bearer realm=\"https://us-docker.pkg.dev/v2/token\"", &c));
  ASSERT_STREQ("https://us-docker.pkg.dev/v2/token", c.realm);
  ASSERT(c.scope == NULL && c.service == NULL);
  up__challenge_free(&c);

  ASSERT_EQ(PC_E_NOTFOUND, up__challenge_parse("Basic realm=\"Bearer realm=x\"", &c));
  ASSERT(c.realm == NULL);
  ASSERT_EQ(PC_E_NOTFOUND, up__challenge_parse("", &c));
  ASSERT_EQ(PC_E_NOTFOUND, up__challenge_parse("\"unterminated , = ,,", &c));
  /* Bearer with no params is found, without a realm (so up cannot use it). */
  ASSERT_OK(up__challenge_parse("Bearer", &c));
  ASSERT(c.realm == NULL);
  up__challenge_free(&c);
  ASSERT_OK(up__challenge_parse("Bearer realm=\"unterminated", &c));
  ASSERT_STREQ("unterminated", c.realm);
  up__challenge_free(&c);
}

TEST(token_url)
{
  char *u;
  ASSERT_OK(curl_global_init(CURL_GLOBAL_DEFAULT));
  u = up__token_url("https://auth.example/token", "registry.example",
                    "repository:a/b:pull  repository:c:pull,push");
  ASSERT_STREQ("https://auth.example/token?service=registry.example&scope=repository%3Aa%2Fb%"
               "3Apull&scope=repository%3Ac%3Apull%2Cpush",
               u);
  free(u);
  u = up__token_url("https://auth.example/token?x=1", NULL, "s p");
  ASSERT_STREQ("https://auth.example/token?x=1&scope=s&scope=p", u);
  free(u);
  u = up__token_url("http://127.0.0.1:5000/t", "a b&c", NULL);
  ASSERT_STREQ("http://127.0.0.1:5000/t?service=a%20b%26c", u);
  free(u);
  ASSERT(up__token_url("ftp://x/token", NULL, NULL) == NULL);
  ASSERT(up__token_url("/relative", NULL, NULL) == NULL);
  curl_global_cleanup();
}

TEST(token_response)
{
  char *t;
  uint64_t ttl;
  const char *j;

  j = "{\"token\":\"abc\",\"expires_in\":300}";
  ASSERT_OK(up__token_parse(j, strlen(j), 1700000000, &t, &ttl));
  ASSERT_STREQ("abc", t);
  ASSERT(ttl > 290000 && ttl <= 300000);
  free(t);
  /* access_token, default expiry 60 s. */
  j = "{\"token\":\"\",\"access_token\":\"xyz\"}";
  ASSERT_OK(up__token_parse(j, strlen(j), 1700000000, &t, &ttl));
  ASSERT_STREQ("xyz", t);
  ASSERT(ttl > 50000 && ttl <= 60000);
  free(t);
  /* issued_at 100 s ago: 200 s left. */
  j = "{\"token\":\"a\",\"expires_in\":300,\"issued_at\":\"2023-11-14T22:11:40Z\"}";
  ASSERT_OK(up__token_parse(j, strlen(j), 1700000000, &t, &ttl));
  ASSERT(ttl > 190000 && ttl <= 200000);
  free(t);
  /* Already expired by the issue time: usable once, not cached. */
  j = "{\"token\":\"a\",\"expires_in\":60,\"issued_at\":\"2020-01-01T00:00:00Z\"}";
  ASSERT_OK(up__token_parse(j, strlen(j), 1700000000, &t, &ttl));
  ASSERT_EQ(0, ttl);
  free(t);
  j = "{\"nothing\":1}";
  ASSERT_EQ(PC_E_UPSTREAM, up__token_parse(j, strlen(j), 0, &t, &ttl));
  ASSERT(t == NULL);
  j = "not json";
  ASSERT_EQ(PC_E_UPSTREAM, up__token_parse(j, strlen(j), 0, &t, &ttl));
  j = "{\"token\":\"a\\r\\nX-Evil: 1\"}";
  ASSERT_EQ(PC_E_UPSTREAM, up__token_parse(j, strlen(j), 0, &t, &ttl));
  j = "[\"token\"]";
  ASSERT_EQ(PC_E_UPSTREAM, up__token_parse(j, strlen(j), 0, &t, &ttl));
}

TEST(cache_keys)
{
  char k[UP__HOSTKEY_MAX];
  ASSERT_OK(up__host_key("https://Registry.K8s.io/v2/pause/manifests/3.9", k, sizeof(k)));
  ASSERT_STREQ("https://registry.k8s.io:443", k);
  ASSERT_OK(up__host_key("http://127.0.0.1:5001/x", k, sizeof(k)));
  ASSERT_STREQ("http://127.0.0.1:5001", k);
  ASSERT_OK(up__host_key("http://[::1]/x", k, sizeof(k)));
  ASSERT_STREQ("http://[::1]:80", k);
  ASSERT_EQ(PC_E_UPSTREAM, up__host_key("file:///etc/passwd", k, sizeof(k)));
  ASSERT_EQ(PC_E_UPSTREAM, up__host_key("no url", k, sizeof(k)));
  ASSERT_EQ(PC_E_UPSTREAM, up__host_key("http://a.example/", k, 10));

  ASSERT_OK(up__repo_path("https://r.example/v2/lib/app/manifests/v1?ns=x", k, sizeof(k)));
  ASSERT_STREQ("/v2/lib/app/", k);
  ASSERT_OK(up__repo_path("https://r.example/v2/a/blobs/sha256:00", k, sizeof(k)));
  ASSERT_STREQ("/v2/a/", k);
  ASSERT_OK(up__repo_path("https://r.example/v2/a/tags/list", k, sizeof(k)));
  ASSERT_STREQ("/v2/a/", k);
  ASSERT_EQ(PC_E_NOTFOUND, up__repo_path("https://r.example/v2/", k, sizeof(k)));
  ASSERT_EQ(PC_E_NOTFOUND, up__repo_path("https://r.example/v2/a/b", k, sizeof(k)));
  ASSERT_EQ(PC_E_NOTFOUND, up__repo_path("https://r.example/blob/5", k, sizeof(k)));
}

TEST(challenge_has_scheme)
{
  ASSERT_EQ(1, up__challenge_has("Basic realm=\"fixture\"", "Basic"));
  ASSERT_EQ(1, up__challenge_has("basic", "Basic"));
  ASSERT_EQ(1, up__challenge_has("Negotiate abc==, BASIC realm=\"x, y\"", "Basic"));
  ASSERT_EQ(1, up__challenge_has("Bearer realm=\"https://r/t\", Basic realm=\"r\"", "Basic"));
  ASSERT_EQ(1, up__challenge_has("Bearer realm=\"https://r/t\", Basic realm=\"r\"", "Bearer"));
  /* In parameter values or as a prefix of another scheme it does not count. */
  ASSERT_EQ(0, up__challenge_has("Bearer realm=\"Basic\",service=Basic", "Basic"));
  ASSERT_EQ(0, up__challenge_has("Basically realm=x", "Basic"));
  ASSERT_EQ(0, up__challenge_has("", "Basic"));
  ASSERT_EQ(0, up__challenge_has("Bearer realm=\"x\"", "Basic"));
}

/* ---------------------------------------------------------------------------------------- */
/* The token cache and the hints (a real up_t: they live in it; nothing goes on the wire)     */

static up_t *cache_new(uv_loop_t *loop)
{
  up_t *u;
  ASSERT_OK(uv_loop_init(loop));
  ASSERT_OK(up_new(loop, NULL, &u));
  return u;
}

static void on_closed(void *arg)
{
  *(int *)arg = 1;
}

static void cache_close(uv_loop_t *loop, up_t *u)
{
  int closed = 0;
  up_close(u, on_closed, &closed);
  uv_run(loop, UV_RUN_DEFAULT);
  ASSERT(closed);
  ASSERT_EQ(0, uv_loop_close(loop));
}

TEST(token_cache_keys_and_bounds)
{
  uv_loop_t loop;
  up_t *u = cache_new(&loop);
  unsigned char anon[UP__CRED_LEN] = {0}, alice[UP__CRED_LEN] = {1};
  const char *h = "https://r.example:443";
  char scope[64], want[64];

  /* One entry per (host, scope, credentials); storing the same key replaces it. */
  up__token_store(u, h, "s", anon, "t-anon", 60000);
  up__token_store(u, h, "s", alice, "t-alice", 60000);
  ASSERT_STREQ("t-anon", up__token_get(u, h, "s", anon));
  ASSERT_STREQ("t-alice", up__token_get(u, h, "s", alice));
  ASSERT(up__token_get(u, h, "other", anon) == NULL);
  ASSERT(up__token_get(u, "https://x.example:443", "s", anon) == NULL);
  up__token_store(u, h, "s", anon, "t-anon-2", 60000);
  ASSERT_STREQ("t-anon-2", up__token_get(u, h, "s", anon));
  ASSERT_EQ(2, u->ntokens);
  ASSERT_EQ(2, pc_list_count(&u->tokens));
  /* A token that may not be cached (ttl 0) drops the one it replaces. */
  up__token_store(u, h, "s", alice, "t-alice-2", 0);
  ASSERT(up__token_get(u, h, "s", alice) == NULL);
  ASSERT_EQ(1, u->ntokens);

  /* At most UP__CACHE_MAX: the oldest go first. */
  for (int i = 0; i < UP__CACHE_MAX + 10; i++) {
    snprintf(scope, sizeof(scope), "scope-%d", i);
    snprintf(want, sizeof(want), "tok-%d", i);
    up__token_store(u, h, scope, anon, want, 60000);
  }
  ASSERT_EQ(UP__CACHE_MAX, u->ntokens);
  ASSERT_EQ(UP__CACHE_MAX, pc_list_count(&u->tokens));
  ASSERT(up__token_get(u, h, "s", anon) == NULL);
  ASSERT(up__token_get(u, h, "scope-9", anon) == NULL);
  ASSERT_STREQ("tok-10", up__token_get(u, h, "scope-10", anon));
  snprintf(scope, sizeof(scope), "scope-%d", UP__CACHE_MAX + 9);
  snprintf(want, sizeof(want), "tok-%d", UP__CACHE_MAX + 9);
  ASSERT_STREQ(want, up__token_get(u, h, scope, anon));
  cache_close(&loop, u); /* frees the cache (LSan checks) */
}

TEST(hint_cache_keys_and_bounds)
{
  uv_loop_t loop;
  up_t *u = cache_new(&loop);
  const char *h = "https://r.example:443";
  char url[128], path[64];

  up__hint_store(u, h, "https://r.example/v2/lib/app/manifests/v1", "repository:lib/app:pull");
  ASSERT_STREQ("repository:lib/app:pull", up__hint_find(u, h, "/v2/lib/app/"));
  ASSERT(up__hint_find(u, "https://x.example:443", "/v2/lib/app/") == NULL);
  /* The same repository path (here through a blob URL) replaces the note. */
  up__hint_store(u, h, "https://r.example/v2/lib/app/blobs/sha256:00", "s2");
  ASSERT_STREQ("s2", up__hint_find(u, h, "/v2/lib/app/"));
  ASSERT_EQ(1, u->nhints);
  /* A URL with no repository path notes nothing. */
  up__hint_store(u, h, "https://r.example/token", "s3");
  ASSERT_EQ(1, u->nhints);

  for (int i = 0; i < UP__CACHE_MAX + 5; i++) {
    snprintf(url, sizeof(url), "https://r.example/v2/r%d/manifests/latest", i);
    up__hint_store(u, h, url, "s");
  }
  ASSERT_EQ(UP__CACHE_MAX, u->nhints);
  ASSERT_EQ(UP__CACHE_MAX, pc_list_count(&u->hints));
  ASSERT(up__hint_find(u, h, "/v2/lib/app/") == NULL);
  ASSERT(up__hint_find(u, h, "/v2/r4/") == NULL);
  snprintf(path, sizeof(path), "/v2/r%d/", 5);
  ASSERT_STREQ("s", up__hint_find(u, h, path));
  cache_close(&loop, u);
}
