"""The lab's network: two nodes and their pods as Linux network namespaces (stdlib only).

Every name the lab makes starts with PREFIX ("mlab-"), so a later run can find and remove what a
killed one left behind (`sweep`). Nothing is created in the root namespace: the node ↔ node link and
every pod's veth are made inside the node namespaces, so deleting the namespaces removes every
link, bridge, route and iptables rule the lab made.

    node n1 (ns mlab-n1)                                  node n2 (ns mlab-n2)
    eth0 10.200.0.1/24  <──── veth (optional netem) ────>  eth0 10.200.0.2/24
    br0  10.201.1.1/24 (pod CIDR 10.201.1.0/24)            br0  10.201.2.1/24 (pod CIDR 10.201.2.0/24)
     └ client  10.201.1.10 (ns mlab-client)                 ├ server  10.201.2.10 (HTTP/1.1 app :8080)
                                                            ├ grpc    10.201.2.11 (gRPC app :50051)
                                                            └ client2 10.201.2.20 (same-node caller)

A pod has its own loopback (so a sidecar binds 127.0.0.1:4140 in it), eth0 on its node's bridge and a
default route via the bridge address; a node routes the other node's pod CIDR over the link and
forwards (ip_forward), and reaches its own pods over the bridge (bridge-nf-call-iptables on, so a
node's iptables rules see its pods' same-node traffic too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "mlab-"


class LabError(Exception):
    """A step of the lab failed; the message says which and why."""


def sh(args, *, check: bool = True, timeout: float = 20.0, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a short command (its own session, bounded); raise LabError with its stderr when it fails."""
    args = [str(a) for a in args]
    try:
        r = subprocess.run(args, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                           start_new_session=True, stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"timed out after {timeout}s: {' '.join(args)}")
    except FileNotFoundError:
        raise LabError(f"command not found: {args[0]}")
    if check and r.returncode != 0:
        raise LabError(f"`{' '.join(args)}` exited {r.returncode}: {r.stderr.decode(errors='replace').strip()}")
    return r


@dataclass
class Node:
    name: str          # n1, n2
    ns: str            # mlab-n1
    ip: str            # the node IP (its end of the node link)
    cidr: str          # pod CIDR
    gateway: str       # bridge address, the pods' default route


@dataclass
class Pod:
    name: str
    ns: str
    ip: str
    node: Node
    veth: str = ""     # its veth's name on the node side

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


@dataclass
class Topology:
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    delay_ms: float = 0.0
    created: list[str] = field(default_factory=list)   # namespaces, in creation order

    @staticmethod
    def standard() -> "Topology":
        t = Topology()
        n1 = Node("n1", PREFIX + "n1", "10.200.0.1", "10.201.1.0/24", "10.201.1.1")
        n2 = Node("n2", PREFIX + "n2", "10.200.0.2", "10.201.2.0/24", "10.201.2.1")
        t.nodes = {"n1": n1, "n2": n2}
        for name, ip, node in (("client", "10.201.1.10", n1), ("server", "10.201.2.10", n2),
                               ("grpc", "10.201.2.11", n2), ("client2", "10.201.2.20", n2)):
            t.pods[name] = Pod(name, PREFIX + name, ip, node, veth=f"v-{name}")
        return t

    # -- build ----------------------------------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        sh(["ip", "netns", "add", ns])
        self.created.append(ns)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def create(self, delay_ms: float = 0.0) -> None:
        self.delay_ms = delay_ms
        n1, n2 = self.nodes["n1"], self.nodes["n2"]
        for node in (n1, n2):
            self._add_ns(node.ns)
            ns = node.ns
            for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
                sh(["ip", "netns", "exec", ns, "sysctl", "-qw", key])
            # bridged (same-node) pod traffic through the node's iptables, as kube-proxy/CNIs require;
            # a kernel without br_netfilter just has no such key (then same-node capture cannot work)
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], check=False)
            sh(["ip", "-n", ns, "link", "add", "name", "br0", "type", "bridge"])
            sh(["ip", "-n", ns, "addr", "add", f"{node.gateway}/24", "dev", "br0"])
            sh(["ip", "-n", ns, "link", "set", "br0", "up"])
        # the node link: made in n1, its peer moved straight into n2 (nothing in the root namespace)
        sh(["ip", "-n", n1.ns, "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0", "netns", n2.ns])
        for node in (n1, n2):
            sh(["ip", "-n", node.ns, "addr", "add", f"{node.ip}/24", "dev", "eth0"])
            sh(["ip", "-n", node.ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", n1.ns, "route", "add", n2.cidr, "via", n2.ip])
        sh(["ip", "-n", n2.ns, "route", "add", n1.cidr, "via", n1.ip])
        if delay_ms > 0:
            for node in (n1, n2):  # each direction: a one-way delay of delay_ms
                sh(["tc", "-n", node.ns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{delay_ms}ms"])
        for pod in self.pods.values():
            self._add_ns(pod.ns)
            node = pod.node
            sh(["ip", "-n", node.ns, "link", "add", "name", pod.veth, "type", "veth", "peer", "name", "eth0",
                "netns", pod.ns])
            sh(["ip", "-n", node.ns, "link", "set", pod.veth, "master", "br0"])
            sh(["ip", "-n", node.ns, "link", "set", pod.veth, "up"])
            sh(["ip", "-n", pod.ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0"])
            sh(["ip", "-n", pod.ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", pod.ns, "route", "add", "default", "via", node.gateway])


def netem_available() -> bool:
    """Whether this kernel has the netem qdisc (sch_netem): tried on a veth of a scratch namespace."""
    ns = PREFIX + "probe"
    try:
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb"])
        r = sh(["tc", "-n", ns, "qdisc", "add", "dev", "pa", "root", "netem", "delay", "1ms"], check=False)
        return r.returncode == 0
    finally:
        sh(["ip", "netns", "del", ns], check=False)


# --------------------------------------------------------------------------------------------
# Sweeping: whatever carries the prefix goes, whoever made it


def lab_namespaces() -> list[str]:
    r = sh(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in r.stdout.decode().splitlines() if line.strip()]
    return [n for n in names if n.startswith(PREFIX)]


def ns_pids(ns: str) -> list[int]:
    r = sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []


def root_links() -> list[str]:
    r = sh(["ip", "-o", "link", "show"], check=False)
    out = []
    for line in r.stdout.decode().splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(PREFIX):
                out.append(name)
    return out


def sweep(log=lambda msg: None) -> dict:
    """Remove every lab namespace (killing what runs inside it first), every root-namespace link and
    /etc/netns directory with the prefix. Returns what was found, for the report."""
    found = {"namespaces": [], "processes": 0, "links": []}
    for ns in lab_namespaces():
        found["namespaces"].append(ns)
        for sig in (signal.SIGKILL,):
            for pid in ns_pids(ns):
                try:
                    os.kill(pid, sig)
                    found["processes"] += 1
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        while ns_pids(ns) and time.monotonic() < deadline:
            time.sleep(0.05)
        sh(["ip", "netns", "del", ns], check=False)
    for link in root_links():
        found["links"].append(link)
        sh(["ip", "link", "del", link], check=False)
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in etc.iterdir():
            if d.name.startswith(PREFIX):
                for f in d.iterdir():
                    f.unlink()
                d.rmdir()
    if any(found.values()):
        log(f"swept: {len(found['namespaces'])} namespaces ({', '.join(found['namespaces']) or '-'}), "
            f"{found['processes']} processes, {len(found['links'])} links")
    return found


def leftovers() -> dict:
    """What a finished run must not leave: lab namespaces, root links, processes inside them."""
    nss = lab_namespaces()
    return {"namespaces": nss, "links": root_links(), "processes": sum(len(ns_pids(n)) for n in nss)}
