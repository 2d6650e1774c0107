# mypy: disable-error-code="no-untyped-call,misc,index,union-attr"
# (the kubernetes client is untyped, and its models make every field optional)
"""100 ModelDeployments rolling out at once: the operator's CPU and memory, and how late each verdict comes.

On a private local control plane (kwok nodes, no real pods), with the operator as its own process and
Istio's CRDs installed (the rollout's weights and mirrors go into VirtualServices):
1. `--count` ModelDeployments with `spec.rollout` are created on v1 and become Healthy;
2. all of them are patched to v2 at once: each walks mirror 50% → weight 10% → weight 50%, judged every
   `--interval`; `--bad` of them get a canary that fails 30% of its requests and must roll back;
3. until every rollout is promoted or rolled back, the operator's CPU (utime+stime from /proc) and RSS
   are sampled every second.

Where the analysis reads its numbers: the pods live on kwok nodes whose podCIDRs are loopback ranges
(127.77.x.0/24), and `metrics_standin.py` answers on every one of those addresses, port 8080, over real
HTTP with each fake pod's own registry built by the server's own metrics module — a stand-in for the
serving pods, named as such in docs/benchmarks.md. The operator scrapes them exactly as it scrapes real pods.

The analysis delay is the time from the end of an interval to its verdict, as the operator measures it
(`modeldeploy_operator_analysis_delay_seconds`, and each verdict's log line); targets: ≤ 2 s per
verdict, operator RSS ≤ 200 MB.

Run (about 6 minutes on two cores):
    .venv/bin/python benchmarks/operator/bench_rollouts.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes
from bench_operator import bench_namespace, install_crds
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

import localcluster
from localcluster import wait_for
from modeldeploy_operator import analysis

STAND_IN = Path(__file__).resolve().parent / "metrics_standin.py"
NAMESPACE = "modeldeploy-bench-rollouts"
GROUP, VERSION, PLURAL = "modeldeploy.dev", "v1alpha1", "modeldeployments"
NODE_LABEL = {"modeldeploy.dev/bench": "rollouts"}
POD_CIDRS = ("127.77.0.0/24", "127.77.1.0/24")  # loopback: the stand-in answers there, nothing leaves the host
TINY = {"requests": {"cpu": "10m", "memory": "16Mi"}}
TARGETS = {"delay_s": 2.0, "rss_mb": 200.0}
LATE = re.compile(r"rollout analysis of (\S+) from \w+: (\w+) .*\(([\d.]+)s after the interval ended\)")


def model_deployment(name: str, version: int, interval: str, pause: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": {"model": {"pvc": "models", "path": f"{name}/v{version}/model.onnx"}, "replicas": {"min": 1},
                     "resources": TINY, "nodeSelector": NODE_LABEL,
                     "rollout": {"steps": [{"mirror": 50, "pause": pause}, {"weight": 10, "pause": pause},
                                           {"weight": 50, "pause": pause}],
                                 "analysisInterval": interval, "failureLimit": 2, "progressDeadline": "30m"}}}


def bench_nodes(cluster: localcluster.Cluster) -> None:
    """Roomy kwok nodes whose pods get loopback addresses (kwok allocates from the node's podCIDR)."""
    nodes = []
    for index, cidr in enumerate(POD_CIDRS):
        node = localcluster.kwok_node(f"kwok-rollouts-{index}")
        node["metadata"]["labels"].update(NODE_LABEL)
        node["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
        capacity = {"cpu": "1000", "memory": "4Ti", "pods": "250"}
        node["status"] = {"capacity": capacity, "allocatable": capacity}
        nodes.append(node)
    cluster.apply_objects(*nodes)


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def waiting_for_cpu_seconds(pid: int) -> float:
    """Time the process' threads were runnable but waited for a CPU (schedstat: run-queue wait), summed."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def cpu_seconds(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """RSS every second, CPU over 10-second windows, and the work queue's depth (from the operator's own
    /metrics) every 5 seconds, of one operator process."""

    def __init__(self, pid: int, metrics_port: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.metrics_port = metrics_port
        self.rss_mb: list[float] = []
        self.cpu_windows: list[float] = []
        self.queue_depths: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last_cpu, last_time = cpu_seconds(self.pid), time.monotonic()
        ticks = 0
        while not self.stop.wait(1.0):
            ticks += 1
            with contextlib.suppress(OSError, KeyError):
                self.rss_mb.append(proc_status(self.pid)["VmRSS"] / 1024)
                now = time.monotonic()
                if now - last_time >= 10:
                    cpu = cpu_seconds(self.pid)
                    self.cpu_windows.append((cpu - last_cpu) / (now - last_time))
                    last_cpu, last_time = cpu, now
                if ticks % 5 == 0:
                    depth = operator_metrics(self.metrics_port)[("modeldeploy_operator_workqueue_depth", ())]
                    self.queue_depths.append(depth)


def operator_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def quantile(exported: dict[tuple[str, tuple[tuple[str, str], ...]], float], histogram: str, q: float
             ) -> float | None:
    """A quantile of one of the operator's histograms, interpolated as PromQL's histogram_quantile."""
    buckets = {float(dict(labels)["le"]): value for (name, labels), value in exported.items()
               if name == f"{histogram}_bucket"}
    found = analysis.histogram_quantile(q, buckets)
    return None if found is None else round(found, 3)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="ModelDeployments rolling out at once")
    parser.add_argument("--bad", type=int, default=10, help="of which this many have a failing canary")
    parser.add_argument("--interval", default="10s", help="spec.rollout.analysisInterval")
    parser.add_argument("--pause", default="20s", help="each step's pause")
    parser.add_argument("--workers", type=int, default=4, help="the operator's reconcile workers")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    names = [f"r-{i:03d}" for i in range(args.count)]
    bad = set(names[:: max(1, args.count // args.bad)][: args.bad]) if args.bad else set()

    with localcluster.local_cluster() as cluster:
        install_crds(cluster)
        bench_nodes(cluster)
        bench_namespace(cluster, NAMESPACE)

        configuration = client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        api = client.ApiClient(configuration)
        custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

        workdir = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
        stand_in_command = [sys.executable, str(STAND_IN), *(f"--cidr={cidr}" for cidr in POD_CIDRS)]
        stand_in = subprocess.Popen(stand_in_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=(workdir / "stand-in.log").open("wb"), text=True)
        assert stand_in.stdout is not None and stand_in.stdin is not None
        print(stand_in.stdout.readline().strip(), flush=True)  # "listening on N addresses"

        metrics_port = localcluster.free_port()
        log_path = workdir / "operator.log"
        env = {**cluster.env, "MODELDEPLOY_LIVENESS_ENDPOINT": "", "MODELDEPLOY_LEASE_NAMESPACE": NAMESPACE,
               "MODELDEPLOY_METRICS_PORT": str(metrics_port), "MODELDEPLOY_METRICS_ADDRESS": "127.0.0.1",
               "MODELDEPLOY_WORKERS": str(args.workers)}
        with log_path.open("wb") as log:
            operator = subprocess.Popen([sys.executable, "-m", "modeldeploy_operator", "--namespace", NAMESPACE],
                                        stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = Sampler(operator.pid, metrics_port)
        result: dict[str, Any] = {}
        try:
            pool = concurrent.futures.ThreadPoolExecutor(8)

            def items() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = custom.list_namespaced_custom_object(
                    GROUP, VERSION, NAMESPACE, PLURAL)["items"]
                return found

            def phases() -> dict[str, str]:
                return {i["metadata"]["name"]: ((i.get("status") or {}).get("rollout") or {}).get("phase", "")
                        for i in items()}

            list(pool.map(lambda n: custom.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, model_deployment(n, 1, args.interval, args.pause)), names))
            wait_for(f"{args.count} rollouts Healthy on v1",
                     lambda: list(phases().values()).count("Healthy") == args.count, 600, 2.0)

            def pod_ips(track: str) -> dict[str, str]:
                pods = core.list_namespaced_pod(NAMESPACE, label_selector=f"modeldeploy.dev/track={track}").items
                return {p.metadata.labels["modeldeploy.dev/name"]: p.status.pod_ip for p in pods
                        if p.status.pod_ip and p.status.phase == "Running"}

            def all_stable_running() -> dict[str, str] | None:
                ips = pod_ips("stable")
                return ips if len(ips) == args.count else None

            stable_ips = wait_for("stable pods Running", all_stable_running, 600, 2.0)
            assert all(ip.startswith("127.77.") for ip in stable_ips.values()), stable_ips
            time.sleep(5)  # the start-up settles; the sampler measures the rollouts only
            rss_before = proc_status(operator.pid)["VmRSS"] / 1024

            sampler.start()
            cpu_start, started = cpu_seconds(operator.pid), time.monotonic()
            waited_start = waiting_for_cpu_seconds(operator.pid)
            list(pool.map(lambda n: custom.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, n, {"spec": {"model": {"path": f"{n}/v2/model.onnx"}}}), names))
            patched = time.monotonic() - started
            told: set[str] = set()
            finished: dict[str, float] = {}
            while len(finished) < args.count:
                for name, ip in pod_ips("canary").items():
                    if name in bad and name not in told:
                        stand_in.stdin.write(json.dumps({"ip": ip, "error_rate": 0.3}) + "\n")
                        stand_in.stdin.flush()
                        told.add(name)
                for item in items():
                    name = item["metadata"]["name"]
                    state = (item.get("status") or {}).get("rollout") or {}
                    promoted = state.get("stable", {}).get("path", "").endswith("/v2/model.onnx")
                    done = state.get("phase") == "RolledBack" or (state.get("phase") == "Healthy" and promoted)
                    if done and name not in finished:
                        finished[name] = time.monotonic() - started
                if time.monotonic() - started > 1800:
                    raise TimeoutError(f"only {len(finished)} of {args.count} rollouts ended in 30 minutes")
                time.sleep(2.0)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(operator.pid) - cpu_start
            waited = waiting_for_cpu_seconds(operator.pid) - waited_start
            sampler.stop.set()
            memory = proc_status(operator.pid)
            exported = operator_metrics(metrics_port)
            final = phases()
        finally:
            operator.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(timeout=20)
            stand_in.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                stand_in.wait(timeout=20)
            if os.environ.get("BENCH_SHOW_LOG"):
                print(log_path.read_text()[-5000:])

    lates = [float(m.group(3)) for m in LATE.finditer(log_path.read_text())]
    verdicts = {dict(labels)["result"] + "/" + dict(labels)["gate"]: value for (name, labels), value in exported.items()
                if name == "modeldeploy_operator_analysis_verdicts_total"}
    ended = {dict(labels)["result"]: value for (name, labels), value in exported.items()
             if name == "modeldeploy_operator_rollouts_finished_total" and value}
    within = exported[("modeldeploy_operator_analysis_delay_seconds_bucket", (("le", "2.0"),))]
    observed = exported[("modeldeploy_operator_analysis_delay_seconds_count", ())]
    rolled_back = sorted(n for n, phase in final.items() if phase == "RolledBack")
    result = {
        "rollouts": args.count, "bad": len(bad), "interval": args.interval, "pause": args.pause,
        "workers": args.workers, "patch_all_s": round(patched, 2),
        "all_ended_s": round(elapsed, 1), "first_ended_s": round(min(finished.values()), 1),
        "promoted": sum(1 for p in final.values() if p == "Healthy"), "rolled_back": len(rolled_back),
        "rolled_back_are_the_bad_ones": set(rolled_back) == bad,
        "verdicts": verdicts, "ended": ended,
        "delay_p50_s": round(statistics.median(lates), 3), "delay_p95_s": round(percentile(lates, 95), 3),
        "delay_p99_s": round(percentile(lates, 99), 3), "delay_max_s": round(max(lates), 3),
        "verdicts_timed": len(lates), "within_2s_share": round(within / observed, 4) if observed else None,
        "reconciles": {dict(labels)["result"]: value for (name, labels), value in exported.items()
                       if name == "modeldeploy_operator_reconciles_total"},
        "reconcile_p50_s": quantile(exported, "modeldeploy_operator_reconcile_duration_seconds", 0.5),
        "reconcile_p99_s": quantile(exported, "modeldeploy_operator_reconcile_duration_seconds", 0.99),
        "analysis_duration_p50_s": quantile(exported, "modeldeploy_operator_analysis_duration_seconds", 0.5),
        "analysis_duration_p99_s": quantile(exported, "modeldeploy_operator_analysis_duration_seconds", 0.99),
        "queue_depth_max": max(sampler.queue_depths or [0.0]),
        "queue_depth_mean": round(statistics.mean(sampler.queue_depths or [0.0]), 1),
        "cpu_mean_cores": round(cpu / elapsed, 3),
        "runnable_waiting_for_cpu_share": round(waited / elapsed, 3),
        "cpu_max_10s_cores": round(max(sampler.cpu_windows or [0.0]), 3),
        "rss_before_mb": round(rss_before, 1), "rss_max_mb": round(max(sampler.rss_mb or [0.0]), 1),
        "peak_rss_mb": round(memory["VmHWM"] / 1024, 1), "load_average": os.getloadavg(),
    }
    print(json.dumps(result, indent=1), flush=True)
    print()
    print("| rollouts (bad) | all ended | promoted / rolled back | verdict delay p50 / p99 / max | ≤ 2 s | "
          "operator CPU mean / max 10 s | RSS max / peak |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.count} ({len(bad)}) | {elapsed:.0f} s | {result['promoted']} / {result['rolled_back']} | "
          f"{result['delay_p50_s']:.2f} / {result['delay_p99_s']:.2f} / {result['delay_max_s']:.2f} s | "
          f"{100 * (result['within_2s_share'] or 0):.1f} % | {result['cpu_mean_cores']:.2f} / "
          f"{result['cpu_max_10s_cores']:.2f} cores | {result['rss_max_mb']:.0f} / {result['peak_rss_mb']:.0f} MB |")
    print(f"\nverdict delay p99 is {result['delay_p99_s'] / TARGETS['delay_s']:.2f}x the 2 s target; "
          f"peak RSS {result['peak_rss_mb'] / TARGETS['rss_mb']:.2f}x the 200 MB target")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
