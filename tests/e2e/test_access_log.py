"""The access log never blocks an event loop (issue 10, defect 4): with meshd's standard output a
pipe that nobody reads, requests keep being served at normal speed; lines that do not fit the
writer's bound are dropped and counted (`meshd_access_log_dropped_total`); with a reader, every
request has its line."""

from __future__ import annotations

import json
import re
import subprocess
import time

from meshlib import base_config, meshd_bin, metric_value, popen, kill_group, wait_port, to_yaml  # noqa: F401


def web(nginx, **top):
    return base_config(accessLog=True, threads=1, services=[{"name": "web", "endpoints": [nginx.addr("web")]}],
                       routes=[{"match": {"authority": "web"}, "service": "web"}], **top)


def wrk(mesh, seconds: int = 3) -> int:
    r = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-H", "Host: web", mesh.out_url + "/"],
                       capture_output=True, text=True, timeout=seconds + 30)
    assert r.returncode == 0, r.stderr
    assert "Non-2xx" not in r.stdout and "Socket errors" not in r.stdout, r.stdout
    return int(r.stdout.split(" requests in")[0].split()[-1])


def test_stuck_stdout_does_not_block_requests(start_meshd, nginx, tmp_path):
    m = start_meshd(web(nginx), name="stuck-stdout")
    # Replace the file stdout with a pipe nobody reads: restart meshd with stdout=PIPE.
    m.stop()
    cfg = tmp_path / "stuck.yaml"
    cfg.write_text(to_yaml(web(nginx)))
    err = open(tmp_path / "stuck.err", "wb")
    proc = popen([meshd_bin(), "--config", str(cfg)], stdout=subprocess.PIPE, stderr=err)
    try:
        deadline = time.monotonic() + 20
        ready = None
        while time.monotonic() < deadline and ready is None:
            for line in (tmp_path / "stuck.err").read_text().splitlines():
                if "meshd ready" in line:
                    ready = json.loads(line)
            time.sleep(0.05)
        assert ready, (tmp_path / "stuck.err").read_text()
        host, port = ready["outbound"].rsplit(":", 1)
        admin = ready["admin"]

        class M:
            out_url = f"http://{host}:{port}"
        first = wrk(M, 3)  # fills the 64 KiB pipe within a few hundred requests, then the 4 MiB bound
        second = wrk(M, 3)
        assert first > 3000 and second > 3000, (first, second)
        assert second > 0.5 * first, f"requests slowed down once stdout was full: {first} then {second}"
        metrics = subprocess.run(["curl", "-s", f"http://{admin}/metrics"], capture_output=True, text=True, timeout=10).stdout
        dropped = metric_value(metrics, "meshd_access_log_dropped_total") or 0
        assert dropped > 0, "no line was dropped although nobody read stdout"
    finally:
        kill_group(proc)


def test_every_request_has_its_line(start_meshd, nginx):
    m = start_meshd(web(nginx), name="access-lines")
    n = wrk(m, 2)
    time.sleep(0.5)  # the last 100 ms flush
    text = m.stdout_text().splitlines()
    lines = [json.loads(l) for l in text]  # every line is one JSON object
    # wrk counts the requests it finished; meshd also logs the (at most 8) it cut off at the end.
    assert n <= len(lines) <= n + 8, (len(lines), n)
    fields = {"ts_ms", "direction", "method", "authority", "path", "status", "duration_ms", "client", "service",
              "upstream", "attempts", "bytes_in", "bytes_out", "request_id", "trace_id"}
    for l in lines:
        assert fields <= set(l), sorted(fields - set(l))
        assert l["status"] == 200 and l["authority"] == "web" and l["direction"] == "outbound", l
        assert l["attempts"] == 1 and l["bytes_in"] == 0 and l["bytes_out"] == 4, l  # nginx answers "web\n"
        assert re.fullmatch(r"[0-9a-f]{32}", l["trace_id"]), l
    # wrk sends no x-request-id: meshd made one per request, all different.
    assert len({l["request_id"] for l in lines}) == len(lines)
    assert (metric_value(m.metrics_text(), "meshd_access_log_dropped_total") or 0) == 0
