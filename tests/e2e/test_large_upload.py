"""Streaming: a 1 GiB chunked upload goes through without meshd buffering it."""

import hashlib
import json
import subprocess
import time


from meshlib import base_config, kill_group, metric_value, popen

GIB = 1 << 30
LIMIT = 100 * 1000 * 1000  # 100 MB


def zeros_sha256(n):
    h = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(n >> 20):
        h.update(block)
    return h.hexdigest()


def test_1gib_chunked_upload_constant_memory(start_meshd, backend):
    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}],
    ))
    expected = zeros_sha256(GIB)
    head = popen(["head", "-c", str(GIB), "/dev/zero"], stdout=subprocess.PIPE)
    up = popen(["curl", "-sS", "--max-time", "110", "-x", mesh.out_url, "-T", "-", "http://py/echo-hash"],
               stdin=head.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head.stdout.close()
    t0 = time.monotonic()
    try:
        out, err = up.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_group(up)
        kill_group(head)
        raise AssertionError("1 GiB upload did not finish in 120 s")
    took = time.monotonic() - t0
    head.wait(timeout=10)
    assert up.returncode == 0, err
    got = json.loads(out)
    assert got["bytes"] == GIB
    assert got["sha256"] == expected
    assert (got["transfer_encoding"] or "").lower() == "chunked"
    rss = metric_value(mesh.metrics_text(), "process_resident_memory_bytes")
    hwm = mesh.vm_hwm_bytes()
    print(f"1 GiB upload: {took:.1f}s, rss={rss / 1e6:.1f} MB, VmHWM={hwm / 1e6:.1f} MB")
    assert rss < LIMIT, f"resident memory {rss / 1e6:.1f} MB after a 1 GiB upload"
    assert hwm < LIMIT, f"peak resident memory (VmHWM) {hwm / 1e6:.1f} MB during a 1 GiB upload"


def test_slow_reader_download_is_backpressured(start_meshd, backend):
    """A 256 MiB response read at ~64 MB/s by curl: meshd must hold the backend back instead of
    buffering the difference (the backend on loopback can send far faster)."""
    n = 256 << 20
    mesh = start_meshd(base_config(
        threads=1,
        services=[{"name": "py", "endpoints": [backend.addr]}],
        routes=[{"match": {"authority": "py"}, "service": "py"}],
    ))
    t0 = time.monotonic()
    r = subprocess.run(
        ["bash", "-c",
         f"curl -sS --max-time 60 --limit-rate 64M -x {mesh.out_url} 'http://py/zeros?bytes={n}' | sha256sum"],
        capture_output=True, text=True, timeout=90)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    digest = hashlib.sha256(bytes(n)).hexdigest()
    assert r.stdout.split()[0] == digest
    hwm = mesh.vm_hwm_bytes()
    print(f"256 MiB slow download: {took:.1f}s, VmHWM={hwm / 1e6:.1f} MB")
    assert took > 2.5, "the rate limit did not slow the reader; the test proves nothing"
    assert hwm < 80 * 1000 * 1000, f"peak resident memory {hwm / 1e6:.1f} MB: the response was buffered"
