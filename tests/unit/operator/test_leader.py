"""Leader election rounds against an in-memory Lease store with the API server's optimistic concurrency."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from modeldeploy_operator.api import KubeError
from modeldeploy_operator.leader import LeaderElector


class FakeLeases:
    """Leases by (namespace, name); a write carrying an old resourceVersion gets 409, as from the API server."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False  # the API server unreachable

    def _check(self) -> None:
        if self.down:
            raise KubeError(0, "ConnectionRefusedError", "connection refused")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        found = self.leases.get((namespace, name))
        return copy.deepcopy(found) if found else None

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        if (namespace, name) in self.leases:
            raise KubeError(409, "AlreadyExists", "leases.coordination.k8s.io already exists")
        return self._store({"metadata": {"namespace": namespace, "name": name}, "spec": dict(spec)})

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        self._check()
        meta = lease["metadata"]
        current = self.leases[(meta["namespace"], meta["name"])]
        if current["metadata"]["resourceVersion"] != meta.get("resourceVersion"):
            raise KubeError(409, "Conflict", "the object has been modified")
        return self._store(copy.deepcopy(dict(lease)))

    def _store(self, lease: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        lease["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(lease["metadata"]["namespace"], lease["metadata"]["name"])] = lease
        return copy.deepcopy(lease)

    def holder(self) -> str:
        return str(self.leases[("ops", "modeldeploy-operator")]["spec"]["holderIdentity"])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Candidate:
    """One replica: its elector and what it was told."""

    def __init__(self, leases: FakeLeases, identity: str, clock: Clock) -> None:
        self.events: list[str] = []
        self.elector = LeaderElector(
            leases, "ops", "modeldeploy-operator", identity, lease_duration=15, renew_deadline=10, retry_period=2,
            on_started=lambda: self.events.append("started"), on_stopped=lambda: self.events.append("stopped"),
            clock=clock,
        )


def test_one_leader_and_a_standby_takes_over_after_a_full_lease_duration() -> None:
    leases, clock = FakeLeases(), Clock()
    first, second = Candidate(leases, "first", clock), Candidate(leases, "second", clock)
    assert first.elector.step() and second.elector.step()
    assert first.events == ["started"] and second.events == []
    assert leases.holder() == "first"

    # The leader dies without releasing: the standby waits a full lease duration on its own clock.
    clock.now += 14
    second.elector.step()
    assert second.events == []
    clock.now += 2
    second.elector.step()
    assert second.events == ["started"]
    lease = leases.leases[("ops", "modeldeploy-operator")]["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("second", 1)


def test_a_renewing_leader_keeps_the_lease() -> None:
    leases, clock = FakeLeases(), Clock()
    first, second = Candidate(leases, "first", clock), Candidate(leases, "second", clock)
    first.elector.step()
    for _ in range(20):
        clock.now += 2
        first.elector.step()
        second.elector.step()
    assert leases.holder() == "first"
    assert second.events == []


def test_a_graceful_stop_hands_over_at_once() -> None:
    leases, clock = FakeLeases(), Clock()
    first, second = Candidate(leases, "first", clock), Candidate(leases, "second", clock)
    first.elector.step()
    second.elector.step()
    first.elector.stop()
    clock.now += 2  # the released lease lasts one second
    second.elector.step()
    assert second.events == ["started"]


def test_a_leader_that_cannot_renew_within_the_deadline_stops() -> None:
    leases, clock = FakeLeases(), Clock()
    first = Candidate(leases, "first", clock)
    first.elector.step()
    leases.down = True
    clock.now += 8
    assert first.elector.step()  # within the renew deadline: still leading
    clock.now += 3
    assert not first.elector.step()
    assert first.events == ["started", "stopped"]


def test_two_candidates_racing_for_a_free_lease_both_write_but_one_wins() -> None:
    leases, clock = FakeLeases(), Clock()
    first, second = Candidate(leases, "first", clock), Candidate(leases, "second", clock)
    first.elector.step()
    first.elector.stop()
    clock.now += 2
    # Both read the released lease; the second write carries a stale resourceVersion and gets 409.
    stale = leases.get_lease("ops", "modeldeploy-operator")
    second.elector.step()
    assert stale is not None
    stale["spec"]["holderIdentity"] = "intruder"
    with pytest.raises(KubeError) as refused:
        leases.replace_lease(stale)
    assert refused.value.status == 409
    assert leases.holder() == "second"
