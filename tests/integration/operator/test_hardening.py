"""What a failing cluster or an unusual manifest does to the operator: text outside the Basic Multilingual
Plane, a namespace deleted with many ModelDeployments in it, an API server restarted under the watches."""

from __future__ import annotations

import json
from typing import Any

from testsupport.operator_harness import Harness, manifest


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_text_outside_the_basic_multilingual_plane_is_applied_as_written(harness: Harness, istio: None) -> None:
    """Server-side apply bodies are YAML: they go out as UTF-8, never as JSON surrogate-pair escapes."""
    h = harness
    h.start_operator()
    h.bound_claim()
    spec = {"model": {"pvc": "models", "path": "v1/🚀.onnx"},
            "canary": {"model": {"pvc": "models", "path": "v2/模型🚀.onnx"}, "trafficPercent": 10},
            "istio": {"hosts": ["🚀.example"]}}
    h.apply_manifest(manifest("rocket", **spec))
    h.wait_condition("rocket", "Ready", "True", timeout=90)
    assert env_of(h.get("deployment", "rocket-stable"))["MODEL_PATH"] == "/models/v1/🚀.onnx"
    assert env_of(h.get("deployment", "rocket-canary"))["MODEL_PATH"] == "/models/v2/模型🚀.onnx"
    assert "🚀.example" in h.get("virtualservice", "rocket")["spec"]["hosts"]


def test_a_child_the_api_server_refuses_is_named_with_its_field(harness: Harness, istio: None) -> None:
    """A nodeSelector value that is no label value: the status names the child and the field, not a codec."""
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest("zone", nodeSelector={"topology.kubernetes.io/zone": "🚀"}))
    ready = h.wait_condition("zone", "Ready", "False", "ApplyFailed")
    assert "Deployment/zone-stable" in ready["message"]
    assert "spec.template.spec.nodeSelector" in ready["message"]
    assert "decoding" not in ready["message"]
    events = json.loads(h.kubectl("get", "events", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "ApplyFailed" and "nodeSelector" in e["message"] for e in events)

