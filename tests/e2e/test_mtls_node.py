"""mTLS in node mode: one node proxy carries the identities of several workloads (`identity.workloads`).

Two node proxies on loopback: node A (NODE_A) for the client pods, node B (NODE_B) hosting the server
pods, each a backend.py bound to its pod IP. Outbound on A, the source IP of the client connection
chooses the workload certificate presented upstream; inbound on B, the SNI `<pod-ip-dashed>.pod.meshd`
chooses the certificate B presents, `x-meshd-dst` must name a pod of that workload, and authorization
rules apply per destination workload (`to`).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from pathlib import Path

import pytest

from meshlib import Backend, run

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
OPS = f"spiffe://{TD}/ns/shop/sa/ops"
API = f"spiffe://{TD}/ns/shop/sa/api"
DB = f"spiffe://{TD}/ns/shop/sa/db"

NODE_A = "127.0.0.2"
NODE_B = "127.0.0.9"
POD_WEB = "127.0.0.3"     # on A, runs as web
POD_OPS = "127.0.0.4"     # on A, runs as ops
POD_NOID = "127.0.0.8"    # on A, no identity
POD_API = "127.0.0.6"     # on B, runs as api
POD_DB = "127.0.0.7"      # on B, runs as db


def _check(args, timeout=30.0):
    r = run([str(a) for a in args], timeout=timeout)
    assert r.returncode == 0, f"{args!r} → {r.returncode}\nstdout={r.stdout.decode()}\nstderr={r.stderr.decode()}"
    return r


def _sni(ip: str) -> str:
    return ip.replace(".", "-") + ".pod.meshd"


@pytest.fixture(scope="module")
def pki(tmp_path_factory, meshctl):
    d = tmp_path_factory.mktemp("pki-node")
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "ca"])

    def issue(spiffe_id: str, name: str) -> dict:
        out = d / name
        _check([meshctl, "identity", "issue", "--ca", d / "ca", "--spiffe-id", spiffe_id, "--out", out])
        return {"crt": out / "tls.crt", "key": out / "tls.key", "id": spiffe_id}

    certs = {n: issue(i, n) for n, i in (("web", WEB), ("ops", OPS), ("api", API), ("db", DB))}
    certs["ca"] = d / "ca" / "ca.crt"
    return certs


def _workload(c: dict, pods: list[str]) -> dict:
    return {"pods": pods, "cert": str(c["crt"]), "key": str(c["key"])}


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("pod-backends")
    b = {"api": Backend("api", host=POD_API, logdir=logdir), "db": Backend("db", host=POD_DB, logdir=logdir)}
    yield b
    for x in b.values():
        x.stop()


@pytest.fixture(scope="module")
def nodes(start_meshd_module, pki, pods):
    node_b = start_meshd_module({
        "mode": "node", "nodeIP": NODE_B, "threads": 1, "drainTimeout": "1s",
        "outbound": {"listen": f"{NODE_B}:0"},
        "inbound": {"listen": f"{NODE_B}:0", "tls": "strict", "appProtocol": "http1"},
        "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": [f"{POD_API}/32", f"{POD_DB}/32"]},
        "identity": {"trustBundle": str(pki["ca"]),
                     "workloads": [_workload(pki["api"], [POD_API]), _workload(pki["db"], [POD_DB])]},
        "authorization": {"defaultPolicy": "deny", "rules": [
            {"to": API, "from": [WEB]},
            {"to": DB, "from": [WEB, OPS]},
        ]},
        "services": [], "routes": [],
    }, name="node-b")
    via = f"{NODE_B}:{node_b.inbound[1]}"
    services = [
        {"name": "api", "endpoints": [{"address": pods["api"].addr, "via": via}], "tls": {"identity": API}},
        {"name": "db", "endpoints": [{"address": pods["db"].addr, "via": via}], "tls": {"identity": DB}},
    ]
    node_a = start_meshd_module({
        "mode": "node", "nodeIP": NODE_A, "threads": 1, "drainTimeout": "1s",
        "outbound": {"listen": f"{NODE_A}:0"},
        "inbound": {"listen": f"{NODE_A}:0", "tls": "strict"},
        "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": [f"{POD_WEB}/32", f"{POD_OPS}/32", f"{POD_NOID}/32"],
                 "allowedSources": [f"{POD_WEB}/32", f"{POD_OPS}/32", f"{POD_NOID}/32"]},
        "identity": {"trustBundle": str(pki["ca"]),
                     "workloads": [_workload(pki["web"], [POD_WEB]), _workload(pki["ops"], [POD_OPS])]},
        "services": services,
        "routes": [{"match": {"authority": s["name"]}, "service": s["name"]} for s in services],
    }, name="node-a")
    yield {"a": node_a, "b": node_b}
    node_a.stop()  # first, so that its pooled connections do not hold B's drain


def _from_pod(node, source: str, host: str, path: str = "/headers", headers: dict | None = None):
    """One request to node `node`'s outbound, on a connection bound to the pod IP `source`."""
    conn = http.client.HTTPConnection(node.outbound[0], node.outbound[1], timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _xfcc(body: bytes) -> list[dict]:
    got = json.loads(body)
    vals = [v for k, v in got["headers"] if k.lower() == "x-forwarded-client-cert"]
    return [dict(p.split("=", 1) for p in v.split(";")) for v in vals]


def _direct_mtls(node, cert: dict, ca: Path, sni: str, dst: str, path: str = "/headers"):
    """A client (not meshd) speaking mTLS straight to the node's inbound with `cert`, SNI `sni`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # the node's certificate names a SPIFFE ID, not the pod server name
    ctx.load_cert_chain(str(cert["crt"]), str(cert["key"]))
    raw = socket.create_connection(node.inbound, timeout=10)
    with ctx.wrap_socket(raw, server_hostname=sni) as s:
        peer = ssl.DER_cert_to_PEM_cert(s.getpeercert(binary_form=True))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: app\r\nx-meshd-dst: {dst}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ssl.SSLZeroReturnError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
    return status, hdrs, body, peer


# --------------------------------------------------------------------------------------------
# 1. the source pod chooses the identity; authorization per destination workload


def test_source_pod_selects_identity_and_authz_per_workload(nodes):
    a = nodes["a"]
    # web may call api: 200, the app sees web as the caller and api as the destination
    status, h, body = _from_pod(a, POD_WEB, "api", "/headers?from=web")
    assert status == 200, (status, h, body)
    x = _xfcc(body)
    assert len(x) == 1, x
    assert x[0].get("URI") == WEB and x[0].get("By") == API, x
    assert len(x[0].get("Hash", "")) == 64, x
    # ops may not call api: 403 forbidden from node B
    status, h, body = _from_pod(a, POD_OPS, "api", "/headers?from=ops")
    assert status == 403, (status, h, body)
    assert h.get("x-meshd-error") == "forbidden", h
    # ...but ops may call db (rule `to: db`), and is seen there as ops
    status, h, body = _from_pod(a, POD_OPS, "db", "/headers?from=ops")
    assert status == 200, (status, h, body)
    x = _xfcc(body)
    assert len(x) == 1 and x[0].get("URI") == OPS and x[0].get("By") == DB, x
    # and web once more after ops (a pooled connection must not carry the other pod's identity)
    status, h, body = _from_pod(a, POD_WEB, "db", "/headers?again=web")
    assert status == 200, (status, h, body)
    assert _xfcc(body)[0].get("URI") == WEB, _xfcc(body)
    status, h, body = _from_pod(a, POD_OPS, "api", "/headers?again=ops")
    assert status == 403 and h.get("x-meshd-error") == "forbidden", (status, h, body)


# --------------------------------------------------------------------------------------------
# 2. a source pod without an identity


def test_source_pod_without_identity_forbidden(nodes, pods):
    a = nodes["a"]
    served0 = pods["api"].count()
    status, h, body = _from_pod(a, POD_NOID, "api")
    assert status == 403, (status, h, body)
    assert h.get("x-meshd-error") == "forbidden", h
    assert pods["api"].count() == served0, "a request from a pod without identity reached the app"


# --------------------------------------------------------------------------------------------
# 3. x-meshd-dst must name a pod of the workload the SNI chose


def test_direct_mtls_sni_workload_binds_destination(nodes, pki, pods):
    b = nodes["b"]
    # control: SNI for the api pod, destination the api pod → served, B presented api's certificate
    status, h, body, peer = _direct_mtls(b, pki["web"], pki["ca"], _sni(POD_API), pods["api"].addr)
    assert status == 200, (status, h, body)
    assert ssl.PEM_cert_to_DER_cert(peer) == ssl.PEM_cert_to_DER_cert(Path(pki["api"]["crt"]).read_text()), \
        "node B did not present the api workload's certificate for the api pod's SNI"
    x = _xfcc(body)
    assert x and x[0].get("URI") == WEB and x[0].get("By") == API, x
    # the connection was opened for api's identity; naming db's pod must be refused
    served0 = pods["db"].count()
    status, h, body, peer = _direct_mtls(b, pki["web"], pki["ca"], _sni(POD_API), pods["db"].addr)
    assert status == 403, (status, h, body)
    assert h.get("x-meshd-error") == "destination-not-allowed", h
    assert pods["db"].count() == served0, "a request for api's identity reached db's pod"
