"""Level-triggered reconciliation: watch events queue a resource key, workers converge it.

Each reconcile reads the desired state from the spec (builders), compares it with the watch cache,
applies only the children that differ (server-side apply, so a re-apply is harmless anyway), deletes
the children that are no longer wanted, and writes the status subresource if it changed. It is
idempotent and keyed by name, so being killed half-way and restarted simply converges again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from modeldeploy_operator import builders, kube
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.cache import ChildEntry, Key, WatchCache
from modeldeploy_operator.config import OperatorConfig
from modeldeploy_operator.kube import Kube, KubeError
from modeldeploy_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

CHILD_KINDS = {
    "Deployment": kube.DEPLOYMENT,
    "HorizontalPodAutoscaler": kube.HPA,
    "Service": kube.SERVICE,
    "PodDisruptionBudget": kube.PDB,
}


def needs_apply(manifest: dict[str, Any], observed: ChildEntry | None) -> bool:
    """Apply when the child is missing, differs from what we would apply, or was edited by hand."""
    if observed is None or observed.foreign_edit:
        return True
    if observed.applied_hash != manifest["metadata"]["annotations"][builders.HASH_ANNOTATION]:
        return True
    wanted_replicas = manifest.get("spec", {}).get("replicas")
    return manifest["kind"] == "Deployment" and wanted_replicas is not None and observed.replicas != wanted_replicas


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"spec.{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return "; ".join(parts)


class Controller:
    def __init__(self, api: Kube, config: OperatorConfig, identity: str) -> None:
        self.kube = api
        self.config = config
        self.identity = identity
        self.cache = WatchCache()
        self.queue: WorkQueue[Key] = WorkQueue()
        self.synced = threading.Event()  # kopf delivered the initial listing of every watched kind
        self.leading = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.reconciles = 0
        self.applies = 0

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

    def start(self, istio: bool) -> None:
        for index in range(self.config.workers):
            self._spawn(f"reconcile-{index}", self._work)
        self._spawn("resync", self._resync)
        self._spawn("initial-sync", lambda: self._initial_sync(istio))

    def _initial_sync(self, istio: bool) -> None:
        try:
            self.wait_for_sync(istio)
        except Exception:
            log.exception("initial sync failed; starting with what the watches delivered so far")
        finally:
            self.cache.stop_tracking()
            self.synced.set()

    def _inventory_targets(self, istio: bool) -> list[tuple[kube.Kind, str | None]]:
        managed = builders.MANAGED_SELECTOR
        targets: list[tuple[kube.Kind, str | None]] = [
            (kube.MODEL_DEPLOYMENT, None), (kube.CLAIM, None), (kube.POD, managed),
            *((kind, managed) for kind in CHILD_KINDS.values()),
        ]
        if istio:
            version = self.cache.istio()
            api_version = version.api_version if version else "networking.istio.io/v1"
            targets += [(kube.Kind(api_version, kind, plural), managed) for kind, plural in kube.ISTIO_PLURALS.items()]
        return targets

    def wait_for_sync(self, istio: bool, timeout: float = 180.0) -> None:
        """Hold the workers until the cache has seen every object that existed at start-up.

        The uids come from metadata-only lists; each one is either delivered by kopf's watches or was
        deleted meanwhile (checked by name, as a deleted object may never show up in kopf's listing).
        """
        expected: dict[str, tuple[str, str, str]] = {}
        namespaces: list[str | None] = list(self.config.namespaces) or [None]
        for kind, selector in self._inventory_targets(istio):
            for namespace in namespaces:
                while not self._stopping.is_set():
                    try:
                        expected.update(self.kube.list_uids(kind.collection(namespace), selector))
                        break
                    except KubeError as error:
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
                        if not self.kube.exists(collection, namespace, name):
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
                "reconciles": self.reconciles}

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
            try:
                if not self.leading.is_set():
                    continue  # lost the lease: the process is about to exit, touch nothing
                if self.reconcile(key):
                    self.queue.forget(key)
                else:
                    self.queue.retry(key)  # e.g. RBAC, quota or a webhook refused: look again, with backoff
            except KubeError as error:
                delay = self.queue.retry(key)
                log.warning("reconcile %s/%s failed, retrying in %.1fs: %s", *key, delay, error)
            except Exception:
                delay = self.queue.retry(key)
                log.exception("reconcile %s/%s crashed, retrying in %.1fs", *key, delay)
            finally:
                self.queue.done(key)

    def _resync(self) -> None:
        """Periodic safety net for anything a watch might have missed; cheap when nothing changed."""
        if not self._wait_ready():
            return
        while not self._stopping.wait(self.config.resync_seconds):
            self.enqueue_all()

    # Reconcile (worker threads) --------------------------------------------------------------------------

    def reconcile(self, key: Key) -> bool:
        """Converge one resource; False when some child could not be applied (the status says why)."""
        entry = self.cache.resource(key)
        if entry is None or entry.body["metadata"].get("deletionTimestamp"):
            return True  # gone or going: garbage collection removes the children through ownerReferences
        self.reconciles += 1
        body = entry.body
        owner = builders.Owner.from_body(body)
        now = kube.now_rfc3339()
        try:
            specs.check_name(owner.name)
            spec = specs.parse_spec(body.get("spec"))
        except (ValidationError, ValueError) as error:
            message = format_validation_error(error) if isinstance(error, ValidationError) else str(error)
            self._write_status(key, body, entry.status,
                               statuses.invalid_spec_status(entry.generation, message, entry.status, now))
            return True  # nothing to retry until the spec changes
        istio = self.cache.istio()
        desired = builders.desired_children(owner, spec, self.config.serving, istio)
        observed = self.cache.children(key)
        errors: dict[str, str] = {}
        for manifest in desired:
            child_id = (manifest["kind"], manifest["metadata"]["name"])
            if not needs_apply(manifest, observed.get(child_id)):
                continue
            try:
                response = self.kube.apply(manifest)
                self.applies += 1
                self.cache.observe_child(response)
            except KubeError as error:
                if error.status == 0:
                    raise  # the API server is unreachable: nothing else will work either
                # Refused or failing server-side (quota, webhook, full service IP range...): say so in status.
                errors[f"{child_id[0]}/{child_id[1]}"] = error.message
                log.error("applying %s %s/%s failed: %s", child_id[0], owner.namespace, child_id[1], error)
        wanted = {(m["kind"], m["metadata"]["name"]) for m in desired}
        for child_id, child in observed.items():
            if child_id in wanted:
                continue
            kind = CHILD_KINDS.get(child.kind)
            if kind is None and child.kind in kube.ISTIO_PLURALS and istio is not None:
                kind = kube.Kind(istio.api_version, child.kind, kube.ISTIO_PLURALS[child.kind])
            if kind is None:
                continue
            log.info("deleting %s %s/%s: no longer wanted", child.kind, owner.namespace, child.name)
            self.kube.delete(kind, owner.namespace, child.name, child.uid)
        observation = statuses.Observation(
            owner=owner,
            generation=entry.generation,
            spec=spec,
            claims=self.cache.claim_phases(owner.namespace, builders.claims(spec)),
            deployments=self.cache.deployments(key),
            pods=self.cache.pods(key),
            istio=istio,
            apply_errors=errors,
        )
        new_status = statuses.compute_status(observation, entry.status, now, self.config.serving)
        self._write_status(key, body, entry.status, new_status)
        return not errors

    def _write_status(
        self, key: Key, body: dict[str, Any], before: dict[str, Any] | None, after: dict[str, Any]
    ) -> None:
        if statuses.same_status(before, after):
            return
        try:
            self.kube.patch_status(key[0], key[1], after)
        except KubeError as error:
            if error.status == 404:
                return  # deleted meanwhile
            raise
        self.cache.record_status(key, after)
        for note in statuses.transitions(before, after):
            try:
                self.kube.post_event(body, note.type, note.reason, note.message, self.identity)
            except KubeError as error:
                log.warning("could not post event %s on %s/%s: %s", note.reason, *key, error)

