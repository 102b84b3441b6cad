"""What backend.py and fault_backend.py share (stdlib only): the request handler's body reading
(Content-Length or chunked, read completely so a keep-alive connection stays in sync), its replies
(with ``x-backend: NAME``), the threaded server, and the ``PORT <n>`` start-up line."""

import hashlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class BackendHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    sys_version = ""
    timeout = 60  # socket timeout per connection: a stuck peer cannot hold a thread forever
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK would add
    # ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):  # quiet
        pass

    def backend_name(self) -> str:
        raise NotImplementedError

    def _iter_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunk size")
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the blank line
                    while True:
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            return
                left = size
                while left > 0:
                    data = self.rfile.read(min(left, 1 << 20))
                    if not data:
                        raise ConnectionError("eof in chunk data")
                    left -= len(data)
                    yield data
                self.rfile.readline(3)  # CRLF after the chunk
        else:
            n = int(self.headers.get("Content-Length") or 0)
            while n > 0:
                data = self.rfile.read(min(n, 1 << 20))
                if not data:
                    raise ConnectionError("eof in body")
                n -= len(data)
                yield data

    def _drain(self):
        for _ in self._iter_body():
            pass

    def _read_body(self):
        """Reads the whole body: (bytes, sha256 hex digest)."""
        h = hashlib.sha256()
        n = 0
        for data in self._iter_body():
            n += len(data)
            h.update(data)
        return n, h.hexdigest()

    def _reply(self, code, body, ctype="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-backend", self.backend_name())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512


def serve(handler, host: str, port: int, label: str):
    """Listens (loopback only), prints ``PORT <n>``, serves until killed."""
    if not host.startswith("127."):
        sys.exit(f"{label}: loopback addresses only")
    srv = Server((host, port), handler)
    print(f"PORT {srv.server_address[1]}", flush=True)
    srv.serve_forever(poll_interval=0.2)
