"""What the controller and the leader election need from the Kubernetes API, as interfaces.

`kube.Kube` implements them against the real API server; the unit tests implement them in memory.
Nothing here imports the Kubernetes client.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol

from modeldeploy_operator.names import Kind


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for transport errors)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message


def now_rfc3339() -> str:
    """Seconds precision: what conditions' lastTransitionTime carries."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time() -> str:
    """Microsecond precision (metav1.MicroTime): Lease renewals and Event times."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ChildApi(Protocol):
    """Writes to the children and the resource's status: what one reconcile does."""

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool: ...

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]: ...

    def post_event(
        self, owner: Mapping[str, Any], event_type: str, reason: str, message: str, instance: str
    ) -> None: ...


class InventoryApi(Protocol):
    """Metadata-only reads: which objects exist, to check the watch cache against."""

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]: ...

    def exists(self, collection: str, namespace: str, name: str) -> bool: ...


class ControllerApi(ChildApi, InventoryApi, Protocol):
    """Everything the controller uses."""


class DiscoveryApi(Protocol):
    """What the API server offers, asked once at start-up."""

    def server_version(self) -> tuple[int, int]: ...

    def istio_version(self) -> str | None: ...

    def keda_installed(self) -> bool: ...


class LeaseApi(Protocol):
    """A coordination.k8s.io Lease: read, create, and replace with optimistic concurrency (409 on a race)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]: ...

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]: ...
