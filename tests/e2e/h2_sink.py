#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge only) upload sink for meshd's end-to-end tests, on the `h2` package.

Run: python3 h2_sink.py --host 127.0.0.1 --port 0
It prints one line ``PORT <n>`` on stdout once it is listening.

Every request (any method, any path) is read to its end, hashing the body as it arrives, and answered
200 with a JSON body {"bytes", "sha256", "method", "path", "authority", "protocol": "HTTP/2",
"content_length", "headers", "never_indexed" (names the client sent as never indexed), "dynamic_table"
(the names in the connection's HPACK dynamic table, newest first)}. Flow control: every DATA frame is acknowledged as soon as it is hashed (the sink
never holds a body), with a 1 MiB stream window and a 16 MiB connection window. Anything that is not
HTTP/2 gets a GOAWAY (PROTOCOL_ERROR) and a close.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple

STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20


class Stream:
    __slots__ = ("headers", "never_indexed", "hash", "bytes")

    def __init__(self, headers: list):
        self.headers = dict(headers)
        # Headers the client sent as never indexed (RFC 7541 §6.2.3), in order.
        self.never_indexed = [h[0] for h in headers if isinstance(h, NeverIndexedHeaderTuple)]
        self.hash = hashlib.sha256()
        self.bytes = 0


class SinkProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.conn = H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                   SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, Stream] = {}
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def data_received(self, data: bytes):
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, RequestReceived):
                self.streams[ev.stream_id] = Stream(ev.headers)
            elif isinstance(ev, DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.hash.update(ev.data)
                    s.bytes += len(ev.data)
                try:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except StreamClosedError:
                    pass
            elif isinstance(ev, StreamEnded):
                s = self.streams.pop(ev.stream_id, None)
                if s is not None:
                    self.respond(ev.stream_id, s)
            elif isinstance(ev, StreamReset):
                self.streams.pop(ev.stream_id, None)
                if ev.remote_reset:
                    sys.stderr.write(f"RST_STREAM received: stream {ev.stream_id} error {ev.error_code!r}\n")
            elif isinstance(ev, ConnectionTerminated):
                self.flush()
                self.transport.close()
                return
        self.flush()

    def respond(self, stream_id: int, s: Stream):
        h = s.headers
        body = json.dumps({
            "bytes": s.bytes, "sha256": s.hash.hexdigest(), "method": h.get(":method"), "path": h.get(":path"),
            "authority": h.get(":authority"), "protocol": "HTTP/2", "content_length": h.get("content-length"),
            "headers": s.headers, "never_indexed": s.never_indexed,
            # What the client's HPACK encoder has added to this connection's dynamic table so far.
            "dynamic_table": [n.decode() for n, _ in self.conn.decoder.header_table.dynamic_entries],
        }).encode() + b"\n"
        try:
            self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                               ("content-length", str(len(body))), ("x-backend", "h2sink")])
            self.conn.send_data(stream_id, body, end_stream=True)  # far below any window
        except (StreamClosedError, ProtocolError):
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, args.host, args.port, backlog=512)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
