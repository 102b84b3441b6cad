"""meshctl demo: starts a backend and meshd in both placements, compares hop latency, cleans up."""

import json
import os
import re
import subprocess
import time

from meshlib import meshctl_bin


def meshd_pids():
    out = subprocess.run(["pgrep", "-f", "meshctl-demo-"], capture_output=True, text=True)
    return set(out.stdout.split())


def test_demo_runs_both_placements_and_cleans_up():
    before = meshd_pids()
    env = dict(os.environ)
    # The proxied paths add latency over the direct one at the median. One second at 200 req/s on a
    # shared 2-core machine can invert a 0.1 ms difference (seen on CI): up to three demos, each
    # checked in full, and the order must hold in one of them.
    for attempt in range(3):
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
        if targets["sidecar"]["p50"] > targets["direct"]["p50"] and targets["node"]["p50"] > targets["direct"]["p50"]:
            break
    assert targets["sidecar"]["p50"] > targets["direct"]["p50"], targets
    assert targets["node"]["p50"] > targets["direct"]["p50"], targets
    # Every meshd → meshd hop was mTLS (the callees are strict): handshakes done, none refused, and
    # every proxied request passed the authorization policy.
    assert "spiffe://demo.local/ns/demo/sa/client" in r.stdout, r.stdout
    for name in ("callee's sidecar", "node proxy"):
        m = re.search(rf"mTLS at the {name}: (\d+) handshakes, (\d+) refused, (\d+) requests authorized", r.stderr)
        assert m, r.stderr
        assert int(m.group(1)) >= 1 and int(m.group(2)) == 0 and int(m.group(3)) >= 150, m.group(0)
    # Every meshd it started is gone.
    time.sleep(0.5)
    assert meshd_pids() - before == set()


def test_demo_without_mtls():
    r = subprocess.run([meshctl_bin(), "demo", "--no-mtls", "--seconds", "1", "--rate", "100", "-o", "json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    assert all(t["errors"] == 0 for t in report["targets"]), report
    assert "mTLS" not in r.stdout + r.stderr
