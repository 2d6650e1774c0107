"""Loading an ONNX model safely: path and integrity checks, onnxruntime session, metadata, warm-up.

Only ONNX is ever loaded (no pickle, no custom-op libraries). The bytes that are hashed are the bytes
handed to onnxruntime, so a file swapped between check and load cannot slip through.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from modeldeploy_server.codec import DATATYPE_DTYPES
from modeldeploy_server.errors import ModelLoadError
from modeldeploy_server.settings import PROVIDER_NAMES, Settings

log = logging.getLogger(__name__)

# onnxruntime element type -> Open Inference Protocol datatype
_ONNX_DATATYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output; ``-1`` marks a dimension the model leaves open."""

    name: str
    datatype: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"{self.datatype} {list(self.shape)}"


@dataclass
class LoadedModel:
    """A ready onnxruntime session plus what the protocol needs to know about it."""

    name: str
    path: Path
    sha256: str
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    providers: tuple[str, ...]
    batchable: bool
    load_seconds: float

    @property
    def provider(self) -> str:
        """The provider doing the work (the first active one)."""
        return self.providers[0]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session; called from worker threads only (onnxruntime releases the GIL)."""
        names = [spec.name for spec in self.outputs]
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values, strict=True))


def resolve_model_path(path: Path, root: Path | None) -> Path:
    """The real path of a regular file, which must lie under ``root`` (when one is set)."""
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ModelLoadError(f"model file {str(path)!r} does not exist") from exc
    except OSError as exc:
        raise ModelLoadError(f"model file {str(path)!r} cannot be read: {exc.strerror}") from exc
    if root is not None:
        try:
            real_root = root.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as exc:
            raise ModelLoadError(f"model root {str(root)!r} does not exist") from exc
        if not real.is_relative_to(real_root):
            raise ModelLoadError(
                f"model file {str(path)!r} resolves to {str(real)!r}, outside the model root {str(real_root)!r}"
            )
    if not stat.S_ISREG(real.stat().st_mode):
        raise ModelLoadError(f"model path {str(path)!r} is not a regular file")
    return real


def read_verified(path: Path, expected_sha256: str | None) -> tuple[bytes, str]:
    """The file's bytes and hex digest; raises when a digest was given and does not match."""
    digest = hashlib.sha256()
    chunks = []
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                chunks.append(chunk)
    except OSError as exc:
        raise ModelLoadError(f"model file {str(path)!r} cannot be read: {exc.strerror}") from exc
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelLoadError(f"sha256 mismatch for {str(path)!r}: expected {expected_sha256}, file has {actual}")
    return b"".join(chunks), actual


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Providers to ask onnxruntime for: the requested ones that exist, always ending with CPU."""
    wanted = [PROVIDER_NAMES[name] for name in requested] if requested else [PROVIDER_NAMES["cuda"]]
    chosen = [name for name in wanted if name in available and name != PROVIDER_NAMES["cpu"]]
    return [*chosen, PROVIDER_NAMES["cpu"]]


def _tensor_spec(arg: Any) -> TensorSpec:
    datatype = _ONNX_DATATYPES.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has type {arg.type}, which this server cannot carry")
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, dtype=DATATYPE_DTYPES[datatype], shape=shape)


def warm_up_feeds(inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Inputs built from metadata alone: open dimensions become 1, values zero (or empty strings)."""
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        shape = tuple(1 if dim < 0 else dim for dim in spec.shape)
        if spec.datatype == "BYTES":
            feeds[spec.name] = np.full(shape, "", dtype=np.object_)
        else:
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feeds


def _session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if settings.intra_op_threads:
        options.intra_op_num_threads = settings.intra_op_threads
    # By default idle intra-op threads sleep instead of spinning: spinning burns the cores the event
    # loop (and neighbours on a shared node) need between runs.
    spinning = "1" if settings.intra_op_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    options.add_session_config_entry(
        "session.model_external_initializers_file_folder_path", str(settings.model_path.resolve().parent)
    )
    return options


def load_model(settings: Settings) -> LoadedModel:
    """Check, load and warm up the model; raises ModelLoadError with a reason fit for the operator."""
    started = time.perf_counter()
    path = resolve_model_path(settings.model_path, settings.model_root)
    content, digest = read_verified(path, settings.model_sha256)
    available = ort.get_available_providers()
    providers = choose_providers(settings.execution_providers, available)
    try:
        session = ort.InferenceSession(content, sess_options=_session_options(settings), providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ModelLoadError(f"onnxruntime cannot load {str(path)!r}: {exc}") from exc
    del content
    active = tuple(session.get_providers())
    if active[0] != providers[0]:
        log.error(
            "requested execution provider %s is not usable (missing CUDA/cuDNN libraries?); running on %s",
            providers[0],
            active[0],
        )
    for name in settings.execution_providers:
        if PROVIDER_NAMES[name] not in available:
            log.warning("execution provider %r was requested but this onnxruntime build lacks it", name)
    inputs = tuple(_tensor_spec(arg) for arg in session.get_inputs())
    outputs = tuple(_tensor_spec(arg) for arg in session.get_outputs())
    batchable = all(len(spec.shape) >= 1 and spec.shape[0] == -1 for spec in (*inputs, *outputs))
    model = LoadedModel(
        name=settings.model_name,
        path=path,
        sha256=digest,
        session=session,
        inputs=inputs,
        outputs=outputs,
        providers=active,
        batchable=batchable,
        load_seconds=0.0,
    )
    try:
        model.run(warm_up_feeds(inputs))
    except Exception as exc:
        raise ModelLoadError(f"warm-up inference failed for {str(path)!r}: {exc}") from exc
    model.load_seconds = time.perf_counter() - started
    log.info(
        "model %r loaded from %s in %.2fs; execution provider: %s (active: %s); dynamic batching: %s",
        model.name,
        path,
        model.load_seconds,
        model.provider,
        ", ".join(active),
        "on" if batchable else "off (no open batch dimension)",
    )
    return model
