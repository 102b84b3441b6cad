"""Protocols other than plain HTTP/1.1 requests: protocol detection on both proxy listeners, opaque TCP
(sidecar inbound → app, `protocol: tcp` services, iptables-redirected outbound → SO_ORIGINAL_DST),
server-speaks-first protocols, and WebSocket / HTTP/1.1 Upgrade through two meshd hops.

Peers: tcp_echo.py (echo until EOF, then a half-close; optional banner sent on connect) and ws_echo.py
(the `websockets` package; those tests are skipped, saying so, when it is not installed)."""

from __future__ import annotations

import concurrent.futures
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tcp_echo
from meshlib import (HERE, NetNS, NetNSUnavailable, ThreadedListener, _readline_timeout, base_config, free_port,
                     http_request, kill_group, meshd_bin,
                     metric_value, parse_addr, parse_response_head, popen, raw_exchange, run, wait_for)

TCP_ECHO = HERE / "tcp_echo.py"
WS_ECHO = HERE / "ws_echo.py"

MIB = 1 << 20
STREAM_BYTES = 100 * MIB
HWM_LIMIT = 80 * 1000 * 1000  # 80 MB

_expected: dict[int, str] = {}


def expected_sha256(n: int) -> str:
    if n not in _expected:
        _expected[n] = tcp_echo.expected_sha256(n)
    return _expected[n]


# --------------------------------------------------------------------------------------------
# Peers


class EchoServer:
    """tcp_echo.py serve: echoes until EOF then half-closes; logs one JSON record per connection."""

    def __init__(self, logdir: Path, name: str, *, banner: str = "", host: str = "127.0.0.1",
                 netns: NetNS | None = None):
        self.name = name
        self.log = logdir / f"echo-{name}.jsonl"
        cmd = [sys.executable, str(TCP_ECHO), "serve", "--host", host, "--port", "0", "--log", str(self.log)]
        if banner:
            cmd += ["--banner", banner]
        if netns is not None:
            cmd = netns.prefix + cmd
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=open(logdir / f"echo-{name}.err", "wb"))
        line = _readline_timeout(self.proc, 10.0)
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            kill_group(self.proc)
            raise RuntimeError(f"echo server {name} did not start: {line!r}")
        self.host = host
        self.port = int(m.group(1))
        self.addr = f"{host}:{self.port}"

    def records(self) -> list[dict]:
        try:
            return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def wait_records(self, n: int, timeout: float = 5.0) -> list[dict]:
        return wait_for(lambda: (r := self.records()) and len(r) >= n and r, timeout,
                        what=f"{n} finished connection(s) in {self.log.name}")

    def stop(self):
        kill_group(self.proc)


@pytest.fixture
def echo_servers(tmp_path):
    started: list[EchoServer] = []

    def make(name: str = "echo", **kw) -> EchoServer:
        e = EchoServer(tmp_path, name, **kw)
        started.append(e)
        return e

    yield make
    for e in started:
        e.stop()


@pytest.fixture(scope="module")
def module_echo(tmp_path_factory):
    e = EchoServer(tmp_path_factory.mktemp("echo"), "app")
    yield e
    e.stop()


def metric(mesh, name, **labels) -> float:
    return metric_value(mesh.metrics_text(), name, **labels) or 0.0


def tcp_counters(mesh, direction: str, target: str) -> dict:
    text = mesh.metrics_text()
    lab = {"direction": direction, "target": target}
    return {
        "connections": metric_value(text, "meshd_tcp_connections_total", **lab) or 0.0,
        "from_client": metric_value(text, "meshd_tcp_bytes_total", **lab, flow="from_client") or 0.0,
        "from_upstream": metric_value(text, "meshd_tcp_bytes_total", **lab, flow="from_upstream") or 0.0,
        "connect_failures": metric_value(text, "meshd_tcp_connect_failures_total", **lab) or 0.0,
    }


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def detected(mesh, direction: str, proto: str) -> float:
    return metric(mesh, "meshd_protocol_detected_total", direction=direction, protocol=proto)


def tcp_service_addr(mesh, name: str) -> tuple[str, int]:
    """The bound address of a `protocol: tcp` service (from its "tcp service listening" log line)."""
    for rec in mesh.log_lines():
        if rec.get("msg") == "tcp service listening" and rec.get("service") == name:
            return parse_addr(rec["listen"])
    raise AssertionError(f"no 'tcp service listening' line for {name}:\n{mesh.stderr_text()[-3000:]}")


def has_log(mesh, msg: str, **fields) -> bool:
    return any(r.get("msg") == msg and all(r.get(k) == v for k, v in fields.items()) for r in mesh.log_lines())


def wait_log(mesh, msg: str, timeout: float = 3.0, **fields):
    wait_for(lambda: has_log(mesh, msg, **fields), timeout, what=f"log line {msg!r} {fields}")


def half_close_exchange(addr, data: bytes, timeout: float = 5.0, *, wait_echo: bool = False) -> tuple[bytes, bool, float]:
    """Send `data`, SHUT_WR, read until EOF → (received, clean EOF seen, seconds). With `wait_echo`,
    the half-close is sent only after len(data) bytes came back (the echo server echoes as it reads);
    otherwise right behind the data, so the FIN may arrive in the same segment burst."""
    s = socket.create_connection(addr, timeout=timeout)
    t0 = time.monotonic()
    got = b""
    eof = False
    try:
        s.sendall(data)
        if wait_echo:
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    return got, True, time.monotonic() - t0
                got += chunk
        s.shutdown(socket.SHUT_WR)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                eof = True
                break
            got += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return got, eof, time.monotonic() - t0


def silent_close_time(addr, timeout: float = 6.0) -> tuple[bytes, bool, float]:
    """Connect, send nothing, wait for the peer to close → (received, closed, seconds)."""
    return raw_exchange(addr, b"", timeout=timeout)


def sidecar_config(app: str, **extra) -> dict:
    cfg = base_config(inbound={"listen": "127.0.0.1:0", "app": app})
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------------------------
# 1. Opaque TCP: 100 MiB echoed, half-close, memory, byte counters


@pytest.mark.parametrize("via", ["tcp-service", "sidecar-inbound"])
def test_opaque_100mib_echo_with_half_close(start_meshd, echo_servers, via):
    echo = echo_servers()
    mesh = start_meshd(sidecar_config(
        echo.addr,
        services=[{"name": "db", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [echo.addr]}]))
    if via == "tcp-service":
        addr, direction, target = tcp_service_addr(mesh, "db"), "outbound", "db"
    else:
        addr, direction, target = mesh.inbound, "inbound", "app"
    before = tcp_counters(mesh, direction, target)
    opaque0 = detected(mesh, "inbound", "opaque")

    r = tcp_echo.stream(addr, STREAM_BYTES, timeout=30)
    # The echo server answers the client's SHUT_WR with its own only after it saw EOF, so the client
    # reading everything and then EOF proves the half-close went through both ways.
    assert r["error"] is None, r
    assert r["eof"], f"no EOF after the echo: {r}"
    assert r["sent"] == STREAM_BYTES and r["received"] == STREAM_BYTES, r
    assert r["sent_sha256"] == expected_sha256(STREAM_BYTES)
    assert r["received_sha256"] == r["sent_sha256"], r
    recs = echo.wait_records(1)
    assert len(recs) == 1, recs
    assert recs[0]["eof"] is True and recs[0]["error"] is None, recs[0]
    assert recs[0]["bytes"] == STREAM_BYTES and recs[0]["sha256"] == r["sent_sha256"], recs[0]

    # byte counters are added when the connection closes
    want = {"connections": 1, "from_client": STREAM_BYTES, "from_upstream": STREAM_BYTES, "connect_failures": 0}
    wait_for(lambda: delta(tcp_counters(mesh, direction, target), before) == want, 5,
             what=f"tcp counters {direction}/{target} to move by {want}")
    if via == "sidecar-inbound":
        assert detected(mesh, "inbound", "opaque") - opaque0 == 1
    hwm = mesh.vm_hwm_bytes()
    print(f"{via}: 100 MiB echoed in {r['seconds']:.2f}s, VmHWM={hwm / 1e6:.1f} MB")
    assert hwm < HWM_LIMIT, f"meshd peak resident memory {hwm / 1e6:.1f} MB while piping 100 MiB"


# --------------------------------------------------------------------------------------------
# 2. Detection


@pytest.fixture(scope="module")
def sidecar(start_meshd_module, module_echo, backend):
    """A sidecar with the echo server as its app, the default detect timeout (10 s), and a route
    `py` → the Python backend on its outbound listener."""
    return start_meshd_module(sidecar_config(
        module_echo.addr,
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}]), name="sidecar")


@pytest.mark.parametrize("detect,header", [("1s", "5s"), ("10s", "1s")])
def test_silent_client_closed_after_detect_timeout(start_meshd, module_echo, detect, header):
    mesh = start_meshd(sidecar_config(module_echo.addr, http={"detectTimeout": detect, "headerReadTimeout": header}))
    t0 = {d: detected(mesh, d, "timeout") for d in ("outbound", "inbound")}
    app0 = len(module_echo.records())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futs = {d: pool.submit(silent_close_time, getattr(mesh, d)) for d in ("outbound", "inbound")}
        res = {d: f.result(timeout=10) for d, f in futs.items()}
    for d, (got, closed, took) in res.items():
        assert closed, f"{d}: a silent connection was not closed within 6 s (detectTimeout {detect}, headerReadTimeout {header})"
        assert got == b"", f"{d}: a silent connection got bytes: {got!r}"
        assert 0.9 <= took <= 2.5, f"{d}: closed after {took:.2f}s; expected ~1 s (min of {detect} and {header})"
    for d in ("outbound", "inbound"):
        assert detected(mesh, d, "timeout") - t0[d] == 1, d
    assert len(module_echo.records()) == app0, "the app saw a connection for a client that sent nothing"


GARBAGE = b"\x00\x01\x02\xffnot a protocol anyone knows\r\n\r\n" + bytes(range(256))
TLS_HELLO = bytes.fromhex("160301002e0100002a0303") + bytes(32) + bytes.fromhex("000002002f0100")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + empty SETTINGS
LONG_GET = b"GET /" + b"a" * 2000  # a method, then more than 1 KiB without a line end


@pytest.mark.parametrize("payload,proto", [(GARBAGE, "opaque"), (TLS_HELLO, "tls"), (LONG_GET, "opaque")],
                         ids=["garbage", "tls", "get-no-eol-2k"])
def test_non_http_to_sidecar_inbound_reaches_app(sidecar, module_echo, payload, proto):
    before = tcp_counters(sidecar, "inbound", "app")
    d0 = detected(sidecar, "inbound", proto)
    n0 = len(module_echo.records())
    got, eof, took = half_close_exchange(sidecar.inbound, payload, wait_echo=True)
    assert got == payload, f"sent {len(payload)} bytes ({proto}), got back {len(got)}: {got[:80]!r}"
    assert eof
    # decided from the bytes (at most 1 KiB), not by waiting for the 10 s detect timeout
    assert took < 3, f"took {took:.2f}s"
    recs = module_echo.wait_records(n0 + 1)
    assert recs[n0]["bytes"] == len(payload) and recs[n0]["eof"], recs[n0]
    assert detected(sidecar, "inbound", proto) - d0 == 1
    want = {"connections": 1, "from_client": len(payload), "from_upstream": len(payload), "connect_failures": 0}
    wait_for(lambda: delta(tcp_counters(sidecar, "inbound", "app"), before) == want, 5, what=f"inbound/app counters {want}")


def test_h2_preface_to_sidecar_inbound_is_served_as_http2(sidecar, module_echo):
    """The HTTP/2 preface is not opaque any more: meshd's HTTP/2 proxy answers it with its own
    SETTINGS frame (each stream is then routed like an HTTP/1.1 request; see test_http2.py)."""
    d0 = detected(sidecar, "inbound", "http2")
    n0 = len(module_echo.records())
    host, port = sidecar.inbound
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(H2_PREFACE)
        head = b""
        while len(head) < 9:
            chunk = s.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    assert len(head) == 9 and head[3] == 0x04, f"expected meshd's SETTINGS frame, got {head!r}"
    assert detected(sidecar, "inbound", "http2") - d0 == 1
    time.sleep(0.2)
    assert len(module_echo.records()) == n0, "the app saw a connection: the preface went through as opaque bytes"


@pytest.mark.parametrize("via", ["tcp-service", "sidecar-inbound"])
def test_opaque_half_close_right_behind_the_first_bytes(start_meshd, echo_servers, via):
    """A one-shot client (`printf ... | nc -N`): its bytes and its FIN arrive together, before meshd has
    connected upstream. The bytes must still reach the app, the FIN after them, and the answer come
    back before EOF (half-close is passed through from the first byte on). 20 tries, each must work."""
    echo = echo_servers()
    mesh = start_meshd(sidecar_config(
        echo.addr,
        services=[{"name": "db", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [echo.addr]}]))
    addr = tcp_service_addr(mesh, "db") if via == "tcp-service" else mesh.inbound
    results = [half_close_exchange(addr, GARBAGE) for _ in range(20)]
    bad = [(i, len(got), eof) for i, (got, eof, _) in enumerate(results) if got != GARBAGE or not eof]
    recs = echo.wait_records(20)
    short = [r["bytes"] for r in recs if r["bytes"] != len(GARBAGE)]
    assert not bad, (f"{len(bad)}/20 one-shot connections ({len(GARBAGE)} bytes + immediate SHUT_WR) did not get "
                     f"their echo: (try, bytes back, eof) {bad[:5]}; bytes the app received on those: {short[:5]}")


def test_garbage_on_explicit_outbound_gets_400(sidecar):
    d0 = detected(sidecar, "outbound", "opaque")
    conns0 = tcp_counters(sidecar, "outbound", "original-dst")["connections"]
    got, _, _ = raw_exchange(sidecar.outbound, GARBAGE, timeout=5, read_until_close=False)
    status, h = parse_response_head(got)
    assert status == 400, got[:300]
    assert h.get("x-meshd-error") == "bad-request", h
    wait_log(sidecar, "not HTTP on the explicit outbound listener (no original destination): answering as HTTP")
    assert detected(sidecar, "outbound", "opaque") - d0 == 1
    assert tcp_counters(sidecar, "outbound", "original-dst")["connections"] == conns0


def test_http1_detected_on_outbound(sidecar):
    """Plain HTTP/1.1 goes to the HTTP proxy on the outbound listener (and is counted as http1)."""
    d0 = detected(sidecar, "outbound", "http1")
    got, _, _ = raw_exchange(sidecar.outbound, b"GET /headers HTTP/1.1\r\nHost: py\r\nConnection: close\r\n\r\n", timeout=5)
    status, h = parse_response_head(got)
    assert status == 200 and h.get("x-backend") == "py", got[:300]
    assert detected(sidecar, "outbound", "http1") - d0 == 1


def test_slow_http_client_byte_by_byte(start_meshd, module_echo, backend):
    """The request line arrives one byte every 50 ms (~1.2 s, inside the 2 s detect timeout); the
    rest of the head keeps trickling in past the detect timeout: detection waits for the line end,
    then its timer no longer applies."""
    mesh = start_meshd(sidecar_config(
        module_echo.addr, http={"detectTimeout": "2s", "headerReadTimeout": "6s"},
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}]))
    h0, t0 = detected(mesh, "outbound", "http1"), detected(mesh, "outbound", "timeout")
    req = b"GET /headers HTTP/1.1\r\nHost: py\r\nX-Slow: yes\r\nConnection: close\r\n\r\n"
    s = socket.create_connection(mesh.outbound, timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = time.monotonic()
    try:
        for i in range(len(req)):
            s.sendall(req[i:i + 1])
            time.sleep(0.05)
        sent_for = time.monotonic() - start
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        s.close()
    assert sent_for > 2.2, "the head must keep arriving past the detect timeout for this test to mean anything"
    status, h = parse_response_head(got)
    assert status == 200, got[:300]
    body = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert ["X-Slow", "yes"] in body["headers"] or ["x-slow", "yes"] in body["headers"], body
    assert detected(mesh, "outbound", "http1") - h0 == 1
    assert detected(mesh, "outbound", "timeout") - t0 == 0


def test_node_mode_inbound_refuses_opaque(start_meshd):
    node = start_meshd({
        "mode": "node", "nodeIP": "127.0.0.2", "threads": 1,
        "outbound": {"listen": "127.0.0.2:0"}, "inbound": {"listen": "127.0.0.2:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": ["127.0.0.1/32"], "allowedSources": ["127.0.0.3/32"]},
        "drainTimeout": "5s", "services": [], "routes": [],
    }, name="node")
    r0 = metric(node, "meshd_tcp_refused_total", direction="inbound")
    d0 = detected(node, "inbound", "opaque")
    got, closed, took = raw_exchange(node.inbound, GARBAGE, timeout=5)
    assert closed, "node inbound kept an opaque connection open"
    assert got == b"", f"node inbound answered an opaque connection: {got[:200]!r}"
    assert took < 2, f"closed after {took:.2f}s"
    wait_log(node, "opaque TCP connection refused: no destination", direction="inbound")
    assert metric(node, "meshd_tcp_refused_total", direction="inbound") - r0 == 1
    assert detected(node, "inbound", "opaque") - d0 == 1


def test_inbound_protocol_http1_skips_detection(start_meshd, echo_servers):
    echo = echo_servers()
    mesh = start_meshd(base_config(inbound={"listen": "127.0.0.1:0", "app": echo.addr, "protocol": "http1"}))
    text0 = mesh.metrics_text()
    got, _, _ = raw_exchange(mesh.inbound, GARBAGE, timeout=5, read_until_close=False)
    status, h = parse_response_head(got)
    assert status == 400, got[:300]
    assert h.get("x-meshd-error") == "bad-request", h
    time.sleep(0.3)
    assert echo.records() == [], "garbage reached the app although inbound.protocol is http1"
    for proto in ("http1", "http2", "tls", "opaque", "timeout"):
        before = metric_value(text0, "meshd_protocol_detected_total", direction="inbound", protocol=proto) or 0.0
        assert detected(mesh, "inbound", proto) == before, f"detection ran ({proto}) with inbound.protocol http1"


# --------------------------------------------------------------------------------------------
# 3. TCP services: server-speaks-first, balancing, connect failures, idle timeout

BANNER = "220 {name} ESMTP ready\\r\\n"


def banner_of(name: str) -> bytes:
    return f"220 {name} ESMTP ready\r\n".encode()


def read_banner(addr, n: int, timeout: float = 3.0) -> tuple[socket.socket, bytes]:
    """Connect and read `n` bytes without sending anything."""
    s = socket.create_connection(addr, timeout=timeout)
    got = b""
    try:
        while len(got) < n:
            chunk = s.recv(n - len(got))
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    return s, got


@pytest.mark.parametrize("via", ["tcp-service", "inbound-protocol-tcp"])
def test_server_speaks_first(start_meshd, echo_servers, via):
    smtp = echo_servers("smtp", banner=BANNER.format(name="mx1"))
    mesh = start_meshd(base_config(
        inbound={"listen": "127.0.0.1:0", "app": smtp.addr, "protocol": "tcp"},
        services=[{"name": "smtp", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [smtp.addr]}]))
    addr = tcp_service_addr(mesh, "smtp") if via == "tcp-service" else mesh.inbound
    want = banner_of("mx1")
    t0 = time.monotonic()
    s, got = read_banner(addr, len(want))
    took = time.monotonic() - t0
    try:
        assert got == want, f"expected the banner {want!r} without sending anything, got {got!r}"
        assert took < 1.5, f"banner after {took:.2f}s"
        s.sendall(b"QUIT\r\n")
        s.shutdown(socket.SHUT_WR)
        rest = b""
        while chunk := s.recv(4096):
            rest += chunk
        assert rest == b"QUIT\r\n"
    finally:
        s.close()
    recs = smtp.wait_records(1)
    assert recs[0]["bytes"] == 6 and recs[0]["eof"], recs


def test_server_speaks_first_needs_protocol_tcp(start_meshd, echo_servers):
    """With detection, meshd waits for the client's first bytes: a banner never arrives, and the silent
    client is closed at the detect timeout (this is why such services need `protocol: tcp`)."""
    smtp = echo_servers("smtp", banner=BANNER.format(name="mx1"))
    mesh = start_meshd(sidecar_config(smtp.addr, http={"detectTimeout": "1s"}))
    got, closed, took = silent_close_time(mesh.inbound)
    assert got == b"" and closed and 0.9 <= took <= 2.5, (got, closed, took)
    assert smtp.records() == []


def test_tcp_service_round_robin(start_meshd, echo_servers):
    a = echo_servers("a", banner=BANNER.format(name="a"))
    b = echo_servers("b", banner=BANNER.format(name="b"))
    mesh = start_meshd(base_config(services=[
        {"name": "db", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [a.addr, b.addr]}]))
    addr = tcp_service_addr(mesh, "db")
    before = tcp_counters(mesh, "outbound", "db")
    seen = []
    for _ in range(6):
        s, got = read_banner(addr, len(banner_of("a")))
        s.close()
        seen.append(got.decode()[4:5])
    assert seen in (list("ababab"), list("bababa")), f"round robin expected, got {seen}"
    wait_for(lambda: delta(tcp_counters(mesh, "outbound", "db"), before)["connections"] == 6, 3, what="6 connections")


def test_tcp_service_connect_failure(start_meshd):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        port = dead.getsockname()[1]
        mesh = start_meshd(base_config(services=[
            {"name": "db", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [f"127.0.0.1:{port}"]}]))
        before = tcp_counters(mesh, "outbound", "db")
        got, closed, took = raw_exchange(tcp_service_addr(mesh, "db"), b"hello", timeout=5)
        assert closed and got == b"" and took < 2, (got, closed, took)
        assert delta(tcp_counters(mesh, "outbound", "db"), before) == {
            "connections": 0, "from_client": 0, "from_upstream": 0, "connect_failures": 1}
    finally:
        dead.close()


def test_tcp_service_idle_timeout(start_meshd, echo_servers):
    """timeouts.idle 1s: a byte every 0.4 s keeps the connection (2 s in all); then, with no byte
    either way, both sides are closed about 1 s later."""
    smtp = echo_servers("smtp", banner=BANNER.format(name="mx1"))
    mesh = start_meshd(base_config(services=[
        {"name": "db", "protocol": "tcp", "listen": "127.0.0.1:0", "endpoints": [smtp.addr],
         "timeouts": {"idle": "1s"}}]))
    want = banner_of("mx1")
    s, got = read_banner(tcp_service_addr(mesh, "db"), len(want))
    try:
        assert got == want
        s.settimeout(2)
        for i in range(5):
            time.sleep(0.4)
            s.sendall(b"%d" % i)
            assert s.recv(10) == b"%d" % i, f"the active connection broke at {i}"
        t0 = time.monotonic()
        s.settimeout(5)
        try:
            rest = s.recv(100)
        except ConnectionResetError:
            rest = b""
        took = time.monotonic() - t0
    finally:
        s.close()
    assert rest == b"", rest
    assert 0.8 <= took <= 2.5, f"idle connection closed after {took:.2f}s (timeouts.idle 1s)"
    # both sides closed: the server saw its connection end
    recs = smtp.wait_records(1, timeout=3)
    assert recs[0]["bytes"] == 5 and recs[0]["eof"], recs


# --------------------------------------------------------------------------------------------
# 4. Transparent redirection (iptables REDIRECT → SO_ORIGINAL_DST) inside a network namespace

CLIENT_SRC = "127.0.0.5"  # only this source is redirected, so meshd's own connection is not


def _ns_probe(ns: NetNS, dst: tuple[str, int], source: str | None) -> dict:
    """Inside `ns`: connect (from `source`), send a few non-HTTP bytes, wait for the close →
    {"got": hex of what came back, "took": seconds from connect to close}."""
    probe = ("import socket,time,json,sys\n"
             "s=socket.socket(); src=sys.argv[3]\n"
             "src and s.bind((src,0)); s.settimeout(8); t=time.monotonic()\n"
             "s.connect((sys.argv[1],int(sys.argv[2]))); s.sendall(b'\\x00hello')\n"
             "try:\n d=s.recv(10)\nexcept ConnectionResetError:\n d=b''\n"
             "print(json.dumps({'got': d.hex(), 'took': time.monotonic()-t}))\n")
    r = ns.exec([sys.executable, "-c", probe, dst[0], dst[1], source or ""], timeout=20)
    assert r.returncode == 0, r.stderr.decode()
    return json.loads(r.stdout)


class RedirectEnv:
    """In a network namespace of its own: an echo server on 127.0.0.1:A, meshd's outbound (detect)
    on 127.0.0.1:M, and `iptables -t nat -A OUTPUT -p tcp -s 127.0.0.5 -d 127.0.0.1 --dport A -j
    REDIRECT --to-ports M`. Only the client's source address is redirected, so meshd's own connection
    to the original destination is not (a real sidecar excludes its own traffic by uid the same way).
    127.0.0.9:9 is redirected likewise, and meshd's SYNs to it are dropped (connects time out)."""

    BLACK_HOLE = ("127.0.0.9", 9)

    def __init__(self, start_meshd, tmp_path):
        if shutil.which("iptables") is None:
            pytest.skip("iptables is not installed (scripts/install-test-deps.sh installs it)")
        try:
            self.ns = NetNS("proto")
        except NetNSUnavailable as e:
            pytest.skip(f"network namespaces unavailable: {e}")
        self.rules: list[list[str]] = []
        self.mesh = None
        try:
            ns = self.ns
            self.echo = EchoServer(tmp_path, "nsecho", netns=ns)
            bh = self.BLACK_HOLE
            self.mesh = start_meshd(base_config(
                upstream={"connectTimeout": "800ms"},
                services=[{"name": "slowdb", "protocol": "tcp", "listen": "127.0.0.1:0",
                           "endpoints": [f"{bh[0]}:{bh[1]}"], "timeouts": {"connect": "300ms"}}],
            ), name="ns-meshd", netns=ns)
            port_m = self.mesh.outbound[1]
            for host, port in ((self.echo.host, self.echo.port), bh):
                rule = ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-s", CLIENT_SRC, "-d", host, "--dport", str(port),
                        "-j", "REDIRECT", "--to-ports", str(port_m)]
                r = ns.exec(["iptables"] + rule)
                if r.returncode != 0:
                    pytest.skip(f"iptables REDIRECT unavailable in a network namespace: {r.stderr.decode().strip()}")
                self.rules.append(rule)
            drop = ["-A", "OUTPUT", "-p", "tcp", "-d", bh[0], "--dport", str(bh[1]), "-j", "DROP"]
            r = ns.exec(["iptables"] + drop)
            assert r.returncode == 0, r.stderr.decode()
            self.rules.append(drop)
        except BaseException:
            self.close()
            raise

    def close(self):
        for rule in reversed(self.rules):
            self.ns.exec(["iptables"] + [("-D" if a == "-A" else a) for a in rule])
        self.rules.clear()
        if self.mesh is not None:
            self.mesh.stop()
        self.ns.delete()


@pytest.fixture
def redirect_env(start_meshd, tmp_path):
    env = RedirectEnv(start_meshd, tmp_path)
    yield env
    env.close()


def test_redirected_outbound_goes_to_original_destination(redirect_env):
    ns, mesh, echo = redirect_env.ns, redirect_env.mesh, redirect_env.echo
    # 32 MiB echoed through the redirect, half-close included
    before = tcp_counters(mesh, "outbound", "original-dst")
    o0 = detected(mesh, "outbound", "opaque")
    n = 32 * MIB
    r = ns.exec([sys.executable, TCP_ECHO, "client", "--connect", echo.addr, "--source", CLIENT_SRC,
                 "--bytes", n, "--timeout", "20"], timeout=40)
    assert r.returncode == 0, r.stderr.decode()
    res = json.loads(r.stdout)
    assert res["error"] is None and res["eof"], res
    assert res["received"] == n and res["received_sha256"] == res["sent_sha256"] == expected_sha256(n), res
    recs = echo.wait_records(1)
    # meshd connected to the original destination itself (not from the client's address)
    assert recs[0]["peer"].rsplit(":", 1)[0] != CLIENT_SRC, recs
    assert recs[0]["bytes"] == n and recs[0]["eof"] and recs[0]["sha256"] == res["sent_sha256"], recs
    want = {"connections": 1, "from_client": n, "from_upstream": n, "connect_failures": 0}
    wait_for(lambda: delta(tcp_counters(mesh, "outbound", "original-dst"), before) == want, 5,
             what=f"original-dst counters {want}")
    assert detected(mesh, "outbound", "opaque") - o0 == 1

    # the same destination from a source that is not redirected: straight to the echo server
    res = _ns_probe(ns, (echo.host, echo.port), None)
    assert res["got"] == b"\x00hello".hex(), res
    assert tcp_counters(mesh, "outbound", "original-dst")["connections"] == before["connections"] + 1

    # a redirected connection whose original destination does not answer: upstream.connectTimeout (800ms)
    res = _ns_probe(ns, RedirectEnv.BLACK_HOLE, CLIENT_SRC)
    assert res["got"] == "" and 0.7 <= res["took"] <= 2.0, res
    wait_for(lambda: delta(tcp_counters(mesh, "outbound", "original-dst"), before)["connect_failures"] == 1, 3,
             what="one original-dst connect failure")

    # a tcp service whose endpoint does not answer: services[].timeouts.connect (300ms)
    f0 = tcp_counters(mesh, "outbound", "slowdb")["connect_failures"]
    res = _ns_probe(ns, tcp_service_addr(mesh, "slowdb"), None)
    assert res["got"] == "" and 0.25 <= res["took"] <= 0.75, res
    wait_for(lambda: tcp_counters(mesh, "outbound", "slowdb")["connect_failures"] - f0 == 1, 3,
             what="one slowdb connect failure")


def test_redirected_one_shot_half_close(redirect_env):
    """As test_opaque_half_close_right_behind_the_first_bytes, on a redirected outbound connection:
    6 bytes and the FIN at once, 10 tries; each must get its echo, then EOF."""
    ns, echo = redirect_env.ns, redirect_env.echo
    code = ("import socket, json, sys\n"
            "res = []\n"
            "for i in range(10):\n"
            "    s = socket.socket(); s.bind((sys.argv[1], 0)); s.settimeout(5)\n"
            "    s.connect((sys.argv[2], int(sys.argv[3])))\n"
            "    s.sendall(b'\\x00hello'); s.shutdown(socket.SHUT_WR); got = b''\n"
            "    try:\n"
            "        while (c := s.recv(100)): got += c\n"
            "    except OSError as e:\n"
            "        got += repr(e).encode()\n"
            "    res.append(got.hex()); s.close()\n"
            "print(json.dumps(res))\n")
    r = ns.exec([sys.executable, "-c", code, CLIENT_SRC, echo.host, echo.port], timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    got = [bytes.fromhex(x) for x in json.loads(r.stdout)]
    bad = [(i, g) for i, g in enumerate(got) if g != b"\x00hello"]
    recs = echo.wait_records(10)
    assert not bad, (f"{len(bad)}/10 redirected one-shot connections (6 bytes + immediate SHUT_WR) did not get "
                     f"their echo: {bad[:3]}; bytes the original destination received: {[x['bytes'] for x in recs]}")


# --------------------------------------------------------------------------------------------
# 5. WebSocket / Upgrade through two meshd hops


@pytest.fixture
def ws_server(tmp_path):
    try:
        import websockets  # noqa: F401
    except ImportError:
        pytest.skip("Python package 'websockets' is not installed (pip install -r tests/e2e/requirements.txt)")
    p = popen([sys.executable, str(WS_ECHO), "--host", "127.0.0.1", "--port", "0"],
              stdout=subprocess.PIPE, stderr=open(tmp_path / "ws.err", "wb"))
    line = _readline_timeout(p, 10.0)
    m = re.match(rb"PORT (\d+)", line or b"")
    if not m:
        kill_group(p)
        raise RuntimeError(f"ws_echo did not start: {line!r} {(tmp_path / 'ws.err').read_text()}")
    yield f"127.0.0.1:{int(m.group(1))}"
    kill_group(p)


@pytest.fixture
def two_hops(start_meshd, ws_server):
    """app (ws_echo) ← server-side sidecar inbound ← client-side sidecar outbound (service `ws`)."""
    server_side = start_meshd(sidecar_config(ws_server), name="server-sidecar")
    client_side = start_meshd(base_config(
        services=[{"name": "ws", "endpoints": [f"{server_side.inbound[0]}:{server_side.inbound[1]}"]}],
        routes=[{"match": {"authority": "ws"}, "service": "ws"}]), name="client-sidecar")
    return server_side, client_side


def ws_connect(mesh, path: str):
    from websockets.sync.client import connect

    sock = socket.create_connection(mesh.outbound, timeout=10)
    return connect(f"ws://ws{path}", sock=sock, max_size=16 << 20, compression=None, open_timeout=10,
                   close_timeout=5, ping_interval=None)


def test_websocket_through_two_hops(two_hops):
    server_side, client_side = two_hops
    u0 = {m.name: metric(m, "meshd_upgrades_total") for m in two_hops}
    rnd = random.Random(7)
    t0 = time.monotonic()
    with ws_connect(client_side, "/") as ws:
        ws.send("__headers__")
        hdrs = {k.lower(): v for k, v in json.loads(ws.recv(timeout=10))}
        assert hdrs.get("upgrade", "").lower() == "websocket", hdrs
        assert "upgrade" in hdrs.get("connection", "").lower(), hdrs
        sizes = [0, 1, 125, 126, 127, 65535, 65536, 65537] + [rnd.randrange(0, 40000) for _ in range(992)]
        total = 0
        for i, n in enumerate(sizes):
            msg = rnd.randbytes(n) if i % 2 else "".join(rnd.choice("abcdefghij\u20ac\u2713 ") for _ in range(n // 3))
            ws.send(msg)
            back = ws.recv(timeout=10)
            assert back == msg, f"message {i} ({type(msg).__name__}, {len(msg)}) came back different ({len(back)})"
            total += len(msg)
        big = rnd.randbytes(4 * MIB)
        ws.send(big)
        assert ws.recv(timeout=20) == big, "the 4 MiB binary frame came back different"
    print(f"websocket: 1000 messages ({total / 1e6:.1f} MB) + 4 MiB echoed through two hops in "
          f"{time.monotonic() - t0:.2f}s")
    for m in two_hops:
        assert metric(m, "meshd_upgrades_total") - u0[m.name] >= 1, f"{m.name}: meshd_upgrades_total did not move"


def test_websocket_server_speaks_first_through_two_hops(two_hops):
    """The app sends a message right after its 101 (a welcome / snapshot): the client must get it
    without sending anything first."""
    server_side, client_side = two_hops
    for i in range(5):
        with ws_connect(client_side, "/greet") as ws:
            try:
                got = ws.recv(timeout=3)
            except TimeoutError:
                got = None
            assert got == "hello from ws_echo", (
                f"try {i}: the app's first message (sent right after the 101) did not reach the client in 3 s")
            ws.send("x")
            assert ws.recv(timeout=5) == "x"


def _read_head(c: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    """Reads from `c` until `buf` holds a whole request head → (head, what followed it); None at EOF."""
    while b"\r\n\r\n" not in buf:
        chunk = c.recv(4096)
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


class RawUpgradeServer(ThreadedListener):
    """Answers the first request head on each connection with a 101 and, in the same send(), the
    first bytes of the new protocol; then echoes."""

    FIRST = b"SERVER-FIRST"

    def _conn(self, c):
        c.settimeout(10)
        try:
            if _read_head(c, b"") is None:
                return
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n"
                      + self.FIRST)
            while chunk := c.recv(4096):
                c.sendall(chunk)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def test_upgrade_bytes_right_behind_the_101_are_forwarded(start_meshd):
    """Single hop, deterministic: the upstream sends its 101 head and the first bytes of the new
    protocol in one write. The client must get those bytes without sending anything."""
    up = RawUpgradeServer()
    try:
        mesh = start_meshd(base_config(services=[{"name": "up", "endpoints": [up.addr]}],
                                       routes=[{"match": {"authority": "up"}, "service": "up"}]))
        s = socket.create_connection(mesh.outbound, timeout=3)
        try:
            s.sendall(b"GET /chat HTTP/1.1\r\nHost: up\r\nUpgrade: x-test\r\nConnection: Upgrade\r\n\r\n")
            got = b""
            try:
                while RawUpgradeServer.FIRST not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            except socket.timeout:
                pass
            status, h = parse_response_head(got)
            assert status == 101 and h.get("upgrade") == "x-test", got
            after = got.split(b"\r\n\r\n", 1)[1]
            if after != RawUpgradeServer.FIRST:
                # diagnosis: were they lost, or held back until the upstream sends again?
                s.sendall(b"ping")
                try:
                    later = s.recv(4096)
                except OSError as e:
                    later = repr(e).encode()
                raise AssertionError(
                    f"the bytes the upstream sent with its 101 did not arrive within 3 s (got {after!r} after the "
                    f"head); after the client sent b'ping' (echoed by the upstream) it received {later!r}")
        finally:
            s.close()
    finally:
        up.close()


def test_refused_upgrade_is_forwarded_then_closed(start_meshd, backend):
    mesh = start_meshd(base_config(
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}]))
    u0 = metric(mesh, "meshd_upgrades_total")
    req = (b"GET /status?code=400 HTTP/1.1\r\nHost: py\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    got, closed, took = raw_exchange(mesh.outbound, req, timeout=5)
    status, h = parse_response_head(got)
    assert status == 400, got[:300]
    assert got.split(b"\r\n\r\n", 1)[1] == b"status 400\n", got
    assert closed and took < 3, f"connection not closed after the refused upgrade (closed={closed}, {took:.2f}s)"
    assert metric(mesh, "meshd_upgrades_total") == u0


def test_meshd_own_reply_to_an_upgrade_closes_the_connection(start_meshd):
    """NIO's request decoder stops parsing after an upgrade request; when meshd answers it itself
    (here 503: the endpoint refuses connections) the connection must end with that answer — kept
    alive, the client's next request on it would never be read (it waited for its own timeout)."""
    mesh = start_meshd(base_config(
        services=[{"name": "ws", "endpoints": [f"127.0.0.1:{free_port()}"]}],
        routes=[{"match": {"authority": "ws"}, "service": "ws"}]))
    req = (b"GET / HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    got, closed, took = raw_exchange(mesh.outbound, req, timeout=5)
    status, h = parse_response_head(got)
    assert status == 503 and h.get("x-meshd-error") == "connect-failed", got[:300]
    assert h.get("connection") == "close", got[:300]
    assert closed and took < 3, f"connection left open after meshd's reply to an upgrade (closed={closed}, {took:.2f}s)"


class KeepAliveRefuser(ThreadedListener):
    """An HTTP/1.1 server that refuses upgrades with a keep-alive 426 (RFC 9110 allows going on) and
    answers anything else 200; records (connection number, request line) of every request."""

    def __init__(self):
        import threading

        self.seen: list[tuple[int, str]] = []
        self.lock = threading.Lock()
        self.conns = 0
        super().__init__()

    def _conn(self, c):
        with self.lock:
            self.conns += 1
            n = self.conns
        c.settimeout(10)
        buf = b""
        try:
            while (got := _read_head(c, buf)) is not None:
                head, buf = got
                line = head.split(b"\r\n", 1)[0].decode()
                with self.lock:
                    self.seen.append((n, line))
                if b"\r\nupgrade:" in head.lower():
                    c.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                else:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def test_upstream_connection_is_not_reused_after_a_refused_upgrade(start_meshd):
    """A peer may keep reading HTTP/1.1 after refusing an upgrade, or not (one on NIO's decoder does
    not: another meshd did not): meshd never sends another request on that connection."""
    up = KeepAliveRefuser()
    try:
        mesh = start_meshd(base_config(services=[{"name": "up", "endpoints": [up.addr]}],
                                       routes=[{"match": {"authority": "up"}, "service": "up"}]))
        req = b"GET /ws HTTP/1.1\r\nHost: up\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        got, closed, _ = raw_exchange(mesh.outbound, req, timeout=5)
        assert parse_response_head(got)[0] == 426, got[:300]
        for _ in range(3):
            status, _, body = http_request(mesh.outbound, "GET", "/plain", headers={"Host": "up"}, timeout=5)
            assert status == 200 and body == b"ok\n"
        with up.lock:
            seen = list(up.seen)
        upgrade_conn = next(n for n, line in seen if line.startswith("GET /ws"))
        assert all(n != upgrade_conn for n, line in seen if line.startswith("GET /plain")), seen
    finally:
        up.close()


def test_refused_upgrade_between_two_meshd_leaves_no_stuck_connection(start_meshd):
    """The soak's lost WebSocket: node A → node B, B answers an upgrade itself (503, its app is down),
    and the next request A sends to B must be answered at once, not wait for A's route timeout on a
    pooled connection B no longer reads."""
    b = start_meshd(base_config(inbound={"listen": "127.0.0.1:0", "app": f"127.0.0.1:{free_port()}"}), name="b")
    b_in = f"{b.inbound[0]}:{b.inbound[1]}"
    a = start_meshd(base_config(
        services=[{"name": "ws", "endpoints": [b_in]}],
        routes=[{"match": {"authority": "ws"}, "service": "ws", "timeout": "4s"}]), name="a")
    req = (b"GET / HTTP/1.1\r\nHost: ws\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    got, _, _ = raw_exchange(a.outbound, req, timeout=8)
    assert parse_response_head(got)[0] == 503, got[:300]
    for _ in range(3):
        t0 = time.monotonic()
        status, h, _ = http_request(a.outbound, "GET", "/", headers={"Host": "ws"}, timeout=8)
        took = time.monotonic() - t0
        assert status == 503 and h.get("x-meshd-error") == "connect-failed", (status, h)
        assert took < 1.5, f"the request after a refused upgrade took {took:.1f}s (a stuck pooled connection)"


# --------------------------------------------------------------------------------------------
# 6. Config validation of the new keys


def _check(tmp_path, text: str):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    return run([meshd_bin(), "--check", "--config", str(f)], timeout=10)


@pytest.mark.parametrize("text,pattern", [
    ('outbound: { listen: "127.0.0.1:0", protocol: quic }\n', r"outbound\.protocol \(line 1[,)].*quic"),
    ('inbound: { listen: "127.0.0.1:0", protocol: udp }\n', r"inbound\.protocol \(line 1[,)].*udp"),
    ('services:\n  - name: db\n    protocol: tcp\n    endpoints: ["127.0.0.1:5432"]\n', r"services\[0\]: .*\blisten\b"),
    ('services:\n  - name: web\n    listen: "127.0.0.1:7000"\n    endpoints: ["127.0.0.1:80"]\n',
     r"services\[0\]\.listen \(line 3[,)]"),
], ids=["outbound-quic", "inbound-udp", "tcp-without-listen", "listen-on-http-service"])
def test_protocol_config_validation(tmp_path, text, pattern):
    r = _check(tmp_path, text)
    err = r.stderr.decode()
    assert r.returncode == 2, f"exit {r.returncode}; stderr:\n{err}"
    assert re.search(pattern, err), f"stderr does not match /{pattern}/:\n{err}"


def test_protocol_config_valid(tmp_path):
    r = _check(tmp_path, (
        'outbound: { listen: "127.0.0.1:0", protocol: tcp }\n'
        'inbound: { listen: "127.0.0.1:0", app: "127.0.0.1:8080", protocol: http1 }\n'
        'http: { detectTimeout: 2s }\n'
        'services:\n  - name: db\n    protocol: tcp\n    listen: "127.0.0.1:15432"\n'
        '    timeouts: { connect: 1s, idle: 30s }\n    endpoints: ["127.0.0.1:5432"]\n'))
    assert r.returncode == 0, r.stderr.decode()
