/* daemon/access: the credential files and the verdict on an Authorization header. */
#include <stdio.h>
#include <string.h>

#include "daemon/access.h"
#include "daemon/config.h"
#include "unit.h"

/* htpasswd -nbB -C 5 alice s3cret-alice */
#define ALICE "alice:$2y$05$zFVNeINrkUw4Zg1yM2aNjenzPxas9aRzepiueLXdLj/naCNNR.9.W\n"
#define TOKEN "tok-0123456789abcdef"

static daemon_access_t *load(const char *token, const char *htpasswd, char *err, size_t errlen)
{
  daemon_config_t c;
  daemon_access_t *a = NULL;
  config_defaults(&c);
  if (token)
    snprintf(c.auth_token_file, sizeof(c.auth_token_file), "%s", unit_write_file("token", token));
  if (htpasswd)
    snprintf(c.htpasswd, sizeof(c.htpasswd), "%s", unit_write_file("htpasswd", htpasswd));
  err[0] = '\0';
  if (access_creds_load(&c, err, errlen, &a) != 0)
    return NULL;
  return a;
}

static enum access_verdict judge(daemon_access_t *a, const char *authz, char *user)
{
  char pass[256];
  const char *hash;
  return access_judge(a, authz, user, 128, pass, sizeof(pass), &hash);
}

TEST(credential_files_load_or_say_why)
{
  char err[512];
  daemon_access_t *a = load(NULL, NULL, err, sizeof(err));
  ASSERT(a != NULL);
  ASSERT_EQ(0, access_creds_active(a)); /* nothing configured: nothing asked */
  access_creds_free(a);

  a = load(TOKEN "\n", ALICE, err, sizeof(err));
  ASSERT(a != NULL);
  ASSERT_EQ(1, access_creds_active(a));
  access_creds_free(a);

  ASSERT(load("short\n", NULL, err, sizeof(err)) == NULL);
  ASSERT(strstr(err, "token:") || strstr(err, "the token"));
  ASSERT(load("has a space in it ok\n", NULL, err, sizeof(err)) == NULL);
  ASSERT(load(NULL, "bob:$apr1$abc$def\n", err, sizeof(err)) == NULL);
  ASSERT(strstr(err, ":1: user bob: not a bcrypt hash") != NULL);
  ASSERT(load(NULL, "# comment\n\nnocolon\n", err, sizeof(err)) == NULL);
  ASSERT(strstr(err, ":3: not USER:HASH") != NULL);
  ASSERT(load(NULL, ALICE ALICE, err, sizeof(err)) == NULL);
  ASSERT(strstr(err, "listed twice") != NULL);
  ASSERT(load(NULL, "# only a comment\n", err, sizeof(err)) == NULL);
  ASSERT(strstr(err, "no USER:HASH line") != NULL);
}

TEST(authorization_verdicts)
{
  char err[512], user[128];
  daemon_access_t *a = load(TOKEN "\r\n", ALICE, err, sizeof(err));
  ASSERT(a != NULL);
  ASSERT_EQ(ACCESS_NONE, judge(a, NULL, user));
  ASSERT_EQ(ACCESS_TOKEN, judge(a, "Bearer " TOKEN, user));
  ASSERT_EQ(ACCESS_TOKEN, judge(a, "bearer  " TOKEN " ", user));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Bearer " TOKEN "x", user));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Bearer ", user));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Digest x", user));
  ASSERT_EQ(ACCESS_BAD, judge(a, TOKEN, user));
  /* Basic anyone:TOKEN (an auth file holding the token as its password) */
  ASSERT_EQ(ACCESS_TOKEN, judge(a, "Basic YW55b25lOnRvay0wMTIzNDU2Nzg5YWJjZGVm", user));
  /* Basic alice:s3cret-alice and alice:wrong: both need the bcrypt check */
  char pass[256];
  const char *hash;
  ASSERT_EQ(ACCESS_BCRYPT, access_judge(a, "Basic YWxpY2U6czNjcmV0LWFsaWNl", user, sizeof(user),
                                        pass, sizeof(pass), &hash));
  ASSERT_STREQ("alice", user);
  ASSERT_STREQ("s3cret-alice", pass);
  ASSERT_EQ(1, access_bcrypt_ok(pass, hash));
  ASSERT_EQ(ACCESS_BCRYPT, access_judge(a, "Basic YWxpY2U6d3Jvbmc=", user, sizeof(user), pass,
                                        sizeof(pass), &hash));
  ASSERT_STREQ("wrong", pass);
  ASSERT_EQ(0, access_bcrypt_ok(pass, hash));
  /* unknown user, no colon, bad base64, a NUL inside */
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic Ym9iOnMzY3JldC1hbGljZQ==", user)); /* bob:s3cret-alice */
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic YWxpY2U=", user));                 /* alice */
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic !!!!", user));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic YWxpY2UAOng=", user)); /* alice\0:x */
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic ", user));
  access_creds_free(a);

  /* only htpasswd: a Bearer is never right; only a token: a user is not looked up */
  a = load(NULL, ALICE, err, sizeof(err));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Bearer " TOKEN, user));
  access_creds_free(a);
  a = load(TOKEN, NULL, err, sizeof(err));
  ASSERT_EQ(ACCESS_BAD, judge(a, "Basic YWxpY2U6czNjcmV0LWFsaWNl", user));
  access_creds_free(a);
}

TEST(bcrypt_refuses_what_crypt_refuses)
{
  ASSERT_EQ(0, access_bcrypt_ok("x", "$2y$05$short"));
  ASSERT_EQ(0, access_bcrypt_ok("x", "*0"));
}
