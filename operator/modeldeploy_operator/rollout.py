"""Pure: the rollout state machine. (state, spec, now, verdict, command) -> next state, serving, events.

All state lives in `status.rollout` (`status_schema.RolloutStatus`) with absolute timestamps, so an
operator killed mid-rollout resumes at the same step with the same timers: nothing here reads the clock
or keeps memory between calls.

Which model is stable is recorded in status, never in the spec: the user changes `spec.model`, and
until the rollout promotes it, the model recorded as stable keeps serving on the stable track while the
new one is the canary. The spec is never written, so `metadata.generation` does not move.

Phases: `Healthy` (stable serves alone), `Progressing` (a canary walks the steps), `Paused` (held by
`spec.rollout.paused` or a `pause` command), `RolledBack` (a gate failed `failureLimit` times in a row,
the progress deadline passed, or someone aborted: stable serves alone, and the failed model is not tried
again until the spec names another model or someone asks to `retry`).

A step advances when its pause has elapsed and the latest analysis passed; an inconclusive analysis (too
few requests) holds the step without counting as a failure. One decision runs the stages below in order;
each either settles the decision or hands the state on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal

from modeldeploy_operator import analysis
from modeldeploy_operator.rollout_commands import Command, refusal
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelSource, Rollout, RolloutStep
from modeldeploy_operator.status_schema import ModelKey, Outcome, RolloutStatus, VerdictRecord

GATE_DEADLINE = "progressDeadline"
GATE_ABORTED = "aborted"


def model_key(source: ModelSource) -> ModelKey:
    """A model's identity as recorded in status: claim, path and (when pinned) digest."""
    return ModelKey(pvc=source.pvc, path=source.path, sha256=source.sha256.lower() if source.sha256 else None)


@dataclass(frozen=True)
class Serving:
    """What the tracks serve and how requests are split (weight and mirror are the canary's)."""

    stable: ModelKey
    canary: ModelKey | None = None
    weight: int = 0
    mirror: int = 0


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: RolloutStatus
    serving: Serving
    events: tuple[Event, ...] = ()
    analyse: bool = False  # the canary is live at a step: judge it every interval
    outcome: Outcome | None = None  # how a rollout ended, when this decision ended one


@dataclass
class _Turn:
    """One decision in the making: the inputs, the state so far, and what it has to say."""

    spec: ModelDeploymentSpec
    rollout: Rollout
    now: dt.datetime
    verdict: analysis.Verdict | None
    command: Command | None
    canary_ready: bool
    state: RolloutStatus
    events: list[Event] = field(default_factory=list)
    outcome: Outcome | None = None

    def update(self, **changes: object) -> None:
        self.state = self.state.model_copy(update=changes)

    def say(self, kind: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def done(self, analyse: bool = False, canary_ready: bool = True) -> Decision:
        return Decision(self.state, serving_of(self.state, self.rollout, canary_ready), tuple(self.events),
                        analyse=analyse, outcome=self.outcome)


def _describe(key: ModelKey | None) -> str:
    return f"{key.pvc}/{key.path}" if key is not None else "<none>"


def verdict_record(verdict: analysis.Verdict, now: dt.datetime) -> VerdictRecord:
    return VerdictRecord(result=verdict.result, gate=verdict.gate or None, message=verdict.message, at=now,
                         measured={k: str(v) for k, v in verdict.measured().items()},
                         source=verdict.source or None)


def serving_of(state: RolloutStatus, rollout: Rollout, canary_ready: bool = True) -> Serving:
    """The step's split; none of it to a canary whose pods are not all ready yet (a weight would send
    callers to a backend without endpoints: errors, not a judgement of the model)."""
    assert state.stable is not None
    if state.phase not in ("Progressing", "Paused") or state.canary is None:
        return Serving(state.stable)
    if not canary_ready:
        return Serving(state.stable, state.canary)
    step = rollout.steps[min(state.step, len(rollout.steps) - 1)]
    return Serving(state.stable, state.canary, weight=step.weight or 0, mirror=step.mirror or 0)


def _start(turn: _Turn, desired: ModelKey) -> None:
    steps = len(turn.rollout.steps)
    turn.say("Normal", "RolloutStarted",
             f"canary {_describe(desired)} against stable {_describe(turn.state.stable)}: step 1 of {steps}")
    turn.state = RolloutStatus(phase="Progressing", stable=turn.state.stable, canary=desired, steps=steps,
                               started_at=turn.now, step_started_at=turn.now, message=f"step 1/{steps}")
    if not turn.canary_ready:
        _wait(turn)


def _wait(turn: _Turn) -> None:
    """Held until the canary's pods are ready: no traffic to it and no step timer (a fixed state, so
    reconciles meanwhile write nothing)."""
    turn.update(step_started_at=None, message=f"step {turn.state.step + 1}/{len(turn.rollout.steps)}: waiting for "
                "the canary's pods to be ready before sending it traffic")


def _roll_back(turn: _Turn, gate: str, message: str) -> Decision:
    text = f"rolled back {_describe(turn.state.canary)} ({gate}): {message}"
    turn.say("Warning", "RolledBack", text)
    turn.update(phase="RolledBack", canary=None, failed=turn.state.canary, failed_gate=gate, paused_at=None,
                paused_by_command=None, message=text)
    turn.outcome = "aborted" if gate == GATE_ABORTED else "rolled_back"
    return turn.done()


def _promote(turn: _Turn, why: str) -> Decision:
    canary = turn.state.canary
    turn.say("Normal", "Promoted", f"{_describe(canary)} is stable ({why})")
    turn.state = RolloutStatus(phase="Healthy", stable=canary, message=f"promoted {_describe(canary)}")
    turn.outcome = "promoted"
    return turn.done()


def _follow_spec(turn: _Turn, desired: ModelKey) -> Decision | None:
    """The spec decides which model is wanted; status remembers which one is proven. Settles the decision
    when the spec moved away from the canary (back to stable, or on to another model)."""
    state = turn.state
    if desired == state.stable:
        if state.canary is not None:
            turn.say("Normal", "RolloutCancelled", f"spec.model is the stable {_describe(desired)} again: "
                     "canary removed")
            turn.state = RolloutStatus(stable=desired, failed=state.failed, message="canary removed")
            turn.outcome = "cancelled"
        elif state.phase != "Healthy":
            turn.state = RolloutStatus(stable=desired, failed=state.failed, message=f"serving {_describe(desired)}")
        return None
    if desired == state.canary:
        return None
    if desired == state.failed and turn.command != "retry":
        turn.update(phase="RolledBack", canary=None)
        return turn.done()
    if state.canary is not None:
        turn.say("Normal", "RolloutSuperseded", f"canary {_describe(state.canary)} replaced by {_describe(desired)}")
        turn.outcome = "superseded"
    _start(turn, desired)
    return turn.done(canary_ready=turn.canary_ready)


def _hold_or_resume(turn: _Turn) -> Decision | None:
    """Pause (by the spec or a command) settles the decision; resuming shifts the timers by the time held."""
    state, steps = turn.state, len(turn.rollout.steps)
    by_command = (bool(state.paused_by_command) or turn.command == "pause") and turn.command != "resume"
    if turn.rollout.paused or by_command:
        if state.phase != "Paused":
            turn.say("Normal", "RolloutPaused", f"held at step {state.step + 1}")
            turn.update(phase="Paused", paused_at=turn.now)
        turn.update(paused_by_command=by_command or None, message=f"paused at step {state.step + 1}/{steps}")
        return turn.done(canary_ready=turn.canary_ready)
    if state.phase == "Paused":
        held = turn.now - (state.paused_at or turn.now)
        turn.say("Normal", "RolloutResumed", f"step {state.step + 1} resumes")
        turn.update(phase="Progressing", paused_at=None, paused_by_command=None,
                    started_at=(state.started_at or turn.now) + held,
                    step_started_at=(state.step_started_at or turn.now) + held)
    return None


def _past_deadline(turn: _Turn) -> Decision | None:
    started = turn.state.started_at or turn.now
    if (turn.now - started).total_seconds() <= turn.rollout.deadline_seconds:
        return None
    return _roll_back(turn, GATE_DEADLINE,
                      f"not promoted within {turn.rollout.deadline_text} (at step {turn.state.step + 1})")


def _waiting_for_canary(turn: _Turn) -> Decision | None:
    """Windows go on while the canary's pods are not ready (judged on schedule, shown as the last verdict),
    but with no traffic to the canary they cannot fail it or move the step."""
    if turn.canary_ready:
        if turn.state.step_started_at is None:  # the canary just became ready: the step's pause starts now
            turn.update(step_started_at=turn.now, message=f"step {turn.state.step + 1}/{len(turn.rollout.steps)}")
        return None
    _wait(turn)
    if turn.verdict is not None:
        turn.update(last_verdict=verdict_record(turn.verdict, turn.now))
    return turn.done(analyse=True, canary_ready=False)


def _judge(turn: _Turn, verdict: analysis.Verdict) -> Decision | None:
    """Record the verdict; roll back after `failureLimit` failures in a row."""
    record = verdict_record(verdict, turn.now)
    if verdict.result == analysis.PASSED:
        turn.update(consecutive_failures=0, last_verdict=record)
        return None
    if verdict.result != analysis.FAILED:
        turn.update(last_verdict=record, message=f"holding at step {turn.state.step + 1}: {verdict.message}")
        return None
    failures = turn.state.consecutive_failures + 1
    allowed = turn.rollout.failures_allowed
    turn.update(consecutive_failures=failures, last_verdict=record,
                message=f"analysis failed ({failures}/{allowed}): {verdict.message}")
    turn.say("Warning", "AnalysisFailed", turn.state.message)
    if failures < allowed:
        return None
    measured = ", ".join(f"{k}={v}" for k, v in verdict.measured().items())
    return _roll_back(turn, verdict.gate or "analysis", f"{verdict.message} [{measured}]")


def _advance(turn: _Turn, verdict: analysis.Verdict) -> Decision | None:
    """A passed verdict after the step's pause moves to the next step, or promotes after the last."""
    steps = turn.rollout.steps
    if turn.state.step >= len(steps):  # the steps were shortened mid-rollout
        turn.update(step=len(steps) - 1)
    elapsed = (turn.now - (turn.state.step_started_at or turn.now)).total_seconds()
    if verdict.result != analysis.PASSED or elapsed < turn.rollout.pause_seconds(steps[turn.state.step]):
        return None
    if turn.state.step + 1 >= len(steps):
        return _promote(turn, f"passed all {len(steps)} steps")
    turn.update(step=turn.state.step + 1, step_started_at=turn.now,
                message=f"step {turn.state.step + 2}/{len(steps)}")
    step = turn.state.step
    turn.say("Normal", "StepAdvanced", f"step {step + 1} of {len(steps)}: {_step_text(steps[step])}")
    return None


def _step_text(step: RolloutStep) -> str:
    return f"mirror {step.mirror}%" if step.mirror is not None else f"weight {step.weight}%"


def _under_way(turn: _Turn) -> Decision:
    """A canary is out: commands, pause, deadline, readiness, verdict and step, in that order."""
    if turn.command == "abort":
        return _roll_back(turn, GATE_ABORTED, "aborted on request")
    if turn.command == "promote":
        return _promote(turn, "promoted on request")
    settled = _hold_or_resume(turn) or _past_deadline(turn) or _waiting_for_canary(turn)
    if settled is not None:
        return settled
    if turn.verdict is not None:
        settled = _judge(turn, turn.verdict) or _advance(turn, turn.verdict)
        if settled is not None:
            return settled
    return turn.done(analyse=True)


def _decide(previous: RolloutStatus | None, spec: ModelDeploymentSpec, now: dt.datetime,
            verdict: analysis.Verdict | None, command: Command | None, canary_ready: bool) -> Decision:
    rollout = spec.rollout
    desired = model_key(spec.model)
    if rollout is None:
        return Decision(RolloutStatus(stable=desired), Serving(desired))
    if previous is None or previous.stable is None:
        return Decision(RolloutStatus(stable=desired, message="serving the first model"), Serving(desired))
    if command is not None and refusal(command, previous.facts(bool(rollout.paused))) is not None:
        command = None  # it cannot take effect now: cleared unseen (the plugin refuses to send it)
    state = previous.model_copy(update={"command": None, "approximation": None})
    turn = _Turn(spec, rollout, now, verdict, command, canary_ready, state)
    settled = _follow_spec(turn, desired)
    if settled is not None:
        return settled
    if turn.state.canary is None:
        return turn.done()
    return _under_way(turn)


def decide(
    previous: RolloutStatus | None,
    spec: ModelDeploymentSpec,
    now: dt.datetime,
    verdict: analysis.Verdict | None = None,
    command: Command | None = None,
    window_started: dt.datetime | None = None,
    canary_ready: bool = True,
) -> Decision:
    """One step of the machine. `verdict` is the analysis of the window that just ended (None: none due, or
    the first window); `command` an imperative request from `kubectl modeldeploy rollout ...` (read from
    status); `window_started` when the next analysis window began (given whenever an analysis was due);
    `canary_ready` whether every pod of the canary track runs and is ready: until then the canary gets
    no traffic and the step's timer does not start.

    The window's start is kept in status, so a restarted operator judges on the same schedule."""
    decision = _decide(previous, spec, now, verdict, command, canary_ready)
    state = decision.state
    if not state.judged:
        state = state.model_copy(update={"analysis_started_at": None})  # the next window starts on resume
    elif decision.analyse and window_started is not None:
        state = state.model_copy(update={"analysis_started_at": window_started})
    return Decision(state, decision.serving, decision.events, decision.analyse, decision.outcome)


def analysis_due(last_analysis: dt.datetime | None, now: dt.datetime, rollout: Rollout) -> bool:
    """Whether an analysis interval has ended since the last verdict."""
    return last_analysis is None or (now - last_analysis).total_seconds() >= rollout.interval_seconds


def window_seconds(state: RolloutStatus, now: dt.datetime, rollout: Rollout) -> int:
    """How long the window that ends now lasted: at least an interval (a query's range), more when the
    operator was down past its end (the whole window since it began is judged, none of it is lost)."""
    if state.analysis_started_at is None:
        return rollout.interval_seconds
    return max(rollout.interval_seconds, int((now - state.analysis_started_at).total_seconds()))


MIN_RECHECK_SECONDS = 1.0


def recheck_in(state: RolloutStatus, now: dt.datetime, rollout: Rollout) -> float | None:
    """When to look at the rollout again without any event: at the end of the current analysis window
    (its start is in status, so this holds across restarts); None once nothing is under way."""
    if state.judged:
        if state.analysis_started_at is None:
            return MIN_RECHECK_SECONDS
        ends = state.analysis_started_at + dt.timedelta(seconds=rollout.interval_seconds)
        return max(MIN_RECHECK_SECONDS, (ends - now).total_seconds())
    if state.phase == "Paused":
        return float(rollout.interval_seconds)
    return None
