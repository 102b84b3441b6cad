#!/usr/bin/env python3
"""A WebSocket echo server for meshd's end-to-end tests (needs the `websockets` package, see
requirements.txt).

Run: python3 ws_echo.py --host 127.0.0.1 --port 0
It prints one line ``PORT <n>`` on stdout once it is listening. Every message (text or binary, up to
16 MiB) is sent back as it came, except the text message ``__headers__``, answered with the JSON list
of the handshake request's headers ([[name, value], ...]). On the path ``/greet`` the server speaks
first: right after the handshake it sends the text message ``hello from ws_echo``, then echoes.
"""

import argparse
import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

MAX_SIZE = 16 << 20


def handler(ws):
    try:
        if ws.request is not None and ws.request.path == "/greet":
            ws.send("hello from ws_echo")
        for msg in ws:
            if msg == "__headers__":
                ws.send(json.dumps([[k, v] for k, v in ws.request.headers.raw_items()]))
            else:
                ws.send(msg)
    except ConnectionClosed:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    if not args.host.startswith("127."):
        sys.exit("ws_echo: loopback addresses only")
    with serve(handler, args.host, args.port, max_size=MAX_SIZE, compression=None, ping_interval=None) as srv:
        print(f"PORT {srv.socket.getsockname()[1]}", flush=True)
        srv.serve_forever()


if __name__ == "__main__":
    main()
