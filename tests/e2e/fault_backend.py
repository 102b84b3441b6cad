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
import json
import select
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

from backend_base import BackendHandler, serve

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


class Handler(BackendHandler):
    server_version = "e2e-fault-backend"
    timeout = 90  # a stuck peer cannot hold a thread forever

    def backend_name(self) -> str:
        return State.name

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="fault")
    ap.add_argument("--mode", default="ok")
    args = ap.parse_args()
    if not valid_mode(args.mode):
        sys.exit(f"fault_backend: bad mode {args.mode!r}")
    State.name = args.name
    State.mode = args.mode
    serve(Handler, args.host, args.port, "fault_backend")


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
