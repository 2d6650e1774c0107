"""Autoscaling on real pods with real load: metrics-server, Prometheus and KEDA run beside the real node
(hack/localkube/metrics.py); the load is bounded and goes to the cluster's own addresses only.

Each test records a timeline (seconds since the load started: when the autoscaler wanted more, when the
new pods were Ready, when the count came back), printed with `-s` and attached to failures.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import localcluster
from localkube.metrics import MetricsStack
from testsupport.loadgen import Load, Timeline
from testsupport.operator_harness import Harness
from testsupport.realpods import REAL_NODE_SELECTOR, operator_with_claim, write_heavy_model

Cluster = localcluster.Cluster
MODEL = "heavy/model.onnx"
MODEL_V2 = "heavy/v2/model.onnx"
SCALE_TIMEOUT_S = 150.0


@pytest.fixture(scope="session")
def keda(prometheus: MetricsStack) -> MetricsStack:
    """KEDA's operator and metrics adapter."""
    prometheus.start_keda()
    return prometheus


@dataclass
class Scaling:
    harness: Harness
    stack: MetricsStack
    models: Path

    def apply(self, name: str, autoscaling: dict[str, Any], *, replicas: dict[str, int], cpu: str = "100m",
              cpu_limit: str | None = None, canary: dict[str, Any] | None = None,
              rollout: dict[str, Any] | None = None, model: str = MODEL) -> None:
        limits: dict[str, str] = {"memory": "512Mi"}
        if cpu_limit:
            limits["cpu"] = cpu_limit
        spec: dict[str, Any] = {
            "model": {"pvc": "models", "path": model}, "replicas": replicas, "autoscaling": autoscaling,
            "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": limits},
            "batching": {"maxBatchSize": 1}, "nodeSelector": REAL_NODE_SELECTOR,
        }
        if canary:
            spec["canary"] = canary
        if rollout:
            spec["rollout"] = rollout
        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                    "metadata": {"name": name}, "spec": spec}
        self.harness.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def ready(self, name: str, track: str = "stable") -> int:
        deployment = self.harness.get_or_none("deployment", f"{name}-{track}") or {}
        return int((deployment.get("status") or {}).get("readyReplicas") or 0)

    def wanted(self, name: str, track: str = "stable") -> int:
        deployment = self.harness.get_or_none("deployment", f"{name}-{track}") or {}
        return int((deployment.get("spec") or {}).get("replicas") or 0)

    def service_url(self, name: str) -> str:
        service = self.harness.get("service", name)
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    def pod_urls(self, name: str, track: str) -> list[str]:
        pods = self.harness.get("pods", "-l", f"modeldeploy.dev/name={name},modeldeploy.dev/track={track}")
        return [f"http://{p['status']['podIP']}:8080" for p in pods["items"] if p["status"].get("podIP")]


@pytest.fixture
def scaling(real_cluster: Cluster, real_namespace: str, real_crds: None, real_images: dict[str, str],
            metrics_stack: MetricsStack, tmp_path: Path) -> Iterator[Scaling]:
    with operator_with_claim(real_cluster, real_namespace, tmp_path,
                             MODELDEPLOY_SERVER_IMAGE=real_images["server"],
                             MODELDEPLOY_PROMETHEUS_URL=metrics_stack.prometheus_url,
                             MODELDEPLOY_METRICS_WINDOW="20s") as (harness, models):
        write_heavy_model(models, MODEL)
        yield Scaling(harness, metrics_stack, models)


def service_urls(s: Scaling, name: str) -> Callable[[], list[str]]:
    url = s.service_url(name)
    return lambda: [url]


def test_cpu_heavy_model_scales_out_under_load_and_back_in_after(scaling: Scaling) -> None:
    s, h = scaling, scaling.harness
    s.apply("cpu-heavy", {"cpuUtilization": 50, "scaleDown": {"stabilizationWindowSeconds": 15}},
            replicas={"min": 1, "max": 3})
    h.wait_condition("cpu-heavy", "Ready", "True", timeout=180)
    # `kubectl top` works: metrics-server reads the real node's kubelet.
    top = h.eventually(lambda: h.kubectl("top", "pod", "--no-headers", check=False).stdout.strip(), 90,
                       "kubectl top pod")
    assert "cpu-heavy-stable-" in top
    h.wait_condition("cpu-heavy", "AutoscalingReady", "True", "ScalingActive", timeout=90)

    timeline = Timeline()
    load = Load(service_urls(s, "cpu-heavy"), "cpu-heavy", clients=4).start()
    timeline.note("load started (4 clients through the Service)")
    try:
        h.eventually(lambda: s.wanted("cpu-heavy") > 1, SCALE_TIMEOUT_S, "the HPA to add replicas")
        timeline.note(f"HPA wants {s.wanted('cpu-heavy')} replicas")
        h.eventually(lambda: s.ready("cpu-heavy") > 1, SCALE_TIMEOUT_S, "a second pod Ready")
        timeline.note(f"{s.ready('cpu-heavy')} pods Ready")
        status = h.md("cpu-heavy")["status"]["autoscaling"]["stable"]
        assert status["autoscaler"] == "HorizontalPodAutoscaler/cpu-heavy-stable"
        assert status["metrics"][0]["name"] == "cpu" and status["metrics"][0]["target"] == "50%"
        assert status["metrics"][0]["current"].endswith("%"), status  # a value read, not <unknown>
        timeline.note(f"CPU the HPA reads now: {status['metrics'][0]['current']} of the request")
    finally:
        load.stop()
    timeline.note(f"load stopped: {load.statuses}")
    h.eventually(lambda: s.wanted("cpu-heavy") == 1 and s.ready("cpu-heavy") == 1, SCALE_TIMEOUT_S,
                 f"back at the minimum\n{timeline}")
    timeline.note("back at 1 replica")
    assert set(load.statuses) == {200}, load.statuses
    print(timeline)


def answers(stack: MetricsStack, promql: str) -> list[float]:
    return [float(sample["value"][1]) for sample in stack.query(promql)]  # type: ignore[index]


def positive(stack: MetricsStack, promql: str) -> bool:
    return query_value(stack, promql) > 0


def query_value(stack: MetricsStack, promql: str) -> float:
    [sample] = stack.query(promql)
    value = sample["value"]
    assert isinstance(value, list)
    return float(value[1])


def test_the_scaled_objects_queries_read_the_pods_signals(scaling: Scaling, prometheus: MetricsStack) -> None:
    """The PromQL the operator writes into each trigger, run against Prometheus scraping the real pods:
    in-flight requests, p95 queue wait and request rate rise under load; idle, each reads 0 (not empty)."""
    s, h = scaling, scaling.harness
    s.apply("signals", {"concurrency": 2, "queueTimeP95Ms": 20, "requestsPerSecond": 5}, replicas={"min": 1, "max": 2},
            cpu="100m", cpu_limit="100m")
    h.wait_condition("signals", "Ready", "True", timeout=180)
    scaled = h.eventually(lambda: h.get_or_none("scaledobject", "signals-stable"), 60, "the ScaledObject")
    queries = {t["name"]: t["metadata"]["query"] for t in scaled["spec"]["triggers"]}
    assert set(queries) == {"concurrency", "queuetimep95ms", "requestspersecond"}
    for name, query in queries.items():  # idle: 0, not an empty answer
        assert h.eventually(functools.partial(answers, s.stack, query), 60, f"{name} answered") == [0.0], name
    load = Load(service_urls(s, "signals"), "signals", clients=6).start()
    try:
        for name, query in queries.items():
            h.eventually(functools.partial(positive, s.stack, query), 90, f"{name} above 0 under load")
        assert query_value(s.stack, queries["concurrency"]) >= 2
    finally:
        load.stop()
    h.eventually(lambda: query_value(s.stack, queries["concurrency"]) == 0, 60, "no requests in flight after")


def test_slow_model_scales_on_concurrency_where_cpu_alone_would_not(scaling: Scaling, keda: MetricsStack) -> None:
    """Same load on two copies of a CPU-limited model: the CPU HPA sees at most its limit (never above
    target), while in-flight requests pile up and the concurrency autoscaler adds pods."""
    s, h = scaling, scaling.harness
    common = {"replicas": {"min": 1, "max": 3}, "cpu": "100m", "cpu_limit": "100m"}
    s.apply("slow-cpu", {"cpuUtilization": 100}, **common)  # type: ignore[arg-type]
    s.apply("slow-inflight", {"concurrency": 2, "scaleDown": {"stabilizationWindowSeconds": 10}},
            **common)  # type: ignore[arg-type]
    for name in ("slow-cpu", "slow-inflight"):
        h.wait_condition(name, "Ready", "True", timeout=180)
        h.wait_condition(name, "AutoscalingReady", "True", "ScalingActive", timeout=120)
    assert h.get("scaledobject", "slow-inflight-stable")["spec"]["triggers"][0]["type"] == "prometheus"

    timeline = Timeline()
    loads = [Load(service_urls(s, name), name, clients=6).start() for name in ("slow-cpu", "slow-inflight")]
    timeline.note("load started: 6 clients on each")
    cpu_seen: list[str] = []
    try:
        def inflight_scaled() -> bool:
            cpu_status = h.md("slow-cpu")["status"].get("autoscaling", {}).get("stable", {})
            cpu_seen.extend(m.get("current", "") for m in cpu_status.get("metrics", []) if m.get("current"))
            assert s.wanted("slow-cpu") == 1, f"the CPU autoscaler scaled: {cpu_status}"
            return s.ready("slow-inflight") > 1
        h.eventually(inflight_scaled, SCALE_TIMEOUT_S, "concurrency to add pods")
        timeline.note(f"slow-inflight: {s.ready('slow-inflight')} pods Ready; slow-cpu: {s.wanted('slow-cpu')}")
        metrics = h.md("slow-inflight")["status"]["autoscaling"]["stable"]["metrics"]
        assert metrics[0]["name"] == "concurrency" and metrics[0]["target"] == "2", metrics
        # Keep the same load a while longer: the CPU autoscaler still has not moved.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            inflight_scaled()
            time.sleep(2)
    finally:
        for load in loads:
            load.stop()
    timeline.note("load stopped")
    assert cpu_seen, "the CPU autoscaler never read a value: the comparison would mean nothing"
    assert s.wanted("slow-cpu") == 1
    print(timeline, f"CPU values the CPU-only autoscaler saw: {sorted(set(cpu_seen))}", sep="\n")


def scales_alone(s: Scaling, name: str, loaded: str, idle: str) -> None:
    """Load straight at one track's pods: it scales out on its own in-flight requests, the other stays at 1."""
    pods = s.pod_urls(name, loaded)
    load = Load(lambda: pods, name, clients=6).start()
    try:
        def loaded_only() -> bool:
            assert s.wanted(name, idle) == 1, f"{idle} scaled on the {loaded} track's load"
            return s.ready(name, loaded) > 1
        s.harness.eventually(loaded_only, SCALE_TIMEOUT_S, f"{loaded} to scale out alone")
    finally:
        load.stop()


def test_canary_and_stable_scale_independently(scaling: Scaling, keda: MetricsStack) -> None:
    s, h = scaling, scaling.harness
    canary = {"model": {"pvc": "models", "path": MODEL}, "trafficPercent": 0, "replicas": {"min": 1, "max": 2}}
    s.apply("tracks", {"concurrency": 2}, replicas={"min": 1, "max": 3}, canary=canary)
    h.wait_condition("tracks", "Ready", "True", timeout=180)
    h.wait_condition("tracks", "AutoscalingReady", "True", "ScalingActive", timeout=120)
    scales_alone(s, "tracks", loaded="stable", idle="canary")
    status = h.md("tracks")["status"]["autoscaling"]
    assert status["canary"]["autoscaler"] == "ScaledObject/tracks-canary"
    assert status["canary"]["desiredReplicas"] == 1


def held_without_metrics(s: Scaling, name: str, down: str, reason: str) -> list[int]:
    """With the track's metrics unreadable: the condition turns False with the reason of whoever noticed,
    and the count stays for longer than the scale-down window (with metrics it would have gone in)."""
    held = s.wanted(name)
    s.harness.wait_condition(name, "AutoscalingReady", "False", reason, timeout=120)
    counts = []
    end = time.monotonic() + 45
    while time.monotonic() < end:
        counts.append(s.wanted(name))
        time.sleep(3)
    assert set(counts) == {held}, f"{down}: replicas moved without metrics: {counts}"
    return counts


@pytest.mark.timeout(900)  # two holds of 45 s, two restarts and a scale-in on a busy node
def test_metrics_missing_keep_the_replicas_and_say_so(scaling: Scaling, keda: MetricsStack) -> None:
    """The track runs above its minimum when its metrics go away: first KEDA (operator and metrics
    adapter stopped: the external metrics API is gone), then Prometheus (KEDA back, nothing to query).
    Each time the condition says so and the count stays (no flapping); with both back it scales in."""
    s, h = scaling, scaling.harness
    s.apply("blind", {"concurrency": 2, "scaleDown": {"stabilizationWindowSeconds": 10}},
            replicas={"min": 1, "max": 3})
    h.wait_condition("blind", "Ready", "True", timeout=180)
    h.wait_condition("blind", "AutoscalingReady", "True", "ScalingActive", timeout=120)
    timeline = Timeline()
    load = Load(service_urls(s, "blind"), "blind", clients=6).start()
    try:
        h.eventually(lambda: s.ready("blind") > 1, SCALE_TIMEOUT_S, "scaling out")
        timeline.note(f"{s.ready('blind')} pods Ready")
    finally:
        load.stop()
        s.stack.stop("keda-operator", "keda-adapter")  # within the 10 s window: nothing scaled in yet
    timeline.note(f"load stopped, KEDA stopped at {s.wanted('blind')} replicas")
    try:
        # The HPA cannot reach the external metrics API (KEDA's last word on the ScaledObject was Ready).
        counts = held_without_metrics(s, "blind", "KEDA absent", "FailedGetExternalMetric")
        timeline.note(f"KEDA absent: held at {counts[0]} replicas, {len(counts)} reads")
        s.stack.stop("prometheus")
        s.stack.start_keda()
        timeline.note("Prometheus stopped, KEDA back")
        # KEDA answers again, but its query fails: it marks the ScaledObject's trigger as failing.
        counts = held_without_metrics(s, "blind", "Prometheus down", "TriggerError")
        timeline.note(f"Prometheus down: held at {counts[0]} replicas, {len(counts)} reads")
    finally:
        if "keda-operator" not in s.stack.processes:
            s.stack.start_keda()
        if "prometheus" not in s.stack.processes:
            s.stack.start_prometheus()
    h.wait_condition("blind", "AutoscalingReady", "True", timeout=120)
    h.eventually(lambda: s.wanted("blind") == 1, SCALE_TIMEOUT_S, f"scaling in once the metrics are back\n{timeline}")
    timeline.note("back at 1 replica")
    print(timeline)


def test_during_a_rollout_the_canary_scales_on_its_own_load(scaling: Scaling, keda: MetricsStack) -> None:
    """A changed spec.model under spec.rollout becomes a canary: it gets its own ScaledObject with the
    track's minimum, and its own pods' in-flight requests scale it while stable stays where it is."""
    s, h = scaling, scaling.harness
    rollout = {"steps": [{"weight": 50, "pause": "1h"}], "paused": True}
    autoscaling = {"concurrency": 2}
    s.apply("rolling", autoscaling, replicas={"min": 1, "max": 3}, rollout=rollout)
    h.wait_condition("rolling", "Ready", "True", timeout=180)
    write_heavy_model(s.models, MODEL_V2)
    s.apply("rolling", autoscaling, replicas={"min": 1, "max": 3}, rollout=rollout, model=MODEL_V2)
    h.eventually(lambda: h.md("rolling")["status"].get("rollout", {}).get("phase") == "Paused", 60,
                 "the rollout held at its first step")
    h.eventually(lambda: s.ready("rolling", "canary") >= 1, 180, "the canary's pod Ready")
    h.wait_condition("rolling", "AutoscalingReady", "True", "ScalingActive", timeout=120)
    status = h.md("rolling")["status"]["autoscaling"]
    assert status["canary"]["autoscaler"] == "ScaledObject/rolling-canary", status
    assert status["canary"]["minReplicas"] == 1, status
    scales_alone(s, "rolling", loaded="canary", idle="stable")
    assert h.md("rolling")["status"]["rollout"]["phase"] == "Paused"
