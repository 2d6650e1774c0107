"""Status from observations: Ready only when stable pods serve; reasons carried from Kubernetes."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator import events, names, views
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as st
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.manifests import Owner
from modeldeploy_operator.routers import Routers

OWNER = Owner(name="sentiment", namespace="ml", uid="u1")
CONFIG = ServingConfig()
NOW = "2026-01-01T00:00:10Z"
EARLIER = "2026-01-01T00:00:00Z"


def spec_with(**extra: Any) -> specs.ModelDeploymentSpec:
    return specs.parse_spec({"model": {"pvc": "models", "path": "a.onnx"}, "replicas": {"min": 2}, **extra})


def canary_spec(weight: int) -> specs.ModelDeploymentSpec:
    return spec_with(canary={"model": {"pvc": "models", "path": "b.onnx"}, "trafficPercent": weight})


def healthy(name: str, replicas: int = 2) -> views.DeploymentView:
    return views.DeploymentView(name=name, generation=1, observed_generation=1, replicas=replicas,
                             ready_replicas=replicas, updated_replicas=replicas)


def observe(spec: specs.ModelDeploymentSpec, **overrides: Any) -> st.Observation:
    fields: dict[str, Any] = {
        "owner": OWNER, "generation": 3, "spec": spec, "claims": {"models": "Bound"},
        "deployments": {"stable": healthy("sentiment-stable")}, "routers": Routers(istio="v1"),
    }
    if spec.canary is not None:
        fields["deployments"] = {**fields["deployments"], "canary": healthy("sentiment-canary")}
    fields.update(overrides)
    return st.Observation(**fields)


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready_with_istio() -> None:
    status = st.compute_status(observe(canary_spec(30)), None, NOW, CONFIG)
    found = conditions(status)
    assert [c["type"] for c in status["conditions"]] == list(names.CONDITION_ORDER)
    assert {t: c["status"] for t, c in found.items()} == dict.fromkeys(names.CONDITION_ORDER, "True")
    assert found["Ready"]["reason"] == "Serving"
    assert all(c["observedGeneration"] == 3 and c["lastTransitionTime"] == NOW for c in status["conditions"])
    assert status["observedGeneration"] == 3
    assert status["traffic"] == {"stable": 70, "canary": 30}
    assert status["trafficSummary"] == "70/30"
    assert status["replicaSummary"] == "4/4"
    assert status["url"] == "http://sentiment.ml.svc.cluster.local"
    assert found["RoutingReady"]["message"] == "VirtualService sentiment routes 70% to stable and 30% to canary"


def test_missing_claim_is_not_ready_and_named() -> None:
    status = st.compute_status(observe(spec_with(), claims={"models": None}), None, NOW, CONFIG)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ClaimNotFound")
    assert "PersistentVolumeClaim 'models' in namespace 'ml' does not exist" in ready["message"]


def test_pending_claim() -> None:
    status = st.compute_status(observe(spec_with(), claims={"models": "Pending"}), None, NOW, CONFIG)
    assert conditions(status)["ModelSourceReady"]["reason"] == "ClaimPending"
    assert conditions(status)["Ready"]["status"] == "False"


def terminated_pod(message: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "sentiment-stable-abc", "labels": {"modeldeploy.dev/track": "stable"}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "server", "ready": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 3, "reason": "Error", "message": message}},
            }],
        },
    }


def test_terminated_container_message_reaches_ready() -> None:
    pod = views.summarize_pod(terminated_pod("model sha256 mismatch: expected ab.., got cd.."))
    assert pod.problem is not None and pod.problem.reason == "ServerTerminated"
    status = st.compute_status(observe(spec_with(), pods=[pod]), None, NOW, CONFIG)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ServerTerminated")
    assert "model sha256 mismatch" in ready["message"]
    assert "exit code 3" in ready["message"]


def test_ready_pods_carry_no_stale_failure() -> None:
    body = terminated_pod("old crash")
    body["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    assert views.summarize_pod(body).problem is None


def test_unschedulable_pod() -> None:
    body = {"metadata": {"name": "p", "labels": {"modeldeploy.dev/track": "stable"}},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]}}
    pod = views.summarize_pod(body)
    assert pod.problem == views.Problem("Unschedulable",
                                        "pod p: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")


def test_deployment_that_cannot_progress() -> None:
    body = {"metadata": {"name": "sentiment-stable", "generation": 2},
            "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "replicas": 2, "readyReplicas": 1, "updatedReplicas": 1,
                       "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                       "message": 'ReplicaSet "sentiment-stable-1" has timed out progressing.'}]}}
    view = views.summarize_deployment(body)
    status = st.compute_status(observe(spec_with(), deployments={"stable": view}), None, NOW, CONFIG)
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert "timed out progressing" in ready["message"]


def test_rollout_in_progress_and_not_enough_ready() -> None:
    rolling = views.DeploymentView("sentiment-stable", 2, 2, replicas=2, ready_replicas=2, updated_replicas=1)
    status = st.compute_status(observe(spec_with(), deployments={"stable": rolling}), None, NOW, CONFIG)
    assert conditions(status)["StableReady"]["reason"] == "RollingOut"
    short = views.DeploymentView("sentiment-stable", 1, 1, replicas=2, ready_replicas=1, updated_replicas=2)
    status = st.compute_status(observe(spec_with(), deployments={"stable": short}), None, NOW, CONFIG)
    assert conditions(status)["StableReady"]["message"] == "1/2 replicas ready"
    assert conditions(status)["Ready"]["status"] == "False"


def test_missing_deployment() -> None:
    status = st.compute_status(observe(spec_with(), deployments={}), None, NOW, CONFIG)
    assert conditions(status)["StableReady"]["reason"] == "DeploymentNotFound"
    assert status["replicaSummary"] == "0/2"


def test_broken_canary_blocks_ready_only_while_it_gets_traffic() -> None:
    broken = views.DeploymentView("sentiment-canary", 1, 1, replicas=2, ready_replicas=0, updated_replicas=2)
    for weight, expected in ((0, "True"), (10, "False")):
        spec = canary_spec(weight)
        obs = observe(spec, deployments={"stable": healthy("sentiment-stable"), "canary": broken})
        status = st.compute_status(obs, None, NOW, CONFIG)
        assert conditions(status)["Ready"]["status"] == expected, weight
        assert conditions(status)["CanaryReady"]["status"] == "False"


def test_without_istio_routing_says_so_and_traffic_follows_pods() -> None:
    spec = specs.parse_spec({"model": {"pvc": "models", "path": "a.onnx"}, "replicas": {"min": 1, "max": 4},
                             "canary": {"model": {"pvc": "models", "path": "b.onnx"}, "trafficPercent": 10}})
    obs = observe(spec, routers=Routers(), deployments={
        "stable": healthy("sentiment-stable", 3), "canary": healthy("sentiment-canary", 1)})
    status = st.compute_status(obs, None, NOW, CONFIG)
    routing = conditions(status)["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("False", "NoRouterInstalled")
    assert "requested 10%" in routing["message"]
    assert status["traffic"] == {"stable": 75, "canary": 25}
    assert conditions(status)["Ready"]["status"] == "True"  # serving still works


def test_without_istio_zero_percent_canary_gets_nothing() -> None:
    status = st.compute_status(observe(canary_spec(0), routers=Routers()), None, NOW, CONFIG)
    assert status["traffic"] == {"stable": 100, "canary": 0}


def parent_status(namespace: str, gateway: str, kind: str, state: str, reason: str, message: str = "",
                  observed: int = 4) -> dict[str, Any]:
    """One entry of an HTTPRoute's status.parents, as a Gateway API controller writes it."""
    return {"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": namespace,
                          "name": gateway},
            "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
            "conditions": [{"type": kind, "status": state, "reason": reason, "message": message,
                            "observedGeneration": observed}]}


def http_route(*parents: dict[str, Any], generation: int = 4) -> dict[str, Any]:
    return {"metadata": {"name": "sentiment", "namespace": "ml", "generation": generation},
            "status": {"parents": list(parents)}}


def gateway_routing(route: views.RouteView | None) -> dict[str, Any]:
    spec = spec_with(routing={"backend": "GatewayAPI", "gateways": ["edge/public", "internal"]})
    status = st.compute_status(observe(spec, routers=Routers(gateway_api="v1"), route=route), None, NOW, CONFIG)
    return conditions(status)


def test_a_gateway_refusing_the_route_is_named_with_its_reason() -> None:
    route = views.summarize_route(http_route(
        parent_status("edge", "public", "Accepted", "False", "NotAllowedByListeners",
                      "No listeners included by this parent ref allowed this attachment."),
        parent_status("ml", "internal", "Accepted", "True", "Accepted")))
    found = gateway_routing(route)
    routing = found["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("False", "RouteNotAccepted")
    assert routing["message"].endswith("; but Gateway edge/public refused it (NotAllowedByListeners: No listeners "
                                       "included by this parent ref allowed this attachment.)")
    assert found["Ready"]["status"] == "True"  # the Service still serves: only the gateway path is broken


def test_a_gateway_that_has_not_judged_this_generation_is_waited_for() -> None:
    stale = parent_status("ml", "internal", "Accepted", "True", "Accepted", observed=3)
    route = views.summarize_route(http_route(parent_status("edge", "public", "Accepted", "True", "Accepted"), stale))
    routing = gateway_routing(route)["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("Unknown", "RoutePending")
    assert routing["message"].endswith("waiting for Gateway internal to accept it (HTTPRoute status.parents)")
    assert gateway_routing(None)["RoutingReady"]["reason"] == "RoutePending"  # not even seen yet


def test_unresolved_backends_count_as_a_refusal() -> None:
    unresolved = parent_status("edge", "public", "ResolvedRefs", "False", "BackendNotFound", "service not found")
    route = views.summarize_route(http_route(unresolved))
    assert route.parents == (views.RouteParentView("Gateway edge/public", False, "BackendNotFound: service not found"),)


def test_gateway_api_routing_says_what_the_http_route_was_told() -> None:
    spec = spec_with(canary={"model": {"pvc": "models", "path": "b.onnx"}, "trafficPercent": 10,
                             "headers": [{"name": "x-model-variant", "exact": "v2"},
                                         {"name": "x-cohort", "regex": "beta-.*"}]},
                     routing={"backend": "GatewayAPI", "gateways": ["edge/public"]})
    accepted = views.summarize_route(http_route(parent_status("edge", "public", "Accepted", "True", "Accepted")))
    status = st.compute_status(observe(spec, routers=Routers(istio="v1", gateway_api="v1"), route=accepted),
                               None, NOW, CONFIG)
    routing = conditions(status)["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("True", "WeightsApplied")
    assert routing["message"] == ("HTTPRoute sentiment (parents: edge/public) routes 90% to stable and 10% to "
                                  "canary; requests with x-model-variant: v2 or x-cohort ~ beta-.* go to canary; "
                                  "accepted by Gateway edge/public")
    assert status["routing"] == {"backend": "GatewayAPI",
                                 "resources": ["HTTPRoute/sentiment", "Service/sentiment-stable",
                                               "Service/sentiment-canary"],
                                 "canaryHeaders": ["x-model-variant: v2", "x-cohort ~ beta-.*"]}
    assert status["traffic"] == {"stable": 90, "canary": 10}  # exact weights, not the pod mix


def test_istio_shadow_traffic_is_reported() -> None:
    spec = spec_with(canary={"model": {"pvc": "models", "path": "b.onnx"}, "mirrorPercent": 50})
    status = st.compute_status(observe(spec), None, NOW, CONFIG)
    assert conditions(status)["RoutingReady"]["message"] == (
        "VirtualService sentiment routes 100% to stable and 0% to canary; 50% of stable's requests are "
        "mirrored to canary (answers dropped)")
    assert status["routing"] == {"backend": "Istio", "resources": ["VirtualService/sentiment",
                                                                   "DestinationRule/sentiment"],
                                 "mirrorPercent": 50}


def test_a_chosen_router_that_is_not_installed_is_named_and_unmet_features_listed() -> None:
    spec = spec_with(canary={"model": {"pvc": "models", "path": "b.onnx"}, "mirrorPercent": 20},
                     routing={"backend": "GatewayAPI"})
    status = st.compute_status(observe(spec, routers=Routers(istio="v1")), None, NOW, CONFIG)
    routing = conditions(status)["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("False", "RouterNotInstalled")
    assert routing["message"].startswith("spec.routing.backend is GatewayAPI but the Gateway API "
                                         "(gateway.networking.k8s.io) is not installed")
    assert routing["message"].endswith("mirroring need Istio or the Gateway API and are not applied")
    assert status["routing"] == {"backend": "None"}


def test_routing_switched_off_on_purpose_is_not_a_problem() -> None:
    status = st.compute_status(observe(spec_with(routing={"backend": "None"})), None, NOW, CONFIG)
    routing = conditions(status)["RoutingReady"]
    assert (routing["status"], routing["reason"]) == ("True", "ServiceOnly")


def test_no_canary_condition() -> None:
    status = st.compute_status(observe(spec_with()), None, NOW, CONFIG)
    assert conditions(status)["CanaryReady"]["reason"] == "NoCanary"
    assert status["traffic"] == {"stable": 100, "canary": 0}


def test_last_transition_time_kept_while_status_unchanged() -> None:
    first = st.compute_status(observe(spec_with()), None, EARLIER, CONFIG)
    again = st.compute_status(observe(spec_with()), first, NOW, CONFIG)
    assert again == first
    assert st.same_status(first, again)
    broken = st.compute_status(observe(spec_with(), claims={"models": None}), first, NOW, CONFIG)
    found = conditions(broken)
    assert found["Ready"]["lastTransitionTime"] == NOW
    assert found["StableReady"]["lastTransitionTime"] == EARLIER


def test_apply_errors_make_ready_false() -> None:
    obs = observe(spec_with(), apply_errors={"VirtualService/sentiment": "admission webhook denied it"})
    status = st.compute_status(obs, None, NOW, CONFIG)
    assert conditions(status)["Ready"]["reason"] == "ApplyFailed"
    assert conditions(status)["RoutingReady"]["reason"] == "ApplyFailed"


def test_events_for_transitions_only() -> None:
    first = st.compute_status(observe(spec_with(), claims={"models": None}), None, EARLIER, CONFIG)
    notes = events.transitions(None, first)
    assert events.EventNote("Warning", "ClaimNotFound", notes[0].message) == notes[0]
    fixed = st.compute_status(observe(spec_with()), first, NOW, CONFIG)
    reasons = {(n.type, n.reason) for n in events.transitions(first, fixed)}
    assert ("Normal", "Serving") in reasons
    assert ("Normal", "ClaimBound") in reasons
    assert events.transitions(fixed, fixed) == []


def test_a_rollout_in_progress_is_a_normal_event_and_a_crash_a_warning() -> None:
    def status(reason: str) -> dict[str, object]:
        return {"conditions": [{"type": "StableReady", "status": "False", "reason": reason, "message": "m"}]}

    assert [n.type for n in events.transitions(None, status("RollingOut"))] == ["Normal"]
    assert [n.type for n in events.transitions(status("RollingOut"), status("ReplicasNotReady"))] == ["Normal"]
    assert [n.type for n in events.transitions(status("RollingOut"), status("CrashLoopBackOff"))] == ["Warning"]


def test_invalid_spec_status_keeps_other_conditions() -> None:
    before = st.compute_status(observe(spec_with()), None, EARLIER, CONFIG)
    status = st.invalid_spec_status(4, "spec.model.path: must not contain '..' segments", before, NOW)
    assert status["observedGeneration"] == 4
    ready = conditions(status)["Ready"]
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("False", "InvalidSpec", NOW)
    assert conditions(status)["StableReady"]["lastTransitionTime"] == EARLIER


def test_long_messages_are_clipped() -> None:
    pod = views.summarize_pod(terminated_pod("x" * 10000))
    assert pod.problem is not None and len(pod.problem.message) <= views.MAX_MESSAGE


@pytest.mark.parametrize(("view", "serving"), [
    (None, False),  # not created yet
    (views.DeploymentView("c", 1, 1, replicas=1, ready_replicas=1, updated_replicas=1), True),
    (views.DeploymentView("c", 2, 1, replicas=1, ready_replicas=1, updated_replicas=1), False),  # spec not seen yet
    (views.DeploymentView("c", 2, 2, replicas=2, ready_replicas=2, updated_replicas=1), False),  # rolling out
    (views.DeploymentView("c", 1, 1, replicas=2, ready_replicas=1, updated_replicas=2), False),  # a pod not ready
    (views.DeploymentView("c", 1, 1, replicas=0, ready_replicas=0, updated_replicas=0), False),  # no replicas
    (views.DeploymentView("c", 1, 1, replicas=1, ready_replicas=1, updated_replicas=1,
                       problem=views.Problem("ReplicaFailure", "quota")), False),
])
def test_a_track_serves_once_every_replica_runs_its_latest_spec(view: views.DeploymentView | None,
                                                                 serving: bool) -> None:
    assert st.serves(view) is serving
