#!/usr/bin/env python3
"""A TCP echo server (and a streaming client) for meshd's opaque-TCP end-to-end tests (stdlib only).

Server: python3 tcp_echo.py serve --host 127.0.0.1 --port 0 [--banner TEXT] [--log FILE]
  Prints one line ``PORT <n>`` on stdout once it is listening. Per connection: sends the banner (if
  any) at once, without waiting for a byte, then echoes everything it reads until EOF; on EOF it
  shuts down its write side (a half-close answered by a half-close) and closes. With --log, one JSON
  line per finished connection is appended to FILE:
  {"peer", "bytes" (received), "sha256" (of the received bytes), "eof" (true: the peer half-closed;
  false: reset/error), "error"}.

Client: python3 tcp_echo.py client --connect HOST:PORT [--source ADDR] --bytes N [--timeout S]
  Streams N bytes (1 MiB blocks, each numbered) while reading the echo concurrently, shuts down its
  write side after the last byte, reads until EOF and prints one JSON line (see `stream`). Used from
  inside network namespaces; the tests on the host call `stream` directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import struct
import threading
import time

BLOCK = 1 << 20


def serve(host: str, port: int, banner: bytes, log_path: str | None) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(256)
    print(f"PORT {srv.getsockname()[1]}", flush=True)
    log_lock = threading.Lock()

    def log(rec: dict) -> None:
        if not log_path:
            return
        with log_lock, open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def handle(c: socket.socket, peer) -> None:
        h = hashlib.sha256()
        n = 0
        eof = False
        err = None
        c.settimeout(120)  # a stuck peer cannot hold a thread forever
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if banner:
                c.sendall(banner)
            while True:
                data = c.recv(256 * 1024)
                if not data:
                    eof = True
                    break
                h.update(data)
                n += len(data)
                c.sendall(data)
            c.shutdown(socket.SHUT_WR)
        except OSError as e:
            err = f"{type(e).__name__}: {e}"
        finally:
            c.close()
            log({"peer": f"{peer[0]}:{peer[1]}", "bytes": n, "sha256": h.hexdigest(), "eof": eof, "error": err})

    while True:
        c, peer = srv.accept()
        threading.Thread(target=handle, args=(c, peer), daemon=True).start()


def blocks(total: int, seed: bytes = b"meshd-e2e"):
    """`total` bytes in 1 MiB blocks; block i is its index (8 bytes) + a fixed pseudo-random body, so
    a lost, duplicated or reordered block changes the hash."""
    body = hashlib.shake_256(seed).digest(BLOCK - 8)
    i = 0
    left = total
    while left > 0:
        b = struct.pack(">Q", i) + body
        yield b[:left] if left < BLOCK else b
        left -= BLOCK
        i += 1


def stream(addr: tuple[str, int], total: int, *, source: str | None = None, timeout: float = 60.0,
           banner_len: int = 0) -> dict:
    """Send `total` bytes while reading the echo, then SHUT_WR and read until EOF.

    Returns {"sent", "sent_sha256", "received", "received_sha256", "eof" (the peer closed its write
    side cleanly after everything), "error", "seconds", "banner" (the first `banner_len` bytes
    received, not hashed)}."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.settimeout(timeout)
    if source:
        s.bind((source, 0))
    t0 = time.monotonic()
    sent_h = hashlib.sha256()
    sent = 0
    send_err = []

    def sender():
        nonlocal sent
        try:
            for b in blocks(total):
                s.sendall(b)
                sent_h.update(b)
                sent += len(b)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            send_err.append(f"send: {type(e).__name__}: {e}")

    recv_h = hashlib.sha256()
    received = 0
    banner = b""
    eof = False
    err = None
    try:
        s.connect(addr)
        t = threading.Thread(target=sender, daemon=True)
        t.start()
        while True:
            data = s.recv(1 << 20)
            if not data:
                eof = True
                break
            if len(banner) < banner_len:
                k = banner_len - len(banner)
                banner += data[:k]
                data = data[k:]
            recv_h.update(data)
            received += len(data)
        t.join(timeout)
    except OSError as e:
        err = f"recv: {type(e).__name__}: {e}"
    finally:
        s.close()
    if send_err and not err:
        err = send_err[0]
    return {"sent": sent, "sent_sha256": sent_h.hexdigest(), "received": received,
            "received_sha256": recv_h.hexdigest(), "eof": eof, "error": err,
            "seconds": round(time.monotonic() - t0, 3), "banner": banner.decode("latin-1")}


def expected_sha256(total: int) -> str:
    h = hashlib.sha256()
    for b in blocks(total):
        h.update(b)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--banner", default="")
    s.add_argument("--log")
    c = sub.add_parser("client")
    c.add_argument("--connect", required=True)
    c.add_argument("--source")
    c.add_argument("--bytes", type=int, required=True)
    c.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    if args.cmd == "serve":
        if not args.host.startswith("127."):
            ap.error("loopback addresses only")
        serve(args.host, args.port, args.banner.encode().decode("unicode_escape").encode("latin-1"), args.log)
    else:
        host, _, port = args.connect.rpartition(":")
        print(json.dumps(stream((host, int(port)), args.bytes, source=args.source, timeout=args.timeout)), flush=True)


if __name__ == "__main__":
    main()
