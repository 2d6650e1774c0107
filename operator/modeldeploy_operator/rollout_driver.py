"""A rollout's orchestration, once per reconcile: read the window's metrics -> judge -> decide -> schedule.

The metric sources, the clock and the scheduling of the next look are injected, so the whole loop runs
on fakes in the unit tests; the judging (`analysis`) and the deciding (`rollout`) are pure. The current
window's start is in status (not in this process), so a restarted operator keeps the schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Literal, Protocol

from modeldeploy_operator import analysis, clock, kinds
from modeldeploy_operator.analysis import TrackSample
from modeldeploy_operator.cache import Key, Snapshot
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.reconcile import deployments_by_track
from modeldeploy_operator.rollout import Decision, analysis_due, decide, recheck_in, window_seconds
from modeldeploy_operator.rollout_commands import parse
from modeldeploy_operator.spec import ModelDeploymentSpec, Rollout
from modeldeploy_operator.status import serves
from modeldeploy_operator.status_schema import RolloutStatus
from modeldeploy_operator.views import PodView

log = logging.getLogger(__name__)

MetricSource = Literal["pods", "prometheus"]
RECHECK_MARGIN_SECONDS = 0.05  # wake a hair after a window's end, so the window is due when looked at


class PodWindows(Protocol):
    """Windows of the two tracks' increases, read from the serving pods (`metricsource.PodScraper`)."""

    def read(self, key: Key, pods: Iterable[PodView]) -> tuple[TrackSample, TrackSample] | None: ...

    def begin(self, key: Key, pods: Iterable[PodView]) -> None: ...

    def forget(self, key: Key) -> None: ...


class WindowQuery(Protocol):
    """The same windows from Prometheus (`metricsource.PrometheusQuery`)."""

    def read(self, namespace: str, name: str, seconds: int) -> tuple[TrackSample, TrackSample]: ...


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """To the second: what status holds."""
        ...

    def precise(self) -> dt.datetime:
        """Unrounded: for timers."""
        ...


class SystemClock:
    def now(self) -> dt.datetime:
        return clock.utc_now()

    def precise(self) -> dt.datetime:
        return clock.precise_now()


def previous_state(status: Mapping[str, Any] | None) -> RolloutStatus | None:
    """The rollout state recorded in status; the pending command is read apart (`pending_command`)."""
    recorded = dict((status or {}).get("rollout") or {})
    recorded.pop("command", None)
    return RolloutStatus.model_validate(recorded) if recorded else None


def pending_command(status: Mapping[str, Any] | None) -> object:
    """The action of a `kubectl modeldeploy rollout ...` request waiting in status, if any."""
    return (((status or {}).get("rollout") or {}).get("command") or {}).get("action")


class RolloutDriver:
    """Drives each ModelDeployment's rollout; keeps only the pods' window baselines in memory."""

    def __init__(self, pods: PodWindows, prometheus: Callable[[str], WindowQuery],
                 schedule: Callable[[Key, float], None], metrics: OperatorMetrics,
                 clock_: Clock | None = None) -> None:
        self.pods = pods
        self.prometheus = prometheus
        self.schedule = schedule  # look at the key again after this many seconds, ahead of other work
        self.metrics = metrics
        self.clock = clock_ or SystemClock()

    def forget(self, key: Key) -> None:
        self.pods.forget(key)
        self.metrics.forget_rollout(key)

    def drive(self, snapshot: Snapshot, spec: ModelDeploymentSpec, rollout: Rollout) -> Decision:
        """One step of the rollout's state machine, with an analysis when an interval has ended."""
        key = snapshot.key
        previous = previous_state(snapshot.status)
        now, precise = self.clock.now(), self.clock.precise()
        verdict, window_started = None, None
        if previous is not None and previous.judged:
            if analysis_due(previous.analysis_started_at, now, rollout):
                verdict, window_started = self._analyse(snapshot, rollout, previous, now), now
            elif rollout.prometheus is None:
                # Restarted mid-window: the pods' counters at its start died with the old process; count
                # from now, and judge when the window recorded in status ends.
                self.pods.begin(key, self._pods(snapshot))
        else:
            self.pods.forget(key)
        canary_ready = serves(deployments_by_track(snapshot).get("canary"))
        decision = decide(previous, spec, now, verdict, parse(pending_command(snapshot.status)), window_started,
                          canary_ready)
        recheck = recheck_in(decision.state, precise, rollout)
        if recheck is not None:  # from the unrounded clock, a hair past the recorded end: the window is due
            self.schedule(key, recheck + RECHECK_MARGIN_SECONDS)
        return decision

    @staticmethod
    def _pods(snapshot: Snapshot) -> list[PodView]:
        return list(snapshot.views_of(kinds.POD, PodView).values())

    def _read_window(self, snapshot: Snapshot, rollout: Rollout, state: RolloutStatus,
                     now: dt.datetime) -> tuple[MetricSource, tuple[TrackSample, TrackSample] | None]:
        """(source, (canary, stable)) of the window that ends now; None for the first window of pods."""
        if rollout.prometheus is not None:
            query = self.prometheus(rollout.prometheus.url)
            seconds = window_seconds(state, now, rollout)
            return "prometheus", query.read(snapshot.key.namespace, snapshot.key.name, seconds)
        return "pods", self.pods.read(snapshot.key, self._pods(snapshot))

    def _analyse(self, snapshot: Snapshot, rollout: Rollout, state: RolloutStatus,
                 now: dt.datetime) -> analysis.Verdict | None:
        """The verdict of the window that just ended; None when this is the first (the window starts now)
        or its metrics could not be read. How late after the recorded end of the window the verdict came
        goes to the operator's metrics."""
        started = time.monotonic()
        try:
            source, window = self._read_window(snapshot, rollout, state, now)
        except (OSError, ValueError) as error:
            log.warning("rollout analysis of %s could not read metrics: %s", snapshot.key, error)
            return None
        if window is None:
            return None
        verdict = replace(analysis.judge(*window, rollout.effective_gates), source=source)
        late = None
        if state.analysis_started_at is not None:
            ends = state.analysis_started_at + dt.timedelta(seconds=rollout.interval_seconds)
            late = (self.clock.precise() - ends).total_seconds()
        self.metrics.analysed(verdict, time.monotonic() - started, late)
        log.info("rollout analysis of %s from %s: %s %s%s", snapshot.key, source, verdict.result, verdict.message,
                 "" if late is None else f" ({max(0.0, late):.3f}s after the interval ended)")
        return verdict
