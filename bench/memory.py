#!/usr/bin/env python3
"""Memory, start-up time and binary size of meshd beside HAProxy and nginx doing the same job, one
run (bench/README.md): time from exec to `/ready` 200; resident memory idle, after Prometheus-style
scrapes of /metrics, and at 1000 req/s open loop (meshctl latency); the shipped binary's size.

    bench/memory.py [--update-docs]        (MESHD_BIN, MESHCTL_BIN: default .build/release/…)

Each proxy: one thread / worker, keep-alive to one nginx backend. RSS is split into anonymous memory
(the process's own) and file-backed pages (the executable's code and data, shared in the page cache
by every process running the same binary)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    family,
    free_port,
    require,
    start,
    start_backend,
    start_haproxy,
    start_nginx_proxy,
    stop,
    stop_all,
    update_doc_section,
)

ROOT = Path(__file__).resolve().parent.parent
MESHD = os.environ.get("MESHD_BIN", str(ROOT / ".build/release/meshd"))
MESHCTL = os.environ.get("MESHCTL_BIN", str(ROOT / ".build/release/meshctl"))
RATE, SECONDS = 1000, 20


def get(port: int, path: str, host: str = "x") -> int:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
            m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
            return int(m.group(1)) if m else 0
    except OSError:
        return 0


def wait_status(port, path, host="x", timeout=10.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if get(port, path, host) == 200:
            return time.monotonic() - t0
        time.sleep(0.0005)
    raise RuntimeError(f"no 200 from 127.0.0.1:{port}{path}")


def memory(pids) -> dict:
    """kB summed over the processes: RSS, anonymous, file-backed."""
    out = {"rss": 0, "anon": 0, "file": 0}
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k == "VmRSS":
                out["rss"] += int(v.split()[0])
            elif k == "RssAnon":
                out["anon"] += int(v.split()[0])
            elif k in ("RssFile", "RssShmem"):
                out["file"] += int(v.split()[0])
    return out


def load(port: int, host: str, pids) -> tuple[dict, str]:
    """meshctl latency at RATE for SECONDS; memory sampled half-way."""
    lat = subprocess.Popen([MESHCTL, "latency", "--target", f"p=http://127.0.0.1:{port}/", "--authority", host,
                            "--rate", str(RATE), "--duration", f"{SECONDS}s", "--warmup", "2s", "--connections", "8",
                            "-o", "json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(2 + SECONDS / 2)
    mem = memory(pids)
    out, _ = lat.communicate(timeout=SECONDS + 60)
    try:
        t = json.loads(out)["targets"][0]
        summary = f"{t.get('achievedRate', 0):.0f}/s, {t.get('errors', '?')} errors"
    except (ValueError, KeyError, IndexError):
        summary = "?"
    return mem, summary


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def main():
    update = "--update-docs" in sys.argv[1:]
    require("memory.py", ("nginx", "haproxy"))
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-memory."))
    os.chmod(tmp, 0o755)
    rows = []
    try:
        backend = start_backend(tmp / "b")

        # meshd: sidecar inbound → the backend (the app), one event loop.
        out_p, in_p, admin = free_port(), free_port(), free_port()
        (tmp / "meshd.yaml").write_text(f"""mode: sidecar
threads: 1
outbound: {{ listen: "127.0.0.1:{out_p}" }}
inbound: {{ listen: "127.0.0.1:{in_p}", app: "127.0.0.1:{backend}" }}
admin: {{ listen: "127.0.0.1:{admin}" }}
services: []
routes: []
""")
        ready = []
        for _ in range(5):
            t0 = time.monotonic()
            p = start([MESHD, "--config", str(tmp / "meshd.yaml")])
            wait_status(admin, "/ready")
            ready.append((time.monotonic() - t0) * 1000)
            stop(p)
            time.sleep(0.3)
        p = start([MESHD, "--config", str(tmp / "meshd.yaml")])
        wait_status(admin, "/ready")
        time.sleep(3)
        idle = memory([p.pid])
        for _ in range(3):
            get(admin, "/metrics")
        scraped = memory([p.pid])
        busy, summary = load(in_p, "app", [p.pid])
        hwm = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{p.pid}/status").read_text()).group(1))
        rows.append(("meshd", idle, scraped, busy, hwm, summary))
        stop(p)

        # HAProxy, one thread.
        p, hp = start_haproxy(tmp / "haproxy.cfg", backend)
        wait_status(hp, "/")
        time.sleep(3)
        idle = memory(family(p))
        busy, summary = load(hp, "app", family(p))
        rows.append(("HAProxy 1 thread", idle, idle, busy, 0, summary))
        stop(p)

        # nginx as a proxy: master + one worker.
        p, np_ = start_nginx_proxy(tmp / "n", backend)
        wait_status(np_, "/")
        time.sleep(3)
        idle = memory(family(p))
        busy, summary = load(np_, "app", family(p))
        rows.append(("nginx 1 worker (+ master)", idle, idle, busy, 0, summary))
        stop(p)
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    shipped = ROOT / ".build/dist/meshd"  # scripts/build-release.sh: stripped, debug info beside it
    size = (shipped if shipped.exists() else Path(MESHD)).stat().st_size
    debug = Path(str(shipped) + ".debug")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} by `bench/memory.py` (one run; MiB = 1024 kB of /proc/PID/status).",
        "",
        "| proxy | idle RSS | idle: anonymous / file-backed | after 3 `/metrics` scrapes | RSS at 1000 req/s | load |",
        "|---|---|---|---|---|---|",
    ]
    for name, idle, scraped, busy, hwm, summary in rows:
        lines.append(f"| {name} | {mib(idle['rss'])} MiB | {mib(idle['anon'])} / {mib(idle['file'])} MiB | "
                     f"{mib(scraped['rss'])} MiB | {mib(busy['rss'])} MiB | {summary} |")
    lines += [
        "",
        f"- meshd ready (`/ready` 200) after exec: {', '.join(f'{r:.0f}' for r in ready)} ms (5 starts; "
        f"the first after a build reads the binary from disk). Peak RSS (VmHWM, during start-up): {mib(rows[0][4])} MiB.",
        f"- Shipped binary (`scripts/build-release.sh`: static Swift runtime and Foundation, stripped): "
        f"{size / 1048576:.0f} MiB; (`.build/dist/meshd`); its debug information, kept beside it as `meshd.debug` (gdb and perf find it "
        f"through `.gnu_debuglink`): {debug.stat().st_size / 1048576:.0f} MiB." if debug.exists() else
        f"- Shipped binary: {size / 1048576:.0f} MiB.",
    ]
    table = "\n".join(lines)
    print(table)
    if update:
        update_doc_section("memory", table)


if __name__ == "__main__":
    main()
