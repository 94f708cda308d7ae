#!/usr/bin/env python3
"""contrib/prometheus: the rules load and their tests pass, and every metric the rules and the
Grafana dashboard name is one a running pullcache really exports.

- `promtool check rules rules.yml` and `promtool test rules tests.yml` (synthetic series);
- every alert has a runbook annotation and is seen firing in tests.yml;
- the dashboard is structurally sound (unique panel ids, refIds, a query per target, the grid);
- every `pullcache_*` name in a rule, a panel query or a template query is exported on /metrics
  by a pullcache that has served a pull, with max_size set (so the budget gauges exist), and
  every `pullcache:*` name is a recording rule of rules.yml. The same check is run on a copy of
  the dashboard with one panel naming a metric that does not exist, and must catch it.
"""
import copy
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check, http  # noqa: E402

KIT = os.path.join(pclib.SRC, "contrib", "prometheus")
NAME_RE = re.compile(r"\bpullcache(?:_[a-zA-Z0-9_]+|:[a-zA-Z0-9_:]+)")


def promtool(*args):
    p = subprocess.run(["promtool"] + list(args), cwd=KIT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120)
    out = p.stdout.decode("utf-8", "replace")
    check(p.returncode == 0, "promtool %s failed (%d):\n%s" % (" ".join(args), p.returncode, out))
    return out


def load_yaml(path):
    """YAML as Python data, through Debian's python3-yaml (scripts/bootstrap installs it)."""
    p = subprocess.run([pclib.PYTHON, "-c", "import json, sys, yaml; "
                        "json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)", path],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    check(p.returncode == 0, "reading %s: %s" % (path, p.stderr.decode()))
    return json.loads(p.stdout)


def rule_exprs(rules):
    """[(where, expr)] of every rule, and the names recorded."""
    out, recorded = [], set()
    for g in rules["groups"]:
        for r in g["rules"]:
            out.append((r.get("alert") or r.get("record"), r["expr"]))
            if "record" in r:
                recorded.add(r["record"])
    return out, recorded


def dashboard_exprs(dash):
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append(("panel %r" % p["title"], t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        out.append(("variable %r" % v["name"], q["query"] if isinstance(q, dict) else q))
    return out


def unknown_names(exprs, exported, recorded):
    """[(where, name)] for every name in exprs that is neither exported nor recorded."""
    bad = []
    for where, e in exprs:
        for n in NAME_RE.findall(e):
            known = n in recorded if ":" in n else n in exported
            if not known:
                bad.append((where, n))
    return bad


def exported_names(server):
    """Family names (# TYPE) and sample names (histogram suffixes included) on /metrics."""
    r = http("GET", server.url + "/metrics")
    check(r.status == 200, "/metrics answered %d" % r.status)
    names = set()
    for line in r.body.decode().splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def check_dashboard_structure(dash):
    check(dash.get("title") and dash.get("uid") and isinstance(dash.get("schemaVersion"), int),
          "dashboard title, uid, schemaVersion")
    panels = dash.get("panels") or []
    check(len(panels) >= 10, "the dashboard has %d panels" % len(panels))
    ids = [p.get("id") for p in panels]
    check(len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids), "panel ids: %s" % ids)
    for p in panels:
        check(p.get("title") and p.get("type") in ("timeseries", "stat", "gauge", "table", "bargauge"),
              "panel %s: title and type" % p.get("id"))
        g = p.get("gridPos", {})
        check(all(isinstance(g.get(k), int) for k in "xywh") and g["x"] + g["w"] <= 24,
              "panel %r: gridPos %s" % (p["title"], g))
        targets = p.get("targets") or []
        check(targets, "panel %r has no query" % p["title"])
        refs = [t.get("refId") for t in targets]
        check(len(set(refs)) == len(refs) and all(refs), "panel %r refIds %s" % (p["title"], refs))
        for t in targets:
            check(t.get("expr", "").strip(), "panel %r: an empty query" % p["title"])
            check(NAME_RE.search(t["expr"]), "panel %r names no pullcache metric: %r" % (p["title"], t["expr"]))


def test_promtool_rules():
    out = promtool("check", "rules", "rules.yml")
    check("SUCCESS" in out, "promtool check rules: %s" % out)
    out = promtool("test", "rules", "tests.yml")
    check("SUCCESS" in out, "promtool test rules: %s" % out)
    rules = load_yaml(os.path.join(KIT, "rules.yml"))
    tests = load_yaml(os.path.join(KIT, "tests.yml"))
    firing = set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            if a.get("exp_alerts"):
                firing.add(a["alertname"])
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    for r in alerts:
        check(r.get("annotations", {}).get("runbook", "").strip(), "alert %s has no runbook" % r["alert"])
        check(r["alert"] in firing, "alert %s is never seen firing in tests.yml" % r["alert"])
    wanted = ["UpstreamUnreachable", "RateLimitBreakerOpen", "StoreNearBudget", "StoreDiskNearMinFree",
              "DigestMismatch", "PassthroughFills", "FillsStuck", "ConfigReloadFailed", "ReadinessFlapping"]
    names = {r["alert"] for r in alerts}
    check(all("Pullcache" + w in names for w in wanted), "alerts missing: %s" % [w for w in wanted if "Pullcache" + w not in names])


def test_rules_and_dashboard_name_exported_metrics():
    d = pclib.make_images("tiny")
    imgs = pclib.load_images(d)
    rules = load_yaml(os.path.join(KIT, "rules.yml"))
    with open(os.path.join(KIT, "dashboard.json")) as f:
        dash = json.load(f)
    check_dashboard_structure(dash)
    with pclib.TestEnv("promkit") as env:
        up = env.start_upstream(d)
        conf = env.path("pc.conf")
        with open(conf, "w") as f:
            f.write("[store]\nmax_size = 1G\nmin_free = 0\n[upstream \"registry.k8s.io\"]\nurl = %s\n" % up.url)
        pc = env.start_pullcache(["--config", conf])
        img = imgs["pause"]
        r = http("GET", pc.url + "/v2/pause/manifests/" + img["tag"])
        check(r.status == 200, "manifest: %d" % r.status)
        layer = [b for b in img["blobs"] if b["kind"] == "layer"][0]
        r = http("GET", pc.url + "/v2/pause/blobs/" + layer["digest"])
        check(r.status == 200, "blob: %d" % r.status)
        exported = exported_names(pc)
    rexprs, recorded = rule_exprs(rules)
    dexprs = dashboard_exprs(dash)
    bad = unknown_names(rexprs + dexprs, exported, recorded)
    check(not bad, "names /metrics does not export (or no rule records): %s" % bad)
    used = {n for _, e in rexprs + dexprs for n in NAME_RE.findall(e)}
    check(len(used) >= 25, "the kit names only %d metrics" % len(used))
    # the check itself catches a panel naming a metric that does not exist
    broken = copy.deepcopy(dash)
    broken["panels"][0]["targets"][0]["expr"] = "rate(pullcache_no_such_metric_total[5m])"
    broken["panels"][1]["targets"][0]["expr"] = "pullcache:no_such_record:rate5m"
    bad = unknown_names(dashboard_exprs(broken), exported, recorded)
    check(sorted(n for _, n in bad) == ["pullcache:no_such_record:rate5m", "pullcache_no_such_metric_total"],
          "the name check missed a nonexistent metric: %s" % bad)


if __name__ == "__main__":
    pclib.run_tests([test_promtool_rules, test_rules_and_dashboard_name_exported_metrics])
