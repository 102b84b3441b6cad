#!/usr/bin/env python3
"""The two candidate designs for meshd's h2 → h2 passthrough, measured before one is built
(bench/README.md, bench/floor/).

    bench/h2design.py [--update-docs]     (ROUNDS=3 SECONDS=6 INSTRUCTIONS=0; MESHD_BIN default
                                           .build/release/meshd)

bench/floor's h2floor is each design's forwarding core and nothing else, on NIO's HTTP/2 handler, built with
meshd's release flags: `frame` (no multiplexer: one handler per connection forwards frames by stream
id) and `child` (NIO's multiplexer: a child channel per stream on each side, frame payloads passed
between them: today's meshd path without the HTTP/1 codec and the proxy handler). In one run, beside
them: meshd (sidecar outbound, `--threads 1`, `protocol: auto` → h2c upstream) and HAProxy (nbthread 1,
h2 both sides). Backend: one nginx worker, h2c. Two scenarios, as in bench/http2.sh: **h2** = `GET /`
→ "ok\\n"; **grpc** = a gRPC-shaped unary call (`POST /grpc.bench.Bench/Unary`, `content-type:
application/grpc`, `te: trailers`, a 12-byte gRPC-framed body) answered with a 9-byte gRPC-framed
message and the trailers `grpc-status: 0`, `grpc-message: OK`. The proxy under test runs on CPU 0,
nginx and h2load (1 thread, 10 connections × 10 streams) on CPU 1.

Reported per scenario and target: req/s and the proxy's CPU seconds per 1000 streams (medians over ROUNDS rounds,
each SECONDS long after a 2 s warm-up, order reversed every other round), errors, and with
INSTRUCTIONS=1 the instructions per stream under callgrind (20 000 streams after 2 000 to warm up;
repeatable to about 0.1 %)."""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    cpu_seconds,
    family,
    GRPC_PATH,
    free_port,
    grpc_locations,
    require,
    start,
    start_backend,
    stop,
    stop_all,
    update_doc_section,
    wait_port,
)

ROOT = Path(__file__).resolve().parent.parent
MESHD = os.environ.get("MESHD_BIN", str(ROOT / ".build/release/meshd"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS", "6"))
INSTRUCTIONS = os.environ.get("INSTRUCTIONS", "0") == "1"
SCRATCH = ROOT / ".build-floor"
# meshd's release flags (scripts/build-release.sh), so the harness's NIO is built like meshd's.
FLAGS = ["-c", "release", "--static-swift-stdlib", "-Xswiftc", "-Xclang-linker", "-Xswiftc", "-no-pie",
         "-Xswiftc", "-enforce-exclusivity=unchecked", "-Xswiftc", "-cross-module-optimization",
         "--experimental-lto-mode=full"]


def build_floor(product: str) -> Path:
    """One of bench/floor's harnesses, built with meshd's release flags; → its executable."""
    subprocess.run(["swift", "build", *FLAGS, "--scratch-path", str(SCRATCH), "--product", product],
                   cwd=ROOT / "bench/floor", check=True, stdout=subprocess.DEVNULL)
    return SCRATCH / "release" / product


SCENARIOS = ("h2", "grpc")
# Set by main: the gRPC request body's file.
grpc_body = Path()


def h2load(port: int, scenario: str, *args: str, timeout: float = 120) -> tuple[int, int, str]:
    """→ (streams that succeeded, streams that failed or errored, output)."""
    if scenario == "grpc":
        target = ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(grpc_body),
                  f"http://grpc{GRPC_PATH}"]
    else:
        target = ["http://bench/"]
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-c", "10", "-m", "10", *args,
                          "--connect-to", f"127.0.0.1:{port}", *target],
                         capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
                  out)
    if not m:
        return 0, 1, out
    return int(m.group(1)), int(m.group(2)) + int(m.group(3)) + int(m.group(4)), out


def wait_h2(port: int):
    wait_port(port)
    for _ in range(100):
        if subprocess.run(["curl", "-s", "-o", "/dev/null", "-f", "--http2-prior-knowledge", "-H", "Host: bench",
                           f"http://127.0.0.1:{port}/"]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no h2c 200 from 127.0.0.1:{port}")


def check_grpc(name: str, port: int):
    """One gRPC-shaped call with nghttp: the reply must be a 200 with DATA and then the grpc-status 0
    trailer (h2load would not notice lost trailers; nginx adds the trailers to its error pages too)."""
    out = subprocess.run(["nghttp", "-v", "-n", "-H", ":authority: grpc", "-H", "content-type: application/grpc",
                          "-H", "te: trailers", "-d", str(grpc_body), f"http://127.0.0.1:{port}{GRPC_PATH}"],
                         capture_output=True, text=True, timeout=10).stdout
    data = out.find("recv DATA frame")
    if ":status: 200" not in out or data < 0 or out.find("grpc-status: 0", data) < 0:
        raise RuntimeError(f"{name}: the gRPC-shaped call did not get DATA then grpc-status 0:\n{out}")


def instructions(cmd: list[str], port: int, tmp: Path, name: str, scenario: str) -> float:
    """Instructions per stream of `cmd` (all its threads) under callgrind."""
    binary = Path(cmd[0])
    if binary.suffix == "" and binary.is_file() and str(binary).startswith(("/", ".")):
        # valgrind cannot read the DWARF 5 swiftc writes: a copy without debug info.
        stripped = tmp / f"{name}.cg"
        subprocess.run(["strip", "--strip-debug", str(binary), "-o", str(stripped)], check=True)
        cmd = [str(stripped), *cmd[1:]]
    out = tmp / f"cg.{name}"
    p = start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *cmd])
    try:
        wait_h2(port)
        h2load(port, scenario, "-n", "2000", timeout=300)
        subprocess.run(["callgrind_control", "--zero", str(p.pid)], capture_output=True, check=True)
        ok, bad, _ = h2load(port, scenario, "-n", "20000", timeout=1200)  # callgrind: 20-50× slower
        subprocess.run(["callgrind_control", "--dump", str(p.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        stop(p)
    if bad or ok != 20000:
        raise RuntimeError(f"{name}: {bad} streams failed under callgrind")
    total = 0
    for f in tmp.glob(f"cg.{name}.*"):
        for line in f.read_text(errors="replace").splitlines():
            if line.startswith(("totals:", "summary:")):
                total += int(line.split()[1])
                break
    return total / 20000


def main():
    update = "--update-docs" in sys.argv[1:]
    require("h2design.py", ("nginx", "haproxy", "h2load", "nghttp", "curl", "taskset", "swift")
            + (("valgrind", "callgrind_control") if INSTRUCTIONS else ()))
    global grpc_body
    h2floor = build_floor("h2floor")
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-h2design."))
    os.chmod(tmp, 0o755)  # nginx's worker (nobody) reads the gRPC reply from it
    try:
        grpc_body = tmp / "grpc-request.bin"
        grpc_body.write_bytes(b"\x00\x00\x00\x00\x07\x0a\x05hello")  # 12 bytes
        backend = start_backend(tmp / "b", cpu=1, h2c=True, locations=grpc_locations(tmp))
        ports = {name: free_port() for name in ("meshd", "HAProxy", "frame", "child")}
        admin = free_port()
        (tmp / "meshd.yaml").write_text(f"""mode: sidecar
threads: 1
outbound: {{ listen: "127.0.0.1:{ports['meshd']}" }}
inbound: {{ listen: "127.0.0.1:{free_port()}", app: "127.0.0.1:9" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
http2: {{ maxConcurrentStreams: 100, initialWindowSize: 262144, maxConnectionsPerEndpoint: 16 }}
services:
  - {{ name: bench, protocol: auto, endpoints: ["127.0.0.1:{backend}"] }}
  - {{ name: grpc, protocol: grpc, endpoints: ["127.0.0.1:{backend}"] }}
routes:
  - {{ match: {{ authority: bench }}, service: bench }}
  - {{ match: {{ authority: grpc }}, service: grpc }}
""")
        (tmp / "haproxy.cfg").write_text(f"""global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend f
    bind 127.0.0.1:{ports['HAProxy']} proto h2
    default_backend b
backend b
    server s1 127.0.0.1:{backend} proto h2
""")
        commands = {
            "meshd": [MESHD, "--config", str(tmp / "meshd.yaml")],
            "HAProxy": ["haproxy", "-f", str(tmp / "haproxy.cfg"), "-db"],
            "frame": [str(h2floor), "frame", str(ports["frame"]), "127.0.0.1", str(backend)],
            "child": [str(h2floor), "child", str(ports["child"]), "127.0.0.1", str(backend)],
        }
        keys = [(s, name) for s in SCENARIOS for name in commands]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in keys}
        errors = dict.fromkeys(keys, 0)
        for r in range(ROUNDS):
            order = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in order:
                # One process per target and round, both scenarios on it (a new process per round:
                # the clients' abrupt end after each timed run cancels the streams then in flight).
                p = start(commands[name], cpu=0)
                try:
                    wait_h2(ports[name])
                    if r == 0:
                        check_grpc(name, ports[name])
                    for scenario in SCENARIOS:
                        h2load(ports[name], scenario, "-n", "5000")
                        c0 = cpu_seconds(family(p))
                        ok, bad, out = h2load(ports[name], scenario, "-D", str(SECONDS))
                        c1 = cpu_seconds(family(p))
                        errors[scenario, name] += bad
                        if ok == 0:
                            raise RuntimeError(f"{scenario} {name}: no stream succeeded\n{out}")
                        results[scenario, name].append((ok / SECONDS, (c1 - c0) / ok * 1000))
                        print(f"round {r + 1} {scenario} {name}: {ok / SECONDS:,.0f} req/s, "
                              f"{(c1 - c0) / ok * 1000:.4f} CPU s/1000, {bad} errors", file=sys.stderr)
                finally:
                    stop(p)
        instr = {}
        if INSTRUCTIONS:
            for key in keys:
                scenario, name = key
                instr[key] = instructions(commands[name], ports[name], tmp, f"{scenario}.{name}", scenario)
                print(f"{scenario} {name}: {instr[key]:,.0f} instructions per stream", file=sys.stderr)

        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in results.items()}
        labels = {
            "HAProxy": "HAProxy (nbthread 1, h2 both sides)",
            "meshd": "meshd (frame-level connections, h2 → h2 heads as HPACK blocks)",
            "child": "design `child`: child channel per stream, payloads passed through",
            "frame": "design `frame`: one handler per connection, frames by stream id",
        }
        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} by `bench/h2design.py` (ROUNDS={ROUNDS}, SECONDS={SECONDS}; "
            "h2load 1 thread, 10 connections × 10 streams against nginx h2c; proxy on CPU 0, client and "
            "backend on CPU 1; medians over the rounds).",
        ]
        for scenario in SCENARIOS:
            hap_rps, hap_cpu = med[scenario, "HAProxy"]
            lines += [
                "",
                "**h2c GET**" if scenario == "h2" else "**gRPC-shaped unary call**",
                "",
                "| target | req/s | × HAProxy | CPU s per 1000 streams | × HAProxy | errors |"
                + (" instructions per stream | × HAProxy |" if instr else ""),
                "|---|---|---|---|---|---|" + ("---|---|" if instr else ""),
            ]
            for name in ("HAProxy", "meshd", "child", "frame"):
                rps, cpu = med[scenario, name]
                row = (f"| {labels[name]} | {rps:,.0f} | {rps / hap_rps:.2f} | {cpu:.4f} | {cpu / hap_cpu:.2f} "
                       f"| {errors[scenario, name]} |")
                if instr:
                    row += (f" {instr[scenario, name] / 1000:,.1f} k "
                            f"| {instr[scenario, name] / instr[scenario, 'HAProxy']:.1f} |")
                lines.append(row)
        lines += ["", "Per round (req/s / CPU s per 1000 streams): " + "; ".join(
            f"{s} {name} " + ", ".join(f"{a:,.0f}/{b:.4f}" for a, b in v) for (s, name), v in results.items()) + "."]
        table = "\n".join(lines)
        print(table)
        if update:
            if any(errors.values()):
                sys.exit("h2design.py: errors in the run; docs not updated")
            update_doc_section("h2design", table)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
