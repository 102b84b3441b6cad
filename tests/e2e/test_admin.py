"""Admin API: /live /ready /routes /services /config /metrics /log-level /shutdown."""

import re
import threading
import time

import pytest

from meshlib import base_config, http_request, metric_value, parse_metrics, wait_for


@pytest.fixture(scope="module")
def mesh(start_meshd_module, nginx, backend):
    cfg = base_config(
        threads=2,
        services=[
            {"name": "web", "endpoints": [nginx.addr("web")]},
            {"name": "py", "endpoints": [backend.addr, {"address": nginx.addr("a"), "weight": 2}]},
            {"name": "slowsvc", "endpoints": [backend.addr]},
        ],
        routes=[
            {"name": "web-route", "match": {"authority": "web", "pathPrefix": "/", "method": "GET",
                                            "headers": {"x-canary": "1"}}, "service": "web"},
            {"match": {"authority": "web"}, "service": "web", "timeout": "2s"},
            {"match": {"authority": "slow"}, "service": "slowsvc"},
            {"match": {"authority": "split"}, "backends": [{"service": "web", "weight": 80}, {"service": "py", "weight": 20}]},
        ],
    )
    return start_meshd_module(cfg, name="admin")


def test_live_and_ready(mesh):
    assert mesh.admin_request("GET", "/live")[::2] == (200, b"live\n")
    assert mesh.admin_request("GET", "/ready")[::2] == (200, b"ready\n")


def test_unknown_admin_path_404(mesh):
    assert mesh.admin_request("GET", "/nope")[0] == 404


def test_routes(mesh, nginx):
    doc = mesh.admin_json("/routes")
    assert isinstance(doc["version"], int) and doc["version"] >= 1
    routes = doc["routes"]
    assert len(routes) == 4
    r0 = routes[0]
    assert r0["name"] == "web-route"
    assert r0["match"]["authority"] == "web"
    assert r0["match"]["pathPrefix"] == "/"
    assert r0["match"]["method"] == "GET"
    assert r0["match"]["headers"] == {"x-canary": "1"}
    assert r0["backends"] == [{"service": "web", "weight": 1}]
    assert all(isinstance(r["name"], str) and r["name"] for r in routes)
    assert len({r["name"] for r in routes}) == 4, "route names must be unique"
    assert routes[1]["timeout"] in ("2s", "2000ms", "2.0s"), routes[1]
    assert routes[3]["backends"] == [{"service": "web", "weight": 80}, {"service": "py", "weight": 20}]


def test_config(mesh, nginx, backend):
    cfg = mesh.admin_json("/config")
    assert isinstance(cfg["version"], int)
    assert cfg["mode"] == "sidecar"
    assert cfg["threads"] == 2
    assert [s["name"] for s in cfg["services"]] == ["web", "py", "slowsvc"]
    assert cfg["services"][1]["endpoints"] == [
        {"address": backend.addr, "weight": 1}, {"address": nginx.addr("a"), "weight": 2}]


def test_services_in_flight_and_requests(mesh, backend):
    def svc(name):
        return {s["name"]: s for s in mesh.admin_json("/services")["services"]}[name]

    s0 = svc("slowsvc")
    assert s0["balancer"] == "round_robin"
    assert s0["endpoints"][0]["address"] == backend.addr
    assert s0["endpoints"][0]["state"] == "healthy"
    assert s0["endpoints"][0]["weight"] == 1
    req0 = s0["endpoints"][0]["requests"]
    total0 = s0["requests"]
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", http_request(
        mesh.outbound, "GET", "/slow?ms=1500", headers={"Host": "slow"}, timeout=10)), daemon=True)
    t.start()
    wait_for(lambda: svc("slowsvc")["endpoints"][0]["inFlight"] == 1, 3, what="inFlight == 1")
    t.join(timeout=10)
    assert res["r"][0] == 200
    for _ in range(4):
        assert http_request(mesh.outbound, "GET", "/slow?ms=1", headers={"Host": "slow"})[0] == 200
    s1 = svc("slowsvc")
    assert s1["endpoints"][0]["inFlight"] == 0
    assert s1["endpoints"][0]["requests"] - req0 == 5
    assert s1["requests"] - total0 == 5


def test_metrics_format_and_families(mesh):
    # some traffic first, so per-service series exist
    for _ in range(3):
        assert http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
    http_request(mesh.outbound, "GET", "/", headers={"Host": "nowhere"})
    status, h, body = mesh.admin_request("GET", "/metrics")
    assert status == 200
    assert h["content-type"].startswith("text/plain")
    text = body.decode()
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        assert re.match(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})? [-+0-9.eE]+$|^.* (NaN|[+-]Inf)$', line), \
            f"bad sample line: {line!r}"
    samples = parse_metrics(text)  # raises on any malformed line
    names = {n for n, _, _ in samples}
    for family in [
        "meshd_requests_total", "meshd_request_duration_seconds_bucket", "meshd_request_duration_seconds_sum",
        "meshd_request_duration_seconds_count", "meshd_errors_total", "meshd_connections_open",
        "meshd_connections_total", "meshd_upstream_pool_reuse_total", "meshd_upstream_connects_total",
        "meshd_config_reloads_total", "meshd_config_version", "process_resident_memory_bytes",
    ]:
        assert family in names, f"{family} missing from /metrics"
    assert metric_value(text, "meshd_requests_total", direction="outbound", service="web", status_class="2xx") >= 3
    assert metric_value(text, "meshd_errors_total", direction="outbound", kind="no-route") >= 1
    assert metric_value(text, "meshd_config_reloads_total", result="ok") is not None
    assert metric_value(text, "meshd_config_reloads_total", result="failed") is not None
    assert metric_value(text, "meshd_config_version") == mesh.admin_json("/config")["version"]
    rss = metric_value(text, "process_resident_memory_bytes")
    assert 1e6 < rss < 1e9, rss
    # histogram: buckets cumulative, +Inf == count
    bucket = [(ls["le"], v) for n, ls, v in samples
              if n == "meshd_request_duration_seconds_bucket" and ls.get("service") == "web" and ls.get("direction") == "outbound"]
    assert bucket and bucket[-1][0] == "+Inf"
    values = [v for _, v in bucket]
    assert values == sorted(values)
    count = metric_value(text, "meshd_request_duration_seconds_count", direction="outbound", service="web")
    assert values[-1] == count >= 3
    # one TYPE line per family
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types)), [t for t in types if types.count(t) > 1]


def test_connections_metrics(mesh):
    import http.client

    text = mesh.metrics_text()
    total0 = metric_value(text, "meshd_connections_total", direction="outbound")
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web"})
        conn.getresponse().read()
        text = mesh.metrics_text()
        assert metric_value(text, "meshd_connections_total", direction="outbound") == total0 + 1
        assert metric_value(text, "meshd_connections_open", direction="outbound") >= 1
    finally:
        conn.close()
    wait_for(lambda: metric_value(mesh.metrics_text(), "meshd_connections_open", direction="outbound") == 0, 3,
             what="connections_open back to 0")


def test_log_level(mesh):
    assert mesh.admin_request("GET", "/log-level")[::2] == (200, b"info\n")
    assert mesh.admin_request("PUT", "/log-level", body="debug")[::2] == (200, b"debug\n")
    assert mesh.admin_request("GET", "/log-level")[::2] == (200, b"debug\n")
    assert mesh.admin_request("PUT", "/log-level", body="loud")[0] == 400
    assert mesh.admin_request("PUT", "/log-level", body="info")[0] == 200


def test_shutdown_from_loopback(start_meshd, nginx):
    m = start_meshd(base_config(services=[{"name": "web", "endpoints": [nginx.addr("web")]}],
                                routes=[{"match": {"authority": "web"}, "service": "web"}]))
    status, _, body = m.admin_request("POST", "/shutdown")
    assert status == 200, body
    t0 = time.monotonic()
    assert m.wait_exit(10) == 0
    assert time.monotonic() - t0 < 5
    msgs = [r.get("msg") for r in m.log_lines()]
    assert "shutdown requested through the admin API" in msgs


def test_shutdown_requires_post(mesh):
    assert mesh.admin_request("GET", "/shutdown")[0] in (404, 405)
    assert mesh.alive()


def test_admin_connections_are_bounded_and_time_out(start_meshd, nginx):
    """Issue 15 item 4: at most 64 admin connections; one that reads nothing for 10 s (idle, or a
    request never finished) is closed, so they cannot be held to starve meshd of descriptors."""
    import socket

    m = start_meshd(base_config(threads=1), name="admin-limits")
    held = [socket.create_connection(m.admin) for _ in range(64)]
    partial = held[0]
    partial.sendall(b"PUT /log-level HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nde")
    extra = socket.create_connection(m.admin)
    extra.settimeout(5)
    assert extra.recv(10) == b"", "the 65th admin connection was not closed at accept"
    t0 = time.monotonic()
    for s in held:
        s.settimeout(15)
        assert s.recv(10) == b""
    took = time.monotonic() - t0
    assert 8 <= took <= 14, f"idle admin connections closed after {took:.1f}s"
    assert m.admin_request("GET", "/live")[0] == 200
    refused = metric_value(m.metrics_text(), "meshd_connections_refused_total", direction="admin", reason="connection_limit")
    assert refused == 1
