"""Pure: the Services and the routing objects that split requests between the tracks: Istio's
DestinationRule and VirtualService, or the Gateway API's HTTPRoute over per-track Services."""

from __future__ import annotations

from typing import Any

from modeldeploy_operator import kinds, manifests
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.manifests import Manifest, Owner, Track, child_manifest
from modeldeploy_operator.names import LABEL_TRACK, SERVICE_HTTP_PORT
from modeldeploy_operator.routers import Router
from modeldeploy_operator.spec import ModelDeploymentSpec


def service_tracks(spec: ModelDeploymentSpec, router: Router | None) -> tuple[Track, ...]:
    """Which tracks the main Service sends to: all with Istio (subsets split), else by the requested weight
    (a Gateway API route splits at the gateway, through the per-track Services)."""
    if spec.canary is None or (router is not None and router.name == "Istio"):
        return manifests.active_tracks(spec)
    if spec.canary_weight == 0:
        return ("stable",)
    if spec.canary_weight == 100:
        return ("canary",)
    return manifests.TRACKS


def destination_rule(owner: Owner, router: Router, config: ServingConfig) -> Manifest:
    return child_manifest(kinds.DESTINATION_RULE.at_version(router.version), owner, owner.name, {
        "host": manifests.service_host(owner, config),
        "subsets": [{"name": track, "labels": {LABEL_TRACK: track}} for track in manifests.TRACKS],
    })


def weights(spec: ModelDeploymentSpec) -> dict[str, int]:
    canary = spec.canary_weight if spec.canary is not None else 0
    return {"stable": 100 - canary, "canary": canary}


# Rule names: what `kubectl get -o yaml` shows and what the proxies' stats are keyed by.
HEADER_RULE = "canary-headers"


WEIGHT_RULE = "traffic"


def virtual_service(owner: Owner, spec: ModelDeploymentSpec, router: Router, config: ServingConfig) -> Manifest:
    """Header matches first (to the canary whatever the weights), then the weighted split, which mirrors a
    share of its requests to the canary when shadowing."""
    host = manifests.service_host(owner, config)
    split = weights(spec)
    http: list[dict[str, Any]] = []
    if spec.canary_headers:
        http.append({
            "name": HEADER_RULE,
            "match": [{"headers": {h.name: {"exact": h.exact} if h.exact is not None else {"regex": h.regex}}}
                      for h in spec.canary_headers],
            "route": [{"destination": {"host": host, "subset": "canary"}}],
        })
    weighted: dict[str, Any] = {
        "name": WEIGHT_RULE,
        "route": [{"destination": {"host": host, "subset": track}, "weight": split[track]}
                  for track in manifests.active_tracks(spec)],
    }
    if spec.mirror_percent:
        weighted["mirror"] = {"host": host, "subset": "canary"}
        weighted["mirrorPercentage"] = {"value": float(spec.mirror_percent)}
    http.append(weighted)
    vs_spec: dict[str, Any] = {"hosts": [host, *(h for h in spec.hosts if h != host)], "http": http}
    if spec.gateways:
        vs_spec["gateways"] = [*spec.gateways, "mesh"]
    return child_manifest(kinds.VIRTUAL_SERVICE.at_version(router.version), owner, owner.name, vs_spec)


def parent_refs(owner: Owner, spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    """The spec's Gateways; without any, the main Service itself (GAMMA: the mesh routes calls to it)."""
    refs: list[dict[str, Any]] = []
    for gateway in spec.gateways:
        namespace, _, name = gateway.rpartition("/")
        ref = {"group": kinds.GATEWAY.group, "kind": kinds.GATEWAY.kind, "name": name}
        if namespace:
            ref["namespace"] = namespace
        refs.append(ref)
    return refs or [{"group": "", "kind": kinds.SERVICE.kind, "name": owner.name, "port": SERVICE_HTTP_PORT}]


def _backend_ref(owner: Owner, track: Track, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": kinds.SERVICE.kind, "name": manifests.child_name(owner, track),
                           "port": SERVICE_HTTP_PORT}
    if weight is not None:
        ref["weight"] = weight
    return ref


def http_route(owner: Owner, spec: ModelDeploymentSpec, router: Router) -> Manifest:
    """The Gateway API's form of the same routing: rules over the per-track Services. A header rule is more
    specific than the catch-all weighted rule, so the Gateway API's precedence tries it first."""
    split = weights(spec)
    rules: list[dict[str, Any]] = []
    if spec.canary_headers:
        rules.append({
            "name": HEADER_RULE,
            "matches": [{"headers": [{"type": "Exact", "name": h.name, "value": h.exact} if h.exact is not None
                                     else {"type": "RegularExpression", "name": h.name, "value": h.regex}]}
                        for h in spec.canary_headers],
            "backendRefs": [_backend_ref(owner, "canary")],
        })
    weighted: dict[str, Any] = {
        "name": WEIGHT_RULE,
        "backendRefs": [_backend_ref(owner, track, split[track]) for track in manifests.active_tracks(spec)],
    }
    if spec.mirror_percent:
        weighted["filters"] = [{
            "type": "RequestMirror",
            "requestMirror": {"backendRef": _backend_ref(owner, "canary"), "percent": spec.mirror_percent},
        }]
    rules.append(weighted)
    route_spec: dict[str, Any] = {"parentRefs": parent_refs(owner, spec), "rules": rules}
    if spec.hosts:
        route_spec["hostnames"] = spec.hosts
    return child_manifest(kinds.HTTP_ROUTE.at_version(router.version), owner, owner.name, route_spec)


def routing_children(owner: Owner, spec: ModelDeploymentSpec, config: ServingConfig,
                     router: Router | None) -> list[Manifest]:
    """The routing objects of the chosen API (none without one)."""
    if router is None:
        return []
    if router.name == "Istio":
        return [destination_rule(owner, router, config), virtual_service(owner, spec, router, config)]
    return [*(track_service(owner, track) for track in manifests.active_tracks(spec)), http_route(owner, spec, router)]


def routing_object_names(owner: Owner, spec: ModelDeploymentSpec, router: Router) -> list[str]:
    """Kind/name of what `routing_children` writes, for the status (without building the manifests)."""
    if router.name == "Istio":
        return [f"{kinds.VIRTUAL_SERVICE.kind}/{owner.name}", f"{kinds.DESTINATION_RULE.kind}/{owner.name}"]
    return [f"{kinds.HTTP_ROUTE.kind}/{owner.name}",
            *(f"{kinds.SERVICE.kind}/{manifests.child_name(owner, track)}" for track in manifests.active_tracks(spec))]


def _service(owner: Owner, name: str, selector: dict[str, str], track: Track | None = None) -> Manifest:
    return child_manifest(kinds.SERVICE, owner, name, {
        "type": "ClusterIP",
        "selector": selector,
        "ports": [{
            "name": "http",
            "port": SERVICE_HTTP_PORT,
            "targetPort": "http",
            "protocol": "TCP",
            "appProtocol": "http",
        }],
    }, track=track)


def service(owner: Owner, spec: ModelDeploymentSpec, router: Router | None) -> Manifest:
    tracks = service_tracks(spec, router)
    return _service(owner, owner.name, manifests.selector_labels(owner, tracks[0] if len(tracks) == 1 else None))


def track_service(owner: Owner, track: Track) -> Manifest:
    """One track's own Service (NAME-stable, NAME-canary): what an HTTPRoute's backendRefs weigh."""
    return _service(owner, manifests.child_name(owner, track), manifests.selector_labels(owner, track), track)
