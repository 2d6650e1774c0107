"""The operator's metrics: what a verdict and a rollout decision are counted as, read back from the exposition."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_operator import analysis
from modeldeploy_operator.cache import Key
from modeldeploy_operator.metrics import OperatorMetrics, verdict_gate
from modeldeploy_operator.rollout import Decision, Event, Serving
from modeldeploy_operator.status_schema import ModelKey, RolloutStatus

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STABLE = ModelKey(pvc="models", path="v1.onnx")
CANARY = ModelKey(pvc="models", path="v2.onnx")
A, B = Key("ModelDeployment", "ml", "a"), Key("ModelDeployment", "ml", "b")


def exported(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(metrics.render().decode()) for sample in family.samples}


def test_a_verdict_is_counted_under_the_gate_that_decided_it() -> None:
    gates = analysis.Gates(min_requests=10)
    few = analysis.judge(analysis.TrackSample({"ok": 1}), analysis.TrackSample({"ok": 1}), gates)
    failing = analysis.judge(analysis.TrackSample({"ok": 50, "error": 50}), analysis.TrackSample({"ok": 100}), gates)
    passing = analysis.judge(analysis.TrackSample({"ok": 100}), analysis.TrackSample({"ok": 100}),
                             analysis.Gates(min_requests=10, max_latency_p95_ratio=None))
    assert [verdict_gate(v) for v in (few, failing, passing)] == ["minRequests", "errorRate", "none"]


def test_decisions_set_the_gauges_and_count_endings_once_each() -> None:
    present = [A, B]
    metrics = OperatorMetrics(queue_depth=lambda: 3, leading=lambda: True, resources=lambda: present,
                              process=False)
    progressing = RolloutStatus(phase="Progressing", stable=STABLE, canary=CANARY, step=1, steps=3, started_at=NOW)
    metrics.rollout_decided(A, Decision(progressing, Serving(STABLE, CANARY, 10)))
    promoted = RolloutStatus(phase="Healthy", stable=CANARY)
    metrics.rollout_decided(B, Decision(promoted, Serving(CANARY), (Event("Normal", "Promoted", "v2 is stable"),),
                                        outcome="promoted"))
    metrics.reconciled("success", 0.02)
    found = exported(metrics)
    assert found[("modeldeploy_operator_workqueue_depth", ())] == 3
    assert found[("modeldeploy_operator_leader", ())] == 1
    assert found[("modeldeploy_operator_rollouts", (("phase", "Progressing"),))] == 1
    assert found[("modeldeploy_operator_rollouts", (("phase", "Healthy"),))] == 1
    assert found[("modeldeploy_operator_rollouts", (("phase", "Paused"),))] == 0
    assert found[("modeldeploy_operator_rollout_step", (("modeldeployment", "a"), ("namespace", "ml"),
                                                        ("phase", "Progressing")))] == 2
    assert found[("modeldeploy_operator_rollout_step", (("modeldeployment", "b"), ("namespace", "ml"),
                                                        ("phase", "Healthy")))] == 0
    assert found[("modeldeploy_operator_rollouts_finished_total", (("result", "promoted"),))] == 1
    assert found[("modeldeploy_operator_reconciles_total", (("result", "success"),))] == 1
    # A ModelDeployment that no longer exists leaves the gauges.
    present.remove(A)
    assert ("modeldeploy_operator_rollouts", (("phase", "Progressing"),)) in exported(metrics)
    assert exported(metrics)[("modeldeploy_operator_rollouts", (("phase", "Progressing"),))] == 0


def test_a_late_verdict_is_observed_and_an_early_one_counts_as_on_time() -> None:
    metrics = OperatorMetrics(process=False)
    verdict = analysis.judge(analysis.TrackSample(), analysis.TrackSample(), analysis.Gates())
    metrics.analysed(verdict, 0.01, 1.2)
    metrics.analysed(verdict, 0.01, -0.3)
    metrics.analysed(verdict, 0.01, None)  # the first window after a start: no interval ended
    found = exported(metrics)
    assert found[("modeldeploy_operator_analysis_delay_seconds_count", ())] == 2
    assert found[("modeldeploy_operator_analysis_delay_seconds_bucket", (("le", "0.05"),))] == 1
    assert found[("modeldeploy_operator_analysis_delay_seconds_bucket", (("le", "1.5"),))] == 2
    assert found[("modeldeploy_operator_analysis_duration_seconds_count", ())] == 3
    assert found[("modeldeploy_operator_analysis_verdicts_total", (("gate", "minRequests"),
                                                                   ("result", "Inconclusive")))] == 3
