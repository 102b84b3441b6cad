"""Malformed HTTP/2 header blocks (RFC 9113 §8.1.1, §8.2, §8.3), from a client and from an endpoint.

meshd checks every block it receives as it reads it (`HTTP2FieldCheck`; NIO's own block validation
is off). A client's malformed request is a stream error: RST_STREAM(PROTOCOL_ERROR) on that stream
only, counted as a bad request, never forwarded, and the connection's next request is served. An
endpoint's malformed response is a 502 for the client, and a malformed trailers block after the head
breaks the response off (the client never sees it end cleanly). The blocks are built with the
`hpack` package on raw sockets: no HTTP/2 library would send them."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

hpack = pytest.importorskip("hpack", reason="Python package 'hpack' (with h2) is not installed")

from meshlib import base_config, curl, h2_frame, H2_PREFACE  # noqa: E402

HEADERS, DATA, SETTINGS, RST_STREAM, GOAWAY = 1, 0, 4, 3, 7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/")]

# Request blocks a client must not send, each a smuggling or framing hazard once it is HTTP/1.1. (An
# empty field name is refused earlier, by NIO's HPACK decoder: a COMPRESSION_ERROR for the connection.)
BAD_REQUESTS = {
    "uppercase-name": GET + [("X-Upper", "1")],
    "crlf-in-value": GET + [("x-a", "1\r\nx-injected: 1")],
    "lf-in-value": GET + [("x-a", "1\nGET /smuggled HTTP/1.1")],
    "nul-in-value": GET + [("x-a", "a\x00b")],
    "space-in-path": [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "/a HTTP/1.1")],
    "crlf-in-authority": [(":method", "GET"), (":scheme", "http"), (":authority", "web\r\nx: y"), (":path", "/")],
    "empty-path": [(":method", "GET"), (":scheme", "http"), (":authority", "web"), (":path", "")],
    "space-in-name": GET + [("x a", "1")],
    "connection": GET + [("connection", "close")],
    "transfer-encoding": GET + [("transfer-encoding", "chunked")],
    "keep-alive": GET + [("keep-alive", "5")],
    "upgrade": GET + [("upgrade", "websocket")],
    "te-gzip": GET + [("te", "gzip")],
    "pseudo-after-regular": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/")],
    "unknown-pseudo": GET + [(":foo", "bar")],
    "status-in-request": GET + [(":status", "200")],
    "repeated-path": GET + [(":path", "/again")],
    "missing-scheme": [(":method", "GET"), (":authority", "web"), (":path", "/")],
    "missing-method": [(":scheme", "http"), (":authority", "web"), (":path", "/")],
    "connect-with-path": [(":method", "CONNECT"), (":authority", "web:80"), (":path", "/")],
}


def read_frames(sock: socket.socket):
    """Yields (type, flags, stream, payload) until the connection closes."""
    buf = b""
    while True:
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            ftype, flags, sid = buf[3], buf[4], struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
            yield ftype, flags, sid, buf[9:9 + length]
            buf = buf[9 + length:]
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


class MalformedResponder:
    """An h2c endpoint (prior knowledge) on raw sockets that answers each request with the response
    its `:path` names: `/ok`, or one of `BAD_RESPONSES`."""

    BAD_RESPONSES = {
        "/uppercase-name": [[(":status", "200"), ("X-Upper", "1")]],
        "/crlf-in-value": [[(":status", "200"), ("x-a", "1\r\nset-cookie: stolen=1")]],
        "/missing-status": [[("content-type", "text/plain")]],
        "/long-status": [[(":status", "2000")]],
        "/status-600": [[(":status", "600")]],
        "/connection": [[(":status", "200"), ("connection", "close")]],
        "/path-in-response": [[(":status", "200"), (":path", "/")]],
        "/pseudo-after-regular": [[("x-a", "1"), (":status", "200")]],
        # A valid head and body, then trailers carrying a pseudo-header.
        "/pseudo-in-trailers": [[(":status", "200"), ("content-type", "text/plain")], b"partial", [(":status", "200")]],
    }

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket):
        encoder, decoder = hpack.Encoder(), hpack.Decoder()
        try:
            if conn.recv(24, socket.MSG_WAITALL) != H2_PREFACE[:24]:
                return
            conn.sendall(h2_frame(SETTINGS, 0, 0))
            for ftype, flags, sid, payload in read_frames(conn):
                if ftype == SETTINGS and not flags & ACK:
                    conn.sendall(h2_frame(SETTINGS, ACK, 0))
                elif ftype == HEADERS:
                    block = dict(decoder.decode(payload))
                    parts = self.BAD_RESPONSES.get(block.get(":path"), [[(":status", "200")]])
                    out = b""
                    for i, part in enumerate(parts):
                        last = END_STREAM if i == len(parts) - 1 else 0
                        if isinstance(part, bytes):
                            out += h2_frame(DATA, last, sid, part)
                        else:
                            out += h2_frame(HEADERS, END_HEADERS | last, sid, encoder.encode(part))
                    conn.sendall(out)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.listener.close()


@pytest.fixture(scope="module")
def responder():
    r = MalformedResponder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def meshd(start_meshd_module, nginx, responder):
    return start_meshd_module(base_config(
        threads=1,
        services=[{"name": "web", "protocol": "http1", "endpoints": [nginx.addr("web")]},
                  {"name": "bad", "protocol": "http2", "endpoints": [f"127.0.0.1:{responder.port}"]}],
        routes=[{"match": {"authority": "web"}, "service": "web"},
                {"match": {"authority": "bad"}, "service": "bad"}]), name="h2-malformed")


def test_malformed_requests_reset_their_stream_only(meshd):
    before = meshd.metric("meshd_errors_total", kind="bad-request", direction="outbound") or 0
    encoder = hpack.Encoder()
    sock = socket.create_connection(meshd.outbound, timeout=10)
    try:
        out = H2_PREFACE
        streams = {}
        for i, (name, block) in enumerate(BAD_REQUESTS.items()):
            sid = 1 + 2 * i
            streams[sid] = name
            out += h2_frame(HEADERS, END_HEADERS | END_STREAM, sid, encoder.encode(block, huffman=False))
        good = 1 + 2 * len(BAD_REQUESTS)
        out += h2_frame(HEADERS, END_HEADERS | END_STREAM, good, encoder.encode(GET))
        sock.sendall(out)
        resets, status = {}, None
        decoder = hpack.Decoder()
        for ftype, flags, sid, payload in read_frames(sock):
            if ftype == RST_STREAM:
                resets[sid] = struct.unpack(">I", payload)[0]
            elif ftype == HEADERS and sid == good:
                status = dict(decoder.decode(payload)).get(":status")
            elif ftype == HEADERS:
                decoder.decode(payload)
            elif ftype == GOAWAY:
                pytest.fail(f"meshd closed the connection: GOAWAY {payload.hex()}")
            if status is not None and len(resets) >= len(streams):
                break
    finally:
        sock.close()
    wrong = {streams.get(s, s): code for s, code in resets.items() if code != 1 or s not in streams}
    missing = [n for s, n in streams.items() if s not in resets]
    assert not wrong and not missing, f"not reset with PROTOCOL_ERROR: {missing}; other codes: {wrong}"
    assert status == "200", "the connection's next request is served"
    after = meshd.metric("meshd_errors_total", kind="bad-request", direction="outbound") or 0
    assert after - before == len(BAD_REQUESTS)


@pytest.mark.parametrize("path", sorted(p for p in MalformedResponder.BAD_RESPONSES if p != "/pseudo-in-trailers"))
def test_a_malformed_response_head_is_a_502(meshd, path):
    url = f"http://{meshd.outbound[0]}:{meshd.outbound[1]}{path}"
    r = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "host: bad", url)
    assert r.stdout == b"502", f"{path}: {r.stdout} {r.stderr}"
    ok = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "host: bad", url.replace(path, "/ok"))
    assert ok.stdout == b"200", "the endpoint's connection still serves"


def test_malformed_trailers_break_the_response_off(meshd):
    url = f"http://{meshd.outbound[0]}:{meshd.outbound[1]}/pseudo-in-trailers"
    r = curl("-o", "/dev/null", "-H", "host: bad", url)
    assert r.returncode != 0, "the client must not see a clean end of a response whose trailers were malformed"
