"""Real pods: the operator (a host process, as in the operator tests) reconciles onto the real node,
whose pods run the serving image built from Dockerfile.server and load models from a local-path claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
from localkube.metrics import MetricsStack
from testsupport.operator_harness import install_crd
from testsupport.realpods import Serving, operator_with_claim

Cluster = localcluster.Cluster


@pytest.fixture(scope="session")
def real_crds(real_cluster: Cluster) -> None:
    install_crd(real_cluster)


@pytest.fixture
def serving(real_cluster: Cluster, real_namespace: str, real_crds: None, real_images: dict[str, str],
            tmp_path: Path) -> Iterator[Serving]:
    with operator_with_claim(real_cluster, real_namespace, tmp_path,
                             MODELDEPLOY_SERVER_IMAGE=real_images["server"]) as (harness, models):
        yield Serving(harness, models, real_images)


@pytest.fixture(scope="session")
def metrics_stack(real_cluster: Cluster) -> Iterator[MetricsStack]:
    """metrics-server, started once per session; Prometheus and KEDA join through `keda`."""
    stack = MetricsStack(real_cluster, real_cluster.workdir / "metrics")
    try:
        stack.start_metrics_server()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def prometheus(metrics_stack: MetricsStack) -> MetricsStack:
    """Prometheus scraping the serving pods, and KEDA's CRDs (KEDA itself joins through `keda`)."""
    metrics_stack.start_prometheus()
    metrics_stack.install_keda_crds()
    return metrics_stack
