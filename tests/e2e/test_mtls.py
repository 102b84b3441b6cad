"""mTLS between sidecars: workload identities (SPIFFE), strict/permissive inbound, authorization, XFCC.

Certificates come from `meshctl identity` (one trust domain, plus a second unrelated CA) and from
the `openssl` CLI (an independent EC P-256 CA whose root is added to the callees' trust bundle).
Callee sidecars front the Python backend, whose /headers endpoint echoes the request headers.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from meshlib import base_config, curl, http_request, metric_value, raw_exchange, run

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
OPS = f"spiffe://{TD}/ns/shop/sa/ops"
OTHER = f"spiffe://{TD}/ns/shop/sa/other"
EXPIRED = f"spiffe://{TD}/ns/shop/sa/expired"

HS_ERR = "meshd_tls_handshake_errors_total"


# --------------------------------------------------------------------------------------------
# Certificates


def _check(args, timeout=30.0) -> subprocess.CompletedProcess:
    r = run([str(a) for a in args], timeout=timeout)
    assert r.returncode == 0, f"{args!r} → {r.returncode}\nstdout={r.stdout.decode()}\nstderr={r.stderr.decode()}"
    return r


def _show(meshctl, path: Path) -> dict:
    return json.loads(_check([meshctl, "identity", "show", path, "-o", "json"]).stdout)


def _openssl_pki(d: Path) -> dict:
    """An EC P-256 CA and an `ops` leaf (URI SAN, clientAuth+serverAuth) made with the openssl CLI."""
    d.mkdir()
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    _check(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key])
    _check(["openssl", "req", "-x509", "-new", "-key", ca_key, "-sha256", "-days", "2", "-subj", "/O=e2e/CN=openssl test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", ca_crt])
    key, csr, crt, ext = d / "tls.key", d / "tls.csr", d / "tls.crt", d / "leaf.ext"
    _check(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    _check(["openssl", "req", "-new", "-key", key, "-subj", "/O=e2e", "-out", csr])
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=clientAuth,serverAuth\n"
        f"subjectAltName=critical,URI:{OPS}\n"
    )
    _check(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
            "-sha256", "-extfile", ext, "-out", crt])
    return {"ca": ca_crt, "crt": crt, "key": key}


@pytest.fixture(scope="module")
def pki(tmp_path_factory, meshctl):
    d = tmp_path_factory.mktemp("pki")
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "ca"])
    assert (d / "ca" / "ca.crt").is_file() and (d / "ca" / "ca.key").is_file()

    def issue(ca: Path, spiffe_id: str, out: Path, *extra) -> dict:
        _check([meshctl, "identity", "issue", "--ca", ca, "--spiffe-id", spiffe_id, *extra, "--out", out])
        return {"crt": out / "tls.crt", "key": out / "tls.key", "ca": out / "ca.crt", "id": spiffe_id}

    certs = {
        "web": issue(d / "ca", WEB, d / "web"),
        "api": issue(d / "ca", API, d / "api"),
        # valid for 1 s from now, notBefore two hours ago: expired a second after issuing
        "expired": issue(d / "ca", EXPIRED, d / "expired", "--ttl", "1s", "--not-before-offset=-7200"),
    }
    # An unrelated root (same trust-domain name, different key): its certificates must not be trusted.
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "rogue-ca"])
    certs["rogue"] = issue(d / "rogue-ca", WEB, d / "rogue")
    certs["ops"] = _openssl_pki(d / "openssl")
    certs["ops"]["id"] = OPS

    show = _show(meshctl, certs["web"]["crt"])
    assert show["spiffeId"] == WEB and 0 < show["secondsLeft"] <= 24 * 3600, show
    exp = _show(meshctl, certs["expired"]["crt"])
    assert exp["spiffeId"] == EXPIRED and exp["secondsLeft"] <= 1, exp

    bundle = d / "bundle.crt"  # meshctl root + openssl root
    bundle.write_text((d / "ca" / "ca.crt").read_text() + certs["ops"]["ca"].read_text())
    certs["bundle"] = bundle
    certs["dir"] = d
    return certs


def _identity(certs: dict, name: str, trust: Path | None = None) -> dict:
    c = certs[name]
    return {"trustBundle": str(trust or c["ca"]), "cert": str(c["crt"]), "key": str(c["key"])}


def _der_sha256(pem_path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


# --------------------------------------------------------------------------------------------
# Sidecars


@pytest.fixture(scope="module")
def mesh(start_meshd_module, backend, pki):
    # backend.py speaks HTTP/1.1 only: with the default `appProtocol: auto` an HTTP/2 request would stay
    # HTTP/2 on the hop to the app, so the callees pin that hop to HTTP/1.1.
    inbound = lambda tls: {"listen": "127.0.0.1:0", "app": backend.addr, "appProtocol": "http1", "tls": tls}  # noqa: E731
    strict = start_meshd_module(base_config(
        drainTimeout="1s",  # web's pooled keep-alive connections would hold the callees' drain
        inbound=inbound("strict"),
        identity=_identity(pki, "api", pki["bundle"]),
        authorization={"defaultPolicy": "all-authenticated"},
    ), name="api-strict")
    authz = start_meshd_module(base_config(
        drainTimeout="1s",  # web's pooled keep-alive connections would hold the callees' drain
        inbound=inbound("strict"),
        identity=_identity(pki, "api", pki["bundle"]),
        authorization={"defaultPolicy": "deny", "rules": [{"from": [WEB], "pathPrefix": "/api/"}]},
    ), name="api-authz")
    permissive = start_meshd_module(base_config(
        drainTimeout="1s",  # web's pooled keep-alive connections would hold the callees' drain
        inbound=inbound("permissive"),
        identity=_identity(pki, "api", pki["bundle"]),
    ), name="api-permissive")

    def svc(name, m, want=API):
        return {"name": name, "endpoints": [{"address": m.in_url.split("//", 1)[1]}], "tls": {"identity": want}}

    services = [
        svc("api", strict),
        svc("api-pattern", strict, f"spiffe://{TD}/ns/shop/*"),
        svc("authz", authz),
        svc("perm", permissive),
        svc("wrongid", strict, OTHER),
    ]
    web = start_meshd_module(base_config(
        drainTimeout="1s",  # web's pooled keep-alive connections would hold the callees' drain
        threads=2,
        identity=_identity(pki, "web"),
        services=services,
        routes=[{"match": {"authority": s["name"]}, "service": s["name"]} for s in services],
    ), name="web")
    yield {"web": web, "strict": strict, "authz": authz, "permissive": permissive}
    web.stop()  # first, so that its pooled connections do not hold the callees' drain


def _hdrs(body: bytes) -> dict:
    got = json.loads(body)
    out: dict[str, list[str]] = {}
    for k, v in got["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def _parse_xfcc(value: str) -> dict:
    return dict(p.split("=", 1) for p in value.split(";"))


def _err(m, reason, direction="inbound") -> float:
    return m.metric(HS_ERR, direction=direction, reason=reason) or 0.0


def _https(m, path="/headers") -> str:
    return f"https://{m.inbound[0]}:{m.inbound[1]}{path}"


def _tls_curl(m, cert: dict | None, path="/headers", *extra):
    args = ["-k", "-i"]
    if cert is not None:
        args += ["--cert", cert["crt"], "--key", cert["key"]]
    return curl(*args, *extra, _https(m, path), timeout=10)


def _status(r: subprocess.CompletedProcess) -> int:
    head = r.stdout.split(b"\r\n", 1)[0].decode("latin-1")
    return int(head.split()[1])


def _wait_metric_increase(m, reason, before, direction="inbound", timeout=5.0) -> float:
    deadline = time.monotonic() + timeout
    while True:
        now = _err(m, reason, direction)
        if now > before or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# 1. two sidecars over mTLS


def test_http1_through_mtls_sets_xfcc_and_drops_forged(mesh, pki):
    web, strict = mesh["web"], mesh["strict"]
    hs_out0 = web.metric("meshd_tls_handshakes_total", direction="outbound") or 0
    hs_in0 = strict.metric("meshd_tls_handshakes_total", direction="inbound") or 0
    status, h, body = http_request(web.outbound, "GET", "/headers?p=1", headers={
        "Host": "api", "X-Forwarded-Client-Cert": f"By=spiffe://evil;URI={API};Hash=00"})
    assert status == 200, (status, h, body)
    hdr = _hdrs(body)
    xfcc = hdr.get("x-forwarded-client-cert")
    assert xfcc and len(xfcc) == 1, f"want exactly one XFCC (the forged one dropped), got {xfcc!r}"
    assert "evil" not in xfcc[0], xfcc
    parts = _parse_xfcc(xfcc[0])
    assert parts.get("URI") == WEB, parts
    assert parts.get("By") == API, parts
    assert parts.get("Hash") == _der_sha256(pki["web"]["crt"]), (parts, "want sha256 of the caller's DER certificate")
    assert (web.metric("meshd_tls_handshakes_total", direction="outbound") or 0) > hs_out0
    assert (strict.metric("meshd_tls_handshakes_total", direction="inbound") or 0) > hs_in0
    # an identity pattern matches the callee too
    status, _, body = http_request(web.outbound, "GET", "/headers", headers={"Host": "api-pattern"})
    assert status == 200, body
    assert _parse_xfcc(_hdrs(body)["x-forwarded-client-cert"][0])["URI"] == WEB


def test_http2_prior_knowledge_through_mtls(mesh):
    web = mesh["web"]
    r = curl("--http2-prior-knowledge", "-i", "-H", "host: api", "-H", "x-forwarded-client-cert: URI=spiffe://forged",
             web.out_url + "/headers?h2=1", timeout=10)
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    got = json.loads(body)
    assert got["path"] == "/headers?h2=1" and got["version"] == "HTTP/1.1", got
    xfcc = _hdrs(body).get("x-forwarded-client-cert")
    assert xfcc and len(xfcc) == 1, f"want exactly one XFCC (the forged one dropped), got {xfcc!r}"
    assert _parse_xfcc(xfcc[0]).get("URI") == WEB, xfcc


# --------------------------------------------------------------------------------------------
# 2. strict refuses plaintext and clients without a certificate


def test_strict_refuses_plaintext(mesh, backend):
    strict = mesh["strict"]
    before = _err(strict, "plaintext")
    served0 = backend.count()
    got, closed, _ = raw_exchange(strict.inbound, b"GET /headers HTTP/1.1\r\nHost: api\r\n\r\n", timeout=5)
    assert b"HTTP/" not in got, f"strict inbound answered plaintext: {got[:200]!r}"
    assert closed, "strict inbound should close a plaintext connection"
    r = curl("-i", strict.in_url + "/headers", timeout=5)
    assert r.returncode != 0 and not r.stdout.startswith(b"HTTP/"), (r.returncode, r.stdout)
    assert _wait_metric_increase(strict, "plaintext", before) >= before + 2, strict.metrics_text()
    assert backend.count() == served0, "a plaintext request reached the app behind a strict inbound"


def test_strict_refuses_tls_without_client_cert(mesh):
    strict = mesh["strict"]
    before = _err(strict, "no_certificate") + _err(strict, "handshake")
    r = _tls_curl(strict, None)
    assert r.returncode != 0 and not r.stdout.startswith(b"HTTP/"), (r.returncode, r.stdout, r.stderr)
    deadline = time.monotonic() + 5
    while _err(strict, "no_certificate") + _err(strict, "handshake") <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _err(strict, "no_certificate") + _err(strict, "handshake") > before, strict.metrics_text()


# --------------------------------------------------------------------------------------------
# 3. certificates made with openssl


def test_openssl_client_certificate_is_served(mesh, pki):
    strict = mesh["strict"]
    allow0 = strict.metric("meshd_authorization_total", decision="allow") or 0
    r = _tls_curl(strict, pki["ops"], "/headers?ops=1")
    assert r.returncode == 0, r.stderr
    assert _status(r) == 200, r.stdout
    body = r.stdout.split(b"\r\n\r\n", 1)[1]
    parts = _parse_xfcc(_hdrs(body)["x-forwarded-client-cert"][0])
    assert parts["URI"] == OPS and parts["Hash"] == _der_sha256(pki["ops"]["crt"]), parts
    assert (strict.metric("meshd_authorization_total", decision="allow") or 0) > allow0


# --------------------------------------------------------------------------------------------
# 4. untrusted and expired certificates


def test_other_ca_is_untrusted(mesh, pki):
    strict = mesh["strict"]
    before = _err(strict, "untrusted")
    r = _tls_curl(strict, pki["rogue"])
    assert not r.stdout.startswith(b"HTTP/"), r.stdout
    assert _wait_metric_increase(strict, "untrusted", before) > before, strict.metrics_text()


def test_expired_certificate_refused(mesh, pki, meshctl):
    strict = mesh["strict"]
    info = _show(meshctl, pki["expired"]["crt"])
    # the certificate is valid for 1 s from issuing: wait until meshctl reports it past its notAfter
    deadline = time.monotonic() + 5
    while info["secondsLeft"] > 0:
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
        info = _show(meshctl, pki["expired"]["crt"])
    time.sleep(1.1)
    before = _err(strict, "expired")
    r = _tls_curl(strict, pki["expired"])
    assert not r.stdout.startswith(b"HTTP/"), r.stdout
    assert _wait_metric_increase(strict, "expired", before) > before, strict.metrics_text()


# --------------------------------------------------------------------------------------------
# 5. authorization


def test_authorization_rules(mesh, pki):
    web, authz = mesh["web"], mesh["authz"]
    status, h, body = http_request(web.outbound, "GET", "/api/x", headers={"Host": "authz"})
    assert status == 200, (status, h, body)
    assert "x-meshd-error" not in h
    status, h, body = http_request(web.outbound, "GET", "/other", headers={"Host": "authz"})
    assert status == 403, (status, h, body)
    assert h.get("x-meshd-error") == "forbidden", h
    r = _tls_curl(authz, pki["ops"], "/api/x")
    assert r.returncode == 0, r.stderr
    assert _status(r) == 403, r.stdout
    assert b"x-meshd-error: forbidden" in r.stdout.lower(), r.stdout
    text = authz.metrics_text()
    assert (metric_value(text, "meshd_authorization_total", decision="allow") or 0) >= 1, text
    assert (metric_value(text, "meshd_authorization_total", decision="deny") or 0) >= 2, text


# --------------------------------------------------------------------------------------------
# 6. wrong identity on the outbound side


def test_outbound_wrong_identity_refused(mesh, backend):
    web = mesh["web"]
    before = _err(web, "wrong_identity", "outbound")
    served0 = backend.count()
    status, h, body = http_request(web.outbound, "GET", "/headers", headers={"Host": "wrongid"}, timeout=10)
    assert status == 503, (status, h, body)
    assert h.get("x-meshd-error") == "connect-failed", h
    assert _err(web, "wrong_identity", "outbound") > before, web.metrics_text()
    assert backend.count() == served0, "a request reached the app of a peer with the wrong identity"


# --------------------------------------------------------------------------------------------
# 7. permissive


def test_permissive_serves_plaintext_and_mtls(mesh, pki):
    web, perm = mesh["web"], mesh["permissive"]
    status, _, body = http_request(perm.inbound, "GET", "/headers", headers={"Host": "api"})
    assert status == 200, body
    assert "x-forwarded-client-cert" not in _hdrs(body), "a plaintext request got an XFCC"
    # mTLS from the caller sidecar
    status, _, body = http_request(web.outbound, "GET", "/headers", headers={
        "Host": "perm", "X-Forwarded-Client-Cert": "URI=spiffe://forged"})
    assert status == 200, body
    xfcc = _hdrs(body).get("x-forwarded-client-cert")
    assert xfcc and len(xfcc) == 1 and _parse_xfcc(xfcc[0]).get("URI") == WEB, xfcc
    # mTLS straight from curl with the openssl-made certificate
    r = _tls_curl(perm, pki["ops"])
    assert r.returncode == 0 and _status(r) == 200, (r.stdout, r.stderr)
    xfcc = _hdrs(r.stdout.split(b"\r\n\r\n", 1)[1]).get("x-forwarded-client-cert")
    assert xfcc and _parse_xfcc(xfcc[0]).get("URI") == OPS, xfcc


def test_permissive_plaintext_drops_client_xfcc(mesh):
    perm = mesh["permissive"]
    status, _, body = http_request(perm.inbound, "GET", "/headers", headers={
        "Host": "api", "X-Forwarded-Client-Cert": f"By={API};URI={WEB}"})
    assert status == 200, body
    assert "x-forwarded-client-cert" not in _hdrs(body), \
        f"a forged XFCC on a plaintext request reached the app: {_hdrs(body)['x-forwarded-client-cert']}"
