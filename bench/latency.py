#!/usr/bin/env python3
"""Latency a proxy adds at a fixed request rate (open loop), meshd beside HAProxy and nginx, one run
(bench/README.md).

    bench/latency.py [--update-docs]     (MESHD_BIN, MESHCTL_BIN: default .build/release/…;
                                          RATE (default 1000), SECONDS (default 15), ROUNDS (default 3))

One nginx worker answers "ok\\n" (the backend). Targets, all alive during the whole run: direct (the
backend), direct again (a control: what two identical targets differ by in this run is the noise
floor), meshd (sidecar outbound, `--threads 1`, service `bench` → the backend), HAProxy (nbthread 1)
and nginx as a proxy (1 worker), each keeping connections to the backend alive. The proxies run on
CPU 0; the backend and the load generator on CPU 1.

Each round is one `meshctl latency` run: RATE requests per second, open loop (latency counted from
each request's due time: no coordinated omission), over 8 keep-alive HTTP/1.1 connections, SECONDS
measured per target after a 3 s warm-up, targets one after another with direct first (the baseline),
the others in an order rotated every round. Reported: per target, the median over the rounds of each
percentile and of the latency added to direct at that percentile (same round)."""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    free_port,
    require,
    start,
    start_backend,
    start_haproxy,
    start_nginx_proxy,
    stop_all,
    update_doc_section,
)

ROOT = Path(__file__).resolve().parent.parent
MESHD = os.environ.get("MESHD_BIN", str(ROOT / ".build/release/meshd"))
MESHCTL = os.environ.get("MESHCTL_BIN", str(ROOT / ".build/release/meshctl"))
RATE = int(os.environ.get("RATE", "1000"))
SECONDS = int(os.environ.get("SECONDS", "15"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PCTS = ("p50", "p90", "p99", "p999")


def wait_ok(port: int, host: str = "bench", timeout: float = 10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no 200 from 127.0.0.1:{port}")


def main():
    update = "--update-docs" in sys.argv[1:]
    require("latency.py", ("nginx", "haproxy", "taskset"))
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-latency."))
    os.chmod(tmp, 0o755)
    rounds = []
    try:
        backend = start_backend(tmp / "b", cpu=1)

        out_p, in_p, admin = free_port(), free_port(), free_port()
        (tmp / "meshd.yaml").write_text(f"""mode: sidecar
threads: 1
outbound: {{ listen: "127.0.0.1:{out_p}" }}
inbound: {{ listen: "127.0.0.1:{in_p}", app: "127.0.0.1:1" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
services: [ {{ name: bench, endpoints: ["127.0.0.1:{backend}"] }} ]
routes: [ {{ match: {{ authority: bench }}, service: bench }} ]
""")
        start([MESHD, "--config", str(tmp / "meshd.yaml"), "--threads", "1"], 0)

        _, hp = start_haproxy(tmp / "haproxy.cfg", backend, cpu=0)

        _, np_ = start_nginx_proxy(tmp / "n", backend, cpu=0)
        for port in (out_p, hp, np_):
            wait_ok(port)

        others = [("direct again", backend), ("meshd", out_p), ("HAProxy", hp), ("nginx", np_)]
        for r in range(ROUNDS):
            order = others[r % len(others):] + others[:r % len(others)]
            args = ["--target", f"direct=http://127.0.0.1:{backend}/"]
            for name, port in order:
                args += ["--target", f"{name}=http://127.0.0.1:{port}/"]
            cmd = ["taskset", "-c", "1", MESHCTL, "latency", *args, "--authority", "bench", "--rate", str(RATE),
                   "--connections", "8", "--duration", f"{SECONDS}s", "--warmup", "3s", "-o", "json"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5 * (SECONDS + 10) + 60)
            if out.returncode != 0:
                sys.exit(f"meshctl latency failed: {out.stderr}")
            rounds.append({t["name"]: t for t in json.loads(out.stdout)["targets"]})
            print(f"round {r + 1}: " + ", ".join(
                f"{n} p50 {t['p50']:.3f} p99 {t['p99']:.3f}" for n, t in rounds[-1].items()), file=sys.stderr)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    names = ["direct", "direct again", "meshd", "HAProxy", "nginx"]
    errors = {n: sum(r[n]["errors"] for r in rounds) for n in names}
    med = lambda n, f: statistics.median(f(r[n]) for r in rounds)  # noqa: E731
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/latency.py` ({ROUNDS} rounds; one `meshctl latency` "
        f"run per round: {RATE} req/s open loop over 8 keep-alive HTTP/1.1 connections, {SECONDS} s per target "
        "after 3 s of warm-up, direct first; proxies on CPU 0, backend and load generator on CPU 1; medians "
        "over the rounds, ms).",
        "",
        "| target | p50 | p90 | p99 | p99.9 | added p50 | added p90 | added p99 | added p99.9 | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        cells = [f"{med(n, lambda t, p=p: t[p]):.3f}" for p in PCTS]
        added = ["—"] * 4 if n == "direct" else [f"{med(n, lambda t, p=p: t['added'][p]):+.3f}" for p in PCTS]
        label = {"direct": "direct (→ nginx backend)", "direct again": "direct again (control: the noise floor)",
                 "meshd": "meshd sidecar outbound (--threads 1)", "HAProxy": "HAProxy (nbthread 1)",
                 "nginx": "nginx proxy (1 worker)"}[n]
        lines.append(f"| {label} | " + " | ".join(cells + added) + f" | {errors[n]} |")
    lines += ["", "Added p99 per round (ms): " + "; ".join(
        f"{n} " + ", ".join(f"{r[n]['added']['p99']:+.3f}" for r in rounds) for n in names[1:])]
    table = "\n".join(lines)
    print(table)
    if update:
        if any(errors.values()):
            sys.exit("errors in the run: docs not updated")
        update_doc_section("latency", table)


if __name__ == "__main__":
    main()
