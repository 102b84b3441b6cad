"""The lab's outputs: the table (stdout), results.json, latency.svg and docs/modes.md (stdlib only)."""

from __future__ import annotations

import json
import math
from pathlib import Path

PCTS = [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9), ("max", 99.99)]


def topology_dict(topo) -> dict:
    return {
        "nodes": {n.name: {"namespace": n.ns, "ip": n.ip, "podCIDR": n.cidr} for n in topo.nodes.values()},
        "pods": {p.name: {"namespace": p.ns, "ip": p.ip, "node": p.node.name} for p in topo.pods.values()},
    }


def fmt(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def signed(v) -> str:
    return "-" if v is None else f"{v:+.3f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def render(results: dict) -> str:
    out = []
    s = results.get("settings", {})
    out.append(f"meshd lab: 2 nodes, {len(results.get('topology', {}).get('pods', {}))} pods; mTLS "
               f"{'on' if s.get('mtls') else 'off'}; node link delay {s.get('delayMs', 0):g} ms; HTTP/1.1 open loop "
               f"{s.get('rate'):g} req/s, {s.get('connections')} connections, {s.get('duration'):g} s after "
               f"{s.get('warmup')} s warm-up per path" + (f", {s['rounds']} rounds (median)" if (s.get('rounds') or 1) > 1 else "") +
               f"; meshd threads {s.get('threads')}; {s.get('cpus')} CPUs")
    paths = results.get("paths", [])
    if paths:
        rows = [["PATH", "PLACEMENT", "CALL", "OK", "ERR", "P50-MS", "P90-MS", "P99-MS", "P99.9-MS", "MAX-MS",
                 "+P50", "+P90", "+P99", "+P99.9", "+MAX", "gRPC"]]
        for m in paths:
            h, a, g = m["http"], m.get("added") or {}, m.get("grpc", {})
            gs = "ok" if g.get("ok") else "FAIL"
            if g.get("unary", {}).get("p50Ms") is not None:
                gs += f" (unary p50 {g['unary']['p50Ms']:.2f})"
            rows.append([m["id"], m["placement"], m["mode"], fmt(h.get("ok")), fmt(h.get("errors")),
                         fmt(h.get("p50")), fmt(h.get("p90")), fmt(h.get("p99")), fmt(h.get("p999")), fmt(h.get("max")),
                         signed(a.get("p50")), signed(a.get("p90")), signed(a.get("p99")), signed(a.get("p999")),
                         signed(a.get("max")), gs])
        out += ["", "latency per path (ms; + = added against the direct path of the same locality)", table(rows)]
    res = results.get("resources")
    if res:
        rows = [["PLACEMENT", "PROXY", "SERVES", "RSS-MIB", "PEAK-MIB", "CPU-S"]]
        for placement, r in res.items():
            for name, p in r["proxies"].items():
                rows.append([placement, name, p["serves"], fmt(p["rssMiB"], 1), fmt(p["peakRssMiB"], 1),
                             fmt(p["cpuSeconds"])])
            rows.append([placement, "total", f"{r['count']} meshd", fmt(r["rssMiBTotal"], 1), "",
                         f"{r['cpuSecondsTotal']:.3f} ({r['cpuMsPer1000Requests']:.1f} ms/1000 req)"])
        out += ["", "resources (RSS after the placement's runs; CPU over its runs)", table(rows)]
    fp = results.get("footprint")
    if fp:
        rows = [["PLACEMENT", "CONTAINERS", "AGENT-CONTAINERS", "MESHD", "MEMORY-MIB", "CPU-CORES"]]
        for k in ("sidecar", "node", "hybrid"):
            if k in fp:
                v = fp[k]
                rows.append([k, fmt(v.get("containers")), fmt(v.get("agentContainers")), fmt(v.get("meshd")),
                             fmt(v.get("memoryMiB"), 1), fmt(v.get("cpuCores"), 4)])
        out += ["", "meshctl footprint for the lab's shape (2 nodes, 4 pods, 1 agent per pod; measured RSS and CPU)",
                table(rows)]
    up = results.get("upgrade")
    if up:
        rows = [["UPGRADE", "REQUESTS", "FAILED", "REFUSED", "BY-KIND", "STALE-RETRIED", "LONGEST-STALL-MS", "DOWNTIME-MS",
                 "gRPC STREAM"]]
        for k, u in up.items():
            if "skipped" in u:
                rows.append([k, "-", "-", "-", "-", "-", "-", "-", f"skipped: {u['skipped']}"])
                continue
            h, st = u.get("http", {}), u.get("grpcStream", {}).get("stream", {})
            rows.append([k, fmt(h.get("requests")), fmt(h.get("failed")), fmt(h.get("byKind", {}).get("refused", 0)),
                         json.dumps(h.get("byKind", {})), fmt(h.get("staleRetries")), fmt(h.get("longestStallMs"), 1), fmt(h.get("downtimeMs"), 1),
                         f"{st.get('messages')}/{st.get('expected')} {st.get('code')}" if st else
                         str(u.get("grpcStream", {}).get("error", "-"))[:60]])
        out += ["", "upgrades under load (sidecar: the pods restart; node: hand-over with --takeover)", table(rows)]
    probs = results.get("problems") or []
    left = results.get("leftovers", {})
    out += ["", f"problems: {len(probs)}"] + [f"  - {p}" for p in probs]
    out.append(f"left behind: {len(left.get('namespaces', []))} namespaces, {len(left.get('links', []))} links, "
               f"{left.get('processes', 0)} processes; {results.get('seconds')} s")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# SVG: percentile distribution, HdrHistogram style (x = 1/(1-p) on a log scale)

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf", "#393b79", "#637939"]


def svg(results: dict) -> str:
    paths = [m for m in results.get("paths", []) if m["http"].get("p50") is not None]
    W, H, L, R, T, B = 960, 560, 70, 300, 40, 60
    pw, ph = W - L - R, H - T - B
    xmax = math.log10(1 / (1 - 0.9999))
    ymax = max([m["http"]["max"] or 0 for m in paths] + [0.1])
    ymax = 10 ** math.ceil(math.log10(ymax)) if ymax > 0 else 1
    ymax = ymax / 2 if max(m["http"]["max"] or 0 for m in paths or [{"http": {"max": 0}}]) < ymax / 2 else ymax
    ymin_log = math.log10(0.05)
    ymax_log = math.log10(ymax)

    def x(p):
        return L + pw * math.log10(1 / (1 - p / 100)) / xmax

    def y(v):
        v = max(v, 0.05)
        return T + ph * (1 - (math.log10(v) - ymin_log) / (ymax_log - ymin_log))

    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="15">meshd lab: latency by percentile per path (HTTP/1.1, open loop, ms, log)</text>']
    for label, p in (("0%", 0), ("90%", 90), ("99%", 99), ("99.9%", 99.9), ("99.99% (max)", 99.99)):
        xx = x(p)
        e.append(f'<line x1="{xx:.1f}" y1="{T}" x2="{xx:.1f}" y2="{T + ph}" stroke="#ddd"/>')
        e.append(f'<text x="{xx:.1f}" y="{T + ph + 18}" text-anchor="middle">{label}</text>')
    v = 0.1
    while v <= ymax * 1.001:
        for mult in (1, 2, 5):
            val = v * mult
            if val > ymax * 1.001 or val < 0.05:
                continue
            yy = y(val)
            e.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{L + pw}" y2="{yy:.1f}" stroke="#eee"/>')
            e.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">{val:g}</text>')
        v *= 10
    e.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    e.append(f'<text x="{L + pw / 2}" y="{H - 15}" text-anchor="middle">percentile</text>')
    e.append(f'<text x="18" y="{T + ph / 2}" transform="rotate(-90 18 {T + ph / 2})" text-anchor="middle">latency (ms)</text>')
    for i, m in enumerate(paths):
        c = COLORS[i % len(COLORS)]
        dash = ' stroke-dasharray="5,3"' if m["mode"] == "capture" else ""
        pts = [(x(0), y(m["http"]["p50"]))] + [(x(p), y(m["http"][k])) for k, p in PCTS if m["http"].get(k) is not None]
        e.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="' +
                 " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        ly = T + 14 + i * 18
        e.append(f'<line x1="{L + pw + 12}" y1="{ly - 4}" x2="{L + pw + 36}" y2="{ly - 4}" stroke="{c}" stroke-width="2"{dash}/>')
        e.append(f'<text x="{L + pw + 42}" y="{ly}">{m["id"]}: p50 {m["http"]["p50"]:.3f}, p99 {m["http"]["p99"]:.3f}</text>')
    e.append("</svg>")
    return "\n".join(e) + "\n"


def write(results: dict, out: Path, *, write_docs: bool, repo: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if results.get("paths"):
        (out / "latency.svg").write_text(svg(results))
    text = render(results)
    (out / "table.txt").write_text(text)
    print(text, end="", flush=True)
    if write_docs:
        import modes_doc

        (repo / "docs" / "modes.md").write_text(modes_doc.render(results))
