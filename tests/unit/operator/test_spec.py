"""The pydantic model: defaults in code, the same refusals as the CRD's CEL rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modeldeploy_operator import spec as specs

INVALID = yaml.safe_load((Path(__file__).parent / "invalid_specs.yaml").read_text())
VALID = yaml.safe_load((Path(__file__).parent / "valid_specs.yaml").read_text())


def test_minimal_spec_gets_defaults_in_code() -> None:
    spec = specs.parse_spec({"model": {"pvc": "models", "path": "m/model.onnx"}})
    assert spec.stable_replicas.effective_min == 1
    assert spec.stable_replicas.effective_max == 1
    assert not spec.stable_replicas.autoscaled
    assert spec.gpus == 0
    assert spec.canary_weight == 0
    assert spec.cpu_target == 70
    assert spec.effective_resources.requests == {"cpu": "500m", "memory": "1Gi"}
    # Defaults are never materialized into what would be written back.
    assert spec.model_dump(by_alias=True, exclude_none=True) == {"model": {"pvc": "models", "path": "m/model.onnx"}}


def test_canary_defaults_to_no_traffic_and_stable_replicas() -> None:
    spec = specs.parse_spec({
        "model": {"pvc": "models", "path": "a.onnx"},
        "canary": {"model": {"pvc": "models", "path": "b.onnx"}},
        "replicas": {"min": 2, "max": 5},
    })
    assert spec.canary_weight == 0
    assert spec.canary_replicas.effective_max == 5
    assert spec.stable_replicas.autoscaled


def test_max_defaults_to_min() -> None:
    spec = specs.parse_spec({"model": {"pvc": "m", "path": "a.onnx"}, "replicas": {"min": 3}})
    assert (spec.stable_replicas.effective_min, spec.stable_replicas.effective_max) == (3, 3)


@pytest.mark.parametrize("case", INVALID, ids=[c["case"] for c in INVALID])
def test_invalid_specs_are_refused_with_the_rule_message(case: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        specs.parse_spec(case["spec"])
    assert case["message"] in str(raised.value)
    field_path = re.sub(r"\[(\d+)\]", r".\1", case["field"].removeprefix("spec.")).split(".")
    locations = [".".join(str(p) for p in e["loc"]) for e in raised.value.errors(include_url=False)]
    # pydantic reports model-level rules at the parent, field rules at the field itself.
    assert any(".".join(field_path).startswith(loc) or loc.startswith(".".join(field_path[:-1]))
               for loc in locations), locations


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        specs.parse_spec({"model": {"pvc": "m", "path": "a.onnx"}, "replica": {"min": 2}})


@pytest.mark.parametrize("name", ["sentiment", "a", "model-1"])
def test_good_names(name: str) -> None:
    specs.check_name(name)


@pytest.mark.parametrize("name", ["1model", "Model", "a.b", "x" * 57, "ends-"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="DNS label"):
        specs.check_name(name)


def test_sha256_accepts_both_cases() -> None:
    digest = "AB" * 32
    assert specs.parse_spec({"model": {"pvc": "m", "path": "a.onnx", "sha256": digest}}).model.sha256 == digest


@pytest.mark.parametrize("case", VALID, ids=[c["case"] for c in VALID])
def test_specs_the_api_server_admits_are_accepted(case: dict[str, Any]) -> None:
    assert isinstance(specs.validate("sentiment", case["spec"]), specs.ModelDeploymentSpec)


@pytest.mark.parametrize("name", ["sentiment\n", "sentiment-", "Sentiment"])
def test_names_are_checked_to_the_true_end(name: str) -> None:
    assert isinstance(specs.validate(name, {"model": {"pvc": "models", "path": "a.onnx"}}), str)


def test_python_patterns_end_where_re2_ends() -> None:
    assert specs.python_regex(specs.DOTDOT_PATTERN).search("models/..\n") is None
    assert specs.python_regex(specs.DOTDOT_PATTERN).search("models/..") is not None
    assert specs.python_regex(specs.SHA256_PATTERN).search("a" * 64 + "\n") is None


def test_routing_defaults_to_auto_with_no_headers_or_mirror() -> None:
    spec = specs.parse_spec({"model": {"pvc": "m", "path": "a.onnx"},
                             "canary": {"model": {"pvc": "m", "path": "b.onnx"}, "trafficPercent": 5}})
    assert spec.routing_backend == "Auto"
    assert (spec.hosts, spec.gateways, spec.canary_headers, spec.mirror_percent) == ([], [], [], 0)


def test_header_matches_and_shadow_traffic_parse() -> None:
    spec = specs.parse_spec({
        "model": {"pvc": "m", "path": "a.onnx"},
        "canary": {"model": {"pvc": "m", "path": "b.onnx"}, "mirrorPercent": 25,
                   "headers": [{"name": "x-model-variant", "exact": "v2"}, {"name": "x-cohort", "regex": "^beta"}]},
        "routing": {"backend": "GatewayAPI", "gateways": ["public", "edge/public"], "hosts": ["*.example.com"]},
    })
    assert spec.mirror_percent == 25
    assert [h.describe() for h in spec.canary_headers] == ["x-model-variant: v2", "x-cohort ~ ^beta"]
    assert spec.gateways == ["public", "edge/public"]
    with pytest.raises(ValidationError, match="Input should be 'Auto', 'Istio', 'GatewayAPI' or 'None'"):
        specs.parse_spec({"model": {"pvc": "m", "path": "a.onnx"}, "routing": {"backend": "Linkerd"}})
