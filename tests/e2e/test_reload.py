"""Config reload: file polling under load, invalid configs rejected, SIGHUP, admin /reload and a
Kubernetes-ConfigMap-style `..data` symlink swap."""

import os
import re
import signal
import time


from meshlib import base_config, http_request, metric_value, to_yaml, wait_for


def web_config(nginx, extra_routes=(), endpoints=None):
    return base_config(
        threads=2,
        services=[{"name": "web", "endpoints": endpoints or [nginx.addr("web")]}],
        routes=[{"match": {"authority": "web"}, "service": "web"}, *extra_routes],
    )


def route_names(mesh):
    return [r["name"] for r in mesh.admin_json("/routes")["routes"]]


def authorities(mesh):
    return [r["match"]["authority"] for r in mesh.admin_json("/routes")["routes"]]


def reloads(mesh):
    text = mesh.metrics_text()
    return (metric_value(text, "meshd_config_reloads_total", result="ok") or 0.0,
            metric_value(text, "meshd_config_reloads_total", result="failed") or 0.0)


def test_reload_under_load(start_meshd, nginx):
    mesh = start_meshd(web_config(nginx))
    v0 = mesh.admin_json("/config")["version"]
    ok0, failed0 = reloads(mesh)
    wrk = run_wrk_async(mesh)
    try:
        variants = [
            web_config(nginx, extra_routes=[{"name": "second", "match": {"authority": "second"}, "service": "web"}]),
            web_config(nginx, endpoints=[nginx.addr("web"), {"address": nginx.addr("web"), "weight": 3}]),
            "threads: 2\nservices: [ {name: web, endpoints: [\"127.0.0.1:notaport\"]} ]\nbogusKey: 1\n",
            web_config(nginx, extra_routes=[{"name": "third", "match": {"authority": "third"}, "service": "web"}]),
        ]
        time.sleep(0.8)
        for v in variants:
            mesh.write_config(v)
            time.sleep(1.2)  # the file is polled every second
    finally:
        out, err, rc = wrk_result(wrk)
    assert rc == 0, err
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > 100, out
    assert "Non-2xx or 3xx responses" not in out, out
    assert "Socket errors" not in out, out
    ok1, failed1 = reloads(mesh)
    assert ok1 - ok0 >= 3, (ok0, ok1, mesh.stderr_text()[-2000:])
    assert failed1 - failed0 >= 1, (failed0, failed1)
    v1 = mesh.admin_json("/config")["version"]
    assert v1 >= v0 + 3, (v0, v1)
    assert authorities(mesh) == ["web", "third"]
    assert metric_value(mesh.metrics_text(), "meshd_config_version") == v1
    rejected = [r for r in mesh.log_lines() if "rejected" in r.get("msg", "")]
    assert rejected, "the invalid config must be logged"
    assert mesh.alive()


def run_wrk_async(mesh):
    from meshlib import popen
    import subprocess

    cmd = ["wrk", "-t1", "-c8", "-d6s", "--timeout", "5s", "-H", "Host: web", mesh.out_url + "/"]
    return popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wrk_result(p):
    from meshlib import kill_group
    import subprocess

    try:
        out, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise AssertionError("wrk did not finish in 20s")
    return out.decode(), err.decode(), p.returncode


def test_invalid_reload_keeps_old_config(start_meshd, nginx):
    mesh = start_meshd(web_config(nginx))
    v0 = mesh.admin_json("/routes")["version"]
    ok0, failed0 = reloads(mesh)
    mesh.write_config("routes:\n  - match: {authority: web}\n    service: nosuchservice\n")
    wait_for(lambda: reloads(mesh)[1] > failed0, 5, what="failed reload counted")
    assert mesh.admin_json("/routes")["version"] == v0
    assert http_request(mesh.outbound, "GET", "/", headers={"Host": "web"})[:1] == (200,)
    # admin /reload reports the problem too
    status, _, body = mesh.admin_request("POST", "/reload")
    assert status == 400 and b"nosuchservice" in body, (status, body)


def test_sighup_forces_reload(start_meshd, nginx):
    mesh = start_meshd(web_config(nginx))
    v0 = mesh.admin_json("/routes")["version"]
    ok0, _ = reloads(mesh)
    # the file is unchanged: only SIGHUP (not the poller) re-applies it
    mesh.signal(signal.SIGHUP)
    wait_for(lambda: mesh.admin_json("/routes")["version"] == v0 + 1, 5, what="version bump after SIGHUP")
    assert reloads(mesh)[0] == ok0 + 1
    time.sleep(1.5)
    assert mesh.admin_json("/routes")["version"] == v0 + 1, "the poller must not reload an unchanged file"
    assert mesh.alive()
    # and a changed file + SIGHUP: takes effect
    mesh.write_config(web_config(nginx, extra_routes=[{"name": "hup", "match": {"authority": "hup"}, "service": "web"}]))
    mesh.signal(signal.SIGHUP)
    wait_for(lambda: "hup" in route_names(mesh), 3, what="route from SIGHUP reload")
    assert http_request(mesh.outbound, "GET", "/", headers={"Host": "hup"})[0] == 200


def test_admin_reload(start_meshd, nginx):
    mesh = start_meshd(web_config(nginx))
    v0 = mesh.admin_json("/routes")["version"]
    status, _, body = mesh.admin_request("POST", "/reload")
    assert status == 200, body
    assert body.decode().strip() == f"applied version {v0 + 1}"


def test_configmap_symlink_swap(start_meshd, nginx, tmp_path):
    d = tmp_path / "configmap"
    d.mkdir()

    def publish(ts, cfg):
        data_dir = d / f"..{ts}"
        data_dir.mkdir()
        (data_dir / "mesh.yaml").write_text(to_yaml(cfg))
        tmp_link = d / "..data_tmp"
        os.symlink(data_dir.name, tmp_link)
        os.replace(tmp_link, d / "..data")  # atomic swap, as the kubelet does

    publish("2026_01_01_00_00_00.000000001", web_config(nginx))
    os.symlink("..data/mesh.yaml", d / "mesh.yaml")
    mesh = start_meshd(None, config_path=d / "mesh.yaml")
    assert authorities(mesh) == ["web"]
    v0 = mesh.admin_json("/routes")["version"]
    publish("2026_01_01_00_01_00.000000002", web_config(nginx, extra_routes=[
        {"name": "swapped", "match": {"authority": "swapped"}, "service": "web"}]))
    old = d / "..2026_01_01_00_00_00.000000001"
    (old / "mesh.yaml").unlink()
    old.rmdir()
    wait_for(lambda: "swapped" in route_names(mesh), 5, what="route from the swapped ConfigMap")
    assert mesh.admin_json("/routes")["version"] == v0 + 1
    status, _, body = http_request(mesh.outbound, "GET", "/", headers={"Host": "swapped"})
    assert (status, body) == (200, b"web\n")


def test_reload_does_not_drop_in_flight_request(start_meshd, nginx, backend):
    import threading

    cfg = base_config(services=[{"name": "py", "endpoints": [backend.addr]}],
                      routes=[{"match": {"authority": "py"}, "service": "py"}])
    mesh = start_meshd(cfg)
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", http_request(
        mesh.outbound, "GET", "/slow?ms=2500", headers={"Host": "py"}, timeout=10)), daemon=True)
    t.start()
    time.sleep(0.3)
    cfg2 = dict(cfg)
    cfg2["routes"] = cfg["routes"] + [{"name": "new", "match": {"authority": "new"}, "service": "py"}]
    mesh.write_config(cfg2)
    wait_for(lambda: "new" in route_names(mesh), 4, what="reload applied")
    t.join(timeout=10)
    assert res.get("r", (None,))[0] == 200 and res["r"][2] == b"slow 2500\n", res


# ------------------------------------------------------------------------------------------------
# Config size, reloads off the event loops, truncated files (issue 10 defects 3 and 6, issue 15 item 5)

import http.client  # noqa: E402
import threading  # noqa: E402


def many_services(n: int, endpoint: str, **top) -> dict:
    cfg = base_config(
        services=[{"name": f"svc{i}", "endpoints": [endpoint]} for i in range(n)],
        routes=[{"match": {"authority": f"svc{i}.mesh"}, "service": f"svc{i}"} for i in range(n)],
    )
    cfg.update(top)
    return cfg


class Load:
    """Requests on fresh connections, back to back, in a thread: (status or error, seconds) each."""

    def __init__(self, mesh, host: str):
        self.mesh, self.host, self.results, self.stop = mesh, host, [], False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            t0 = time.monotonic()
            try:
                c = http.client.HTTPConnection(*self.mesh.outbound, timeout=10)
                c.request("GET", "/", headers={"Host": self.host})
                r = c.getresponse()
                r.read()
                c.close()
                self.results.append((r.status, time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001
                self.results.append((repr(e), time.monotonic() - t0))

    def finish(self):
        self.stop = True
        self.thread.join(timeout=15)
        return self.results


def test_5000_services_start_and_reload_quickly_without_failures(start_meshd, nginx):
    t0 = time.monotonic()
    mesh = start_meshd(many_services(5000, nginx.addr("web"), threads=2))
    started = time.monotonic() - t0
    assert started < 2.0, f"5000 services: ready after {started:.2f}s"
    load = Load(mesh, "svc4999.mesh")
    time.sleep(0.5)
    cfg = many_services(5000, nginx.addr("web"), threads=2, upstream={"requestTimeout": "14s"})
    mesh.write_config(cfg)
    t0 = time.monotonic()
    mesh.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: mesh.admin_json("/config")["version"] >= 2, timeout=2.0, interval=0.02, what="the reload")
    visible = time.monotonic() - t0
    time.sleep(1.0)
    results = load.finish()
    bad = [r for r in results if r[0] != 200]
    assert not bad, f"{len(bad)} of {len(results)} requests failed around the reload: {bad[:5]}"
    assert len(results) > 20
    assert visible < 2.0
    assert "config reloaded" in mesh.stderr_text()


def test_admin_reload_does_not_block_the_event_loop(start_meshd, nginx):
    """POST /reload of a large file parses and resolves off the event loops: with one loop, requests
    keep being answered meanwhile (they used to wait for the whole parse)."""
    mesh = start_meshd(many_services(20000, nginx.addr("web"), threads=1))
    mesh.write_config(many_services(20000, nginx.addr("web"), threads=1, upstream={"requestTimeout": "14s"}))
    load = Load(mesh, "svc1.mesh")
    time.sleep(0.3)
    t0 = time.monotonic()
    status, _, body = mesh.admin_request("POST", "/reload", timeout=30)
    took = time.monotonic() - t0
    time.sleep(0.3)
    results = load.finish()
    assert status == 200, body
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    slowest = max(r[1] for r in results)
    assert slowest < max(0.25, took / 2), f"a request waited {slowest:.3f}s during a {took:.3f}s reload"


def test_truncated_config_file_is_never_applied(start_meshd, nginx):
    mesh = start_meshd(web_config(nginx))
    path = mesh.config_path
    good = path.read_text()
    ok0, failed0 = reloads(mesh)
    load = Load(mesh, "web")
    path.write_text("")  # a writer that truncates first, or an editor mid-save
    time.sleep(2.5)
    path.write_text(good)
    time.sleep(1.5)
    results = load.finish()
    assert all(r[0] == 200 for r in results), [r for r in results if r[0] != 200][:5]
    assert route_names(mesh), "the empty file was applied"
    path.write_text("")
    time.sleep(0.2)
    mesh.proc.send_signal(signal.SIGHUP)  # forced: rejected, said so, counted
    wait_for(lambda: reloads(mesh)[1] > failed0, timeout=5, what="the failed reload to be counted")
    assert "the file is empty" in mesh.stderr_text()
    assert route_names(mesh)
    path.write_text(good)
