"""The rollout state machine on plain data: state + spec + now + verdict -> next state, routing, events."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from modeldeploy_operator import analysis
from modeldeploy_operator.rollout import Decision, Serving, analysis_due, decide, recheck_in, window_seconds
from modeldeploy_operator.spec import parse_spec
from modeldeploy_operator.status_schema import ModelKey, RolloutStatus

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
V1 = ModelKey(pvc="models", path="v1.onnx")
V2 = ModelKey(pvc="models", path="v2.onnx")
V3 = ModelKey(pvc="models", path="v3.onnx")


def written(key: ModelKey) -> dict[str, str]:
    """A model as status.rollout records it."""
    return key.model_dump(exclude_none=True)
STEPS = [{"mirror": 50, "pause": "5m"}, {"weight": 10, "pause": "5m"}, {"weight": 50, "pause": "10m"}]


def spec(model: ModelKey = V2, **rollout: Any) -> Any:
    return parse_spec({"model": written(model), "rollout": {"steps": STEPS, "failureLimit": 2, **rollout}})


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def verdict(result: analysis.Result, gate: str | None = None) -> analysis.Verdict:
    measured = (analysis.GateResult(gate or "minRequests", result, {"canaryErrorRate": 0.3}, "m"),)
    return analysis.Verdict(result, gate, f"{result} message", measured)


PASS = verdict("Pass")
FAIL = verdict("Fail", "errorRate")
UNSURE = verdict("Inconclusive")


def started() -> Decision:
    return decide(RolloutStatus(stable=V1), spec(), T0)


def run(decision: Decision, *ticks: tuple[float, analysis.Verdict | None], **spec_args: Any) -> Decision:
    for seconds, result in ticks:
        decision = decide(decision.state, spec(**spec_args), at(seconds), result)
    return decision


def test_first_sight_makes_the_spec_model_stable() -> None:
    decision = decide(None, spec(), T0)
    assert decision.state.to_status() == {"phase": "Healthy", "stable": written(V2), "step": 0,
                                          "consecutiveFailures": 0, "message": "serving the first model"}
    assert decision.serving == Serving(V2)


def test_a_changed_model_becomes_the_canary_at_step_one() -> None:
    decision = started()
    assert decision.state.to_status() == {
        "phase": "Progressing", "stable": written(V1), "canary": written(V2), "step": 0, "steps": 3,
        "stepSummary": "1/3", "consecutiveFailures": 0,
        "startedAt": "2026-01-01T12:00:00Z", "stepStartedAt": "2026-01-01T12:00:00Z", "message": "step 1/3"}
    assert decision.serving == Serving(V1, V2, weight=0, mirror=50)
    assert [e.reason for e in decision.events] == ["RolloutStarted"]


def test_steps_advance_after_their_pause_when_the_gate_passes_then_promote() -> None:
    d = run(started(), (60, PASS), (299, PASS))
    assert d.state.step == 0  # the pause has not elapsed
    d = run(d, (300, PASS))
    assert (d.state.step, d.serving) == (1, Serving(V1, V2, weight=10))
    assert [e.reason for e in d.events] == ["StepAdvanced"]
    d = run(d, (600, PASS))
    assert (d.state.step, d.serving) == (2, Serving(V1, V2, weight=50))
    d = run(d, (1199, PASS))
    assert d.state.step == 2
    d = run(d, (1200, PASS))
    assert d.state.to_status() == {"phase": "Healthy", "stable": written(V2), "step": 0, "consecutiveFailures": 0,
                                   "message": "promoted models/v2.onnx"}
    assert d.serving == Serving(V2)
    assert [e.reason for e in d.events] == ["Promoted"]


def test_inconclusive_holds_the_step_and_is_no_failure() -> None:
    d = run(started(), *[(60 * i, UNSURE) for i in range(1, 20)])
    assert (d.state.phase, d.state.step, d.state.consecutive_failures) == ("Progressing", 0, 0)
    assert d.state.message.startswith("holding at step 1")
    d = run(d, (1200, PASS))
    assert d.state.step == 1  # traffic came: it proceeds


def test_failure_limit_consecutive_failures_roll_back_naming_the_gate() -> None:
    d = run(started(), (60, FAIL))
    assert (d.state.phase, d.state.consecutive_failures) == ("Progressing", 1)
    assert [e.reason for e in d.events] == ["AnalysisFailed"]
    d = run(d, (120, FAIL))
    assert d.state.phase == "RolledBack"
    assert d.serving == Serving(V1)  # traffic to stable at once, the canary goes away
    assert d.state.failed == V2 and d.state.canary is None
    assert "(errorRate)" in d.state.message and "canaryErrorRate=0.3" in d.state.message
    assert [e.reason for e in d.events] == ["AnalysisFailed", "RolledBack"]
    assert d.state.last_verdict is not None and d.state.last_verdict.gate == "errorRate"


def test_a_pass_between_failures_resets_the_count() -> None:
    d = run(started(), (60, FAIL), (120, PASS), (180, FAIL))
    assert (d.state.phase, d.state.consecutive_failures) == ("Progressing", 1)


def test_inconclusive_between_failures_keeps_the_count() -> None:
    d = run(started(), (60, FAIL), (120, UNSURE), (180, FAIL))
    assert d.state.phase == "RolledBack"


def test_a_rolled_back_model_is_not_retried_until_the_spec_changes_or_retry() -> None:
    d = run(started(), (60, FAIL), (120, FAIL))
    again = run(d, (3600, None), (7200, None))
    assert (again.state.phase, again.serving, again.events) == ("RolledBack", Serving(V1), ())
    retried = decide(again.state, spec(), at(7300), command="retry")
    assert (retried.state.phase, retried.state.canary, retried.state.step) == ("Progressing", V2, 0)
    other = decide(again.state, spec(V3), at(7300))
    assert (other.state.phase, other.state.canary) == ("Progressing", V3)


def test_reverting_the_spec_to_stable_cancels_or_clears() -> None:
    d = decide(started().state, spec(V1), at(60))
    assert (d.state.phase, d.serving) == ("Healthy", Serving(V1))
    assert [e.reason for e in d.events] == ["RolloutCancelled"]
    rolled_back = run(started(), (60, FAIL), (120, FAIL))
    assert decide(rolled_back.state, spec(V1), at(200)).state.phase == "Healthy"


def test_a_third_model_mid_rollout_restarts_against_the_same_stable() -> None:
    d = run(started(), (300, PASS))
    d = decide(d.state, spec(V3), at(400))
    assert (d.state.stable, d.state.canary, d.state.step) == (V1, V3, 0)
    assert [e.reason for e in d.events] == ["RolloutSuperseded", "RolloutStarted"]


def test_progress_deadline_rolls_back() -> None:
    d = run(started(), (3601, UNSURE), progressDeadline="1h")
    assert d.state.phase == "RolledBack" and "progressDeadline" in d.state.message


def test_pause_in_spec_holds_and_resume_does_not_count_the_pause() -> None:
    d = run(started(), (100, PASS))
    paused = decide(d.state, spec(paused=True), at(200), PASS)
    assert (paused.state.phase, paused.serving) == ("Paused", Serving(V1, V2, mirror=50))
    assert [e.reason for e in paused.events] == ["RolloutPaused"]
    paused = decide(paused.state, spec(paused=True), at(5000), PASS)
    assert paused.state.phase == "Paused"  # no deadline, no advance while paused
    resumed = decide(paused.state, spec(), at(5200), PASS)
    # Paused 200 s into the 300 s step, resumed at 5200 s: the step is 200 s in again, not 5200 s.
    assert (resumed.state.phase, resumed.state.step) == ("Progressing", 0)
    assert [e.reason for e in resumed.events] == ["RolloutResumed"]
    assert run(resumed, (5300, PASS)).state.step == 1


def test_pause_and_resume_commands() -> None:
    d = decide(started().state, spec(), at(10), command="pause")
    assert d.state.phase == "Paused" and d.state.paused_by_command
    d = decide(d.state, spec(), at(20))
    assert d.state.phase == "Paused"  # stays paused without a new command
    d = decide(d.state, spec(), at(30), command="resume")
    assert d.state.phase == "Progressing"


def test_abort_rolls_back_and_promote_promotes_at_once() -> None:
    aborted = decide(started().state, spec(), at(10), command="abort")
    assert aborted.state.phase == "RolledBack" and aborted.state.failed == V2 and "aborted" in aborted.state.message
    promoted = decide(started().state, spec(), at(10), command="promote")
    assert (promoted.state.phase, promoted.state.stable, promoted.serving) == ("Healthy", V2, Serving(V2))


def test_state_survives_a_round_trip_through_status() -> None:
    d = run(started(), (60, FAIL), (300, PASS))
    status = d.state.to_status()
    assert RolloutStatus.model_validate(status) == d.state
    # A restarted operator continues from status alone, at the same step with the same timers.
    resumed = decide(RolloutStatus.model_validate(status), spec(), at(600), PASS)
    assert resumed.state == run(d, (600, PASS)).state


def test_without_a_rollout_the_spec_model_serves() -> None:
    plain = parse_spec({"model": written(V2)})
    assert decide(RolloutStatus(stable=V1), plain, T0).serving == Serving(V2)


def test_the_digest_is_part_of_the_models_identity() -> None:
    pinned = V1.model_copy(update={"sha256": "A" * 64})
    d = decide(RolloutStatus(stable=V1), spec(pinned), T0)
    assert d.state.canary == V1.model_copy(update={"sha256": "a" * 64})


@pytest.mark.parametrize(("last", "now", "due"), [(None, 0, True), (0, 59, False), (0, 60, True)])
def test_analysis_due_every_interval(last: float | None, now: float, due: bool) -> None:
    rollout = spec(analysisInterval="1m").rollout
    assert analysis_due(None if last is None else at(last), at(now), rollout) is due


def test_gates_from_the_spec_over_the_defaults() -> None:
    rollout = spec(gates={"maxErrorRate": 0.01, "minRequests": 200}).rollout
    assert rollout.effective_gates == analysis.Gates(min_requests=200, max_error_rate=0.01)


def test_rolled_back_condition_names_the_gate_and_values() -> None:
    from modeldeploy_operator.rollout_status import rolled_back_condition

    d = run(started(), (60, FAIL), (120, FAIL))
    condition = rolled_back_condition(d.state, 4, None, "2026-01-01T12:02:00Z")
    assert condition is not None
    assert {k: condition[k] for k in ("type", "status", "reason", "observedGeneration")} == {
        "type": "RolledBack", "status": "True", "reason": "ErrorRate", "observedGeneration": 4}
    assert "canaryErrorRate=0.3" in condition["message"]
    later = rolled_back_condition(d.state, 4, {"conditions": [condition]}, "2026-01-01T13:00:00Z")
    assert later == condition  # unchanged: the transition time stays
    assert rolled_back_condition(started().state, 4, None, "x") is None


def test_children_are_built_from_the_rollouts_routing_not_the_spec() -> None:
    from modeldeploy_operator.rollout_status import effective_spec

    d = run(started(), (300, PASS))
    built = effective_spec(spec(), d.serving)
    assert built.model.path == "v1.onnx"  # the stable track keeps the proven model
    assert built.canary is not None and built.canary.source.path == "v2.onnx"
    assert (built.canary_weight, built.mirror_percent) == (10, 0)
    assert spec().model.path == "v2.onnx"  # the user's spec is untouched


def test_the_analysis_window_is_recorded_in_status_and_survives_a_restart() -> None:
    first = decide(started().state, spec(), at(5), None, window_started=at(5))  # the first window begins
    assert first.state.to_status()["analysisStartedAt"] == "2026-01-01T12:00:05Z"
    judged = decide(first.state, spec(), at(65), PASS, window_started=at(65))
    assert judged.state.analysis_started_at == at(65)
    # A reconcile between analyses (any event) keeps the window; so does a process reading status anew.
    between = decide(RolloutStatus.model_validate(judged.state.to_status()), spec(), at(90))
    assert between.state.analysis_started_at == at(65)
    rollout = spec(analysisInterval="1m").rollout
    assert rollout is not None
    assert recheck_in(between.state, at(90), rollout) == 35.0  # at the window's end, 60 s after it began
    assert analysis_due(between.state.analysis_started_at, at(124), rollout) is False
    assert analysis_due(between.state.analysis_started_at, at(125), rollout) is True


def test_the_window_closes_while_paused_and_a_new_one_starts_on_resume() -> None:
    running = decide(started().state, spec(), at(5), None, window_started=at(5))
    paused = decide(running.state, spec(), at(20), command="pause")
    assert paused.state.analysis_started_at is None and "analysisStartedAt" not in paused.state.to_status()
    rollout = spec().rollout
    assert rollout is not None
    assert recheck_in(paused.state, at(20), rollout) == float(rollout.interval_seconds)
    resumed = decide(paused.state, spec(), at(40), command="resume")
    assert (resumed.state.phase, resumed.state.analysis_started_at) == ("Progressing", None)
    assert recheck_in(resumed.state, at(40), rollout) == 1.0  # judged again at once: the new window opens


def test_no_window_is_recorded_for_a_rollout_that_ended_or_was_replaced() -> None:
    running = decide(started().state, spec(), at(5), None, window_started=at(5))
    aborted = decide(running.state, spec(), at(10), None, "abort", window_started=at(10))
    assert aborted.state.analysis_started_at is None
    rollout = spec().rollout
    assert rollout is not None
    assert recheck_in(aborted.state, at(10), rollout) is None
    superseded = decide(running.state, spec(V3), at(10), PASS, window_started=at(10))
    assert (superseded.state.canary, superseded.state.analysis_started_at) == (V3, None)


def test_a_window_that_outlived_the_operator_is_judged_whole() -> None:
    rollout = spec(analysisInterval="1m").rollout
    assert rollout is not None
    state = RolloutStatus(phase="Progressing", stable=V1, canary=V2, analysis_started_at=at(0))
    assert window_seconds(state, at(60), rollout) == 60
    assert window_seconds(state, at(200), rollout) == 200  # down past the window's end: none of it is lost
    assert window_seconds(RolloutStatus(stable=V1), at(200), rollout) == 60


def test_the_verdict_says_where_its_numbers_came_from() -> None:
    from dataclasses import replace

    d = decide(started().state, spec(), at(60), replace(PASS, source="prometheus"), window_started=at(60))
    assert d.state.to_status()["lastVerdict"]["source"] == "prometheus"
    assert "source" not in run(started(), (60, PASS)).state.to_status()["lastVerdict"]


@pytest.mark.parametrize(("routing", "status", "says"), [
    (Serving(V1, V2, weight=10), {"routing": {"backend": "None"}, "traffic": {"stable": 50, "canary": 50}},
     "weight 10% is approximated by the ratio of ready replicas; the canary serves about 50% of the requests"),
    (Serving(V1, V2, mirror=50), {"routing": {"backend": "None"}},
     "mirror 50% cannot be done, so the canary gets no requests"),
    (Serving(V1, V2, weight=10), {"routing": {"backend": "GatewayAPI"}}, None),
    (Serving(V1, V2, weight=100), {"routing": {"backend": "None"}}, None),
    (Serving(V1), {"routing": {"backend": "None"}}, None),
])
def test_status_names_the_approximation_without_a_router(routing: Serving, status: dict[str, Any],
                                                         says: str | None) -> None:
    from modeldeploy_operator.rollout_status import approximation

    found = approximation(routing, status)
    if says is None:
        assert found is None
    else:
        assert found is not None and found.startswith("no routing backend (Istio or the Gateway API): ")
        assert says in found


def test_the_canary_gets_no_traffic_and_no_step_timer_until_its_pods_are_ready() -> None:
    starting = decide(RolloutStatus(stable=V1), spec(steps=STEPS[1:]), T0, canary_ready=False)
    assert starting.serving == Serving(V1, V2, weight=0, mirror=0)
    assert starting.state.step_started_at is None and "waiting for the canary" in starting.state.message
    still = decide(starting.state, spec(steps=STEPS[1:]), at(400), PASS, canary_ready=False)
    assert (still.serving, still.events) == (starting.serving, ())
    # The window's verdict is shown, but neither moves the step nor starts its timer.
    assert still.state.last_verdict is not None and still.state.last_verdict.result == "Pass"
    assert still.state.model_copy(update={"last_verdict": None}) == starting.state
    ready = decide(still.state, spec(steps=STEPS[1:]), at(500), PASS, canary_ready=True)
    assert ready.serving == Serving(V1, V2, weight=10)
    assert (ready.state.step, ready.state.step_started_at) == (0, at(500))  # the pause starts now
    assert decide(ready.state, spec(steps=STEPS[1:]), at(799), PASS).state.step == 0
    assert decide(ready.state, spec(steps=STEPS[1:]), at(800), PASS).state.step == 1


def test_a_paused_rollout_sends_no_traffic_to_a_canary_that_is_not_ready() -> None:
    paused = decide(started().state, spec(paused=True), at(60), canary_ready=False)
    assert paused.state.phase == "Paused" and paused.serving == Serving(V1, V2)


def test_a_decision_that_ends_a_rollout_says_how() -> None:
    """What the operator's metrics count (rollouts finished, by result) comes from the decision itself."""
    assert started().outcome is None
    rolled_back = run(started(), (60, FAIL), (120, FAIL))
    assert rolled_back.outcome == "rolled_back"
    assert decide(started().state, spec(), at(10), command="abort").outcome == "aborted"
    assert decide(started().state, spec(), at(10), command="promote").outcome == "promoted"
    assert decide(started().state, spec(V1), at(10)).outcome == "cancelled"
    assert decide(started().state, spec(V3), at(10)).outcome == "superseded"
    assert run(started(), (60, PASS)).outcome is None
