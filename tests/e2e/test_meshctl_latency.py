"""`meshctl latency` end to end: the real binary against a Python backend with a known delay, and meshd.

- a backend answering after a fixed 5 ms is measured with p50 within 5–6 ms;
- a backend serialising requests at 10 ms each, asked for 200 req/s on one connection, shows the
  queueing in open loop (p99 ≫ 10 ms) and hides it in closed loop (p99 near 10 ms);
- the direct path against the path through meshd's outbound listener (--target and --via), JSON
  shape, the added latency per hop, the SVG plot, and clear errors for bad input;
- --http2 (h2c, prior knowledge) against nginx: the requested rate with no errors, `:authority` from
  --authority, GOAWAYs (nginx's keepalive_requests) absorbed without errors; against `meshctl
  delay-backend --http2` (5 ms): p50 within 5–8 ms (debug builds); against HTTP/1.1-only servers:
  reported, no hang.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
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


# --------------------------------------------------------------------------------------------
# --http2


H2_SERVER = """\
    server {{
        listen 127.0.0.1:{port} http2{default};
        server_name {name};
{extra}        location / {{ return {status} "{name}\\n"; }}
    }}
"""


class H2Nginx:
    """nginx (1.22) serving h2c with prior knowledge (`listen … http2` without ssl), plus one plain HTTP/1.1
    server. `h2`: 200 on every path; `goaway`: the same, but a connection is closed with GOAWAY after 50
    requests (keepalive_requests); `routed`: 200 for `:authority` orders, 404 for any other; `http1`: an
    HTTP/1.1-only listener."""

    def __init__(self, workdir):
        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {n: meshlib.free_port() for n in ("h2", "goaway", "routed", "http1")}
        servers = "".join([
            H2_SERVER.format(port=self.ports["h2"], default="", name="h2", extra="", status=200),
            H2_SERVER.format(port=self.ports["goaway"], default="", name="goaway", status=200,
                             extra="        keepalive_requests 50;\n"),
            H2_SERVER.format(port=self.ports["routed"], default="", name="orders", extra="", status=200),
            H2_SERVER.format(port=self.ports["routed"], default=" default_server", name="other", extra="", status=404),
            meshlib.NGINX_SERVER.format(port=self.ports["http1"], body="http1"),
        ])
        conf = workdir / "nginx.conf"
        conf.write_text(meshlib.NGINX_CONF.format(d=workdir, servers=servers))
        self.proc = meshlib.popen(["/usr/sbin/nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)],
                                  stdout=open(workdir / "stdout.log", "wb"), stderr=open(workdir / "stderr.log", "wb"))
        try:
            for p in self.ports.values():
                meshlib.wait_port("127.0.0.1", p, 10.0)
        except Exception:
            self.stop()
            raise RuntimeError("nginx did not start:\n" + "".join(
                f.read_text() for f in (workdir / "stderr.log", workdir / "error.log") if f.exists()))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}/"

    def stop(self):
        meshlib.kill_group(self.proc, signal.SIGTERM)


@pytest.fixture(scope="module")
def h2nginx(tmp_path_factory):
    n = H2Nginx(tmp_path_factory.mktemp("h2nginx"))
    yield n
    n.stop()


def test_http2_against_nginx_h2c_rate_errors_and_percentiles(meshctl, h2nginx):
    # Debug builds of meshctl pay ~0.5 ms of CPU per HTTP/2 request (NIO's HTTP/2 stack unoptimised):
    # 400 req/s leaves room on a shared 2-core machine.
    out = latency_json(meshctl, "--http2", "--target", f"nginx={h2nginx.url('h2')}", "--rate", 400, "--connections", 2,
                       "--duration", "3s", "--warmup", "1s")
    assert out["settings"]["protocol"] == "HTTP/2"
    t = out["targets"][0]
    assert t["protocol"] == "h2", t
    assert t["errors"] == 0, t
    assert t["requests"] == 1200 and t["ok"] == 1200, t
    assert abs(t["achievedRate"] - 400) <= 20, t
    for k in ("p50", "p90", "p99", "p999", "max"):
        assert isinstance(t[k], float | int) and t[k] > 0, (k, t)
    assert t["p50"] <= t["p90"] <= t["p99"] <= t["p999"] <= t["max"], t
    assert t["sendDelay"]["p50"] is not None, t
    print(f"h2 p50 {t['p50']} ms, p99 {t['p99']} ms, scheduler lag p50 {t['sendDelay']['p50']} ms")


def test_http2_goaway_authority_and_table(meshctl, h2nginx):
    # `goaway` closes every connection after 50 streams: ~12 GOAWAYs in this run. Streams above a GOAWAY's
    # last stream ID were not processed and are sent again on the next connection: no request is lost.
    # `routed` answers 200 only for :authority orders (from --authority, through the Host header).
    out = latency_json(meshctl, "--http2", "--target", f"goaway={h2nginx.url('goaway')}", "--target",
                       f"routed={h2nginx.url('routed')}", "--authority", "orders", "--rate", 200, "--connections", 2,
                       "--duration", "3s", "--warmup", "0s")
    for t in out["targets"]:
        assert t["errors"] == 0 and t["ok"] == 600, t
        assert t["host"] == "orders", t
    # Any other authority: nginx's default server answers 404, counted as status errors.
    r = latency(meshctl, "--http2", "--target", f"other={h2nginx.url('routed')}", "--authority", "elsewhere", "--rate", 50,
                "--connections", 1, "--duration", "1s", "--warmup", "0s", "-o", "json")
    assert r.returncode == 1, r.stderr.decode()
    t = json.loads(r.stdout)["targets"][0]
    assert t["ok"] == 0 and t["errorKinds"]["status"] == 50 and t["errors"] == 50, t
    # The table names the protocol.
    r = latency(meshctl, "--http2", "--target", f"nginx={h2nginx.url('h2')}", "--rate", 50, "--connections", 1,
                "--duration", "1s", "--warmup", "0s")
    assert r.returncode == 0, r.stderr.decode()
    assert "HTTP/2 (h2c)" in r.stdout.decode(), r.stdout.decode()


@pytest.fixture(scope="module")
def slow5_h2(meshctl):
    """`meshctl delay-backend --http2 --delay 5ms`: an h2c backend with a known latency."""
    proc = meshlib.popen([meshctl, "delay-backend", "--http2", "--delay", "5ms"], stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    m = re.match(rb"PORT (\d+)", line or b"")
    if not m:
        meshlib.kill_group(proc)
        raise RuntimeError(f"delay-backend --http2 did not start: {line!r}")
    yield f"127.0.0.1:{int(m.group(1))}"
    meshlib.kill_group(proc)


def test_http2_fixed_5ms_backend_p50_between_5_and_8_ms(meshctl, slow5_h2):
    # As the HTTP/1.1 check (retried when the shared machine disturbs a run; the lower bound holds in every
    # run), with room for the debug builds: their HTTP/2 stack costs ~0.6 ms per request on each side
    # (measured: nginx p50 1.1 ms over h2c against 0.5 ms over HTTP/1.1, same meshctl, 300 req/s), so the
    # debug client against the debug backend measures 5 ms as ~6.8 ms.
    p50s = []
    for _ in range(3):
        out = latency_json(meshctl, "--http2", "--target", f"h2=http://{slow5_h2}/", "--rate", 300, "--connections", 2,
                           "--duration", "3s", "--warmup", "1s")
        t = out["targets"][0]
        assert t["errors"] == 0 and t["ok"] == 900, t
        assert t["p50"] >= 5.0, t
        p50s.append(t["p50"])
        print(f"h2 p50 {t['p50']} ms, p99 {t['p99']} ms")
        if t["p50"] <= 8.0:
            break
    assert any(5.0 <= p <= 8.0 for p in p50s), f"p50 per run (ms): {p50s}"


def test_http2_against_http1_only_servers_reports_and_does_not_hang(meshctl, h2nginx, slow5):
    # nginx without `http2` answers the preface with a 400, Python's http.server with an HTML error page:
    # neither is HTTP/2.
    # The h2c target before them is measured; each HTTP/1.1-only one is reported as a failure (exit 1).
    r = latency(meshctl, "--http2", "--target", f"h2={h2nginx.url('h2')}", "--target", f"nginx-h1={h2nginx.url('http1')}",
                "--target", f"python-h1=http://{slow5.addr}/", "--rate", 50, "--connections", 2, "--duration", "1s",
                "--warmup", "0s", "-o", "json", timeout=30)
    assert r.returncode == 1, r.stderr.decode()
    h2, *h1s = json.loads(r.stdout)["targets"]
    assert h2["errors"] == 0 and h2["ok"] == 50, h2
    for t in h1s:
        assert t["ok"] == 0 and t["p50"] is None, t
        assert "HTTP/2 handshake failed" in t["failure"] and "h2c" in t["failure"], t
    # A server that accepts and never answers: the handshake times out after --connect-timeout.
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        r = latency(meshctl, "--http2", "--target", f"silent=http://127.0.0.1:{port}/", "--rate", 10, "--duration", "0.5s",
                    "--warmup", "0s", "--connect-timeout", "300ms", "-o", "json", timeout=30)
    finally:
        silent.close()
    assert r.returncode == 1, r.stderr.decode()
    t = json.loads(r.stdout)["targets"][0]
    assert "no HTTP/2 SETTINGS" in t["failure"], t


@pytest.mark.parametrize("args,message", [
    (["--target", "x=http://127.0.0.1:1/", "--http2", "--rate", "0", "--closed-loop"], "not available with --http2"),
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
