"""The chart's monitor objects, read by the real prometheus-operator, scrape every track.

prometheus-operator (built from its Go module, hack/prometheus_operator.py) turns the chart's PodMonitor
into the scrape config of a Prometheus it runs as a StatefulSet on the real node. A ModelDeployment with
`spec.rollout.prometheus` pointing there rolls out behind Envoy Gateway under real traffic; its first step
mirrors 50% of the requests to a canary that gets no weight, so the ModelDeployment's Service selects only
the stable pods. The canary's series must still reach Prometheus through the chart's PodMonitor (a
ServiceMonitor on that Service never saw them, and the rollout held as "too few requests" until its
deadline), the mirror step must pass on those numbers, and the rollout must be promoted.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import yaml

import envoy_gateway
import localcluster
from localkube import images
from prometheus_operator import PrometheusOperator
from testsupport.gateway import Traffic, failures
from testsupport.onnx_models import build_mlp, shifted
from testsupport.operator_harness import Harness
from testsupport.realpods import NAME, model_deployment, operator_with_claim

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"
V1, V2 = "sentiment/v1/model.onnx", "sentiment/v2/model.onnx"
RELEASE = "md"
MONITOR = f"{RELEASE}-modeldeploy-servers"
STEPS = [{"mirror": 50, "pause": "20s"}, {"weight": 50, "pause": "20s"}]
MIN_REQUESTS = 20


@pytest.fixture(scope="module")
def prometheus_operator(real_cluster: localcluster.Cluster) -> Iterator[PrometheusOperator]:
    """prometheus-operator and the Prometheus it runs, once for this module."""
    running = PrometheusOperator(real_cluster, real_cluster.workdir / "prometheus-operator")
    try:
        yield running.start(images.ensure_docker())
    finally:
        running.stop()


def chart_monitors(cluster: localcluster.Cluster, namespace: str) -> list[dict[str, Any]]:
    """The chart's monitor objects as `helm template` renders them (scraping every 5 s for the test)."""
    rendered = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", RELEASE, str(CHART), "--namespace", namespace,
         "--show-only", "templates/monitors.yaml", "--set", "serviceMonitor.enabled=true",
         "--set", "serviceMonitor.interval=5s"], capture_output=True, text=True, timeout=120, check=True).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def answers(folder: Path, inputs: np.ndarray) -> dict[str, list[list[float]]]:
    out = {}
    for name, path in (("v1", V1), ("v2", V2)):
        session = onnxruntime.InferenceSession(str(folder / path), providers=["CPUExecutionProvider"])
        out[name] = [session.run(None, {"input": row.reshape(1, 64)})[0].ravel().tolist() for row in inputs]
    return out


def serving_targets(prometheus: PrometheusOperator, namespace: str) -> list[dict[str, Any]]:
    """Prometheus' active targets that are serving pods of NAMESPACE, whoever scrapes them."""
    targets = prometheus.query("/api/v1/targets?state=active")["activeTargets"]
    return [t for t in targets if t["labels"].get("namespace") == namespace and t["labels"].get("track")]


def canary_series(prometheus: PrometheusOperator, namespace: str) -> list[dict[str, Any]]:
    query = f'modeldeploy_requests_total{{namespace="{namespace}",modeldeployment="{NAME}",track="canary"}}'
    found: list[dict[str, Any]] = prometheus.query("/api/v1/query?" + urllib.parse.urlencode({"query": query}))[
        "result"]
    return found


def rollout_of(h: Harness) -> dict[str, Any]:
    return (h.md().get("status") or {}).get("rollout") or {}


def test_a_mirror_step_judged_from_prometheus_through_the_charts_pod_monitor_is_promoted(
        real_cluster: localcluster.Cluster, real_crds: None, real_images: dict[str, str], gateway: str,
        prometheus_operator: PrometheusOperator, tmp_path: Path) -> None:
    namespace = f"monitors-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", namespace)
    real_cluster.apply_objects(*[{**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
                                 for doc in chart_monitors(real_cluster, namespace)])
    try:
        with operator_with_claim(real_cluster, namespace, tmp_path,
                                 MODELDEPLOY_SERVER_IMAGE=real_images["server"]) as (h, folder):
            roll_out_and_watch(h, folder, gateway, prometheus_operator)
    finally:
        real_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def roll_out_and_watch(h: Harness, folder: Path, gateway: str, prometheus: PrometheusOperator) -> None:
    base = build_mlp(folder / V1, seed=0)
    shifted(base, folder / V2, 0.001)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    manifest = model_deployment(V1)
    manifest["spec"]["routing"] = {"backend": "GatewayAPI", "gateways": [gateway]}
    manifest["spec"]["rollout"] = {"steps": STEPS, "analysisInterval": "20s", "failureLimit": 3,
                                   "progressDeadline": "10m", "gates": {"minRequests": MIN_REQUESTS},
                                   "prometheus": {"url": prometheus.url}}
    h.apply_manifest(manifest)
    h.wait_condition(NAME, "Ready", "True", timeout=240)
    gateway_namespace, gateway_name = gateway.split("/")
    address = h.eventually(lambda: envoy_gateway.gateway_address(h.cluster, gateway_namespace, gateway_name), 120,
                           "the gateway's Envoy Service")
    inputs = np.random.default_rng(5).standard_normal((128, 64)).astype(np.float32)
    traffic = Traffic(address, inputs.tolist(), answers(folder, inputs)).start()
    seen: dict[str, Any] = {"verdicts": [], "steps": [], "scraped_behind_no_service": None}
    try:
        h.eventually(lambda: traffic.settled_on("v1", 50), 120, "answers from v1 through the gateway")
        h.kubectl("patch", "md", NAME, "--type", "merge", "-p", json.dumps({"spec": {"model": {"path": V2}}}))
        deadline = time.monotonic() + 400
        while not watch(h, prometheus, seen):
            assert time.monotonic() < deadline, f"not promoted: {json.dumps(rollout_of(h), indent=1)}\n{h.logs()}"
            time.sleep(1)
    finally:
        counts = traffic.stop()
    verdicts = seen["verdicts"]
    print(f"steps {seen['steps']}; verdicts {[(v['result'], v.get('source'), v['message'][:90]) for v in verdicts]}")
    assert seen["steps"] == [0, 1], seen["steps"]
    assert verdicts and {v.get("source") for v in verdicts} == {"prometheus"}, verdicts
    # The mirror step passed on the canary's numbers: a passing verdict before step 2 began.
    first_pass = next(v for v in verdicts if v["result"] == "Pass")
    assert first_pass["at"] <= seen["step_2_started"], (first_pass, seen)
    assert float(first_pass["measured"]["canaryRequests"]) >= MIN_REQUESTS, first_pass
    # While the canary only got mirrored copies, the Service selected stable alone, and Prometheus had
    # the canary's series from the chart's PodMonitor (its job is the monitor's namespace/name).
    behind = seen["scraped_behind_no_service"]
    assert behind, "the canary's series never reached Prometheus during the mirror step"
    assert behind["selector"]["modeldeploy.dev/track"] == "stable", behind
    assert {s["metric"]["job"] for s in behind["series"]} == {f"{h.namespace}/{MONITOR}"}, behind
    # Every serving pod was one target of the PodMonitor's scrape pool, and of no other.
    for pod, pools in seen["pools_per_pod"].items():
        assert pools == [f"podMonitor/{h.namespace}/{MONITOR}/0"], (pod, pools)
    assert len(seen["pools_per_pod"]) >= 2  # the stable pod and the canary pod
    assert failures(counts) == 0 and counts["unknown-answer"] == 0, counts


def watch(h: Harness, prometheus: PrometheusOperator, seen: dict[str, Any]) -> bool:
    """One look at the rollout and at Prometheus; True once v2 is promoted."""
    rollout = rollout_of(h)
    verdict = rollout.get("lastVerdict")
    if verdict and verdict not in seen["verdicts"]:
        seen["verdicts"].append(verdict)
    if rollout.get("phase") == "Progressing" and "step" in rollout:
        if not seen["steps"] or seen["steps"][-1] != rollout["step"]:
            seen["steps"].append(rollout["step"])
            if rollout["step"] == 1:
                seen["step_2_started"] = rollout["stepStartedAt"]
        if rollout["step"] == 0 and not seen["scraped_behind_no_service"]:
            series = canary_series(prometheus, h.namespace)
            if series:
                selector = h.get("service", NAME)["spec"]["selector"]
                seen["scraped_behind_no_service"] = {"selector": selector, "series": series}
    pools: dict[str, list[str]] = {}
    for target in serving_targets(prometheus, h.namespace):
        pools.setdefault(target["labels"]["pod"], []).append(target["scrapePool"])
    for pod, found in pools.items():
        seen.setdefault("pools_per_pod", {})[pod] = sorted(found)
    return bool(rollout.get("phase") == "Healthy" and rollout.get("stable", {}).get("path") == V2)
