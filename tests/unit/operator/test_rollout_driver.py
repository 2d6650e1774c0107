"""The rollout's orchestration on fakes: which window is read, when it is judged, what is scheduled next."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from modeldeploy_operator import kinds
from modeldeploy_operator.analysis import TrackSample
from modeldeploy_operator.cache import Key, Snapshot
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.rollout_driver import RolloutDriver
from modeldeploy_operator.routers import Routers
from modeldeploy_operator.spec import ModelDeploymentSpec, parse_spec
from modeldeploy_operator.views import DeploymentView, PodView

KEY = Key("ModelDeployment", "ml", "sentiment")
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
STEPS = [{"weight": 20, "pause": "1m"}, {"weight": 50, "pause": "1m"}]
GOOD = TrackSample({"ok": 200.0}, {0.01: 200.0, float("inf"): 200.0})
BAD = TrackSample({"ok": 100.0, "error": 100.0}, {0.01: 200.0, float("inf"): 200.0})


class FakeClock:
    def __init__(self) -> None:
        self.at = T0

    def now(self) -> dt.datetime:
        return self.at

    def precise(self) -> dt.datetime:
        return self.at + dt.timedelta(milliseconds=300)


class FakePods:
    """Windows as a scraper would return them: None the first time a key is read."""

    def __init__(self) -> None:
        self.canary = GOOD
        self.open: set[Key] = set()
        self.reads = 0
        self.begun: list[Key] = []

    def read(self, key: Any, pods: Iterable[PodView]) -> tuple[TrackSample, TrackSample] | None:
        self.reads += 1
        first = key not in self.open
        self.open.add(key)
        return None if first else (self.canary, GOOD)

    def begin(self, key: Any, pods: Iterable[PodView]) -> None:
        self.begun.append(key)
        self.open.add(key)

    def forget(self, key: Any) -> None:
        self.open.discard(key)


class FakePrometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.asked: list[tuple[str, str, int]] = []

    def read(self, namespace: str, name: str, seconds: int) -> tuple[TrackSample, TrackSample]:
        self.asked.append((namespace, name, seconds))
        return GOOD, GOOD


def spec(model: str = "v2.onnx", **rollout: Any) -> ModelDeploymentSpec:
    return parse_spec({"model": {"pvc": "models", "path": model},
                       "rollout": {"steps": STEPS, "analysisInterval": "30s", "failureLimit": 1, **rollout}})


def snapshot(status: dict[str, Any] | None) -> Snapshot:
    canary = DeploymentView("sentiment-canary", 1, 1, 1, 1, 1, track="canary")
    return Snapshot(key=KEY, body={"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}}, status=status,
                    generation=1, spec=None, children={}, views={kinds.DEPLOYMENT.kind: {canary.name: canary}},
                    claims={}, routers=Routers())


class Driving:
    """A driver on fakes, and the status its decisions would have written."""

    def __init__(self) -> None:
        self.clock, self.pods, self.scheduled = FakeClock(), FakePods(), list[float]()
        self.queries: list[FakePrometheus] = []
        self.driver = RolloutDriver(self.pods, self._prometheus, lambda key, delay: self.scheduled.append(delay),
                                    OperatorMetrics(process=False), self.clock)
        self.status: dict[str, Any] = {"rollout": {"phase": "Healthy", "stable": {"pvc": "models",
                                                                                 "path": "v1.onnx"}}}

    def _prometheus(self, url: str) -> FakePrometheus:
        self.queries.append(FakePrometheus(url))
        return self.queries[-1]

    def look(self, seconds: float, wanted: ModelDeploymentSpec | None = None) -> dict[str, Any]:
        self.clock.at = T0 + dt.timedelta(seconds=seconds)
        wanted = wanted or spec()
        assert wanted.rollout is not None
        decision = self.driver.drive(snapshot(self.status), wanted, wanted.rollout)
        written = decision.state.to_status()
        self.status = {"rollout": written}
        return written


def test_the_first_look_opens_a_window_and_the_next_is_judged_at_its_end() -> None:
    run = Driving()
    started = run.look(0)
    assert (started["phase"], started["step"]) == ("Progressing", 0)
    opened = run.look(1)  # the first window: nothing to judge yet, its start recorded
    assert opened["analysisStartedAt"] == "2026-01-01T12:00:01Z" and "lastVerdict" not in opened
    assert run.scheduled[-1] == 30 - 0.3 + 0.05  # the window's end from the unrounded clock, plus a hair
    assert run.look(20) == opened  # between windows: not read, not judged
    assert run.pods.reads == 1
    judged = run.look(31)
    assert judged["lastVerdict"]["result"] == "Pass" and judged["lastVerdict"]["source"] == "pods"
    assert judged["analysisStartedAt"] == "2026-01-01T12:00:31Z"


def test_a_failing_window_rolls_back_and_nothing_is_scheduled_after() -> None:
    run = Driving()
    run.look(0)
    run.look(1)
    run.pods.canary = BAD
    rolled_back = run.look(31)
    assert (rolled_back["phase"], rolled_back["failedGate"]) == ("RolledBack", "errorRate")
    scheduled = len(run.scheduled)
    run.look(61)
    assert len(run.scheduled) == scheduled  # nothing under way: no timer
    assert KEY not in run.pods.open  # the baselines are let go


def test_a_restarted_driver_counts_from_now_and_judges_at_the_recorded_end() -> None:
    run = Driving()
    run.look(0)
    run.look(1)
    restarted = Driving()  # a new process: no baselines in memory, the window's start in status
    restarted.status = run.status
    restarted.look(10)
    assert restarted.pods.begun == [KEY]
    assert restarted.look(31)["lastVerdict"]["result"] == "Pass"


def test_prometheus_is_asked_for_the_whole_window_since_its_recorded_start() -> None:
    run = Driving()
    wanted = spec(prometheus={"url": "http://prometheus.monitoring:9090"})
    run.look(0, wanted)
    run.look(1, wanted)
    judged = run.look(95, wanted)  # the operator was down past the window's end
    assert judged["lastVerdict"]["source"] == "prometheus"
    assert [q.url for q in run.queries] == ["http://prometheus.monitoring:9090"] * 2
    assert run.queries[-1].asked == [("ml", "sentiment", 94)]
    assert run.pods.reads == 0


def test_metrics_that_cannot_be_read_give_no_verdict() -> None:
    run = Driving()
    run.look(0)
    run.look(1)

    def unreachable(key: Any, pods: Iterable[PodView]) -> None:
        raise OSError("connection refused")

    run.pods.read = unreachable  # type: ignore[method-assign]
    held = run.look(31)
    assert held["phase"] == "Progressing" and "lastVerdict" not in held
