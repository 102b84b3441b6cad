"""`meshctl inject` end to end: golden files for every kind (tests/e2e/golden/inject: in/, and the
expected sidecar/ and node/ outputs), idempotence, stdin, the hostNetwork message, and every output
validated against the Kubernetes schemas with kubernetes-validate (pip install kubernetes-validate;
it ships the schemas, no network needed). The golden, idempotence and CLI tests need only the
standard library; the structural and schema checks need PyYAML and kubernetes-validate and are
skipped, with the reason, without them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import meshlib

GOLDEN = Path(__file__).resolve().parent / "golden" / "inject"
NAMES = sorted(p.name for p in (GOLDEN / "in").glob("*.yaml"))
MODES = ["sidecar", "node"]
K8S_VERSION = "1.37.0"  # the newest schemas kubernetes-validate ships; native sidecars need ≥ 1.29


@pytest.fixture(scope="module")
def meshd_binary():
    """Overrides conftest's session check: inject does not start meshd."""
    return meshlib.meshd_bin()


def inject(meshctl, *args, stdin: bytes | None = None):
    cmd = [meshctl, "inject", *[str(a) for a in args]]
    if stdin is None:
        return meshlib.run(cmd, timeout=30)
    p = meshlib.popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(stdin, timeout=30)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def test_golden_inputs_cover_every_kind():
    kinds = set()
    for name in NAMES:
        kinds.update(re.findall(r"^[ -]*kind: (\w+)", (GOLDEN / "in" / name).read_text(), re.M))
    assert {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "List"} <= kinds, kinds


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_golden_and_idempotent(meshctl, name, mode, tmp_path):
    src = GOLDEN / "in" / name
    r = inject(meshctl, "-f", src, "--mode", mode)
    assert r.returncode == 0, r.stderr.decode()
    expected = (GOLDEN / mode / name).read_bytes()
    assert r.stdout == expected, f"{mode}/{name}: output differs from the golden file"
    # Injecting the output again changes nothing, byte for byte.
    once = tmp_path / "once.yaml"
    once.write_bytes(r.stdout)
    again = inject(meshctl, "-f", once, "--mode", mode)
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout == r.stdout
    # Everything that was in the input is still there (comments included).
    out_lines = r.stdout.decode().splitlines()
    for line in src.read_text().splitlines():
        if line.strip().startswith("#"):
            assert line in out_lines, f"comment lost: {line!r}"


def resources(path: Path):
    yaml = pytest.importorskip("yaml", reason="PyYAML parses the outputs for the structural checks")
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("kind") == "List":  # kubernetes-validate has no schema for List: validate its items
            yield from doc["items"]
        else:
            yield doc


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_outputs_validate_against_kubernetes_schemas(name, mode):
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (ships the schemas)")
    for res in list(resources(GOLDEN / mode / name)):
        kv.validate(res, K8S_VERSION, strict=True)  # raises on any schema violation or unknown field


@pytest.mark.parametrize("name", NAMES)
def test_sidecar_output_has_meshd_capture_volume_and_probes(name):
    for res in resources(GOLDEN / "sidecar" / name):
        spec = pod_spec(res)
        if spec is None:
            continue
        if spec.get("hostNetwork"):
            assert "meshd" not in [c["name"] for c in spec.get("initContainers", [])]
            continue
        init = spec["initContainers"]
        names = [c["name"] for c in init]
        assert names[:2] == ["meshd-init", "meshd"], names  # capture first, then meshd, then the app's own
        capture, meshd = init[0], init[1]
        assert "NET_ADMIN" in capture["securityContext"]["capabilities"]["add"]
        assert capture["command"] == ["meshd"]
        assert capture["args"][:3] == ["capture", "install", "--mode=sidecar"]
        for flag in ("--proxy-uid=4140", "--outbound-port=4140", "--inbound-port=4143", "--admin-port=4191"):
            assert flag in capture["args"], capture["args"]
        assert capture["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert meshd["securityContext"]["runAsUser"] == 4140 and meshd["securityContext"]["readOnlyRootFilesystem"]
        assert meshd["startupProbe"]["httpGet"] == {"path": "/ready", "port": 4191}
        assert meshd["restartPolicy"] == "Always"  # a native sidecar
        assert meshd["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 4191}
        assert meshd["livenessProbe"]["httpGet"] == {"path": "/live", "port": 4191}
        assert {"name": "meshd-config", "mountPath": "/etc/meshd", "readOnly": True} in meshd["volumeMounts"]
        assert {"name": "meshd-config", "configMap": {"name": "meshd-config"}} in spec["volumes"]
        assert all(c["name"] != "meshd" for c in spec["containers"])


@pytest.mark.parametrize("name", NAMES)
def test_node_output_wires_every_app_container(name):
    for res in resources(GOLDEN / "node" / name):
        spec = pod_spec(res)
        if spec is None or spec.get("hostNetwork"):
            continue
        assert "meshd" not in [c["name"] for c in spec.get("initContainers", [])]
        for c in spec["containers"]:
            env = c["env"]
            names = [e["name"] for e in env]
            assert names.index("NODE_IP") < names.index("http_proxy"), names  # $(NODE_IP) needs it defined first
            assert env[names.index("NODE_IP")]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
            assert env[names.index("http_proxy")]["value"] == "http://$(NODE_IP):4140"


def pod_spec(res):
    kind = res.get("kind")
    spec = res.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return spec["template"]["spec"]
    return None


def test_stdin_and_messages(meshctl):
    src = (GOLDEN / "in" / "hostnetwork.yaml").read_bytes()
    r = inject(meshctl, stdin=src)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == (GOLDEN / "sidecar" / "hostnetwork.yaml").read_bytes()
    err = r.stderr.decode()
    assert "daemonset/node-exporter: skipped" in err and "hostNetwork" in err, err
    assert "deployment/api: meshd sidecar injected" in err, err
    # -q keeps the warning about the skipped pod, drops the rest.
    r = inject(meshctl, "-q", "-f", "-", stdin=src)
    assert "skipped" in r.stderr.decode() and "injected" not in r.stderr.decode()


def test_errors_name_the_problem(meshctl, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\nspec: [\n")
    r = inject(meshctl, "-f", bad)
    assert r.returncode == 1 and "cannot parse" in r.stderr.decode(), r.stderr.decode()
    flow = tmp_path / "flow.yaml"
    flow.write_text("kind: Pod\nmetadata:\n  name: p\nspec:\n  containers: [{name: a, image: b}]\n  volumes: [{name: v}]\n")
    r = inject(meshctl, "-f", flow)
    assert r.returncode == 1 and "line 6" in r.stderr.decode() and "block style" in r.stderr.decode(), r.stderr.decode()
    r = inject(meshctl, "-f", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "cannot read" in r.stderr.decode()
