"""Helpers for tests on real pods: the model claim's folder, models, inference over real HTTP."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

import localcluster
from testsupport.onnx_models import build_slow
from testsupport.operator_harness import Harness, bind_operator_rules, refused_by_rbac

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_tiny_model", REPO / "examples" / "make_tiny_model.py")
assert _spec and _spec.loader
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

NAME = "sentiment"
REAL_NODE_SELECTOR = {"modeldeploy.dev/real-node": "true"}
REQUEST = tiny.sample_request(batch=2)


def write_model(folder: Path, relative: str, seed: int) -> str:
    """A tiny ONNX model on the claim (as a user would copy it there); returns its sha256."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tiny.build_model(seed).SerializeToString()
    path.write_bytes(data)
    path.chmod(0o644)
    return hashlib.sha256(data).hexdigest()


def expected_output(folder: Path, relative: str) -> list[float]:
    """What onnxruntime in this process answers for REQUEST: the numbers the pods must return."""
    session = onnxruntime.InferenceSession(str(folder / relative), providers=["CPUExecutionProvider"])
    first = REQUEST["inputs"][0]
    inputs = np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])
    result = session.run(None, {first["name"]: inputs})[0]
    return [float(x) for x in np.asarray(result).ravel()]


def infer(base_url: str, name: str = NAME, timeout: float = 10.0) -> list[float]:
    """One Open Inference Protocol v2 request over real HTTP; returns the first output's data."""
    request = urllib.request.Request(
        f"{base_url}/v2/models/{name}/infer", data=json.dumps(REQUEST).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return [float(x) for x in answer["outputs"][0]["data"]]


def close(got: list[float], want: list[float]) -> bool:
    return len(got) == len(want) and bool(np.allclose(got, want, rtol=1e-5, atol=1e-6))


def model_deployment(path: str, *, name: str = NAME, sha256: str | None = None, replicas: int = 1,
                     canary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ModelDeployment whose pods run on the real node (the claim's volume is there)."""
    model: dict[str, Any] = {"pvc": "models", "path": path}
    if sha256:
        model["sha256"] = sha256
    spec: dict[str, Any] = {
        "model": model,
        "replicas": {"min": replicas},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        "nodeSelector": REAL_NODE_SELECTOR,
    }
    if canary:
        spec["canary"] = canary
    return {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


@dataclass
class Serving:
    """A namespace with the operator running, a bound local-path claim `models`, and its folder."""

    harness: Harness
    models: Path
    images: dict[str, str]

    def service_url(self, name: str = "sentiment") -> str:
        service = self.harness.get("service", name)
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"


def write_heavy_model(folder: Path, relative: str) -> None:
    """The CPU-heavy model of the autoscaling tests on the claim: a deep MLP that keeps a core busy for
    milliseconds a row (input `input`, FP32 [batch, 64])."""
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    build_slow(path, layers=8, width=1024)
    path.chmod(0o644)


HEAVY_REQUEST = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def post_infer(base_url: str, name: str, body: dict[str, Any], timeout: float = 30.0) -> int:
    """One v2 inference; the HTTP status (0 when the connection failed)."""
    request = urllib.request.Request(f"{base_url}/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def claim_folder(cluster: localcluster.Cluster, namespace: str, claim: str) -> Path:
    volume = cluster.kubectl("get", "pvc", claim, "-n", namespace, "-o", "jsonpath={.spec.volumeName}").stdout
    path = cluster.kubectl("get", "pv", volume, "-o", "jsonpath={.spec.hostPath.path}").stdout
    return Path(path)


@contextmanager
def operator_with_claim(cluster: localcluster.Cluster, namespace: str, tmp_path: Path,
                        **operator_env: str) -> Iterator[tuple[Harness, Path]]:
    """The operator (a host process bound to exactly the chart's rules) and a bound local-path claim
    `models`; yields the harness and the claim's folder. Fails the test if RBAC refused the operator."""
    role_name, kubeconfig = bind_operator_rules(cluster, namespace)
    harness = Harness(cluster, namespace, tmp_path, kubeconfig)
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    harness.kubectl("apply", "-f", "-", input=json.dumps(claim))  # the default class: local-path
    harness.eventually(lambda: harness.get("pvc", "models")["status"].get("phase") == "Bound", 60, "claim bound")
    harness.start_operator(**operator_env)
    try:
        yield harness, claim_folder(cluster, namespace, "models")
    finally:
        for operator in harness.operators:
            operator.stop()
        logs = harness.logs()
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", role_name, "--ignore-not-found", check=False)
    refused = refused_by_rbac(logs)
    assert not refused, "the operator was refused by RBAC:\n" + "\n".join(refused[:10])
