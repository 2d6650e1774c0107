"""Shared fixtures: the real local Kubernetes control plane and a fresh namespace per test.

The control plane is started once per test session (``hack/localcluster.py``) and stopped at the
end. ``USE_EXISTING_CLUSTER=1`` with ``KUBECONFIG`` runs the same tests against kind or any
cluster. A control plane that does not come up fails the tests that need it: it is never skipped.

Tests on real pods use a second cluster with a real node (``real_cluster``), also started once per
session. It needs root and the Debian packages that ``.ci/run`` installs; without them those tests
skip with the reason, except under ``CI=true``, where a real node that cannot start fails them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

import localcluster
from localkube import images
from localkube.node import missing_requirements

CLUSTER_FIXTURES = {"cluster", "namespace", "real_node_allowed", "real_cluster", "real_namespace"}
REAL_NODE_FIXTURES = {"real_node_allowed", "real_cluster", "real_namespace"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the control plane, so `-m "not cluster"` selects the fast ones."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
        if REAL_NODE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realnode)


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    with localcluster.local_cluster() as running:
        yield running


@pytest.fixture
def namespace(cluster: localcluster.Cluster) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _real_node_unavailable() -> str | None:
    missing = missing_requirements()
    missing += [f"no {tool}" for tool in ("dockerd", "debootstrap") if not shutil.which(tool)]
    return ", ".join(missing) or None


@pytest.fixture(scope="session")
def real_node_allowed() -> None:
    """Skip (or, under CI=true, fail) when this machine cannot run a real node, saying why."""
    reason = _real_node_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and a real node cannot start on this machine: {reason}")
        pytest.skip(f"a real node needs root and the Debian packages of .ci/run: {reason}")


@pytest.fixture(scope="session")
def real_cluster(real_node_allowed: None) -> Iterator[localcluster.Cluster]:
    """A cluster with one real node (containerd, kubelet, kube-proxy, CoreDNS) beside the kwok nodes."""
    with localcluster.local_cluster(real_nodes=1) as running:
        yield running


@pytest.fixture(scope="session")
def real_images(real_cluster: localcluster.Cluster) -> dict[str, str]:
    """The CPU serving image and the operator image, built from the Dockerfiles and loaded into the node."""
    docker = images.ensure_docker()
    tags = images.project_images(docker)
    for tag in tags.values():
        real_cluster.load_image(tag)
    return tags


@pytest.fixture
def real_namespace(real_cluster: localcluster.Cluster) -> Iterator[str]:
    name = f"real-{uuid.uuid4().hex[:8]}"
    real_cluster.kubectl("create", "namespace", name)
    yield name
    real_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
