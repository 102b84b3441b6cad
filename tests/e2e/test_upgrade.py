"""Upgrading meshd in place: a successor started with `--takeover` receives the running meshd's
listening sockets over `upgrade.socket` (SCM_RIGHTS), becomes ready, and only then does the old one
stop accepting, drain and exit 0 — under load, no request fails and no connection is refused."""

import array
import re
import socket
import subprocess
import threading
import time

import pytest

from meshlib import Meshd, base_config, http_request, kill_group, metric_value, popen, wait_for


def config(tmp_path, nginx, backend, **top):
    cfg = base_config(
        threads=2,
        drainTimeout="10s",
        upgrade={"socket": str(tmp_path / "upgrade.sock")},
        services=[{"name": "web", "endpoints": [nginx.addr("web")]}, {"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}, {"match": {"authority": "py"}, "service": "py"}],
    )
    cfg.update(top)
    return cfg


class NewConnections:
    """A client opening a new connection for every request (each must be accepted and answered)."""

    def __init__(self, addr):
        self.addr = addr
        self.ok = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                status, _, _ = http_request(self.addr, "GET", "/", headers={"Host": "web", "Connection": "close"}, timeout=5)
                if status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"status {status}")
            except Exception as e:  # noqa: BLE001
                self.failures.append(repr(e))
            time.sleep(0.002)

    def finish(self):
        self.stop.set()
        self.thread.join(10)


def wrk_output(p, timeout=40):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise AssertionError("wrk did not finish")
    out = out.decode()
    assert p.returncode == 0, err.decode()
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    return out, int(m.group(1))


def slow_request(addr, ms):
    result = {}

    def go():
        try:
            result["resp"] = http_request(addr, "GET", f"/slow?ms={ms}", headers={"Host": "py"}, timeout=20)
        except Exception as e:  # noqa: BLE001
            result["error"] = repr(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, result


def backlog(addr) -> int:
    """The accept backlog of the listening socket at addr (ss: Send-Q of a LISTEN socket)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{addr[1]}"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].endswith(f":{addr[1]}"):
            return int(fields[2])
    raise AssertionError(f"no listening socket on {addr}: {out!r}")


def assert_backlogs(m: Meshd):
    """The documented bounds (docs/architecture.md): proxy listeners 1024, admin 64."""
    assert (backlog(m.outbound), backlog(m.inbound), backlog(m.admin)) == (1024, 1024, 64)


def takeover(tmp_path, old: Meshd, name: str) -> Meshd:
    new = Meshd(tmp_path, None, name=name, config_path=old.config_path, args=["--takeover"])
    assert new.outbound == old.outbound and new.inbound == old.inbound and new.admin == old.admin, (
        "the successor must serve on the same sockets")
    return new


def test_takeover_under_load_loses_nothing(tmp_path, nginx, backend):
    old = Meshd(tmp_path, config(tmp_path, nginx, backend), name="old")
    try:
        assert_backlogs(old)
        wrk = popen(["wrk", "-t1", "-c16", "-d6s", "--timeout", "5s", "-H", "Host: web", old.out_url + "/"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        fresh = NewConnections(old.outbound)
        time.sleep(1.5)
        # An in-flight request when the hand-over happens finishes on the old meshd.
        slow, slow_result = slow_request(old.outbound, 2500)
        wait_for(lambda: (old.metric("meshd_connections_open", direction="outbound") or 0) >= 1, 5, what="slow request")
        new = takeover(tmp_path, old, "new")
        try:
            assert old.wait_exit(15) == 0, f"the old meshd did not drain and exit 0:\n{old.stderr_text()[-3000:]}"
            out, requests = wrk_output(wrk)
            fresh.finish()
            slow.join(20)
            assert "Socket errors" not in out and "Non-2xx" not in out, out
            assert requests > 500, out
            assert fresh.failures == [], fresh.failures[:5]
            assert fresh.ok > 50
            assert "error" not in slow_result, slow_result
            assert slow_result["resp"][0] == 200
            # The old one said what happened; the new one counted it and serves alone.
            assert any(r.get("msg", "").startswith("listener hand-over done") for r in old.log_lines()), old.stderr_text()[-2000:]
            assert new.metric("meshd_upgrade_handovers_total", result="taken_over") == 1
            assert_backlogs(new)
            status, _, body = http_request(new.outbound, "GET", "/", headers={"Host": "web"})
            assert status == 200 and body == b"web\n"
            # And it can hand over in turn.
            newer = takeover(tmp_path, new, "newer")
            try:
                assert new.wait_exit(15) == 0, new.stderr_text()[-3000:]
                assert http_request(newer.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
                assert newer.admin_request("GET", "/ready")[0] == 200
            finally:
                newer.stop()
        finally:
            new.stop()
    finally:
        old.stop()


def test_takeover_with_no_running_meshd_binds_new_listeners(tmp_path, nginx, backend):
    m = Meshd(tmp_path, config(tmp_path, nginx, backend), name="first", args=["--takeover"])
    try:
        assert any("no meshd listens on upgrade.socket" in r.get("msg", "") for r in m.log_lines())
        assert http_request(m.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
        assert (tmp_path / "upgrade.sock").is_socket()
    finally:
        m.stop()
    # A meshd that stops without a successor removes its socket.
    assert not (tmp_path / "upgrade.sock").exists()


def test_takeover_needs_upgrade_socket(tmp_path):
    m = Meshd(tmp_path, base_config(), name="nosocket", args=["--takeover"], wait_ready=False)
    assert m.wait_exit(10) == 2
    assert "--takeover needs upgrade.socket" in m.stderr_text()


def test_successor_that_leaves_early_changes_nothing(tmp_path, nginx, backend):
    m = Meshd(tmp_path, config(tmp_path, nginx, backend), name="giver")
    path = str(tmp_path / "upgrade.sock")
    try:
        # A successor that takes the sockets and dies before READY.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            s.sendall(b"TAKEOVER 1\n")
            msg, fds, _, _ = socket.recv_fds(s, 4096, 16)
            assert msg.startswith(b"LISTENERS ") and msg.endswith(b"\n"), msg
            names = msg.decode().split()[1:]
            assert {"admin", "outbound", "inbound"} <= set(names) and len(fds) == len(names)
            # They are the listening sockets meshd serves on.
            for name, fd in zip(names, fds):
                with socket.socket(fileno=fd) as ls:
                    port = ls.getsockname()[1]
                    assert ls.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
                    expected = {"admin": m.admin, "outbound": m.outbound, "inbound": m.inbound}.get(name)
                    if expected:
                        assert port == expected[1], (name, port, expected)
        # A client speaking something else, and one of another protocol version.
        for line, reply in [(b"HELLO\n", b""), (b"TAKEOVER 9\n", b"REFUSED")]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(line)
                got = s.recv(4096)
                assert got.startswith(reply), (line, got)
        wait_for(lambda: m.metric("meshd_upgrade_handovers_total", result="abandoned") == 2, 5, what="abandoned count")
        assert m.metric("meshd_upgrade_handovers_total", result="refused") == 1
        # Still serving and accepting, still ready, still offering its sockets.
        assert m.alive()
        assert http_request(m.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
        assert m.admin_request("GET", "/ready")[0] == 200
        new = takeover(tmp_path, m, "successor")
        try:
            assert m.wait_exit(15) == 0
            assert http_request(new.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
        finally:
            new.stop()
    finally:
        m.stop()


def test_after_handover_wait_idles_without_listeners_until_sigterm(tmp_path, nginx, backend):
    cfg = config(tmp_path, nginx, backend)
    cfg["upgrade"]["afterHandover"] = "wait"
    old = Meshd(tmp_path, cfg, name="k8s-old")
    new = None
    try:
        new = takeover(tmp_path, old, "k8s-new")
        wait_for(lambda: any("waiting for SIGTERM" in r.get("msg", "") for r in old.log_lines()), 15, what="old drained")
        assert old.alive(), "afterHandover: wait must keep the old process up"
        # It holds no listening socket any more (the successor's are the only ones).
        listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
        assert f"pid={old.pid}," not in listening, listening
        assert http_request(new.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
        t = time.monotonic()
        old.signal(__import__("signal").SIGTERM)
        assert old.wait_exit(5) == 0
        assert time.monotonic() - t < 3
    finally:
        if new:
            new.stop()
        old.stop()
