"""Pure: one ModelDeployment's snapshot -> what to apply, what to delete, and the status to write.

The controller reads a `cache.Snapshot` once, asks `plan_children` what to change, acts on the API,
and asks `next_status` what to report given how the writes went. Nothing here does I/O or reads the
clock, so every decision is unit-tested on plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from modeldeploy_operator import builders, names
from modeldeploy_operator import rollout as rollouts
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.cache import ChildEntry, Snapshot
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.names import Kind


@dataclass(frozen=True)
class ChildRef:
    """A child to delete: where it lives and the uid it must still have (a newer namesake is spared)."""

    kind: Kind
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Plan:
    apply: tuple[builders.Manifest, ...] = ()
    delete: tuple[ChildRef, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How the writes of a plan went."""

    errors: Mapping[str, str] = field(default_factory=dict)  # "Kind/name" -> why the API refused it
    applied: Mapping[str, statuses.DeploymentView] = field(default_factory=dict)  # track -> the applied Deployment
    namespace_going_away: bool = False  # the API server refuses new objects: nothing to report, nothing to retry


@dataclass(frozen=True)
class StatusUpdate:
    status: dict[str, Any]
    events: tuple[statuses.EventNote, ...]


def needs_apply(manifest: Mapping[str, Any], observed: ChildEntry | None) -> bool:
    """Apply when the child is missing, differs from what we would apply, or was edited by hand."""
    if observed is None or observed.foreign_edit:
        return True
    if observed.applied_hash != manifest["metadata"]["annotations"][names.HASH_ANNOTATION]:
        return True
    wanted_replicas = manifest.get("spec", {}).get("replicas")
    return (manifest["kind"] == names.DEPLOYMENT.kind and wanted_replicas is not None
            and observed.replicas != wanted_replicas)


def plan_children(snapshot: Snapshot, config: ServingConfig) -> Plan:
    """The children to apply (missing, outdated or hand-edited) and those no longer wanted."""
    spec = snapshot.spec
    if snapshot.deleting or not isinstance(spec, specs.ModelDeploymentSpec):
        return Plan()  # going away (garbage collection removes the children), or nothing usable to act on
    owner = builders.Owner.from_body(snapshot.body)
    desired = builders.desired_children(owner, spec, config, snapshot.routers, snapshot.keda)
    apply = tuple(m for m in desired if needs_apply(m, snapshot.children.get((m["kind"], m["metadata"]["name"]))))
    wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
    delete = []
    for child_id, child in snapshot.children.items():
        kind = names.CHILD_KIND_BY_NAME.get(child.kind)
        if child_id in wanted or kind is None:
            continue
        if not kind.version:  # a routing kind: addressable only at a version its API serves
            version = snapshot.routers.version_of(kind)
            if version is None:
                continue
            kind = kind.at_version(version)
        delete.append(ChildRef(kind, owner.namespace, child.name, child.uid))
    return Plan(apply, tuple(delete))


def effective_spec(spec: specs.ModelDeploymentSpec, routing: rollouts.Routing) -> specs.ModelDeploymentSpec:
    """What the children are built from during a rollout: the model recorded as stable, and the canary
    with the current step's weight or mirror. Never written anywhere: the stored spec stays the user's."""
    canary = None
    if routing.canary is not None:
        canary = specs.Canary(model=specs.ModelSource.model_validate(dict(routing.canary)),
                              traffic_percent=routing.weight, mirror_percent=routing.mirror)
    return spec.model_copy(update={"model": specs.ModelSource.model_validate(dict(routing.stable)),
                                   "canary": canary})


def with_rollout(snapshot: Snapshot, decision: rollouts.Decision) -> Snapshot:
    """The snapshot as the rollout wants it served: plan_children and next_status then work unchanged."""
    assert isinstance(snapshot.spec, specs.ModelDeploymentSpec)
    return replace(snapshot, spec=effective_spec(snapshot.spec, decision.routing))


def rolled_back_condition(state: rollouts.RolloutState, generation: int, previous: Mapping[str, Any] | None,
                          now: str) -> dict[str, Any] | None:
    """`RolledBack` True, naming the gate and the measured values, while the failed model is what the spec
    asks for; Ready is left to the stable track, which still serves."""
    if state.phase != "RolledBack" or not state.failed_gate:
        return None
    gate = state.failed_gate
    before = next((c for c in (previous or {}).get("conditions") or [] if c.get("type") == "RolledBack"), None)
    return {"type": "RolledBack", "status": "True", "reason": gate[0].upper() + gate[1:],
            "message": state.message, "observedGeneration": generation,
            "lastTransitionTime": before["lastTransitionTime"] if before and before.get("message") == state.message
            else now}


NO_ROUTER = "no routing backend (Istio or the Gateway API)"


def approximation(routing: rollouts.Routing, status: Mapping[str, Any]) -> str | None:
    """What the current step gets instead of what it asks for, when only the Service routes: None when the
    step is honoured exactly (a router routes it, or the canary gets none or all of the requests)."""
    if routing.canary is None or (status.get("routing") or {}).get("backend") != "None":
        return None
    if routing.mirror:
        return (f"{NO_ROUTER}: this step's mirror {routing.mirror}% cannot be done, so the canary gets no requests "
                "and its analysis stays inconclusive until the step changes or progressDeadline passes")
    if not 0 < routing.weight < 100:
        return None
    share = (status.get("traffic") or {}).get("canary", 0)
    return (f"{NO_ROUTER}: this step's weight {routing.weight}% is approximated by the ratio of ready replicas; "
            f"the canary serves about {share}% of the requests")


def next_status(snapshot: Snapshot, config: ServingConfig, now: str, outcome: Outcome,
                rollout: rollouts.Decision | None = None) -> StatusUpdate | None:
    """The status after acting on the plan (None when it would not change), and the Events to post."""
    if outcome.namespace_going_away:
        return None  # the resource goes with its namespace: an ApplyFailed status and Events would be noise
    spec = snapshot.spec
    if isinstance(spec, str):
        status = statuses.invalid_spec_status(snapshot.generation, spec, snapshot.status, now)
    else:
        observation = statuses.Observation(
            owner=builders.Owner.from_body(snapshot.body),
            generation=snapshot.generation,
            spec=spec,
            claims=snapshot.claims,
            deployments={**snapshot.deployments, **outcome.applied},
            pods=snapshot.pods,
            routers=snapshot.routers,
            apply_errors=outcome.errors,
            keda=snapshot.keda,
            hpas=snapshot.hpas,
            scaled_objects=snapshot.scaled_objects,
            route=snapshot.route,
        )
        status = statuses.compute_status(observation, snapshot.status, now, config)
    rollout_events: tuple[statuses.EventNote, ...] = ()
    if rollout is not None:
        status["rollout"] = rollout.state.to_status()
        approximated = approximation(rollout.routing, status)
        if approximated is not None:
            status["rollout"]["approximation"] = approximated
        rolled_back = rolled_back_condition(rollout.state, snapshot.generation, snapshot.status, now)
        if rolled_back is not None:
            status["conditions"] = [*status.get("conditions", []), rolled_back]
        rollout_events = tuple(statuses.EventNote(e.type, e.reason, e.message) for e in rollout.events)
    if statuses.same_status(snapshot.status, status) and not rollout_events:
        return None
    return StatusUpdate(status, (*statuses.transitions(snapshot.status, status), *rollout_events))
