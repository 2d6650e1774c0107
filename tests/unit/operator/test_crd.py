"""The committed CRD is exactly what the model generates, and it is a structural schema."""

from __future__ import annotations

from typing import Any

import yaml

from modeldeploy_operator import crd


def test_committed_crd_matches_the_model() -> None:
    assert crd.CRD_PATH.read_text() == crd.render(), "run: python -m modeldeploy_operator.crd --write"


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Paths of schema nodes breaking the structural rules that matter here."""
    problems = []
    if "type" not in node and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path}: no type")
    if "default" in node:
        problems.append(f"{path}: has a default (defaults live in code)")
    for name, child in (node.get("properties") or {}).items():
        problems += _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _walk(node["additionalProperties"], f"{path}{{}}")
    return problems


def test_schema_is_structural_without_defaults() -> None:
    document = yaml.safe_load(crd.render())
    schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, "") == []


def test_every_spec_field_is_described() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = []

    def visit(node: dict[str, Any], path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            if not child.get("description"):
                missing.append(f"{path}.{name}")
            visit(child, f"{path}.{name}")
            if isinstance(child.get("items"), dict):
                visit(child["items"], f"{path}.{name}[]")

    visit(schema, "spec")
    assert missing == []


def test_names_columns_and_subresources() -> None:
    document = crd.build_crd()
    names = document["spec"]["names"]
    assert names["shortNames"] == ["md"]
    assert names["plural"] == "modeldeployments"
    assert "modeldeploy" in names["categories"]
    version = document["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Ready", "Model", "Canary", "Traffic", "Replicas", "URL", "Rollout", "Step", "Age"]
    wide = [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert wide == ["Routing"]  # `kubectl get md -o wide` only


def test_cel_rules_carry_messages_and_field_paths() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules: list[dict[str, str]] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            rules.extend(node.get("x-kubernetes-validations", []))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    assert len(rules) >= 15
    assert all(rule["message"] for rule in rules)
    field_paths = {r.get("fieldPath") for r in rules}
    assert {".min", ".model", ".limits", ".requests"} <= field_paths


def test_main_prints_the_crd(capsys: Any) -> None:
    assert crd.main([]) == 0
    assert capsys.readouterr().out == crd.render()
