"""Thin kopf handlers: turn watch events into cache updates and queued keys, nothing more.

Why these handler kinds and not kopf's @on.create/@on.update/@kopf.timer:
- Those keep per-object state *on the object*: a `kopf.zalando.org/last-handled-configuration`
  annotation (or a status stanza) and, for timers and daemons, a finalizer. Argo CD would show the
  annotation as drift, a finalizer can wedge deletion when the operator is down, and ownerReferences
  already clean up the children. So the operator keeps no state on the resource at all.
- Event handlers (@kopf.on.event) only fill the watch cache and queue keys. Create, update and resume
  all arrive here as watch events (ADDED, MODIFIED, and the initial listing after a restart); a resync
  thread re-queues everything periodically. Reconciling happens on the controller's worker threads,
  bounded in number, with per-key backoff.
- No reconcile acts on a half-listed cluster (it could miss a canary Deployment that must go): at
  start-up the inventory lists the uids of every watched object (metadata only) and waits until the
  cache has seen each of them (see Inventory.wait_for_sync). kopf's @kopf.index would give the same
  guarantee, but it holds every listed body in memory until all kinds are indexed: at a thousand
  resources a restart then took 300 MB and most of a minute.

Which kinds are watched comes from the kind registry (`kinds.py`): each owning kind, each kind they own or
observe (by the managed-by label), the claims, and the CRDs of the optional APIs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from modeldeploy_operator import kinds, kube, names
from modeldeploy_operator.assembly import Operator
from modeldeploy_operator.cache import Key
from modeldeploy_operator.inventory import discover_routers
from modeldeploy_operator.kinds import Kind, OwnerKind

MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
ROUTING_CRDS = {kind.crd_name: kind.kind for kind in kinds.ROUTING_KINDS}
KEDA_CRD = kinds.SCALED_OBJECT.crd_name


def _selector(kind: Kind) -> tuple[str, str] | tuple[str, str, str]:
    """Arguments for kopf's resource selectors (core group as 'v1'; routing kinds at any served version)."""
    if not kind.group:
        return (kind.version, kind.plural)
    return (kind.group, kind.version, kind.plural) if kind.version else (kind.group, kind.plural)


def noted(event: kopf.RawEvent, body: kopf.Body, memo: Operator) -> Operator:
    """Every watched object counts for the initial sync; a listing after it (type None: kopf re-lists a
    watch that resumed too late) has the controller check its cache against the API server."""
    memo.cache.note_seen(body)
    if event["type"] is None:
        memo.controller.relisted()
    return memo


# The owning kinds' resources ------------------------------------------------------------------------------

def _register_owner(owner: OwnerKind) -> None:
    async def resource_event(event: kopf.RawEvent, body: kopf.Body, memo: Operator, **_: Any) -> None:
        parts = noted(event, body, memo)
        key = Key(owner.kind.kind, str(body.metadata.namespace), str(body.metadata.name))
        if event["type"] == "DELETED":
            parts.cache.forget_resource(key)
        elif parts.cache.observe_resource(owner, body):
            parts.controller.enqueue(key)

    kopf.on.event(*_selector(owner.kind), id=f"{owner.kind.plural}-event")(resource_event)


# Children and observed objects: a hand-deleted or hand-edited child queues its owner, which puts it back ------

def _register_watched(kind: Kind) -> None:
    async def watched_event(event: kopf.RawEvent, body: kopf.Body, memo: Operator, **_: Any) -> None:
        parts = noted(event, body, memo)
        if event["type"] == "DELETED":
            parts.controller.enqueue(parts.cache.forget(kind.kind, body))
        else:
            parts.controller.enqueue(parts.cache.observe(kind.kind, body))

    kopf.on.event(*_selector(kind), id=f"{kind.plural}-event", labels=MANAGED)(watched_event)


for _owner in kinds.OWNER_KINDS:
    _register_owner(_owner)
for _watched in kinds.watched_kinds():
    _register_watched(_watched.kind)


# Claims (the user's, not labelled by us): their phase feeds ModelSourceReady --------------------------------

@kopf.on.event(*_selector(kinds.CLAIM))
async def claim_event(event: kopf.RawEvent, body: kopf.Body, memo: Operator, **_: Any) -> None:
    parts = noted(event, body, memo)
    if event["type"] == "DELETED":
        parts.controller.enqueue(parts.cache.forget_claim(body))
    else:
        parts.controller.enqueue(parts.cache.observe_claim(body))


# Routing CRDs (Istio's, the Gateway API's) appearing or going away switch routing, without a restart ---------

def _is_routing_crd(name: str | None, **_: Any) -> bool:
    return name in ROUTING_CRDS


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_routing_crd)
async def routing_crd_event(event: kopf.RawEvent, body: kopf.Body, name: str, memo: Operator, **_: Any) -> None:
    version = None if event["type"] == "DELETED" else kube.routing_version_of_crd(body)
    if memo.cache.set_routing_crd(ROUTING_CRDS[name], version):
        memo.controller.enqueue_all()


# KEDA's ScaledObject CRD appearing or going away switches the custom autoscaling signals on or off ------------

def _is_keda_crd(name: str | None, **_: Any) -> bool:
    return name == KEDA_CRD


@kopf.on.event("apiextensions.k8s.io", "v1", "customresourcedefinitions", when=_is_keda_crd)
async def keda_crd_event(event: kopf.RawEvent, body: kopf.Body, memo: Operator, **_: Any) -> None:
    # A CRD being deleted counts as gone: the API server already refuses new objects of its kind.
    going = event["type"] == "DELETED" or bool(body.get("metadata", {}).get("deletionTimestamp"))
    installed = not going and kube.serves_version(body, kinds.SCALED_OBJECT.version)
    if memo.cache.set_keda(installed):
        memo.controller.enqueue_all()


# Operator lifecycle ------------------------------------------------------------------------------------------

def _tune(settings: kopf.OperatorSettings, memo: Operator) -> None:
    config = memo.config
    # Watches: the server ends each stream after a bounded time and the client gives up on a silent one
    # (a dropped connection otherwise leaves a watch hanging forever with no events).
    settings.watching.server_timeout = config.watch_server_timeout_seconds
    settings.watching.client_timeout = config.watch_server_timeout_seconds + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = config.request_timeout_seconds
    settings.networking.connect_timeout = 10
    # Bounded concurrency lives in our reconcile worker threads (config.workers); kopf's per-object tasks
    # only update the cache, and let go of their object's body soon after.
    settings.execution.max_workers = 2
    settings.queueing.idle_timeout = 0.2
    # Big clusters: list in pages instead of one huge response.
    settings.watching.chunk_size = 500
    # Our own Events say what changed; kopf's per-handler log Events would only add noise and API calls.
    settings.posting.enabled = False
    # Only our children and pods are watched (server-side filtering, not every Pod in the cluster).
    for watched in kinds.watched_kinds():
        settings.watching.label_selectors[_selector(watched.kind)] = names.MANAGED_SELECTOR


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Operator, **_: Any) -> None:
    _tune(settings, memo)
    config = memo.config
    # Streamed initial lists (sendInitialEvents, Kubernetes 1.34+) instead of whole lists in memory at
    # once: at a thousand resources that halves the start-up memory peak.
    if config.watch_streaming == "auto":
        settings.watching.initial_streaming = await asyncio.to_thread(memo.api.server_version) >= (1, 34)
    else:
        settings.watching.initial_streaming = config.watch_streaming == "on"
    memo.cache.set_discovered(await asyncio.to_thread(discover_routers, memo.api))
    memo.cache.set_keda(await asyncio.to_thread(memo.api.keda_installed))
    memo.controller.start()
    memo.elector.start()


@kopf.on.cleanup()
async def shutdown(memo: Operator, **_: Any) -> None:
    await asyncio.to_thread(memo.elector.stop)
    memo.controller.stop()
    # kopf waits for a threading.Event stop flag in an executor thread; after a signal nobody sets
    # it, and interpreter exit would wait for that thread forever.
    memo.stop_flag.set()


@kopf.on.probe(id="reconciler")
async def reconciler_health(memo: Operator, **_: Any) -> dict[str, Any]:
    if not memo.elector.alive():
        raise RuntimeError("leader election stopped")
    return memo.controller.healthy()
