"""The operator as it runs for real: a `python -m modeldeploy_operator` process authenticated as a
ServiceAccount bound to exactly the chart's ClusterRole rules, against the real control plane.
A test fails if the operator was refused anything by RBAC.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from operator_harness import (
    CRD,
    RULES,
    Harness,
    install_gateway_api,
    install_istio,
    uninstall_gateway_api,
    uninstall_istio,
)

import localcluster

Cluster = localcluster.Cluster


@pytest.fixture(scope="session")
def operator_crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.modeldeploy.dev")


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
    rules = yaml.safe_load(RULES.read_text())
    role_name = f"modeldeploy-operator-{namespace}"
    cluster.apply_objects(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": role_name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": role_name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
         "subjects": [{"kind": "ServiceAccount", "name": "modeldeploy-operator", "namespace": namespace}]},
    )
    kubeconfig = cluster.service_account_kubeconfig(namespace, "modeldeploy-operator")
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
    refused = [line for line in logs.splitlines() if "forbidden" in line.lower() or " 403 " in line]
    assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])
