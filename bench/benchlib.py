"""Helpers shared by the Python benchmarks (memory.py, scaling.py, latency.py, h2design.py): free ports, processes
started in their own session (optionally pinned to a CPU) and stopped with their children, and the
rewrite of a marked section of docs/performance.md."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Every process `start` made, for the benchmark's final cleanup (`stop_all`).
procs: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, cpu: int | None = None, **kw) -> subprocess.Popen:
    """`cmd` in a session of its own, output discarded; pinned to `cpu` with taskset when given."""
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw)
    procs.append(p)
    return p


def stop(p: subprocess.Popen):
    """SIGTERM to the process group, SIGKILL after 10 s."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_all():
    for p in procs:
        if p.poll() is None:
            stop(p)


def family(p: subprocess.Popen) -> list[int]:
    """The process and its children (nginx's master and workers, HAProxy's)."""
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return [p.pid] + [int(k) for k in kids]


def cpu_seconds(pids) -> float:
    """User + system CPU seconds the processes `pids` have used so far."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / hz


def require(script: str, tools):
    """Exits with a clear message when one of `tools` is not installed."""
    for tool in tools:
        if not shutil.which(tool):
            sys.exit(f"bench/{script}: {tool} not found (scripts/install-test-deps.sh installs it)")


def wait_port(port: int, timeout: float = 10.0):
    """Until 127.0.0.1:`port` accepts connections."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} not listening")


def start_backend(directory: Path, cpu: int | None = None, worker_connections: int = 1024, h2c: bool = False,
                  locations: str = "") -> int:
    """The benchmarks' backend: one nginx worker answering every request 200 "ok\\n" on a free
    loopback port (returned, listening), its files in `directory`; HTTP/2 with prior knowledge
    instead of HTTP/1.1 when `h2c`; `locations` (nginx directives) added to its server block."""
    port = free_port()
    directory.mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {directory}/pid; error_log {directory}/err warn;
events {{ worker_connections {worker_connections}; }}
http {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{port}{" http2" if h2c else ""}; location / {{ return 200 "ok\\n"; }} {locations} }} }}
""")
    start(["nginx", "-p", str(directory), "-e", str(directory / "err"), "-c", str(directory / "nginx.conf")], cpu)
    wait_port(port)
    return port


GRPC_PATH = "/grpc.bench.Bench/Unary"


def grpc_locations(directory: Path) -> str:
    """nginx locations (for `start_backend`) that answer a gRPC-shaped unary call at GRPC_PATH like a
    gRPC server: the whole request read first (mirror_request_body), then a 9-byte gRPC-framed message
    and the trailers grpc-status 0, grpc-message OK (the static module refuses POST; error_page turns
    that into a 200 with the file). The reply is written to `directory`."""
    (directory / "grpc-response.bin").write_bytes(b"\x00\x00\x00\x00\x04\x0a\x02ok")  # 9 bytes
    return f"""
location = {GRPC_PATH} {{ mirror /_read_body; mirror_request_body on; default_type application/grpc; etag off;
    add_trailer grpc-status 0 always; add_trailer grpc-message OK always; alias {directory}/grpc-response.bin;
    error_page 405 =200 $uri; }}
location = /_read_body {{ internal; return 204; }}"""


def start_haproxy(config: Path, backend: int, threads: int = 1, cpu: int | None = None):
    """HAProxy as the proxy under test: `threads` threads, keep-alive to the backend on port
    `backend` (connections reused across clients); its config written to `config`. → (process, port),
    not yet waited for."""
    port = free_port()
    config.write_text(f"""global
    nbthread {threads}
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server s1 127.0.0.1:{backend}
""")
    return start(["haproxy", "-f", str(config)], cpu), port


def start_nginx_proxy(directory: Path, backend: int, cpu: int | None = None):
    """nginx as the proxy under test: one worker, up to 32 idle keep-alive connections to the backend
    on port `backend`; its files in `directory`. → (process, port), not yet waited for."""
    port = free_port()
    directory.mkdir(exist_ok=True)
    (directory / "nginx.conf").write_text(f"""worker_processes 1; daemon off; pid {directory}/pid; error_log {directory}/err warn;
events {{ worker_connections 1024; }}
http {{ access_log off; upstream u {{ server 127.0.0.1:{backend}; keepalive 32; }}
server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
    return start(["nginx", "-p", str(directory), "-e", str(directory / "err"), "-c", str(directory / "nginx.conf")], cpu), port


def update_doc_section(name: str, table: str):
    """Replaces what stands between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in docs/performance.md."""
    doc = Path(__file__).resolve().parent.parent / "docs/performance.md"
    text = doc.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        sys.exit(f"docs/performance.md has no {name} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(head + begin + "\n" + table + "\n" + end + tail)
    print("docs/performance.md updated")
