/* cmd_fsck — `pullcache fsck`: rehash every blob, repair what it can, print a summary. */
#include "daemon/cmd.h"
#include "daemon/config.h"

#include <errno.h>
#include <string.h>

#include "core/num.h"
#include "core/pc.h"
#include "store/store.h"

static void usage(FILE *f)
{
  fprintf(f, "usage: pullcache fsck [--store DIR]\n"
             "\n"
             "Rehash every blob in the store: files that do not match their digest are moved\n"
             "to DIR/quarantine/, records whose file is gone are dropped, verified files with\n"
             "no record are recorded, and the store's running totals are recomputed from the\n"
             "records (rewritten if they disagree). Run it while the daemon is stopped.\n"
             "\n"
             "  --store DIR   the store directory (default ./pullcache-data)\n"
             "  -h, --help    show this help\n"
             "\n"
             "Exit status: 0 clean, 1 problems found and repaired, 2 usage or error.\n");
}

int cmd_fsck(int argc, char **argv)
{
  const char *dir = CONFIG_STORE_DEFAULT, *v;
  int missing = 0;
  store_t *s = NULL;
  store_fsck_report_t r;
  store_stats_t st;
  int code = 2;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
      usage(stdout);
      return 0;
    } else if ((v = pc_opt_value(argc, argv, &i, "--store", &missing))) {
      dir = v;
    } else if (missing) {
      fprintf(stderr, "pullcache fsck: %s needs a value\n", argv[i]);
      return 2;
    } else {
      fprintf(stderr, "pullcache fsck: unexpected argument '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  uint64_t t0 = pc_mono_ms();
  store_opts_t so = {.must_exist = 1};
  int rc = store_open(dir, &so, &s);
  if (rc == PC_E_NOTFOUND) {
    fprintf(stderr, "pullcache fsck: no store at %s\n", dir);
    goto out;
  }
  if (rc) {
    fprintf(stderr, "pullcache fsck: cannot open store %s: %s\n", dir,
            rc == -EBUSY ? "in use by another process (stop the daemon first)" : pc_strerror(rc));
    goto out;
  }
  memset(&r, 0, sizeof(r));
  rc = store_fsck(s, stdout, &r);
  printf("fsck %s: %llu blobs, %llu bytes checked; corrupt=%llu missing=%llu orphan=%llu "
         "stray=%llu totals=%llu; %llu ms\n",
         dir, (unsigned long long)r.blobs_checked, (unsigned long long)r.bytes_checked,
         (unsigned long long)r.corrupt, (unsigned long long)r.missing_files,
         (unsigned long long)r.orphan_files, (unsigned long long)r.stray_files,
         (unsigned long long)r.totals_repaired, (unsigned long long)(pc_mono_ms() - t0));
  if (store_stats(s, &st) == 0)
    printf("store %s: %llu blobs (%llu bytes), %llu manifests (%llu bytes), %llu tags\n", dir,
           (unsigned long long)st.blobs, (unsigned long long)st.blob_bytes,
           (unsigned long long)st.manifests, (unsigned long long)st.manifest_bytes,
           (unsigned long long)st.tags);
  if (rc == 0)
    code = 0;
  else if (rc == PC_E_CORRUPT)
    code = 1;
  else
    fprintf(stderr, "pullcache fsck: %s\n", pc_strerror(rc));
out:
  store_close(s);
  fflush(stdout);
  return code;
}
