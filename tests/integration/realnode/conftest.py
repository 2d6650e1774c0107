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


@pytest.fixture(scope="module")
def gateway(real_cluster: localcluster.Cluster) -> Iterator[str]:
    """Envoy Gateway installed with its chart, a Gateway `gateway/public`; yields its namespace/name."""
    envoy_gateway.install(real_cluster, envoy_gateway.build_images(images.ensure_docker()))
    namespace = f"gateway-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", namespace)
    real_cluster.apply_objects(*envoy_gateway.gateway_objects(namespace))
    real_cluster.kubectl("wait", "-n", namespace, "--for=condition=Programmed", "--timeout=180s", "gateway/public")
    yield f"{namespace}/public"
    # The session's real cluster goes on to tests that expect no router: leave none behind.
    real_cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False)
    real_cluster.kubectl("delete", "gatewayclass", "envoy", "--ignore-not-found", check=False)
    envoy_gateway.uninstall(real_cluster)
    uninstall_gateway_api(real_cluster)
