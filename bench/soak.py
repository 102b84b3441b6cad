#!/usr/bin/env python3
"""Soak with chaos (issue 15): mixed traffic through both placements while the world misbehaves.

One run starts, all on loopback addresses:

  pods      twelve "pods", each an app process on its own pod IP 127.0.1.N (as test_node_mode.py and
            test_grpc.py use loopback addresses for pods and nodes): web-1..4 (tests/e2e/backend.py,
            HTTP/1.1), fault (fault_backend.py, its mode cycles: ok, flaky503, hang, 503, slow:300),
            stall (fault_backend.py, always hangs), grpc-1/2 (grpc_server.py), ws-1/2 (ws_echo.py),
            tcp-1/2 (tcp_echo.py). Every pod also has its own server-side sidecar meshd (inbound).
  sidecar   client → client sidecar (outbound, threads 2) → the pod's sidecar (inbound) → app
  node      client pod 127.0.0.3 → node-a (node proxy on 127.0.0.2, threads 2) → `via` node-b's inbound
            (node proxy on 127.0.0.5, pod CIDR 127.0.1.0/24) → app; opaque TCP goes node-a → app
            (a node proxy's inbound forwards only HTTP)

and drives, through both placements at once and at a moderate paced rate (2-core machine), HTTP/1.1
keep-alive GET and POST, HTTP/2 (h2c) GET and POST streams, gRPC unary, server-streaming and
bidirectional calls, WebSocket echo sessions, opaque TCP echo sessions, requests to a route whose
backend stalls (504 expected), and malformed requests (400 / 431 expected). Meanwhile:

  kills      every few seconds a pod's app (for web pods every other time the whole pod: app and its
             sidecar) is SIGKILLed and restarted two seconds later on the same address
  faults     the fault pod cycles through 503s (always / every other request), stalls and slow answers
  discovery  the web service's endpoints file changes every few seconds (an endpoint added and
             removed, a weight changed, the order changed, an endpoint that is not listening)
  reloads    the config files of the client sidecar and both node proxies are rewritten every few
             seconds (balancer, retry budget, an extra route), one write in four in place and not
             atomically (two writes 50 ms apart), one in four invalid (must be rejected)

Every request ends: every client has a timeout above every bound meshd is configured with, and one
that fires counts as a hang. A failed request is
  lost      when it was retryable (GET, gRPC unary, a stream or WebSocket that failed before its first
            message) — the routes retry on every failure these faults cause — or when no injected fault
            explains it;
  expected  when it was not retryable (POST, a GET whose response was cut after its head arrived, a
            stream cut after messages flowed, an opaque TCP connection: meshd does not retry those, and
            no proxy can once a response has started) and an injected fault of its kind overlapped it
            (its pods down, the fault pod misbehaving, a dead endpoint in discovery).
RSS (anonymous: RssAnon — the executable's code pages, dropped after start and faulted back as code
runs, are shared page cache, not held memory) and open file descriptors of every meshd are sampled every second; for every meshd that
lived through the whole run, the median over the first window after warm-up is compared with the median
over the last window.

The run passes when nothing was lost, nothing hung, every traffic kind was served, every bad input got
its answer, no meshd died or failed to stop cleanly, every proxy rejected the invalid configs, RSS grew
less than 5 % (MAX_GROWTH) or by less than 512 kB (MIN_RSS_GROWTH_KB: anonymous memory is ~3 MB), and descriptors do not leak: once the traffic stops and every pooled
connection has idled out (POOL_IDLE), each proxy that lived through the run holds no more descriptors
than it did before the traffic started (how many are open during the run depends on the connections of
the moment and the pool's history, so a growth between two windows proves nothing; a leak survives the
quiet).

Usage: python3 bench/soak.py [--duration S] [--out DIR] [--meshd PATH]   (bench/soak.sh wraps it)
tests/e2e/test_soak.py imports `run()` for the 2-minute CI version.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "tests" / "e2e"
if str(E2E) not in sys.path:
    sys.path.insert(0, str(E2E))

import meshlib  # noqa: E402
from meshlib import Meshd, _readline_timeout, http_request, kill_group, parse_metrics, popen, to_yaml  # noqa: E402

# --------------------------------------------------------------------------------------------
# Topology and pacing

CLIENT_POD_IP = "127.0.0.3"  # the client "pod" of the node placement
NODE_A_IP = "127.0.0.2"      # node of the client pod
NODE_B_IP = "127.0.0.5"      # node of every backend pod
POD_CIDR = "127.0.1.0/24"    # node-b's pods
DEAD_POD_IP = "127.0.1.99"   # a pod discovery lists before it listens

# (pod name, kind, last octet of its pod IP)
PODS = [("web-1", "web", 1), ("web-2", "web", 2), ("web-3", "web", 3), ("web-4", "web", 4),
        ("fault", "fault", 5), ("stall", "stall", 6), ("grpc-1", "grpc", 7), ("grpc-2", "grpc", 8),
        ("ws-1", "ws", 9), ("ws-2", "ws", 10), ("tcp-1", "tcp", 11), ("tcp-2", "tcp", 12)]
# Pods killed and restarted, in this order (web-4, fault and stall never: they carry other faults).
KILL_ORDER = ["web-1", "grpc-1", "ws-1", "tcp-1", "web-2", "grpc-2", "ws-2", "tcp-2", "web-3"]

KILL_EVERY = 6.0       # s between two kills
DOWN_FOR = 2.0         # s a killed pod stays down
FAULT_EVERY = 4.0      # s per fault-pod mode
FAULT_MODES = ["ok", "flaky503", "ok", "hang", "ok", "503", "ok", "slow:300"]
DISCOVERY_EVERY = 3.0  # s between two endpoints-file changes
RELOAD_EVERY = 4.0     # s between two rounds of config rewrites
SAMPLE_EVERY = 1.0     # s between two RSS / fd samples

# Client-side bounds: above every bound meshd is configured with (route timeouts 0.5-10 s), so a
# client timeout means meshd let a request hang.
CLIENT_TIMEOUT = 15.0
WEB_ROUTE_TIMEOUT = "8s"
STALL_ROUTE_TIMEOUT = 0.5
GRPC_DEADLINE = 12.0   # sent as grpc-timeout; meshd ends the call at this deadline at the latest

MAX_GROWTH = 0.05      # RSS and open descriptors, first window after warm-up → last window
MIN_RSS_GROWTH_KB = 512  # anonymous RSS is ~3 MB: growth under this is the allocator settling, not a leak
POOL_IDLE_S = 6        # upstream.idleTimeout of every proxy: the quiet after the run closes pooled connections
QUIESCE_WAIT_S = POOL_IDLE_S + 10  # idle timeout + the pool's sweep tick + connections closing on both ends
GRACE = 1.0            # s after a fault ends during which it still explains a failure

# Per placement: (kind, worker, seconds between two operations). About 110 operations per second per
# placement, so the two placements and the peers stay well inside two cores.
TRAFFIC = [
    ("http1", "Http1Worker", 0.05),
    ("http1", "Http1Worker", 0.05),
    ("h2", "H2Worker", 0.2),           # 4 streams per batch: 20 streams/s
    ("grpc-unary", "GrpcUnaryWorker", 0.066),
    ("grpc-server-stream", "GrpcServerStreamWorker", 1.0),
    ("grpc-bidi", "GrpcBidiWorker", 1.5),
    ("websocket", "WebSocketWorker", 0.5),
    ("tcp", "TcpWorker", 0.5),
    ("stall", "StallWorker", 1.0),
    ("bad-input", "BadInputWorker", 2.0),
]

# The operations (as counted and reported) of each traffic kind.
OPERATIONS = {"http1": ["http1-get", "http1-post"], "h2": ["h2-get", "h2-post"], "grpc-unary": ["grpc-unary"],
              "grpc-server-stream": ["grpc-server-stream"], "grpc-bidi": ["grpc-bidi"], "websocket": ["websocket"],
              "tcp": ["tcp"], "stall": ["stall-504"], "bad-input": ["bad-input"]}
EXPECTED_KINDS = [op for ops in OPERATIONS.values() for op in ops]

# Which injected faults may explain a failure of a kind that is not retryable.
EXPLAINED_BY = {
    "http1-get": ("web", "fault", "dead"),  # only a response cut after its head (see Http1Worker)
    "http1-post": ("web", "fault", "dead"),
    "h2-post": ("web", "fault", "dead"),
    "grpc-server-stream": ("grpc",),
    "grpc-bidi": ("grpc",),
    "websocket": ("ws",),
    "tcp": ("tcp",),
}

OUTLIER = {"consecutive5xx": 5, "consecutiveGatewayFailures": 5, "baseEjectionTime": "5s",
           "maxEjectionTime": "30s", "interval": "10s", "maxEjectionPercent": 50}
# Retries in flight at once per service: a pod kill makes every request to it retry at the same moment,
# more than the default of 3 (Envoy's default too) an operator would raise for a service that must not
# lose retryable requests.
LIMITS = {"maxRetries": 64}


def log(msg: str) -> None:
    print(f"[soak] {msg}", file=sys.stderr, flush=True)


_ports_taken: set[int] = set()
_ports_lock = threading.Lock()


def fixed_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, for listeners that are bound again after a kill:
    an outgoing connection's source port (any process's) can never take it in the meantime, as it could
    a port from bind(0)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, max(low, 20001))
        with _ports_lock:
            if port in _ports_taken:
                continue
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
            except OSError:
                continue
            _ports_taken.add(port)
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


# --------------------------------------------------------------------------------------------
# Pods: an app process on its pod IP, and (sidecar placement) the pod's own sidecar


class Pod:
    def __init__(self, soak: "Soak", name: str, kind: str, octet: int):
        self.soak = soak
        self.name, self.kind = name, kind
        self.ip = f"127.0.1.{octet}"
        self.port = fixed_port(self.ip)
        self.sidecar_port = fixed_port()
        self.app: subprocess.Popen | None = None
        self.sidecar: Meshd | None = None
        self.incarnation = 0  # of the sidecar

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def sidecar_addr(self) -> str:
        return f"127.0.0.1:{self.sidecar_port}"

    def app_cmd(self) -> list[str]:
        py = sys.executable
        host = ["--host", self.ip, "--port", str(self.port)]
        return {
            "web": [py, str(E2E / "backend.py"), *host, "--name", self.name],
            "fault": [py, str(E2E / "fault_backend.py"), *host, "--name", self.name, "--mode", "ok"],
            "stall": [py, str(E2E / "fault_backend.py"), *host, "--name", self.name, "--mode", "hang"],
            "grpc": [py, str(E2E / "grpc_server.py"), *host, "--name", self.name],
            "ws": [py, str(E2E / "ws_echo.py"), *host],
            "tcp": [py, str(E2E / "tcp_echo.py"), "serve", *host],
        }[self.kind]

    def start_app(self) -> None:
        err = open(self.soak.dir / f"app-{self.name}.err", "ab")
        p = popen(self.app_cmd(), stdout=subprocess.PIPE, stderr=err)
        line = _readline_timeout(p, 20.0)
        if not re.match(rb"PORT (\d+)", line or b""):
            kill_group(p)
            raise RuntimeError(f"pod {self.name}: app did not start: {line!r}")
        self.app = p

    def sidecar_config(self) -> dict:
        http_app = self.kind in ("web", "fault", "stall")
        return {
            "mode": "sidecar", "threads": 1,
            "outbound": {"listen": "127.0.0.1:0"},
            # HTTP/2 from the client sidecar goes to an HTTP/1.1-only app as HTTP/1.1; gRPC stays h2c;
            # WebSocket upgrades are HTTP/1.1; opaque TCP is detected and passed to the app.
            "inbound": {"listen": self.sidecar_addr, "app": self.addr, "appProtocol": "http1" if http_app else "auto"},
            "admin": {"listen": "127.0.0.1:0"},
            "drainTimeout": "2s", "services": [], "routes": [],
            # the pod's leg of a lost request (see `Soak.trace_failures`); every incarnation appends
            "accessLog": {"path": str(self.soak.dir / f"access-sc-{self.name}.log")},
        }

    def start_sidecar(self) -> None:
        self.incarnation += 1
        name = f"sc-{self.name}" + (f"#{self.incarnation}" if self.incarnation > 1 else "")
        self.sidecar = Meshd(self.soak.dir, self.sidecar_config(), name=name,
                             config_path=self.soak.dir / f"sc-{self.name}.yaml")
        self.soak.register_meshd(self.sidecar)

    def kill(self, whole: bool) -> None:
        """SIGKILL the app (a crashed container); with `whole`, its sidecar too (the pod is gone)."""
        if self.app is not None:
            kill_group(self.app)
        if whole and self.sidecar is not None:
            kill_group(self.sidecar.proc)
            self.soak.unregister_meshd(self.sidecar)

    def restart(self, whole: bool) -> None:
        self.start_app()
        if whole:
            self.start_sidecar()

    def fault_control(self, path: str) -> dict:
        status, _, body = http_request((self.ip, self.port), "GET", path, timeout=5)
        if status != 200:
            raise RuntimeError(f"{self.name} {path}: {status} {body!r}")
        return json.loads(body)


# --------------------------------------------------------------------------------------------
# Mesh configuration (written again by the reload chaos: VARIANTS)

VARIANTS = [
    {"balancer": "round_robin", "budget": 0.5, "probe": False},
    {"balancer": "least_request", "budget": 0.5, "probe": True},
    {"balancer": "ewma", "budget": 0.6, "probe": False},
    {"balancer": "round_robin", "budget": 0.6, "probe": True},
]


def routes(variant: dict) -> list[dict]:
    budget = {"ratio": variant["budget"], "minPerSecond": 20}
    web = {"name": "web", "match": {"authority": "web"}, "service": "web", "timeout": WEB_ROUTE_TIMEOUT,
           # everything the kills, the fault pod and the dead endpoint cause before a response head
           "retry": {"retryOn": ["connect-failure", "refused-stream", "reset", "gateway-error"], "attempts": 4,
                     # 2 s: a slow answer from a loaded 2-core machine is not a fault; a hung one is
                     "perTryTimeout": "2s", "budget": budget}}
    grpc_route = {"name": "grpc", "match": {"authority": "grpc"}, "service": "grpc", "timeout": "10s",
                  # a pod's sidecar (or node-b) answers a dead app with a trailers-only UNAVAILABLE;
                  # the Echo methods are idempotent, so they are retried even after reaching a pod
                  "retry": {"retryOn": ["connect-failure", "refused-stream", "reset", "unavailable"], "attempts": 4,
                            "retryNonIdempotent": True, "budget": budget}}
    ws = {"name": "ws", "match": {"authority": "ws"}, "service": "ws", "timeout": "5s",
          "retry": {"retryOn": ["connect-failure", "reset", "gateway-error"], "attempts": 4, "budget": budget}}
    stall = {"name": "stall", "match": {"authority": "stall"}, "service": "stall",
             "timeout": f"{int(STALL_ROUTE_TIMEOUT * 1000)}ms"}
    out = [web, grpc_route, ws, stall]
    if variant["probe"]:
        out.insert(0, {"name": "probe", "match": {"authority": "probe"}, "service": "web"})
    return out


class Soak:
    """One soak run: `Soak(workdir, duration).run()` → results dict (see `results`)."""

    def __init__(self, workdir: Path, duration: float, seed: int = 15, skip: frozenset = frozenset()):
        self.dir = workdir
        self.skip = skip  # traffic kinds left out (a diagnostic aid; a full soak runs them all)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.duration = duration
        self.seed = seed
        self.pods = {n: Pod(self, n, k, o) for n, k, o in PODS}
        self.dead_port = fixed_port()  # nothing listens on it (127.0.0.1 and DEAD_POD_IP)
        self.tcp_port_sidecar = fixed_port()
        self.tcp_port_node = fixed_port(NODE_A_IP)
        self.meshds: dict[str, Meshd] = {}
        self.meshd_lock = threading.Lock()
        self.samples: dict[str, list] = defaultdict(list)  # name → [(t, rss kB, fds, cpu ticks)]
        self.lifetimes: dict[str, list] = {}  # name → [first t, last t, pid]
        self.stop_traffic = threading.Event()
        self.stop_chaos = threading.Event()
        self.t0 = 0.0
        self.rec = Recorder()
        self.events: list[dict] = []        # chaos events, for the report
        self.windows: list[tuple] = []      # (kind, start, end): a fault of that kind was active
        self.counts = Counter()             # faults injected
        self.problems: list[str] = []
        self.fd_baseline: dict[str, int] = {}  # whole-run proxies: descriptors before the traffic
        self.quiet: dict[str, dict] = {}       # and after it (see `quiesce`)
        self.driver_errors: list[str] = []
        self.lock = threading.Lock()

    # -- bookkeeping ------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def register_meshd(self, m: Meshd) -> None:
        with self.meshd_lock:
            self.meshds[m.name] = m

    def unregister_meshd(self, m: Meshd) -> None:
        with self.meshd_lock:
            self.meshds.pop(m.name, None)

    def event(self, what: str, **kw) -> None:
        with self.lock:
            self.events.append({"t": round(self.now(), 3), "event": what, **kw})

    def window(self, kind: str, start: float, end: float) -> None:
        with self.lock:
            self.windows.append((kind, start, end))

    def driver_error(self, where: str, e: BaseException) -> None:
        with self.lock:
            self.driver_errors.append(f"{where}: {type(e).__name__}: {e}")
        log(f"driver error in {where}: {type(e).__name__}: {e}")

    # -- configs ------------------------------------------------------------------------------------
    def discovery_sets(self) -> list[list]:
        """The web service's endpoint sets the discovery chaos cycles through (pod names; "dead" is an
        endpoint nothing listens on, a pod listed before it is ready; ("web-4", 3) a weight)."""
        base = ["web-1", "web-2", "web-3", "fault"]
        return [
            base,
            base + ["web-4"],
            base + [("web-4", 3)],
            ["web-3", "fault", "web-4", "web-1", "web-2"],
            base + ["web-4", "dead"],
            base + ["web-4"],
        ]

    def endpoint(self, placement: str, name, weight: int = 1):
        if isinstance(name, tuple):
            name, weight = name
        if placement == "sidecar":
            addr = f"127.0.0.1:{self.dead_port}" if name == "dead" else self.pods[name].sidecar_addr
            return addr if weight == 1 else {"address": addr, "weight": weight}
        addr = f"{DEAD_POD_IP}:{self.dead_port}" if name == "dead" else self.pods[name].addr
        ep = {"address": addr, "via": self.node_b_inbound}
        if weight != 1:
            ep["weight"] = weight
        return ep

    def write_discovery(self, names: list) -> None:
        for placement in ("sidecar", "node"):
            path = self.dir / f"endpoints-web-{placement}.yaml"
            text = to_yaml({"endpoints": [self.endpoint(placement, n) for n in names]})
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, path)  # atomic, as a ConfigMap update

    def proxy_config(self, placement: str, variant: dict) -> dict:
        """The client sidecar's (placement "sidecar") or node-a's (placement "node") config."""
        def eps(names):
            return [self.endpoint(placement, n) for n in names]

        web = {"name": "web", "endpoints": eps(self.discovery_sets()[0]),
               "discovery": {"file": str(self.dir / f"endpoints-web-{placement}.yaml"), "refresh": "500ms"},
               "balancer": variant["balancer"], "outlierDetection": OUTLIER, "limits": LIMITS}
        if placement == "node":
            web["protocol"] = "http1"  # the HTTP/1.1-only apps get h2c clients' requests as HTTP/1.1
        services = [
            web,
            {"name": "grpc", "protocol": "grpc", "endpoints": eps(["grpc-1", "grpc-2"]), "outlierDetection": OUTLIER,
             "limits": LIMITS},
            {"name": "ws", "endpoints": eps(["ws-1", "ws-2"]), "outlierDetection": OUTLIER, "limits": LIMITS},
            {"name": "stall", "endpoints": eps(["stall"])},
        ]
        if placement == "sidecar":
            tcp_eps = [self.pods[n].sidecar_addr for n in ("tcp-1", "tcp-2")]
            tcp_listen = f"127.0.0.1:{self.tcp_port_sidecar}"
        else:  # a node proxy reaches opaque TCP pods directly (its peer's inbound forwards HTTP only)
            tcp_eps = [self.pods[n].addr for n in ("tcp-1", "tcp-2")]
            tcp_listen = f"{NODE_A_IP}:{self.tcp_port_node}"
        services.append({"name": "tcp", "protocol": "tcp", "listen": tcp_listen, "endpoints": tcp_eps,
                         "timeouts": {"connect": "1s", "idle": "30s"}})
        cfg = {
            "mode": placement if placement == "sidecar" else "node",
            "threads": 2,
            "outbound": {"listen": "127.0.0.1:0" if placement == "sidecar" else f"{NODE_A_IP}:0"},
            "inbound": {"listen": "127.0.0.1:0" if placement == "sidecar" else f"{NODE_A_IP}:0",
                        **({"app": "127.0.0.1:9"} if placement == "sidecar" else {})},
            "admin": {"listen": "127.0.0.1:0"},
            "drainTimeout": "5s",
            "upstream": {"idleTimeout": f"{POOL_IDLE_S}s"},
            # every request's line, to follow a lost one through the proxies (see `trace_failures`)
            "accessLog": {"path": str(self.dir / f"access-{'client-sidecar' if placement == 'sidecar' else 'node-a'}.log")},
            "services": services,
            "routes": routes(variant),
        }
        if placement == "node":
            cfg["nodeIP"] = NODE_A_IP
            cfg["node"] = {"podCIDRs": [f"{CLIENT_POD_IP}/32"]}  # allowed sources: the pod + loopback
        return cfg

    def node_b_config(self, variant_index: int) -> dict:
        return {
            "mode": "node", "nodeIP": NODE_B_IP, "threads": 2,
            "outbound": {"listen": f"{NODE_B_IP}:0"}, "inbound": {"listen": f"{NODE_B_IP}:0"},
            "admin": {"listen": "127.0.0.1:0"},
            "node": {"podCIDRs": [POD_CIDR]},
            "upstream": {"idleTimeout": f"{POOL_IDLE_S}s" if variant_index % 2 == 0 else f"{POOL_IDLE_S - 1}s"},
            "drainTimeout": "5s", "services": [], "routes": [],
            "accessLog": {"path": str(self.dir / "access-node-b.log")},
        }

    # -- start ----------------------------------------------------------------------------------------
    def start(self) -> None:
        import grpc_proto

        grpc_proto.load()  # generate the gRPC code once, before grpc_server.py processes start
        for pod in self.pods.values():
            pod.start_app()
        for pod in self.pods.values():
            pod.start_sidecar()
        self.node_b = Meshd(self.dir, self.node_b_config(0), name="node-b")
        self.register_meshd(self.node_b)
        self.node_b_inbound = f"{self.node_b.inbound[0]}:{self.node_b.inbound[1]}"
        self.write_discovery(self.discovery_sets()[0])
        self.client = Meshd(self.dir, self.proxy_config("sidecar", VARIANTS[0]), name="client-sidecar")
        self.register_meshd(self.client)
        self.node_a = Meshd(self.dir, self.proxy_config("node", VARIANTS[0]), name="node-a")
        self.register_meshd(self.node_a)
        for m in (self.client, self.node_a):
            meshlib.wait_for(lambda m=m: all(s.get("endpoints") for s in m.admin_json("/services")["services"]),
                             10, what=f"{m.name}: every service has endpoints")
        time.sleep(0.5)
        for m in (self.client, self.node_a, self.node_b):
            self.fd_baseline[m.name] = fd_count(m.pid)
        self.entries = {
            "sidecar": {"http": self.client.outbound, "tcp": ("127.0.0.1", self.tcp_port_sidecar), "source": None},
            "node": {"http": self.node_a.outbound, "tcp": (NODE_A_IP, self.tcp_port_node), "source": CLIENT_POD_IP},
        }

    # -- run --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        t_setup = time.monotonic()
        self.start()
        setup_s = time.monotonic() - t_setup
        log(f"{len(self.meshds)} meshd processes and {len(self.pods)} pods up in {setup_s:.1f}s; "
            f"running {self.duration:.0f}s")
        self.t0 = time.monotonic()
        sampler = threading.Thread(target=self.sample_loop, name="sampler", daemon=True)
        sampler.start()
        workers = []
        rng = random.Random(self.seed)
        for placement in ("sidecar", "node"):
            for i, (kind, cls, interval) in enumerate(TRAFFIC):
                if kind in self.skip:
                    continue
                w = WORKERS[cls](self, placement, interval, random.Random(rng.random()), f"{placement}-{kind}-{i}")
                workers.append(w)
        chaos = [threading.Thread(target=f, name=f.__name__, daemon=True)
                 for f in (self.kill_loop, self.fault_loop, self.discovery_loop, self.reload_loop)]
        for t in workers + chaos:
            t.start()
        deadline = self.t0 + self.duration
        last_progress = 0.0
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            if self.now() - last_progress >= 30 and time.monotonic() < deadline:
                last_progress = self.now()
                log(f"t={self.now():.0f}s {self.rec.progress()}")
        t_end = self.now()
        self.stop_traffic.set()
        for w in workers:  # every operation is bounded by CLIENT_TIMEOUT
            w.join(CLIENT_TIMEOUT + 10)
            if w.is_alive():
                self.rec.stuck(w.name, w.kind_now, w.placement, w.op_start)
        self.stop_chaos.set()
        for t in chaos:
            t.join(60)
            if t.is_alive():
                self.problems.append(f"chaos thread {t.name} did not finish")
        sampler.join(5)
        self.check_alive()
        GrpcWorker.close_channels(self)
        self.quiesce()
        metrics = self.collect_metrics()
        fault_stats = self.collect_fault_stats()
        exits = self.stop_all()
        return self.results(t_end, setup_s, metrics, fault_stats, exits)

    def quiesce(self) -> None:
        """Waits until every connection of the run is gone (the drivers closed theirs; pooled upstream
        connections idle out after POOL_IDLE_S) and checks that each proxy that lived through the run is
        back to the descriptors it held before the traffic: one that is not leaked them."""
        procs = [m for m in (self.client, self.node_a, self.node_b) if m.alive()]
        t0 = time.monotonic()
        while True:
            now = {m.name: fd_count(m.pid) for m in procs}
            left = [m for m in procs if now[m.name] is not None and now[m.name] > self.fd_baseline[m.name]]
            if not left or time.monotonic() - t0 > QUIESCE_WAIT_S:
                break
            time.sleep(0.5)
        waited = round(time.monotonic() - t0, 1)
        for m in procs:
            self.quiet[m.name] = {"before": self.fd_baseline[m.name], "after": now[m.name], "waited_s": waited}
        for m in left:
            self.problems.append(
                f"{m.name}: {now[m.name]} descriptors open {waited:.0f} s after the traffic stopped, "
                f"{self.fd_baseline[m.name]} before it started; its sockets now:\n{describe_sockets(m.pid)}")

    def trace_failures(self, failures: list) -> None:
        """Adds to every lost or hung request that carried an x-request-id the access-log lines every
        proxy wrote for it (the shared ones and the pods' sidecars): which hop answered what, after how
        long, from which endpoint."""
        wanted = {}
        for f in failures:
            m = re.search(r"\[x-request-id (\S+)\]", f["error"])
            if m and f["class"] != "expected":
                wanted[m.group(1)] = f
        if not wanted:
            return
        for path in sorted(self.dir.glob("access-*.log")):
            name = path.stem.removeprefix("access-")
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                m = re.search(r'"request_id":"([^"]+)"', line)
                if m and m.group(1) in wanted:
                    wanted[m.group(1)].setdefault("trace", []).append(f"{name}: {line[:600]}")

    def check_alive(self) -> None:
        with self.meshd_lock:
            procs = list(self.meshds.values())
        for m in procs:
            if not m.alive():
                self.problems.append(f"meshd {m.name} died (exit {m.proc.returncode}); stderr tail:\n"
                                     f"{m.stderr_text()[-1500:]}")

    # -- chaos --------------------------------------------------------------------------------------------
    def kill_loop(self) -> None:
        n = 0
        web_kills = 0
        while not self.stop_chaos.wait(KILL_EVERY if n else KILL_EVERY / 2):
            if self.stop_traffic.is_set():
                return
            pod = self.pods[KILL_ORDER[n % len(KILL_ORDER)]]
            n += 1
            whole = False
            if pod.kind == "web":
                web_kills += 1
                whole = web_kills % 2 == 0  # every other web kill takes the pod's sidecar too
            try:
                t_kill = self.now()
                pod.kill(whole)
                self.counts["pod kills (app SIGKILL)"] += 1
                if whole:
                    self.counts["pod kills incl. sidecar meshd"] += 1
                self.event("kill", pod=pod.name, sidecar=whole)
                time.sleep(DOWN_FOR)  # not cut short: the pod comes back even when the run ends
                pod.restart(whole)
                t_up = self.now()
                self.counts["pod restarts"] += 1
                self.event("restart", pod=pod.name, sidecar=whole, down_s=round(t_up - t_kill, 2))
                self.window(pod.kind, t_kill, t_up)
            except Exception as e:  # a pod that cannot come back ends the chaos, loudly
                self.driver_error(f"kill/restart {pod.name}", e)
                return

    def fault_loop(self) -> None:
        pod = self.pods["fault"]
        n = 0
        mode, since, req0 = "ok", 0.0, pod.fault_control("/_fault/stats")["requests"]
        while True:
            stopping = self.stop_chaos.wait(FAULT_EVERY)
            if self.stop_traffic.is_set() or stopping:
                nxt = "ok"
            else:
                n += 1
                nxt = FAULT_MODES[n % len(FAULT_MODES)]
            try:
                snap = pod.fault_control(f"/_fault/mode?set={nxt}")
            except Exception as e:
                self.driver_error("fault mode switch", e)
                return
            t = self.now()
            served = snap["requests"] - req0
            if mode != "ok":
                self.window("fault", since, t)
                # what the fault pod answered in that phase (flaky503: every other one a 503)
                if mode == "503":
                    self.counts["503s injected (fault pod)"] += served
                elif mode == "flaky503":
                    self.counts["503s injected (fault pod)"] += (served + 1) // 2
                elif mode == "hang":
                    self.counts["stalls injected (fault pod, never answered)"] += served
                elif mode.startswith("slow"):
                    self.counts["slow answers injected (fault pod, 300 ms)"] += served
            if nxt != mode:
                self.counts["fault-pod mode changes"] += 1
                self.event("fault-mode", mode=nxt)
            mode, since, req0 = nxt, t, snap["requests"]
            if stopping or self.stop_traffic.is_set():
                return

    def discovery_loop(self) -> None:
        sets = self.discovery_sets()
        n = 0
        dead_since = None
        while not self.stop_chaos.wait(DISCOVERY_EVERY):
            if self.stop_traffic.is_set():
                return
            n += 1
            names = sets[n % len(sets)]
            try:
                self.write_discovery(names)
            except Exception as e:
                self.driver_error("discovery write", e)
                return
            t = self.now()
            self.counts["discovery changes (endpoints file rewritten)"] += 1
            has_dead = "dead" in names
            if has_dead and dead_since is None:
                dead_since = t
                self.counts["dead endpoints listed"] += 1
            elif not has_dead and dead_since is not None:
                self.window("dead", dead_since, t + 1.0)  # applied within one refresh (500 ms)
                dead_since = None
            self.event("discovery", endpoints=[n if isinstance(n, str) else f"{n[0]}*{n[1]}" for n in names])
        if dead_since is not None:
            self.window("dead", dead_since, self.now() + 1.0)

    def reload_loop(self) -> None:
        n = 0
        while not self.stop_chaos.wait(RELOAD_EVERY):
            if self.stop_traffic.is_set():
                return
            n += 1
            step = n % 4  # 0, 2: atomic rename; 1: in place, two writes 50 ms apart; 3: invalid
            variant = VARIANTS[n % len(VARIANTS)]
            targets = [(self.client, self.proxy_config("sidecar", variant)),
                       (self.node_a, self.proxy_config("node", variant)),
                       (self.node_b, self.node_b_config(n))]
            for mesh, cfg in targets:
                text = to_yaml(cfg)
                try:
                    if step == 3:
                        mesh.write_config(text + "bogusKey: 1\n")
                        self.counts["config rewrites: invalid (must be rejected)"] += 1
                    elif step == 1:
                        write_in_two_parts(mesh.config_path, text)
                        self.counts["config rewrites: valid, non-atomic"] += 1
                    else:
                        mesh.write_config(text)
                        self.counts["config rewrites: valid, atomic"] += 1
                except Exception as e:
                    self.driver_error(f"config write {mesh.name}", e)
                    return
                time.sleep(0.2)
            self.event("reload", step=["atomic", "non-atomic", "atomic", "invalid"][step], variant=n % len(VARIANTS))

    # -- sampling -----------------------------------------------------------------------------------------
    def sample_loop(self) -> None:
        while not self.stop_chaos.is_set():
            t = self.now()
            with self.meshd_lock:
                procs = list(self.meshds.values())
            for m in procs:
                s = proc_sample(m.pid)
                if s is None:
                    continue
                self.samples[m.name].append((round(t, 2), *s))
                life = self.lifetimes.setdefault(m.name, [t, t, m.pid])
                life[1] = t
            self.stop_chaos.wait(SAMPLE_EVERY)

    # -- end ------------------------------------------------------------------------------------------------
    def collect_metrics(self) -> dict:
        out = {}
        for m in (self.client, self.node_a, self.node_b):
            try:
                samples = parse_metrics(m.metrics_text())
            except Exception as e:
                self.problems.append(f"{m.name}: /metrics failed: {e}")
                continue

            def total(name, **labels):
                return int(sum(v for n, ls, v in samples
                               if n == name and all(ls.get(k) == val for k, val in labels.items())))

            def by(name, label):
                c = Counter()
                for n, ls, v in samples:
                    if n == name and v:
                        c[ls.get(label, "")] += int(v)
                return dict(sorted(c.items()))

            out[m.name] = {
                "requests": by("meshd_requests_total", "status_class"),
                "retries": total("meshd_retries_total"),
                "retries_skipped": by("meshd_retries_skipped_total", "cause"),
                "errors": by("meshd_errors_total", "kind"),
                "outlier_ejections": total("meshd_outlier_ejections_total"),
                "config_reloads": by("meshd_config_reloads_total", "result"),
                "config_version": total("meshd_config_version"),
                "discovery_updates": by("meshd_discovery_updates_total", "result"),
                "upgrades": total("meshd_upgrades_total"),
                "tcp_connections": total("meshd_tcp_connections_total"),
                "tcp_connect_failures": total("meshd_tcp_connect_failures_total"),
                "grpc_responses": by("meshd_grpc_responses_total", "code"),
                "connections_closed": by("meshd_connections_closed_total", "reason"),
            }
        return out

    def collect_fault_stats(self) -> dict:
        out = {}
        for name in ("fault", "stall"):
            try:
                out[name] = self.pods[name].fault_control("/_fault/stats")["requests"]
            except Exception as e:
                self.problems.append(f"{name} pod stats: {e}")
        return out

    def stop_all(self) -> dict:
        """SIGTERM every meshd at once (they drain), then everything else; → exit codes."""
        with self.meshd_lock:
            procs = list(self.meshds.values())
        for m in procs:
            if m.alive():
                m.signal(signal.SIGTERM)
        exits = {}
        for m in procs:
            rc = m.wait_exit(15)
            exits[m.name] = rc
            if rc is None:
                kill_group(m.proc)
        for pod in self.pods.values():
            if pod.app is not None:
                kill_group(pod.app)
        return exits

    # -- results -----------------------------------------------------------------------------------------
    def results(self, t_end: float, setup_s: float, metrics: dict, fault_stats: dict, exits: dict) -> dict:
        classified = self.rec.classify(self.windows)
        self.trace_failures(classified["failures"])
        if fault_stats.get("stall") is not None:
            self.counts["stalls injected (stall pod, never answered)"] = fault_stats["stall"]
        # memory and descriptors
        # Warm-up: a node proxy's anonymous memory rises for its first ~100 s of this traffic (allocator
        # arenas of its two loops, pools, caches) and then flattens — a 420 s run measured +530 kB in the
        # first 100 s, then 1.1 kB/s, then 0.4 kB/s — so the first window starts after 30 % of the run.
        warmup = min(max(0.3 * t_end, 15.0), 60.0)
        win = min(max(0.2 * t_end, 20.0), 60.0)
        first = (warmup, warmup + win)
        last = (t_end - win, t_end)
        procs = {}
        for name, ss in sorted(self.samples.items()):
            life = self.lifetimes.get(name, [0, 0, 0])
            whole_run = life[0] <= 5.0 and life[1] >= t_end - 3.0
            procs[name] = summarize_samples(ss, first, last, whole_run)
        for name, p in procs.items():
            if not p["whole_run"]:
                continue
            g = p["rss_growth"]  # (descriptors: see `quiesce`)
            grown_kb = (p["rss_last"] or 0) - (p["rss_first"] or 0)
            if g is not None and g > MAX_GROWTH and grown_kb > MIN_RSS_GROWTH_KB:
                self.problems.append(f"{name}: RSS grew {g * 100:.1f} % (first window median {p['rss_first']} kB, "
                                     f"last window median {p['rss_last']} kB)")
        for name, rc in exits.items():
            if rc not in (0,):
                self.problems.append(f"meshd {name} exit status after SIGTERM: {rc}")
        for m in ("client-sidecar", "node-a", "node-b"):
            cr = metrics.get(m, {}).get("config_reloads", {})
            if not cr.get("failed"):
                self.problems.append(f"{m}: no rejected reload counted ({cr})")
            if not cr.get("ok"):
                self.problems.append(f"{m}: no applied reload counted ({cr})")
        if t_end >= 30:  # the chaos must really have happened
            for what in ("pod restarts", "503s injected (fault pod)", "discovery changes (endpoints file rewritten)",
                         "config rewrites: valid, atomic", "config rewrites: invalid (must be rejected)"):
                if not self.counts.get(what):
                    self.problems.append(f"chaos did not happen: {what} = 0")
        kinds = classified["kinds"]
        for kind in [op for t, ops in OPERATIONS.items() if t not in self.skip for op in ops]:
            for placement in ("sidecar", "node"):
                k = kinds.get(kind, {}).get(placement)
                if not k or k["ok"] == 0:
                    self.problems.append(nothing_served(kind, placement, k))
        lost = sum(p["lost"] for k in kinds.values() for p in k.values())
        hangs = sum(p["hangs"] for k in kinds.values() for p in k.values())
        if lost:
            self.problems.append(f"{lost} requests lost")
        if hangs:
            self.problems.append(f"{hangs} requests hung")
        if self.driver_errors:
            self.problems.append(f"{len(self.driver_errors)} driver errors")
        total_ops = sum(p["requests"] for k in kinds.values() for p in k.values())
        cpu = {}
        for name in ("client-sidecar", "node-a", "node-b"):
            ss = self.samples.get(name) or []
            if len(ss) >= 2:
                cpu[name] = round((ss[-1][3] - ss[0][3]) / os.sysconf("SC_CLK_TCK"), 1)
        return {
            "pass": not self.problems,
            "problems": self.problems,
            "skipped_traffic": sorted(self.skip),
            "duration_s": round(t_end, 1),
            "setup_s": round(setup_s, 1),
            "warmup_s": round(warmup, 1),
            "windows_s": {"first": [round(x, 1) for x in first], "last": [round(x, 1) for x in last]},
            "operations": total_ops,
            "kinds": kinds,
            "failures": sample_failures(classified["failures"], 20),
            "expected_failures_by_cause": classified["expected_by_cause"],
            "faults": dict(sorted(self.counts.items())),
            "meshd": procs,
            "descriptors_quiet": self.quiet,
            "meshd_cpu_s": cpu,
            "meshd_exits": exits,
            "metrics": metrics,
            "driver_errors": self.driver_errors,
            "events": self.events,
        }


def nothing_served(kind: str, placement: str, k: dict | None) -> str:
    if not k:
        return f"{kind} via {placement}: no request made"
    return (f"{kind} via {placement}: none of {k['requests']} served (lost {k['lost']}, hung {k['hangs']}, "
            f"expected failures {k['expected']})")


def write_in_two_parts(path: Path, text: str) -> None:
    """A non-atomic writer (an editor mid-save): truncate, write the first half (cut at a line end, so
    it is itself a plausible but incomplete config), and the rest 50 ms later. meshd applies a changed
    file only when a second read 250 ms later agrees, so the half file must never be applied."""
    lines = text.splitlines(keepends=True)
    half = "".join(lines[: len(lines) // 2])
    with open(path, "w") as f:
        f.write(half)
        f.flush()
        time.sleep(0.05)
        f.write(text[len(half):])


def proc_sample(pid: int):
    """(anonymous RSS kB, open descriptors, utime+stime ticks) of a process, None if it is gone.

    RssAnon, not VmRSS: meshd drops its executable's code pages from its resident set after start and
    they fault back in as code runs (shared page cache, not memory meshd holds); a leak shows in the
    anonymous part."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    rss = int(line.split()[1])
                    break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return rss, fds, int(fields[11]) + int(fields[12])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def fd_count(pid: int):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def describe_sockets(pid: int) -> str:
    """The process's TCP sockets as `ss` shows them (state, local and peer address), for a leak report."""
    try:
        out = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"(ss failed: {e})"
    mine = [" ".join(line.split()[:5]) for line in out.splitlines() if f"pid={pid}," in line]
    return "\n".join(mine[:40]) + (f"\n… {len(mine) - 40} more" if len(mine) > 40 else "")


def summarize_samples(ss: list, first: tuple, last: tuple, whole_run: bool) -> dict:
    def med(idx, lo, hi):
        vals = [s[idx] for s in ss if lo <= s[0] <= hi]
        return statistics.median(vals) if vals else None

    out = {"whole_run": whole_run, "samples": len(ss)}
    for key, idx in (("rss", 1), ("fds", 2)):
        a, b = med(idx, *first), med(idx, *last)
        out[f"{key}_start"] = ss[0][idx] if ss else None
        out[f"{key}_end"] = ss[-1][idx] if ss else None
        out[f"{key}_max"] = max(s[idx] for s in ss) if ss else None
        out[f"{key}_first"] = a
        out[f"{key}_last"] = b
        out[f"{key}_growth"] = round(b / a - 1, 4) if (a and b is not None and whole_run) else None
        # The floor of each window: connections open for a moment raise a median, a leak raises the floor.
        lo_a = min((s[idx] for s in ss if first[0] <= s[0] <= first[1]), default=None)
        lo_b = min((s[idx] for s in ss if last[0] <= s[0] <= last[1]), default=None)
        out[f"{key}_floor_first"], out[f"{key}_floor_last"] = lo_a, lo_b
    return out


# --------------------------------------------------------------------------------------------
# Recording and classifying outcomes


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = Counter()        # (kind, placement) → n
        self.failed: list[dict] = []
        self.latency: dict[tuple, list] = defaultdict(list)
        self.bad_inputs = Counter()

    def success(self, kind: str, placement: str, t0: float, t1: float) -> None:
        with self.lock:
            self.ok[(kind, placement)] += 1
            self.latency[(kind, placement)].append(t1 - t0)

    def failure(self, kind: str, placement: str, t0: float, t1: float, error: str, *, retryable: bool,
                hang: bool = False, faultlike: bool = True) -> None:
        """`faultlike`: what an injected fault can cause (an error status, a cut connection); a wrong
        answer (damaged content, a protocol violation, an unexpected status) never is."""
        with self.lock:
            self.failed.append({"kind": kind, "placement": placement, "t0": round(t0, 3), "t1": round(t1, 3),
                                "error": error[:300], "retryable": retryable, "hang": hang, "faultlike": faultlike})

    def stuck(self, worker: str, kind: str, placement: str, since: float) -> None:
        self.failure(kind or worker, placement, since, since, f"worker {worker} still in an operation after "
                     f"the run (client timeouts did not fire)", retryable=True, hang=True)

    def progress(self) -> str:
        with self.lock:
            ok = sum(self.ok.values())
            f = len(self.failed)
            h = sum(1 for x in self.failed if x["hang"])
        return f"ok={ok} failed={f} (hangs={h})"

    def classify(self, windows: list) -> dict:
        """A failure is a hang, lost (retryable, a wrong answer, or nothing explains it) or expected (not
        retryable, fault-like, and a fault of a kind in EXPLAINED_BY[kind] overlapped it, with GRACE s
        after the fault)."""
        kinds: dict = defaultdict(dict)
        with self.lock:
            keys = set(self.ok) | {(f["kind"], f["placement"]) for f in self.failed}
            for kind, placement in keys:
                lat = sorted(self.latency.get((kind, placement), []))
                kinds[kind][placement] = {"requests": 0, "ok": self.ok[(kind, placement)], "expected": 0,
                                          "lost": 0, "hangs": 0,
                                          "p50_ms": pctl(lat, 0.5), "p99_ms": pctl(lat, 0.99),
                                          "max_ms": round(lat[-1] * 1000, 1) if lat else None}
            failures = []
            by_cause = Counter()
            for f in self.failed:
                k = kinds[f["kind"]][f["placement"]]
                if f["hang"]:
                    f["class"] = "hang"
                    k["hangs"] += 1
                elif f["retryable"] or not f["faultlike"]:
                    f["class"] = "lost"
                    k["lost"] += 1
                else:
                    causes = [w for w in windows if w[0] in EXPLAINED_BY.get(f["kind"], ())
                              and w[1] - 0.1 <= f["t1"] and f["t0"] <= w[2] + GRACE]
                    if causes:
                        f["class"] = "expected"
                        f["explained_by"] = sorted({c[0] for c in causes})
                        k["expected"] += 1
                        by_cause[f"{f['kind']}: {'+'.join(f['explained_by'])}"] += 1
                    else:
                        f["class"] = "lost"
                        k["lost"] += 1
                failures.append(f)
            for kind in kinds.values():
                for p in kind.values():
                    p["requests"] = p["ok"] + p["expected"] + p["lost"] + p["hangs"]
        # the report lists what needs attention first
        order = {"hang": 0, "lost": 1, "expected": 2}
        failures.sort(key=lambda f: (order[f["class"]], f["t0"]))
        return {"kinds": {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())}, "failures": failures,
                "expected_by_cause": dict(sorted(by_cause.items()))}


def sample_failures(failures: list, per_group: int) -> list:
    """The first `per_group` failures of every (kind, placement, class), so a rare kind of failure is
    never hidden behind a flood of another."""
    seen = Counter()
    out = []
    for f in failures:
        key = (f["kind"], f["placement"], f["class"])
        if seen[key] < per_group:
            seen[key] += 1
            out.append(f)
    return out


def pctl(sorted_vals: list, q: float):
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return round(sorted_vals[i] * 1000, 1)


# --------------------------------------------------------------------------------------------
# Traffic workers: each a thread doing one operation every `interval` seconds (no catch-up bursts)


class Worker(threading.Thread):
    kind = "?"

    def __init__(self, soak: Soak, placement: str, interval: float, rng: random.Random, name: str):
        super().__init__(name=name, daemon=True)
        self.soak = soak
        self.placement = placement
        self.interval = interval
        self.rng = rng
        self.entry = soak.entries[placement]
        self.source = self.entry["source"]
        self.kind_now = ""
        self.op_start = 0.0
        self.ops = 0
        self.rid = ""  # the x-request-id of the operation under way (HTTP/1.1 and WebSocket), for the report

    def new_rid(self) -> str:
        self.rid = f"soak-{self.name}-{self.ops}"
        return self.rid

    def src(self):
        return (self.source, 0) if self.source else None

    def run(self):
        nxt = time.monotonic() + self.rng.random() * self.interval  # spread the workers' phases
        while not self.soak.stop_traffic.is_set():
            delay = nxt - time.monotonic()
            if delay > 0 and self.soak.stop_traffic.wait(delay):
                break
            self.op_start = self.soak.now()
            self.ops += 1
            self.rid = ""
            try:
                self.once()
            except Exception as e:  # a bug of the driver, not of meshd: reported separately
                self.soak.driver_error(self.name, e)
                self.reset()
            self.kind_now = ""
            nxt += self.interval
            if nxt < time.monotonic():
                nxt = time.monotonic()
        self.reset()

    def ok(self, kind, t0):
        self.soak.rec.success(kind, self.placement, t0, self.soak.now())

    def fail(self, kind, t0, error, *, retryable, hang=False, faultlike=True):
        if self.rid:
            error = f"{error} [x-request-id {self.rid}]"
        self.soak.rec.failure(kind, self.placement, t0, self.soak.now(), error, retryable=retryable, hang=hang,
                              faultlike=faultlike)

    def once(self):
        raise NotImplementedError

    def reset(self):
        pass


WEB_NAMES = {"web-1", "web-2", "web-3", "web-4", "fault"}


def check_web_answer(status: int, hdrs: dict, body: bytes, post_body: bytes | None) -> tuple[str | None, bool]:
    """(None, _) if this is a right answer of the web service, else (what is wrong, whether an injected
    fault can cause it: a 502, 503 or 504)."""
    who = hdrs.get("x-backend", "")
    if status != 200:
        return f"status {status} x-meshd-error={hdrs.get('x-meshd-error')} x-backend={who or '-'}", status in (502, 503, 504)
    if who not in WEB_NAMES:
        return f"200 from unknown backend {who!r}", False
    if post_body is None or who == "fault":  # the fault pod answers its name to everything
        return (None if body == f"{who}\n".encode() else f"wrong body from {who}: {body[:80]!r}"), False
    try:
        got = json.loads(body)
    except ValueError:
        return f"not JSON from {who}: {body[:80]!r}", False
    if got.get("sha256") != hashlib.sha256(post_body).hexdigest() or got.get("bytes") != len(post_body):
        return f"request body damaged on the way to {who}: {got}", False
    return None, True


class Http1Worker(Worker):
    """HTTP/1.1 keep-alive: GET / (90 %) and POST /echo-hash with a 2 KiB body (10 %) to `web`."""

    conn: http.client.HTTPConnection | None = None

    def once(self):
        post = self.rng.random() < 0.1
        kind = "http1-post" if post else "http1-get"
        self.kind_now = kind
        body = self.rng.randbytes(2048) if post else None
        t0 = self.soak.now()
        started = False  # the response head arrived
        try:
            if self.conn is None:
                host, port = self.entry["http"]
                self.conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT, source_address=self.src())
            if post:
                self.conn.request("POST", "/echo-hash", body=body,
                                  headers={"Host": "web", "Content-Type": "application/octet-stream",
                                           "x-request-id": self.new_rid()})
            else:
                self.conn.request("GET", "/", headers={"Host": "web", "x-request-id": self.new_rid()})
            r = self.conn.getresponse()
            started = True
            data = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
            if r.will_close:
                self.reset()
        except socket.timeout:
            self.reset()
            self.fail(kind, t0, f"no answer within {CLIENT_TIMEOUT}s", retryable=not post, hang=True)
            return
        except (OSError, http.client.HTTPException) as e:
            self.reset()
            # A response cut after its head arrived cannot be retried by any proxy (the head has been
            # forwarded): like a stream cut after messages flowed, a pod killed with its sidecar
            # mid-response explains it.
            self.fail(kind, t0, f"{type(e).__name__}: {e}", retryable=not post and not started)
            return
        problem, faultlike = check_web_answer(r.status, hdrs, data, body)
        if problem:
            self.fail(kind, t0, problem, retryable=not post, faultlike=faultlike)
        else:
            self.ok(kind, t0)

    def reset(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class H2Client:
    """A small h2c (prior knowledge) client on the `h2` package: one connection, batches of concurrent
    streams, every batch bounded by a deadline."""

    def __init__(self, addr, source):
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(addr, timeout=CLIENT_TIMEOUT, source_address=source)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.dead = False

    def batch(self, reqs: list[tuple], timeout: float) -> list[dict]:
        """reqs: [(method, path, body | None)] → per request {"status", "headers", "body", "error", "hang"}."""
        import h2.events
        import h2.exceptions

        res = {}
        for method, path, body in reqs:
            sid = self.conn.get_next_available_stream_id()
            hdrs = [(":method", method), (":scheme", "http"), (":path", path), (":authority", "web")]
            if body is not None:
                hdrs += [("content-type", "application/octet-stream"), ("content-length", str(len(body)))]
            self.conn.send_headers(sid, hdrs, end_stream=body is None)
            if body is not None:
                self.conn.send_data(sid, body, end_stream=True)
            res[sid] = {"status": None, "headers": {}, "body": b"", "error": None, "hang": False, "done": False}
        self.sock.sendall(self.conn.data_to_send())
        deadline = time.monotonic() + timeout
        while not all(r["done"] for r in res.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                for r in res.values():
                    if not r["done"]:
                        r.update(done=True, hang=True, error=f"stream not ended within {timeout}s")
                self.dead = True
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError as e:
                data, err = b"", f"{type(e).__name__}: {e}"
            else:
                err = "connection closed by meshd"
            if not data:
                for r in res.values():
                    if not r["done"]:
                        r.update(done=True, error=err)
                self.dead = True
                break
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:  # meshd sent something HTTP/2 forbids
                for r in res.values():
                    if not r["done"]:
                        r.update(done=True, invalid=True, error=f"invalid HTTP/2 from meshd: {type(e).__name__}: {e}")
                self.dead = True
                break
            for ev in events:
                r = res.get(getattr(ev, "stream_id", None))
                if isinstance(ev, h2.events.ResponseReceived) and r:
                    r["headers"] = dict(ev.headers)
                    r["status"] = int(r["headers"].get(":status", 0))
                elif isinstance(ev, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if r:
                        r["body"] += ev.data
                elif isinstance(ev, h2.events.StreamEnded) and r:
                    r["done"] = True
                elif isinstance(ev, h2.events.StreamReset) and r:
                    r.update(done=True, error=f"RST_STREAM {ev.error_code!r}")
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    self.dead = True
                    for sid, r2 in res.items():
                        if not r2["done"] and (ev.last_stream_id is None or sid > ev.last_stream_id):
                            r2.update(done=True, error=f"GOAWAY {ev.error_code!r} last_stream_id={ev.last_stream_id}")
            out = self.conn.data_to_send()
            if out:
                self.sock.sendall(out)
        return [res[s] for s in sorted(res)]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class H2Worker(Worker):
    """HTTP/2 (h2c prior knowledge): batches of 4 concurrent streams on one connection to `web`, GET /
    (90 %) and POST /echo-hash with 2 KiB (10 %)."""

    client: H2Client | None = None

    def once(self):
        self.kind_now = "h2-get"
        reqs = []
        for _ in range(4):
            if self.rng.random() < 0.1:
                reqs.append(("POST", "/echo-hash", self.rng.randbytes(2048)))
            else:
                reqs.append(("GET", "/", None))
        t0 = self.soak.now()
        try:
            if self.client is None:
                self.client = H2Client(self.entry["http"], self.src())
            out = self.client.batch(reqs, CLIENT_TIMEOUT)
        except socket.timeout:
            out = [{"error": "connect timeout", "hang": True}] * len(reqs)
            self.reset()
        except OSError as e:
            out = [{"error": f"{type(e).__name__}: {e}", "hang": False}] * len(reqs)
            self.reset()
        for (method, _, body), r in zip(reqs, out):
            kind = "h2-post" if method == "POST" else "h2-get"
            if r["error"]:
                self.fail(kind, t0, r["error"], retryable=method == "GET", hang=r["hang"],
                          faultlike=not r.get("invalid"))
                continue
            hdrs = {k: v for k, v in r["headers"].items() if not k.startswith(":")}
            problem, faultlike = check_web_answer(r["status"], hdrs, r["body"], body)
            if problem:
                self.fail(kind, t0, problem, retryable=method == "GET", faultlike=faultlike)
            else:
                self.ok(kind, t0)
        if self.client is not None and self.client.dead:
            self.reset()

    def reset(self):
        if self.client is not None:
            self.client.close()
            self.client = None


class GrpcWorker(Worker):
    """Shared: a grpcio channel to the placement's entry (`:authority` grpc), no client-side retries."""

    _channels: dict = {}
    _lock = threading.Lock()

    def stub(self):
        import grpc
        import grpc_proto

        pb2, pb2_grpc = grpc_proto.load()
        with GrpcWorker._lock:
            key = (id(self.soak), self.placement)
            if key not in GrpcWorker._channels:
                host, port = self.entry["http"]
                ch = grpc.insecure_channel(f"{host}:{port}", options=[
                    ("grpc.default_authority", "grpc"),
                    ("grpc.enable_http_proxy", 0),
                    ("grpc.enable_retries", 0),  # every status seen is the one meshd sent
                ])
                GrpcWorker._channels[key] = (ch, pb2_grpc.EchoStub(ch))
            return pb2, GrpcWorker._channels[key][1]

    @staticmethod
    def close_channels(soak):
        with GrpcWorker._lock:
            for key in [k for k in GrpcWorker._channels if k[0] == id(soak)]:
                GrpcWorker._channels.pop(key)[0].close()

    def grpc_failure(self, kind, t0, e, *, got_messages: bool):
        import grpc

        code = e.code() if hasattr(e, "code") else None
        hang = code == grpc.StatusCode.DEADLINE_EXCEEDED
        md = {}
        try:
            for k, v in (e.trailing_metadata() or ()):
                md[k] = v
        except Exception:
            pass
        details = e.details() if hasattr(e, "details") else str(e)
        err = f"{code} {details} x-meshd-error={md.get('x-meshd-error')}"
        # Not retryable once the endpoint had started its response (meshd's reason says so): the request
        # stream was already consumed there, so no proxy can replay it — like a GET cut after its head,
        # it then needs an overlapping fault of its kind (a killed gRPC pod) to count as expected.
        started = "closed mid-response" in details
        self.fail(kind, t0, err, retryable=not got_messages and not started, hang=hang)


class GrpcUnaryWorker(GrpcWorker):
    def once(self):
        import grpc

        kind = self.kind_now = "grpc-unary"
        pb2, stub = self.stub()
        payload = self.rng.randbytes(self.rng.randrange(16, 1024))
        seq = self.rng.randrange(1 << 30)
        t0 = self.soak.now()
        try:
            r = stub.Unary(pb2.Msg(payload=payload, seq=seq), timeout=GRPC_DEADLINE)
        except grpc.RpcError as e:
            self.grpc_failure(kind, t0, e, got_messages=False)
            return
        if r.payload != payload or r.seq != seq:
            self.fail(kind, t0, "unary reply differs from the request", retryable=True, faultlike=False)
        else:
            self.ok(kind, t0)


class GrpcServerStreamWorker(GrpcWorker):
    """ServerStream: 20 messages of 128 bytes, 20 ms apart; each checked (seq and content)."""

    def once(self):
        import grpc
        import grpc_proto

        kind = self.kind_now = "grpc-server-stream"
        pb2, stub = self.stub()
        count, size = 20, 128
        t0 = self.soak.now()
        got = 0
        try:
            for m in stub.ServerStream(pb2.StreamRequest(count=count, size=size, delay_ms=20), timeout=GRPC_DEADLINE):
                if m.seq != got or m.payload != grpc_proto.pattern(got, size):
                    self.fail(kind, t0, f"message {got} wrong (seq {m.seq})", retryable=False, faultlike=False)
                    return
                got += 1
        except grpc.RpcError as e:
            self.grpc_failure(kind, t0, e, got_messages=got > 0)
            return
        if got != count:
            self.fail(kind, t0, f"stream ended OK after {got} of {count} messages", retryable=False, faultlike=False)
        else:
            self.ok(kind, t0)


class GrpcBidiWorker(GrpcWorker):
    """Bidi ping-pong: 10 messages, each sent only after the previous echo came back (as an interactive
    client does), so nothing in between may hold the responses back."""

    def once(self):
        import grpc

        kind = self.kind_now = "grpc-bidi"
        pb2, stub = self.stub()
        q: queue.Queue = queue.Queue()
        done = threading.Event()

        def requests():
            while True:
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    if done.is_set():
                        return
                    continue
                if item is None:
                    return
                yield item

        t0 = self.soak.now()
        got = 0
        call = None
        try:
            call = stub.Bidi(requests(), timeout=GRPC_DEADLINE)
            for i in range(10):
                payload = self.rng.randbytes(self.rng.randrange(8, 512))
                q.put(pb2.Msg(payload=payload, seq=i))
                m = next(call)
                if m.seq != i or m.payload != payload:
                    self.fail(kind, t0, f"echo {i} differs", retryable=False, faultlike=False)
                    call.cancel()
                    return
                got += 1
            q.put(None)
            for _ in call:
                self.fail(kind, t0, "a message after the last echo", retryable=False, faultlike=False)
                return
        except grpc.RpcError as e:
            self.grpc_failure(kind, t0, e, got_messages=got > 0)
            return
        except StopIteration:
            self.fail(kind, t0, f"stream ended after {got} echoes", retryable=got == 0)
            return
        finally:
            done.set()
        self.ok(kind, t0)


class WebSocketWorker(Worker):
    """A WebSocket session to `ws`: 10 messages (text and binary, up to 4 KiB), each echoed, then close."""

    def once(self):
        from websockets.exceptions import InvalidHandshake, WebSocketException
        from websockets.sync.client import connect

        kind = self.kind_now = "websocket"
        t0 = self.soak.now()
        opened = False
        sock = None
        try:
            sock = socket.create_connection(self.entry["http"], timeout=CLIENT_TIMEOUT, source_address=self.src())
            with connect("ws://ws/", sock=sock, open_timeout=CLIENT_TIMEOUT, close_timeout=5, ping_interval=None,
                         compression=None, max_size=1 << 20,
                         additional_headers={"x-request-id": self.new_rid()}) as ws:
                opened = True
                for i in range(10):
                    n = self.rng.randrange(1, 4096)
                    msg = self.rng.randbytes(n) if i % 2 else "".join(self.rng.choice("abcdef\u20ac ") for _ in range(n // 3 + 1))
                    ws.send(msg)
                    back = ws.recv(timeout=CLIENT_TIMEOUT)
                    if back != msg:
                        self.fail(kind, t0, f"echo {i} differs", retryable=False, faultlike=False)
                        return
                    time.sleep(0.05)
        except TimeoutError as e:
            self.fail(kind, t0, f"timeout ({'session' if opened else 'handshake'}): {e}", retryable=not opened, hang=True)
            return
        except (InvalidHandshake, WebSocketException, OSError) as e:
            if isinstance(e, socket.timeout):
                self.fail(kind, t0, f"socket timeout: {e}", retryable=not opened, hang=True)
                return
            self.fail(kind, t0, f"{'session' if opened else 'handshake'}: {type(e).__name__}: {e}", retryable=not opened)
            return
        finally:
            if sock is not None:
                sock.close()
        self.ok(kind, t0)


class TcpWorker(Worker):
    """An opaque TCP session through the tcp service: 10 blocks of 1 KiB, each echoed, then a half-close
    answered by a half-close. meshd does not retry opaque connects, so a failure is never retryable."""

    def once(self):
        kind = self.kind_now = "tcp"
        t0 = self.soak.now()
        s = None
        try:
            s = socket.create_connection(self.entry["tcp"], timeout=CLIENT_TIMEOUT, source_address=self.src())
            for i in range(10):
                block = b"\x00soak" + self.rng.randbytes(1019)  # a NUL first: detected as opaque at once
                s.sendall(block)
                got = b""
                while len(got) < len(block):
                    chunk = s.recv(len(block) - len(got))
                    if not chunk:
                        self.fail(kind, t0, f"closed by meshd after {i} echoes", retryable=False)
                        return
                    got += chunk
                if got != block:
                    self.fail(kind, t0, f"echo {i} differs", retryable=False, faultlike=False)
                    return
                time.sleep(0.05)
            s.shutdown(socket.SHUT_WR)
            rest = s.recv(1)
            if rest != b"":
                self.fail(kind, t0, f"bytes after the echo: {rest!r}", retryable=False, faultlike=False)
                return
        except socket.timeout:
            self.fail(kind, t0, f"no echo / EOF within {CLIENT_TIMEOUT}s", retryable=False, hang=True)
            return
        except OSError as e:
            self.fail(kind, t0, f"{type(e).__name__}: {e}", retryable=False)
            return
        finally:
            if s is not None:
                s.close()
        self.ok(kind, t0)


class StallWorker(Worker):
    """GET to `stall`, whose only pod never answers: meshd must answer 504 upstream-timeout at the route
    timeout (0.5 s)."""

    conn: http.client.HTTPConnection | None = None

    def once(self):
        kind = self.kind_now = "stall-504"
        t0 = self.soak.now()
        started = False  # the response head arrived
        try:
            if self.conn is None:
                host, port = self.entry["http"]
                self.conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT, source_address=self.src())
            self.conn.request("GET", "/", headers={"Host": "stall"})
            r = self.conn.getresponse()
            r.read()
            err = r.getheader("x-meshd-error")
            if r.will_close:
                self.reset()
        except socket.timeout:
            self.reset()
            self.fail(kind, t0, f"no answer within {CLIENT_TIMEOUT}s", retryable=True, hang=True)
            return
        except (OSError, http.client.HTTPException) as e:
            self.reset()
            self.fail(kind, t0, f"{type(e).__name__}: {e}", retryable=True)
            return
        if r.status == 504 and err == "upstream-timeout":
            self.ok(kind, t0)
        else:
            self.fail(kind, t0, f"expected 504 upstream-timeout, got {r.status} {err}", retryable=True)

    def reset(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# Malformed requests with a definite answer (issue 15: smuggling variants, oversized head, HTTP/0.9,
# random bytes) → the status meshd must answer with.
BAD_INPUTS = [
    ("cl-te", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-cl", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    ("two-content-lengths", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: web\r\nHost: evil\r\n\r\n", 400),
    ("negative-content-length", b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: -1\r\n\r\n", 400),
    ("head-over-64KiB", b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    ("http/0.9", b"GET /\r\n\r\n", 400),
    ("random-bytes", bytes(random.Random(15).randrange(1, 256) for _ in range(600)), 400),
]


class BadInputWorker(Worker):
    """One malformed request on a fresh connection; the answer must be the documented status."""

    n = 0

    def once(self):
        kind = self.kind_now = "bad-input"
        name, payload, want = BAD_INPUTS[self.n % len(BAD_INPUTS)]
        self.n += 1
        t0 = self.soak.now()
        try:
            got, _, _ = meshlib.raw_exchange(self.entry["http"], payload, timeout=CLIENT_TIMEOUT, source=self.source,
                                             read_until_close=False)
        except OSError as e:
            self.fail(kind, t0, f"{name}: {type(e).__name__}: {e}", retryable=True)
            return
        m = re.match(rb"HTTP/1\.1 (\d{3})", got)
        if not m:
            hang = self.soak.now() - t0 >= CLIENT_TIMEOUT - 0.5
            self.fail(kind, t0, f"{name}: no answer ({got[:60]!r})", retryable=True, hang=hang)
        elif int(m.group(1)) != want:
            self.fail(kind, t0, f"{name}: got {m.group(1).decode()}, want {want}", retryable=True)
        else:
            self.soak.rec.bad_inputs[name] += 1
            self.ok(kind, t0)


WORKERS = {c.__name__: c for c in (Http1Worker, H2Worker, GrpcUnaryWorker, GrpcServerStreamWorker, GrpcBidiWorker,
                                   WebSocketWorker, TcpWorker, StallWorker, BadInputWorker)}


# --------------------------------------------------------------------------------------------
# Entry points


def run(duration: float, workdir: Path, meshd_bin: str | None = None, skip=()) -> dict:
    """Run one soak of `duration` seconds in `workdir`; every process is stopped before it returns.
    The meshd binary is copied into workdir first, so a rebuild during the run cannot swap it."""
    src = meshd_bin or meshlib.meshd_bin()
    workdir.mkdir(parents=True, exist_ok=True)
    binary = workdir / "meshd"
    shutil.copy2(src, binary)
    old = os.environ.get("MESHD_BIN")
    os.environ["MESHD_BIN"] = str(binary)
    unknown = set(skip) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown traffic kinds {sorted(unknown)}; known: {', '.join(OPERATIONS)}")
    soak = Soak(workdir, duration, skip=frozenset(skip))
    try:
        res = soak.run()
    finally:
        GrpcWorker.close_channels(soak)
        with soak.meshd_lock:
            procs = list(soak.meshds.values())
        for m in procs:
            kill_group(m.proc)
        for pod in soak.pods.values():
            if pod.app is not None:
                kill_group(pod.app)
        if old is None:
            os.environ.pop("MESHD_BIN", None)
        else:
            os.environ["MESHD_BIN"] = old
    res["meshd_bin"] = src
    res["meshd_sha256"] = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    binary.unlink()  # 150 MB; the hash identifies it
    res["bad_inputs"] = dict(soak.rec.bad_inputs)
    return res


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def report(res: dict) -> str:
    """The markdown summary (also what bench/soak.sh --update-docs puts into docs/reliability.md)."""
    d = res["duration_s"]
    out = [f"Run: {d:.0f} s (+{res['setup_s']:.0f} s setup), {res['operations']} operations; "
           f"meshd `{res['meshd_sha256']}`; result: **{'PASS' if res['pass'] else 'FAIL'}**"
           + (f" (traffic left out: {', '.join(res['skipped_traffic'])})" if res["skipped_traffic"] else ""), ""]
    out += ["| traffic | placement | requests | per s | ok | expected failures | lost | hangs | p50 ms | p99 ms | max ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind in EXPECTED_KINDS:
        for placement in ("sidecar", "node"):
            k = res["kinds"].get(kind, {}).get(placement)
            if not k and any(kind in OPERATIONS[t] for t in res["skipped_traffic"]):
                continue
            if not k:
                out.append(f"| {kind} | {placement} | 0 | | | | | | | | |")
                continue
            out.append(f"| {kind} | {placement} | {k['requests']} | {k['requests'] / d:.1f} | {k['ok']} | "
                       f"{k['expected']} | {k['lost']} | {k['hangs']} | {fmt(k['p50_ms'])} | {fmt(k['p99_ms'])} | "
                       f"{fmt(k['max_ms'])} |")
    out += ["", "| fault injected | count |", "|---|---:|"]
    out += [f"| {k} | {v} |" for k, v in res["faults"].items()]
    m = res["metrics"]
    out += ["", "| what meshd counted | client sidecar | node-a | node-b |", "|---|---|---|---|"]
    rows = [("retries", "retries"), ("retries skipped (cause)", "retries_skipped"),
            ("outlier ejections", "outlier_ejections"), ("errors answered (kind)", "errors"),
            ("config reloads (result)", "config_reloads"), ("discovery updates (result)", "discovery_updates"),
            ("WebSocket upgrades", "upgrades"), ("opaque TCP connections / connect failures", None),
            ("gRPC responses (code)", "grpc_responses")]
    for label, key in rows:
        cells = []
        for name in ("client-sidecar", "node-a", "node-b"):
            mm = m.get(name, {})
            if key is None:
                cells.append(f"{mm.get('tcp_connections', 0)} / {mm.get('tcp_connect_failures', 0)}")
            else:
                v = mm.get(key)
                cells.append(", ".join(f"{a or '-'}: {b}" for a, b in v.items()) if isinstance(v, dict) else str(v))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if res["expected_failures_by_cause"]:
        out += ["", "Expected failures (not retryable, an injected fault of their kind overlapped them): "
                + "; ".join(f"{k} {v}" for k, v in res["expected_failures_by_cause"].items()) + "."]
    w = res["windows_s"]
    out += ["", f"Memory and descriptors of every meshd that lived through the run (warm-up {res['warmup_s']:.0f} s; "
            f"medians over {w['first'][0]:.0f}–{w['first'][1]:.0f} s and {w['last'][0]:.0f}–{w['last'][1]:.0f} s):", "",
            "| meshd | RSS start MiB | RSS first window | RSS last window | RSS growth | RSS max | fds start | fds first | fds last | fds growth | fds max |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def mib(kb):
        return "–" if kb is None else f"{kb / 1024:.1f}"

    def pc(g):
        return "–" if g is None else f"{g * 100:+.1f} %"

    for name, p in res["meshd"].items():
        if not p["whole_run"]:
            continue
        out.append(f"| {name} | {mib(p['rss_start'])} | {mib(p['rss_first'])} | {mib(p['rss_last'])} | {pc(p['rss_growth'])} | "
                   f"{mib(p['rss_max'])} | {p['fds_start']} | {fmt(p['fds_first'])} | {fmt(p['fds_last'])} | "
                   f"{pc(p['fds_growth'])} | {p['fds_max']} |")
    q = res.get("descriptors_quiet") or {}
    if q:
        out += ["", "Descriptors before the traffic and once it stopped and pooled connections idled out: " + ", ".join(
            f"{n} {v['before']} → {v['after']}" for n, v in q.items()) + f" (after {max(v['waited_s'] for v in q.values()):.0f} s)."]
    restarted = [n for n, p in res["meshd"].items() if not p["whole_run"]]
    if restarted:
        out += ["", f"Sidecars killed with their pod and restarted (not judged for growth): {len(restarted)} incarnations."]
    if res["meshd_cpu_s"]:
        ops = max(res["operations"], 1)
        out += ["", "CPU of the shared proxies over the run: " + ", ".join(
            f"{k} {v:.1f} s ({v / ops * 1000:.2f} s per 1000 operations)" for k, v in res["meshd_cpu_s"].items()) + "."]
    if res["problems"]:
        out += ["", "Problems:", ""] + [f"- {p}" for p in res["problems"]]
    bad = sample_failures([f for f in res["failures"] if f["class"] != "expected"], 2)
    if bad:
        out += ["", "First lost / hung requests (at most two of each kind, placement and verdict):", ""]
        for f in bad:
            out.append(f"- t={f['t0']:.1f}–{f['t1']:.1f}s {f['kind']} via {f['placement']} ({f['class']}): {f['error']}")
            out += [f"  - {t}" for t in f.get("trace", [])]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", 600)))
    ap.add_argument("--out", type=Path, help="directory for results.json, report.md and the logs (default: a temp dir)")
    ap.add_argument("--meshd", help="meshd binary (default MESHD_BIN, else .build/release/meshd)")
    ap.add_argument("--skip", default=os.environ.get("SKIP", ""),
                    help=f"comma-separated traffic kinds to leave out, to narrow a failure down ({', '.join(OPERATIONS)})")
    args = ap.parse_args()
    if not 10 <= args.duration <= 24 * 3600:
        ap.error("--duration must be 10 s … 24 h")
    for mod, pkg in (("grpc", "grpcio"), ("grpc_tools", "grpcio-tools"), ("h2", "h2"), ("websockets", "websockets")):
        try:
            __import__(mod)
        except ImportError:
            sys.exit(f"soak: Python package {pkg!r} is missing (pip install -r tests/e2e/requirements.txt)")
    out = args.out
    if out is None:
        import tempfile

        out = Path(tempfile.mkdtemp(prefix="meshd-soak."))
    out.mkdir(parents=True, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        res = run(args.duration, out / "run", args.meshd, skip=[k for k in args.skip.split(",") if k])
    except KeyboardInterrupt:
        log("interrupted; every process stopped")
        meshlib.REGISTRY.kill_all()
        return 130
    finally:
        meshlib.REGISTRY.kill_all()
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    text = report(res)
    (out / "report.md").write_text(text)
    print(text)
    log(f"results: {out / 'results.json'}, report: {out / 'report.md'}, logs: {out / 'run'}")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
