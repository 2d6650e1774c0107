"""The operator's parts, wired once from its settings: the watch cache, the work queue, the metrics, each
owning kind's reconciler, the inventory, the controller that schedules them, and the leader election.

`python -m modeldeploy_operator` runs what `build` returns under kopf (the parts are every handler's
`memo`); the tests build the same parts on an in-memory API.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from modeldeploy_operator import kinds
from modeldeploy_operator.actions import Actions
from modeldeploy_operator.api import ControllerApi, LeaseApi
from modeldeploy_operator.cache import Key, WatchCache
from modeldeploy_operator.config import OperatorConfig
from modeldeploy_operator.controller import Controller
from modeldeploy_operator.inventory import Inventory
from modeldeploy_operator.leader import LeaderElector, NoElection
from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_operator.metricsource import PodScraper, PrometheusQuery
from modeldeploy_operator.modeldeployments import ModelDeploymentReconciler
from modeldeploy_operator.rollout_driver import RolloutDriver
from modeldeploy_operator.workqueue import WorkQueue


class Elector(Protocol):
    """Decides when this process may act: a Lease election, or always (`leader.NoElection`)."""

    leading: threading.Event

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


class OperatorApi(ControllerApi, LeaseApi, Protocol):
    """Everything the operator asks of the API server."""


@dataclass(frozen=True)
class Operator:
    """The operator's parts, handed to every kopf handler as its `memo`."""

    config: OperatorConfig
    api: OperatorApi
    cache: WatchCache
    controller: Controller
    inventory: Inventory
    elector: Elector
    metrics: OperatorMetrics
    stop_flag: threading.Event  # kopf stops when it is set
    lost: threading.Event  # set when the lease was lost: the process exits non-zero


def build(api: OperatorApi, config: OperatorConfig, identity: str) -> Operator:
    """Every part, connected; nothing started."""
    cache = WatchCache(kinds.OWNER_KINDS)
    queue: WorkQueue[Key] = WorkQueue()
    stopping, stop_flag, lost = threading.Event(), threading.Event(), threading.Event()

    def started_leading() -> None:  # a new leader looks at everything once
        for key in cache.resource_keys():
            queue.add(key)

    def stopped_leading() -> None:
        lost.set()
        stop_flag.set()

    elector: Elector = NoElection(started_leading)
    if config.leader_election:
        elector = LeaderElector(api, config.lease_namespace, config.lease_name, identity,
                                config.lease_duration_seconds, config.renew_deadline_seconds,
                                config.retry_period_seconds, on_started=started_leading, on_stopped=stopped_leading)
    metrics = OperatorMetrics(queue_depth=lambda: len(queue), leading=elector.leading.is_set,
                              resources=cache.resource_keys)
    rollouts = RolloutDriver(PodScraper(), PrometheusQuery, lambda key, delay: queue.add_after(key, delay, ahead=True),
                             metrics)
    reconciler = ModelDeploymentReconciler(cache, Actions(api, cache, identity), rollouts, config.serving, metrics)
    inventory = Inventory(api, cache, config.namespaces, stopping, queue.add)
    controller = Controller(cache, queue, inventory, {kinds.MODEL_DEPLOYMENT.kind: reconciler}, elector.leading,
                            metrics, config.workers, config.resync_seconds, stopping)
    return Operator(config, api, cache, controller, inventory, elector, metrics, stop_flag, lost)
