"""The kind registry drives the cache, pruning, the inventory and the RBAC rules: a kind added there alone
is cached, pruned and listed, and the chart's rules cover every kind the registry names."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modeldeploy_operator import children, kinds, names
from modeldeploy_operator.actions import Actions
from modeldeploy_operator.api import KubeError
from modeldeploy_operator.cache import Key, WatchCache
from modeldeploy_operator.children import Plan
from modeldeploy_operator.inventory import Inventory
from modeldeploy_operator.kinds import Kind, OwnerKind, WatchedKind
from modeldeploy_operator.manifests import content_hash

RULES = Path(__file__).resolve().parents[3] / "charts" / "modeldeploy" / "files" / "clusterrole-rules.yaml"

# A toy owning kind, declared only here: it owns ConfigMaps, summarised as their data.
TOY = Kind("toy.example", "v1", "Toy", "toys")
CONFIG_MAP = Kind("", "v1", "ConfigMap", "configmaps")
TOYS = OwnerKind(
    kind=TOY,
    owner_label="toy.example/name",
    watched=(WatchedKind(CONFIG_MAP, summarize=lambda body: dict(body.get("data") or {})),),
    validate=lambda name, spec: dict(spec),
    claims=lambda spec: [],
)
KEY = Key("Toy", "ns", "t1")


def toy() -> dict[str, Any]:
    return {"metadata": {"name": "t1", "namespace": "ns", "uid": "toy-uid", "generation": 1}, "spec": {"size": 2}}


def config_map(name: str, data: Mapping[str, str], owner_kind: str = "Toy") -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                     "labels": {"toy.example/name": "t1", names.LABEL_MANAGED_BY: names.MANAGED_BY},
                     "ownerReferences": [{"kind": owner_kind, "name": "t1", "uid": "toy-uid", "controller": True}]},
        "data": dict(data),
    }
    manifest["metadata"]["annotations"] = {names.HASH_ANNOTATION: content_hash({**manifest, "metadata": {}})}
    return manifest


class RecordingApi:
    """Only what the toy's inventory and deletions use; every call is recorded."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, str]] = []
        self.listed: list[str] = []

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("nothing to apply")

    def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool:
        self.deleted.append((kind.kind, name, str(uid)))
        return True

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]:
        self.listed.append(collection)
        if collection.endswith("/toys"):
            return {"toy-uid": (collection, "ns", "t1")}
        return {}

    def exists(self, collection: str, namespace: str, name: str) -> bool:
        return False

    def served_version(self, group: str) -> str | None:
        return None

    def keda_installed(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise KubeError(0, "Unexpected", f"the toy's reconcile does not call {name}")


def test_a_kind_added_through_the_registry_alone_is_cached_and_pruned() -> None:
    cache = WatchCache((kinds.MODEL_DEPLOYMENTS, TOYS))
    assert cache.observe_resource(TOYS, toy())
    assert cache.observe("ConfigMap", config_map("keep", {"a": "1"})) == [KEY]
    assert cache.observe("ConfigMap", config_map("stale", {"b": "2"})) == [KEY]
    # A ModelDeployment's child is not the toy's, and an object another controller owns is not a child.
    assert cache.observe("ConfigMap", {**config_map("x", {}), "metadata": {
        **config_map("x", {})["metadata"], "labels": {names.LABEL_MD_NAME: "t1"}}}) == []
    assert cache.observe("ConfigMap", config_map("foreign", {}, owner_kind="Job")) == [KEY]

    snapshot = cache.snapshot(KEY)
    assert snapshot is not None and snapshot.spec == {"size": 2}
    assert set(snapshot.children) == {("ConfigMap", "keep"), ("ConfigMap", "stale")}
    assert snapshot.views_of(CONFIG_MAP, dict) == {"keep": {"a": "1"}, "stale": {"b": "2"}}

    plan = children.plan(TOYS, snapshot, [config_map("keep", {"a": "1"})])
    assert plan.apply == ()  # converged: its content hash matches
    assert [(ref.kind, ref.name, ref.uid) for ref in plan.delete] == [(CONFIG_MAP, "stale", "uid-stale")]
    changed = children.plan(TOYS, snapshot, [config_map("keep", {"a": "2"}), config_map("stale", {"b": "2"})])
    assert [m["metadata"]["name"] for m in changed.apply] == ["keep"] and changed.delete == ()

    api = RecordingApi()
    outcome = Actions(api, cache, "test").carry_out(snapshot, Plan(delete=plan.delete))
    assert (api.deleted, outcome.errors) == ([("ConfigMap", "stale", "uid-stale")], {})
    cache.forget("ConfigMap", config_map("stale", {}))
    after = cache.snapshot(KEY)
    assert after is not None and set(after.children) == {("ConfigMap", "keep")}


def test_the_inventory_lists_a_registered_kind_and_audits_it() -> None:
    cache = WatchCache((TOYS,))
    cache.observe_resource(TOYS, toy())
    cache.observe("ConfigMap", config_map("gone", {}))
    api = RecordingApi()
    queued: list[Key] = []
    inventory = Inventory(api, cache, (), threading.Event(), queued.append)
    assert [(kind.kind, selector) for kind, selector in inventory.targets(cache.routers(), False)] == [
        ("Toy", None), ("PersistentVolumeClaim", None), ("ConfigMap", names.MANAGED_SELECTOR)]
    inventory.audit()  # the API server holds the toy but none of its ConfigMaps
    assert queued == [KEY]
    snapshot = cache.snapshot(KEY)
    assert snapshot is not None and snapshot.children == {}
    assert snapshot.vanished_children == 1


def _granted(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def test_the_charts_rules_cover_every_kind_the_registry_names() -> None:
    granted = _granted(yaml.safe_load(RULES.read_text()))
    missing = []

    def need(kind: Kind, verbs: set[str], resource: str | None = None) -> None:
        have = granted.get((kind.group, resource or kind.plural), set())
        if not verbs <= have:
            missing.append(f"{kind.group or 'core'}/{resource or kind.plural}: {sorted(verbs - have)}")

    for owner in kinds.OWNER_KINDS:
        need(owner.kind, {"get", "list", "watch"})
        need(owner.kind, {"patch"}, f"{owner.kind.plural}/status")
        for watched in owner.watched:
            need(watched.kind, {"list", "watch"} | ({"create", "patch", "delete"} if watched.owned else set()))
    need(kinds.CLAIM, {"list", "watch"})
    need(kinds.EVENT, {"create"})
    need(kinds.LEASE, {"get", "create", "update"})
    assert not missing, f"the chart's ClusterRole lacks: {missing}"
