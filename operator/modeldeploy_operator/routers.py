"""Which routing APIs the cluster serves, and which one routes a given ModelDeployment.

Discovery state (asked at start-up, kept current by the CRD watch) and the choice made from it; the
objects each router is given are built in `routing.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modeldeploy_operator import kinds, spec
from modeldeploy_operator.kinds import Kind


@dataclass(frozen=True)
class Routers:
    """The routing APIs installed in the cluster, each at the version it serves (None: not installed)."""

    istio: str | None = None
    gateway_api: str | None = None

    def version_of(self, kind: Kind) -> str | None:
        """The served version of a routing kind, None when its API is not installed."""
        return self.istio if kind.group == kinds.ISTIO_GROUP else self.gateway_api


RouterName = Literal["Istio", "GatewayAPI"]


@dataclass(frozen=True)
class Router:
    """The API chosen to route one ModelDeployment's requests, at the version the cluster serves."""

    name: RouterName
    version: str

    def api_version(self, kind: Kind) -> str:
        return kind.at_version(self.version).api_version


def choose_router(wanted: spec.ModelDeploymentSpec, routers: Routers) -> Router | None:
    """The spec's backend if installed; Auto prefers Istio (it also routes in-mesh calls to the Service's own
    name), then the Gateway API. None: the Service alone spreads the requests."""
    backend = wanted.routing_backend
    if backend in {"Auto", "Istio"} and routers.istio is not None:
        return Router("Istio", routers.istio)
    if backend in {"Auto", "GatewayAPI"} and routers.gateway_api is not None:
        return Router("GatewayAPI", routers.gateway_api)
    return None
