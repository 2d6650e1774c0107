"""The operator's own Prometheus metrics, in a registry of their own, served on `MODELDEPLOY_METRICS_PORT`.

The controller records outcomes here (a reconcile's result and duration, a rollout's decision, an
analysis verdict); the pure modules (reconcile, rollout, analysis) know nothing of it. Gauges that
describe the present (queue depth, rollouts by phase, each rollout's step) are computed when /metrics
is scraped, from what the controller last recorded, so they cost nothing in between.

Every metric is named `modeldeploy_operator_*`; the process' CPU and memory come from prometheus-client's
standard `process_*` collector. `python -m modeldeploy_operator.metrics` prints the exposition of an
idle operator (the names the dashboard may use).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from modeldeploy_operator import analysis
from modeldeploy_operator.cache import Key
from modeldeploy_operator.status_schema import PHASES, Phase

if TYPE_CHECKING:
    from modeldeploy_operator.rollout import Decision

ReconcileResult = Literal["success", "failed", "error"]
RECONCILE_RESULTS: tuple[ReconcileResult, ...] = ("success", "failed", "error")
NO_GATE = "none"  # the `gate` label of a passing verdict: no gate decided it
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class RolloutView:
    """What the gauges show of one ModelDeployment's rollout."""

    phase: Phase
    step: int  # 1-based while a canary is out, else 0
    steps: int


def verdict_gate(verdict: analysis.Verdict) -> str:
    """The gate a verdict is counted under: the one that failed or could not judge; `none` for a pass."""
    if verdict.result == analysis.PASSED:
        return NO_GATE
    if verdict.gate:
        return verdict.gate
    return next((gate.gate for gate in verdict.gates if gate.result == verdict.result), NO_GATE)


class _StateCollector(Collector):
    """Queue depth, leadership, rollouts by phase and each rollout's step, read at scrape time."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        metrics = self._metrics
        depth = GaugeMetricFamily("modeldeploy_operator_workqueue_depth",
                                  "ModelDeployments waiting for a reconcile worker.")
        depth.add_metric([], float(metrics.queue_depth()))
        leader = GaugeMetricFamily("modeldeploy_operator_leader",
                                   "1 while this replica holds the lease and reconciles.")
        leader.add_metric([], 1.0 if metrics.leading() else 0.0)
        views = metrics.rollout_views()
        phases = GaugeMetricFamily("modeldeploy_operator_rollouts",
                                   "ModelDeployments with spec.rollout, by rollout phase.", labels=["phase"])
        for phase in PHASES:
            phases.add_metric([phase], float(sum(1 for view in views.values() if view.phase == phase)))
        step = GaugeMetricFamily("modeldeploy_operator_rollout_step",
                                 "Current step of each rollout (1-based; 0 when no canary is out).",
                                 labels=["namespace", "modeldeployment", "phase"])
        steps = GaugeMetricFamily("modeldeploy_operator_rollout_steps", "Steps each rollout has.",
                                  labels=["namespace", "modeldeployment"])
        for key, view in sorted(views.items()):
            step.add_metric([key.namespace, key.name, view.phase], float(view.step))
            steps.add_metric([key.namespace, key.name], float(view.steps))
        yield from (depth, leader, phases, step, steps)


class OperatorMetrics:
    """The operator's metrics; the controller calls the recording methods, `serve` exposes them."""

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0, leading: Callable[[], bool] = lambda: False,
                 resources: Callable[[], Iterable[Key]] | None = None, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_depth = queue_depth
        self.leading = leading
        self._resources = resources  # the ModelDeployments that exist (a deleted one is never reconciled again)
        self._rollouts: dict[Key, RolloutView] = {}
        self._lock = threading.Lock()
        registry = self.registry
        if process:
            ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes...
        self.reconciles = Counter("modeldeploy_operator_reconciles", "Reconciles by result: success, failed "
                                  "(the API refused a child; retried with backoff) or error (an exception).",
                                  ["result"], registry=registry)
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result)
        self.reconcile_seconds = Histogram("modeldeploy_operator_reconcile_duration_seconds",
                                           "Time of one reconcile: read, decide, apply, write status.",
                                           buckets=_DURATION_BUCKETS, registry=registry)
        self.finished = Counter("modeldeploy_operator_rollouts_finished",
                                "Rollouts that ended, by result: promoted, rolled_back, aborted, cancelled, "
                                "superseded.", ["result"], registry=registry)
        for ending in ("promoted", "rolled_back", "aborted"):
            self.finished.labels(ending)
        self.verdicts = Counter("modeldeploy_operator_analysis_verdicts",
                                "Analysis verdicts by result (Pass, Fail, Inconclusive) and deciding gate.",
                                ["result", "gate"], registry=registry)
        self.analysis_delay = Histogram("modeldeploy_operator_analysis_delay_seconds",
                                        "Time from the end of an analysis interval to its verdict (metrics read "
                                        "and judged).", buckets=_DELAY_BUCKETS, registry=registry)
        self.analysis_duration = Histogram("modeldeploy_operator_analysis_duration_seconds",
                                           "Time to read one window's metrics and judge them.",
                                           buckets=_DURATION_BUCKETS, registry=registry)
        registry.register(_StateCollector(self))

    # Recording (called by the controller's worker threads) ------------------------------------------------

    def reconciled(self, result: ReconcileResult, seconds: float) -> None:
        self.reconciles.labels(result).inc()
        self.reconcile_seconds.observe(seconds)

    def rollout_decided(self, key: Key, decision: Decision) -> None:
        """A decision whose status was written: the phase and step now, and how a rollout ended if it did
        (`promoted`, `rolled_back`, `aborted`, `cancelled` or `superseded`)."""
        state = decision.state
        view = RolloutView(state.phase, state.step + 1 if state.canary is not None else 0, state.steps or 0)
        with self._lock:
            self._rollouts[key] = view
        if decision.outcome is not None:
            self.finished.labels(decision.outcome).inc()

    def forget_rollout(self, key: Key) -> None:
        """The ModelDeployment is gone, or has no spec.rollout any more."""
        with self._lock:
            self._rollouts.pop(key, None)

    def analysed(self, verdict: analysis.Verdict, seconds: float, late_seconds: float | None) -> None:
        """A verdict, how long reading and judging took, and how late after its interval's end it came
        (None for a window whose start is not known, e.g. the first after a restart)."""
        self.verdicts.labels(verdict.result, verdict_gate(verdict)).inc()
        self.analysis_duration.observe(seconds)
        if late_seconds is not None:
            self.analysis_delay.observe(max(0.0, late_seconds))

    # Reading -------------------------------------------------------------------------------------------------

    def rollout_views(self) -> Mapping[Key, RolloutView]:
        """The rollouts of the ModelDeployments that still exist."""
        present = set(self._resources()) if self._resources is not None else None
        with self._lock:
            if present is not None:
                for key in [key for key in self._rollouts if key not in present]:
                    del self._rollouts[key]
            return dict(self._rollouts)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, port: int, address: str) -> None:
        """Serve /metrics from a daemon thread (prometheus-client's own HTTP server)."""
        start_http_server(port, address, registry=self.registry)


if __name__ == "__main__":
    sys.stdout.write(OperatorMetrics().render().decode())
