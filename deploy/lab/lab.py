"""deploy/lab/run: the two placements measured on a real (namespaced) cluster network.

See deploy/lab/README.md for what it builds and measures; netlab.py builds the network, report.py
prints the table and writes results.json, the plot and docs/modes.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netlab
import report
from netlab import PREFIX, LabError, Pod, Topology, sh

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PROXY_UID = 4140
POOL_IDLE_S = 2
TRUST_DOMAIN = "lab.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/lab/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/lab/sa/server"
APP_PORT = 8080
GRPC_PORT = 50051
LOCK = Path("/run/lock/mlab.lock") if Path("/run/lock").is_dir() else Path("/tmp/mlab.lock")


class Interrupted(Exception):
    pass


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items()
            if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy")
            and k not in ("MESHD_MODE", "MESHD_NODE_IP", "MESHD_APP_PORT")}


def setpriv(uid: int, net_admin: bool) -> list[str]:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if net_admin:
        argv += ["--inh-caps=+net_admin", "--ambient-caps=+net_admin"]
    return argv


def non_root_meshd_resets(meshd: str, rundir: Path) -> bool:
    """Self-test: does this meshd, run as PROXY_UID without capabilities, reset every accepted
    connection? (Builds before the fix set SO_DEBUG on accepted sockets — NIO's
    `.socketOption(.tcp_nodelay)` is SOL_SOCKET option 1 — which needs CAP_NET_ADMIN: EACCES, and
    the connection is closed.) Then the lab gives the sidecars CAP_NET_ADMIN, and says so."""
    ns = PREFIX + "selftest"
    cfg = rundir / "selftest.json"
    cfg.write_text(json.dumps({"mode": "sidecar", "threads": 1, "outbound": {"listen": "127.0.0.1:4140"},
                               "inbound": {"listen": "127.0.0.1:4143"}, "admin": {"listen": "127.0.0.1:4191"}}))
    cfg.chmod(0o644)
    sh(["ip", "netns", "add", ns])
    p = None
    try:
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        p = subprocess.Popen(["ip", "netns", "exec", ns, *setpriv(PROXY_UID, False), meshd, "--config", cfg],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = sh(["ip", "netns", "exec", ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                    "-H", "Host: selftest", "http://127.0.0.1:4140/"], check=False)
            if r.returncode == 0:
                return False
            if r.returncode == 56:  # connection reset after connect
                return True
            time.sleep(0.1)
        raise LabError("self-test: meshd as uid 4140 did not answer within 10 s")
    finally:
        if p is not None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        sh(["ip", "netns", "del", ns], check=False)


# --------------------------------------------------------------------------------------------
# Processes: each in its own session, inside a lab namespace, killed as a group


class Proc:
    def __init__(self, lab: "Lab", name: str, argv: list[str], *, stdout_pipe: bool = False):
        self.lab = lab
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout_path = lab.logdir / f"{name}.stdout"
        self.stderr_path = lab.logdir / f"{name}.stderr"
        out = subprocess.PIPE if stdout_pipe else open(self.stdout_path, "ab")
        err = open(self.stderr_path, "ab")
        try:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      start_new_session=True, env=clean_env())
        finally:
            err.close()
            if out is not subprocess.PIPE:
                out.close()
        self.pid = self.p.pid
        lab.procs.append(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def readline(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                return self.p.stdout.readline().decode(errors="replace")
            if not self.alive():
                break
        return ""

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, sig: int = signal.SIGTERM, wait: float = 3.0) -> int | None:
        self.send(sig)
        try:
            self.p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # strays of its group
        except (ProcessLookupError, PermissionError):
            pass
        return self.p.returncode

    # /proc figures of the process itself (ip netns exec and setpriv exec, so the pid is the program's)
    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (FileNotFoundError, IndexError, ProcessLookupError):
            return 0.0

    def status_kib(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except FileNotFoundError:
            pass
        return 0


class Meshd(Proc):
    def __init__(self, lab: "Lab", name: str, placement: str, where: str, ns: str, config: dict, *,
                 uid: int | None = None, args=(), config_path: Path | None = None):
        self.placement = placement
        self.where = where          # the pod or node it serves
        self.ns = ns
        self.config = config
        self.config_path = config_path or lab.rundir / f"{name}.json"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.config_path.chmod(0o644)
        argv = ["ip", "netns", "exec", ns]
        if uid is not None:
            argv += setpriv(uid, lab.sidecar_net_admin)
        argv += [lab.meshd, "--config", self.config_path, *args]
        super().__init__(lab, name, argv)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.stderr_tail(1 << 20).splitlines():
                if '"meshd ready"' in line:
                    return
            if not self.alive():
                raise LabError(f"meshd {self.name} exited {self.p.returncode} before ready:\n{self.stderr_tail()}")
            time.sleep(0.05)
        raise LabError(f"meshd {self.name} not ready after {timeout}s:\n{self.stderr_tail()}")

    def admin_get(self, path: str) -> str:
        r = sh(["ip", "netns", "exec", self.ns, "curl", "-sS", "--noproxy", "*", "--max-time", "3",
                f"http://127.0.0.1:4191{path}"], check=False)
        return r.stdout.decode(errors="replace")


# --------------------------------------------------------------------------------------------

PCT_KEYS = ("p50", "p90", "p99", "p999", "max")


def aggregate(raw: dict) -> list[dict]:
    """Per path, its rounds combined: percentiles are the median of the rounds' (max: the largest),
    counts are summed, gRPC is ok when every round's was; `added` against the direct path of the same
    locality, from those combined figures."""
    out = []
    for pid, runs in raw.items():
        first = runs[0]
        m = {k: first[k] for k in ("id", "placement", "mode", "locality", "client", "url", "authority")}
        hs = [r["http"] for r in runs]
        http = {"rounds": len(runs)}
        for k in ("requests", "ok", "errors"):
            vals = [h.get(k) for h in hs if h.get(k) is not None]
            http[k] = sum(vals) if vals else None
        kinds = {}
        for h in hs:
            for k, v in (h.get("errorKinds") or {}).items():
                kinds[k] = kinds.get(k, 0) + v
        http["errorKinds"] = kinds
        rates = [h["achievedRate"] for h in hs if h.get("achievedRate") is not None]
        http["achievedRate"] = round(sum(rates) / len(rates), 1) if rates else None
        for k in PCT_KEYS:
            vals = sorted(h[k] for h in hs if h.get(k) is not None)
            if len(vals) < len(hs) or not vals:
                http[k] = None
            elif k == "max":
                http[k] = vals[-1]
            else:
                http[k] = vals[len(vals) // 2] if len(vals) % 2 else round((vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2, 3)
        http["failure"] = next((h.get("failure") for h in hs if h.get("failure")), None)
        if len(runs) > 1:
            http["perRound"] = [{k: h.get(k) for k in PCT_KEYS} for h in hs]
        m["http"] = http
        m["rounds"] = len(runs)
        proxies = {}
        for r in runs:
            for name, v in r["proxies"].items():
                proxies.setdefault(name, {"cpuSeconds": 0.0})["cpuSeconds"] += v["cpuSeconds"]
        m["proxies"] = {k: {"cpuSeconds": round(v["cpuSeconds"], 4)} for k, v in proxies.items()}
        m["grpc"] = dict(runs[-1]["grpc"], ok=all(r["grpc"].get("ok") for r in runs))
        m["ok"] = all(r["ok"] for r in runs)
        m["seconds"] = round(sum(r["seconds"] for r in runs), 2)
        out.append(m)
    direct = {m["locality"]: m["http"] for m in out if m["placement"] == "direct"}
    for m in out:
        base = direct.get(m["locality"]) or {}
        m["added"] = {k: (round(m["http"][k] - base[k], 3) if m["http"].get(k) is not None and
                          base.get(k) is not None else None) for k in PCT_KEYS}
    return out


class Lab:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.mtls = not args.no_mtls
        self.out = Path(args.out).resolve()
        self.topo = Topology.standard()
        self.procs: list[Proc] = []
        self.meshds: dict[str, Meshd] = {}
        self.apps: dict[str, Proc] = {}
        self.results: dict = {}
        self.problems: list[str] = []
        self.rate = args.rate or (200 if self.quick else 1000)
        self.duration = args.duration or (3 if self.quick else 15)
        self.warmup = 1 if self.quick else 2
        self.connections = 4 if self.quick else 8
        self.rounds = args.rounds or (1 if self.quick else 3)
        self.round_label = ""

    # -- setup ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.rundir = Path(tempfile.mkdtemp(prefix=PREFIX + "run-", dir="/tmp"))
        self.rundir.chmod(0o755)  # meshd runs as uid 4140 in the sidecars and reads its files here
        self.logdir = self.rundir / "logs"
        self.logdir.mkdir()
        bindir = self.rundir / "bin"
        bindir.mkdir()
        # copies: a rebuild of the originals during the run changes nothing
        for name, src in (("meshd", self.args.meshd), ("meshctl", self.args.meshctl)):
            if not (os.path.isfile(src) and os.access(src, os.X_OK)):
                raise LabError(f"{name} binary not found or not executable at {src} (--{name} or {name.upper()}_BIN)")
            shutil.copy2(src, bindir / name)
            (bindir / name).chmod(0o755)
        self.meshd = str(bindir / "meshd")
        self.meshctl = str(bindir / "meshctl")
        help_main = sh([self.meshd, "--help"], check=False).stdout.decode()
        cap = sh([self.meshd, "capture", "--help"], check=False)
        self.has_capture = cap.returncode == 0 and "install" in cap.stdout.decode() + cap.stderr.decode()
        self.has_takeover = "--takeover" in help_main
        self.sidecar_net_admin = non_root_meshd_resets(self.meshd, self.rundir)
        if self.sidecar_net_admin:
            log(f"WORKAROUND: this meshd resets every connection when run as uid {PROXY_UID} without capabilities "
                "(it sets SO_DEBUG on accepted sockets: .socketOption(.tcp_nodelay) instead of .tcpOption); "
                "the sidecars get CAP_NET_ADMIN")
        self.results["features"] = {"capture": self.has_capture, "takeover": self.has_takeover,
                                    "sidecarNeedsNetAdmin": self.sidecar_net_admin}
        if not self.has_capture:
            log("this meshd has no `meshd capture`: the transparent-capture paths are skipped")
        if not self.has_takeover:
            log("this meshd has no --takeover: the node-proxy hand-over upgrade is skipped")

    def identities(self) -> None:
        if not self.mtls:
            return
        d = self.rundir / "tls"
        sh([self.meshctl, "identity", "init", "--trust-domain", TRUST_DOMAIN, "--out", d / "ca"])
        for who, sid in (("client", CLIENT_ID), ("server", SERVER_ID)):
            sh([self.meshctl, "identity", "issue", "--ca", d / "ca", "--spiffe-id", sid, "--out", d / who])
        for f in d.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)  # read by the sidecars' uid 4140 (lab only)
        d.chmod(0o755)
        self.tls = d

    def ident(self, who: str) -> dict:
        return {"trustBundle": str(self.tls / "ca" / "ca.crt"), "cert": str(self.tls / who / "tls.crt"),
                "key": str(self.tls / who / "tls.key")}

    # -- configs ----------------------------------------------------------------------------------
    def base(self) -> dict:
        # drainTimeout as deploy/daemonset/meshd.yaml sets it: a stream across an upgrade (< 30 s) finishes
        # upstream.idleTimeout 2 s: pooled connections made before a capture change expire before the
        # next phase uses them (see settle_after_capture_change)
        return {"threads": self.args.threads, "drainTimeout": "30s", "admin": {"listen": "127.0.0.1:4191"},
                "upstream": {"idleTimeout": f"{POOL_IDLE_S}s"}}

    def services_sidecar(self) -> list[dict]:
        p = self.topo.pods
        tls = {"tls": {"identity": SERVER_ID}} if self.mtls else {}
        svcs = [
            {"name": "web", "endpoints": [f"{p['server'].ip}:4143"], **tls},
            {"name": "grpc", "protocol": "grpc", "endpoints": [f"{p['grpc'].ip}:4143"], **tls},
        ]
        if self.has_capture:
            # captured calls name the app's own address; the server pod redirects it to its sidecar
            svcs += [{"name": "web-pod", "endpoints": [f"{p['server'].ip}:{APP_PORT}"], **tls},
                     {"name": "grpc-pod", "protocol": "grpc", "endpoints": [f"{p['grpc'].ip}:{GRPC_PORT}"], **tls}]
        return svcs

    def routes(self, sidecar: bool = False) -> list[dict]:
        routes = [{"name": "web", "match": {"authority": "web"}, "service": "web"},
                  {"name": "grpc", "match": {"authority": "grpc"}, "service": "grpc"}]
        if sidecar and self.has_capture:
            # a captured call is routed by its original destination: to the service owning that address,
            # through the first route to it (its policies apply), so each needs a route
            routes += [{"name": "web-pod", "match": {"authority": "web-pod"}, "service": "web-pod"},
                       {"name": "grpc-pod", "match": {"authority": "grpc-pod"}, "service": "grpc-pod"}]
        return routes

    def sidecar_config(self, pod: Pod) -> dict:
        app = f"127.0.0.1:{GRPC_PORT if pod.name == 'grpc' else APP_PORT}"
        cfg = {"mode": "sidecar", **self.base(), "outbound": {"listen": "127.0.0.1:4140"},
               "inbound": {"listen": "0.0.0.0:4143", "app": app}}
        if self.mtls:
            who = "server" if pod.name in ("server", "grpc") else "client"
            cfg["identity"] = self.ident(who)
            cfg["inbound"]["tls"] = "strict"
            cfg["authorization"] = {"defaultPolicy": "deny", "rules": [{"from": [CLIENT_ID]}]}
        if pod.name.startswith("client"):
            cfg["services"] = self.services_sidecar()
            cfg["routes"] = self.routes(sidecar=True)
        return cfg

    def node_config(self, node) -> dict:
        p, n2 = self.topo.pods, self.topo.nodes["n2"]
        tls = {"tls": {"identity": SERVER_ID}} if self.mtls else {}
        via = f"{n2.ip}:4143"
        cfg = {"mode": "node", "nodeIP": node.ip, **self.base(), "node": {"podCIDRs": [node.cidr]},
               "services": [
                   {"name": "web", "endpoints": [{"address": f"{p['server'].ip}:{APP_PORT}", "via": via}], **tls},
                   {"name": "grpc", "protocol": "grpc",
                    "endpoints": [{"address": f"{p['grpc'].ip}:{GRPC_PORT}", "via": via}], **tls}],
               "routes": self.routes()}
        if self.mtls:
            pods = [q for q in p.values() if q.node is node]
            workloads = []
            for who in ("client", "server"):
                ips = [q.ip for q in pods if (q.name in ("server", "grpc")) == (who == "server")]
                if ips:
                    i = self.ident(who)
                    workloads.append({"pods": ips, "cert": i["cert"], "key": i["key"]})
            cfg["identity"] = {"trustBundle": self.ident("client")["trustBundle"], "workloads": workloads}
            cfg["inbound"] = {"tls": "strict"}
            cfg["authorization"] = {"defaultPolicy": "deny", "rules": [{"from": [CLIENT_ID]}]}
        if self.has_takeover:
            cfg["upgrade"] = {"socket": str(self.rundir / f"upgrade-{node.name}.sock")}
        return cfg

    # -- start ------------------------------------------------------------------------------------
    def start_app(self, pod: Pod) -> Proc:
        if pod.name == "grpc":
            argv = pod.prefix + [sys.executable, HERE / "grpc_app.py", "--listen", f"0.0.0.0:{GRPC_PORT}", "--name", "grpc"]
        else:  # the HTTP/1.1 app: meshctl's SwiftNIO delay backend, answering 200 at once, keep-alive
            argv = pod.prefix + [self.meshctl, "delay-backend", "--listen", f"0.0.0.0:{APP_PORT}", "--delay", "0ms"]
        proc = Proc(self, f"app-{pod.name}", argv, stdout_pipe=True)
        line = proc.readline(30.0)
        if not line.startswith("PORT"):
            raise LabError(f"app in pod {pod.name} did not start ({line!r}):\n{proc.stderr_tail()}")
        self.apps[pod.name] = proc
        return proc

    def start_sidecar(self, pod: Pod, wait: bool = True) -> Meshd:
        m = Meshd(self, f"sidecar-{pod.name}", "sidecar", pod.name, pod.ns, self.sidecar_config(pod), uid=PROXY_UID)
        self.meshds[m.name] = m
        if wait:
            m.wait_ready()
        return m

    def start_node_proxy(self, node, args=(), name: str | None = None, wait: bool = True) -> Meshd:
        name = name or f"node-{node.name}"
        m = Meshd(self, name, "node", node.name, node.ns, self.node_config(node), args=args,
                  config_path=self.rundir / f"node-{node.name}.json")
        self.meshds[name] = m
        if wait:
            m.wait_ready()
        return m

    def start_all(self) -> None:
        p = self.topo.pods
        for name in ("server", "grpc"):
            self.start_app(p[name])
        sidecars = [self.start_sidecar(pod, wait=False) for pod in p.values()]
        nodes = [self.start_node_proxy(n, wait=False) for n in self.topo.nodes.values()]
        for m in sidecars + nodes:
            m.wait_ready()
        log(f"started: apps in pods server (HTTP/1.1 :{APP_PORT}) and grpc (gRPC :{GRPC_PORT}); "
            f"{len(sidecars)} sidecars (uid {PROXY_UID}); {len(nodes)} node proxies; mTLS {'on' if self.mtls else 'off'}")

    # -- measuring --------------------------------------------------------------------------------
    def paths(self, capture: str | None) -> list[dict]:
        """The paths of one capture phase (None: direct and explicit; "sidecar"; "node")."""
        p, nodes = self.topo.pods, self.topo.nodes
        out = []
        for locality, client in (("cross-node", "client"), ("same-node", "client2")):
            pod = p[client]
            app_url = f"http://{p['server'].ip}:{APP_PORT}/"
            grpc_direct = f"{p['grpc'].ip}:{GRPC_PORT}"
            short = "cross" if locality == "cross-node" else "same"
            if capture is None:
                node_ip = pod.node.ip
                out += [
                    dict(id=f"{short}/direct", placement="direct", mode="direct", url=app_url, authority=None,
                         grpc=(grpc_direct, None)),
                    dict(id=f"{short}/sidecar", placement="sidecar", mode="explicit", url="http://127.0.0.1:4140/",
                         authority="web", grpc=("127.0.0.1:4140", "grpc")),
                    dict(id=f"{short}/node", placement="node", mode="explicit", url=f"http://{node_ip}:4140/",
                         authority="web", grpc=(f"{node_ip}:4140", "grpc")),
                ]
            else:  # the app is unaware: it calls the server pod's own address
                out.append(dict(id=f"{short}/{capture}+capture", placement=capture, mode="capture", url=app_url,
                                authority=None, grpc=(grpc_direct, None)))
            for d in out[-(3 if capture is None else 1):]:
                d.update(locality=locality, client=client, pod=pod)
        return out

    def cpu_snapshot(self) -> dict:
        return {name: m.cpu_seconds() for name, m in self.meshds.items() if m.alive()}

    def measure(self, path: dict) -> dict:
        pod: Pod = path["pod"]
        before = self.cpu_snapshot()
        t0 = time.monotonic()
        cmd = pod.prefix + [self.meshctl, "latency", "--target", f"{path['id']}={path['url']}",
                            "--rate", self.rate, "--connections", self.connections, "--duration", f"{self.duration}s",
                            "--warmup", f"{self.warmup}s", "--timeout", "5s", "-o", "json"]
        if path["authority"]:
            cmd += ["--authority", path["authority"]]
        r = sh(cmd, check=False, timeout=self.duration + self.warmup + 40)
        elapsed = time.monotonic() - t0
        after = self.cpu_snapshot()
        res = {k: path[k] for k in ("id", "placement", "mode", "locality", "client", "url", "authority")}
        try:
            target = json.loads(r.stdout)["targets"][0]
        except (ValueError, KeyError, IndexError):
            self.problems.append(f"{path['id']}{self.round_label}: meshctl latency gave no report (exit {r.returncode}): "
                                 f"{r.stderr.decode(errors='replace')[-500:]}")
            target = {"ok": 0, "errors": None, "requests": 0}
        res["http"] = {k: target.get(k) for k in ("achievedRate", "requests", "ok", "errors", "errorKinds",
                                                   "p50", "p90", "p99", "p999", "max", "failure")}
        res["proxies"] = {name: {"cpuSeconds": round(after[name] - before.get(name, after[name]), 4)}
                          for name, m in self.meshds.items() if name in after and
                          (m.placement == path["placement"])}
        res["seconds"] = round(elapsed, 2)
        g = self.grpc_check(pod, *path["grpc"])
        res["grpc"] = g
        ok_http = (target.get("errors") == 0 and (target.get("ok") or 0) > 0)
        res["ok"] = bool(ok_http and g.get("ok"))
        if not ok_http:
            self.problems.append(f"{path['id']}{self.round_label}: HTTP/1.1 {target.get('ok')} ok, {target.get('errors')} errors "
                                 f"{target.get('errorKinds')} {target.get('failure') or ''}")
        if not g.get("ok"):
            self.problems.append(f"{path['id']}{self.round_label}: gRPC check failed: {json.dumps(g)[:400]}")
        log(f"{path['id']:22} HTTP/1.1 ok {target.get('ok')} err {target.get('errors')} p50 {target.get('p50')} "
            f"p99 {target.get('p99')} ms; gRPC {'ok' if g.get('ok') else 'FAILED'}")
        return res

    def grpc_check(self, pod: Pod, target: str, authority: str | None, **kw) -> dict:
        cmd = pod.prefix + [sys.executable, HERE / "grpc_check.py", "--target", target,
                            "--unary", kw.get("unary", 20), "--stream-count", kw.get("count", 20),
                            "--stream-delay-ms", kw.get("delay_ms", 0), "--timeout", kw.get("timeout", 5)]
        if authority:
            cmd += ["--authority", authority]
        r = sh(cmd, check=False, timeout=kw.get("wall", 60))
        try:
            return json.loads(r.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "error": f"grpc_check exited {r.returncode}: {r.stderr.decode(errors='replace')[-600:]}"}

    # -- capture (meshd capture, from the other half of this feature) ----------------------------
    def capture(self, mode: str, action: str) -> None:
        """Install or remove transparent capture for a placement: sidecar → in every pod; node → in every
        node namespace for its pod CIDR."""
        if mode == "sidecar":
            for pod in self.topo.pods.values():
                cmd = pod.prefix + [self.meshd, "capture", action, "--mode", "sidecar"]
                if action == "install":
                    cmd += ["--proxy-uid", PROXY_UID, "--outbound-port", 4140, "--inbound-port", 4143,
                            "--admin-port", 4191]
                sh(cmd)
        else:
            for node in self.topo.nodes.values():
                cmd = ["ip", "netns", "exec", node.ns, self.meshd, "capture", action, "--mode", "node"]
                if action == "install":
                    cmd += ["--pod-cidr", node.cidr, "--node-ip", node.ip]
                sh(cmd)
        self.settle_after_capture_change()

    def settle_after_capture_change(self) -> None:
        """The lab turns capture on and off in running pods (a cluster installs it before any connection
        exists). A pod namespace's conntrack picks up a connection made before the change mid-stream as a
        new one, so the rules now apply to it: a node proxy's pooled connection into a pod is
        redirected to that pod's sidecar, which resets it — and a gRPC call on it fails (a POST is not
        replayed). So no pooled connection outlives a change: the proxies close idle ones after
        upstream.idleTimeout (POOL_IDLE_S), and the lab waits that long, plus their 100 ms tick."""
        time.sleep(POOL_IDLE_S + 0.5)

    def run_round(self, rnd: int, raw: dict) -> None:
        """One round: every path once, the capture phases in turn."""
        self.round_label = f" (round {rnd + 1})" if self.rounds > 1 else ""

        def run(path):
            m = self.measure(path)
            m["round"] = rnd
            raw.setdefault(m["id"], []).append(m)
            self.results["paths"] = aggregate(raw)  # as it goes: an interrupted run reports what it measured

        for path in self.paths(None):
            run(path)
        if not self.has_capture:
            return
        for mode in ("sidecar", "node"):
            try:
                self.capture(mode, "install")
                for path in self.paths(mode):
                    run(path)
            except LabError as e:  # the placement's capture paths fail; the rest is still measured
                self.problems.append(f"{mode} capture: {e}")
                log(f"{mode} capture failed: {e}")
            finally:
                try:
                    self.capture(mode, "remove")
                except LabError as e:
                    self.problems.append(f"{mode} capture remove: {e}")

    def run_paths(self) -> None:
        raw: dict[str, list] = {}
        for rnd in range(self.rounds):
            if self.rounds > 1:
                log(f"round {rnd + 1} of {self.rounds}")
            self.run_round(rnd, raw)

    def resources(self) -> None:
        out = {}
        for placement in ("sidecar", "node"):
            paths = [m for m in self.results["paths"] if m["placement"] == placement]
            proxies = {}
            for name, m in self.meshds.items():
                if m.placement != placement or not m.name.startswith(("sidecar-", "node-")) or not m.alive():
                    continue
                cpu = sum(p["proxies"].get(name, {}).get("cpuSeconds", 0.0) for p in paths)
                proxies[name] = {"serves": m.where, "pid": m.pid, "rssMiB": round(m.status_kib("VmRSS") / 1024, 1),
                                 "peakRssMiB": round(m.status_kib("VmHWM") / 1024, 1), "cpuSeconds": round(cpu, 3)}
            # requests sent while the CPU was measured: the measured ones and the warm-up's
            reqs = sum((p["http"].get("requests") or 0) for p in paths) + \
                int(self.rate * self.warmup) * sum(p["rounds"] for p in paths) or 1
            load_s = (self.warmup + self.duration) * sum(p["rounds"] for p in paths) or 1
            total_cpu = sum(v["cpuSeconds"] for v in proxies.values())
            out[placement] = {
                "proxies": proxies, "count": len(proxies),
                "rssMiBTotal": round(sum(v["rssMiB"] for v in proxies.values()), 1),
                "cpuSecondsTotal": round(total_cpu, 3),
                "cpuCoresDuringLoad": round(total_cpu / load_s, 4),
                "cpuMsPer1000Requests": round(total_cpu / reqs * 1e6, 1),
                "requests": reqs, "paths": [p["id"] for p in paths],
            }
        self.results["resources"] = out

    def footprint(self) -> None:
        sc = self.results["resources"]["sidecar"]
        rss = sc["rssMiBTotal"] / max(1, sc["count"])
        cpu1000 = sc["cpuMsPer1000Requests"] / 1000 / 2  # per proxy: every request crosses two
        cmd = [self.meshctl, "footprint", "--nodes", 2, "--pods", len(self.topo.pods), "--agents", 1,
               "--rps", self.rate, "--rss-mib", round(rss, 2), "--cpu-per-1000", round(cpu1000, 5), "-o", "json"]
        r = sh(cmd, check=False)
        try:
            self.results["footprint"] = json.loads(r.stdout)
        except ValueError:
            self.problems.append(f"meshctl footprint failed: {r.stderr.decode(errors='replace')[-300:]}")

    # -- upgrades ---------------------------------------------------------------------------------
    def probe(self, pod: Pod, url: str, host: str | None, seconds: float) -> Proc:
        argv = pod.prefix + [sys.executable, HERE / "probe.py", "--url", url, "--rate", 400 if self.quick else 800,
                             "--connections", 4, "--duration", seconds]
        if host:
            argv += ["--host", host]
        return Proc(self, f"probe-{int(time.monotonic() * 1000)}", argv, stdout_pipe=True)

    def stream(self, pod: Pod, target: str, authority: str | None, seconds: float) -> Proc:
        delay = 20
        argv = pod.prefix + [sys.executable, HERE / "grpc_check.py", "--target", target, "--unary", 0,
                             "--stream-count", int(seconds * 1000 / delay), "--stream-delay-ms", delay,
                             "--stream-size", 64, "--timeout", 10]
        if authority:
            argv += ["--authority", authority]
        return Proc(self, f"stream-{int(time.monotonic() * 1000)}", argv, stdout_pipe=True)

    @staticmethod
    def collect(proc: Proc, timeout: float) -> dict:
        try:
            out, _ = proc.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.stop(signal.SIGKILL)
            return {"error": "did not finish"}
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"exit {proc.p.returncode}: {proc.stderr_tail(500)}"}

    def restart_pod(self, pod: Pod) -> dict:
        """A sidecar's replacement is the pod's restart: its meshd and its app stop, then start again."""
        t0 = time.monotonic()
        # in the order the kubelet uses for a native sidecar (meshctl inject): the app stops first, then
        # meshd (it drains: in-flight requests and streams finish, up to drainTimeout); meshd starts
        # first and must be ready before the app starts
        m = self.meshds.pop(f"sidecar-{pod.name}")
        app = self.apps.pop(pod.name)
        app.stop(signal.SIGTERM, wait=5)
        app_stopped = time.monotonic()
        m.stop(signal.SIGTERM, wait=35)
        stopped = time.monotonic()
        self.start_sidecar(pod)
        self.start_app(pod)
        return {"pod": pod.name, "appStopSeconds": round(app_stopped - t0, 3), "meshdStopSeconds": round(stopped - t0, 3),
                "appDownSeconds": round(time.monotonic() - t0, 3)}

    def upgrade_sidecar(self) -> dict:
        p = self.topo.pods
        seconds = 6 if self.quick else 20
        probe = self.probe(p["client"], "http://127.0.0.1:4140/", "web", seconds)
        stream = self.stream(p["client"], "127.0.0.1:4140", "grpc", seconds - 1)
        time.sleep(seconds / 3)
        restarts = [self.restart_pod(p["server"]), self.restart_pod(p["grpc"])]
        res = {"path": "cross/sidecar", "what": "pods server and grpc restarted (meshd and app stopped, started again)",
               "restarts": restarts, "http": self.collect(probe, seconds + 30), "grpcStream": self.collect(stream, seconds + 30)}
        log(f"sidecar upgrade: HTTP {res['http'].get('failed')} failed of {res['http'].get('requests')}, "
            f"app down {res['http'].get('downtimeMs')} ms; gRPC stream {res['grpcStream'].get('stream', {}).get('code')}")
        return res

    def takeover(self, node) -> tuple[dict, Meshd]:
        """Hand the node proxy's listeners to a new meshd (same config, --takeover); the old one drains
        and exits by itself (collected later: it may drain a stream for seconds)."""
        old = self.meshds.pop(f"node-{node.name}")
        old.handover_t0 = t0 = time.monotonic()
        new = self.start_node_proxy(node, args=["--takeover"], name=f"node-{node.name}-v2", wait=False)
        new.wait_ready()
        ready = time.monotonic()
        # the new process is now the node's proxy (the name the resource figures use)
        self.meshds.pop(new.name)
        new.name = f"node-{node.name}"
        self.meshds[new.name] = new
        return {"node": node.name, "newReadySeconds": round(ready - t0, 3), "oldPid": old.pid, "newPid": new.pid}, old

    def upgrade_node(self) -> dict:
        p = self.topo.pods
        n1, n2 = self.topo.nodes["n1"], self.topo.nodes["n2"]
        seconds = 8 if self.quick else 24
        probe = self.probe(p["client"], f"http://{n1.ip}:4140/", "web", seconds)
        # the stream outlives both hand-overs and ends within the old proxies' drainTimeout (30 s)
        stream = self.stream(p["client"], f"{n1.ip}:4140", "grpc", seconds - 1 if self.quick else 20)
        time.sleep(seconds / 4)
        handovers, olds = [], []
        for node in (n1, n2):
            h, old = self.takeover(node)
            handovers.append(h)
            olds.append(old)
            time.sleep(seconds / 4)
        res = {"path": "cross/node", "what": "both node proxies handed over to a new meshd (--takeover), one after the other",
               "handovers": handovers, "http": self.collect(probe, seconds + 40),
               "grpcStream": self.collect(stream, seconds + 40)}
        for h, old in zip(handovers, olds):
            try:
                h["oldExitCode"] = old.p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                h["oldExitCode"] = None
            h["oldExitSeconds"] = round(time.monotonic() - old.handover_t0, 3)
        log(f"node upgrade: HTTP {res['http'].get('failed')} failed of {res['http'].get('requests')}, "
            f"refused {res['http'].get('byKind', {}).get('refused', 0)}, longest stall {res['http'].get('longestStallMs')} ms; "
            f"gRPC stream {res['grpcStream'].get('stream', {}).get('code')}")
        return res

    def upgrades(self) -> None:
        up = {"sidecar": self.upgrade_sidecar()}
        if self.has_takeover:
            up["node"] = self.node_upgrade_checked()
        else:
            up["node"] = {"skipped": "this meshd has no --takeover"}
        self.results["upgrade"] = up

    def node_upgrade_checked(self) -> dict:
        res = self.upgrade_node()
        h = res["http"]
        if h.get("failed") or h.get("byKind", {}).get("refused") or not res["grpcStream"].get("ok"):
            self.problems.append(f"node upgrade lost something: {json.dumps(h)}; stream {json.dumps(res['grpcStream'])[:300]}")
        for ho in res["handovers"]:
            if ho["oldExitCode"] != 0:
                self.problems.append(f"node upgrade: the old meshd of {ho['node']} exited {ho['oldExitCode']}")
        return res

    # -- teardown ---------------------------------------------------------------------------------
    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.stop(signal.SIGTERM, wait=2)


# --------------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="deploy/lab/run", description=(
        "Build a two-node cluster network out of network namespaces and measure meshd's sidecar and node "
        "placements on it: hop latency, resources, upgrade cost. Needs root."))
    ap.add_argument("--quick", action="store_true", help="the CI version: short runs at a low rate (< 3 minutes)")
    ap.add_argument("--out", default="lab-results", help="directory for results.json, latency.svg, logs")
    ap.add_argument("--delay", type=float, default=0.0, metavar="MS",
                    help="one-way netem delay on the node link, each direction (needs sch_netem)")
    ap.add_argument("--no-mtls", action="store_true", help="plaintext between the proxies")
    ap.add_argument("--write-docs", action="store_true", help="write docs/modes.md from this run's numbers")
    ap.add_argument("--docs-from", metavar="RESULTS_JSON", help="only write docs/modes.md from a run's results.json")
    ap.add_argument("--rate", type=float, help="latency runs: requests per second (default 200 quick, 1000 full)")
    ap.add_argument("--duration", type=float, help="latency runs: measured seconds per path (3 quick, 15 full)")
    ap.add_argument("--rounds", type=int, help="measure every path this many times, interleaved; percentiles are "
                    "the median of the rounds' (default 1 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=1, help="event loops of every meshd (default 1)")
    ap.add_argument("--meshd", default=os.environ.get("MESHD_BIN") or str(REPO / ".build" / "release" / "meshd"))
    ap.add_argument("--meshctl", default=os.environ.get("MESHCTL_BIN"))
    args = ap.parse_args(argv)
    if not args.meshctl:
        args.meshctl = str(Path(args.meshd).parent / "meshctl")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.docs_from:  # re-render docs/modes.md from a run's results.json (no root needed)
        results = json.loads(Path(args.docs_from).read_text())
        import modes_doc

        (REPO / "docs" / "modes.md").write_text(modes_doc.render(results))
        print(f"docs/modes.md written from {args.docs_from}")
        return 0
    if os.geteuid() != 0:
        print("deploy/lab/run needs root: it creates network namespaces, veth links, bridges and iptables rules "
              "(run it as root or with sudo; CI runs it as root).", file=sys.stderr)
        return 2
    missing = [t for t in ("ip", "setpriv", "curl", "iptables") if not shutil.which(t)]
    if missing:
        print(f"deploy/lab/run: missing tools: {', '.join(missing)} (apt-get install iproute2 util-linux curl iptables)",
              file=sys.stderr)
        return 2
    try:
        import grpc  # noqa: F401
        import grpc_tools  # noqa: F401
    except ImportError as e:
        print(f"deploy/lab/run: the gRPC checks need grpcio and grpcio-tools ({e}): "
              f"pip install -r tests/e2e/requirements.txt (scripts/install-test-deps.sh does)", file=sys.stderr)
        return 2
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    lock = open(LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"deploy/lab/run: another lab run holds {LOCK}; wait for it to finish", file=sys.stderr)
        return 2

    def on_signal(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    t_start = time.monotonic()
    swept = netlab.sweep(log)  # what a killed run left behind
    for d in Path("/tmp").glob(PREFIX + "run-*"):
        shutil.rmtree(d, ignore_errors=True)
    if args.delay > 0 and not netlab.netem_available():
        print(f"deploy/lab/run: --delay {args.delay:g} needs the netem qdisc (kernel module sch_netem), which this "
              f"kernel does not have; run without --delay", file=sys.stderr)
        return 2
    lab = Lab(args)
    status = 1
    out = lab.out
    out.mkdir(parents=True, exist_ok=True)
    try:
        lab.prepare()
        lab.results.update(settings={
            "quick": args.quick, "mtls": lab.mtls, "delayMs": args.delay, "rate": lab.rate, "duration": lab.duration,
            "warmup": lab.warmup, "connections": lab.connections, "threads": args.threads, "rounds": lab.rounds,
            "cpus": os.cpu_count(), "kernel": os.uname().release, "sweptAtStart": swept,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        lab.results["topology"] = report.topology_dict(lab.topo)
        log("building the network: 2 nodes, 4 pods")
        lab.topo.create(args.delay)
        lab.identities()
        lab.start_all()
        lab.run_paths()
        lab.resources()
        lab.footprint()
        lab.upgrades()
        status = 0 if not lab.problems else 1
    except Interrupted as e:
        log(f"interrupted ({e}): cleaning up")
        lab.problems.append(f"interrupted by {e}")
        status = 130
    except LabError as e:
        log(f"failed: {e}")
        lab.problems.append(str(e))
        status = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # the cleanup is not interrupted
        try:
            lab.stop_all()
        finally:
            netlab.sweep(log)
            if getattr(lab, "rundir", None) and lab.rundir.exists():
                shutil.rmtree(out / "logs", ignore_errors=True)
                try:
                    shutil.copytree(lab.logdir, out / "logs")
                    for cfg in lab.rundir.glob("*.json"):
                        shutil.copy2(cfg, out / "logs" / cfg.name)
                except OSError:
                    pass
                shutil.rmtree(lab.rundir, ignore_errors=True)
            lab.results["problems"] = lab.problems
            lab.results["leftovers"] = netlab.leftovers()
            lab.results["seconds"] = round(time.monotonic() - t_start, 1)
            lab.results["ok"] = status == 0
            # the docs are written from a run that measured everything it set out to, problems and all
            # (they list them); not from an interrupted or aborted one
            complete = status in (0, 1) and "upgrade" in lab.results
            report.write(lab.results, out, write_docs=args.write_docs and complete, repo=REPO)
            if args.write_docs:
                log("docs/modes.md written" if complete else "docs/modes.md not written: the run did not finish")
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_DFL)
    return status
