#!/usr/bin/env python3
"""Instructions per request for request shapes the throughput benchmarks do not exercise, under
callgrind (repeatable to about 1 %, unlike time on this machine).

    bench/shapes.py [--update-docs]     (N=20000; MESHD_BIN default .build/release/meshd)

The throughput benchmarks send one shape: a bare GET through one route, no access log. Real traffic
brings request bodies with a content type, browser and ingress fields, a node proxy's table of a
route per service, an access log, and node-proxy hops. Each shape here is HTTP/1.1 through a meshd
sidecar's outbound listener (`threads: 1`) to one nginx worker unless it says otherwise, driven by
`h2load --h1 -c 10` (N requests after 2 000 to warm up, counters zeroed in between, all threads
counted):

- `get`: `GET /` — the benchmarks' shape, for reference;
- `traced`: a REST `GET` (`/api/v1/users/12345/orders?limit=10&offset=20`) carrying `traceparent`
  and `x-request-id`, as every request between two meshd and every traced request does;
- `post-json`: `POST /` with `content-type: application/json` and a 22-byte body;
- `browser`: `GET /` with the 12 fields a browser behind an ingress sends (user-agent, accept,
  accept-language, accept-encoding, cookie, referer, authorization, x-forwarded-for...);
- `routes-200`: `GET /` to the host of the last of 200 routes, one per service host (a node proxy's
  table), a catch-all after them;
- `access-log`: `GET /` with `accessLog` writing to a file;
- `node-inbound`: `GET /` to a node proxy's inbound listener with `x-meshd-dst` naming the backend;
- `grpc`: a gRPC-shaped unary call over h2c (`bench/h2design.py`'s: h2load 10 connections × 10
  streams, one upstream connection).

HAProxy (nbthread 1, one server, keep-alive) runs the four shapes it can serve alike (`get`,
`traced`, `post-json`, `browser`) under the same client, for scale."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2design
from benchlib import free_port, grpc_locations, require, start, start_backend, stop, stop_all, update_doc_section, wait_port

ROOT = Path(__file__).resolve().parent.parent
MESHD = os.environ.get("MESHD_BIN", str(ROOT / ".build/release/meshd"))
N = int(os.environ.get("N", "20000"))

BROWSER = [
    "user-agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "accept-language: en-US,en;q=0.9",
    "accept-encoding: gzip, deflate, br",
    "cookie: session=abcdef0123456789abcdef0123456789; theme=dark; consent=yes",
    "referer: http://bench/previous/page",
    "authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "x-forwarded-for: 10.1.2.3",
    "cache-control: no-cache",
    "x-custom-a: 1",
    "x-custom-b: two",
    "sec-fetch-mode: navigate",
]
ROUTE_HOST = "svc-199.ns.svc.cluster.local"
TRACED_PATH = "/api/v1/users/12345/orders?limit=10&offset=20"
TRACED = [
    "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "x-request-id: 3f0d5a8e-6c1b-4a57-9e2d-8b7c4f1a2e90",
    "accept: application/json",
]


def callgrind(cmd: list[str], port: int, tmp: Path, name: str, load) -> float:
    """Instructions per request of `cmd` (all its threads) while `load(n)` sends n requests."""
    binary = Path(cmd[0])
    if binary.is_file() and str(binary).startswith("/"):
        # valgrind cannot read the DWARF 5 swiftc writes: a copy without debug info.
        stripped = tmp / f"{name}.bin"
        subprocess.run(["strip", "--strip-debug", str(binary), "-o", str(stripped)], check=True)
        cmd = [str(stripped), *cmd[1:]]
    out = tmp / f"cg.{name}"
    p = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *cmd])
    try:
        wait_port(port, timeout=60)
        load(2000)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], capture_output=True, check=True)
        ok = load(N)
        subprocess.run(["callgrind_control", "--dump", str(p.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        stop(p)
    if ok != N:
        raise RuntimeError(f"{name}: {N - ok} of {N} requests failed under callgrind")
    total = 0
    for f in tmp.glob(f"cg.{name}.*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total += int(line.split()[1])
                break
    return total / N


def h1_load(port: int, host: str = "bench", headers: list[str] = (), body: Path | None = None, path: str = "/"):
    def load(n: int) -> int:
        args = ["h2load", "--h1", "-c", "10", "-m", "1", "-n", str(n), "--connect-to", f"127.0.0.1:{port}"]
        for h in headers:
            args += ["-H", h]
        if body:
            args += ["-d", str(body)]
        out = subprocess.run(args + [f"http://{host}{path}"], capture_output=True, text=True, timeout=1200).stdout
        for line in out.splitlines():
            if line.startswith("status codes:"):
                return int(line.split()[2])  # 2xx
        return 0
    return load


def meshd_config(tmp: Path, name: str, backend: int, port: int, extra: str = "", routes: str | None = None,
                 node: bool = False) -> list[str]:
    if node:
        head = f"""mode: node
nodeIP: 127.0.0.1
node: {{ podCIDRs: ["127.0.0.0/8"] }}
outbound: {{ listen: "127.0.0.1:{free_port()}" }}
inbound: {{ listen: "127.0.0.1:{port}" }}
"""
    else:
        head = f"""mode: sidecar
outbound: {{ listen: "127.0.0.1:{port}" }}
inbound: {{ listen: "127.0.0.1:{free_port()}", app: "127.0.0.1:9" }}
"""
    (tmp / f"{name}.yaml").write_text(head + f"""threads: 1
admin: {{ listen: "127.0.0.1:{free_port()}" }}
{extra}
services:
  - {{ name: bench, protocol: http1, endpoints: ["127.0.0.1:{backend}"] }}
routes:
{routes if routes is not None else "  - { match: { }, service: bench }"}
""")
    return [MESHD, "--config", str(tmp / f"{name}.yaml")]


def main():
    update = "--update-docs" in sys.argv[1:]
    require("shapes.py", ("nginx", "haproxy", "h2load", "valgrind", "callgrind_control", "strip"))
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-shapes."))
    os.chmod(tmp, 0o755)
    try:
        h2design.grpc_body = tmp / "grpc-request.bin"
        h2design.grpc_body.write_bytes(b"\x00\x00\x00\x00\x07\x0a\x05hello")
        json_body = tmp / "body.json"
        json_body.write_bytes(b'{"name":"meshd","n":1}')
        backend = start_backend(tmp / "b", cpu=1)
        h2backend = start_backend(tmp / "b2", cpu=1, h2c=True, locations=grpc_locations(tmp))
        routes = "".join(f"  - {{ match: {{ authority: svc-{i}.ns.svc.cluster.local }}, service: bench }}\n"
                         for i in range(200)) + "  - { match: { }, service: bench }"
        post = ["content-type: application/json"]
        shapes = {
            "get": ("", None, False, h1_load),
            "traced": ("", None, False, lambda p: h1_load(p, headers=TRACED, path=TRACED_PATH)),
            "post-json": ("", None, False, lambda p: h1_load(p, headers=post, body=json_body)),
            "browser": ("", None, False, lambda p: h1_load(p, headers=BROWSER)),
            "routes-200": ("", routes, False, lambda p: h1_load(p, host=ROUTE_HOST)),
            "access-log": (f'accessLog: {{ path: "{tmp}/access.log" }}', None, False, h1_load),
            "node-inbound": ("", None, True, lambda p: h1_load(p, headers=[f"x-meshd-dst: 127.0.0.1:{backend}"])),
        }
        meshd = {}
        for name, (extra, table, node, load) in shapes.items():
            port = free_port()
            cmd = meshd_config(tmp, name, backend, port, extra, table, node)
            meshd[name] = callgrind(cmd, port, tmp, f"meshd.{name}", load(port))
            print(f"meshd {name}: {meshd[name]:,.0f} instructions per request", file=sys.stderr)
        port = free_port()
        (tmp / "grpc.yaml").write_text(f"""mode: sidecar
threads: 1
outbound: {{ listen: "127.0.0.1:{port}" }}
inbound: {{ listen: "127.0.0.1:{free_port()}", app: "127.0.0.1:9" }}
admin: {{ listen: "127.0.0.1:{free_port()}" }}
http2: {{ maxConcurrentStreams: 100, initialWindowSize: 262144, maxConnectionsPerEndpoint: 16 }}
services:
  - {{ name: grpc, protocol: grpc, endpoints: ["127.0.0.1:{h2backend}"] }}
routes:
  - {{ match: {{ authority: grpc }}, service: grpc }}
""")

        def grpc_load(n: int) -> int:
            ok, _, _ = h2design.h2load(port, "grpc", "-n", str(n), timeout=1200)
            return ok
        meshd["grpc"] = callgrind([MESHD, "--config", str(tmp / "grpc.yaml")], port, tmp, "meshd.grpc", grpc_load)
        print(f"meshd grpc: {meshd['grpc']:,.0f} instructions per call", file=sys.stderr)

        hap = {}
        for name in ("get", "traced", "post-json", "browser"):
            port = free_port()
            (tmp / f"haproxy.{name}.cfg").write_text(f"""global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server s1 127.0.0.1:{backend}
""")
            hap[name] = callgrind(["haproxy", "-db", "-f", str(tmp / f"haproxy.{name}.cfg")], port, tmp,
                                  f"haproxy.{name}", shapes[name][3](port))
            print(f"HAProxy {name}: {hap[name]:,.0f} instructions per request", file=sys.stderr)

        labels = {
            "get": "`GET /` (the throughput benchmarks' shape)",
            "traced": "REST `GET` with a query, `traceparent` and `x-request-id` (every request between meshd)",
            "post-json": "`POST /`, `content-type: application/json`, 22-byte body",
            "browser": "`GET /` with 12 browser and ingress fields (cookie, authorization, x-forwarded-for…)",
            "routes-200": "`GET /` for the last of 200 routes (a node proxy's table)",
            "access-log": "`GET /`, access log to a file",
            "node-inbound": "`GET /` to a node proxy's inbound listener, `x-meshd-dst`",
            "grpc": "gRPC unary call, h2c both sides (per call)",
        }
        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} by `bench/shapes.py` (N={N}; valgrind callgrind, all threads; "
            "HTTP/1.1 by `h2load --h1 -c 10` unless said; one nginx worker behind).",
            "",
            "| shape | meshd instructions per request | × `get` | HAProxy | meshd ÷ HAProxy |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, label in labels.items():
            h = hap.get(name)
            lines.append(f"| {label} | {meshd[name] / 1000:,.1f} k | {meshd[name] / meshd['get']:.2f} | "
                         + (f"{h / 1000:,.1f} k | {meshd[name] / h:.1f} |" if h else "— | — |"))
        table = "\n".join(lines)
        print(table)
        if update:
            update_doc_section("shapes", table)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
