"""Autoscaling: which autoscaler a track gets (HPA, KEDA ScaledObject, CPU fallback), its behaviour, its
queries, and the status that shows it — pure functions, plain dict asserts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from modeldeploy_operator import autoscalers, builders, routers, views
from modeldeploy_operator import rollout as rollouts
from modeldeploy_operator import spec as specs
from modeldeploy_operator import status as statuses
from modeldeploy_operator.config import ServingConfig
from modeldeploy_operator.kinds import HPA, MODEL_DEPLOYMENTS
from modeldeploy_operator.manifests import Owner
from modeldeploy_operator.rollout_status import effective_spec
from modeldeploy_operator.status_schema import RolloutStatus

OWNER = Owner(name="sentiment", namespace="ml", uid="1234-uid")
CONFIG = ServingConfig(prometheus_url="http://prometheus.monitoring:9090", metrics_window="30s")
NOW = "2026-01-01T00:00:00Z"


def make_spec(**extra: Any) -> specs.ModelDeploymentSpec:
    base: dict[str, Any] = {"model": {"pvc": "models", "path": "a.onnx"}, "replicas": {"min": 1, "max": 5}}
    return specs.parse_spec({**base, **extra})


def kinds(children: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["kind"], c["metadata"]["name"]) for c in children]


def test_default_behaviour_is_spelled_out_on_the_hpa() -> None:
    hpa = autoscalers.horizontal_pod_autoscaler(OWNER, make_spec(), "stable", CONFIG)
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert hpa["spec"]["behavior"] == {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Min", "policies": [
            {"type": "Percent", "value": 50, "periodSeconds": 60}]},
    }


def test_user_behaviour_replaces_the_default_limits() -> None:
    spec = make_spec(autoscaling={"scaleDown": {"stabilizationWindowSeconds": 20, "maxPods": 1},
                                  "scaleUp": {"maxPercent": 200, "periodSeconds": 5}})
    assert autoscalers.scaling_behavior(spec) == {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
            {"type": "Percent", "value": 200, "periodSeconds": 5}]},
        "scaleDown": {"stabilizationWindowSeconds": 20, "selectPolicy": "Min", "policies": [
            {"type": "Pods", "value": 1, "periodSeconds": 60}]},
    }


def test_custom_signals_with_keda_make_a_scaled_object_and_no_hpa() -> None:
    spec = make_spec(autoscaling={"concurrency": 4, "queueTimeP95Ms": 50, "requestsPerSecond": 20,
                                  "cpuUtilization": 80})
    children = builders.desired_children(OWNER, spec, CONFIG, routers.Routers(), keda=True)
    assert kinds(children) == [("Deployment", "sentiment-stable"), ("ScaledObject", "sentiment-stable"),
                               ("Service", "sentiment"), ("PodDisruptionBudget", "sentiment")]
    deployment, scaled = children[0], children[1]
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    body = scaled["spec"]
    assert body["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sentiment-stable"}
    assert (body["minReplicaCount"], body["maxReplicaCount"]) == (1, 5)
    assert body["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == autoscalers.scaling_behavior(spec)
    assert "fallback" not in body  # metrics missing: the HPA keeps the count, KEDA must not impose one
    selector = 'namespace="ml",modeldeployment="sentiment",track="stable"'
    assert body["triggers"] == [
        {"type": "prometheus", "name": "concurrency", "metricType": "AverageValue", "metadata": {
            "serverAddress": "http://prometheus.monitoring:9090",
            "query": f"(sum(modeldeploy_requests_in_flight{{{selector}}})) or vector(0)",
            "threshold": "4", "ignoreNullValues": "false"}},
        {"type": "prometheus", "name": "queuetimep95ms", "metricType": "Value", "metadata": {
            "serverAddress": "http://prometheus.monitoring:9090",
            "query": "(1000 * histogram_quantile(0.95, sum by (le) "
                     f"(rate(modeldeploy_queue_wait_seconds_bucket{{{selector}}}[30s]))) > 0) or vector(0)",
            "threshold": "50", "ignoreNullValues": "false"}},
        {"type": "prometheus", "name": "requestspersecond", "metricType": "AverageValue", "metadata": {
            "serverAddress": "http://prometheus.monitoring:9090",
            "query": f"(sum(rate(modeldeploy_requests_total{{{selector}}}[30s]))) or vector(0)",
            "threshold": "20", "ignoreNullValues": "false"}},
        {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}},
    ]


def test_queries_never_count_a_raw_counter() -> None:
    spec = make_spec(autoscaling={"requestsPerSecond": 5})
    scaled = autoscalers.scaled_object(OWNER, spec, "stable", CONFIG, keda=True)
    assert scaled is not None
    [trigger] = scaled["spec"]["triggers"]
    assert "rate(modeldeploy_requests_total" in trigger["metadata"]["query"]


@pytest.mark.parametrize(("keda", "config", "reason"), [
    (False, CONFIG, "KEDANotInstalled"),
    (True, CONFIG.model_copy(update={"prometheus_url": None}), "PrometheusNotConfigured"),
])
def test_without_keda_or_prometheus_the_track_falls_back_to_cpu(keda: bool, config: ServingConfig,
                                                                 reason: str) -> None:
    spec = make_spec(autoscaling={"concurrency": 4})
    children = builders.desired_children(OWNER, spec, config, routers.Routers(), keda=keda)
    assert [kind for kind, _ in kinds(children)] == ["Deployment", "HorizontalPodAutoscaler", "Service",
                                                      "PodDisruptionBudget"]
    assert children[1]["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    assert autoscalers.autoscaler_fallback(spec, config, keda) == reason


def test_canary_gets_its_own_scaled_object_with_its_own_bounds_and_series() -> None:
    spec = make_spec(autoscaling={"concurrency": 2},
                     canary={"model": {"pvc": "models", "path": "b.onnx"}, "replicas": {"min": 1, "max": 3}})
    children = builders.desired_children(OWNER, spec, CONFIG, routers.Routers(), keda=True)
    canary = next(c for c in children if c["kind"] == "ScaledObject" and c["metadata"]["name"] == "sentiment-canary")
    assert canary["spec"]["maxReplicaCount"] == 3
    assert 'track="canary"' in canary["spec"]["triggers"][0]["metadata"]["query"]


@pytest.mark.parametrize("step", [{"weight": 10}, {"mirror": 50}])
@pytest.mark.parametrize("keda", [True, False])
def test_during_a_rollout_the_canary_keeps_its_minimum_and_scales_on_its_own_pods(step: dict[str, int],
                                                                                   keda: bool) -> None:
    """The canary a rollout makes from a changed spec.model: its own autoscaler (KEDA's or the CPU HPA),
    with spec.replicas' bounds whatever its share of requests, reading only its own pods' series."""
    spec = make_spec(model={"pvc": "models", "path": "b.onnx"}, replicas={"min": 2, "max": 6},
                     autoscaling={"concurrency": 3}, rollout={"steps": [step, {"weight": 50}]})
    healthy = RolloutStatus(stable={"pvc": "models", "path": "a.onnx"})
    decision = rollouts.decide(healthy, spec, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert decision.state.phase == "Progressing"
    served = effective_spec(spec, decision.serving)
    children = builders.desired_children(OWNER, served, CONFIG, routers.Routers(), keda=keda)
    autoscalers = {c["metadata"]["name"]: c for c in children
                   if c["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")}
    assert sorted(autoscalers) == ["sentiment-canary", "sentiment-stable"]
    canary = autoscalers["sentiment-canary"]["spec"]
    assert canary["scaleTargetRef"]["name"] == "sentiment-canary"
    if keda:
        assert (canary["minReplicaCount"], canary["maxReplicaCount"]) == (2, 6)
        assert canary["triggers"][0]["metadata"]["query"] == (
            '(sum(modeldeploy_requests_in_flight{namespace="ml",modeldeployment="sentiment",track="canary"}))'
            " or vector(0)")
    else:  # KEDA missing: a CPU HPA per track, averaged over that Deployment's own pods
        assert (canary["minReplicas"], canary["maxReplicas"]) == (2, 6)
        assert canary["metrics"][0]["resource"]["name"] == "cpu"
    deployment = next(c for c in children if c["metadata"]["name"] == "sentiment-canary" and c["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler alone sets the count, never a weight


def test_fixed_replicas_get_no_autoscaler_even_with_signals() -> None:
    spec = make_spec(replicas={"min": 2, "max": 2}, autoscaling={"concurrency": 2})
    assert kinds(builders.desired_children(OWNER, spec, CONFIG, routers.Routers(), keda=True)) == [
        ("Deployment", "sentiment-stable"), ("Service", "sentiment"), ("PodDisruptionBudget", "sentiment")]


@pytest.mark.parametrize(("autoscaling", "field"), [
    ({"concurrency": 0}, "autoscaling.concurrency"),
    ({"queueTimeP95Ms": -5}, "autoscaling.queueTimeP95Ms"),
    ({"requestsPerSecond": 0}, "autoscaling.requestsPerSecond"),
    ({"scaleDown": {"stabilizationWindowSeconds": 7200}}, "autoscaling.scaleDown.stabilizationWindowSeconds"),
    ({"scaleUp": {"maxPods": 0}}, "autoscaling.scaleUp.maxPods"),
    ({"scaleUp": {"periodSeconds": 0}}, "autoscaling.scaleUp.periodSeconds"),
    ({"concurency": 3}, "autoscaling.concurency"),
])
def test_bad_values_name_the_field(autoscaling: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        make_spec(autoscaling=autoscaling)
    assert field in specs.format_validation_error(error.value)


# Status --------------------------------------------------------------------------------------------------

def hpa_body(name: str, track: str, metrics: list[dict[str, Any]], current: list[dict[str, Any]],
             conditions: list[dict[str, str]], replicas: tuple[int, int] = (2, 3)) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"modeldeploy.dev/track": track}},
        "spec": {"metrics": metrics},
        "status": {"currentReplicas": replicas[0], "desiredReplicas": replicas[1], "currentMetrics": current,
                   "conditions": conditions},
    }


ACTIVE = [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "ok"},
          {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"},
          {"type": "ScalingLimited", "status": "False", "reason": "DesiredWithinRange", "message": "ok"}]
KEDA_METRIC = {"type": "External", "external": {
    "metric": {"name": "s0-prometheus"}, "target": {"type": "AverageValue", "averageValue": "4"}}}
KEDA_CURRENT = {"type": "External", "external": {"metric": {"name": "s0-prometheus"},
                                                 "current": {"averageValue": "5500m"}}}


def observe(spec: specs.ModelDeploymentSpec, keda: bool, hpas: list[dict[str, Any]],
            scaled: list[dict[str, Any]] = ()) -> statuses.Observation:  # type: ignore[assignment]
    hpa_views = [views.summarize_hpa(body) for body in hpas]
    scaled_views = [views.summarize_scaled_object(body) for body in scaled]
    deployment = views.DeploymentView("sentiment-stable", 1, 1, 3, 3, 3)
    return statuses.Observation(
        owner=OWNER, generation=1, spec=spec, claims={"models": "Bound"}, deployments={"stable": deployment},
        keda=keda, hpas={v.name: v for v in hpa_views}, scaled_objects={v.name: v for v in scaled_views},
    )


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in status["conditions"]}


def test_status_shows_keda_replicas_and_the_signal_by_its_spec_name() -> None:
    spec = make_spec(autoscaling={"concurrency": 4})
    hpa = hpa_body("keda-hpa-sentiment-stable", "stable", [KEDA_METRIC], [KEDA_CURRENT], ACTIVE)
    ready = {"type": "Ready", "status": "True", "reason": "ScaledObjectReady", "message": "ok"}
    scaled = {"metadata": {"name": "sentiment-stable", "labels": {"modeldeploy.dev/track": "stable"}},
              "status": {"conditions": [ready]}}
    status = statuses.compute_status(observe(spec, True, [hpa], [scaled]), None, NOW, CONFIG)
    assert status["autoscaling"] == {"stable": {
        "autoscaler": "ScaledObject/sentiment-stable", "minReplicas": 1, "maxReplicas": 5,
        "currentReplicas": 2, "desiredReplicas": 3,
        "metrics": [{"name": "concurrency", "current": "5.5", "target": "4"}]}}
    found = conditions(status)
    assert found["AutoscalingReady"] == ("True", "ScalingActive", "stable scaled by KEDA on concurrency")


def test_status_says_when_keda_is_missing_and_shows_the_cpu_fallback() -> None:
    spec = make_spec(autoscaling={"concurrency": 4, "queueTimeP95Ms": 40})
    cpu = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                     "averageUtilization": 70}}}
    current = {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 12}}}
    hpa = hpa_body("sentiment-stable", "stable", [cpu], [current], ACTIVE, replicas=(1, 1))
    status = statuses.compute_status(observe(spec, False, [hpa]), None, NOW, CONFIG)
    assert conditions(status)["AutoscalingReady"] == (
        "False", "KEDANotInstalled",
        "spec.autoscaling asks for concurrency, queueTimeP95Ms but KEDA is not installed (no scaledobjects.keda.sh "
        "CRD): scaling on CPU at 70% instead")
    assert status["autoscaling"]["stable"]["autoscaler"] == "HorizontalPodAutoscaler/sentiment-stable"
    assert status["autoscaling"]["stable"]["metrics"] == [{"name": "cpu", "current": "12%", "target": "70%"}]
    assert status["conditions"][0]["status"] == "True"  # the pods serve: Ready is not held back


def test_the_maximum_is_the_reason_while_metrics_are_read() -> None:
    spec = make_spec(autoscaling={"concurrency": 4})
    limited = [*ACTIVE[:2], {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas",
                             "message": "the desired replica count is more than the maximum replica count"}]
    hpa = hpa_body("keda-hpa-sentiment-stable", "stable", [KEDA_METRIC], [KEDA_CURRENT], limited, replicas=(5, 5))
    found = conditions(statuses.compute_status(observe(spec, True, [hpa]), None, NOW, CONFIG))
    assert found["AutoscalingReady"] == (
        "True", "ScalingLimited",
        "stable: at its maximum of 5 replicas (the desired replica count is more than the maximum replica count)")


def test_unreadable_metrics_become_the_condition() -> None:
    spec = make_spec(autoscaling={"concurrency": 4})
    failing = [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetExternalMetric",
         "message": "the HPA was unable to compute the replica count: unable to get external metric"},
        {"type": "ScalingLimited", "status": "True", "reason": "TooManyReplicas",
         "message": "the desired replica count is more than the maximum replica count"},
    ]
    hpa = hpa_body("keda-hpa-sentiment-stable", "stable", [KEDA_METRIC], [], failing, replicas=(5, 5))
    found = conditions(statuses.compute_status(observe(spec, True, [hpa]), None, NOW, CONFIG))
    assert found["AutoscalingReady"] == (
        "False", "FailedGetExternalMetric",
        "stable: the HPA was unable to compute the replica count: unable to get external metric")


def test_an_hpa_that_has_not_reported_is_pending_and_fixed_replicas_need_none() -> None:
    spec = make_spec(autoscaling={"concurrency": 4})
    found = conditions(statuses.compute_status(observe(spec, True, []), None, NOW, CONFIG))
    pending = "stable: HorizontalPodAutoscaler keda-hpa-sentiment-stable has not reported yet"
    assert found["AutoscalingReady"] == ("Unknown", "AutoscalerPending", pending)
    fixed = statuses.compute_status(observe(make_spec(replicas={"min": 2}), True, []), None, NOW, CONFIG)
    assert conditions(fixed)["AutoscalingReady"][:2] == ("True", "FixedReplicas")
    assert "autoscaling" not in fixed


def test_keda_made_hpa_is_observed_but_never_pruned() -> None:
    from modeldeploy_operator.cache import Key, WatchCache

    cache = WatchCache()
    key = Key("ModelDeployment", "ml", "sentiment")
    body = hpa_body("keda-hpa-sentiment-stable", "stable", [KEDA_METRIC], [KEDA_CURRENT], ACTIVE)
    body["metadata"].update(namespace="ml", uid="u1", labels={
        "modeldeploy.dev/name": "sentiment", "modeldeploy.dev/track": "stable"},
        ownerReferences=[{"kind": "ScaledObject", "name": "sentiment-stable", "controller": True}])
    assert cache.observe("HorizontalPodAutoscaler", body) == [key]
    cache.observe_resource(MODEL_DEPLOYMENTS, {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "md",
                                                            "generation": 1},
                                               "spec": {"model": {"pvc": "models", "path": "a.onnx"}}})
    snapshot = cache.snapshot(key)
    assert snapshot is not None
    assert snapshot.children == {}
    assert list(snapshot.views_of(HPA, views.HpaView)) == ["keda-hpa-sentiment-stable"]
