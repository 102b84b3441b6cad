"""meshctl top and meshctl tap against a running meshd while traffic flows, and the admin `GET /tap`
they stand on; per-route metrics.

`top` and `tap` run in tmux (a real terminal: send-keys, capture-pane) and must show the service, its
rate and live requests, and leave with exit status 0 on Ctrl-C. `GET /tap` filters (status, route,
max) are checked with a raw client, and a tap client that never reads must cost meshd nothing but
dropped events (`meshd_tap_dropped_total`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from meshlib import base_config, http_request, meshctl_bin, metric_value, rss_mib, wait_for

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")


@pytest.fixture(scope="module")
def mesh(start_meshd_module, backend):
    return start_meshd_module(base_config(
        threads=2,
        services=[{"name": "web", "protocol": "http1", "endpoints": [backend.addr]}],
        routes=[{"name": "web-route", "match": {"authority": "web"}, "service": "web"},
                {"name": "fail-route", "match": {"authority": "fail"}, "service": "web"}],
    ), name="live")


def _admin(m) -> str:
    return f"{m.admin[0]}:{m.admin[1]}"


class Traffic:
    """Requests to `web` (and a 503 to `fail` every tenth) at about `rate` per second until stopped."""

    def __init__(self, mesh, rate: float = 50):
        self.mesh, self.rate, self.stop_flag, self.sent = mesh, rate, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop_flag.is_set():
            host, path = ("fail", "/status?code=503") if self.sent % 10 == 9 else ("web", "/status?code=200")
            try:
                http_request(self.mesh.outbound, "GET", path, headers={"Host": host}, timeout=5)
            except OSError:
                pass
            self.sent += 1
            time.sleep(1 / self.rate)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(10)


class TmuxPane:
    def __init__(self, name: str, command: str):
        self.name = name
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
        # The command's exit status is printed after it, so that a capture shows how it left.
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50",
                        f"{command}; echo EXIT=$?; sleep 30"], check=True)

    def text(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout

    def ctrl_c(self):
        subprocess.run(["tmux", "send-keys", "-t", self.name, "C-c"], check=True)

    def close(self):
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_route_metrics(mesh):
    for _ in range(5):
        http_request(mesh.outbound, "GET", "/status?code=200", headers={"Host": "web"})
    text = mesh.metrics_text()
    assert metric_value(text, "meshd_route_requests_total", route="web-route", status_class="2xx") >= 5
    assert metric_value(text, "meshd_route_request_duration_seconds_count", route="web-route") >= 5
    assert 'meshd_route_request_duration_seconds_bucket{route="web-route",le="0.0001"}' in text


def test_top_json_snapshot(mesh):
    t = Traffic(mesh)
    try:
        time.sleep(0.5)
        r = subprocess.run([meshctl_bin(), "top", "--admin", _admin(mesh), "-o", "json", "--interval", "2"],
                           capture_output=True, text=True, timeout=30)
    finally:
        t.stop()
    assert r.returncode == 0, r.stderr
    rows = {(x["kind"], x["name"]): x for x in json.loads(r.stdout)["rows"]}
    web, route, fail = rows[("service", "web")], rows[("route", "web-route")], rows[("route", "fail-route")]
    assert 20 <= web["rps"] <= 80, web
    assert 0.8 <= web["success"] < 1.0, web  # one in ten is a 503
    assert route["success"] == 1.0 and route["rps"] > 15, route
    assert fail["success"] == 0.0, fail
    assert 0 < web["p50Ms"] <= web["p99Ms"] < 1000, web
    assert web["inFlight"] >= 0 and web["ejected"] == 0, web


def test_top_in_a_terminal_and_ctrl_c(mesh):
    t = Traffic(mesh)
    pane = TmuxPane("meshd-top", f"{meshctl_bin()} top --admin {_admin(mesh)} --interval 0.5")
    try:
        def shows_rate():
            text = pane.text()
            rows = [l.split() for l in text.splitlines() if l.startswith("service") and " web " in f" {l} "]
            return rows and float(rows[0][3]) > 5 and "web-route" in text
        wait_for(shows_rate, 10, what=f"meshctl top showing web's rate:\n{pane.text()}")
        pane.ctrl_c()
        wait_for(lambda: "EXIT=0" in pane.text(), 5, what=f"meshctl top leaving on Ctrl-C:\n{pane.text()}")
    finally:
        t.stop()
        pane.close()


def test_tap_in_a_terminal_and_ctrl_c(mesh):
    t = Traffic(mesh)
    pane = TmuxPane("meshd-tap", f"{meshctl_bin()} tap --admin {_admin(mesh)} --max 100000")
    try:
        wait_for(lambda: pane.text().count("/status") >= 5, 10, what=f"live requests in meshctl tap:\n{pane.text()}")
        text = pane.text()
        assert "web-route" in text and "STATUS" in text, text
        pane.ctrl_c()
        wait_for(lambda: "EXIT=0" in pane.text(), 5, what=f"meshctl tap leaving on Ctrl-C:\n{pane.text()}")
    finally:
        t.stop()
        pane.close()


def test_tap_filters_and_max(mesh):
    t = Traffic(mesh, rate=100)
    try:
        r = subprocess.run([meshctl_bin(), "tap", "--admin", _admin(mesh), "--status", "5xx", "--max", "3", "-o", "json"],
                           capture_output=True, text=True, timeout=30)
    finally:
        t.stop()
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert len(lines) == 3, r.stdout
    assert all(l["status"] == 503 and l["route"] == "fail-route" for l in lines), lines
    bad = subprocess.run([meshctl_bin(), "tap", "--admin", _admin(mesh), "--status", "9xx"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "status" in bad.stderr, bad.stderr


def test_a_stuck_tap_client_costs_nothing(mesh):
    """A tap whose client never reads: events are dropped once its connection is not writable; meshd's
    memory stays flat and everyone else is served."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    s.connect((mesh.admin[0], mesh.admin[1]))
    s.sendall(b"GET /tap?max=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        time.sleep(0.3)
        before = rss_mib(mesh.pid)
        dropped0 = metric_value(mesh.metrics_text(), "meshd_tap_dropped_total") or 0
        # meshd's own fast replies (no route: 404), so that far more events come than the kernel's
        # socket buffers (up to tcp_wmem's 4 MiB) can hold for the tap.
        r = subprocess.run(["wrk", "-t1", "-c8", "-d4s", "-H", "Host: nowhere", mesh.out_url + "/"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "Socket errors" not in r.stdout, r.stdout
        ok = http_request(mesh.outbound, "GET", "/status?code=200", headers={"Host": "web"})
        assert ok[0] == 200, ok
        grown = rss_mib(mesh.pid) - before
        dropped = (metric_value(mesh.metrics_text(), "meshd_tap_dropped_total") or 0) - dropped0
        assert dropped > 0, "events for a client that does not read must be dropped"
        assert grown < 20, f"meshd grew {grown:.1f} MiB for a stuck tap"
    finally:
        s.close()
    # The tap is gone with its connection: a new one is accepted.
    wait_for(lambda: mesh.admin_request("GET", "/live")[0] == 200, 5, what="admin serving")
