"""Route matching: authority (port ignored), pathPrefix, method, headers; first match wins."""

import pytest

from meshlib import base_config, curl, http_request


@pytest.fixture(scope="module")
def mesh(start_meshd_module, nginx):
    svc = lambda n: {"name": n, "endpoints": [nginx.addr(n)]}  # noqa: E731
    cfg = base_config(
        services=[svc("a"), svc("b"), svc("e1"), svc("e2"), svc("e3")],
        routes=[
            {"match": {"authority": "shop", "headers": {"x-canary": "1"}}, "service": "a"},
            {"match": {"authority": "shop", "pathPrefix": "/api"}, "service": "b"},
            {"match": {"authority": "shop", "method": "POST"}, "service": "e1"},
            {"match": {"authority": "shop"}, "service": "e2"},
            {"match": {"authority": "*.wild.test"}, "service": "e3"},
        ],
    )
    return start_meshd_module(cfg, name="routing")


def body(mesh, method, path, host, headers=None):
    h = {"Host": host, **(headers or {})}
    status, rh, data = http_request(mesh.outbound, method, path, headers=h, body=b"" if method == "POST" else None)
    return status, data.decode().strip(), rh


@pytest.mark.parametrize("method,path,headers,want", [
    ("GET", "/", {}, "e2"),
    ("GET", "/", {"x-canary": "1"}, "a"),
    ("GET", "/", {"x-canary": "0"}, "e2"),
    ("GET", "/api/items", {}, "b"),
    ("GET", "/api/items", {"x-canary": "1"}, "a"),  # first matching route wins
    ("POST", "/", {}, "e1"),
    ("POST", "/api", {}, "b"),  # pathPrefix route comes before the method route
    ("DELETE", "/other", {}, "e2"),
])
def test_match_keys_and_order(mesh, method, path, headers, want):
    status, got, _ = body(mesh, method, path, "shop", headers)
    assert (status, got) == (200, want)


def test_authority_port_ignored_and_case_insensitive(mesh):
    assert body(mesh, "GET", "/", "shop:8443")[:2] == (200, "e2")
    assert body(mesh, "GET", "/", "SHOP")[:2] == (200, "e2")
    r = curl("-x", mesh.out_url, "http://shop:9999/api/x")
    assert r.stdout.decode() == "b\n"


def test_wildcard_authority(mesh):
    assert body(mesh, "GET", "/", "api.wild.test")[:2] == (200, "e3")
    status, _, h = body(mesh, "GET", "/", "wild.test.evil")
    assert status == 404 and h.get("x-meshd-error") == "no-route"


def test_absolute_form_wins_over_host_header(mesh):
    # an absolute-form request target names the authority; Host is then ignored (RFC 9112 §3.2.2)
    r = curl("-x", mesh.out_url, "-H", "Host: nowhere", "http://shop/api/x")
    assert r.stdout.decode() == "b\n", (r.stdout, r.stderr)


def test_missing_host_is_400(mesh):
    from meshlib import parse_response_head, raw_exchange

    got, closed, _ = raw_exchange(mesh.outbound, b"GET / HTTP/1.0\r\n\r\n", timeout=5)
    status, h = parse_response_head(got)
    assert status == 400
    assert h.get("x-meshd-error") == "bad-request"


@pytest.fixture(scope="module")
def many(start_meshd_module, nginx):
    """A node proxy's shape: a route per service of the cluster (400), wildcards among them, a
    catch-all last."""
    services = [{"name": n, "endpoints": [nginx.addr(n)]} for n in ("a", "b", "e1", "e2", "e3")]
    routes = []
    for i in range(400):
        routes.append({"name": f"svc-{i}", "match": {"authority": f"svc-{i}.ns.svc.cluster.local"},
                       "service": ("a", "b")[i % 2]})
        if i == 200:
            routes.append({"name": "wild-ns", "match": {"authority": "*.ns.svc.cluster.local"}, "service": "e1"})
    routes.insert(100, {"name": "svc-300-posts", "match": {"authority": "svc-300.ns.svc.cluster.local",
                                                             "method": "POST"}, "service": "e3"})
    routes.append({"name": "rest", "match": {}, "service": "e2"})
    return start_meshd_module(base_config(services=services, routes=routes), name="routing-many")


@pytest.mark.parametrize("method,host,want", [
    ("GET", "svc-0.ns.svc.cluster.local", "a"),
    ("GET", "SVC-199.NS.svc.cluster.local:8080", "b"),
    ("GET", "svc-399.ns.svc.cluster.local", "wild-ns"),  # after the wildcard: the wildcard wins
    ("GET", "svc-300.ns.svc.cluster.local", "wild-ns"),  # the wildcard comes before svc-300's route
    ("POST", "svc-300.ns.svc.cluster.local", "svc-300-posts"),  # a method route earlier still
    ("GET", "svc-150.ns.svc.cluster.local", "a"),
    ("GET", "new.ns.svc.cluster.local", "wild-ns"),
    ("GET", "ns.svc.cluster.local", "rest"),
    ("GET", "elsewhere", "rest"),
])
def test_hundreds_of_routes_first_match_wins(many, method, host, want):
    want = {"wild-ns": "e1", "svc-300-posts": "e3", "rest": "e2"}.get(want, want)
    assert body(many, method, "/", host)[:2] == (200, want)
