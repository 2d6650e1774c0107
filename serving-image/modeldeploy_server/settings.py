"""Server settings, one pydantic-settings model: the environment the operator sets, and flags generated
from the same fields.

Precedence: command-line flag > environment variable > default. Environment names are the upper-cased
field names (``MODEL_PATH``, ``MODEL_NAME``, ``MODEL_SHA256``, ``MODEL_ROOT``, ``PORT``, ...); each
field's docstring is its ``--help`` text and its row in serving-image/README.md (``settings_table``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Settings(BaseSettings):
    """Validated configuration of one server process (one model per process).

    Each field is read from the upper-cased environment variable of its name and from a command-line
    flag generated from it (``FLAGS`` names the short ones); its docstring is its help text.
    """

    model_config = SettingsConfigDict(
        case_sensitive=False, protected_namespaces=(), extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    model_path: Path
    """The ONNX file to serve."""
    model_name: str = ""
    """Name in `/v2/models/{name}`; empty means the file name without its suffix."""
    model_sha256: str | None = None
    """Hex sha256 the file must match before it is loaded (`sha256:` prefix allowed)."""
    model_root: Path | None = None
    """Folder the model's real path must lie under (the operator sets /models)."""
    host: str = "0.0.0.0"
    """Listen address."""
    port: int = Field(8080, ge=1, le=65535)
    """HTTP port: REST inference, health, metrics and docs."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """gRPC port: the Open Inference Protocol's `inference.GRPCInferenceService`, gRPC health checking and
    server reflection; 0 disables it."""
    max_batch_size: int = Field(32, ge=1, le=65536)
    """Most rows coalesced into one run (models without an open batch dimension run one request at a time)."""
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000)
    """Longest an idle worker waits for a batch to fill while another run is in flight; never waited when
    nothing else is in flight."""
    intra_op_threads: int = Field(0, ge=0, le=1024)
    """onnxruntime threads per run; 0 is onnxruntime's choice. Set it to the pod's CPU count."""
    intra_op_spinning: bool = False
    """Let idle onnxruntime threads spin: a few % lower latency for compute-bound models on dedicated cores,
    CPU burnt otherwise."""
    inference_workers: int = Field(1, ge=1, le=64)
    """Threads running batches concurrently."""
    execution_providers: Annotated[tuple[str, ...], NoDecode] = ()
    """Providers in order, e.g. `cuda,cpu` or `tensorrt,cuda,cpu`; empty means CUDA when present, else CPU."""
    termination_message_path: Path = Path("/dev/termination-log")
    """Where a load failure's reason is written (Kubernetes shows it in the pod's status)."""
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413, larger gRPC messages RESOURCE_EXHAUSTED."""
    max_queue_size: int = Field(1024, ge=1)
    """Requests waiting for a worker; beyond it 503 with Retry-After (gRPC: RESOURCE_EXHAUSTED)."""
    retry_after_seconds: int = Field(1, ge=1, le=3600)
    """Retry-After sent with a 503."""
    allow_non_finite: bool = False
    """Accept NaN and infinity in float inputs."""
    drift_profile_path: Path | None = None
    """Reference input profile (JSON) for drift scores; empty means `<model stem>.profile.json` next to the
    model, when present."""
    drift_window: int = Field(100_000, ge=100)
    """Recent values per input the drift score covers."""
    shutdown_drain_seconds: float = Field(3.0, ge=0, le=600)
    """After SIGTERM: not ready, still serving, while endpoints stop routing here."""
    shutdown_timeout_seconds: float = Field(20.0, ge=0, le=3600)
    """Then: longest wait for in-flight requests (HTTP and gRPC) before exiting."""
    log_level: str = Field("info", pattern=r"^(?i)(critical|error|warning|info|debug)$")
    """critical, error, warning, info or debug."""
    access_log: bool = False
    """Log every request (uvicorn's access log)."""

    @field_validator("model_sha256", mode="before")
    @classmethod
    def _normalise_sha(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if value.startswith("sha256:"):
                value = value[len("sha256:") :]
            if not value:
                return None
            if not _SHA256.match(value):
                raise ValueError("must be 64 hexadecimal characters")
        return value

    @field_validator("execution_providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in (p.strip().lower() for p in value.split(",")) if part]
        if isinstance(value, (list, tuple)):
            unknown = [name for name in value if name not in PROVIDER_NAMES]
            if unknown:
                raise ValueError(f"unknown provider(s) {unknown}; choose from {sorted(PROVIDER_NAMES)}")
            return tuple(value)
        return value

    @field_validator("port", "grpc_port", mode="before")
    @classmethod
    def _not_a_service_link(cls, value: Any, info: ValidationInfo) -> Any:
        """Kubernetes puts ``<SERVICE>_PORT=tcp://ip:port`` into every pod of a namespace that has a Service
        of that name (a Service named ``grpc`` sets GRPC_PORT): say so rather than "not an integer"."""
        if isinstance(value, str) and value.startswith(("tcp://", "udp://")):
            raise ValueError(
                f"{value!r} is a Kubernetes service link (a Service named after this variable in the namespace), "
                f"not a port; set {info.field_name.upper() if info.field_name else 'it'} in the container's env"
            )
        return value

    @field_validator("model_root", "drift_profile_path", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _default_name(self) -> Settings:
        name = self.model_name or self.model_path.stem
        if not _MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} must match {_MODEL_NAME.pattern}")
        object.__setattr__(self, "model_name", name)
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0

    @property
    def profile_path(self) -> Path:
        """Where the drift reference profile is looked for."""
        if self.drift_profile_path is not None:
            return self.drift_profile_path
        return self.model_path.with_name(self.model_path.stem + ".profile.json")


FLAGS = {
    "model_path": "--model",
    "model_name": "--name",
    "model_sha256": "--sha256",
    "drift_profile_path": "--drift-profile",
}
"""Short flags for the fields people type most; every other flag is the field name in kebab case."""


def flag(field: str) -> str:
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    return field.upper()


def default_text(field: str) -> str:
    info = Settings.model_fields[field]
    if info.is_required():
        return "required"
    value = info.default
    if value in (None, "", ()):
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field; values stay strings and are validated by the model, like the environment's."""
    parser = argparse.ArgumentParser(
        prog="python -m modeldeploy_server",
        description="Serve one ONNX model over the Open Inference Protocol v2. Every flag can also be set "
        "by the environment variable named in brackets; a flag wins over the environment.",
    )
    for field, info in Settings.model_fields.items():
        default = default_text(field)
        source = f"[{env_name(field)}; {default if default == 'required' else 'default ' + default}]"
        help_text = f"{source} {info.description or ''}".replace("%", "%%")
        if info.annotation is bool:
            parser.add_argument(flag(field), dest=field, nargs="?", const="true", metavar="true|false", help=help_text)
        else:
            parser.add_argument(flag(field), dest=field, metavar=env_name(field), help=help_text)
    return parser


def settings_table() -> str:
    """The configuration table of serving-image/README.md, from the model."""
    rows = ["| Environment | Flag | Default | Meaning |", "| --- | --- | --- | --- |"]
    for field, info in Settings.model_fields.items():
        meaning = " ".join((info.description or "").split())
        rows.append(f"| `{env_name(field)}` | `{flag(field)}` | {default_text(field)} | {meaning} |")
    return "\n".join(rows) + "\n"


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Build settings from flags over the environment; raises pydantic.ValidationError when invalid."""
    namespace = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(namespace).items() if value is not None}
    return Settings(**overrides)
