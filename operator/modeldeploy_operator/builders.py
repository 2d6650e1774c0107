"""Pure functions from a validated spec to the children's manifests, as plain dicts.

Nothing here talks to the API, reads the clock or the environment: the same input always gives the
same output, which is what makes server-side apply idempotent and the unit tests plain dict asserts.
Each child carries a hash of its own content (``modeldeploy.dev/applied-hash``) so the controller can
tell from its watch cache, without a request, whether a child already matches what it would apply.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modeldeploy_operator import names
from modeldeploy_operator import spec as specs
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.names import (
    HASH_ANNOTATION,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MD_NAME,
    LABEL_NAME,
    LABEL_TRACK,
    MANAGED_BY,
    SERVER_APP,
    Kind,
)

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = ("stable", "canary")

SERVER_PORT = 8080
SERVICE_PORT = 80
MODELS_MOUNT = "/models"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
CONTAINER_NAME = "server"

GPU_TOLERATION = {"key": specs.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The identity of the ModelDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


@dataclass(frozen=True)
class Routers:
    """The routing APIs installed in the cluster, each at the version it serves (None: not installed)."""

    istio: str | None = None
    gateway_api: str | None = None

    def version_of(self, kind: Kind) -> str | None:
        """The served version of a routing kind, None when its API is not installed."""
        return self.istio if kind.group == names.ISTIO_GROUP else self.gateway_api


RouterName = Literal["Istio", "GatewayAPI"]


@dataclass(frozen=True)
class Router:
    """The API chosen to route one ModelDeployment's requests, at the version the cluster serves."""

    name: RouterName
    version: str

    def api_version(self, kind: Kind) -> str:
        return kind.at_version(self.version).api_version


def choose_router(spec: specs.ModelDeploymentSpec, routers: Routers) -> Router | None:
    """The spec's backend if installed; Auto prefers Istio (it also routes in-mesh calls to the Service's own
    name), then the Gateway API. None: the Service alone spreads the requests."""
    wanted = spec.routing_backend
    if wanted in {"Auto", "Istio"} and routers.istio is not None:
        return Router("Istio", routers.istio)
    if wanted in {"Auto", "GatewayAPI"} and routers.gateway_api is not None:
        return Router("GatewayAPI", routers.gateway_api)
    return None


def labels(owner: Owner, track: Track | None = None) -> dict[str, str]:
    result = {
        LABEL_NAME: SERVER_APP,
        LABEL_INSTANCE: owner.name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MD_NAME: owner.name,
    }
    if track is not None:
        result[LABEL_TRACK] = track
    return result


def selector_labels(owner: Owner, track: Track | None = None) -> dict[str, str]:
    """The immutable part: a Deployment's selector can never change, so keep it minimal."""
    result = {LABEL_NAME: SERVER_APP, LABEL_INSTANCE: owner.name}
    if track is not None:
        result[LABEL_TRACK] = track
    return result


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_name(owner: Owner, track: Track) -> str:
    return f"{owner.name}-{track}"


def service_host(owner: Owner, config: ServingConfig) -> str:
    return f"{owner.name}.{owner.namespace}.svc.{config.cluster_domain}"


def url(owner: Owner, config: ServingConfig) -> str:
    return f"http://{service_host(owner, config)}"


def content_hash(manifest: Manifest) -> str:
    """A short digest of everything we apply, annotation excluded."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def _finish(manifest: Manifest) -> Manifest:
    """Stamp the content hash on the child (computed before the stamp exists)."""
    digest = content_hash(manifest)
    manifest["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return manifest


def _metadata(owner: Owner, name: str, track: Track | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, track),
        "ownerReferences": [owner_reference(owner)],
    }


def cpu_cores(quantity: int | str | None) -> float | None:
    """Parse a CPU quantity ("500m", "2", 4) into cores; None when absent or not a CPU amount."""
    if quantity is None:
        return None
    if isinstance(quantity, int):
        return float(quantity)
    text = quantity.strip()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 1000
        return float(text)
    except ValueError:
        return None


def _intra_op_threads(resources: specs.Resources) -> int | None:
    """onnxruntime otherwise sizes its pool to the node's cores, oversubscribing the container's CPU."""
    cores = cpu_cores((resources.limits or {}).get("cpu")) or cpu_cores((resources.requests or {}).get("cpu"))
    if cores is None:
        return None
    return max(1, math.ceil(cores))


def active_tracks(spec: specs.ModelDeploymentSpec) -> tuple[Track, ...]:
    """The tracks that run: stable, and canary while one is configured."""
    return TRACKS if spec.canary is not None else ("stable",)


def model_source(spec: specs.ModelDeploymentSpec, track: Track) -> specs.ModelSource:
    if track == "canary":
        assert spec.canary is not None
        return spec.canary.source
    return spec.model


def track_replicas(spec: specs.ModelDeploymentSpec, track: Track) -> specs.Replicas:
    return spec.canary_replicas if track == "canary" else spec.stable_replicas


def server_env(owner: Owner, spec: specs.ModelDeploymentSpec, track: Track) -> list[dict[str, str]]:
    """The server contract: every flag of `python -m modeldeploy_server` has an env twin."""
    source = model_source(spec, track)
    env = [
        {"name": "MODEL_PATH", "value": f"{MODELS_MOUNT}/{source.path}"},
        {"name": "MODEL_ROOT", "value": MODELS_MOUNT},
        {"name": "MODEL_NAME", "value": owner.name},
        {"name": "PORT", "value": str(SERVER_PORT)},
        {"name": "TERMINATION_MESSAGE_PATH", "value": TERMINATION_MESSAGE_PATH},
    ]
    if source.sha256:
        env.append({"name": "MODEL_SHA256", "value": source.sha256.lower()})
    if spec.batching is not None:
        if spec.batching.max_batch_size is not None:
            env.append({"name": "MAX_BATCH_SIZE", "value": str(spec.batching.max_batch_size)})
        if spec.batching.max_delay_ms is not None:
            env.append({"name": "MAX_BATCH_DELAY_MS", "value": str(spec.batching.max_delay_ms)})
    threads = _intra_op_threads(spec.effective_resources)
    if threads is not None:
        env.append({"name": "INTRA_OP_THREADS", "value": str(threads)})
    if spec.gpus > 0:
        env.append({"name": "EXECUTION_PROVIDERS", "value": "cuda,cpu"})
    return env


def _resources(spec: specs.ModelDeploymentSpec) -> dict[str, Any]:
    resources = spec.effective_resources
    result: dict[str, Any] = {}
    if resources.requests:
        result["requests"] = dict(resources.requests)
    limits = dict(resources.limits or {})
    if spec.gpus > 0:
        limits[specs.GPU_RESOURCE] = spec.gpus
    if limits:
        result["limits"] = limits
    return result


def _probe(path: str, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def pod_template(owner: Owner, spec: specs.ModelDeploymentSpec, track: Track, config: ServingConfig) -> Manifest:
    source = model_source(spec, track)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.gpu_server_image if spec.gpus > 0 else config.server_image,
        "imagePullPolicy": config.image_pull_policy,
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "env": server_env(owner, spec, track),
        "resources": _resources(spec),
        # A slow model load must not be killed by liveness: the startup probe covers up to 10 minutes.
        # Probed every second (it costs one local HTTP GET), so a pod is ready within about a second of
        # loading its model rather than on the next 5 s tick.
        "startupProbe": _probe("/health/live", period=1, failures=600, timeout=5),
        "livenessProbe": _probe("/health/live", period=10, failures=3, timeout=5),
        "readinessProbe": _probe("/health/ready", period=2, failures=3, timeout=2),
        # Let in-flight requests finish while the endpoints controller takes the pod out of rotation.
        "lifecycle": {"preStop": {"sleep": {"seconds": config.pre_stop_seconds}}},
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The server writes its load error there; when it could not, the log tail still reaches status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "model", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, the only writable path
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the server never talks to the API
        "enableServiceLinks": False,  # hundreds of Services in a namespace would flood the env
        "securityContext": RESTRICTED_POD_SECURITY,
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "containers": [container],
        "volumes": [
            {"name": "model", "persistentVolumeClaim": {"claimName": source.pvc, "readOnly": True}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    tolerations = [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []]
    if spec.gpus > 0 and GPU_TOLERATION not in tolerations:
        tolerations.append(dict(GPU_TOLERATION))
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.affinity:
        pod_spec["affinity"] = spec.affinity
    return {
        "metadata": {
            "labels": labels(owner, track),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVER_PORT),
                "prometheus.io/path": "/metrics",
                "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
            },
        },
        "spec": pod_spec,
    }


def deployment(owner: Owner, spec: specs.ModelDeploymentSpec, track: Track, config: ServingConfig) -> Manifest:
    replicas = track_replicas(spec, track)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner, track)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": 600,
        "template": pod_template(owner, spec, track, config),
    }
    if not replicas.autoscaled:
        # Only without an HPA: applying replicas would fight the autoscaler on every reconcile.
        deployment_spec["replicas"] = replicas.effective_min
    return _finish({
        "apiVersion": names.DEPLOYMENT.api_version,
        "kind": names.DEPLOYMENT.kind,
        "metadata": _metadata(owner, child_name(owner, track), track),
        "spec": deployment_spec,
    })


def horizontal_pod_autoscaler(owner: Owner, spec: specs.ModelDeploymentSpec, track: Track) -> Manifest | None:
    replicas = track_replicas(spec, track)
    if not replicas.autoscaled:
        return None
    return _finish({
        "apiVersion": names.HPA.api_version,
        "kind": names.HPA.kind,
        "metadata": _metadata(owner, child_name(owner, track), track),
        "spec": {
            "scaleTargetRef": {"apiVersion": names.DEPLOYMENT.api_version, "kind": names.DEPLOYMENT.kind,
                               "name": child_name(owner, track)},
            "minReplicas": replicas.effective_min,
            "maxReplicas": replicas.effective_max,
            "metrics": [{
                "type": "Resource",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": spec.cpu_target}},
            }],
        },
    })


def service_tracks(spec: specs.ModelDeploymentSpec, router: Router | None) -> tuple[Track, ...]:
    """Which tracks the main Service sends to: all with Istio (subsets split), else by the requested weight
    (a Gateway API route splits at the gateway, through the per-track Services)."""
    if spec.canary is None or (router is not None and router.name == "Istio"):
        return active_tracks(spec)
    if spec.canary_weight == 0:
        return ("stable",)
    if spec.canary_weight == 100:
        return ("canary",)
    return TRACKS


def _service(owner: Owner, name: str, selector: dict[str, str], track: Track | None = None) -> Manifest:
    return _finish({
        "apiVersion": names.SERVICE.api_version,
        "kind": names.SERVICE.kind,
        "metadata": _metadata(owner, name, track),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{
                "name": "http",
                "port": SERVICE_PORT,
                "targetPort": "http",
                "protocol": "TCP",
                "appProtocol": "http",
            }],
        },
    })


def service(owner: Owner, spec: specs.ModelDeploymentSpec, router: Router | None) -> Manifest:
    tracks = service_tracks(spec, router)
    return _service(owner, owner.name, selector_labels(owner, tracks[0] if len(tracks) == 1 else None))


def track_service(owner: Owner, track: Track) -> Manifest:
    """One track's own Service (NAME-stable, NAME-canary): what an HTTPRoute's backendRefs weigh."""
    return _service(owner, child_name(owner, track), selector_labels(owner, track), track)


def pod_disruption_budget(owner: Owner) -> Manifest:
    return _finish({
        "apiVersion": names.PDB.api_version,
        "kind": names.PDB.kind,
        "metadata": _metadata(owner, owner.name),
        "spec": {
            # One pod at a time: drains proceed even with a single replica, never all at once.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            # A crash-looping pod must never block a node drain.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    })


def destination_rule(owner: Owner, router: Router, config: ServingConfig) -> Manifest:
    return _finish({
        "apiVersion": router.api_version(names.DESTINATION_RULE),
        "kind": names.DESTINATION_RULE.kind,
        "metadata": _metadata(owner, owner.name),
        "spec": {
            "host": service_host(owner, config),
            "subsets": [{"name": track, "labels": {LABEL_TRACK: track}} for track in TRACKS],
        },
    })


def weights(spec: specs.ModelDeploymentSpec) -> dict[str, int]:
    canary = spec.canary_weight if spec.canary is not None else 0
    return {"stable": 100 - canary, "canary": canary}


# Rule names: what `kubectl get -o yaml` shows and what the proxies' stats are keyed by.
HEADER_RULE = "canary-headers"
WEIGHT_RULE = "traffic"


def virtual_service(owner: Owner, spec: specs.ModelDeploymentSpec, router: Router, config: ServingConfig) -> Manifest:
    """Header matches first (to the canary whatever the weights), then the weighted split, which mirrors a
    share of its requests to the canary when shadowing."""
    host = service_host(owner, config)
    split = weights(spec)
    http: list[dict[str, Any]] = []
    if spec.canary_headers:
        http.append({
            "name": HEADER_RULE,
            "match": [{"headers": {h.name: {"exact": h.exact} if h.exact is not None else {"regex": h.regex}}}
                      for h in spec.canary_headers],
            "route": [{"destination": {"host": host, "subset": "canary"}}],
        })
    weighted: dict[str, Any] = {
        "name": WEIGHT_RULE,
        "route": [{"destination": {"host": host, "subset": track}, "weight": split[track]}
                  for track in active_tracks(spec)],
    }
    if spec.mirror_percent:
        weighted["mirror"] = {"host": host, "subset": "canary"}
        weighted["mirrorPercentage"] = {"value": float(spec.mirror_percent)}
    http.append(weighted)
    vs_spec: dict[str, Any] = {"hosts": [host, *(h for h in spec.hosts if h != host)], "http": http}
    if spec.gateways:
        vs_spec["gateways"] = [*spec.gateways, "mesh"]
    return _finish({
        "apiVersion": router.api_version(names.VIRTUAL_SERVICE),
        "kind": names.VIRTUAL_SERVICE.kind,
        "metadata": _metadata(owner, owner.name),
        "spec": vs_spec,
    })


def parent_refs(owner: Owner, spec: specs.ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The spec's Gateways; without any, the main Service itself (GAMMA: the mesh routes calls to it)."""
    refs: list[dict[str, Any]] = []
    for gateway in spec.gateways:
        namespace, _, name = gateway.rpartition("/")
        ref = {"group": names.GATEWAY.group, "kind": names.GATEWAY.kind, "name": name}
        if namespace:
            ref["namespace"] = namespace
        refs.append(ref)
    return refs or [{"group": "", "kind": names.SERVICE.kind, "name": owner.name, "port": SERVICE_PORT}]


def _backend_ref(owner: Owner, track: Track, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": names.SERVICE.kind, "name": child_name(owner, track),
                           "port": SERVICE_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def http_route(owner: Owner, spec: specs.ModelDeploymentSpec, router: Router) -> Manifest:
    """The Gateway API's form of the same routing: rules over the per-track Services. A header rule is more
    specific than the catch-all weighted rule, so the Gateway API's precedence tries it first."""
    split = weights(spec)
    rules: list[dict[str, Any]] = []
    if spec.canary_headers:
        rules.append({
            "name": HEADER_RULE,
            "matches": [{"headers": [{"type": "Exact", "name": h.name, "value": h.exact} if h.exact is not None
                                     else {"type": "RegularExpression", "name": h.name, "value": h.regex}]}
                        for h in spec.canary_headers],
            "backendRefs": [_backend_ref(owner, "canary")],
        })
    weighted: dict[str, Any] = {
        "name": WEIGHT_RULE,
        "backendRefs": [_backend_ref(owner, track, split[track]) for track in active_tracks(spec)],
    }
    if spec.mirror_percent:
        weighted["filters"] = [{
            "type": "RequestMirror",
            "requestMirror": {"backendRef": _backend_ref(owner, "canary"), "percent": spec.mirror_percent},
        }]
    rules.append(weighted)
    route_spec: dict[str, Any] = {"parentRefs": parent_refs(owner, spec), "rules": rules}
    if spec.hosts:
        route_spec["hostnames"] = spec.hosts
    return _finish({
        "apiVersion": router.api_version(names.HTTP_ROUTE),
        "kind": names.HTTP_ROUTE.kind,
        "metadata": _metadata(owner, owner.name),
        "spec": route_spec,
    })


def routing_children(owner: Owner, spec: specs.ModelDeploymentSpec, config: ServingConfig,
                     router: Router | None) -> list[Manifest]:
    """The routing objects of the chosen API (none without one)."""
    if router is None:
        return []
    if router.name == "Istio":
        return [destination_rule(owner, router, config), virtual_service(owner, spec, router, config)]
    return [*(track_service(owner, track) for track in active_tracks(spec)), http_route(owner, spec, router)]


def routing_object_names(owner: Owner, spec: specs.ModelDeploymentSpec, router: Router) -> list[str]:
    """Kind/name of what `routing_children` writes, for the status (without building the manifests)."""
    if router.name == "Istio":
        return [f"{names.VIRTUAL_SERVICE.kind}/{owner.name}", f"{names.DESTINATION_RULE.kind}/{owner.name}"]
    return [f"{names.HTTP_ROUTE.kind}/{owner.name}",
            *(f"{names.SERVICE.kind}/{child_name(owner, track)}" for track in active_tracks(spec))]


def desired_children(
    owner: Owner, spec: specs.ModelDeploymentSpec, config: ServingConfig, routers: Routers
) -> list[Manifest]:
    """Everything that should exist for this resource, in apply order (workloads before routing)."""
    router = choose_router(spec, routers)
    children: list[Manifest] = []
    for track in active_tracks(spec):
        children.append(deployment(owner, spec, track, config))
        hpa = horizontal_pod_autoscaler(owner, spec, track)
        if hpa is not None:
            children.append(hpa)
    children.append(service(owner, spec, router))
    children.append(pod_disruption_budget(owner))
    children.extend(routing_children(owner, spec, config, router))
    return children


def claims(spec: specs.ModelDeploymentSpec) -> list[str]:
    """The claims the pods mount, in track order, without repeats."""
    claim_names = [model_source(spec, track).pvc for track in active_tracks(spec)]
    return list(dict.fromkeys(claim_names))
