/* unit — the runner behind unit.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* also set by the build (pc_target); guarded so -Werror builds pass */
#endif
#include "tests/unit/unit.h"

#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#define UNIT_MAX 512

static struct {
  const char *name;
  unit_fn fn;
} tests[UNIT_MAX];
static int ntests;
static char tmpdir[256];
static pid_t tmp_owner;

void unit__register(const char *name, unit_fn fn)
{
  if (ntests == UNIT_MAX) {
    fprintf(stderr, "too many tests\n");
    abort();
  }
  tests[ntests].name = name;
  tests[ntests].fn = fn;
  ntests++;
}

void unit__fail(const char *file, int line, const char *fmt, ...)
{
  va_list ap;
  fprintf(stderr, "FAIL %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  abort();
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

static void rm_tmpdir(void)
{
  if (tmpdir[0] && getpid() == tmp_owner && !getenv("UNIT_KEEP_TMP"))
    nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

const char *unit_tmpdir(void)
{
  if (!tmpdir[0]) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/pc-unit-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(tmpdir))
      unit__fail(__FILE__, __LINE__, "mkdtemp failed");
    tmp_owner = getpid();
    atexit(rm_tmpdir);
  }
  return tmpdir;
}

static int run_one(int i)
{
  const char *t = getenv("UNIT_TIMEOUT");
  alarm(t ? (unsigned)strtoul(t, NULL, 10) : 120);
  tests[i].fn();
  return 0;
}

int main(int argc, char **argv)
{
  signal(SIGPIPE, SIG_IGN);
  if (argc > 1 && strcmp(argv[1], "--list") == 0) {
    for (int i = 0; i < ntests; i++)
      printf("%s\n", tests[i].name);
    return 0;
  }
  if (argc > 1) {
    for (int i = 0; i < ntests; i++)
      if (strcmp(tests[i].name, argv[1]) == 0)
        return run_one(i);
    fprintf(stderr, "no test named %s\n", argv[1]);
    return 2;
  }
  int failed = 0;
  printf("1..%d\n", ntests);
  for (int i = 0; i < ntests; i++) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0)
      _exit(run_one(i));
    int st = 0;
    waitpid(pid, &st, 0);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    printf("%s %d - %s\n", ok ? "ok" : "not ok", i + 1, tests[i].name);
    failed += !ok;
  }
  printf("# %d passed, %d failed\n", ntests - failed, failed);
  return failed ? 1 : 0;
}

const char *unit_write_file(const char *name, const char *text)
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
