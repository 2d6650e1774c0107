"""The contract between the operator and the serving image: every environment variable the operator
puts on a serving pod is a settings field the server reads, with a value the server accepts."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator import builders, manifests
from modeldeploy_operator import spec as specs
from modeldeploy_operator.config import ServingConfig
from modeldeploy_server.settings import Settings, env_name

OWNER = manifests.Owner(name="sentiment", namespace="ml", uid="1234-uid")
SERVER_ENV = {env_name(field) for field in Settings.model_fields}
SPECS: dict[str, dict[str, Any]] = {
    "minimal": {"model": {"pvc": "models", "path": "sentiment/v1/model.onnx"}},
    "everything": {
        "model": {"pvc": "models", "path": "sentiment/v1/model.onnx", "sha256": "AB" * 32},
        "canary": {"model": {"pvc": "models-v2", "path": "sentiment/v2/model.onnx"}, "trafficPercent": 10},
        "replicas": {"min": 2, "max": 5},
        "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "4", "memory": "4Gi"}},
        "gpu": 1,
        "batching": {"maxBatchSize": 16, "maxDelayMs": 3},
    },
}


def serving_envs(raw_spec: dict[str, Any]) -> list[dict[str, str]]:
    spec = specs.parse_spec(raw_spec)
    envs = []
    for track in manifests.active_tracks(spec):
        deployment = builders.deployment(OWNER, spec, track, ServingConfig())
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        envs.append({item["name"]: item["value"] for item in container["env"]})
    return envs


@pytest.mark.parametrize("case", sorted(SPECS))
def test_every_variable_on_a_serving_pod_is_a_setting_the_server_accepts(case: str) -> None:
    envs = serving_envs(SPECS[case])
    assert envs
    for env in envs:
        unknown = sorted(set(env) - SERVER_ENV)
        assert not unknown, f"the operator sets variables the server does not read: {unknown}"
        settings = Settings.model_validate({name.lower(): value for name, value in env.items()})
        assert str(settings.model_path) == env["MODEL_PATH"]


def test_the_representative_spec_exercises_every_optional_variable() -> None:
    stable, canary = serving_envs(SPECS["everything"])
    assert {"MODEL_SHA256", "MAX_BATCH_SIZE", "MAX_BATCH_DELAY_MS", "INTRA_OP_THREADS", "EXECUTION_PROVIDERS"} <= set(
        stable
    )
    assert canary["MODEL_PATH"].endswith("sentiment/v2/model.onnx")
