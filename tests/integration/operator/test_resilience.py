"""The API server refuses bad resources; the operator survives kills, elects one leader, lives without Istio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import localcluster
from testsupport.operator_harness import Harness, install_istio, manifest

CASES = Path(__file__).resolve().parents[2] / "unit" / "operator"
INVALID = yaml.safe_load((CASES / "invalid_specs.yaml").read_text())
VALID = yaml.safe_load((CASES / "valid_specs.yaml").read_text())


SPEC_CASES = [(case, False) for case in INVALID] + [(case, True) for case in VALID]


@pytest.mark.parametrize(("case", "admitted"), SPEC_CASES, ids=[c["case"] for c, _ in SPEC_CASES])
def test_the_api_server_and_the_model_apply_the_same_rules(
    cluster: localcluster.Cluster, namespace: str, operator_crds: None, case: dict[str, Any], admitted: bool
) -> None:
    """The tables the unit tests run against the pydantic model: refused naming the field, or admitted."""
    document = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "case", "namespace": namespace}, "spec": case["spec"]}
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(document), check=False)
    if admitted:
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0, result.stdout
    assert f"{case['field']}:" in result.stderr
    assert case["message"] in result.stderr


@pytest.mark.parametrize("name", ["1sentiment", "x" * 57])
def test_names_that_cannot_name_the_children_are_refused(
    cluster: localcluster.Cluster, namespace: str, operator_crds: None, name: str
) -> None:
    document = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"model": {"pvc": "models", "path": "a.onnx"}}}
    refused = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(document), check=False)
    assert refused.returncode != 0
    assert "metadata.name must" in refused.stderr


def owned_children(h: Harness) -> list[dict[str, Any]]:
    found = h.get("deployments,horizontalpodautoscalers,services,poddisruptionbudgets,"
                  "virtualservices.networking.istio.io,destinationrules.networking.istio.io",
                  "-l", "app.kubernetes.io/managed-by=modeldeploy")
    items: list[dict[str, Any]] = found["items"]
    return items


def test_killed_mid_reconcile_converges_without_duplicates_or_orphans(harness: Harness, istio: None) -> None:
    h = harness
    h.bound_claim()
    names = [f"model-{i}" for i in range(6)]
    first = h.start_operator()
    h.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                    "items": [manifest(name) for name in names]}))
    h.eventually(lambda: owned_children(h), 30, "the first child")
    first.kill()
    survivors = len(owned_children(h))
    h.start_operator()
    expected_per_resource = 8
    h.eventually(lambda: len(owned_children(h)) == expected_per_resource * len(names), 60, "every child")
    for name in names:
        h.wait_condition(name, "Ready", "True", timeout=120)
    children = owned_children(h)
    keys = [(c["kind"], c["metadata"]["name"]) for c in children]
    assert len(keys) == len(set(keys)) == 48, f"{survivors} children existed at the kill"
    uids = {n: h.md(n)["metadata"]["uid"] for n in names}
    for child in children:
        owner = child["metadata"]["labels"]["modeldeploy.dev/name"]
        assert [ref["uid"] for ref in child["metadata"]["ownerReferences"]] == [uids[owner]]


def test_one_leader_acts_and_a_standby_takes_over(harness: Harness, istio: None) -> None:
    h = harness
    h.bound_claim()
    fast_lease = {"MODELDEPLOY_LEASE_DURATION_SECONDS": "4", "MODELDEPLOY_RENEW_DEADLINE_SECONDS": "3",
                  "MODELDEPLOY_RETRY_PERIOD_SECONDS": "0.5"}
    first = h.start_operator(**fast_lease)
    h.eventually(lambda: "became the leader" in first.log(), 30, "the first operator to lead")
    second = h.start_operator(**fast_lease)
    h.apply_manifest()
    h.wait_condition("sentiment", "Ready", "True", timeout=90)
    lease = h.get("lease", "modeldeploy-operator")
    assert lease["spec"]["holderIdentity"] in first.log()
    assert "became the leader" not in second.log()
    assert second.running()

    first.kill()  # no graceful release: the standby must wait out the lease
    h.eventually(lambda: "became the leader" in second.log(), 30, "the standby to take over")
    h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", '{"spec":{"canary":{"trafficPercent":50}}}')

    def weights() -> dict[str, int]:
        vs = h.get("virtualservice", "sentiment")
        return {r["destination"]["subset"]: r["weight"] for r in vs["spec"]["http"][0]["route"]}

    h.eventually(lambda: weights() == {"stable": 50, "canary": 50}, 30, "the new leader to act")
    assert h.get("lease", "modeldeploy-operator")["spec"]["holderIdentity"] in second.log()


def test_without_istio_routing_says_so_and_serving_works(harness: Harness, no_istio: None) -> None:
    h = harness
    h.start_operator()
    h.bound_claim()
    h.apply_manifest()
    routing = h.wait_condition("sentiment", "RoutingReady", "False", "NoRouterInstalled")
    assert "neither Istio (networking.istio.io) nor the Gateway API" in routing["message"]
    h.wait_condition("sentiment", "Ready", "True", timeout=90)
    service = h.get("service", "sentiment")
    assert "modeldeploy.dev/track" not in service["spec"]["selector"]  # both tracks serve, split by pods
    traffic = h.md()["status"]["traffic"]
    assert traffic == {"stable": 50, "canary": 50}  # 2 ready pods each: what a plain Service really does

    h.kubectl("patch", "md", "sentiment", "--type", "merge", "-p", '{"spec":{"canary":{"trafficPercent":0}}}')
    h.eventually(lambda: h.get("service", "sentiment")["spec"]["selector"].get("modeldeploy.dev/track") == "stable",
                 30, "service to select the stable pods only")
    h.eventually(lambda: h.md()["status"]["traffic"] == {"stable": 100, "canary": 0}, 30, "traffic 100/0")

    # Istio installed later: routing switches on without a restart.
    install_istio(h.cluster)
    h.wait_condition("sentiment", "RoutingReady", "True", "WeightsApplied")
    assert h.get_or_none("virtualservice", "sentiment") is not None
    h.eventually(lambda: "modeldeploy.dev/track" not in h.get("service", "sentiment")["spec"]["selector"],
                 30, "service to select both tracks again")
