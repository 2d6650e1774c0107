"""`kubectl modeldeploy` and the examples against the real API server.

The plugin runs as users run it: the installed `kubectl-modeldeploy` executable, found by
kubectl's plugin lookup on PATH or called directly, with kubeconfig, context namespace and RBAC
as they come. Results are read back with `kubectl get -o json`. No operator runs here: the
status the `status` command shows is written with `kubectl patch --subresource=status`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import lupa.lua51
import pytest
import yaml

import localcluster

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
CRD = REPO / "crds" / "modeldeployments.yaml"
PLUGIN_DIR = Path(sys.executable).parent
HEALTH_KEY = "resource.customizations.health.modeldeploy.dev_ModelDeployment"
DIGEST = "ab" * 32

Cluster = localcluster.Cluster


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    """The ModelDeployment API, installed from the generated CRD (idempotent across test modules)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_established("modeldeployments.modeldeploy.dev")


def plugin_env(cluster: Cluster, **overrides: str) -> dict[str, str]:
    executable = PLUGIN_DIR / "kubectl-modeldeploy"
    assert executable.exists(), f"{executable} missing: install the project (pip install -e .)"
    env = {**cluster.env, "PATH": f"{PLUGIN_DIR}{os.pathsep}{cluster.env['PATH']}"}
    env.update(overrides)
    return env


def kubectl_modeldeploy(
    cluster: Cluster, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`kubectl modeldeploy ARGS`: kubectl finds the plugin on PATH and hands it the arguments."""
    return subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "modeldeploy", *args],
        capture_output=True,
        text=True,
        env=env or plugin_env(cluster),
        timeout=60,
        check=False,
    )


def plugin(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `kubectl-modeldeploy` executable itself."""
    return subprocess.run(
        [str(PLUGIN_DIR / "kubectl-modeldeploy"), *args],
        capture_output=True,
        text=True,
        env=env or plugin_env(cluster),
        timeout=60,
        check=False,
    )


def get_md(cluster: Cluster, namespace: str, name: str = "sentiment") -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        cluster.kubectl("get", "modeldeployment", name, "-n", namespace, "-o", "json").stdout
    )
    return result


def apply_example(
    cluster: Cluster, namespace: str, name: str, rename: str | None = None, **spec_changes: Any
) -> dict[str, Any]:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    document["spec"].update(spec_changes)
    if rename:
        document["metadata"]["name"] = rename
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(document))
    return get_md(cluster, namespace, document["metadata"]["name"])


def set_status(cluster: Cluster, namespace: str, status: dict[str, Any], name: str = "sentiment") -> None:
    cluster.kubectl(
        "patch",
        "modeldeployment",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def serving_status(generation: int, namespace: str) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Serving",
                "message": "stable serving on 2/2 replicas",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
            {
                "type": "CanaryReady",
                "status": "False",
                "reason": "ReplicasNotReady",
                "message": "0/1 replicas ready",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            },
        ],
        "traffic": {"stable": 90, "canary": 10},
        "url": f"http://sentiment.{namespace}.svc.cluster.local",
        "readyReplicas": 2,
        "desiredReplicas": 3,
    }


def mark_canary(cluster: Cluster, namespace: str, ready: bool) -> dict[str, Any]:
    """Write the status an operator would report for the current generation of `sentiment`."""
    generation = get_md(cluster, namespace)["metadata"]["generation"]
    status = serving_status(generation, namespace)
    status["conditions"][1].update(
        {"status": "True", "reason": "ReplicasReady", "message": "1/1 replicas ready"}
        if ready
        else {"status": "False", "reason": "ServerTerminated", "message": "sha256 mismatch for the canary model"}
    )
    set_status(cluster, namespace, status)
    return get_md(cluster, namespace)


# --- the examples ----------------------------------------------------------------------------

MANIFESTS = ["pvc.yaml", "modeldeployment.yaml", "modeldeployment-gpu.yaml", "modeldeployment-canary.yaml"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_example_passes_server_side_dry_run(cluster: Cluster, namespace: str, crd: None, name: str) -> None:
    result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(EXAMPLES / name))
    assert "(server dry run)" in result.stdout


def test_dry_run_really_validates(cluster: Cluster, namespace: str, crd: None) -> None:
    """Control for the test above: a broken copy of the canary example is refused."""
    document = yaml.safe_load((EXAMPLES / "modeldeployment-canary.yaml").read_text())
    document["spec"]["canary"]["trafficPercent"] = 150
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(document), check=False
    )
    assert result.returncode != 0 and "trafficPercent" in result.stderr


def test_argocd_cm_patch_installs_a_health_check_that_reads_live_objects(
    cluster: Cluster, namespace: str, crd: None
) -> None:
    """The argocd-cm patch applied to a real ConfigMap; its script judges an object read from the API."""
    cluster.kubectl("create", "configmap", "argocd-cm", "-n", namespace)
    cluster.kubectl(
        "patch",
        "configmap",
        "argocd-cm",
        "-n",
        namespace,
        "--type=merge",
        "--patch-file",
        str(EXAMPLES / "argocd-cm-health-patch.yaml"),
    )
    config_map = json.loads(cluster.kubectl("get", "configmap", "argocd-cm", "-n", namespace, "-o", "json").stdout)
    script = config_map["data"][HEALTH_KEY]

    def health(resource: dict[str, Any]) -> tuple[str, str]:
        lua = lupa.lua51.LuaRuntime()
        lua.globals().obj = lua.table_from(resource, recursive=True)
        result = lua.execute(script)
        return str(result["status"]), str(result["message"])

    created = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    generation = created["metadata"]["generation"]
    assert health(created) == ("Progressing", f"waiting for the operator to observe generation {generation}")
    set_status(cluster, namespace, serving_status(generation, namespace))
    status, message = health(get_md(cluster, namespace))
    assert status == "Healthy" and "traffic 90/10" in message


# --- status ----------------------------------------------------------------------------------


def test_status_before_and_after_the_operator_reports(cluster: Cluster, namespace: str, crd: None) -> None:
    created = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    before = kubectl_modeldeploy(cluster, "status", "sentiment", "-n", namespace)
    assert before.returncode == 0, before.stderr
    assert f"{namespace}/sentiment" in before.stdout
    assert "Unknown (no Ready condition yet)" in before.stdout
    assert "Warning: the operator has not observed this resource yet" in before.stdout
    assert "sentiment/v2/model.onnx on claim models, trafficPercent 10" in before.stdout

    generation = created["metadata"]["generation"]
    set_status(cluster, namespace, serving_status(generation, namespace))
    after = kubectl_modeldeploy(cluster, "status", "sentiment", "-n", namespace)
    assert after.returncode == 0, after.stderr
    lines = after.stdout.splitlines()
    assert "Warning:" not in after.stdout
    assert any(line.startswith("Ready:") and "True (Serving)" in line for line in lines)
    assert any(line.startswith("Traffic:") and "stable 90%, canary 10%" in line for line in lines)
    assert any(line.startswith("Replicas:") and "2/3 ready" in line for line in lines)
    assert any(line.startswith("URL:") and f"http://sentiment.{namespace}.svc.cluster.local" in line for line in lines)
    table = lines[lines.index("Conditions:") + 1 :]
    assert table[0].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert table[1].split()[:3] == ["Ready", "True", "Serving"]
    assert table[2].split()[:3] == ["CanaryReady", "False", "ReplicasNotReady"]
    assert table[2].endswith("0/1 replicas ready")


def test_status_shows_generation_lag(cluster: Cluster, namespace: str, crd: None) -> None:
    created = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    set_status(cluster, namespace, serving_status(created["metadata"]["generation"], namespace))
    cluster.kubectl(
        "patch", "md", "sentiment", "-n", namespace, "--type=merge", "-p", '{"spec":{"canary":{"trafficPercent":40}}}'
    )
    generation = get_md(cluster, namespace)["metadata"]["generation"]
    result = plugin(cluster, "status", "sentiment", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert f"status describes generation {generation - 1}, the spec is at generation {generation}" in result.stdout


def test_namespace_comes_from_kubeconfig_context_via_kubeconfig_env(
    cluster: Cluster, namespace: str, crd: None, tmp_path: Path
) -> None:
    name = f"ctx-{namespace}"  # unique, so nothing of that name can sit in `default`
    apply_example(cluster, namespace, "modeldeployment.yaml", rename=name)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig.read_text())
    cluster.kubectl("config", "set-context", "--current", f"--namespace={namespace}", kubeconfig=kubeconfig)
    env = plugin_env(cluster, KUBECONFIG=str(kubeconfig))
    result = kubectl_modeldeploy(cluster, "status", name, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{namespace}/{name}" in result.stdout
    # --kubeconfig wins over KUBECONFIG: the admin file has no namespace, so this looks in default.
    elsewhere = plugin(cluster, "--kubeconfig", str(cluster.kubeconfig), "status", name, env=env)
    assert elsewhere.returncode == 1
    assert f'modeldeployments.modeldeploy.dev "{name}" not found in namespace "default"' in elsewhere.stderr


def test_missing_resource_is_a_clear_error(cluster: Cluster, namespace: str, crd: None) -> None:
    for command in (["status"], ["promote"], ["rollback"], ["rollback", "--remove"]):
        result = kubectl_modeldeploy(cluster, *command, "no-such-model", "-n", namespace)
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == f'error: modeldeployments.modeldeploy.dev "no-such-model" not found in namespace "{namespace}"'
        )
        assert result.stdout == ""


# --- promote ---------------------------------------------------------------------------------


def test_promote_makes_the_canary_stable_in_one_patch(cluster: Cluster, namespace: str, crd: None) -> None:
    stable_model = {"pvc": "models", "path": "sentiment/v1/model.onnx", "sha256": DIGEST}
    apply_example(cluster, namespace, "modeldeployment-canary.yaml", model=stable_model)
    before = mark_canary(cluster, namespace, ready=True)
    canary_model = before["spec"]["canary"]["model"]
    result = kubectl_modeldeploy(cluster, "promote", "sentiment", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert "promoted: model is now sentiment/v2/model.onnx on claim models; canary removed" in result.stdout

    after = get_md(cluster, namespace)
    assert after["spec"]["model"] == canary_model  # the stable digest does not leak onto the new model
    assert "canary" not in after["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1  # one write
    unchanged = {key: value for key, value in before["spec"].items() if key not in {"model", "canary"}}
    assert {key: value for key, value in after["spec"].items() if key in unchanged} == unchanged


def test_promote_without_canary_fails_and_changes_nothing(cluster: Cluster, namespace: str, crd: None) -> None:
    before = apply_example(cluster, namespace, "modeldeployment.yaml")
    result = kubectl_modeldeploy(cluster, "promote", "sentiment", "-n", namespace)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: ModelDeployment {namespace}/sentiment has no canary to promote"
    assert get_md(cluster, namespace)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_promote_dry_run_prints_the_kubectl_patch_that_does_the_same(
    cluster: Cluster, namespace: str, crd: None
) -> None:
    apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    before = mark_canary(cluster, namespace, ready=True)
    result = plugin(cluster, "promote", "sentiment", "-n", namespace, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert get_md(cluster, namespace)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    words = shlex.split(result.stdout)
    assert words[:3] == ["kubectl", "patch", "md"]
    cluster.kubectl(*words[1:])
    after = get_md(cluster, namespace)
    assert after["spec"]["model"] == before["spec"]["canary"]["model"] and "canary" not in after["spec"]


def test_promote_refuses_an_unready_canary_unless_forced(cluster: Cluster, namespace: str, crd: None) -> None:
    apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    before = mark_canary(cluster, namespace, ready=False)
    refused = kubectl_modeldeploy(cluster, "promote", "sentiment", "-n", namespace)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"error: not promoting {namespace}/sentiment: the canary is not ready (CanaryReady False, "
        "ServerTerminated: sha256 mismatch for the canary model); use --force to promote anyway"
    )
    assert get_md(cluster, namespace)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    forced = kubectl_modeldeploy(cluster, "promote", "sentiment", "--force", "-n", namespace)
    assert forced.returncode == 0, forced.stderr
    assert get_md(cluster, namespace)["spec"]["model"] == before["spec"]["canary"]["model"]


def test_promote_refuses_a_spec_the_operator_has_not_seen(cluster: Cluster, namespace: str, crd: None) -> None:
    apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    mark_canary(cluster, namespace, ready=True)
    cluster.kubectl(
        "patch", "md", "sentiment", "-n", namespace, "--type=merge", "-p", '{"spec":{"canary":{"trafficPercent":50}}}'
    )
    refused = plugin(cluster, "promote", "sentiment", "-n", namespace)
    assert refused.returncode == 1
    assert "the operator has not caught up yet" in refused.stderr and "--force" in refused.stderr


# --- rollback --------------------------------------------------------------------------------


def test_rollback_sends_no_traffic_to_the_canary_and_keeps_it(cluster: Cluster, namespace: str, crd: None) -> None:
    before = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    result = kubectl_modeldeploy(cluster, "rollback", "sentiment", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert "rolled back: canary trafficPercent set to 0" in result.stdout
    after = get_md(cluster, namespace)
    assert after["spec"]["canary"] == {**before["spec"]["canary"], "trafficPercent": 0}
    assert after["spec"]["model"] == before["spec"]["model"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1


def test_rollback_remove_deletes_the_canary(cluster: Cluster, namespace: str, crd: None) -> None:
    before = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    result = kubectl_modeldeploy(cluster, "rollback", "sentiment", "--remove", "-n", namespace)
    assert result.returncode == 0, result.stderr
    assert "rolled back: canary removed" in result.stdout
    after = get_md(cluster, namespace)
    assert "canary" not in after["spec"]
    assert after["spec"]["model"] == before["spec"]["model"]


def test_rollback_without_canary_fails(cluster: Cluster, namespace: str, crd: None) -> None:
    apply_example(cluster, namespace, "modeldeployment.yaml")
    for extra in ([], ["--remove"]):
        result = kubectl_modeldeploy(cluster, "rollback", "sentiment", *extra, "-n", namespace)
        assert result.returncode == 1
        assert result.stderr.strip() == f"error: ModelDeployment {namespace}/sentiment has no canary to roll back"


# --- RBAC: the plugin needs exactly what `kubectl patch` needs --------------------------------


def grant(cluster: Cluster, namespace: str, account: str, verbs: list[str]) -> Path:
    kubeconfig = cluster.service_account_kubeconfig(namespace, account)
    cluster.kubectl(
        "create", "role", account, "-n", namespace, f"--verb={','.join(verbs)}",
        "--resource=modeldeployments.modeldeploy.dev",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", account, "-n", namespace, f"--role={account}",
        f"--serviceaccount={namespace}:{account}",
    )  # fmt: skip
    return kubeconfig


def test_get_and_patch_are_all_the_plugin_needs(cluster: Cluster, namespace: str, crd: None) -> None:
    apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    mark_canary(cluster, namespace, ready=True)
    kubeconfig = grant(cluster, namespace, "release-manager", ["get", "patch"])
    result = plugin(cluster, "--kubeconfig", str(kubeconfig), "-n", namespace, "promote", "sentiment")
    assert result.returncode == 0, result.stderr
    assert "canary" not in get_md(cluster, namespace)["spec"]


def test_without_patch_permission_the_write_is_refused(cluster: Cluster, namespace: str, crd: None) -> None:
    before = apply_example(cluster, namespace, "modeldeployment-canary.yaml")
    kubeconfig = grant(cluster, namespace, "viewer", ["get"])
    status = plugin(cluster, "--kubeconfig", str(kubeconfig), "-n", namespace, "status", "sentiment")
    assert status.returncode == 0, status.stderr
    result = plugin(cluster, "--kubeconfig", str(kubeconfig), "-n", namespace, "rollback", "sentiment")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot patch modeldeployments.modeldeploy.dev")
    assert "403" in result.stderr and "forbidden" in result.stderr
    assert get_md(cluster, namespace)["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
