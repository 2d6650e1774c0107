"""Writes charts/modeldeploy/files/grafana-dashboard.json: the serving metrics per ModelDeployment and track.

The JSON is generated so that every panel follows the same pattern (one query, grouped by the
``modeldeployment`` and ``track`` labels that the chart's ServiceMonitor adds); a test regenerates
and compares it.
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
        "Requests per second by outcome",
        "reqps",
        f"sum by ({BY}, outcome) (rate(modeldeploy_requests_total{{{SCOPE}}}[$__rate_interval]))",
        "{{modeldeployment}} {{track}} {{outcome}}",
    ),
    (
        "Error ratio",
        "percentunit",
        f'sum by ({BY}) (rate(modeldeploy_requests_total{{{SCOPE}, outcome!="success"}}[$__rate_interval]))'
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


def panel(index: int, title: str, unit: str, expr: str, legend: str) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
    }


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
        "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUTPUT.read_text() == render() else 1)
    OUTPUT.write_text(render())
