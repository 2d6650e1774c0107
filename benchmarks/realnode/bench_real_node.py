"""Real pods on the local cluster: start-up, apply -> Ready, image size, latency through the Service.

    .venv/bin/python benchmarks/realnode/bench_real_node.py [--requests 1000]

Needs root and the Debian packages of .ci/run. Measures, side by side in one run:
- time to a usable cluster with a real node, cold (empty image caches: debootstrap + docker build) is
  reported from the image build step; warm = binaries and images cached;
- apply -> Ready of the tiny model on real pods, and the pod's own start -> ready;
- the CPU serving image's size;
- p50/p99 of sequential v2 requests through the Service's ClusterIP (kube-proxy) vs straight to the pod.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import localcluster
from localkube import images
from testsupport.realpods import tiny

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "bench"
NAME = "sentiment"


def timed(what: str, action: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = action()
    elapsed = time.monotonic() - started
    print(f"{what}: {elapsed:.1f}s", flush=True)
    return elapsed, result


def wait(probe: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f}s")


def get(cluster: localcluster.Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-n", NAMESPACE, "-o", "json").stdout)
    return result


def latencies_ms(url: str, body: bytes, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    bin_dir = localcluster.ensure_binaries(with_node=True)
    docker = images.ensure_docker()
    build_s, tags = timed("images (serving CPU + operator) built or found in the cache",
                          lambda: images.project_images(docker))
    size_mb = images.image_size_bytes(docker, tags["server"]) / 1e6
    print(f"serving image (CPU) size: {size_mb:.0f} MB (target <= 400 MB)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-realnode-"))
    plane = localcluster.LocalControlPlane(bin_dir, workdir, real_nodes=1)
    up_s, cluster = timed("cluster with a real node usable (warm caches)", plane.start)
    operator: subprocess.Popen[bytes] | None = None
    try:
        load_s, _ = timed("serving image loaded into the node", lambda: cluster.load_image(tags["server"]))
        cluster.kubectl("create", "namespace", NAMESPACE)
        cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(claim))
        wait(lambda: get(cluster, "pvc", "models")["status"].get("phase") == "Bound")
        volume = get(cluster, "pvc", "models")["spec"]["volumeName"]
        folder = Path(json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)["spec"]["hostPath"]["path"])
        model = folder / NAME / "v1" / "model.onnx"
        model.parent.mkdir(parents=True)
        data = tiny.build_model(0).SerializeToString()
        model.write_bytes(data)
        model.chmod(0o644)
        env = {**cluster.env, "MODELDEPLOY_SERVER_IMAGE": tags["server"], "MODELDEPLOY_LIVENESS_ENDPOINT": "",
               "MODELDEPLOY_LEADER_ELECTION": "false", "MODELDEPLOY_METRICS_PORT": "0"}
        operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator", "--namespace", NAMESPACE],
                                    env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "operator.log").open("wb"))
        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME},
                    "spec": {"model": {"pvc": "models", "path": f"{NAME}/v1/model.onnx",
                                       "sha256": hashlib.sha256(data).hexdigest()},
                             "replicas": {"min": 1},
                             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}}

        def ready() -> bool:
            conditions = get(cluster, "md", NAME).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        started = time.monotonic()
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
        wait(ready)
        apply_ready_s = time.monotonic() - started
        pod = get(cluster, "pods", "-l", "modeldeploy.dev/track=stable")["items"][0]
        container_started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
        ready_condition = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        pod_ready = parse_time(ready_condition["lastTransitionTime"])
        pod_start_ready_s = (pod_ready - container_started).total_seconds()
        print(f"apply -> Ready (tiny model, real pod): {apply_ready_s:.1f}s (target <= 10 s); "
              f"container start -> pod Ready: {pod_start_ready_s:.0f}s (1 s resolution; target <= 3 s)")

        service = get(cluster, "service", NAME)["spec"]
        body = json.dumps(tiny.sample_request(batch=2)).encode()
        direct = f"http://{pod['status']['podIP']}:8080/v2/models/{NAME}/infer"
        through = f"http://{service['clusterIP']}:{service['ports'][0]['port']}/v2/models/{NAME}/infer"
        latencies_ms(direct, body, 50)
        latencies_ms(through, body, 50)  # warm both paths
        samples: dict[str, list[float]] = {"pod": [], "service": []}
        for _ in range(args.requests):  # interleaved, so both paths see the same machine load
            samples["pod"] += latencies_ms(direct, body, 1)
            samples["service"] += latencies_ms(through, body, 1)
        results = {label: (statistics.median(s), percentile(s, 0.99)) for label, s in samples.items()}
        for label, (p50, p99) in results.items():
            print(f"{args.requests} sequential requests straight to the {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        print(f"kube-proxy's cost: p50 x{results['service'][0] / results['pod'][0]:.2f}, "
              f"p99 x{results['service'][1] / results['pod'][1]:.2f}")
        print(f"summary: images {build_s:.1f}s, cluster+real node {up_s:.1f}s, image load {load_s:.1f}s, "
              f"apply->Ready {apply_ready_s:.1f}s, image {size_mb:.0f} MB")
    finally:
        if operator:
            operator.terminate()
            operator.wait(timeout=30)
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
