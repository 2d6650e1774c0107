"""Real pods: the operator (a host process, as in the operator tests) reconciles onto the real node,
whose pods run the serving image built from Dockerfile.server and load models from a local-path claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
from testsupport.operator_harness import Harness, bind_operator_rules, install_crd, refused_by_rbac
from testsupport.realpods import Serving, claim_folder

Cluster = localcluster.Cluster


@pytest.fixture(scope="session")
def real_crds(real_cluster: Cluster) -> None:
    install_crd(real_cluster)


@pytest.fixture
def serving(real_cluster: Cluster, real_namespace: str, real_crds: None, real_images: dict[str, str],
            tmp_path: Path) -> Iterator[Serving]:
    role_name, kubeconfig = bind_operator_rules(real_cluster, real_namespace)
    harness = Harness(real_cluster, real_namespace, tmp_path, kubeconfig)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    harness.kubectl("apply", "-f", "-", input=json.dumps(claim))  # the default class: local-path
    harness.eventually(lambda: harness.get("pvc", "models")["status"].get("phase") == "Bound", 60, "claim bound")
    harness.start_operator(MODELDEPLOY_SERVER_IMAGE=real_images["server"])
    try:
        yield Serving(harness, claim_folder(real_cluster, real_namespace, "models"), real_images)
    finally:
        for operator in harness.operators:
            operator.stop()
        logs = harness.logs()
        real_cluster.kubectl("delete", "clusterrolebinding,clusterrole", role_name, "--ignore-not-found",
                             check=False)
    refused = refused_by_rbac(logs)
    assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])
