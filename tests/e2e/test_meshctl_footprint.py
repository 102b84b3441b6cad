"""`meshctl footprint` end to end: the container arithmetic of the three placements, the defaults
from docs/performance.md, and RSS / CPU per request read from a running meshd's /metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import meshlib
from meshlib import base_config, http_request


@pytest.fixture(scope="module")
def meshd_binary():
    """Overrides conftest's session check: only the --admin test needs meshd."""
    return meshlib.meshd_bin()


def footprint(meshctl, *args) -> dict:
    r = meshlib.run([meshctl, "footprint", *[str(a) for a in args], "-o", "json"], timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


def test_worked_example(meshctl):
    # 5 pods with 2 agents: 15 containers; a third agent: 20; two of the three on 3 nodes' DaemonSets: 16.
    assert footprint(meshctl, "--nodes", 3, "--pods", 5, "--agents", 2, "--node-agents", 0)["sidecar"]["containers"] == 15
    out = footprint(meshctl, "--nodes", 3, "--pods", 5, "--agents", 3, "--node-agents", 2)
    assert out["sidecar"]["containers"] == 20
    assert out["hybrid"]["containers"] == 16
    assert out["node"]["containers"] == 5 + 3 * 3


def test_defaults_are_the_benchmark_figures(meshctl):
    out = footprint(meshctl, "--nodes", 2, "--pods", 10, "--agents", 1, "--node-agents", 1, "--rps", 2000)
    assert out["input"]["rssBytesPerAgent"] == 19 * 1024 * 1024
    assert out["input"]["cpuSecondsPer1000Requests"] == 0.033
    assert out["sidecar"]["memoryMiB"] == 10 * 19
    assert out["node"]["memoryMiB"] == 2 * 19
    assert out["sidecar"]["meshd"] == 10 and out["node"]["meshd"] == 2
    # 2000 req/s × 2 proxies × 0.033 s / 1000
    for p in ("sidecar", "node", "hybrid"):
        assert abs(out[p]["cpuCores"] - 0.132) < 1e-9
    assert abs(out["node"]["cpuCoresPerMeshd"] - 0.066) < 1e-9
    # The figures are the ones documented.
    # The defaults are documented with their source (a benchmark run); the figures in
    # docs/performance.md change with every run, so they are not compared here.
    doc = (Path(__file__).resolve().parents[2] / "docs" / "meshctl.md").read_text()
    assert "19 MiB" in doc and "0.033" in doc


def test_table_output(meshctl):
    r = meshlib.run([meshctl, "footprint", "--nodes", "3", "--pods", "5", "--agents", "3", "--node-agents", "2"], timeout=30)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    rows = {l.split()[0]: l.split() for l in lines if l.split() and l.split()[0] in ("sidecar", "node", "hybrid")}
    assert rows["sidecar"][1] == "20" and rows["node"][1] == "14" and rows["hybrid"][1] == "16", lines


@pytest.mark.parametrize("args", [
    ["--nodes", "0", "--pods", "5", "--agents", "2"],
    ["--nodes", "3", "--pods", "5", "--agents", "2", "--node-agents", "3"],
    ["--nodes", "3", "--pods", "5"],
])
def test_bad_input_is_refused(meshctl, args):
    r = meshlib.run([meshctl, "footprint", *args], timeout=30)
    assert r.returncode != 0
    assert "--" in r.stderr.decode()


def test_admin_reads_rss_and_cpu_per_request_from_meshd(meshctl, meshd_binary, start_meshd, backend):
    if not (os.path.isfile(meshd_binary) and os.access(meshd_binary, os.X_OK)):
        pytest.fail(f"meshd binary not found at {meshd_binary}: set MESHD_BIN", pytrace=False)
    m = start_meshd(base_config(services=[{"name": "py", "endpoints": [backend.addr]}],
                                routes=[{"match": {"authority": "py"}, "service": "py"}]))
    for _ in range(50):
        status, _, _ = http_request(m.outbound, "GET", "/", headers={"Host": "py"})
        assert status == 200
    admin = f"{m.admin[0]}:{m.admin[1]}"
    out = footprint(meshctl, "--nodes", 3, "--pods", 5, "--agents", 2, "--node-agents", 1, "--admin", admin, "--sample", "0.5s")
    rss = out["input"]["rssBytesPerAgent"]
    assert "measured" in out["input"]["rssSource"], out["input"]
    vmrss = next(int(l.split()[1]) * 1024 for l in Path(f"/proc/{m.pid}/status").read_text().splitlines()
                 if l.startswith("VmRSS:"))
    assert 0.5 * vmrss <= rss <= 2 * vmrss, (rss, vmrss)
    assert out["sidecar"]["memoryBytes"] == 5 * 2 * rss
    # No request during the 0.5 s sample: CPU per request falls back to the default, and says so.
    assert out["input"]["cpuSecondsPer1000Requests"] == 0.033
    assert "no request" in out["input"]["cpuSource"], out["input"]
    # Since start: 50 requests served, so CPU per 1000 requests is measured.
    out = footprint(meshctl, "--nodes", 3, "--pods", 5, "--agents", 2, "--admin", admin)
    assert "measured since start" in out["input"]["cpuSource"], out["input"]
    assert out["input"]["cpuSecondsPer1000Requests"] > 0


def test_admin_unreachable_is_a_clear_error(meshctl):
    port = meshlib.free_port()
    r = meshlib.run([meshctl, "footprint", "--nodes", "1", "--pods", "1", "--agents", "1", "--admin", f"127.0.0.1:{port}"],
                    timeout=30)
    assert r.returncode != 0
    assert "cannot reach meshd admin" in r.stderr.decode()
