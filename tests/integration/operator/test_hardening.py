"""What a failing cluster or an unusual manifest does to the operator: text outside the Basic Multilingual
Plane, a namespace deleted with many ModelDeployments in it, an API server restarted under the watches."""

from __future__ import annotations

import json
from typing import Any

from operator_harness import Harness, manifest


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


def test_a_namespace_deleted_with_many_resources_goes_quietly(harness: Harness, istio: None) -> None:
    """30 ModelDeployments converge; their namespace is deleted: no apply errors, no Events posted into a
    terminating namespace, no ERROR lines, no ApplyFailed status on the way out."""
    h = harness
    storm = f"{h.namespace}-storm"
    h.cluster.kubectl("create", "namespace", storm)
    operator = h.start_operator("--all-namespaces")
    names = [f"model-{i}" for i in range(30)]
    items = [{**manifest(name), "metadata": {"name": name, "namespace": storm}} for name in names]
    h.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def converged() -> bool:
        found = json.loads(h.cluster.kubectl("get", "md", "-n", storm, "-o", "json").stdout)["items"]
        return len(found) == 30 and all((m.get("status") or {}).get("observedGeneration") == 1 for m in found)

    h.eventually(converged, 180, "30 ModelDeployments observed")
    before = operator.log()
    h.cluster.kubectl("delete", "namespace", storm, "--wait=false")
    h.eventually(lambda: h.cluster.kubectl("get", "namespace", storm, check=False).returncode != 0, 240,
                 f"namespace {storm} to be gone")
    during = operator.log()[len(before):]
    assert operator.running()
    errors = [line for line in during.splitlines() if " ERROR " in line or "Traceback" in line]
    assert errors == [], "\n".join(errors[:20])
    refused_events = [line for line in during.splitlines() if "could not post event" in line]
    assert refused_events == [], "\n".join(refused_events[:20])
    assert "ApplyFailed" not in during
