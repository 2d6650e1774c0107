"""Prometheus metrics of one server process, kept in its own registry.

Request metrics are recorded per inference request, by the front that took it (``protocol``: rest or
grpc; a reader that sums over the other labels, as the operator's analysis and autoscaling queries do,
counts both); batch metrics per onnxruntime run; queue depth and the input statistics / drift scores
are read when /metrics is scraped, so they cost nothing until then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from modeldeploy_server.drift import InputMonitor, OutputMonitor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class _DriftCollector(Collector):
    """Summary statistics and PSI per input, computed at scrape time."""

    def __init__(self, model: str, monitors: Mapping[str, InputMonitor]) -> None:
        self._model = model
        self._monitors = monitors

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "input"]
        families = {
            "count": GaugeMetricFamily("modeldeploy_input_values", "Input values observed.", labels=labels),
            "mean": GaugeMetricFamily("modeldeploy_input_mean", "Mean of observed input values.", labels=labels),
            "std": GaugeMetricFamily("modeldeploy_input_std", "Standard deviation of input values.", labels=labels),
            "min": GaugeMetricFamily("modeldeploy_input_min", "Smallest observed input value.", labels=labels),
            "max": GaugeMetricFamily("modeldeploy_input_max", "Largest observed input value.", labels=labels),
        }
        drift = GaugeMetricFamily(
            "modeldeploy_input_drift_psi",
            "Population Stability Index of recent input values against the reference profile.",
            labels=labels,
        )
        for name, monitor in self._monitors.items():
            stats = monitor.snapshot()
            key = [self._model, name]
            families["count"].add_metric(key, stats.count)
            families["mean"].add_metric(key, stats.mean)
            families["std"].add_metric(key, stats.std)
            families["min"].add_metric(key, stats.minimum)
            families["max"].add_metric(key, stats.maximum)
            if stats.psi is not None:
                drift.add_metric(key, stats.psi)
        yield from families.values()
        yield drift


class _OutputCollector(Collector):
    """Per-output value histograms and per-class counts: what a rollout compares between two tracks.

    A histogram whose first bucket bound is negative carries no ``_sum``/``_count`` (the exposition
    format's rule, which prometheus_client follows); its ``+Inf`` bucket is the count.
    """

    def __init__(self, model: str, monitors: Mapping[str, OutputMonitor]) -> None:
        self._model = model
        self._monitors = monitors

    def collect(self) -> Iterable[Metric]:
        values = HistogramMetricFamily(
            "modeldeploy_output_value",
            "Values of each real-valued output, in fixed bins (the profile's, else the documented default).",
            labels=["model", "output"],
        )
        classes = CounterMetricFamily(
            "modeldeploy_output_class", "Values of each integer (class) output, by value.",
            labels=["model", "output", "class"],
        )
        for name, monitor in self._monitors.items():
            if monitor.is_classes:
                for label, count in sorted(monitor.class_counts().items()):
                    classes.add_metric([self._model, name, label], count)
            else:
                buckets, total = monitor.histogram()
                values.add_metric([self._model, name], buckets, total)
        yield values
        yield classes


class ServerMetrics:
    """All metrics of the process; ``render`` produces the text exposition format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "modeldeploy_requests",
            "Inference requests by model, outcome and protocol (rest or grpc).",
            ["model", "outcome", "protocol"],
            registry=registry,
        )
        self.latency = Histogram(
            "modeldeploy_request_duration_seconds",
            "Inference request latency, body read to response.",
            ["model", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "modeldeploy_batch_size",
            "Rows per onnxruntime run after dynamic batching.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.run_seconds = Histogram(
            "modeldeploy_inference_duration_seconds",
            "Duration of one onnxruntime run (one batch).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "modeldeploy_queue_wait_seconds",
            "Time a request waited in the queue before a worker took it (its batch's slot).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "modeldeploy_queue_depth",
            "Requests waiting for an inference worker.",
            ["model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "modeldeploy_requests_in_flight",
            "Inference requests being handled (body read, queued or running).",
            ["model", "protocol"],
            registry=registry,
        )
        self.load_seconds = Gauge(
            "modeldeploy_model_load_seconds",
            "Time to verify, load and warm up the model.",
            ["model"],
            registry=registry,
        )
        self.model_info = Info("modeldeploy_model", "The served model.", registry=registry)
        self.ready = Gauge("modeldeploy_ready", "1 when the server accepts inference requests.", registry=registry)

    def front(self, model: str, protocol: str) -> FrontMetrics:
        return FrontMetrics(self, model, protocol)

    def bind_queue_depth(self, model: str, depth: Callable[[], int]) -> None:
        self.queue_depth.labels(model).set_function(lambda: float(depth()))

    def add_drift(self, model: str, monitors: Mapping[str, InputMonitor]) -> None:
        self.registry.register(_DriftCollector(model, monitors))

    def add_outputs(self, model: str, monitors: Mapping[str, OutputMonitor]) -> None:
        self.registry.register(_OutputCollector(model, monitors))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FrontMetrics:
    """The request metrics one front records for one model, with their label values bound once."""

    def __init__(self, metrics: ServerMetrics, model: str, protocol: str) -> None:
        self._requests = metrics.requests
        self._model = model
        self._protocol = protocol
        self._counters: dict[str, Callable[[], None]] = {}
        self.latency = metrics.latency.labels(model, protocol)
        self.in_flight = metrics.in_flight.labels(model, protocol)

    def count(self, outcome: str) -> None:
        increment = self._counters.get(outcome)
        if increment is None:
            increment = self._requests.labels(self._model, outcome, self._protocol).inc
            self._counters[outcome] = increment
        increment()
