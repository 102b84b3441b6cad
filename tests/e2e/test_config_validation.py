"""Config validation: bad files exit 2 naming the key path and line; --check; env overrides."""

import re
import time

import pytest

from meshlib import meshd_bin, run

GOOD = """\
threads: 1
outbound: { listen: "127.0.0.1:0" }
inbound: { listen: "127.0.0.1:0", app: "127.0.0.1:8080" }
admin: { listen: "127.0.0.1:0" }
services:
  - name: web
    endpoints: ["127.0.0.1:8081", { address: "127.0.0.1:8082", weight: 2 }]
routes:
  - match: { authority: web }
    service: web
"""

# name → (file text, key path, line of the offending node)
BAD = {
    "unknown_key": (
        """\
threads: 1
outbound: { listen: "127.0.0.1:0" }
inbund: { listen: "127.0.0.1:0" }
""",
        "inbund", 3, r"unknown key 'inbund'"),
    "bad_address": (
        """\
threads: 1
outbound: { listen: "127.0.0.1:0" }
services:
  - name: web
    endpoints:
      - "127.0.0.1:8081"
      - "x"
routes:
  - match: { authority: web }
    service: web
""",
        r"services[0].endpoints[1]", 7, r"invalid address 'x'"),
    "bad_port": (
        """\
services:
  - name: web
    endpoints: ["127.0.0.1:99999"]
""",
        r"services[0].endpoints[0]", 3, r"127\.0\.0\.1:99999"),
    "unknown_service": (
        """\
services:
  - name: web
    endpoints: ["127.0.0.1:8081"]
routes:
  - match: { authority: web }
    service: web
  - match: { authority: api }
    service: nope
""",
        r"routes[1].service", 8, r"unknown service 'nope'"),
    "bad_duration": (
        """\
http:
  maxHeaderBytes: 65536
  headerReadTimeout: soon
""",
        "http.headerReadTimeout", 3, r"invalid value 'soon'"),
    "bad_yaml": (
        """\
threads: 1
services: [ { name: web
""",
        "", 3, r"YAML syntax error"),
}


def check(path, *extra):
    return run([meshd_bin(), "--check", "--config", str(path), *extra], timeout=10)


def start(path, *extra):
    return run([meshd_bin(), "--config", str(path), *extra], timeout=10)


@pytest.mark.parametrize("name", list(BAD))
@pytest.mark.parametrize("how", ["check", "start"])
def test_bad_config_exits_2_with_path_and_line(tmp_path, name, how):
    text, key, line, reason = BAD[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    r = (check if how == "check" else start)(f)
    err = r.stderr.decode()
    assert r.returncode == 2, f"exit {r.returncode}; stderr:\n{err}"
    # e.g. "services[0].endpoints[1] (line 7, column 9): invalid address 'x': missing ':PORT'"
    prefix = re.escape(key) if key else r"\(root\)"
    pat = prefix + r" \(line " + str(line) + r"(, column \d+)?\): .*" + reason
    assert re.search(pat, err), f"stderr does not match /{pat}/:\n{err}"


def test_bad_address_message_exact(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD["bad_address"][0])
    r = check(f)
    assert "services[0].endpoints[1] (line 7, column 9): invalid address 'x': missing ':PORT'" in r.stderr.decode(), \
        r.stderr.decode()


def test_all_problems_reported(tmp_path):
    f = tmp_path / "multi.yaml"
    f.write_text("""\
threads: 1
bogus: 2
services:
  - name: web
    endpoints: ["nope"]
routes:
  - match: { authority: web }
    service: missing
""")
    r = check(f)
    err = r.stderr.decode()
    assert r.returncode == 2
    assert re.search(r"bogus \(line 2", err), err
    assert re.search(r"services\[0\]\.endpoints\[0\] \(line 5", err), err
    assert re.search(r"routes\[0\]\.service \(line 8", err), err


NODE_NO_IP = """\
mode: node
threads: 1
admin: { listen: "127.0.0.1:0" }
"""


@pytest.mark.parametrize("how", ["check", "start"])
def test_node_mode_without_node_ip_exits_2(tmp_path, how):
    f = tmp_path / "node.yaml"
    f.write_text(NODE_NO_IP)
    r = (check if how == "check" else start)(f)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert re.search(r"^\s*nodeIP\b.*missing required key 'nodeIP", err, re.M), err


def test_node_mode_without_node_ip_names_line(tmp_path):
    """The brief: every bad file's message names the key path and a line number. For a missing
    nodeIP the natural line is the `mode: node` key (line 1)."""
    f = tmp_path / "node.yaml"
    f.write_text(NODE_NO_IP)
    err = check(f).stderr.decode()
    assert re.search(r"nodeIP \(line \d+", err), err


def test_node_mode_ip_from_flag_or_env_is_valid(tmp_path):
    f = tmp_path / "node.yaml"
    f.write_text(NODE_NO_IP)
    assert check(f, "--node-ip", "127.0.0.2").returncode == 0
    r = run([meshd_bin(), "--check", "--config", str(f)], timeout=10, env={"MESHD_NODE_IP": "127.0.0.2", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr


def test_check_good_file(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    r = check(f)
    assert r.returncode == 0, r.stderr
    assert "configuration is valid: 1 services, 1 routes" in r.stdout.decode()


def test_check_good_json_file(tmp_path):
    f = tmp_path / "good.json"
    f.write_text('{"threads": 1, "services": [{"name": "web", "endpoints": ["127.0.0.1:8081"]}],'
                 ' "routes": [{"match": {"authority": "web"}, "service": "web"}]}')
    r = check(f)
    assert r.returncode == 0, r.stderr


def test_missing_config_file_exits_2(tmp_path):
    r = check(tmp_path / "does-not-exist.yaml")
    assert r.returncode == 2
    assert "does-not-exist.yaml" in r.stderr.decode()


def test_env_app_port_override(tmp_path, start_meshd):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    mesh = start_meshd(None, config_path=f, env={"MESHD_APP_PORT": "18123"})
    cfg = mesh.admin_json("/config")
    assert cfg["inbound"]["app"] == "127.0.0.1:18123", cfg["inbound"]
    # and the file value without the override
    mesh2 = start_meshd(None, config_path=f)
    assert mesh2.admin_json("/config")["inbound"]["app"] == "127.0.0.1:8080"


def test_env_app_port_invalid_exits_2(tmp_path):
    f = tmp_path / "good.yaml"
    f.write_text(GOOD)
    r = run([meshd_bin(), "--check", "--config", str(f)], timeout=10,
            env={"MESHD_APP_PORT": "notaport", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert "inbound.app" in r.stderr.decode() and "notaport" in r.stderr.decode()


# Issue 15 item 8: --check agrees with a start; a FIFO never blocks; huge values are not echoed whole.


@pytest.mark.parametrize("how", ["check", "start"])
def test_unresolvable_host_is_invalid_for_check_and_start(tmp_path, how):
    f = tmp_path / "unresolvable.yaml"
    f.write_text("admin: { listen: \"127.0.0.1:0\" }\nservices:\n  - name: web\n    endpoints: [\"no-such-host.invalid:80\"]\n"
                 "routes:\n  - match: { authority: web }\n    service: web\n")
    r = (check if how == "check" else start)(f)
    assert r.returncode == 2, r
    assert b"does not resolve" in r.stderr, r.stderr


def test_fifo_as_config_is_refused_at_once(tmp_path):
    import os
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    r = check(fifo)
    assert r.returncode == 2, r
    assert b"not a regular file" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 5


def test_huge_invalid_value_is_not_echoed_whole(tmp_path):
    f = tmp_path / "huge.yaml"
    f.write_text("mode: " + "x" * (10 << 20) + "\n")
    r = check(f)
    assert r.returncode == 2
    assert len(r.stderr) < 4096, len(r.stderr)
    assert b"bytes)" in r.stderr


def test_meshctl_check_agrees_on_unresolvable_hosts_and_fifos(tmp_path):
    import os
    from meshlib import meshctl_bin
    f = tmp_path / "unresolvable.yaml"
    f.write_text("services:\n  - name: web\n    endpoints: [\"no-such-host.invalid:80\"]\n")
    r = run([meshctl_bin(), "check", str(f)], timeout=20)
    assert r.returncode == 1 and b"does not resolve" in r.stdout, r
    fifo = tmp_path / "c.fifo"
    os.mkfifo(fifo)
    r = run([meshctl_bin(), "check", str(fifo)], timeout=10)
    assert r.returncode == 2 and b"not a regular file" in r.stderr, r
