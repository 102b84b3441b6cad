"""Generated Python code for proto/meshtest.proto, made on first use with `python3 -m grpc_tools.protoc`.

The code goes to tests/e2e/.gen/<hash of the proto and the grpc_tools version>/ (git-ignored), written to
a temporary directory and renamed into place, so the test process and the grpc_server.py processes it
starts can generate concurrently. `load()` → (meshtest_pb2, meshtest_pb2_grpc)."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "proto" / "meshtest.proto"
GEN = HERE / ".gen"


def _gen_dir() -> Path:
    import grpc_tools

    version = getattr(grpc_tools, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("grpcio-tools")
        except Exception:
            version = "unknown"
    digest = hashlib.sha256(PROTO.read_bytes() + version.encode()).hexdigest()[:16]
    return GEN / digest


def generate() -> Path:
    out = _gen_dir()
    if (out / "meshtest_pb2_grpc.py").exists():
        return out
    GEN.mkdir(exist_ok=True)
    tmp = GEN / f".tmp-{os.getpid()}-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={tmp}",
                        f"--grpc_python_out={tmp}", PROTO.name],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"grpc_tools.protoc failed ({r.returncode}): {r.stderr.decode()}")
    try:
        os.rename(tmp, out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load():
    out = str(generate())
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module("meshtest_pb2"), importlib.import_module("meshtest_pb2_grpc")


def pattern(seq: int, size: int) -> bytes:
    """The payload of server-stream message `seq`: its number (8 bytes, big-endian) and a fixed filler,
    cut to `size` bytes; a lost, duplicated or reordered message changes what the client sees."""
    head = seq.to_bytes(8, "big")
    if size <= 8:
        return head[:size]
    filler = bytes((seq + i) & 0xFF for i in range(256))
    body = filler * ((size - 8) // 256 + 1)
    return head + body[: size - 8]
