"""gRPC under cancellation storms: bursts of concurrent calls that the grpcio client cancels at a short
deadline, then ordinary calls on the same channel. Every later call must be answered, in both the
two-hop sidecar path (client → meshd A outbound → meshd B inbound → grpcio server) and through an
inbound alone (client → meshd B inbound → grpcio server).

This is the shape of the hang of issue 10 (defect 0): a cancelled call whose upstream HEADERS were
still queued in SwiftNIO's HTTP/2 stream buffer left its upstream stream channel open forever, and
the pooled connection's stream accounting never got that stream back. Both connections are now at
frame level and meshd never hands NIO more streams than the endpoint allows; this suite keeps every
cancelled call's stream closed, including streams reset just as they opened (see
docs/architecture.md, "HTTP/2")."""

from __future__ import annotations

import time

import pytest

grpc = pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")

import grpc_proto  # noqa: E402
from meshlib import base_config, metric_value  # noqa: E402
from test_grpc import MAX_MSG, GrpcServer, client_side_config  # noqa: E402

pb2, pb2_grpc = grpc_proto.load()

BURSTS = 4
BURST_CALLS = 400


def channel(addr: str, authority: str = "echo"):
    return grpc.insecure_channel(addr, options=[
        ("grpc.default_authority", authority),
        ("grpc.enable_http_proxy", 0),
        ("grpc.enable_retries", 0),
        ("grpc.max_receive_message_length", MAX_MSG),
    ])


@pytest.fixture(params=["sidecar", "inbound"])
def storm_path(request, start_meshd, tmp_path):
    server = GrpcServer(tmp_path, f"storm-{request.param}")
    b = start_meshd(base_config(accessLog=True, inbound={"listen": "127.0.0.1:0", "app": server.addr}), name=f"storm-b-{request.param}")
    meshes = [b]
    if request.param == "sidecar":
        a = start_meshd(client_side_config(f"{b.inbound[0]}:{b.inbound[1]}", protocol="grpc"), name="storm-a")
        meshes.insert(0, a)
        addr = f"{a.outbound[0]}:{a.outbound[1]}"
    else:
        addr = f"{b.inbound[0]}:{b.inbound[1]}"
    yield addr, meshes
    server.stop()


# A deadline the calls run into while the endpoint works on them, and deadlines so short that the
# client resets streams just opened: some while meshd's upstream stream is still waiting for a free
# slot, some right after its HEADERS went upstream, some before meshd saw them.
@pytest.mark.parametrize("deadline", [0.3, 0.004], ids=["in-flight", "just-opened"])
def test_calls_after_cancellation_storms_are_answered(storm_path, deadline):
    addr, meshes = storm_path
    ch = channel(addr)
    stub = pb2_grpc.EchoStub(ch)
    with ch:
        stub.Unary(pb2.Msg(payload=b"warm"), timeout=5)
        for burst in range(BURSTS):
            futures = [stub.Sleep.future(pb2.SleepRequest(ms=500), timeout=deadline) for _ in range(BURST_CALLS)]
            codes = {(f.exception().code() if f.exception() else grpc.StatusCode.OK) for f in futures}
            assert codes <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.OK}, codes
            for i in range(5):
                try:
                    # (the server's 64 workers may still be finishing the cancelled sleeps for a moment)
                    reply = stub.Unary(pb2.Msg(payload=b"after %d" % i), timeout=10)
                except grpc.RpcError as e:
                    diag = "".join(
                        f"\n--- {m.name}: open upstream streams "
                        f"{metric_value(m.metrics_text(), 'meshd_upstream_http2_streams_open') or 0:.0f}"
                        f"\n{m.stderr_text()[-1500:]}\n{m.stdout_text()[-1500:]}" for m in meshes)
                    pytest.fail(f"burst {burst + 1}: call {i} after the storm failed: {e.code().name}{diag}")
                assert reply.payload == b"after %d" % i
    # Every cancelled call's upstream stream is gone: nothing stays open once the calls are over.
    for m in meshes:
        deadline = time.monotonic() + 3
        while (open_streams := metric_value(m.metrics_text(), "meshd_upstream_http2_streams_open") or 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_streams == 0, f"{m.name}: {open_streams:.0f} upstream HTTP/2 streams still open"
