"""Pure: each track's autoscaler (a CPU HorizontalPodAutoscaler, or a KEDA ScaledObject for the custom
signals) and the policy that picks between them; the PromQL the ScaledObjects read."""

from __future__ import annotations

from typing import Any

from modeldeploy_operator import kinds
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.manifests import Manifest, Owner, Track, child_manifest, child_name, track_replicas
from modeldeploy_operator.spec import (
    SCALE_DOWN_DEFAULTS,
    SCALE_UP_DEFAULTS,
    ModelDeploymentSpec,
    ScalingStep,
    Signal,
    StepDefaults,
)


def _step(step: ScalingStep | None, defaults: StepDefaults, select: str) -> dict[str, Any]:
    step = step or ScalingStep()
    pods, percent = step.max_pods, step.max_percent
    if pods is None and percent is None:
        pods, percent = defaults.max_pods, defaults.max_percent
    period = step.period_seconds if step.period_seconds is not None else defaults.period
    policies = []
    if pods is not None:
        policies.append({"type": "Pods", "value": pods, "periodSeconds": period})
    if percent is not None:
        policies.append({"type": "Percent", "value": percent, "periodSeconds": period})
    window = step.stabilization_window_seconds
    return {
        "stabilizationWindowSeconds": window if window is not None else defaults.window,
        "selectPolicy": select,
        "policies": policies,
    }


def scaling_behavior(spec: ModelDeploymentSpec) -> dict[str, Any]:
    """autoscaling/v2 behavior, always spelled out: the same for an HPA of ours and one KEDA makes.
    Scale-up takes the larger of its limits (capacity is late already), scale-down the smaller."""
    autoscaling = spec.effective_autoscaling
    return {
        "scaleUp": _step(autoscaling.scale_up, SCALE_UP_DEFAULTS, "Max"),
        "scaleDown": _step(autoscaling.scale_down, SCALE_DOWN_DEFAULTS, "Min"),
    }


def autoscaler_fallback(spec: ModelDeploymentSpec, config: ServingConfig, keda: bool) -> str | None:
    """Why the custom signals asked for cannot be used (the track then scales on CPU), or None."""
    if not spec.effective_autoscaling.custom_signals:
        return None
    if not keda:
        return "KEDANotInstalled"
    if not config.prometheus_url:
        return "PrometheusNotConfigured"
    return None


def uses_keda(spec: ModelDeploymentSpec, config: ServingConfig, keda: bool) -> bool:
    return bool(spec.effective_autoscaling.custom_signals) and autoscaler_fallback(spec, config, keda) is None


def hpa_name(owner: Owner, track: Track, keda_used: bool) -> str:
    """The HorizontalPodAutoscaler that moves a track: ours, or the one KEDA makes for our ScaledObject."""
    name = child_name(owner, track)
    return f"{kinds.KEDA_HPA_PREFIX}{name}" if keda_used else name


def scale_target(owner: Owner, track: Track) -> dict[str, str]:
    """The track's Deployment, as an HPA or a ScaledObject names what it scales."""
    return {"apiVersion": kinds.DEPLOYMENT.api_version, "kind": kinds.DEPLOYMENT.kind, "name": child_name(owner, track)}


def _cpu_metric(utilization: int) -> dict[str, Any]:
    return {"type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": utilization}}}


def horizontal_pod_autoscaler(
    owner: Owner, spec: ModelDeploymentSpec, track: Track, config: ServingConfig, keda: bool = False
) -> Manifest | None:
    """A CPU HPA, for a track with room to move whose signals need no KEDA (or whose KEDA is missing)."""
    replicas = track_replicas(spec, track)
    if not replicas.autoscaled or uses_keda(spec, config, keda):
        return None
    return child_manifest(kinds.HPA, owner, child_name(owner, track), {
        "scaleTargetRef": scale_target(owner, track),
        "minReplicas": replicas.effective_min,
        "maxReplicas": replicas.effective_max,
        "metrics": [_cpu_metric(spec.effective_autoscaling.fallback_cpu_utilization)],
        "behavior": scaling_behavior(spec),
    }, track=track)


def series_selector(owner: Owner, track: Track) -> str:
    """The serving pods' series of one track, as the chart's ServiceMonitor labels them."""
    return f'namespace="{owner.namespace}",modeldeployment="{owner.name}",track="{track}"'


def signal_query(signal: Signal, owner: Owner, track: Track, window: str) -> str:
    """PromQL for one signal over a track's pods; 0 when there is nothing to measure (no pods, no requests)
    rather than an empty answer or NaN, so an idle track reads as idle, not as missing."""
    selector = series_selector(owner, track)
    if signal.name == "concurrency":
        query = f"sum(modeldeploy_requests_in_flight{{{selector}}})"
    elif signal.name == "requestsPerSecond":
        query = f"sum(rate(modeldeploy_requests_total{{{selector}}}[{window}]))"
    elif signal.name == "queueTimeP95Ms":
        buckets = f"sum by (le) (rate(modeldeploy_queue_wait_seconds_bucket{{{selector}}}[{window}]))"
        query = f"1000 * histogram_quantile(0.95, {buckets}) > 0"
    else:
        raise ValueError(f"unknown autoscaling signal {signal.name!r}")
    return f"({query}) or vector(0)"


def scaled_object(
    owner: Owner, spec: ModelDeploymentSpec, track: Track, config: ServingConfig, keda: bool
) -> Manifest | None:
    """A KEDA ScaledObject for an autoscaled track with custom signals: KEDA makes and owns the HPA.

    Per-pod signals are totals over the track with an AverageValue target (the HPA divides by the pod
    count); queue time is one value for the track (Value target: replicas grow by current/target).
    No `fallback` replicas: when the metrics cannot be read the HPA keeps the count where it is.
    """
    replicas = track_replicas(spec, track)
    if not replicas.autoscaled or not uses_keda(spec, config, keda):
        return None
    autoscaling = spec.effective_autoscaling
    triggers: list[dict[str, Any]] = [
        {
            "type": "prometheus",
            "name": signal.name.lower(),
            "metricType": "AverageValue" if signal.per_pod else "Value",
            "metadata": {
                "serverAddress": str(config.prometheus_url),
                "query": signal_query(signal, owner, track, config.metrics_window),
                "threshold": str(signal.target),
                "ignoreNullValues": "false",
            },
        }
        for signal in autoscaling.custom_signals
    ]
    if autoscaling.cpu_utilization is not None:
        triggers.append({"type": "cpu", "metricType": "Utilization",
                         "metadata": {"value": str(autoscaling.cpu_utilization)}})
    return child_manifest(kinds.SCALED_OBJECT, owner, child_name(owner, track), {
        "scaleTargetRef": scale_target(owner, track),
        "minReplicaCount": replicas.effective_min,
        "maxReplicaCount": replicas.effective_max,
        "pollingInterval": 15,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": scaling_behavior(spec)}},
        "triggers": triggers,
    }, track=track)
