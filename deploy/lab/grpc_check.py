#!/usr/bin/env python3
"""gRPC correctness through one lab path (run inside the calling pod's namespace).

    python3 grpc_check.py --target HOST:PORT [--authority grpc] [--unary N] [--stream-count N]
                          [--stream-delay-ms MS] [--timeout S]

Makes N unary calls (each echoes its payload and sequence number back) and one server-streaming call
(every message's number and payload checked: grpc_proto.pattern), then prints one JSON line:
{"unary": {"ok", "failed", "p50Ms", "maxMs", "errors": [...]}, "stream": {"ok", "messages", "expected",
"code", "seconds"}, "ok": bool}. A stream with --stream-delay-ms spread over seconds is what the
upgrade test sends across a proxy's replacement. Exit status 0 when everything succeeded."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import grpc  # noqa: E402

import grpc_proto  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--authority")
    ap.add_argument("--unary", type=int, default=20)
    ap.add_argument("--stream-count", type=int, default=20)
    ap.add_argument("--stream-size", type=int, default=1024)
    ap.add_argument("--stream-delay-ms", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--ready-timeout", type=float, default=5.0)
    args = ap.parse_args()
    pb2, pb2_grpc = grpc_proto.load()
    opts = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if args.authority:
        opts.append(("grpc.default_authority", args.authority))
    ch = grpc.insecure_channel(args.target, options=opts)
    stub = pb2_grpc.EchoStub(ch)
    out = {"target": args.target, "authority": args.authority}
    try:
        grpc.channel_ready_future(ch).result(timeout=args.ready_timeout)
    except grpc.FutureTimeoutError:
        out.update(ok=False, error=f"channel to {args.target} not ready within {args.ready_timeout}s")
        print(json.dumps(out), flush=True)
        return 1
    lat, errors = [], []
    for i in range(args.unary):
        payload = f"lab-{i}".encode() * 8
        t0 = time.monotonic()
        try:
            r = stub.Unary(pb2.Msg(payload=payload, seq=i), timeout=args.timeout)
            if r.payload != payload or r.seq != i:
                errors.append(f"call {i}: wrong echo")
            else:
                lat.append((time.monotonic() - t0) * 1000)
        except grpc.RpcError as e:
            errors.append(f"call {i}: {e.code().name} {e.details()}")
    lat.sort()
    out["unary"] = {"ok": len(lat), "failed": args.unary - len(lat), "errors": errors[:5],
                    "p50Ms": round(lat[len(lat) // 2], 3) if lat else None, "maxMs": round(lat[-1], 3) if lat else None}
    n, code, t0 = 0, "OK", time.monotonic()
    stream_timeout = args.timeout + args.stream_count * args.stream_delay_ms / 1000.0
    try:
        for m in stub.ServerStream(pb2.StreamRequest(count=args.stream_count, size=args.stream_size,
                                                     delay_ms=args.stream_delay_ms), timeout=stream_timeout):
            if m.seq != n or m.payload != grpc_proto.pattern(n, args.stream_size):
                code = f"WRONG_MESSAGE at {n}"
                break
            n += 1
    except grpc.RpcError as e:
        code = f"{e.code().name}: {e.details()}"
    out["stream"] = {"ok": code == "OK" and n == args.stream_count, "messages": n, "expected": args.stream_count,
                     "code": code, "seconds": round(time.monotonic() - t0, 3)}
    out["ok"] = out["unary"]["failed"] == 0 and out["stream"]["ok"]
    ch.close()
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
