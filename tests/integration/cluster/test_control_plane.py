"""The local control plane is a real Kubernetes: what the rest of the suite relies on works."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import localcluster
from localcluster import wait_for

REPO = Path(__file__).resolve().parents[3]


def pinned_kube_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("KUBE_VERSION is not pinned in hack/versions.env")


def get_json(cluster: localcluster.Cluster, *args: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return parsed


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.test}
spec:
  group: example.test
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"""


def test_kubectl_version_reports_the_pinned_release(cluster: localcluster.Cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["clientVersion"]["gitVersion"] == pinned_kube_version()
    assert versions["serverVersion"]["gitVersion"] == pinned_kube_version()


def test_custom_resource_round_trip(cluster: localcluster.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.wait_established("widgets.example.test", timeout=30)
    widget = {"apiVersion": "example.test/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(widget))
    stored = get_json(cluster, "widget", "w1", "-n", namespace)
    assert stored["spec"] == {"size": 3}
    assert "w1" in cluster.kubectl("get", "widgets", "-n", namespace).stdout


def deployment(name: str, replicas: int, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [{"name": "main", "image": "example.invalid/none:1"}]}
    if resources:
        pod_spec["containers"][0]["resources"] = resources
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def running_pods(cluster: localcluster.Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    pods = get_json(cluster, "pods", "-n", namespace, "-l", f"app={app}")["items"]
    return [p for p in pods if p["status"].get("phase") == "Running"]


def test_deployment_becomes_available_on_kwok_nodes(cluster: localcluster.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("web", 2)))
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/web", "--timeout=60s")
    pods = wait_for(
        "2 running pods",
        lambda: len(running_pods(cluster, namespace, "web")) == 2 and running_pods(cluster, namespace, "web"),
    )
    assert {p["spec"]["nodeName"] for p in pods} <= set(localcluster.CPU_NODES) | {localcluster.GPU_NODE}
    assert get_json(cluster, "deployment", "web", "-n", namespace)["status"]["availableReplicas"] == 2


def test_gpu_pod_lands_on_the_gpu_node(cluster: localcluster.Cluster, namespace: str) -> None:
    gpu = {"limits": {"nvidia.com/gpu": "1"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("trainer", 1, gpu)))
    pods = wait_for("a running GPU pod", lambda: running_pods(cluster, namespace, "trainer"))
    assert pods[0]["spec"]["nodeName"] == localcluster.GPU_NODE


def test_deleting_a_deployment_collects_its_replicaset_and_pods(cluster: localcluster.Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(deployment("gc", 2)))
    wait_for("2 running pods", lambda: len(running_pods(cluster, namespace, "gc")) == 2)
    assert get_json(cluster, "replicasets", "-n", namespace, "-l", "app=gc")["items"]
    cluster.kubectl("delete", "deployment", "gc", "-n", namespace, "--cascade=background")

    def collected() -> bool:
        left = get_json(cluster, "replicasets,pods", "-n", namespace, "-l", "app=gc")["items"]
        return not left

    wait_for("the garbage collector to remove the ReplicaSet and Pods", collected)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_nothing_left(pids: dict[str, int], ports: dict[str, int], workdir: Path) -> None:
    alive = {name: pid for name, pid in pids.items() if localcluster._pid_alive(pid)}
    assert not alive, f"processes still running: {alive}"
    busy = {name: port for name, port in ports.items() if not port_is_free(port)}
    assert not busy, f"ports still listening: {busy}"
    assert not workdir.exists(), f"{workdir} was not removed"


def test_a_cluster_stops_without_leaving_processes_ports_or_files(tmp_path: Path) -> None:
    workdir = tmp_path / "plane"
    plane = localcluster.LocalControlPlane(localcluster.ensure_binaries(), workdir)
    started = plane.start()
    pids = {name: p.pid for name, p in plane.processes.items()}
    ports = dict(plane.ports)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert started.kubectl("get", "nodes").returncode == 0
    plane.stop()
    assert_nothing_left(pids, ports, workdir)


def test_cluster_up_and_down_commands(tmp_path: Path) -> None:
    """What `make cluster-up` / `make cluster-down` run: a detached cluster, then nothing left."""
    state_dir = tmp_path / "state"
    script = str(REPO / "hack" / "localcluster.py")
    up = subprocess.run(
        [sys.executable, script, "up", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    state = json.loads((state_dir / "state.json").read_text())
    kubeconfig = next(line.split("=", 1)[1] for line in up.stdout.splitlines() if "KUBECONFIG=" in line)
    nodes = subprocess.run(
        [f"{state['bin_dir']}/kubectl", f"--kubeconfig={kubeconfig}", "get", "nodes"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert localcluster.GPU_NODE in nodes.stdout
    down = subprocess.run(
        [sys.executable, script, "down", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert_nothing_left(state["pids"], state["ports"], state_dir)
