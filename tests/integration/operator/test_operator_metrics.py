"""The operator's own /metrics, read over HTTP from a running operator process on the real API server.

The rollouts' pods are held Pending by a nodeSelector no node matches: they never get an address, so the
analysis reads no pod (nothing is sent to addresses that only exist on paper) and every verdict is
Inconclusive — which is exactly a verdict the metrics must count.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from testsupport.operator_harness import Harness, Operator, manifest

NOWHERE = {"modeldeploy.dev/test-node": "none-matches"}


def samples(operator: Operator) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, parsed by prometheus-client's own parser: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(operator: Operator, name: str, **labels: str) -> float:
    return samples(operator).get((name, frozenset(labels.items())), 0.0)


def rollout_md(name: str, path: str) -> dict[str, Any]:
    return manifest(name, canary=None, replicas={"min": 1}, autoscaling=None, nodeSelector=NOWHERE,
                    model={"pvc": "models", "path": path},
                    rollout={"steps": [{"weight": 50, "pause": "1h"}], "analysisInterval": "2s"})


def command(h: Harness, name: str, action: str) -> None:
    """What `kubectl modeldeploy rollout ACTION` sends: a request through the status subresource."""
    patch = {"status": {"rollout": {"command": {"action": action}}}}
    h.kubectl("patch", "modeldeployment", name, "--subresource=status", "--type=merge", "-p", json.dumps(patch))


def test_the_operator_exports_real_prometheus_text_and_its_numbers_move(harness: Harness, istio: None) -> None:
    h = harness
    operator = h.start_operator()
    h.bound_claim()

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    h.eventually(lambda: value(operator, "modeldeploy_operator_leader") == 1.0, 120, "the operator leading")
    assert ("modeldeploy_operator_workqueue_depth", frozenset()) in samples(operator)
    assert value(operator, "process_resident_memory_bytes") > 0

    # Reconciles: counted by result, timed.
    before = value(operator, "modeldeploy_operator_reconciles_total", result="success")
    h.apply_manifest(manifest("plain", canary=None, replicas={"min": 1}, autoscaling=None, nodeSelector=NOWHERE))
    h.eventually(lambda: value(operator, "modeldeploy_operator_reconciles_total", result="success") > before, 60,
                 "a successful reconcile counted")
    assert value(operator, "modeldeploy_operator_reconcile_duration_seconds_count") >= 1

    # Two rollouts: each starts Healthy on its first model, then a new model makes it Progressing at step 1.
    for name in ("promoted", "aborted"):
        h.apply_manifest(rollout_md(name, f"{name}/v1/model.onnx"))
    h.eventually(lambda: value(operator, "modeldeploy_operator_rollouts", phase="Healthy") == 2, 60,
                 "two Healthy rollouts")
    for name in ("promoted", "aborted"):
        h.apply_manifest(rollout_md(name, f"{name}/v2/model.onnx"))
    h.eventually(lambda: value(operator, "modeldeploy_operator_rollouts", phase="Progressing") == 2, 60,
                 "two rollouts Progressing")
    for name in ("promoted", "aborted"):
        assert value(operator, "modeldeploy_operator_rollout_step", namespace=h.namespace, modeldeployment=name,
                     phase="Progressing") == 1
        assert value(operator, "modeldeploy_operator_rollout_steps", namespace=h.namespace,
                     modeldeployment=name) == 1

    # Every 2 s interval ends in a verdict: Inconclusive (no pod to read), decided by too few requests, and
    # each one's delay after its interval's end is observed.
    h.eventually(lambda: value(operator, "modeldeploy_operator_analysis_verdicts_total", result="Inconclusive",
                               gate="minRequests") >= 4, 90, "inconclusive verdicts counted")
    assert value(operator, "modeldeploy_operator_analysis_delay_seconds_count") >= 2
    assert value(operator, "modeldeploy_operator_analysis_duration_seconds_count") >= 4
    verdict = h.md("aborted")["status"]["rollout"]["lastVerdict"]
    assert verdict["result"] == "Inconclusive"

    # How rollouts end: promoted on request, aborted on request. A request is sent again while it has not
    # taken effect: one written between the operator's read and its status write can be overwritten.
    sent: dict[str, float] = {}

    def ended() -> bool:
        counted = {result: value(operator, "modeldeploy_operator_rollouts_finished_total", result=result)
                   for result in ("promoted", "aborted")}
        for name, action, result in (("promoted", "promote", "promoted"), ("aborted", "abort", "aborted")):
            if not counted[result] and time.monotonic() - sent.get(name, -10.0) > 5.0:
                command(h, name, action)
                sent[name] = time.monotonic()
        return counted == {"promoted": 1.0, "aborted": 1.0}

    h.eventually(ended, 90, "a promotion and an abort counted")
    assert value(operator, "modeldeploy_operator_rollouts_finished_total", result="rolled_back") == 0
    h.eventually(lambda: value(operator, "modeldeploy_operator_rollouts", phase="Healthy") == 1
                 and value(operator, "modeldeploy_operator_rollouts", phase="RolledBack") == 1, 60,
                 "phases after promote and abort")
    assert value(operator, "modeldeploy_operator_rollout_step", namespace=h.namespace, modeldeployment="aborted",
                 phase="RolledBack") == 0

    # A deleted ModelDeployment leaves the gauges.
    h.kubectl("delete", "modeldeployment", "promoted", "aborted")
    h.eventually(lambda: sum(value(operator, "modeldeploy_operator_rollouts", phase=phase)
                             for phase in ("Healthy", "Progressing", "Paused", "RolledBack")) == 0, 60,
                 "no rollouts left")
