"""The ModelDeployment's status as pydantic models: the schema of `status` in the generated CRD, and the
rollout's state (`RolloutStatus`), which the rollout's decisions read and write directly.

Written only by the operator, through the status subresource (the plugin's rollout commands aside).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, PlainSerializer, SerializerFunctionWrapHandler, model_serializer, model_validator

from modeldeploy_operator.clock import rfc3339
from modeldeploy_operator.rollout_commands import Command, RolloutFacts
from modeldeploy_operator.spec import ApiModel

# A timestamp as status holds it: RFC 3339 in UTC, to the second.
Timestamp = Annotated[dt.datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
Status = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A condition in the shape of the Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(
        max_length=316,
        description="Ready, ModelSourceReady, StableReady, CanaryReady, RoutingReady or AutoscalingReady.",
    )
    status: Status = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(max_length=32768, description="What happened, for people.")
    observed_generation: int | None = Field(
        default=None, description="The spec generation this condition was computed for."
    )
    last_transition_time: str = Field(
        description="When the status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )


class Traffic(ApiModel):
    """The split of requests between the tracks, in percent."""

    stable: int = Field(description="Percent of requests served by the stable model.")
    canary: int = Field(description="Percent of requests served by the canary model.")


class RoutingStatus(ApiModel):
    """Which API routes the requests and what it was told (the weights are in status.traffic)."""

    backend: str = Field(description="Istio, GatewayAPI, or None when the Service alone spreads requests.")
    resources: list[str] | None = Field(
        default=None, description="The routing objects written, e.g. HTTPRoute/sentiment.",
        json_schema_extra={"maxItems": 8},
    )
    canary_headers: list[str] | None = Field(
        default=None, description="Header matches sent to the canary (name: value, or name ~ regex).",
        json_schema_extra={"maxItems": 8},
    )
    mirror_percent: int | None = Field(default=None, description="Percent of stable's requests copied to the canary.")


class MetricStatus(ApiModel):
    """One metric as the autoscaler sees it."""

    name: str = Field(description="cpu, concurrency, queueTimeP95Ms or requestsPerSecond.")
    current: str | None = Field(default=None, description="The value last read (e.g. 42% or 3.5).")
    target: str | None = Field(default=None, description="The target it is held to.")


class TrackAutoscaling(ApiModel):
    """One track's autoscaler: which object, the replica counts it works with, the metrics it reads."""

    autoscaler: str = Field(description="HorizontalPodAutoscaler/<name> or ScaledObject/<name> (KEDA).")
    min_replicas: int = Field(description="Fewest replicas the autoscaler keeps.")
    max_replicas: int = Field(description="Most replicas the autoscaler may run.")
    current_replicas: int | None = Field(default=None, description="Replicas the autoscaler last saw.")
    desired_replicas: int | None = Field(default=None, description="Replicas the autoscaler last asked for.")
    metrics: list[MetricStatus] | None = Field(
        default=None, description="Each metric's current value and target.", json_schema_extra={"maxItems": 8}
    )


class AutoscalingStatus(ApiModel):
    """Per track, what its autoscaler sees."""

    stable: TrackAutoscaling | None = Field(default=None, description="The stable track's autoscaler.")
    canary: TrackAutoscaling | None = Field(default=None, description="The canary track's autoscaler.")


class ModelKey(ApiModel):
    """A model's identity as the rollout records it."""

    pvc: str = Field(description="The claim.")
    path: str = Field(description="The file inside it.")
    sha256: str | None = Field(default=None, description="The pinned digest, when the spec gave one.")


class VerdictRecord(ApiModel):
    """The latest analysis of the canary against stable."""

    result: Literal["Pass", "Fail", "Inconclusive"] = Field(description="Pass, Fail or Inconclusive.")
    gate: str | None = Field(default=None, description="The gate that decided (for Fail or Inconclusive).")
    message: str = Field(max_length=4096, description="What was measured against what.")
    at: Timestamp = Field(description="When the window ended (RFC 3339).")
    measured: dict[str, str] | None = Field(default=None, description="Every gate's numbers.",
                                            json_schema_extra={"maxProperties": 64})
    source: Literal["pods", "prometheus"] | None = Field(
        default=None, description="Where the numbers came from: the serving pods' /metrics, or "
        "spec.rollout.prometheus.")


class RolloutCommand(ApiModel):
    """An imperative request, written through the status subresource by `kubectl modeldeploy rollout`."""

    action: Command = Field(description="What to do.")
    requested_at: str | None = Field(default=None, description="When it was asked (RFC 3339).")


Phase = Literal["Healthy", "Progressing", "Paused", "RolledBack"]
PHASES: tuple[Phase, ...] = get_args(Phase)
Outcome = Literal["promoted", "rolled_back", "aborted", "cancelled", "superseded"]


class RolloutStatus(ApiModel):
    """Where the rollout is; the operator's record of which model is stable (never the spec).

    This is also the state the rollout's decisions work on: read from status, changed by `rollout.decide`,
    written back whole, so an operator killed mid-rollout resumes at the same step with the same timers."""

    phase: Phase = Field(
        default="Healthy", description="Healthy (stable serves alone), Progressing, Paused or RolledBack."
    )
    stable: ModelKey | None = Field(default=None, description="The model the stable track serves.")
    canary: ModelKey | None = Field(default=None, description="The model being rolled out.")
    step: int = Field(default=0, description="Index of the current step (0-based).")
    steps: int | None = Field(default=None, description="How many steps the rollout has.")
    step_summary: str | None = Field(default=None, description="current/total, for the STEP column.")
    started_at: Timestamp | None = Field(default=None, description="When the rollout began (RFC 3339).")
    step_started_at: Timestamp | None = Field(default=None, description="When the current step began (RFC 3339).")
    paused_at: Timestamp | None = Field(default=None, description="When it was paused (RFC 3339).")
    paused_by_command: bool | None = Field(default=None, description="Paused by `kubectl modeldeploy rollout pause`.")
    analysis_started_at: Timestamp | None = Field(
        default=None, description="When the current analysis window began (RFC 3339): a restarted operator judges "
        "on the same schedule.")
    consecutive_failures: int = Field(default=0, description="Failed analyses in a row.")
    last_verdict: VerdictRecord | None = Field(default=None, description="The latest analysis.")
    failed: ModelKey | None = Field(default=None, description="The model rolled back: not tried again until "
                                    "spec.model changes or `kubectl modeldeploy rollout retry`.")
    failed_gate: str | None = Field(default=None, description="Why it was rolled back: the gate that failed, "
                                    "progressDeadline or aborted.")
    message: str = Field(default="", max_length=32768, description="What the rollout is doing, for people.")
    command: RolloutCommand | None = Field(default=None, description="A request not yet acted on.")
    approximation: str | None = Field(
        default=None, max_length=4096, description="Set while a step cannot be honoured exactly: without a routing "
        "backend (Istio or the Gateway API) a weight is approximated by the ratio of ready replicas, and a mirror "
        "step sends the canary nothing.")

    @model_validator(mode="before")
    @classmethod
    def _derived_not_read(cls, data: Any) -> Any:
        """stepSummary is derived from the step when written: never state of its own."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("stepSummary", "step_summary")}
        return data

    @model_serializer(mode="wrap")
    def _summarised(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """stepSummary always follows the step (it is what the STEP column shows)."""
        out: dict[str, Any] = handler(self)
        for key in ("stepSummary", "step_summary"):
            out.pop(key, None)
        if self.canary is not None and self.steps:
            out["stepSummary"] = f"{self.step + 1}/{self.steps}"
        return out

    @property
    def judged(self) -> bool:
        """A canary is live at a step and judged every interval (not paused, not rolled back)."""
        return self.phase == "Progressing" and self.canary is not None

    def facts(self, paused_in_spec: bool) -> RolloutFacts:
        """What decides whether a rollout command can take effect now."""
        return RolloutFacts(self.phase, self.canary is not None, self.failed is not None, paused_in_spec)

    def to_status(self) -> dict[str, Any]:
        """The `status.rollout` stanza: camelCase, RFC 3339 times, unset fields left out."""
        dumped: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return dumped


class ModelDeploymentStatus(ApiModel):
    """What the operator observed; written only through the status subresource."""

    observed_generation: int | None = Field(default=None, description="The spec generation last reconciled.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready (overall) and the parts: ModelSourceReady, StableReady, CanaryReady, RoutingReady; "
        "AutoscalingReady (the autoscalers read their metrics; reason ScalingLimited at replicas.max).",
        json_schema_extra={"maxItems": 16, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    traffic: Traffic | None = Field(default=None, description="The request split in effect.")
    routing: RoutingStatus | None = Field(default=None, description="Who routes the requests, and how.")
    url: str | None = Field(default=None, description="Where clients in the cluster reach the model.")
    ready_replicas: int | None = Field(default=None, description="Ready serving pods over both tracks.")
    desired_replicas: int | None = Field(default=None, description="Wanted serving pods over both tracks.")
    replica_summary: str | None = Field(default=None, description="ready/desired, for the REPLICAS column.")
    traffic_summary: str | None = Field(default=None, description="stable/canary percent, for the TRAFFIC column.")
    autoscaling: AutoscalingStatus | None = Field(
        default=None, description="Per autoscaled track: replicas and the metrics its autoscaler sees."
    )
    rollout: RolloutStatus | None = Field(default=None, description="Progressive delivery, when spec.rollout is set.")
