"""The pure half of `kubectl modeldeploy upload` and `ls`, and the pod's own program run here on a folder.

The pod's program (`claim_agent.py`) is plain Python on the standard library: run as a subprocess on a
temporary folder it behaves as it does in the pod, so its refusals (a changed file, a cut stream, a path
leading out of the claim, a file already there) are tested without a cluster.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import onnx
import pytest
import yaml

from modeldeploy_operator import claim_agent, config, onnxfile, plugin, plugin_files, spec
from testsupport.onnx_models import build_mlp

REPO = Path(__file__).resolve().parents[3]
AGENT = Path(claim_agent.__file__)
DIGEST = "ab" * 32


# --- claim and path: spec.model's own rules -----------------------------------------------------


@pytest.mark.parametrize(("claim", "path", "expected"), [
    ("models", "sentiment/../../etc/passwd", f"--path 'sentiment/../../etc/passwd': {spec.NO_DOTDOT.explain()}"),
    ("models", "..", f"--path '..': {spec.NO_DOTDOT.explain()}"),
    ("models", "/sentiment/v1/model.onnx", f"--path '/sentiment/v1/model.onnx': {spec.RELATIVE.explain()}"),
    ("Models_1", "a.onnx", f"--pvc 'Models_1': {spec.CLAIM_NAME.explain()}"),
])
def test_claim_and_path_follow_the_spec_model_rules(claim: str, path: str, expected: str) -> None:
    with pytest.raises(plugin.PluginError) as refused:
        plugin_files.location(claim, path)
    assert str(refused.value) == expected


def test_a_path_the_spec_accepts_is_accepted() -> None:
    source = plugin_files.location("models", "sentiment/v1..2/model.onnx")  # `..` inside a name is no segment
    assert (source.pvc, source.path) == ("models", "sentiment/v1..2/model.onnx")


# --- the ONNX check ------------------------------------------------------------------------------


def tiny_model(tmp_path: Path) -> onnx.ModelProto:
    return onnx.load(str(build_mlp(tmp_path / "mlp.onnx")))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_real_onnx_models_pass(tmp_path: Path) -> None:
    assert onnxfile.check_file(build_mlp(tmp_path / "mlp.onnx")) == 8


def broken(model: onnx.ModelProto, change: str) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    if change == "no-graph":
        copy.ClearField("graph")
    elif change == "no-opset":
        copy.ClearField("opset_import")
    elif change == "no-ir-version":
        copy.ClearField("ir_version")
    elif change == "no-output":
        copy.graph.ClearField("output")
    elif change == "ir-version-implausible":
        copy.ir_version = 4000
    data: bytes = copy.SerializeToString()
    return data


@pytest.mark.parametrize(("change", "reason"), [
    ("no-graph", "no graph (field 7 of ModelProto)"),
    ("no-opset", "no opset_import (field 8 of ModelProto)"),
    ("no-ir-version", "no ir_version (field 1 of ModelProto)"),
    ("no-output", "its graph has no output"),
    ("ir-version-implausible", "ir_version 4000 is not a plausible ONNX IR version"),
])
def test_a_model_proto_missing_its_parts_is_refused(tmp_path: Path, change: str, reason: str) -> None:
    path = write(tmp_path, "m.onnx", broken(tiny_model(tmp_path), change))
    with pytest.raises(onnxfile.NotOnnxError) as refused:
        onnxfile.check_file(path)
    assert str(refused.value) == f"{path} is not an ONNX model (an onnx.ModelProto): {reason}"


def test_truncated_and_padded_models_are_refused(tmp_path: Path) -> None:
    data = tiny_model(tmp_path).SerializeToString()
    for name, content in (("cut.onnx", data[:-7]), ("padded.onnx", data + b"\xff\xff")):
        with pytest.raises(onnxfile.NotOnnxError, match="is not an ONNX model"):
            onnxfile.check_file(write(tmp_path, name, content))


def test_a_wrong_wire_type_is_refused(tmp_path: Path) -> None:
    # Field 7 (graph) as a varint: well-formed protobuf, but not a ModelProto.
    data = bytes([0x08, 0x08, 0x38, 0x01])
    with pytest.raises(onnxfile.NotOnnxError, match="field 7 has wire type 0, not 2"):
        onnxfile.check_file(write(tmp_path, "m.onnx", data))


@pytest.mark.parametrize(("content", "kind"), [
    (b"PK\x03\x04" + b"\0" * 40, "a zip archive (a PyTorch checkpoint, a Keras file?)"),
    (b"\x80\x04\x95" + b"\0" * 20, "a Python pickle"),
    (b'{"model": 1}', "JSON"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", "a safetensors file"),
    (b"\x14\x00\x00\x00ORTM" + b"\0" * 20, "an ONNX Runtime ORT-format model (serve the .onnx it was converted from)"),
])
def test_other_formats_are_named(tmp_path: Path, content: bytes, kind: str) -> None:
    path = write(tmp_path, "model.bin", content)
    with pytest.raises(onnxfile.NotOnnxError) as refused:
        onnxfile.check_file(path)
    assert str(refused.value) == f"{path} is not an ONNX model (an onnx.ModelProto): it looks like {kind}"


def test_empty_missing_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(onnxfile.NotOnnxError, match="it is empty"):
        onnxfile.check_file(write(tmp_path, "empty.onnx", b""))
    with pytest.raises(onnxfile.NotOnnxError, match=r"cannot read .*missing\.onnx: No such file"):
        onnxfile.check_file(tmp_path / "missing.onnx")
    with pytest.raises(onnxfile.NotOnnxError, match="is not a regular file"):
        onnxfile.check_file(tmp_path)


def test_a_large_model_is_checked_without_reading_it(tmp_path: Path) -> None:
    """A 64 MiB initializer is skipped over by its length: the check touches only field headers."""
    model = tiny_model(tmp_path)
    tensor = model.graph.initializer.add()
    tensor.name, tensor.data_type = "big", onnx.TensorProto.UINT8
    tensor.dims.append(64 << 20)
    tensor.raw_data = b"\0" * (64 << 20)
    path = write(tmp_path, "big.onnx", model.SerializeToString())
    assert onnxfile.check_file(path) == 8


# --- what it prints ------------------------------------------------------------------------------


@pytest.mark.parametrize(("claim", "path"), [
    ("models", "sentiment/v1/model.onnx"),
    ("true", "null"),
    ("123", "2024/01/model.onnx"),
    ("models", "a model: #1/model.onnx"),
    ("m.x", "- weird/'quoted\"/model.onnx"),
])
def test_the_snippet_reads_back_as_a_valid_spec_model(claim: str, path: str) -> None:
    snippet = plugin_files.model_snippet(claim, path, "0123456789" * 6 + "0123")
    assert snippet.endswith("\n") and snippet.count("\n") == 1
    model = yaml.safe_load(snippet)["model"]
    assert model == {"pvc": claim, "path": path, "sha256": "0123456789" * 6 + "0123"}
    spec.ModelSource.model_validate(model)


def test_the_snippet_is_plain_for_plain_names() -> None:
    assert plugin_files.model_snippet("models", "sentiment/v1/model.onnx", DIGEST) == (
        f'model: {{pvc: models, path: sentiment/v1/model.onnx, sha256: "{DIGEST}"}}\n')


def test_listing() -> None:
    entries: list[dict[str, Any]] = [{"path": "sentiment/v1/model.onnx", "size": 1234, "sha256": DIGEST},
               {"path": "sentiment/v1/model.onnx.profile.json", "size": 88, "sha256": None},
               {"path": "locked", "size": None, "sha256": None, "unreadable": "Permission denied"}]
    assert plugin_files.format_listing("models", None, entries).splitlines() == [
        "PATH                                  SIZE  SHA256",
        f"sentiment/v1/model.onnx               1234  {DIGEST}",
        "sentiment/v1/model.onnx.profile.json  88    -",
        "locked                                ?     (unreadable: Permission denied)",
    ]
    assert plugin_files.format_listing("models", None, []) == "no files on claim models\n"
    assert plugin_files.format_listing("models", "v9", []) == "no files under v9 on claim models\n"


# --- the claim, the pod --------------------------------------------------------------------------


def claim(modes: list[str], phase: str = "Bound", volume: str | None = "pv-1") -> dict[str, Any]:
    return {"metadata": {"name": "models"}, "spec": {"accessModes": modes, "volumeName": volume},
            "status": {"phase": phase, "accessModes": modes if phase == "Bound" else None}}


def test_only_a_writable_claim_is_used_for_upload() -> None:
    assert plugin_files.claim_refusal(claim(["ReadWriteOnce"]), None) is None
    assert plugin_files.claim_refusal(claim(["ReadWriteMany", "ReadOnlyMany"]), None) is None
    assert plugin_files.claim_refusal(claim(["ReadWriteOnce"], "Pending", None), None) is None  # the pod binds it
    refusal = plugin_files.claim_refusal(claim(["ReadOnlyMany"]), None)
    assert refusal == ("claim models is bound to a ReadOnlyMany volume (access modes: ReadOnlyMany): no pod can "
                       "write to it; write to the volume's source, or upload to a ReadWriteOnce claim")
    # The bound volume decides when it can be read.
    volume = {"spec": {"accessModes": ["ReadOnlyMany"], "nfs": {"server": "n", "path": "/"}}}
    assert "ReadOnlyMany volume" in str(plugin_files.claim_refusal(claim(["ReadWriteOnce"]), volume))
    read_only_source = {"spec": {"accessModes": ["ReadWriteMany"], "csi": {"driver": "d", "readOnly": True}}}
    assert plugin_files.claim_refusal(claim(["ReadWriteMany"]), read_only_source) == (
        "claim models is bound to a volume whose csi source is read-only")
    assert plugin_files.claim_refusal(claim(["ReadWriteOnce"], "Lost"), None) == (
        "claim models is Lost: its volume is gone")


@pytest.mark.parametrize("writable", [True, False])
def test_the_pod_meets_restricted_pod_security(writable: bool) -> None:
    pod = plugin_files.files_pod("models", "img:1", writable)
    spec_ = pod["spec"]
    container = spec_["containers"][0]
    assert spec_["securityContext"]["runAsNonRoot"] is True
    assert spec_["securityContext"]["runAsUser"] == 65532
    assert spec_["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec_["volumes"]
    assert spec_["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": not writable}
    assert container["volumeMounts"][0] == {"name": "claim", "mountPath": "/claim", "readOnly": not writable}
    assert spec_["activeDeadlineSeconds"] > 0 and spec_["restartPolicy"] == "Never"
    assert spec_["automountServiceAccountToken"] is False
    # The program is the agent's own source, run by the image's python3.
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODELDEPLOY_AGENT"] == AGENT.read_text()
    assert container["command"][:3] == ["python3", "-c", plugin_files.BOOTSTRAP]


def test_the_default_image_is_the_one_the_chart_deploys() -> None:
    chart = REPO / "charts" / "modeldeploy"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    deployed = values["serverImage"]["cpu"] or f"{values['serverImage']['repository']}:{app_version}-cpu"
    assert plugin_files.default_image() == config.DEFAULT_SERVER_IMAGE == deployed


def status(**fields: Any) -> dict[str, Any]:
    return {"status": fields}


@pytest.mark.parametrize(("pod", "expected"), [
    (status(phase="Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": "0/3 nodes are available: 3 node(s) had volume node affinity "
                                          "conflict."}]),
     ("waiting", "not scheduled: 0/3 nodes are available: 3 node(s) had volume node affinity conflict.")),
    (status(phase="Pending"), ("waiting", "not scheduled yet")),
    (status(phase="Pending", containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}]),
     ("waiting", "ContainerCreating: container starting")),
    (status(phase="Pending", containerStatuses=[{"state": {"waiting": {
        "reason": "ErrImageNeverPull", "message": "Container image \"x\" is not present"}}}]),
     ("failed", "ErrImageNeverPull: Container image \"x\" is not present")),
    (status(phase="Running", containerStatuses=[{"state": {"running": {}}}]), ("running", "")),
    (status(phase="Failed", message="Pod was active on the node longer than the specified deadline"),
     ("failed", "it ended (Failed): Pod was active on the node longer than the specified deadline")),
])
def test_pod_state_in_the_clusters_words(pod: dict[str, Any], expected: tuple[str, str]) -> None:
    assert plugin_files.pod_state(pod) == expected


@pytest.mark.parametrize(("event", "expected"), [
    ({"kind": "digest", "sha256": "cd" * 32},
     f"the file changed while it was uploaded: sha256 {DIGEST} before, {'cd' * 32} received; nothing was written "
     "to claim models"),
    ({"kind": "exists", "sha256": "cd" * 32},
     f"a/m.onnx already exists on claim models with sha256 {'cd' * 32}; --force replaces it"),
    ({"kind": "permission", "uid": 65532, "message": "cannot write into a: Permission denied"},
     "claim models is not writable by UID 65532: cannot write into a: Permission denied (make the volume's root "
     "writable for that user, or give it fsGroup support)"),
])
def test_refusals_for_people(event: dict[str, Any], expected: str) -> None:
    assert plugin_files.refusal_message(event, "models", "a/m.onnx", DIGEST) == expected


def test_upload_needs_a_claim_and_a_path() -> None:
    parser = plugin.build_parser()
    args = parser.parse_args(["upload", "m.onnx", "--pvc", "models", "--path", "a/m.onnx", "-n", "ml"])
    assert (args.command, args.file, args.pvc, args.path, args.namespace) == ("upload", "m.onnx", "models",
                                                                               "a/m.onnx", "ml")
    assert args.image == plugin_files.default_image()
    for missing in (["upload", "m.onnx", "--pvc", "models"], ["upload", "m.onnx", "--path", "a"], ["ls"]):
        with pytest.raises(SystemExit):
            parser.parse_args(missing)


def unreachable_kubeconfig(tmp_path: Path) -> Path:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return kubeconfig


def test_bad_input_is_refused_before_the_cluster_is_asked(tmp_path: Path) -> None:
    """No API server listens: each refusal below came before any request (or it would say so)."""
    kubeconfig = unreachable_kubeconfig(tmp_path)
    not_onnx = write(tmp_path, "model.pt", b"PK\x03\x04" + b"\0" * 40)
    model = build_mlp(tmp_path / "mlp.onnx")
    cases = [
        (["upload", str(not_onnx), "--pvc", "models", "--path", "a/model.onnx"],
         f"error: {not_onnx} is not an ONNX model (an onnx.ModelProto): it looks like a zip archive (a PyTorch "
         "checkpoint, a Keras file?)"),
        (["upload", str(model), "--pvc", "models", "--path", "../model.onnx"],
         f"error: --path '../model.onnx': {spec.NO_DOTDOT.explain()}"),
        (["upload", str(model), "--pvc", "models", "--path", "/model.onnx"],
         f"error: --path '/model.onnx': {spec.RELATIVE.explain()}"),
        (["ls", "--pvc", "models", "--path", "a/../.."], f"error: --path 'a/../..': {spec.NO_DOTDOT.explain()}"),
    ]
    for argv, expected in cases:
        done = subprocess.run([str(Path(sys.executable).parent / "kubectl-modeldeploy"), *argv,
                               "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr.strip(), done.stdout) == (1, expected, ""), argv


# --- the pod's program, run here -----------------------------------------------------------------


def agent(tmp_path: Path, *args: str, data: bytes = b"") -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, str(AGENT), *args], input=data, capture_output=True, timeout=60,
                          env={"MODELDEPLOY_PENDING": str(tmp_path / "pending"), "PATH": "/usr/bin:/bin"})
    assert not done.stderr, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_the_agent_writes_only_what_has_the_expected_digest(tmp_path: Path) -> None:
    root = tmp_path / "claim"
    root.mkdir()
    data = b"model bytes " * 100_000
    size = str(len(data))
    assert agent(tmp_path, "receive", str(root), "a/b/m.onnx", size, digest(data), data=data) == [
        {"event": "ready"}, {"event": "done", "sha256": digest(data), "size": len(data)}]
    assert (root / "a/b/m.onnx").read_bytes() == data
    assert oct((root / "a/b/m.onnx").stat().st_mode & 0o777) == "0o644"
    # The same again: nothing is sent.
    assert agent(tmp_path, "receive", str(root), "a/b/m.onnx", size, digest(data)) == [
        {"event": "unchanged", "sha256": digest(data), "size": len(data)}]
    # A file that changed on the way: refused, nothing written.
    changed = data[:-1] + b"!"
    events = agent(tmp_path, "receive", str(root), "a/c.onnx", size, digest(data), data=changed)
    assert events[-1] == {"event": "error", "kind": "digest", "sha256": digest(changed),
                          "message": "the bytes received do not have the expected sha256"}
    # A stream cut short: refused, nothing written.
    events = agent(tmp_path, "receive", str(root), "a/d.onnx", size, digest(data), data=data[:1000])
    assert events[-1]["kind"] == "truncated" and events[-1]["received"] == 1000
    # Another content at the path: refused before any byte is read, unless --force.
    other = b"other"
    events = agent(tmp_path, "receive", str(root), "a/b/m.onnx", "5", digest(other), data=other)
    assert events == [{"event": "error", "kind": "exists", "sha256": digest(data),
                       "message": "a/b/m.onnx already exists on the claim with another content"}]
    assert agent(tmp_path, "receive", str(root), "a/b/m.onnx", "5", digest(other), "--force", data=other)[-1] == {
        "event": "done", "sha256": digest(other), "size": 5}
    assert everything(root) == ["a/b/m.onnx"]
    assert not list((tmp_path / "pending").iterdir())


def test_the_agent_stays_inside_the_claim(tmp_path: Path) -> None:
    root = tmp_path / "claim"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    events = agent(tmp_path, "receive", str(root), "out/m.onnx", "1", digest(b"x"), data=b"x")
    assert events == [{"event": "error", "kind": "path",
                       "message": "out/m.onnx leads out of the claim (through a symbolic link)"}]
    (root / "folder.onnx").mkdir()
    assert agent(tmp_path, "receive", str(root), "folder.onnx", "1", digest(b"x"))[0]["message"] == (
        "folder.onnx is a folder on the claim")


def test_the_agent_lists_files_with_sizes_and_onnx_digests(tmp_path: Path) -> None:
    root = tmp_path / "claim"
    (root / "s/v1").mkdir(parents=True)
    (root / "s/v1/model.onnx").write_bytes(b"onnx")
    (root / "s/v1/model.onnx.profile.json").write_bytes(b"{}")
    (root / "z.onnx").write_bytes(b"z")
    assert agent(tmp_path, "list", str(root)) == [
        {"event": "file", "path": "s/v1/model.onnx", "size": 4, "sha256": digest(b"onnx")},
        {"event": "file", "path": "s/v1/model.onnx.profile.json", "size": 2, "sha256": None},
        {"event": "file", "path": "z.onnx", "size": 1, "sha256": digest(b"z")},
        {"event": "end", "missing": False}]
    assert [e.get("path") for e in agent(tmp_path, "list", str(root), "s/v1/model.onnx")] == ["s/v1/model.onnx",
                                                                                              None]
    assert agent(tmp_path, "list", str(root), "nothing/here") == [{"event": "end", "missing": True}]


def test_the_pods_main_process_removes_an_unfinished_upload_when_stopped(tmp_path: Path) -> None:
    """A receive killed mid-stream leaves its temporary file; the pod's deletion (SIGTERM) removes it."""
    root = tmp_path / "claim"
    root.mkdir()
    env = {"MODELDEPLOY_PENDING": str(tmp_path / "pending"), "PATH": "/usr/bin:/bin"}
    receiver = subprocess.Popen([sys.executable, str(AGENT), "receive", str(root), "m.onnx", "100", DIGEST],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert receiver.stdin and receiver.stdout
    assert json.loads(receiver.stdout.readline()) == {"event": "ready"}
    receiver.stdin.write(b"partial")
    receiver.stdin.flush()
    deadline = time.monotonic() + 30
    while not [p for p in root.iterdir() if p.stat().st_size] and time.monotonic() < deadline:
        time.sleep(0.05)
    receiver.kill()
    receiver.wait(timeout=30)
    left = [p.name for p in root.iterdir()]
    assert len(left) == 1 and left[0].startswith(".m.onnx.upload-"), left
    keeper = subprocess.Popen([sys.executable, str(AGENT), "keep", "600"], stdout=subprocess.PIPE, env=env)
    assert keeper.stdout and json.loads(keeper.stdout.readline()) == {"event": "keeping"}
    keeper.send_signal(signal.SIGTERM)
    assert keeper.wait(timeout=30) == 0
    assert list(root.iterdir()) == []
