"""Pure: a validated spec -> the manifests of its children, as plain dicts: the serving Deployments (pod
template, probes, restricted security), the PodDisruptionBudget, and the whole desired set in apply order.

Nothing here talks to the API, reads the clock or the environment: the same input always gives the
same output, which is what makes server-side apply idempotent and the unit tests plain dict asserts.
Services and routing objects are built in `routing.py`, autoscalers in `autoscalers.py`.
"""

from __future__ import annotations

import math
from typing import Any

from modeldeploy_operator import autoscalers, kinds, routing
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.manifests import (
    Manifest,
    Owner,
    Track,
    active_tracks,
    child_manifest,
    child_name,
    labels,
    model_source,
    selector_labels,
    track_replicas,
)
from modeldeploy_operator.names import SERVER_HTTP_PORT
from modeldeploy_operator.routers import Routers, choose_router
from modeldeploy_operator.spec import GPU_RESOURCE, ModelDeploymentSpec, Resources

MODELS_MOUNT = "/models"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
CONTAINER_NAME = "server"

GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


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


def _intra_op_threads(resources: Resources) -> int | None:
    """onnxruntime otherwise sizes its pool to the node's cores, oversubscribing the container's CPU."""
    cores = cpu_cores((resources.limits or {}).get("cpu")) or cpu_cores((resources.requests or {}).get("cpu"))
    if cores is None:
        return None
    return max(1, math.ceil(cores))


def server_env(owner: Owner, spec: ModelDeploymentSpec, track: Track) -> list[dict[str, str]]:
    """The server contract: every flag of `python -m modeldeploy_server` has an env twin."""
    source = model_source(spec, track)
    env = [
        {"name": "MODEL_PATH", "value": f"{MODELS_MOUNT}/{source.path}"},
        {"name": "MODEL_ROOT", "value": MODELS_MOUNT},
        {"name": "MODEL_NAME", "value": owner.name},
        {"name": "PORT", "value": str(SERVER_HTTP_PORT)},
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


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    resources = spec.effective_resources
    result: dict[str, Any] = {}
    if resources.requests:
        result["requests"] = dict(resources.requests)
    limits = dict(resources.limits or {})
    if spec.gpus > 0:
        limits[GPU_RESOURCE] = spec.gpus
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


def pod_template(owner: Owner, spec: ModelDeploymentSpec, track: Track, config: ServingConfig) -> Manifest:
    source = model_source(spec, track)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": config.gpu_server_image if spec.gpus > 0 else config.server_image,
        "imagePullPolicy": config.image_pull_policy,
        "ports": [{"name": "http", "containerPort": SERVER_HTTP_PORT, "protocol": "TCP"}],
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
                "prometheus.io/port": str(SERVER_HTTP_PORT),
                "prometheus.io/path": "/metrics",
                "kubectl.kubernetes.io/default-container": CONTAINER_NAME,
            },
        },
        "spec": pod_spec,
    }


def deployment(owner: Owner, spec: ModelDeploymentSpec, track: Track, config: ServingConfig) -> Manifest:
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
    return child_manifest(kinds.DEPLOYMENT, owner, child_name(owner, track), deployment_spec, track=track)


def pod_disruption_budget(owner: Owner) -> Manifest:
    return child_manifest(kinds.PDB, owner, owner.name, {
        # One pod at a time: drains proceed even with a single replica, never all at once.
        "maxUnavailable": 1,
        "selector": {"matchLabels": selector_labels(owner)},
        # A crash-looping pod must never block a node drain.
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    })


def desired_children(
    owner: Owner, spec: ModelDeploymentSpec, config: ServingConfig, routers: Routers, keda: bool = False
) -> list[Manifest]:
    """Everything that should exist for this resource, in apply order (workloads before routing)."""
    router = choose_router(spec, routers)
    children: list[Manifest] = []
    for track in active_tracks(spec):
        children.append(deployment(owner, spec, track, config))
        for autoscaler in (autoscalers.horizontal_pod_autoscaler(owner, spec, track, config, keda),
                           autoscalers.scaled_object(owner, spec, track, config, keda)):
            if autoscaler is not None:
                children.append(autoscaler)
    children.append(routing.service(owner, spec, router))
    children.append(pod_disruption_budget(owner))
    children.extend(routing.routing_children(owner, spec, config, router))
    return children


