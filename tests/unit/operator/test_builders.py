"""Children built from a spec: plain dicts, checked field by field."""

from __future__ import annotations

from typing import Any

from modeldeploy_operator import autoscalers, builders, names, routing
from modeldeploy_operator import spec as specs
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.manifests import Owner
from modeldeploy_operator.routers import Router, Routers, choose_router

OWNER = Owner(name="sentiment", namespace="ml", uid="1234-uid")
CONFIG = ServingConfig(server_image="example.test/server:cpu", gpu_server_image="example.test/server:gpu")
ISTIO = Router("Istio", "v1")
GATEWAY_API = Router("GatewayAPI", "v1")
BOTH = Routers(istio="v1", gateway_api="v1")


def make_spec(**extra: Any) -> specs.ModelDeploymentSpec:
    return specs.parse_spec({"model": {"pvc": "models", "path": "sentiment/v1/model.onnx"}, **extra})


def with_canary(weight: int = 10, **extra: Any) -> specs.ModelDeploymentSpec:
    canary = {"model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx"}, "trafficPercent": weight}
    return make_spec(canary=canary, **extra)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(deployment)["env"]}


def test_deployment_mounts_the_claim_read_only_and_passes_the_server_contract() -> None:
    spec = make_spec(model={"pvc": "models", "path": "s/v1/model.onnx", "sha256": "AB" * 32},
                     batching={"maxBatchSize": 32, "maxDelayMs": 5}, resources={"requests": {"cpu": "1500m"}})
    deployment = builders.deployment(OWNER, spec, "stable", CONFIG)
    assert deployment["metadata"]["name"] == "sentiment-stable"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"][0] == {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    assert pod["volumes"][1]["emptyDir"] == {"sizeLimit": "1Gi"}
    mounts = {m["mountPath"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert "/tmp" in mounts
    assert env_of(deployment) == {
        "MODEL_PATH": "/models/s/v1/model.onnx",
        "MODEL_ROOT": "/models",
        "MODEL_NAME": "sentiment",
        "PORT": "8080",
        "TERMINATION_MESSAGE_PATH": "/dev/termination-log",
        "MODEL_SHA256": "ab" * 32,
        "MAX_BATCH_SIZE": "32",
        "MAX_BATCH_DELAY_MS": "5",
        "INTRA_OP_THREADS": "2",
    }
    assert container(deployment)["image"] == "example.test/server:cpu"


def test_pods_meet_pod_security_restricted() -> None:
    deployment = builders.deployment(OWNER, make_spec(), "stable", CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container(deployment)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not any("hostPath" in v for v in pod["volumes"])


def test_probes_prestop_and_rollout() -> None:
    deployment = builders.deployment(OWNER, make_spec(), "stable", CONFIG)
    main = container(deployment)
    assert main["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert main["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert main["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert main["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_labels_selector_and_owner_reference() -> None:
    deployment = builders.deployment(OWNER, with_canary(), "canary", CONFIG)
    assert deployment["metadata"]["labels"] == {
        "app.kubernetes.io/name": "modeldeploy-server",
        "app.kubernetes.io/instance": "sentiment",
        "app.kubernetes.io/managed-by": "modeldeploy",
        "modeldeploy.dev/name": "sentiment",
        "modeldeploy.dev/track": "canary",
    }
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "modeldeploy-server",
        "app.kubernetes.io/instance": "sentiment",
        "modeldeploy.dev/track": "canary",
    }
    assert deployment["spec"]["template"]["metadata"]["labels"]["modeldeploy.dev/track"] == "canary"
    assert deployment["metadata"]["ownerReferences"] == [{
        "apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "name": "sentiment",
        "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True,
    }]
    # The canary mounts its own claim and model.
    assert env_of(deployment)["MODEL_PATH"] == "/models/sentiment/v2/model.onnx"
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "models-v2"


def test_replicas_only_without_an_autoscaler() -> None:
    fixed = builders.deployment(OWNER, make_spec(replicas={"min": 3}), "stable", CONFIG)
    assert fixed["spec"]["replicas"] == 3
    assert autoscalers.horizontal_pod_autoscaler(OWNER, make_spec(replicas={"min": 3}), "stable", CONFIG) is None
    scaled_spec = make_spec(replicas={"min": 2, "max": 6}, autoscaling={"cpuUtilization": 55})
    scaled = builders.deployment(OWNER, scaled_spec, "stable", CONFIG)
    assert "replicas" not in scaled["spec"]
    hpa = autoscalers.horizontal_pod_autoscaler(OWNER, scaled_spec, "stable", CONFIG)
    assert hpa is not None
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sentiment-stable"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 55}}


def test_canary_replicas_override() -> None:
    spec = make_spec(replicas={"min": 4, "max": 8},
                     canary={"model": {"pvc": "m", "path": "b.onnx"}, "replicas": {"min": 1}})
    assert builders.deployment(OWNER, spec, "canary", CONFIG)["spec"]["replicas"] == 1
    assert autoscalers.horizontal_pod_autoscaler(OWNER, spec, "canary", CONFIG) is None


def test_gpu_limits_toleration_image_and_providers() -> None:
    spec = make_spec(gpu=2, tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml",
                                          "effect": "NoSchedule"}], nodeSelector={"pool": "gpu"})
    deployment = builders.deployment(OWNER, spec, "stable", CONFIG)
    pod = deployment["spec"]["template"]["spec"]
    assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container(deployment)["image"] == "example.test/server:gpu"
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert env_of(deployment)["EXECUTION_PROVIDERS"] == "cuda,cpu"


def test_cpu_only_has_no_gpu_traces() -> None:
    deployment = builders.deployment(OWNER, make_spec(), "stable", CONFIG)
    assert "nvidia.com/gpu" not in str(deployment)
    assert "tolerations" not in deployment["spec"]["template"]["spec"]


def test_service_pdb_and_destination_rule() -> None:
    service = routing.service(OWNER, with_canary(), ISTIO)
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "modeldeploy-server",
                                           "app.kubernetes.io/instance": "sentiment"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP",
                                         "appProtocol": "http"}]
    pdb = builders.pod_disruption_budget(OWNER)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    rule = routing.destination_rule(OWNER, ISTIO, CONFIG)
    assert rule["apiVersion"] == "networking.istio.io/v1"
    assert rule["spec"] == {"host": "sentiment.ml.svc.cluster.local", "subsets": [
        {"name": "stable", "labels": {"modeldeploy.dev/track": "stable"}},
        {"name": "canary", "labels": {"modeldeploy.dev/track": "canary"}},
    ]}


def test_service_without_istio_follows_the_requested_extremes() -> None:
    track = "modeldeploy.dev/track"
    assert routing.service(OWNER, with_canary(0), None)["spec"]["selector"][track] == "stable"
    assert routing.service(OWNER, with_canary(100), None)["spec"]["selector"][track] == "canary"
    assert track not in routing.service(OWNER, with_canary(30), None)["spec"]["selector"]
    assert routing.service(OWNER, make_spec(), None)["spec"]["selector"][track] == "stable"


def route_weights(vs: dict[str, Any]) -> dict[str, int]:
    return {r["destination"]["subset"]: r["weight"] for r in vs["spec"]["http"][0]["route"]}


def test_virtual_service_weights_follow_traffic_percent() -> None:
    split = route_weights(routing.virtual_service(OWNER, with_canary(30), ISTIO, CONFIG))
    assert split == {"stable": 70, "canary": 30}
    assert route_weights(routing.virtual_service(OWNER, make_spec(), ISTIO, CONFIG)) == {"stable": 100}
    through_gateway = {"hosts": ["s.example.com"], "gateways": ["gw/public"]}
    vs = routing.virtual_service(OWNER, with_canary(10, routing=through_gateway), ISTIO, CONFIG)
    assert vs["spec"]["hosts"] == ["sentiment.ml.svc.cluster.local", "s.example.com"]
    assert vs["spec"]["gateways"] == ["gw/public", "mesh"]


def test_desired_children_sets() -> None:
    def kinds(children: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return [(c["kind"], c["metadata"]["name"]) for c in children]

    full = builders.desired_children(OWNER, with_canary(replicas={"min": 1, "max": 3}), CONFIG, Routers(istio="v1"))
    assert kinds(full) == [
        ("Deployment", "sentiment-stable"), ("HorizontalPodAutoscaler", "sentiment-stable"),
        ("Deployment", "sentiment-canary"), ("HorizontalPodAutoscaler", "sentiment-canary"),
        ("Service", "sentiment"), ("PodDisruptionBudget", "sentiment"),
        ("DestinationRule", "sentiment"), ("VirtualService", "sentiment"),
    ]
    bare = builders.desired_children(OWNER, make_spec(), CONFIG, Routers())
    assert kinds(bare) == [("Deployment", "sentiment-stable"), ("Service", "sentiment"),
                           ("PodDisruptionBudget", "sentiment")]
    assert all(c["metadata"]["namespace"] == "ml" for c in full)


def test_router_choice_auto_prefers_istio_and_an_explicit_choice_waits_for_its_crds() -> None:
    def chosen(backend: str | None, installed: Routers) -> Router | None:
        return choose_router(make_spec(routing={"backend": backend} if backend else {}), installed)

    assert chosen(None, BOTH) == ISTIO
    assert chosen("Auto", Routers(gateway_api="v1")) == GATEWAY_API
    assert chosen("Auto", Routers()) is None
    assert chosen("GatewayAPI", BOTH) == GATEWAY_API
    assert chosen("GatewayAPI", Routers(istio="v1")) is None
    assert chosen("Istio", Routers(gateway_api="v1")) is None
    assert chosen("None", BOTH) is None


def test_gateway_api_children_are_per_track_services_and_an_http_route() -> None:
    spec = with_canary(30, routing={"backend": "GatewayAPI", "gateways": ["edge/public", "internal"],
                                    "hosts": ["sentiment.example.com"]})
    children = builders.desired_children(OWNER, spec, CONFIG, BOTH)
    kinds = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert kinds[-3:] == [("Service", "sentiment-stable"), ("Service", "sentiment-canary"), ("HTTPRoute", "sentiment")]
    assert not {"VirtualService", "DestinationRule"} & {kind for kind, _ in kinds}
    canary_service = children[-2]
    assert canary_service["spec"]["selector"] == {"app.kubernetes.io/name": "modeldeploy-server",
                                                  "app.kubernetes.io/instance": "sentiment",
                                                  "modeldeploy.dev/track": "canary"}
    # The main Service follows the weight as without a router: calls to it bypass the gateway.
    main = children[kinds.index(("Service", "sentiment"))]
    assert "modeldeploy.dev/track" not in main["spec"]["selector"]
    route = children[-1]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"] == {
        "parentRefs": [
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "public", "namespace": "edge"},
            {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "internal"},
        ],
        "hostnames": ["sentiment.example.com"],
        "rules": [{"name": "traffic", "backendRefs": [
            {"group": "", "kind": "Service", "name": "sentiment-stable", "port": 80, "weight": 70},
            {"group": "", "kind": "Service", "name": "sentiment-canary", "port": 80, "weight": 30},
        ]}],
    }


def test_http_route_without_gateways_attaches_to_the_service_for_the_mesh() -> None:
    route = routing.http_route(OWNER, make_spec(), GATEWAY_API)
    assert route["spec"]["parentRefs"] == [{"group": "", "kind": "Service", "name": "sentiment", "port": 80}]
    assert route["spec"]["rules"] == [{"name": "traffic", "backendRefs": [
        {"group": "", "kind": "Service", "name": "sentiment-stable", "port": 80, "weight": 100}]}]
    assert "hostnames" not in route["spec"]


AB_CANARY = {"model": {"pvc": "models", "path": "v2.onnx"}, "trafficPercent": 10,
             "headers": [{"name": "x-model-variant", "exact": "v2"}, {"name": "x-cohort", "regex": "beta-.*"}]}
SHADOW_CANARY = {"model": {"pvc": "models", "path": "v2.onnx"}, "mirrorPercent": 50}


def test_header_matches_go_to_the_canary_before_the_weights_in_both_routers() -> None:
    spec = make_spec(canary=AB_CANARY)
    vs_rules = routing.virtual_service(OWNER, spec, ISTIO, CONFIG)["spec"]["http"]
    host = "sentiment.ml.svc.cluster.local"
    assert vs_rules[0] == {
        "name": "canary-headers",
        "match": [{"headers": {"x-model-variant": {"exact": "v2"}}}, {"headers": {"x-cohort": {"regex": "beta-.*"}}}],
        "route": [{"destination": {"host": host, "subset": "canary"}}],
    }
    assert vs_rules[1]["name"] == "traffic"
    assert route_weights({"spec": {"http": vs_rules[1:]}}) == {"stable": 90, "canary": 10}
    route_rules = routing.http_route(OWNER, spec, GATEWAY_API)["spec"]["rules"]
    assert route_rules[0] == {
        "name": "canary-headers",
        "matches": [{"headers": [{"type": "Exact", "name": "x-model-variant", "value": "v2"}]},
                    {"headers": [{"type": "RegularExpression", "name": "x-cohort", "value": "beta-.*"}]}],
        "backendRefs": [{"group": "", "kind": "Service", "name": "sentiment-canary", "port": 80}],
    }
    assert [ref["weight"] for ref in route_rules[1]["backendRefs"]] == [90, 10]


def test_shadow_traffic_mirrors_a_share_of_stable_to_the_canary_in_both_routers() -> None:
    spec = make_spec(canary=SHADOW_CANARY)
    (weighted,) = routing.virtual_service(OWNER, spec, ISTIO, CONFIG)["spec"]["http"]
    assert weighted["mirror"] == {"host": "sentiment.ml.svc.cluster.local", "subset": "canary"}
    assert weighted["mirrorPercentage"] == {"value": 50.0}
    assert route_weights({"spec": {"http": [weighted]}}) == {"stable": 100, "canary": 0}
    (rule,) = routing.http_route(OWNER, spec, GATEWAY_API)["spec"]["rules"]
    assert rule["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"group": "", "kind": "Service", "name": "sentiment-canary", "port": 80}, "percent": 50}}]
    assert "mirror" not in routing.virtual_service(OWNER, with_canary(10), ISTIO, CONFIG)["spec"]["http"][0]


def test_content_hash_tracks_content_and_is_stable() -> None:
    first = builders.deployment(OWNER, make_spec(), "stable", CONFIG)
    again = builders.deployment(OWNER, make_spec(), "stable", CONFIG)
    other = builders.deployment(OWNER, make_spec(model={"pvc": "models", "path": "v2.onnx"}), "stable", CONFIG)
    digest = first["metadata"]["annotations"][names.HASH_ANNOTATION]
    assert digest == again["metadata"]["annotations"][names.HASH_ANNOTATION]
    assert digest != other["metadata"]["annotations"][names.HASH_ANNOTATION]


def test_cpu_cores() -> None:
    assert builders.cpu_cores("500m") == 0.5
    assert builders.cpu_cores("2") == 2.0
    assert builders.cpu_cores(3) == 3.0
    assert builders.cpu_cores("lots") is None
    assert builders.cpu_cores(None) is None
