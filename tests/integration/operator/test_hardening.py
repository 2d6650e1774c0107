"""What a failing cluster or an unusual manifest does to the operator: text outside the Basic Multilingual
Plane, a namespace deleted with many ModelDeployments in it, an API server restarted under the watches."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import localcluster
from testsupport.operator_harness import CRD, Harness, Operator, manifest


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_text_outside_the_basic_multilingual_plane_is_applied_as_written(harness: Harness, istio: None) -> None:
    """Server-side apply bodies are YAML: they go out as UTF-8, never as JSON surrogate-pair escapes."""
    h = harness
    h.start_operator()
    h.bound_claim()
    spec = {"model": {"pvc": "models", "path": "v1/🚀.onnx"},
            "canary": {"model": {"pvc": "models", "path": "v2/模型🚀.onnx"}, "trafficPercent": 10,
                       "headers": [{"name": "x-rocket", "exact": "🚀"}]}}
    h.apply_manifest(manifest("rocket", **spec))
    h.wait_condition("rocket", "Ready", "True", timeout=90)
    assert env_of(h.get("deployment", "rocket-stable"))["MODEL_PATH"] == "/models/v1/🚀.onnx"
    assert env_of(h.get("deployment", "rocket-canary"))["MODEL_PATH"] == "/models/v2/模型🚀.onnx"
    header_rule = h.get("virtualservice", "rocket")["spec"]["http"][0]
    assert header_rule["match"] == [{"headers": {"x-rocket": {"exact": "🚀"}}}]


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


@pytest.fixture
def own_control_plane(tmp_path: Path) -> Iterator[tuple[localcluster.LocalControlPlane, Harness]]:
    """A control plane of the test's own (its API server gets killed and restarted), with the CRD and a
    namespace; the operators the test starts are stopped at the end."""
    plane = localcluster.LocalControlPlane(localcluster.ensure_binaries(), tmp_path / "plane")
    cluster = plane.start()
    harness = Harness(cluster, "watch-gap", tmp_path, cluster.kubeconfig)
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(CRD))
        cluster.wait_established("modeldeployments.modeldeploy.dev")
        cluster.kubectl("create", "namespace", harness.namespace)
        yield plane, harness
    finally:
        for operator in harness.operators:
            operator.stop()
        if os.environ.get("MODELDEPLOY_TEST_SHOW_LOGS"):
            print(harness.logs())
        plane.stop()


def health(operator: Operator) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10) as response:
        found: dict[str, Any] = json.loads(response.read())["reconciler"]
        return found


@pytest.mark.cluster
def test_a_resource_deleted_while_the_watches_reconnect_is_forgotten(
    own_control_plane: tuple[localcluster.LocalControlPlane, Harness]
) -> None:
    """kube-apiserver SIGKILLed and started again with the same arguments; a ModelDeployment deleted before
    the operator's watches come back. They resume too late (410 Gone) and re-list, and a re-list never
    says what vanished: the cache must still end up holding exactly what the API server holds."""
    plane, h = own_control_plane
    # No periodic resync during the test: only the re-list may repair the cache.
    operator = h.start_operator("--namespace", "watch-gap", "--no-leader-election", MODELDEPLOY_RESYNC_SECONDS="3600")
    names = ["model-0", "model-1", "model-2"]
    for name in names:
        h.apply_manifest(manifest(name))
    h.eventually(lambda: all(h.get_or_none("deployment", f"{n}-stable") for n in names), 60, "the children")
    h.eventually(lambda: health(operator)["cached"]["modeldeployments"] == 3, 30, "three resources cached")

    # The operator is held still from the kill until the deletion is done, so the deletion surely falls
    # between its watches breaking and their re-list. Orphaning keeps model-0's children (labelled, no
    # longer owned): a hand deletion of one of them queues model-0's key again below.
    assert operator.process is not None
    os.kill(operator.process.pid, signal.SIGSTOP)
    try:
        plane.restart("kube-apiserver")
        h.kubectl("delete", "md", "model-0", "--cascade=orphan", "--wait=true", "--timeout=60s")
    finally:
        os.kill(operator.process.pid, signal.SIGCONT)

    h.eventually(lambda: health(operator)["cached"]["modeldeployments"] == 2, 60,
                 "the cache to drop the resource deleted during the gap")

    # The garbage collector <-> reconcile loop: a child of the deleted resource goes; nothing re-creates it.
    h.kubectl("delete", "deployment", "model-0-stable")
    # A sentinel on the same watch, after it: a live resource's child, which must come back.
    h.kubectl("delete", "deployment", "model-1-stable")
    h.eventually(lambda: h.get_or_none("deployment", "model-1-stable"), 60, "model-1's Deployment back")
    h.eventually(lambda: health(operator)["queued"] == 0, 30, "an idle work queue")
    assert h.get_or_none("deployment", "model-0-stable") is None
    assert "created 5 times" not in operator.log()
    assert health(operator)["cached"]["modeldeployments"] == 2
