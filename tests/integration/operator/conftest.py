"""The operator as it runs for real: a `python -m modeldeploy_operator` process authenticated as a
ServiceAccount bound to exactly the chart's ClusterRole rules, against the real control plane.
A test fails if the operator was refused anything by RBAC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
from testsupport.operator_harness import (
    Harness,
    bind_operator_rules,
    install_crd,
    install_gateway_api,
    install_istio,
    refused_by_rbac,
    uninstall_gateway_api,
    uninstall_istio,
)

Cluster = localcluster.Cluster


@pytest.fixture(scope="session")
def operator_crds(cluster: Cluster) -> None:
    install_crd(cluster)


@pytest.fixture
def istio(cluster: Cluster) -> None:
    install_istio(cluster)


@pytest.fixture
def no_istio(cluster: Cluster) -> Iterator[None]:
    """Neither router installed (the Gateway API is only installed by the tests that use it)."""
    uninstall_istio(cluster)
    uninstall_gateway_api(cluster)
    yield
    install_istio(cluster)


@pytest.fixture
def gateway_api(cluster: Cluster) -> Iterator[None]:
    install_gateway_api(cluster)
    yield
    uninstall_gateway_api(cluster)


@pytest.fixture
def harness(cluster: Cluster, namespace: str, operator_crds: None, tmp_path: Path) -> Iterator[Harness]:
    """A ServiceAccount bound to exactly the chart's rules; the operators started by the test run as it."""
    role_name, kubeconfig = bind_operator_rules(cluster, namespace)
    harness = Harness(cluster, namespace, tmp_path, kubeconfig)
    try:
        yield harness
    finally:
        for operator in harness.operators:
            operator.stop()
        logs = harness.logs()
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", role_name, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "pv", "-l", f"test-namespace={namespace}", "--wait=false", check=False)
        if os.environ.get("MODELDEPLOY_TEST_SHOW_LOGS"):
            print(logs)
    refused = refused_by_rbac(logs)
    assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])
