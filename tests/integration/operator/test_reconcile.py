"""The user's journey: kubectl apply, get, patch, delete, with the operator running under its real RBAC."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import yaml

from testsupport.operator_harness import MANIFEST, SERVER_IMAGE, Harness, manifest

LABEL_INSTANCE = "app.kubernetes.io/instance"


def route_weights(vs: dict[str, Any]) -> dict[str, int]:
    return {r["destination"]["subset"]: r["weight"] for r in vs["spec"]["http"][0]["route"]}


def children(h: Harness, name: str) -> set[tuple[str, str]]:
    """Every child of one resource, found by label, as (kind, name)."""
    found = h.get("deployments,horizontalpodautoscalers,services,poddisruptionbudgets,"
                  "virtualservices.networking.istio.io,destinationrules.networking.istio.io",
                  "-l", f"{LABEL_INSTANCE}={name}")
    return {(item["kind"], item["metadata"]["name"]) for item in found["items"]}


FULL_SET = {
    ("Deployment", "sentiment-stable"), ("Deployment", "sentiment-canary"),
    ("HorizontalPodAutoscaler", "sentiment-stable"), ("HorizontalPodAutoscaler", "sentiment-canary"),
    ("Service", "sentiment"), ("PodDisruptionBudget", "sentiment"),
    ("VirtualService", "sentiment"), ("DestinationRule", "sentiment"),
}


def table_row(h: Harness, name: str) -> dict[str, str]:
    """`kubectl get md` as a user reads it: header and row, split on the column starts."""
    lines = h.kubectl("get", "md", name).stdout.splitlines()
    header, row = lines[0], lines[1]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = [*starts[1:], None]
    return {header[s:e].strip(): row[s:e].strip() for s, e in zip(starts, bounds, strict=True)}


def test_apply_get_patch_and_remove_canary(harness: Harness, istio: None) -> None:
    h = harness
    operator = h.start_operator("--all-namespaces")
    h.bound_claim()
    h.apply_manifest()
    md = h.md()
    uid = md["metadata"]["uid"]

    h.eventually(lambda: children(h, "sentiment") == FULL_SET, 30, "all children")
    stable = h.get("deployment", "sentiment-stable")
    assert stable["metadata"]["ownerReferences"] == [{
        "apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "name": "sentiment", "uid": uid,
        "controller": True, "blockOwnerDeletion": True}]
    assert "replicas" in stable["spec"]  # defaulted by the API server, then owned by the HPA
    pod = stable["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODEL_PATH"] == "/models/sentiment/v1/model.onnx"
    assert env["MODEL_SHA256"] == yaml.safe_load(MANIFEST.read_text())["spec"]["model"]["sha256"]
    assert env["MAX_BATCH_SIZE"] == "16"
    assert container["image"] == SERVER_IMAGE
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    hpa = h.get("hpa", "sentiment-canary")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert route_weights(h.get("virtualservice", "sentiment")) == {"stable": 90, "canary": 10}
    subsets = h.get("destinationrule", "sentiment")["spec"]["subsets"]
    assert [s["name"] for s in subsets] == ["stable", "canary"]

    # kwok runs the pods; Ready follows the stable pods.
    h.wait_condition("sentiment", "Ready", "True", "Serving", timeout=90)
    row = table_row(h, "sentiment")
    assert row == {"NAME": "sentiment", "READY": "True", "MODEL": "sentiment/v1/model.onnx",
                   "CANARY": "sentiment/v2/model.onnx", "TRAFFIC": "90/10", "REPLICAS": "4/4",
                   "URL": f"http://sentiment.{h.namespace}.svc.cluster.local", "ROLLOUT": "", "STEP": "",
                   "AGE": row["AGE"]}
    assert row["AGE"]
    status = h.md()["status"]
    assert status["observedGeneration"] == h.md()["metadata"]["generation"]
    assert {c["type"] for c in status["conditions"]} == {
        "Ready", "ModelSourceReady", "StableReady", "CanaryReady", "RoutingReady", "AutoscalingReady"}

    # The operator's liveness endpoint answers.
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.liveness_port}/healthz", timeout=10) as response:
        assert response.status == 200
        assert json.loads(response.read())["reconciler"]["leading"] is True

    # GitOps: the operator wrote nothing but status; re-applying the same YAML changes nothing.
    live = h.md()
    assert "finalizers" not in live["metadata"]
    assert set(live["metadata"].get("annotations", {})) == {"kubectl.kubernetes.io/last-applied-configuration"}
    assert "unchanged" in h.kubectl("apply", "-f", str(MANIFEST)).stdout
    dry = json.loads(h.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                               "-f", str(MANIFEST), "-o", "json").stdout)
    assert dry["spec"] == live["spec"]
    assert dry["metadata"]["generation"] == live["metadata"]["generation"]
    assert h.kubectl("diff", "-f", str(MANIFEST), check=False).returncode == 0
    assert h.md()["metadata"]["resourceVersion"] == live["metadata"]["resourceVersion"] or \
        h.md()["metadata"]["generation"] == live["metadata"]["generation"]

    # The one field `kubectl patch` moves.
    h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", '{"spec":{"canary":{"trafficPercent":30}}}')
    h.eventually(lambda: route_weights(h.get("virtualservice", "sentiment")) == {"stable": 70, "canary": 30},
                 30, "weights 70/30")
    h.eventually(lambda: h.md()["status"]["traffic"] == {"stable": 70, "canary": 30}, 30, "status traffic")
    h.eventually(lambda: table_row(h, "sentiment")["TRAFFIC"] == "70/30", 30, "TRAFFIC column")

    # Removing the canary sends everything back and deletes its workload.
    h.kubectl("patch", "md", "sentiment", "--type", "json", "-p", '[{"op":"remove","path":"/spec/canary"}]')
    h.eventually(lambda: route_weights(h.get("virtualservice", "sentiment")) == {"stable": 100}, 30, "100/0")
    h.eventually(lambda: children(h, "sentiment") == FULL_SET - {
        ("Deployment", "sentiment-canary"), ("HorizontalPodAutoscaler", "sentiment-canary")}, 30, "canary gone")
    h.eventually(lambda: h.md()["status"]["traffic"] == {"stable": 100, "canary": 0}, 30, "status 100/0")
    h.wait_condition("sentiment", "CanaryReady", "True", "NoCanary")
    assert table_row(h, "sentiment")["TRAFFIC"] == "100/0"

    # Deleting the resource removes everything, through ownerReferences and the garbage collector.
    h.kubectl("delete", "md", "sentiment", "--wait=true", "--timeout=60s")
    h.eventually(lambda: children(h, "sentiment") == set(), 60, "children garbage-collected")


def test_hand_edits_and_deletions_are_corrected(harness: Harness, istio: None) -> None:
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest(replicas={"min": 2}))  # fixed count: no HPA, the operator owns replicas
    h.eventually(lambda: h.get_or_none("virtualservice", "sentiment"), 30, "virtual service")
    service_uid = h.eventually(lambda: h.get("service", "sentiment")["metadata"]["uid"], 30, "service")

    h.kubectl("delete", "service", "sentiment")
    h.eventually(lambda: (h.get_or_none("service", "sentiment") or {"metadata": {"uid": service_uid}})
                 ["metadata"]["uid"] != service_uid, 30, "service recreated")

    h.kubectl("patch", "virtualservice", "sentiment", "--type", "json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 50},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 50}]))
    h.eventually(lambda: route_weights(h.get("virtualservice", "sentiment")) == {"stable": 90, "canary": 10},
                 30, "weights restored")

    h.kubectl("scale", "deployment", "sentiment-stable", "--replicas=5")
    h.eventually(lambda: h.get("deployment", "sentiment-stable")["spec"]["replicas"] == 2, 30, "replicas restored")

    h.kubectl("delete", "deployment", "sentiment-canary")
    h.eventually(lambda: h.get_or_none("deployment", "sentiment-canary"), 30, "canary deployment recreated")


def test_missing_claim_then_created(harness: Harness) -> None:
    h = harness
    h.start_operator()
    h.apply_manifest(manifest(name="lonely"))
    ready = h.wait_condition("lonely", "Ready", "False", "ClaimNotFound")
    assert f"PersistentVolumeClaim 'models' in namespace '{h.namespace}' does not exist" in ready["message"]
    assert table_row(h, "lonely")["READY"] == "False"
    events = h.kubectl("get", "events", "--field-selector", "involvedObject.name=lonely", "-o", "json").stdout
    assert "ClaimNotFound" in events

    h.bound_claim()
    h.wait_condition("lonely", "Ready", "True", timeout=120)


def test_terminated_server_message_reaches_ready(harness: Harness) -> None:
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest(replicas={"min": 1}))
    h.wait_condition("sentiment", "Ready", "True", timeout=90)
    pods = h.get("pods", "-l", "modeldeploy.dev/track=stable")["items"]
    pod = pods[0]
    message = "model file /models/sentiment/v1/model.onnx: sha256 mismatch (expected 9f86..., got 0000...)"
    # What the kubelet reports for a server that wrote its load error to the termination-message path.
    status_patch = {"status": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                       {"type": "ContainersReady", "status": "False"},
                       {"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{
            "name": "server", "image": SERVER_IMAGE, "imageID": "", "ready": False, "restartCount": 3,
            "started": False,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                                         "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}},
        }]}}
    h.kubectl("patch", "pod", pod["metadata"]["name"], "--subresource=status", "--type=merge",
              "-p", json.dumps(status_patch))
    ready = h.wait_condition("sentiment", "Ready", "False", "ServerTerminated")
    assert message in ready["message"]
    assert h.condition("sentiment", "StableReady")["reason"] == "ServerTerminated"


def test_gpu_replicas_land_on_the_gpu_node(harness: Harness) -> None:
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest(name="vision", gpu=1, replicas={"min": 1}))
    h.wait_condition("vision", "Ready", "True", timeout=90)
    pods = h.get("pods", "-l", "app.kubernetes.io/instance=vision")["items"]
    assert {p["spec"]["nodeName"] for p in pods} == {"kwok-gpu-0"}  # the only node with nvidia.com/gpu
    container = pods[0]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"] == SERVER_IMAGE + "-gpu"
