"""The operator installed the way users install it: `helm install` of the chart with the operator image
built from Dockerfile.operator, running on the real node in a namespace that enforces Pod Security
"restricted", talking to the API server through its ServiceAccount and electing a leader with a Lease.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import localcluster
from testsupport.realpods import NAME, REAL_NODE_SELECTOR, close, expected_output, infer, model_deployment, write_model

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "modeldeploy"


def helm(cluster: localcluster.Cluster, *args: str) -> str:
    done = subprocess.run([str(cluster.bin_dir / "helm"), *args], capture_output=True, text=True,
                          env=cluster.env, timeout=300, check=False)
    assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}{done.stdout}"
    return done.stdout


def get(cluster: localcluster.Cluster, namespace: str, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-n", namespace, "-o", "json").stdout)
    return found


def wait(cluster: localcluster.Cluster, what: str, probe: Any, timeout: float = 180.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (KeyError, IndexError, OSError, localcluster.ClusterError) as error:
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def test_helm_installed_operator_serves_a_model_under_restricted_pod_security(
    real_cluster: localcluster.Cluster, real_namespace: str, real_images: dict[str, str]
) -> None:
    cluster, namespace = real_cluster, real_namespace
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    repository, tag = real_images["operator"].rsplit(":", 1)
    release = "md"
    escaped = {key.replace(".", "\\."): value for key, value in REAL_NODE_SELECTOR.items()}
    selector = ",".join(f"nodeSelector.{key}={value}" for key, value in escaped.items())
    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "180s",
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
         "--set", f"serverImage.cpu={real_images['server']}", "--set", "serverImage.pullPolicy=Never",
         "--set", f"operator.watchNamespaces={{{namespace}}}", "--set-string", selector)
    try:
        pods = get(cluster, namespace, "pods", "-l", "app.kubernetes.io/component=operator")["items"]
        assert len(pods) == 1 and pods[0]["spec"]["nodeName"].startswith(localcluster.REAL_NODE_PREFIX)
        assert pods[0]["status"]["containerStatuses"][0]["state"].get("running")
        # In-cluster config through the `kubernetes` Service, and a leader Lease held by the pod.
        lease = wait(cluster, "the leader Lease",
                     lambda: get(cluster, namespace, "lease")["items"][0]["spec"].get("holderIdentity") and
                     get(cluster, namespace, "lease")["items"][0])
        assert lease["spec"]["holderIdentity"]

        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))
        wait(cluster, "the claim to bind",
             lambda: get(cluster, namespace, "pvc", "models")["status"]["phase"] == "Bound")
        volume = get(cluster, namespace, "pvc", "models")["spec"]["volumeName"]
        folder = Path(json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)["spec"]["hostPath"]["path"])
        write_model(folder, "sentiment/v1/model.onnx", seed=0)
        cluster.kubectl("apply", "-n", namespace, "-f", "-",
                        input=json.dumps(model_deployment("sentiment/v1/model.onnx")))

        def ready() -> bool:
            conditions = get(cluster, namespace, "md", NAME)["status"]["conditions"]
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait(cluster, "Ready=True from the in-cluster operator", ready)
        service = get(cluster, namespace, "service", NAME)["spec"]
        # Ready follows the pods; kube-proxy programs the Service's endpoints a moment later.
        url = f"http://{service['clusterIP']}:{service['ports'][0]['port']}"
        answer = wait(cluster, "the Service to answer", lambda: infer(url), timeout=30)
        assert close(answer, expected_output(folder, "sentiment/v1/model.onnx"))
        logs = cluster.kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"]).stdout
        assert "forbidden" not in logs.lower(), logs[-3000:]
    finally:
        cluster.kubectl("delete", "md", "--all", "-n", namespace, "--wait=true", "--timeout=60s", check=False)
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait")
    assert not get(cluster, namespace, "deployments")["items"]
