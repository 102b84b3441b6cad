"""A real Prometheus (the Debian package `prometheus`) scrapes meshd's admin `/metrics` every second
while `meshctl latency` sends a known workload through meshd's outbound listener: a fixed rate (open
loop) to a backend that answers after a fixed delay. Prometheus' query API must then return

- `rate(meshd_requests_total[…])` equal to the rate the test sent (±15 %), and the counter's
  increase equal to the requests the backend answered (exactly);
- `histogram_quantile(0.99, rate(meshd_request_duration_seconds_bucket[…]))` between the backend's
  delay and the bucket bound above it (above the client's own p99.9 when this machine was so noisy
  that the client saw requests slower than that bound — meshd's duration of a request is always
  shorter than the client's), and equal to the quantile the test computes itself from the raw
  bucket samples Prometheus stored;
- `up` 1 at every scrape (a scrape whose exposition Prometheus cannot parse is `up` 0).

`promtool check metrics` on meshd's exposition must report no error.

Prometheus runs on a free loopback port with its TSDB in the test's temporary directory and is
killed (as a process group) at the end. Skipped, saying why, when `prometheus` or `promtool` is not
installed (scripts/install-test-deps.sh installs the Debian package).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

import meshlib
from meshlib import Backend, base_config, free_port, http_request, kill_group, popen

DELAY_MS = 60  # the backend's delay: every request meshd sees lasts at least this long; bucket (50 ms, 100 ms]
RATE = 50  # requests per second, open loop
WARMUP_S = 1
DURATION_S = 14
MARGIN_S = 2.0  # seconds cut off each end of the load before measuring (ramp up / down)
SEL = 'direction="outbound",service="slow"'


def _tools() -> tuple[str, str]:
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and promtool):
        pytest.skip("prometheus/promtool not installed and could not be installed here "
                    "(scripts/install-test-deps.sh installs the Debian package `prometheus`)")
    return prom, promtool


class Prometheus:
    """One Prometheus server scraping `targets` every second; its own session, killed by `stop`."""

    def __init__(self, binary: str, workdir: Path, targets: list[str]):
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.port = free_port()
        conf = workdir / "prometheus.yml"
        conf.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: meshd\n    metrics_path: /metrics\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n")
        self.log = workdir / "prometheus.log"
        self.proc = popen(
            [binary, f"--config.file={conf}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        try:
            meshlib.wait_for(self._ready, 60, interval=0.2, what="Prometheus /-/ready")
        except Exception:
            self.stop()
            raise AssertionError(f"Prometheus did not become ready:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"Prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return http_request(("127.0.0.1", self.port), "GET", "/-/ready", timeout=2)[0] == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> tuple[str, list]:
        """GET /api/v1/query → (resultType, result)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        status, _, body = http_request(("127.0.0.1", self.port), "GET",
                                       "/api/v1/query?" + urllib.parse.urlencode(params), timeout=10)
        doc = json.loads(body)
        assert status == 200 and doc.get("status") == "success", f"query {expr!r} → {status}: {body[:500]!r}"
        return doc["data"]["resultType"], doc["data"]["result"]

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query whose result is one sample (None when it is empty)."""
        kind, result = self.query(expr, at)
        assert kind == "vector", (expr, kind, result)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        kill_group(self.proc, signal.SIGTERM, wait=15)
        assert self.proc.poll() is not None, "Prometheus still running"


@pytest.fixture(scope="module")
def tools():
    return _tools()


@pytest.fixture(scope="module")
def mesh(tools, start_meshd_module, tmp_path_factory):
    slow = Backend("slow", logdir=tmp_path_factory.mktemp("slow-backend"), delay_ms=DELAY_MS)
    m = start_meshd_module(base_config(
        threads=1,
        services=[{"name": "slow", "endpoints": [slow.addr]}],
        routes=[{"name": "slow-route", "match": {"authority": "slow"}, "service": "slow"}],
    ), name="prom-meshd")
    yield m, slow
    slow.stop()


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """histogram_quantile's interpolation over (upper bound, cumulative count), +Inf last."""
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    raise AssertionError(buckets)


def _bound_above(x: float, bounds: list[float]) -> float:
    return next((b for b in bounds if b >= x), float("inf"))


def test_prometheus_rate_and_p99_match_the_workload(mesh, tools, meshctl, tmp_path):
    m, slow = mesh
    prom_bin, _ = tools
    admin = f"{m.admin[0]}:{m.admin[1]}"
    prom = Prometheus(prom_bin, tmp_path / "prometheus", [admin])
    try:
        # Scraping before the load starts: the counter's series is there with its starting value.
        meshlib.wait_for(lambda: prom.scalar('sum(up{job="meshd"})') == 1, 30, interval=0.25,
                         what="Prometheus scraping meshd (up == 1)")
        meshlib.wait_for(lambda: (prom.scalar(f'count_over_time(meshd_requests_total{{{SEL},status_class="2xx"}}[1m])')
                                  or 0) >= 2, 30, interval=0.25, what="two scrapes before the load")
        answered0 = slow.count()
        counted0 = m.metric("meshd_requests_total", direction="outbound", service="slow")
        t_start = time.time()
        args = [meshctl, "latency", "--target", f"meshd={m.out_url}/", "--authority", "slow", "--rate", RATE,
                "--connections", 8, "--duration", f"{DURATION_S}s", "--warmup", f"{WARMUP_S}s", "--timeout", "5s", "-o", "json"]
        r = meshlib.run([str(a) for a in args], timeout=DURATION_S + WARMUP_S + 60)
        t_end = time.time()
        assert r.returncode == 0, f"meshctl latency exited {r.returncode}: {r.stderr.decode()}\n{r.stdout.decode()}"
        client = json.loads(r.stdout)["targets"][0]
        assert client["errors"] == 0 and client["ok"] == client["requests"] > 0, client
        answered = slow.count() - answered0

        # Wait for a scrape that saw every request, then read the raw samples Prometheus stored.
        meshlib.wait_for(lambda: prom.scalar(f"sum(meshd_requests_total{{{SEL}}})") == counted0 + answered, 15,
                         interval=0.5, what=f"Prometheus seeing all {answered} requests")
        kind, series = prom.query(f'meshd_requests_total{{{SEL},status_class="2xx"}}[{int(time.time() - t_start) + 30}s]')
        assert kind == "matrix" and len(series) == 1, series
        samples = [(float(t), float(v)) for t, v in series[0]["values"]]
        values = [v for _, v in samples]
        assert values == sorted(values), "the counter went down"
        assert values[-1] - values[0] == answered, (
            f"Prometheus counted {values[-1] - values[0]} requests, the backend answered {answered}")
        # The load is between the last sample before the counter moved and the first one after it stopped.
        first = next(i for i, v in enumerate(values) if v > values[0])
        last = next(i for i, v in enumerate(values) if v == values[-1])
        load_from, load_to = samples[first - 1][0], samples[last][0]
        assert t_start - 5 <= load_from and load_to <= t_end + 5, (t_start, load_from, load_to, t_end)
        s, t = samples[first][0] + MARGIN_S, samples[last - 1][0] - MARGIN_S
        window_ms = int((t - s) * 1000)
        assert window_ms >= 6000, f"steady part of the load too short: {window_ms} ms (samples {samples})"
        rng = f"[{window_ms}ms]"

        # 1. The request rate.
        rate = prom.scalar(f"sum(rate(meshd_requests_total{{{SEL}}}{rng}))", at=t)
        ok_rate = prom.scalar(f'sum(rate(meshd_requests_total{{{SEL},status_class="2xx"}}{rng}))', at=t)
        assert rate is not None and ok_rate == rate, (rate, ok_rate)
        assert abs(rate - RATE) <= 0.15 * RATE, f"Prometheus rate {rate:.2f}/s, the test sent {RATE}/s"

        # 2. p99 from the histogram.
        p99 = prom.scalar(f"histogram_quantile(0.99, sum by (le) (rate(meshd_request_duration_seconds_bucket{{{SEL}}}{rng})))",
                          at=t)
        assert p99 is not None, "no histogram in Prometheus"
        # The same interpolation over the raw bucket samples inside the window.
        kind, bucket_series = prom.query(f"meshd_request_duration_seconds_bucket{{{SEL}}}{rng}", at=t)
        deltas = []
        for b in bucket_series:
            vals = [float(v) for _, v in b["values"]]
            le = float(b["metric"]["le"].replace("+Inf", "inf"))
            deltas.append((le, vals[-1] - vals[0]))
        deltas.sort()
        bounds = [le for le, _ in deltas]
        assert len(bounds) >= 10 and bounds[-1] == float("inf") and len(set(bounds)) == len(bounds), deltas
        own = _quantile(0.99, deltas)
        assert abs(own - p99) <= 0.02 * p99, f"histogram_quantile {p99} vs the raw buckets' {own}: {deltas}"
        delay = DELAY_MS / 1000
        upper = _bound_above(max(delay, client["p999"] / 1000 * 1.01), bounds)
        assert delay <= p99 <= upper, (
            f"p99 {p99 * 1000:.2f} ms outside [{DELAY_MS} ms, {upper * 1000:g} ms] "
            f"(client p99 {client['p99']} ms, p99.9 {client['p999']} ms; buckets {deltas})")
        assert sum(c for le, c in deltas if le < delay) == 0, f"requests faster than the backend's delay: {deltas}"

        # 3. Every scrape succeeded (an exposition Prometheus cannot parse makes `up` 0).
        assert prom.scalar('min_over_time(up{job="meshd"}[2m])') == 1, "a scrape of meshd failed"
        print(f"\nPrometheus: rate {rate:.2f}/s (sent {RATE}/s), p99 {p99 * 1000:.2f} ms (delay {DELAY_MS} ms, "
              f"bound {upper * 1000:g} ms), window {window_ms} ms; meshctl: achieved {client['achievedRate']}/s, "
              f"p50 {client['p50']} ms, p99 {client['p99']} ms, p99.9 {client['p999']} ms; {answered} requests")
    finally:
        prom.stop()


def test_promtool_check_metrics(mesh, tools):
    """`promtool check metrics` on meshd's exposition, after traffic (so per-service, per-route and
    error series are there): no parse error, no lint problem."""
    m, _ = mesh
    _, promtool = tools
    for _ in range(3):
        assert http_request(m.outbound, "GET", "/", headers={"Host": "slow"})[0] == 200
    assert http_request(m.outbound, "GET", "/", headers={"Host": "nowhere"})[0] == 404
    text = m.metrics_text()
    assert "meshd_requests_total" in text and "meshd_request_duration_seconds_bucket" in text
    meshlib.assert_promtool_clean(text, promtool)
