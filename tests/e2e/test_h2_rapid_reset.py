"""HTTP/2 rapid reset (CVE-2023-44487) against meshd's h2c listener: flooding connections send HEADERS
then RST_STREAM for every stream, while a well-behaved client keeps making requests.

The offenders must lose their connections (`meshd_connections_closed_total{reason="rapid_reset"}`),
no upstream work is started for a stream reset in the same read as its HEADERS, the well-behaved
client is served (every request 200), and meshd's memory does not grow from one flood round to the
next (issue 15, item 2: it used to grow by ~60-100 MiB per round and never shrink)."""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time

import pytest

hpack = pytest.importorskip("hpack", reason="Python package 'hpack' (with h2) is not installed")

from meshlib import base_config, h2_frame, H2_PREFACE, metric_value, rss_mib  # noqa: E402

ROUNDS = 3
ROUND_SECONDS = 4
FLOODERS = 6


BLOCK = hpack.Encoder().encode([(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "web")])


def flooder(addr, stop: threading.Event, stats: dict):
    """Opens connections and sends HEADERS + RST_STREAM(CANCEL) pairs until told to stop."""
    while not stop.is_set():
        s = None
        try:
            s = socket.create_connection(addr, timeout=2)
            s.sendall(H2_PREFACE)
            sid = 1
            while not stop.is_set():
                buf = bytearray()
                for _ in range(100):
                    buf += h2_frame(1, 0x5, sid, BLOCK) + h2_frame(3, 0, sid, struct.pack(">I", 8))
                    sid += 2
                s.sendall(buf)
                stats["pairs"] += 100
                s.setblocking(False)
                try:
                    while s.recv(65536):
                        pass
                except BlockingIOError:
                    pass
                s.setblocking(True)
        except OSError:
            stats["disconnects"] += 1
        finally:
            if s is not None:
                s.close()


def test_rapid_reset_flood_loses_its_connections_and_others_are_served(start_meshd, nginx):
    m = start_meshd(base_config(
        threads=2,
        services=[{"name": "web", "protocol": "http1", "endpoints": [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}]), name="flooded")
    url = f"http://{m.outbound[0]}:{m.outbound[1]}/"
    rss = [rss_mib(m.proc.pid)]
    served = []
    for _ in range(ROUNDS):
        stop = threading.Event()
        stats = {"pairs": 0, "disconnects": 0}
        threads = [threading.Thread(target=flooder, args=(m.outbound, stop, stats), daemon=True) for _ in range(FLOODERS)]
        for t in threads:
            t.start()
        codes = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < ROUND_SECONDS:
            r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "3",
                                "--http2-prior-knowledge", "-H", "host: web", url], capture_output=True, timeout=10)
            codes.append(r.stdout.decode())
        stop.set()
        for t in threads:
            t.join(timeout=10)
        served.append(codes)
        assert stats["disconnects"] > 0, f"no flooding connection was closed ({stats})"
        time.sleep(1)
        rss.append(rss_mib(m.proc.pid))
    text = m.metrics_text()
    closed = metric_value(text, "meshd_connections_closed_total", direction="outbound", reason="rapid_reset") or 0
    assert closed > 0, "no connection was closed for rapid reset"
    for codes in served:
        assert codes and all(c.startswith("200 ") for c in codes), codes
    # Reset streams started no upstream work: the only upstream connections are the good client's.
    connects = metric_value(text, "meshd_upstream_connects_total", result="ok") or 0
    good = sum(len(c) for c in served)
    assert connects <= good + 8, f"{connects:.0f} upstream connects for {good} real requests"
    # Memory: bounded, and flat from one round to the next (no per-stream or per-connection leak).
    assert max(rss) - rss[0] < 96, f"RSS MiB per round: {rss}"
    assert rss[-1] - rss[1] < 24, f"RSS grew across flood rounds: {rss}"
    assert m.proc.poll() is None
