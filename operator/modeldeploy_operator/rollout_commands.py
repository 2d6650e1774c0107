"""The imperative rollout commands (`kubectl modeldeploy rollout ACTION`) and when each can take effect.

One list and one set of preconditions, read by the operator (a command that cannot take effect is
cleared unseen) and by the plugin (which refuses to send it, saying why). Standard library only: the
plugin imports it without the operator's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Command = Literal["pause", "resume", "abort", "retry", "promote"]
COMMANDS: tuple[Command, ...] = get_args(Command)
UNDER_WAY_PHASES = ("Progressing", "Paused")


@dataclass(frozen=True)
class RolloutFacts:
    """What decides whether a command can take effect, as status and spec show it."""

    phase: str  # Healthy, Progressing, Paused, RolledBack, or "not started"
    has_canary: bool
    has_failed: bool  # a rolled-back model is recorded
    paused_in_spec: bool  # spec.rollout.paused

    @property
    def under_way(self) -> bool:
        return self.phase in UNDER_WAY_PHASES and self.has_canary


def refusal(action: Command, facts: RolloutFacts) -> str | None:
    """Why `action` would do nothing now, or None when it takes effect."""
    if action in ("pause", "abort", "promote") and not facts.under_way:
        return f"no rollout is under way (phase {facts.phase})"
    if action == "pause" and facts.phase == "Paused":
        return "it is already paused"
    if action == "resume":
        if facts.phase != "Paused":
            return f"it is not paused (phase {facts.phase})"
        if facts.paused_in_spec:
            return "spec.rollout.paused is true: set it to false where the spec is kept (git), not with a command"
    if action == "retry" and not (facts.phase == "RolledBack" and facts.has_failed):
        return f"nothing was rolled back (phase {facts.phase})"
    return None


def parse(action: object) -> Command | None:
    """A command as written in status.rollout.command.action; None for anything else."""
    return next((command for command in COMMANDS if command == action), None)
