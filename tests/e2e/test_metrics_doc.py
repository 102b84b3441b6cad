"""docs/metrics.md cannot fall behind the code.

- Statically: every metric name in meshd's sources (Sources/MeshProxy, Sources/MeshCore) has a row
  in one of docs/metrics.md's tables, and every row names a metric the sources still have.
- End to end: two meshd sidecars with most features on (services with static endpoints and with
  file discovery, named and unnamed routes, an opaque TCP service, mTLS with SPIFFE identities and
  an authorization policy, the access log, a reload) get traffic (HTTP through mTLS, a 404 no-route,
  opaque TCP, a plaintext connection refused by a strict inbound); every metric family in their
  `/metrics` — and every label of it — must be in docs/metrics.md's row of that family.
"""

from __future__ import annotations

import re
import subprocess

import pytest

import meshlib
from meshlib import base_config, free_port, http_request, parse_metrics, raw_exchange, run

DOC = meshlib.REPO / "docs" / "metrics.md"
SOURCES = [meshlib.REPO / "Sources" / "MeshProxy", meshlib.REPO / "Sources" / "MeshCore"]
NAME_RE = re.compile(r"\b((?:meshd|process)_[a-z0-9_]*[a-z0-9])\b")
HIST_SUFFIX = re.compile(r"_(bucket|sum|count)$")

TD = "cluster.local"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"


def doc_rows() -> dict[str, str]:
    """Each table row of docs/metrics.md whose first cell is a metric name: name → the whole row."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-zA-Z_:][a-zA-Z0-9_:]*)` \|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} has two rows in {DOC}"
            rows[m.group(1)] = line
    return rows


def source_names() -> set[str]:
    names = set()
    for root in SOURCES:
        for f in root.rglob("*.swift"):
            names.update(NAME_RE.findall(f.read_text(errors="replace")))
    return names


def families(text: str) -> dict[str, set[str]]:
    """Metric families in an exposition → the label names seen on their samples (histogram and
    summary series are folded into their family)."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    out: dict[str, set[str]] = {name: set() for name in types}
    for name, labels, _ in parse_metrics(text):
        base = HIST_SUFFIX.sub("", name)
        family = base if base != name and types.get(base) in ("histogram", "summary") else name
        out.setdefault(family, set()).update(labels)
    return out


def test_every_metric_in_the_sources_is_documented():
    rows = doc_rows()
    assert len(rows) >= 40, f"expected the metric tables in {DOC}, found {sorted(rows)}"
    names = source_names()
    undocumented = sorted(n for n in names
                          if n not in rows and not (HIST_SUFFIX.search(n) and HIST_SUFFIX.sub("", n) in rows))
    assert not undocumented, f"metrics named in Sources/ but missing from {DOC}: {undocumented}"
    gone = sorted(n for n in rows if n not in names)
    assert not gone, f"{DOC} documents metrics that Sources/ no longer has: {gone}"


# --------------------------------------------------------------------------------------------
# A mesh that exercises most metrics


def _check(args, timeout=30.0) -> subprocess.CompletedProcess:
    r = run([str(a) for a in args], timeout=timeout)
    assert r.returncode == 0, f"{args!r} → {r.returncode}\nstdout={r.stdout.decode()}\nstderr={r.stderr.decode()}"
    return r


@pytest.fixture(scope="module")
def pki(tmp_path_factory, meshctl):
    d = tmp_path_factory.mktemp("pki")
    _check([meshctl, "identity", "init", "--trust-domain", TD, "--out", d / "ca"])
    out = {}
    for name, sid in (("web", WEB), ("api", API)):
        _check([meshctl, "identity", "issue", "--ca", d / "ca", "--spiffe-id", sid, "--out", d / name])
        out[name] = {"trustBundle": str(d / name / "ca.crt"), "cert": str(d / name / "tls.crt"),
                     "key": str(d / name / "tls.key")}
    return out


@pytest.fixture(scope="module")
def expositions(start_meshd_module, backend, nginx, pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("metrics-doc")
    api = start_meshd_module(base_config(
        drainTimeout="1s",
        accessLog=True,
        inbound={"listen": "127.0.0.1:0", "app": backend.addr, "appProtocol": "http1", "tls": "strict"},
        identity=pki["api"],
        authorization={"defaultPolicy": "deny", "rules": [{"from": [WEB]}]},
    ), name="doc-api")
    eps = d / "py-endpoints.yaml"
    eps.write_text(meshlib.to_yaml([backend.addr]))
    tcp_port = free_port()
    web = start_meshd_module(base_config(
        drainTimeout="1s",
        threads=2,
        accessLog=True,
        identity=pki["web"],
        services=[
            {"name": "api", "endpoints": [f"{api.inbound[0]}:{api.inbound[1]}"], "tls": {"identity": API}},
            {"name": "py", "discovery": {"file": str(eps), "refresh": "200ms"}},
            {"name": "web", "endpoints": [nginx.addr("web")]},
            {"name": "tcpweb", "protocol": "tcp", "listen": f"127.0.0.1:{tcp_port}", "endpoints": [nginx.addr("web")]},
        ],
        routes=[
            {"name": "api-route", "match": {"authority": "api"}, "service": "api",
             "retry": {"retryOn": ["connect-failure", "5xx"], "attempts": 2}},
            {"name": "py-route", "match": {"authority": "py"}, "service": "py", "rateLimit": {"requestsPerSecond": 1000}},
            {"match": {"authority": "web"}, "backends": [{"service": "web", "weight": 1}, {"service": "py", "weight": 1}]},
        ],
    ), name="doc-web")
    meshlib.wait_for(lambda: (web.metric("meshd_discovery_updates_total", service="py", result="ok") or 0) >= 1, 10,
                     what="the discovery file applied")
    for host, path in (("api", "/headers"), ("py", "/"), ("web", "/"), ("web", "/"), ("web", "/")):
        status, _, body = http_request(web.outbound, "GET", path, headers={"Host": host})
        assert status == 200, (host, status, body)
    assert http_request(web.outbound, "GET", "/", headers={"Host": "nowhere"})[0] == 404
    # opaque TCP through the tcp service's listener
    got, _, _ = raw_exchange(("127.0.0.1", tcp_port), b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200"), got[:200]
    # plaintext on the strict inbound: refused (meshd_tls_handshake_errors_total{reason="plaintext"})
    raw_exchange(api.inbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
    status, _, body = web.admin_request("POST", "/reload")
    assert status == 200, body
    meshlib.wait_for(lambda: (web.metric("meshd_tcp_bytes_total", target="tcpweb") or 0) > 0
                     and (api.metric("meshd_tls_handshake_errors_total") or 0) > 0, 10,
                     what="the TCP and TLS-error counters")
    return {"web": web.metrics_text(), "api": api.metrics_text()}


def test_every_exported_metric_and_label_is_documented(expositions):
    rows = doc_rows()
    seen: dict[str, set[str]] = {}
    for text in expositions.values():
        for family, labels in families(text).items():
            seen.setdefault(family, set()).update(labels)
    # the mesh must really have exercised the features (a sanity check of the fixture, not of the doc)
    for want in ("meshd_requests_total", "meshd_tls_handshakes_total",
                 "meshd_tls_handshake_errors_total", "meshd_authorization_total", "meshd_identity_expiry_timestamp_seconds",
                 "meshd_discovery_updates_total", "meshd_tcp_connections_total", "meshd_tcp_bytes_total",
                 "meshd_protocol_detected_total", "meshd_access_log_dropped_total", "process_open_fds"):
        assert want in seen, f"{want} not exported by the test mesh: {sorted(seen)}"
    missing = sorted(f for f in seen if f not in rows)
    assert not missing, f"metric families in /metrics but not in {DOC}: {missing}"
    bad_labels = {f: sorted(ls - set(re.findall(r"`([a-z_]+)`", rows[f]))) for f, ls in seen.items()}
    bad_labels = {f: ls for f, ls in bad_labels.items() if ls}
    assert not bad_labels, f"labels in /metrics missing from their family's row in {DOC}: {bad_labels}"
    print(f"\n{len(seen)} metric families exported by the test mesh, all documented; documented but not "
          f"exercised here: {sorted(set(rows) - set(seen))}")


def test_rich_exposition_passes_promtool(expositions):
    """`promtool check metrics` on the same expositions (mTLS, TCP, discovery, routes …)."""
    import shutil

    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (scripts/install-test-deps.sh installs the Debian package `prometheus`)")
    for name, text in expositions.items():
        rc, lines = meshlib.promtool_check_metrics(text, promtool)
        assert rc in (0, 3), f"promtool could not parse meshd {name}'s exposition: {lines}"
    for text in expositions.values():
        meshlib.assert_promtool_clean(text, promtool)
