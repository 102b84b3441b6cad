#!/usr/bin/env python3
"""An HTTP/2 (h2c, prior knowledge only) upload sink for meshd's end-to-end tests, on the `h2` package.

Run: python3 h2_sink.py --host 127.0.0.1 --port 0
It prints one line ``PORT <n>`` on stdout once it is listening.

Every request (any method, any path) is read to its end, hashing the body as it arrives, and answered
200 (400 when the body's length is not its content-length) with a JSON body {"bytes", "sha256", "method", "path", "authority", "protocol": "HTTP/2",
"content_length", "headers", "never_indexed" (names the client sent as never indexed), "dynamic_table"
(the names in the connection's HPACK dynamic table, newest first)}. Flow control: every DATA frame is acknowledged as soon as it is hashed (the sink
never holds a body), with a 1 MiB stream window and a 16 MiB connection window. Anything that is not
HTTP/2 gets a GOAWAY (PROTOCOL_ERROR) and a close.

Refusals (RFC 9113 §8.7, §6.8), for a client's handling of streams that never reached the application:
- ``--goaway-after N``: on the N-th request of a connection, GOAWAY (NO_ERROR) with that request's stream
  as the last one; streams after it are refused (never answered, never counted), the ones up to it are
  answered, then the connection closes.
- ``--refuse-first K``: the first K streams of a connection are reset with REFUSED_STREAM as they open
  (as a server does with streams a client sent before it saw a lower SETTINGS_MAX_CONCURRENT_STREAMS).
Refused streams are counted on stderr (``REFUSED <n>`` lines, one per refusal).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys

from h2.config import H2Configuration
from h2.errors import ErrorCodes
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
    goaway_after = 0
    refuse_first = 0

    def connection_made(self, transport):
        self.transport = transport
        self.conn = H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.conn.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                   SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        self.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.streams: dict[int, Stream] = {}
        self.requests = 0
        self.last_stream: int | None = None  # set by our GOAWAY
        self.flush()

    def refused(self, stream_id: int) -> bool:
        """Whether this new stream is refused (and so never answered)."""
        if self.last_stream is not None and stream_id > self.last_stream:
            sys.stderr.write(f"REFUSED {stream_id} (after GOAWAY)\n")
            return True
        self.requests += 1
        if self.requests <= self.refuse_first:
            self.conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            sys.stderr.write(f"REFUSED {stream_id} (REFUSED_STREAM)\n")
            return True
        if self.goaway_after and self.requests == self.goaway_after:
            self.last_stream = stream_id
            # The frame itself, written between h2's own (its state machine would stop sending once it
            # sent a GOAWAY, and the streams up to this one still need their responses). h2 goes on
            # decoding every header block, so HPACK stays in step.
            self.flush()
            self.transport.write((8).to_bytes(3, "big") + b"\x07\x00" + (0).to_bytes(4, "big")
                                 + stream_id.to_bytes(4, "big") + int(ErrorCodes.NO_ERROR).to_bytes(4, "big"))
        return False

    def maybe_close(self):
        if self.last_stream is not None and not self.streams:
            self.flush()
            self.transport.close()

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
                if not self.refused(ev.stream_id):
                    self.streams[ev.stream_id] = Stream(ev.headers)
            elif isinstance(ev, DataReceived):
                s = self.streams.get(ev.stream_id)
                if s is not None:
                    s.hash.update(ev.data)
                    s.bytes += len(ev.data)
                try:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except (StreamClosedError, ProtocolError):
                    pass
            elif isinstance(ev, StreamEnded):
                s = self.streams.pop(ev.stream_id, None)
                if s is not None:
                    self.respond(ev.stream_id, s)
                    self.maybe_close()
            elif isinstance(ev, StreamReset):
                self.streams.pop(ev.stream_id, None)
                if ev.remote_reset:
                    sys.stderr.write(f"RST_STREAM received: stream {ev.stream_id} error {ev.error_code!r}\n")
            elif isinstance(ev, ConnectionTerminated):
                self.flush()
                self.transport.close()
                return
        self.flush()
        self.maybe_close()

    def respond(self, stream_id: int, s: Stream):
        h = s.headers
        body = json.dumps({
            "bytes": s.bytes, "sha256": s.hash.hexdigest(), "method": h.get(":method"), "path": h.get(":path"),
            "authority": h.get(":authority"), "protocol": "HTTP/2", "content_length": h.get("content-length"),
            "headers": s.headers, "never_indexed": s.never_indexed,
            # What the client's HPACK encoder has added to this connection's dynamic table so far.
            "dynamic_table": [n.decode() for n, _ in self.conn.decoder.header_table.dynamic_entries],
        }).encode() + b"\n"
        # A body shorter or longer than its content-length (a replay that lost a part) is a 400.
        length = h.get("content-length")
        status = "400" if length is not None and length.isdigit() and int(length) != s.bytes else "200"
        try:
            self.conn.send_headers(stream_id, [(":status", status), ("content-type", "application/json"),
                                               ("content-length", str(len(body))), ("x-backend", "h2sink")])
            self.conn.send_data(stream_id, body, end_stream=True)  # far below any window
        except (StreamClosedError, ProtocolError):
            pass


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--goaway-after", type=int, default=0)
    ap.add_argument("--refuse-first", type=int, default=0)
    args = ap.parse_args()
    SinkProtocol.goaway_after = args.goaway_after
    SinkProtocol.refuse_first = args.refuse_first
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
