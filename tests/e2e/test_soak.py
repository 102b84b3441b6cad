"""Soak with chaos, the 2-minute CI version of bench/soak.sh (issue 15).

bench/soak.py runs mixed traffic (HTTP/1.1, HTTP/2, gRPC unary / server-streaming / bidi, WebSocket, opaque
TCP, a stalling route, malformed requests) through both placements — client sidecar → the pod's sidecar →
app, and client pod → node proxy → `via` the pods' node proxy → app — while pods are SIGKILLed and
restarted, a backend answers 503s and stalls, the endpoints file churns and three config files are
rewritten every few seconds (some non-atomically, some invalid). See the module's docstring for what is
lost, expected and hung.

Asserted, over SOAK_SECONDS (default 120): no request lost where it was retryable or unexplained by an
injected fault, no request hung (every client has a timeout above every bound meshd is configured with),
every traffic kind served through both placements, every malformed request answered with its documented
status, every meshd alive to the end and stopping cleanly, and RSS and open descriptors of every meshd that
lived through the run grown less than 5 % from the first window after warm-up to the last.

The run's report (the same tables bench/soak.sh prints) is printed and written to the test's tmp dir with
results.json and every process's log. Skipped, saying why, without grpcio, grpcio-tools, h2 or websockets.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest

pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("grpc_tools", reason="Python package 'grpcio-tools' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("h2", reason="Python package 'h2' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("websockets", reason="Python package 'websockets' is not installed (pip install -r tests/e2e/requirements.txt)")

from meshlib import REPO  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import soak  # noqa: E402

SOAK_SECONDS = int(os.environ.get("SOAK_SECONDS", "120"))
# start-up (~3 s), workers finishing their last operation (≤ 15 s), stopping every process (≤ 15 s)
OVERHEAD_SECONDS = 90


@pytest.mark.slow
def test_soak_with_chaos(tmp_path):
    # Longer than the suite's per-test watchdog (E2E_TEST_TIMEOUT, 120 s): re-arm it for this test's own
    # bound; conftest's hook disarms it afterwards as for every test.
    signal.alarm(max(int(os.environ.get("E2E_TEST_TIMEOUT", "120")), SOAK_SECONDS + OVERHEAD_SECONDS))
    res = soak.run(SOAK_SECONDS, tmp_path / "run")
    text = soak.report(res)
    (tmp_path / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (tmp_path / "report.md").write_text(text)
    print(text)
    print(f"soak logs and results: {tmp_path}")

    kinds = res["kinds"]
    lost = {f"{k} via {p}": v["lost"] for k, ps in kinds.items() for p, v in ps.items() if v["lost"]}
    hung = {f"{k} via {p}": v["hangs"] for k, ps in kinds.items() for p, v in ps.items() if v["hangs"]}
    first = "\n".join(f"  t={f['t0']:.1f}s {f['kind']} via {f['placement']} ({f['class']}): {f['error']}"
                      for f in res["failures"] if f["class"] != "expected")
    assert not res["driver_errors"], f"the soak driver itself failed: {res['driver_errors'][:5]}"
    assert not hung, f"requests hung: {hung}\n{first}\n\n{text}"
    assert not lost, f"requests lost: {lost}\n{first}\n\n{text}"
    assert res["pass"], "\n".join(res["problems"]) + "\n\n" + text
