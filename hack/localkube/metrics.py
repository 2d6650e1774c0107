"""The metrics stack autoscaling needs, on a cluster with a real node: metrics-server, Prometheus, KEDA.

Each runs as a process on the host beside the node, not as a pod. They are static Go programs built from
the module proxy (hack/build-metrics-binaries.sh); from the host they reach the kubelet and the pods
through the node's routes, and each reads the API as its own ServiceAccount, bound to the RBAC its
upstream ships (metrics-server's and KEDA's from their modules' zips; Prometheus only lists and watches
pods): a token kubeconfig, never the cluster's admin certificate. The API server reaches
the two aggregated APIs (metrics.k8s.io from metrics-server, external.metrics.k8s.io from KEDA's adapter)
through a selector-less Service whose endpoint is the host's side of the node's link (the API server runs
with --enable-aggregator-routing). As pods they would need an image each and a way back to an API server
that listens on the host anyway: more moving parts for the same behaviour.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from localkube.controlplane import Cluster
from localkube.errors import ClusterError
from localkube.paths import REPO_ROOT
from localkube.pki import CertificateAuthority, KeyPair
from localkube.processes import free_port, spawn, stop_processes

BUILD_SCRIPT = REPO_ROOT / "hack" / "build-metrics-binaries.sh"
KEDA_NAMESPACE = "keda"
METRICS_SERVER = "metrics-server"
KEDA_ADAPTER = "keda-metrics-apiserver"
KEDA_IDENTITY = "keda-operator"  # upstream runs the operator and the metrics adapter as this ServiceAccount
PROMETHEUS_IDENTITY = "modeldeploy-prometheus"
SCRAPE_SECONDS = 5


def prometheus_rbac() -> list[dict[str, object]]:
    """Pod discovery and nothing else: Prometheus scrapes the pods' own /metrics without credentials."""
    rbac = "rbac.authorization.k8s.io"
    name = PROMETHEUS_IDENTITY
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": "kube-system"}},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRole", "metadata": {"name": name},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": f"{rbac}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}]},
    ]


def metrics_binaries(*components: str) -> dict[str, Path]:
    """Build (or find in the cache) the named components; NAME -> path (keda-crds: the CRD file)."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT), *components], stdout=subprocess.PIPE, text=True,
                            check=False)
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} {' '.join(components)} failed with exit code {result.returncode}")
    found = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {name: Path(path) for name, path in found.items()}


def http_ok(url: str) -> bool:
    """A GET on one of the stack's own endpoints answered 200."""
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - the stack's own address
        return int(response.status) == 200


def aggregated_api(group: str, version: str, namespace: str, service: str, host: str, port: int,
                   ca_pem: bytes) -> list[dict[str, object]]:
    """An APIService served by a process on the host: a Service without selector, its one endpoint."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": namespace},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": service, "namespace": namespace},
         "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": f"{version}.{group}"},
         "spec": {"group": group, "version": version, "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"namespace": namespace, "name": service, "port": 443},
                  "caBundle": base64.b64encode(ca_pem).decode()}},
    ]


@dataclass
class MetricsStack:
    """Starts and stops the metrics processes of one cluster; each part can be stopped and started again."""

    cluster: Cluster
    workdir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = json.loads(self.cluster.kubeconfig.read_text())
        server = config["clusters"][0]["cluster"]["server"]
        self.host = str(urlparse(server).hostname)  # the host's side of the real node's link
        if self.host.startswith("127."):
            raise ClusterError("the metrics stack needs a cluster with a real node (the API server on loopback "
                               "cannot reach an endpoint beside it)")
        pki = self.cluster.workdir / "pki"
        self.ca_pem = (pki / "ca.crt").read_bytes()
        ca = CertificateAuthority.load(KeyPair(self.ca_pem, (pki / "ca.key").read_bytes()))
        self.certs = self.workdir / "certs"
        self.certs.mkdir(exist_ok=True)
        # The aggregator checks the name <service>.<namespace>.svc of each APIService's Service.
        names = ["localhost", f"{METRICS_SERVER}.kube-system.svc", f"{KEDA_ADAPTER}.{KEDA_NAMESPACE}.svc"]
        serving = ca.issue("modeldeploy-metrics", server_names=names, server_ips=[self.host, "127.0.0.1"])
        serving.write(self.certs / "tls.crt", self.certs / "tls.key")
        (self.certs / "ca.crt").write_bytes(self.ca_pem)

    def _identity(self, namespace: str, account: str, rbac: Path | list[dict[str, object]]) -> str:
        """A kubeconfig for one component: its ServiceAccount's token, after its RBAC is applied."""
        if isinstance(rbac, Path):
            self.cluster.kubectl("apply", "-f", str(rbac))
        else:
            self.cluster.apply_objects(*rbac)
        return str(self.cluster.service_account_kubeconfig(namespace, account))

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.processes[name] = spawn(command, self.workdir / f"{name}.log", self.workdir, detach=False,
                                     env={**self.cluster.env, **(env or {})})

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _wait(self, name: str, ready: object, timeout: float = 120.0) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise ClusterError(f"{name} exited with code {process.returncode}:\n{self.log(name)}")
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.5)
        raise ClusterError(f"{name} not ready after {timeout:g}s:\n{self.log(name)}")

    def stop(self, *names: str) -> None:
        """Stop the named processes (all when none is named)."""
        chosen = {n: p for n, p in self.processes.items() if not names or n in names}
        stop_processes({n: p.pid for n, p in chosen.items()}, chosen)
        for name in chosen:
            self.processes.pop(name, None)

    # metrics-server: `kubectl top`, and numbers for CPU HPAs ----------------------------------------------

    def start_metrics_server(self) -> None:
        built = metrics_binaries("metrics-server", "metrics-server-rbac")
        kubeconfig = self._identity("kube-system", METRICS_SERVER, built["metrics-server-rbac"])
        port = self.ports.setdefault("metrics-server", free_port())
        pki = self.cluster.workdir / "pki"
        self._spawn("metrics-server", [
            str(built["metrics-server"]), f"--secure-port={port}", f"--bind-address={self.host}",
            f"--tls-cert-file={self.certs / 'tls.crt'}", f"--tls-private-key-file={self.certs / 'tls.key'}",
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--kubelet-preferred-address-types=InternalIP", f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-use-node-status-port", "--node-selector=type=real", "--metric-resolution=15s",
            "--kubelet-request-timeout=5s",
        ])
        self.cluster.apply_objects(*aggregated_api("metrics.k8s.io", "v1beta1", "kube-system", METRICS_SERVER,
                                                   self.host, port, self.ca_pem))
        self._wait("metrics-server", lambda: self._api_answers("/apis/metrics.k8s.io/v1beta1/nodes"))

    def _api_answers(self, path: str) -> bool:
        """The aggregated API answers through the API server (TLS, front proxy and authorization work)."""
        return self.cluster.kubectl("get", "--raw", path, check=False).returncode == 0

    # Prometheus: scrapes every serving pod, labelled as the chart's PodMonitor labels them ------------

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.ports.setdefault('prometheus', free_port())}"

    def start_prometheus(self) -> None:
        binary = metrics_binaries("prometheus")["prometheus"]
        kubeconfig = self._identity("kube-system", PROMETHEUS_IDENTITY, prometheus_rbac())
        relabel = [
            {"source_labels": ["__meta_kubernetes_pod_label_app_kubernetes_io_managed_by"], "regex": "modeldeploy",
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "separator": ":", "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_pod_label_modeldeploy_dev_name"], "target_label": "modeldeployment"},
            {"source_labels": ["__meta_kubernetes_pod_label_modeldeploy_dev_track"], "target_label": "track"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ]
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "scrape_timeout": f"{SCRAPE_SECONDS - 1}s"},
            "scrape_configs": [{
                "job_name": "modeldeploy-servers",
                "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": kubeconfig}],
                "relabel_configs": relabel,
            }],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config, indent=2) + "\n")
        url = self.prometheus_url
        self._spawn("prometheus", [
            str(binary), f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address={urlparse(url).netloc}", "--log.level=warn",
        ])
        self._wait("prometheus", lambda: http_ok(f"{url}/-/ready"))

    def query(self, promql: str) -> list[dict[str, object]]:
        """An instant query against the stack's Prometheus."""
        request = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own Prometheus
            answer = json.loads(response.read())
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    # KEDA: the operator (ScaledObject -> HPA) and its metrics adapter (external.metrics.k8s.io) -----------

    def install_keda_crds(self) -> None:
        crds = metrics_binaries("keda-crds")["keda-crds"]
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        self.cluster.wait_established("scaledobjects.keda.sh")

    def start_keda(self) -> None:
        binaries = metrics_binaries("keda", "keda-rbac")
        self.install_keda_crds()
        self.cluster.kubectl("create", "namespace", KEDA_NAMESPACE, check=False)
        kubeconfig = self._identity(KEDA_NAMESPACE, KEDA_IDENTITY, binaries["keda-rbac"])
        grpc = self.ports.setdefault("keda-grpc", free_port())
        env = {"KUBECONFIG": kubeconfig, "WATCH_NAMESPACE": "", "POD_NAMESPACE": KEDA_NAMESPACE,
               "POD_NAME": "keda-operator", "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE}
        self._spawn("keda-operator", [
            str(binaries["operator"]), f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{self.ports.setdefault('keda-probe', free_port())}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc}", f"--cert-dir={self.certs}",
            f"--ca-dir={self.certs}", "--enable-webhook-patching=false", "--enable-apiservice-patching=false",
            "--zap-log-level=info",
        ], env)
        probe = self.ports["keda-probe"]
        self._wait("keda-operator", lambda: http_ok(f"http://127.0.0.1:{probe}/readyz"))
        port = self.ports.setdefault("keda-adapter", free_port())
        self._spawn("keda-adapter", [
            str(binaries["adapter"]), f"--secure-port={port}", f"--bind-address={self.host}",
            f"--cert-dir={self.certs}", f"--tls-cert-file={self.certs / 'tls.crt'}",
            f"--tls-private-key-file={self.certs / 'tls.key'}", f"--metrics-service-address=127.0.0.1:{grpc}",
            f"--port={free_port()}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}", f"--lister-kubeconfig={kubeconfig}",
            "--zap-log-level=info",
        ], env)
        self.cluster.apply_objects(*aggregated_api("external.metrics.k8s.io", "v1beta1", KEDA_NAMESPACE,
                                                   KEDA_ADAPTER, self.host, port, self.ca_pem))
        self._wait("keda-adapter", lambda: self._api_answers("/apis/external.metrics.k8s.io/v1beta1"))
