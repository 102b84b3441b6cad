"""Helpers for meshd's end-to-end tests: processes, YAML, HTTP, metrics.

Everything here talks to loopback addresses only and bounds every wait.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BACKEND_PY = HERE / "backend.py"

READY_TIMEOUT = 20.0


def meshd_bin() -> str:
    return os.environ.get("MESHD_BIN") or str(REPO / ".build" / "release" / "meshd")


def meshctl_bin() -> str:
    """MESHCTL_BIN, else the meshctl next to the meshd under test."""
    return os.environ.get("MESHCTL_BIN") or str(Path(meshd_bin()).parent / "meshctl")


def is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("localhost", "::1", "[::1]")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    assert is_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    assert is_loopback(host)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s: {last}")


# --------------------------------------------------------------------------------------------
# Processes


class ProcessRegistry:
    """Every process the suite starts, each in its own session (process group), killed at the end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def add(self, p: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(p)
        return p

    def kill_all(self):
        for p in self.procs:
            kill_group(p)
        self.procs.clear()


REGISTRY = ProcessRegistry()


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL, wait: float = 5.0) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
    try:
        p.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=wait)


def popen(args, **kw) -> subprocess.Popen:
    kw.setdefault("start_new_session", True)
    kw.setdefault("stdin", subprocess.DEVNULL)
    return REGISTRY.add(subprocess.Popen(args, **kw))


def run(args, timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed as a group on timeout."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = popen(args, **kw)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(p)
        out, err = p.communicate(timeout=5)
        raise AssertionError(f"command timed out after {timeout}s: {args!r}\nstdout={out!r}\nstderr={err!r}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


class ThreadedListener:
    """A loopback listener that hands each accepted connection to `self._conn(sock)` on its own
    thread (for small hand-made peers in tests); `addr` is "127.0.0.1:PORT"."""

    def __init__(self):
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading

        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c: socket.socket):
        raise NotImplementedError


class Backend:
    """A backend.py process. `delay_ms` delays every answer by that much; `netns` runs it inside that
    network namespace (then `host` is an address inside it, and `count()` is not reachable from here)."""

    def __init__(self, name: str, host: str = "127.0.0.1", logdir: Path | None = None, *, port: int = 0,
                 delay_ms: int = 0, netns: str | None = None):
        assert is_loopback(host)
        self.name = name
        self.host = host
        self.netns = netns
        err = open(logdir / f"backend-{name}.err", "wb") if logdir else subprocess.DEVNULL
        cmd = [sys.executable, str(BACKEND_PY), "--host", host, "--port", str(port), "--name", name]
        if delay_ms:
            cmd += ["--delay-ms", str(delay_ms)]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=err)
        line = _readline_timeout(self.proc, 10.0)
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            kill_group(self.proc)
            raise RuntimeError(f"backend {name} did not start: {line!r}")
        self.port = int(m.group(1))
        self.addr = f"{host}:{self.port}"

    def count(self) -> int:
        """Requests this backend has answered (its own counter, /count excluded)."""
        assert self.netns is None, "count() talks to the backend from this namespace"
        status, _, body = http_request((self.host, self.port), "GET", "/count")
        assert status == 200, (status, body)
        return json.loads(body)["requests"]

    def stop(self):
        kill_group(self.proc)


def _readline_timeout(p: subprocess.Popen, timeout: float) -> bytes | None:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        if sel.select(timeout):
            return p.stdout.readline()
        return None
    finally:
        sel.close()


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 75s;
{servers}
}}
"""

NGINX_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{body}\\n"; }}
    }}
"""


class Nginx:
    """One nginx process with one server per (name → port); each answers `<name>\\n` on every path.
    Those in `h2c` speak HTTP/2 with prior knowledge instead of HTTP/1.1."""

    def __init__(self, workdir: Path, names: list[str], h2c: tuple[str, ...] = ()):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {n: free_port() for n in names}
        servers = "".join(NGINX_SERVER.format(port=p, body=n).replace(f":{p};", f":{p} http2;" if n in h2c else f":{p};")
                          for n, p in self.ports.items())
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=workdir, servers=servers))
        self.proc = popen(
            ["/usr/sbin/nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)],
            stdout=open(workdir / "stdout.log", "wb"),
            stderr=open(workdir / "stderr.log", "wb"),
        )
        try:
            for p in self.ports.values():
                wait_port("127.0.0.1", p, 10.0)
        except Exception:
            self.stop()
            logs = [workdir / "stderr.log", workdir / "error.log"]
            raise RuntimeError("nginx did not start:\n" + "".join(p.read_text() for p in logs if p.exists()))

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def stop(self):
        kill_group(self.proc, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# YAML


def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict) and not v:
        return "{}"
    if isinstance(v, list) and not v:
        return "[]"
    return json.dumps(str(v))  # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars."""
    pad = "  " * indent
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}\n")
        return "".join(out)
    if isinstance(obj, list):
        out = []
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                inner = to_yaml(item, indent + 1)
                out.append(pad + "- " + inner[len(pad) + 2:])
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return pad + _scalar(obj) + "\n"


def base_config(**extra) -> dict:
    """A sidecar on ephemeral loopback ports; merge `extra` over it (top-level keys)."""
    cfg = {
        "mode": "sidecar",
        "threads": 1,
        "outbound": {"listen": "127.0.0.1:0"},
        "inbound": {"listen": "127.0.0.1:0", "app": "127.0.0.1:9"},
        "admin": {"listen": "127.0.0.1:0"},
        "drainTimeout": "5s",
        "services": [],
        "routes": [],
    }
    cfg.update(extra)
    return cfg


# --------------------------------------------------------------------------------------------
# meshd

ADDR_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]):(\d+)$")


def parse_addr(s: str) -> tuple[str, int]:
    """`127.0.0.1:4140` → ("127.0.0.1", 4140). Tolerates a decorated form ending in IP:PORT."""
    m = ADDR_RE.search(s)
    if not m:
        raise ValueError(f"cannot parse address {s!r}")
    return m.group(1), int(m.group(2))


class Meshd:
    """A running meshd process with its stderr (JSON log) and stdout (access log) in files."""

    def __init__(self, workdir: Path, config: dict | str | None, *, name: str = "meshd", args=(),
                 env: dict | None = None, config_path: Path | None = None, wait_ready: bool = True,
                 prefix=(), netns: "NetNS | None" = None):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.netns = netns
        if netns is not None:
            prefix = netns.prefix + list(prefix)
        self.config_path = config_path
        if config is not None:
            if self.config_path is None:
                self.config_path = workdir / f"{name}.yaml"
            self.write_config(config)
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_path = workdir / f"{name}.stdout"
        cmd = [meshd_bin()]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        cmd = list(prefix) + cmd + list(args)
        full_env = dict(os.environ)
        for k in ("MESHD_MODE", "MESHD_NODE_IP", "MESHD_APP_PORT"):
            full_env.pop(k, None)
        full_env.update(env or {})
        self.cmd = cmd
        self.proc = popen(cmd, stdout=open(self.stdout_path, "wb"), stderr=open(self.stderr_path, "wb"), env=full_env)
        self.pid = self.proc.pid
        self.ready_line: dict | None = None
        self.outbound = self.inbound = self.admin = None
        if wait_ready:
            self.wait_ready()

    # -- config ---------------------------------------------------------------------------------
    def write_config(self, config: dict | str, path: Path | None = None) -> None:
        """Atomic write (temp file + rename), as a config-management tool would."""
        text = config if isinstance(config, str) else to_yaml(config)
        path = path or self.config_path
        tmp = path.with_name(f".{path.name}.tmp{time.monotonic_ns()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    # -- lifecycle ------------------------------------------------------------------------------
    def log_lines(self) -> list[dict]:
        out = []
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"raw": line})
        return out

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec in self.log_lines():
                if rec.get("msg") == "meshd ready":
                    self.ready_line = rec
                    self.outbound = parse_addr(rec["outbound"])
                    self.inbound = parse_addr(rec["inbound"])
                    self.admin = parse_addr(rec["admin"])
                    return rec
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"meshd exited with {self.proc.returncode} before ready; stderr:\n{self.stderr_text()[-4000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"meshd not ready after {timeout}s; stderr:\n{self.stderr_text()[-4000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            if self.wait_exit(10) is None:
                kill_group(self.proc)
        kill_group(self.proc)  # any stray child in the group

    # -- URLs -----------------------------------------------------------------------------------
    @property
    def out_url(self) -> str:
        return f"http://{self.outbound[0]}:{self.outbound[1]}"

    @property
    def in_url(self) -> str:
        return f"http://{self.inbound[0]}:{self.inbound[1]}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin[0]}:{self.admin[1]}"

    # -- admin API ------------------------------------------------------------------------------
    def admin_request(self, method: str, path: str, body: bytes | str | None = None, timeout: float = 5.0):
        if self.netns is not None:
            return self.netns.http_request(self.admin, method, path, body=body, timeout=timeout)
        return http_request(self.admin, method, path, body=body, timeout=timeout)

    def admin_json(self, path: str):
        status, _, body = self.admin_request("GET", path)
        assert status == 200, f"GET {path} → {status}: {body!r}"
        return json.loads(body)

    def metrics_text(self) -> str:
        status, _, body = self.admin_request("GET", "/metrics")
        assert status == 200, f"GET /metrics → {status}"
        return body.decode()

    def metric(self, name: str, **labels) -> float | None:
        return metric_value(self.metrics_text(), name, **labels)

    def vm_hwm_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")


# --------------------------------------------------------------------------------------------
# HTTP


def http_request(addr: tuple[str, int], method: str, path: str, *, headers: dict | None = None,
                 body: bytes | str | None = None, timeout: float = 5.0):
    """One request on a fresh connection → (status, headers as lower-cased dict, body bytes)."""
    assert is_loopback(addr[0])
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def raw_exchange(addr: tuple[str, int], data: bytes, *, timeout: float = 5.0, source: str | None = None,
                 read_until_close: bool = True) -> tuple[bytes, bool, float]:
    """Send `data` on a raw TCP connection and read until the peer closes (or `timeout`).

    Returns (bytes received, closed-by-peer, seconds until close or timeout)."""
    assert is_loopback(addr[0])
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    t0 = time.monotonic()
    got = b""
    closed = False
    try:
        s.connect(addr)
        try:
            if data:
                s.sendall(data)
        except OSError:
            pass
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if not read_until_close and b"\r\n\r\n" in got:
                break
    finally:
        s.close()
    return got, closed, time.monotonic() - t0


def parse_response_head(raw: bytes) -> tuple[int, dict]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    assert m, f"not an HTTP response: {raw[:200]!r}"
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), headers


def curl(*args, timeout: float = 20.0, input_file=None) -> subprocess.CompletedProcess:
    """curl with a hard --max-time; never follows proxies from the environment."""
    cmd = ["curl", "-sS", "--max-time", str(timeout)] + [str(a) for a in args]
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    kw = {}
    if input_file is not None:
        kw["stdin"] = input_file
    return run(cmd, timeout=timeout + 10, env=env, **kw)


# --------------------------------------------------------------------------------------------
# Network namespaces


class NetNSUnavailable(Exception):
    pass


class NetNS:
    """A network namespace of the suite's own (unique name), with `lo` up: 127.0.0.0/8 inside it is
    private to the test. Files written with `write_etc` are bind-mounted over /etc by `ip netns exec`
    (e.g. resolv.conf). `delete()` kills whatever still runs inside, removes the namespace and
    /etc/netns/NAME."""

    _count = 0

    def __init__(self, tag: str = "e2e"):
        if os.geteuid() != 0:
            raise NetNSUnavailable("network namespaces need root")
        NetNS._count += 1
        self.name = f"meshd-{tag}-{os.getpid()}-{NetNS._count}"
        self.etc = Path("/etc/netns") / self.name
        self._made_etc_root = False
        r = run(["ip", "netns", "add", self.name], timeout=10)
        if r.returncode != 0:
            raise NetNSUnavailable(f"ip netns add failed: {r.stderr.decode().strip()}")
        try:
            self.check(["ip", "-n", self.name, "link", "set", "lo", "up"])
        except Exception:
            self.delete()
            raise

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def check(self, args, timeout: float = 10.0) -> subprocess.CompletedProcess:
        r = run(args, timeout=timeout)
        assert r.returncode == 0, f"{args!r} → {r.returncode}: {r.stderr.decode()}"
        return r

    def exec(self, args, timeout: float = 10.0, **kw) -> subprocess.CompletedProcess:
        return run(self.prefix + [str(a) for a in args], timeout=timeout, **kw)

    def write_etc(self, name: str, text: str) -> Path:
        root = self.etc.parent
        if not root.exists():
            root.mkdir(mode=0o755)
            self._made_etc_root = True
        self.etc.mkdir(mode=0o755, exist_ok=True)
        p = self.etc / name
        p.write_text(text)
        p.chmod(0o644)
        return p

    def curl(self, *args, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """curl inside the namespace (hard --max-time, no proxies from the environment)."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        cmd = self.prefix + ["curl", "-sS", "--max-time", str(timeout)] + [str(a) for a in args]
        return run(cmd, timeout=timeout + 10, env=env)

    def http_request(self, addr: tuple[str, int], method: str, path: str, *, headers: dict | None = None,
                     body: bytes | str | None = None, timeout: float = 5.0):
        """As `http_request`, from inside the namespace (curl) → (status, lower-cased headers, body)."""
        args = ["-i", "-X", method, "-H", "Expect:"]
        for k, v in (headers or {}).items():
            args += ["-H", f"{k}: {v}"]
        if body is not None:
            args += ["--data-binary", body if isinstance(body, str) else body.decode()]
        r = self.curl(*args, f"http://{addr[0]}:{addr[1]}{path}", timeout=timeout)
        assert r.returncode == 0, f"curl in {self.name} {method} {path}: rc={r.returncode} {r.stderr.decode()}"
        head, _, data = r.stdout.partition(b"\r\n\r\n")
        status, hdrs = parse_response_head(head + b"\r\n\r\n")
        return status, hdrs, data

    def pids(self) -> list[int]:
        r = run(["ip", "netns", "pids", self.name], timeout=10)
        return [int(x) for x in r.stdout.split()] if r.returncode == 0 else []

    def delete(self) -> None:
        for pid in self.pids():  # only processes this test started can be inside
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        run(["ip", "netns", "del", self.name], timeout=10)
        if self.etc.exists():
            for f in self.etc.iterdir():
                f.unlink()
            self.etc.rmdir()
        if self._made_etc_root:
            try:
                self.etc.parent.rmdir()  # only if empty
            except OSError:
                pass


# --------------------------------------------------------------------------------------------
# Prometheus text

SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"(?:,|(?=\})))*\})?'
    r" ([-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|\+Inf|-Inf|Inf))( -?[0-9]+)?$"
)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    samples = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"not a Prometheus sample line: {line!r}")
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric_value(text: str, name: str, **labels) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    total = None
    for n, ls, v in parse_metrics(text):
        if n == name and all(ls.get(k) == str(val) for k, val in labels.items()):
            total = (total or 0.0) + v
    return total


def wait_for(pred, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")


# ------------------------------------------------------------------------------------------------
# Raw HTTP/2 frames and process memory, for the frame-level flood and timeout tests


def h2_frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


# The client connection preface and an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0)


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def promtool_check_metrics(text: str, promtool: str = "promtool") -> tuple[int, list[str]]:
    """`promtool check metrics` on a Prometheus text exposition → (exit status, problem lines).

    Exit status 0: clean; 3: lint problems only (each line `NAME PROBLEM`, e.g. `foo no help text`);
    1: the text could not be parsed (`error while linting: …`)."""
    p = popen([promtool, "check", "metrics"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(text.encode(), timeout=30)
    except subprocess.TimeoutExpired:
        kill_group(p)
        raise AssertionError("promtool check metrics timed out")
    lines = [ln for ln in (out + err).decode(errors="replace").splitlines() if ln.strip()]
    return p.returncode, lines


def assert_promtool_clean(text: str, promtool: str = "promtool") -> None:
    """`promtool check metrics` finds nothing: the text parses, and every family has its HELP and TYPE
    and a conforming name."""
    rc, lines = promtool_check_metrics(text, promtool)
    assert rc == 0, f"promtool check metrics exited {rc} on meshd's exposition:\n" + "\n".join(lines)
