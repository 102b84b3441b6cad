"""Certificate rotation under load: no failed request, new handshakes show the new certificate.

The callee's sidecar `api` reads its identity from a directory laid out as Kubernetes mounts a Secret
(`tls.crt -> ..data/tls.crt`, `..data -> ..2026_v1`); the rotation is Kubernetes' atomic swap of the
`..data` symlink. The caller's sidecar `web` reads plain files that are replaced by rename, one file
at a time (so meshd sees a new certificate with the old key for a moment). While wrk drives requests
web → api over mTLS:
  1. api's certificate is swapped: api keeps serving its established connections, and every new
     handshake (an independent TLS client here) shows the new serial;
  2. web's certificate is replaced: web's new connections present it, which api's app sees in the
     `x-forwarded-client-cert` hash.
wrk must see no error and no non-2xx answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path

from meshlib import base_config, http_request, kill_group, metric_value, popen, run, wait_for

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"


def _check(args, timeout=30.0) -> subprocess.CompletedProcess:
    r = run([str(a) for a in args], timeout=timeout)
    assert r.returncode == 0, f"{args!r} → {r.returncode}\nstdout={r.stdout.decode()}\nstderr={r.stderr.decode()}"
    return r


def _serial(meshctl, crt: Path) -> str:
    return json.loads(_check([meshctl, "identity", "show", crt, "-o", "json"]).stdout)["serial"]


def _der(crt: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(crt.read_text())


def _k8s_secret(root: Path, version: str, src: Path) -> None:
    """Kubernetes' layout and its atomic update: the new files go to a fresh `..<version>` directory,
    a temporary symlink to it is renamed over `..data`. `tls.crt` etc. point into `..data`."""
    target = root / f"..{version}"
    target.mkdir(parents=True)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (target / name).write_bytes((src / name).read_bytes())
    tmp = root / "..data_tmp"
    os.symlink(target.name, tmp)
    os.replace(tmp, root / "..data")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        link = root / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)


def _replace(dst: Path, src: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def _peer_serial(meshctl, addr: tuple[str, int], ca: Path, client: Path, scratch: Path) -> str:
    """A new TLS handshake with api's inbound (client certificate from `client`); the serial of the
    certificate api presented, upper-case hex as meshctl prints it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # api's certificate names a SPIFFE ID, not a host
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(client / "tls.crt"), str(client / "tls.key"))
    with socket.create_connection(addr, timeout=5) as s, ctx.wrap_socket(s) as t:
        der = t.getpeercert(binary_form=True)
        t.sendall(b"GET /status?code=200 HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        assert t.recv(64).startswith(b"HTTP/1.1 200"), "a new mTLS connection must be served"
    pem = scratch / "peer.crt"
    pem.write_text(ssl.DER_cert_to_PEM_cert(der))
    return _serial(meshctl, pem)


def _xfcc_hash(web) -> str:
    status, _, body = http_request(web.outbound, "GET", "/headers", headers={"Host": "api"})
    assert status == 200, (status, body)
    xfcc = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-forwarded-client-cert"]
    assert len(xfcc) == 1, body
    xfcc = xfcc[0]
    return dict(p.split("=", 1) for p in xfcc.split(";"))["Hash"]


def test_rotation_during_wrk_has_no_failed_request(start_meshd, backend, meshctl, tmp_path):
    ca = tmp_path / "ca"
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", ca])
    for name, sid in (("api-v1", API), ("api-v2", API), ("web-v1", WEB), ("web-v2", WEB)):
        _check([meshctl, "identity", "issue", "--ca", ca, "--spiffe-id", sid, "--out", tmp_path / name])
    api_v1, api_v2 = _serial(meshctl, tmp_path / "api-v1/tls.crt"), _serial(meshctl, tmp_path / "api-v2/tls.crt")
    assert api_v1 != api_v2

    secret = tmp_path / "api-secret"
    _k8s_secret(secret, "2026_v1", tmp_path / "api-v1")
    web_dir = tmp_path / "web-files"
    web_dir.mkdir()
    for name in ("tls.crt", "tls.key", "ca.crt"):
        _replace(web_dir / name, tmp_path / "web-v1" / name)

    api = start_meshd(base_config(
        drainTimeout="1s",
        inbound={"listen": "127.0.0.1:0", "app": backend.addr, "appProtocol": "http1", "tls": "strict"},
        identity={"trustBundle": str(secret / "ca.crt"), "cert": str(secret / "tls.crt"),
                  "key": str(secret / "tls.key"), "reloadInterval": "200ms"},
    ), name="api")
    web = start_meshd(base_config(
        drainTimeout="1s",
        identity={"trustBundle": str(web_dir / "ca.crt"), "cert": str(web_dir / "tls.crt"),
                  "key": str(web_dir / "tls.key"), "reloadInterval": "200ms"},
        services=[{"name": "api", "endpoints": [f"{api.inbound[0]}:{api.inbound[1]}"], "tls": {"identity": API}}],
        routes=[{"match": {"authority": "api"}, "service": "api"}],
    ), name="web")
    assert api.admin_json("/identity")["local"]["serial"] == api_v1
    assert _peer_serial(meshctl, api.inbound, ca / "ca.crt", tmp_path / "web-v1", tmp_path) == api_v1
    assert _xfcc_hash(web) == hashlib.sha256(_der(tmp_path / "web-v1/tls.crt")).hexdigest()

    wrk = popen(["wrk", "-t1", "-c8", "-d8s", "--timeout", "5s", "-H", "Host: api", web.out_url + "/status?code=200"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)
        # 1. The callee's Secret is updated.
        _k8s_secret(secret, "2026_v2", tmp_path / "api-v2")
        wait_for(lambda: api.admin_json("/identity")["local"]["serial"] == api_v2, 5, what="api on its new certificate")
        assert api.admin_json("/identity")["generation"] == 2
        assert _peer_serial(meshctl, api.inbound, ca / "ca.crt", tmp_path / "web-v1", tmp_path) == api_v2
        time.sleep(1.0)
        # 2. The caller's files are replaced one by one.
        for name in ("tls.crt", "tls.key"):
            _replace(web_dir / name, tmp_path / "web-v2" / name)
            time.sleep(0.3)
        new_hash = hashlib.sha256(_der(tmp_path / "web-v2/tls.crt")).hexdigest()
        wait_for(lambda: _xfcc_hash(web) == new_hash, 5, what="web's new connections present its new certificate")
    finally:
        try:
            out, err = wrk.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(wrk)
            raise AssertionError("wrk did not finish in 30 s")
    out = out.decode()
    m = re.search(r"(\d+) requests in", out)
    assert wrk.returncode == 0 and m and int(m.group(1)) > 500, out + err.decode()
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    for m_ in (api, web):
        text = m_.metrics_text()
        assert (metric_value(text, "meshd_identity_reloads_total", result="ok") or 0) >= 1, text
    # api kept serving its established connections and handshakes never failed
    assert not metric_value(api.metrics_text(), "meshd_tls_handshake_errors_total"), api.metrics_text()
