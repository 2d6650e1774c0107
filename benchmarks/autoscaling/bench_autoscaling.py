"""Autoscaling on real pods: how fast added capacity serves, and how many replicas the load settles on.

    .venv/bin/python benchmarks/autoscaling/bench_autoscaling.py [--clients 6] [--seconds 120]

Needs root and the Debian packages of .ci/run (a real node), and the metrics stack's binaries
(hack/build-metrics-binaries.sh). One run, side by side on the same heavy model and the same bounded load
(`--clients` closed-loop clients through the Service):
- KEDA on concurrency (target 2 in-flight requests per pod) and a CPU HPA (target 50%);
- load start -> the autoscaler wants more -> the first added pod Ready -> that pod answered a request
  (its own modeldeploy_requests_total, read from the pod), target <= 30 s;
- the steady-state replica count over the load's last half against what the load needs
  (concurrency: ceil(clients / target), capped at max).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import localcluster
from localcluster import wait_for
from localkube import images
from localkube.metrics import MetricsStack
from testsupport.loadgen import Load
from testsupport.realpods import REAL_NODE_SELECTOR, write_heavy_model

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "bench"
MAX_REPLICAS = 4
CONCURRENCY_TARGET = 2


def kubectl_json(cluster: localcluster.Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("-n", NAMESPACE, "get", *args, "-o", "json").stdout)
    return result


def scaling_active(cluster: localcluster.Cluster, name: str) -> bool:
    conditions = kubectl_json(cluster, "md", name).get("status", {}).get("conditions", [])
    return any(c["type"] == "AutoscalingReady" and c["reason"] == "ScalingActive" for c in conditions)


def served_requests(pod_ip: str) -> float:
    """The pod's own count of answered inference requests, from its /metrics."""
    with urllib.request.urlopen(f"http://{pod_ip}:8080/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("modeldeploy_requests_total{") and 'outcome="ok"' in line)


def manifest(name: str, autoscaling: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"pvc": "models", "path": "heavy/model.onnx"},
                     "replicas": {"min": 1, "max": MAX_REPLICAS}, "autoscaling": autoscaling,
                     "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                   "limits": {"cpu": "100m", "memory": "512Mi"}},
                     "batching": {"maxBatchSize": 1}, "nodeSelector": REAL_NODE_SELECTOR}}


def measure(cluster: localcluster.Cluster, name: str, clients: int, seconds: float) -> dict[str, Any]:
    deployment = f"{name}-stable"
    service = kubectl_json(cluster, "service", name)
    url = f"http://{service['spec']['clusterIP']}:80"
    first_pods = {p["metadata"]["name"] for p in kubectl_json(cluster, "pods", "-l",
                                                              f"modeldeploy.dev/name={name}")["items"]}
    load = Load(lambda: [url], name, clients).start()
    started = time.monotonic()
    marks: dict[str, float] = {}
    counts: list[tuple[float, int]] = []
    try:
        while time.monotonic() - started < seconds:
            now = time.monotonic() - started
            body = kubectl_json(cluster, "deployment", deployment)
            wanted, ready = body["spec"].get("replicas", 1), body["status"].get("readyReplicas", 0)
            counts.append((now, ready))
            if wanted > 1:
                marks.setdefault("wants more", now)
            if ready > 1:
                marks.setdefault("added pod Ready", now)
            if "added pod serving" not in marks and ready > 1:
                for pod in kubectl_json(cluster, "pods", "-l", f"modeldeploy.dev/name={name}")["items"]:
                    ip = pod["status"].get("podIP")
                    if pod["metadata"]["name"] not in first_pods and ip and served_requests(ip) > 0:
                        marks["added pod serving"] = time.monotonic() - started
            time.sleep(1)
    finally:
        load.stop()
    steady = [ready for at, ready in counts if at >= seconds / 2]
    return {"marks": marks, "steady": statistics.median(steady) if steady else 0, "statuses": load.statuses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    bin_dir = localcluster.ensure_binaries(with_node=True)
    docker = images.ensure_docker()
    tags = images.project_images(docker)
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    plane = localcluster.LocalControlPlane(bin_dir, workdir, real_nodes=1)
    cluster = plane.start()
    operator: subprocess.Popen[bytes] | None = None
    stack = MetricsStack(cluster, workdir / "metrics")
    try:
        cluster.load_image(tags["server"])
        stack.start_metrics_server()
        stack.start_prometheus()
        stack.start_keda()
        cluster.kubectl("create", "namespace", NAMESPACE)
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(claim))
        wait_for("the claim", lambda: kubectl_json(cluster, "pvc", "models")["status"].get("phase") == "Bound")
        volume = kubectl_json(cluster, "pvc", "models")["spec"]["volumeName"]
        pv = json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)
        write_heavy_model(Path(pv["spec"]["hostPath"]["path"]), "heavy/model.onnx")
        env = {**cluster.env, "MODELDEPLOY_SERVER_IMAGE": tags["server"], "MODELDEPLOY_LIVENESS_ENDPOINT": "",
               "MODELDEPLOY_LEADER_ELECTION": "false", "MODELDEPLOY_METRICS_PORT": "0",
               "MODELDEPLOY_PROMETHEUS_URL": stack.prometheus_url,
               "MODELDEPLOY_METRICS_WINDOW": "20s"}
        operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator", "--namespace", NAMESPACE],
                                    env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "operator.log").open("wb"))
        cases = {"keda-concurrency": {"concurrency": CONCURRENCY_TARGET},
                 "hpa-cpu": {"cpuUtilization": 50}}
        results = {}
        for name, autoscaling in cases.items():
            cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=json.dumps(manifest(name, autoscaling)))
            wait_for(f"{name} autoscaling", functools.partial(scaling_active, cluster, name), timeout=300)
            results[name] = measure(cluster, name, args.clients, args.seconds)
            cluster.kubectl("-n", NAMESPACE, "delete", "md", name, "--wait=true")
        needed = min(MAX_REPLICAS, math.ceil(args.clients / CONCURRENCY_TARGET))
        print(f"\nload: {args.clients} closed-loop clients through the Service for {args.seconds:.0f} s; "
              f"heavy model, 100m CPU request and limit per pod, max {MAX_REPLICAS} replicas")
        print("| autoscaler | wants more | added pod Ready | added pod serving | steady replicas | needed |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, result in results.items():
            marks = result["marks"]
            cells = [f"{marks[k]:.0f} s" if k in marks else "never"
                     for k in ("wants more", "added pod Ready", "added pod serving")]
            need = str(needed) if name == "keda-concurrency" else "-"
            print(f"| {name} | {' | '.join(cells)} | {result['steady']:g} | {need} |")
            print(f"  request outcomes: {result['statuses']}", file=sys.stderr)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        stack.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
