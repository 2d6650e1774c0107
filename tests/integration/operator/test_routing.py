"""Routing objects under the real schemas: Istio's own CRDs and the Gateway API's standard channel.

The API server validates every VirtualService, DestinationRule and HTTPRoute the operator writes against
the schemas those projects ship, so a field they do not know, or a value of the wrong shape, is refused
(or silently pruned) here exactly as on a cluster running them.
"""

from __future__ import annotations

import json
from typing import Any

from testsupport.operator_harness import Harness, install_gateway_api, install_istio, manifest, uninstall_gateway_api

CANARY_MODEL = {"pvc": "models", "path": "sentiment/v2/model.onnx"}
HEADERS = [{"name": "x-model-variant", "exact": "v2"}, {"name": "x-cohort", "regex": "beta-.*"}]
TRACK = "modeldeploy.dev/track"


def virtual_service(name: str, http: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
            "spec": {"hosts": ["sentiment"], "http": http}}


def test_istio_schemas_are_live(harness: Harness, istio: None) -> None:
    """Istio's schema refuses what Istio would: a weight that is not a number, a zero timeout (one of its CEL
    rules), a field it does not have. The bare stand-ins accepted all three."""
    h = harness
    route = [{"destination": {"host": "sentiment", "subset": "stable"}, "weight": 100}]
    wrong_type = virtual_service("wrong-type", [{"route": [{**route[0], "weight": "all"}]}])
    refused = h.kubectl("apply", "-f", "-", input=json.dumps(wrong_type), check=False)
    assert refused.returncode != 0 and "spec.http[0].route[0].weight" in refused.stderr, refused.stderr
    zero_timeout = virtual_service("zero-timeout", [{"route": route, "timeout": "0s"}])
    refused = h.kubectl("apply", "-f", "-", input=json.dumps(zero_timeout), check=False)
    assert refused.returncode != 0 and "spec.http[0].timeout" in refused.stderr, refused.stderr
    unknown = virtual_service("unknown-field", [{"route": route, "shadowPercent": 50}])
    refused = h.kubectl("apply", "-f", "-", input=json.dumps(unknown), check=False)
    assert refused.returncode != 0 and 'unknown field "spec.http[0].shadowPercent"' in refused.stderr, refused.stderr
    accepted = virtual_service("valid", [{"route": route, "mirror": {"host": "sentiment", "subset": "canary"},
                                          "mirrorPercentage": {"value": 50.0}}])
    h.kubectl("apply", "-f", "-", input=json.dumps(accepted))


def test_istio_gets_header_matches_and_mirroring_as_written(harness: Harness, istio: None) -> None:
    """What the operator writes survives the real schema whole: no field refused, none pruned."""
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest(canary={"model": CANARY_MODEL, "trafficPercent": 10, "headers": HEADERS}))
    h.wait_condition("sentiment", "RoutingReady", "True", "WeightsApplied")
    host = f"sentiment.{h.namespace}.svc.cluster.local"

    def rules() -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = h.get("virtualservice", "sentiment")["spec"]["http"]
        return result

    h.eventually(lambda: len(rules()) == 2, 30, "the header rule")
    assert rules() == [
        {"name": "canary-headers",
         "match": [{"headers": {"x-model-variant": {"exact": "v2"}}}, {"headers": {"x-cohort": {"regex": "beta-.*"}}}],
         "route": [{"destination": {"host": host, "subset": "canary"}}]},
        {"name": "traffic", "route": [{"destination": {"host": host, "subset": "stable"}, "weight": 90},
                                      {"destination": {"host": host, "subset": "canary"}, "weight": 10}]},
    ]
    routing = h.condition("sentiment", "RoutingReady")
    assert "requests with x-model-variant: v2 or x-cohort ~ beta-.* go to canary" in routing["message"]

    # Shadow: the canary leaves live traffic and gets copies of half of stable's requests.
    h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p",
              '{"spec":{"canary":{"trafficPercent":0,"mirrorPercent":50,"headers":null}}}')
    h.eventually(lambda: len(rules()) == 1 and "mirror" in rules()[0], 30, "the mirror")
    assert rules()[0]["mirror"] == {"host": host, "subset": "canary"}
    assert rules()[0]["mirrorPercentage"] == {"value": 50}
    h.eventually(lambda: h.md()["status"].get("routing", {}).get("mirrorPercent") == 50, 30, "status.routing")
    assert h.md()["status"]["routing"]["backend"] == "Istio"
    assert "ApplyFailed" not in json.dumps(h.md()["status"]["conditions"])


def route_spec(h: Harness) -> dict[str, Any]:
    result: dict[str, Any] = h.get("httproute", "sentiment")["spec"]
    return result


def test_gateway_api_routes_once_installed_and_switches_with_the_spec(harness: Harness, no_istio: None) -> None:
    """No router: nothing written, status says so. The Gateway API's CRDs arrive: an HTTPRoute over per-track
    Services, without a restart. Istio arrives too: Auto prefers it; asking for the Gateway API brings the
    HTTPRoute back. The CRDs go: the status says the chosen router is missing."""
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest(manifest(canary={"model": CANARY_MODEL, "trafficPercent": 30, "headers": HEADERS[:1]},
                              routing={"gateways": ["edge/public"], "hosts": ["sentiment.example.com"]}))
    h.wait_condition("sentiment", "RoutingReady", "False", "NoRouterInstalled")
    assert h.get_or_none("service", "sentiment-stable") is None

    install_gateway_api(h.cluster)
    try:
        # Written is not served: no controller runs Gateway edge/public here, so the route is pending...
        routing = h.wait_condition("sentiment", "RoutingReady", "Unknown", "RoutePending")
        assert routing["message"].startswith("HTTPRoute sentiment (parents: edge/public) routes 70% to stable")
        assert routing["message"].endswith("waiting for Gateway edge/public to accept it (HTTPRoute status.parents)")
        # ...and a gateway's refusal, written to the route's status as a Gateway API controller writes it
        # (the real Envoy Gateway's acceptance is in tests/integration/realnode/test_gateway_routing.py).
        generation = h.get("httproute", "sentiment")["metadata"]["generation"]
        refusal = {"status": {"parents": [{
            "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "edge",
                          "name": "public"},
            "controllerName": "example.com/gateway-controller",
            "conditions": [{"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                            "message": "no listener allows routes from this namespace",
                            "observedGeneration": generation, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }]}}
        h.kubectl("patch", "httproute", "sentiment", "--subresource=status", "--type", "merge",
                  "-p", json.dumps(refusal))
        routing = h.wait_condition("sentiment", "RoutingReady", "False", "RouteNotAccepted")
        assert routing["message"].endswith("but Gateway edge/public refused it (NotAllowedByListeners: "
                                           "no listener allows routes from this namespace)")
        route = route_spec(h)
        assert route["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                        "name": "public", "namespace": "edge"}]
        assert route["hostnames"] == ["sentiment.example.com"]
        header_rule, weighted = route["rules"]
        assert header_rule["name"] == "canary-headers"
        assert header_rule["matches"][0]["headers"] == [{"type": "Exact", "name": "x-model-variant", "value": "v2"}]
        assert [(r["name"], r["weight"]) for r in header_rule["backendRefs"]] == [("sentiment-canary", 1)]
        assert [(r["name"], r["port"], r["weight"]) for r in weighted["backendRefs"]] == [
            ("sentiment-stable", 80, 70), ("sentiment-canary", 80, 30)]
        for track in ("stable", "canary"):
            assert h.get("service", f"sentiment-{track}")["spec"]["selector"][TRACK] == track
        status = h.md()["status"]
        assert status["routing"]["backend"] == "GatewayAPI"
        assert status["traffic"] == {"stable": 70, "canary": 30}

        h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p",
                  '{"spec":{"canary":{"trafficPercent":0,"mirrorPercent":50}}}')
        h.eventually(lambda: route_spec(h)["rules"][1].get("filters"), 30, "the mirror filter")
        (mirror,) = route_spec(h)["rules"][1]["filters"]
        assert mirror["type"] == "RequestMirror"
        assert mirror["requestMirror"]["percent"] == 50
        assert mirror["requestMirror"]["backendRef"]["name"] == "sentiment-canary"

        install_istio(h.cluster)  # Auto now prefers Istio: its objects replace the HTTPRoute
        h.eventually(lambda: h.get_or_none("virtualservice", "sentiment") is not None, 30, "the VirtualService")
        h.eventually(lambda: h.get_or_none("httproute", "sentiment") is None, 30, "the HTTPRoute deleted")
        h.eventually(lambda: h.get_or_none("service", "sentiment-canary") is None, 30, "track Services deleted")
        h.eventually(lambda: h.md()["status"]["routing"]["backend"] == "Istio", 30, "status: Istio")

        h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", '{"spec":{"routing":{"backend":"GatewayAPI"}}}')
        h.eventually(lambda: h.get_or_none("httproute", "sentiment") is not None, 30, "the HTTPRoute back")
        h.eventually(lambda: h.get_or_none("virtualservice", "sentiment") is None, 30, "the VirtualService deleted")
    finally:
        uninstall_gateway_api(h.cluster)
    routing = h.wait_condition("sentiment", "RoutingReady", "False", "RouterNotInstalled")
    assert "spec.routing.backend is GatewayAPI but the Gateway API" in routing["message"]
    assert "mirroring need Istio or the Gateway API" in routing["message"]
