"""The examples say what they do: valid manifests, commands that do what the text claims.

The API server's verdict on the manifests is in tests/integration/plugin (dry-run against the
real CRD); here: the spec model accepts them, the documented patches move the spec as
described and agree with the plugin, the Argo CD snippets stay in step with the chart's
script, and the tiny-model script writes a model that answers its own sample request.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import yaml

from modeldeploy_operator import plugin
from modeldeploy_operator.crd import ModelDeployment
from modeldeploy_operator.spec import check_name
from testsupport.merge_patch import apply_merge_patch

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
MODEL_DEPLOYMENTS = ["modeldeployment.yaml", "modeldeployment-gpu.yaml", "modeldeployment-canary.yaml"]
HEALTH_KEY = "resource.customizations.health.modeldeploy.dev_ModelDeployment"


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return document


@pytest.mark.parametrize("name", MODEL_DEPLOYMENTS)
def test_model_deployment_examples_satisfy_the_spec_model(name: str) -> None:
    document = load(name)
    parsed = ModelDeployment.model_validate(document)
    check_name(document["metadata"]["name"])
    # No namespace: the examples land where the user points kubectl (default unless told).
    assert "namespace" not in document["metadata"]
    assert parsed.spec.model.pvc == load("pvc.yaml")["metadata"]["name"]


def test_example_names_and_shapes() -> None:
    assert load("modeldeployment.yaml")["metadata"]["name"] == "sentiment"
    assert load("modeldeployment-canary.yaml")["metadata"]["name"] == "sentiment"
    gpu = load("modeldeployment-gpu.yaml")
    assert gpu["spec"]["gpu"] >= 1
    assert "gpu" not in load("modeldeployment.yaml")["spec"]
    canary = load("modeldeployment-canary.yaml")["spec"]["canary"]
    assert canary["model"]["path"] != load("modeldeployment-canary.yaml")["spec"]["model"]["path"]
    assert 0 < canary["trafficPercent"] < 100


def test_canary_example_is_the_cpu_example_plus_a_canary() -> None:
    """Applying the canary file over the CPU one changes only what a canary adds."""
    base = load("modeldeployment.yaml")["spec"]
    with_canary = load("modeldeployment-canary.yaml")["spec"]
    added = {key for key in with_canary if key not in base}
    assert added <= {"canary", "routing"}
    assert {key: value for key, value in with_canary.items() if key in base} == base


def test_pvc_example() -> None:
    pvc = load("pvc.yaml")
    assert (pvc["apiVersion"], pvc["kind"], pvc["metadata"]["name"]) == (
        "v1",
        "PersistentVolumeClaim",
        "models",
    )
    assert pvc["spec"]["resources"]["requests"]["storage"]


# --- canary-commands.md ----------------------------------------------------------------------


def documented_patches() -> list[dict[str, Any]]:
    """Every `kubectl patch md sentiment --type merge -p '...'` in canary-commands.md, in order."""
    text = (EXAMPLES / "canary-commands.md").read_text().replace("\\\n", " ")
    patches = []
    for line in text.splitlines():
        if not line.startswith("kubectl patch md"):
            continue
        words = shlex.split(line)
        assert words[:6] == ["kubectl", "patch", "md", "sentiment", "--type", "merge"], line
        patches.append(json.loads(words[words.index("-p") + 1]))
    return patches


def test_documented_commands_move_traffic_promote_and_roll_back() -> None:
    patches = documented_patches()
    assert len(patches) == 5
    move_30, move_50, promote, rollback, remove = patches
    resource = load("modeldeployment-canary.yaml")

    after = apply_merge_patch(resource, move_30)
    assert after["spec"]["canary"]["trafficPercent"] == 30
    assert after["spec"]["canary"]["model"] == resource["spec"]["canary"]["model"]
    assert apply_merge_patch(after, move_50)["spec"]["canary"]["trafficPercent"] == 50

    promoted = apply_merge_patch(resource, promote)
    assert promoted["spec"]["model"] == resource["spec"]["canary"]["model"]
    assert "canary" not in promoted["spec"]

    assert apply_merge_patch(resource, rollback)["spec"]["canary"]["trafficPercent"] == 0
    assert "canary" not in apply_merge_patch(resource, remove)["spec"]


def test_documented_promote_matches_the_plugin() -> None:
    resource = load("modeldeployment-canary.yaml")
    resource["spec"]["model"]["sha256"] = "ab" * 32
    documented = apply_merge_patch(resource, documented_patches()[2])
    by_plugin = apply_merge_patch(resource, plugin.promote_patch(resource, pin_version=False))
    assert documented == by_plugin


def test_documented_rollbacks_match_the_plugin() -> None:
    resource = load("modeldeployment-canary.yaml")
    patches = documented_patches()
    assert plugin.rollback_patch(resource, remove=False) == patches[3]
    assert plugin.rollback_patch(resource, remove=True) == patches[4]


# --- Argo CD ---------------------------------------------------------------------------------


def test_argocd_cm_patch_carries_the_chart_script_verbatim() -> None:
    patch = load("argocd-cm-health-patch.yaml")
    script = (REPO / "charts" / "modeldeploy" / "files" / "argocd-health.lua").read_text()
    assert patch == {"data": {HEALTH_KEY: script}}


def test_argocd_application_syncs_existing_example_files() -> None:
    application = load("argocd-application.yaml")
    assert (application["apiVersion"], application["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source = application["spec"]["source"]
    assert (REPO / source["path"]).is_dir()
    match = re.fullmatch(r"\{(.+)\}", source["directory"]["include"])
    assert match
    files = match.group(1).split(",")
    assert files == ["pvc.yaml", "modeldeployment.yaml"]
    assert all((REPO / source["path"] / name).is_file() for name in files)
    assert application["spec"]["destination"]["namespace"]


# --- make_tiny_model.py ----------------------------------------------------------------------


def make_model(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "make_tiny_model.py"), str(path), *extra],
        capture_output=True,
        text=True,
        check=True,
    )


def test_tiny_model_answers_its_sample_request(tmp_path: Path) -> None:
    model_path = tmp_path / "sentiment" / "v1" / "model.onnx"
    made = make_model(model_path)
    request = json.loads(made.stdout)
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert f"sha256: {digest}" in made.stderr

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.shape[0] == "batch" and model_input.shape[1] == 4
    (tensor,) = request["inputs"]
    assert (tensor["name"], tensor["datatype"]) == (model_input.name, "FP32")
    data = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (probabilities,) = session.run(None, {tensor["name"]: data})
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 7])
def test_tiny_model_has_a_dynamic_batch_dimension(tmp_path: Path, batch: int) -> None:
    model_path = tmp_path / "model.onnx"
    request = json.loads(make_model(model_path, "--batch", str(batch)).stdout)
    (tensor,) = request["inputs"]
    assert tensor["shape"] == [batch, 4] and len(tensor["data"]) == batch * 4
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    data = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    assert session.run(None, {"input": data})[0].shape == (batch, 2)


def test_tiny_model_is_reproducible_and_seeded(tmp_path: Path) -> None:
    make_model(tmp_path / "a.onnx")
    make_model(tmp_path / "b.onnx")
    make_model(tmp_path / "c.onnx", "--seed", "1")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert (tmp_path / "a.onnx").read_bytes() != (tmp_path / "c.onnx").read_bytes()


def test_tiny_model_rejects_a_bad_batch(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_tiny_model.py"), str(tmp_path / "m.onnx"), "--batch", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "--batch must be at least 1" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
