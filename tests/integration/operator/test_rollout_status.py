"""A rollout's status on the real API server: what it says without a router, and that a rollout command
written while the operator decides is never lost (the operator's status write is conditional on the
resourceVersion it read)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import config as k8s_config

from modeldeploy_operator.assembly import Operator, build
from modeldeploy_operator.cache import Key
from modeldeploy_operator.config import OperatorConfig
from modeldeploy_operator.kinds import MODEL_DEPLOYMENTS
from modeldeploy_operator.kube import Kube
from modeldeploy_operator.routers import Routers
from testsupport.operator_harness import Harness, manifest

V1 = "sentiment/v1/model.onnx"
V2 = "sentiment/v2/model.onnx"


def rollout_manifest(name: str, path: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    document = manifest(name, model={"pvc": "models", "path": path},
                        rollout={"steps": steps, "analysisInterval": "30s"}, replicas={"min": 1, "max": 1})
    document["spec"].pop("canary")
    document["spec"].pop("autoscaling")
    return document


def rollout_status(harness: Harness, name: str) -> dict[str, Any]:
    return dict((harness.md(name).get("status") or {}).get("rollout") or {})


def start_rollout(harness: Harness, name: str, steps: list[dict[str, Any]]) -> None:
    """v1 serves first; then the spec names v2, which starts as the canary at step 1."""
    harness.apply_manifest(rollout_manifest(name, V1, steps))
    harness.eventually(lambda: rollout_status(harness, name).get("phase") == "Healthy", 60, f"{name} healthy")
    harness.apply_manifest(rollout_manifest(name, V2, steps))
    harness.eventually(lambda: rollout_status(harness, name).get("phase") == "Progressing", 60, f"{name} progressing")


def test_without_a_router_status_names_the_ready_replica_approximation(harness: Harness, no_istio: None) -> None:
    harness.bound_claim()
    harness.start_operator()
    start_rollout(harness, "weighted", [{"weight": 20, "pause": "1h"}])
    start_rollout(harness, "mirrored", [{"mirror": 50, "pause": "1h"}, {"weight": 20}])

    # Both tracks' pods behind the one Service: 1 stable and 1 canary replica give the canary half, not 20%.
    def weighted() -> str | None:
        status = harness.md("weighted")["status"]
        return status["rollout"].get("approximation") if status["traffic"]["canary"] == 50 else None

    said = harness.eventually(weighted, 90, "the approximation in status.rollout")
    assert said == ("no routing backend (Istio or the Gateway API): this step's weight 20% is approximated by the "
                    "ratio of ready replicas; the canary serves about 50% of the requests")
    routing = harness.condition("weighted", "RoutingReady")
    assert routing["status"] == "False" and routing["reason"] == "NoRouterInstalled"
    assert "the canary gets 50% (the ratio of ready replicas) instead of the requested 20%" in routing["message"]
    selector = harness.get("service", "weighted")["spec"]["selector"]
    assert "modeldeploy.dev/track" not in selector  # both tracks: the split is the pods' ratio

    mirrored = harness.eventually(lambda: rollout_status(harness, "mirrored").get("approximation"), 60,
                                  "the mirror step's approximation")
    assert "this step's mirror 50% cannot be done, so the canary gets no requests" in mirrored
    assert harness.get("service", "mirrored")["spec"]["selector"]["modeldeploy.dev/track"] == "stable"

    # Asking for the Service alone (backend None) makes RoutingReady content; the step is still approximated.
    harness.kubectl("patch", "md", "weighted", "--type", "merge", "-p",
                    json.dumps({"spec": {"routing": {"backend": "None"}}}))
    harness.eventually(lambda: harness.condition("weighted", "RoutingReady").get("reason") == "ServiceOnly", 60,
                       "backend None said in RoutingReady")
    assert "approximated by the ratio of ready replicas" in rollout_status(harness, "weighted")["approximation"]


def controller_on(harness: Harness) -> Operator:
    """The operator's parts in this process, on the real API server, fed by hand instead of watches:
    the test decides exactly when its cache reads the resource."""
    api_client = k8s_config.new_client_from_config(config_file=str(harness.cluster.kubeconfig))  # type: ignore[no-untyped-call]
    operator = build(Kube(api_client), OperatorConfig(), "test")
    operator.cache.set_discovered(Routers())
    return operator


def test_a_command_written_between_the_operators_read_and_write_is_not_lost(harness: Harness,
                                                                             no_istio: None) -> None:
    harness.bound_claim()
    operator = harness.start_operator()
    start_rollout(harness, "raced", [{"weight": 20, "pause": "1h"}])
    operator.stop()  # from here on, the controller below is the only operator
    controller = controller_on(harness)
    key = Key("ModelDeployment", harness.namespace, "raced")

    controller.cache.observe_resource(MODEL_DEPLOYMENTS, harness.md("raced"))  # the operator reads the resource...
    harness.modeldeploy("rollout", "pause", "raced")  # ...a user asks for a pause...
    assert controller.controller.reconcile(key) is False  # ...the write onto what was read is refused: decide again
    status = rollout_status(harness, "raced")
    assert (status["phase"], status["command"]["action"]) == ("Progressing", "pause")

    controller.cache.observe_resource(MODEL_DEPLOYMENTS, harness.md("raced"))  # the watch delivers the newer object
    assert controller.controller.reconcile(key) is True
    status = rollout_status(harness, "raced")
    assert (status["phase"], status.get("pausedByCommand"), "command" in status) == ("Paused", True, False)
    harness.eventually(lambda: "RolloutPaused" in harness.event_reasons("raced"), 30, "the RolloutPaused Event")
    refused = harness.modeldeploy("rollout", "pause", "raced", check=False)  # a command that would do nothing
    assert refused.returncode == 1 and "it is already paused" in refused.stderr, refused

    # The operator's own writes do not conflict with each other: the cache keeps the version each one made.
    harness.modeldeploy("rollout", "resume", "raced")
    controller.cache.observe_resource(MODEL_DEPLOYMENTS, harness.md("raced"))
    assert controller.controller.reconcile(key) is True
    assert rollout_status(harness, "raced")["phase"] == "Progressing"
    assert controller.controller.reconcile(key) is True
