/* libFuzzer target: daemon/config, the INI file parser and validation.
 *
 * Input: the bytes of a config file. Invariants checked:
 *   - never crashes, reads out of bounds or leaks (ASan/UBSan), whatever the bytes;
 *   - a rejected file always comes with a reason;
 *   - a file that loads and validates prints (config_print, what check-config shows) to a file
 *     that loads and validates again and prints the same text: the printed configuration is
 *     the configuration.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/pc.h"
#include "daemon/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Write bytes to a fresh in-memory file; its /proc path in path. -1 on failure. */
static int memfile(const void *p, size_t n, char *path, size_t pathlen)
{
  int fd = memfd_create("pc-fuzz-config", MFD_CLOEXEC);
  if (fd < 0)
    return -1;
  if (n && write(fd, p, n) != (ssize_t)n) {
    close(fd);
    return -1;
  }
  snprintf(path, pathlen, "/proc/self/fd/%d", fd);
  return fd;
}

/* Load path into a fresh config and print it to a heap string (NULL when it does not load). */
static char *load_and_print(const char *path, char *err, size_t errlen)
{
  daemon_config_t *cfg = pc_xmalloc(sizeof(*cfg));
  char *out = NULL;
  size_t outlen = 0;
  config_defaults(cfg);
  if (config_load_file(cfg, path, err, errlen) == 0 && config_validate(cfg, err, errlen) == 0) {
    FILE *f = open_memstream(&out, &outlen);
    PC_ASSERT(f != NULL);
    cfg->path[0] = '\0';
    config_print(cfg, f);
    fclose(f);
  }
  free(cfg);
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char path[64], path2[64], err[600] = "", err2[600] = "";
  int fd, fd2;
  char *once, *twice;

  if (size > 16384)
    return 0;
  fd = memfile(data, size, path, sizeof(path));
  if (fd < 0)
    return 0;
  once = load_and_print(path, err, sizeof(err));
  if (!once) {
    /* rejected: always with a reason */
    PC_ASSERT(err[0] != '\0');
  } else {
    fd2 = memfile(once, strlen(once), path2, sizeof(path2));
    PC_ASSERT(fd2 >= 0);
    twice = load_and_print(path2, err2, sizeof(err2));
    if (!twice || strcmp(once, twice) != 0)
      pc_fatal("printed config does not load back to itself: %s\n--- first\n%s\n--- second\n%s",
               err2, once, twice ? twice : "(rejected)");
    free(twice);
    close(fd2);
  }
  free(once);
  close(fd);
  pc_log_level = 0; /* config code does not log, but keep any stray line quiet */
  return 0;
}
