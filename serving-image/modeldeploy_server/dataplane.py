"""The transport-independent core: readiness, metadata and inference over decoded tensors.

Fronts (the REST routes, the raw ASGI infer front and the gRPC service) decode their wire format into
the dataclasses below and encode the results; everything about the model - which tensors it takes,
checking what came against that, batching - lives here, and nothing about any wire format does.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modeldeploy_server import __version__
from modeldeploy_server.batching import Batcher, Feeds
from modeldeploy_server.drift import (
    InputMonitor,
    OutputMonitor,
    ProfileError,
    ReferenceBins,
    parse_profile,
    read_profile,
)
from modeldeploy_server.errors import InvalidInputError, InvalidTensorError, ModelNotFoundError, ModelNotReadyError
from modeldeploy_server.metrics import ServerMetrics
from modeldeploy_server.model import LoadedModel, TensorSpec
from modeldeploy_server.settings import Settings

log = logging.getLogger(__name__)

MODEL_VERSION = "1"
PLATFORM = "onnxruntime_onnx"
SERVER_NAME = "modeldeploy"


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray  # already shaped as ``shape``


@dataclass
class InferenceRequest:
    inputs: list[InputTensor]
    id: str | None = None
    outputs: list[str] | None = None  # names of the outputs wanted; None: all, in model order


@dataclass
class OutputTensor:
    name: str
    datatype: str
    data: np.ndarray


@dataclass
class InferenceResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None


def _shape_fits(expected: tuple[int, ...], got: tuple[int, ...]) -> bool:
    return len(expected) == len(got) and all(e in (-1, g) for e, g in zip(expected, got, strict=True))


def prepare_feeds(
    specs: Sequence[TensorSpec], tensors: Sequence[InputTensor], *, batchable: bool, allow_non_finite: bool
) -> tuple[Feeds, int]:
    """Check request tensors against the model's inputs; returns feeds in model order and batch rows."""
    by_name: dict[str, InputTensor] = {}
    known = {spec.name for spec in specs}
    for tensor in tensors:
        if tensor.name not in known:
            raise InvalidInputError(
                f"unknown input tensor {tensor.name!r}; the model's inputs are: {', '.join(sorted(known))}"
            )
        if tensor.name in by_name:
            raise InvalidTensorError(tensor.name, "given more than once")
        by_name[tensor.name] = tensor
    feeds: Feeds = {}
    rows = 1
    for spec in specs:
        if spec.name not in by_name:
            raise InvalidInputError(f"missing input tensor {spec.name!r} (expected {spec.describe()})")
        tensor = by_name[spec.name]
        if tensor.datatype != spec.datatype:
            raise InvalidTensorError(spec.name, f"expected datatype {spec.datatype}, got {tensor.datatype}")
        if not _shape_fits(spec.shape, tensor.shape):
            raise InvalidTensorError(spec.name, f"expected shape {list(spec.shape)}, got {list(tensor.shape)}")
        data = tensor.data
        if not allow_non_finite and data.dtype.kind == "f" and data.size and not np.isfinite(data).all():
            raise InvalidTensorError(spec.name, "expected finite numbers, got NaN or infinity (or null)")
        feeds[spec.name] = data
    if batchable and specs:
        batch_sizes = {name: array.shape[0] for name, array in feeds.items()}
        rows = next(iter(batch_sizes.values()))
        if len(set(batch_sizes.values())) > 1:
            raise InvalidInputError(f"input tensors disagree on the batch dimension (dimension 0): {batch_sizes}")
        if rows == 0:
            raise InvalidTensorError(specs[0].name, "the batch dimension is 0; send at least one row")
    return feeds, rows


class DataPlane:
    """One model's serving state, shared by all transports."""

    def __init__(self, settings: Settings, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.draining = False
        # Fronts with calls of their own to finish (gRPC) before the batcher stops taking work.
        self.drains: list[Callable[[], Awaitable[None]]] = []
        self._monitors: dict[str, InputMonitor] = {}
        self._outputs: dict[str, OutputMonitor] = {}
        name = settings.model_name
        self._batch_size = metrics.batch_size.labels(name)
        self._run_seconds = metrics.run_seconds.labels(name)
        metrics.ready.set_function(lambda: 1.0 if self.ready else 0.0)

    @property
    def name(self) -> str:
        return self.settings.model_name

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.draining

    def attach(self, model: LoadedModel) -> None:
        """Make a loaded model servable: batcher, metrics, drift monitors. Call on the event loop."""
        settings = self.settings
        references, output_edges = self._profile()
        self._monitors = {
            spec.name: InputMonitor(references.get(spec.name), settings.drift_window)
            for spec in model.inputs
            if spec.datatype != "BYTES"
        }
        self.metrics.add_drift(model.name, self._monitors)
        self._outputs = {
            spec.name: OutputMonitor(spec.dtype.kind, output_edges.get(spec.name))
            for spec in model.outputs
            if spec.datatype != "BYTES"
        }
        self.metrics.add_outputs(model.name, self._outputs)
        self.batcher = Batcher(
            model.run,
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_s,
            max_queue_size=settings.max_queue_size,
            workers=settings.inference_workers,
            batchable=model.batchable,
            retry_after_seconds=settings.retry_after_seconds,
            observer=self._observe_batch,
            wait_observer=self.metrics.queue_wait.labels(model.name).observe,
        )
        self.batcher.start()
        self.metrics.bind_queue_depth(model.name, lambda: self.batcher.queue_depth if self.batcher else 0)
        self.metrics.load_seconds.labels(model.name).set(model.load_seconds)
        self.metrics.model_info.info(
            {
                "name": model.name,
                "path": str(model.path),
                "sha256": model.sha256,
                "execution_provider": model.provider,
                "providers": ",".join(model.providers),
                "dynamic_batching": str(model.batchable).lower(),
            }
        )
        self.model = model

    def _profile(self) -> tuple[dict[str, ReferenceBins], dict[str, np.ndarray]]:
        """The drift references of the inputs and the bins of the outputs, from one read of the profile.

        Each section fails on its own: unreadable inputs turn drift scores off, unreadable (or absent)
        outputs fall back to the default bins.
        """
        path = self.settings.profile_path
        if not path.exists():
            if self.settings.drift_profile_path is not None:
                log.warning("drift profile %s does not exist; drift scores are off", path)
            return {}, {}
        try:
            document = read_profile(path)
        except ProfileError as exc:
            log.warning("drift scores are off and output statistics use the default bins: %s", exc)
            return {}, {}
        references: dict[str, ReferenceBins] = {}
        try:
            references = parse_profile(document)
            log.info("drift reference profile %s covers inputs: %s", path, ", ".join(references) or "none")
        except ProfileError as exc:
            log.warning("drift scores are off: %s", exc)
        try:
            edges = {name: bins.edges for name, bins in parse_profile(document, "outputs").items()}
        except ProfileError as exc:
            log.warning("output statistics use the default bins: %s", exc)
            edges = {}
        return references, edges

    def begin_shutdown(self) -> None:
        """Readiness false from now on; safe to call from a signal handler (one assignment)."""
        self.draining = True

    async def stop(self) -> None:
        """After the fronts have finished their calls: finish the accepted work, end the workers."""
        for drain in self.drains:
            await drain()
        if self.batcher is not None:
            await self.batcher.stop()

    def _observe_batch(self, rows: int, seconds: float, feeds: Feeds, outputs: Sequence[Feeds]) -> None:
        """Everything a run tells the metrics, noted once per batch on the worker thread that ran it,
        after its callers have their answers: its size and time, the inputs it was given, and the
        outputs of the requests it answered. One place for both sides, so the input and output
        statistics always cover the same runs, and the event loop (which every front shares) pays
        nothing for either."""
        self._batch_size.observe(rows)
        self._run_seconds.observe(seconds)
        for name, monitor in self._monitors.items():
            monitor.observe(feeds[name])
        for output_name, output_monitor in self._outputs.items():
            for answered in outputs:
                values = answered.get(output_name)
                if values is not None:
                    output_monitor.observe(values)

    # --- protocol operations -----------------------------------------------------------------------

    def server_metadata(self, extensions: Sequence[str] = ()) -> dict[str, Any]:
        """Name and version; each front names the protocol extensions it speaks."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(extensions)}

    def _check_served(self, name: str, version: str | None) -> None:
        if name != self.name or (version is not None and version != MODEL_VERSION):
            raise ModelNotFoundError(name, version, self.name)

    def get_model(self, name: str, version: str | None = None) -> LoadedModel:
        """The loaded model by name (and version); 404 for other names, 503 while loading."""
        self._check_served(name, version)
        if self.model is None:
            raise ModelNotReadyError(name, self.settings.retry_after_seconds)
        return self.model

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self._check_served(name, version)
        return self.ready

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.get_model(name, version)
        return {
            "name": model.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORM,
            "inputs": [_spec_metadata(spec) for spec in model.inputs],
            "outputs": [_spec_metadata(spec) for spec in model.outputs],
            "parameters": {
                "execution_provider": model.provider,
                "providers": list(model.providers),
                "sha256": model.sha256,
                "max_batch_size": self.settings.max_batch_size if model.batchable else 0,
            },
        }

    async def infer(self, name: str, request: InferenceRequest, version: str | None = None) -> InferenceResponse:
        model = self.get_model(name, version)
        batcher = self.batcher
        assert batcher is not None  # attach() starts it before the model becomes visible
        selected = self._select_outputs(model, request)
        feeds, rows = prepare_feeds(
            model.inputs,
            request.inputs,
            batchable=model.batchable,
            allow_non_finite=self.settings.allow_non_finite,
        )
        results = await batcher.infer(feeds, rows)
        outputs = [OutputTensor(name=spec.name, datatype=spec.datatype, data=results[spec.name]) for spec in selected]
        return InferenceResponse(model_name=model.name, model_version=MODEL_VERSION, outputs=outputs, id=request.id)

    def _select_outputs(self, model: LoadedModel, request: InferenceRequest) -> list[TensorSpec]:
        if not request.outputs:
            return list(model.outputs)
        specs = {spec.name: spec for spec in model.outputs}
        selected = []
        for wanted in request.outputs:
            spec = specs.get(wanted)
            if spec is None:
                raise InvalidInputError(
                    f"unknown output tensor {wanted!r}; the model's outputs are: {', '.join(sorted(specs))}"
                )
            selected.append(spec)
        return selected


def _spec_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
