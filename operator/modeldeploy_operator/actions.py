"""Carrying out a reconcile's decisions against the API, for any owning kind: apply and delete children,
write the status (only onto the object the decision was made from), post the Events.

What the API answers is folded back into the watch cache at once, so the next reconcile does not act
again on what the watch has not echoed yet. Refusals are reported, not raised: a child the API server
refuses (quota, webhook, RBAC) is named in the status; a namespace being deleted silences everything.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from modeldeploy_operator.api import ControllerApi, KubeError
from modeldeploy_operator.cache import Key, Snapshot, WatchCache
from modeldeploy_operator.children import Outcome, Plan, StatusUpdate
from modeldeploy_operator.events import EventNote

log = logging.getLogger(__name__)


class CreationLoop:
    """Says so loudly when one child keeps being created: something deletes it each time."""

    LIMIT = (5, 60.0)  # this many creations of one child within this many seconds

    def __init__(self) -> None:
        self._creations: dict[tuple[Key, str, str], deque[float]] = {}

    def created(self, key: Key, kind: str, name: str) -> None:
        if len(self._creations) > 10_000:
            self._creations.clear()
        count, window = self.LIMIT
        times = self._creations.setdefault((key, kind, name), deque(maxlen=count))
        times.append(time.monotonic())
        if len(times) == count and times[-1] - times[0] < window:
            log.warning("%s %s/%s was created %d times in %.0fs: something keeps deleting it", kind, key.namespace,
                        name, count, times[-1] - times[0])
            times.clear()


class Actions:
    """The writes of one reconcile, through the `api.ControllerApi` interface."""

    def __init__(self, api: ControllerApi, cache: WatchCache, identity: str) -> None:
        self.api = api
        self.cache = cache
        self.identity = identity  # the Events' reportingInstance
        self.loops = CreationLoop()

    def owner_confirmed(self, snapshot: Snapshot) -> bool:
        """Before re-creating deleted children: does the owner still exist? If the cache missed its deletion,
        each child re-created with its uid is deleted again by the garbage collector, which queues the next
        reconcile: a loop. Asked only after children vanished, so it costs one GET per hand deletion."""
        uid = str(snapshot.body["metadata"].get("uid", ""))
        key = snapshot.key
        if self.api.get_uid(self.cache.owner_kind(key).kind, key.namespace, key.name) == uid:
            self.cache.confirmed(key)
            return True
        log.info("forgetting %s (uid %s): it no longer exists", key, uid)
        self.cache.forget_resource(key, uid)
        return False

    def namespace_going_away(self, namespace: str) -> None:
        if self.cache.note_namespace_terminating(namespace):
            log.info("namespace %s is being deleted: leaving its resources to go with it", namespace)

    def carry_out(self, snapshot: Snapshot, plan: Plan) -> Outcome:
        """Apply and delete as planned; what the API refused is in the outcome's errors."""
        errors: dict[str, str] = {}
        applied: dict[str, dict[str, object]] = {}
        owner = self.cache.owner_kind(snapshot.key)
        for manifest in plan.apply:
            kind, meta = manifest["kind"], manifest["metadata"]
            try:
                response = self.api.apply(manifest)
            except KubeError as error:
                if error.status == 0:
                    raise  # the API server is unreachable: nothing else will work either
                if error.namespace_going_away:
                    self.namespace_going_away(snapshot.key.namespace)
                    return Outcome(namespace_going_away=True)
                # Refused or failing server-side (quota, webhook, full service IP range...): say so in status.
                errors[f"{kind}/{meta['name']}"] = error.message
                log.error("applying %s %s/%s failed: %s", kind, meta["namespace"], meta["name"], error)
                continue
            if (kind, meta["name"]) not in snapshot.children:
                self.loops.created(snapshot.key, kind, meta["name"])
            self.cache.observe(kind, response)
            watched = owner.watched_kind(kind)
            if watched is not None and watched.summarize is not None:
                applied.setdefault(kind, {})[meta["name"]] = watched.summarize(response)
        for child in plan.delete:
            log.info("deleting %s %s/%s: no longer wanted", child.kind.kind, child.namespace, child.name)
            self.api.delete(child.kind, child.namespace, child.name, child.uid)
        return Outcome(errors, applied)

    def write_status(self, snapshot: Snapshot, update: StatusUpdate) -> bool:
        """Write the status only onto the object the decision was made from (resourceVersion precondition):
        a `kubectl modeldeploy rollout ...` request written since would otherwise be replaced unseen.
        False on such a conflict: the key is reconciled again from the newer object."""
        key = snapshot.key
        read = snapshot.body["metadata"].get("resourceVersion")
        try:
            written = self.api.patch_status(self.cache.owner_kind(key).kind, key.namespace, key.name,
                                            update.status, read)
        except KubeError as error:
            if error.status == 404:
                return True  # deleted meanwhile
            if error.status == 409:
                log.info("status of %s changed since it was read; deciding again", key)
                return False
            raise
        self.cache.record_status(key, update.status, (written.get("metadata") or {}).get("resourceVersion"), read)
        self._post(snapshot.body, key, update.events)
        return True

    def _post(self, body: Mapping[str, Any], key: Key, notes: tuple[EventNote, ...]) -> None:
        kind = self.cache.owner_kind(key).kind
        for note in notes:
            try:
                self.api.post_event(kind, body, note.type, note.reason, note.message, self.identity)
            except KubeError as error:
                if error.namespace_going_away:
                    self.namespace_going_away(key.namespace)
                    return
                log.warning("could not post event %s on %s: %s", note.reason, key, error)
