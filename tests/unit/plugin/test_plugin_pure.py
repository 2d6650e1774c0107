"""The pure half of `kubectl modeldeploy`: status formatting and the merge patches it sends."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_operator import plugin
from modeldeploy_operator.rollout_commands import Command
from testsupport.merge_patch import apply_merge_patch

NOW = datetime(2026, 1, 2, 12, 0, 0, tzinfo=UTC)


def resource_with_canary() -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "sentiment", "namespace": "ml", "generation": 4, "resourceVersion": "812"},
        "spec": {
            "model": {"pvc": "models", "path": "sentiment/v1/model.onnx", "sha256": "ab" * 32},
            "canary": {
                "model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx"},
                "trafficPercent": 25,
            },
            "replicas": {"min": 2, "max": 10},
            "gpu": 0,
        },
        "status": {
            "observedGeneration": 4,
            "conditions": [
                {
                    "type": "StableReady",
                    "status": "True",
                    "reason": "ReplicasReady",
                    "message": "2/2 ready",
                    "lastTransitionTime": "2026-01-02T11:55:00Z",
                },
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Ready",
                    "message": "stable serving",
                    "lastTransitionTime": "2026-01-02T09:00:00Z",
                },
                {
                    "type": "CanaryReady",
                    "status": "False",
                    "reason": "ReplicasNotReady",
                    "message": "0/1 ready",
                    "lastTransitionTime": "2026-01-02T11:59:30Z",
                },
            ],
            "traffic": {"stable": 75, "canary": 25},
            "url": "http://sentiment.ml.svc.cluster.local",
            "readyReplicas": 2,
            "desiredReplicas": 3,
        },
    }


# --- promote ---------------------------------------------------------------------------------


def test_promote_is_one_patch_making_the_canary_model_stable() -> None:
    resource = resource_with_canary()
    patch = plugin.promote_patch(resource)
    assert patch == {
        "metadata": {"resourceVersion": "812"},
        "spec": {
            "model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx", "sha256": None},
            "canary": None,
        },
    }
    promoted = apply_merge_patch(resource, patch)
    assert promoted["spec"]["model"] == {"pvc": "models-v2", "path": "sentiment/v2/model.onnx"}
    assert "canary" not in promoted["spec"]
    assert promoted["spec"]["replicas"] == {"min": 2, "max": 10}


def test_promote_keeps_the_canary_digest() -> None:
    resource = resource_with_canary()
    resource["spec"]["canary"]["model"]["sha256"] = "cd" * 32
    patch = plugin.promote_patch(resource, pin_version=False)
    assert patch == {
        "spec": {
            "model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx", "sha256": "cd" * 32},
            "canary": None,
        }
    }


@pytest.mark.parametrize("canary", [None, {}])
def test_promote_without_canary_is_an_error(canary: Any) -> None:
    resource = resource_with_canary()
    resource["spec"]["canary"] = canary
    with pytest.raises(plugin.PluginError, match=r"ml/sentiment has no canary to promote"):
        plugin.promote_patch(resource)


def test_promote_canary_without_model_is_an_error() -> None:
    resource = resource_with_canary()
    del resource["spec"]["canary"]["model"]
    with pytest.raises(plugin.PluginError, match="canary without a model"):
        plugin.promote_patch(resource)


def test_replace_object_nulls_only_keys_that_disappear() -> None:
    assert plugin.replace_object({"a": 1, "b": 2}, {"b": 3, "c": 4}) == {"a": None, "b": 3, "c": 4}
    assert plugin.replace_object(None, {"b": 3}) == {"b": 3}


# --- rollback --------------------------------------------------------------------------------


def test_rollback_sets_canary_traffic_to_zero_and_keeps_the_canary() -> None:
    resource = resource_with_canary()
    patch = plugin.rollback_patch(resource, remove=False)
    assert patch == {"spec": {"canary": {"trafficPercent": 0}}}
    after = apply_merge_patch(resource, patch)
    assert after["spec"]["canary"] == {
        "model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx"},
        "trafficPercent": 0,
    }


def test_rollback_remove_drops_the_canary() -> None:
    resource = resource_with_canary()
    patch = plugin.rollback_patch(resource, remove=True)
    assert patch == {"spec": {"canary": None}}
    assert "canary" not in apply_merge_patch(resource, patch)["spec"]


@pytest.mark.parametrize("remove", [False, True])
def test_rollback_without_canary_is_an_error(remove: bool) -> None:
    resource = resource_with_canary()
    del resource["spec"]["canary"]
    with pytest.raises(plugin.PluginError, match=r"ml/sentiment has no canary to roll back"):
        plugin.rollback_patch(resource, remove=remove)


def test_dry_run_command_is_a_runnable_kubectl_patch() -> None:
    patch = {"spec": {"canary": {"trafficPercent": 0}}}
    command = plugin.kubectl_patch_command("sentiment", "ml", patch)
    words = shlex.split(command)
    assert words[:8] == ["kubectl", "patch", "md", "sentiment", "-n", "ml", "--type", "merge"]
    assert words[8] == "-p" and json.loads(words[9]) == patch


# --- status ----------------------------------------------------------------------------------


def test_status_summary_names_models_traffic_url_and_conditions_in_order() -> None:
    text = plugin.format_status(resource_with_canary(), NOW)
    lines = text.splitlines()
    assert "Name:" in lines[0] and "ml/sentiment" in lines[0]
    assert any(line.startswith("Ready:") and "True (Ready)" in line for line in lines)
    model_line = next(line for line in lines if line.startswith("Model:"))
    assert "sentiment/v1/model.onnx on claim models" in model_line and "sha256 abababababab" in model_line
    canary_line = next(line for line in lines if line.startswith("Canary:"))
    assert "sentiment/v2/model.onnx on claim models-v2" in canary_line and "trafficPercent 25" in canary_line
    assert any(line.startswith("Traffic:") and "stable 75%, canary 25%" in line for line in lines)
    assert any(line.startswith("URL:") and "http://sentiment.ml.svc.cluster.local" in line for line in lines)
    assert any(line.startswith("Replicas (spec):") and "min 2, max 10" in line for line in lines)
    assert any(line.startswith("Replicas:") and "2/3 ready" in line for line in lines)
    assert not any(line.startswith("Warning:") for line in lines)

    table = lines[lines.index("Conditions:") + 1 :]
    assert table[0].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert [row.split()[0] for row in table[1:]] == ["Ready", "StableReady", "CanaryReady"]
    assert table[1].split()[:4] == ["Ready", "True", "Ready", "3h"]
    assert table[3].split() == ["CanaryReady", "False", "ReplicasNotReady", "30s", "0/1", "ready"]
    # Columns line up: every row's REASON starts where the header's does.
    column = table[0].index("REASON")
    assert all(row[column - 2 : column] == "  " and row[column] != " " for row in table[1:])


def test_status_warns_about_generation_lag() -> None:
    resource = resource_with_canary()
    resource["metadata"]["generation"] = 6
    text = plugin.format_status(resource, NOW)
    generation_line = next(line for line in text.splitlines() if line.startswith("Generation:"))
    assert generation_line.split() == ["Generation:", "6", "(observed", "4)"]
    warning = next(line for line in text.splitlines() if line.startswith("Warning:"))
    assert "generation 4" in warning and "generation 6" in warning


def test_status_of_a_resource_the_operator_has_not_seen() -> None:
    resource = {
        "metadata": {"name": "fresh", "namespace": "default", "generation": 1},
        "spec": {"model": {"pvc": "models", "path": "m.onnx"}},
    }
    text = plugin.format_status(resource, NOW)
    assert "Unknown (no Ready condition yet)" in text
    assert "Canary:" in text and "<none>" in text
    assert "Traffic:" in text and "<not reported yet>" in text
    assert "Warning: the operator has not observed this resource yet (generation 1)" in text
    assert text.rstrip().endswith("Conditions: <none reported yet>")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, "3"),
        ({"min": 2, "max": 10}, "min 2, max 10"),
    ],
)
def test_spec_replicas_as_written(value: Any, expected: str) -> None:
    assert plugin.describe_counts(value) == expected


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-01-02T11:59:59Z", "1s"),
        ("2026-01-02T11:00:00Z", "1h"),
        ("2025-12-30T12:00:00+00:00", "3d"),
        ("2026-01-02T12:00:05Z", "0s"),
        (None, "-"),
        ("yesterday", "?"),
    ],
)
def test_humanize_age(timestamp: str | None, expected: str) -> None:
    assert plugin.humanize_age(timestamp, NOW) == expected


# --- command line ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-n", "ml", "--kubeconfig", "/k", "rollback", "x", "--remove"],
        ["rollback", "x", "--remove", "-n", "ml", "--kubeconfig", "/k"],
        ["--namespace", "other", "rollback", "-n", "ml", "x", "--remove", "--kubeconfig=/k"],
    ],
)
def test_connection_flags_work_before_and_after_the_subcommand(argv: list[str]) -> None:
    args = plugin.build_parser().parse_args(argv)
    assert (args.command, args.name, args.namespace, args.kubeconfig, args.remove) == (
        "rollback",
        "x",
        "ml",
        "/k",
        True,
    )


def test_subcommand_is_required() -> None:
    with pytest.raises(SystemExit) as stopped:
        plugin.build_parser().parse_args([])
    assert stopped.value.code == 2


def test_namespace_comes_from_the_current_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "one", "context": {"cluster": "c", "user": "u", "namespace": "ml"}},
                    {"name": "two", "context": {"cluster": "c", "user": "u"}},
                ],
                "current-context": "one",
            }
        )
    )
    assert plugin.resolve_connection(str(kubeconfig), None, None).namespace == "ml"
    assert plugin.resolve_connection(str(kubeconfig), "two", None).namespace == "default"
    assert plugin.resolve_connection(str(kubeconfig), None, "given").namespace == "given"
    with pytest.raises(plugin.PluginError, match="context 'three' not found"):
        plugin.resolve_connection(str(kubeconfig), "three", None)


def test_unreadable_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(plugin.PluginError, match="cannot read kubeconfig"):
        plugin.resolve_connection(str(tmp_path / "missing"), None, None)


def test_unreachable_api_server_is_a_clear_error(tmp_path: Path) -> None:
    """Nothing listens on the port: one line naming the problem, exit status 1, no traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "one", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "one",
            }
        )
    )
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubectl-modeldeploy"), "--kubeconfig", str(kubeconfig), "status", "x"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the API server") and "Traceback" not in result.stderr


# --- the promotion gate ----------------------------------------------------------------------


def with_canary_condition(status: str, reason: str = "ReplicasReady", message: str = "1/1 ready") -> dict[str, Any]:
    resource = resource_with_canary()
    resource["status"]["conditions"] = [c for c in resource["status"]["conditions"] if c["type"] != "CanaryReady"] + [
        {"type": "CanaryReady", "status": status, "reason": reason, "message": message}
    ]
    return resource


def test_promotion_is_allowed_when_the_operator_reports_the_canary_ready() -> None:
    assert plugin.promotion_blocker(with_canary_condition("True")) is None


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (
            with_canary_condition("False", "ServerTerminated", "sha256 mismatch"),
            "the canary is not ready (CanaryReady False, ServerTerminated: sha256 mismatch)",
        ),
        (with_canary_condition("Unknown", "", ""), "the canary is not ready (CanaryReady Unknown, NoReason)"),
    ],
)
def test_promotion_is_blocked_by_an_unready_canary(resource: dict[str, Any], expected: str) -> None:
    assert plugin.promotion_blocker(resource) == expected


def test_promotion_is_blocked_by_a_stale_status() -> None:
    resource = with_canary_condition("True")
    resource["metadata"]["generation"] = 5
    blocker = plugin.promotion_blocker(resource)
    assert blocker and "status describes generation 4, the spec is at generation 5" in blocker
    del resource["status"]
    assert plugin.promotion_blocker(resource) == ("the operator has not observed this resource yet (generation 5)")


def test_promotion_is_blocked_without_a_canary_condition() -> None:
    resource = with_canary_condition("True")
    resource["status"]["conditions"] = [c for c in resource["status"]["conditions"] if c["type"] != "CanaryReady"]
    assert plugin.promotion_blocker(resource) == "the operator reports no CanaryReady condition"


# --- installed without the Kubernetes client ---------------------------------------------------


def test_without_the_kubernetes_client_it_says_what_to_install(tmp_path: Path) -> None:
    """`pip install modeldeploy` alone: the plugin names the extra instead of a traceback."""
    blocked = "import sys; sys.modules['kubernetes'] = None; from modeldeploy_operator.plugin import main; main()"
    done = subprocess.run([sys.executable, "-c", blocked, "status", "sentiment", "-n", "ml"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "pip install 'modeldeploy[kubectl]'" in done.stderr


def test_the_named_extra_brings_the_client_and_the_operator_extra_has_it_too() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[3] / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kubectl-modeldeploy"] == "modeldeploy_operator.plugin:main"
    extras = project["optional-dependencies"]
    for extra in ("kubectl", "operator"):
        assert any(dep.startswith("kubernetes") for dep in extras[extra]), extra
    # What the plugin imports at module level comes with the base package.
    imported = {line.split()[1].split(".")[0] for line in Path(plugin.__file__).read_text().splitlines()
                if line.startswith(("import ", "from "))}
    assert imported - set(sys.stdlib_module_names) == {"modeldeploy_operator"}


def test_status_shows_each_tracks_autoscaler_replicas_and_metrics() -> None:
    resource = resource_with_canary()
    resource["status"]["autoscaling"] = {
        "stable": {"autoscaler": "ScaledObject/sentiment-stable", "minReplicas": 2, "maxReplicas": 10,
                   "currentReplicas": 2, "desiredReplicas": 4,
                   "metrics": [{"name": "concurrency", "current": "7.5", "target": "4"}]},
        "canary": {"autoscaler": "ScaledObject/sentiment-canary", "minReplicas": 1, "maxReplicas": 3},
    }
    lines = plugin.format_status(resource, NOW).splitlines()
    table = lines[lines.index("Autoscaling:") + 1 : lines.index("Conditions:") - 1]
    assert table[0].split() == ["TRACK", "AUTOSCALER", "REPLICAS", "BOUNDS", "METRICS", "(current/target)"]
    assert table[1].split() == ["stable", "ScaledObject/sentiment-stable", "2", "->", "4", "2..10", "concurrency",
                                "7.5/4"]
    assert table[2].split() == ["canary", "ScaledObject/sentiment-canary", "?", "->", "?", "1..3", "<not",
                                "reported", "yet>"]


def test_rollout_status_reads_the_operators_record() -> None:
    resource = {
        "metadata": {"name": "sentiment", "namespace": "ml"},
        "spec": {"model": {"pvc": "models", "path": "v2.onnx"}, "rollout": {"steps": [{"weight": 10}]}},
        "status": {"rollout": {
            "phase": "RolledBack", "stable": {"pvc": "models", "path": "v1.onnx"},
            "failed": {"pvc": "models", "path": "v2.onnx"}, "message": "rolled back models/v2.onnx (outputDrift)",
            "lastVerdict": {"result": "Fail", "gate": "outputDrift", "at": "2026-01-01T00:00:00Z",
                            "message": "output 'y': PSI 0.9"},
        }},
    }
    text = plugin.format_rollout(resource)
    assert text.splitlines()[0] == "Rollout of ml/sentiment: RolledBack"
    assert "failed:" in text and "v2.onnx" in text
    assert "Fail (outputDrift): output 'y': PSI 0.9" in text


def test_rollout_commands_need_a_rollout_and_go_through_status() -> None:
    with pytest.raises(plugin.PluginError, match=r"no spec\.rollout"):
        plugin.format_rollout({"metadata": {"name": "a", "namespace": "b"}, "spec": {"model": {}}})
    assert plugin.rollout_command_patch("pause", datetime(2026, 1, 1, tzinfo=UTC)) == {
        "status": {"rollout": {"command": {"action": "pause", "requestedAt": "2026-01-01T00:00:00Z"}}}}


def rollout_resource(phase: str, state: dict[str, Any] | None = None, paused_in_spec: bool = False) -> dict[str, Any]:
    rollout: dict[str, Any] = {"steps": [{"weight": 10}], **({"paused": True} if paused_in_spec else {})}
    return {"metadata": {"name": "a", "namespace": "b"}, "spec": {"model": {}, "rollout": rollout},
            "status": {"rollout": {"phase": phase, **(state or {})}}}


CANARY = {"canary": {"pvc": "models", "path": "v2.onnx"}}


@pytest.mark.parametrize(("resource", "action", "refusal"), [
    (rollout_resource("Progressing", CANARY), "pause", None),
    (rollout_resource("Progressing", CANARY), "abort", None),
    (rollout_resource("Paused", CANARY), "promote", None),
    (rollout_resource("Paused", {**CANARY, "pausedByCommand": True}), "resume", None),
    (rollout_resource("RolledBack", {"failed": {"pvc": "models", "path": "v2.onnx"}}), "retry", None),
    (rollout_resource("Healthy"), "pause", "no rollout is under way (phase Healthy)"),
    (rollout_resource("RolledBack"), "promote", "no rollout is under way (phase RolledBack)"),
    (rollout_resource("Paused", CANARY), "pause", "it is already paused"),
    (rollout_resource("Progressing", CANARY), "resume", "it is not paused (phase Progressing)"),
    (rollout_resource("Paused", CANARY, paused_in_spec=True), "resume", "spec.rollout.paused is true"),
    (rollout_resource("Healthy"), "retry", "nothing was rolled back (phase Healthy)"),
])
def test_rollout_commands_that_would_do_nothing_are_refused(resource: dict[str, Any], action: Command,
                                                            refusal: str | None) -> None:
    found = plugin.rollout_command_refusal(resource, action)
    if refusal is None:
        assert found is None
    else:
        assert found is not None and found.startswith(refusal)
