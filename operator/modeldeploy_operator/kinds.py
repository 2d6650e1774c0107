"""Every kind the operator reads or writes, declared once.

For each kind: where it lives in the REST API (`Kind`); for the kinds whose objects belong to one of our
resources, how the watch cache summarises them and whether the operator applies and prunes them
(`WatchedKind`); for the kinds that own children, which kinds they own and how their spec is read
(`OwnerKind`). The handlers register their watches from this registry, the cache keeps its views by it,
pruning and the start-up inventory walk it, and a test holds the chart's RBAC rules to it: adding a kind
is an entry here (and its builders), not a branch in the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from modeldeploy_operator import names, spec, views

if TYPE_CHECKING:
    from modeldeploy_operator.routers import Routers


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API. The routing kinds are declared without a version: the served
    one is found at run time (`at_version`)."""

    group: str  # "" for the core group
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def at_version(self, version: str) -> Kind:
        return replace(self, version=version)

    def collection(self, namespace: str | None) -> str:
        root = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{root}/namespaces/{namespace}/{self.plural}"
        return f"{root}/{self.plural}"

    def path(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"

    @property
    def crd_name(self) -> str:
        """The CustomResourceDefinition's name, e.g. virtualservices.networking.istio.io."""
        return f"{self.plural}.{self.group}"


# Always served --------------------------------------------------------------------------------------------
MODEL_DEPLOYMENT = Kind(names.GROUP, names.VERSION, names.KIND, names.PLURAL)
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
HPA = Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SERVICE = Kind("", "v1", "Service", "services")
PDB = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
POD = Kind("", "v1", "Pod", "pods")
CLAIM = Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
EVENT = Kind("", "v1", "Event", "events")

# Routing: served only while their API's CRDs are installed, at the version they serve.
ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # preference order when several are served
DESTINATION_RULE = Kind(ISTIO_GROUP, "", "DestinationRule", "destinationrules")
VIRTUAL_SERVICE = Kind(ISTIO_GROUP, "", "VirtualService", "virtualservices")
ISTIO_KINDS = (DESTINATION_RULE, VIRTUAL_SERVICE)
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSIONS = ("v1",)  # weights, header matches and mirroring are all GA in v1
HTTP_ROUTE = Kind(GATEWAY_API_GROUP, "", "HTTPRoute", "httproutes")
GATEWAY_API_KINDS = (HTTP_ROUTE,)
GATEWAY = Kind(GATEWAY_API_GROUP, "v1", "Gateway", "gateways")  # only named in parentRefs, never written
ROUTING_KINDS = (*ISTIO_KINDS, *GATEWAY_API_KINDS)
VERSIONS_BY_GROUP = {ISTIO_GROUP: ISTIO_VERSIONS, GATEWAY_API_GROUP: GATEWAY_API_VERSIONS}

# KEDA: a ScaledObject per autoscaled track when custom signals are asked for and its CRD is installed.
# KEDA makes the HorizontalPodAutoscaler itself (owned by the ScaledObject, named keda-hpa-<name>).
SCALED_OBJECT = Kind("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
KEDA_HPA_PREFIX = "keda-hpa-"


def preferred_version(group: str, served: Iterable[str | None]) -> str | None:
    """The version of a routing API group to use among those served, or None when none is usable."""
    offered = set(served)
    return next((version for version in VERSIONS_BY_GROUP[group] if version in offered), None)


Summarizer = Callable[[Mapping[str, Any]], object]
ServedVersion = Callable[["Routers", bool], "str | None"]


@dataclass(frozen=True)
class WatchedKind:
    """A kind whose objects belong to one of our resources (by the owner kind's label), watched with the
    managed-by label selector; the cache keeps `summarize(body)` of each as its view."""

    kind: Kind
    summarize: Summarizer | None = None  # None: the cache keeps only the child's identity and hash
    owned: bool = True  # the operator applies these and deletes those it no longer wants
    foreign: bool = False  # a view is kept even when another controller owns the object (KEDA's HPAs)
    served: ServedVersion | None = None  # the version served now, None when not installed; unset: always

    def served_kind(self, routers: Routers, keda: bool) -> Kind | None:
        """The kind at the version the API server serves now, None while its API is not installed."""
        if self.served is None:
            return self.kind
        version = self.served(routers, keda)
        return self.kind.at_version(version) if version else None


def _keda_served(_routers: Routers, keda: bool) -> str | None:
    return SCALED_OBJECT.version if keda else None


def _routing(kind: Kind, summarize: Summarizer | None = None) -> WatchedKind:
    def served(routers: Routers, _keda: bool) -> str | None:
        return routers.version_of(kind)

    return WatchedKind(kind, summarize, served=served)


@dataclass(frozen=True)
class OwnerKind:
    """A kind of ours that owns children: the label that names the owner on each child and pod, the kinds
    it owns or observes, how a stored spec is read, and which claims a spec mounts (their phase is watched)."""

    kind: Kind
    owner_label: str
    watched: tuple[WatchedKind, ...]
    validate: Callable[[str, Any], object]  # (name, stored spec) -> the parsed spec, or a str saying why not
    claims: Callable[[Any], list[str]]  # a parsed spec -> the claims it mounts

    def watched_kind(self, kind_name: str) -> WatchedKind | None:
        return next((w for w in self.watched if w.kind.kind == kind_name), None)

    def owner_of(self, body: Mapping[str, Any]) -> tuple[str, str] | None:
        """(namespace, name) of the resource of this kind an object belongs to, by its owner label."""
        meta = body.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(self.owner_label)
        if not owner or not meta.get("namespace"):
            return None
        return (str(meta["namespace"]), str(owner))

    def controls(self, body: Mapping[str, Any]) -> bool:
        """Whether the object is ours: no controller, or one of this kind. KEDA copies a ScaledObject's labels
        onto the HPA it makes: that HPA carries our labels but belongs to KEDA (observed, never pruned)."""
        refs = (body.get("metadata") or {}).get("ownerReferences") or []
        controller = next((ref for ref in refs if ref.get("controller")), None)
        return controller is None or controller.get("kind") == self.kind.kind


def _model_deployment_claims(parsed: Any) -> list[str]:
    return parsed.claims if isinstance(parsed, spec.ModelDeploymentSpec) else []


MODEL_DEPLOYMENTS = OwnerKind(
    kind=MODEL_DEPLOYMENT,
    owner_label=names.LABEL_MD_NAME,
    watched=(
        WatchedKind(DEPLOYMENT, views.summarize_deployment),
        WatchedKind(HPA, views.summarize_hpa, foreign=True),
        WatchedKind(SERVICE),
        WatchedKind(PDB),
        _routing(DESTINATION_RULE),
        _routing(VIRTUAL_SERVICE),
        _routing(HTTP_ROUTE, views.summarize_route),
        WatchedKind(SCALED_OBJECT, views.summarize_scaled_object, served=_keda_served),
        WatchedKind(POD, views.summarize_pod, owned=False, foreign=True),
    ),
    validate=spec.validate,
    claims=_model_deployment_claims,
)

OWNER_KINDS: tuple[OwnerKind, ...] = (MODEL_DEPLOYMENTS,)


def watched_kinds(owners: Iterable[OwnerKind] = OWNER_KINDS) -> tuple[WatchedKind, ...]:
    """Each watched kind once, in declaration order (the first owner's declaration wins)."""
    found: dict[str, WatchedKind] = {}
    for owner in owners:
        for watched in owner.watched:
            found.setdefault(watched.kind.kind, watched)
    return tuple(found.values())


def child_kind_by_name(owners: Iterable[OwnerKind] = OWNER_KINDS) -> dict[str, Kind]:
    """The kinds the operator applies, by name (what a manifest's `kind` says)."""
    return {w.kind.kind: w.kind for w in watched_kinds(owners) if w.owned}
