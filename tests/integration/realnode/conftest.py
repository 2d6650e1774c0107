"""Real pods: the operator (a host process, as in the operator tests) reconciles onto the real node,
whose pods run the serving image built from Dockerfile.server and load models from a local-path claim.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
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
