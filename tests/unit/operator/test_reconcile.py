"""The reconcile decision on a table of cases, and the controller acting on an in-memory API."""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from modeldeploy_operator import builders, kinds, names
from modeldeploy_operator import spec as specs
from modeldeploy_operator.api import KubeError
from modeldeploy_operator.assembly import Operator, build
from modeldeploy_operator.cache import ChildEntry, Key, Snapshot, WatchCache
from modeldeploy_operator.children import Outcome
from modeldeploy_operator.config import OperatorConfig, ServingConfig
from modeldeploy_operator.kinds import MODEL_DEPLOYMENTS, Kind
from modeldeploy_operator.manifests import Owner
from modeldeploy_operator.reconcile import next_status, plan_children
from modeldeploy_operator.routers import Routers

NOW = "2026-01-02T12:00:00Z"
CONFIG = ServingConfig()
OWNER = Owner(name="sentiment", namespace="ml", uid="uid-1")
KEY = Key("ModelDeployment", "ml", "sentiment")
BASE_SPEC: dict[str, Any] = {"model": {"pvc": "models", "path": "v1/model.onnx"}, "replicas": {"min": 2, "max": 4}}
ISTIO = Routers(istio="v1")
NO_ROUTER = Routers()
BOTH = Routers(istio="v1", gateway_api="v1")
CANARY = {"model": {"pvc": "models", "path": "v2/model.onnx"}, "trafficPercent": 10}


def body(spec: Mapping[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid, "generation": 3}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "spec": dict(spec)}


def entry_for(manifest: Mapping[str, Any], **changes: Any) -> ChildEntry:
    """What the watch cache holds for a child applied exactly as `manifest` says."""
    entry = ChildEntry(
        kind=manifest["kind"], name=manifest["metadata"]["name"], uid=f"uid-{manifest['metadata']['name']}",
        applied_hash=manifest["metadata"]["annotations"][names.HASH_ANNOTATION], foreign_edit=False,
        replicas=manifest["spec"].get("replicas") if manifest["kind"] == "Deployment" else None,
    )
    return replace(entry, **changes)


def converged(spec: Mapping[str, Any], routers: Routers) -> dict[tuple[str, str], ChildEntry]:
    desired = builders.desired_children(OWNER, specs.parse_spec(spec), CONFIG, routers)
    return {(m["kind"], m["metadata"]["name"]): entry_for(m) for m in desired}


def snapshot(spec: Mapping[str, Any], children: Mapping[tuple[str, str], ChildEntry] | None = None,
             routers: Routers = ISTIO, deleting: bool = False,
             status: Mapping[str, Any] | None = None) -> Snapshot:
    parsed = specs.validate(OWNER.name, spec)
    return Snapshot(
        key=KEY, body=body(spec, deleting), status=status, generation=3, spec=parsed,
        children=dict(children or {}), views={}, claims={"models": "Bound"}, routers=routers,
    )


def ids(manifests: Any) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]


WITH_CANARY = {**BASE_SPEC, "canary": CANARY}
EVERYTHING = ["Deployment/sentiment-stable", "HorizontalPodAutoscaler/sentiment-stable", "Service/sentiment",
              "PodDisruptionBudget/sentiment", "DestinationRule/sentiment", "VirtualService/sentiment"]


@dataclass(frozen=True)
class Case:
    name: str
    snapshot: Snapshot
    apply: list[str]
    delete: list[str] = field(default_factory=list)


STABLE = ("Deployment", "sentiment-stable")


def after(spec: Mapping[str, Any], converged_for: Mapping[str, Any] | None = None,
          changed: Mapping[tuple[str, str], Mapping[str, Any] | None] | None = None,
          routers: Routers = ISTIO, converged_with: Routers = ISTIO) -> Snapshot:
    """A resource with `spec` whose children converged for `converged_for` (default: the same spec),
    then had some children changed by hand (None: deleted)."""
    children = converged(converged_for or spec, converged_with)
    for key, changes in (changed or {}).items():
        if changes is None:
            del children[key]
        else:
            children[key] = replace(children[key], **changes)
    return snapshot(spec, children, routers=routers)


FIXED = {**BASE_SPEC, "replicas": {"min": 2}}  # a fixed count: the Deployment carries replicas
DARK_CANARY = {**BASE_SPEC, "canary": {**CANARY, "trafficPercent": 0}}
WITH_CANARY_ON_GATEWAY_API = {**WITH_CANARY, "routing": {"backend": "GatewayAPI", "gateways": ["edge/public"]}}


CASES = [
    Case("new resource: every child", snapshot(BASE_SPEC), EVERYTHING),
    Case("converged: nothing", snapshot(BASE_SPEC, converged(BASE_SPEC, ISTIO)), []),
    Case("hand-edited child: taken back", after(BASE_SPEC, changed={STABLE: {"foreign_edit": True}}),
         ["Deployment/sentiment-stable"]),
    Case("hand-scaled Deployment: scaled back", after(FIXED, changed={STABLE: {"replicas": 5}}),
         ["Deployment/sentiment-stable"]),
    Case("hand-deleted Service: put back", after(BASE_SPEC, changed={("Service", "sentiment"): None}),
         ["Service/sentiment"]),
    Case("canary removed from the spec: its children deleted", after(BASE_SPEC, converged_for=WITH_CANARY),
         ["Service/sentiment", "VirtualService/sentiment"],
         ["Deployment/sentiment-canary", "HorizontalPodAutoscaler/sentiment-canary"]),
    Case("vanished canary Deployment: re-created",
         after(WITH_CANARY, changed={("Deployment", "sentiment-canary"): None}), ["Deployment/sentiment-canary"]),
    Case("Istio uninstalled: Service re-applied, Istio objects not addressed", after(DARK_CANARY, routers=NO_ROUTER),
         ["Service/sentiment"]),
    Case("switched to the Gateway API: its objects applied, Istio's deleted",
         after(WITH_CANARY_ON_GATEWAY_API, converged_for=WITH_CANARY, routers=BOTH),
         ["Service/sentiment-stable", "Service/sentiment-canary", "HTTPRoute/sentiment"],
         ["DestinationRule/sentiment", "VirtualService/sentiment"]),
    Case("Gateway API uninstalled: its route not addressed, the track Services deleted",
         after(WITH_CANARY_ON_GATEWAY_API, routers=ISTIO, converged_with=BOTH),
         [], ["Service/sentiment-stable", "Service/sentiment-canary"]),
    Case("invalid spec: nothing touched", snapshot({"model": {"pvc": "models", "path": "/abs.onnx"}}), []),
    Case("being deleted: nothing touched", snapshot(BASE_SPEC, deleting=True), []),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan(case: Case) -> None:
    plan = plan_children(case.snapshot, CONFIG)
    assert ids(plan.apply) == case.apply
    assert [f"{ref.kind.kind}/{ref.name}" for ref in plan.delete] == case.delete
    for ref in plan.delete:
        assert ref.uid == f"uid-{ref.name}"  # only the object observed, never a newer namesake
        assert ref.kind.version  # addressable


def conditions(status: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_of_an_invalid_spec_names_the_field() -> None:
    update = next_status(snapshot({"model": {"pvc": "models", "path": "/abs.onnx"}}), CONFIG, NOW, Outcome())
    assert update is not None
    ready = update.status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "InvalidSpec")
    assert ready["message"].startswith("spec.model.path: ")
    assert [(e.type, e.reason) for e in update.events] == [("Warning", "InvalidSpec")]


def test_status_reports_apply_errors_by_child() -> None:
    outcome = Outcome(errors={"Service/sentiment": "Service \"sentiment\" is invalid: spec.ports: Required value"})
    update = next_status(snapshot(BASE_SPEC), CONFIG, NOW, outcome)
    assert update is not None
    state = conditions(update.status)
    assert state["Ready"] == ("False", "ApplyFailed")
    assert "Service/sentiment: " in update.status["conditions"][0]["message"]
    # The main Service is not a routing object: its refusal is not reported as a routing failure.
    assert state["RoutingReady"] == ("True", "WeightsApplied")
    routing = Outcome(errors={"VirtualService/sentiment": "admission webhook denied the request"})
    update = next_status(snapshot(BASE_SPEC), CONFIG, NOW, routing)
    assert update is not None
    assert conditions(update.status)["RoutingReady"] == ("False", "ApplyFailed")


def test_status_uses_the_deployment_just_applied() -> None:
    applied = {"metadata": {"name": "sentiment-stable", "generation": 1, "labels": {names.LABEL_TRACK: "stable"}},
               "spec": {"replicas": 2}, "status": {}}
    from modeldeploy_operator.views import summarize_deployment

    outcome = Outcome(applied={"Deployment": {"sentiment-stable": summarize_deployment(applied)}})
    update = next_status(snapshot(BASE_SPEC), CONFIG, NOW, outcome)
    assert update is not None
    assert conditions(update.status)["StableReady"] == ("False", "RolloutPending")


def test_unchanged_status_is_not_written_again() -> None:
    first = next_status(snapshot(BASE_SPEC), CONFIG, NOW, Outcome())
    assert first is not None
    assert next_status(snapshot(BASE_SPEC, status=first.status), CONFIG, "2026-01-02T12:05:00Z", Outcome()) is None


# The executor, against an in-memory API ----------------------------------------------------------------------

class FakeApi:
    """Stores what is applied (with a uid and generation, like the API server), refuses named children."""

    def __init__(self, refuse: Mapping[str, KubeError] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.refuse = dict(refuse or {})
        self.applied: list[str] = []
        self.deleted: list[str] = []
        self.statuses: list[dict[str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.resources: dict[tuple[str, str], str] = {(OWNER.namespace, OWNER.name): OWNER.uid}
        self.served: dict[str, str | None] = {kinds.ISTIO_GROUP: "v1", kinds.GATEWAY_API_GROUP: None}
        self._uids = itertools.count(1)

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        label = f"{manifest['kind']}/{meta['name']}"
        if label in self.refuse:
            raise self.refuse[label]
        self.applied.append(label)
        key = (manifest["kind"], meta["namespace"], meta["name"])
        stored = copy.deepcopy(dict(manifest))
        before = self.objects.get(key)
        stored["metadata"]["uid"] = before["metadata"]["uid"] if before else f"uid-{next(self._uids)}"
        stored["metadata"]["generation"] = before["metadata"]["generation"] + 1 if before else 1
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool:
        found = self.objects.get((kind.kind, namespace, name))
        if found is None or (uid and found["metadata"]["uid"] != uid):
            return False
        del self.objects[(kind.kind, namespace, name)]
        self.deleted.append(f"{kind.kind}/{name}")
        return True

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        self.statuses.append(dict(status))
        return {}

    def post_event(self, kind: Kind, owner: Mapping[str, Any], event_type: str, reason: str, message: str,
                   instance: str) -> None:
        self.events.append((event_type, reason))

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]:
        """What the API server holds: the stored children, and the ModelDeployments in `self.resources`."""
        plural = collection.rsplit("/", 1)[-1]
        if plural == names.PLURAL:
            return {uid: (collection, ns, name) for (ns, name), uid in self.resources.items()}
        by_plural = {watched.kind.plural: watched.kind.kind for watched in kinds.watched_kinds()}
        return {o["metadata"]["uid"]: (collection, ns, name) for (kind, ns, name), o in self.objects.items()
                if by_plural.get(plural) == kind}

    def exists(self, collection: str, namespace: str, name: str) -> bool:
        return False

    def server_version(self) -> tuple[int, int]:
        return (1, 35)

    def served_version(self, group: str) -> str | None:
        return self.served[group]

    def keda_installed(self) -> bool:
        return False

    def get_uid(self, kind: Kind, namespace: str, name: str) -> str | None:
        assert kind == kinds.MODEL_DEPLOYMENT
        return self.resources.get((namespace, name))


def controller(api: FakeApi, spec: Mapping[str, Any]) -> Operator:
    ctl = build(api, OperatorConfig(), "test")  # type: ignore[arg-type]  # no Lease calls without starting
    ctl.cache.set_discovered(ISTIO)
    ctl.cache.observe_resource(MODEL_DEPLOYMENTS, body(spec))
    return ctl


def test_controller_converges_then_stays_quiet() -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    assert ctl.controller.reconcile(KEY)
    assert api.applied == EVERYTHING
    assert len(api.statuses) == 1
    api.applied.clear()
    assert ctl.controller.reconcile(KEY)
    assert api.applied == []  # the apply responses are in the cache: nothing differs
    assert len(api.statuses) == 1


def test_controller_deletes_the_removed_canary() -> None:
    api = FakeApi()
    ctl = controller(api, WITH_CANARY)
    ctl.controller.reconcile(KEY)
    ctl.cache.observe_resource(MODEL_DEPLOYMENTS, {**body(BASE_SPEC),
                                                   "metadata": {**body(BASE_SPEC)["metadata"], "generation": 4}})
    ctl.controller.reconcile(KEY)
    assert api.deleted == ["Deployment/sentiment-canary", "HorizontalPodAutoscaler/sentiment-canary"]


def test_controller_reports_a_refused_child_and_asks_for_a_retry() -> None:
    api = FakeApi(refuse={"Service/sentiment": KubeError(422, "Invalid", "spec.ports: Required value")})
    ctl = controller(api, BASE_SPEC)
    assert not ctl.controller.reconcile(KEY)
    assert "Service/sentiment" not in api.applied
    assert conditions(api.statuses[-1])["Ready"] == ("False", "ApplyFailed")
    assert ("Warning", "ApplyFailed") in api.events


def test_controller_gives_up_the_round_when_the_api_is_unreachable() -> None:
    api = FakeApi(refuse={"Deployment/sentiment-stable": KubeError(0, "ConnectionError", "refused")})
    ctl = controller(api, BASE_SPEC)
    with pytest.raises(KubeError):
        ctl.controller.reconcile(KEY)
    assert api.statuses == []


def test_a_namespace_being_deleted_gets_no_apply_retry_status_or_event() -> None:
    terminating = KubeError(403, "Forbidden", "unable to create new content in namespace ml because it is being "
                            "terminated", causes=("NamespaceTerminating",))
    api = FakeApi(refuse={"Deployment/sentiment-stable": terminating})
    ctl = controller(api, BASE_SPEC)
    ctl.cache.observe_resource(MODEL_DEPLOYMENTS, {**body(BASE_SPEC),
                                                   "metadata": {**body(BASE_SPEC)["metadata"], "name": "other"}})
    assert ctl.controller.reconcile(KEY)  # done: nothing to retry
    assert (api.statuses, api.events) == ([], [])
    assert ctl.controller.reconcile(Key("ModelDeployment", "ml", "other"))
    assert api.applied == []  # the namespace is known to be going: not even tried
    assert (api.statuses, api.events) == ([], [])


def test_a_vanished_namespace_is_going_away_too() -> None:
    assert KubeError(404, "NotFound", 'namespaces "ml" not found').namespace_going_away
    assert not KubeError(404, "NotFound", "the server could not find the requested resource").namespace_going_away


# The cache after a watch gap -----------------------------------------------------------------------------------

def test_an_audit_forgets_a_resource_deleted_during_a_watch_gap_and_keeps_what_came_later() -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    ctl.controller.reconcile(KEY)
    del api.resources[("ml", "sentiment")]  # deleted while the watch was away: no DELETED event came
    ctl.controller.audit()
    assert ctl.cache.snapshot(KEY) is None
    assert ctl.cache.size()["modeldeployments"] == 0


def test_an_audit_drops_children_deleted_during_a_watch_gap_and_requeues_their_owner() -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    ctl.controller.reconcile(KEY)
    del api.objects[("Service", "ml", "sentiment")]
    ctl.controller.audit()
    snapshot = ctl.cache.snapshot(KEY)
    assert snapshot is not None and ("Service", "sentiment") not in snapshot.children
    assert ctl.controller.queue.get(timeout=0) == KEY


def test_what_was_observed_after_the_mark_survives_the_audit() -> None:
    cache = WatchCache()
    before = cache.mark()
    cache.observe_resource(MODEL_DEPLOYMENTS, body(BASE_SPEC))  # arrived while the list was on its way: real
    assert cache.retain_resources(MODEL_DEPLOYMENTS, set(), before) == []
    assert cache.retain_resources(MODEL_DEPLOYMENTS, set(), cache.mark() + 1) == [KEY]


def test_children_vanishing_under_a_resource_the_api_server_no_longer_has_are_not_recreated() -> None:
    """The garbage collector deletes the children of a deleted owner; re-creating them with its uid would
    only have them deleted again, each deletion queueing the next reconcile."""
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    ctl.controller.reconcile(KEY)
    del api.resources[("ml", "sentiment")]
    stable = copy.deepcopy(api.objects.pop(("Deployment", "ml", "sentiment-stable")))
    ctl.cache.forget("Deployment", stable)
    api.applied.clear()
    assert ctl.controller.reconcile(KEY)
    assert api.applied == []
    assert ctl.cache.snapshot(KEY) is None


def test_a_child_deleted_by_hand_is_recreated_once_the_owner_is_confirmed() -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    ctl.controller.reconcile(KEY)
    stable = copy.deepcopy(api.objects.pop(("Deployment", "ml", "sentiment-stable")))
    ctl.cache.forget("Deployment", stable)
    api.applied.clear()
    assert ctl.controller.reconcile(KEY)
    assert api.applied == ["Deployment/sentiment-stable"]
    snapshot = ctl.cache.snapshot(KEY)
    assert snapshot is not None and snapshot.vanished_children == 0


def test_a_child_created_again_and_again_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    for _ in range(5):
        ctl.controller.reconcile(KEY)
        stable = copy.deepcopy(api.objects.pop(("Deployment", "ml", "sentiment-stable")))
        ctl.cache.forget("Deployment", stable)
    assert "Deployment ml/sentiment-stable was created 5 times" in caplog.text


def test_an_audit_after_a_relist_asks_again_whether_istio_is_installed() -> None:
    api = FakeApi()
    ctl = controller(api, BASE_SPEC)
    ctl.controller.reconcile(KEY)
    api.served[kinds.ISTIO_GROUP] = None  # its CRDs went away while the CRD watch was away
    api.served[kinds.GATEWAY_API_GROUP] = "v1"  # and the Gateway API's came
    ctl.controller.audit()
    assert ctl.cache.routers().istio is not None  # a periodic audit trusts the CRD watch
    ctl.controller.audit(rediscover=True)
    assert ctl.cache.routers().istio is None
    assert ctl.cache.routers().gateway_api == "v1"
    assert ctl.controller.queue.get(timeout=0) == KEY


class RouterGoneApi(FakeApi):
    """Discovery said the Gateway API is installed; its HTTPRoute CRD has gone since (404 on listing)."""

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]:
        if collection.endswith("/" + kinds.HTTP_ROUTE.plural):
            raise KubeError(404, "NotFound", "404 page not found")
        return super().list_uids(collection, label_selector)


def test_the_initial_sync_skips_a_kind_whose_crd_went_away() -> None:
    ctl = build(RouterGoneApi(), OperatorConfig(), "test")  # type: ignore[arg-type]
    ctl.cache.observe_resource(MODEL_DEPLOYMENTS, body(BASE_SPEC))
    ctl.cache.note_seen(body(BASE_SPEC))
    ctl.cache.set_discovered(Routers(gateway_api="v1"))
    done = threading.Thread(target=ctl.inventory.wait_for_sync, daemon=True)
    done.start()
    done.join(timeout=10)
    stopped_by_hand = done.is_alive()
    ctl.controller.stop()
    assert not stopped_by_hand, "the initial sync kept retrying a listing the API server answers 404"
