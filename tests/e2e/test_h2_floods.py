"""HTTP/2 frame floods against meshd's h2c listener, each while a well-behaved client is served:
CONTINUATION frames without end (CVE-2024-27316), SETTINGS and PING floods, empty DATA frames.

Each flooding connection must be closed by meshd (SwiftNIO's bounds, documented in
docs/reliability.md: 5 CONTINUATION frames per header block, 200 control frames per 30 s, 1 empty
DATA frame in a row), the well-behaved client gets 200 on every request meanwhile, and meshd's
memory stays within a few MiB (issue 15)."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time

import pytest

hpack = pytest.importorskip("hpack", reason="Python package 'hpack' (with h2) is not installed")

from meshlib import base_config, h2_frame, H2_PREFACE, rss_mib  # noqa: E402


POST = hpack.Encoder().encode([(":method", "POST"), (":scheme", "http"), (":path", "/"), (":authority", "web")])
HEADERS, CONTINUATION, SETTINGS, PING, DATA = 1, 9, 4, 6, 0
END_STREAM, END_HEADERS = 0x1, 0x4


def continuation_flood() -> bytes:
    # A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION after CONTINUATION.
    out = h2_frame(HEADERS, 0, 1, POST[:4])
    for _ in range(2000):
        out += h2_frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b")  # literal "a: b", never END_HEADERS
    return out


def settings_flood() -> bytes:
    return b"".join(h2_frame(SETTINGS, 0, 0) for _ in range(5000))


def ping_flood() -> bytes:
    return b"".join(h2_frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(5000))


def empty_data_flood() -> bytes:
    return h2_frame(HEADERS, END_HEADERS, 1, POST) + b"".join(h2_frame(DATA, 0, 1) for _ in range(5000))


FLOODS = {"continuation": continuation_flood, "settings": settings_flood, "ping": ping_flood, "empty-data": empty_data_flood}


def closed_by_peer(addr, payload: bytes, timeout: float = 10.0) -> bool:
    """Sends the flood and reads until meshd closes the connection (True) or `timeout` passes."""
    s = socket.create_connection(addr, timeout=timeout)
    try:
        try:
            s.sendall(H2_PREFACE + payload)
        except (BrokenPipeError, ConnectionResetError):
            return True  # closed while we were still sending
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not s.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except socket.timeout:
                return False
        return False
    finally:
        s.close()


@pytest.fixture(scope="module")
def h2_meshd(start_meshd_module, nginx):
    return start_meshd_module(base_config(
        threads=2,
        services=[{"name": "web", "protocol": "http1", "endpoints": [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}]), name="h2-floods")


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_flood_loses_its_connection_and_others_are_served(h2_meshd, kind):
    m = h2_meshd
    url = f"http://{m.outbound[0]}:{m.outbound[1]}/"
    rss0 = rss_mib(m.proc.pid)
    payload = FLOODS[kind]()
    results = []

    def flood():
        results.extend(closed_by_peer(m.outbound, payload) for _ in range(4))

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    codes = []
    while t.is_alive() or len(codes) < 5:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                            "--http2-prior-knowledge", "-H", "host: web", url], capture_output=True, timeout=10)
        codes.append(r.stdout.decode())
        if len(codes) > 200:
            break
    t.join(timeout=60)
    assert results == [True] * 4, f"{kind}: a flooding connection was not closed: {results}"
    assert codes and all(c == "200" for c in codes), f"{kind}: well-behaved client got {codes}"
    assert rss_mib(m.proc.pid) - rss0 < 16, f"{kind}: RSS {rss0:.1f} → {rss_mib(m.proc.pid):.1f} MiB"
    assert m.proc.poll() is None
