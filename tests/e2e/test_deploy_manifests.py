"""The manifests under deploy/ (docs/deploy.md): every YAML document of every file (found by glob, so a new
file is covered) validates against the Kubernetes schemas with kubernetes-validate --strict, at the version
test_meshctl_inject.py uses; the properties the two placements rely on hold (native sidecar, capture init
containers with NET_ADMIN/NET_RAW only, non-root meshd on a read-only root filesystem, probes on the admin
port, a node proxy on every node that upgrades with maxSurge 1 / maxUnavailable 0 and hands its sockets
over through a hostPath socket); and each ConfigMap's meshd.yaml passes `meshd --check` with the
container's own arguments. Needs PyYAML and kubernetes-validate (tests/e2e/requirements.txt)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path, PurePosixPath

import pytest

import meshlib
from test_meshctl_inject import K8S_VERSION

yaml = pytest.importorskip("yaml", reason="PyYAML parses the manifests")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
FILES = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
IDS = [str(p.relative_to(DEPLOY)) for p in FILES]
ADMIN_PORT = 4191
PROXY_UID = 4140
POD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job")
NODE_IP = "10.0.0.10"  # stands in for status.hostIP when meshd --check runs here


@pytest.fixture(scope="module")
def meshd_binary():
    """Overrides conftest's session check: only the --check tests need the binary (they say so)."""
    return meshlib.meshd_bin()


# ---------------------------------------------------------------- reading the manifests

def documents(path: Path):
    """Every non-empty document of a file; a List's items one by one (kubernetes-validate has no List)."""
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("kind") == "List":
            yield from doc.get("items") or []
        else:
            yield doc


ALL = [(p, d) for p in FILES for d in documents(p)]


def pod_spec(doc):
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_KINDS:
        return spec["template"]["spec"]
    return None


def is_meshd_image(c) -> bool:
    repo = c.get("image", "").split("@")[0].rsplit("/", 1)[-1].split(":")[0]
    return repo == "meshd"


def argv(c) -> list[str]:
    """What the container runs after the meshd executable (its entrypoint or `command: [meshd]`)."""
    command = c.get("command") or []
    if command and PurePosixPath(command[0]).name != "meshd":
        return [command[0], *command[1:], *(c.get("args") or [])]
    return [*command[1:], *(c.get("args") or [])]


def is_capture(c) -> bool:
    return is_meshd_image(c) and argv(c)[:2] == ["capture", "install"]


def is_proxy(c) -> bool:
    """A meshd container that runs the proxy (meshd with flags only, no subcommand)."""
    command = c.get("command") or []
    a = argv(c)
    return (is_meshd_image(c) and (not command or PurePosixPath(command[0]).name == "meshd")
            and all(x.startswith("-") for x in a[:1]))


def flag(args: list[str], name: str) -> str | None:
    """The value of --name=V or --name V in an argument list."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a[len(name) + 1:]
    return None


def workloads():
    """(file, document, pod spec) for every pod-bearing document that runs a meshd proxy."""
    out = []
    for p, d in ALL:
        spec = pod_spec(d)
        if spec is not None and any(is_proxy(c) for c in all_containers(spec)):
            out.append((p, d, spec))
    return out


def all_containers(spec):
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def proxy_container(spec):
    (c,) = [c for c in all_containers(spec) if is_proxy(c)]
    return c


def config_map_of(path: Path, spec, container):
    """The ConfigMap (from the same file) behind the container's --config, and the key it reads."""
    cfg = PurePosixPath(flag(container.get("args") or [], "--config"))
    for m in container.get("volumeMounts") or []:
        if cfg.parent == PurePosixPath(m["mountPath"]):
            vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
            name = vol["configMap"]["name"]
            cms = [d for q, d in ALL if q == path and d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name]
            assert cms, f"{path.name}: ConfigMap {name} (mounted for --config {cfg}) is not in the same file"
            return cms[0], cfg.name
    raise AssertionError(f"{path.name}: --config {cfg} is on no mounted volume")


def meshd_config(path, spec) -> dict:
    cm, key = config_map_of(path, spec, proxy_container(spec))
    return yaml.safe_load(cm["data"][key])


def seconds(d) -> float:
    if isinstance(d, (int, float)):
        return float(d)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(d).strip())
    assert m, f"not a duration: {d!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


WORKLOADS = workloads()
WIDS = [f"{p.relative_to(DEPLOY)}:{d['kind']}/{d['metadata']['name']}" for p, d, _ in WORKLOADS]
DAEMONSETS = [w for w in WORKLOADS if w[1]["kind"] == "DaemonSet"]
SIDECARS = [w for w in WORKLOADS if not w[2].get("hostNetwork")]


# ---------------------------------------------------------------- schemas

def test_both_placements_are_there():
    assert FILES, "no manifest under deploy/"
    assert DAEMONSETS and SIDECARS, WIDS
    assert (REPO / "Containerfile").is_file()


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_document_validates_against_kubernetes_schemas(path):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (ships the schemas)")
    docs = list(documents(path))
    assert docs, f"{path}: no YAML document"
    for i, doc in enumerate(docs):
        try:
            kv.validate(doc, K8S_VERSION, strict=True)  # unknown fields are errors too
        except Exception as e:  # noqa: BLE001 - name the document
            pytest.fail(f"{path.relative_to(REPO)} document {i} ({doc.get('kind')}/{doc.get('metadata', {}).get('name')}): {e}")


# ---------------------------------------------------------------- every placement

@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_meshd_containers_are_hardened(path, doc, spec):
    for c in all_containers(spec):
        if not is_meshd_image(c):
            continue
        sc = c.get("securityContext") or {}
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert not sc.get("privileged"), c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], c["name"]
        assert c.get("resources", {}).get("limits", {}).get("memory"), f"{c['name']}: no memory limit"
        assert c.get("resources", {}).get("requests", {}).get("cpu"), f"{c['name']}: no CPU request"
    meshd = proxy_container(spec)
    sc = meshd["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == PROXY_UID, sc
    assert "add" not in sc.get("capabilities", {}), sc


@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_probes_on_the_admin_port(path, doc, spec):
    meshd = proxy_container(spec)
    assert meshd["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert meshd["livenessProbe"]["httpGet"]["path"] == "/live"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in meshd:
            assert meshd[kind]["httpGet"]["port"] == ADMIN_PORT, kind
    assert meshd["startupProbe"]["httpGet"]["path"] == "/ready"
    cfg = meshd_config(path, spec)
    admin = cfg["admin"]["listen"]
    assert port_of(admin) == ADMIN_PORT, admin
    host = admin.rsplit(":", 1)[0]
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        # The kubelet probes the pod IP unless told otherwise: admin must listen there (or the probe
        # names the loopback admin, which only a hostNetwork pod's kubelet reaches).
        probe_host = meshd[kind]["httpGet"].get("host")
        if ipaddress.ip_address(host).is_loopback:
            assert spec.get("hostNetwork") and probe_host == host, (kind, admin, probe_host)
        else:
            assert probe_host is None and host in ("0.0.0.0", "::"), (kind, admin)


@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_grace_period_outlasts_the_drain(path, doc, spec):
    drain = seconds(meshd_config(path, spec).get("drainTimeout", "30s"))
    assert spec.get("terminationGracePeriodSeconds", 30) > drain


@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_capture_init_container(path, doc, spec):
    """`meshd capture install` (not a shell script) in an init container that runs before meshd, as root
    with NET_ADMIN and NET_RAW and nothing else; its ports agree with meshd's listeners."""
    init = spec.get("initContainers") or []
    captures = [c for c in init if is_capture(c)]
    assert len(captures) == 1, [c["name"] for c in init]
    cap = captures[0]
    assert "restartPolicy" not in cap  # runs once, to completion
    names = [c["name"] for c in all_containers(spec)]
    assert names.index(cap["name"]) < names.index(proxy_container(spec)["name"])
    sc = cap["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"], sc
    assert sc["capabilities"]["drop"] == ["ALL"], sc
    args = argv(cap)
    cfg = meshd_config(path, spec)
    mode = flag(args, "--mode")
    assert mode == cfg.get("mode", "sidecar") == ("node" if spec.get("hostNetwork") else "sidecar"), (mode, cfg.get("mode"))
    if mode == "sidecar":
        meshd = proxy_container(spec)
        assert int(flag(args, "--proxy-uid") or PROXY_UID) == meshd["securityContext"]["runAsUser"]
        assert int(flag(args, "--outbound-port") or 4140) == port_of(cfg.get("outbound", {}).get("listen", ":4140"))
        assert int(flag(args, "--inbound-port") or 4143) == port_of(cfg.get("inbound", {}).get("listen", ":4143"))
        assert int(flag(args, "--admin-port") or ADMIN_PORT) == port_of(cfg["admin"]["listen"])
    else:
        assert flag(args, "--pod-cidr") in cfg["node"]["podCIDRs"], (args, cfg["node"])
        assert flag(args, "--node-ip") == "$(MESHD_NODE_IP)"
        assert host_ip_env(cap), "meshd-capture needs MESHD_NODE_IP from status.hostIP for $(MESHD_NODE_IP)"


def host_ip_env(c) -> bool:
    return any(e["name"] == "MESHD_NODE_IP" and e.get("valueFrom") == {"fieldRef": {"fieldPath": "status.hostIP"}}
               for e in c.get("env") or [])


# ---------------------------------------------------------------- sidecar

@pytest.mark.parametrize("path,doc,spec", SIDECARS, ids=[f"{p.relative_to(DEPLOY)}" for p, _, _ in SIDECARS])
def test_sidecar_is_native(path, doc, spec):
    meshd = proxy_container(spec)
    assert meshd in spec["initContainers"] and meshd.get("restartPolicy") == "Always", "meshd is not a native sidecar"
    assert not any(is_meshd_image(c) for c in spec["containers"])
    app_uids = {(c.get("securityContext") or {}).get("runAsUser") for c in spec["containers"]}
    assert PROXY_UID not in app_uids  # the capture rules let this UID's traffic out unredirected


# ---------------------------------------------------------------- node proxy

@pytest.mark.parametrize("path,doc,spec", DAEMONSETS, ids=[f"{p.relative_to(DEPLOY)}" for p, _, _ in DAEMONSETS])
def test_node_proxy_runs_on_every_node(path, doc, spec):
    assert spec["hostNetwork"] is True
    meshd = proxy_container(spec)
    assert host_ip_env(meshd), meshd.get("env")
    control_plane = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    assert any(tolerates(t, control_plane) for t in spec.get("tolerations") or []), spec.get("tolerations")
    assert cfg_mode(path, spec) == "node"


def cfg_mode(path, spec):
    return meshd_config(path, spec).get("mode")


def tolerates(t, taint) -> bool:
    if t.get("key") not in (None, taint["key"]) or t.get("effect") not in (None, "", taint["effect"]):
        return False
    return t.get("operator") == "Exists" or t.get("value") == taint.get("value")


@pytest.mark.parametrize("path,doc,spec", DAEMONSETS, ids=[f"{p.relative_to(DEPLOY)}" for p, _, _ in DAEMONSETS])
def test_node_proxy_upgrade_hands_over_on_the_same_node(path, doc, spec):
    strategy = doc["spec"]["updateStrategy"]
    assert strategy.get("type", "RollingUpdate") == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    meshd = proxy_container(spec)
    assert "--takeover" in meshd["args"]
    # The socket of the hand-over lies in a hostPath directory both pods of the node mount.
    socket = PurePosixPath(meshd_config(path, spec)["upgrade"]["socket"])
    mounts = [m for m in meshd["volumeMounts"] if socket.is_relative_to(m["mountPath"])]
    assert mounts, f"{socket}: on no volume of {meshd['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert vol.get("hostPath", {}).get("type") == "DirectoryOrCreate", vol
    assert not mount.get("readOnly"), mount
    # On a hostNetwork pod every containerPort is a hostPort: the surge pod would never be scheduled.
    for c in all_containers(spec):
        assert not c.get("ports"), f"{c['name']}: ports on a hostNetwork pod block the surge pod"


# ---------------------------------------------------------------- meshd --check

def meshd_help(*args) -> str:
    r = meshlib.run([meshlib.meshd_bin(), *args, "--help"], timeout=10)
    return (r.stdout + r.stderr).decode()


def need_binary():
    path = meshlib.meshd_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"meshd binary not found at {path}: build it or set MESHD_BIN", pytrace=False)


@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_config_map_passes_meshd_check(path, doc, spec, tmp_path):
    """The ConfigMap's meshd.yaml, with the container's own arguments and environment, is a valid meshd
    configuration. A binary without --takeover (the node hand-over) does not know the `upgrade:` key yet:
    then the file must be refused for that key alone, and pass without it."""
    need_binary()
    meshd = proxy_container(spec)
    cm, key = config_map_of(path, spec, meshd)
    text = cm["data"][key]
    env = {"PATH": "/usr/bin:/bin"}
    for e in meshd.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif e.get("valueFrom") == {"fieldRef": {"fieldPath": "status.hostIP"}}:
            env[e["name"]] = NODE_IP
    args = list(meshd["args"])
    i = args.index("--config")

    def check(content: str, argv_: list[str]):
        f = tmp_path / key
        f.write_text(content)
        a = list(argv_)
        a[i + 1] = str(f)
        return meshlib.run([meshlib.meshd_bin(), *a, "--check"], timeout=10, env=env)

    r = check(text, args)
    assert r.returncode == 0, f"{path.name}: {r.stderr.decode()}"


@pytest.mark.parametrize("path,doc,spec", WORKLOADS, ids=WIDS)
def test_capture_flags_are_meshd_flags(path, doc, spec):
    need_binary()
    usage = meshd_help("capture", "install")
    assert "--proxy-uid" in usage, f"{meshlib.meshd_bin()} capture install --help:\n{usage}"
    (cap,) = [c for c in spec["initContainers"] if is_capture(c)]
    for a in argv(cap)[2:]:
        if a.startswith("--"):
            assert a.split("=", 1)[0] in usage, f"{a}: not in `meshd capture install --help`"


# ---------------------------------------------------------------- image

def test_containerfile_builds_with_the_release_script():
    text = (REPO / "Containerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) == 2, stages
    assert re.search(r"^ARG SWIFT_IMAGE=swift:6\.", text, re.M) and stages[0] == "${SWIFT_IMAGE}"
    assert "scripts/build-release.sh" in text
    assert "--static-swift-stdlib" in (REPO / "scripts" / "build-release.sh").read_text()
    runtime = text.split("FROM", 2)[2]
    assert "iptables" in runtime and re.search(r"^USER 4140\b", runtime, re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/meshd"\]', runtime, re.M)
    assert re.search(r"^COPY --from=build .*meshd .*meshctl", runtime, re.M)
