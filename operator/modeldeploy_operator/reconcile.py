"""Pure: one ModelDeployment's snapshot -> what to apply, what to delete, and the status to write.

The ModelDeployment reconciler reads a `cache.Snapshot` once, asks `plan_children` what to change, acts
on the API, and asks `next_status` what to report given how the writes went. Nothing here does I/O or
reads the clock, so every decision is unit-tested on plain data.
"""

from __future__ import annotations

from dataclasses import replace

from modeldeploy_operator import builders, children, kinds
from modeldeploy_operator.cache import Snapshot
from modeldeploy_operator.children import Outcome, Plan, StatusUpdate
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.events import EventNote, transitions
from modeldeploy_operator.manifests import Owner
from modeldeploy_operator.rollout import Decision
from modeldeploy_operator.rollout_status import effective_spec, with_rollout
from modeldeploy_operator.spec import ModelDeploymentSpec
from modeldeploy_operator.status import Observation, compute_status, invalid_spec_status, same_status
from modeldeploy_operator.views import DeploymentView, HpaView, PodView, RouteView, ScaledObjectView


def plan_children(snapshot: Snapshot, config: ServingConfig) -> Plan:
    """The children to apply (missing, outdated or hand-edited) and those no longer wanted."""
    spec = snapshot.spec
    if snapshot.deleting or not isinstance(spec, ModelDeploymentSpec):
        return Plan()  # going away (garbage collection removes the children), or nothing usable to act on
    owner = Owner.from_body(snapshot.body)
    desired = builders.desired_children(owner, spec, config, snapshot.routers, snapshot.keda)
    return children.plan(kinds.MODEL_DEPLOYMENTS, snapshot, desired)


def serve_as(snapshot: Snapshot, decision: Decision) -> Snapshot:
    """The snapshot as the rollout wants it served: plan_children and next_status then work unchanged."""
    assert isinstance(snapshot.spec, ModelDeploymentSpec)
    return replace(snapshot, spec=effective_spec(snapshot.spec, decision.serving))


def deployments_by_track(snapshot: Snapshot, outcome: Outcome | None = None) -> dict[str, DeploymentView]:
    """Each track's Deployment, as the cache holds it or, fresher, as an apply just answered."""
    found = {**snapshot.views_of(kinds.DEPLOYMENT, DeploymentView),
             **{name: view for name, view in ((outcome.applied if outcome else {}).get(kinds.DEPLOYMENT.kind) or {})
                .items() if isinstance(view, DeploymentView)}}
    return {view.track: view for view in found.values() if view.track}


def observation(snapshot: Snapshot, spec: ModelDeploymentSpec, outcome: Outcome) -> Observation:
    """What status is computed from, gathered from the snapshot's views."""
    owner = Owner.from_body(snapshot.body)
    return Observation(
        owner=owner,
        generation=snapshot.generation,
        spec=spec,
        claims=snapshot.claims,
        deployments=deployments_by_track(snapshot, outcome),
        pods=tuple(snapshot.views_of(kinds.POD, PodView).values()),
        routers=snapshot.routers,
        apply_errors=outcome.errors,
        keda=snapshot.keda,
        hpas=snapshot.views_of(kinds.HPA, HpaView),
        scaled_objects=snapshot.views_of(kinds.SCALED_OBJECT, ScaledObjectView),
        route=snapshot.views_of(kinds.HTTP_ROUTE, RouteView).get(owner.name),
    )


def next_status(snapshot: Snapshot, config: ServingConfig, now: str, outcome: Outcome,
                rollout: Decision | None = None) -> StatusUpdate | None:
    """The status after acting on the plan (None when it would not change), and the Events to post."""
    if outcome.namespace_going_away:
        return None  # the resource goes with its namespace: an ApplyFailed status and Events would be noise
    spec = snapshot.spec
    if isinstance(spec, ModelDeploymentSpec):
        status = compute_status(observation(snapshot, spec, outcome), snapshot.status, now, config)
    else:
        status = invalid_spec_status(snapshot.generation, str(spec), snapshot.status, now)
    rollout_events: tuple[EventNote, ...] = ()
    if rollout is not None:
        status = with_rollout(status, rollout, snapshot.generation, snapshot.status, now)
        rollout_events = tuple(EventNote(e.type, e.reason, e.message) for e in rollout.events)
    if same_status(snapshot.status, status) and not rollout_events:
        return None
    return StatusUpdate(status, (*transitions(snapshot.status, status), *rollout_events))
