# mypy: disable-error-code="no-untyped-call,misc,index"
# (the kubernetes client is untyped; its watch stream and the polling lambdas carry no types)
"""Operator latency and memory with 1, 100 and 1000 ModelDeployments in the cluster.

Measures, against a real control plane with the operator running as its own process:
- apply -> children: from the create request of a ModelDeployment (with a canary: 8 children) until
  the last of its children is seen on a watch;
- patch -> weights: from `spec.canary.trafficPercent` being patched until the VirtualService with the
  new weights is seen on a watch;
- the operator's resident memory (VmRSS) after each step and its peak (VmHWM).

Run (starts and stops a private local control plane; about 10 minutes on two cores):
    .venv/bin/python benchmarks/operator/bench_operator.py
On an existing cluster (kind, ...): add --kubeconfig PATH (creates the namespace `modeldeploy-bench`,
fake kwok nodes are only added on the local control plane).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import client, watch

import localcluster
import routing_crds
from localcluster import wait_for

REPO = Path(__file__).resolve().parents[2]

CRD = REPO / "crds" / "modeldeployments.yaml"
NAMESPACE = "modeldeploy-bench"
GROUP, VERSION, PLURAL = "modeldeploy.dev", "v1alpha1", "modeldeployments"
TINY = {"requests": {"cpu": "10m", "memory": "16Mi"}}
PROBE_CHILDREN = 8
TARGETS = {"apply_p99_s": 2.0, "patch_p99_s": 1.0, "rss_mb": 150.0}


def background_md(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"pvc": "models", "path": f"{name}/model.onnx"}, "replicas": {"min": 1},
                     "resources": TINY}}


def probe_md(name: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"pvc": "models", "path": "probe/v1/model.onnx"},
                     "canary": {"model": {"pvc": "models", "path": "probe/v2/model.onnx"}, "trafficPercent": 10},
                     "replicas": {"min": 1, "max": 2}, "resources": TINY}}


class Observer:
    """Watches the children and records when each (kind, name) and each VirtualService weight first appears."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.first_seen: dict[tuple[str, str], float] = {}
        self.weights_seen: dict[tuple[str, int], float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Barrier(7)

    def _streams(self) -> list[tuple[str, Callable[..., Any], tuple[Any, ...]]]:
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        autoscaling, policy = client.AutoscalingV2Api(self.api), client.PolicyV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        return [
            ("Deployment", apps.list_namespaced_deployment, (NAMESPACE,)),
            ("HorizontalPodAutoscaler", autoscaling.list_namespaced_horizontal_pod_autoscaler, (NAMESPACE,)),
            ("Service", core.list_namespaced_service, (NAMESPACE,)),
            ("PodDisruptionBudget", policy.list_namespaced_pod_disruption_budget, (NAMESPACE,)),
            ("VirtualService", custom.list_namespaced_custom_object,
             ("networking.istio.io", "v1", NAMESPACE, "virtualservices")),
            ("DestinationRule", custom.list_namespaced_custom_object,
             ("networking.istio.io", "v1", NAMESPACE, "destinationrules")),
        ]

    def start(self) -> None:
        for kind, lister, args in self._streams():
            threading.Thread(target=self._watch, args=(kind, lister, args), daemon=True).start()
        self.ready.wait(timeout=60)

    def _record(self, kind: str, obj: Any, now: float) -> None:
        if isinstance(obj, dict):
            name, spec = obj["metadata"]["name"], obj.get("spec", {})
        else:
            name, spec = obj.metadata.name, None
        with self.lock:
            self.first_seen.setdefault((kind, name), now)
            if kind == "VirtualService" and spec:
                for route in spec.get("http", [{}])[0].get("route", []):
                    if route["destination"]["subset"] == "canary":
                        self.weights_seen.setdefault((name, route["weight"]), now)

    def _watch(self, kind: str, lister: Callable[..., Any], args: tuple[Any, ...]) -> None:
        first = True
        while not self.stop.is_set():
            listed = lister(*args, label_selector="app.kubernetes.io/managed-by=modeldeploy")
            items = listed["items"] if isinstance(listed, dict) else listed.items
            if isinstance(listed, dict):
                version = listed["metadata"]["resourceVersion"]
            else:
                version = listed.metadata.resource_version
            for item in items:
                self._record(kind, item, time.monotonic())
            if first:
                self.ready.wait(timeout=60)
                first = False
            with contextlib.suppress(Exception):
                for event in watch.Watch().stream(lister, *args, resource_version=version, timeout_seconds=240,
                                                  label_selector="app.kubernetes.io/managed-by=modeldeploy"):
                    if self.stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(kind, event["object"], time.monotonic())
                    elif event["type"] == "DELETED":
                        obj = event["object"]
                        name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
                        with self.lock:
                            self.first_seen.pop((kind, name), None)

    def forget(self, name: str) -> None:
        with self.lock:
            for key in [k for k in self.first_seen if k[1].startswith(name)]:
                self.first_seen.pop(key, None)
            for weight_key in [k for k in self.weights_seen if k[0] == name]:
                self.weights_seen.pop(weight_key, None)

    def children_time(self, name: str) -> float | None:
        wanted = [("Deployment", f"{name}-stable"), ("Deployment", f"{name}-canary"),
                  ("HorizontalPodAutoscaler", f"{name}-stable"), ("HorizontalPodAutoscaler", f"{name}-canary"),
                  ("Service", name), ("PodDisruptionBudget", name), ("VirtualService", name),
                  ("DestinationRule", name)]
        with self.lock:
            times = [self.first_seen.get(key) for key in wanted]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def weight_time(self, name: str, canary: int) -> float | None:
        with self.lock:
            return self.weights_seen.get((name, canary))


POLL_S = 0.002  # tight polling: the benchmark measures latencies of a few milliseconds


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the operator process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def cluster_for(kubeconfig: str | None) -> Iterator[tuple[localcluster.Cluster, bool]]:
    if kubeconfig:
        yield localcluster.Cluster(Path(kubeconfig), localcluster.ensure_binaries(), Path(tempfile.mkdtemp())), False
        return
    with localcluster.local_cluster() as cluster:
        yield cluster, True


def add_bench_nodes(cluster: localcluster.Cluster, count: int) -> None:
    """Roomy fake nodes: the default ones hold ~110 pods each, the benchmark runs over a thousand."""
    nodes = []
    for index in range(count):
        node = localcluster.kwok_node(f"kwok-bench-{index}")
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "1000"}
        node["status"] = {"capacity": capacity, "allocatable": capacity}
        nodes.append(node)
    cluster.apply_objects(*nodes)


def install_crds(cluster: localcluster.Cluster) -> None:
    """Ours and Istio's (the operator then writes VirtualServices and DestinationRules)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD),
                    "-f", str(routing_crds.istio_crds()))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modeldeployments.modeldeploy.dev", "crd/virtualservices.networking.istio.io",
                    "crd/destinationrules.networking.istio.io")


def bench_namespace(cluster: localcluster.Cluster, namespace: str) -> None:
    """The namespace and its `models` claim, bound to a volume kwok never mounts."""
    cluster.kubectl("create", "namespace", namespace, check=False)
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "resources": {"requests": {"storage": "1Gi"}}}}))
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{namespace}-models"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": "/tmp/modeldeploy-bench"},  # kwok never mounts it
                 "claimRef": {"namespace": namespace, "name": "models"}}}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="use this cluster instead of starting a local control plane")
    parser.add_argument("--counts", default="1,100,1000", help="ModelDeployments in the cluster per step")
    parser.add_argument("--samples", type=int, default=30, help="measurements per step")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]

    with cluster_for(args.kubeconfig) as (cluster, local):
        install_crds(cluster)
        if local:
            add_bench_nodes(cluster, max(2, max(counts) // 400 + 1))
        bench_namespace(cluster, NAMESPACE)

        configuration = client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        api = client.ApiClient(configuration)
        custom = client.CustomObjectsApi(api)
        observer = Observer(api)
        observer.start()

        log_path = Path(tempfile.mkdtemp()) / "operator.log"
        env = {**cluster.env, "MODELDEPLOY_LIVENESS_ENDPOINT": "", "MODELDEPLOY_LEASE_NAMESPACE": NAMESPACE,
               "MODELDEPLOY_METRICS_PORT": "0"}
        with log_path.open("wb") as log:
            operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator"], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
        results = []
        restart: dict[str, Any] = {}
        try:
            time.sleep(3)
            background = 0
            pool = concurrent.futures.ThreadPoolExecutor(8)
            for count in counts:
                target = count - 1
                names = [f"bg-{i:04d}" for i in range(background, target)]
                list(pool.map(lambda n: custom.create_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL, background_md(n)), names))
                background = max(background, target)
                settle_started = time.monotonic()
                wait_for("background children",
                         lambda b=background: sum(1 for k in list(observer.first_seen) if k[0] == "VirtualService"
                                                  and k[1].startswith("bg-")) >= b, 1800, 1.0)

                def all_ready(background: int = background) -> bool:
                    items = custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)["items"]
                    ready = [i for i in items if i["metadata"]["name"].startswith("bg-") and any(
                        c["type"] == "Ready" and c["status"] == "True"
                        for c in (i.get("status") or {}).get("conditions", []))]
                    return len(ready) >= background

                wait_for(f"{background} background resources Ready", all_ready, 1800, 3.0)
                settle = time.monotonic() - settle_started
                apply_times, patch_times = [], []
                for sample in range(args.samples):
                    name = f"probe-{count}-{sample}"
                    started = time.monotonic()
                    custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, probe_md(name))
                    seen = wait_for(f"children of {name}", lambda n=name: observer.children_time(n), 60, POLL_S)
                    apply_times.append(seen - started)
                    wait_for(f"initial weights of {name}", lambda n=name: observer.weight_time(n, 10), 60, POLL_S)
                    started = time.monotonic()
                    custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                          {"spec": {"canary": {"trafficPercent": 30}}})
                    seen = wait_for(f"new weights of {name}", lambda n=name: observer.weight_time(n, 30), 60, POLL_S)
                    patch_times.append(seen - started)
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
                    observer.forget(name)
                rss, peak = memory_mb(operator.pid)
                row = {
                    "resources": count, "samples": args.samples, "settle_s": round(settle, 1),
                    "apply_p50_s": round(statistics.median(apply_times), 3),
                    "apply_p99_s": round(percentile(apply_times, 99), 3),
                    "patch_p50_s": round(statistics.median(patch_times), 3),
                    "patch_p99_s": round(percentile(patch_times, 99), 3),
                    "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
            # Restart with everything in place: the initial listing is the memory peak, and the time until
            # a patch takes effect is what a rolling upgrade of the operator costs.
            name = "probe-restart"
            custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, probe_md(name))
            wait_for("restart probe weights", lambda: observer.weight_time(name, 10), 60, POLL_S)
            operator.terminate()
            operator.wait(timeout=60)
            with log_path.open("ab") as log:
                started = time.monotonic()
                operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator"], stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
            custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name,
                                                  {"spec": {"canary": {"trafficPercent": 30}}})
            seen = wait_for("weights after restart", lambda: observer.weight_time(name, 30), 300, 0.01)
            time.sleep(20)
            rss, peak = memory_mb(operator.pid)
            restart = {"resources": counts[-1], "restart_to_new_weights_s": round(seen - started, 2),
                       "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}
            print(json.dumps(restart), flush=True)
        finally:
            operator.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(timeout=20)
            observer.stop.set()
            if os.environ.get("BENCH_SHOW_LOG"):
                print(log_path.read_text()[-5000:])
            if not local:
                cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
                cluster.kubectl("delete", "pv", f"{NAMESPACE}-models", "--wait=false", check=False)

    print()
    print("| ModelDeployments | apply→children p50 / p99 | patch→weights p50 / p99 | operator RSS / peak |")
    print("|---:|---:|---:|---:|")
    for row in results:
        print(f"| {row['resources']} | {row['apply_p50_s']:.3f} s / {row['apply_p99_s']:.3f} s | "
              f"{row['patch_p50_s']:.3f} s / {row['patch_p99_s']:.3f} s | "
              f"{row['rss_mb']:.0f} MB / {row['peak_rss_mb']:.0f} MB |")
    print(f"\nrestart with {restart['resources']} resources: new weights {restart['restart_to_new_weights_s']:.2f} s "
          f"after the process started; RSS {restart['rss_mb']:.0f} MB, peak {restart['peak_rss_mb']:.0f} MB")
    last = results[-1]
    peak = max(last["peak_rss_mb"], restart.get("peak_rss_mb", 0.0))
    print(f"\nat {last['resources']}: apply p99 is {last['apply_p99_s'] / TARGETS['apply_p99_s']:.2f}x the 2 s target, "
          f"patch p99 {last['patch_p99_s'] / TARGETS['patch_p99_s']:.2f}x the 1 s target, "
          f"peak memory (restart included) {peak / TARGETS['rss_mb']:.2f}x the 150 MB target")
    if args.json:
        args.json.write_text(json.dumps({"steps": results, "restart": restart}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
