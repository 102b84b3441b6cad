"""Load balancing: weighted route split and round robin (with endpoint weights)."""

import http.client
from collections import Counter

import pytest

from meshlib import base_config


@pytest.fixture(scope="module")
def mesh(start_meshd_module, nginx):
    cfg = base_config(
        threads=1,
        services=[
            {"name": "a", "endpoints": [nginx.addr("a")]},
            {"name": "b", "endpoints": [nginx.addr("b")]},
            {"name": "rr", "endpoints": [nginx.addr("e1"), nginx.addr("e2"), nginx.addr("e3")]},
            {"name": "wrr", "endpoints": [nginx.addr("e1"), {"address": nginx.addr("e2"), "weight": 2}]},
        ],
        routes=[
            {"match": {"authority": "split"}, "backends": [{"service": "a", "weight": 80}, {"service": "b", "weight": 20}]},
            {"match": {"authority": "rr"}, "service": "rr"},
            {"match": {"authority": "wrr"}, "service": "wrr"},
        ],
    )
    return start_meshd_module(cfg, name="balancing")


def bodies(mesh, host: str, n: int) -> Counter:
    """n GETs on one keep-alive connection; counts the response bodies."""
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    c = Counter()
    try:
        for i in range(n):
            conn.request("GET", f"/{i}", headers={"Host": host})
            r = conn.getresponse()
            body = r.read().decode().strip()
            assert r.status == 200, (r.status, body)
            c[body] += 1
    finally:
        conn.close()
    return c


def test_weighted_split_80_20(mesh):
    c = bodies(mesh, "split", 1000)
    assert set(c) == {"a", "b"}, c
    share = c["a"] / 1000
    assert 0.75 <= share <= 0.85, f"share of a = {share:.3f} ({c})"


def test_round_robin_exact(mesh):
    c = bodies(mesh, "rr", 300)
    assert c == Counter({"e1": 100, "e2": 100, "e3": 100}), c
    svc = {s["name"]: s for s in mesh.admin_json("/services")["services"]}["rr"]
    reqs = {e["address"]: e["requests"] for e in svc["endpoints"]}
    assert sorted(reqs.values()) == [100, 100, 100], svc


def test_round_robin_over_several_connections(mesh):
    total = Counter()
    for _ in range(3):
        total += bodies(mesh, "rr", 30)
    assert total == Counter({"e1": 30, "e2": 30, "e3": 30}), total


def test_endpoint_weights_honoured(mesh):
    c = bodies(mesh, "wrr", 300)
    assert c == Counter({"e1": 100, "e2": 200}), c
