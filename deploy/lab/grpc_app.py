#!/usr/bin/env python3
"""The lab's gRPC app: tests/e2e/grpc_server.py's meshtest.Echo service (grpcio, plaintext h2c) on any
address (grpc_server.py itself binds loopback only; a pod's app listens on its pod IP too).

Run (inside a pod's namespace): python3 grpc_app.py --listen 0.0.0.0:50051 --name grpc
Prints `PORT <n>` once listening."""

from __future__ import annotations

import argparse
import sys
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "e2e"))

import grpc  # noqa: E402

import grpc_server  # noqa: E402  (generates and loads the meshtest code)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", default="0.0.0.0:50051")
    ap.add_argument("--name", default="grpc")
    args = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=[("grpc.so_reuseport", 0)])
    grpc_server.pb2_grpc.add_EchoServicer_to_server(grpc_server.Echo(args.name), server)
    port = server.add_insecure_port(args.listen)
    if not port:
        sys.exit(f"grpc_app: cannot listen on {args.listen}")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
