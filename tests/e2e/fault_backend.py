#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 backend for meshd's resilience tests (stdlib only, keep-alive capable).

Run: python3 fault_backend.py --host 127.0.0.1 --port 0 --name NAME --mode MODE
It prints one line ``PORT <n>`` on stdout once it is listening.

Modes (what every request, whatever its method and path, gets):
  ok          200 "NAME\\n"
  500         500 always
  503         503 always
  flaky503    503 for the 1st, 3rd, 5th ... request since the mode was (re)set, 200 for the others
  hang        reads the request, never answers; the connection is closed once the peer closes it
              (or after 60 s)
  slow:N      sleeps N ms, then 200

Every request body is read completely (Content-Length or chunked) before the answer, so a keep-alive
connection stays in sync whatever the answer is. Responses carry ``x-backend: NAME``.

Control endpoints (not counted, not subject to the mode):
  GET /_fault/stats          JSON {"name", "mode", "requests", "methods": {METHOD: n},
                                   "last_body_bytes", "last_body_sha256"}
  GET /_fault/mode?set=MODE  switches the mode (and restarts the flaky503 phase); JSON as /_fault/stats
  GET /count                 JSON {"name", "requests"} (as backend.py's /count)

The module also holds `FaultBackend`, the test-side handle (start, stats, set_mode, kill).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import select
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

MAX_SLOW_MS = 30_000
HANG_MAX_S = 60.0


def valid_mode(mode: str) -> bool:
    if mode in ("ok", "500", "503", "flaky503", "hang"):
        return True
    if mode.startswith("slow:"):
        try:
            return 0 <= int(mode[5:]) <= MAX_SLOW_MS
        except ValueError:
            return False
    return False


class State:
    lock = threading.Lock()
    name = "fault"
    mode = "ok"
    phase = 0  # requests since the mode was set (flaky503)
    requests = 0
    methods: dict = {}
    last_body_bytes = 0
    last_body_sha256 = ""

    @classmethod
    def snapshot(cls) -> dict:
        with cls.lock:
            return {
                "name": cls.name,
                "mode": cls.mode,
                "requests": cls.requests,
                "methods": dict(cls.methods),
                "last_body_bytes": cls.last_body_bytes,
                "last_body_sha256": cls.last_body_sha256,
            }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-fault-backend"
    sys_version = ""
    timeout = 90  # a stuck peer cannot hold a thread forever
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet
        pass

    def _read_body(self) -> tuple[int, str]:
        h = hashlib.sha256()
        n = 0
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            return n, h.hexdigest()
                left = size
                while left > 0:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise ConnectionError("eof in chunk data")
                    left -= len(data)
                    n += len(data)
                    h.update(data)
                self.rfile.readline(3)
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                raise ConnectionError("eof in body")
            left -= len(data)
            n += len(data)
            h.update(data)
        return n, h.hexdigest()

    def _reply(self, code: int, body, ctype: str = "text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-backend", State.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _hang(self):
        """Never answer: wait until the peer closes the connection (or HANG_MAX_S), then close."""
        self.close_connection = True
        sock = self.connection
        deadline = time.monotonic() + HANG_MAX_S
        while time.monotonic() < deadline:
            try:
                r, _, _ = select.select([sock], [], [], 0.5)
                if r and not sock.recv(65536):
                    return
            except OSError:
                return

    def _handle(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        if url.path == "/count":
            self._read_body()
            s = State.snapshot()
            self._reply(200, json.dumps({"name": s["name"], "requests": s["requests"]}), "application/json")
            return
        if url.path == "/_fault/stats":
            self._read_body()
            self._reply(200, json.dumps(State.snapshot()), "application/json")
            return
        if url.path == "/_fault/mode":
            self._read_body()
            mode = q.get("set", [""])[0]
            if not valid_mode(mode):
                self._reply(400, f"bad mode {mode!r}\n")
                return
            with State.lock:
                State.mode = mode
                State.phase = 0
            self._reply(200, json.dumps(State.snapshot()), "application/json")
            return

        n, digest = self._read_body()
        with State.lock:
            State.requests += 1
            State.methods[self.command] = State.methods.get(self.command, 0) + 1
            State.last_body_bytes = n
            State.last_body_sha256 = digest
            State.phase += 1
            mode, phase = State.mode, State.phase
        if mode == "ok":
            self._reply(200, f"{State.name}\n")
        elif mode in ("500", "503"):
            self._reply(int(mode), f"{State.name} fails {mode}\n")
        elif mode == "flaky503":
            if phase % 2 == 1:
                self._reply(503, f"{State.name} flaky 503\n")
            else:
                self._reply(200, f"{State.name}\n")
        elif mode == "hang":
            self._hang()
        elif mode.startswith("slow:"):
            time.sleep(int(mode[5:]) / 1000.0)
            self._reply(200, f"{State.name}\n")
        else:  # unreachable: modes are validated
            self._reply(500, "unknown mode\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="fault")
    ap.add_argument("--mode", default="ok")
    args = ap.parse_args()
    if not args.host.startswith("127."):
        sys.exit("fault_backend: loopback addresses only")
    if not valid_mode(args.mode):
        sys.exit(f"fault_backend: bad mode {args.mode!r}")
    State.name = args.name
    State.mode = args.mode
    srv = Server((args.host, args.port), Handler)
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever(poll_interval=0.2)


# ------------------------------------------------------------------------------------------------
# Test-side handle


class FaultBackend:
    """A fault_backend.py process in its own session (killed as a group by `stop`/`kill`)."""

    def __init__(self, name: str, mode: str = "ok", host: str = "127.0.0.1", logdir=None):
        import re
        import subprocess

        import meshlib

        assert meshlib.is_loopback(host) and valid_mode(mode), (host, mode)
        self.name, self.host = name, host
        err = open(logdir / f"fault-{name}.err", "wb") if logdir else subprocess.DEVNULL
        cmd = [sys.executable, __file__, "--host", host, "--port", "0", "--name", name, "--mode", mode]
        self.proc = meshlib.popen(cmd, stdout=subprocess.PIPE, stderr=err)
        line = meshlib._readline_timeout(self.proc, 10.0)
        m = re.match(rb"PORT (\d+)", line or b"")
        if not m:
            meshlib.kill_group(self.proc)
            raise RuntimeError(f"fault backend {name} did not start: {line!r}")
        self.port = int(m.group(1))
        self.addr = f"{host}:{self.port}"

    def _get(self, path: str) -> dict:
        import meshlib

        status, _, body = meshlib.http_request((self.host, self.port), "GET", path, timeout=5)
        assert status == 200, (self.name, path, status, body)
        return json.loads(body)

    def stats(self) -> dict:
        return self._get("/_fault/stats")

    def count(self) -> int:
        return self.stats()["requests"]

    def set_mode(self, mode: str) -> dict:
        return self._get(f"/_fault/mode?set={mode}")

    def kill(self, sig=None):
        import signal as _signal

        import meshlib

        meshlib.kill_group(self.proc, sig or _signal.SIGKILL)

    stop = kill


if __name__ == "__main__":
    main()
