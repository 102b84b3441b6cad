"""`meshctl latency` end to end: the real binary against a Python backend with a known delay, and meshd.

- a backend answering after a fixed 5 ms is measured with p50 within 5–6 ms;
- a backend serialising requests at 10 ms each, asked for 200 req/s on one connection, shows the
  queueing in open loop (p99 ≫ 10 ms) and hides it in closed loop (p99 near 10 ms);
- the direct path against the path through meshd's outbound listener (--target and --via), JSON
  shape, the added latency per hop, the SVG plot, and clear errors for bad input.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

import meshlib
from meshlib import base_config


@pytest.fixture(scope="module")
def meshd_binary():
    """Overrides conftest's session check: only the tests that start meshd need the binary."""
    return meshlib.meshd_bin()


def latency(meshctl, *args, timeout=60.0):
    r = meshlib.run([meshctl, "latency", *[str(a) for a in args]], timeout=timeout)
    return r


def latency_json(meshctl, *args, timeout=60.0) -> dict:
    r = latency(meshctl, *args, "-o", "json", timeout=timeout)
    assert r.returncode == 0, f"meshctl latency exited {r.returncode}: {r.stderr.decode()}\n{r.stdout.decode()}"
    return json.loads(r.stdout)


# A backend whose latency is known: it answers every request DELAY_MS after the request line arrived
# (http.server does the HTTP; the answer is one write). With "serial" it has a single worker: requests
# are served one at a time in arrival order, DELAY_MS each, over all connections.
DELAY_BACKEND = r"""
import sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

delay = float(sys.argv[1]) / 1000
serial = sys.argv[2] == "serial"
lock = threading.Lock()
free_at = [0.0]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def parse_request(self):
        self.arrived = time.monotonic()
        return super().parse_request()

    def do_GET(self):
        if serial:
            with lock:
                free_at[0] = max(self.arrived, free_at[0]) + delay
                due = free_at[0]
        else:
            due = self.arrived + delay
        left = due - time.monotonic()
        if left > 0:
            time.sleep(left)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


srv = Server(("127.0.0.1", 0), Handler)
print(f"PORT {srv.server_address[1]}", flush=True)
srv.serve_forever(poll_interval=0.2)
"""


class DelayBackend:
    def __init__(self, delay_ms: int, serial: bool = False):
        self.proc = meshlib.popen([sys.executable, "-c", DELAY_BACKEND, str(delay_ms), "serial" if serial else "parallel"],
                                  stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            meshlib.kill_group(self.proc)
            raise RuntimeError(f"delay backend did not start: {line!r}")
        self.addr = f"127.0.0.1:{int(m.group(1))}"

    def stop(self):
        meshlib.kill_group(self.proc)


@pytest.fixture(scope="module")
def slow5():
    b = DelayBackend(5)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def slow10():
    b = DelayBackend(10, serial=True)
    yield b
    b.stop()


def test_fixed_5ms_backend_p50_between_5_and_6_ms(meshctl, slow5):
    # 500 req/s keeps the client's event loop busy enough that a request is not also paying for a CPU's
    # wake-up from idle. The machine is shared with builds and other tests: a disturbed run is retried
    # (3 runs at most); the lower bound must hold in every run (latency is never under the backend's delay).
    p50s = []
    for _ in range(3):
        out = latency_json(meshctl, "--target", f"direct=http://{slow5.addr}/", "--rate", 500, "--connections", 8,
                           "--duration", "3s", "--warmup", "1s")
        t = out["targets"][0]
        assert t["errors"] == 0, t
        assert t["ok"] == 1500, t
        assert abs(t["achievedRate"] - 500) <= 25, t
        assert t["p50"] >= 5.0, t
        assert t["p50"] <= t["p90"] <= t["p99"] <= t["p999"] <= t["max"], t
        p50s.append(t["p50"])
        print(f"p50 {t['p50']} ms, p99 {t['p99']} ms, scheduler lag p50 {t['sendDelay']['p50']} ms")
        if t["p50"] <= 6.0:
            break
    assert any(5.0 <= p <= 6.0 for p in p50s), f"p50 per run (ms): {p50s}"


def test_coordinated_omission_open_loop_vs_closed_loop(meshctl, slow10):
    # One connection and 10 ms per request: at most 100 req/s, and we ask for 200 req/s.
    common = ["--target", f"slow=http://{slow10.addr}/", "--rate", 200, "--connections", 1, "--duration", "2s",
              "--warmup", "0s"]
    open_loop = latency_json(meshctl, *common)["targets"][0]
    closed = latency_json(meshctl, *common, "--closed-loop")["targets"][0]
    assert open_loop["errors"] == 0 and closed["errors"] == 0, (open_loop, closed)
    # Open loop: request k waits for the k − 1 before it, so latency grows over the run to ~2 s.
    assert open_loop["p99"] > 1000, open_loop
    assert open_loop["p50"] > 200, open_loop
    # Closed loop times from the actual send: every request is ~10 ms, the queueing is invisible.
    assert 10.0 <= closed["p50"] < 14.0, closed
    assert closed["p99"] < 25.0, closed
    assert open_loop["p99"] > 20 * closed["p99"]
    # Both only achieve what the backend can do.
    assert 70 <= open_loop["achievedRate"] <= 110, open_loop


@pytest.fixture(scope="module")
def sidecar(start_meshd_module, meshd_binary, slow5):
    if not (os.path.isfile(meshd_binary) and os.access(meshd_binary, os.X_OK)):
        pytest.fail(f"meshd binary not found at {meshd_binary}: set MESHD_BIN", pytrace=False)
    cfg = base_config(services=[{"name": "orders", "endpoints": [slow5.addr]}],
                      routes=[{"match": {"authority": "orders"}, "service": "orders"}])
    return start_meshd_module(cfg, name="latency-sidecar")


def test_direct_against_meshd_hop_json_table_and_plot(meshctl, slow5, sidecar, tmp_path):
    host, port = sidecar.outbound
    plot = tmp_path / "latency.svg"
    out = latency_json(meshctl, "--target", f"direct=http://{slow5.addr}/", "--target", f"sidecar=http://{host}:{port}/",
                       "--via", f"via-sidecar={host}:{port}", "--authority", "orders", "--rate", 100,
                       "--connections", 4, "--duration", "2s", "--warmup", "1s", "--plot", plot)
    assert out["settings"]["mode"] == "open-loop"
    assert out["settings"]["rate"] == 100
    assert out["settings"]["authority"] == "orders"
    names = [t["name"] for t in out["targets"]]
    assert names == ["direct", "sidecar", "via-sidecar"]
    for t in out["targets"]:
        assert t["errors"] == 0, t
        assert t["ok"] == 200, t
        for k in ("p50", "p90", "p99", "p999", "max"):
            assert isinstance(t[k], float | int) and t[k] >= 5.0, (k, t)
            assert k in t["added"], t
        assert t["host"] == "orders"
    base = out["targets"][0]
    assert base["baseline"] is True and base["added"]["p50"] == 0
    for t in out["targets"][1:]:
        assert t["baseline"] is False
        assert abs(t["added"]["p50"] - (t["p50"] - base["p50"])) < 0.002, t
    # meshd really carried the proxied requests (Host: orders routed to the backend).
    assert sidecar.metric("meshd_requests_total", direction="outbound", service="orders", status_class="2xx") >= 400

    svg = ET.parse(plot).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert svg.tag == ns + "svg"
    assert len(svg.findall(f".//{ns}polyline")) == 3
    labels = [t.text for t in svg.findall(f".//{ns}text")]
    for label in ("direct", "sidecar", "via-sidecar", "0%", "90%", "99%"):
        assert label in labels, labels


def test_table_output_names_targets_and_added_latency(meshctl, slow5, sidecar):
    host, port = sidecar.outbound
    r = latency(meshctl, "--target", f"direct=http://{slow5.addr}/", "--target", f"sidecar=http://{host}:{port}/",
                "--authority", "orders", "--rate", 50, "--connections", 2, "--duration", "1s", "--warmup", "0.5s")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    for word in ("TARGET", "ACHIEVED/S", "P50-MS", "P99.9-MS", "MAX-MS", "added latency against direct", "sidecar"):
        assert word in out, out


def test_errors_are_counted_and_unreachable_targets_reported(meshctl, slow5, sidecar):
    host, port = sidecar.outbound
    # No route for this authority: meshd answers 404, counted as status errors.
    out = latency(meshctl, "--target", f"nowhere=http://{host}:{port}/", "--authority", "no-such-service", "--rate", 50,
                  "--connections", 2, "--duration", "1s", "--warmup", "0s", "-o", "json")
    assert out.returncode == 1, out.stderr.decode()  # nothing succeeded
    t = json.loads(out.stdout)["targets"][0]
    assert t["ok"] == 0 and t["errorKinds"]["status"] == 50, t
    assert t["p50"] is None
    # Nothing listens: the target is reported, not measured.
    dead = meshlib.free_port()
    out = latency(meshctl, "--target", f"dead=http://127.0.0.1:{dead}/", "--rate", 10, "--duration", "0.5s", "--warmup", "0s",
                  "-o", "json")
    assert out.returncode == 1
    t = json.loads(out.stdout)["targets"][0]
    assert "cannot connect" in t["failure"], t


@pytest.mark.parametrize("args,message", [
    (["--target", "x=http://127.0.0.1:1/", "--http2"], "--http2 is not supported"),
    ([], "--target or --via"),
    (["--via", "127.0.0.1:4140"], "--authority"),
    (["--target", "x=https://127.0.0.1:1/"], "only http://"),
    (["--target", "x=http://127.0.0.1:1/", "--rate", "0"], "--closed-loop"),
    (["--target", "x=http://127.0.0.1:1/", "--target", "x=http://127.0.0.1:2/"], "two targets"),
    (["--target", "x=http://127.0.0.1:1/", "--duration", "soon"], "duration"),
])
def test_bad_arguments_are_refused_clearly(meshctl, args, message):
    r = latency(meshctl, *args, timeout=10)
    assert r.returncode != 0
    assert message in r.stderr.decode(), r.stderr.decode()
