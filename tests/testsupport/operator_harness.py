"""Helpers for the operator's integration tests: the operator process, kubectl reads, polling.

Everything is polled with bounded deadlines, and every timeout carries the operator's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

import localcluster
import routing_crds

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "integration" / "operator" / "fixtures"
CRD = REPO / "crds" / "modeldeployments.yaml"
RULES = REPO / "charts" / "modeldeploy" / "files" / "clusterrole-rules.yaml"
MANIFEST = FIXTURES / "modeldeployment.yaml"
CLAIM = FIXTURES / "models-claim.yaml"
SERVER_IMAGE = "registry.invalid/modeldeploy-server:test"

Cluster = localcluster.Cluster
T = TypeVar("T")


class Operator:
    """One operator process; `log()` returns what it printed so far."""

    def __init__(self, cluster: Cluster, kubeconfig: Path, log_path: Path, env: dict[str, str], args: list[str]):
        self.cluster = cluster
        self.log_path = log_path
        self.liveness_port = localcluster.free_port()
        self.metrics_port = localcluster.free_port()
        self.env = {
            **cluster.env,
            "KUBECONFIG": str(kubeconfig),
            "MODELDEPLOY_SERVER_IMAGE": SERVER_IMAGE,
            "MODELDEPLOY_GPU_SERVER_IMAGE": SERVER_IMAGE + "-gpu",
            "MODELDEPLOY_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.liveness_port}/healthz",
            "MODELDEPLOY_METRICS_PORT": str(self.metrics_port),
            "MODELDEPLOY_METRICS_ADDRESS": "127.0.0.1",
            "MODELDEPLOY_RESYNC_SECONDS": "60",
            **env,
        }
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modeldeploy_operator", *self.args],
            stdout=handle, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )
        handle.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup handlers, no lease release, exactly like an OOM kill or node loss."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> str:
        """The operator's own /metrics, over HTTP."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return str(response.read().decode())

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Harness:
    """What a test needs: kubectl as users type it, JSON reads, the operator processes, polling."""

    def __init__(self, cluster: Cluster, namespace: str, tmp_path: Path, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.tmp_path = tmp_path
        self.kubeconfig = kubeconfig
        self.operators: list[Operator] = []

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)

    def get(self, *args: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def get_or_none(self, *args: str) -> dict[str, Any] | None:
        done = self.kubectl("get", *args, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)} failed: {done.stderr}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def start_operator(self, *args: str, **env: str) -> Operator:
        args_list = list(args) if args else ["--namespace", self.namespace]
        operator = Operator(self.cluster, self.kubeconfig, self.tmp_path / f"operator-{len(self.operators)}.log",
                            {"MODELDEPLOY_LEASE_NAMESPACE": self.namespace, **env}, args_list)
        self.operators.append(operator.start())
        return operator

    def logs(self) -> str:
        return "\n".join(f"--- {op.log_path.name} ---\n{op.log()[-6000:]}" for op in self.operators)

    def eventually(self, check: Callable[[], T | None], timeout: float = 60.0, what: str = "condition") -> T:
        """Poll `check` until it returns a truthy value (exceptions count as not yet) or time runs out.

        OSError counts too: a Service answers only once kube-proxy has written its endpoint's rules."""
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                value = check()
                if value:
                    return value
                last = value
            except (AssertionError, KeyError, IndexError, TypeError, OSError, localcluster.ClusterError) as error:
                last = error
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}\n{self.logs()}")
            time.sleep(0.2)

    def modeldeploy(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`kubectl modeldeploy ARGS -n NAMESPACE` as users type it: kubectl finds the installed plugin on PATH
        and runs it with the cluster's kubeconfig (an administrator's, as a user's would be)."""
        env = {**self.cluster.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{self.cluster.env['PATH']}"}
        done = subprocess.run([str(self.cluster.bin_dir / "kubectl"), "modeldeploy", *args, "-n", self.namespace],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl modeldeploy {' '.join(args)} failed ({done.returncode}): {done.stderr}")
        return done

    def event_reasons(self, name: str = "sentiment") -> list[str]:
        """The reasons of the Events on a ModelDeployment, oldest first."""
        selector = f"involvedObject.kind=ModelDeployment,involvedObject.name={name}"
        found = self.get("events", "--field-selector", selector)
        items = sorted(found["items"], key=lambda e: e.get("eventTime") or e.get("lastTimestamp") or "")
        return [str(e.get("reason")) for e in items]

    def md(self, name: str = "sentiment") -> dict[str, Any]:
        return self.get("modeldeployment", name)

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any]:
        found = [c for c in (self.md(name).get("status") or {}).get("conditions", []) if c["type"] == kind]
        return found[0] if found else {}

    def wait_condition(self, name: str, kind: str, status: str, reason: str | None = None,
                       timeout: float = 60.0) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            found = self.condition(name, kind)
            ok = found.get("status") == status and (reason is None or found.get("reason") == reason)
            return found if ok else None
        try:
            return self.eventually(matches, timeout, f"{name} {kind}={status} {reason or ''}")
        except AssertionError as error:
            conditions = (self.md(name).get("status") or {}).get("conditions")
            raise AssertionError(f"{error}\nconditions: {json.dumps(conditions, indent=1)}") from None

    def bound_claim(self, name: str = "models") -> None:
        """The user's claim, bound by the real PV binder to a volume made for it."""
        claim = yaml.safe_load(CLAIM.read_text())
        claim["metadata"]["name"] = name
        self.kubectl("apply", "-f", "-", input=json.dumps(claim))
        volume = {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{self.namespace}-{name}", "labels": {"test-namespace": self.namespace}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Delete",
                     "hostPath": {"path": f"/tmp/{self.namespace}-{name}"},
                     "claimRef": {"namespace": self.namespace, "name": name}},
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
        self.eventually(lambda: self.get("pvc", name)["status"].get("phase") == "Bound", 60, f"claim {name} bound")

    def apply_manifest(self, manifest: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        if manifest is None:
            return self.kubectl("apply", "-f", str(MANIFEST))
        return self.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def manifest(name: str = "sentiment", **spec_overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    document["metadata"]["name"] = name
    # Small requests: the session's fake nodes are shared by every test, and some pods linger a moment.
    document["spec"]["resources"] = {"requests": {"cpu": "50m", "memory": "64Mi"}}
    document["spec"].update(spec_overrides)
    return {k: v for k, v in document.items()}


def bind_operator_rules(cluster: Cluster, namespace: str) -> tuple[str, Path]:
    """A ServiceAccount bound to exactly the chart's rules; returns the role's name and its kubeconfig."""
    rules = yaml.safe_load(RULES.read_text())
    role_name = f"modeldeploy-operator-{namespace}"
    cluster.apply_objects(
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": role_name}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": role_name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
         "subjects": [{"kind": "ServiceAccount", "name": "modeldeploy-operator", "namespace": namespace}]},
    )
    return role_name, cluster.service_account_kubeconfig(namespace, "modeldeploy-operator")


def refused_by_rbac(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if "forbidden" in line.lower() or " 403 " in line]


def install_crd(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.wait_established("modeldeployments.modeldeploy.dev")


def _install(cluster: Cluster, path: Path, crd_names: tuple[str, ...], timeout: float = 60.0) -> None:
    """Apply, then wait until each CRD is Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.wait_established(*crd_names, timeout=timeout)


ISTIO_CRD_NAMES = ("virtualservices.networking.istio.io", "destinationrules.networking.istio.io")
GATEWAY_API_CRD_NAMES = ("gatewayclasses.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io",
                         "httproutes.gateway.networking.k8s.io")


def install_istio(cluster: Cluster) -> None:
    """Istio's own VirtualService and DestinationRule CRDs, with their full schemas."""
    _install(cluster, routing_crds.istio_crds(), ISTIO_CRD_NAMES)


def keda_crds() -> Path:
    """KEDA's CRDs of the pinned release, from its Go module (hack/build-metrics-binaries.sh keda-crds)."""
    done = subprocess.run(["bash", str(REPO / "hack" / "build-metrics-binaries.sh"), "keda-crds"],
                          capture_output=True, text=True, check=True)
    return Path(done.stdout.strip().splitlines()[-1].split("=", 1)[1])


def install_keda_crds(cluster: Cluster) -> None:
    _install(cluster, keda_crds(), ("scaledobjects.keda.sh",))


def uninstall_keda_crds(cluster: Cluster) -> None:
    uninstall(cluster, keda_crds(), ("scaledobjects.keda.sh",))


def uninstall(cluster: Cluster, path: Path, crds: tuple[str, ...], timeout: float = 240.0) -> None:
    """Delete what `path` installed and wait until the CRDs the operator watches (`crds`) are gone; the
    others (a CRD deletes its objects first) finish in the background."""
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(path))
    deadline = time.monotonic() + timeout
    for name in crds:
        while cluster.kubectl("get", "crd", name, "--ignore-not-found", "-o", "name", check=False).stdout.strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} still there {timeout}s after its deletion")
            time.sleep(0.5)


def uninstall_istio(cluster: Cluster) -> None:
    uninstall(cluster, routing_crds.istio_crds(), ISTIO_CRD_NAMES)


def install_gateway_api(cluster: Cluster) -> None:
    """The Gateway API's standard channel, as `standard-install.yaml` installs it."""
    _install(cluster, routing_crds.gateway_api_crds(), GATEWAY_API_CRD_NAMES)


def uninstall_gateway_api(cluster: Cluster) -> None:
    uninstall(cluster, routing_crds.gateway_api_crds(), ("httproutes.gateway.networking.k8s.io",))
