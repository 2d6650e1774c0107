"""Level-triggered scheduling: watch events queue a resource key, worker threads hand each key to the
reconcile function of its kind.

The controller only schedules: the coalescing work queue, the worker threads, leadership (only the
leader acts, and only once the cache holds the whole initial listing), the periodic resync and the audits
after a re-list. What a reconcile does is the business of each kind's reconciler (`modeldeployments.py`);
each is idempotent and keyed by name, so being killed half-way and restarted simply converges again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from modeldeploy_operator.api import KubeError
from modeldeploy_operator.cache import Key, WatchCache
from modeldeploy_operator.inventory import Inventory
from modeldeploy_operator.metrics import OperatorMetrics, ReconcileResult
from modeldeploy_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Reconciler(Protocol):
    def reconcile(self, key: Key) -> bool:
        """Converge one resource; False when something was refused (retried with backoff)."""
        ...


class Controller:
    """Queues keys from watch events; worker threads converge each key through its kind's reconciler."""

    def __init__(self, cache: WatchCache, queue: WorkQueue[Key], inventory: Inventory,
                 reconcilers: Mapping[str, Reconciler], leading: threading.Event, metrics: OperatorMetrics,
                 workers: int, resync_seconds: float, stopping: threading.Event) -> None:
        self.cache = cache
        self.queue = queue
        self.inventory = inventory
        self.reconcilers = dict(reconcilers)
        self.leading = leading  # the elector's: set while this process holds the lease
        self.metrics = metrics
        self.workers = workers
        self.resync_seconds = resync_seconds
        self.synced = threading.Event()  # kopf delivered the initial listing of every watched kind
        self._stopping = stopping
        self._threads: list[threading.Thread] = []
        self._audit_wanted = threading.Event()
        self.reconciles = 0

    # Event intake (kopf's event loop) --------------------------------------------------------------------

    def enqueue(self, keys: Key | Iterable[Key] | None) -> None:
        if keys is None:
            return
        for key in [keys] if isinstance(keys, Key) else keys:
            self.queue.add(key)

    def enqueue_all(self) -> None:
        self.enqueue(self.cache.resource_keys())

    def relisted(self) -> None:
        """A watch delivered a listing after start-up (kopf re-lists when a watch resumes too late, e.g.
        after an API server restart): what vanished meanwhile is never reported, so check the cache."""
        if self.synced.is_set():
            self._audit_wanted.set()

    # Threads ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        for index in range(self.workers):
            self._spawn(f"reconcile-{index}", self._work)
        self._spawn("resync", self._resync)
        self._spawn("audit", self._auditor)
        self._spawn("initial-sync", self._initial_sync)

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

    def _initial_sync(self) -> None:
        try:
            self.inventory.wait_for_sync()
        except Exception:
            log.exception("initial sync failed; starting with what the watches delivered so far")
        finally:
            self.cache.stop_tracking()
            self.synced.set()

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
            if key is not None:
                self._run(key)

    def _run(self, key: Key) -> None:
        """One reconcile of one key, with its result counted and its retry scheduled."""
        result: ReconcileResult | None = "error"
        started = time.monotonic()
        try:
            if not self.leading.is_set():
                result = None
                return  # lost the lease: the process is about to exit, touch nothing
            if self.reconcile(key):
                self.queue.forget(key)
                result = "success"
            else:
                self.queue.retry(key)  # e.g. RBAC, quota or a webhook refused: look again, with backoff
                result = "failed"
        except KubeError as error:
            log.warning("reconcile %s failed, retrying in %.1fs: %s", key, self.queue.retry(key), error)
        except Exception:
            log.exception("reconcile %s crashed, retrying in %.1fs", key, self.queue.retry(key))
        finally:
            self.queue.done(key)
            if result is not None:
                self.metrics.reconciled(result, time.monotonic() - started)

    def reconcile(self, key: Key) -> bool:
        """Hand the key to its kind's reconciler."""
        self.reconciles += 1
        return self.reconcilers[key.kind].reconcile(key)

    def _resync(self) -> None:
        """Periodic safety net for anything a watch might have missed; cheap when nothing changed."""
        if not self._wait_ready():
            return
        while not self._stopping.wait(self.resync_seconds):
            self.audit()
            self.enqueue_all()

    def _auditor(self) -> None:
        while not self._stopping.is_set():
            if not self._audit_wanted.wait(1.0):
                continue
            self._stopping.wait(2.0)  # let the re-listing (often of every kind at once) come in first
            self._audit_wanted.clear()
            self.audit(rediscover=True)

    def audit(self, rediscover: bool = False) -> None:
        """Drop from the cache what the API server no longer holds (the inventory requeues what it concerns).
        After a re-list, also ask again which optional APIs are installed: a change requeues everything."""
        if rediscover and self.inventory.rediscover():
            self.enqueue_all()
        self.inventory.audit()
