"""The watch cache: small summaries of what kopf's watch streams delivered, read by the workers.

Only what reconciling and status need is kept (a hash, a uid, a few counters per child), never whole
bodies: at a thousand resources the operator must stay well under its memory budget. Written from
kopf's event loop, read from the worker threads, hence one lock (held for dict operations only).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy_operator import builders, names
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.builders import IstioApi

Key = tuple[str, str]  # (namespace, name) of a ModelDeployment
ChildId = tuple[str, str]  # (kind, name)


@dataclass
class ResourceEntry:
    """The ModelDeployment as last seen, minus everything the operator does not read."""

    body: dict[str, Any]  # metadata (name, namespace, uid, generation, deletionTimestamp) and spec
    status: dict[str, Any] | None
    generation: int
    spec: specs.ModelDeploymentSpec | str  # parsed once per change; a str says why it is unusable

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


@dataclass
class OwnerChildren:
    children: dict[ChildId, ChildEntry] = field(default_factory=dict)
    deployments: dict[str, statuses.DeploymentView] = field(default_factory=dict)
    pods: dict[str, statuses.PodView] = field(default_factory=dict)
    hpas: dict[str, statuses.HpaView] = field(default_factory=dict)  # ours and those KEDA made for us
    scaled_objects: dict[str, statuses.ScaledObjectView] = field(default_factory=dict)


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
    istio: IstioApi | None
    keda: bool = False
    hpas: Mapping[str, statuses.HpaView] = field(default_factory=dict)
    scaled_objects: Mapping[str, statuses.ScaledObjectView] = field(default_factory=dict)

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
        self._istio_crds: dict[str, str] = {}  # CRD kind -> preferred served version
        self._istio_known = False
        self._keda = False
        self._seen: set[str] | None = set()  # uids delivered by the watches, until the initial sync is done

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
            self._resources[key] = ResourceEntry(slim, status, generation, spec)
        if before is None or before.generation != generation:
            return True
        if meta.get("deletionTimestamp"):
            return False
        return before.status != status or before.body["metadata"].get("uid") != meta.get("uid")

    def forget_resource(self, key: Key) -> None:
        with self._lock:
            self._resources.pop(key, None)

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
                istio=self._istio_locked(),
                keda=self._keda,
                hpas=dict(owner.hpas),
                scaled_objects=dict(owner.scaled_objects),
            )

    def resource_keys(self) -> list[Key]:
        with self._lock:
            return list(self._resources)

    def record_status(self, key: Key, status: dict[str, Any]) -> None:
        """What we just wrote: the watch event that echoes it will then not trigger another reconcile."""
        with self._lock:
            entry = self._resources.get(key)
            if entry is not None:
                entry.status = status

    def users_of_claim(self, namespace: str, claim: str) -> list[Key]:
        with self._lock:
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
                owner.children[(kind, meta["name"])] = entry
            if view is not None and track and ours:
                owner.deployments[track] = view
            if kind == names.HPA.kind:
                owner.hpas[meta["name"]] = statuses.summarize_hpa(body)
            elif kind == names.SCALED_OBJECT.kind and ours:
                owner.scaled_objects[meta["name"]] = statuses.summarize_scaled_object(body)
        return key

    def forget_child(self, body: Mapping[str, Any], kind: str | None = None) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        kind, name = kind or str(body.get("kind", "")), body["metadata"]["name"]
        track = (body["metadata"].get("labels") or {}).get(names.LABEL_TRACK)
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                gone = owner.children.pop((kind, name), None)
                if kind == "Deployment" and track and gone is not None:
                    owner.deployments.pop(track, None)
                if kind == names.HPA.kind:
                    owner.hpas.pop(name, None)
                elif kind == names.SCALED_OBJECT.kind:
                    owner.scaled_objects.pop(name, None)
                self._drop_if_empty(key, owner)
        return key

    def observe_pod(self, body: Mapping[str, Any]) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        view = statuses.summarize_pod(body)
        with self._lock:
            self._owners.setdefault(key, OwnerChildren()).pods[view.name] = view
        return key

    def forget_pod(self, body: Mapping[str, Any]) -> Key | None:
        key = owner_key(body)
        if key is None:
            return None
        with self._lock:
            owner = self._owners.get(key)
            if owner is not None:
                owner.pods.pop(body["metadata"]["name"], None)
                self._drop_if_empty(key, owner)
        return key

    def _drop_if_empty(self, key: Key, owner: OwnerChildren) -> None:
        if not owner.children and not owner.pods and not owner.hpas:
            self._owners.pop(key, None)

    # Claims and Istio ------------------------------------------------------------------------------------

    def observe_claim(self, body: Mapping[str, Any]) -> tuple[str, str]:
        meta = body["metadata"]
        with self._lock:
            self._claims[(meta["namespace"], meta["name"])] = statuses.claim_phase(body)
        return meta["namespace"], meta["name"]

    def forget_claim(self, body: Mapping[str, Any]) -> tuple[str, str]:
        meta = body["metadata"]
        with self._lock:
            self._claims.pop((meta["namespace"], meta["name"]), None)
        return meta["namespace"], meta["name"]

    def set_istio_crd(self, kind: str, version: str | None) -> bool:
        """Record one Istio CRD's presence; True when routing availability changed."""
        with self._lock:
            before = self._istio_locked()
            if version is None:
                self._istio_crds.pop(kind, None)
            else:
                self._istio_crds[kind] = version
            self._istio_known = True
            return before != self._istio_locked()

    def set_istio_version(self, version: str | None) -> None:
        """The start-up discovery answer, used until the CRD watch has spoken."""
        with self._lock:
            if not self._istio_known:
                self._istio_crds = {} if version is None else {kind.kind: version for kind in names.ISTIO_KINDS}

    def _istio_locked(self) -> IstioApi | None:
        if all(kind.kind in self._istio_crds for kind in names.ISTIO_KINDS):
            return IstioApi(self._istio_crds[names.VIRTUAL_SERVICE.kind])
        return None

    def set_keda(self, installed: bool) -> bool:
        """Record whether KEDA's ScaledObject CRD is installed; True when that changed."""
        with self._lock:
            changed, self._keda = self._keda != installed, installed
            return changed

    def keda(self) -> bool:
        with self._lock:
            return self._keda

    def istio(self) -> IstioApi | None:
        with self._lock:
            return self._istio_locked()
