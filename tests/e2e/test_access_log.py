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
    cfg = base_config(accessLog=True, threads=1, services=[{"name": "web", "endpoints": [nginx.addr("web")]}],
                      routes=[{"match": {"authority": "web"}, "service": "web"}])
    cfg.update(top)
    return cfg


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
        def dropped() -> float:
            metrics = subprocess.run(["curl", "-s", f"http://{admin}/metrics"], capture_output=True, text=True,
                                     timeout=10).stdout
            return metric_value(metrics, "meshd_access_log_dropped_total") or 0
        # The 4 MiB bound holds some 10 000 lines: a slow (debug) build may need more requests to pass it.
        for _ in range(4):
            if dropped() > 0:
                break
            assert wrk(M, 3) > 0.5 * first, "requests slowed down once stdout was full"
        assert dropped() > 0, "no line was dropped although nobody read stdout"
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
    cut = [l for l in lines if l["status"] == 499]  # in flight when wrk stopped and closed its connections
    assert len(cut) <= 8, cut
    for l in lines:
        assert fields <= set(l), sorted(fields - set(l))
        assert l["authority"] == "web" and l["direction"] == "outbound" and l["attempts"] == 1, l
        assert re.fullmatch(r"[0-9a-f]{32}", l["trace_id"]), l
        if l["status"] != 499:
            assert l["status"] == 200 and l["bytes_in"] == 0 and l["bytes_out"] == 4, l  # nginx answers "web\n"
    # wrk sends no x-request-id: meshd made one per request, all different.
    assert len({l["request_id"] for l in lines}) == len(lines)
    assert (metric_value(m.metrics_text(), "meshd_access_log_dropped_total") or 0) == 0


def test_file_reopened_on_sigusr1_after_rotation(start_meshd, nginx, tmp_path):
    """`accessLog.path`: lines go to the file; logrotate renames it and sends SIGUSR1; new lines go to a
    new file at the path, none is lost or duplicated."""
    import signal

    log = tmp_path / "access.log"
    m = start_meshd(web(nginx, accessLog={"path": str(log)}), name="access-file")
    first = wrk(m, 1)
    time.sleep(0.5)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    m.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.exists(), "SIGUSR1 must reopen the access log at its path"
    second = wrk(m, 1)
    time.sleep(0.5)
    old_lines = [json.loads(l) for l in rotated.read_text().splitlines()]
    new_lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert first <= len(old_lines) <= first + 8, (first, len(old_lines))
    assert second <= len(new_lines) <= second + 8, (second, len(new_lines))
    ids = [l["request_id"] for l in old_lines + new_lines]
    assert len(ids) == len(set(ids))
    assert m.stdout_text().strip() == "", "with a path, nothing goes to standard output"


def test_sample_ratio(start_meshd, nginx):
    """`accessLog.sampleRatio: 0.1`: about a tenth of the requests get a line; meshd's own error replies
    (here 404 no-route) always do."""
    m = start_meshd(web(nginx, accessLog={"sampleRatio": 0.1}), name="access-sampled")
    n = wrk(m, 2)
    for _ in range(20):
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Host: nowhere", m.out_url + "/"], timeout=10)
    time.sleep(0.5)
    lines = [json.loads(l) for l in m.stdout_text().splitlines()]
    ok = [l for l in lines if l["status"] == 200]
    errors = [l for l in lines if l.get("error") == "no-route"]
    assert len(errors) == 20, len(errors)
    assert 0.05 * n <= len(ok) <= 0.15 * n, (len(ok), n)
