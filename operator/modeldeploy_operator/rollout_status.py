"""Pure: what a rollout decision means for the children and the status.

The children are built from an effective spec (the model recorded as stable, and the canary at the
step's weight or mirror) that is never written anywhere: the stored spec stays the user's. The status
gains `status.rollout`, a `RolledBack` condition while the failed model is what the spec asks for, and
what a step gets instead of what it asks for when only the Service routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modeldeploy_operator.events import conditions_by_type
from modeldeploy_operator.rollout import Decision, Serving
from modeldeploy_operator.spec import Canary, ModelDeploymentSpec, ModelSource
from modeldeploy_operator.status_schema import ModelKey, RolloutStatus

ROLLED_BACK = "RolledBack"
NO_ROUTER = "no routing backend (Istio or the Gateway API)"


def _source(key: ModelKey) -> ModelSource:
    return ModelSource.model_validate(key.model_dump(exclude_none=True))


def effective_spec(spec: ModelDeploymentSpec, serving: Serving) -> ModelDeploymentSpec:
    """What the children are built from during a rollout: the model recorded as stable, and the canary
    with the current step's weight or mirror."""
    canary = None
    if serving.canary is not None:
        canary = Canary(model=_source(serving.canary), traffic_percent=serving.weight, mirror_percent=serving.mirror)
    return spec.model_copy(update={"model": _source(serving.stable), "canary": canary})


def rolled_back_condition(state: RolloutStatus, generation: int, previous: Mapping[str, Any] | None,
                          now: str) -> dict[str, Any] | None:
    """`RolledBack` True, naming the gate and the measured values, while the failed model is what the spec
    asks for; Ready is left to the stable track, which still serves."""
    if state.phase != "RolledBack" or not state.failed_gate:
        return None
    gate = state.failed_gate
    before = conditions_by_type((previous or {}).get("conditions")).get(ROLLED_BACK)
    kept = before is not None and before.get("message") == state.message
    return {"type": ROLLED_BACK, "status": "True", "reason": gate[0].upper() + gate[1:],
            "message": state.message, "observedGeneration": generation,
            "lastTransitionTime": before["lastTransitionTime"] if before is not None and kept else now}


def approximation(serving: Serving, status: Mapping[str, Any]) -> str | None:
    """What the current step gets instead of what it asks for, when only the Service routes: None when the
    step is honoured exactly (a router routes it, or the canary gets none or all of the requests)."""
    if serving.canary is None or (status.get("routing") or {}).get("backend") != "None":
        return None
    if serving.mirror:
        return (f"{NO_ROUTER}: this step's mirror {serving.mirror}% cannot be done, so the canary gets no requests "
                "and its analysis stays inconclusive until the step changes or progressDeadline passes")
    if not 0 < serving.weight < 100:
        return None
    share = (status.get("traffic") or {}).get("canary", 0)
    return (f"{NO_ROUTER}: this step's weight {serving.weight}% is approximated by the ratio of ready replicas; "
            f"the canary serves about {share}% of the requests")


def with_rollout(status: dict[str, Any], decision: Decision, generation: int, previous: Mapping[str, Any] | None,
                 now: str) -> dict[str, Any]:
    """The status computed for the effective spec, with the rollout's own parts added."""
    rollout = decision.state.to_status()
    approximated = approximation(decision.serving, status)
    if approximated is not None:
        rollout["approximation"] = approximated
    status["rollout"] = rollout
    rolled_back = rolled_back_condition(decision.state, generation, previous, now)
    if rolled_back is not None:
        status["conditions"] = [*status.get("conditions", []), rolled_back]
    return status
