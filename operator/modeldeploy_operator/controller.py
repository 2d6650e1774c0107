"""Level-triggered reconciliation: watch events queue a resource key, workers converge it.

Each reconcile reads one snapshot of the watch cache, lets the pure `reconcile` module decide what to
apply (only the children that differ; server-side apply makes a re-apply harmless anyway), what to
delete and what status to write, then acts on the API through the `api.ControllerApi` interface. It is
idempotent and keyed by name, so being killed half-way and restarted simply converges again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from modeldeploy_operator import analysis, names
from modeldeploy_operator import rollout as rollouts
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.api import ControllerApi, KubeError, now_rfc3339
from modeldeploy_operator.builders import SERVER_PORT, Routers
from modeldeploy_operator.cache import Key, Snapshot, WatchCache
from modeldeploy_operator.config import OperatorConfig
from modeldeploy_operator.metrics import OperatorMetrics, ReconcileResult
from modeldeploy_operator.metricsource import PodScraper, PrometheusQuery
from modeldeploy_operator.reconcile import Outcome, Plan, StatusUpdate, next_status, plan_children, with_rollout
from modeldeploy_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

RECHECK_MARGIN_SECONDS = 0.05  # wake a hair after a window's end, so the window is due when looked at


class Controller:
    """Queues keys from watch events; worker threads converge each key through `reconcile`."""

    def __init__(self, api: ControllerApi, config: OperatorConfig, identity: str) -> None:
        self.api = api
        self.config = config
        self.serving = config.serving
        self.identity = identity
        self.cache = WatchCache()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.synced = threading.Event()  # kopf delivered the initial listing of every watched kind
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reconciles = 0
        self.applies = 0
        self._audit_wanted = threading.Event()
        self._creations: dict[tuple[Key, str, str], deque[float]] = {}  # recent creations of each child
        self.scraper = PodScraper(SERVER_PORT)
        self.verdicts: dict[str, int] = {}  # analysis results, for the operator's own metrics
        self.metrics = OperatorMetrics(queue_depth=lambda: len(self.queue), leading=self.leading.is_set,
                                       resources=self.cache.resource_keys)

    # Event intake (kopf's event loop) --------------------------------------------------------------------

    def enqueue(self, key: Key | None) -> None:
        if key is not None:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        for key in self.cache.resource_keys():
            self.queue.add(key)

    def enqueue_claim_users(self, namespace: str, claim: str) -> None:
        for key in self.cache.users_of_claim(namespace, claim):
            self.queue.add(key)

    # Threads ---------------------------------------------------------------------------------------------

    def start(self, routers: Routers) -> None:
        for index in range(self.config.workers):
            self._spawn(f"reconcile-{index}", self._work)
        self._spawn("resync", self._resync)
        self._spawn("audit", self._auditor)
        self._spawn("initial-sync", lambda: self._initial_sync(routers))

    def _initial_sync(self, routers: Routers) -> None:
        try:
            self.wait_for_sync(routers)
        except Exception:
            log.exception("initial sync failed; starting with what the watches delivered so far")
        finally:
            self.cache.stop_tracking()
            self.synced.set()

    def _inventory_targets(self, routers: Routers) -> list[tuple[names.Kind, str | None]]:
        managed = names.MANAGED_SELECTOR
        targets: list[tuple[names.Kind, str | None]] = [
            (names.MODEL_DEPLOYMENT, None), (names.CLAIM, None), (names.POD, managed),
            *((kind, managed) for kind in names.CORE_CHILD_KINDS),
        ]
        for kind in names.ROUTING_KINDS:
            version = routers.version_of(kind)
            if version is not None:
                targets.append((kind.at_version(version), managed))
        if self.cache.keda():
            targets += [(kind, managed) for kind in names.KEDA_KINDS]
        return targets

    def wait_for_sync(self, routers: Routers, timeout: float = 180.0) -> None:
        """Hold the workers until the cache has seen every object that existed at start-up.

        The uids come from metadata-only lists; each one is either delivered by kopf's watches or was
        deleted meanwhile (checked by name, as a deleted object may never show up in kopf's listing).
        """
        expected: dict[str, tuple[str, str, str]] = {}
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        for kind, selector in self._inventory_targets(routers):
            for namespace in namespaces:
                while not self._stopping.is_set():
                    try:
                        expected.update(self.api.list_uids(kind.collection(namespace), selector))
                        break
                    except KubeError as error:
                        if error.status == 404:
                            break  # its CRD went away since discovery: there is nothing of it to wait for
                        log.warning("listing %s for the initial sync failed, retrying: %s", kind.plural, error)
                        self._stopping.wait(1.0)
        deadline = time.monotonic() + timeout
        rounds = 0
        while not self._stopping.is_set():
            missing = self.cache.unseen(list(expected))
            if not missing:
                break
            if time.monotonic() > deadline:
                log.warning("initial sync: %d objects never arrived; starting anyway", len(missing))
                break
            rounds += 1
            if rounds % 10 == 0:
                for uid in missing[:100]:
                    collection, namespace, name = expected[uid]
                    with contextlib.suppress(KubeError):
                        if not self.api.exists(collection, namespace, name):
                            expected.pop(uid)
            self._stopping.wait(0.2)
        log.info("initial sync done: %d objects in the cache", len(expected))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        self.queue.shutdown()

    def healthy(self) -> dict[str, Any]:
        dead = [t.name for t in self._threads if not t.is_alive() and t.name != "initial-sync"]
        if dead and not self._stopping.is_set():
            raise RuntimeError(f"threads died: {', '.join(dead)}")
        return {"leading": self.leading.is_set(), "synced": self.synced.is_set(), "queued": len(self.queue),
                "reconciles": self.reconciles, "cached": self.cache.size()}

    def _wait_ready(self) -> bool:
        """Only the leader acts, and only once the cache holds the whole initial listing."""
        while not self._stopping.is_set():
            if self.leading.wait(1.0) and self.synced.wait(1.0):
                return True
        return False

    def _work(self) -> None:
        if not self._wait_ready():
            return
        while not self._stopping.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            result: ReconcileResult | None = "error"
            started = time.monotonic()
            try:
                if not self.leading.is_set():
                    result = None
                    continue  # lost the lease: the process is about to exit, touch nothing
                if self.reconcile(key):
                    self.queue.forget(key)
                    result = "success"
                else:
                    self.queue.retry(key)  # e.g. RBAC, quota or a webhook refused: look again, with backoff
                    result = "failed"
            except KubeError as error:
                delay = self.queue.retry(key)
                log.warning("reconcile %s/%s failed, retrying in %.1fs: %s", *key, delay, error)
            except Exception:
                delay = self.queue.retry(key)
                log.exception("reconcile %s/%s crashed, retrying in %.1fs", *key, delay)
            finally:
                self.queue.done(key)
                if result is not None:
                    self.metrics.reconciled(result, time.monotonic() - started)

    def _resync(self) -> None:
        """Periodic safety net for anything a watch might have missed; cheap when nothing changed."""
        if not self._wait_ready():
            return
        while not self._stopping.wait(self.config.resync_seconds):
            self.audit()
            self.enqueue_all()

    # Keeping the cache true to the API server ---------------------------------------------------------------

    def discover_routers(self) -> Routers:
        """Which routing APIs the API server serves now, and at which version."""
        return Routers(istio=self.api.served_version(names.ISTIO_GROUP),
                       gateway_api=self.api.served_version(names.GATEWAY_API_GROUP))

    def relisted(self) -> None:
        """A watch delivered a listing after start-up (kopf re-lists when a watch resumes too late, e.g.
        after an API server restart): what vanished meanwhile is never reported, so check the cache."""
        if self.synced.is_set():
            self._audit_wanted.set()

    def _auditor(self) -> None:
        while not self._stopping.is_set():
            if not self._audit_wanted.wait(1.0):
                continue
            self._stopping.wait(2.0)  # let the re-listing (often of every kind at once) come in first
            self._audit_wanted.clear()
            self.audit(rediscover=True)

    def audit(self, rediscover: bool = False) -> None:
        """Drop from the cache what the API server no longer holds; requeue the resources it concerns.
        After a re-list, also ask again whether Istio, the Gateway API and KEDA are installed: their CRDs
        may have come or gone while the CRD watch was away (the CRD watch keeps that current otherwise)."""
        if rediscover:
            try:
                if self.cache.reset_routers(self.discover_routers()):
                    log.info("routing APIs installed now: %s", self.cache.routers())
                    self.enqueue_all()
                if self.cache.set_keda(self.api.keda_installed()):
                    log.info("KEDA is %s", "installed" if self.cache.keda() else "gone")
                    self.enqueue_all()
            except KubeError as error:
                log.warning("could not check which routing APIs and whether KEDA are installed: %s", error)
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        for kind, selector in self._inventory_targets(self.cache.routers()):
            before = self.cache.mark()
            try:
                present = {(namespace, name) for scope in namespaces
                           for _, namespace, name in self.api.list_uids(kind.collection(scope), selector).values()}
            except KubeError as error:
                log.warning("could not check the cached %s against the API server: %s", kind.plural, error)
                continue
            for key in self.cache.retain(kind.kind, present, before):
                if kind == names.MODEL_DEPLOYMENT:
                    log.info("forgetting ModelDeployment %s/%s: deleted while a watch was away", *key)
                else:
                    log.info("%s of %s/%s deleted while a watch was away", kind.plural, *key)
                    self.enqueue(key)

    def _owner_confirmed(self, snapshot: Snapshot) -> bool:
        """Before re-creating deleted children: does the owner still exist? If the cache missed its deletion,
        each child re-created with its uid is deleted again by the garbage collector, which queues the next
        reconcile: a loop. Asked only after children vanished, so it costs one GET per hand deletion."""
        uid = str(snapshot.body["metadata"].get("uid", ""))
        namespace, name = snapshot.key
        if self.api.get_uid(names.MODEL_DEPLOYMENT, namespace, name) == uid:
            self.cache.confirmed(snapshot.key)
            return True
        log.info("forgetting ModelDeployment %s/%s (uid %s): it no longer exists", namespace, name, uid)
        self.cache.forget_resource(snapshot.key, uid)
        return False

    CREATION_LOOP = (5, 60.0)  # this many creations of one child within this many seconds

    def _note_creation(self, key: Key, kind: str, name: str) -> None:
        """Say so loudly when one child keeps being created: something deletes it each time."""
        if len(self._creations) > 10_000:
            self._creations.clear()
        count, window = self.CREATION_LOOP
        times = self._creations.setdefault((key, kind, name), deque(maxlen=count))
        times.append(time.monotonic())
        if len(times) == count and times[-1] - times[0] < window:
            log.warning("%s %s/%s was created %d times in %.0fs: something keeps deleting it", kind, key[0], name,
                        count, times[-1] - times[0])
            times.clear()

    # Reconcile (worker threads): read once, decide once, act once ----------------------------------------

    def reconcile(self, key: Key) -> bool:
        """Converge one resource; False when some child could not be applied (the status says why)."""
        snapshot = self.cache.snapshot(key)
        if snapshot is None or snapshot.deleting or self.cache.namespace_terminating(key[0]):
            self.metrics.forget_rollout(key)
            return True  # gone or going: garbage collection removes the children through ownerReferences
        self.reconciles += 1
        decision = None
        if isinstance(snapshot.spec, specs.ModelDeploymentSpec) and snapshot.spec.rollout is not None:
            decision = self._rollout(snapshot, snapshot.spec, snapshot.spec.rollout)
            snapshot = with_rollout(snapshot, decision)
        else:
            self.scraper.forget(key)
            self.metrics.forget_rollout(key)
        plan = plan_children(snapshot, self.serving)
        if plan.apply and snapshot.vanished and not self._owner_confirmed(snapshot):
            return True
        outcome = self._act(snapshot, plan)
        if outcome.namespace_going_away:
            self._namespace_going_away(key[0])
        update = next_status(snapshot, self.serving, now_rfc3339(), outcome, decision)
        if update is not None and not self._write_status(snapshot, update):
            return False  # the resource changed since it was read: decide again from the newer one
        if decision is not None:
            self.metrics.rollout_decided(key, decision)  # only what took effect: the status holds it
        return not outcome.errors

    def _rollout(self, snapshot: Snapshot, spec: specs.ModelDeploymentSpec, rollout: specs.Rollout
                 ) -> rollouts.Decision:
        """One step of the rollout's state machine, with an analysis when an interval has ended. When the
        current window began is in status (not in this process), so a restarted operator keeps the schedule."""
        key = snapshot.key
        recorded = (snapshot.status or {}).get("rollout")
        previous = rollouts.RolloutState.from_status(recorded) if recorded else None
        action = ((recorded or {}).get("command") or {}).get("action")
        command = next((c for c in rollouts.COMMANDS if c == action), None)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        precise = dt.datetime.now(dt.UTC)
        verdict, window_started = None, None
        if previous is not None and previous.judged:
            if rollouts.analysis_due(previous.analysis_started_at, now, rollout):
                verdict, window_started = self._analyse(snapshot, rollout, previous, now), now
            elif rollout.prometheus is None:
                # Restarted mid-window: the pods' counters at its start died with the old process; count
                # from now, and judge when the window recorded in status ends.
                self.scraper.begin(key, snapshot.pods)
        else:
            self.scraper.forget(key)
        canary_ready = statuses.serves(snapshot.deployments.get("canary"))
        decision = rollouts.decide(previous, spec, now, verdict, command, window_started, canary_ready)
        # From the unrounded clock, a hair past the recorded end: the wake-up finds the window due.
        recheck = rollouts.recheck_in(decision.state, precise, rollout)
        if recheck is not None:
            self.queue.add_after(key, recheck + RECHECK_MARGIN_SECONDS, ahead=True)  # a verdict is due
        return decision

    def _analyse(self, snapshot: Snapshot, rollout: specs.Rollout, state: rollouts.RolloutState,
                 now: dt.datetime) -> analysis.Verdict | None:
        """The verdict of the window that just ended; None when this is the first (the window starts now).
        How late after the recorded end of the window the verdict came goes to the operator's metrics."""
        namespace, name = snapshot.key
        started = time.monotonic()
        try:
            if rollout.prometheus is not None:
                source = "prometheus"
                canary, stable = PrometheusQuery(rollout.prometheus.url).read(
                    namespace, name, rollouts.window_seconds(state, now, rollout))
            else:
                source = "pods"
                window = self.scraper.read(snapshot.key, snapshot.pods)
                if window is None:
                    return None
                canary, stable = window
        except (OSError, ValueError) as error:
            log.warning("rollout analysis of %s/%s could not read metrics: %s", namespace, name, error)
            return None
        verdict = replace(analysis.judge(canary, stable, rollouts.gates_of(rollout)), source=source)
        self.verdicts[verdict.result] = self.verdicts.get(verdict.result, 0) + 1
        late = None
        if state.analysis_started_at is not None:
            ends = state.analysis_started_at + dt.timedelta(seconds=rollout.interval_seconds)
            late = (dt.datetime.now(dt.UTC) - ends).total_seconds()
        self.metrics.analysed(verdict, time.monotonic() - started, late)
        log.info("rollout analysis of %s/%s from %s: %s %s%s", namespace, name, source, verdict.result,
                 verdict.message, "" if late is None else f" ({max(0.0, late):.3f}s after the interval ended)")
        return verdict

    def _namespace_going_away(self, namespace: str) -> None:
        if self.cache.note_namespace_terminating(namespace):
            log.info("namespace %s is being deleted: leaving its ModelDeployments to go with it", namespace)

    def _act(self, snapshot: Snapshot, plan: Plan) -> Outcome:
        errors: dict[str, str] = {}
        applied: dict[str, statuses.DeploymentView] = {}
        for manifest in plan.apply:
            kind, meta = manifest["kind"], manifest["metadata"]
            try:
                response = self.api.apply(manifest)
            except KubeError as error:
                if error.status == 0:
                    raise  # the API server is unreachable: nothing else will work either
                if error.namespace_going_away:
                    return Outcome(namespace_going_away=True)
                # Refused or failing server-side (quota, webhook, full service IP range...): say so in status.
                errors[f"{kind}/{meta['name']}"] = error.message
                log.error("applying %s %s/%s failed: %s", kind, meta["namespace"], meta["name"], error)
                continue
            self.applies += 1
            if (kind, meta["name"]) not in snapshot.children:
                self._note_creation(snapshot.key, kind, meta["name"])
            self.cache.observe_child(response)
            track = meta["labels"].get(names.LABEL_TRACK)
            if kind == names.DEPLOYMENT.kind and track:
                applied[track] = statuses.summarize_deployment(response)
        for child in plan.delete:
            log.info("deleting %s %s/%s: no longer wanted", child.kind.kind, child.namespace, child.name)
            self.api.delete(child.kind, child.namespace, child.name, child.uid)
        return Outcome(errors, applied)

    def _write_status(self, snapshot: Snapshot, update: StatusUpdate) -> bool:
        """Write the status only onto the object the decision was made from (resourceVersion precondition):
        a `kubectl modeldeploy rollout ...` request written since would otherwise be replaced unseen.
        False on such a conflict: the key is reconciled again from the newer object."""
        namespace, name = snapshot.key
        read = snapshot.body["metadata"].get("resourceVersion")
        try:
            written = self.api.patch_status(namespace, name, update.status, read)
        except KubeError as error:
            if error.status == 404:
                return True  # deleted meanwhile
            if error.status == 409:
                log.info("status of %s/%s changed since it was read; deciding again", namespace, name)
                return False
            raise
        self.cache.record_status(snapshot.key, update.status, (written.get("metadata") or {}).get("resourceVersion"),
                                 read)
        for note in update.events:
            try:
                self.api.post_event(snapshot.body, note.type, note.reason, note.message, self.identity)
            except KubeError as error:
                if error.namespace_going_away:
                    self._namespace_going_away(namespace)
                    return True
                log.warning("could not post event %s on %s/%s: %s", note.reason, namespace, name, error)
        return True


class Elector(Protocol):
    """Decides when this process may act: a Lease election, or always (`leader.NoElection`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def alive(self) -> bool: ...


@dataclass(frozen=True)
class Runtime:
    """The operator's parts, handed to every kopf handler as its `memo`."""

    controller: Controller
    elector: Elector
    config: OperatorConfig
    stop_flag: threading.Event
