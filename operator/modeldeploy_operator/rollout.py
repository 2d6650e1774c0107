"""Pure: the rollout state machine. (state, spec, now, verdict, command) -> next state, routing, events.

All state lives in `status.rollout` with absolute timestamps, so an operator killed mid-rollout resumes at
the same step with the same timers: nothing here reads the clock or keeps memory between calls.

Which model is stable is recorded here (status), never in the spec: the user changes `spec.model`, and
until the rollout promotes it, the model recorded as stable keeps serving on the stable track while the
new one is the canary. The spec is never written, so `metadata.generation` does not move.

Phases: `Healthy` (stable serves alone), `Progressing` (a canary walks the steps), `Paused` (held by
`spec.rollout.paused` or a `pause` command), `RolledBack` (a gate failed `failureLimit` times in a row,
the progress deadline passed, or someone aborted: stable serves alone, and the failed model is not tried
again until the spec names another model or someone asks to `retry`).

A step advances when its pause has elapsed and the latest analysis passed; an inconclusive analysis (too
few requests) holds the step without counting as a failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from modeldeploy_operator import analysis
from modeldeploy_operator import spec as specs

Phase = Literal["Healthy", "Progressing", "Paused", "RolledBack"]
Command = Literal["pause", "resume", "abort", "retry", "promote"]
COMMANDS: tuple[Command, ...] = ("pause", "resume", "abort", "retry", "promote")

GATE_DEADLINE = "progressDeadline"
GATE_ABORTED = "aborted"


def model_key(source: specs.ModelSource) -> dict[str, str]:
    """A model's identity as recorded in status: claim, path and (when pinned) digest."""
    key = {"pvc": source.pvc, "path": source.path}
    if source.sha256:
        key["sha256"] = source.sha256.lower()
    return key


def _time(text: str | None) -> dt.datetime | None:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC) if text else None


def _text(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


@dataclass(frozen=True)
class RolloutState:
    """What `status.rollout` holds."""

    phase: Phase = "Healthy"
    stable: Mapping[str, str] = field(default_factory=dict)
    canary: Mapping[str, str] | None = None
    step: int = 0
    steps: int = 0  # how many the rollout has (for the STEP column)
    started_at: dt.datetime | None = None
    step_started_at: dt.datetime | None = None
    paused_at: dt.datetime | None = None
    paused_by_command: bool = False
    analysis_started_at: dt.datetime | None = None  # when the current analysis window began
    consecutive_failures: int = 0
    last_verdict: Mapping[str, Any] | None = None
    failed: Mapping[str, str] | None = None  # the model rolled back: not tried again until retry
    failed_gate: str | None = None  # why: the gate that failed, progressDeadline or aborted
    message: str = ""

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "stable": dict(self.stable), "step": self.step,
                               "consecutiveFailures": self.consecutive_failures, "message": self.message}
        optional = {
            "canary": dict(self.canary) if self.canary is not None else None,
            "steps": self.steps or None,
            "stepSummary": f"{self.step + 1}/{self.steps}" if self.canary is not None and self.steps else None,
            "startedAt": _text(self.started_at),
            "stepStartedAt": _text(self.step_started_at),
            "pausedAt": _text(self.paused_at),
            "pausedByCommand": self.paused_by_command or None,
            "analysisStartedAt": _text(self.analysis_started_at),
            "lastVerdict": dict(self.last_verdict) if self.last_verdict is not None else None,
            "failed": dict(self.failed) if self.failed is not None else None,
            "failedGate": self.failed_gate,
        }
        out.update({key: value for key, value in optional.items() if value is not None})
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> RolloutState:
        return cls(
            phase=status.get("phase", "Healthy"),
            stable=dict(status.get("stable") or {}),
            canary=dict(status["canary"]) if status.get("canary") else None,
            step=int(status.get("step", 0)),
            steps=int(status.get("steps", 0)),
            started_at=_time(status.get("startedAt")),
            step_started_at=_time(status.get("stepStartedAt")),
            paused_at=_time(status.get("pausedAt")),
            paused_by_command=bool(status.get("pausedByCommand", False)),
            analysis_started_at=_time(status.get("analysisStartedAt")),
            consecutive_failures=int(status.get("consecutiveFailures", 0)),
            last_verdict=status.get("lastVerdict"),
            failed=dict(status["failed"]) if status.get("failed") else None,
            failed_gate=status.get("failedGate"),
            message=str(status.get("message", "")),
        )

    @property
    def judged(self) -> bool:
        """A canary is live at a step and judged every interval (not paused, not rolled back)."""
        return self.phase == "Progressing" and self.canary is not None


@dataclass(frozen=True)
class Routing:
    """What the tracks serve and how requests are split (weight and mirror are the canary's)."""

    stable: Mapping[str, str]
    canary: Mapping[str, str] | None = None
    weight: int = 0
    mirror: int = 0


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    routing: Routing
    events: tuple[Event, ...] = ()
    analyse: bool = False  # the canary is live at a step: judge it every interval


def gates_of(rollout: specs.Rollout) -> analysis.Gates:
    """The spec's thresholds over the engine's defaults."""
    given = rollout.gates or specs.RolloutGates()
    defaults = analysis.Gates()
    return analysis.Gates(
        min_requests=given.min_requests or defaults.min_requests,
        max_error_rate=given.max_error_rate if given.max_error_rate is not None else defaults.max_error_rate,
        max_error_rate_increase=(given.max_error_rate_increase if given.max_error_rate_increase is not None
                                 else defaults.max_error_rate_increase),
        max_latency_p95_ratio=(given.max_latency_p95_ratio if given.max_latency_p95_ratio is not None
                               else defaults.max_latency_p95_ratio),
        max_output_psi=given.max_output_psi if given.max_output_psi is not None else defaults.max_output_psi,
    )


def _describe(key: Mapping[str, str]) -> str:
    return f"{key.get('pvc')}/{key.get('path')}"


def _verdict_record(verdict: analysis.Verdict, now: dt.datetime) -> dict[str, Any]:
    record: dict[str, Any] = {"result": verdict.result, "message": verdict.message, "at": _text(now),
                              "measured": {k: str(v) for k, v in verdict.measured().items()}}
    if verdict.gate:
        record["gate"] = verdict.gate
    if verdict.source:
        record["source"] = verdict.source
    return record


def _routing(state: RolloutState, rollout: specs.Rollout, canary_ready: bool = True) -> Routing:
    """The step's split; none of it to a canary whose pods are not all ready yet (a weight would send
    callers to a backend without endpoints: errors, not a judgement of the model)."""
    if state.phase not in ("Progressing", "Paused") or state.canary is None:
        return Routing(state.stable)
    if not canary_ready:
        return Routing(state.stable, state.canary)
    step = rollout.steps[min(state.step, len(rollout.steps) - 1)]
    return Routing(state.stable, state.canary, weight=step.weight or 0, mirror=step.mirror or 0)


def _start(state: RolloutState, desired: Mapping[str, str], now: dt.datetime, rollout: specs.Rollout,
           events: list[Event]) -> RolloutState:
    events.append(Event("Normal", "RolloutStarted",
                        f"canary {_describe(desired)} against stable {_describe(state.stable)}: step 1 of "
                        f"{len(rollout.steps)}"))
    return RolloutState(phase="Progressing", stable=state.stable, canary=desired, step=0, steps=len(rollout.steps),
                        started_at=now,
                        step_started_at=now, failed=None, message=f"step 1/{len(rollout.steps)}")


def _waiting(state: RolloutState, steps: int) -> RolloutState:
    """Held until the canary's pods are ready: no traffic to it and no step timer (a fixed state, so
    reconciles meanwhile write nothing)."""
    return replace(state, step_started_at=None, message=f"step {state.step + 1}/{steps}: waiting for the "
                   "canary's pods to be ready before sending it traffic")


def _roll_back(state: RolloutState, gate: str, message: str, events: list[Event]) -> RolloutState:
    assert state.canary is not None
    text = f"rolled back {_describe(state.canary)} ({gate}): {message}"
    events.append(Event("Warning", "RolledBack", text))
    return replace(state, phase="RolledBack", canary=None, failed=state.canary, failed_gate=gate, paused_at=None,
                   paused_by_command=False, message=text)


def _promote(state: RolloutState, why: str, events: list[Event]) -> RolloutState:
    assert state.canary is not None
    events.append(Event("Normal", "Promoted", f"{_describe(state.canary)} is stable ({why})"))
    return RolloutState(phase="Healthy", stable=state.canary, message=f"promoted {_describe(state.canary)}")


def decide(
    previous: RolloutState | None,
    spec: specs.ModelDeploymentSpec,
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
        state = replace(state, analysis_started_at=None)  # paused or over: the next window starts on resume
    elif decision.analyse and window_started is not None:
        state = replace(state, analysis_started_at=window_started)
    return replace(decision, state=state)


def _decide(
    previous: RolloutState | None,
    spec: specs.ModelDeploymentSpec,
    now: dt.datetime,
    verdict: analysis.Verdict | None,
    command: Command | None,
    canary_ready: bool,
) -> Decision:
    rollout = spec.rollout
    desired = model_key(spec.model)
    if rollout is None:
        return Decision(RolloutState(stable=desired), Routing(desired))
    if previous is None or not previous.stable:
        return Decision(RolloutState(stable=desired, message="serving the first model"), Routing(desired))
    state = previous
    events: list[Event] = []

    # The spec decides which model is wanted; status remembers which one is proven.
    if desired == state.stable:
        if state.canary is not None:
            events.append(Event("Normal", "RolloutCancelled",
                                f"spec.model is the stable {_describe(desired)} again: canary removed"))
            state = RolloutState(stable=desired, failed=state.failed, message="canary removed")
        elif state.phase != "Healthy":
            state = RolloutState(stable=desired, failed=state.failed, message=f"serving {_describe(desired)}")
    elif desired != state.canary:
        if desired == state.failed and command != "retry":
            state = replace(state, phase="RolledBack", canary=None)
        else:
            if state.canary is not None:
                events.append(Event("Normal", "RolloutSuperseded",
                                    f"canary {_describe(state.canary)} replaced by {_describe(desired)}"))
            state = _start(state, desired, now, rollout, events)
            if not canary_ready:
                state = _waiting(state, len(rollout.steps))
        return Decision(state, _routing(state, rollout, canary_ready), tuple(events), analyse=False)

    if state.canary is None:
        return Decision(state, _routing(state, rollout), tuple(events))

    # A rollout is under way.
    if command == "abort":
        state = _roll_back(state, GATE_ABORTED, "aborted on request", events)
        return Decision(state, _routing(state, rollout), tuple(events))
    if command == "promote":
        state = _promote(state, "promoted on request", events)
        return Decision(state, _routing(state, rollout), tuple(events))

    held_by_spec = bool(rollout.paused)
    by_command = (state.paused_by_command or command == "pause") and command != "resume"
    if held_by_spec or by_command:
        if state.phase != "Paused":
            events.append(Event("Normal", "RolloutPaused", f"held at step {state.step + 1}"))
            state = replace(state, phase="Paused", paused_at=now)
        state = replace(state, paused_by_command=by_command, message=f"paused at step {state.step + 1}/"
                        f"{len(rollout.steps)}")
        return Decision(state, _routing(state, rollout, canary_ready), tuple(events))
    if state.phase == "Paused":
        # Resume: the pause is not counted against the step's timer nor the deadline.
        held = now - (state.paused_at or now)
        events.append(Event("Normal", "RolloutResumed", f"step {state.step + 1} resumes"))
        state = replace(
            state, phase="Progressing", paused_at=None, paused_by_command=False,
            started_at=(state.started_at or now) + held, step_started_at=(state.step_started_at or now) + held,
        )

    started = state.started_at or now
    if (now - started).total_seconds() > rollout.deadline_seconds:
        state = _roll_back(state, GATE_DEADLINE,
                           f"not promoted within {rollout.progress_deadline or '1h'} (at step {state.step + 1})",
                           events)
        return Decision(state, _routing(state, rollout), tuple(events))

    if not canary_ready:
        # Windows go on (judged on schedule, shown as the last verdict), but with no traffic to the canary
        # they cannot fail it or move the step.
        waiting = _waiting(state, len(rollout.steps))
        if verdict is not None:
            waiting = replace(waiting, last_verdict=_verdict_record(verdict, now))
        return Decision(waiting, _routing(state, rollout, canary_ready), tuple(events), analyse=True)
    if state.step_started_at is None:  # the canary just became ready: the step's pause starts now
        state = replace(state, step_started_at=now, message=f"step {state.step + 1}/{len(rollout.steps)}")

    if verdict is not None:
        record = _verdict_record(verdict, now)
        if verdict.result == analysis.FAILED:
            failures = state.consecutive_failures + 1
            state = replace(state, consecutive_failures=failures, last_verdict=record,
                            message=f"analysis failed ({failures}/{rollout.failures_allowed}): {verdict.message}")
            events.append(Event("Warning", "AnalysisFailed", state.message))
            if failures >= rollout.failures_allowed:
                measured = ", ".join(f"{k}={v}" for k, v in verdict.measured().items())
                state = _roll_back(state, verdict.gate or "analysis", f"{verdict.message} [{measured}]", events)
                return Decision(state, _routing(state, rollout), tuple(events))
        elif verdict.result == analysis.PASSED:
            state = replace(state, consecutive_failures=0, last_verdict=record)
        else:
            state = replace(state, last_verdict=record, message=f"holding at step {state.step + 1}: {verdict.message}")

        if state.step >= len(rollout.steps):  # the steps were shortened mid-rollout
            state = replace(state, step=len(rollout.steps) - 1)
        step = rollout.steps[state.step]
        elapsed = (now - (state.step_started_at or now)).total_seconds()
        if verdict.result == analysis.PASSED and elapsed >= rollout.pause_seconds(step):
            if state.step + 1 >= len(rollout.steps):
                state = _promote(state, f"passed all {len(rollout.steps)} steps", events)
                return Decision(state, _routing(state, rollout), tuple(events))
            state = replace(state, step=state.step + 1, step_started_at=now,
                            message=f"step {state.step + 2}/{len(rollout.steps)}")
            events.append(Event("Normal", "StepAdvanced", f"step {state.step + 1} of {len(rollout.steps)}: "
                                f"{_step_text(rollout.steps[state.step])}"))
    return Decision(state, _routing(state, rollout), tuple(events), analyse=True)


def _step_text(step: specs.RolloutStep) -> str:
    return f"mirror {step.mirror}%" if step.mirror is not None else f"weight {step.weight}%"


def analysis_due(last_analysis: dt.datetime | None, now: dt.datetime, rollout: specs.Rollout) -> bool:
    """Whether an analysis interval has ended since the last verdict."""
    return last_analysis is None or (now - last_analysis).total_seconds() >= rollout.interval_seconds


def window_seconds(state: RolloutState, now: dt.datetime, rollout: specs.Rollout) -> int:
    """How long the window that ends now lasted: at least an interval (a query's range), more when the
    operator was down past its end (the whole window since it began is judged, none of it is lost)."""
    if state.analysis_started_at is None:
        return rollout.interval_seconds
    return max(rollout.interval_seconds, int((now - state.analysis_started_at).total_seconds()))


MIN_RECHECK_SECONDS = 1.0


def recheck_in(state: RolloutState, now: dt.datetime, rollout: specs.Rollout) -> float | None:
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
