"""The health check judges the status the operator really writes, not only hand-made fixtures.

Each case builds the children as the API server would show them (Deployment, Pod, claim
phase), lets the operator's own status code summarize them, and runs the Argo CD script on
the resulting ModelDeployment in Lua 5.1.
"""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator import manifests, names, spec, status, views
from modeldeploy_operator.config import ServingConfig
from testsupport.argo_lua import run_health_check

NOW = "2026-01-01T00:00:00Z"
STABLE_MODEL = {"pvc": "models", "path": "sentiment/v1/model.onnx"}
CANARY_MODEL = {"pvc": "models", "path": "sentiment/v2/model.onnx"}


def argo_health(resource: dict[str, Any]) -> tuple[str, str]:
    result = run_health_check(resource)
    return str(result["status"]), str(result["message"])


def deployment(track: str, ready: int, wanted: int = 2, stuck: bool = False) -> dict[str, Any]:
    conditions = []
    if stuck:
        conditions.append(
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "sentiment-{track}-5d8" has timed out progressing.',
            }
        )
    return {
        "metadata": {"name": f"sentiment-{track}", "generation": 1},
        "spec": {"replicas": wanted},
        "status": {
            "observedGeneration": 1,
            "replicas": wanted,
            "readyReplicas": ready,
            "updatedReplicas": wanted,
            "conditions": conditions,
        },
    }


def pod(track: str, index: int, ready: bool, container_state: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": f"sentiment-{track}-{index}", "labels": {names.LABEL_TRACK: track}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "server", **(container_state or {"state": {"running": {}}})}],
        },
    }


TERMINATED = {
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
    "lastState": {
        "terminated": {"exitCode": 1, "reason": "Error", "message": "sha256 mismatch for /models/sentiment/v1"}
    },
}
CRASH_LOOP = {"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting"}}}


def resource_with_status(
    *,
    claim_phase: str | None = "Bound",
    deployments: dict[str, dict[str, Any]],
    pods: list[dict[str, Any]],
    canary_percent: int | None = None,
) -> dict[str, Any]:
    spec_body: dict[str, Any] = {"model": STABLE_MODEL, "replicas": {"min": 2, "max": 4}}
    if canary_percent is not None:
        spec_body["canary"] = {"model": CANARY_MODEL, "trafficPercent": canary_percent}
    owner = manifests.Owner(name="sentiment", namespace="ml", uid="0000")
    observation = status.Observation(
        owner=owner,
        generation=3,
        spec=spec.parse_spec(spec_body),
        claims={"models": claim_phase},
        deployments={track: views.summarize_deployment(body) for track, body in deployments.items()},
        pods=[views.summarize_pod(body) for body in pods],
    )
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "generation": 3},
        "spec": spec_body,
        "status": status.compute_status(observation, None, NOW, ServingConfig()),
    }


def test_serving_resource_is_healthy() -> None:
    resource = resource_with_status(
        deployments={"stable": deployment("stable", 2)}, pods=[pod("stable", 0, True), pod("stable", 1, True)]
    )
    health, message = argo_health(resource)
    assert health == "Healthy"
    assert "traffic 100/0" in message and "http://sentiment.ml.svc" in message


def test_missing_claim_is_degraded() -> None:
    resource = resource_with_status(claim_phase=None, deployments={"stable": deployment("stable", 0)}, pods=[])
    health, message = argo_health(resource)
    assert health == "Degraded" and message.startswith("ClaimNotFound")


def test_pending_claim_is_progressing() -> None:
    resource = resource_with_status(claim_phase="Pending", deployments={"stable": deployment("stable", 0)}, pods=[])
    health, message = argo_health(resource)
    assert health == "Progressing" and message.startswith("ClaimPending")


def test_pods_starting_is_progressing() -> None:
    resource = resource_with_status(
        deployments={"stable": deployment("stable", 1)}, pods=[pod("stable", 0, True), pod("stable", 1, False)]
    )
    assert argo_health(resource)[0] == "Progressing"


def test_server_that_cannot_load_its_model_is_degraded_with_its_message() -> None:
    resource = resource_with_status(
        deployments={"stable": deployment("stable", 0)},
        pods=[pod("stable", 0, False, TERMINATED), pod("stable", 1, False, TERMINATED)],
    )
    health, message = argo_health(resource)
    assert health == "Degraded"
    assert "sha256 mismatch for /models/sentiment/v1" in message


def test_rollout_past_its_deadline_is_degraded() -> None:
    resource = resource_with_status(deployments={"stable": deployment("stable", 0, stuck=True)}, pods=[])
    health, message = argo_health(resource)
    assert health == "Degraded" and "ProgressDeadlineExceeded" in message


@pytest.mark.parametrize(("percent", "expected"), [(10, "Degraded"), (0, "Healthy")])
def test_crash_looping_canary_degrades_only_while_it_should_get_traffic(percent: int, expected: str) -> None:
    resource = resource_with_status(
        deployments={"stable": deployment("stable", 2), "canary": deployment("canary", 0, wanted=1)},
        pods=[pod("stable", 0, True), pod("stable", 1, True), pod("canary", 0, False, CRASH_LOOP)],
        canary_percent=percent,
    )
    health, message = argo_health(resource)
    assert health == expected
    if expected == "Degraded":
        assert "CrashLoopBackOff" in message


def test_new_generation_waits_for_the_operator() -> None:
    resource = resource_with_status(
        deployments={"stable": deployment("stable", 2)}, pods=[pod("stable", 0, True), pod("stable", 1, True)]
    )
    resource["metadata"]["generation"] = 4
    assert argo_health(resource) == ("Progressing", "waiting for the operator to observe generation 4")
