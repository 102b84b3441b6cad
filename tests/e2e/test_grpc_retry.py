"""gRPC retries on a status (`retryOn: [unavailable]`) with grpcio peers.

Topology: client → meshd A (outbound, service `echo` over two sidecars B1 and B2, round robin,
`retryOn: [connect-failure, unavailable]`) → B1 → grpc_server.py, and → B2 → a port nothing listens on.
B2 answers every call with a trailers-only `14 UNAVAILABLE` (its app is down), so A retries it on B1:
every call succeeds. And a route that retries on a gRPC status must not hold a streaming response:
a bidi call whose client waits for each echo before sending the next message runs at full speed
(meshd holds a response head only until its first message or its trailers).
"""

from __future__ import annotations

import queue
import time

import pytest

grpc = pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("grpc_tools", reason="Python package 'grpcio-tools' is not installed")

from meshlib import base_config, free_port, metric_value  # noqa: E402
from test_grpc import GrpcServer, pb2, pb2_grpc  # noqa: E402


@pytest.fixture(scope="module")
def mesh(start_meshd_module, tmp_path_factory):
    server = GrpcServer(tmp_path_factory.mktemp("grpc-retry"), "retry-app")
    b1 = start_meshd_module(base_config(inbound={"listen": "127.0.0.1:0", "app": server.addr}), name="retry-b1")
    b2 = start_meshd_module(base_config(inbound={"listen": "127.0.0.1:0", "app": f"127.0.0.1:{free_port()}"}),
                            name="retry-b2-dead-app")
    a = start_meshd_module(base_config(
        services=[{"name": "echo", "protocol": "grpc",
                   "endpoints": [f"127.0.0.1:{b1.inbound[1]}", f"127.0.0.1:{b2.inbound[1]}"],
                   "outlierDetection": {"enabled": False}}],
        routes=[{"match": {"authority": "echo"}, "service": "echo",
                 "retry": {"retryOn": ["connect-failure", "unavailable"], "attempts": 3, "retryNonIdempotent": True,
                           "budget": {"ratio": 1.0, "minPerSecond": 100}}}],
    ), name="retry-a")
    yield {"a": a, "server": server}
    server.stop()


def _stub(m):
    ch = grpc.insecure_channel(f"{m.outbound[0]}:{m.outbound[1]}", options=[
        ("grpc.default_authority", "echo"), ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)])
    return ch, pb2_grpc.EchoStub(ch)


def test_unavailable_from_a_dead_app_is_retried_elsewhere(mesh):
    a = mesh["a"]
    before = metric_value(a.metrics_text(), "meshd_retries_total", service="echo", reason="grpc") or 0
    ch, stub = _stub(a)
    with ch:
        for i in range(20):
            r = stub.Unary(pb2.Msg(payload=b"p", seq=i), timeout=10)
            assert r.seq == i
    retried = (metric_value(a.metrics_text(), "meshd_retries_total", service="echo", reason="grpc") or 0) - before
    assert retried >= 5, f"about half of the calls met the dead app first; {retried} were retried"


def test_bidi_ping_pong_is_not_held_for_trailers(mesh):
    """Each message is echoed before the next is sent: the response must flow while the call is open."""
    q: queue.Queue = queue.Queue()

    def requests():
        for i in range(30):
            yield pb2.Msg(payload=str(i).encode(), seq=i)
            if q.get(timeout=5) != i:
                return

    ch, stub = _stub(mesh["a"])
    t0 = time.monotonic()
    with ch:
        # A call that lands on the dead app first gets UNAVAILABLE before any message and is retried.
        for _ in range(3):
            seen = []
            for m in stub.Bidi(requests(), timeout=20):
                seen.append(m.seq)
                q.put(m.seq)
            assert seen == list(range(30)), seen
    assert time.monotonic() - t0 < 10, "the echoes were held"


def test_server_stream_messages_arrive_as_sent(mesh):
    ch, stub = _stub(mesh["a"])
    with ch:
        for _ in range(2):
            t0 = time.monotonic()
            call = stub.ServerStream(pb2.StreamRequest(count=10, size=10, delay_ms=100), timeout=20)
            first = None
            n = 0
            for _m in call:
                if first is None:
                    first = time.monotonic() - t0
                n += 1
            assert n == 10
            assert first < 0.5, f"the first message came after {first:.2f}s: the stream was held until its end"
