"""Node mode: listeners on the node IP, allowed sources on outbound, pod CIDRs on inbound, and the
full sidecar → node proxy → app path through an endpoint's `via`."""

import json
import socket
import time

import pytest

from meshlib import base_config, curl, http_request, metric_value, raw_exchange, wait_for

NODE_IP = "127.0.0.2"
POD_SOURCE = "127.0.0.3"


@pytest.fixture(scope="module")
def node(start_meshd_module, nginx):
    cfg = {
        "mode": "node",
        "nodeIP": NODE_IP,
        "threads": 1,
        "outbound": {"listen": f"{NODE_IP}:0"},
        "inbound": {"listen": f"{NODE_IP}:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": ["127.0.0.1/32"], "allowedSources": [f"{POD_SOURCE}/32"]},
        "drainTimeout": "5s",
        "services": [{"name": "web", "endpoints": [nginx.addr("web")]}],
        "routes": [{"match": {"authority": "web"}, "service": "web"}],
    }
    return start_meshd_module(cfg, name="node")


def refused(node):
    return metric_value(node.metrics_text(), "meshd_connections_refused_total",
                        direction="outbound", reason="source_not_allowed") or 0.0


def test_node_listeners_bind_node_ip(node):
    assert node.outbound[0] == NODE_IP and node.inbound[0] == NODE_IP, node.ready_line
    cfg = node.admin_json("/config")
    assert cfg["mode"] == "node" and cfg["nodeIP"] == NODE_IP


def test_outbound_from_allowed_source(node):
    r = curl("-i", "--interface", POD_SOURCE, "-x", node.out_url, "http://web/")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 200") and out.endswith("\r\n\r\nweb\n"), out


def test_outbound_from_disallowed_source_refused(node):
    before = refused(node)
    r = curl("-i", "--interface", "127.0.0.1", "-x", node.out_url, "http://web/")
    assert r.returncode in (52, 56), f"curl exit {r.returncode}: {r.stdout!r} {r.stderr!r}"
    assert r.stdout == b""
    # and on a raw socket: closed without a byte
    got, closed, _ = raw_exchange(node.outbound, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", source="127.0.0.1", timeout=5)
    assert closed and got == b"", got
    assert refused(node) - before == 2


def test_inbound_forwards_to_pod_in_cidr(node, backend):
    status, h, body = http_request(node.inbound, "GET", "/headers",
                                   headers={"Host": "app", "x-meshd-dst": backend.addr})
    assert status == 200, body
    got = json.loads(body)
    names = [k.lower() for k, _ in got["headers"]]
    assert "x-meshd-dst" not in names, got
    assert h.get("x-backend") == "py"


def test_inbound_destination_outside_pod_cidrs_403(node):
    e0 = metric_value(node.metrics_text(), "meshd_errors_total", direction="inbound", kind="destination-not-allowed") or 0
    status, h, body = http_request(node.inbound, "GET", "/", headers={"Host": "app", "x-meshd-dst": "127.0.0.9:80"})
    assert status == 403
    assert h.get("x-meshd-error") == "destination-not-allowed"
    e1 = metric_value(node.metrics_text(), "meshd_errors_total", direction="inbound", kind="destination-not-allowed")
    assert e1 - e0 == 1


def test_inbound_without_destination_403(node):
    status, h, _ = http_request(node.inbound, "GET", "/", headers={"Host": "app"})
    assert status == 403
    assert h.get("x-meshd-error") == "destination-not-allowed"


def test_sidecar_via_node_to_app(node, backend, start_meshd_module):
    sidecar = start_meshd_module(base_config(
        services=[{"name": "app", "endpoints": [{"address": backend.addr, "via": f"{NODE_IP}:{node.inbound[1]}"}]}],
        routes=[{"match": {"authority": "app"}, "service": "app"}],
    ), name="sidecar-a")
    r = curl("-i", "-x", sidecar.out_url, "http://app/headers")
    assert r.returncode == 0, r.stderr
    head, body = r.stdout.decode().split("\r\n\r\n", 1)
    assert head.startswith("HTTP/1.1 200"), head
    got = json.loads(body)
    hdr = {k.lower(): v for k, v in got["headers"]}
    assert "x-meshd-dst" not in hdr, got  # the node removed it before the app
    assert "127.0.0.1" in hdr.get("x-forwarded-for", ""), got
    # it went through the node's inbound
    inbound_2xx = metric_value(node.metrics_text(), "meshd_requests_total", direction="inbound", status_class="2xx")
    assert inbound_2xx and inbound_2xx >= 1
    eps = sidecar.admin_json("/services")["services"][0]["endpoints"]
    assert eps[0]["address"] == backend.addr and eps[0].get("via") == f"{NODE_IP}:{node.inbound[1]}", eps
    assert eps[0]["requests"] == 1


# A node proxy never forwards into meshd itself, nor to loopback it was not told is a pod (issue 15, 1).


@pytest.fixture(scope="module")
def loopback_node(start_meshd_module):
    """A node whose pods are all of 127.0.0.0/8 (as on one test machine): its own listeners lie inside."""
    return start_meshd_module({
        "mode": "node", "nodeIP": NODE_IP, "threads": 1,
        "outbound": {"listen": f"{NODE_IP}:0"}, "inbound": {"listen": f"{NODE_IP}:0"},
        "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": ["127.0.0.0/8"], "allowedSources": [f"{POD_SOURCE}/32"]},
        "services": [], "routes": [],
    }, name="loopback-node")


@pytest.mark.parametrize("which", ["admin", "inbound", "outbound"])
def test_inbound_never_forwards_to_meshd_itself(loopback_node, which):
    host, port = {"admin": loopback_node.admin, "inbound": loopback_node.inbound, "outbound": loopback_node.outbound}[which]
    for method, path in (("GET", "/config"), ("POST", "/shutdown")):
        status, h, body = http_request(loopback_node.inbound, method, path,
                                       headers={"Host": "app", "x-meshd-dst": f"{host}:{port}"})
        assert status == 403, (which, method, status, body)
        assert h.get("x-meshd-error") == "destination-not-allowed"
        assert b"own listeners" in body, body
    assert loopback_node.proc.poll() is None, "meshd stopped"
    assert loopback_node.admin_json("/config")["mode"] == "node"


def test_inbound_to_a_loopback_pod_named_by_pod_cidrs(loopback_node, backend):
    status, h, _ = http_request(loopback_node.inbound, "GET", "/", headers={"Host": "app", "x-meshd-dst": backend.addr})
    assert status == 200 and h.get("x-backend") == "py"


def test_inbound_never_forwards_to_unspecified_address(loopback_node, backend):
    port = backend.addr.rsplit(":", 1)[1]
    status, h, body = http_request(loopback_node.inbound, "GET", "/", headers={"Host": "app", "x-meshd-dst": f"0.0.0.0:{port}"})
    assert status == 403 and h.get("x-meshd-error") == "destination-not-allowed", body


def test_node_without_pod_cidrs_forwards_nowhere(start_meshd, backend):
    node = start_meshd({
        "mode": "node", "nodeIP": NODE_IP, "threads": 1,
        "outbound": {"listen": f"{NODE_IP}:0"}, "inbound": {"listen": f"{NODE_IP}:0"},
        "admin": {"listen": "127.0.0.1:0"}, "services": [], "routes": [],
    }, name="no-pods-node")
    assert "node.podCIDRs is empty" in node.stderr_text()  # said at start
    for dst in (backend.addr, f"{node.admin[0]}:{node.admin[1]}", "127.0.0.1:22"):
        status, h, body = http_request(node.inbound, "GET", "/", headers={"Host": "app", "x-meshd-dst": dst})
        assert status == 403 and b"node.podCIDRs is empty" in body, (dst, status, body)


def test_one_pod_cannot_take_the_node_proxys_connections(start_meshd, nginx):
    """http.maxConnectionsPerSource: a pod at its bound gets new connections closed at accept (and a
    metric); another pod keeps being served; a closed connection frees a place."""
    pod_a, pod_b = "127.0.0.3", "127.0.0.4"
    node = start_meshd({
        "mode": "node", "nodeIP": NODE_IP, "threads": 2,
        "outbound": {"listen": f"{NODE_IP}:0"}, "inbound": {"listen": f"{NODE_IP}:0"},
        "admin": {"listen": "127.0.0.1:0"}, "http": {"maxConnectionsPerSource": 3},
        "node": {"podCIDRs": ["127.0.0.1/32"], "allowedSources": [f"{pod_a}/32", f"{pod_b}/32"]},
        "services": [{"name": "web", "endpoints": [nginx.addr("web")]}],
        "routes": [{"match": {"authority": "web"}, "service": "web"}],
    }, name="per-source-node")
    request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"

    def served(sock):
        sock.sendall(request)
        got = b""
        while not got.endswith(b"web\n"):
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk
        return got.startswith(b"HTTP/1.1 200")

    held = [socket.create_connection(node.outbound, timeout=5, source_address=(pod_a, 0)) for _ in range(3)]
    try:
        assert all(served(s) for s in held)
        got, closed, _ = raw_exchange(node.outbound, request, source=pod_a, timeout=5)
        assert closed and got == b"", got
        r = curl("-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface", pod_b, "-x", node.out_url, "http://web/")
        assert r.stdout == b"200", (r.stdout, r.stderr)
        assert metric_value(node.metrics_text(), "meshd_connections_refused_total",
                            direction="outbound", reason="source_connection_limit") == 1.0
        assert "source at http.maxConnectionsPerSource" in node.stderr_text()
        held.pop().close()
        once = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
        wait_for(lambda: raw_exchange(node.outbound, once, source=pod_a, timeout=5)[0].startswith(b"HTTP/1.1 200"),
                 timeout=5, what="a place freed by a closed connection")
        assert all(served(s) for s in held)  # the others were never disturbed
    finally:
        for s in held:
            s.close()


def test_requests_per_source_pod_top_n_plus_other(start_meshd, nginx):
    """meshd_source_requests_total: the busiest source pods by address (node.sourceMetrics of them),
    every other request under source="other"; the series add up to the requests sent."""
    pods = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
    node = start_meshd({
        "mode": "node", "nodeIP": NODE_IP, "threads": 2,
        "outbound": {"listen": f"{NODE_IP}:0"}, "inbound": {"listen": f"{NODE_IP}:0"}, "admin": {"listen": "127.0.0.1:0"},
        "node": {"podCIDRs": ["127.0.0.1/32"], "allowedSources": ["127.0.0.0/24"], "sourceMetrics": 2},
        "services": [{"name": "web", "endpoints": [nginx.addr("web")]}],
        "routes": [{"match": {"authority": "web"}, "service": "web"}],
    }, name="node-sources")
    sent = {"127.0.0.21": 30, "127.0.0.22": 20, "127.0.0.23": 5}
    for pod, n in sent.items():
        for _ in range(n):
            s = socket.create_connection(node.outbound, timeout=5, source_address=(pod, 0))
            s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
            assert s.recv(64).startswith(b"HTTP/1.1 200")
            s.close()
    time.sleep(0.2)
    text = node.metrics_text()
    got = {p: metric_value(text, "meshd_source_requests_total", source=p) for p in pods + ["other"]}
    # The first scrape labels the two busiest (their counts start there); the next requests count.
    assert got["127.0.0.21"] == 0 and got["127.0.0.22"] == 0 and got["127.0.0.23"] is None, got
    assert got["other"] == 55, got
    for pod in pods:
        s = socket.create_connection(node.outbound, timeout=5, source_address=(pod, 0))
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 200")
        s.close()
    time.sleep(0.2)
    text = node.metrics_text()
    got = {p: metric_value(text, "meshd_source_requests_total", source=p) for p in pods + ["other"]}
    assert got == {"127.0.0.21": 1, "127.0.0.22": 1, "127.0.0.23": None, "other": 56}, got
