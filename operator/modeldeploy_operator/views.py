"""Pure: the small views the watch cache keeps of each observed object, and how they are made.

Only what status and the decisions read is kept (a few counters and problems per object), never whole
bodies: at thousands of resources the operator must stay within its memory budget. `kinds.py` names the
summarizer of each watched kind; the cache stores whatever it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from modeldeploy_operator.names import LABEL_TRACK

MAX_MESSAGE = 2000
# Waiting reasons that mean the container will not come up without someone acting.
STUCK_WAITING_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
    "CreateContainerError", "InvalidImageName", "RunContainerError",
})


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentView:
    """The few fields of a Deployment that status needs (kept small: one per track in memory)."""

    name: str
    generation: int
    observed_generation: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    problem: Problem | None = None
    track: str = ""  # its modeldeploy.dev/track label


@dataclass(frozen=True)
class PodView:
    name: str
    track: str
    ready: bool
    problem: Problem | None = None
    ip: str = field(default="", compare=False)  # where a rollout's analysis reads the pod's /metrics


@dataclass(frozen=True)
class MetricView:
    """One metric as the HPA sees it: its current value and target, as the HPA reports them."""

    name: str  # cpu, or the external metric's name (KEDA: s<index>-prometheus)
    current: str | None
    target: str | None


@dataclass(frozen=True)
class HpaView:
    """The few fields of a HorizontalPodAutoscaler that status shows (ours or the one KEDA made)."""

    name: str
    track: str
    current_replicas: int
    desired_replicas: int
    metrics: tuple[MetricView, ...] = ()
    conditions: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)  # type -> status, reason, message


@dataclass(frozen=True)
class RouteParentView:
    """What one parent (a Gateway, or the Service for the mesh) said of the HTTPRoute's current generation."""

    parent: str  # "Gateway ns/name" or "Service name"
    accepted: bool
    problem: str = ""  # "Reason: message" of the first condition that is False


@dataclass(frozen=True)
class RouteView:
    """The HTTPRoute's status.parents, keeping only judgements of its current generation."""

    parents: tuple[RouteParentView, ...] = ()

    def verdict_of(self, parent: str) -> RouteParentView | None:
        return next((p for p in self.parents if p.parent == parent), None)


@dataclass(frozen=True)
class ScaledObjectView:
    name: str
    track: str
    ready: tuple[str, str, str] | None  # status, reason, message of its Ready condition; None before KEDA spoke




def clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def summarize_deployment(body: Mapping[str, Any]) -> DeploymentView:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {}) or {}
    problem = None
    for condition in status.get("conditions", []) or []:
        kind, state, reason = condition.get("type"), condition.get("status"), condition.get("reason", "")
        if kind == "ReplicaFailure" and state == "True":
            problem = Problem("ReplicaFailure", clip(condition.get("message", reason)))
        elif kind == "Progressing" and state == "False" and reason == "ProgressDeadlineExceeded":
            problem = problem or Problem("ProgressDeadlineExceeded", clip(condition.get("message", reason)))
    return DeploymentView(
        name=meta.get("name", ""),
        generation=int(meta.get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
        replicas=int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1),
        ready_replicas=int(status.get("readyReplicas", 0) or 0),
        updated_replicas=int(status.get("updatedReplicas", 0) or 0),
        problem=problem,
        track=(meta.get("labels") or {}).get(LABEL_TRACK, ""),
    )


def _metric_spec_name(metric: Mapping[str, Any]) -> str:
    kind = str(metric.get("type", ""))
    detail = metric.get(kind[:1].lower() + kind[1:], {}) or {}
    if kind in {"Resource", "ContainerResource"}:
        return str(detail.get("name", "resource"))
    return str((detail.get("metric") or {}).get("name", kind))


def _amount(values: Mapping[str, Any] | None) -> str | None:
    """An HPA MetricTarget/MetricValueStatus as one string: 42% for utilization, else the quantity."""
    if not values:
        return None
    if values.get("averageUtilization") is not None:
        return f"{values['averageUtilization']}%"
    for key in ("averageValue", "value"):
        if values.get(key) is not None:
            return quantity_text(str(values[key]))
    return None


def quantity_text(quantity: str) -> str:
    """Milli-quantities ("2500m") as plain numbers ("2.5"): what people compare against a target."""
    if quantity.endswith("m"):
        try:
            return f"{int(quantity[:-1]) / 1000:g}"
        except ValueError:
            return quantity
    return quantity


def summarize_hpa(body: Mapping[str, Any]) -> HpaView:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}) or {}, body.get("status", {}) or {}
    targets = {_metric_spec_name(m): _amount((m.get(_key(m)) or {}).get("target")) for m in spec.get("metrics") or []}
    currents = {_metric_spec_name(m): _amount((m.get(_key(m)) or {}).get("current"))
                for m in status.get("currentMetrics") or []}
    metrics = tuple(MetricView(name, currents.get(name), target) for name, target in targets.items())
    conditions = {str(c.get("type")): (str(c.get("status")), str(c.get("reason", "")), str(c.get("message", "")))
                  for c in status.get("conditions") or []}
    return HpaView(
        name=meta.get("name", ""),
        track=(meta.get("labels") or {}).get(LABEL_TRACK, ""),
        current_replicas=int(status.get("currentReplicas", 0) or 0),
        desired_replicas=int(status.get("desiredReplicas", 0) or 0),
        metrics=metrics,
        conditions=conditions,
    )


def route_parent_name(kind: str, name: str, namespace: str) -> str:
    return f"{kind} {namespace}/{name}" if kind == "Gateway" else f"{kind} {name}"


def summarize_route(body: Mapping[str, Any]) -> RouteView:
    """Each parent's verdict on this generation; a verdict on an older generation says nothing about this one."""
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    generation, namespace = int(meta.get("generation", 0) or 0), str(meta.get("namespace", ""))
    parents: list[RouteParentView] = []
    for reported in status.get("parents") or []:
        ref = reported.get("parentRef") or {}
        conditions = [c for c in reported.get("conditions") or [] if c.get("type") in ("Accepted", "ResolvedRefs")]
        if not conditions or any(int(c.get("observedGeneration", generation) or 0) < generation for c in conditions):
            continue
        refused = next((c for c in conditions if c.get("status") != "True"), None)
        parent = route_parent_name(str(ref.get("kind") or "Gateway"), str(ref.get("name", "")),
                                   str(ref.get("namespace") or namespace))
        problem = clip(f"{refused.get('reason', '')}: {refused.get('message', '')}") if refused else ""
        parents.append(RouteParentView(parent, refused is None, problem))
    return RouteView(tuple(parents))


def _key(metric: Mapping[str, Any]) -> str:
    kind = str(metric.get("type", ""))
    return kind[:1].lower() + kind[1:]


def summarize_scaled_object(body: Mapping[str, Any]) -> ScaledObjectView:
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    ready = next(((str(c.get("status")), str(c.get("reason", "")), str(c.get("message", "")))
                  for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return ScaledObjectView(meta.get("name", ""), (meta.get("labels") or {}).get(LABEL_TRACK, ""), ready)


def _container_problem(pod_name: str, container: Mapping[str, Any]) -> Problem | None:
    name = container.get("name", "")
    state = container.get("state", {}) or {}
    last = container.get("lastState", {}) or {}
    terminated = state.get("terminated") or last.get("terminated")
    waiting = state.get("waiting") or {}
    if terminated and (terminated.get("message") or terminated.get("exitCode", 0) != 0):
        detail = terminated.get("message") or terminated.get("reason") or "no message"
        return Problem(
            "ServerTerminated",
            clip(f"pod {pod_name}: container {name} terminated (exit code {terminated.get('exitCode')}): {detail}"),
        )
    if waiting.get("reason") in STUCK_WAITING_REASONS:
        return Problem(waiting["reason"], clip(f"pod {pod_name}: container {name}: {waiting.get('message', '')}"))
    return None


def summarize_pod(body: Mapping[str, Any]) -> PodView:
    """Only not-ready pods can carry a problem: a container that crashed once and recovered is fine."""
    meta, status = body.get("metadata", {}), body.get("status", {}) or {}
    name = meta.get("name", "")
    track = (meta.get("labels") or {}).get(LABEL_TRACK, "")
    conditions = {c.get("type"): c for c in status.get("conditions", []) or []}
    ready = conditions.get("Ready", {}).get("status") == "True" and not meta.get("deletionTimestamp")
    problem = None
    if not ready and not meta.get("deletionTimestamp"):
        containers = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        for container in containers:
            problem = _container_problem(name, container)
            if problem:
                break
        scheduled = conditions.get("PodScheduled", {})
        if problem is None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            problem = Problem("Unschedulable", clip(f"pod {name}: {scheduled.get('message', '')}"))
        if problem is None and status.get("phase") == "Failed":
            problem = Problem(status.get("reason") or "PodFailed", clip(f"pod {name}: {status.get('message', '')}"))
    return PodView(name=name, track=track, ready=ready, problem=problem, ip=str(status.get("podIP") or ""))


def claim_phase(body: Mapping[str, Any]) -> str:
    return str((body.get("status") or {}).get("phase") or "Pending")

