"""Operator settings: MODELDEPLOY_* environment variables (the chart sets them), read by pydantic-settings.

The same approach as the server's `settings.py`: one class, one docstring per field. The docstrings are
the documentation: `python -m modeldeploy_operator.config` prints the table the README carries, and a
test holds the chart's values comments to them.

Everything the pods get that is not in the resource (images, cluster domain) is an operator setting,
so one ModelDeployment manifest works unchanged across clusters.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MODELDEPLOY_"
DEFAULT_SERVER_IMAGE = "ghcr.io/modeldeploy/modeldeploy-server:0.1.0-cpu"
DEFAULT_GPU_SERVER_IMAGE = "ghcr.io/modeldeploy/modeldeploy-server:0.1.0"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ServingConfig(BaseModel):
    """What the builders need besides the spec: the operator's settings that go into the serving pods."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    server_image: str = DEFAULT_SERVER_IMAGE
    """Serving image for ModelDeployments on CPU (spec.gpu 0)."""
    gpu_server_image: str = DEFAULT_GPU_SERVER_IMAGE
    """Serving image for ModelDeployments with GPUs (spec.gpu above 0)."""
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """imagePullPolicy of the serving containers."""
    cluster_domain: str = "cluster.local"
    """The cluster's DNS domain, for the URL in the status and the VirtualService host."""
    pre_stop_seconds: int = Field(5, ge=0, le=300)
    """Seconds a stopping serving pod keeps serving, while the endpoints controller takes it out of rotation."""
    termination_grace_seconds: int = Field(30, ge=1, le=3600)
    """terminationGracePeriodSeconds of the serving pods: the longest a stopping pod may take."""
    prometheus_url: str | None = None
    """Prometheus KEDA reads the concurrency, queue time and request-rate signals from; unset, they fall back to CPU."""
    metrics_window: str = Field("1m", pattern=r"^[1-9][0-9]*(s|m)$")
    """Window of rate() in the autoscaling queries (e.g. 30s, 1m): at least four scrape intervals."""


class OperatorConfig(ServingConfig, BaseSettings):  # the serving settings first, as the README lists them
    """How the operator runs and what it puts in the serving pods."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    # Scope and concurrency.
    namespaces: Annotated[tuple[str, ...], NoDecode] = ()
    """Namespaces to watch, comma-separated; empty watches the whole cluster."""
    workers: int = Field(4, ge=1, le=256)
    """Reconcile worker threads: ModelDeployments converged at once."""
    resync_seconds: float = Field(300.0, ge=1)
    """Seconds between full resyncs of every ModelDeployment (changes are handled at once, from watches)."""
    request_timeout_seconds: float = Field(30.0, ge=1)
    """Timeout of each API request, in seconds."""
    watch_server_timeout_seconds: int = Field(270, ge=10, le=3600)
    """Seconds after which the API server ends each watch stream (the operator then resumes it)."""
    watch_streaming: Literal["auto", "on", "off"] = "auto"
    """Streamed initial lists (sendInitialEvents): on, off, or auto (on from Kubernetes 1.34)."""
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    """URL of the liveness endpoint; empty disables it."""
    metrics_port: int = Field(8080, ge=0, le=65535)
    """Port of the operator's own Prometheus metrics (/metrics): reconciles, queue, rollouts, analyses; 0 disables."""
    metrics_address: str = "0.0.0.0"
    """Address the metrics port listens on."""
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = "INFO"
    """Log level of the operator's own messages."""

    # Leader election.
    leader_election: bool = True
    """Act only while holding the Lease (needed with more than one replica)."""
    lease_name: str = "modeldeploy-operator"
    """Name of the coordination.k8s.io Lease the replicas compete for."""
    lease_namespace: str = ""
    """Namespace of the Lease; empty: the operator's own namespace (POD_NAMESPACE), else default."""
    lease_duration_seconds: float = Field(15.0, ge=1)
    """Seconds a standby waits, after the lease stopped changing, before taking over."""
    renew_deadline_seconds: float = Field(10.0, ge=0.5)
    """Seconds a leader may fail to renew before it stops acting (and exits)."""
    retry_period_seconds: float = Field(2.0, ge=0.1)
    """Seconds between two attempts to take or renew the lease."""

    pod_namespace: str = Field("", validation_alias="POD_NAMESPACE", exclude=True)
    """The namespace the operator runs in (the downward API sets POD_NAMESPACE)."""

    @field_validator("namespaces", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("liveness_endpoint", mode="before")
    @classmethod
    def _empty_disables(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("watch_streaming", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _lease_in_own_namespace(self) -> OperatorConfig:
        if not self.lease_namespace:
            object.__setattr__(self, "lease_namespace", self.pod_namespace or _namespace_of_pod() or "default")
        return self

    @property
    def serving(self) -> ServingConfig:
        """The settings the builders read (each a field of the same name here)."""
        return ServingConfig(**{name: getattr(self, name) for name in ServingConfig.model_fields})


def _namespace_of_pod() -> str | None:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def env_name(field: str) -> str:
    alias = OperatorConfig.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"


def _input_key(field: str) -> str:
    alias = OperatorConfig.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else field


# pydantic's error types, reworded for a person reading an environment variable.
_REASONS: dict[str, Callable[[Any, dict[str, Any]], str]] = {
    "int_parsing": lambda value, _: f"{value!r} is not a number",
    "float_parsing": lambda value, _: f"{value!r} is not a number",
    "int_from_float": lambda value, _: f"{value!r} is not a whole number",
    "greater_than_equal": lambda value, context: f"must be at least {context['ge']}, got {value}",
    "less_than_equal": lambda value, context: f"must be at most {context['le']}, got {value}",
    "bool_parsing": lambda value, _: f"expected true or false, got {value!r}",
    "literal_error": lambda value, context: f"expected one of {context.get('expected')}, got {value!r}",
}


def _explain(error: ValidationError) -> str:
    """`MODELDEPLOY_<NAME>: <reason>` for each bad value."""
    parts = []
    for item in error.errors(include_url=False):
        where = env_name(str(item["loc"][0])) if item["loc"] else "settings"
        reword = _REASONS.get(item["type"])
        reason = reword(item.get("input"), item.get("ctx") or {}) if reword else item["msg"]
        parts.append(f"{where}: {reason}")
    return "; ".join(parts)


def from_env(env: Mapping[str, str] | None = None) -> OperatorConfig:
    """Read the settings (from `env` instead of the process environment when given); a bad value raises
    ValueError naming the variable."""
    try:
        if env is None:
            return OperatorConfig()
        # Validated like the environment source would (field names, or the alias where one is declared),
        # without reading the process environment.
        given = {_input_key(field): env[env_name(field)] for field in OperatorConfig.model_fields
                 if env_name(field) in env}
        return OperatorConfig.model_validate(given)
    except ValidationError as error:
        raise ValueError(_explain(error)) from None


def settings_table() -> str:
    """The Markdown table of every setting, for the README."""
    rows = ["| Variable | Default | What it does |", "| --- | --- | --- |"]
    for name, field in OperatorConfig.model_fields.items():
        if field.exclude:
            continue
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else ("" if default is None else str(default))
        if isinstance(default, bool):
            shown = str(default).lower()
        rows.append(f"| `{env_name(name)}` | `{shown}` | {field.description} |" if shown
                    else f"| `{env_name(name)}` | | {field.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(settings_table())
