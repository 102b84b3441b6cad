"""Process lifecycle: graceful drain on SIGTERM/SIGINT, the built-in default, JSON logs."""

import json
import os
import signal
import socket
import threading
import time

import pytest

from meshlib import base_config, http_request, metric_value, raw_exchange, wait_for


def slow_config(backend, drain="10s"):
    return base_config(
        drainTimeout=drain,
        inbound={"listen": "127.0.0.1:0", "app": backend.addr},
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}],
    )


def in_flight(mesh):
    svc = mesh.admin_json("/services")["services"][0]
    return sum(e["inFlight"] for e in svc["endpoints"])


def start_slow_request(mesh, ms):
    result = {}

    def go():
        try:
            result["resp"] = http_request(mesh.outbound, "GET", f"/slow?ms={ms}", headers={"Host": "py"}, timeout=15)
        except Exception as e:  # noqa: BLE001
            result["error"] = e
        result["done_at"] = time.monotonic()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    wait_for(lambda: in_flight(mesh) == 1, 5, what="slow request in flight")
    return t, result


def connect_refused(addr) -> bool:
    try:
        with socket.create_connection(addr, timeout=1) as s:
            # accepted: a listener that is closing may still hand out a connection, but it must not serve
            s.sendall(b"GET / HTTP/1.1\r\nHost: py\r\n\r\n")
            s.settimeout(1)
            return s.recv(100) == b""
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_request(start_meshd, backend, sig):
    mesh = start_meshd(slow_config(backend))
    t, result = start_slow_request(mesh, 2000)
    t_sig = time.monotonic()
    mesh.signal(sig)
    # new connections are refused while the slow request is still draining
    wait_for(lambda: connect_refused(mesh.outbound), 1.5, interval=0.05, what="outbound refusing new connections")
    assert mesh.alive(), "meshd exited before the in-flight request finished"
    # while draining, /ready must not say ready (the admin listener may also be closed already)
    try:
        ready_status = mesh.admin_request("GET", "/ready", timeout=2)[0]
    except OSError:
        ready_status = None
    assert ready_status != 200, "/ready answered 200 while draining"
    t.join(timeout=10)
    assert "error" not in result, f"in-flight request failed during drain: {result.get('error')!r}"
    status, h, body = result["resp"]
    assert (status, body) == (200, b"slow 2000\n")
    rc = mesh.wait_exit(10)
    exited_at = time.monotonic()
    assert rc == 0, f"exit status {rc}; stderr:\n{mesh.stderr_text()[-3000:]}"
    assert exited_at - t_sig < 10, "meshd did not exit within drainTimeout"
    assert result["done_at"] <= exited_at


def test_sigterm_inbound_listener_stops_accepting(start_meshd, backend):
    """SIGTERM → stop accepting on every proxy listener, not only outbound."""
    mesh = start_meshd(slow_config(backend))
    assert http_request(mesh.inbound, "GET", "/", headers={"Host": "app"})[0] == 200
    t, result = start_slow_request(mesh, 2000)
    mesh.signal(signal.SIGTERM)
    wait_for(lambda: connect_refused(mesh.outbound), 1.5, interval=0.05, what="outbound refusing new connections")
    time.sleep(0.2)
    assert mesh.alive(), "meshd exited before the in-flight request finished"
    try:
        got = raw_exchange(mesh.inbound, b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", timeout=1.5)[0]
    except ConnectionRefusedError:
        got = b""
    assert got == b"", f"inbound listener served a new connection after SIGTERM: {got[:200]!r}"
    t.join(timeout=10)
    assert result.get("resp", (None,))[0] == 200, result
    assert mesh.wait_exit(10) == 0


def test_sigterm_drains_in_flight_inbound_request(start_meshd, backend):
    """An in-flight request on the inbound listener is drained like an outbound one."""
    mesh = start_meshd(slow_config(backend))
    res = {}

    def go():
        try:
            res["resp"] = http_request(mesh.inbound, "GET", "/slow?ms=2000", headers={"Host": "app"}, timeout=15)
        except Exception as e:  # noqa: BLE001
            res["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    wait_for(lambda: metric_value(mesh.metrics_text(), "meshd_connections_open", direction="inbound") == 1, 5,
             what="inbound connection open")
    time.sleep(0.3)  # the request is at the app now
    mesh.signal(signal.SIGTERM)
    t.join(timeout=12)
    rc = mesh.wait_exit(10)
    assert "error" not in res, f"in-flight inbound request failed during drain: {res.get('error')!r}"
    assert res["resp"][::2] == (200, b"slow 2000\n")
    assert rc == 0


def test_drain_timeout_bounds_shutdown(start_meshd, backend):
    mesh = start_meshd(slow_config(backend, drain="1s"))
    t, result = start_slow_request(mesh, 5000)
    t0 = time.monotonic()
    mesh.signal(signal.SIGTERM)
    rc = mesh.wait_exit(8)
    took = time.monotonic() - t0
    assert rc == 0, f"exit status {rc}"
    assert took < 3.5, f"shutdown took {took:.2f}s with drainTimeout 1s"
    t.join(timeout=10)
    # the request could not finish in time: the client must see a failure, not a fake success
    assert "error" in result or result["resp"][0] != 200, result


def test_stderr_is_json_lines_through_lifecycle(start_meshd, nginx):
    mesh = start_meshd(base_config(
        services=[{"name": "web", "endpoints": [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}],
    ))
    for _ in range(3):
        assert http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})[0] == 200
    mesh.signal(signal.SIGTERM)
    assert mesh.wait_exit(10) == 0
    bad = [line for line in mesh.stderr_text().splitlines() if line.strip() and not _is_json_obj(line)]
    assert not bad, f"non-JSON lines on stderr: {bad}"
    msgs = [json.loads(line)["msg"] for line in mesh.stderr_text().splitlines() if line.strip()]
    assert "meshd ready" in msgs


def _is_json_obj(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


DEFAULT_PORTS = [("127.0.0.1", 4140), ("0.0.0.0", 4143), ("127.0.0.1", 4191)]


def _ports_free():
    busy = []
    for host, port in DEFAULT_PORTS:
        s = socket.socket()
        try:
            s.bind((host, port))
        except OSError:
            busy.append(f"{host}:{port}")
        finally:
            s.close()
    return busy


def test_builtin_default_starts_and_shuts_down(start_meshd):
    busy = _ports_free()
    if busy:
        pytest.skip(f"built-in default needs ports 4140/4143/4191 but {', '.join(busy)} in use on this machine")
    mesh = start_meshd(None, wait_ready=False)
    mesh.wait_ready()
    first = mesh.log_lines()[0]
    assert first.get("msg") == "no --config given: starting with the built-in sidecar default", first
    assert mesh.outbound == ("127.0.0.1", 4140)
    assert mesh.inbound[1] == 4143
    assert mesh.admin == ("127.0.0.1", 4191)
    status, _, body = mesh.admin_request("GET", "/ready")
    assert status == 200, body
    cfg = mesh.admin_json("/config")
    assert cfg["mode"] == "sidecar" and cfg["inbound"]["app"] == "127.0.0.1:8080"
    status, _, body = mesh.admin_request("POST", "/shutdown")
    assert status == 200, body
    assert mesh.wait_exit(10) == 0


def executable_mappings(pid):
    """The executable's own mappings in /proc/PID/smaps, as dicts: perms, and Size, Rss, Anonymous in kB."""
    exe = os.readlink(f"/proc/{pid}/exe")
    maps, current = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:
                current = None
                if len(fields) >= 6 and fields[5] == exe:
                    current = {"perms": fields[1]}
                    maps.append(current)
            elif current is not None and fields[0] in ("Size:", "Rss:", "Anonymous:"):
                current[fields[0][:-1]] = int(fields[1])
    return maps


def test_code_and_readonly_data_leave_the_resident_set_after_ready(start_meshd, backend):
    """A second after ready, meshd drops its executable's code and never-written read-only data from
    its resident set (they stay in the page cache); its RELRO and data pages stay, and it serves on."""
    mesh = start_meshd(slow_config(backend), args=["--log-level", "debug"])
    # (the log line is the drop's; its "bytes" are the sizes of the mappings it advised)
    released = wait_for(
        lambda: next((r for r in mesh.log_lines() if r.get("msg", "").startswith("start-up code pages released")), None),
        10, what="the code pages' release")
    maps = executable_mappings(mesh.pid)
    code = [m for m in maps if m["perms"] == "r-xp"]
    readonly = [m for m in maps if m["perms"] == "r--p"]
    assert code and readonly, maps
    clean = [m for m in readonly if m["Anonymous"] == 0]
    written = [m for m in readonly if m["Anonymous"] > 0]  # RELRO: relocated by the loader
    assert int(released["bytes"]) == sum(m["Size"] for m in code + clean) * 1024, (released, maps)
    # Idle: the code in use faults back in, a fraction of the whole; untouched constants stay out.
    assert sum(m["Rss"] for m in code) < sum(m["Size"] for m in code) // 2, maps
    assert sum(m["Rss"] for m in clean) < 1024, maps
    # The RELRO mapping is there and was left alone (its size is not in the advised bytes above).
    assert written, maps
    # Everything dropped comes back from the file as it is used: requests, metrics.
    for _ in range(3):
        status, _, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "py"})
        assert status == 200, body
    assert mesh.metric("meshd_requests_total", direction="outbound", status_class="2xx") == 3
