"""Files the chart carries are the project's single sources, not drifting copies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from modeldeploy_operator.metrics import OperatorMetrics
from modeldeploy_server.metrics import ServerMetrics

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "crds" / "modeldeployments.yaml").read_bytes() == (
        REPO / "crds" / "modeldeployments.yaml"
    ).read_bytes()


def test_dashboard_is_up_to_date_with_its_generator() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "make_dashboard.py"), "--check"], check=False)
    assert result.returncode == 0, "run `python hack/make_dashboard.py` and commit the result"


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, label names and strings left out)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        if text[match.end():].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name an exposition's `# TYPE` lines allow (a histogram's _bucket, _sum and _count)."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def test_metric_names_reads_a_query_as_prometheus_would() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, track) (rate(a_bucket{x=~"b_c"}[5m]))) / b '
            'and on (job, instance) c_total{__name__!=""}')
    assert metric_names(expr) == {"a_bucket", "b", "c_total"}


def test_dashboard_queries_only_metrics_the_server_or_the_operator_exports() -> None:
    """Every metric a panel reads, against the real expositions: the server's (drift and output collectors
    included, as a loaded model registers them) and the operator's."""
    server = ServerMetrics()
    server.add_drift("m", {})
    server.add_outputs("m", {})
    known = exported_series(server.render().decode()) | exported_series(OperatorMetrics().render().decode())
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    queried = 0
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                queried += 1
                assert name in known, f"panel {panel['title']!r} queries unknown metric {name}"
    assert queried >= 20
    titles = {panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"}
    assert titles == {"Rollouts (the operator's analysis)", "The operator"}
