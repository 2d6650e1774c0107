"""The watch cache: small views of what kopf's watch streams delivered, read by the reconcile workers.

What it keeps is driven by the kind registry (`kinds.py`): for each owning kind (ModelDeployment, ...) its
resources; for each kind those own or observe, per owner, the child's identity and content hash (to tell
whether it needs applying, and what to prune) and the view its summarizer makes (what status reads).
Nothing here branches on a particular child kind.

A watch that resumes too late (410 Gone, e.g. after an API server restart) is re-listed by kopf, and a
re-list never says what vanished in between. Every entry therefore carries the sequence number of its
last observation, and the `retain_*` methods drop what an API list taken after a `mark` no longer holds:
the inventory runs that audit after each re-list and on every resync, so the cache matches the API server.

Written from kopf's event loop, read from the worker threads, hence one lock (held for dict operations
only). Whole bodies are never kept: at thousands of resources the operator must stay within its budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from modeldeploy_operator import kinds, names
from modeldeploy_operator.kinds import Kind, OwnerKind
from modeldeploy_operator.routers import Routers
from modeldeploy_operator.views import claim_phase

V = TypeVar("V")


class Key(NamedTuple):
    """One resource of an owning kind: what the work queue holds and a reconcile is handed."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


ChildId = tuple[str, str]  # (kind, name)


@dataclass
class ResourceEntry:
    """A resource of ours as last seen, minus everything the operator does not read."""

    body: dict[str, Any]  # metadata (name, namespace, uid, generation, deletionTimestamp) and spec
    status: dict[str, Any] | None
    generation: int
    spec: object  # the owner kind's parsed spec, parsed once per change; a str says why it is unusable
    claims: tuple[str, ...]
    seen: int = 0  # sequence number of the last observation


@dataclass(frozen=True)
class ChildEntry:
    """A child of ours: enough to tell whether it needs applying, and to delete exactly it."""

    kind: str
    name: str
    uid: str
    applied_hash: str | None
    foreign_edit: bool  # someone else changed spec fields since our last apply
    replicas: int | None = None  # spec.replicas when it has one, to undo a hand `kubectl scale`
    seen: int = 0  # sequence number of the last observation


@dataclass(frozen=True)
class Observed:
    view: object
    seen: int


@dataclass
class OwnerChildren:
    children: dict[ChildId, ChildEntry] = field(default_factory=dict)
    views: dict[str, dict[str, Observed]] = field(default_factory=dict)  # kind -> object name -> view
    vanished_children: int = 0  # children deleted since the owner was last confirmed to exist

    def empty(self) -> bool:
        """Nothing left to remember: a count of vanished children is kept until the owner is confirmed."""
        return not self.children and not any(self.views.values()) and not self.vanished_children


@dataclass(frozen=True)
class Snapshot:
    """One resource and everything the cache holds about it, read at once: what a reconcile decides on."""

    key: Key
    body: Mapping[str, Any]  # metadata and spec, as stored
    status: Mapping[str, Any] | None
    generation: int
    spec: object  # the owner kind's parsed spec; a str says why the stored spec is unusable
    children: Mapping[ChildId, ChildEntry]
    views: Mapping[str, Mapping[str, object]]  # kind -> object name -> the view its summarizer made
    claims: Mapping[str, str | None]  # claim -> phase, None when missing
    routers: Routers
    vanished_children: int = 0  # children deleted since the resource was last confirmed to exist
    keda: bool = False

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))

    def views_of(self, kind: Kind, view_type: type[V]) -> dict[str, V]:
        """The views of one kind, by object name."""
        return {name: view for name, view in (self.views.get(kind.kind) or {}).items() if isinstance(view, view_type)}


def _foreign_spec_edit(body: Mapping[str, Any]) -> bool:
    """A manager other than us wrote spec fields on the object (kubectl edit/patch/apply)."""
    for entry in body.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == names.FIELD_MANAGER or entry.get("subresource"):
            continue
        if "f:spec" in (entry.get("fieldsV1") or {}):
            return True
    return False


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "deletionTimestamp",
                                 "resourceVersion") if k in meta}
    return {"metadata": kept, "spec": body.get("spec") or {}}


def _child_entry(kind: str, body: Mapping[str, Any], seen: int) -> ChildEntry:
    meta = body["metadata"]
    replicas = (body.get("spec") or {}).get("replicas")
    return ChildEntry(
        kind=kind,
        name=meta["name"],
        uid=meta.get("uid", ""),
        applied_hash=(meta.get("annotations") or {}).get(names.HASH_ANNOTATION),
        foreign_edit=_foreign_spec_edit(body),
        replicas=replicas if isinstance(replicas, int) else None,
        seen=seen,
    )


class WatchCache:
    """Resources of the owning kinds, their children's and observed objects' views, claims, and which
    optional APIs (routing, KEDA) are installed."""

    def __init__(self, owners: Sequence[OwnerKind] = kinds.OWNER_KINDS) -> None:
        self._lock = threading.Lock()
        self._owner_kinds = {owner.kind.kind: owner for owner in owners}
        self._resources: dict[Key, ResourceEntry] = {}
        self._owners: dict[Key, OwnerChildren] = {}
        self._claims: dict[tuple[str, str], tuple[str, int]] = {}  # (namespace, claim) -> (phase, seen)
        self._routing_crds: dict[str, str] = {}  # routing CRD kind -> preferred served version
        self._routing_reported: set[str] = set()  # kinds the CRD watch has spoken about
        self._keda = False
        self._seen: set[str] | None = set()  # uids delivered by the watches, until the initial sync is done
        self._terminating: dict[str, float] = {}  # namespace -> when the API server said it is being deleted
        self._sequence = 0  # counts observations: what was seen after a mark is never dropped by its audit

    @property
    def owner_kinds(self) -> tuple[OwnerKind, ...]:
        return tuple(self._owner_kinds.values())

    def owner_kind(self, key: Key) -> OwnerKind:
        return self._owner_kinds[key.kind]

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    # Audits against the API server -----------------------------------------------------------------------

    def mark(self) -> int:
        """Take before listing a kind from the API server; pass to a `retain_*` with what the list held: what
        was observed up to the mark and is not in the list is dropped, what was observed since is kept."""
        with self._lock:
            return self._sequence

    def retain_resources(self, owner: OwnerKind, present: Set[tuple[str, str]], before: int) -> list[Key]:
        """Drop the resources of `owner`'s kind not in `present` ((namespace, name)) and last observed
        before `before`; returns them."""
        with self._lock:
            stale = [key for key, entry in self._resources.items() if key.kind == owner.kind.kind
                     and (key.namespace, key.name) not in present and entry.seen <= before]
            for key in stale:
                del self._resources[key]
            return stale

    def retain_claims(self, present: Set[tuple[str, str]], before: int) -> list[Key]:
        """Drop the claims no longer there; returns the resources that mount them."""
        with self._lock:
            gone = [claim for claim, (_, seen) in self._claims.items() if claim not in present and seen <= before]
            for claim in gone:
                del self._claims[claim]
            return [key for claim in gone for key in self._users_of_claim_locked(*claim)]

    def retain_watched(self, kind: str, present: Set[tuple[str, str]], before: int) -> list[Key]:
        """Drop the objects of a watched kind no longer there; returns the resources they belonged to."""
        with self._lock:
            touched = []
            for key, owner in list(self._owners.items()):
                gone_children = [cid for cid, child in owner.children.items() if cid[0] == kind
                                 and (key.namespace, cid[1]) not in present and child.seen <= before]
                observed = owner.views.get(kind) or {}
                gone_views = [name for name, entry in observed.items()
                              if (key.namespace, name) not in present and entry.seen <= before]
                for child_id in gone_children:
                    self._drop_child_locked(owner, child_id)
                for name in gone_views:
                    observed.pop(name, None)
                if gone_children or gone_views:
                    touched.append(key)
                    self._drop_if_empty(key, owner)
            return touched

    def size(self) -> dict[str, int]:
        """How much the cache holds (the operator's health endpoint reports it)."""
        with self._lock:
            counts = {owner.kind.plural: sum(1 for key in self._resources if key.kind == owner.kind.kind)
                      for owner in self._owner_kinds.values()}
            counts["children"] = sum(len(o.children) for o in self._owners.values())
            counts["pods"] = sum(len(o.views.get(kinds.POD.kind) or {}) for o in self._owners.values())
            return counts

    # Initial sync ----------------------------------------------------------------------------------------

    def note_seen(self, body: Mapping[str, Any]) -> None:
        uid = body.get("metadata", {}).get("uid")
        with self._lock:
            if self._seen is not None and uid:
                self._seen.add(uid)

    def unseen(self, uids: list[str]) -> list[str]:
        with self._lock:
            seen = self._seen or set()
            return [uid for uid in uids if uid not in seen]

    def stop_tracking(self) -> None:
        with self._lock:
            self._seen = None

    # The owning kinds' resources -------------------------------------------------------------------------

    def observe_resource(self, owner: OwnerKind, body: Mapping[str, Any]) -> bool:
        """Store a resource; True when it needs a reconcile (new, spec or foreign status change)."""
        meta = body.get("metadata", {})
        key = Key(owner.kind.kind, meta["namespace"], meta["name"])
        generation = int(meta.get("generation", 0))
        status = dict(body.get("status") or {}) or None
        with self._lock:
            before = self._resources.get(key)
        slim = _slim(body)
        if before is not None and before.body["spec"] == slim["spec"]:
            parsed, claims = before.spec, before.claims
        else:
            parsed = owner.validate(meta["name"], slim["spec"])
            claims = tuple(owner.claims(parsed))
        with self._lock:
            self._resources[key] = ResourceEntry(slim, status, generation, parsed, claims, self._next())
        if before is None or before.generation != generation:
            return True
        if meta.get("deletionTimestamp"):
            return False
        return before.status != status or before.body["metadata"].get("uid") != meta.get("uid")

    def forget_resource(self, key: Key, uid: str | None = None) -> None:
        """Drop a resource (only the one with `uid`, when given: a newer namesake stays)."""
        with self._lock:
            entry = self._resources.get(key)
            if entry is None or (uid is not None and entry.body["metadata"].get("uid") != uid):
                return
            del self._resources[key]
            if key.namespace in self._terminating and not any(k.namespace == key.namespace for k in self._resources):
                del self._terminating[key.namespace]  # the namespace is empty: a namesake created later starts afresh

    def snapshot(self, key: Key) -> Snapshot | None:
        """Everything about one resource, consistent under one lock; None when it is not known."""
        with self._lock:
            entry = self._resources.get(key)
            if entry is None:
                return None
            owner = self._owners.get(key) or OwnerChildren()
            return Snapshot(
                key=key,
                body=entry.body,
                status=entry.status,
                generation=entry.generation,
                spec=entry.spec,
                children=dict(owner.children),
                views={kind: {name: o.view for name, o in found.items()} for kind, found in owner.views.items()},
                claims={claim: self._claim_phase_locked(key.namespace, claim) for claim in entry.claims},
                routers=self._routers_locked(),
                vanished_children=owner.vanished_children,
                keda=self._keda,
            )

    def confirmed(self, key: Key) -> None:
        """The API server confirmed the resource exists: its children's deletions since are accounted for."""
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                owner.vanished_children = 0
                self._drop_if_empty(key, owner)

    def resource_keys(self, kind: str | None = None) -> list[Key]:
        with self._lock:
            return [key for key in self._resources if kind is None or key.kind == kind]

    def record_status(self, key: Key, status: dict[str, Any], resource_version: str | None = None,
                      written_over: str | None = None) -> None:
        """What we just wrote, and the resourceVersion it made: the watch event that echoes it will then not
        trigger another reconcile, and the next status write is not refused as a conflict with our own.

        `written_over` is the resourceVersion the write was conditional on: when the watch has delivered
        another version since (our echo, or someone's newer write, e.g. a rollout command), that one stays."""
        with self._lock:
            entry = self._resources.get(key)
            if entry is None:
                return
            if written_over is not None and entry.body["metadata"].get("resourceVersion") != written_over:
                return
            entry.status = status
            if resource_version:
                entry.body = {**entry.body, "metadata": {**entry.body["metadata"], "resourceVersion": resource_version}}

    # Namespaces being deleted -------------------------------------------------------------------------------

    TERMINATING_MEMORY_SECONDS = 60.0

    def note_namespace_terminating(self, namespace: str) -> bool:
        """Remember that the API server refuses new objects in `namespace`; True the first time."""
        with self._lock:
            first = not self._namespace_terminating_locked(namespace)
            self._terminating[namespace] = time.monotonic()
            return first

    def namespace_terminating(self, namespace: str) -> bool:
        with self._lock:
            return self._namespace_terminating_locked(namespace)

    def _namespace_terminating_locked(self, namespace: str) -> bool:
        since = self._terminating.get(namespace)
        # Forgotten after a while: if the namespace is still going, the next write finds out again.
        return since is not None and time.monotonic() - since < self.TERMINATING_MEMORY_SECONDS

    # Children and observed objects -------------------------------------------------------------------------

    def observe(self, kind: str, body: Mapping[str, Any]) -> list[Key]:
        """Record an object of a watched kind (listed objects carry no `kind`, so the watch handlers name it;
        apply responses do carry it); returns the resources it belongs to."""
        touched = []
        for owner_kind in self._owner_kinds.values():
            watched = owner_kind.watched_kind(kind)
            found = owner_kind.owner_of(body)
            if watched is None or found is None:
                continue
            key = Key(owner_kind.kind.kind, *found)
            ours = owner_kind.controls(body)
            view = watched.summarize(body) if watched.summarize is not None and (ours or watched.foreign) else None
            name = body["metadata"]["name"]
            with self._lock:
                owner = self._owners.setdefault(key, OwnerChildren())
                seen = self._next()
                if ours and watched.owned:
                    owner.children[(kind, name)] = _child_entry(kind, body, seen)
                if view is not None:
                    owner.views.setdefault(kind, {})[name] = Observed(view, seen)
            touched.append(key)
        return touched

    def forget(self, kind: str, body: Mapping[str, Any]) -> list[Key]:
        """An object of a watched kind was deleted; returns the resources it belonged to."""
        touched = []
        name = body["metadata"]["name"]
        for owner_kind in self._owner_kinds.values():
            found = owner_kind.owner_of(body)
            if owner_kind.watched_kind(kind) is None or found is None:
                continue
            key = Key(owner_kind.kind.kind, *found)
            with self._lock:
                owner = self._owners.get(key)
                if owner is not None:
                    self._drop_child_locked(owner, (kind, name))
                    (owner.views.get(kind) or {}).pop(name, None)
                    self._drop_if_empty(key, owner)
            touched.append(key)
        return touched

    @staticmethod
    def _drop_child_locked(owner: OwnerChildren, child_id: ChildId) -> None:
        if owner.children.pop(child_id, None) is None:
            return
        owner.vanished_children += 1
        (owner.views.get(child_id[0]) or {}).pop(child_id[1], None)

    def _drop_if_empty(self, key: Key, owner: OwnerChildren) -> None:
        if owner.empty():
            self._owners.pop(key, None)

    # Claims ---------------------------------------------------------------------------------------------------

    def observe_claim(self, body: Mapping[str, Any]) -> list[Key]:
        """Record a claim's phase; returns the resources that mount it."""
        meta = body["metadata"]
        with self._lock:
            self._claims[(meta["namespace"], meta["name"])] = (claim_phase(body), self._next())
            return self._users_of_claim_locked(meta["namespace"], meta["name"])

    def forget_claim(self, body: Mapping[str, Any]) -> list[Key]:
        meta = body["metadata"]
        with self._lock:
            self._claims.pop((meta["namespace"], meta["name"]), None)
            return self._users_of_claim_locked(meta["namespace"], meta["name"])

    def users_of_claim(self, namespace: str, claim: str) -> list[Key]:
        with self._lock:
            return self._users_of_claim_locked(namespace, claim)

    def _users_of_claim_locked(self, namespace: str, claim: str) -> list[Key]:
        return [key for key, entry in self._resources.items() if key.namespace == namespace and claim in entry.claims]

    def _claim_phase_locked(self, namespace: str, claim: str) -> str | None:
        found = self._claims.get((namespace, claim))
        return found[0] if found is not None else None

    # Which optional APIs are installed ---------------------------------------------------------------------

    def set_routing_crd(self, kind: str, version: str | None) -> bool:
        """Record one routing CRD's presence (from the CRD watch); True when the installed routers changed."""
        with self._lock:
            before = self._routers_locked()
            if version is None:
                self._routing_crds.pop(kind, None)
            else:
                self._routing_crds[kind] = version
            self._routing_reported.add(kind)
            return before != self._routers_locked()

    def reset_routers(self, routers: Routers) -> bool:
        """What discovery says now (routing CRDs may have come or gone while a watch was away); True when
        the installed routers changed."""
        with self._lock:
            before = self._routers_locked()
            self._routing_crds = {kind.kind: version for kind in kinds.ROUTING_KINDS
                                  if (version := routers.version_of(kind)) is not None}
            self._routing_reported = {kind.kind for kind in kinds.ROUTING_KINDS}
            return before != self._routers_locked()

    def set_discovered(self, routers: Routers) -> None:
        """The start-up discovery answer, used for each kind until the CRD watch has spoken about it."""
        with self._lock:
            for kind in kinds.ROUTING_KINDS:
                if kind.kind in self._routing_reported:
                    continue
                version = routers.version_of(kind)
                if version is None:
                    self._routing_crds.pop(kind.kind, None)
                else:
                    self._routing_crds[kind.kind] = version

    def _routers_locked(self) -> Routers:
        def served(group_kinds: tuple[Kind, ...]) -> str | None:
            versions = [self._routing_crds.get(kind.kind) for kind in group_kinds]
            return versions[-1] if all(versions) else None

        return Routers(istio=served(kinds.ISTIO_KINDS), gateway_api=served(kinds.GATEWAY_API_KINDS))

    def set_keda(self, installed: bool) -> bool:
        """Record whether KEDA's ScaledObject CRD is installed; True when that changed."""
        with self._lock:
            changed, self._keda = self._keda != installed, installed
            return changed

    def keda(self) -> bool:
        with self._lock:
            return self._keda

    def routers(self) -> Routers:
        with self._lock:
            return self._routers_locked()

