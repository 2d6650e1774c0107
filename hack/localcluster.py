"""A real, local Kubernetes control plane on loopback, for tests, benchmarks and the demo.

etcd, kube-apiserver (certificate auth and RBAC, like controller-runtime's envtest),
kube-controller-manager (garbage collection, Deployment -> ReplicaSet -> Pod, HPA),
kube-scheduler and kwok (fake nodes that turn Pods Running without containers), all built
from source by ``hack/build-binaries.sh``. Nothing is mocked: clients talk to the real API server.

Use it as a context manager (tests), or from the command line (people)::

    python hack/localcluster.py up      # starts detached, prints the KUBECONFIG to export
    python hack/localcluster.py down    # stops it and removes its folder
    python hack/localcluster.py status
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-binaries.sh"
# Where `up` keeps a detached cluster's files (and `down` finds them); the demo uses the same folder.
DEFAULT_STATE_DIR = Path(os.environ.get("MODELDEPLOY_CLUSTER_DIR", str(REPO_ROOT / ".cluster")))
# Room for 65k Services: benchmarks create a Service per ModelDeployment, thousands of them.
SERVICE_CIDR = "10.96.0.0/16"
STARTUP_TIMEOUT_S = 90.0

GPU_NODE = "kwok-gpu-0"
CPU_NODES = ("kwok-node-0", "kwok-node-1")


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached; the message says which part."""


def ensure_binaries() -> Path:
    """Build (or find in the cache) the control-plane binaries; return their folder."""
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT} failed with exit code {result.returncode} (its log is above)")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the process that started it dies (Linux)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    ca: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    is_ca: bool = False,
    server_names: Sequence[str] = (),
    server_ips: Sequence[str] = (),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (ca[0].subject, ca[1]) if ca else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server_names or server_ips:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
            alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Pki:
    """Everything the apiserver and its clients need to trust each other."""

    ca: KeyPair
    serving: KeyPair
    clients: dict[str, KeyPair]
    service_account_key_pem: bytes
    service_account_pub_pem: bytes

    @classmethod
    def generate(cls, client_identities: dict[str, tuple[str, str | None]]) -> Pki:
        ca_key = _new_key()
        ca_cert = _issue(_name("modeldeploy-local-ca"), ca_key, None, is_ca=True)
        pem = serialization.Encoding.PEM
        service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
        serving_key = _new_key()
        serving_cert = _issue(
            _name("kube-apiserver"),
            serving_key,
            (ca_cert, ca_key),
            server_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            server_ips=["127.0.0.1", service_ip],
        )
        clients = {}
        for label, (common_name, organization) in client_identities.items():
            key = _new_key()
            cert = _issue(_name(common_name, organization), key, (ca_cert, ca_key))
            clients[label] = KeyPair(cert.public_bytes(pem), _key_pem(key))
        sa_key = _new_key()
        return cls(
            ca=KeyPair(ca_cert.public_bytes(pem), _key_pem(ca_key)),
            serving=KeyPair(serving_cert.public_bytes(pem), _key_pem(serving_key)),
            clients=clients,
            service_account_key_pem=_key_pem(sa_key),
            service_account_pub_pem=sa_key.public_key().public_bytes(
                pem, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )


CLIENT_IDENTITIES: dict[str, tuple[str, str | None]] = {
    "admin": ("modeldeploy-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok-controller", "system:masters"),
}


def kubeconfig_yaml(server: str, ca_pem: bytes, user: dict[str, str], name: str = "modeldeploy-local") -> str:
    """A kubeconfig (JSON is valid YAML) for one cluster, one user and one context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    }
    return json.dumps(config, indent=2) + "\n"


def _cert_user(pair: KeyPair) -> dict[str, str]:
    return {
        "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
        "client-key-data": base64.b64encode(pair.key_pem).decode(),
    }


# --- fake nodes ---------------------------------------------------------------------------------


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


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A handle on a running cluster: its kubeconfig and the tools that talk to it."""

    kubeconfig: Path
    bin_dir: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)

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


@dataclass
class LocalControlPlane:
    """Starts and stops etcd, the apiserver, the controller-manager, the scheduler and kwok.

    Every process listens on 127.0.0.1 on a free port; every file lives in one folder that
    ``stop`` removes. ``detach`` starts processes in their own session so they outlive the
    command that started them (``make cluster-up``); otherwise they die with their parent.
    """

    bin_dir: Path
    workdir: Path
    detach: bool = False
    gpu_nodes: int = 1
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def start(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler")}
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait_for_apiserver()
            self._start_controllers()
            cluster = Cluster(self.kubeconfig, self.bin_dir, self.workdir)
            self._add_nodes(cluster)
            self._wait_until_usable(cluster)
            self._write_state()
            return cluster
        except BaseException:
            self.stop()
            raise

    # The parts, in start order.

    def _write_pki(self) -> None:
        pki = Pki.generate(CLIENT_IDENTITIES)
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(exist_ok=True)
        files = {
            "ca.crt": pki.ca.cert_pem,
            "apiserver.crt": pki.serving.cert_pem,
            "apiserver.key": pki.serving.key_pem,
            "sa.key": pki.service_account_key_pem,
            "sa.pub": pki.service_account_pub_pem,
        }
        for name, content in files.items():
            (pki_dir / name).write_bytes(content)
            (pki_dir / name).chmod(0o600)
        for label, pair in pki.clients.items():
            path = self.kubeconfig if label == "admin" else self.workdir / f"kubeconfig-{label}"
            path.write_text(kubeconfig_yaml(self.server, pki.ca.cert_pem, _cert_user(pair)))
            path.chmod(0o600)

    def _spawn(self, name: str, args: list[str], log_mode: str = "wb") -> None:
        log = (self.workdir / f"{name}.log").open(log_mode)
        self.processes[name] = subprocess.Popen(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
            start_new_session=self.detach,
            preexec_fn=None if self.detach else _die_with_parent,
        )
        log.close()

    def restart(self, name: str) -> None:
        """SIGKILL one process and start it again with the same arguments, as after an OOM kill; for the
        API server, return once /readyz answers again."""
        process = self.processes[name]
        argv = [str(arg) for arg in process.args]  # type: ignore[union-attr]  # always the list _spawn gave
        process.kill()
        process.wait(timeout=30)
        self._spawn(name, [Path(argv[0]).name, *argv[1:]], log_mode="ab")
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

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver",
                f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports['apiserver']}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--v=1",
            ],
        )

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
                f"--service-cluster-ip-range={SERVICE_CIDR}",
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

    def _wait_until_usable(self, cluster: Cluster) -> None:
        def nodes_ready() -> bool:
            result = cluster.kubectl(
                "get",
                "nodes",
                "-o",
                'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
                check=False,
            )
            states = result.stdout.split()
            return result.returncode == 0 and len(states) == len(CPU_NODES) + self.gpu_nodes and set(states) == {"True"}

        self._wait("kwok to mark the fake nodes Ready", nodes_ready)
        # Pods are admitted only once the controller-manager has made the namespace's ServiceAccount.
        self._wait("the default ServiceAccount", lambda: self._kubectl_ok("get", "serviceaccount", "default"))

    # Bookkeeping for detached clusters.

    def _write_state(self) -> None:
        state = {
            "pids": {name: p.pid for name, p in self.processes.items()},
            "ports": self.ports,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    def stop(self) -> None:
        """Stop every process (TERM, then KILL after 10 s) and remove the folder."""
        stop_processes({name: p.pid for name, p in self.processes.items()}, self.processes)
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def stop_processes(pids: dict[str, int], children: dict[str, subprocess.Popen[bytes]] | None = None) -> None:
    """Stop in reverse start order so clients go before the apiserver and the apiserver before etcd."""
    for name in reversed(list(pids)):
        pid = pids[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if children and name in children:
                if children[name].poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if children and name in children:
                children[name].wait(timeout=10)


def register_process(state_dir: Path, name: str, pid: int) -> None:
    """Make ``down`` stop a process started next to a detached cluster (the demo's operator)."""
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["pids"][name] = pid
    state_file.write_text(json.dumps(state, indent=2) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is not us) counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


# --- entry points -------------------------------------------------------------------------------


class ClusterSession:
    """Context manager for tests: a fresh local cluster, or the user's own with ``USE_EXISTING_CLUSTER=1``."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._workdir = workdir
        self._plane: LocalControlPlane | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> Cluster:
        bin_dir = ensure_binaries()
        if os.environ.get("USE_EXISTING_CLUSTER") == "1":
            kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0]
            self._tmp = Path(tempfile.mkdtemp(prefix="modeldeploy-existing-"))
            return Cluster(Path(kubeconfig), bin_dir, self._tmp)
        workdir = self._workdir or Path(tempfile.mkdtemp(prefix="modeldeploy-cluster-"))
        self._plane = LocalControlPlane(bin_dir, workdir)
        return self._plane.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._plane:
            self._plane.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(workdir: Path | None = None) -> Iterator[Cluster]:
    with ClusterSession(workdir) as cluster:
        yield cluster


def _up(state_dir: Path) -> int:
    if (state_dir / "state.json").exists():
        print(f"a cluster is already running (state in {state_dir}); `make cluster-down` first", file=sys.stderr)
        return 1
    started = time.monotonic()
    plane = LocalControlPlane(ensure_binaries(), state_dir, detach=True)
    plane.start()
    print(f"cluster up in {time.monotonic() - started:.1f}s; logs in {state_dir}", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig}")
    print(f"export PATH={plane.bin_dir}:$PATH")
    return 0


def _down(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print("no cluster is running", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
        return 0
    state = json.loads(state_file.read_text())
    stop_processes(state["pids"])
    shutil.rmtree(state_dir, ignore_errors=True)
    print("cluster stopped", file=sys.stderr)
    return 0


def _status(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print("no cluster is running")
        return 1
    state = json.loads(state_file.read_text())
    for name, pid in state["pids"].items():
        print(f"{name:<26} pid {pid:<8} {'running' if _pid_alive(pid) else 'GONE'}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(ensure_binaries())
        return 0
    return {"up": _up, "down": _down, "status": _status}[args.command](args.state_dir.resolve())


if __name__ == "__main__":
    sys.exit(main())
