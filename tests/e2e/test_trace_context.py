"""Request identity and trace context through one and two meshd hops.

Topology: client → meshd A (outbound) → the Python backend (one hop, authority `py`), and
client → meshd A → meshd B (inbound, sidecar of the backend) → the backend (two hops, authority
`two`). The backend's /headers echoes what it received; both meshd write access logs.

meshd keeps `x-request-id`, `traceparent`, `tracestate`, `b3` and `x-b3-*` unchanged; adds an
`x-request-id` (UUID v4) and a `traceparent` (W3C, not sampled) when a request has none (the first hop
adds them, later hops keep them); replaces a malformed `traceparent` (dropping its `tracestate`);
starts the new trace with the B3 trace id when B3 headers came; appends to `x-forwarded-for`. Every
access-log line of a request, on every hop, carries the same request id and trace id.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from meshlib import base_config, curl, http_request

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")
VALID_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def mesh(start_meshd_module, backend):
    b = start_meshd_module(base_config(
        accessLog=True, inbound={"listen": "127.0.0.1:0", "app": backend.addr, "appProtocol": "http1"}), name="trace-b")
    a = start_meshd_module(base_config(
        accessLog=True,
        services=[{"name": "py", "protocol": "http1", "endpoints": [backend.addr]},
                  {"name": "two", "protocol": "http1", "endpoints": [f"{b.inbound[0]}:{b.inbound[1]}"]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}, {"match": {"authority": "two"}, "service": "two"}],
    ), name="trace-a")
    return {"a": a, "b": b}


def _seen(mesh, authority: str, headers: dict | None = None) -> dict[str, list[str]]:
    status, _, body = http_request(mesh["a"].outbound, "GET", "/headers", headers={"Host": authority, **(headers or {})})
    assert status == 200, (status, body)
    out: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _access(m, request_id: str) -> list[dict]:
    """m's access-log lines for one request id (lines are flushed every 100 ms)."""
    deadline = time.monotonic() + 3
    while True:
        got = [json.loads(l) for l in m.stdout_text().splitlines() if request_id in l]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.mark.parametrize("authority", ["py", "two"])
def test_ids_are_added_once_and_kept(mesh, authority):
    seen = _seen(mesh, authority)
    assert len(seen["x-request-id"]) == 1 and UUID4.fullmatch(seen["x-request-id"][0]), seen
    assert len(seen["traceparent"]) == 1, seen
    tp = TRACEPARENT.fullmatch(seen["traceparent"][0])
    assert tp and tp.group(3) == "00", seen["traceparent"]
    # x-forwarded-for: one address per meshd hop.
    assert seen["x-forwarded-for"] == [", ".join(["127.0.0.1"] * (1 if authority == "py" else 2))], seen
    # Every hop's access-log line names the same request and trace.
    rid, trace = seen["x-request-id"][0], tp.group(1)
    hops = [mesh["a"]] + ([mesh["b"]] if authority == "two" else [])
    for m in hops:
        lines = _access(m, rid)
        assert len(lines) == 1 and lines[0]["trace_id"] == trace, (m.name, lines)
    assert {l["direction"] for m in hops for l in _access(m, rid)} == ({"outbound", "inbound"} if authority == "two"
                                                                       else {"outbound"})


def test_client_headers_pass_unchanged_through_two_hops(mesh):
    sent = {
        "x-request-id": "client-chosen-id-42",
        "traceparent": VALID_TP,
        "tracestate": "vendor1=opaque,vendor2=x",
        "b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
        "x-b3-spanid": "00f067aa0ba902b7",
        "x-b3-sampled": "1",
        "x-forwarded-for": "203.0.113.9",
    }
    seen = _seen(mesh, "two", sent)
    for k, v in sent.items():
        if k == "x-forwarded-for":
            assert seen[k] == ["203.0.113.9, 127.0.0.1, 127.0.0.1"], seen[k]
        else:
            assert seen[k] == [v], (k, seen.get(k))
    for m in (mesh["a"], mesh["b"]):
        lines = _access(m, "client-chosen-id-42")
        assert lines and lines[-1]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736", lines


def test_malformed_traceparent_is_replaced(mesh):
    seen = _seen(mesh, "two", {"traceparent": "00-NOT-A-TRACE-01", "tracestate": "k=v"})
    assert len(seen["traceparent"]) == 1 and TRACEPARENT.fullmatch(seen["traceparent"][0]), seen
    assert "tracestate" not in seen, seen


def test_b3_trace_id_starts_the_traceparent(mesh):
    seen = _seen(mesh, "py", {"x-b3-traceid": "463ac35c9f6413ad", "x-b3-spanid": "a2fb4a1d1a96d312",
                              "x-b3-sampled": "1"})
    tp = TRACEPARENT.fullmatch(seen["traceparent"][0])
    assert tp and tp.group(1) == "0000000000000000463ac35c9f6413ad" and tp.group(3) == "01", seen
    assert seen["x-b3-traceid"] == ["463ac35c9f6413ad"]


def test_http2_request_gets_ids_too(mesh):
    r = curl("-s", "--http2-prior-knowledge", "-H", "Host: two", "-H", f"traceparent: {VALID_TP}",
             mesh["a"].out_url + "/headers")
    got = {}
    for k, v in json.loads(r.stdout)["headers"]:
        got.setdefault(k.lower(), []).append(v)
    assert got["traceparent"] == [VALID_TP], got
    assert len(got["x-request-id"]) == 1 and UUID4.fullmatch(got["x-request-id"][0]), got


def test_grpc_call_keeps_its_trace(start_meshd, tmp_path):
    """gRPC (grpcio through one meshd): the caller's traceparent and x-request-id are the ones in
    meshd's access log, and meshd adds none of its own."""
    grpc = pytest.importorskip("grpc")
    from test_grpc import GrpcServer, pb2, pb2_grpc

    server = GrpcServer(tmp_path, "trace-grpc")
    try:
        m = start_meshd(base_config(accessLog=True, services=[{"name": "echo", "protocol": "grpc",
                                                                "endpoints": [server.addr]}],
                                    routes=[{"match": {"authority": "echo"}, "service": "echo"}]), name="trace-grpc")
        ch = grpc.insecure_channel(f"{m.outbound[0]}:{m.outbound[1]}", options=[
            ("grpc.default_authority", "echo"), ("grpc.enable_http_proxy", 0)])
        with ch:
            pb2_grpc.EchoStub(ch).Unary(pb2.Msg(payload=b"x"), timeout=10,
                                        metadata=[("traceparent", VALID_TP), ("x-request-id", "grpc-call-7")])
        lines = _access(m, "grpc-call-7")
        assert len(lines) == 1, lines
        assert lines[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and lines[0]["grpc_status"] == 0, lines
    finally:
        server.stop()
