"""Server settings: every command-line flag is also read from the environment the operator sets.

Precedence: command-line flag > environment variable > default. Environment names are the upper-cased
field names (``MODEL_PATH``, ``MODEL_NAME``, ``MODEL_SHA256``, ``MODEL_ROOT``, ``PORT``, ...).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Settings(BaseSettings):
    """Validated configuration of one server process (one model per process)."""

    model_config = SettingsConfigDict(case_sensitive=False, protected_namespaces=(), extra="ignore", frozen=True)

    model_path: Path = Field(description="The ONNX file to serve.")
    model_name: str = Field("", description="Name in the URL; defaults to the file name without suffix.")
    model_sha256: str | None = Field(None, description="Hex sha256 the file must match before loading.")
    model_root: Path | None = Field(None, description="Folder the model must be under (operator: /models).")
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    max_batch_size: int = Field(32, ge=1, le=65536, description="Most rows coalesced into one run.")
    max_batch_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="Longest a request waits for others while a run is in flight."
    )
    intra_op_threads: int = Field(0, ge=0, le=1024, description="onnxruntime intra-op threads; 0 = its default.")
    intra_op_spinning: bool = Field(
        False, description="Let idle onnxruntime threads spin: a little lower latency, CPU burnt while idle."
    )
    inference_workers: int = Field(1, ge=1, le=64, description="Threads running batches concurrently.")
    execution_providers: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description='Providers in order, e.g. "tensorrt,cuda,cpu"; empty = CUDA if present, else CPU.',
    )
    termination_message_path: Path = Path("/dev/termination-log")
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_queue_size: int = Field(1024, ge=1, description="Requests waiting for a run; more get 503.")
    retry_after_seconds: int = Field(1, ge=1, le=3600, description="Retry-After sent with 503.")
    allow_non_finite: bool = Field(False, description="Accept NaN/Inf in float inputs.")
    drift_profile_path: Path | None = Field(
        None, description="Reference input profile (JSON); defaults to <model>.profile.json when present."
    )
    drift_window: int = Field(100_000, ge=100, description="Recent values per input the drift score covers.")
    shutdown_drain_seconds: float = Field(
        3.0, ge=0, le=600, description="After SIGTERM: keep serving, not ready, so endpoints catch up."
    )
    shutdown_timeout_seconds: float = Field(
        20.0, ge=0, le=3600, description="Then: longest wait for in-flight requests before exiting."
    )
    log_level: str = Field("info", pattern=r"^(?i)(critical|error|warning|info|debug)$")
    access_log: bool = False

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modeldeploy_server",
        description="Serve one ONNX model over the Open Inference Protocol v2. "
        "Every flag can also be set by the upper-cased environment variable named in brackets.",
    )
    add = parser.add_argument
    add("--model", dest="model_path", help="[MODEL_PATH] the ONNX file")
    add("--name", dest="model_name", help="[MODEL_NAME] model name in URLs")
    add("--sha256", dest="model_sha256", help="[MODEL_SHA256] expected hex digest")
    add("--model-root", dest="model_root", help="[MODEL_ROOT] folder the model must be under")
    add("--host", help="[HOST] listen address (0.0.0.0)")
    add("--port", type=int, help="[PORT] listen port (8080)")
    add("--max-batch-size", type=int, help="[MAX_BATCH_SIZE] (32)")
    add("--max-batch-delay-ms", type=float, help="[MAX_BATCH_DELAY_MS] (5)")
    add("--intra-op-threads", type=int, help="[INTRA_OP_THREADS] (0 = onnxruntime default)")
    add("--intra-op-spinning", choices=["true", "false"], help="[INTRA_OP_SPINNING] (false)")
    add("--inference-workers", type=int, help="[INFERENCE_WORKERS] (1)")
    add("--execution-providers", help='[EXECUTION_PROVIDERS] e.g. "cuda,cpu"')
    add("--termination-message-path", help="[TERMINATION_MESSAGE_PATH] (/dev/termination-log)")
    add("--max-request-bytes", type=int, help="[MAX_REQUEST_BYTES] (64 MiB)")
    add("--max-queue-size", type=int, help="[MAX_QUEUE_SIZE] (1024)")
    add("--drift-profile", dest="drift_profile_path", help="[DRIFT_PROFILE_PATH] (<model>.profile.json)")
    add("--shutdown-drain-seconds", type=float, help="[SHUTDOWN_DRAIN_SECONDS] (3)")
    add("--shutdown-timeout-seconds", type=float, help="[SHUTDOWN_TIMEOUT_SECONDS] (20)")
    add("--log-level", help="[LOG_LEVEL] (info)")
    return parser


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Build settings from flags over the environment; raises pydantic.ValidationError when invalid."""
    namespace = _parser().parse_args(argv)
    overrides = {key: value for key, value in vars(namespace).items() if value is not None}
    return Settings(**overrides)
