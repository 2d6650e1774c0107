"""The one module that talks to the Kubernetes API (kopf's watches aside).

Raw REST through the official client's ApiClient: server-side apply takes plain dicts, responses are
parsed JSON, no per-call model (de)serialization and no discovery round-trips per reconcile (the
paths of the few kinds the operator touches are known). One client, one connection pool, shared by
the reconcile workers.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import kinds, names
from modeldeploy_operator.api import KubeError
from modeldeploy_operator.clock import micro_time
from modeldeploy_operator.kinds import Kind

log = logging.getLogger(__name__)
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_OBJECT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CHILD_KINDS = kinds.child_kind_by_name()


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    """The REST coordinates of a child manifest (routing kinds at the version the manifest names)."""
    kind = CHILD_KINDS.get(str(manifest["kind"]))
    if kind is None:
        raise ValueError(f"the operator does not manage {manifest['kind']}")
    if not kind.version:
        return kind.at_version(str(manifest["apiVersion"]).rsplit("/", 1)[-1])
    return kind


def _error(exc: ApiException) -> KubeError:
    reason, message = str(exc.reason or ""), str(exc.body or exc.reason or "")
    causes: tuple[str, ...] = ()
    try:
        body = json.loads(exc.body) if exc.body else {}
        message = body.get("message", message)
        reason = body.get("reason", reason)
        causes = tuple(str(c.get("reason", "")) for c in (body.get("details") or {}).get("causes") or [])
    except (ValueError, TypeError, AttributeError):
        pass
    return KubeError(int(exc.status or 0), reason, message, causes)


class Kube:
    """A thin, thread-safe wrapper: every method is one API request."""

    def __init__(self, api: k8s_client.ApiClient, timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout

    @classmethod
    def connect(cls, pool_size: int = 8, timeout: float = 30.0) -> Kube:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = pool_size
        return cls(k8s_client.ApiClient(configuration), timeout)

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": accept, "Content-Type": content_type}
        if body is not None and content_type.endswith("yaml"):
            # The client would send json.dumps(body): ASCII with surrogate-pair escapes for characters outside
            # the Basic Multilingual Plane, which the API server's YAML decoder refuses. JSON is YAML, and
            # UTF-8 is what both decoders read, so send the bytes ourselves.
            body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            method, url, headers, payload = self._api.param_serialize(
                method=method, resource_path=path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=["BearerToken"],
            )[:4]
            response = self._api.call_api(method, url, header_params=headers, body=payload,
                                          _request_timeout=(5, self._timeout))
            raw: bytes = response.read()  # type: ignore[no-untyped-call]
        except ApiException as exc:
            raise _error(exc) from None
        except Exception as exc:  # transport: refused, reset, timeout
            raise KubeError(0, type(exc).__name__, str(exc)) from exc
        if not 200 <= response.status < 300:
            raise _error(ApiException(status=response.status, reason=response.reason,
                                      body=raw.decode(errors="replace") if raw else None))
        parsed: dict[str, Any] = json.loads(raw) if raw else {}
        return parsed

    # Children -------------------------------------------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply; force takes back fields someone changed by hand (we own them)."""
        kind = kind_of(manifest)
        meta = manifest["metadata"]
        return self.request(
            "PATCH", kind.path(meta.get("namespace"), meta["name"]), dict(manifest),
            query={"fieldManager": names.FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete one child (background propagation); False when it was already gone."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", kind.path(namespace, name), body)
        except KubeError as error:
            if error.status in {404, 409}:  # gone, or replaced by a newer object with the same name
                return False
            raise
        return True

    # The resource itself --------------------------------------------------------------------------------

    def get_uid(self, kind: Kind, namespace: str, name: str) -> str | None:
        try:
            found = self.request("GET", kind.path(namespace, name), accept=METADATA_OBJECT)
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return str((found.get("metadata") or {}).get("uid", "")) or None

    def patch_status(self, kind: Kind, namespace: str, name: str, status: Mapping[str, Any],
                     resource_version: str | None = None) -> dict[str, Any]:
        """Replace the status stanza through the status subresource only: spec is never written.

        With `resource_version` the API server refuses the patch with 409 Conflict when the object changed
        since then (a resourceVersion in the patched object is a precondition, as for an update)."""
        # "add" on an existing member replaces it (RFC 6902), and creates the stanza the first time.
        patch: list[dict[str, Any]] = [{"op": "add", "path": "/status", "value": dict(status)}]
        if resource_version:
            patch.insert(0, {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version})
        return self.request(
            "PATCH", kind.path(namespace, name) + "/status", patch,
            content_type="application/json-patch+json",
        )

    def post_event(
        self, kind: Kind, owner: Mapping[str, Any], event_type: str, reason: str, message: str, instance: str
    ) -> None:
        """A core/v1 Event on one of our resources (what `kubectl describe md` shows)."""
        meta = owner["metadata"]
        stamp = micro_time()
        body = {
            "apiVersion": kinds.EVENT.api_version,
            "kind": kinds.EVENT.kind,
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": kind.api_version, "kind": kind.kind, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": names.REPORTING_COMPONENT},
            "reportingComponent": names.REPORTING_COMPONENT,
            "reportingInstance": instance,
            "firstTimestamp": stamp[:19] + "Z",
            "lastTimestamp": stamp[:19] + "Z",
            "eventTime": stamp,
            "action": "Reconcile",
            "count": 1,
        }
        self.request("POST", kinds.EVENT.collection(meta["namespace"]), body)

    # Start-up inventory: which objects exist, metadata only (small, paged) ------------------------------

    def list_uids(self, collection: str, label_selector: str | None = None) -> dict[str, tuple[str, str, str]]:
        """uid -> (collection, namespace, name) of every object in a collection."""
        found: dict[str, tuple[str, str, str]] = {}
        query: dict[str, str] = {"limit": "500"}
        if label_selector:
            query["labelSelector"] = label_selector
        while True:
            page = self.request("GET", collection, query=query, accept=METADATA_LIST)
            for item in page.get("items") or []:
                meta = item.get("metadata", {})
                found[meta["uid"]] = (collection, meta.get("namespace", ""), meta["name"])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return found
            query["continue"] = token

    def exists(self, collection: str, namespace: str, name: str) -> bool:
        """Whether a named object exists, with only `list` permission (a field-selected list)."""
        selector = f"metadata.name={name}" + (f",metadata.namespace={namespace}" if namespace else "")
        page = self.request("GET", collection, query={"fieldSelector": selector, "limit": "1"},
                            accept=METADATA_LIST)
        return bool(page.get("items"))

    # Discovery, once at start-up (the CRD watch keeps it current afterwards) -----------------------------

    def served_version(self, group: str) -> str | None:
        """The preferred served version of a routing API group, or None when it is not installed."""
        try:
            found = self.request("GET", f"/apis/{group}")
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        version = kinds.preferred_version(group, (v.get("version") for v in found.get("versions", [])))
        if version is None:
            return None
        # The group outlives its CRDs one by one (a CRD being deleted takes its objects first): the router
        # counts only while every kind the operator writes is served.
        served = {r.get("name") for r in self.request("GET", f"/apis/{group}/{version}").get("resources", [])}
        wanted = {kind.plural for kind in kinds.ROUTING_KINDS if kind.group == group}
        return version if wanted <= served else None

    def keda_installed(self) -> bool:
        """Whether the API server serves KEDA's ScaledObjects at the version the operator writes."""
        try:
            resources = self.request("GET", f"/apis/{kinds.SCALED_OBJECT.api_version}")
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return any(r.get("name") == kinds.SCALED_OBJECT.plural for r in resources.get("resources", []))

    def server_version(self) -> tuple[int, int]:
        """(major, minor) of the API server, e.g. (1, 35)."""
        info = self.request("GET", "/version")
        minor = "".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or "0"
        return int(info.get("major", "1") or 1), int(minor)

    # Leases, for leader election ------------------------------------------------------------------------

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", kinds.LEASE.path(namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": kinds.LEASE.api_version, "kind": kinds.LEASE.kind,
                "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
        return self.request("POST", kinds.LEASE.collection(namespace), body)

    def replace_lease(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        """Optimistic concurrency: fails with 409 when someone else wrote the lease since we read it."""
        meta = lease["metadata"]
        return self.request("PUT", kinds.LEASE.path(meta["namespace"], meta["name"]), dict(lease))


def serves_version(body: Mapping[str, Any], version: str) -> bool:
    """Whether a CRD body (from the CRD watch) serves the given version."""
    return any(v.get("name") == version and v.get("served") for v in (body.get("spec") or {}).get("versions", []))


def routing_version_of_crd(body: Mapping[str, Any]) -> str | None:
    """The preferred served version of a routing CRD body (from the CRD watch); None once it is being
    deleted, as the API server then refuses new objects of its kind."""
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    spec = body.get("spec") or {}
    return kinds.preferred_version(str(spec.get("group")), (v.get("name") for v in spec.get("versions", [])
                                                              if v.get("served")))
