"""The watch cache's decisions: when to reconcile, what counts as a hand edit, what a snapshot holds."""

from __future__ import annotations

from typing import Any

from modeldeploy_operator import names, routers
from modeldeploy_operator.cache import Key, Snapshot, WatchCache
from modeldeploy_operator.children import needs_apply
from modeldeploy_operator.kinds import DEPLOYMENT, HTTP_ROUTE, MODEL_DEPLOYMENTS
from modeldeploy_operator.spec import parse_spec
from modeldeploy_operator.views import DeploymentView, RouteView

KEY = Key("ModelDeployment", "ml", "sentiment")

LABELS = {"modeldeploy.dev/name": "sentiment", "app.kubernetes.io/managed-by": "modeldeploy"}


def resource(generation: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u", "generation": generation},
                            "spec": {"model": {"pvc": "models", "path": "a.onnx"}}}
    if status is not None:
        body["status"] = status
    return body


def test_resource_needs_reconcile_on_new_spec_or_foreign_status_only() -> None:
    cache = WatchCache()
    assert cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    assert not cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    cache.record_status(KEY, {"observedGeneration": 1})
    assert not cache.observe_resource(MODEL_DEPLOYMENTS, resource(1, {"observedGeneration": 1}))  # our own write echoed
    assert cache.observe_resource(MODEL_DEPLOYMENTS, resource(1, {}))  # someone wiped the status
    assert cache.observe_resource(MODEL_DEPLOYMENTS, resource(2, {}))


def test_our_status_write_moves_the_cached_resource_version() -> None:
    """The next status write is conditional on the resourceVersion our own write made, not the one before."""
    cache = WatchCache()
    body = resource(1)
    body["metadata"]["resourceVersion"] = "10"
    cache.observe_resource(MODEL_DEPLOYMENTS, body)
    cache.record_status(KEY, {"observedGeneration": 1}, "11")
    snapshot = cache.snapshot(KEY)
    assert snapshot is not None
    assert (snapshot.body["metadata"]["resourceVersion"], snapshot.status) == ("11", {"observedGeneration": 1})
    assert body["metadata"]["resourceVersion"] == "10"  # what the watch delivered is not edited in place


def test_a_newer_version_seen_while_our_write_was_in_flight_is_kept() -> None:
    """Written over version 10, but the watch has meanwhile delivered 12 (a rollout command written after
    ours): recording ours would hide the command and make every later write conflict."""
    cache = WatchCache()
    body = resource(1, {"observedGeneration": 1})
    body["metadata"]["resourceVersion"] = "12"
    body["status"]["rollout"] = {"command": {"action": "pause"}}
    cache.observe_resource(MODEL_DEPLOYMENTS, body)
    cache.record_status(KEY, {"observedGeneration": 1}, "11", written_over="10")
    snapshot = cache.snapshot(KEY)
    assert snapshot is not None and snapshot.body["metadata"]["resourceVersion"] == "12"
    assert snapshot.status == body["status"]
    cache.record_status(KEY, {"observedGeneration": 2}, "13", written_over="12")
    snapshot = cache.snapshot(KEY)
    assert snapshot is not None and snapshot.status == {"observedGeneration": 2}


def deployment_body(managers: list[dict[str, Any]], replicas: int = 2) -> dict[str, Any]:
    return {"kind": "Deployment",
            "metadata": {"name": "sentiment-stable", "namespace": "ml", "uid": "d1",
                         "labels": {**LABELS, "modeldeploy.dev/track": "stable"},
                         "annotations": {names.HASH_ANNOTATION: "h1"}, "managedFields": managers},
            "spec": {"replicas": replicas}, "status": {}}


OURS = {"manager": "modeldeploy-operator", "operation": "Apply", "fieldsV1": {"f:spec": {}}}
CONTROLLER_STATUS = {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                     "fieldsV1": {"f:status": {}}}
HAND_EDIT = {"manager": "kubectl-edit", "operation": "Update", "fieldsV1": {"f:spec": {"f:template": {}}}}


def snapshot(cache: WatchCache) -> Snapshot:
    found = cache.snapshot(KEY)
    assert found is not None
    return found


def test_hand_edits_are_spotted_from_managed_fields() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    assert cache.observe("Deployment", deployment_body([OURS, CONTROLLER_STATUS])) == [KEY]
    child = snapshot(cache).children[("Deployment", "sentiment-stable")]
    assert not child.foreign_edit
    cache.observe("Deployment", deployment_body([OURS, CONTROLLER_STATUS, HAND_EDIT]))
    assert snapshot(cache).children[("Deployment", "sentiment-stable")].foreign_edit


def test_needs_apply() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    cache.observe("Deployment", deployment_body([OURS], replicas=2))
    observed = snapshot(cache).children[("Deployment", "sentiment-stable")]
    wanted = {"kind": "Deployment", "metadata": {"annotations": {names.HASH_ANNOTATION: "h1"}},
              "spec": {"replicas": 2}}
    assert not needs_apply(wanted, observed)
    assert needs_apply(wanted, None)
    assert needs_apply({**wanted, "metadata": {"annotations": {names.HASH_ANNOTATION: "h2"}}}, observed)
    assert needs_apply({**wanted, "spec": {"replicas": 3}}, observed)  # someone ran `kubectl scale`


def test_deleted_children_leave_the_cache() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    body = deployment_body([OURS])
    cache.observe(body["kind"], body)
    assert snapshot(cache).views_of(DEPLOYMENT, DeploymentView)
    cache.forget(body["kind"], body)
    assert snapshot(cache).children == {}
    assert snapshot(cache).views_of(DEPLOYMENT, DeploymentView) == {}


def test_claim_users_and_routing_switch() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    assert cache.users_of_claim("ml", "models") == [KEY]
    assert cache.users_of_claim("ml", "other") == []
    assert snapshot(cache).claims == {"models": None}
    cache.observe_claim({"metadata": {"name": "models", "namespace": "ml"}, "status": {"phase": "Bound"}})
    assert snapshot(cache).claims == {"models": "Bound"}
    assert cache.routers() == routers.Routers()
    assert not cache.set_routing_crd("VirtualService", "v1")
    assert cache.set_routing_crd("DestinationRule", "v1")
    assert cache.routers() == routers.Routers(istio="v1")
    assert cache.set_routing_crd("HTTPRoute", "v1")
    assert snapshot(cache).routers == routers.Routers(istio="v1", gateway_api="v1")
    assert cache.set_routing_crd("VirtualService", None)
    assert cache.routers() == routers.Routers(gateway_api="v1")


def test_discovery_fills_in_until_the_crd_watch_speaks() -> None:
    cache = WatchCache()
    assert cache.set_routing_crd("HTTPRoute", None)  is False  # the watch saw it deleted
    cache.set_discovered(routers.Routers(istio="v1beta1", gateway_api="v1"))
    assert cache.routers() == routers.Routers(istio="v1beta1")


def test_spec_of_cached_resource_parses() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    entry = snapshot(cache)
    assert parse_spec(entry.body["spec"]).model.pvc == "models"
    assert entry.spec == parse_spec(entry.body["spec"])  # parsed once, when the resource changed
    assert set(entry.body["metadata"]) <= {"name", "namespace", "uid", "generation", "deletionTimestamp",
                                           "resourceVersion"}


def test_initial_sync_tracks_seen_uids_until_stopped() -> None:
    cache = WatchCache()
    cache.note_seen({"metadata": {"uid": "a"}})
    assert cache.unseen(["a", "b"]) == ["b"]
    cache.stop_tracking()
    cache.note_seen({"metadata": {"uid": "b"}})  # no longer recorded: nothing grows after start-up
    assert cache.unseen(["a", "b"]) == ["a", "b"]


def test_a_routing_crd_being_deleted_counts_as_gone() -> None:
    from modeldeploy_operator import kube

    crd: dict[str, Any] = {"metadata": {"name": "httproutes.gateway.networking.k8s.io"},
           "spec": {"group": "gateway.networking.k8s.io",
                    "versions": [{"name": "v1beta1", "served": True}, {"name": "v1", "served": True}]}}
    assert kube.routing_version_of_crd(crd) == "v1"
    terminating = {**crd, "metadata": {**crd["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    assert kube.routing_version_of_crd(terminating) is None
    assert kube.routing_version_of_crd({**crd, "spec": {**crd["spec"], "versions": [{"name": "v1beta1",
                                                                                     "served": True}]}}) is None


def test_the_http_routes_parent_verdicts_reach_the_snapshot_and_leave_with_it() -> None:
    cache = WatchCache()
    cache.observe_resource(MODEL_DEPLOYMENTS, resource(1))
    route: dict[str, Any] = {"kind": "HTTPRoute",
             "metadata": {"name": "sentiment", "namespace": "ml", "uid": "r1", "generation": 2, "labels": LABELS,
                          "managedFields": [OURS]},
             "status": {"parents": [{"parentRef": {"name": "public", "namespace": "edge"},
                                     "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                                     "observedGeneration": 2}]}]}}
    assert cache.observe(route["kind"], route) == [KEY]
    route_view = snapshot(cache).views_of(HTTP_ROUTE, RouteView).get("sentiment")
    assert route_view is not None and route_view.parents[0].parent == "Gateway edge/public"
    assert route_view.parents[0].accepted
    cache.forget(route["kind"], route)
    assert snapshot(cache).views_of(HTTP_ROUTE, RouteView).get("sentiment") is None
