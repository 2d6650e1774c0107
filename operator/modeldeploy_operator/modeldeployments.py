"""The reconcile of one ModelDeployment: read once, decide once, act once.

It reads one snapshot of the watch cache; with `spec.rollout`, lets the rollout driver decide what the
tracks serve; lets the pure `reconcile` module decide what to apply and delete (only the children that
differ; server-side apply makes a re-apply harmless anyway) and what status to write; and acts through
`actions`. Nothing else: the scheduling is the controller's.
"""

from __future__ import annotations

from modeldeploy_operator.actions import Actions
from modeldeploy_operator.cache import Key, WatchCache
from modeldeploy_operator.clock import now_rfc3339
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.reconcile import next_status, plan_children, serve_as
from modeldeploy_operator.rollout_driver import RolloutDriver
from modeldeploy_operator.spec import ModelDeploymentSpec


class ModelDeploymentReconciler:
    def __init__(self, cache: WatchCache, actions: Actions, rollouts: RolloutDriver, config: ServingConfig,
                 metrics: OperatorMetrics) -> None:
        self.cache = cache
        self.actions = actions
        self.rollouts = rollouts
        self.config = config
        self.metrics = metrics

    def reconcile(self, key: Key) -> bool:
        """Converge one ModelDeployment; False when some child could not be applied (the status says why)."""
        snapshot = self.cache.snapshot(key)
        if snapshot is None or snapshot.deleting or self.cache.namespace_terminating(key.namespace):
            self.rollouts.forget(key)
            return True  # gone or going: garbage collection removes the children through ownerReferences
        spec = snapshot.spec
        decision = None
        if isinstance(spec, ModelDeploymentSpec) and spec.rollout is not None:
            decision = self.rollouts.drive(snapshot, spec, spec.rollout)
            snapshot = serve_as(snapshot, decision)
        else:
            self.rollouts.forget(key)
        plan = plan_children(snapshot, self.config)
        if plan.apply and snapshot.vanished_children and not self.actions.owner_confirmed(snapshot):
            return True
        outcome = self.actions.carry_out(snapshot, plan)
        update = next_status(snapshot, self.config, now_rfc3339(), outcome, decision)
        if update is not None and not self.actions.write_status(snapshot, update):
            return False  # the resource changed since it was read: decide again from the newer one
        if decision is not None:
            self.metrics.rollout_decided(key, decision)  # only what took effect: the status holds it
        return not outcome.errors
