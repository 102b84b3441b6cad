#!/usr/bin/env python3
"""A small HTTP/1.1 test backend for meshd's end-to-end tests (stdlib only).

Run: python3 backend.py --host 127.0.0.1 --port 0 --name NAME
It prints one line ``PORT <n>`` on stdout once it is listening.

Endpoints (any method; every request body is read completely, Content-Length or chunked):
  /echo-hash      -> JSON {"sha256", "bytes", "transfer_encoding", "content_length", "method"}
  /headers        -> JSON {"method", "path", "version", "headers": [[name, value], ...]}
  /slow?ms=N      -> sleeps N ms, then 200 "slow N\n"
  /die            -> 200 with Content-Length 1000000, sends 100 bytes, then closes the socket
  /close          -> reads the request, closes the socket without any response
  /status?code=N  -> status N with a short body
  /chunked?n=N    -> 200 with a chunked body of N chunks "chunk <i>\n"
  /count          -> JSON {"name", "requests"}: requests served so far, /count itself not included
  anything else   -> 200 "NAME\n" (header x-backend: NAME)

Options: --delay-ms N adds a fixed N ms delay before answering every request (except /count), so
a backend can be made uniformly slower than its peers.
"""

import argparse
import hashlib
import json
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

from backend_base import BackendHandler, serve

MAX_SLOW_MS = 30_000


class Handler(BackendHandler):
    server_version = "e2e-backend"
    name = "backend"
    delay_ms = 0
    served = 0  # requests answered (except /count), under `lock`
    lock = threading.Lock()

    def backend_name(self):
        return self.name

    # -- dispatch -----------------------------------------------------------------------------
    def _handle(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        path = url.path
        if path == "/count":
            self._drain()
            with Handler.lock:
                n = Handler.served
            self._reply(200, json.dumps({"name": self.name, "requests": n}), "application/json")
            return
        with Handler.lock:
            Handler.served += 1
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000.0)
        if path == "/echo-hash":
            h = hashlib.sha256()
            n = 0
            for chunk in self._iter_body():
                h.update(chunk)
                n += len(chunk)
            out = {
                "sha256": h.hexdigest(),
                "bytes": n,
                "transfer_encoding": self.headers.get("Transfer-Encoding"),
                "content_length": self.headers.get("Content-Length"),
                "method": self.command,
            }
            self._reply(200, json.dumps(out), "application/json")
            return
        self._drain()
        if path == "/headers":
            out = {
                "method": self.command,
                "path": self.path,
                "version": self.request_version,
                "headers": [[k, v] for k, v in self.headers.items()],
            }
            self._reply(200, json.dumps(out), "application/json")
        elif path == "/slow":
            ms = min(int(q.get("ms", ["1000"])[0]), MAX_SLOW_MS)
            time.sleep(ms / 1000.0)
            self._reply(200, f"slow {ms}\n")
        elif path == "/die":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.wfile.write(b"x" * 100)
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif path == "/close":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        elif path == "/chunked":
            n = int(q.get("n", ["3"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(n):
                data = f"chunk {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/zeros":
            n = int(q.get("bytes", ["1048576"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            block = bytes(1 << 16)
            sent = 0
            while sent < n:
                k = min(len(block), n - sent)
                self.wfile.write(block[:k])
                sent += k
        elif path == "/status":
            code = int(q.get("code", ["200"])[0])
            self._reply(code, f"status {code}\n")
        else:
            self._reply(200, f"{self.name}\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="backend")
    ap.add_argument("--delay-ms", type=int, default=0, help="fixed delay before every answer (except /count)")
    args = ap.parse_args()
    Handler.name = args.name
    Handler.delay_ms = min(max(args.delay_ms, 0), MAX_SLOW_MS)
    serve(Handler, args.host, args.port, "backend")


if __name__ == "__main__":
    main()
