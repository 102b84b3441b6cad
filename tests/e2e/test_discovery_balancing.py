"""Endpoint discovery (watched file, DNS) and the six balancers, end to end.

Real peers only: Python backends (one made 20 ms slower with --delay-ms), nginx, wrk, curl, meshctl,
and a dnsmasq inside a network namespace of the test's own for DNS discovery. Every test asserts
numbers: request shares per backend (counted by the backends themselves or by the nginx body that
names the server), key placement, discovery metrics, /services states.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from meshlib import (Backend, NetNS, NetNSUnavailable, base_config, http_request, kill_group, meshctl_bin,
                     meshd_bin, popen, run, to_yaml, wait_for)


# --------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """Python backends by name, started on first use and shared by the module's tests (each test
    works with counter deltas). `backends("slow", delay_ms=20)` delays every answer by 20 ms."""
    logdir = tmp_path_factory.mktemp("pybackends")
    made: dict[str, Backend] = {}

    def get(name: str, delay_ms: int = 0) -> Backend:
        if name not in made:
            made[name] = Backend(name, logdir=logdir, delay_ms=delay_ms)
        return made[name]

    yield get
    for b in made.values():
        b.stop()


def route(host: str, service: str | None = None) -> dict:
    return {"match": {"authority": host}, "service": service or host}


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{time.monotonic_ns()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class ConfigMapDir:
    """A directory laid out as the kubelet lays out a ConfigMap volume:
    dir/..<timestamp>/eps.yaml, dir/..data -> ..<timestamp>, dir/eps.yaml -> ..data/eps.yaml.
    `publish` writes a new timestamped directory and swaps ..data atomically (ln -sfn + mv -T), then
    removes the previous directory."""

    def __init__(self, root: Path, filename: str = "eps.yaml"):
        self.root = root
        self.filename = filename
        root.mkdir()
        self.n = 0
        self.current: Path | None = None

    @property
    def path(self) -> Path:
        return self.root / self.filename

    def _sh(self, *args):
        r = run(list(args), timeout=10)
        assert r.returncode == 0, f"{args!r}: {r.stderr.decode()}"

    def publish(self, text: str) -> None:
        self.n += 1
        ts = f"..2026_01_01_00_00_{self.n:02d}.{self.n:09d}"
        d = self.root / ts
        d.mkdir()
        (d / self.filename).write_text(text)
        if self.current is None:
            self._sh("ln", "-s", ts, str(self.root / "..data"))
            self._sh("ln", "-s", f"..data/{self.filename}", str(self.path))
        else:
            self._sh("ln", "-sfn", ts, str(self.root / "..data_tmp"))
            self._sh("mv", "-T", str(self.root / "..data_tmp"), str(self.root / "..data"))
            (self.current / self.filename).unlink()
            self.current.rmdir()
        self.current = d


def fetch(conn: http.client.HTTPConnection, host: str, headers: dict | None = None, path: str = "/") -> tuple[int, str]:
    """One GET on `conn` → (status, body stripped): the body names the backend (nginx and backend.py)."""
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    r = conn.getresponse()
    return r.status, r.read().decode(errors="replace").strip()


def load(mesh, host: str, n: int, conns: int = 8) -> Counter:
    """n GETs over `conns` concurrent keep-alive connections; every answer must be 200. Counts bodies."""
    total = Counter()
    lock = threading.Lock()
    errors: list = []
    shares = [n // conns + (1 if i < n % conns else 0) for i in range(conns)]

    def worker(k: int):
        c = Counter()
        conn = http.client.HTTPConnection(*mesh.outbound, timeout=10)
        try:
            for _ in range(k):
                status, body = fetch(conn, host)
                if status != 200:
                    errors.append((status, body))
                    return
                c[body] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        finally:
            conn.close()
            with lock:
                total.update(c)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, f"{len(errors)} failed requests to {host}, first: {errors[:3]}"
    assert sum(total.values()) == n, total
    return total


def services(mesh) -> dict:
    return {s["name"]: s for s in mesh.admin_json("/services")["services"]}


def endpoints(mesh, name: str) -> dict:
    """address → endpoint object of service `name` in /services."""
    return {e["address"]: e for e in services(mesh)[name]["endpoints"]}


def discovery_count(mesh, service: str, result: str) -> float:
    return mesh.metric("meshd_discovery_updates_total", service=service, result=result) or 0.0


def logged(mesh, msg: str, service: str) -> list[dict]:
    return [r for r in mesh.log_lines() if r.get("msg") == msg and r.get("service") == service]


def wrk_async(mesh, host: str, seconds: int, conns: int = 8) -> subprocess.Popen:
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-H", f"Host: {host}", mesh.out_url + "/"]
    return popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wrk_finish(p: subprocess.Popen, timeout: float = 30) -> tuple[str, int]:
    """Waits for wrk; asserts exit 0, no non-2xx responses, no socket errors; → (output, requests)."""
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise AssertionError(f"wrk did not finish in {timeout}s")
    out = out.decode()
    assert p.returncode == 0, err.decode()
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    return out, int(m.group(1))


# --------------------------------------------------------------------------------------------
# 1. EWMA against round robin, with one backend 20 ms slower


@pytest.mark.parametrize("balancer, low, high", [("ewma", 0.0, 0.10), ("round_robin", 0.28, 0.39)])
def test_slow_backend_share_ewma_vs_round_robin(start_meshd, backends, balancer, low, high):
    fast1, fast2, slow = backends("fast1"), backends("fast2"), backends("slow20", delay_ms=20)
    trio = [fast1, fast2, slow]
    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "web", "endpoints": [b.addr for b in trio], "balancer": balancer}],
        routes=[route("web")],
    ))
    before = {b.name: b.count() for b in trio}
    out, sent = wrk_finish(wrk_async(mesh, "web", 5))
    time.sleep(0.3)  # the last forwarded requests reach their backend
    got = {b.name: b.count() - before[b.name] for b in trio}
    total = sum(got.values())
    assert sent >= 500, f"only {sent} requests in 5 s:\n{out}"
    assert abs(total - sent) <= 16, f"backends counted {got} (sum {total}), wrk sent {sent}"
    share = got["slow20"] / total
    print(f"{balancer}: {got} slow share {share:.3f}; /services: {endpoints(mesh, 'web')}")
    assert low <= share < high, f"{balancer}: slow backend got {share:.3f} of {total} requests ({got})"

    # meshd's own per-endpoint counters agree with the backends'
    eps = endpoints(mesh, "web")
    by_name = {b.name: eps[b.addr] for b in trio}
    for name, e in by_name.items():
        assert abs(e["requests"] - got[name]) <= 8, (name, e, got)
        assert e["state"] == "healthy", e
        assert isinstance(e["latencyEwmaMs"], (int, float)), e
    if balancer == "ewma":
        slow_ms = by_name["slow20"]["latencyEwmaMs"]
        assert slow_ms >= 15, f"slow endpoint's EWMA {slow_ms} ms, expected about 20 ms or more ({by_name})"
        assert slow_ms > max(by_name["fast1"]["latencyEwmaMs"], by_name["fast2"]["latencyEwmaMs"]), by_name


# --------------------------------------------------------------------------------------------
# 2. least_request and random: even spread; weights honoured


@pytest.fixture(scope="module")
def spread_mesh(start_meshd_module, nginx):
    three = [nginx.addr("e1"), nginx.addr("e2"), nginx.addr("e3")]
    cfg = base_config(
        threads=1,
        services=[
            {"name": "lr", "endpoints": three, "balancer": "least_request"},
            {"name": "rnd", "endpoints": three, "balancer": {"algorithm": "random"}},
            {"name": "wrnd", "endpoints": [nginx.addr("e1"), {"address": nginx.addr("e2"), "weight": 3}],
             "balancer": "random"},
        ],
        routes=[route("lr"), route("rnd"), route("wrnd")],
    )
    return start_meshd_module(cfg, name="spread")


@pytest.mark.parametrize("service", ["lr", "rnd"])
def test_equal_backends_share_evenly(spread_mesh, service):
    n = 3000
    c = load(spread_mesh, service, n, conns=8)
    assert set(c) == {"e1", "e2", "e3"}, c
    shares = {k: v / n for k, v in c.items()}
    assert all(0.25 <= s <= 0.42 for s in shares.values()), f"{service}: {shares} ({c})"
    svc = services(spread_mesh)[service]
    assert svc["balancer"] == {"lr": "least_request", "rnd": "random"}[service], svc
    assert sum(e["requests"] for e in svc["endpoints"]) >= n, svc


def test_random_honours_weights(spread_mesh):
    n = 3000
    c = load(spread_mesh, "wrnd", n, conns=8)
    assert set(c) <= {"e1", "e2"}, c
    heavy = c["e2"] / n
    assert 0.70 <= heavy <= 0.80, f"weight-3 endpoint got {heavy:.3f} ({c})"
    weights = {e["address"]: e["weight"] for e in services(spread_mesh)["wrnd"]["endpoints"]}
    assert sorted(weights.values()) == [1, 3], weights


# --------------------------------------------------------------------------------------------
# 3. ring_hash and maglev: affinity, spread, minimal disruption; cookie keys


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
def test_hash_affinity_spread_and_minimal_disruption(start_meshd, nginx, tmp_path, algorithm):
    names = ["e1", "e2", "e3", "a"]
    addr = {n: nginx.addr(n) for n in names}
    eps_file = tmp_path / "hash-eps.yaml"
    write_atomic(eps_file, to_yaml({"endpoints": [addr[n] for n in names]}))
    mesh = start_meshd(base_config(
        threads=1,
        services=[
            {"name": "h", "endpoints": [addr[n] for n in names],
             "discovery": {"file": str(eps_file), "refresh": "200ms"},
             "balancer": {"algorithm": algorithm, "hashKey": {"header": "x-user"}}},
        ],
        routes=[route("h")],
    ))
    wait_for(lambda: discovery_count(mesh, "h", "ok") >= 1, 5, what="first discovery read")
    assert services(mesh)["h"]["balancer"] == algorithm

    keys = [f"user-{i}" for i in range(200)]
    seen: dict[str, Counter] = {k: Counter() for k in keys}
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    try:
        for _ in range(3):
            for k in keys:
                status, body = fetch(conn, "h", {"x-user": k})
                assert status == 200, (k, status, body)
                seen[k][body] += 1
    finally:
        conn.close()
    moved = {k: dict(c) for k, c in seen.items() if len(c) != 1}
    assert not moved, f"{len(moved)} keys were sent to more than one backend: {dict(list(moved.items())[:5])}"
    first = {k: next(iter(c)) for k, c in seen.items()}
    per_backend = Counter(first.values())
    assert set(per_backend) == set(names), per_backend
    assert min(per_backend.values()) >= 20, f"each backend should own >= 10% of 200 keys: {per_backend}"

    # drop one backend from the discovery file: only its keys may move
    removed = "a"
    write_atomic(eps_file, to_yaml({"endpoints": [addr[n] for n in names if n != removed]}))
    wait_for(lambda: set(endpoints(mesh, "h")) == {addr[n] for n in names if n != removed}, 5,
             what="discovery update without the removed backend")
    time.sleep(0.2)  # the event loop has installed the new set
    after: dict[str, str] = {}
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    try:
        for k in keys:
            status, body = fetch(conn, "h", {"x-user": k})
            assert status == 200, (k, status, body)
            after[k] = body
    finally:
        conn.close()
    orphans = [k for k in keys if first[k] == removed]
    others = [k for k in keys if first[k] != removed]
    assert all(after[k] in names and after[k] != removed for k in orphans), {k: after[k] for k in orphans}
    kept = sum(after[k] == first[k] for k in others)
    changed = {k: (first[k], after[k]) for k in others if after[k] != first[k]}
    assert kept / len(others) >= 0.95, (
        f"{algorithm}: only {kept}/{len(others)} keys of the remaining backends kept their backend after "
        f"removing {removed} ({len(changed)} moved, e.g. {dict(list(changed.items())[:8])}; "
        f"per backend before {dict(per_backend)}, after {dict(Counter(after.values()))})")


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
def test_hash_on_cookie(start_meshd, nginx, algorithm):
    names = ["e1", "e2", "e3", "a"]
    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "c", "endpoints": [nginx.addr(n) for n in names],
                   "balancer": {"algorithm": algorithm, "hashKey": {"cookie": "session"}}}],
        routes=[route("c")],
    ))
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    try:
        same = Counter(fetch(conn, "c", {"Cookie": "session=abc"})[1] for _ in range(20))
        assert len(same) == 1 and sum(same.values()) == 20 and set(same) <= set(names), same
        owner = next(iter(same))
        # the same session among other cookies, in either order
        for cookie in ("theme=dark; session=abc", "session=abc; theme=light", "a=1;session=abc"):
            assert fetch(conn, "c", {"Cookie": cookie}) == (200, owner), cookie
        # distinct sessions spread over every backend, each one sticky
        placement = {}
        for i in range(100):
            s = f"s{i:03d}"
            placement[s] = fetch(conn, "c", {"Cookie": f"session={s}"})[1]
        assert set(placement.values()) == set(names), Counter(placement.values())
        again = {s: fetch(conn, "c", {"Cookie": f"session={s}"})[1] for s in list(placement)[:30]}
        assert all(again[s] == placement[s] for s in again), {s: (placement[s], again[s]) for s in again}
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# 4. ConfigMap-style swap of the endpoints file under load


def test_endpoint_removed_under_load_then_added(start_meshd, backends, tmp_path):
    d1, d2, d3, d4 = (backends(n) for n in ("d1", "d2", "d3", "d4"))
    cm = ConfigMapDir(tmp_path / "endpoints")
    cm.publish(to_yaml({"endpoints": [d1.addr, d2.addr, d3.addr]}))
    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "web", "discovery": {"file": str(cm.path), "refresh": "200ms"}}],
        routes=[route("web")],
    ))
    wait_for(lambda: set(endpoints(mesh, "web")) == {d1.addr, d2.addr, d3.addr}, 5, what="initial endpoints")
    base = {b.name: b.count() for b in (d1, d2, d3, d4)}

    p = wrk_async(mesh, "web", 6)
    try:
        time.sleep(2.0)
        t_swap = time.monotonic()
        cm.publish(to_yaml([d1.addr, d2.addr]))  # bare-list form
        wait_for(lambda: d3.addr not in endpoints(mesh, "web"), 3, interval=0.05, what="d3 leaving /services")
        applied_after = time.monotonic() - t_swap
        time.sleep(0.3)  # requests already sent to d3 finish
        d3_at_removal = d3.count()
        d12_at_removal = d1.count() + d2.count()
    finally:
        out, sent = wrk_finish(p)
    assert sent > 500, out
    time.sleep(0.2)
    assert d3_at_removal - base["d3"] > 50, f"d3 served only {d3_at_removal - base['d3']} requests before removal"
    assert d3.count() == d3_at_removal, (
        f"d3 got {d3.count() - d3_at_removal} requests after it left the file (removal seen after {applied_after:.2f}s)")
    assert d1.count() + d2.count() - d12_at_removal > 200, "the remaining backends kept serving the load"
    assert set(endpoints(mesh, "web")) == {d1.addr, d2.addr}
    assert d4.count() == base["d4"]

    # after the run: new requests go to d1 and d2 only
    c = load(mesh, "web", 60, conns=2)
    assert set(c) == {"d1", "d2"}, c
    assert d3.count() == d3_at_removal

    # adding an endpoint applies within 1 s
    ok0 = discovery_count(mesh, "web", "ok")
    t0 = time.monotonic()
    cm.publish(to_yaml({"endpoints": [d1.addr, d2.addr, {"address": d4.addr, "weight": 2}]}))
    conn = http.client.HTTPConnection(*mesh.outbound, timeout=5)
    try:
        while True:
            status, body = fetch(conn, "web")
            assert status == 200, (status, body)
            if body == "d4":
                break
            assert time.monotonic() - t0 < 1.0, "the added endpoint d4 got no request within 1 s"
            time.sleep(0.01)
    finally:
        conn.close()
    took = time.monotonic() - t0
    assert took < 1.0, took
    eps = endpoints(mesh, "web")
    assert set(eps) == {d1.addr, d2.addr, d4.addr} and eps[d4.addr]["weight"] == 2, eps
    assert discovery_count(mesh, "web", "ok") >= ok0 + 1
    assert logged(mesh, "discovery updated endpoints", "web"), mesh.stderr_text()[-2000:]


# --------------------------------------------------------------------------------------------
# 5. invalid and empty files; allowEmpty


def test_invalid_and_empty_files_keep_last_good_set(start_meshd, nginx, tmp_path):
    f = tmp_path / "eps.yaml"
    write_atomic(f, to_yaml({"endpoints": [nginx.addr("e1"), nginx.addr("e2")]}))
    mesh = start_meshd(base_config(
        services=[{"name": "web", "discovery": {"file": str(f), "refresh": "200ms", "allowEmpty": False}}],
        routes=[route("web")],
    ))
    good = {nginx.addr("e1"), nginx.addr("e2")}
    wait_for(lambda: set(endpoints(mesh, "web")) == good, 5, what="initial endpoints from the file")

    def still_serving():
        c = load(mesh, "web", 20, conns=1)
        assert set(c) == {"e1", "e2"}, c
        assert set(endpoints(mesh, "web")) == good

    still_serving()
    for text in ("endpoints: [ \"127.0.0.1:notaport\" ]\n", "endpoints: [ {address: \n"):
        failed0 = discovery_count(mesh, "web", "failed")
        write_atomic(f, text)
        wait_for(lambda: discovery_count(mesh, "web", "failed") > failed0, 3, what=f"failed update for {text!r}")
        still_serving()
    assert logged(mesh, "discovery file invalid; keeping the last good endpoints", "web"), mesh.stderr_text()[-2000:]

    for text in ("endpoints: []\n", "[]\n"):
        empty0 = discovery_count(mesh, "web", "empty_ignored")
        write_atomic(f, text)
        wait_for(lambda: discovery_count(mesh, "web", "empty_ignored") > empty0, 3, what=f"empty_ignored for {text!r}")
        still_serving()
    assert logged(mesh, "discovery returned no endpoints; keeping the last good set (allowEmpty: false)", "web"), \
        mesh.stderr_text()[-2000:]

    # and a good file (bare list) applies again
    ok0 = discovery_count(mesh, "web", "ok")
    write_atomic(f, f"- \"{nginx.addr('e3')}\"\n")
    wait_for(lambda: set(endpoints(mesh, "web")) == {nginx.addr("e3")}, 3, what="e3 only")
    assert discovery_count(mesh, "web", "ok") == ok0 + 1
    time.sleep(0.1)
    assert set(load(mesh, "web", 10, conns=1)) == {"e3"}


def test_allow_empty_makes_the_service_answer_503(start_meshd, nginx, tmp_path):
    f = tmp_path / "eps.yaml"
    write_atomic(f, to_yaml({"endpoints": [nginx.addr("e1")]}))
    mesh = start_meshd(base_config(
        services=[{"name": "web", "discovery": {"file": str(f), "refresh": "200ms", "allowEmpty": True}}],
        routes=[route("web")],
    ))
    wait_for(lambda: set(endpoints(mesh, "web")) == {nginx.addr("e1")}, 5, what="initial endpoint")
    assert http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})[::2] == (200, b"e1\n")
    ok0 = discovery_count(mesh, "web", "ok")
    write_atomic(f, "endpoints: []\n")
    wait_for(lambda: endpoints(mesh, "web") == {}, 3, what="empty endpoint set applied")
    time.sleep(0.1)
    status, headers, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})
    assert status == 503 and headers.get("x-meshd-error") == "no-endpoints", (status, headers, body)
    assert discovery_count(mesh, "web", "ok") == ok0 + 1
    assert discovery_count(mesh, "web", "empty_ignored") == 0
    # and back
    write_atomic(f, to_yaml({"endpoints": [nginx.addr("e2")]}))
    wait_for(lambda: set(endpoints(mesh, "web")) == {nginx.addr("e2")}, 3, what="endpoint back")
    time.sleep(0.1)
    assert http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})[::2] == (200, b"e2\n")


# --------------------------------------------------------------------------------------------
# 6. DNS discovery against dnsmasq, inside a network namespace


class DnsWorld:
    """A network namespace with dnsmasq on 127.0.0.1:53 answering from an addn-hosts file, and the
    namespace's resolv.conf pointing at it."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.ns = NetNS("dns")
        self.procs: list[subprocess.Popen] = []
        self.ns.write_etc("resolv.conf", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.hosts = workdir / "dns.hosts"
        self.dnsmasq: subprocess.Popen | None = None

    def set_records(self, name: str, ips: list[str]) -> None:
        write_atomic(self.hosts, "".join(f"{ip} {name}\n" for ip in ips))

    def start_dnsmasq(self) -> None:
        if not (shutil.which("dnsmasq") or os.access("/usr/sbin/dnsmasq", os.X_OK)):
            pytest.fail("dnsmasq is not installed (scripts/install-test-deps.sh installs it)", pytrace=False)
        cmd = self.ns.prefix + [
            "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--port=53",
            "--listen-address=127.0.0.1", "--bind-interfaces", f"--addn-hosts={self.hosts}", "--user=root",
            "--pid-file=", "--local-ttl=0", "--log-facility=-", "--log-queries",
        ]
        self.dnsmasq = popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.dir / "dnsmasq.log", "ab"))
        self.procs.append(self.dnsmasq)

    def resolve(self, name: str) -> set[str]:
        """getaddrinfo(name, AF_UNSPEC, no flags) in the namespace, as meshd resolves. (Not `getent
        ahosts`: its AI_ADDRCONFIG finds no non-loopback address in the namespace and skips DNS.)"""
        code = ("import socket, sys\n"
                "try:\n"
                "    print(' '.join(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], None, 0, socket.SOCK_STREAM)})))\n"
                "except socket.gaierror as e:\n"
                "    sys.exit(str(e))\n")
        r = self.ns.exec([sys.executable, "-c", code, name], timeout=10)
        return set(r.stdout.decode().split()) if r.returncode == 0 else set()

    def close(self) -> None:
        for p in self.procs:
            kill_group(p)
        self.ns.delete()


@pytest.fixture
def dns_world(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("DNS discovery test needs root (network namespace)")
    try:
        w = DnsWorld(tmp_path)
    except NetNSUnavailable as e:
        pytest.skip(f"cannot create a network namespace: {e}")
    try:
        yield w
    finally:
        w.close()


def ns_traffic(world: DnsWorld, mesh, n: int) -> Counter:
    """n GETs through meshd's outbound from inside the namespace (one curl, one connection) →
    Counter of (status, x-backend)."""
    url = f"{mesh.out_url}/"
    args = ["-H", "Host: web", "-w", "|%{http_code}|%header{x-backend}\\n"] + [url] * n
    r = world.ns.curl(*args, timeout=20)
    assert r.returncode == 0, r.stderr.decode()
    c = Counter()
    for line in r.stdout.decode().splitlines():
        if line.startswith("|"):
            _, code, backend = line.split("|")
            c[(int(code), backend)] += 1
    assert sum(c.values()) == n, r.stdout.decode()
    return c


def test_dns_discovery_follows_records(dns_world, start_meshd, tmp_path):
    w = dns_world
    name, port = "web.mesh.test", 8080
    w.set_records(name, ["127.0.0.2", "127.0.0.3"])
    w.start_dnsmasq()
    wait_for(lambda: w.resolve(name) == {"127.0.0.2", "127.0.0.3"}, 10, what="dnsmasq answering in the namespace")
    bk = {ip: Backend(f"b{ip.rsplit('.', 1)[1]}", host=ip, port=port, logdir=tmp_path, netns=w.ns.name)
          for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
    w.procs += [b.proc for b in bk.values()]

    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "web", "discovery": {"dns": name, "port": port, "refresh": "500ms"}}],
        routes=[route("web")],
    ), netns=w.ns)
    w.procs.append(mesh.proc)
    first = {f"127.0.0.2:{port}", f"127.0.0.3:{port}"}
    wait_for(lambda: set(endpoints(mesh, "web")) == first, 5, what="both DNS records in /services")
    c = ns_traffic(w, mesh, 40)
    assert c == Counter({(200, "b2"): 20, (200, "b3"): 20}), c

    # the records change: 127.0.0.2 leaves, 127.0.0.4 joins
    ok0 = discovery_count(mesh, "web", "ok")
    w.set_records(name, ["127.0.0.3", "127.0.0.4"])
    w.dnsmasq.send_signal(signal.SIGHUP)  # dnsmasq re-reads addn-hosts
    t0 = time.monotonic()
    second = {f"127.0.0.3:{port}", f"127.0.0.4:{port}"}
    wait_for(lambda: set(endpoints(mesh, "web")) == second, 3, interval=0.05, what="/services following the new records")
    took = time.monotonic() - t0
    assert took < 3, took
    assert discovery_count(mesh, "web", "ok") >= ok0 + 1
    time.sleep(0.1)
    c = ns_traffic(w, mesh, 40)
    assert c == Counter({(200, "b3"): 20, (200, "b4"): 20}), c

    # the DNS server goes away: the last good set stays, failures are counted
    failed0 = discovery_count(mesh, "web", "failed")
    kill_group(w.dnsmasq)
    wait_for(lambda: discovery_count(mesh, "web", "failed") >= failed0 + 2, 5, what="failed DNS refreshes counted")
    assert set(endpoints(mesh, "web")) == second
    c = ns_traffic(w, mesh, 20)
    assert c == Counter({(200, "b3"): 10, (200, "b4"): 10}), c
    assert logged(mesh, "DNS discovery failed; keeping the last good endpoints", "web"), mesh.stderr_text()[-2000:]
    assert mesh.alive()


# --------------------------------------------------------------------------------------------
# 7. locality preference


@pytest.mark.parametrize("zone_from", ["config", "env"])
def test_locality_prefers_own_zone(start_meshd, nginx, zone_from):
    eps = [
        {"address": nginx.addr("e1"), "zone": "a", "node": "n1"},
        {"address": nginx.addr("e2"), "zone": "a", "node": "n2"},
        {"address": nginx.addr("e3"), "zone": "b", "node": "n3"},
    ]
    extra = {"locality": {"zone": "a", "node": "n1"}} if zone_from == "config" else {}
    mesh = start_meshd(base_config(
        services=[{"name": "web", "endpoints": eps, "locality": {"prefer": "zone", "minHealthyShare": 0.5}}],
        routes=[route("web")],
        **extra,
    ), env={"MESHD_ZONE": "a"} if zone_from == "env" else None)
    c = load(mesh, "web", 300, conns=4)
    assert c == Counter({"e1": 150, "e2": 150}), c
    eps_now = endpoints(mesh, "web")
    states = {e["address"]: (e["zone"], e["state"], e["requests"]) for e in eps_now.values()}
    assert states == {
        nginx.addr("e1"): ("a", "healthy", 150),
        nginx.addr("e2"): ("a", "healthy", 150),
        nginx.addr("e3"): ("b", "standby", 0),
    }, states
    assert eps_now[nginx.addr("e3")]["node"] == "n3"


# --------------------------------------------------------------------------------------------
# 8. meshctl services


def meshctl_table(out: bytes) -> tuple[list[str], list[dict]]:
    lines = [ln for ln in out.decode().splitlines() if ln.strip()]
    header = lines[0].split()
    assert all(len(ln.split()) == len(header) for ln in lines[1:]), lines
    return header, [dict(zip(header, ln.split())) for ln in lines[1:]]


def test_meshctl_services_table_and_json(start_meshd, nginx):
    ctl = meshctl_bin()
    if not os.access(ctl, os.X_OK):
        pytest.fail(f"meshctl not found at {ctl} (set MESHCTL_BIN)", pytrace=False)
    e1, e2, e3, a = (nginx.addr(n) for n in ("e1", "e2", "e3", "a"))
    mesh = start_meshd(base_config(
        threads=1,
        services=[
            # round robin: both endpoints get traffic, so both have a latency estimate
            {"name": "web", "endpoints": [e1, {"address": e2, "weight": 2, "zone": "a"}]},
            {"name": "lb", "endpoints": [e3, a], "balancer": {"algorithm": "ewma", "decay": "10s", "defaultRTT": "30ms"}},
        ],
        routes=[route("web"), route("lb")],
    ))
    assert load(mesh, "web", 60, conns=2) == Counter({"e1": 20, "e2": 40})
    lb_counts = load(mesh, "lb", 30, conns=2)
    admin = f"{mesh.admin[0]}:{mesh.admin[1]}"
    columns = ["SERVICE", "BALANCER", "ENDPOINT", "VIA", "WEIGHT", "STATE", "IN-FLIGHT", "REQUESTS", "EWMA-MS", "RETURNS-IN"]

    r = run([ctl, "services", "web", "--admin", admin], timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    header, rows = meshctl_table(r.stdout)
    assert header == columns, r.stdout.decode()
    got = {row["ENDPOINT"]: row for row in rows}
    assert set(got) == {e1, e2}, rows
    for row in rows:
        assert (row["SERVICE"], row["BALANCER"], row["VIA"], row["STATE"], row["IN-FLIGHT"]) == \
            ("web", "round_robin", "-", "healthy", "0"), row
        ewma = float(row["EWMA-MS"])  # a number after traffic
        assert 0 < ewma < 1000, row
    assert {a_: (got[a_]["WEIGHT"], got[a_]["REQUESTS"]) for a_ in got} == {e1: ("1", "20"), e2: ("2", "40")}, rows

    # the ewma service: a number for every endpoint that answered, "-" for one that never did
    r = run([ctl, "services", "lb", "--admin", admin], timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    header, rows = meshctl_table(r.stdout)
    assert header == columns and len(rows) == 2, r.stdout.decode()
    assert {row["BALANCER"] for row in rows} == {"ewma"}, rows
    assert sum(int(row["REQUESTS"]) for row in rows) == 30, rows
    for row in rows:
        if int(row["REQUESTS"]) > 0:
            assert float(row["EWMA-MS"]) > 0, row
        else:
            assert row["EWMA-MS"] == "-", row
    assert {row["ENDPOINT"]: int(row["REQUESTS"]) for row in rows} == {e3: lb_counts["e3"], a: lb_counts["a"]}, rows

    r = run([ctl, "services", "web", "--admin", admin, "-o", "json"], timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads(r.stdout)
    assert list(doc) == ["services"] and len(doc["services"]) == 1, doc
    s = doc["services"][0]
    assert (s["name"], s["balancer"], s["requests"]) == ("web", "round_robin", 60), s
    by_addr = {e["address"]: e for e in s["endpoints"]}
    assert set(by_addr) == {e1, e2}, s
    for e in by_addr.values():
        for k in ("address", "weight", "state", "inFlight", "requests", "latencyEwmaMs"):
            assert k in e, (k, e)
        assert isinstance(e["latencyEwmaMs"], (int, float)) and e["latencyEwmaMs"] > 0, e
        assert e["state"] == "healthy" and e["inFlight"] == 0, e
    assert (by_addr[e2]["zone"], by_addr[e2]["weight"], by_addr[e2]["requests"]) == ("a", 2, 40), by_addr
    assert "zone" not in by_addr[e1] and by_addr[e1]["requests"] == 20, by_addr

    # every service without a name; an unknown name fails
    r = run([ctl, "services", "--admin", admin, "-o", "json"], timeout=10)
    assert r.returncode == 0 and {s["name"] for s in json.loads(r.stdout)["services"]} == {"web", "lb"}, r
    r = run([ctl, "services", "nosuch", "--admin", admin], timeout=10)
    assert r.returncode != 0 and b"nosuch" in r.stderr + r.stdout, r


# --------------------------------------------------------------------------------------------
# 9. config validation

SVC_HEAD = """\
threads: 1
outbound: { listen: "127.0.0.1:0" }
admin: { listen: "127.0.0.1:0" }
services:
  - name: web
    endpoints: ["127.0.0.1:8081", "127.0.0.1:8082"]
"""

# name → (text, key path, line, reason regex)
BAD = {
    "unknown_balancer": (SVC_HEAD + "    balancer: fastest\n", "services[0].balancer", 7, r"fastest"),
    "unknown_algorithm": (SVC_HEAD + "    balancer: { algorithm: fastest }\n", "services[0].balancer.algorithm", 7,
                          r"fastest"),
    "empty_discovery": (SVC_HEAD + "    discovery: {}\n", "services[0].discovery", 7, r"file or dns"),
    "dns_without_port": (SVC_HEAD + "    discovery: { dns: web.mesh.test }\n", "services[0].discovery", 7, r"port"),
    "locality_without_zone": (SVC_HEAD + "    locality: { prefer: zone }\n", "services[0].locality", 7,
                              r"locality\.zone"),
    "maglev_table_not_prime": (SVC_HEAD + "    balancer: { algorithm: maglev, tableSize: 65536 }\n",
                               "services[0].balancer.tableSize", 7, r"65536.*prime"),
}


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("how", ["check", "start"])
def test_bad_balancing_config_exits_2(tmp_path, name, how):
    text, key, line, reason = BAD[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    args = [meshd_bin(), "--check", "--config", str(f)] if how == "check" else [meshd_bin(), "--config", str(f)]
    r = run(args, timeout=10, env={k: v for k, v in os.environ.items() if k not in ("MESHD_ZONE", "MESHD_NODE_NAME")})
    err = r.stderr.decode()
    assert r.returncode == 2, f"exit {r.returncode}; stderr:\n{err}"
    pat = re.escape(key) + r" \(line " + str(line) + r"(, column \d+)?\): .*" + reason
    assert re.search(pat, err), f"stderr does not match /{pat}/:\n{err}"


def test_locality_zone_from_env_satisfies_prefer(tmp_path):
    f = tmp_path / "loc.yaml"
    f.write_text(BAD["locality_without_zone"][0])
    env = dict(os.environ, MESHD_ZONE="a")
    r = run([meshd_bin(), "--check", "--config", str(f)], timeout=10, env=env)
    assert r.returncode == 0, r.stderr.decode()


def test_good_balancing_config_checks(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text("""\
threads: 1
locality: { zone: a, node: n1 }
services:
  - name: web
    endpoints: ["127.0.0.1:8081", { address: "127.0.0.1:8082", weight: 2, zone: a, node: n1 }]
    discovery: { file: /nonexistent/eps.yaml, refresh: 200ms, allowEmpty: false }
    balancer: { algorithm: ewma, decay: 10s, defaultRTT: 30ms }
    locality: { prefer: zone, minHealthyShare: 0.5 }
  - name: api
    discovery: { dns: api.mesh.test, port: 8080, refresh: 1s }
    balancer: { algorithm: ring_hash, hashKey: { header: x-user } }
  - name: m
    endpoints: ["127.0.0.1:8083"]
    balancer: { algorithm: maglev, tableSize: 65537, hashKey: sourceIP }
  - name: c
    endpoints: ["127.0.0.1:8084"]
    balancer: { algorithm: ring_hash, hashKey: { cookie: session } }
routes:
  - match: { authority: web }
    service: web
""")
    r = run([meshd_bin(), "--check", "--config", str(f)], timeout=10)
    assert r.returncode == 0, r.stderr.decode()
