"""Writes charts/modeldeploy/files/grafana-dashboard.json: the serving metrics per ModelDeployment and track,
then a row for the rollouts and a row for the operator itself.

The JSON is generated so that every panel follows the same pattern (one query; the serving panels grouped
by the ``modeldeployment`` and ``track`` labels that the chart's PodMonitor adds); a test regenerates
and compares it, and another checks that every metric a query names is one the server or the operator
exports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "charts" / "modeldeploy" / "files" / "grafana-dashboard.json"
SCOPE = 'namespace=~"$namespace", modeldeployment=~"$modeldeployment"'
BY = "modeldeployment, track"
# The HPA per track is <name>-<track>, or keda-hpa-<name>-<track> when KEDA made it from our ScaledObject.
HPA_SCOPE = 'namespace=~"$namespace", horizontalpodautoscaler=~"(keda-hpa-)?($modeldeployment)-(stable|canary)"'
HPA_SERIES = '"kube_horizontalpodautoscaler_status_(current|desired)_replicas"'

PANELS: list[tuple[str, str, str, str]] = [
    # title, unit, PromQL, legend
    (
        "Requests per second by outcome and protocol",
        "reqps",
        f"sum by ({BY}, outcome, protocol) (rate(modeldeploy_requests_total{{{SCOPE}}}[$__rate_interval]))",
        "{{modeldeployment}} {{track}} {{outcome}} {{protocol}}",
    ),
    (
        "Error ratio",
        "percentunit",
        f'sum by ({BY}) (rate(modeldeploy_requests_total{{{SCOPE}, outcome!="ok"}}[$__rate_interval]))'
        f" / sum by ({BY}) (rate(modeldeploy_requests_total{{{SCOPE}}}[$__rate_interval]))",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Latency p50",
        "s",
        f"histogram_quantile(0.5, sum by ({BY}, le) "
        f"(rate(modeldeploy_request_duration_seconds_bucket{{{SCOPE}}}[$__rate_interval])))",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Latency p99",
        "s",
        f"histogram_quantile(0.99, sum by ({BY}, le) "
        f"(rate(modeldeploy_request_duration_seconds_bucket{{{SCOPE}}}[$__rate_interval])))",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Mean batch size",
        "short",
        f"sum by ({BY}) (rate(modeldeploy_batch_size_sum{{{SCOPE}}}[$__rate_interval]))"
        f" / sum by ({BY}) (rate(modeldeploy_batch_size_count{{{SCOPE}}}[$__rate_interval]))",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Queue depth",
        "short",
        f"sum by ({BY}) (modeldeploy_queue_depth{{{SCOPE}}})",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "In-flight requests per pod (the concurrency autoscaling signal)",
        "short",
        f"avg by ({BY}) (modeldeploy_requests_in_flight{{{SCOPE}}})",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Queue wait p95 (the queueTimeP95Ms autoscaling signal)",
        "s",
        f"histogram_quantile(0.95, sum by ({BY}, le) "
        f"(rate(modeldeploy_queue_wait_seconds_bucket{{{SCOPE}}}[$__rate_interval])))",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Serving pods ready (scraped)",
        "short",
        f"sum by ({BY}) (modeldeploy_ready{{{SCOPE}}})",
        "{{modeldeployment}} {{track}}",
    ),
    (
        "Autoscaler current vs desired replicas (kube-state-metrics)",
        "short",
        f"{{__name__=~{HPA_SERIES}, {HPA_SCOPE}}}",
        "{{horizontalpodautoscaler}} {{__name__}}",
    ),
    (
        "Input drift (PSI; above 0.2 is a large shift)",
        "short",
        f"max by ({BY}, input) (modeldeploy_input_drift_psi{{{SCOPE}}})",
        "{{modeldeployment}} {{track}} {{input}}",
    ),
    (
        "Model load time",
        "s",
        f"max by ({BY}) (modeldeploy_model_load_seconds{{{SCOPE}}})",
        "{{modeldeployment}} {{track}}",
    ),
]


# The operator's gauges are non-zero only on the replica that leads: `max` across replicas is the leader's.
OPERATOR = "and on (job, instance) modeldeploy_operator_leader"  # the operator's own process_* series
ROLLOUT_SCOPE = 'namespace=~"$namespace", modeldeployment=~"$modeldeployment"'

ROLLOUT_PANELS: list[tuple[str, str, str, str]] = [
    (
        "Rollouts by phase",
        "short",
        "max by (phase) (modeldeploy_operator_rollouts)",
        "{{phase}}",
    ),
    (
        "Rollout step (1-based; 0 when no canary is out)",
        "short",
        f"max by (namespace, modeldeployment, phase) (modeldeploy_operator_rollout_step{{{ROLLOUT_SCOPE}}})",
        "{{modeldeployment}} ({{phase}})",
    ),
    (
        "Analysis verdicts per minute, by result and deciding gate",
        "short",
        "sum by (result, gate) (rate(modeldeploy_operator_analysis_verdicts_total[$__rate_interval])) * 60",
        "{{result}} {{gate}}",
    ),
    (
        "Rollouts ended in the last hour, by result",
        "short",
        "sum by (result) (increase(modeldeploy_operator_rollouts_finished_total[1h]))",
        "{{result}}",
    ),
    (
        "Analysis delay p99: verdict after the interval's end (target 2 s)",
        "s",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(modeldeploy_operator_analysis_delay_seconds_bucket[$__rate_interval])))",
        "p99",
    ),
    (
        "Analysis duration p99 (read both tracks' metrics, judge)",
        "s",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(modeldeploy_operator_analysis_duration_seconds_bucket[$__rate_interval])))",
        "p99",
    ),
]

OPERATOR_PANELS: list[tuple[str, str, str, str]] = [
    (
        "Reconciles per second by result",
        "reqps",
        "sum by (result) (rate(modeldeploy_operator_reconciles_total[$__rate_interval]))",
        "{{result}}",
    ),
    (
        "Reconcile duration p99",
        "s",
        "histogram_quantile(0.99, sum by (le) "
        "(rate(modeldeploy_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
        "p99",
    ),
    (
        "Work queue depth",
        "short",
        "max(modeldeploy_operator_workqueue_depth)",
        "queued",
    ),
    (
        "Operator CPU (cores)",
        "short",
        f"rate(process_cpu_seconds_total[$__rate_interval]) {OPERATOR}",
        "{{instance}}",
    ),
    (
        "Operator memory (RSS)",
        "bytes",
        f"process_resident_memory_bytes {OPERATOR}",
        "{{instance}}",
    ),
    (
        "Leader (1 on the replica that reconciles)",
        "short",
        "modeldeploy_operator_leader",
        "{{instance}}",
    ),
]


def panel(index: int, y: int, title: str, unit: str, expr: str, legend: str) -> dict[str, Any]:
    """A time series in a two-column grid; `index` counts within its row, which starts at `y`."""
    return {
        "id": 0,  # numbered by `panels`
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": y + 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
    }


def panels() -> list[dict[str, Any]]:
    """The serving panels, then a row of rollout panels and a row of operator panels."""
    out = [panel(i, 0, *spec) for i, spec in enumerate(PANELS)]
    y = 8 * ((len(PANELS) + 1) // 2)
    for title, specs in (("Rollouts (the operator's analysis)", ROLLOUT_PANELS), ("The operator", OPERATOR_PANELS)):
        out.append({"id": 0, "type": "row", "title": title, "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        out += [panel(i, y + 1, *spec) for i, spec in enumerate(specs)]
        y += 1 + 8 * ((len(specs) + 1) // 2)
    for number, item in enumerate(out, start=1):
        item["id"] = number
    return out


def variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "includeAll": True,
        "multi": True,
        "current": {"text": "All", "value": "$__all"},
        "refresh": 2,
    }


def dashboard() -> dict[str, Any]:
    return {
        "title": "modeldeploy — models in production",
        "uid": "modeldeploy-serving",
        "tags": ["modeldeploy", "inference"],
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                variable("namespace", "label_values(modeldeploy_requests_total, namespace)"),
                variable(
                    "modeldeployment",
                    'label_values(modeldeploy_requests_total{namespace=~"$namespace"}, modeldeployment)',
                ),
            ]
        },
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUTPUT.read_text() == render() else 1)
    OUTPUT.write_text(render())
