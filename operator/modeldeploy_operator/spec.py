"""The ModelDeployment resource as pydantic models: the one source of truth.

The CRD schema (``crd.py``), the README reference and the operator's validation all come from these
classes. Every constraint is declared once (`Between`, `Matches`) and enforced twice: as a CEL rule the
API server checks (so a bad manifest is refused at ``kubectl apply`` with a message naming the field)
and as a pydantic validator (so the operator never acts on a spec the server would have refused, e.g.
one stored before a CRD upgrade). A shared table of cases runs against both. Defaults live here, in
code, and are never written back to the stored object: that keeps ``kubectl apply`` and Argo CD diffs
clean.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from modeldeploy_operator.analysis import Gates

# The longest child name is "<name>-canary"; Kubernetes names Services and labels with at most 63.
MAX_NAME_LENGTH = 56
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
CLAIM_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
DOTDOT_PATTERN = r"(^|/)[.][.](/|$)"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
    r"|(\.[0-9]+))))?$"
)
GPU_RESOURCE = "nvidia.com/gpu"
# Lowercase, as Istio requires (HTTP/2 sends header names in lowercase; Envoy compares them so).
HEADER_NAME_PATTERN = r"^[a-z0-9][-a-z0-9_.]*$"
# A DNS name, optionally with a leading wildcard label: what both a VirtualService and an HTTPRoute take.
HOSTNAME_PATTERN = r"^([*][.])?[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A Gateway in the resource's namespace ("name") or another one ("namespace/name").
GATEWAY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


def cel(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `field_path` points the error at a child field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


def python_regex(pattern: str) -> re.Pattern[str]:
    """The CRD's RE2 pattern for Python's `re`, with the same meaning.

    In RE2 (CEL's `matches`, OpenAPI `pattern`) `$` is the end of the string; in Python it also matches
    just before a trailing newline, so `models/..\\n` would contain a `..` segment for one and not the
    other. Python gets `\\Z`, the true end, for each `$`.
    """
    assert "\\$" not in pattern, "an escaped $ would need a real parser"
    return re.compile(pattern.replace("$", r"\Z"))


class _Rule:
    """A constraint declared once, enforced twice: as a CEL rule the API server checks at `kubectl apply`
    and as a validator the model runs (so the operator never acts on a spec the server would refuse).
    Used as `Annotated[type, Rule(...)]`; None (an optional field left out) always passes."""

    def explain(self) -> str:
        raise NotImplementedError

    def cel_rule(self) -> str:
        raise NotImplementedError

    def holds(self, value: Any) -> bool:
        raise NotImplementedError

    def _validate(self, value: Any) -> Any:
        if value is not None and not self.holds(value):
            raise ValueError(self.explain())
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        out.setdefault("x-kubernetes-validations", []).append(cel(self.cel_rule(), self.explain()))
        return out


@dataclass(frozen=True)
class Between(_Rule):
    """An integer from `low` to `high`, both included."""

    low: int
    high: int

    def explain(self) -> str:
        return f"must be between {self.low} and {self.high}"

    def cel_rule(self) -> str:
        return f"self >= {self.low} && self <= {self.high}"

    def holds(self, value: Any) -> bool:
        return bool(self.low <= value <= self.high)


@dataclass(frozen=True)
class Matches(_Rule):
    """A string the pattern is found in (RE2 syntax, searched like CEL's `matches`), or with `forbidden`
    one it is not found in."""

    pattern: str
    message: str
    forbidden: bool = False

    def explain(self) -> str:
        return self.message

    def cel_rule(self) -> str:
        test = f"self.matches('{self.pattern}')"
        return f"!{test}" if self.forbidden else test

    def holds(self, value: Any) -> bool:
        return (python_regex(self.pattern).search(value) is None) == self.forbidden


CLAIM_NAME = Matches(CLAIM_PATTERN, "must be a PersistentVolumeClaim name: lowercase letters, digits, '-' and '.'")
RELATIVE = Matches("^/", "must be relative to the claim's root (no leading '/')", forbidden=True)
NO_DOTDOT = Matches(DOTDOT_PATTERN, "must not contain '..' segments", forbidden=True)
SHA256 = Matches(SHA256_PATTERN, "must be a SHA-256 digest: 64 hexadecimal characters")
HEADER_NAME = Matches(HEADER_NAME_PATTERN, "must be a lowercase HTTP header name: letters, digits, '-', '_' and '.'")
HOSTNAME = Matches(HOSTNAME_PATTERN, "must be a DNS name, optionally starting with '*.'")
GATEWAY_NAME = Matches(GATEWAY_PATTERN, "must name a Gateway as 'name' or 'namespace/name'")


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSource(ApiModel):
    """Where a model file lives: a file on a PersistentVolumeClaim in the same namespace."""

    pvc: Annotated[str, CLAIM_NAME] = Field(
        min_length=1,
        max_length=253,
        description="Name of the PersistentVolumeClaim holding the model, in the resource's namespace. "
        "It is mounted read-only at /models.",
    )
    path: Annotated[str, RELATIVE, NO_DOTDOT] = Field(
        min_length=1,
        max_length=1024,
        description="Path of the ONNX file inside the claim, relative to its root "
        "(e.g. sentiment/v1/model.onnx). The server gets /models/<path>.",
    )
    sha256: Annotated[str | None, SHA256] = Field(
        default=None,
        max_length=64,
        description="Optional SHA-256 digest (64 hex characters) of the model file. When set, the server "
        "verifies the file against it before loading and refuses to start on a mismatch.",
    )


class Replicas(ApiModel):
    """How many serving pods a track runs; an autoscaler moves between min and max."""

    min: Annotated[int | None, Between(1, 1000)] = Field(
        None, description="Fewest replicas (default 1). Equal to max (the default) means a fixed count, no autoscaler."
    )
    max: Annotated[int | None, Between(1, 1000)] = Field(
        None, description="Most replicas (default: min). Above min, a HorizontalPodAutoscaler owns the count."
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!has(self.min) || !has(self.max) || self.min <= self.max",
                "replicas.min must be less than or equal to replicas.max", ".min")
        )
    )

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("replicas.min must be less than or equal to replicas.max")
        return self

    @property
    def effective_min(self) -> int:
        return self.min if self.min is not None else 1

    @property
    def effective_max(self) -> int:
        return self.max if self.max is not None else self.effective_min

    @property
    def autoscaled(self) -> bool:
        """An HPA exists (and owns the Deployment's replica count) only when it has room to move."""
        return self.effective_max > self.effective_min


class HeaderMatch(ApiModel):
    """One request header that sends a request to the canary (A/B testing): an exact value or a regex."""

    name: Annotated[str, HEADER_NAME] = Field(
        min_length=1, max_length=256, description="Header name, lowercase (e.g. x-model-variant)."
    )
    exact: str | None = Field(default=None, max_length=4096, description="The value must equal this.")
    regex: str | None = Field(
        default=None,
        max_length=1024,
        description="The value must match this RE2 regular expression (the whole value, as Envoy matches it).",
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.exact) != has(self.regex)", "set exactly one of exact and regex", reason="FieldValueInvalid")
        )
    )

    @model_validator(mode="after")
    def _one_matcher(self) -> HeaderMatch:
        if (self.exact is None) == (self.regex is None):
            raise ValueError("set exactly one of exact and regex")
        return self

    def describe(self) -> str:
        """`name: value` for an exact match, `name ~ regex` for a regex: how status and Events show it."""
        return f"{self.name}: {self.exact}" if self.exact is not None else f"{self.name} ~ {self.regex}"


MIRROR_NEEDS_NO_TRAFFIC = ("mirrorPercent needs trafficPercent 0: a shadow canary serves no live requests "
                           "(set mirrorPercent to 0 when moving traffic to the canary)")


class Canary(ApiModel):
    """A second model served next to the stable one and given a share of the requests."""

    model: ModelSource | None = Field(default=None, description="The canary's model.")
    traffic_percent: Annotated[int | None, Between(0, 100)] = Field(
        default=None,
        description="Share of requests (0-100) routed to the canary; the rest go to the stable model. "
        "Default 0: the canary runs and warms up but gets no traffic. The field `kubectl patch` moves.",
    )
    replicas: Replicas | None = Field(
        default=None, description="Replica bounds for the canary track (default: spec.replicas)."
    )
    headers: list[HeaderMatch] | None = Field(
        default=None,
        description="A/B testing: requests carrying any of these headers go to the canary whatever "
        "trafficPercent says, so a user or cohort always gets the same model. Needs Istio or Gateway API routing.",
        json_schema_extra={"maxItems": 8},
    )
    mirror_percent: Annotated[int | None, Between(0, 100)] = Field(
        default=None,
        description="Shadow traffic: percent (0-100) of the stable model's requests also copied to the canary. "
        "Callers only ever get the stable model's answer; the canary's is dropped, and its metrics (labelled "
        "track=canary) show how it fared. A mirrored request runs twice: mind side effects and cost. Needs "
        "trafficPercent 0 and Istio or Gateway API routing.",
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.model)", "a canary needs a model: set spec.canary.model", ".model",
                "FieldValueRequired"),
            cel("!has(self.mirrorPercent) || self.mirrorPercent == 0 || !has(self.trafficPercent) "
                "|| self.trafficPercent == 0", MIRROR_NEEDS_NO_TRAFFIC, ".mirrorPercent"),
        )
    )

    @model_validator(mode="after")
    def _has_model(self) -> Canary:
        if self.model is None:
            raise ValueError("a canary needs a model: set spec.canary.model")
        if self.mirror and self.weight:
            raise ValueError(MIRROR_NEEDS_NO_TRAFFIC)
        return self

    @property
    def weight(self) -> int:
        return self.traffic_percent or 0

    @property
    def mirror(self) -> int:
        return self.mirror_percent or 0

    @property
    def header_matches(self) -> list[HeaderMatch]:
        return list(self.headers or [])

    @property
    def source(self) -> ModelSource:
        assert self.model is not None  # guaranteed by the validator
        return self.model


class ScalingStep(ApiModel):
    """How fast one direction of scaling may move: a stabilization window and step limits per period."""

    stabilization_window_seconds: Annotated[int | None, Between(0, 3600)] = Field(
        default=None,
        description="Seconds of past recommendations considered before moving: the highest (scale-up) or "
        "lowest (scale-down) count wanted over the window is used. Default 0 up, 300 down.",
    )
    max_pods: Annotated[int | None, Between(1, 1000)] = Field(
        default=None, description="Most pods added (scale-up) or removed (scale-down) per period."
    )
    max_percent: Annotated[int | None, Between(1, 1000)] = Field(
        default=None,
        description="Most pods added or removed per period, in percent of the current count. Without "
        "maxPods or maxPercent: up 4 pods or 100% (the larger), down 50%. With both: scale-up takes the "
        "larger step, scale-down the smaller.",
    )
    period_seconds: Annotated[int | None, Between(1, 1800)] = Field(
        default=None, description="The period the step limits apply to (default 15 up, 60 down)."
    )


@dataclass(frozen=True)
class StepDefaults:
    window: int
    max_pods: int | None
    max_percent: int | None
    period: int


SCALE_UP_DEFAULTS = StepDefaults(window=0, max_pods=4, max_percent=100, period=15)
# Serving pods are slow to bring back (image, model load, warm-up): remove at most half a minute.
SCALE_DOWN_DEFAULTS = StepDefaults(window=300, max_pods=None, max_percent=50, period=60)


@dataclass(frozen=True)
class Signal:
    """One thing the autoscaler aims for, in the unit the spec names it."""

    name: str  # the spec's field name (camelCase), also the name status reports
    target: int
    per_pod: bool  # a total shared by the pods (HPA AverageValue) or one value for the track (Value)


class Autoscaling(ApiModel):
    """What each track's autoscaler aims for and how fast it may move.

    CPU utilization uses the HorizontalPodAutoscaler alone. The other signals are read from the serving
    pods' metrics in Prometheus by KEDA; without KEDA (or with no Prometheus configured in the operator)
    the track scales on CPU and the AutoscalingReady condition says why.
    """

    cpu_utilization: Annotated[int | None, Between(1, 100)] = Field(
        default=None,
        description="Target average CPU use in percent of the requested CPU (default 70 when no other "
        "signal is set; with other signals, CPU counts only when set).",
    )
    concurrency: Annotated[int | None, Between(1, 100000)] = Field(
        default=None,
        description="Target in-flight requests per pod (modeldeploy_requests_in_flight, averaged over the "
        "track's pods): what saturates a batched server before its CPU shows it. Needs KEDA.",
    )
    queue_time_p95_ms: Annotated[int | None, Between(1, 600000)] = Field(
        default=None,
        description="Target 95th percentile of the time a request waits for a batch slot, in milliseconds "
        "(from modeldeploy_queue_wait_seconds over the track's pods). Needs KEDA.",
    )
    requests_per_second: Annotated[int | None, Between(1, 1000000)] = Field(
        default=None,
        description="Target requests per second per pod (the rate of modeldeploy_requests_total). Needs KEDA.",
    )
    scale_up: ScalingStep | None = Field(
        default=None, description="Scale-up behaviour (default: no window, 4 pods or 100% per 15 s)."
    )
    scale_down: ScalingStep | None = Field(
        default=None, description="Scale-down behaviour (default: 300 s window, 50% per 60 s)."
    )

    @property
    def custom_signals(self) -> tuple[Signal, ...]:
        """The signals read through Prometheus, in the order their triggers are listed."""
        found = (
            (self.concurrency, Signal("concurrency", self.concurrency or 0, per_pod=True)),
            (self.queue_time_p95_ms, Signal("queueTimeP95Ms", self.queue_time_p95_ms or 0, per_pod=False)),
            (self.requests_per_second, Signal("requestsPerSecond", self.requests_per_second or 0, per_pod=True)),
        )
        return tuple(signal for value, signal in found if value is not None)

    @property
    def effective_cpu_utilization(self) -> int | None:
        """The CPU target in use, None when only custom signals were asked for."""
        if self.cpu_utilization is not None:
            return self.cpu_utilization
        return None if self.custom_signals else 70

    @property
    def fallback_cpu_utilization(self) -> int:
        """The CPU target when the custom signals cannot be read."""
        return self.cpu_utilization if self.cpu_utilization is not None else 70


QUANTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    "x-kubernetes-int-or-string": True,
}


class Resources(ApiModel):
    """CPU and memory for each serving container, as in a Pod spec (GPUs go in spec.gpu)."""

    requests: dict[str, int | str] | None = Field(
        default=None,
        description="Guaranteed resources, e.g. {cpu: '1', memory: 2Gi} (default cpu 500m, memory 1Gi "
        "when resources is left out). The autoscaler's CPU target is a share of requests.cpu.",
        json_schema_extra={"maxProperties": 16, "additionalProperties": QUANTITY_SCHEMA},
    )
    limits: dict[str, int | str] | None = Field(
        default=None,
        description="Upper bounds, e.g. {memory: 4Gi}.",
        json_schema_extra={"maxProperties": 16, "additionalProperties": QUANTITY_SCHEMA},
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(f"!has(self.limits) || !('{GPU_RESOURCE}' in self.limits)",
                "set GPUs with spec.gpu, not resources.limits", ".limits"),
            cel(f"!has(self.requests) || !('{GPU_RESOURCE}' in self.requests)",
                "set GPUs with spec.gpu, not resources.requests", ".requests"),
        )
    )

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, value: dict[str, int | str] | None) -> dict[str, int | str] | None:
        for name, quantity in (value or {}).items():
            if name == GPU_RESOURCE:
                raise ValueError("set GPUs with spec.gpu, not resources")
            if isinstance(quantity, str) and not python_regex(QUANTITY_PATTERN).search(quantity):
                raise ValueError(
                    f"{name}: {quantity!r} is not a Kubernetes quantity: it should match '{QUANTITY_PATTERN}'"
                )
        return value


DEFAULT_RESOURCES = Resources(requests={"cpu": "500m", "memory": "1Gi"})


class Toleration(ApiModel):
    """A Pod toleration, passed through to the serving pods."""

    key: str | None = Field(default=None, max_length=316, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default).")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Batching(ApiModel):
    """Dynamic batching in the server: requests are grouped up to a size or a delay."""

    max_batch_size: Annotated[int | None, Between(1, 4096)] = Field(
        None, description="Largest batch the server forms (server default when unset)."
    )
    max_delay_ms: Annotated[int | None, Between(0, 60000)] = Field(
        None, description="Longest a request waits for others to join its batch, in milliseconds."
    )


RoutingBackend = Literal["Auto", "Istio", "GatewayAPI", "None"]


class Routing(ApiModel):
    """Which API splits the requests between the tracks, and where outside traffic comes in."""

    backend: RoutingBackend | None = Field(
        default=None,
        description="Auto (the default): Istio (VirtualService + DestinationRule) when its CRDs are installed, "
        "else the Gateway API (HTTPRoute) when its CRDs are installed, else the Service alone. Istio or "
        "GatewayAPI: that one only (nothing is written until its CRDs are installed). None: no routing "
        "objects, the Service alone. Installing or removing the CRDs is picked up without a restart.",
    )
    hosts: list[Annotated[str, HOSTNAME, Field(max_length=253)]] | None = Field(
        default=None,
        description="Host names clients use through a gateway (VirtualService hosts, HTTPRoute hostnames). "
        "The VirtualService always adds the Service's cluster-local name.",
        json_schema_extra={"maxItems": 16},
    )
    gateways: list[Annotated[str, GATEWAY_NAME, Field(max_length=253)]] | None = Field(
        default=None,
        description="Gateways the route attaches to, as name or namespace/name: Istio Gateways for the "
        "VirtualService (the mesh is always included), Gateway API Gateways for the HTTPRoute's parentRefs "
        "(none: the HTTPRoute attaches to the Service itself, for a mesh that implements GAMMA).",
        json_schema_extra={"maxItems": 16},
    )


# The rollout's defaults, in one place: the gates' thresholds are the analysis engine's own.
GATE_DEFAULTS = Gates()
DEFAULT_ANALYSIS_INTERVAL = "1m"
DEFAULT_PROGRESS_DEADLINE = "1h"
DEFAULT_FAILURE_LIMIT = 3

DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
DURATION = Matches(DURATION_PATTERN, "must be a duration such as 30s, 5m or 1h30m (hours, minutes, seconds)")
ROLLOUT_EXCLUDES_CANARY = ("spec.rollout and spec.canary are mutually exclusive: a rollout moves the canary's "
                           "traffic itself (drop spec.canary to let the rollout drive, or spec.rollout to drive "
                           "by hand with spec.canary.trafficPercent)")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``1h30m`` (the pattern above; empty is 0)."""
    match = python_regex(DURATION_PATTERN).search(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    hours, minutes, seconds = (int(part[:-1]) if part else 0 for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


class RolloutStep(ApiModel):
    """One step of a rollout: shadow traffic or a share of live requests, held for `pause`."""

    mirror: Annotated[int | None, Between(0, 100)] = Field(
        default=None,
        description="Percent of stable's requests copied to the canary; callers only see stable's answers.",
    )
    weight: Annotated[int | None, Between(0, 100)] = Field(
        default=None, description="Percent of live requests the canary serves."
    )
    pause: Annotated[str | None, DURATION] = Field(
        default=None, max_length=32,
        description="How long the step lasts before the next one, if its analysis passes (default: one "
        "analysis interval).",
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.mirror) != has(self.weight)", "a step sets exactly one of mirror and weight",
                reason="FieldValueInvalid"),
        )
    )

    @model_validator(mode="after")
    def _one_kind(self) -> RolloutStep:
        if (self.mirror is None) == (self.weight is None):
            raise ValueError("a step sets exactly one of mirror and weight")
        return self


class RolloutGates(ApiModel):
    """Thresholds the canary is judged on, against stable over the same window."""

    max_error_rate: float | None = Field(
        default=None, ge=0, le=1,
        description="Highest share of server-side errors on the canary "
        f"(default {GATE_DEFAULTS.max_error_rate}); judged on the 95% lower bound, so a few errors in a small "
        "window do not fail it.",
    )
    max_error_rate_increase: float | None = Field(
        default=None, ge=0, le=1, description="Highest increase of the error rate over stable "
        f"(default {GATE_DEFAULTS.max_error_rate_increase}).",
    )
    max_latency_p95_ratio: float | None = Field(
        default=None, ge=1, le=1000, description="Highest canary/stable ratio of p95 latency "
        f"(default {GATE_DEFAULTS.max_latency_p95_ratio}).",
    )
    max_output_psi: float | None = Field(
        default=None, ge=0, le=100,
        description="Highest Population Stability Index between the two tracks' outputs, per output "
        f"(default {GATE_DEFAULTS.max_output_psi}).",
    )
    min_requests: Annotated[int | None, Between(1, 1_000_000)] = Field(
        default=None,
        description="Requests each track needs in a window before it is judged "
        f"(default {GATE_DEFAULTS.min_requests}); fewer is "
        "inconclusive: the step holds.",
    )


class PrometheusSource(ApiModel):
    """Read the tracks' metrics from Prometheus instead of the serving pods."""

    url: Annotated[str, Matches("^https?://", "must be an http:// or https:// URL")] = Field(
        max_length=2048, description="Prometheus' base URL, e.g. http://prometheus.monitoring:9090."
    )


class Rollout(ApiModel):
    """Progressive delivery: a changed spec.model becomes a canary walked through the steps, judged
    against the model it replaces, then promoted — or rolled back."""

    steps: list[RolloutStep] = Field(
        min_length=1, description="The steps, in order.", json_schema_extra={"maxItems": 32}
    )
    analysis_interval: Annotated[str | None, DURATION] = Field(
        default=None, max_length=32,
        description=f"How often the canary is judged (default {DEFAULT_ANALYSIS_INTERVAL}).",
    )
    gates: RolloutGates | None = Field(default=None, description="Analysis thresholds.")
    failure_limit: Annotated[int | None, Between(1, 100)] = Field(
        default=None, description=f"Consecutive failed analyses that roll back (default {DEFAULT_FAILURE_LIMIT}).",
    )
    progress_deadline: Annotated[str | None, DURATION] = Field(
        default=None, max_length=32,
        description="The longest a rollout may take, pauses excluded, before it rolls back "
        f"(default {DEFAULT_PROGRESS_DEADLINE}).",
    )
    paused: bool | None = Field(
        default=None, description="Hold the rollout at its current step (the traffic stays as it is).",
    )
    prometheus: PrometheusSource | None = Field(
        default=None, description="Read metrics from Prometheus (default: the serving pods' own /metrics).",
    )

    @property
    def interval_seconds(self) -> int:
        return max(1, parse_duration(self.analysis_interval or DEFAULT_ANALYSIS_INTERVAL))

    @property
    def deadline_text(self) -> str:
        """The progress deadline as written (or the default), for messages."""
        return self.progress_deadline or DEFAULT_PROGRESS_DEADLINE

    @property
    def effective_gates(self) -> Gates:
        """The spec's thresholds over the engine's defaults."""
        given = self.gates or RolloutGates()
        chosen = {name: value for name, value in given.model_dump().items() if value is not None}
        return dataclasses.replace(GATE_DEFAULTS, **chosen)

    @property
    def deadline_seconds(self) -> int:
        return parse_duration(self.deadline_text)

    @property
    def failures_allowed(self) -> int:
        return self.failure_limit or DEFAULT_FAILURE_LIMIT

    def pause_seconds(self, step: RolloutStep) -> int:
        return parse_duration(step.pause) if step.pause else self.interval_seconds


class ModelDeploymentSpec(ApiModel):
    """What to serve and how: a model on a claim, optionally a canary, replicas, resources and routing."""

    model: ModelSource = Field(description="The stable model: every request goes here unless a canary takes a share.")
    canary: Canary | None = Field(
        default=None, description="Optional canary; remove it to send all traffic back to the stable model."
    )
    replicas: Replicas | None = Field(default=None, description="Replica bounds per track (default 1).")
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="What the autoscalers aim for (default 70% CPU) and how fast they move; used on a track "
        "whose replicas.max is above replicas.min.",
    )
    resources: Resources | None = Field(default=None, description="Container resources (CPU and memory).")
    gpu: Annotated[int | None, Between(0, 64)] = Field(
        default=None,
        description="NVIDIA GPUs per replica (nvidia.com/gpu); 0 (the default) runs on CPU. Above 0 the pods "
        "get the GPU limit, the usual nvidia.com/gpu toleration and the GPU server image.",
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Node labels the serving pods must run on.",
        json_schema_extra={"maxProperties": 64},
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Extra tolerations for the serving pods.", json_schema_extra={"maxItems": 32}
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Pod affinity stanza, passed through unchanged."
    )
    batching: Batching | None = Field(default=None, description="Dynamic batching in the server.")
    routing: Routing | None = Field(default=None, description="Request routing between the tracks.")
    rollout: Rollout | None = Field(
        default=None,
        description="Progressive delivery: when spec.model changes, the model that served before stays stable "
        "and the new one walks through these steps as the canary. Excludes spec.canary.",
    )

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("!has(self.rollout) || !has(self.canary)", ROLLOUT_EXCLUDES_CANARY, ".rollout"),
        )
    )

    @model_validator(mode="after")
    def _rollout_or_canary(self) -> ModelDeploymentSpec:
        if self.rollout is not None and self.canary is not None:
            raise ValueError(ROLLOUT_EXCLUDES_CANARY)
        return self

    # Effective values: the defaults applied in code, never stored in the object.
    @property
    def stable_replicas(self) -> Replicas:
        return self.replicas or Replicas()

    @property
    def canary_replicas(self) -> Replicas:
        if self.canary is not None and self.canary.replicas is not None:
            return self.canary.replicas
        return self.stable_replicas

    @property
    def gpus(self) -> int:
        return self.gpu or 0

    @property
    def canary_weight(self) -> int:
        return self.canary.weight if self.canary is not None else 0

    @property
    def routing_backend(self) -> RoutingBackend:
        return (self.routing.backend if self.routing else None) or "Auto"

    @property
    def hosts(self) -> list[str]:
        return list(self.routing.hosts or []) if self.routing else []

    @property
    def gateways(self) -> list[str]:
        return list(self.routing.gateways or []) if self.routing else []

    @property
    def canary_headers(self) -> list[HeaderMatch]:
        return self.canary.header_matches if self.canary is not None else []

    @property
    def mirror_percent(self) -> int:
        return self.canary.mirror if self.canary is not None else 0

    @property
    def effective_resources(self) -> Resources:
        return self.resources or DEFAULT_RESOURCES

    @property
    def effective_autoscaling(self) -> Autoscaling:
        return self.autoscaling or Autoscaling()

    @property
    def claims(self) -> list[str]:
        """The claims the pods mount, stable's first, without repeats."""
        mounted = [self.model.pvc, *([self.canary.source.pvc] if self.canary is not None else [])]
        return list(dict.fromkeys(mounted))


def parse_spec(spec: object) -> ModelDeploymentSpec:
    """Validate a stored spec; raises pydantic.ValidationError with the field paths on bad input."""
    return ModelDeploymentSpec.model_validate(spec)


def check_name(name: str) -> None:
    """The same rule as the CRD's CEL rule on metadata.name."""
    if len(name) > MAX_NAME_LENGTH or not python_regex(NAME_PATTERN).search(name):
        raise ValueError(
            f"metadata.name {name!r} must be a DNS label starting with a letter, at most {MAX_NAME_LENGTH} "
            "characters"
        )


def format_validation_error(error: ValidationError) -> str:
    """`spec.<field>: <reason>` for each problem, as the API server words its own refusals."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"spec.{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


def validate(name: str, spec: object) -> ModelDeploymentSpec | str:
    """The usable spec of a stored resource, or why it is unusable (naming the field)."""
    try:
        check_name(name)
        return parse_spec(spec)
    except ValidationError as error:
        return format_validation_error(error)
    except ValueError as error:
        return str(error)
