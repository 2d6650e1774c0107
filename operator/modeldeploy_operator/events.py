"""Pure: the Kubernetes Events a status change is worth: one per condition whose status or reason changed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from modeldeploy_operator.names import READY


def conditions_by_type(conditions: Iterable[Mapping[str, Any]] | None) -> dict[str, Mapping[str, Any]]:
    return {str(c.get("type")): c for c in conditions or []}


# Reasons that are a normal step on the way to Ready (a rollout, pods starting): Events for them are
# Normal, so that `kubectl get events --field-selector type=Warning` lists only what needs a person.
PROGRESS_REASONS = frozenset({"RollingOut", "RolloutPending", "ReplicasNotReady", "AutoscalerPending"})


@dataclass(frozen=True)
class EventNote:
    """A Kubernetes Event to post for a condition that changed."""

    type: str  # Normal or Warning
    reason: str
    message: str


def transitions(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[EventNote]:
    """One Event per condition whose status or reason changed; Warnings for the ones going wrong."""
    before = conditions_by_type((previous or {}).get("conditions"))
    notes = []
    for cond in current.get("conditions", []):
        old = before.get(cond["type"])
        if old is not None and old.get("status") == cond["status"] and old.get("reason") == cond["reason"]:
            continue
        if old is None and cond["status"] == "True" and cond["type"] != READY:
            continue  # the first status of a healthy part is not news
        kind = "Normal" if cond["status"] == "True" or cond["reason"] in PROGRESS_REASONS else "Warning"
        notes.append(EventNote(kind, cond["reason"], f"{cond['type']} is {cond['status']}: {cond['message']}"))
    return notes
