"""gRPC through meshd with real grpcio peers: grpc_server.py (meshtest.Echo, proto/meshtest.proto) behind
meshd, and a grpcio client in this process whose channel targets the client-side meshd's outbound listener
(an explicit proxy: the channel's `:authority` is the service name, `grpc.default_authority`).

Two placements, each a full two-hop path:
  sidecar: client → meshd A outbound (service `echo`, `protocol: grpc`) → meshd B inbound (sidecar whose
           `inbound.app` is the gRPC server; h2c detected, `appProtocol: auto`) → gRPC server
  node:    client → meshd A outbound (service `echo`, default `protocol: auto`, endpoint
           {address: <pod>, via: <node inbound>}) → node meshd inbound (pod CIDR 127.0.0.4/32) → gRPC
           server on the "pod" address 127.0.0.4, as test_node_mode.py does it with loopback addresses.

Also: deadlines (the client's, and meshd's own `grpc-timeout` enforcement checked with raw HTTP/2 requests
from the `h2` package against a backend that never answers), a killed backend (new call and a stream in
flight → UNAVAILABLE), meshd's own gRPC-shaped errors (no route → UNIMPLEMENTED, no endpoints →
UNAVAILABLE, both with `x-meshd-error`), the gRPC and protocol-detection metrics, and HTTP/2 connection
hygiene (closed client connections released, prompt SIGTERM with an idle pooled connection, 300 calls on
one pooled meshd → meshd connection without it being closed).

Python code for the proto is generated at test time into tests/e2e/.gen/ (grpc_proto.py)."""

from __future__ import annotations

import hashlib
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("grpc_tools", reason="Python package 'grpcio-tools' is not installed (pip install -r tests/e2e/requirements.txt)")
h2 = pytest.importorskip("h2", reason="Python package 'h2' is not installed (pip install -r tests/e2e/requirements.txt)")

import h2.config  # noqa: E402
import h2.connection  # noqa: E402
import h2.errors  # noqa: E402
import h2.events  # noqa: E402

import grpc_proto  # noqa: E402
from meshlib import HERE, ThreadedListener, _readline_timeout, base_config, kill_group, metric_value, popen  # noqa: E402

pb2, pb2_grpc = grpc_proto.load()  # generate once here, before any grpc_server.py process starts

GRPC_SERVER = HERE / "grpc_server.py"
NODE_IP = "127.0.0.2"
POD_IP = "127.0.0.4"
MAX_MSG = 32 << 20
PLACEMENTS = ["sidecar", "node"]

# gRPC status codes (numbers, as in grpc-status)
DEADLINE_EXCEEDED = 4
UNAVAILABLE = 14


# --------------------------------------------------------------------------------------------
# Peers


class GrpcServer:
    """grpc_server.py: meshtest.Echo on `host`, replies name themselves in `x-backend` metadata."""

    def __init__(self, logdir: Path, name: str, host: str = "127.0.0.1"):
        self.name = name
        self.err = logdir / f"grpc-{name}.err"
        cmd = [sys.executable, str(GRPC_SERVER), "--host", host, "--port", "0", "--name", name]
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=open(self.err, "wb"))
        line = _readline_timeout(self.proc, 20.0)
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            kill_group(self.proc)
            raise RuntimeError(f"grpc server {name} did not start: {line!r}\n{self.err.read_text()[-2000:]}")
        self.host = host
        self.port = int(m.group(1))
        self.addr = f"{host}:{self.port}"

    def kill(self):
        kill_group(self.proc)  # SIGKILL to its process group

    stop = kill


class HangServer(ThreadedListener):
    """An HTTP/2 (h2c) server that accepts every stream and never finishes it, so only meshd can end a
    call: on a path containing `HeadersThenHang` it sends a 200 gRPC response head first, otherwise
    nothing at all. Counts requests and the streams the peer reset."""

    def __init__(self):
        self.requests: list[dict] = []
        self.resets: list[int] = []
        self.lock = threading.Lock()
        super().__init__()

    def _conn(self, c: socket.socket):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        c.settimeout(60)
        try:
            conn.initiate_connection()
            c.sendall(conn.data_to_send())
            while True:
                data = c.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hdrs = dict(ev.headers)
                        with self.lock:
                            self.requests.append(hdrs)
                        if "HeadersThenHang" in hdrs.get(":path", ""):
                            conn.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamReset):
                        with self.lock:
                            self.resets.append(ev.stream_id)
                out = conn.data_to_send()
                if out:
                    c.sendall(out)
        except Exception:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Topologies


class Topology:
    def __init__(self, placement: str, client_mesh, server_mesh, server: GrpcServer):
        self.placement = placement
        self.a = client_mesh  # the client-side meshd (outbound)
        self.b = server_mesh  # the server-side sidecar, or the node proxy
        self.server = server

    def channel(self, authority: str = "echo"):
        return grpc.insecure_channel(f"{self.a.outbound[0]}:{self.a.outbound[1]}", options=[
            ("grpc.default_authority", authority),
            ("grpc.enable_http_proxy", 0),  # never a proxy from the environment
            ("grpc.enable_retries", 0),     # every status the test sees is the one meshd sent
            ("grpc.max_receive_message_length", MAX_MSG),
            ("grpc.max_send_message_length", MAX_MSG),
        ])

    def stub(self, authority: str = "echo"):
        ch = self.channel(authority)
        return ch, pb2_grpc.EchoStub(ch)

    def logs(self, n: int = 3000) -> str:
        return "".join(f"\n--- {m.name} stderr (tail) ---\n{m.stderr_text()[-n:]}" for m in (self.a, self.b))


def client_side_config(echo_endpoint, *, protocol: str | None, hang: HangServer | None = None) -> dict:
    echo = {"name": "echo", "endpoints": [echo_endpoint]}
    if protocol:
        echo["protocol"] = protocol
    services = [echo, {"name": "empty", "protocol": "grpc", "endpoints": []}]
    routes = [{"name": "echo", "match": {"authority": "echo"}, "service": "echo"},
              {"name": "empty", "match": {"authority": "empty"}, "service": "empty"}]
    if hang is not None:
        services.append({"name": "hang", "protocol": "grpc", "endpoints": [hang.addr]})
        routes.append({"name": "hang", "match": {"authority": "hang"}, "service": "hang"})
    return base_config(services=services, routes=routes)


def build_topology(placement: str, start, logdir: Path, tag: str, hang: HangServer | None = None) -> Topology:
    if placement == "sidecar":
        server = GrpcServer(logdir, f"{tag}-sidecar-app")
        b = start(base_config(inbound={"listen": "127.0.0.1:0", "app": server.addr}), name=f"{tag}-sidecar-b")
        a = start(client_side_config(f"{b.inbound[0]}:{b.inbound[1]}", protocol="grpc", hang=hang),
                  name=f"{tag}-sidecar-a")
    else:
        server = GrpcServer(logdir, f"{tag}-pod", host=POD_IP)
        b = start({
            "mode": "node",
            "nodeIP": NODE_IP,
            "threads": 1,
            "outbound": {"listen": f"{NODE_IP}:0"},
            "inbound": {"listen": f"{NODE_IP}:0"},
            "admin": {"listen": "127.0.0.1:0"},
            "node": {"podCIDRs": [f"{POD_IP}/32"], "allowedSources": ["127.0.0.3/32"]},
            "drainTimeout": "5s",
            "services": [],
            "routes": [],
        }, name=f"{tag}-node")
        a = start(client_side_config({"address": server.addr, "via": f"{NODE_IP}:{b.inbound[1]}"}, protocol=None,
                                     hang=hang), name=f"{tag}-node-sidecar-a")
    return Topology(placement, a, b, server)


@pytest.fixture(scope="module")
def hang_server():
    h = HangServer()
    yield h
    h.close()


@pytest.fixture(scope="module")
def topologies(start_meshd_module, tmp_path_factory, hang_server):
    logdir = tmp_path_factory.mktemp("grpc")
    built = {p: build_topology(p, start_meshd_module, logdir, "m", hang=hang_server) for p in PLACEMENTS}
    yield built
    for t in built.values():
        t.server.stop()


@pytest.fixture(params=PLACEMENTS)
def topo(request, topologies) -> Topology:
    return topologies[request.param]


@pytest.fixture
def sidecar_topo(topologies) -> Topology:
    return topologies["sidecar"]


@pytest.fixture(params=PLACEMENTS)
def fresh_topo(request, start_meshd, tmp_path):
    """A topology of the test's own (its backend gets killed)."""
    t = build_topology(request.param, start_meshd, tmp_path, "k")
    yield t
    t.server.stop()


# --------------------------------------------------------------------------------------------
# Helpers


def metric(mesh, name, **labels) -> float:
    return metric_value(mesh.metrics_text(), name, **labels) or 0.0


def grpc_responses(mesh, code: str, direction: str = "outbound", service: str = "echo") -> float:
    return metric(mesh, "meshd_grpc_responses_total", direction=direction, service=service, code=code)


def md_dict(*mds) -> dict:
    out = {}
    for md in mds:
        for k, v in (md or ()):
            out[k] = v
    return out


def error_metadata(e) -> dict:
    """Initial and trailing metadata of a failed call (a trailers-only reply puts all of it in the trailers)."""
    return md_dict(e.initial_metadata(), e.trailing_metadata())


def expect_error(fn, *args, **kw):
    try:
        res = fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    raise AssertionError(f"expected the call to fail, it returned {res!r}")


def grpc_frame(msg) -> bytes:
    data = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(data)) + data


def raw_grpc_call(addr, authority: str, path: str, msg, extra_headers=(), timeout: float = 6.0,
                  reset_after_head: bool = False) -> dict:
    """One gRPC call on a fresh h2c connection, with exactly the headers given (no client-side deadline):
    → {"headers", "trailers" (dicts, None when absent), "data", "reset" (RST_STREAM code or None),
    "ended" (END_STREAM seen), "closed", "seconds" (request sent → stream ended/reset/closed)}.
    `reset_after_head`: the client cancels the call (RST_STREAM CANCEL) once the response head arrives."""
    s = socket.create_connection(addr, timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    res = {"headers": None, "trailers": None, "data": b"", "reset": None, "ended": False, "closed": False}
    try:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
                                ("content-type", "application/grpc"), ("te", "trailers")] + list(extra_headers))
        conn.send_data(sid, grpc_frame(msg), end_stream=True)
        s.sendall(conn.data_to_send())
        t0 = time.monotonic()
        deadline = t0 + timeout
        done = False
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                res["closed"] = True
                break
            for ev in conn.receive_data(data):
                if getattr(ev, "stream_id", sid) != sid:
                    continue
                if isinstance(ev, h2.events.ResponseReceived):
                    res["headers"] = dict(ev.headers)
                    if reset_after_head:
                        conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                        done = True
                elif isinstance(ev, h2.events.TrailersReceived):
                    res["trailers"] = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    res["data"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    res["ended"] = done = True
                elif isinstance(ev, h2.events.StreamReset):
                    res["reset"] = ev.error_code
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    res["closed"] = done = True
            out = conn.data_to_send()
            if out:
                s.sendall(out)
        res["seconds"] = time.monotonic() - t0
    finally:
        s.close()
    return res


def grpc_status_of(res: dict) -> str | None:
    """grpc-status from the trailers, or from the response head of a trailers-only reply."""
    for part in (res["trailers"], res["headers"]):
        if part and "grpc-status" in part:
            return part["grpc-status"]
    return None


# --------------------------------------------------------------------------------------------
# 1. The four call kinds, both placements


def test_unary(topo):
    ch, stub = topo.stub()
    with ch:
        rnd = random.Random(1)
        for i, size in enumerate([0, 1, 100, 16 * 1024, 300 * 1024, 3 * 1024 * 1024]):
            payload = rnd.randbytes(size)
            r, call = stub.Unary.with_call(pb2.Msg(payload=payload, seq=i), timeout=10)
            assert r.seq == i and r.payload == payload, f"unary of {size} bytes came back different ({len(r.payload)})"
            assert call.code() == grpc.StatusCode.OK
            md = md_dict(call.initial_metadata())
            assert md.get("x-backend") == topo.server.name, md


def test_server_stream_10000_in_order(topo):
    ch, stub = topo.stub()
    with ch:
        t0 = time.monotonic()
        call = stub.ServerStream(pb2.StreamRequest(count=10000, size=64), timeout=30)
        n = 0
        for m in call:
            assert m.seq == n, f"message {n}: got seq {m.seq} (lost, duplicated or reordered)"
            assert m.payload == grpc_proto.pattern(n, 64), f"message {n}: payload differs"
            n += 1
        assert n == 10000, f"{n} of 10000 messages arrived"
        assert call.code() == grpc.StatusCode.OK, (call.code(), call.details())
        assert md_dict(call.trailing_metadata()).get("x-trailer-count") == "10000"
        print(f"{topo.placement}: 10000 server-stream messages in {time.monotonic() - t0:.2f}s")


def test_server_stream_large_messages(topo):
    """40 × 256 KiB: each message alone fills meshd's per-stream window (256 KiB by default)."""
    ch, stub = topo.stub()
    size = 256 * 1024
    with ch:
        call = stub.ServerStream(pb2.StreamRequest(count=40, size=size), timeout=30)
        got = [(m.seq, m.payload == grpc_proto.pattern(m.seq, size)) for m in call]
        assert got == [(i, True) for i in range(40)], got[:5]
        assert call.code() == grpc.StatusCode.OK


def test_bidi_1000_in_order(topo):
    rnd = random.Random(2)
    msgs = [pb2.Msg(payload=rnd.randbytes(rnd.randrange(0, 4096)), seq=i) for i in range(1000)]
    ch, stub = topo.stub()
    with ch:
        call = stub.Bidi(iter(msgs), timeout=30)
        n = 0
        for m in call:
            assert n < len(msgs), "more messages than were sent"
            assert m.seq == n, f"echo {n}: got seq {m.seq}"
            assert m.payload == msgs[n].payload, f"echo {n}: payload differs ({len(m.payload)} vs {len(msgs[n].payload)})"
            n += 1
        assert n == 1000, f"{n} of 1000 echoes arrived"
        assert call.code() == grpc.StatusCode.OK
        assert md_dict(call.trailing_metadata()).get("x-trailer-count") == "1000"


def test_bidi_ping_pong(topo):
    """Each message is echoed before the next is sent: the stream must not wait for more data."""
    import queue

    q: queue.Queue = queue.Queue()

    def requests():
        for i in range(50):
            yield pb2.Msg(payload=str(i).encode(), seq=i)
            if q.get(timeout=5) != i:
                return

    ch, stub = topo.stub()
    with ch:
        call = stub.Bidi(requests(), timeout=20)
        seen = []
        for m in call:
            seen.append(m.seq)
            q.put(m.seq)
        assert seen == list(range(50)), seen


def test_client_stream_1000(topo):
    rnd = random.Random(3)
    msgs = [pb2.Msg(payload=rnd.randbytes(rnd.randrange(0, 8192)), seq=i) for i in range(1000)]
    want = hashlib.sha256(b"".join(m.payload for m in msgs)).hexdigest()
    ch, stub = topo.stub()
    with ch:
        summary = stub.ClientStream(iter(msgs), timeout=30)
    assert summary.count == 1000, summary
    assert summary.bytes == sum(len(m.payload) for m in msgs), summary
    assert summary.sha256 == want, summary


def test_headers_and_trailers(topo):
    sent = [("x-echo-plain", "hello world"), ("x-echo-multi", "a,b ; c"), ("x-echo-data-bin", b"\x00\xff\x10binary")]
    ch, stub = topo.stub()
    with ch:
        # unary
        _, call = stub.Unary.with_call(pb2.Msg(payload=b"x"), metadata=sent, timeout=10)
        head, trail = md_dict(call.initial_metadata()), md_dict(call.trailing_metadata())
        for k, v in sent:
            assert head.get(k) == v, f"request metadata {k} did not come back intact: {head}"
        assert head.get("x-backend") == topo.server.name, head
        assert trail.get("x-backend-trailer") == topo.server.name, trail
        assert trail.get("x-trailer-bin") == b"\x00\x01\x02\xfe\xff", trail
        assert trail.get("x-trailer-count") == "1", trail
        # trailers after a stream of data frames
        call = stub.ServerStream(pb2.StreamRequest(count=20, size=1000), metadata=sent, timeout=10)
        assert len(list(call)) == 20
        head, trail = md_dict(call.initial_metadata()), md_dict(call.trailing_metadata())
        assert all(head.get(k) == v for k, v in sent), head
        assert trail.get("x-backend-trailer") == topo.server.name and trail.get("x-trailer-count") == "20", trail
        assert trail.get("x-trailer-bin") == b"\x00\x01\x02\xfe\xff", trail


# --------------------------------------------------------------------------------------------
# 2. Deadlines


def test_client_deadline(sidecar_topo):
    ch, stub = sidecar_topo.stub()
    with ch:
        t0 = time.monotonic()
        e = expect_error(stub.Sleep, pb2.SleepRequest(ms=2000), timeout=0.5)
        took = time.monotonic() - t0
        assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())
        assert took < 1.5, f"DEADLINE_EXCEEDED after {took:.2f}s"
        # the channel (and meshd's connection) still works after it
        r = stub.Unary(pb2.Msg(payload=b"after", seq=1), timeout=5)
        assert r.payload == b"after"


def test_grpc_timeout_header_raw_sleep(sidecar_topo):
    """The brief's case: grpc-timeout 300m, no client-side deadline, Sleep(3000) on the real server. (grpcio
    servers enforce grpc-timeout too, so this alone cannot tell who ended the call; see the next tests.)"""
    res = raw_grpc_call(sidecar_topo.a.outbound, "echo", "/meshtest.Echo/Sleep", pb2.SleepRequest(ms=3000),
                        [("grpc-timeout", "300m")])
    assert grpc_status_of(res) == str(DEADLINE_EXCEEDED), f"{res}{sidecar_topo.logs()}"
    assert res["seconds"] < 1.2, f"grpc-status 4 after {res['seconds']:.2f}s"


def test_grpc_timeout_enforced_by_meshd(sidecar_topo, hang_server):
    """A backend that never answers: only meshd can end the call, as DEADLINE_EXCEEDED at ~300 ms."""
    n0 = len(hang_server.requests)
    res = raw_grpc_call(sidecar_topo.a.outbound, "hang", "/meshtest.Echo/Sleep", pb2.SleepRequest(ms=3000),
                        [("grpc-timeout", "300m")])
    assert len(hang_server.requests) > n0, f"the request never reached the backend: {res}{sidecar_topo.logs()}"
    assert res["headers"] is not None, f"no response head within 6 s: {res}{sidecar_topo.logs()}"
    assert res["headers"].get(":status") == "200", res
    assert grpc_status_of(res) == str(DEADLINE_EXCEEDED), f"{res}{sidecar_topo.logs()}"
    assert 0.25 <= res["seconds"] < 1.2, f"grpc-status 4 after {res['seconds']:.2f}s (grpc-timeout 300m)"
    assert "x-meshd-error" in res["headers"], res["headers"]
    print("meshd deadline reply:", res["headers"], res["trailers"])


def test_grpc_timeout_after_response_head(sidecar_topo, hang_server):
    """The backend sends its response head, then nothing: the deadline still ends the call with
    grpc-status 4 (in trailers after the forwarded head)."""
    res = raw_grpc_call(sidecar_topo.a.outbound, "hang", "/meshtest.Echo/HeadersThenHang", pb2.SleepRequest(ms=3000),
                        [("grpc-timeout", "300m")])
    assert res["headers"] is not None and res["headers"].get(":status") == "200", f"{res}{sidecar_topo.logs()}"
    assert res["ended"] or res["reset"] is not None, f"the call did not end within 6 s: {res}{sidecar_topo.logs()}"
    assert res["seconds"] < 1.2, f"ended after {res['seconds']:.2f}s (grpc-timeout 300m)"
    assert grpc_status_of(res) == str(DEADLINE_EXCEEDED), f"{res}{sidecar_topo.logs()}"


def test_call_cancelled_after_the_response_head_counts_as_cancelled(sidecar_topo, hang_server):
    """The client cancels a call between its response head and its trailers: meshd counts it CANCELLED
    (it was counted UNKNOWN, for the grpc-status it never saw), and the backend's stream is reset."""
    mesh = sidecar_topo.a
    cancelled0 = grpc_responses(mesh, "CANCELLED", service="hang")
    unknown0 = grpc_responses(mesh, "UNKNOWN", service="hang")
    resets0 = len(hang_server.resets)
    res = raw_grpc_call(mesh.outbound, "hang", "/meshtest.Echo/HeadersThenHang", pb2.SleepRequest(ms=3000),
                        reset_after_head=True)
    assert res["headers"] is not None and res["headers"].get(":status") == "200", f"{res}{sidecar_topo.logs()}"
    deadline = time.monotonic() + 3
    while grpc_responses(mesh, "CANCELLED", service="hang") - cancelled0 < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert grpc_responses(mesh, "CANCELLED", service="hang") - cancelled0 == 1, mesh.metrics_text()
    assert grpc_responses(mesh, "UNKNOWN", service="hang") == unknown0, mesh.metrics_text()
    while len(hang_server.resets) == resets0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(hang_server.resets) > resets0, "meshd did not reset the backend's stream"


# --------------------------------------------------------------------------------------------
# 3. Killed backend


def test_killed_backend_new_call_unavailable(fresh_topo):
    ch, stub = fresh_topo.stub()
    with ch:
        assert stub.Unary(pb2.Msg(payload=b"warm"), timeout=5).payload == b"warm"
        u0 = grpc_responses(fresh_topo.a, "UNAVAILABLE")
        fresh_topo.server.kill()
        e = expect_error(stub.Unary, pb2.Msg(payload=b"after-kill"), timeout=5)
        md = error_metadata(e)
        assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{e.code()} {e.details()!r} {md}{fresh_topo.logs()}"
        assert "x-meshd-error" in md, f"the UNAVAILABLE did not come from meshd: {e.details()!r} {md}"
        print(f"{fresh_topo.placement}: after kill → {e.code()} {e.details()!r} {md}")
    assert grpc_responses(fresh_topo.a, "UNAVAILABLE") - u0 >= 1, fresh_topo.a.metrics_text()


def test_killed_backend_stream_in_progress_unavailable(fresh_topo):
    ch, stub = fresh_topo.stub()
    with ch:
        u0 = grpc_responses(fresh_topo.a, "UNAVAILABLE")
        call = stub.ServerStream(pb2.StreamRequest(count=100000, size=100, delay_ms=20), timeout=10)
        got = []
        err = None
        t0 = None
        try:
            for m in call:
                assert m.seq == len(got) and m.payload == grpc_proto.pattern(m.seq, 100)
                got.append(m.seq)
                if len(got) == 5:
                    fresh_topo.server.kill()
                    t0 = time.monotonic()
        except grpc.RpcError as e:
            err = e
        assert len(got) >= 5, got
        assert err is not None, "the stream ended without an error after its backend was killed"
        took = time.monotonic() - t0
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (
            f"stream in flight when its backend was killed ended with {err.code()} {err.details()!r} "
            f"after {len(got)} messages, {took:.2f}s after the kill; metadata {error_metadata(err)}{fresh_topo.logs()}")
        assert took < 5, f"UNAVAILABLE only {took:.2f}s after the kill"
        # grpcio's own words for a lost connection: the status must be meshd's, on a connection that stays up
        assert not re.search(r"Socket closed|Connection reset|Stream removed|failed to connect", err.details() or ""), (
            f"the client's connection to meshd was dropped instead of the stream ending with a status: {err.details()!r}")
        print(f"{fresh_topo.placement}: stream cut after {len(got)} messages → {err.code()} {err.details()!r}")
    wait_unavailable = time.monotonic() + 3
    while grpc_responses(fresh_topo.a, "UNAVAILABLE") - u0 < 1 and time.monotonic() < wait_unavailable:
        time.sleep(0.1)
    assert grpc_responses(fresh_topo.a, "UNAVAILABLE") - u0 >= 1, fresh_topo.a.metrics_text()


def test_sigterm_with_idle_http2_connection_exits_promptly(start_meshd, tmp_path):
    """The client-side meshd keeps its HTTP/2 connection to the server-side sidecar in its pool. On SIGTERM
    the server-side meshd sends GOAWAY; with no stream in flight it must be done well before drainTimeout
    (5 s here): the pooled connection is idle, and its peer closes it on GOAWAY."""
    t = build_topology("sidecar", start_meshd, tmp_path, "d")
    try:
        ch, stub = t.stub()
        with ch:
            assert stub.Unary(pb2.Msg(payload=b"x"), timeout=5).payload == b"x"
        time.sleep(0.3)
        t0 = time.monotonic()
        t.b.signal(signal.SIGTERM)
        rc = t.b.wait_exit(10)
        took = time.monotonic() - t0
        assert rc == 0, f"exit {rc}{t.logs()}"
        assert took < 2.0, (f"the server-side meshd took {took:.2f}s to stop with only an idle HTTP/2 connection "
                            f"(drainTimeout 5s){t.logs()}")
    finally:
        t.server.stop()


# --------------------------------------------------------------------------------------------
# 4. meshd's own gRPC errors


def test_no_route_unimplemented(sidecar_topo):
    ch, stub = sidecar_topo.stub(authority="no-such-service")
    with ch:
        e = expect_error(stub.Unary, pb2.Msg(payload=b"x"), timeout=5)
    md = error_metadata(e)
    assert e.code() == grpc.StatusCode.UNIMPLEMENTED, f"{e.code()} {e.details()!r} {md}{sidecar_topo.logs()}"
    assert "x-meshd-error" in md, md
    print("no route:", e.details(), md)


def test_no_endpoints_unavailable(sidecar_topo):
    ch, stub = sidecar_topo.stub(authority="empty")
    with ch:
        e = expect_error(stub.Unary, pb2.Msg(payload=b"x"), timeout=5)
    md = error_metadata(e)
    assert e.code() == grpc.StatusCode.UNAVAILABLE, f"{e.code()} {e.details()!r} {md}{sidecar_topo.logs()}"
    assert "x-meshd-error" in md, md
    print("no endpoints:", e.details(), md)


# --------------------------------------------------------------------------------------------
# 5. Metrics


def test_grpc_ok_metric(topo):
    ok0 = grpc_responses(topo.a, "OK")
    ch, stub = topo.stub()
    with ch:
        for i in range(3):
            stub.Unary(pb2.Msg(seq=i), timeout=5)
        assert len(list(stub.ServerStream(pb2.StreamRequest(count=3, size=1), timeout=5))) == 3
    deadline = time.monotonic() + 3  # counted when the reply ends, which may be a moment after the client saw it
    while grpc_responses(topo.a, "OK") - ok0 < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert grpc_responses(topo.a, "OK") - ok0 >= 4, topo.a.metrics_text()


def test_protocol_detected_http2(topo):
    ch, stub = topo.stub()
    with ch:
        stub.Unary(pb2.Msg(seq=1), timeout=5)
    assert metric(topo.a, "meshd_protocol_detected_total", direction="outbound", protocol="http2") > 0
    # … and the server-side meshd detected the h2c preface A opened towards it
    assert metric(topo.b, "meshd_protocol_detected_total", direction="inbound", protocol="http2") > 0


# --------------------------------------------------------------------------------------------
# 6. Connections


def test_downstream_http2_connection_closed_when_client_closes(sidecar_topo):
    """A client that closes its HTTP/2 connection after its call: meshd closes its side too (as it does
    for HTTP/1.1), instead of holding the connection until http.idleTimeout (60 s)."""
    a = sidecar_topo.a
    open0 = metric(a, "meshd_connections_open", direction="outbound")
    for _ in range(5):
        res = raw_grpc_call(a.outbound, "echo", "/meshtest.Echo/Unary", pb2.Msg(payload=b"x"))  # closes its socket
        assert grpc_status_of(res) == "0", res
    deadline = time.monotonic() + 2
    while metric(a, "meshd_connections_open", direction="outbound") > open0 and time.monotonic() < deadline:
        time.sleep(0.1)
    left = metric(a, "meshd_connections_open", direction="outbound") - open0
    assert left == 0, f"{left:.0f} of 5 closed client HTTP/2 connections still open in meshd 2 s later"


def test_many_calls_on_one_connection(topo):
    """300 sequential unary calls on one channel (one client connection, one pooled meshd → meshd
    connection): every one must succeed. (Last in the file: it may get the shared path's connection
    closed under it.)"""
    ch, stub = topo.stub()
    failed = []
    with ch:
        stub.Unary(pb2.Msg(payload=b"warm"), timeout=5)
        conns0 = metric(topo.b, "meshd_connections_total", direction="inbound")
        for i in range(300):
            try:
                stub.Unary(pb2.Msg(payload=b"m", seq=i), timeout=5)
            except grpc.RpcError as e:
                failed.append((i, e.code().name, e.details()))
        new_conns = metric(topo.b, "meshd_connections_total", direction="inbound") - conns0
    assert not failed, f"{len(failed)} of 300 calls failed, first: {failed[:3]}{topo.logs()}"
    # whether or not a call happened to be in flight when it went: the pooled connection must have lasted
    assert new_conns == 0, (f"the client-side meshd had to open {new_conns:.0f} new connection(s) to the server-side "
                            f"meshd during 300 sequential calls (its pooled HTTP/2 connection was closed){topo.logs()}")


def test_cancelled_calls_keep_the_connection(sidecar_topo):
    """300 calls that the client cancels at their deadline (each one an RST_STREAM to meshd) on one
    connection: meshd keeps the connection (http2.maxResetStreams, 10 000 per 30 s, not SwiftNIO's
    200 — the binary before that change fails the first assertion) and the next call on it succeeds."""
    topo = sidecar_topo
    ch, stub = topo.stub()
    with ch:
        stub.Unary(pb2.Msg(payload=b"warm"), timeout=5)
        conns0 = metric(topo.a, "meshd_connections_total", direction="outbound")
        futures = [stub.Sleep.future(pb2.SleepRequest(ms=500), timeout=0.2) for _ in range(300)]
        codes = [f.exception().code() if f.exception() else grpc.StatusCode.OK for f in futures]
        assert all(c == grpc.StatusCode.DEADLINE_EXCEEDED for c in codes), {c.name for c in codes}
        # (the backend's worker threads may still be busy with the cancelled sleeps for a moment)
        reply = stub.Unary(pb2.Msg(payload=b"after"), timeout=30)
        assert reply.payload == b"after"
        new_conns = metric(topo.a, "meshd_connections_total", direction="outbound") - conns0
    assert new_conns == 0, f"the client had to reconnect {new_conns:.0f} time(s): meshd closed its connection{topo.logs()}"
