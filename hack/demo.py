"""`make demo`: the main job of modeldeploy, end to end, on the local control plane.

1. start (or reuse) the local control plane and install the CRD;
2. run the operator with exactly the chart's ClusterRole;
3. put a tiny ONNX model on a volume, claim it, apply a ModelDeployment with a canary;
4. watch `kubectl get md` turn Ready, move canary traffic with `kubectl patch`, read the split back;
5. ask the model something over the Open Inference Protocol v2.

Where the machine can run a real node (root, the Debian packages of .ci/run), every step is real: the
images are built from the Dockerfiles, the claim is a local-path volume filled with the models, Ready
comes from the pods' readiness probes, and the answer comes through the Service. Elsewhere the pods run
on kwok nodes (simulated) and the answer comes from the serving image's server started on loopback.

The cluster and the operator keep running afterwards so you can try more; `make cluster-down` stops both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import localcluster
import routing_crds
from localkube import images
from localkube.node import missing_requirements

REPO = localcluster.REPO_ROOT
NAMESPACE = "default"
NAME = "sentiment"
OPERATOR_ACCOUNT = "modeldeploy-operator"
TIMEOUT_S = 90.0
REAL_TIMEOUT_S = 240.0


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def wait_for(what: str, probe: Callable[[], Any], timeout: float = TIMEOUT_S) -> Any:
    try:
        return localcluster.wait_for(what, probe, timeout, interval=0.5)
    except TimeoutError as error:
        raise SystemExit(f"demo: {error}") from None


class Demo:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.cluster = self._cluster()
        self.real = bool(self.cluster.real_nodes)
        self.models_dir = state_dir / "models"
        self.server_image = ""

    def _cluster(self) -> localcluster.Cluster:
        state_file = self.state_dir / "state.json"
        if state_file.exists():
            say(f"reusing the local control plane in {self.state_dir}")
            return localcluster.cluster_from_state(self.state_dir)
        unavailable = missing_requirements() + [f"no {t}" for t in ("dockerd", "debootstrap") if not shutil.which(t)]
        if unavailable:
            print(f"no real node on this machine ({', '.join(unavailable)}): pods run on kwok nodes (simulated)")
            say("starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        else:
            say("starting a local control plane and a real node (containerd, kubelet, kube-proxy, CoreDNS)")
        started = time.monotonic()
        plane = localcluster.LocalControlPlane(
            localcluster.ensure_binaries(with_node=not unavailable), self.state_dir, detach=True,
            real_nodes=0 if unavailable else 1,
        )
        cluster = plane.start()
        print(f"up in {time.monotonic() - started:.1f}s")
        return cluster

    def build_images(self) -> None:
        if not self.real:
            return
        say("building the serving image (Dockerfile.server, VARIANT=cpu) and loading it into the node")
        started = time.monotonic()
        docker = images.ensure_docker()
        self.server_image = images.project_images(docker)["server"]
        self.cluster.load_image(self.server_image)
        print(f"{self.server_image} ready on the node in {time.monotonic() - started:.1f}s")

    def show(self, *args: str) -> str:
        """Run kubectl the way a user types it, and show both the command and its output."""
        print(f"$ kubectl {' '.join(args)}", flush=True)
        output = self.cluster.kubectl(*args).stdout
        print(output.rstrip(), flush=True)
        return output

    def jsonpath(self, kind: str, name: str, path: str) -> str:
        result = self.cluster.kubectl("get", kind, name, "-n", NAMESPACE, "-o", f"jsonpath={path}", check=False)
        return result.stdout if result.returncode == 0 else ""

    def install_crds(self) -> None:
        say("installing the ModelDeployment CRD (and Istio's own routing CRDs, so the canary has weights)")
        self.show("apply", "--server-side", "-f", str(REPO / "crds"))
        self.show("apply", "--server-side", "-f", str(routing_crds.istio_crds()))
        self.cluster.wait_established()

    def start_operator(self) -> None:
        say("running the operator with the chart's least-privilege ClusterRole")
        rules = (REPO / "charts" / "modeldeploy" / "files" / "clusterrole-rules.yaml").read_text()
        role = f"apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {OPERATOR_ACCOUNT}\n"
        self.cluster.kubectl("apply", "-f", "-", input=f"{role}rules:\n{rules}")
        binding = self.cluster.kubectl(
            "create", "clusterrolebinding", OPERATOR_ACCOUNT, f"--clusterrole={OPERATOR_ACCOUNT}",
            f"--serviceaccount={NAMESPACE}:{OPERATOR_ACCOUNT}", "--dry-run=client", "-o", "json",
        ).stdout  # fmt: skip
        self.cluster.kubectl("apply", "-f", "-", input=binding)
        kubeconfig = self.cluster.service_account_kubeconfig(NAMESPACE, OPERATOR_ACCOUNT)
        log_path = self.state_dir / "operator.log"
        metrics_port = localcluster.free_port()  # the operator's own /metrics, on loopback only
        env = dict(self.cluster.env, KUBECONFIG=str(kubeconfig), MODELDEPLOY_LIVENESS_ENDPOINT="",
                   MODELDEPLOY_METRICS_ADDRESS="127.0.0.1", MODELDEPLOY_METRICS_PORT=str(metrics_port))
        if self.server_image:
            env["MODELDEPLOY_SERVER_IMAGE"] = self.server_image
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "modeldeploy_operator"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        localcluster.register_process(self.state_dir, "modeldeploy-operator", process.pid)
        print(f"operator pid {process.pid}, log {log_path}, metrics http://127.0.0.1:{metrics_port}/metrics")

    def write_models(self) -> dict[str, str]:
        if self.real:
            say("claiming a local-path volume and filling it with two tiny ONNX models (v1 and v2)")
            self.show("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "pvc.yaml"))
            wait_for("the claim to bind", lambda: self.jsonpath("pvc", "models", "{.status.phase}") == "Bound")
            volume_name = self.jsonpath("pvc", "models", "{.spec.volumeName}")
            self.models_dir = Path(self.cluster.kubectl(
                "get", "pv", volume_name, "-o", "jsonpath={.spec.hostPath.path}").stdout)
            return self._write_model_files()
        say("writing two tiny ONNX models (v1 and v2) onto a volume, and claiming it")
        requests = self._write_model_files()
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": "demo-models"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(self.models_dir), "type": "Directory"},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
        self.show("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "pvc.yaml"))
        wait_for("the claim to bind", lambda: self.jsonpath("pvc", "models", "{.status.phase}") == "Bound")
        return requests

    def _write_model_files(self) -> dict[str, str]:
        requests = {}
        for version, seed in (("v1", 0), ("v2", 1)):
            path = self.models_dir / NAME / version / "model.onnx"
            path.parent.mkdir(parents=True, exist_ok=True)
            made = subprocess.run(
                [sys.executable, str(REPO / "examples" / "make_tiny_model.py"), str(path), "--seed", str(seed)],
                capture_output=True,
                text=True,
                check=True,
            )
            requests[version] = made.stdout
            path.chmod(0o644)
        return requests

    def deploy(self) -> None:
        say("kubectl apply -f examples/modeldeployment-canary.yaml")
        self.show("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "modeldeployment-canary.yaml"))
        self.show("get", "md", "-n", NAMESPACE)
        say("waiting for the operator to make it Ready " + (
            "(real pods: the readiness probes pass once the model is loaded)" if self.real else "(kwok runs the pods)"))

        def ready() -> bool:
            return self.jsonpath("md", NAME, '{.status.conditions[?(@.type=="Ready")].status}') == "True"

        started = time.monotonic()
        wait_for("Ready=True", ready, REAL_TIMEOUT_S if self.real else TIMEOUT_S)
        print(f"Ready after {time.monotonic() - started:.1f}s")
        self.show("get", "md", "-n", NAMESPACE)
        self.show("get", "deployments,hpa,services,pdb,virtualservices,destinationrules", "-n", NAMESPACE)

    def move_traffic(self) -> None:
        say("moving 30% of the traffic to the canary with one kubectl patch")
        self.show(
            "patch", "md", NAME, "-n", NAMESPACE, "--type", "merge",
            "-p", '{"spec":{"canary":{"trafficPercent":30}}}',
        )  # fmt: skip
        wait_for("status.traffic to follow", lambda: self.jsonpath("md", NAME, "{.status.traffic.canary}") == "30")
        self.show("get", "md", "-n", NAMESPACE)
        print("$ kubectl get virtualservice sentiment -o jsonpath='{.spec.http[0].route[*].weight}'")
        print(self.jsonpath("virtualservice", NAME, "{.spec.http[0].route[*].weight}"))
        if self.real:
            print("(Istio's CRDs are here but no Istio proxy runs on this machine: the weights wait for a mesh, "
                  "and the Service itself spreads requests over every ready pod of both tracks)")
        self.show("describe", "md", NAME, "-n", NAMESPACE)

    def ask_the_service(self, request_body: str) -> None:
        """Real pods: the answer comes from them, through the Service's ClusterIP (routed via the node)."""
        say("asking the model through its Service (kube-proxy spreads requests over the ready pods)")
        cluster_ip = self.jsonpath("service", NAME, "{.spec.clusterIP}")
        port = self.jsonpath("service", NAME, "{.spec.ports[0].port}")
        url = f"http://{cluster_ip}:{port}/v2/models/{NAME}/infer"
        print(f"$ curl -s -H 'Content-Type: application/json' -d '{request_body.strip()}' {url}")
        request = urllib.request.Request(
            url, data=request_body.encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer = json.loads(response.read())
        print(json.dumps(answer, indent=2))
        print(f"inference answer: {answer['outputs'][0]['name']} = {answer['outputs'][0]['data']}")

    def serve(self, request_body: str) -> None:
        say("serving sentiment/v1 with the serving image's server on loopback, and asking it something")
        port = localcluster.free_port()
        model = self.models_dir / NAME / "v1" / "model.onnx"
        command = [
            sys.executable, "-m", "modeldeploy_server", "--model", str(model), "--name", NAME,
            "--port", str(port), "--grpc-port", str(localcluster.free_port()),
        ]  # fmt: skip
        env = dict(os.environ, MODEL_ROOT=str(self.models_dir), TERMINATION_MESSAGE_PATH=str(self.state_dir / "term"))
        print("$ python " + " ".join(command[1:]))
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        base = f"http://127.0.0.1:{port}"
        try:

            def ready() -> bool:
                if server.poll() is not None:
                    raise SystemExit(f"demo: the server exited: {server.stderr.read() if server.stderr else ''}")
                try:
                    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as response:  # noqa: S310
                        return bool(response.status == 200)
                except OSError:
                    return False

            wait_for("the server to be ready", ready, timeout=60)
            url = f"{base}/v2/models/{NAME}/infer"
            print(f"$ curl -s -H 'Content-Type: application/json' -d '{request_body.strip()}' {url}")
            request = urllib.request.Request(  # noqa: S310 - loopback
                url, data=request_body.encode(), headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                answer = json.loads(response.read())
            print(json.dumps(answer, indent=2))
            print(f"inference answer: {answer['outputs'][0]['name']} = {answer['outputs'][0]['data']}")
        finally:
            server.terminate()
            server.wait(timeout=30)

    def next_steps(self) -> None:
        say("done — the cluster and the operator are still running")
        print(
            f"""Try next:
  export KUBECONFIG={self.cluster.kubeconfig}
  export PATH={self.cluster.bin_dir}:$PATH
  kubectl get md -w
  kubectl modeldeploy status {NAME}
  kubectl modeldeploy promote {NAME}          # canary becomes stable
  kubectl patch md {NAME} --type merge -p '{{"spec":{{"replicas":{{"min":3,"max":6}}}}}}'
  kubectl delete md {NAME}                    # garbage collection removes every child
  less {self.state_dir / "operator.log"}
Stop everything:
  make cluster-down"""
        )


def main() -> int:
    state_dir = localcluster.DEFAULT_STATE_DIR.resolve()
    demo = Demo(state_dir)
    demo.install_crds()
    demo.build_images()
    requests = demo.write_models()
    demo.start_operator()
    demo.deploy()
    demo.move_traffic()
    if demo.real:
        demo.ask_the_service(requests["v1"])
    else:
        demo.serve(requests["v1"])
    demo.next_steps()
    return 0


if __name__ == "__main__":
    sys.exit(main())
