"""prometheus-operator on the local cluster's real node, configuring a real Prometheus from the chart's monitors.

- The operator and its config reloader: `cmd/operator` and `cmd/prometheus-config-reloader` of the pinned
  `github.com/prometheus-operator/prometheus-operator`, built from the Go module proxy through a wrapper
  module (hack/build-metrics-binaries.sh). Its CRDs (full schemas) and its and Prometheus' RBAC come from
  the same module's zip.
- The operator runs as a host process beside the node, as its own ServiceAccount bound to its upstream
  ClusterRole (as metrics-server and KEDA run here: hack/localkube/metrics.py).
- It runs Prometheus the way it always does: a StatefulSet it writes, whose pod has a `prometheus`
  container (the image named in the Prometheus resource), a `config-reloader` sidecar and an init container
  (the image given by --prometheus-config-reloader), and a config it generates into a Secret from the
  PodMonitors and ServiceMonitors it selects. No image can be pulled here, so both images are built on this
  machine FROM scratch: the project's own Prometheus binary (the one the autoscaling tests run) as
  /bin/prometheus, the reloader as /bin/prometheus-config-reloader, and loaded into the node.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import routing_crds
from localkube import images
from localkube.controlplane import Cluster
from localkube.errors import ClusterError
from localkube.metrics import metrics_binaries
from localkube.processes import free_port, spawn, stop_processes

NAMESPACE = "prometheus-operator"
OPERATOR_ACCOUNT = "prometheus-operator"
PROMETHEUS_ACCOUNT = "prometheus"
PROMETHEUS_NAME = "modeldeploy"
REAL_NODE = {"modeldeploy.dev/real-node": "true"}
SCRAPE_INTERVAL = "5s"


def prometheus_version() -> str:
    """The Prometheus release the pinned module builds: module v0.3XY.Z is Prometheus v3.XY.Z."""
    minor_patch = routing_crds.pins()["PROMETHEUS_VERSION"].removeprefix("v0.3")
    return f"v3.{minor_patch}"


def scratch_image(docker: str, name: str, binary: Path) -> str:
    """A static binary alone in a FROM-scratch image, as /bin/NAME, its entrypoint."""
    return images.small_image(docker, name, (
        "FROM scratch\n"
        f"COPY {name} /bin/{name}\n"
        "USER 65534:65534\n"
        f'ENTRYPOINT ["/bin/{name}"]\n'
    ), {name: binary})


def build_images(docker: str) -> dict[str, str]:
    """{"prometheus": tag, "reloader": tag}: the images the operator's StatefulSet names."""
    built = metrics_binaries("prometheus", "prometheus-operator")
    return {"prometheus": scratch_image(docker, "prometheus", built["prometheus"]),
            "reloader": scratch_image(docker, "prometheus-config-reloader", built["prometheus-config-reloader"])}


def in_namespace(objects: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """Upstream's RBAC manifests (written for `default`) moved into NAMESPACE."""
    for item in objects:
        if item["kind"] == "ServiceAccount":
            item["metadata"]["namespace"] = namespace
        for subject in item.get("subjects") or []:
            subject["namespace"] = namespace
    return objects


def prometheus_resource(image: str, scrape_interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """A Prometheus selecting every PodMonitor and ServiceMonitor in every namespace, on the real node."""
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus",
        "metadata": {"name": PROMETHEUS_NAME, "namespace": NAMESPACE},
        "spec": {
            "image": image, "version": prometheus_version(), "replicas": 1,
            "serviceAccountName": PROMETHEUS_ACCOUNT, "scrapeInterval": scrape_interval,
            "podMonitorSelector": {}, "podMonitorNamespaceSelector": {},
            "serviceMonitorSelector": {}, "serviceMonitorNamespaceSelector": {},
            "nodeSelector": REAL_NODE,
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
        },
    }


@dataclass
class PrometheusOperator:
    """The operator process and the Prometheus it runs; `url` is that Prometheus' pod address."""

    cluster: Cluster
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    crds: list[str] = field(default_factory=list)

    def log(self) -> str:
        path = self.workdir / "prometheus-operator.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self, docker: str) -> PrometheusOperator:
        built = metrics_binaries("prometheus-operator", "prometheus-operator-crds", "prometheus-operator-rbac")
        tags = build_images(docker)
        for tag in tags.values():
            self.cluster.load_image(tag)
        self.workdir.mkdir(parents=True, exist_ok=True)
        applied = self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-o", "name", "-f",
                                       str(built["prometheus-operator-crds"])).stdout
        self.crds = [line.rpartition("/")[2] for line in applied.split()]  # (PyYAML cannot read their `=`)
        self.cluster.wait_established(*self.crds)
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        rbac = [doc for doc in yaml.safe_load_all(built["prometheus-operator-rbac"].read_text()) if doc]
        self.cluster.apply_objects(*in_namespace(rbac, NAMESPACE))
        kubeconfig = self.cluster.service_account_kubeconfig(NAMESPACE, OPERATOR_ACCOUNT)
        self.process = spawn([
            str(built["operator"]), f"--prometheus-config-reloader={tags['reloader']}",
            f"--web.listen-address=127.0.0.1:{free_port()}", "--log-level=info",
            "--kubelet-endpoints=false",
        ], self.workdir / "prometheus-operator.log", self.workdir, detach=False,
            env={**self.cluster.env, "KUBECONFIG": str(kubeconfig)})
        self.cluster.apply_objects(prometheus_resource(tags["prometheus"]))
        self.url = self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 240.0) -> str:
        """Until the Prometheus pod the operator made answers /-/ready; its URL."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"prometheus-operator exited with code {self.process.returncode}:\n{self.log()}")
            done = self.cluster.kubectl("get", "pod", f"prometheus-{PROMETHEUS_NAME}-0", "-n", NAMESPACE,
                                        "-o", "json", check=False)
            if done.returncode == 0:
                pod = json.loads(done.stdout)
                last = json.dumps(pod.get("status", {}).get("containerStatuses"))[:2000]
                ip = pod.get("status", {}).get("podIP")
                if ip and self._answers(f"http://{ip}:9090/-/ready"):
                    return f"http://{ip}:9090"
            time.sleep(1)
        raise ClusterError(f"the Prometheus pod was not ready after {timeout:g}s: {last}\n{self.log()}")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own pod's address
                return int(response.status) == 200
        except OSError:
            return False

    def query(self, path: str) -> dict[str, Any]:
        """GET an API path of the Prometheus (e.g. /api/v1/targets); the `data` of its answer."""
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:  # noqa: S310 - our own pod
            answer: dict[str, Any] = json.loads(response.read())
        if answer.get("status") != "success":
            raise ClusterError(f"Prometheus refused {path}: {answer}")
        data: dict[str, Any] = answer["data"]
        return data

    def stop(self) -> None:
        """The Prometheus resource (and so its pod), the operator, its namespace and CRDs."""
        self.cluster.kubectl("delete", "prometheus", PROMETHEUS_NAME, "-n", NAMESPACE, "--ignore-not-found",
                             "--wait=true", "--timeout=60s", check=False)
        if self.process is not None:
            stop_processes({"prometheus-operator": self.process.pid}, {"prometheus-operator": self.process})
        self.cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
        if self.crds:
            self.cluster.kubectl("delete", "crd", *self.crds, "--ignore-not-found", "--wait=false", check=False)
        for kind in ("clusterrolebinding", "clusterrole"):
            self.cluster.kubectl("delete", kind, OPERATOR_ACCOUNT, PROMETHEUS_ACCOUNT, "--ignore-not-found",
                                 check=False)
