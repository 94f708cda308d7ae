/* The include graph of the tree: no circle between the modules of daemon/, and the layers
 * depend one way (daemon -> http, store -> core).
 *
 * A module is a file name without its extension: daemon/x.c and daemon/x.h are one module "x"
 * (daemon.h alone is the module "daemon"). An edge x -> y is a line `#include "daemon/y.h"` in
 * daemon/x.c or daemon/x.h. The graph is read from the sources (PC_SRC_DIR), so a new include
 * that closes a circle fails here, naming the circle.
 */
#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "unit.h"

/* Edges allowed although they close a circle. Each one would be a known debt with its way out;
 * daemon_layers_exceptions_used fails once an edge is gone, so the list only shrinks. It is
 * empty (the sentinel ends it): the last one, mirror -> registry (mirror.c composed its answers
 * through registry_*), went when the answers moved into daemon/answer.c below both. */
static const struct {
  const char *from, *to;
} allowed[] = {
    {NULL, NULL},
};

#define MAX_MODS 64
#define NAME_MAX_ 48

typedef struct graph {
  char name[MAX_MODS][NAME_MAX_];
  int n;
  unsigned char edge[MAX_MODS][MAX_MODS];
  int includes;     /**< lines that matched the prefix, self-includes too */
  char first[1400]; /**< the first of them: "file: line" (room for a name and a line) */
} graph_t;

static int mod_idx(graph_t *g, const char *name, size_t len)
{
  ASSERT(len > 0 && len < NAME_MAX_);
  for (int i = 0; i < g->n; i++)
    if (strlen(g->name[i]) == len && !memcmp(g->name[i], name, len))
      return i;
  ASSERT(g->n < MAX_MODS);
  memcpy(g->name[g->n], name, len);
  g->name[g->n][len] = '\0';
  return g->n++;
}

/* "  #  include "daemon/x.h"" -> x (the part between prefix and ".h"); 0 when not such a line. */
static int include_of(const char *line, const char *prefix, const char **name, size_t *len)
{
  const char *p = line, *end;
  size_t pl = strlen(prefix);
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p++ != '#')
    return 0;
  while (*p == ' ' || *p == '\t')
    p++;
  if (strncmp(p, "include", 7) != 0)
    return 0;
  p += 7;
  while (*p == ' ' || *p == '\t')
    p++;
  if (*p++ != '"' || strncmp(p, prefix, pl) != 0)
    return 0;
  p += pl;
  end = strchr(p, '"');
  if (!end || end - p < 3 || memcmp(end - 2, ".h", 2) != 0)
    return 0;
  *name = p;
  *len = (size_t)(end - 2 - p);
  return 1;
}

/* Add every module of DIR (its .c and .h files) and its includes of "PREFIX<name>.h". */
static void scan_dir(graph_t *g, const char *dir, const char *prefix)
{
  DIR *dh = opendir(dir);
  struct dirent *de;
  int files = 0;
  ASSERT(dh != NULL);
  while ((de = readdir(dh)) != NULL) {
    size_t nl = strlen(de->d_name);
    char path[1024], line[1024];
    FILE *f;
    if (nl < 3 || de->d_name[0] == '.' ||
        (strcmp(de->d_name + nl - 2, ".c") != 0 && strcmp(de->d_name + nl - 2, ".h") != 0))
      continue;
    int from = mod_idx(g, de->d_name, nl - 2);
    snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
    f = fopen(path, "r");
    ASSERT(f != NULL);
    files++;
    while (fgets(line, sizeof(line), f)) {
      const char *name;
      size_t len;
      if (!include_of(line, prefix, &name, &len))
        continue;
      if (g->includes++ == 0)
        snprintf(g->first, sizeof(g->first), "%s: %.*s", de->d_name, (int)strcspn(line, "\n"),
                 line);
      int to = mod_idx(g, name, len);
      if (to != from)
        g->edge[from][to] = 1;
    }
    fclose(f);
  }
  closedir(dh);
  ASSERT(files > 0);
}

static int find(const graph_t *g, const char *name)
{
  for (int i = 0; i < g->n; i++)
    if (!strcmp(g->name[i], name))
      return i;
  return -1;
}

/* Depth-first search; on a back edge, the circle is written to out ("a -> b -> a"). */
static int dfs(const graph_t *g, int v, int *color, int *stack, int depth, char *out, size_t outlen)
{
  color[v] = 1;
  stack[depth] = v;
  for (int w = 0; w < g->n; w++) {
    if (!g->edge[v][w])
      continue;
    if (color[w] == 1) {
      size_t l = 0;
      int start = depth;
      while (stack[start] != w)
        start--;
      for (int i = start; i <= depth; i++)
        l += (size_t)snprintf(out + l, outlen - l, "%s -> ", g->name[stack[i]]);
      snprintf(out + l, outlen - l, "%s", g->name[w]);
      return 1;
    }
    if (color[w] == 0 && dfs(g, w, color, stack, depth + 1, out, outlen))
      return 1;
  }
  color[v] = 2;
  return 0;
}

/* 1 and the circle in out when the graph has one, else 0. */
static int find_cycle(const graph_t *g, char *out, size_t outlen)
{
  int color[MAX_MODS] = {0}, stack[MAX_MODS];
  out[0] = '\0';
  for (int v = 0; v < g->n; v++)
    if (color[v] == 0 && dfs(g, v, color, stack, 0, out, outlen))
      return 1;
  return 0;
}

static void daemon_graph(graph_t *g)
{
  memset(g, 0, sizeof(*g));
  scan_dir(g, PC_SRC_DIR "/daemon", "daemon/");
}

static void write_file(const char *dir, const char *name, const char *text)
{
  char path[1024];
  FILE *f;
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  f = fopen(path, "w");
  ASSERT(f != NULL);
  fputs(text, f);
  fclose(f);
}

TEST(daemon_no_include_cycle)
{
  graph_t g;
  char cycle[1024];
  daemon_graph(&g);
  for (size_t i = 0; allowed[i].from; i++) {
    int a = find(&g, allowed[i].from), b = find(&g, allowed[i].to);
    if (a >= 0 && b >= 0)
      g.edge[a][b] = 0;
  }
  if (find_cycle(&g, cycle, sizeof(cycle)))
    unit__fail(__FILE__, __LINE__, "include circle in daemon/: %s", cycle);
}

TEST(daemon_layers_exceptions_used)
{
  graph_t g;
  daemon_graph(&g);
  for (size_t i = 0; allowed[i].from; i++) {
    int a = find(&g, allowed[i].from), b = find(&g, allowed[i].to);
    if (a < 0 || b < 0 || !g.edge[a][b])
      unit__fail(__FILE__, __LINE__,
                 "daemon/%s no longer includes daemon/%s.h: remove the exception from "
                 "allowed[] in tests/unit/test-layers.c",
                 allowed[i].from, allowed[i].to);
  }
}

/* The low modules stay low: they include no module that works on the daemon. */
TEST(daemon_low_modules_include_no_daemon_module)
{
  static const char *const low[] = {"config", "counters", "reqctx", "route", "daemon"};
  graph_t g;
  daemon_graph(&g);
  for (size_t i = 0; i < PC_ARRAY_SIZE(low); i++) {
    int a = find(&g, low[i]);
    ASSERT(a >= 0);
    for (int b = 0; b < g.n; b++) {
      int ok = 0;
      for (size_t j = 0; j < PC_ARRAY_SIZE(low); j++)
        ok |= !strcmp(g.name[b], low[j]);
      if (g.edge[a][b] && !ok)
        unit__fail(__FILE__, __LINE__, "daemon/%s includes daemon/%s.h", low[i], g.name[b]);
    }
  }
  /* config and counters are plain data: not even the daemon context. */
  ASSERT(!g.edge[find(&g, "config")][find(&g, "daemon")]);
  ASSERT(!g.edge[find(&g, "counters")][find(&g, "daemon")]);
  ASSERT(!g.edge[find(&g, "reqctx")][find(&g, "daemon")]);
}

/* The check itself: x.c and x.h are one module, and a circle through them is found. */
TEST(layers_check_finds_a_circle)
{
  const char *dir = unit_tmpdir();
  graph_t g;
  char cycle[1024];
  write_file(dir, "a.h", "#include <stdio.h>\n#include \"daemon/b.h\"\n");
  write_file(dir, "a.c", "#include \"daemon/a.h\"\n");
  write_file(dir, "b.h", "/* #include \"daemon/c.h\" is not an include */\n");
  write_file(dir, "b.c", "  #  include \"daemon/c.h\"\n#include \"http/a.h\"\n");
  write_file(dir, "c.c", "#include \"daemon/a.h\"\n");
  write_file(dir, "notes.txt", "#include \"daemon/zz.h\"\n");
  memset(&g, 0, sizeof(g));
  scan_dir(&g, dir, "daemon/");
  ASSERT_EQ(3, g.n); /* a, b, c; no zz, and http/a.h is not daemon/a.h */
  ASSERT(find_cycle(&g, cycle, sizeof(cycle)));
  ASSERT(strstr(cycle, "a -> b -> c -> a") || strstr(cycle, "b -> c -> a -> b") ||
         strstr(cycle, "c -> a -> b -> c"));
  g.edge[find(&g, "c")][find(&g, "a")] = 0;
  ASSERT(!find_cycle(&g, cycle, sizeof(cycle)));
}

/* Across directories: core includes nothing above it; store and http include only core. */
TEST(tree_layers_one_way)
{
  static const struct {
    const char *dir, *forbidden[3];
  } rules[] = {
      {"core", {"store/", "http/", "daemon/"}},
      {"store", {"http/", "daemon/", NULL}},
      {"http", {"store/", "daemon/", NULL}},
  };
  for (size_t r = 0; r < PC_ARRAY_SIZE(rules); r++) {
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/%s", PC_SRC_DIR, rules[r].dir);
    for (size_t k = 0; k < 3 && rules[r].forbidden[k]; k++) {
      graph_t g;
      memset(&g, 0, sizeof(g));
      scan_dir(&g, dir, rules[r].forbidden[k]);
      if (g.includes)
        unit__fail(__FILE__, __LINE__, "%s/%s (and %d include(s) of %s in all)", rules[r].dir,
                   g.first, g.includes, rules[r].forbidden[k]);
    }
  }
}
