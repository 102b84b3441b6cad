"""Every error meshd produces itself: status, x-meshd-error, body, meshd_errors_total, and that the
process keeps serving afterwards. The tests in this module share one meshd and run in file order;
the last one checks that meshd is still alive and serving."""

import re
import socket
import time

import pytest

from meshlib import base_config, curl, free_port, http_request, metric_value, parse_response_head, raw_exchange, wait_for


@pytest.fixture(scope="module")
def mesh(start_meshd_module, nginx, backend):
    closed_port = free_port()  # nothing listens there
    cfg = base_config(
        threads=1,
        # maxRequestLineBytes below the default (16 KiB): an HTTP/2 client's first header block is
        # bounded at 16 KiB by SwiftNIO until it acknowledges meshd's SETTINGS (docs/reliability.md).
        http={"maxHeaderBytes": 65536, "maxRequestLineBytes": 8192, "headerReadTimeout": "1s", "idleTimeout": "60s"},
        upstream={"connectTimeout": "1s", "requestTimeout": "15s"},
        services=[
            {"name": "web", "endpoints": [nginx.addr("web")]},
            {"name": "empty", "endpoints": []},
            {"name": "closed", "endpoints": [f"127.0.0.1:{closed_port}"]},
            {"name": "py", "endpoints": [backend.addr]},
        ],
        routes=[
            {"match": {"authority": "web"}, "service": "web"},
            {"match": {"authority": "empty"}, "service": "empty"},
            {"match": {"authority": "closed"}, "service": "closed"},
            {"match": {"authority": "slow"}, "service": "py", "timeout": "500ms"},
            {"match": {"authority": "py"}, "service": "py"},
        ],
    )
    m = start_meshd_module(cfg, name="errors")
    m.closed_port = closed_port
    return m


def errors_total(mesh, kind):
    return metric_value(mesh.metrics_text(), "meshd_errors_total", direction="outbound", kind=kind) or 0.0


class ErrorCounter:
    def __init__(self, mesh, kind):
        self.mesh, self.kind = mesh, kind

    def __enter__(self):
        self.before = errors_total(self.mesh, self.kind)
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.delta = errors_total(self.mesh, self.kind) - self.before


def test_404_no_route(mesh):
    with ErrorCounter(mesh, "no-route") as c:
        status, h, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "nowhere.example"})
    assert status == 404
    assert h.get("x-meshd-error") == "no-route"
    assert b"nowhere.example" in body, body
    assert c.delta == 1


def test_404_no_route_absolute_form(mesh):
    with ErrorCounter(mesh, "no-route") as c:
        r = curl("-i", "-x", mesh.out_url, "http://unknown-svc/x")
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 404"), out
    assert "x-meshd-error: no-route" in out.lower()
    assert "unknown-svc" in out.split("\r\n\r\n", 1)[1]
    assert c.delta == 1


def test_503_no_endpoints(mesh):
    with ErrorCounter(mesh, "no-endpoints") as c:
        status, h, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "empty"})
    assert status == 503
    assert h.get("x-meshd-error") == "no-endpoints"
    assert c.delta == 1


def test_503_connect_failed_closed_port(mesh):
    with ErrorCounter(mesh, "connect-failed") as c:
        t0 = time.monotonic()
        status, h, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "closed"}, timeout=10)
        elapsed = time.monotonic() - t0
    assert status == 503
    assert h.get("x-meshd-error") == "connect-failed"
    assert elapsed < 3.0
    assert c.delta == 1


def test_keep_alive_connection_serves_on_after_connect_failed(mesh):
    """A 503 connect-failed (answered after an asynchronous connect attempt, while reads were held)
    leaves the keep-alive connection serving: the next requests on it are answered (soak finding)."""
    s = socket.create_connection(mesh.outbound, timeout=5)
    try:
        for host, want in (("closed", b"503"), ("closed", b"503"), ("web", b"200")):
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, "connection closed"
                head += chunk
            assert head.split(b" ")[1] == want, head[:200]
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += s.recv(4096)
    finally:
        s.close()


def test_keep_alive_connection_reads_the_rest_of_a_body_after_connect_failed(mesh):
    """A 503 connect-failed answered before the request's body was all read: meshd reads the rest
    and drops it, then serves the next request on the connection. (Reads held while meshd waited
    for the upstream stayed held: the rest of the body and the next request were never read, and the
    connection stalled — in the soak, an upstream meshd pooled such a connection and its next
    request, a WebSocket handshake, timed out behind it.)"""
    s = socket.create_connection(mesh.outbound, timeout=5)
    try:
        s.sendall(b"POST / HTTP/1.1\r\nHost: closed\r\nContent-Length: 10\r\n\r\nhello")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, "connection closed"
            head += chunk
        assert head.split(b" ")[1] == b"503", head[:200]
        assert b"connection: close" not in head.lower(), head[:300]
        rest = head.split(b"\r\n\r\n", 1)[1]
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        while len(rest) < length:
            rest += s.recv(4096)
        # The body's second half, then the next request on the same connection.
        s.sendall(b"world" + b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                pytest.fail("no response to the request after the dropped body: the connection stalled")
            assert chunk, "connection closed"
            head += chunk
        assert head.split(b" ")[1] == b"200", head[:200]
    finally:
        s.close()


def test_504_route_timeout(mesh):
    with ErrorCounter(mesh, "upstream-timeout") as c:
        t0 = time.monotonic()
        status, h, body = http_request(mesh.outbound, "GET", "/slow?ms=3000", headers={"Host": "slow"}, timeout=10)
        elapsed = time.monotonic() - t0
    assert status == 504
    assert h.get("x-meshd-error") == "upstream-timeout"
    assert 0.45 <= elapsed < 2.0, f"504 after {elapsed:.2f}s with a 500ms route timeout"
    assert c.delta == 1


def test_502_upstream_reset(mesh):
    with ErrorCounter(mesh, "upstream-reset") as c:
        status, h, body = http_request(mesh.outbound, "GET", "/close", headers={"Host": "py"})
    assert status == 502
    assert h.get("x-meshd-error") == "upstream-reset"
    assert c.delta == 1


def test_400_malformed_request(mesh):
    with ErrorCounter(mesh, "bad-request") as c:
        got, closed, _ = raw_exchange(mesh.outbound, b"GARBAGE\r\n\r\n", timeout=5)
    status, h = parse_response_head(got)
    assert status == 400
    assert h.get("x-meshd-error") == "bad-request"
    assert closed, "connection must be closed after a malformed request"
    assert c.delta == 1


def test_431_headers_too_large(mesh):
    big = b"a" * (100 * 1024)
    req = b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + big + b"\r\n\r\n"
    with ErrorCounter(mesh, "headers-too-large") as c:
        got, closed, _ = raw_exchange(mesh.outbound, req, timeout=5)
    status, h = parse_response_head(got)
    assert status == 431
    assert h.get("x-meshd-error") == "headers-too-large"
    assert closed
    assert c.delta == 1


def test_431_headers_too_large_curl(mesh):
    big = "b" * (100 * 1024)
    with ErrorCounter(mesh, "headers-too-large") as c:
        r = curl("-i", "-H", "Host: web", "-H", f"X-Big: {big}", mesh.out_url + "/")
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 431"), (out[:300], r.stderr)
    assert "x-meshd-error: headers-too-large" in out.lower()
    assert c.delta == 1


def test_414_request_line_too_long(mesh):
    """http.maxRequestLineBytes (8 KiB here): a longer request line gets 414 and never reaches the
    backend, over HTTP/1.1 and HTTP/2; one just under the bound is served."""
    long_path = "/" + "p" * (10 * 1024)
    with ErrorCounter(mesh, "uri-too-long") as c:
        status, h, _ = http_request(mesh.outbound, "GET", long_path, headers={"Host": "web"})
        assert status == 414 and h.get("x-meshd-error") == "uri-too-long", (status, h)
        r = curl("-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge", "-H", "Host: web",
                 mesh.out_url + long_path)
        assert r.stdout.decode() == "414", (r.stdout, r.stderr)
    assert c.delta == 2
    # Within the bound (and within http.maxHeaderBytes): routed as usual.
    ok_path = "/" + "p" * (8192 - 30)
    status, h, _ = http_request(mesh.outbound, "GET", ok_path, headers={"Host": "py"})
    assert status == 200 and "x-meshd-error" not in h, (status, h)


def test_408_header_read_timeout_partial_head(mesh):
    with ErrorCounter(mesh, "header-timeout") as c:
        got, closed, elapsed = raw_exchange(mesh.outbound, b"GET / HTTP/1.1\r\nHost: web\r\n", timeout=6)
    assert got, f"no response after {elapsed:.2f}s"
    status, h = parse_response_head(got)
    assert status == 408
    assert h.get("x-meshd-error") == "header-timeout"
    assert closed, "connection must be closed after the 408"
    assert 0.9 <= elapsed <= 3.0, f"408 after {elapsed:.2f}s with headerReadTimeout 1s"
    assert c.delta == 1


def test_silent_connection_closed_after_header_timeout(mesh):
    got, closed, elapsed = raw_exchange(mesh.outbound, b"", timeout=6)
    assert closed, f"a connection that sends nothing was still open after {elapsed:.2f}s"
    assert got == b"" or got.startswith(b"HTTP/1.1 408"), got
    assert 0.9 <= elapsed <= 3.0, f"closed after {elapsed:.2f}s with headerReadTimeout 1s"


def test_backend_dies_mid_response(mesh):
    errors = lambda: metric_value(mesh.metrics_text(), "meshd_errors_total", direction="outbound") or 0.0
    e0 = errors()
    r = curl("-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-H", "Host: py", mesh.out_url + "/die",
             timeout=10)
    # curl: 18 = partial file (Content-Length not reached), 56 = recv failure, 52 = empty reply
    assert r.returncode in (18, 56, 52), f"curl exit {r.returncode}, stderr {r.stderr!r}, out {r.stdout!r}"
    code, size = r.stdout.decode().split()
    assert int(size) < 1_000_000
    assert errors() - e0 >= 1, "a response cut by the backend must be counted in meshd_errors_total"


def test_die_mid_response_raw_socket_sees_no_complete_response(mesh):
    got, closed, _ = raw_exchange(mesh.outbound, b"GET /die HTTP/1.1\r\nHost: py\r\n\r\n", timeout=5)
    assert closed, "connection must be closed when the backend dies mid-response"
    status, h = parse_response_head(got)
    assert status == 200
    body = got.split(b"\r\n\r\n", 1)[1]
    if "content-length" in h:
        assert int(h["content-length"]) == 1_000_000
        assert len(body) < 1_000_000
    else:  # chunked: there must be no terminating 0-chunk
        assert not body.endswith(b"0\r\n\r\n"), "meshd faked a complete chunked response"


def test_400_two_host_headers(mesh, backend):
    """RFC 9112 §3.2: meshd would route on one and the application might read the other."""
    before = backend.count()
    with ErrorCounter(mesh, "bad-request") as c:
        got, _, _ = raw_exchange(mesh.outbound, b"GET /headers HTTP/1.1\r\nHost: py\r\nHost: evil\r\n\r\n", timeout=5)
    status, h = parse_response_head(got)
    assert status == 400 and h.get("x-meshd-error") == "bad-request", got
    assert b"more than one Host header" in got
    assert c.delta == 1
    assert backend.count() == before, "the request reached the backend"


def test_absolute_form_authority_replaces_host(mesh):
    """RFC 9112 §3.2.2: routed on the URI's authority, forwarded with that authority as Host."""
    got, _, _ = raw_exchange(
        mesh.outbound, b"GET http://py/headers HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n", timeout=5)
    status, _ = parse_response_head(got)
    assert status == 200, got
    body = got.split(b"\r\n\r\n", 1)[1]
    import json
    hosts = [v for k, v in json.loads(body)["headers"] if k.lower() == "host"]
    assert hosts == ["py"], hosts


def test_400_content_length_past_int64(mesh, backend):
    """Issue 15 item 8: a Content-Length between 2^63 and 2^64 - 1 is refused, never forwarded."""
    before = backend.count()
    got, closed, _ = raw_exchange(
        mesh.outbound, b"POST /headers HTTP/1.1\r\nHost: py\r\nContent-Length: 18446744073709551615\r\n\r\nabc", timeout=5)
    status, h = parse_response_head(got)
    assert status == 400 and h.get("x-meshd-error") == "bad-request", got
    assert backend.count() == before


def test_400_http09_at_once(mesh):
    """Issue 15 item 8: an HTTP/0.9 request line (no version) gets 400 at once, not 408 after 10 s."""
    t0 = time.monotonic()
    got, closed, _ = raw_exchange(mesh.outbound, b"GET /\r\n", timeout=5)
    status, h = parse_response_head(got)
    assert status == 400 and h.get("x-meshd-error") == "bad-request", got
    assert closed and time.monotonic() - t0 < 2


def test_meshd_still_alive_and_serving(mesh):
    assert mesh.alive(), mesh.stderr_text()[-3000:]
    for _ in range(3):
        status, h, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})
        assert (status, body) == (200, b"web\n")
    status, _, body = mesh.admin_request("GET", "/ready")
    assert status == 200


def test_max_connections(start_meshd, nginx):
    import socket

    m = start_meshd(base_config(
        http={"maxConnections": 2},
        services=[{"name": "web", "endpoints": [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}],
    ))
    held = [socket.create_connection(m.outbound, timeout=5) for _ in range(2)]
    try:
        for s in held:  # both are served
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        got, closed, _ = raw_exchange(m.outbound, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", timeout=3)
        assert closed and not got.startswith(b"HTTP/1.1 200"), got
        assert m.metric("meshd_connections_refused_total", direction="outbound", reason="connection_limit") == 1
    finally:
        for s in held:
            s.close()
    # capacity comes back once they are closed
    import time
    time.sleep(0.3)
    assert http_request(m.outbound, "GET", "/", headers={"Host": "web"})[0] == 200


def test_client_that_leaves_stops_the_upstream_request(start_meshd, tmp_path):
    """A client that closes its connection while waiting for a response: meshd abandons the request
    (499, as nginx counts it) and closes the upstream connection at once, not at the route's timeout
    (soak finding: 20 such clients held 40 sockets for 15 s)."""
    import os

    from fault_backend import FaultBackend

    hang = FaultBackend("hang", "hang", logdir=tmp_path)
    try:
        m = start_meshd(base_config(services=[{"name": "hang", "endpoints": [hang.addr]}],
                                    routes=[{"match": {"authority": "hang"}, "service": "hang", "timeout": "30s"}]),
                        name="client-leaves")
        fds = lambda: len(os.listdir(f"/proc/{m.pid}/fd"))  # noqa: E731
        base = fds()
        socks = []
        for _ in range(20):
            s = socket.create_connection(m.outbound, timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: hang\r\n\r\n")
            socks.append(s)
        wait_for(lambda: fds() >= base + 40, 5, what="20 client and 20 upstream connections open")
        for s in socks:
            s.close()
        wait_for(lambda: fds() <= base + 2, 3, what=f"meshd releasing both sides (fds {fds()} vs {base} before)")
        text = m.metrics_text()
        assert (metric_value(text, "meshd_requests_total", direction="outbound", service="hang", status_class="4xx")
                or 0) == 20, text
    finally:
        hang.stop()


@pytest.mark.parametrize("name,req", [
    ("unknown transfer coding", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ("bad chunk size", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
    ("Content-Length 2^64-1", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 18446744073709551615\r\n\r\nabc"),
])
def test_broken_body_framing_gets_400_and_close(mesh, name, req):
    """Framing that cannot be trusted gets a 400 and the connection closes at once (soak finding: the
    first two were a silent close, the third left the connection open until it idled out)."""
    with ErrorCounter(mesh, "bad-request") as c:
        got, closed, elapsed = raw_exchange(mesh.outbound, req, timeout=5)
    status, h = parse_response_head(got)
    assert status == 400 and h.get("x-meshd-error") == "bad-request", (name, got[:200])
    assert closed and elapsed < 2, (name, closed, elapsed)
    assert c.delta == 1
