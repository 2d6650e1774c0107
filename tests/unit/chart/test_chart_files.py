"""Files the chart carries are the project's single sources, not drifting copies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"


def test_chart_crd_is_the_generated_crd() -> None:
    assert (CHART / "crds" / "modeldeployments.yaml").read_bytes() == (
        REPO / "crds" / "modeldeployments.yaml"
    ).read_bytes()


def test_dashboard_is_up_to_date_with_its_generator() -> None:
    result = subprocess.run([sys.executable, str(REPO / "hack" / "make_dashboard.py"), "--check"], check=False)
    assert result.returncode == 0, "run `python hack/make_dashboard.py` and commit the result"


def test_dashboard_queries_only_metrics_the_server_exports() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    metrics_source = (REPO / "serving-image" / "modeldeploy_server" / "metrics.py").read_text()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = {word.split("{")[0] for word in target["expr"].replace("(", " ").split() if "modeldeploy_" in word}
            for name in names:
                base = name.removesuffix("_total").removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                assert f'"{base}"' in metrics_source, f"panel {panel['title']!r} queries unknown metric {name}"
