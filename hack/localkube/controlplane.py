"""The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok) and its handle.

Every process listens on 127.0.0.1 on a free port, except that with real nodes the API server listens on
the host side of the nodes' veth, where kubelet, kube-proxy and pods reach it. Every file lives in one
folder that ``stop`` removes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localkube import images, storage
from localkube.errors import ClusterError
from localkube.network import NodeNetwork
from localkube.node import RealNode, missing_requirements, node_leftovers, stop_node
from localkube.paths import BUILD_SCRIPT
from localkube.pki import CertificateAuthority, KeyPair, Pki, kubeconfig_yaml, write_kubeconfig
from localkube.processes import free_port, spawn, stop_processes

# Room for 65k Services: benchmarks create a Service per ModelDeployment, thousands of them.
SERVICE_CIDR = "10.96.0.0/16"
STARTUP_TIMEOUT_S = 90.0

GPU_NODE = "kwok-gpu-0"
CPU_NODES = ("kwok-node-0", "kwok-node-1")
REAL_NODE_PREFIX = "real-node-"

CLIENT_IDENTITIES: dict[str, tuple[str, str | None]] = {
    "admin": ("modeldeploy-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
    # The API server's identity towards kubelets (logs, exec, port-forward).
    "apiserver-kubelet": ("kube-apiserver-kubelet-client", "system:masters"),
    # The aggregation layer's identity towards extension API servers (metrics-server, KEDA's adapter).
    "front-proxy": ("front-proxy-client", None),
}
# Client identities that are certificates for the API server itself, not kubeconfigs.
APISERVER_CLIENTS = ("apiserver-kubelet", "front-proxy")


def ensure_binaries(*, with_node: bool = False) -> Path:
    """Build (or find in the cache) the binaries; ``with_node`` adds kubelet, kube-proxy, CoreDNS, pause."""
    command = ["bash", str(BUILD_SCRIPT), *(["--with-node"] if with_node else [])]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its log is above)")
    return Path(result.stdout.strip().splitlines()[-1])


def kwok_node(name: str, *, gpus: int = 0) -> dict[str, object]:
    """A Node object kwok keeps Ready. GPU nodes carry the labels and taint of NVIDIA's device plugin."""
    capacity: dict[str, str] = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": name,
        "type": "kwok",
    }
    spec: dict[str, object] = {}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
        spec["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
        },
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


@dataclass(frozen=True)
class NodeInfo:
    """What a client needs to know about a real node: its name, address and containerd."""

    name: str
    ip: str
    containerd_socket: Path


@dataclass
class Cluster:
    """A handle on a running cluster: its kubeconfig and the tools that talk to it."""

    kubeconfig: Path
    bin_dir: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    real_nodes: list[NodeInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.env:
            self.env = dict(os.environ)
            self.env["KUBECONFIG"] = str(self.kubeconfig)
            self.env["PATH"] = f"{self.bin_dir}{os.pathsep}{self.env.get('PATH', '')}"

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as a user would; on failure (with check) the error carries stderr."""
        command = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}{result.stdout}")
        return result

    def wait_established(self, *crds: str, timeout: float = 60.0) -> None:
        """Until each CRD (all of them when none is named) is Established. Polled: `kubectl wait` fails
        outright on a CRD the API server has not yet given a status."""
        names = crds or tuple(self.kubectl("get", "crd", "-o", "name").stdout.split())
        query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
        deadline = time.monotonic() + timeout
        for name in names:
            name = name.removeprefix("customresourcedefinition.apiextensions.k8s.io/").removeprefix("crd/")
            while self.kubectl("get", "crd", name, "-o", query, check=False).stdout != "True":
                if time.monotonic() > deadline:
                    raise ClusterError(f"CRD {name} not Established after {timeout:.0f}s")
                time.sleep(0.2)

    def apply_objects(self, *objects: dict[str, object]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def service_account_kubeconfig(self, namespace: str, name: str, duration: str = "24h") -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (created if missing), via TokenRequest."""
        exists = self.kubectl("get", "serviceaccount", name, "-n", namespace, check=False)
        if exists.returncode != 0:
            self.kubectl("create", "serviceaccount", name, "-n", namespace)
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        admin = json.loads(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]["cluster"]
        ca_pem = base64.b64decode(cluster["certificate-authority-data"])
        path = self.workdir / f"kubeconfig-sa-{namespace}-{name}"
        path.write_text(kubeconfig_yaml(cluster["server"], ca_pem, {"token": token}))
        path.chmod(0o600)
        return path

    def load_image(self, tag: str) -> None:
        """Make a locally built image available on every real node, as if it had been pulled."""
        docker = images.ensure_docker()
        tarball = images.saved_image(docker, tag)
        for node in self.real_nodes:
            result = subprocess.run(
                ["ctr", f"--address={node.containerd_socket}", "--namespace=k8s.io", "images", "import", str(tarball)],
                capture_output=True, text=True, timeout=600, check=False,
            )
            if result.returncode != 0:
                raise ClusterError(f"loading {tag} into {node.name} failed: {result.stderr.strip()}")


@dataclass
class LocalControlPlane:
    """Starts and stops etcd, the apiserver, the controller-manager, the scheduler, kwok and real nodes.

    ``detach`` starts processes in their own session so they outlive the command that started them
    (``make cluster-up``); otherwise they die with their parent. ``real_nodes=1`` adds a kubelet-run node
    in its own network namespace (root and the Debian packages of DESIGN §5.1 needed).
    """

    bin_dir: Path
    workdir: Path
    detach: bool = False
    gpu_nodes: int = 1
    real_nodes: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    network: NodeNetwork | None = None
    nodes: list[RealNode] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def host(self) -> str:
        """Where the API server listens: loopback, or the host side of the real nodes' link."""
        return self.network.host_ip if self.network else "127.0.0.1"

    @property
    def service_cidr(self) -> str:
        return self.network.service_cidr if self.network else SERVICE_CIDR

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.ports['apiserver']}"

    def start(self) -> Cluster:
        if self.real_nodes > 1:
            raise ClusterError("real_nodes: at most 1 real node per cluster is supported")
        if self.real_nodes:
            missing = missing_requirements()
            if missing:
                raise ClusterError(f"a real node cannot run here: {', '.join(missing)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")}
        try:
            if self.real_nodes:
                self.network = NodeNetwork.claim()
                self._write_state()  # from here on, `down` must find the network even if start fails
                self.network.create()
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait_for_apiserver()
            self._start_controllers()
            cluster = Cluster(self.kubeconfig, self.bin_dir, self.workdir)
            self._add_nodes(cluster)
            self._wait_until_usable(cluster)
            self._start_real_nodes(cluster)
            self._write_state()
            return cluster
        except BaseException:
            self.stop()
            raise

    # The parts, in start order.

    def _write_pki(self) -> None:
        service_ip = str(next(ipaddress.ip_network(self.service_cidr).hosts()))
        pki = Pki.generate(CLIENT_IDENTITIES, service_ip=service_ip, server_ips=sorted({"127.0.0.1", self.host}))
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(exist_ok=True)
        files = {
            "ca.crt": pki.ca.cert_pem,
            "ca.key": pki.ca.key_pem,  # real nodes get their certificates from it
            "apiserver.crt": pki.serving.cert_pem,
            "apiserver.key": pki.serving.key_pem,
            "sa.key": pki.service_account_key_pem,
            "sa.pub": pki.service_account_pub_pem,
        }
        for name, content in files.items():
            (pki_dir / name).write_bytes(content)
            (pki_dir / name).chmod(0o600)
        for label in APISERVER_CLIENTS:
            pki.clients[label].write(pki_dir / f"{label}.crt", pki_dir / f"{label}.key")
        for label, pair in pki.clients.items():
            if label in APISERVER_CLIENTS:
                continue
            path = self.kubeconfig if label == "admin" else self.workdir / f"kubeconfig-{label}"
            write_kubeconfig(path, self.server, pki.ca.cert_pem, pair)

    def _spawn(self, name: str, args: list[str]) -> None:
        self.processes[name] = spawn(
            [str(self.bin_dir / args[0]), *args[1:]], self.workdir / f"{name}.log", self.workdir, detach=self.detach
        )

    def restart(self, name: str) -> None:
        """SIGKILL one process and start it again with the same arguments, as after an OOM kill; for the
        API server, return once /readyz answers again."""
        process = self.processes[name]
        argv = [str(arg) for arg in process.args]  # type: ignore[union-attr]  # always the list _spawn gave
        process.kill()
        process.wait(timeout=30)
        self._spawn(name, [Path(argv[0]).name, *argv[1:]])
        if self.detach:
            self._write_state()
        if name == "kube-apiserver":
            self._wait_for_apiserver()

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                "etcd",
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync=true",  # throwaway data: durability costs seconds per test run
                "--log-level=warn",
            ],
        )

    def apiserver_args(self) -> list[str]:
        pki = self.workdir / "pki"
        return [
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            # Node: kubelets see only their own node's pods, secrets and volumes.
            "--authorization-mode=Node,RBAC",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
            # The aggregation layer (as kubeadm sets it up): extension API servers such as metrics-server
            # and KEDA's metrics adapter trust the front proxy's requests through these headers.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy.key'}",
            # Straight to the extension server's endpoint (they run beside the node, not behind kube-proxy).
            "--enable-aggregator-routing=true",
            "--allow-privileged=true",
            # With real nodes, the `kubernetes` Service points at the API server, so in-cluster clients work.
            f"--endpoint-reconciler-type={'lease' if self.network else 'none'}",
            "--v=1",
        ]

    def _start_apiserver(self) -> None:
        self._spawn("kube-apiserver", self.apiserver_args())

    def _start_controllers(self) -> None:
        pki_dir = self.workdir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager",
                f"--kubeconfig={self.workdir / 'kubeconfig-controller-manager'}",
                f"--authentication-kubeconfig={self.workdir / 'kubeconfig-controller-manager'}",
                f"--authorization-kubeconfig={self.workdir / 'kubeconfig-controller-manager'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['kcm']}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                f"--root-ca-file={pki_dir / 'ca.crt'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--controllers=*,-node-ipam-controller,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller",
                # Autoscaling decisions every 2 s instead of 15 s, so tests do not wait on them.
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler",
                f"--kubeconfig={self.workdir / 'kubeconfig-scheduler'}",
                f"--authentication-kubeconfig={self.workdir / 'kubeconfig-scheduler'}",
                f"--authorization-kubeconfig={self.workdir / 'kubeconfig-scheduler'}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.ports['scheduler']}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        self._spawn(
            "kwok",
            [
                "kwok",
                f"--kubeconfig={self.workdir / 'kubeconfig-kwok'}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.1.1",
                "--node-lease-duration-seconds=40",
            ],
        )

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ClusterError(f"{name} exited with code {process.returncode}; end of its log:\n{log}")
        for node in self.nodes:
            node.check_alive()

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (logs in {self.workdir})")

    def _kubectl_ok(self, *args: str) -> bool:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", "--request-timeout=5s", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.returncode == 0

    def _wait_for_apiserver(self) -> None:
        self._wait("the API server to report /readyz", lambda: self._kubectl_ok("get", "--raw=/readyz"))

    def _add_nodes(self, cluster: Cluster) -> None:
        nodes = [kwok_node(name) for name in CPU_NODES]
        nodes += [kwok_node(GPU_NODE if i == 0 else f"kwok-gpu-{i}", gpus=4) for i in range(self.gpu_nodes)]
        cluster.apply_objects(*nodes)

    def _ready_nodes(self, cluster: Cluster, selector: str) -> list[str]:
        result = cluster.kubectl(
            "get", "nodes", "-l", selector, "-o",
            'jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            check=False,
        )
        if result.returncode != 0:
            return []
        return [line.split("=")[0] for line in result.stdout.split() if line.endswith("=True")]

    def _wait_until_usable(self, cluster: Cluster) -> None:
        expected = len(CPU_NODES) + self.gpu_nodes
        self._wait("kwok to mark the fake nodes Ready",
                   lambda: len(self._ready_nodes(cluster, "type=kwok")) == expected)
        # Pods are admitted only once the controller-manager has made the namespace's ServiceAccount.
        self._wait("the default ServiceAccount", lambda: self._kubectl_ok("get", "serviceaccount", "default"))

    def _start_real_nodes(self, cluster: Cluster) -> None:
        if not self.real_nodes:
            return
        assert self.network is not None
        docker = images.ensure_docker()
        pause = images.pause_image(docker, self.bin_dir / "pause")
        pause_tar = images.saved_image(docker, pause)
        ca = CertificateAuthority.load(KeyPair((self.workdir / "pki" / "ca.crt").read_bytes(),
                                               (self.workdir / "pki" / "ca.key").read_bytes()))
        for index in range(self.real_nodes):
            node = RealNode(f"{REAL_NODE_PREFIX}{index}", self.bin_dir, self.workdir / f"node-{index}",
                            self.network, self.server, pause, detach=self.detach)
            self.nodes.append(node)
            self._write_state()
            node.start(ca)
            node.import_image(pause_tar)
            cluster.apply_objects(*node.cluster_objects())
        self._start_storage(cluster)
        cluster.real_nodes = self.node_infos()
        self._wait("the real node to be Ready",
                   lambda: len(self._ready_nodes(cluster, "type=real")) == self.real_nodes)

    def _start_storage(self, cluster: Cluster) -> None:
        """Claims of the default class `local-path` get a folder on the real node (see localkube.storage)."""
        cluster.apply_objects(storage.storage_class())
        env = {**cluster.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        root = self.workdir / "storage"
        root.mkdir(exist_ok=True)
        self.processes["local-path-provisioner"] = spawn(
            [sys.executable, "-m", "localkube.storage", str(self.kubeconfig), str(root), self.nodes[0].name],
            self.workdir / "local-path-provisioner.log", self.workdir, detach=self.detach, env=env,
        )

    def node_infos(self) -> list[NodeInfo]:
        assert self.network is not None or not self.nodes
        return [NodeInfo(n.name, n.network.node_ip, n.containerd_socket) for n in self.nodes]

    # Bookkeeping for detached clusters.

    def _write_state(self) -> None:
        pids = {name: p.pid for name, p in self.processes.items()}
        state = {
            "pids": pids,
            "ports": self.ports,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "network_slot": self.network.slot if self.network else None,
            "real_nodes": [
                {"name": n.name, "workdir": str(n.workdir), "ip": n.network.node_ip, "pids": n.pids(),
                 "cgroup": n.cgroup_name, "containerd_socket": str(n.containerd_socket)}
                for n in self.nodes
            ],
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def stop(self) -> None:
        """Stop every process (TERM, then KILL after 10 s), the real nodes, their network; remove the folder.

        A node that cannot be stopped completely (a mount that will not detach) does not keep the control
        plane running or the network slot taken; its error is raised once the rest is stopped, and the
        folder, with mounts still under it, is kept.
        """
        try:
            for node in reversed(self.nodes):
                node.stop()
        finally:
            stop_processes({name: p.pid for name, p in self.processes.items()}, self.processes)
            self.processes.clear()
            if self.network:
                self.network.delete()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Whatever a stopped cluster left on the machine (empty after a complete ``stop``)."""
        found = [f"file {self.workdir}"] if self.workdir.exists() else []
        for node in self.nodes:
            found += node_leftovers(node.workdir, node.cgroup_name, node.containerd_socket)
        if self.network:
            found += self.network.leftovers()
        return found


def stop_from_state(state_dir: Path) -> None:
    """`down` for a detached cluster: everything its state file names, real nodes and network included."""
    state = json.loads((state_dir / "state.json").read_text())
    try:
        for node in reversed(state.get("real_nodes", [])):
            stop_node(Path(node["workdir"]), node["pids"], node["cgroup"], Path(node["containerd_socket"]))
    finally:  # as in LocalControlPlane.stop: the rest stops even when a node cannot
        stop_processes(state["pids"])
        if state.get("network_slot") is not None:
            NodeNetwork(state["network_slot"]).delete()


def cluster_from_state(state_dir: Path) -> Cluster:
    state = json.loads((state_dir / "state.json").read_text())
    nodes = [NodeInfo(n["name"], n["ip"], Path(n["containerd_socket"])) for n in state.get("real_nodes", [])]
    return Cluster(Path(state["kubeconfig"]), Path(state["bin_dir"]), state_dir, real_nodes=nodes)
