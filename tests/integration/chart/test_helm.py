"""The Helm chart: lint clean, installs the CRD and a running operator, uninstalls cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

import localcluster
from modeldeploy_operator import config

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"
CRD_NAME = "modeldeployments.modeldeploy.dev"
PLUGIN_DIR = Path(sys.executable).parent


def helm(bin_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(bin_dir / "helm"), *args], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stderr}{result.stdout}"
    return result


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    return localcluster.ensure_binaries()


@pytest.mark.parametrize(
    "values",
    [[], ["--set", "serviceMonitor.enabled=true", "--set", "grafanaDashboard.enabled=true", "--set", "replicaCount=2"]],
    ids=["defaults", "everything-on"],
)
def test_helm_lint_is_clean(bin_dir: Path, values: list[str]) -> None:
    result = helm(bin_dir, "lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in result.stdout


def render(bin_dir: Path, *values: str) -> list[dict[str, Any]]:
    rendered = helm(bin_dir, "template", "md", str(CHART), "--namespace", "ops", "--include-crds", *values).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_rendered_chart_carries_the_single_sources(bin_dir: Path) -> None:
    docs = render(bin_dir, "--set", "serviceMonitor.enabled=true", "--set", "grafanaDashboard.enabled=true")
    by_kind = {doc["kind"]: doc for doc in docs if not doc["metadata"]["name"].endswith(("-edit", "-view"))}
    assert by_kind["CustomResourceDefinition"] == yaml.safe_load((REPO / "crds" / "modeldeployments.yaml").read_text())
    rules = yaml.safe_load((CHART / "files" / "clusterrole-rules.yaml").read_text())
    assert by_kind["ClusterRole"]["rules"] == rules
    dashboard = json.loads(by_kind["ConfigMap"]["data"]["modeldeploy.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    # Every serving pod, through no Service: a PodMonitor; the operator through its metrics Service.
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1") \
        == [("PodMonitor", "md-modeldeploy-servers"), ("ServiceMonitor", "md-modeldeploy-operator")]
    servers = next(doc for doc in docs if doc["kind"] == "PodMonitor")
    endpoint = servers["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert {(r["sourceLabels"][0], r["targetLabel"]) for r in endpoint["relabelings"]} == {
        ("__meta_kubernetes_pod_label_modeldeploy_dev_name", "modeldeployment"),
        ("__meta_kubernetes_pod_label_modeldeploy_dev_track", "track"),
        ("__meta_kubernetes_namespace", "namespace")}
    assert servers["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "modeldeploy"},
                                           "matchExpressions": [{"key": "modeldeploy.dev/track",
                                                                 "operator": "Exists"}]}
    assert servers["spec"]["namespaceSelector"] == {"any": True}


def test_the_operators_own_metrics_are_scraped_like_the_serving_pods(bin_dir: Path) -> None:
    docs = render(bin_dir, "--set", "serviceMonitor.enabled=true", "--set", "operator.metricsPort=9100")
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {"name": "MODELDEPLOY_METRICS_PORT", "value": "9100"} in container["env"]
    assert {"name": "metrics", "containerPort": 9100} in container["ports"]
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9100",
                                              "prometheus.io/path": "/metrics"}
    service = next(doc for doc in docs if doc["kind"] == "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics"}]
    assert service["spec"]["selector"] == pod["metadata"]["labels"]
    monitor = next(doc for doc in docs if doc["metadata"]["name"] == "md-modeldeploy-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # the rollouts' own namespace label wins
    # 0 switches it all off.
    docs = render(bin_dir, "--set", "serviceMonitor.enabled=true", "--set", "operator.metricsPort=0")
    assert not [doc for doc in docs if doc["kind"] == "Service"]
    assert not [doc for doc in docs if doc["kind"] == "ServiceMonitor"]
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "PodMonitor"] == ["md-modeldeploy-servers"]


def test_default_images_are_the_ones_the_charts_own_tag_published(bin_dir: Path) -> None:
    """Empty tags follow appVersion, so `helm install` of chart X.Y.Z runs the images the vX.Y.Z tag pushed;
    the operator's own defaults name the same serving images, and explicit values still win."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = chart["appVersion"]
    deployment = next(doc for doc in render(bin_dir) if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["image"] == f"ghcr.io/modeldeploy/modeldeploy-operator:{version}"
    assert env["MODELDEPLOY_SERVER_IMAGE"] == f"ghcr.io/modeldeploy/modeldeploy-server:{version}-cpu"
    assert env["MODELDEPLOY_GPU_SERVER_IMAGE"] == f"ghcr.io/modeldeploy/modeldeploy-server:{version}"
    assert (env["MODELDEPLOY_SERVER_IMAGE"], env["MODELDEPLOY_GPU_SERVER_IMAGE"]) == (
        config.DEFAULT_SERVER_IMAGE, config.DEFAULT_GPU_SERVER_IMAGE)
    assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == version
    deployment = next(doc for doc in render(bin_dir, "--set", "image.tag=dev", "--set", "serverImage.cpu=local/s:1",
                                            "--set", "serverImage.repository=mirror/server")
                      if doc["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["image"] == "ghcr.io/modeldeploy/modeldeploy-operator:dev"
    assert env["MODELDEPLOY_SERVER_IMAGE"] == "local/s:1"
    assert env["MODELDEPLOY_GPU_SERVER_IMAGE"] == f"mirror/server:{version}"


def test_operator_pod_meets_restricted_pod_security(bin_dir: Path) -> None:
    deployment = next(doc for doc in render(bin_dir) if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def get(cluster: localcluster.Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("get", *args, "-o", "json", check=False)


def test_helm_install_runs_the_operator_and_uninstall_keeps_only_the_crd(
    cluster: localcluster.Cluster, namespace: str
) -> None:
    # Pod Security "restricted" is enforced: the operator pod is admitted only if it complies.
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=true")
    release = f"md-{namespace}"[:40]
    try:
        helm(cluster.bin_dir, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "90s",
             env=cluster.env)  # fmt: skip
        crd = json.loads(get(cluster, "crd", CRD_NAME).stdout)
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}["Established"] == "True"
        deployment_name = f"{release}-modeldeploy" if "modeldeploy" not in release else release
        deployment = json.loads(get(cluster, "deployment", deployment_name, "-n", namespace).stdout)
        assert deployment["status"]["availableReplicas"] == 1
        pods = json.loads(get(cluster, "pods", "-n", namespace, "-l", "app.kubernetes.io/component=operator").stdout)
        assert [p["status"]["phase"] for p in pods["items"]] == ["Running"]
        assert pods["items"][0]["spec"]["nodeName"].startswith("kwok-")
        role = json.loads(get(cluster, "clusterrole", deployment_name).stdout)
        assert role["rules"] == yaml.safe_load((CHART / "files" / "clusterrole-rules.yaml").read_text())

        # The upgrade docs/operations.md gives: the chart's CRD applied over Helm's, then helm upgrade.
        crds = helm(cluster.bin_dir, "show", "crds", str(CHART)).stdout
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crds)
        helm(cluster.bin_dir, "upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values", "--wait",
             "--timeout", "90s", env=cluster.env)  # fmt: skip
        namespace_users_get_modeldeployments_through_the_built_in_roles(cluster, namespace)

        helm(cluster.bin_dir, "uninstall", release, "--namespace", namespace, "--wait", env=cluster.env)
        for kind, name, scope in (
            ("deployment", deployment_name, ["-n", namespace]),
            ("serviceaccount", deployment_name, ["-n", namespace]),
            ("clusterrole", deployment_name, []),
            ("clusterrolebinding", deployment_name, []),
            ("clusterrole", f"{deployment_name}-edit", []),
            ("clusterrole", f"{deployment_name}-view", []),
        ):
            assert get(cluster, kind, name, *scope).returncode != 0, f"{kind}/{name} left behind"
        assert get(cluster, "crd", CRD_NAME).returncode == 0, "the CRD must stay, as Helm does"
    finally:
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))


def bound_user(cluster: localcluster.Cluster, namespace: str, role: str) -> dict[str, str]:
    """The environment of a namespace user bound (RoleBinding) to a built-in ClusterRole and nothing else."""
    account = f"{role}-user"
    kubeconfig = cluster.service_account_kubeconfig(namespace, account)
    cluster.kubectl("create", "rolebinding", account, "-n", namespace, f"--clusterrole={role}",
                    f"--serviceaccount={namespace}:{account}")
    return {**cluster.env, "KUBECONFIG": str(kubeconfig),
            "PATH": f"{PLUGIN_DIR}{os.pathsep}{cluster.env['PATH']}"}


def as_user(cluster: localcluster.Cluster, env: dict[str, str], *args: str,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl, or with `modeldeploy` first the plugin through kubectl, as that user."""
    return subprocess.run([str(cluster.bin_dir / "kubectl"), *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=60, check=False)


def rolled_out_model(namespace: str) -> str:
    document = yaml.safe_load((REPO / "examples" / "modeldeployment.yaml").read_text())
    document["metadata"]["namespace"] = namespace
    document["spec"]["rollout"] = {"steps": [{"weight": 20, "pause": "1h"}]}
    return json.dumps(document)


def namespace_users_get_modeldeployments_through_the_built_in_roles(
    cluster: localcluster.Cluster, namespace: str
) -> None:
    """The chart's aggregated roles: `edit` creates a ModelDeployment and pauses its rollout; `view` reads
    it and is refused both; `admin` holds what `edit` does. The aggregation controller merges the rules
    a moment after the install."""
    edit, view = bound_user(cluster, namespace, "edit"), bound_user(cluster, namespace, "view")
    for _ in range(60):
        if as_user(cluster, edit, "auth", "can-i", "create", "modeldeployments.modeldeploy.dev",
                   "-n", namespace).returncode == 0:
            break
        time.sleep(1)
    created = as_user(cluster, edit, "apply", "-f", "-", stdin=rolled_out_model(namespace))
    assert created.returncode == 0, created.stderr
    name = yaml.safe_load((REPO / "examples" / "modeldeployment.yaml").read_text())["metadata"]["name"]
    # What the operator would report mid-rollout (no operator reconciles on kwok nodes): written as admin.
    cluster.kubectl("patch", "modeldeployment", name, "-n", namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"rollout": {
                        "phase": "Progressing", "step": 1,
                        "stable": {"pvc": "models", "path": "sentiment/v1/model.onnx"},
                        "canary": {"pvc": "models", "path": "sentiment/v2/model.onnx"}}}}))
    paused = as_user(cluster, edit, "modeldeploy", "rollout", "pause", name, "-n", namespace)
    assert paused.returncode == 0, paused.stderr
    command = json.loads(get(cluster, "modeldeployment", name, "-n", namespace).stdout)["status"]["rollout"]["command"]
    assert command["action"] == "pause"

    shown = as_user(cluster, view, "modeldeploy", "rollout", "status", name, "-n", namespace)
    assert shown.returncode == 0 and "Progressing" in shown.stdout, shown.stderr
    assert as_user(cluster, view, "get", "modeldeployments", "-n", namespace).returncode == 0
    refused = as_user(cluster, view, "modeldeploy", "rollout", "abort", name, "-n", namespace)
    assert refused.returncode == 1 and "403" in refused.stderr and "forbidden" in refused.stderr, refused.stderr
    denied = as_user(cluster, view, "apply", "-f", "-", stdin=rolled_out_model(namespace).replace(name, "other"))
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    # `admin` aggregates the same rules; a user bound to nothing gets none of them.
    admin = f"system:serviceaccount:{namespace}:admin-user"
    cluster.kubectl("create", "rolebinding", "admin-user", "-n", namespace, "--clusterrole=admin", f"--user={admin}")
    for who, expected in ((admin, "yes"), (f"system:serviceaccount:{namespace}:nobody", "no")):
        for verb, subresource in (("create", []), ("delete", []), ("patch", ["--subresource=status"])):
            answer = cluster.kubectl("auth", "can-i", verb, "modeldeployments.modeldeploy.dev", *subresource,
                                     "-n", namespace, f"--as={who}", check=False)
            assert answer.stdout.strip() == expected, f"{who} {verb} {subresource}: {answer.stdout}{answer.stderr}"
