"""Operator settings, read once from the environment (the chart sets them) and from CLI flags.

Everything the pods get that is not in the resource (images, cluster domain) is an operator setting,
so one ModelDeployment manifest works unchanged across clusters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_SERVER_IMAGE = "ghcr.io/modeldeploy/modeldeploy-server:0.1.0-cpu"
DEFAULT_GPU_SERVER_IMAGE = "ghcr.io/modeldeploy/modeldeploy-server:0.1.0"


@dataclass(frozen=True)
class ServingConfig:
    """What the builders need besides the spec."""

    server_image: str = DEFAULT_SERVER_IMAGE
    gpu_server_image: str = DEFAULT_GPU_SERVER_IMAGE
    cluster_domain: str = "cluster.local"
    image_pull_policy: str = "IfNotPresent"
    pre_stop_seconds: int = 5
    termination_grace_seconds: int = 30


@dataclass(frozen=True)
class OperatorConfig:
    """How the operator runs: scope, concurrency, timing, leader election."""

    serving: ServingConfig = field(default_factory=ServingConfig)
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    workers: int = 4
    resync_seconds: float = 300.0
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    leader_election: bool = True
    lease_name: str = "modeldeploy-operator"
    lease_namespace: str = "default"
    lease_duration_seconds: float = 15.0
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0
    request_timeout_seconds: float = 30.0
    watch_server_timeout_seconds: int = 270
    watch_streaming: str = "auto"  # on, off, or auto (on from Kubernetes 1.34)
    log_level: str = "INFO"


def _namespace_of_pod() -> str | None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _flag(value: str) -> bool:
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def from_env(env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Read MODELDEPLOY_* variables; a malformed value raises ValueError naming the variable."""
    env = os.environ if env is None else env

    def get(name: str, default: str) -> str:
        return env.get(f"MODELDEPLOY_{name}", default)

    def number(name: str, default: float, low: float) -> float:
        raw = get(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"MODELDEPLOY_{name}: {raw!r} is not a number") from None
        if value < low:
            raise ValueError(f"MODELDEPLOY_{name}: must be at least {low}, got {raw}")
        return value

    try:
        leader_election = _flag(get("LEADER_ELECTION", "true"))
    except ValueError as error:
        raise ValueError(f"MODELDEPLOY_LEADER_ELECTION: {error}") from None
    serving = ServingConfig(
        server_image=get("SERVER_IMAGE", DEFAULT_SERVER_IMAGE),
        gpu_server_image=get("GPU_SERVER_IMAGE", DEFAULT_GPU_SERVER_IMAGE),
        cluster_domain=get("CLUSTER_DOMAIN", "cluster.local"),
        image_pull_policy=get("IMAGE_PULL_POLICY", "IfNotPresent"),
    )
    namespaces = tuple(ns.strip() for ns in get("NAMESPACES", "").split(",") if ns.strip())
    liveness = get("LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz") or None
    return OperatorConfig(
        serving=serving,
        namespaces=namespaces,
        workers=int(number("WORKERS", 4, 1)),
        resync_seconds=number("RESYNC_SECONDS", 300, 1),
        liveness_endpoint=liveness,
        leader_election=leader_election,
        lease_name=get("LEASE_NAME", "modeldeploy-operator"),
        lease_namespace=get("LEASE_NAMESPACE", "") or env.get("POD_NAMESPACE") or _namespace_of_pod() or "default",
        lease_duration_seconds=number("LEASE_DURATION_SECONDS", 15, 1),
        renew_deadline_seconds=number("RENEW_DEADLINE_SECONDS", 10, 0.5),
        retry_period_seconds=number("RETRY_PERIOD_SECONDS", 2, 0.1),
        request_timeout_seconds=number("REQUEST_TIMEOUT_SECONDS", 30, 1),
        log_level=get("LOG_LEVEL", "INFO").upper(),
        watch_streaming=_choice("WATCH_STREAMING", get("WATCH_STREAMING", "auto"), ("auto", "on", "off")),
    )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value.lower() not in allowed:
        raise ValueError(f"MODELDEPLOY_{name}: expected one of {', '.join(allowed)}, got {value!r}")
    return value.lower()
