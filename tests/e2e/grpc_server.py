#!/usr/bin/env python3
"""A gRPC server (grpcio, plaintext h2c) implementing meshtest.Echo (proto/meshtest.proto) for meshd's
end-to-end tests.

Run: python3 grpc_server.py --host 127.0.0.1 --port 0 --name NAME
It prints one line ``PORT <n>`` on stdout once it is listening.

Every call:
  - sends initial metadata `x-backend: NAME`, plus every `x-echo-*` request metadata entry unchanged;
  - ends with trailing metadata `x-backend-trailer: NAME`, `x-trailer-bin: 00 01 02 fe ff` (binary) and
    `x-trailer-count: <messages this call sent or received>`.
Methods:
  Unary(Msg)               -> the same Msg
  ClientStream(stream Msg) -> Summary{count, bytes, sha256 of the concatenated payloads}
  ServerStream(StreamRequest{count, size, delay_ms}) -> count Msgs, seq 0..count-1, payload
                              grpc_proto.pattern(seq, size), delay_ms between two of them
  Bidi(stream Msg)         -> each Msg echoed as it arrives
  Sleep(SleepRequest{ms})  -> sleeps ms (stops early when the call is cancelled), then Msg{seq: ms}
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent import futures

import grpc

import grpc_proto

pb2, pb2_grpc = grpc_proto.load()

TRAILER_BIN = b"\x00\x01\x02\xfe\xff"
MAX_MSG = 32 << 20


class Echo(pb2_grpc.EchoServicer):
    def __init__(self, name: str):
        self.name = name

    def _start(self, context) -> None:
        echoed = [(k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-")]
        context.send_initial_metadata([("x-backend", self.name)] + echoed)

    def _end(self, context, count: int) -> None:
        context.set_trailing_metadata([("x-backend-trailer", self.name), ("x-trailer-bin", TRAILER_BIN),
                                       ("x-trailer-count", str(count))])

    def Unary(self, request, context):
        self._start(context)
        self._end(context, 1)
        return pb2.Msg(payload=request.payload, seq=request.seq)

    def ClientStream(self, request_iterator, context):
        self._start(context)
        h = hashlib.sha256()
        n = total = 0
        for m in request_iterator:
            h.update(m.payload)
            n += 1
            total += len(m.payload)
        self._end(context, n)
        return pb2.Summary(count=n, bytes=total, sha256=h.hexdigest())

    def ServerStream(self, request, context):
        self._start(context)
        self._end(context, request.count)
        delay = request.delay_ms / 1000.0
        for i in range(request.count):
            if not context.is_active():
                return
            yield pb2.Msg(payload=grpc_proto.pattern(i, request.size), seq=i)
            if delay:
                time.sleep(delay)

    def Bidi(self, request_iterator, context):
        self._start(context)
        n = 0
        for m in request_iterator:
            n += 1
            yield pb2.Msg(payload=m.payload, seq=m.seq)
        self._end(context, n)

    def Sleep(self, request, context):
        self._start(context)
        deadline = time.monotonic() + request.ms / 1000.0
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        self._end(context, 1)
        return pb2.Msg(seq=request.ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="grpc")
    args = ap.parse_args()
    if not args.host.startswith("127."):
        ap.error("loopback addresses only")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.max_receive_message_length", MAX_MSG),
                                  ("grpc.max_send_message_length", MAX_MSG),
                                  ("grpc.so_reuseport", 0)])
    pb2_grpc.add_EchoServicer_to_server(Echo(args.name), server)
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    if not port:
        sys.exit(f"cannot listen on {args.host}:{args.port}")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
