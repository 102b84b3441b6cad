"""Allocations per request are a tested budget, as SwiftNIO's allocation tests make them: meshd runs
under an LD_PRELOAD interposer that counts every C heap allocation (malloc, calloc, realloc and the
aligned ones — Swift's allocations all end there), a fixed number of requests goes through, and the
count per request must stay within `malloc/budget.json`. A change that allocates more per request
fails CI; one that allocates less should lower the budget (the test prints the measured figures)."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from meshlib import HERE, Meshd, Nginx, base_config, run

BUDGET = json.loads((HERE / "malloc" / "budget.json").read_text())
H2LOAD_RE = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed")


@pytest.fixture(scope="module")
def interposer(tmp_path_factory):
    out = tmp_path_factory.mktemp("malloc") / "malloc_count.so"
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "no C compiler (cc, gcc or clang) to build the malloc-counting interposer"
    r = run([compiler, "-O2", "-shared", "-fPIC", "-o", str(out), str(HERE / "malloc" / "malloc_count.c")], timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    return out


class Counted:
    """meshd with its allocations counted."""

    def __init__(self, workdir: Path, config: dict, interposer: Path, name: str):
        self.file = workdir / f"{name}.mallocs"
        self.mesh = Meshd(workdir, config, name=name,
                          env={"LD_PRELOAD": str(interposer), "MALLOC_COUNT_FILE": str(self.file)})

    def count(self) -> int:
        before = self.file.stat().st_mtime_ns if self.file.exists() else 0
        os.kill(self.mesh.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.file.exists() and self.file.stat().st_mtime_ns != before:
                text = self.file.read_text().strip()
                if text:
                    return int(text)
            time.sleep(0.01)
        raise AssertionError("the interposer did not answer SIGUSR2 (is LD_PRELOAD honoured?)")


def h2load(addr, *, n: int, c: int, m: int, h1: bool) -> None:
    args = ["h2load", "-n", str(n), "-c", str(c), "-m", str(m), "--connect-to", f"{addr[0]}:{addr[1]}"]
    if h1:
        args.append("--h1")
    r = run(args + ["http://web/"], timeout=120)
    out = r.stdout.decode()
    got = H2LOAD_RE.search(out)
    assert r.returncode == 0 and got and int(got.group(4)) == n, out


def per_request(counted: Counted, addr, *, h1: bool, n: int, c: int, m: int) -> float:
    h2load(addr, n=2000, c=c, m=m, h1=h1)  # warm: pools, caches, buffers at their working size
    time.sleep(0.3)
    start = counted.count()
    h2load(addr, n=n, c=c, m=m, h1=h1)
    time.sleep(0.3)
    return (counted.count() - start) / n


@pytest.fixture(scope="module")
def nginx_h2c(tmp_path_factory):
    """nginx answering `web` over h2c (prior knowledge): the upstream of an h2 → h2 stream."""
    n = Nginx(tmp_path_factory.mktemp("nginx-h2c"), ["web"], h2c=("web",))
    yield n
    n.stop()


def config(nginx, protocol="http1"):
    return base_config(threads=1, services=[{"name": "web", "endpoints": [nginx.addr("web")], "protocol": protocol}],
                       routes=[{"match": {"authority": "web"}, "service": "web"}])


@pytest.mark.parametrize("kind", ["http1", "http2", "h2-h2"])
def test_allocations_per_request_within_budget(kind, interposer, nginx, nginx_h2c, tmp_path):
    cfg = config(nginx_h2c, "http2") if kind == "h2-h2" else config(nginx)
    counted = Counted(tmp_path, cfg, interposer, f"alloc-{kind}")
    try:
        n = 20000
        if kind == "http1":
            # 8 keep-alive connections, one request at a time each (connection set-up amortised).
            measured = per_request(counted, counted.mesh.outbound, h1=True, n=n, c=8, m=1)
        else:
            # 4 HTTP/2 connections, 10 concurrent streams each; meshd → nginx over its HTTP/1.1 pool,
            # or (h2-h2) over h2c, the stream's heads passed on as HPACK blocks.
            measured = per_request(counted, counted.mesh.outbound, h1=False, n=n, c=4, m=10)
        budget = BUDGET[kind]["mallocs_per_request"]
        print(f"{kind}: {measured:.1f} allocations per request (budget {budget})")
        assert measured <= budget, (
            f"{kind}: {measured:.1f} allocations per proxied request, over the budget of {budget} "
            f"(tests/e2e/malloc/budget.json): find the new allocation on the request path")
        assert measured > 0.8 * budget, (
            f"{kind}: {measured:.1f} allocations per request is far under the budget of {budget}: "
            f"lower it in tests/e2e/malloc/budget.json (or the interposer counts nothing)")
    finally:
        counted.mesh.stop()
