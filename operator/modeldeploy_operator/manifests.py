"""Pure: what every child manifest shares: its owner, its name, labels and metadata, and its content hash.

Each child carries a hash of its own content (``modeldeploy.dev/applied-hash``) so the reconcile can tell
from the watch cache, without a request, whether a child already matches what it would apply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modeldeploy_operator import names
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.kinds import Kind
from modeldeploy_operator.names import (
    HASH_ANNOTATION,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_MD_NAME,
    LABEL_NAME,
    LABEL_TRACK,
    MANAGED_BY,
    SERVER_APP,
)
from modeldeploy_operator.spec import ModelDeploymentSpec, ModelSource, Replicas

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = ("stable", "canary")
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Owner:
    """The identity of the ModelDeployment that owns the children."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def labels(owner: Owner, track: Track | None = None) -> dict[str, str]:
    result = {
        LABEL_NAME: SERVER_APP,
        LABEL_INSTANCE: owner.name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_MD_NAME: owner.name,
    }
    if track is not None:
        result[LABEL_TRACK] = track
    return result


def selector_labels(owner: Owner, track: Track | None = None) -> dict[str, str]:
    """The immutable part: a Deployment's selector can never change, so keep it minimal."""
    result = {LABEL_NAME: SERVER_APP, LABEL_INSTANCE: owner.name}
    if track is not None:
        result[LABEL_TRACK] = track
    return result


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_name(owner: Owner, track: Track) -> str:
    return f"{owner.name}-{track}"


def service_host(owner: Owner, config: ServingConfig) -> str:
    return f"{owner.name}.{owner.namespace}.svc.{config.cluster_domain}"


def url(owner: Owner, config: ServingConfig) -> str:
    return f"http://{service_host(owner, config)}"


def content_hash(manifest: Manifest) -> str:
    """A short digest of everything we apply, annotation excluded."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def finish(manifest: Manifest) -> Manifest:
    """Stamp the content hash on the child (computed before the stamp exists)."""
    digest = content_hash(manifest)
    manifest["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return manifest


def metadata(owner: Owner, name: str, track: Track | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, track),
        "ownerReferences": [owner_reference(owner)],
    }


def child_manifest(kind: Kind, owner: Owner, name: str, spec: Mapping[str, Any],
                   track: Track | None = None) -> Manifest:
    """A child manifest of `kind` (at the version to apply), owned by `owner` and stamped with its content hash."""
    return finish({"apiVersion": kind.api_version, "kind": kind.kind, "metadata": metadata(owner, name, track),
                   "spec": dict(spec)})


def active_tracks(spec: ModelDeploymentSpec) -> tuple[Track, ...]:
    """The tracks that run: stable, and canary while one is configured."""
    return TRACKS if spec.canary is not None else ("stable",)


def model_source(spec: ModelDeploymentSpec, track: Track) -> ModelSource:
    if track == "canary":
        assert spec.canary is not None
        return spec.canary.source
    return spec.model


def track_replicas(spec: ModelDeploymentSpec, track: Track) -> Replicas:
    return spec.canary_replicas if track == "canary" else spec.stable_replicas
