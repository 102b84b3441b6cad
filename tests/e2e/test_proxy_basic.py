"""Outbound proxying basics: routing by Host / absolute-form, header policy, bodies, keep-alive."""

import hashlib
import json
import os
import re

import pytest

from meshlib import base_config, curl, http_request, raw_exchange, parse_response_head, wait_for

BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def mesh(start_meshd_module, nginx, backend):
    cfg = base_config(
        threads=2,
        accessLog=True,
        inbound={"listen": "127.0.0.1:0", "app": backend.addr},
        services=[
            {"name": "web", "endpoints": [nginx.addr("web")]},
            {"name": "py", "endpoints": [backend.addr]},
        ],
        routes=[
            {"match": {"authority": "web"}, "service": "web"},
            {"match": {"authority": "py"}, "service": "py"},
        ],
    )
    return start_meshd_module(cfg, name="basic")


def test_ready_line_names_bound_loopback_ports(mesh):
    rec = mesh.ready_line
    for key in ("outbound", "inbound", "admin"):
        assert re.fullmatch(r"127\.0\.0\.1:\d+", rec[key]), f"ready line {key}={rec[key]!r}, want 127.0.0.1:PORT"
        assert int(rec[key].rsplit(":", 1)[1]) != 0
    assert len({rec["outbound"], rec["inbound"], rec["admin"]}) == 3


def test_get_via_host_header(mesh, nginx):
    r = curl("-i", "-H", "Host: web", mesh.out_url + "/index.html")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 200"), out
    assert out.endswith("\r\n\r\nweb\n"), out


def test_get_via_absolute_form_proxy(mesh):
    # curl -x sends "GET http://web/some/path HTTP/1.1" (absolute-form) to the proxy.
    r = curl("-i", "-x", mesh.out_url, "http://web/some/path?q=1")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 200"), out
    assert out.endswith("\r\n\r\nweb\n"), out
    # the port of the authority is ignored for routing
    r = curl("-i", "-x", mesh.out_url, "http://web:8080/")
    assert r.stdout.decode().endswith("\r\n\r\nweb\n"), r.stdout


def test_headers_seen_by_backend(mesh, backend):
    r = curl(
        "-x", mesh.out_url,
        "-H", "Connection: keep-alive, X-Drop-Me",
        "-H", "X-Drop-Me: secret",
        "-H", "Keep-Alive: timeout=5",
        "-H", "Proxy-Connection: keep-alive",
        "-H", "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "-H", "TE: trailers",
        "-H", "Upgrade: websocket",
        "-H", "X-Forwarded-For: 127.0.0.9",
        "-H", "X-Keep-Me: yes",
        "http://py/headers",
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    names = [k.lower() for k, _ in got["headers"]]
    hdr = {k.lower(): v for k, v in got["headers"]}
    assert got["path"] == "/headers", got  # origin-form towards the backend
    assert got["version"] == "HTTP/1.1"
    # x-meshd-dst is for a node proxy (an endpoint with `via`): this endpoint is the workload itself
    assert "x-meshd-dst" not in names, got
    xff = [p.strip() for p in hdr.get("x-forwarded-for", "").split(",")]
    assert xff == ["127.0.0.9", "127.0.0.1"], got
    assert hdr.get("x-keep-me") == "yes"
    assert hdr.get("host") == "py"
    for hop in ("connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "upgrade", "x-drop-me"):
        assert hop not in names, f"hop-by-hop header {hop!r} reached the backend: {got['headers']}"


def test_headers_seen_by_backend_host_header_form(mesh, backend):
    # a client's x-meshd-dst does not reach an endpoint that is not behind a node proxy
    status, _, body = http_request(mesh.outbound, "GET", "/headers", headers={"Host": "py", "x-meshd-dst": "10.0.0.1:80"})
    assert status == 200
    got = json.loads(body)
    hdr = {k.lower(): v for k, v in got["headers"]}
    assert "x-meshd-dst" not in hdr, got
    assert hdr["x-forwarded-for"] == "127.0.0.1"
    assert "connection" not in hdr and "keep-alive" not in hdr


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("bodies") / "body64m.bin"
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(p, "wb") as f:
        for i in range(BIG >> 20):
            b = bytes([i & 0xFF]) + block[1:]  # every MiB different
            h.update(b)
            f.write(b)
    return p, h.hexdigest()


def test_large_chunked_post_hash_matches(mesh, big_file):
    path, digest = big_file
    r = curl("-x", mesh.out_url, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{path}",
             "http://py/echo-hash", timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["bytes"] == BIG
    assert got["sha256"] == digest
    assert (got["transfer_encoding"] or "").lower() == "chunked", f"chunked request body arrived as {got}"
    assert got["content_length"] is None


def test_streamed_chunked_upload_from_stdin(mesh, big_file):
    path, digest = big_file
    with open(path, "rb") as f:
        r = curl("-x", mesh.out_url, "-T", "-", "http://py/echo-hash", timeout=60, input_file=f)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["bytes"], got["sha256"], got["method"]) == (BIG, digest, "PUT")
    assert (got["transfer_encoding"] or "").lower() == "chunked"


def test_content_length_post_hash_matches(mesh, big_file):
    path, digest = big_file
    r = curl("-x", mesh.out_url, "-H", "Expect:", "--data-binary", f"@{path}", "http://py/echo-hash", timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert (got["bytes"], got["sha256"]) == (BIG, digest)
    assert got["content_length"] == str(BIG)


def test_expect_100_continue_answered(mesh):
    body = b"0123456789" * 100
    req = (b"POST /echo-hash HTTP/1.1\r\nHost: py\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
    import socket
    import time

    s = socket.create_connection(mesh.outbound, timeout=5)
    try:
        s.sendall(req)
        first = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in first and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            first += chunk
        assert first.startswith(b"HTTP/1.1 100"), f"expected 100 Continue before the body, got {first!r}"
        s.sendall(body)
        rest = first.split(b"\r\n\r\n", 1)[1]
        while b"}" not in rest and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
    finally:
        s.close()
    status, headers = parse_response_head(rest)
    assert status == 200
    got = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert got["bytes"] == 1000 and got["sha256"] == hashlib.sha256(body).hexdigest()


def test_keepalive_reuse_downstream_and_upstream(mesh):
    before = mesh.metrics_text()
    from meshlib import metric_value

    reuse0 = metric_value(before, "meshd_upstream_pool_reuse_total") or 0
    conn0 = metric_value(before, "meshd_upstream_connects_total", result="ok") or 0
    n = 5
    urls = [f"http://web/k{i}" for i in range(n)]
    r = curl("-v", "-x", mesh.out_url, *urls)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "web\n" * n
    err = r.stderr.decode()
    assert len(re.findall(r"(?i)re-using existing connection", err)) == n - 1, err
    assert len(re.findall(r"(?i)Connected to ", err)) == 1, err
    after = mesh.metrics_text()
    reuse1 = metric_value(after, "meshd_upstream_pool_reuse_total")
    conn1 = metric_value(after, "meshd_upstream_connects_total", result="ok")
    assert reuse1 is not None and conn1 is not None, "pool metrics missing"
    assert reuse1 - reuse0 >= n - 1, (reuse0, reuse1)
    threads = 2
    assert conn1 - conn0 <= threads, f"{conn1 - conn0} upstream connects for {n} requests on one connection"


def test_access_log_json_on_stdout(mesh):
    status, _, _ = http_request(mesh.outbound, "GET", "/access-log-probe?x=1", headers={"Host": "web"})
    assert status == 200

    def find():
        for line in mesh.stdout_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                raise AssertionError(f"access log line is not JSON: {line!r}")
            if rec.get("path") == "/access-log-probe":
                return rec
        return None

    rec = wait_for(find, 5, what="access-log line")
    assert rec["status"] == 200
    assert rec["direction"] == "outbound"
    assert rec["method"] == "GET"
    assert rec["authority"] == "web"


def test_chunked_response_stays_chunked(mesh):
    got, closed, _ = raw_exchange(mesh.outbound, b"GET /chunked?n=5 HTTP/1.1\r\nHost: py\r\nConnection: close\r\n\r\n",
                                  timeout=5)
    status, h = parse_response_head(got)
    assert status == 200
    assert h.get("transfer-encoding", "").lower() == "chunked", h
    assert "content-length" not in h
    body = got.split(b"\r\n\r\n", 1)[1]
    assert body.endswith(b"0\r\n\r\n"), body
    r = curl("-x", mesh.out_url, "http://py/chunked?n=5")
    assert r.stdout.decode() == "".join(f"chunk {i}\n" for i in range(5))


def test_backend_status_passed_through(mesh):
    for code in (201, 202, 302, 404, 500, 503):
        status, h, body = http_request(mesh.outbound, "GET", f"/status?code={code}", headers={"Host": "py"})
        assert status == code
        assert "x-meshd-error" not in h, f"backend's {code} must not look like a meshd error"


def test_sidecar_inbound_forwards_to_app(mesh, backend):
    # whatever the Host and x-meshd-dst, a sidecar's inbound goes to inbound.app, without x-meshd-dst
    status, h, body = http_request(mesh.inbound, "POST", "/headers?from=peer", body=b"hello",
                                   headers={"Host": "orders", "x-meshd-dst": "127.0.0.1:1",
                                            "Connection": "keep-alive, X-Hop", "X-Hop": "1"})
    assert status == 200, body
    got = json.loads(body)
    hdr = {k.lower(): v for k, v in got["headers"]}
    assert got["method"] == "POST" and got["path"] == "/headers?from=peer"
    assert hdr.get("host") == "orders"
    assert "x-meshd-dst" not in hdr and "x-hop" not in hdr and "connection" not in hdr, got
    assert h.get("x-backend") == "py"
    inbound = mesh.metric("meshd_requests_total", direction="inbound", status_class="2xx")
    assert inbound and inbound >= 1
