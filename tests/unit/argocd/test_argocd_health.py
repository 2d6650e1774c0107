"""The Argo CD health check, run by a real Lua 5.1 interpreter the way Argo CD runs it.

Argo CD executes the script with gopher-lua (Lua 5.1 semantics): the resource is the global
`obj` (JSON numbers become Lua numbers, i.e. floats) and the script returns a table with
`status` and `message`. Each fixture in health-fixtures/ holds an object and the expected result.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lupa.lua51
import pytest
import yaml

from modeldeploy_operator import status as operator_status
from modeldeploy_operator import views
from testsupport.argo_lua import SCRIPT, run_health_check

REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).resolve().parent / "health-fixtures"
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def load_fixture(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    document = yaml.safe_load(path.read_text())
    return document["object"], document["expected"]


FIXTURE_FILES = sorted(FIXTURES.glob("*.yaml"))


def test_fixtures_are_present() -> None:
    assert len(FIXTURE_FILES) >= 10


@pytest.mark.parametrize("fixture", FIXTURE_FILES, ids=lambda path: path.stem)
def test_health_from_fixture(fixture: Path) -> None:
    resource, expected = load_fixture(fixture)
    result = run_health_check(resource)
    assert result["status"] in ARGO_STATUSES
    assert result == {"status": expected["status"], "message": expected["message"]}


def ready_resource(generation: int, observed: int) -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}],
        },
    }


@pytest.mark.parametrize("generation", [1, 2, 17, 1000])
def test_every_generation_lag_is_progressing_and_names_the_generation(generation: int) -> None:
    result = run_health_check(ready_resource(generation, generation - 1))
    assert result == {
        "status": "Progressing",
        "message": f"waiting for the operator to observe generation {generation}",
    }
    assert run_health_check(ready_resource(generation, generation))["status"] == "Healthy"


def hard_failure_reasons() -> list[str]:
    """The reasons the script treats as hard failures, read from the script's own table."""
    lua = lupa.lua51.LuaRuntime()
    source = SCRIPT.read_text()
    table_source = source[source.index("local HARD_FAILURES") : source.index("local PARTS")]
    reasons = lua.execute(table_source + "\nreturn HARD_FAILURES")
    return sorted(str(key) for key in reasons)


def test_hard_failures_cover_what_the_operator_reports_as_stuck() -> None:
    """Reasons the operator emits for failures that need a person; renaming one there fails here."""
    hard = set(hard_failure_reasons())
    assert views.STUCK_WAITING_REASONS.issubset(hard)
    operator_source = inspect.getsource(operator_status) + inspect.getsource(views)
    for reason in ("ClaimNotFound", "ServerTerminated", "ProgressDeadlineExceeded", "ReplicaFailure", "InvalidSpec"):
        assert reason in hard
        assert f'"{reason}"' in operator_source, f"the operator no longer reports {reason}"
    for transient in ("ClaimPending", "ReplicasNotReady", "RollingOut", "RolloutPending", "Unschedulable"):
        assert transient not in hard


def with_failing(part: str, reason: str, canary_percent: int | None = 10) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True", "reason": "Serving"}] if part != "Ready" else []
    conditions.append({"type": part, "status": "False", "reason": reason, "message": "details"})
    resource: dict[str, Any] = {
        "metadata": {"generation": 2},
        "spec": {"model": {"pvc": "m", "path": "a.onnx"}},
        "status": {"observedGeneration": 2, "conditions": conditions},
    }
    if canary_percent is not None:
        resource["spec"]["canary"] = {"model": {"pvc": "m", "path": "b.onnx"}, "trafficPercent": canary_percent}
    return resource


@pytest.mark.parametrize("reason", hard_failure_reasons())
@pytest.mark.parametrize("part", ["Ready", "ModelSourceReady", "StableReady", "CanaryReady", "RoutingReady"])
def test_each_hard_failure_degrades_from_any_condition(reason: str, part: str) -> None:
    result = run_health_check(with_failing(part, reason))
    assert result["status"] == "Degraded"
    assert reason in result["message"] and "details" in result["message"]


@pytest.mark.parametrize("canary_percent", [0, None])
def test_failing_canary_without_traffic_does_not_degrade(canary_percent: int | None) -> None:
    resource = with_failing("CanaryReady", "CrashLoopBackOff", canary_percent)
    assert run_health_check(resource)["status"] == "Healthy"
    resource["spec"].pop("canary", None)
    assert run_health_check(resource)["status"] == "Healthy"


@pytest.mark.parametrize("reason", ["ReplicasNotReady", "ClaimPending", "Unschedulable", "Reconciling"])
def test_transient_reasons_stay_progressing(reason: str) -> None:
    resource = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": "wait"}],
        },
    }
    assert run_health_check(resource) == {"status": "Progressing", "message": f"{reason}: wait"}


def test_hard_failure_reported_as_true_is_not_degraded() -> None:
    """Only a False condition degrades: a True condition with an odd reason is fine."""
    resource = ready_resource(1, 1)
    resource["status"]["conditions"].append({"type": "StableReady", "status": "True", "reason": "ClaimNotFound"})
    assert run_health_check(resource)["status"] == "Healthy"
