/* Unit tests: daemon/config (defaults, INI file, flags, precedence, validation). */
#include <errno.h>

#include "daemon/config.h"
#include "unit.h"

static const char *write_ini(const char *name, const char *text)
{
  return unit_write_file(name, text);
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
  return config_from_args(cfg, argc, argv, err, errlen);
}

TEST(defaults)
{
  daemon_config_t c;
  char err[256] = "";
  const char *argv_[] = {"--no-config"};
  ASSERT_OK(config_from_args(&c, 1, av(argv_, 1), err, sizeof(err)));
  ASSERT_EQ(1, c.nlisten);
  ASSERT_STREQ("127.0.0.1:5000", c.listen[0]);
  ASSERT_STREQ("./pullcache-data", c.store_dir);
  ASSERT_STREQ("", c.path);
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[0].name);
  ASSERT_STREQ("https://registry.k8s.io", c.upstreams[0].url);
  ASSERT_EQ(300, c.upstreams[0].tag_ttl);
  ASSERT_EQ(4u << 20, c.max_manifest);
  ASSERT_EQ(0, c.offline);
  ASSERT_EQ(4096, c.srv.max_conns);
  ASSERT_EQ(15000, c.srv.header_timeout_ms);
  ASSERT_EQ(10000, c.drain_timeout_ms);
  ASSERT_EQ(10000, c.up.connect_timeout_ms);
  ASSERT_EQ(PC_LOG_INFO, c.log_level);
  ASSERT_EQ(DAEMON_LOG_TEXT, c.log_format);
  ASSERT_EQ(1, c.srv.access_log);
  ASSERT_EQ(256u << 20, c.store_min_free);
  ASSERT_EQ(0, c.store_max_size);
}

TEST(flags)
{
  daemon_config_t c;
  char err[256] = "";
  const char *argv_[] = {"--no-config",
                         "--listen",
                         "127.0.0.1:0",
                         "--listen=[::1]:5001",
                         "--store",
                         "/tmp/x",
                         "--tag-ttl",
                         "7m",
                         "--upstream",
                         "ghcr.io=https://ghcr.io/",
                         "--upstream=127.0.0.1:5001=http://127.0.0.1:5001",
                         "--offline",
                         "--log-level",
                         "debug",
                         "--log-format=json"};
  ASSERT_OK(config_from_args(&c, (int)PC_ARRAY_SIZE(argv_), av(argv_, (int)PC_ARRAY_SIZE(argv_)),
                             err, sizeof(err)));
  ASSERT_EQ(2, c.nlisten);
  ASSERT_STREQ("127.0.0.1:0", c.listen[0]);
  ASSERT_STREQ("[::1]:5001", c.listen[1]);
  ASSERT_STREQ("/tmp/x", c.store_dir);
  ASSERT_EQ(2, c.nupstreams); /* the first --upstream replaced the default */
  ASSERT_STREQ("ghcr.io", c.upstreams[0].name);
  ASSERT_STREQ("https://ghcr.io", c.upstreams[0].url); /* trailing slash dropped */
  ASSERT_STREQ("127.0.0.1:5001", c.upstreams[1].name);
  ASSERT_STREQ("http://127.0.0.1:5001", c.upstreams[1].url);
  /* --tag-ttl applies to every upstream, also those named after it */
  ASSERT_EQ(420, c.upstreams[0].tag_ttl);
  ASSERT_EQ(420, c.upstreams[1].tag_ttl);
  ASSERT_EQ(1, c.offline);
  ASSERT_EQ(PC_LOG_DEBUG, c.log_level);
  ASSERT_EQ(DAEMON_LOG_JSON, c.log_format);
}

TEST(ini_file)
{
  daemon_config_t c;
  char err[256] = "";
  const char *p = write_ini("a.conf", "; comment\n"
                                      "[server]\n"
                                      "listen = 127.0.0.1:6000, 127.0.0.1:6001\n"
                                      "listen = [::1]:6002\n"
                                      "offline = true\n"
                                      "max_manifest = 1M\n"
                                      "max_conns = 100\n"
                                      "header_timeout = 500ms\n"
                                      "idle_timeout = 2m\n"
                                      "write_timeout = 1h\n"
                                      "max_header_bytes = 32K\n"
                                      "max_url_bytes = 4096\n"
                                      "max_headers = 50\n"
                                      "drain_timeout = 0\n"
                                      "[fetch]\n"
                                      "connect_timeout = 3s\n"
                                      "first_byte_timeout = 45\n"
                                      "stall_timeout = 1m\n"
                                      "max_redirects = 4\n"
                                      "[store]\n"
                                      "path = /srv/cache\n"
                                      "max_size = 500G\n"
                                      "min_free = 2GiB\n"
                                      "[log]\n"
                                      "level = warn\n"
                                      "format = JSON\n"
                                      "access = off\n"
                                      "\n"
                                      "[upstream \"ghcr.io\"]\n"
                                      "url = https://ghcr.io\n"
                                      "tag_ttl = 1h\n"
                                      "max_connections = 8\n"
                                      "rate_limit = 2.5\n"
                                      "rate_burst = 5\n"
                                      "[upstream \"registry.k8s.io\"]\n"
                                      "url = http://127.0.0.1:5001/\n"
                                      "ca_file = /dev/null\n");
  const char *argv_[] = {"--config", p};
  ASSERT_OK(config_from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT_STREQ(p, c.path);
  ASSERT_EQ(3, c.nlisten);
  ASSERT_STREQ("127.0.0.1:6000", c.listen[0]);
  ASSERT_STREQ("127.0.0.1:6001", c.listen[1]);
  ASSERT_STREQ("[::1]:6002", c.listen[2]);
  ASSERT_EQ(1, c.offline);
  ASSERT_EQ(1 << 20, c.max_manifest);
  ASSERT_EQ(100, c.srv.max_conns);
  ASSERT_EQ(500, c.srv.header_timeout_ms);
  ASSERT_EQ(120000, c.srv.idle_timeout_ms);
  ASSERT_EQ(3600000, c.srv.write_timeout_ms);
  ASSERT_EQ(32768, c.srv.max_header_bytes);
  ASSERT_EQ(4096, c.srv.max_url_bytes);
  ASSERT_EQ(50, c.srv.max_headers);
  ASSERT_EQ(0, c.drain_timeout_ms);
  ASSERT_EQ(3000, c.up.connect_timeout_ms);
  ASSERT_EQ(45000, c.up.first_byte_timeout_ms);
  ASSERT_EQ(60000, c.up.stall_timeout_ms);
  ASSERT_EQ(4, c.up.max_redirects);
  ASSERT_STREQ("/srv/cache", c.store_dir);
  ASSERT_EQ(500ull << 30, c.store_max_size);
  ASSERT_EQ(2ull << 30, c.store_min_free);
  ASSERT_EQ(PC_LOG_WARN, c.log_level);
  ASSERT_EQ(DAEMON_LOG_JSON, c.log_format);
  ASSERT_EQ(-1, c.srv.access_log);
  ASSERT_EQ(2, c.nupstreams);
  ASSERT_STREQ("ghcr.io", c.upstreams[0].name);
  ASSERT_EQ(3600, c.upstreams[0].tag_ttl);
  ASSERT_EQ(8, c.upstreams[0].max_connections);
  ASSERT(c.upstreams[0].rate_limit == 2.5);
  ASSERT_EQ(5, c.upstreams[0].rate_burst);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[1].name);
  ASSERT_STREQ("http://127.0.0.1:5001", c.upstreams[1].url);
  ASSERT_STREQ("/dev/null", c.upstreams[1].ca_file);
  ASSERT_EQ(300, c.upstreams[1].tag_ttl);
  ASSERT_EQ(0, c.upstreams[1].max_connections);

  /* config_load_file alone applies on top of what is there */
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, p, err, sizeof(err)));
  ASSERT_EQ(3600, c.upstreams[0].tag_ttl);
}

/* Section names are kept whole (inih alone cuts them at 50 bytes): long registry hosts work. */
TEST(long_upstream_name)
{
  daemon_config_t c;
  char err[256] = "";
  const char *host = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
  char text[512];
  snprintf(text, sizeof(text), "[upstream \"%s\"]\nurl = https://%s\n", host, host);
  const char *p = write_ini("ecr.conf", text);
  const char *argv_[] = {"--config", p};
  ASSERT_OK(from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_STREQ(host, c.upstreams[0].name);
}

TEST(flags_override_file)
{
  daemon_config_t c;
  char err[256] = "";
  const char *p = write_ini("b.conf", "[server]\nlisten = 127.0.0.1:6000\n[store]\npath = /a\n"
                                      "[upstream \"ghcr.io\"]\nurl = https://ghcr.io\n"
                                      "tag_ttl = 60\n");
  /* --config may come after other flags: the file is applied first */
  const char *argv_[] = {"--store",    "/b",
                         "--listen",   "127.0.0.1:7000",
                         "--config",   p,
                         "--upstream", "quay.io=https://quay.io",
                         "--upstream", "ghcr.io=https://m.example"};
  ASSERT_OK(from_args(&c, (int)PC_ARRAY_SIZE(argv_), av(argv_, (int)PC_ARRAY_SIZE(argv_)), err,
                      sizeof(err)));
  ASSERT_STREQ("/b", c.store_dir);
  ASSERT_EQ(1, c.nlisten);
  ASSERT_STREQ("127.0.0.1:7000", c.listen[0]);
  ASSERT_EQ(2, c.nupstreams);
  ASSERT_STREQ("quay.io", c.upstreams[0].name);
  ASSERT_STREQ("ghcr.io", c.upstreams[1].name);
  ASSERT_STREQ("https://m.example", c.upstreams[1].url);
  ASSERT_EQ(300, c.upstreams[1].tag_ttl); /* a flag upstream starts from the defaults */

  /* without --upstream flags the file's upstreams stand, with their own settings */
  const char *argv2_[] = {"--config", p, "--tag-ttl", "90"};
  ASSERT_OK(from_args(&c, 4, av(argv2_, 4), err, sizeof(err)));
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_EQ(90, c.upstreams[0].tag_ttl); /* --tag-ttl beats the file */
}

TEST(bad_files)
{
  daemon_config_t c;
  char err[256], want[600];
  static const struct {
    const char *text;
    int line;         /* the line the message must name */
    const char *want; /* substring of the message */
  } cases[] = {
      {"[server]\nbogus = 1\n", 2, "unknown key \"bogus\" in [server]"},
      {"[nope]\nx = 1\n", 1, "unknown section [nope]"},
      {"[server]\n\n; c\nmax_conns = 0\n", 4, "max_conns"},
      {"[server]\nmax_conns = 12abc\n", 2, "max_conns"},
      {"[server]\noffline = maybe\n", 2, "offline"},
      {"[server]\nheader_timeout = 5 parsecs\n", 2, "a duration"},
      {"[server]\nheader_timeout = -5\n", 2, "header_timeout"},
      {"[server]\nmax_manifest = 12Q\n", 2, "a size"},
      {"[server]\nmax_manifest = 2G\n", 2, "max_manifest"},
      {"[server]\nlisten = ,\n", 2, "listen"},
      {"[server]\nstore = /x\n", 2, "unknown key \"store\""},
      {"[log]\nlevel = loud\n", 2, "err|warn|notice|info|debug"},
      {"[log]\nformat = xml\n", 2, "text|json"},
      {"[fetch]\nmax_redirects = 21\n", 2, "max_redirects"},
      {"[store]\npath =\n", 2, "path"},
      {"[upstream \"bad host!\"]\nurl = https://x\n", 2, "not a registry host"},
      {"[upstream \"ghcr.io\"]\nurl = ftp://ghcr.io\n", 2, "url"},
      {"[server]\nmax_conns = 5\n[upstream \"ghcr.io\"]\nca_file = /dev/null\n", 3,
       "[upstream \"ghcr.io\"] has no url"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\nfoo = bar\n", 3, "unknown key"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\ntag_ttl = 1500ms\n", 3, "tag_ttl"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\nrate_limit = fast\n", 3, "rate_limit"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\nrate_limit = nan\n", 3, "rate_limit"},
      {"[upstream \"ghcr.io\"]\nurl = https://ghcr.io\nca_file = /nonexistent/ca.pem\n", 3,
       "No such file"},
      {"[upstream ghcr.io]\nurl = https://ghcr.io\n", 1, "write [upstream \"HOST\"]"},
      {"[server\n", 1, "syntax"},
      {"[server]\nmax_conns = 5\n  drain_timeout = 3s\n", 3, "indented line"},
      {"[upstream \"a.io\"]\nurl = https://a.io\n[upstream \"b.io\"]\nurl = https://b.io\n"
       "[upstream \"a.io\"]\ntag_ttl = 5\n",
       5, "appears twice (first at line 1)"},
      /* inih's first error (a syntax error at line 2) is the one reported */
      {"[server]\ngarbage\nmax_conns = abc\n", 2, "syntax error"},
      {"[server]\nmax_conns = abc\ngarbage\n", 2, "bad value for max_conns"},
      /* found by fuzz-config: would print as "path = ;x", which reads back as a comment */
      {"[store]\npath=;x\n", 2, "starts with ';'"},
      /* found by fuzz-config: a form feed before ';' reads back as the start of a comment */
      {"[store]\npath = t\f\f1\f; [fetch]\n", 2, "control byte (0x0c)"},
      {"[server]\nmax_conns = 5\n\fdrain_timeout = 3s\n", 3, "indented line"},
  };
  for (size_t i = 0; i < PC_ARRAY_SIZE(cases); i++) {
    const char *p = write_ini("bad.conf", cases[i].text);
    const char *argv_[] = {"--config", p};
    err[0] = '\0';
    int rc = from_args(&c, 2, av(argv_, 2), err, sizeof(err));
    snprintf(want, sizeof(want), "%s:%d: ", p, cases[i].line);
    if (rc != -EINVAL || strncmp(err, want, strlen(want)) != 0 || !strstr(err, cases[i].want))
      unit__fail(__FILE__, __LINE__, "case %zu: rc=%d err=\"%s\" (want \"%s...%s\")", i, rc, err,
                 want, cases[i].want);
  }
  /* semantic errors found after the file is read name the problem */
  const char *p = write_ini("bad2.conf", "[server]\nlisten = 127.0.0.1\n");
  const char *argv1_[] = {"--config", p};
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv1_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "ADDR:PORT") != NULL);
  p = write_ini("bad3.conf", "[server]\nlisten = localhost:5000\n");
  const char *argv3_[] = {"--config", p};
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv3_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "numeric") != NULL);

  /* a line longer than the INI parser's buffer is refused where it is, not split */
  char longline[600];
  snprintf(longline, sizeof(longline),
           "[server]\nmax_conns = 5\n[upstream \"a.io\"]\nurl = https://a.io/%0300d\n", 0);
  p = write_ini("bad4.conf", longline);
  const char *argv4_[] = {"--config", p};
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv4_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "bad4.conf:4: line longer than") != NULL);

  const char *argv_[] = {"--config", "/nonexistent/pullcache.conf"};
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "/nonexistent/pullcache.conf") != NULL);
  ASSERT_EQ(-ENOENT, config_load_file(&c, "/nonexistent/x.conf", err, sizeof(err)));
}

TEST(credentials_file)
{
  daemon_config_t c;
  char err[512] = "", text[1200];
  const char *cred = write_ini("cred", "robot$ci:s3cr3t:with:colons\n");
  snprintf(text, sizeof(text),
           "[upstream \"ghcr.io\"]\nurl = https://ghcr.io\n"
           "credentials_file = %s\n",
           cred);
  const char *p = write_ini("c.conf", text);
  const char *argv_[] = {"--config", p};
  ASSERT_OK(from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT_STREQ(cred, c.upstreams[0].credentials_file);
  ASSERT_STREQ("robot$ci:s3cr3t:with:colons", c.upstreams[0].userpwd);

  /* check-config output names the file, never the secret */
  FILE *f = tmpfile();
  ASSERT(f != NULL);
  config_print(&c, f);
  rewind(f);
  char out[8192];
  size_t n = fread(out, 1, sizeof(out) - 1, f);
  out[n] = '\0';
  fclose(f);
  ASSERT(strstr(out, cred) != NULL);
  ASSERT(strstr(out, "s3cr3t") == NULL);

  write_ini("cred", "no-colon-here\n");
  ASSERT_EQ(-EINVAL, from_args(&c, 2, av(argv_, 2), err, sizeof(err)));
  ASSERT(strstr(err, "user:password") != NULL);
  ASSERT(strstr(err, ":3: ") != NULL);
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
      {"--tag-ttl", "10ms", "tag-ttl"},
      {"--log-level", "verbose", "log-level"},
      {"--log-format", "xml", "text|json"},
      {"--store", "", "store"},
      {"--frobnicate", NULL, "unknown option"},
      {"--listen", "nocolon", "ADDR:PORT"},
      {"--listen", "[::1:5000", "ADDR:PORT"},
  };
  for (size_t i = 0; i < PC_ARRAY_SIZE(cases); i++) {
    const char *argv_[3] = {"--no-config", cases[i][0], cases[i][1]};
    err[0] = '\0';
    int rc = from_args(&c, cases[i][1] ? 3 : 2, av(argv_, 3), err, sizeof(err));
    if (rc != -EINVAL || !strstr(err, cases[i][2]))
      unit__fail(__FILE__, __LINE__, "case %zu: rc=%d err=\"%s\"", i, rc, err);
  }
  /* the same upstream twice */
  const char *dup_[] = {"--upstream", "a.io=https://a", "--upstream", "A.io=https://b"};
  ASSERT_EQ(-EINVAL, from_args(&c, 4, av(dup_, 4), err, sizeof(err)));
  ASSERT(strstr(err, "twice") != NULL);
  /* --config and --no-config together */
  const char *both_[] = {"--config", "/dev/null", "--no-config"};
  ASSERT_EQ(-EINVAL, from_args(&c, 3, av(both_, 3), err, sizeof(err)));
  ASSERT(strstr(err, "exclude") != NULL);
  /* too many listen addresses */
  const char *many_[2 * (DAEMON_MAX_LISTEN + 1)];
  for (int i = 0; i <= DAEMON_MAX_LISTEN; i++) {
    many_[2 * i] = "--listen";
    many_[2 * i + 1] = "127.0.0.1:0";
  }
  ASSERT_EQ(-EINVAL, from_args(&c, (int)PC_ARRAY_SIZE(many_), av(many_, (int)PC_ARRAY_SIZE(many_)),
                               err, sizeof(err)));
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
  ASSERT_EQ(15000, config_parse_duration_ms("15"));
  ASSERT_EQ(15000, config_parse_duration_ms("15s"));
  ASSERT_EQ(250, config_parse_duration_ms("250ms"));
  ASSERT_EQ(300000, config_parse_duration_ms("5m"));
  ASSERT_EQ(7200000, config_parse_duration_ms("2h"));
  ASSERT_EQ(86400000, config_parse_duration_ms("1d"));
  ASSERT_EQ(-1, config_parse_duration_ms("-1s"));
  ASSERT_EQ(-1, config_parse_duration_ms("1.5s"));
  ASSERT_EQ(-1, config_parse_duration_ms("s"));
  ASSERT_EQ(-1, config_parse_duration_ms("99999999999999999999"));
  ASSERT_EQ(4096, config_parse_size("4096"));
  ASSERT_EQ(65536, config_parse_size("64K"));
  ASSERT_EQ(16 << 20, config_parse_size("16MiB"));
  ASSERT_EQ(1LL << 30, config_parse_size("1gb"));
  ASSERT_EQ(3LL << 40, config_parse_size("3T"));
  ASSERT_EQ(-1, config_parse_size("1P"));
  ASSERT_EQ(-1, config_parse_size("-1"));
  ASSERT_EQ(-1, config_parse_size("9999999999999T"));
}

/* check-config prints a file that loads back to the same configuration. */
TEST(print_roundtrip)
{
  daemon_config_t a, b;
  char err[256] = "";
  const char *p = write_ini("r.conf", "[server]\nlisten = 127.0.0.1:6000, [::1]:6001\n"
                                      "header_timeout = 1500ms\nmax_manifest = 3000\n"
                                      "[store]\npath = /srv/x\nmax_size = 10G\n"
                                      "[log]\nformat = json\naccess = false\n"
                                      "[upstream \"ghcr.io\"]\nurl = https://ghcr.io\n"
                                      "rate_limit = 0.5\nca_file = /dev/null\n"
                                      "[upstream \"quay.io\"]\nurl = https://quay.io/x\n"
                                      "tag_ttl = 90m\n");
  const char *argv_[] = {"--config", p};
  ASSERT_OK(from_args(&a, 2, av(argv_, 2), err, sizeof(err)));
  char out1[8192], out2[8192];
  char printed[1024];
  snprintf(printed, sizeof(printed), "%s/printed.conf", unit_tmpdir());
  FILE *f = fopen(printed, "w");
  ASSERT(f != NULL);
  config_print(&a, f);
  fclose(f);
  const char *argv2_[] = {"--config", printed};
  ASSERT_OK(from_args(&b, 2, av(argv2_, 2), err, sizeof(err)));
  /* identical apart from the file name: print both without it and compare */
  a.path[0] = b.path[0] = '\0';
  f = fmemopen(out1, sizeof(out1), "w");
  config_print(&a, f);
  fclose(f);
  f = fmemopen(out2, sizeof(out2), "w");
  config_print(&b, f);
  fclose(f);
  ASSERT_STREQ(out1, out2);
  ASSERT(strstr(out1, "header_timeout = 1500ms\n") != NULL);
  ASSERT(strstr(out1, "max_size = 10G\n") != NULL);
  ASSERT(strstr(out1, "tag_ttl = 90m\n") != NULL);
  ASSERT(strstr(out1, "[upstream \"quay.io\"]\nurl = https://quay.io/x\n") != NULL);
}

/* Every key the file accepts is in README.md's configuration reference with its default. */
typedef struct doc_ctx {
  char *readme;
  int missing;
} doc_ctx_t;

static void check_documented(void *arg, const char *section, const char *key, const char *def)
{
  doc_ctx_t *c = arg;
  char k[128], d[160];
  snprintf(k, sizeof(k), "| `%s` |", key);
  snprintf(d, sizeof(d), "`%s`", def);
  for (char *line = strstr(c->readme, k); line; line = strstr(line + 1, k)) {
    char *eol = strchr(line, '\n');
    size_t n = eol ? (size_t)(eol - line) : strlen(line);
    char buf[1024];
    if (n >= sizeof(buf))
      n = sizeof(buf) - 1;
    memcpy(buf, line, n);
    buf[n] = '\0';
    if (!def[0] || strstr(buf, d))
      return;
  }
  fprintf(stderr, "README.md lacks a row \"| `%s` | ... `%s` ...\" for [%s]\n", key, def, section);
  c->missing++;
}

TEST(readme_documents_every_key)
{
  doc_ctx_t c = {0};
  FILE *f = fopen(PC_SRC_DIR "/README.md", "r");
  ASSERT(f != NULL);
  c.readme = calloc(1, 1 << 20);
  ASSERT(c.readme != NULL);
  size_t n = fread(c.readme, 1, (1 << 20) - 1, f);
  fclose(f);
  ASSERT(n > 0);
  config_each_key(check_documented, &c);
  free(c.readme);
  ASSERT_EQ(0, c.missing);
}

/* The sample shipped for systemd (systemd/pullcache.conf) must load and validate as it is. */
TEST(sample_config_loads)
{
  daemon_config_t c;
  char err[512] = "";
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, PC_SRC_DIR "/systemd/pullcache.conf", err, sizeof(err)));
  ASSERT_OK(config_validate(&c, err, sizeof(err)));
  ASSERT_STREQ("/var/lib/pullcache", c.store_dir);
  ASSERT_STREQ("0.0.0.0:5000", c.listen[0]);
  ASSERT_EQ(1, c.nupstreams);
  ASSERT_STREQ("registry.k8s.io", c.upstreams[0].name);
  ASSERT_STREQ("https://registry.k8s.io", c.upstreams[0].url);
  ASSERT_EQ(300, c.upstreams[0].tag_ttl);
  ASSERT_EQ(32, c.upstreams[0].max_connections);
}

TEST(evict_to_above_max_size)
{
  daemon_config_t c;
  char err[512] = "";
  config_defaults(&c);
  c.store_max_size = 1000;
  c.store_evict_to = 900;
  ASSERT_OK(config_validate(&c, err, sizeof(err)));
  c.store_evict_to = 1000;
  ASSERT_OK(config_validate(&c, err, sizeof(err)));
  c.store_evict_to = 1001;
  ASSERT_EQ(-EINVAL, config_validate(&c, err, sizeof(err)));
  ASSERT(strstr(err, "evict_to") && strstr(err, "max_size"));
  c.store_max_size = 0; /* no budget: evict_to is unused */
  ASSERT_OK(config_validate(&c, err, sizeof(err)));
}

/* A string value that fits its line as "key=value" but not as check-config prints it ("key =
 * value") is refused with a reason, so every printed config loads back (found by fuzz-config:
 * a 190-byte tls_key). A value that fits both ways loads. */
TEST(string_value_must_fit_the_printed_line)
{
  daemon_config_t c;
  char err[256], text[400], val[200];
  memset(val, 'k', sizeof(val));
  val[190] = '\0'; /* "tls_key=" + value: 198 bytes, read fine; printed, 200 */
  snprintf(text, sizeof(text), "[server]\ntls_key=%s\n", val);
  const char *p = write_ini("long.conf", text);
  config_defaults(&c);
  ASSERT_EQ(-EINVAL, config_load_file(&c, p, err, sizeof(err)));
  ASSERT(strstr(err, "tls_key: value longer than a config line can hold (198 bytes)") != NULL);
  val[188] = '\0'; /* printed "tls_key = " + value: exactly 198 bytes */
  snprintf(text, sizeof(text), "[server]\ntls_key = %s\n", val);
  p = write_ini("fits.conf", text);
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, p, err, sizeof(err)));
  ASSERT_STREQ(val, c.tls_key);
}

/* mirrors: a list of URLs (comma or space separated), checked one by one, at most three,
 * stored space-separated without trailing slashes; the failover keys have their defaults. */
TEST(upstream_mirrors_list)
{
  daemon_config_t c;
  char err[256];
  const char *p =
      write_ini("mirrors.conf", "[upstream \"registry.k8s.io\"]\n"
                                "url = https://registry.k8s.io\n"
                                "mirrors = http://10.0.0.1:5000/, http://10.0.0.2:5000\n"
                                "down_backoff = 10s\n");
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, p, err, sizeof(err)));
  ASSERT_STREQ("http://10.0.0.1:5000 http://10.0.0.2:5000", c.upstreams[0].mirrors);
  ASSERT_EQ(10000, c.upstreams[0].down_backoff_ms);
  ASSERT_EQ(3, c.upstreams[0].down_after);
  ASSERT_EQ(2000, c.upstreams[0].failover_connect_ms);
  ASSERT_EQ(8, c.max_hops);
  p = write_ini("mirrors4.conf", "[upstream \"registry.k8s.io\"]\nurl = https://registry.k8s.io\n"
                                 "mirrors = http://a:1 http://b:1 http://c:1 http://d:1\n");
  config_defaults(&c);
  ASSERT_EQ(-EINVAL, config_load_file(&c, p, err, sizeof(err)));
  ASSERT(strstr(err, "mirrors: at most 3 URLs") != NULL);
  p = write_ini("mirrorsbad.conf", "[upstream \"registry.k8s.io\"]\nurl = https://registry.k8s.io\n"
                                   "mirrors = http://a:1 ftp://b\n");
  config_defaults(&c);
  ASSERT_EQ(-EINVAL, config_load_file(&c, p, err, sizeof(err)));
  ASSERT(strstr(err, "\"ftp://b\" is not http(s)") != NULL);
  p = write_ini("tier.conf", "[server]\ntier_id = site a\n");
  config_defaults(&c);
  ASSERT_OK(config_load_file(&c, p, err, sizeof(err)));
  ASSERT_EQ(-EINVAL, config_validate(&c, err, sizeof(err)));
  ASSERT(strstr(err, "tier_id") != NULL);
}
