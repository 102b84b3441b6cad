#!/usr/bin/env python3
"""How meshd scales from one event loop to two on this machine, beside HAProxy with one and two
threads, in one run (bench/README.md). The client (wrk, 2 threads, 64 keep-alive connections) and
the backend (nginx, 1 worker) share the same cores as the proxy: on a 2-core machine a second proxy
thread competes with them, which is what a node proxy's box looks like too.

    bench/scaling.py [--update-docs]     (DURATION=8 RUNS=3; MESHD_BIN default .build/release/meshd)

Reports req/s and the proxy's CPU seconds per 1000 requests (median over RUNS interleaved rounds),
and each two-thread figure over its one-thread figure."""

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
    free_port,
    start,
    start_backend,
    start_haproxy,
    stop_all,
    update_doc_section,
    wait_port,
)

ROOT = Path(__file__).resolve().parent.parent
MESHD = os.environ.get("MESHD_BIN", str(ROOT / ".build/release/meshd"))
DURATION = int(os.environ.get("DURATION", "8"))
RUNS = int(os.environ.get("RUNS", "3"))


def wrk(port) -> tuple[float, int, str]:
    r = subprocess.run(["wrk", "-t2", "-c64", f"-d{DURATION}s", "-H", "Host: bench", f"http://127.0.0.1:{port}/"],
                       capture_output=True, text=True, timeout=DURATION + 60)
    m = re.search(r"(\d+) requests in", r.stdout)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", r.stdout)
    errors = "Socket errors" in r.stdout or "Non-2xx" in r.stdout
    return float(rps.group(1)) if rps else 0.0, int(m.group(1)) if m else 0, r.stdout if errors else ""


def main():
    update = "--update-docs" in sys.argv[1:]
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-scaling."))
    os.chmod(tmp, 0o755)
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        backend = start_backend(tmp / "b", worker_connections=4096)
        targets = {}
        for threads in (1, 2):
            port, admin = free_port(), free_port()
            cfg = tmp / f"meshd{threads}.yaml"
            cfg.write_text(f"""mode: sidecar
threads: {threads}
outbound: {{ listen: "127.0.0.1:{port}" }}
inbound: {{ listen: "127.0.0.1:0", app: "127.0.0.1:9" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
services: [ {{ name: bench, endpoints: ["127.0.0.1:{backend}"] }} ]
routes: [ {{ match: {{ authority: bench }}, service: bench }} ]
""")
            targets[f"meshd --threads {threads}"] = (start([MESHD, "--config", str(cfg)]), port)
            targets[f"HAProxy nbthread {threads}"] = start_haproxy(tmp / f"haproxy{threads}.cfg", backend, threads)
        for _, port in targets.values():
            wait_port(port)
        for name, (p, port) in targets.items():  # warm-up
            subprocess.run(["wrk", "-t2", "-c64", "-d2s", "-H", "Host: bench", f"http://127.0.0.1:{port}/"],
                           capture_output=True, timeout=60)
        for _ in range(RUNS):
            for name, (p, port) in targets.items():
                pids = family(p)
                c0 = cpu_seconds(pids)
                rps, n, errors = wrk(port)
                c1 = cpu_seconds(pids)
                if errors:
                    sys.exit(f"{name}: wrk saw errors:\n{errors}")
                results.setdefault(name, []).append((rps, (c1 - c0) / n * 1000 if n else 0.0))
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/scaling.py` ({os.cpu_count()} cores shared by wrk -t2 -c64, "
        f"the nginx backend and the proxy; {RUNS} interleaved rounds of {DURATION} s, medians).",
        "",
        "| proxy | req/s | CPU s per 1000 requests | 2 threads / 1 thread (req/s) |",
        "|---|---|---|---|",
    ]
    for name, (rps, cpu) in med.items():
        ratio = ""
        if name.endswith("2"):
            one = med[name[:-1] + "1"][0]
            ratio = f"{rps / one:.2f}×" if one else "n/a"
        lines.append(f"| {name} | {rps:,.0f} | {cpu:.3f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if update:
        update_doc_section("scaling", table)


if __name__ == "__main__":
    main()
