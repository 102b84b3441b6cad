"""gRPC over mTLS with real grpcio peers.

Two sidecars: a grpcio client calls the caller's sidecar `web` (plaintext h2c on its outbound listener,
as an app does), `web` calls the callee's sidecar `api` over mTLS (TLS 1.3, ALPN h2, both identities
from `meshctl identity`), and `api` forwards to grpc_server.py. All four call kinds go through, with
metadata and trailers intact.

Then grpcio itself as the mTLS client of `api`'s strict inbound (`grpc.ssl_channel_credentials` with a
client certificate): served when the certificate is trusted and its identity allowed; refused when the
client presents no certificate (`no_certificate`) or one from another CA (`untrusted`); a trusted
identity that the authorization rules do not name gets PERMISSION_DENIED (7) with
`x-meshd-error: forbidden`. grpcio checks the server's host name as well as its chain, so `api`'s
certificate carries a DNS name besides its SPIFFE ID (`meshctl identity issue --dns-name`).
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

grpc = pytest.importorskip("grpc", reason="Python package 'grpcio' is not installed (pip install -r tests/e2e/requirements.txt)")
pytest.importorskip("grpc_tools", reason="Python package 'grpcio-tools' is not installed (pip install -r tests/e2e/requirements.txt)")

import grpc_proto  # noqa: E402
from meshlib import base_config, metric_value, run, wait_for  # noqa: E402
from test_grpc import GrpcServer, md_dict  # noqa: E402

pb2, pb2_grpc = grpc_proto.load()

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
OPS = f"spiffe://{TD}/ns/shop/sa/ops"
API_DNS = "api.shop.svc.cluster.local"
HS_ERR = "meshd_tls_handshake_errors_total"


def _check(args, timeout=30.0) -> subprocess.CompletedProcess:
    r = run([str(a) for a in args], timeout=timeout)
    assert r.returncode == 0, f"{args!r} → {r.returncode}\nstdout={r.stdout.decode()}\nstderr={r.stderr.decode()}"
    return r


@pytest.fixture(scope="module")
def pki(tmp_path_factory, meshctl):
    d = tmp_path_factory.mktemp("pki-grpc")
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "ca"])
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "rogue-ca"])

    def issue(ca: str, spiffe_id: str, name: str, *extra) -> dict:
        out = d / name
        _check([meshctl, "identity", "issue", "--ca", d / ca, "--spiffe-id", spiffe_id, *extra, "--out", out])
        return {"crt": out / "tls.crt", "key": out / "tls.key", "ca": out / "ca.crt", "id": spiffe_id}

    certs = {
        "web": issue("ca", WEB, "web"),
        "api": issue("ca", API, "api", "--dns-name", API_DNS),
        "ops": issue("ca", OPS, "ops"),
        "rogue": issue("rogue-ca", WEB, "rogue"),
    }
    show = _check([meshctl, "identity", "show", certs["api"]["crt"]]).stdout.decode()
    assert API in show and API_DNS in show, show
    return certs


@pytest.fixture(scope="module")
def mesh(start_meshd_module, tmp_path_factory, pki):
    server = GrpcServer(tmp_path_factory.mktemp("grpc-mtls"), "mtls-app")
    identity = lambda c: {"trustBundle": str(c["ca"]), "cert": str(c["crt"]), "key": str(c["key"])}  # noqa: E731
    api = start_meshd_module(base_config(
        drainTimeout="1s",  # web's pooled connection would hold the drain
        inbound={"listen": "127.0.0.1:0", "app": server.addr, "tls": "strict"},
        identity=identity(pki["api"]),
        authorization={"defaultPolicy": "deny", "rules": [{"from": [WEB], "pathPrefix": "/meshtest.Echo/"}]},
    ), name="grpc-api")
    web = start_meshd_module(base_config(
        drainTimeout="1s",
        identity=identity(pki["web"]),
        services=[{"name": "echo", "protocol": "grpc", "endpoints": [f"{api.inbound[0]}:{api.inbound[1]}"],
                   "tls": {"identity": API}}],
        routes=[{"match": {"authority": "echo"}, "service": "echo"}],
    ), name="grpc-web")
    yield {"web": web, "api": api, "server": server}
    web.stop()
    server.stop()


def _plain_stub(m):
    ch = grpc.insecure_channel(f"{m.outbound[0]}:{m.outbound[1]}", options=[
        ("grpc.default_authority", "echo"), ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)])
    return ch, pb2_grpc.EchoStub(ch)


def _tls_stub(m, ca: Path, client: dict | None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client["key"].read_bytes() if client else None,
        certificate_chain=client["crt"].read_bytes() if client else None)
    ch = grpc.secure_channel(f"{m.inbound[0]}:{m.inbound[1]}", creds, options=[
        ("grpc.ssl_target_name_override", API_DNS), ("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)])
    return ch, pb2_grpc.EchoStub(ch)


def _handshakes(m, direction: str) -> float:
    return metric_value(m.metrics_text(), "meshd_tls_handshakes_total", direction=direction) or 0.0


def _errors(m, reason: str) -> float:
    return metric_value(m.metrics_text(), HS_ERR, direction="inbound", reason=reason) or 0.0


def _four_call_kinds(stub, server_name: str) -> None:
    rnd = random.Random(7)
    # unary, up to 1 MiB
    for i, size in enumerate([0, 100, 64 * 1024, 1024 * 1024]):
        payload = rnd.randbytes(size)
        r, call = stub.Unary.with_call(pb2.Msg(payload=payload, seq=i), metadata=[("x-echo-k", "v")], timeout=10)
        assert r.seq == i and r.payload == payload, f"unary of {size} bytes came back different"
        head, trail = md_dict(call.initial_metadata()), md_dict(call.trailing_metadata())
        assert head.get("x-backend") == server_name and head.get("x-echo-k") == "v", head
        assert trail.get("x-trailer-bin") == b"\x00\x01\x02\xfe\xff", trail
    # client stream
    msgs = [pb2.Msg(payload=rnd.randbytes(rnd.randrange(0, 8192)), seq=i) for i in range(300)]
    summary = stub.ClientStream(iter(msgs), timeout=20)
    assert summary.count == 300 and summary.sha256 == hashlib.sha256(b"".join(m.payload for m in msgs)).hexdigest()
    # server stream
    call = stub.ServerStream(pb2.StreamRequest(count=2000, size=200), timeout=20)
    got = [m.seq for m in call if m.payload == grpc_proto.pattern(m.seq, 200)]
    assert got == list(range(2000)), f"{len(got)} of 2000 server-stream messages intact and in order"
    assert md_dict(call.trailing_metadata()).get("x-trailer-count") == "2000"
    # bidi
    msgs = [pb2.Msg(payload=rnd.randbytes(rnd.randrange(0, 4096)), seq=i) for i in range(500)]
    call = stub.Bidi(iter(msgs), timeout=20)
    echoed = [(m.seq, m.payload) for m in call]
    assert echoed == [(m.seq, m.payload) for m in msgs], f"{len(echoed)} of 500 echoes intact and in order"
    assert call.code() == grpc.StatusCode.OK


def test_four_call_kinds_between_sidecars_over_mtls(mesh):
    web, api = mesh["web"], mesh["api"]
    before_out, before_in = _handshakes(web, "outbound"), _handshakes(api, "inbound")
    ch, stub = _plain_stub(web)
    with ch:
        _four_call_kinds(stub, mesh["server"].name)
    # The hop was mTLS (api is strict, so it could not have been anything else), and pooled: one
    # HTTP/2 connection carries every call.
    assert _handshakes(web, "outbound") - before_out <= 1
    assert _handshakes(api, "inbound") >= 1
    allowed = metric_value(api.metrics_text(), "meshd_authorization_total", decision="allow") or 0.0
    assert allowed >= 7, api.metrics_text()


def test_grpcio_with_client_certificate_to_strict_inbound(mesh, pki):
    ch, stub = _tls_stub(mesh["api"], pki["api"]["ca"], pki["web"])
    with ch:
        _four_call_kinds(stub, mesh["server"].name)


def test_grpcio_without_client_certificate_is_refused(mesh, pki):
    api = mesh["api"]
    before = _errors(api, "no_certificate")
    ch, stub = _tls_stub(api, pki["api"]["ca"], None)
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.Unary(pb2.Msg(payload=b"x"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    wait_for(lambda: _errors(api, "no_certificate") > before, 5, what="no_certificate counted")


def test_grpcio_with_another_ca_is_refused(mesh, pki):
    api = mesh["api"]
    before = _errors(api, "untrusted")
    ch, stub = _tls_stub(api, pki["api"]["ca"], pki["rogue"])
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.Unary(pb2.Msg(payload=b"x"), timeout=5)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
    wait_for(lambda: _errors(api, "untrusted") > before, 5, what="untrusted counted")


def test_grpcio_identity_not_allowed_gets_permission_denied(mesh, pki):
    api = mesh["api"]
    ch, stub = _tls_stub(api, pki["api"]["ca"], pki["ops"])
    with ch, pytest.raises(grpc.RpcError) as e:
        stub.Unary(pb2.Msg(payload=b"x"), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
    md = md_dict(e.value.initial_metadata(), e.value.trailing_metadata())
    assert md.get("x-meshd-error") == "forbidden", md
    denied = metric_value(api.metrics_text(), "meshd_authorization_total", decision="deny") or 0.0
    assert denied >= 1
