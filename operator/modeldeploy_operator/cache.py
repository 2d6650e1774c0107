"""The watch cache: small summaries of what kopf's watch streams delivered, read by the workers.

A watch that resumes too late (410 Gone, e.g. after an API server restart) is re-listed by kopf, and a
re-list never says what vanished in between. Every entry therefore carries the sequence number of its
last observation, and `retain` drops what an API list taken after a `mark` no longer holds: the
controller runs that audit after each re-list and on every resync, so the cache matches the API server.

Only what reconciling and status need is kept (a hash, a uid, a few counters per child), never whole
bodies: at a thousand resources the operator must stay well under its memory budget. Written from
kopf's event loop, read from the worker threads, hence one lock (held for dict operations only).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Set
from dataclasses import dataclass, field, replace
from typing import Any

from modeldeploy_operator import builders, names
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.builders import Routers

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment
ChildId = tuple[str, str]  # (kind, name)


@dataclass
class ResourceEntry:
    """The ModelDeployment as last seen, minus everything the operator does not read."""

    body: dict[str, Any]  # metadata (name, namespace, uid, generation, deletionTimestamp) and spec
    status: dict[str, Any] | None
    generation: int
    spec: specs.ModelDeploymentSpec | str  # parsed once per change; a str says why it is unusable
    seen: int = 0  # sequence number of the last observation

    @property
    def claims(self) -> list[str]:
        return builders.claims(self.spec) if isinstance(self.spec, specs.ModelDeploymentSpec) else []


@dataclass(frozen=True)
class ChildEntry:
    kind: str
    name: str
    uid: str
    applied_hash: str | None
    foreign_edit: bool  # someone else changed spec fields since our last apply
    replicas: int | None = None  # Deployments: spec.replicas, to undo a hand `kubectl scale`
    seen: int = 0  # sequence number of the last observation


@dataclass
class OwnerChildren:
    children: dict[ChildId, ChildEntry] = field(default_factory=dict)
    deployments: dict[str, statuses.DeploymentView] = field(default_factory=dict)
    pods: dict[str, statuses.PodView] = field(default_factory=dict)
    pods_seen: dict[str, int] = field(default_factory=dict)
    vanished: int = 0  # children deleted since the owner was last confirmed to exist
    hpas: dict[str, statuses.HpaView] = field(default_factory=dict)  # ours and those KEDA made for us
    scaled_objects: dict[str, statuses.ScaledObjectView] = field(default_factory=dict)
    route: statuses.RouteView | None = None


@dataclass(frozen=True)
class Snapshot:
    """One ModelDeployment and everything the cache holds about it, read at once: what a reconcile decides on."""

    key: Key
    body: Mapping[str, Any]  # metadata and spec, as stored
    status: Mapping[str, Any] | None
    generation: int
    spec: specs.ModelDeploymentSpec | str  # a str says why the stored spec is unusable
    children: Mapping[ChildId, ChildEntry]
    deployments: Mapping[str, statuses.DeploymentView]  # track -> view
    pods: tuple[statuses.PodView, ...]
    claims: Mapping[str, str | None]  # claim -> phase, None when missing
    routers: Routers
    vanished: int = 0  # children deleted since the resource was last confirmed to exist
    keda: bool = False
    hpas: Mapping[str, statuses.HpaView] = field(default_factory=dict)
    scaled_objects: Mapping[str, statuses.ScaledObjectView] = field(default_factory=dict)
    route: statuses.RouteView | None = None

    @property
    def deleting(self) -> bool:
        return bool(self.body["metadata"].get("deletionTimestamp"))


def _foreign_spec_edit(body: Mapping[str, Any]) -> bool:
    """A manager other than us wrote spec fields on the main resource (kubectl edit/patch/apply)."""
    for entry in body.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == names.FIELD_MANAGER or entry.get("subresource"):
            continue
        if "f:spec" in (entry.get("fieldsV1") or {}):
            return True
    return False


def controlled_by_us(body: Mapping[str, Any]) -> bool:
    """Whether a ModelDeployment controls the object. KEDA copies a ScaledObject's labels onto the HPA it
    makes: that HPA carries our labels but belongs to KEDA, so it is observed, never pruned."""
    refs = body.get("metadata", {}).get("ownerReferences") or []
    controller = next((ref for ref in refs if ref.get("controller")), None)
    return controller is None or controller.get("kind") == names.KIND


def owner_key(body: Mapping[str, Any]) -> Key | None:
    meta = body.get("metadata", {})
    owner = (meta.get("labels") or {}).get(names.LABEL_MD_NAME)
    if not owner or not meta.get("namespace"):
        return None
    return (meta["namespace"], owner)


def _slim(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata", {})
    kept = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "deletionTimestamp",
                                 "resourceVersion") if k in meta}
    return {"metadata": kept, "spec": body.get("spec") or {}}


class WatchCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[Key, ResourceEntry] = {}
        self._owners: dict[Key, OwnerChildren] = {}
        self._claims: dict[tuple[str, str], str] = {}
        self._routing_crds: dict[str, str] = {}  # routing CRD kind -> preferred served version
        self._routing_reported: set[str] = set()  # kinds the CRD watch has spoken about
        self._keda = False
        self._seen: set[str] | None = set()  # uids delivered by the watches, until the initial sync is done
        self._terminating: dict[str, float] = {}  # namespace -> when the API server said it is being deleted
        self._sequence = 0  # counts observations: what was seen after a mark is never dropped by its audit
        self._claims_seen: dict[tuple[str, str], int] = {}

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def mark(self) -> int:
        """Take before listing a kind from the API server; pass to `retain` with what the list held."""
        with self._lock:
            return self._sequence

    def retain(self, kind: str, present: Set[tuple[str, str]], before: int) -> list[Key]:
        """Drop the objects of `kind` that the API server no longer holds ((namespace, name) not in
        `present`) and that were last observed before `before`. Returns the ModelDeployments dropped
        (kind ModelDeployment) or the ModelDeployments whose children, pods or claims changed."""
        with self._lock:
            if kind == names.KIND:
                stale = [k for k, e in self._resources.items() if k not in present and e.seen < before]
                for key in stale:
                    del self._resources[key]
                return stale
            if kind == names.CLAIM.kind:
                gone = [c for c, seen in self._claims_seen.items() if c not in present and seen < before]
                for claim in gone:
                    self._claims.pop(claim, None)
                    self._claims_seen.pop(claim, None)
                return [key for claim in gone for key in self._users_of_claim_locked(*claim)]
            touched = []
            for key, owner in list(self._owners.items()):
                if kind == names.POD.kind:
                    pods = [n for n, seen in owner.pods_seen.items() if (key[0], n) not in present and seen < before]
                    for pod in pods:
                        owner.pods.pop(pod, None)
                        owner.pods_seen.pop(pod, None)
                    changed = bool(pods)
                else:
                    ids = [cid for cid, child in owner.children.items()
                           if cid[0] == kind and (key[0], cid[1]) not in present and child.seen < before]
                    for child_id in ids:
                        self._drop_child_locked(owner, child_id)
                    changed = bool(ids)
                if changed:
                    touched.append(key)
                    self._drop_if_empty(key, owner)
            return touched

    def size(self) -> dict[str, int]:
        """How much the cache holds (the operator's health endpoint reports it)."""
        with self._lock:
            return {
                "modeldeployments": len(self._resources),
                "children": sum(len(o.children) for o in self._owners.values()),
                "pods": sum(len(o.pods) for o in self._owners.values()),
            }

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

    # ModelDeployments ------------------------------------------------------------------------------------

    def observe_resource(self, body: Mapping[str, Any]) -> bool:
        """Store a ModelDeployment; True when it needs a reconcile (new, spec or foreign status change)."""
        meta = body.get("metadata", {})
        key = (meta["namespace"], meta["name"])
        generation = int(meta.get("generation", 0))
        status = dict(body.get("status") or {}) or None
        with self._lock:
            before = self._resources.get(key)
        slim = _slim(body)
        unchanged = before is not None and before.body["spec"] == slim["spec"]
        spec = before.spec if unchanged and before is not None else specs.validate(meta["name"], slim["spec"])
        with self._lock:
            self._resources[key] = ResourceEntry(slim, status, generation, spec, self._next())
        if before is None or before.generation != generation:
            return True
        if meta.get("deletionTimestamp"):
            return False
        return before.status != status or before.body["metadata"].get("uid") != meta.get("uid")

    def forget_resource(self, key: Key, uid: str | None = None) -> None:
        """Drop a ModelDeployment (only the one with `uid`, when given: a newer namesake stays)."""
        with self._lock:
            entry = self._resources.get(key)
            if entry is None or (uid is not None and entry.body["metadata"].get("uid") != uid):
                return
            del self._resources[key]
            if key[0] in self._terminating and not any(k[0] == key[0] for k in self._resources):
                del self._terminating[key[0]]  # the namespace is empty: a namesake created later starts afresh

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

    def snapshot(self, key: Key) -> Snapshot | None:
        """Everything about one ModelDeployment, consistent under one lock; None when it is not known."""
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
                deployments=dict(owner.deployments),
                pods=tuple(owner.pods.values()),
                claims={claim: self._claims.get((key[0], claim)) for claim in entry.claims},
                routers=self._routers_locked(),
                vanished=owner.vanished,
                keda=self._keda,
                hpas=dict(owner.hpas),
                scaled_objects=dict(owner.scaled_objects),
                route=owner.route,
            )

    def confirmed(self, key: Key) -> None:
        """The API server confirmed the resource exists: its children's deletions since are accounted for."""
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                owner.vanished = 0

    def resource_keys(self) -> list[Key]:
        with self._lock:
            return list(self._resources)

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

    def users_of_claim(self, namespace: str, claim: str) -> list[Key]:
        with self._lock:
            return self._users_of_claim_locked(namespace, claim)

    def _users_of_claim_locked(self, namespace: str, claim: str) -> list[Key]:
        return [key for key, entry in self._resources.items() if key[0] == namespace and claim in entry.claims]

    # Children --------------------------------------------------------------------------------------------

    def observe_child(self, body: Mapping[str, Any], kind: str | None = None) -> Key | None:
        """Listed objects carry no `kind`, so the watch handlers name it; apply responses do carry it."""
        key = owner_key(body)
        if key is None:
            return None
        meta = body["metadata"]
        kind = kind or str(body.get("kind", ""))
        replicas = (body.get("spec") or {}).get("replicas") if kind == "Deployment" else None
        entry = ChildEntry(
            kind=kind,
            name=meta["name"],
            uid=meta.get("uid", ""),
            applied_hash=(meta.get("annotations") or {}).get(names.HASH_ANNOTATION),
            foreign_edit=_foreign_spec_edit(body),
            replicas=replicas,
        )
        view = statuses.summarize_deployment(body) if kind == "Deployment" else None
        track = (meta.get("labels") or {}).get(names.LABEL_TRACK)
        ours = controlled_by_us(body)
        with self._lock:
            owner = self._owners.setdefault(key, OwnerChildren())
            if ours:
                owner.children[(kind, meta["name"])] = replace(entry, seen=self._next())
            if view is not None and track and ours:
                owner.deployments[track] = view
            if kind == names.HPA.kind:
                owner.hpas[meta["name"]] = statuses.summarize_hpa(body)
            elif kind == names.SCALED_OBJECT.kind and ours:
                owner.scaled_objects[meta["name"]] = statuses.summarize_scaled_object(body)
            elif kind == names.HTTP_ROUTE.kind and ours:
                owner.route = statuses.summarize_route(body)
        return key

    def forget_child(self, body: Mapping[str, Any], kind: str | None = None) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        kind, name = kind or str(body.get("kind", "")), body["metadata"]["name"]
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                self._drop_child_locked(owner, (kind, name))
                if kind == names.HPA.kind:
                    owner.hpas.pop(name, None)  # KEDA's HPA is observed without being a child
                self._drop_if_empty(key, owner)
        return key

    @staticmethod
    def _drop_child_locked(owner: OwnerChildren, child_id: ChildId) -> None:
        if owner.children.pop(child_id, None) is None:
            return
        owner.vanished += 1
        if child_id[0] == names.HPA.kind:
            owner.hpas.pop(child_id[1], None)
        if child_id[0] == names.SCALED_OBJECT.kind:
            owner.scaled_objects.pop(child_id[1], None)
        if child_id[0] == names.HTTP_ROUTE.kind:
            owner.route = None
        if child_id[0] == names.DEPLOYMENT.kind:
            owner.deployments = {t: v for t, v in owner.deployments.items() if v.name != child_id[1]}

    def observe_pod(self, body: Mapping[str, Any]) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        view = statuses.summarize_pod(body)
        with self._lock:
            owner = self._owners.setdefault(key, OwnerChildren())
            owner.pods[view.name] = view
            owner.pods_seen[view.name] = self._next()
        return key

    def forget_pod(self, body: Mapping[str, Any]) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                owner.pods.pop(body["metadata"]["name"], None)
                owner.pods_seen.pop(body["metadata"]["name"], None)
                self._drop_if_empty(key, owner)
        return key

    def _drop_if_empty(self, key: Key, owner: OwnerChildren) -> None:
        if not owner.children and not owner.pods and not owner.hpas:
            self._owners.pop(key, None)

    # Claims and routing APIs -----------------------------------------------------------------------------

    def observe_claim(self, body: Mapping[str, Any]) -> tuple[str, str]:
        meta = body["metadata"]
        with self._lock:
            self._claims[(meta["namespace"], meta["name"])] = statuses.claim_phase(body)
            self._claims_seen[(meta["namespace"], meta["name"])] = self._next()
        return meta["namespace"], meta["name"]

    def forget_claim(self, body: Mapping[str, Any]) -> tuple[str, str]:
        meta = body["metadata"]
        with self._lock:
            self._claims.pop((meta["namespace"], meta["name"]), None)
            self._claims_seen.pop((meta["namespace"], meta["name"]), None)
        return meta["namespace"], meta["name"]

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
            self._routing_crds = {kind.kind: version for kind in names.ROUTING_KINDS
                                  if (version := routers.version_of(kind)) is not None}
            self._routing_reported = {kind.kind for kind in names.ROUTING_KINDS}
            return before != self._routers_locked()

    def set_discovered(self, routers: Routers) -> None:
        """The start-up discovery answer, used for each kind until the CRD watch has spoken about it."""
        with self._lock:
            for kind in names.ROUTING_KINDS:
                if kind.kind in self._routing_reported:
                    continue
                version = routers.version_of(kind)
                if version is None:
                    self._routing_crds.pop(kind.kind, None)
                else:
                    self._routing_crds[kind.kind] = version

    def _routers_locked(self) -> Routers:
        def served(kinds: tuple[names.Kind, ...]) -> str | None:
            versions = [self._routing_crds.get(kind.kind) for kind in kinds]
            return versions[-1] if all(versions) else None

        return Routers(istio=served(names.ISTIO_KINDS), gateway_api=served(names.GATEWAY_API_KINDS))

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
