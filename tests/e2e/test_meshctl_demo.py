"""meshctl demo: starts a backend and meshd in both placements, compares hop latency, cleans up."""

import json
import os
import subprocess
import time

from meshlib import meshctl_bin


def meshd_pids():
    out = subprocess.run(["pgrep", "-f", "meshctl-demo-"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_demo_runs_both_placements_and_cleans_up():
    before = meshd_pids()
    env = dict(os.environ)
    r = subprocess.run(
        [meshctl_bin(), "demo", "--seconds", "1", "--rate", "200", "-o", "json"],
        capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # The route table comes first, then the latency report as JSON.
    assert "ROUTE" in r.stdout and "demo" in r.stdout
    report = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    targets = {t["name"]: t for t in report["targets"]}
    assert set(targets) == {"direct", "sidecar", "node"}, targets.keys()
    for name, t in targets.items():
        assert t["errors"] == 0, (name, t)
        assert 150 <= t["achievedRate"] <= 250, (name, t)
        for k in ("p50", "p90", "p99", "p999", "max"):
            assert t[k] > 0, (name, k, t)
    # The proxied paths add latency over the direct one at the median.
    assert targets["sidecar"]["p50"] > targets["direct"]["p50"]
    assert targets["node"]["p50"] > targets["direct"]["p50"]
    # Every meshd it started is gone.
    time.sleep(0.5)
    assert meshd_pids() - before == set()
