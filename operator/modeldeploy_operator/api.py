"""What the controller and the leader election need from the Kubernetes API, as interfaces.

`kube.Kube` implements them against the real API server; the unit tests implement them in memory.
Nothing here imports the Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from modeldeploy_operator.kinds import Kind

# The Status cause the API server gives when it refuses to create objects in a namespace being deleted.
NAMESPACE_TERMINATING = "NamespaceTerminating"


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0 for transport errors)."""

    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else message)
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the `reason` of each entry of the Status body's details.causes

    @property
    def namespace_going_away(self) -> bool:
        """Refused because the namespace is being deleted (or already is): everything in it is going away."""
        gone = self.status == 404 and self.message.startswith('namespaces "')
        return gone or NAMESPACE_TERMINATING in self.causes


class ChildApi(Protocol):
    """Writes to the children and the resource's status: what one reconcile does."""

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool: ...

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Replace a resource's status; with `resource_version`, only if the object is still at it (else 409)."""
        ...

    def post_event(
        self, kind: Kind, owner: Mapping[str, Any], event_type: str, reason: str, message: str, instance: str
    ) -> None:
        """An Event on one of our resources (of `kind`), as `kubectl describe` shows it."""
        ...

    def get_uid(self, kind: Kind, namespace: str, name: str) -> str | None:
        """The uid of the named object, None when it does not exist."""
        ...


class InventoryApi(Protocol):
    """Metadata-only reads: which objects exist, to check the watch cache against."""

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]: ...

    def exists(self, collection: str, namespace: str, name: str) -> bool: ...


class DiscoveryApi(Protocol):
    """What the API server offers: asked at start-up, and again when the cache is checked."""

    def server_version(self) -> tuple[int, int]: ...

    def served_version(self, group: str) -> str | None: ...

    def keda_installed(self) -> bool: ...


class ControllerApi(ChildApi, InventoryApi, DiscoveryApi, Protocol):
    """Everything the controller uses."""


class LeaseApi(Protocol):
    """A coordination.k8s.io Lease: read, create, and replace with optimistic concurrency (409 on a race)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]: ...

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]: ...
