"""Shared fixtures: the real local Kubernetes control plane and a fresh namespace per test.

The control plane is started once per test session (``hack/localcluster.py``) and stopped at the
end. ``USE_EXISTING_CLUSTER=1`` with ``KUBECONFIG`` runs the same tests against kind or any
cluster. A control plane that does not come up fails the tests that need it: it is never skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import localcluster

CLUSTER_FIXTURES = {"cluster", "namespace"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the control plane, so `-m "not cluster"` selects the fast ones."""
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)


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
