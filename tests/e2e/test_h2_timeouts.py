"""HTTP/2 connections that never complete a request are closed on time (issue 15, item 3): a silent
connection, a preface alone, a HEADERS block never finished (`http.headerReadTimeout`), and a POST
whose body never comes after meshd answered (the stream after `http.idleTimeout`, then the idle
connection). Twenty silent connections no longer lock new clients out of a 20-connection listener."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

hpack = pytest.importorskip("hpack", reason="Python package 'hpack' (with h2) is not installed")

from meshlib import base_config, h2_frame, H2_PREFACE  # noqa: E402


POST = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "web")])

CASES = {
    "nothing": (b"", 2.0),
    "preface": (H2_PREFACE, 2.0),
    "partial-headers": (H2_PREFACE + h2_frame(1, 0, 1, POST[:5]), 2.0),  # no END_HEADERS, no CONTINUATION
    "post-without-body": (H2_PREFACE + h2_frame(1, 0x4, 1, POST), 2 * 3.0),  # stream idle, then connection idle
}


def closed_after(sock: socket.socket, t0: float, limit: float) -> float | None:
    sock.settimeout(0.2)
    while time.monotonic() - t0 < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except ConnectionResetError:
            return time.monotonic() - t0
    return None


@pytest.mark.parametrize("protocol", ["detect", "http2"])
def test_connections_without_a_request_are_closed(start_meshd, nginx, protocol):
    m = start_meshd(base_config(
        threads=1, http={"idleTimeout": "3s", "headerReadTimeout": "2s", "maxConnections": 20},
        outbound={"listen": "127.0.0.1:0", "protocol": protocol},
        services=[{"name": "web", "protocol": "http1", "endpoints": [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}]), name=f"h2-timeouts-{protocol}")
    socks = {}
    for name, (data, _) in CASES.items():
        s = socket.create_connection(m.outbound)
        s.sendall(data)
        socks[name] = (s, time.monotonic())
    for name, (s, t0) in socks.items():
        limit = CASES[name][1]
        took = closed_after(s, t0, limit + 3.0)
        s.close()
        assert took is not None, f"{name}: still open {limit + 3.0:.0f}s later"
        assert took >= limit * 0.8, f"{name}: closed after {took:.1f}s, before its timeout"
    # Twenty silent connections fill a 20-connection listener, then are closed: clients get in again.
    silent = [socket.create_connection(m.outbound) for _ in range(20)]
    time.sleep(3.0)
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--http2-prior-knowledge",
                        "-H", "host: web", f"http://{m.outbound[0]}:{m.outbound[1]}/"], capture_output=True, timeout=10)
    assert r.stdout == b"200", r
    for s in silent:
        s.close()
