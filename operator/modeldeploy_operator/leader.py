"""Leader election on a coordination.k8s.io Lease, so that of several replicas exactly one acts.

The algorithm of client-go's leaderelection: a candidate takes the lease when it is free or when its
record has not changed for a full lease duration *as measured on the candidate's own clock* (no trust
in other machines' clocks); the leader renews it every retry period and, if it cannot renew within the
renew deadline, stops acting at once (the caller exits the process). Writes use the lease's
resourceVersion, so two candidates can never both win the same round.

A Lease (not kopf's peering objects) because it needs no extra CRD, is what Kubernetes' own
controllers use, and standbys keep their watch cache warm, so a take-over starts with a full cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from modeldeploy_operator.api import KubeError, LeaseApi
from modeldeploy_operator.clock import micro_time

log = logging.getLogger(__name__)


class LeaderElector:
    def __init__(
        self,
        api: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started = on_started
        self.on_stopped = on_stopped
        self._clock = clock  # this process's own clock: other machines' clocks are never trusted
        self.leading = threading.Event()  # the one record of whether this process may act
        self._observed_record: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def stop(self) -> None:
        """Step down: release the lease so a standby takes over without waiting for it to expire."""
        self._stop.set()
        if self.leading.is_set():
            self.leading.clear()
            try:
                lease = self.api.get_lease(self.namespace, self.name)
                if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                    lease["spec"]["holderIdentity"] = ""
                    lease["spec"]["leaseDurationSeconds"] = 1
                    self.api.replace_lease(lease)
            except KubeError as error:
                log.warning("could not release the lease: %s", error)

    def _run(self) -> None:
        while not self._stop.is_set() and self.step():
            self._stop.wait(self.retry_period)

    def step(self) -> bool:
        """One round: take or renew the lease; False once leadership is lost (the caller stops)."""
        try:
            acquired = self._try_acquire_or_renew()
        except KubeError as error:
            log.warning("leader election: %s", error)
            acquired = False
        now = self._clock()
        if acquired:
            self._last_renew = now
            if not self.leading.is_set():
                self.leading.set()
                log.info("became the leader (%s/%s as %s)", self.namespace, self.name, self.identity)
                self.on_started()
        elif self.leading.is_set() and now - self._last_renew > self.renew_deadline:
            self.leading.clear()
            log.error("lost the leader lease %s/%s: stopping", self.namespace, self.name)
            self.on_stopped()
            return False
        return True

    def _try_acquire_or_renew(self) -> bool:
        lease = self.api.get_lease(self.namespace, self.name)
        now = micro_time()
        if lease is None:
            fresh = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                    "acquireTime": now, "renewTime": now, "leaseTransitions": 0}
            try:
                self.api.create_lease(self.namespace, self.name, fresh)
            except KubeError as error:
                if error.status == 409:
                    return False
                raise
            return True
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = self._clock()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self._clock() < self._observed_at + duration:
            return False  # someone else holds a live lease
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_duration), renewTime=now)
        lease["spec"] = spec
        try:
            self.api.replace_lease(lease)
        except KubeError as error:
            if error.status == 409:
                return False
            raise
        return True


class NoElection:
    """Stands in for the elector when leader election is off: this process acts from the start."""

    def __init__(self, on_started: Callable[[], None]) -> None:
        self._on_started = on_started
        self.leading = threading.Event()

    def start(self) -> None:
        self.leading.set()
        self._on_started()

    def stop(self) -> None:
        return None

    def alive(self) -> bool:
        return True
