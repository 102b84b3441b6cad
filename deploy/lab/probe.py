#!/usr/bin/env python3
"""Load across an upgrade (run inside the calling pod's namespace): HTTP/1.1 GETs on keep-alive
connections, paced at --rate in total over --connections threads (closed loop per connection: a
connection that falls behind sends its next request at once), for --duration seconds.

    python3 probe.py --url http://HOST:PORT/ [--host web] --rate 400 --connections 4 --duration 10

Every request is recorded (start, end, outcome). Outcomes: ok (2xx), status (another status, e.g.
meshd's 503 connect-failed while the pod behind it is down), refused (connection refused), timeout, io
(reset or closed mid-request). A request on a reused keep-alive connection that fails before any byte
of the answer came back is sent again once on a new connection, as HTTP clients do for a connection
the server closed while idle (counted in `staleRetries`, not as a failure): a proxy that drains closes
its idle keep-alive connections. Prints one JSON line: requests, ok, failed, by kind, staleRetries,
longestStallMs (the longest time without a successful response, over the whole run), downtimeMs (first
failed request's start → last failed request's end, 0 without failures), and the time of the
first and last failure relative to the start."""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import threading
import time
from urllib.parse import urlsplit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--host")
    ap.add_argument("--rate", type=float, default=400)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--timeout", type=float, default=3)
    args = ap.parse_args()
    u = urlsplit(args.url)
    host, port, path = u.hostname, u.port or 80, u.path or "/"
    headers = {"Host": args.host} if args.host else {}
    records = []          # (start, end, kind)
    lock = threading.Lock()
    stale = [0]
    t0 = time.monotonic()
    end_at = t0 + args.duration
    interval = args.connections / args.rate

    def one(conn_box, fresh: bool):
        conn = conn_box[0]
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
            conn_box[0] = conn
            fresh = True
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
            if r.will_close:
                conn.close()
                conn_box[0] = None
            return "ok" if 200 <= r.status < 300 else "status", None
        except ConnectionRefusedError:
            kind = "refused"
        except (socket.timeout, TimeoutError):
            kind = "timeout"
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            kind = "stale" if not fresh else "io"
        except (OSError, http.client.HTTPException):
            kind = "io"
        conn.close()
        conn_box[0] = None
        return kind, None

    def worker(k: int):
        box = [None]
        i = 0
        while True:
            due = t0 + (i * args.connections + k) / args.rate
            if due >= end_at:
                break
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            start = time.monotonic()
            reused = box[0] is not None
            kind, _ = one(box, not reused)
            if kind == "stale":
                with lock:
                    stale[0] += 1
                kind, _ = one(box, True)
                if kind == "stale":
                    kind = "io"
            with lock:
                records.append((start - t0, time.monotonic() - t0, kind))
            if kind not in ("ok", "status"):
                time.sleep(0.01)  # a refused connection: do not spin
            i += 1
        if box[0] is not None:
            box[0].close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(args.connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(args.duration + args.timeout * 3 + 5)
    records.sort(key=lambda r: r[1])
    kinds = {}
    for _, _, kind in records:
        kinds[kind] = kinds.get(kind, 0) + 1
    failed = [r for r in records if r[2] != "ok"]
    # longest time without a success: gaps between successive successful completions, plus the edges
    last, stall = 0.0, 0.0
    for s, e, kind in records:
        if kind == "ok":
            stall = max(stall, e - last)
            last = e
    stall = max(stall, min(args.duration, records[-1][1] if records else 0) - last)
    out = {
        "requests": len(records), "ok": kinds.get("ok", 0), "failed": len(failed),
        "byKind": {k: v for k, v in kinds.items() if k != "ok"}, "staleRetries": stale[0],
        "longestStallMs": round(stall * 1000, 1),
        "downtimeMs": round((max(r[1] for r in failed) - min(r[0] for r in failed)) * 1000, 1) if failed else 0.0,
        "firstFailureS": round(min(r[0] for r in failed), 3) if failed else None,
        "lastFailureS": round(max(r[1] for r in failed), 3) if failed else None,
        "achievedRate": round(len(records) / args.duration, 1),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
