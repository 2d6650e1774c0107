"""Real pods: the operator (a host process, as in the operator tests) reconciles onto the real node,
whose pods run the serving image built from Dockerfile.server and load models from a local-path claim.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import envoy_gateway
import localcluster
from localkube import images
from localkube.metrics import MetricsStack
from testsupport.operator_harness import install_crd, uninstall_gateway_api
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


@pytest.fixture(scope="module")
def gateway(real_cluster: localcluster.Cluster) -> Iterator[str]:
    """Envoy Gateway installed with its chart, a Gateway `gateway/public`; yields its namespace/name."""
    namespace = f"gateway-{uuid.uuid4().hex[:6]}"
    try:
        envoy_gateway.install(real_cluster, envoy_gateway.build_images(images.ensure_docker()))
        real_cluster.kubectl("create", "namespace", namespace)
        real_cluster.apply_objects(*envoy_gateway.gateway_objects(namespace))
        real_cluster.kubectl("wait", "-n", namespace, "--for=condition=Programmed", "--timeout=180s",
                             "gateway/public")
        yield f"{namespace}/public"
    finally:
        # Also after a failed setup: the session's real cluster goes on to tests that expect no router.
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False)
        real_cluster.kubectl("delete", "gatewayclass", "envoy", "--ignore-not-found", check=False)
        envoy_gateway.uninstall(real_cluster)
        uninstall_gateway_api(real_cluster)
