"""Autoscaling on the real control plane: the custom signals fall back to a CPU HPA (and say so) while
KEDA is absent; KEDA's CRDs appearing switch the track to a ScaledObject without a restart; a spec
change back to CPU prunes the ScaledObject. KEDA itself runs in the real-node tests."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

import localcluster
from testsupport.operator_harness import Harness, install_keda_crds, manifest, uninstall_keda_crds

# Nothing listens there: without a running KEDA nobody queries it.
PROMETHEUS_URL = "http://127.0.0.1:9"


@pytest.fixture
def keda_crds_later(cluster: localcluster.Cluster, harness: Harness) -> Iterator[None]:
    uninstall_keda_crds(cluster)
    yield
    for operator in harness.operators:  # done: the operator must not race the CRDs' removal
        operator.stop()
    uninstall_keda_crds(cluster)


def hpa_cpu_target(harness: Harness, name: str) -> int | None:
    hpa = harness.get_or_none("hpa", name)
    if hpa is None:
        return None
    return int(hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"])


def test_custom_signals_fall_back_to_cpu_until_keda_appears(harness: Harness, keda_crds_later: None) -> None:
    harness.bound_claim()
    harness.start_operator(MODELDEPLOY_PROMETHEUS_URL=PROMETHEUS_URL, MODELDEPLOY_METRICS_WINDOW="30s")
    harness.apply_manifest(manifest(replicas={"min": 1, "max": 4},
                                    autoscaling={"concurrency": 3, "scaleDown": {"stabilizationWindowSeconds": 30}}))

    fallback = harness.wait_condition("sentiment", "AutoscalingReady", "False", "KEDANotInstalled")
    assert fallback["message"].startswith("spec.autoscaling asks for concurrency but KEDA is not installed (no "
                                          "scaledobjects.keda.sh CRD): scaling on CPU at 70% instead")
    # This cluster has no metrics-server either: the HPA's own complaint is carried too, once it made one.
    harness.eventually(lambda: "unable to fetch metrics from resource metrics API"
                       in harness.condition("sentiment", "AutoscalingReady")["message"], 60, "the HPA's complaint")
    assert harness.eventually(lambda: hpa_cpu_target(harness, "sentiment-stable") == 70, 30, "the CPU HPA")
    hpa = harness.get("hpa", "sentiment-stable")
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 30
    deployment = harness.get("deployment", "sentiment-stable", "--show-managed-fields")
    applied = [f for f in deployment["metadata"]["managedFields"] if f["manager"] == "modeldeploy-operator"]
    assert all("f:replicas" not in f["fieldsV1"].get("f:spec", {}) for f in applied)  # the autoscaler's field

    # KEDA is installed while the operator runs: the track moves to a ScaledObject, the CPU HPA goes.
    install_keda_crds(harness.cluster)
    scaled = harness.eventually(lambda: harness.get_or_none("scaledobject", "sentiment-stable"), 60,
                                "the ScaledObject")
    assert scaled["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS_URL
    assert trigger["metadata"]["threshold"] == "3"
    assert 'modeldeployment="sentiment",track="stable"' in trigger["metadata"]["query"]
    harness.eventually(lambda: harness.get_or_none("hpa", "sentiment-stable") is None, 60, "the CPU HPA pruned")
    # No KEDA runs here to make its HPA: the status says the autoscaler has not reported, not that all is well.
    pending = harness.wait_condition("sentiment", "AutoscalingReady", "Unknown", "AutoscalerPending")
    assert "keda-hpa-sentiment-stable" in pending["message"]
    autoscaling = harness.md()["status"]["autoscaling"]["stable"]
    assert autoscaling == {"autoscaler": "ScaledObject/sentiment-stable", "minReplicas": 1, "maxReplicas": 4}
    assert harness.get("scaledobject", "sentiment-canary")["spec"]["triggers"][0]["metadata"]["query"].count(
        'track="canary"') == 1

    # Back to CPU in the spec: the ScaledObject is pruned and the CPU HPA returns with the new target.
    patch = {"spec": {"autoscaling": {"concurrency": None, "cpuUtilization": 60}}}
    harness.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", json.dumps(patch))
    harness.eventually(lambda: harness.get_or_none("scaledobject", "sentiment-stable") is None, 60,
                       "the ScaledObject pruned")
    assert harness.eventually(lambda: hpa_cpu_target(harness, "sentiment-stable") == 60, 60, "the new CPU target")
