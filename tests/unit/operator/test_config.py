"""Operator settings: read from the environment, errors naming the variable, documented once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from modeldeploy_operator import config

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"


def test_config_from_env() -> None:
    parsed = config.from_env({"MODELDEPLOY_SERVER_IMAGE": "reg/server:1", "MODELDEPLOY_NAMESPACES": "a, b",
                              "MODELDEPLOY_WORKERS": "8", "MODELDEPLOY_LEADER_ELECTION": "false",
                              "POD_NAMESPACE": "ops"})
    assert parsed.serving.server_image == "reg/server:1"
    assert parsed.namespaces == ("a", "b")
    assert parsed.workers == 8
    assert parsed.leader_election is False
    assert parsed.lease_namespace == "ops"


@pytest.mark.parametrize(("env", "message"), [
    ({"MODELDEPLOY_WORKERS": "many"}, "MODELDEPLOY_WORKERS: 'many' is not a number"),
    ({"MODELDEPLOY_WORKERS": "0"}, "MODELDEPLOY_WORKERS: must be at least 1"),
    ({"MODELDEPLOY_LEADER_ELECTION": "maybe"}, "MODELDEPLOY_LEADER_ELECTION"),
])
def test_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.from_env(env)


def test_the_serving_pods_timing_and_the_watch_timeout_are_settable() -> None:
    parsed = config.from_env({"MODELDEPLOY_PRE_STOP_SECONDS": "12", "MODELDEPLOY_TERMINATION_GRACE_SECONDS": "90",
                              "MODELDEPLOY_WATCH_SERVER_TIMEOUT_SECONDS": "120"})
    assert (parsed.serving.pre_stop_seconds, parsed.serving.termination_grace_seconds) == (12, 90)
    assert parsed.watch_server_timeout_seconds == 120


def test_every_setting_has_a_docstring() -> None:
    undocumented = [name for name, field in config.OperatorConfig.model_fields.items() if not field.description]
    assert undocumented == []


def test_readme_carries_the_settings_table() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- operator-settings:start -->\n")[1].split("<!-- operator-settings:end -->")[0]
    assert block == config.settings_table(), "run `python -m modeldeploy_operator.config` and paste into README"


def chart_settings() -> dict[str, str]:
    """MODELDEPLOY_* variable -> the values path the chart's Deployment fills it from."""
    template = (CHART / "templates" / "deployment.yaml").read_text()
    found = re.findall(r"- name: (MODELDEPLOY_\w+)\n\s+value: \{\{ (?:join \",\" )?\.Values\.([\w.]+)", template)
    return dict(found)


def values_comment(path: str) -> str:
    """The `# -- ...` comment right above a key of values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents, wanted = path.split(".")[:-1], path.split(".")[-1]
    depth = 0
    for index, line in enumerate(lines):
        key = line.strip().split(":")[0]
        indent = (len(line) - len(line.lstrip())) // 2
        if depth < len(parents) and indent == depth and key == parents[depth]:
            depth += 1
        elif depth == len(parents) and indent == depth and key == wanted:
            return lines[index - 1].strip().removeprefix("# -- ")
    raise AssertionError(f"{path} is not in values.yaml")


def test_chart_sets_only_real_settings_and_its_values_say_what_the_settings_say() -> None:
    settings = chart_settings()
    assert len(settings) >= 12
    fields = {config.env_name(name): field for name, field in config.OperatorConfig.model_fields.items()}
    for variable, path in settings.items():
        assert variable in fields, f"the chart sets {variable}, which the operator does not read"
        assert values_comment(path) == fields[variable].description, path
    # The values themselves are valid settings.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    env = {}
    for variable, path in settings.items():
        value: object = values
        for part in path.split("."):
            value = value[part]  # type: ignore[index]
        env[variable] = ",".join(value) if isinstance(value, list) else str(value).lower() if isinstance(
            value, bool) else str(value)
    assert config.from_env(env).workers == values["operator"]["workers"]


@pytest.mark.parametrize(("env", "message"), [
    ({"MODELDEPLOY_IMAGE_PULL_POLICY": "Sometimes"}, "MODELDEPLOY_IMAGE_PULL_POLICY: expected one of"),
    ({"MODELDEPLOY_PRE_STOP_SECONDS": "-1"}, "MODELDEPLOY_PRE_STOP_SECONDS: must be at least 0"),
])
def test_more_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config.from_env(env)
