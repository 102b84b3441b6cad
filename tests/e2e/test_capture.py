"""Transparent capture: `meshd capture install|remove` writes iptables rules in a pod's (or a node's)
network namespace; the application, unaware of meshd, calls an address and meshd routes the
redirected connection by its original destination (SO_ORIGINAL_DST). Real namespaces, veth links,
iptables and curl."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from meshlib import Meshd, NetNS, NetNSUnavailable, kill_group, meshd_bin, metric_value, popen, run, wait_for

NAMED_SERVER = (
    "import http.server,sys\n"
    "name=sys.argv[3].encode()\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    protocol_version='HTTP/1.1'\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('content-length', str(len(name)+1)); self.end_headers()\n"
    "        self.wfile.write(name+b'\\n')\n"
    "    def log_message(self,*a): pass\n"
    "http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()\n"
)


def server(ns: NetNS, host: str, port: int, name: str) -> subprocess.Popen:
    p = popen(ns.prefix + [sys.executable, "-c", NAMED_SERVER, host, str(port), name],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ns.exec(["python3", "-c", f"import socket; socket.create_connection(('{host}', {port}), 1)"]).returncode == 0:
            return p
        time.sleep(0.1)
    kill_group(p)
    raise RuntimeError(f"server {name} did not start")


def link(a: NetNS, a_ip: str, b: NetNS, b_ip: str, tag: str):
    """A veth pair between two namespaces with /24 addresses."""
    va, vb = f"v{tag}a", f"v{tag}b"
    a.check(["ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name])
    a.check(["ip", "-n", a.name, "addr", "add", f"{a_ip}/24", "dev", va])
    a.check(["ip", "-n", b.name, "addr", "add", f"{b_ip}/24", "dev", vb])
    a.check(["ip", "-n", a.name, "link", "set", va, "up"])
    a.check(["ip", "-n", b.name, "link", "set", vb, "up"])


def capture(ns: NetNS, *args) -> subprocess.CompletedProcess:
    r = ns.exec([meshd_bin(), "capture", *args], timeout=30)
    assert r.returncode == 0, f"meshd capture {args}: {r.stdout.decode()} {r.stderr.decode()}"
    return r


def nat_rules(ns: NetNS, cmd="iptables") -> str:
    return ns.exec([cmd, "-w", "5", "-t", "nat", "-S"]).stdout.decode()


@pytest.fixture
def namespaces():
    made = []

    def make(tag):
        try:
            ns = NetNS(tag)
        except NetNSUnavailable as e:
            pytest.skip(str(e))
        made.append(ns)
        return ns

    yield make
    for ns in reversed(made):
        ns.delete()


def ns_metric(mesh: Meshd, name, **labels):
    return metric_value(mesh.metrics_text(), name, **labels)


def test_sidecar_capture_routes_by_original_destination(namespaces, tmp_path):
    pod, other = namespaces("cpod"), namespaces("csrv")
    link(pod, "10.99.0.1", other, "10.99.0.2", "cap")
    procs = [server(other, "10.99.0.2", 8080, "web"), server(other, "10.99.0.2", 9000, "elsewhere"),
             server(pod, "127.0.0.1", 8080, "app")]
    mesh = None
    cleanup = []
    try:
        cfg = {
            "mode": "sidecar", "threads": 1,
            "outbound": {"listen": "127.0.0.1:4140"},
            "inbound": {"listen": "0.0.0.0:4143", "app": "127.0.0.1:8080"},
            "admin": {"listen": "127.0.0.1:4191"},
            "services": [{"name": "web", "endpoints": ["10.99.0.2:8080"]}],
            "routes": [{"match": {"authority": "web.shop"}, "service": "web"}],
        }
        # meshd runs as its own user: its connections are not redirected back to itself (and it must
        # be able to read its config: pytest's directories are private to root).
        workdir = Path(tempfile.mkdtemp(prefix="meshd-capture-"))
        os.chmod(workdir, 0o755)
        cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        mesh = Meshd(workdir, cfg, name="pod-meshd", netns=pod,
                     prefix=["setpriv", "--reuid=4140", "--regid=4140", "--clear-groups"])
        os.chmod(mesh.config_path, 0o644)
        capture(pod, "install", "--mode", "sidecar")
        capture(pod, "install", "--mode=sidecar")  # idempotent
        rules = nat_rules(pod)
        assert rules.count("-j MESHD_OUTBOUND") == 1 and rules.count("-j MESHD_INBOUND") == 1, rules
        assert "--uid-owner 4140" in rules and "REDIRECT --to-ports 4140" in rules, rules
        assert "MESHD_OUTBOUND" in nat_rules(pod, "ip6tables")

        # The app calls the server's address, knowing nothing of meshd: a service owns it.
        r = pod.curl("http://10.99.0.2:8080/")
        assert r.returncode == 0 and r.stdout == b"web\n", (r, mesh.stderr_text()[-3000:])
        wait_for(lambda: ns_metric(mesh, "meshd_requests_total", service="web", direction="outbound", status_class="2xx") == 1,
                 5, what="outbound request counted for service web")
        # An address no service owns: the bytes go where the app sent them (opaque TCP).
        r = pod.curl("http://10.99.0.2:9000/")
        assert r.returncode == 0 and r.stdout == b"elsewhere\n", r
        assert (ns_metric(mesh, "meshd_tcp_connections_total", target="original-dst") or 0) >= 1
        # A request to a known authority on an owned address is routed by its authority.
        r = pod.curl("-H", "Host: web.shop", "http://10.99.0.2:8080/")
        assert r.stdout == b"web\n"
        # Inbound: a caller reaching the pod's app port lands on meshd's inbound listener, then the app.
        r = other.curl("http://10.99.0.1:8080/")
        assert r.returncode == 0 and r.stdout == b"app\n", r
        assert (ns_metric(mesh, "meshd_connections_total", direction="inbound") or 0) >= 1
        # The admin port is not redirected.
        assert pod.curl("http://127.0.0.1:4191/ready").returncode == 0

        capture(pod, "remove")
        for cmd in ("iptables", "ip6tables"):
            assert "MESHD" not in nat_rules(pod, cmd), nat_rules(pod, cmd)
        capture(pod, "remove")  # removing twice is fine
        # Without capture the same call goes straight to the server.
        before = ns_metric(mesh, "meshd_requests_total", service="web", direction="outbound", status_class="2xx")
        assert pod.curl("http://10.99.0.2:8080/").stdout == b"web\n"
        assert ns_metric(mesh, "meshd_requests_total", service="web", direction="outbound", status_class="2xx") == before
    finally:
        if mesh:
            mesh.stop()
        for p in procs:
            kill_group(p)
        for f in cleanup:
            f()


def test_node_capture_sends_pod_traffic_to_the_node_proxy(namespaces, tmp_path):
    node, pod, remote = namespaces("cnode"), namespaces("cnpod"), namespaces("cnrem")
    link(pod, "10.98.1.2", node, "10.98.1.1", "np")
    link(node, "10.98.2.1", remote, "10.98.2.2", "nr")
    pod.check(["ip", "-n", pod.name, "route", "add", "default", "via", "10.98.1.1"])
    remote.check(["ip", "-n", remote.name, "route", "add", "default", "via", "10.98.2.1"])
    node.check(["ip", "netns", "exec", node.name, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    procs = [server(remote, "10.98.2.2", 8080, "web")]
    mesh = None
    try:
        cfg = {
            "mode": "node", "nodeIP": "10.98.1.1", "threads": 1,
            "node": {"podCIDRs": ["10.98.1.0/24"]},
            "admin": {"listen": "127.0.0.1:4191"},
            "services": [{"name": "web", "endpoints": ["10.98.2.2:8080"]}],
            "routes": [{"match": {"authority": "web.shop"}, "service": "web"}],
        }
        mesh = Meshd(tmp_path, cfg, name="node-meshd", netns=node)
        capture(node, "install", "--mode=node", "--pod-cidr=10.98.1.0/24", "--node-ip=10.98.1.1")
        capture(node, "install", "--mode=node", "--pod-cidr=10.98.1.0/24", "--node-ip=10.98.1.1")
        rules = nat_rules(node)
        assert rules.count("-j MESHD_NODE_OUTBOUND") == 1, rules
        assert "DNAT --to-destination 10.98.1.1:4140" in rules, rules

        # The pod calls the remote address; its node's meshd carries the request (source pod known).
        r = pod.curl("http://10.98.2.2:8080/")
        assert r.returncode == 0 and r.stdout == b"web\n", r
        wait_for(lambda: ns_metric(mesh, "meshd_requests_total", service="web", direction="outbound", status_class="2xx") == 1,
                 5, what="node proxy counted the captured request")
        # The node IP itself is not redirected: explicit use of the node proxy still works.
        r = pod.curl("-H", "Host: web.shop", "http://10.98.1.1:4140/")
        assert r.stdout == b"web\n", r

        capture(node, "remove", "--mode=node")
        assert "MESHD" not in nat_rules(node), nat_rules(node)
    finally:
        if mesh:
            mesh.stop()
        for p in procs:
            kill_group(p)


def test_capture_refuses_bad_options():
    for args in (["install", "--mode=node"], ["install", "--mode=node", "--pod-cidr=10.0.0.0/8"],
                 ["install", "--outbound-port=0"], ["install", "--skip-cidrs=not-a-cidr"], ["install", "--mode=nope"]):
        r = run([meshd_bin(), "capture", *args, "--dry-run"], timeout=10)
        assert r.returncode != 0, args
        assert b"Error" in r.stderr or b"error" in r.stderr, (args, r.stderr)
    r = run([meshd_bin(), "capture", "install", "--dry-run", "--skip-outbound-ports=22"], timeout=10)
    assert r.returncode == 0 and b"iptables -t nat -A MESHD_OUTBOUND -p tcp --dport 22 -j RETURN" in r.stdout, r.stdout
