#!/usr/bin/python3
"""`bench/compare --check`: instruction counts against bench/baseline.json. Fed fake result sets
(no server, no valgrind): within the +10% tolerance it passes, over it (pullcache or nginx) it
fails, a baseline figure the result lacks fails, a figure that shrank passes with a note; the
committed baseline is complete (every figure of both servers) and passes against itself.

    python3 tests/e2e/test_bench_check.py [test ...]
"""

import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pclib  # noqa: E402
from pclib import check  # noqa: E402

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARE = os.path.join(SRC, "bench", "compare")
BASE = {"pullcache": {"mget": 40000.0, "mhead": 38000.0, "blob": 3000.0, "fill": 2.0e7},
        "nginx": {"mget": 17000.0, "mhead": 15000.0, "blob": 1200.0}}


def run_check(result, baseline=BASE):
    with tempfile.TemporaryDirectory(prefix="benchcheck.") as d:
        rp, bp = os.path.join(d, "result.json"), os.path.join(d, "baseline.json")
        with open(rp, "w") as f:
            json.dump(result, f)
        with open(bp, "w") as f:
            json.dump(baseline, f)
        r = subprocess.run([sys.executable, COMPARE, "--check", "--result", rp, "--baseline", bp],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def scaled(server, key, factor):
    r = json.loads(json.dumps(BASE))
    r[server][key] *= factor
    return r


def test_same_passes():
    rc, out = run_check(BASE)
    check(rc == 0, "identical figures must pass: %d\n%s" % (rc, out))
    check("passed" in out, out)


def test_within_tolerance_passes():
    for server, key in (("pullcache", "mget"), ("pullcache", "fill"), ("nginx", "blob")):
        rc, out = run_check(scaled(server, key, 1.09))
        check(rc == 0, "+9%% on %s %s must pass: %d\n%s" % (server, key, rc, out))


def test_over_tolerance_fails():
    for server, key in (("pullcache", "mget"), ("pullcache", "mhead"), ("pullcache", "blob"),
                        ("pullcache", "fill"), ("nginx", "mget")):
        rc, out = run_check(scaled(server, key, 1.11))
        check(rc == 1, "+11%% on %s %s must fail: %d\n%s" % (server, key, rc, out))
        check("FAIL" in out and key in out, out)


def test_missing_figure_fails():
    r = json.loads(json.dumps(BASE))
    del r["pullcache"]["mhead"]
    rc, out = run_check(r)
    check(rc == 1, "a figure the result lacks must fail: %d\n%s" % (rc, out))
    check("MISSING" in out, out)


def test_shrunk_figure_passes_with_note():
    rc, out = run_check(scaled("pullcache", "mget", 0.5))
    check(rc == 0, "a smaller count passes: %d\n%s" % (rc, out))
    check("update the baseline" in out, out)


def test_unreadable_or_empty_is_an_error():
    rc, out = run_check(BASE, baseline={})
    check(rc == 2, "an empty baseline is an error, not a pass: %d\n%s" % (rc, out))
    r = subprocess.run([sys.executable, COMPARE, "--check", "--result", "/nonexistent/r.json"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    check(r.returncode == 2, "a missing result file is an error: %d %s" % (r.returncode, r.stderr))


def test_committed_baseline_complete():
    with open(os.path.join(SRC, "bench", "baseline.json")) as f:
        b = json.load(f)
    for key in ("mget", "mhead", "blob", "fill"):
        v = b.get("pullcache", {}).get(key)
        check(isinstance(v, (int, float)) and v > 0, "baseline pullcache %s: %r" % (key, v))
    for key in ("mget", "mhead", "blob"):
        v = b.get("nginx", {}).get(key)
        check(isinstance(v, (int, float)) and v > 0, "baseline nginx %s: %r" % (key, v))
    rc, out = run_check(b, baseline=b)
    check(rc == 0, "the committed baseline against itself: %d\n%s" % (rc, out))


if __name__ == "__main__":
    sys.exit(pclib.run_tests([test_same_passes, test_within_tolerance_passes,
                              test_over_tolerance_fails, test_missing_figure_fails,
                              test_shrunk_figure_passes_with_note,
                              test_unreadable_or_empty_is_an_error,
                              test_committed_baseline_complete]))
