/* Unit tests: daemon/config (defaults, INI file, flags, precedence, validation). */
#include <errno.h>

#include "daemon/config.h"
#include "unit.h"

static const char *write_ini(const char *name, const char *text)
{
  static char path[4][1024];
  static int i;
  char *p = path[i++ % 4];
  snprintf(p, sizeof(path[0]), "%s/%s", unit_tmpdir(), name);
  FILE *f = fopen(p, "w");
  ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
  return p;
}



/* -Wwrite-strings makes literals const; argv is char **: copy into writable storage. */
static char **av(const char *const *v, int n)
{
  static char pool[8192];
  static char *out[64];
  size_t pos = 0;
  ASSERT(n <= 64);
  for (int i = 0; i < n; i++) {
    if (!v[i]) {
      out[i] = NULL;
      continue;
    }
    size_t l = strlen(v[i]) + 1;
    ASSERT(pos + l <= sizeof(pool));
    memcpy(pool + pos, v[i], l);
    out[i] = pool + pos;
    pos += l;
  }
  return out;
}

static int from_args(daemon_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
  int level = -1;
  return config_from_args(cfg, argc, argv, &level, err, errlen);
}

TEST(defaults)
{
  daemon_config_t c;
  char err[256] = "";
  ASSERT_OK(config_from_args(&c, 0, NULL, NULL, err, sizeof(err)));
  ASSERT_EQ(1, c.nlisten);
  ASSERT_STREQ("127.0.0.1:5000", c.listen[0]);
  ASSERT_STREQ("./pullcache-data", c.store_dir);
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[0].name);
  ASSERT_STREQ("https://registry.k8s.io", c.upstreams[0].url);
  ASSERT_EQ(300, c.tag_ttl);
  ASSERT_EQ(4u << 20, c.max_manifest);
  ASSERT_EQ(0, c.offline);
}

TEST(flags)
{
  daemon_config_t c;
  char err[256] = "";
  int level = -1;
  const char *argv_[] = {"--listen", "127.0.0.1:0", "--listen=[::1]:5001", "--store", "/tmp/x",
                  "--upstream", "ghcr.io=https://ghcr.io/", "--upstream=127.0.0.1:5001=http://127.0.0.1:5001",
                  "--tag-ttl", "0", "--offline", "--log-level", "debug"};
  ASSERT_OK(config_from_args(&c, (int)PC_ARRAY_SIZE(argv_), av(argv_, (int)PC_ARRAY_SIZE(argv_)), &level, err, sizeof(err)));
  ASSERT_EQ(2, c.nlisten);
  ASSERT_STREQ("127.0.0.1:0", c.listen[0]);
  ASSERT_STREQ("[::1]:5001", c.listen[1]);
  ASSERT_STREQ("/tmp/x", c.store_dir);
  ASSERT_EQ(2, c.nupstreams); /* the first --upstream replaced the default */
  ASSERT_STREQ("ghcr.io", c.upstreams[0].name);
  ASSERT_STREQ("https://ghcr.io", c.upstreams[0].url); /* trailing slash dropped */
  ASSERT_STREQ("127.0.0.1:5001", c.upstreams[1].name);
  ASSERT_STREQ("http://127.0.0.1:5001", c.upstreams[1].url);
  ASSERT_EQ(0, c.tag_ttl);
  ASSERT_EQ(1, c.offline);
  ASSERT_EQ(PC_LOG_DEBUG, level);
}

TEST(ini_file)
{
  daemon_config_t c;
  char err[256] = "";
  int level = -1;
  const char *p = write_ini("a.ini", "; comment\n"
                                     "[server]\n"
                                     "listen = 127.0.0.1:6000, 127.0.0.1:6001\n"
                                     "listen = [::1]:6002\n"
                                     "store = /srv/cache\n"
                                     "tag_ttl = 60\n"
                                     "offline = true\n"
                                     "max_manifest = 1048576\n"
                                     "max_conns = 100\n"
                                     "log_level = warn\n"
                                     "\n"
                                     "[upstream \"ghcr.io\"]\n"
                                     "url = https://ghcr.io\n"
                                     "[upstream \"registry.k8s.io\"]\n"
                                     "url = http://127.0.0.1:5001/\n"
                                     "ca_file = /etc/ssl/ca.pem\n");
  const char *argv_[] = {"--config", p};
  ASSERT_OK(config_from_args(&c, 2, av(argv_, 2), &level, err, sizeof(err)));
  ASSERT_EQ(3, c.nlisten);
  ASSERT_STREQ("127.0.0.1:6000", c.listen[0]);
  ASSERT_STREQ("127.0.0.1:6001", c.listen[1]);
  ASSERT_STREQ("[::1]:6002", c.listen[2]);
  ASSERT_STREQ("/srv/cache", c.store_dir);
  ASSERT_EQ(60, c.tag_ttl);
  ASSERT_EQ(1, c.offline);
  ASSERT_EQ(1048576, c.max_manifest);
  ASSERT_EQ(100, c.srv.max_conns);
  ASSERT_EQ(PC_LOG_WARN, level);
  ASSERT_EQ(2, c.nupstreams);
  ASSERT_STREQ("ghcr.io", c.upstreams[0].name);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[1].name);
  ASSERT_STREQ("http://127.0.0.1:5001", c.upstreams[1].url);
  ASSERT_STREQ("/etc/ssl/ca.pem", c.upstreams[1].ca_file);

  /* config_load_file alone applies on top of what is there */
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, p, err, sizeof(err)));
  ASSERT_EQ(60, c.tag_ttl);
}

TEST(flags_override_file)
{
  daemon_config_t c;
  char err[256] = "";
  const char *p = write_ini("b.ini", "[server]\nlisten = 127.0.0.1:6000\nstore = /a\ntag_ttl = 60\n"
                                     "[upstream \"ghcr.io\"]\nurl = https://ghcr.io\n");
  /* --config may come after other flags: the file is applied first */
  const char *argv_[] = {"--store", "/b", "--listen", "127.0.0.1:7000", "--config", p,
                  "--upstream", "quay.io=https://quay.io", "--upstream", "ghcr.io=https://m.example"};
  ASSERT_OK(from_args(&c, (int)PC_ARRAY_SIZE(argv_), av(argv_, (int)PC_ARRAY_SIZE(argv_)), err, sizeof(err)));
  ASSERT_STREQ("/b", c.store_dir);
  ASSERT_EQ(1, c.nlisten);
  ASSERT_STREQ("127.0.0.1:7000", c.listen[0]);
  ASSERT_EQ(60, c.tag_ttl); /* from the file, not overridden */
  ASSERT_EQ(2, c.nupstreams);
  ASSERT_STREQ("quay.io", c.upstreams[0].name);
  ASSERT_STREQ("ghcr.io", c.upstreams[1].name);
  ASSERT_STREQ("https://m.example", c.upstreams[1].url);
}

TEST(bad_files)
{
  daemon_config_t c;
  char err[256];
  static const struct {
    const char *text;
    const char *want; /* substring of the message */
  } cases[] = {
      {"[server]\nbogus = 1\n", "unknown key"},
      {"[nope]\nx = 1\n", "unknown section"},
      {"[server]\ntag_ttl = -5\n", "tag_ttl"},
      {"[server]\ntag_ttl = 12abc\n", "tag_ttl"},
      {"[server]\noffline = maybe\n", "offline"},
      {"[server]\nlog_level = loud\n", "log_level"},
      {"[server]\nlisten = ,\n", "listen"},
      {"[upstream \"bad host!\"]\nurl = https://x\n", "not a registry host"},
      {"[upstream \"ghcr.io\"]\nurl = ftp://ghcr.io\n", "url"},
      {"[upstream \"ghcr.io\"]\nca_file = /x\n", "no url"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\nfoo = bar\n", "unknown key"},
      {"[upstream ghcr.io]\nurl = https://ghcr.io\n", "unknown section"},
      {"[server\n", "syntax"},
      {"[server]\nlisten = 127.0.0.1\n", "ADDR:PORT"},
      {"[server]\nlisten = 127.0.0.1:99999\n", "ADDR:PORT"},
  };
  for (size_t i = 0; i < PC_ARRAY_SIZE(cases); i++) {
    const char *p = write_ini("bad.ini", cases[i].text);
    const char *argv_[] = {"--config", p};
    err[0] = '\0';
    int rc = from_args(&c, 2, av(argv_, 2), err, sizeof(err));
    if (rc != -EINVAL || !strstr(err, cases[i].want))
      unit__fail(__FILE__, __LINE__, "case %zu: rc=%d err=\"%s\" (want \"%s\")", i, rc, err,
                 cases[i].want);
  }
  const char *argv_[] = {"--config", "/nonexistent/pullcache.ini"};
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "/nonexistent/pullcache.ini") != NULL);
  ASSERT_EQ(-ENOENT, config_load_file(&c, "/nonexistent/x.ini", err, sizeof(err)));
}

TEST(bad_flags)
{
  daemon_config_t c;
  char err[256];
  static const char *const cases[][3] = {
      {"--listen", NULL, "needs a value"},
      {"--upstream", "ghcr.io", "NAME=URL"},
      {"--upstream", "=https://x", "NAME=URL"},
      {"--upstream", "ghcr.io=ghcr.io", "url"},
      {"--upstream", "bad_host=https://x", "not a registry host"},
      {"--upstream", "h:0x=https://x", "not a registry host"},
      {"--tag-ttl", "-1", "tag-ttl"},
      {"--tag-ttl", "", "tag-ttl"},
      {"--log-level", "verbose", "log-level"},
      {"--store", "", "store"},
      {"--frobnicate", NULL, "unknown option"},
      {"--listen", "nocolon", "ADDR:PORT"},
  };
  for (size_t i = 0; i < PC_ARRAY_SIZE(cases); i++) {
    const char *argv_[2] = {cases[i][0], cases[i][1]};
    err[0] = '\0';
    int rc = from_args(&c, cases[i][1] ? 2 : 1, av(argv_, 2), err, sizeof(err));
    if (rc != -EINVAL || !strstr(err, cases[i][2]))
      unit__fail(__FILE__, __LINE__, "case %zu: rc=%d err=\"%s\"", i, rc, err);
  }
  /* the same upstream twice */
  const char *dup_[] = {"--upstream", "a.io=https://a", "--upstream", "A.io=https://b"};
  ASSERT_EQ(-EINVAL, from_args(&c, 4, av(dup_, 4), err, sizeof(err)));
  ASSERT(strstr(err, "twice") != NULL);
  /* too many listen addresses */
  const char *many_[2 * (DAEMON_MAX_LISTEN + 1)];
  for (int i = 0; i <= DAEMON_MAX_LISTEN; i++) {
    many_[2 * i] = "--listen";
    many_[2 * i + 1] = "127.0.0.1:0";
  }
  ASSERT_EQ(-EINVAL, from_args(&c, (int)PC_ARRAY_SIZE(many_), av(many_, (int)PC_ARRAY_SIZE(many_)), err, sizeof(err)));
  ASSERT(strstr(err, "too many") != NULL);
}

TEST(validators)
{
  ASSERT_EQ(1, config_upstream_name_valid("registry.k8s.io"));
  ASSERT_EQ(1, config_upstream_name_valid("localhost:5000"));
  ASSERT_EQ(1, config_upstream_name_valid("127.0.0.1:5001"));
  ASSERT_EQ(0, config_upstream_name_valid(""));
  ASSERT_EQ(0, config_upstream_name_valid("a..b"));
  ASSERT_EQ(0, config_upstream_name_valid(".a"));
  ASSERT_EQ(0, config_upstream_name_valid("a-.b"));
  ASSERT_EQ(0, config_upstream_name_valid("-a"));
  ASSERT_EQ(0, config_upstream_name_valid("a:"));
  ASSERT_EQ(0, config_upstream_name_valid("a:65536"));
  ASSERT_EQ(0, config_upstream_name_valid("a/b"));
  ASSERT_EQ(0, config_upstream_name_valid("a\r\nX: y"));
  ASSERT_EQ(1, config_url_valid("https://registry.k8s.io"));
  ASSERT_EQ(1, config_url_valid("http://127.0.0.1:5001/prefix"));
  ASSERT_EQ(0, config_url_valid("https://"));
  ASSERT_EQ(0, config_url_valid("https:///x"));
  ASSERT_EQ(0, config_url_valid("https://a b"));
  ASSERT_EQ(0, config_url_valid("https://a?x=1"));
  ASSERT_EQ(0, config_url_valid("file:///etc/passwd"));
  ASSERT_EQ(PC_LOG_ERR, config_log_level("err"));
  ASSERT_EQ(PC_LOG_INFO, config_log_level("INFO"));
  ASSERT_EQ(-1, config_log_level("x"));
}

/* The sample shipped for systemd (systemd/pullcache.ini) must load and validate as it is. */
TEST(sample_config_loads)
{
  daemon_config_t c;
  char err[512] = "";
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, PC_SRC_DIR "/systemd/pullcache.ini", err, sizeof(err)));
  ASSERT_OK(config_validate(&c, err, sizeof(err)));
  ASSERT_STREQ("/var/lib/pullcache", c.store_dir);
  ASSERT_STREQ("0.0.0.0:5000", c.listen[0]);
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[0].name);
  ASSERT_STREQ("https://registry.k8s.io", c.upstreams[0].url);
  ASSERT_EQ(300, c.tag_ttl);
}
