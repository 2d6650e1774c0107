"""The API's names in one place: the resource, its children's API coordinates, labels and conditions.

Dependency-free on purpose (standard library only): the kopf handlers register their watches from it,
the controller prunes from it, `kube` resolves REST paths from it, and the `kubectl modeldeploy` plugin
imports it without pulling in the operator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

# The custom resource --------------------------------------------------------------------------------------
GROUP = "modeldeploy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)
CATEGORIES = ("all", "modeldeploy")

# Who writes: the server-side apply field manager and the Events' reporting component.
FIELD_MANAGER = "modeldeploy-operator"
REPORTING_COMPONENT = "modeldeploy-operator"

# Labels and annotations on every child -------------------------------------------------------------------
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_MD_NAME = "modeldeploy.dev/name"
LABEL_TRACK = "modeldeploy.dev/track"
SERVER_APP = "modeldeploy-server"
MANAGED_BY = "modeldeploy"
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
HASH_ANNOTATION = "modeldeploy.dev/applied-hash"

# Conditions, in the order people read them (Ready first, then the parts) --------------------------------
READY = "Ready"
MODEL_SOURCE_READY = "ModelSourceReady"
STABLE_READY = "StableReady"
CANARY_READY = "CanaryReady"
ROUTING_READY = "RoutingReady"
CONDITION_ORDER = (READY, MODEL_SOURCE_READY, STABLE_READY, CANARY_READY, ROUTING_READY)


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


MODEL_DEPLOYMENT = Kind(GROUP, VERSION, KIND, PLURAL)

# The children the operator applies and prunes, in apply order (workloads before routing).
DEPLOYMENT = Kind("apps", "v1", "Deployment", "deployments")
HPA = Kind("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SERVICE = Kind("", "v1", "Service", "services")
PDB = Kind("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets")
CORE_CHILD_KINDS = (DEPLOYMENT, HPA, SERVICE, PDB)

# Routing children: applied only while their API's CRDs are installed, at the version they serve.
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
CHILD_KINDS = (*CORE_CHILD_KINDS, *ROUTING_KINDS)
CHILD_KIND_BY_NAME = {kind.kind: kind for kind in CHILD_KINDS}

# What else the operator reads or writes.
POD = Kind("", "v1", "Pod", "pods")
CLAIM = Kind("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
LEASE = Kind("coordination.k8s.io", "v1", "Lease", "leases")
EVENT = Kind("", "v1", "Event", "events")


def crd_name(kind: Kind) -> str:
    """The CustomResourceDefinition's name, e.g. virtualservices.networking.istio.io."""
    return f"{kind.plural}.{kind.group}"


def preferred_version(group: str, served: Iterable[str | None]) -> str | None:
    """The version of a routing API group to use among those served, or None when none is usable."""
    offered = set(served)
    return next((version for version in VERSIONS_BY_GROUP[group] if version in offered), None)

