"""deploy/lab/run --quick: both placements on a two-node cluster network made of network namespaces.

The lab builds two node namespaces (each a bridge and a pod CIDR), four pod namespaces (client on node
1; server, grpc and client2 on node 2) and the node link, runs meshd as sidecars (uid 4140) and as node
proxies with mTLS between them, and measures every path. Checked here:

- every path (direct, sidecar, node; cross-node and same-node) carries HTTP/1.1 with no error and gRPC
  (unary and a server stream) correctly;
- with `meshd capture` (when the binary has it): the app, unaware of meshd, calls the server pod's own
  address and the call goes through each placement;
- the node-proxy upgrade with --takeover (when the binary has it) under load loses nothing; the sidecar
  upgrade (a pod restart) is measured;
- the sidecar works as uid 4140 without any capability, as deploy/sidecar/orders.yaml runs it (the
  lab's self-test; the lab works around a meshd that needs CAP_NET_ADMIN, this test reports it);
- the run leaves nothing behind (no lab namespace, root-namespace link or process), a second run starts
  clean and removes what a killed run left (a stale `mlab-` namespace with a process in it), and an
  interrupted run (SIGINT) cleans up too.

Needs root (skipped otherwise, saying so). The lab runs happen in module fixtures (outside the per-test
watchdog: each takes about a minute); the tests only read their results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import meshlib

LAB = meshlib.REPO / "deploy" / "lab" / "run"
RUN_TIMEOUT = 300

pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("grpc_tools", reason="Python package 'grpcio-tools' is not installed (pip install -r tests/e2e/requirements.txt)")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces, veths, iptables)")


def lab_env() -> dict:
    env = dict(os.environ)
    env["MESHD_BIN"] = meshlib.meshd_bin()
    env["MESHCTL_BIN"] = meshlib.meshctl_bin()
    return env


def run_lab(out: Path, *extra) -> subprocess.CompletedProcess:
    p = subprocess.Popen([str(LAB), "--quick", "--out", str(out), *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=lab_env(), start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)  # the lab cleans up on SIGTERM
        stdout, stderr = p.communicate(timeout=60)
        raise AssertionError(f"the lab ran longer than {RUN_TIMEOUT}s:\n{stderr.decode()[-3000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def leftovers() -> dict:
    nss = [line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
           if line.startswith("mlab-")]
    links = [line for line in subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout.splitlines()
             if ": mlab-" in line]
    procs = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/tmp/mlab-run-" in cmd or ("deploy/lab/" in cmd and "pytest" not in cmd):
            procs.append(f"{pid}: {cmd[:200]}")
    return {"namespaces": nss, "links": links, "processes": procs}


def nothing_left() -> None:
    left = leftovers()
    assert not any(left.values()), f"the lab left things behind: {left}"


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab1")
    r = run_lab(out)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return r, results, out, leftovers()


@pytest.fixture(scope="module")
def second(first, tmp_path_factory):
    """A second run, after a "killed" one: a stale lab namespace with a process inside it."""
    stale = "mlab-stale-test"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "600"], start_new_session=True)
    out = tmp_path_factory.mktemp("lab2")
    try:
        r = run_lab(out)
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else None
    return r, results, leftovers()


def explain(r, results) -> str:
    return (f"exit {r.returncode}; problems: {results and results.get('problems')}\n"
            f"stdout:\n{r.stdout.decode()[-4000:]}\nstderr:\n{r.stderr.decode()[-3000:]}")


def test_every_path_carries_http1_and_grpc(first):
    r, results, out, _ = first
    assert results is not None, explain(r, results)
    assert r.returncode == 0 and results["ok"], explain(r, results)
    assert results["settings"]["mtls"] is True
    ids = {p["id"] for p in results["paths"]}
    expected = {f"{loc}/{pl}" for loc in ("cross", "same") for pl in ("direct", "sidecar", "node")}
    assert expected <= ids, ids
    for p in results["paths"]:
        h = p["http"]
        assert h["errors"] == 0 and h["ok"] > 0, (p["id"], h)
        assert h["p50"] is not None and h["p50"] <= h["p99"] <= h["max"], (p["id"], h)
        g = p["grpc"]
        assert g["ok"] and g["unary"]["failed"] == 0 and g["stream"]["ok"], (p["id"], g)
        for k in ("p50", "p90", "p99", "p999", "max"):
            assert p["added"][k] is not None, (p["id"], p["added"])
    # the outputs a reader uses
    assert (out / "latency.svg").read_text().startswith("<svg")
    assert "cross/sidecar" in r.stdout.decode() and "left behind: 0 namespaces" in r.stdout.decode()


def test_resources_and_footprint(first):
    _, results, _, _ = first
    res = results["resources"]
    assert res["sidecar"]["count"] == 4 and res["node"]["count"] == 2, res
    for placement in ("sidecar", "node"):
        for name, p in res[placement]["proxies"].items():
            assert p["rssMiB"] > 1, (name, p)
        assert res[placement]["cpuSecondsTotal"] > 0
    fp = results["footprint"]
    assert fp["sidecar"]["containers"] == 8 and fp["node"]["containers"] == 6, fp  # P(1+k), P + n·k


def test_sidecar_runs_without_capabilities(first):
    """The sidecar runs as uid 4140 with no capability (deploy/sidecar/orders.yaml); the lab's self-test
    found that this meshd resets every accepted connection then (and the lab worked around it)."""
    _, results, _, _ = first
    assert not results["features"]["sidecarNeedsNetAdmin"], (
        "meshd run as uid 4140 without CAP_NET_ADMIN resets every connection: it sets SO_DEBUG on accepted "
        "sockets (`.socketOption(.tcp_nodelay)` is SOL_SOCKET option 1 = SO_DEBUG; TCP_NODELAY is "
        "`.tcpOption(.tcp_nodelay)`), which needs CAP_NET_ADMIN")


def test_capture_with_the_app_unaware(first):
    _, results, _, _ = first
    assert results["features"]["capture"], "the lab found no `meshd capture` in this meshd"
    ids = {p["id"] for p in results["paths"] if p["mode"] == "capture"}
    assert ids == {"cross/sidecar+capture", "same/sidecar+capture", "cross/node+capture", "same/node+capture"}, ids
    for p in results["paths"]:
        if p["mode"] == "capture":
            assert p["authority"] is None and ":8080/" in p["url"]  # the app calls the pod's own address
            assert p["ok"], p


def test_upgrades(first):
    _, results, _, _ = first
    up = results["upgrade"]
    sc = up["sidecar"]["http"]
    assert sc["requests"] > 0 and "downtimeMs" in sc, up["sidecar"]
    assert results["features"]["takeover"], "the lab found no --takeover in this meshd"
    node = up["node"]
    assert node["http"]["requests"] > 0 and node["http"]["failed"] == 0, node
    assert node["http"]["byKind"].get("refused", 0) == 0, node
    assert node["grpcStream"]["ok"], node
    assert all(h["oldExitCode"] == 0 for h in node["handovers"]), node


def test_nothing_left_behind_and_a_second_run_starts_clean(first, second):
    _, _, _, after_first = first
    assert not any(after_first.values()), f"after the first run: {after_first}"
    r, results, after_second = second
    assert results is not None and r.returncode == 0, explain(r, results)
    swept = results["settings"]["sweptAtStart"]
    assert swept["namespaces"] == ["mlab-stale-test"] and swept["processes"] >= 1, swept
    assert not any(after_second.values()), f"after the second run: {after_second}"
    assert results["leftovers"] == {"namespaces": [], "links": [], "processes": 0}


def test_an_interrupted_run_cleans_up(tmp_path):
    p = subprocess.Popen([str(LAB), "--quick", "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=lab_env(), start_new_session=True)
    try:
        # wait until the network exists, then interrupt the run in the middle of its work
        meshlib.wait_for(lambda: any(ln.startswith("mlab-client2") for ln in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()), timeout=60,
            what="the lab's namespaces")
        time.sleep(3)
        os.kill(p.pid, signal.SIGINT)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, stderr.decode()[-2000:]
    assert b"interrupted" in stderr
    nothing_left()
