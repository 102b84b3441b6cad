#!/usr/bin/env python3
"""The floor of an HTTP/1.1 proxy on NIO: what NIO's HTTP/1 pipeline and sockets cost per request with
none of meshd's work, beside meshd and HAProxy in one run (bench/README.md, bench/floor/).

    bench/h1floor.py [--update-docs]     (ROUNDS=3 SECONDS=6 INSTRUCTIONS=1; MESHD_BIN default
                                          .build/release/meshd)

Targets, each with one thread on CPU 0, in front of one nginx worker (CPU 1):
  HAProxy   nbthread 1, keep-alive, http-reuse always
  meshd     sidecar outbound, --threads 1, one route, protocol http1
  codec     bench/floor's h1floor: NIO's HTTP/1 codec on both connections as meshd adds it, meshd's
            smallest rewrite (x-forwarded-for, x-request-id; the response's `connection` field
            removed), an upstream connection per client connection; nothing else
  bytes     h1floor's byte pipe: each connection's bytes written to the other (NIO's sockets and
            channel pipeline, no HTTP)
built with meshd's release flags (h2design.FLAGS).

Per target: req/s and CPU seconds per 1000 requests, split into user and kernel time (wrk -t1 -c32 on
CPU 1, as bench/http1.sh; medians over ROUNDS rounds, each SECONDS long after a 2 s warm-up, order
reversed every other round), and with INSTRUCTIONS=1 the instructions per request under callgrind
(h2load --h1 -c 10, 20 000 requests after 2 000, as bench/shapes.py)."""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2design
import shapes
from benchlib import family, free_port, require, start, start_backend, start_haproxy, stop, stop_all, \
    update_doc_section, wait_port

ROUNDS = int(os.environ.get("ROUNDS", "3"))
SECONDS = int(os.environ.get("SECONDS", "6"))
INSTRUCTIONS = os.environ.get("INSTRUCTIONS", "1") == "1"
TARGETS = ("HAProxy", "meshd", "codec", "bytes")


def cpu_split(pids) -> tuple[float, float]:
    """(user, kernel) CPU seconds the processes `pids` have used so far."""
    hz = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])
        kernel += int(fields[12])
    return user / hz, kernel / hz


def wrk(port: int, seconds: int) -> tuple[int, str]:
    """→ (requests completed, output); errors make it raise."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", "-H", "Host: bench",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk against {port}: errors or no result\n{out}")
    return int(m.group(1)), out


def main():
    update = "--update-docs" in sys.argv[1:]
    require("h1floor.py", ("nginx", "haproxy", "wrk", "curl", "taskset", "swift")
            + (("h2load", "valgrind", "callgrind_control", "strip") if INSTRUCTIONS else ()))
    h1floor = h2design.build_floor("h1floor")
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-h1floor."))
    os.chmod(tmp, 0o755)
    try:
        backend = start_backend(tmp / "b", cpu=1)
        ports = {name: free_port() for name in TARGETS if name != "HAProxy"}
        commands = {
            "meshd": shapes.meshd_config(tmp, "meshd", backend, ports["meshd"]),
            "codec": [str(h1floor), "codec", str(ports["codec"]), "127.0.0.1", str(backend)],
            "bytes": [str(h1floor), "bytes", str(ports["bytes"]), "127.0.0.1", str(backend)],
        }
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in TARGETS}
        for r in range(ROUNDS):
            for name in TARGETS if r % 2 == 0 else reversed(TARGETS):
                # A new process per target and round.
                if name == "HAProxy":
                    p, ports["HAProxy"] = start_haproxy(tmp / "haproxy.cfg", backend, cpu=0)
                else:
                    p = start(commands[name], cpu=0)
                try:
                    wait_port(ports[name])
                    if subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{ports[name]}/"]).returncode:
                        raise RuntimeError(f"{name}: no 200")
                    wrk(ports[name], 2)
                    u0, k0 = cpu_split(family(p))
                    n, _ = wrk(ports[name], SECONDS)
                    u1, k1 = cpu_split(family(p))
                    results[name].append((n / SECONDS, (u1 - u0) / n * 1000, (k1 - k0) / n * 1000))
                    print(f"round {r + 1} {name}: {n / SECONDS:,.0f} req/s, user {(u1 - u0) / n * 1000:.4f} "
                          f"kernel {(k1 - k0) / n * 1000:.4f} CPU s/1000", file=sys.stderr)
                finally:
                    stop(p)
        instr = {}
        if INSTRUCTIONS:
            for name in TARGETS:
                if name == "HAProxy":
                    p, port = start_haproxy(tmp / "haproxy.cfg", backend)
                    stop(p)
                    cmd = ["haproxy", "-db", "-f", str(tmp / "haproxy.cfg")]
                else:
                    cmd, port = commands[name], ports[name]
                instr[name] = shapes.callgrind(cmd, port, tmp, name, shapes.h1_load(port))
                print(f"{name}: {instr[name]:,.0f} instructions per request", file=sys.stderr)

        med = {name: tuple(statistics.median(x[i] for x in v) for i in range(3)) for name, v in results.items()}
        hap_rps, hap_user, hap_kernel = med["HAProxy"]
        labels = {
            "HAProxy": "HAProxy (nbthread 1)",
            "meshd": "meshd (sidecar outbound, one route)",
            "codec": "floor `codec`: NIO's HTTP/1 codec both ways, smallest rewrite, nothing else",
            "bytes": "floor `bytes`: NIO byte pipe, no HTTP",
        }
        lines = [
            f"Measured {time.strftime('%Y-%m-%d')} by `bench/h1floor.py` (ROUNDS={ROUNDS}, SECONDS={SECONDS}; "
            "wrk -t1 -c32 against one nginx worker; proxy on CPU 0, client and backend on CPU 1; medians "
            "over the rounds" + ("; instructions: callgrind, h2load --h1 -c 10, 20 000 requests" if instr else "")
            + ").",
            "",
            "| target | req/s | × HAProxy | CPU s per 1000 req | × HAProxy | user | × HAProxy | kernel | × HAProxy |"
            + (" instructions per request | × HAProxy |" if instr else ""),
            "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if instr else ""),
        ]
        for name in TARGETS:
            rps, user, kernel = med[name]
            row = (f"| {labels[name]} | {rps:,.0f} | {rps / hap_rps:.2f} | {user + kernel:.4f} "
                   f"| {(user + kernel) / (hap_user + hap_kernel):.2f} | {user:.4f} | {user / hap_user:.2f} "
                   f"| {kernel:.4f} | {kernel / hap_kernel:.2f} |")
            if instr:
                row += f" {instr[name] / 1000:,.1f} k | {instr[name] / instr['HAProxy']:.1f} |"
            lines.append(row)
        lines += ["", "Per round (req/s / user / kernel CPU s per 1000 requests): " + "; ".join(
            f"{name} " + ", ".join(f"{a:,.0f}/{b:.4f}/{c:.4f}" for a, b, c in v) for name, v in results.items())
            + "."]
        table = "\n".join(lines)
        print(table)
        if update:
            update_doc_section("h1floor", table)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
