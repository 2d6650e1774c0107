"""Pure, for any owning kind: which of a resource's children need applying, and which to delete.

A child is applied when it is missing, differs from what would be applied (its content hash), was edited
by hand, or was scaled by hand; a child the cache holds that is no longer wanted is deleted, by uid, at
the version its API serves now. The kind registry says which kinds are children; nothing here knows any
particular kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy_operator import names
from modeldeploy_operator.cache import ChildEntry, Snapshot
from modeldeploy_operator.events import EventNote
from modeldeploy_operator.kinds import Kind, OwnerKind
from modeldeploy_operator.manifests import Manifest


@dataclass(frozen=True)
class ChildRef:
    """A child to delete: where it lives and the uid it must still have (a newer namesake is spared)."""

    kind: Kind
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Plan:
    apply: tuple[Manifest, ...] = ()
    delete: tuple[ChildRef, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How the writes of a plan went."""

    errors: Mapping[str, str] = field(default_factory=dict)  # "Kind/name" -> why the API refused it
    applied: Mapping[str, Mapping[str, object]] = field(default_factory=dict)  # kind -> name -> view of the response
    namespace_going_away: bool = False  # the API server refuses new objects: nothing to report, nothing to retry


@dataclass(frozen=True)
class StatusUpdate:
    """The status to write, and the Events that go with it."""

    status: dict[str, Any]
    events: tuple[EventNote, ...]


def needs_apply(manifest: Mapping[str, Any], observed: ChildEntry | None) -> bool:
    """Apply when the child is missing, differs from what we would apply, or was edited or scaled by hand."""
    if observed is None or observed.foreign_edit:
        return True
    if observed.applied_hash != manifest["metadata"]["annotations"][names.HASH_ANNOTATION]:
        return True
    wanted_replicas = manifest.get("spec", {}).get("replicas")
    return wanted_replicas is not None and observed.replicas != wanted_replicas


def plan(owner: OwnerKind, snapshot: Snapshot, desired: Iterable[Manifest]) -> Plan:
    """The desired children that need applying, and the children held that are no longer desired."""
    desired = list(desired)
    apply = tuple(m for m in desired if needs_apply(m, snapshot.children.get((m["kind"], m["metadata"]["name"]))))
    wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
    return Plan(apply, tuple(unwanted(owner, snapshot, wanted)))


def unwanted(owner: OwnerKind, snapshot: Snapshot, wanted: set[tuple[str, str]]) -> list[ChildRef]:
    """The children to delete: held, not wanted, and addressable (a kind whose API is not installed now
    cannot be addressed, and its objects went with its CRDs)."""
    refs = []
    for child_id, child in snapshot.children.items():
        watched = owner.watched_kind(child.kind)
        if child_id in wanted or watched is None or not watched.owned:
            continue
        kind = watched.served_kind(snapshot.routers, snapshot.keda)
        if kind is not None:
            refs.append(ChildRef(kind, snapshot.key.namespace, child.name, child.uid))
    return refs
