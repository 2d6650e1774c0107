"""Keeping the watch cache true to the API server: the initial sync at start-up, and audits after re-lists.

Both list metadata only (uids and names), for every kind the registry says the cache holds: the owning
kinds, the claims, and each watched kind at the version its API serves now (a kind whose CRDs are not
installed has nothing to list).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from modeldeploy_operator import kinds, names
from modeldeploy_operator.api import DiscoveryApi, InventoryApi, KubeError
from modeldeploy_operator.cache import Key, WatchCache
from modeldeploy_operator.kinds import Kind
from modeldeploy_operator.routers import Routers

log = logging.getLogger(__name__)


class InventoryAndDiscoveryApi(InventoryApi, DiscoveryApi, Protocol):
    """What the inventory reads."""


def discover_routers(api: DiscoveryApi) -> Routers:
    """Which routing APIs the API server serves now, and at which version."""
    return Routers(istio=api.served_version(kinds.ISTIO_GROUP), gateway_api=api.served_version(kinds.GATEWAY_API_GROUP))


class Inventory:
    """Lists what exists, and reconciles the cache with it."""

    def __init__(self, api: InventoryAndDiscoveryApi, cache: WatchCache, namespaces: Sequence[str],
                 stopping: threading.Event, enqueue: Callable[[Key], None]) -> None:
        self.api = api
        self.cache = cache
        self.scopes: list[str | None] = list(namespaces) or [None]  # None: the whole cluster
        self.stopping = stopping
        self.enqueue = enqueue

    def targets(self, routers: Routers, keda: bool) -> list[tuple[Kind, str | None]]:
        """(kind, label selector) of everything the cache holds, each at the version served now."""
        found: list[tuple[Kind, str | None]] = [(owner.kind, None) for owner in self.cache.owner_kinds]
        found.append((kinds.CLAIM, None))
        for watched in kinds.watched_kinds(self.cache.owner_kinds):
            served = watched.served_kind(routers, keda)
            if served is not None:
                found.append((served, names.MANAGED_SELECTOR))
        return found

    def _list_patiently(self, kind: Kind, selector: str | None, scope: str | None) -> dict[str, tuple[str, str, str]]:
        while not self.stopping.is_set():
            try:
                return self.api.list_uids(kind.collection(scope), selector)
            except KubeError as error:
                if error.status == 404:
                    return {}  # its CRD went away since discovery: there is nothing of it to wait for
                log.warning("listing %s for the initial sync failed, retrying: %s", kind.plural, error)
                self.stopping.wait(1.0)
        return {}

    def wait_for_sync(self, timeout: float = 180.0) -> None:
        """Hold until the cache has seen every object that existed at start-up.

        The uids come from metadata-only lists; each one is either delivered by kopf's watches or was
        deleted meanwhile (checked by name, as a deleted object may never show up in kopf's listing).
        """
        expected: dict[str, tuple[str, str, str]] = {}
        for kind, selector in self.targets(self.cache.routers(), self.cache.keda()):
            for scope in self.scopes:
                expected.update(self._list_patiently(kind, selector, scope))
        deadline = time.monotonic() + timeout
        rounds = 0
        while not self.stopping.is_set():
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
            self.stopping.wait(0.2)
        log.info("initial sync done: %d objects in the cache", len(expected))

    def rediscover(self) -> bool:
        """Ask again whether Istio, the Gateway API and KEDA are installed (their CRDs may have come or gone
        while the CRD watch was away); True when that changed."""
        changed = False
        try:
            if self.cache.reset_routers(discover_routers(self.api)):
                log.info("routing APIs installed now: %s", self.cache.routers())
                changed = True
            if self.cache.set_keda(self.api.keda_installed()):
                log.info("KEDA is %s", "installed" if self.cache.keda() else "gone")
                changed = True
        except KubeError as error:
            log.warning("could not check which routing APIs and whether KEDA are installed: %s", error)
        return changed

    def audit(self) -> None:
        """Drop from the cache what the API server no longer holds; requeue the resources it concerns."""
        routers, keda = self.cache.routers(), self.cache.keda()
        owners = {owner.kind.kind: owner for owner in self.cache.owner_kinds}
        for kind, selector in self.targets(routers, keda):
            before = self.cache.mark()
            try:
                present = {(namespace, name) for scope in self.scopes
                           for _, namespace, name in self.api.list_uids(kind.collection(scope), selector).values()}
            except KubeError as error:
                log.warning("could not check the cached %s against the API server: %s", kind.plural, error)
                continue
            if kind.kind in owners:
                for key in self.cache.retain_resources(owners[kind.kind], present, before):
                    log.info("forgetting %s: deleted while a watch was away", key)
                continue
            retained = (self.cache.retain_claims(present, before) if kind == kinds.CLAIM
                        else self.cache.retain_watched(kind.kind, present, before))
            for key in retained:
                log.info("%s of %s deleted while a watch was away", kind.plural, key)
                self.enqueue(key)
