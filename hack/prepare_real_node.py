"""Build, before the tests start, everything the real-node fixtures would otherwise build inside a test.

A fixture runs within its first test's time limit (pytest-timeout), and on a cold machine the Go builds of
Prometheus, KEDA, metrics-server and Envoy Gateway, the debootstrap of the base image and the image
builds together take longer than any single test may. `make binaries` runs this once on a machine that
can run a real node; each step is cached by its pin or its inputs, so a warm run costs a few stat calls.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable

import envoy_gateway
import prometheus_operator
import routing_crds
from localkube import images, metrics
from localkube.node import missing_requirements


def _step(what: str, build: Callable[[], object]) -> None:
    started = time.monotonic()
    build()
    print(f"[prepare-real-node] {what}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def main() -> int:
    missing = missing_requirements() + [f"no {tool}" for tool in ("dockerd", "debootstrap") if not shutil.which(tool)]
    if missing:
        print(f"[prepare-real-node] no real node on this machine ({', '.join(missing)}): nothing to prepare",
              file=sys.stderr)
        return 0
    _step("routing CRDs (Istio, Gateway API)", lambda: (routing_crds.istio_crds(), routing_crds.gateway_api_crds()))
    _step("metrics-server, Prometheus, KEDA, prometheus-operator", metrics.metrics_binaries)
    _step("Envoy Gateway and Envoy", lambda: (envoy_gateway.controller_binary(), envoy_gateway.envoy_binary()))
    docker = images.ensure_docker()
    _step("the project's images", lambda: images.project_images(docker))
    _step("Envoy Gateway's images", lambda: envoy_gateway.build_images(docker))
    _step("Prometheus' and prometheus-operator's images", lambda: prometheus_operator.build_images(docker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
