"""A real node: containerd, kubelet, kube-proxy and cluster DNS in the node's network namespace.

Pods run for real (runc, the bridge CNI plugin), Services work through kube-proxy's iptables rules,
and CoreDNS answers for cluster.local, so a pod resolves the URL in a ModelDeployment's status.
Everything it makes lives in its folder, its network namespace and one cgroup subtree; ``stop``
removes them all (see ``leftovers``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localkube.errors import ClusterError
from localkube.network import NodeNetwork
from localkube.pki import CertificateAuthority, write_kubeconfig
from localkube.processes import pid_alive, spawn, stop_processes

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNTIME_ROOT = Path("/run/modeldeploy")
CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
NODE_LABEL = "modeldeploy.dev/real-node"
MNT_DETACH = 2
STARTUP_TIMEOUT_S = 120.0
CONTAINERD_TMPFS_SIZE = "8g"  # a ceiling, not a reservation: tmpfs takes memory only for what is written
# The host commands a real node needs (Debian packages: containerd, runc, containernetworking-plugins,
# iptables, conntrack; util-linux for nsenter, iproute2 for ip).
REQUIRED_COMMANDS = ("containerd", "ctr", "runc", "iptables", "conntrack", "nsenter", "ip")


def missing_requirements() -> list[str]:
    """Why a real node cannot run on this machine (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    missing += [f"no {command}" for command in REQUIRED_COMMANDS if not shutil.which(command)]
    if not any((path / "bridge").exists() for path in CNI_BIN_DIRS):
        missing.append("no CNI bridge plugin (containernetworking-plugins)")
    return missing


def _mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return points


def unmount_all(folder: Path) -> list[str]:
    """Detach every mount under the folder, deepest first; return what could not be detached."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    for _ in range(5):  # stacked mounts on one point need a round each
        points = sorted(set(_mounts_under(folder)), key=lambda p: p.count("/"), reverse=True)
        if not points:
            return []
        for point in points:
            libc.umount2(point.encode(), MNT_DETACH)
    return _mounts_under(folder)


@dataclass
class RealNode:
    """One kubelet-run node beside the kwok nodes; its processes run in ``network``'s namespace."""

    name: str
    bin_dir: Path
    workdir: Path
    network: NodeNetwork
    server: str
    pause_image: str
    detach: bool = False
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def cgroup_name(self) -> str:
        return f"modeldeploy-{self.network.netns}-{self.name}"

    @property
    def socket_dir(self) -> Path:
        """Sockets and kubelet's root live under a short /run path: a unix socket path must stay under
        104 bytes, and the cluster's folder (a test's tmp path) may be longer than that already."""
        return RUNTIME_ROOT / f"{self.network.slot}-{self.name.rsplit('-', 1)[-1]}"

    @property
    def containerd_socket(self) -> Path:
        return self.socket_dir / "containerd.sock"

    # --- start ---------------------------------------------------------------------------------

    def start(self, ca: CertificateAuthority) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_credentials(ca)
        self._make_cgroups()
        self._start_containerd()
        self._write_cni_config()
        self._start_kubelet()
        self._start_kube_proxy()
        self._start_dns()

    def _write_credentials(self, ca: CertificateAuthority) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        (pki / "ca.crt").write_bytes(ca.pair.cert_pem)
        identities = {
            # The node's own identity: the Node authorizer scopes it to this node and its pods.
            "kubelet": (f"system:node:{self.name}", "system:nodes"),
            "kube-proxy": ("system:kube-proxy", None),
            "coredns": ("system:coredns", None),
        }
        for label, (cn, org) in identities.items():
            write_kubeconfig(self.workdir / f"kubeconfig-{label}", self.server, ca.pair.cert_pem, ca.issue(cn, org))
        ca.issue(f"system:node:{self.name}", "system:nodes", server_names=[self.name],
                 server_ips=[self.network.node_ip]).write(pki / "kubelet.crt", pki / "kubelet.key")

    def _cgroup_dirs(self) -> list[Path]:
        return [hierarchy / self.cgroup_name for hierarchy in sorted(CGROUP_ROOT.iterdir())
                if hierarchy.is_dir() and (hierarchy / "cgroup.procs").exists()]

    def _make_cgroups(self) -> None:
        """One subtree per node in every hierarchy: the pods' cgroups go there, and stop removes it."""
        for path in self._cgroup_dirs():
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # cgroup v1 cpuset children start empty
                if (path / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((path.parent / name).read_text())

    def _spawn(self, name: str, args: list[str]) -> None:
        command = [*self.network.exec_prefix(), *args]
        self.processes[name] = spawn(command, self.workdir / f"{name}.log", self.workdir, detach=self.detach)

    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        (root / "root").mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        # Images and container layers in memory: importing the serving image onto disk costs a minute here
        # (containerd syncs every file), into tmpfs about ten seconds. Stop unmounts it with the rest.
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={CONTAINERD_TMPFS_SIZE},mode=0711",
                                  "containerd-root", str(root / "root")], capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            raise ClusterError(f"mounting a tmpfs for containerd's root failed: {mounted.stderr.strip()}")
        cni_bin = next(path for path in CNI_BIN_DIRS if (path / "bridge").exists())
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.socket_dir / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"
[{cri}]
  sandbox_image = "{self.pause_image}"
  # runc cannot lower its own oom_score_adj in this VM ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{self.workdir / 'cni'}"
"""
        (root / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", f"--config={root / 'config.toml'}"])
        self._wait("containerd's socket", lambda: self.ctr("version", check=False).returncode == 0, 30)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
                                capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def import_image(self, tarball: Path) -> None:
        """Load a `docker save` tarball into the node's containerd (what a pull would have done)."""
        self.ctr("images", "import", str(tarball))

    def _write_cni_config(self) -> None:
        folder = self.workdir / "cni"
        folder.mkdir(exist_ok=True)
        config = {
            "cniVersion": "1.0.0",
            "name": "modeldeploy",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.network.node_pod_subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.workdir / "cni-ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        (folder / "10-modeldeploy.conflist").write_text(json.dumps(config, indent=2) + "\n")

    def _start_kubelet(self) -> None:
        pki = self.workdir / "pki"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # This kernel exposes cgroup v1; kubelet refuses it unless told (see DESIGN §5.1).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": False,
            "cgroupRoot": f"/{self.cgroup_name}",
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet.key"),
            "clusterDomain": "cluster.local",
            "clusterDNS": [self.network.dns_ip],
            "resolvConf": "",
            "podLogsDir": str(self.workdir / "pod-logs"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "serializeImagePulls": False,
            # No registry to pull from again: never collect the images loaded at start.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "10s",
            "maxPods": 110,
        }
        (self.workdir / "kubelet-config.json").write_text(json.dumps(config, indent=2) + "\n")
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"),
            f"--config={self.workdir / 'kubelet-config.json'}",
            f"--kubeconfig={self.workdir / 'kubeconfig-kubelet'}",
            f"--root-dir={self.socket_dir / 'kubelet'}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.network.node_ip}",
            f"--node-labels={NODE_LABEL}=true,type=real",
            "--v=1",
        ])

    def _start_kube_proxy(self) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.workdir / "kubeconfig-kube-proxy")},
            "mode": "iptables",
            "clusterCIDR": self.network.pod_cidr,
            "hostnameOverride": self.name,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # Zero: leave the (host-wide) conntrack table sizes alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (self.workdir / "kube-proxy-config.json").write_text(json.dumps(config, indent=2) + "\n")
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"),
                                   f"--config={self.workdir / 'kube-proxy-config.json'}", "--v=1"])

    def _start_dns(self) -> None:
        corefile = f""".:53 {{
    bind {self.network.node_ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.workdir / 'kubeconfig-coredns'}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""
        (self.workdir / "Corefile").write_text(corefile)
        self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(self.workdir / "Corefile")])

    def cluster_objects(self) -> list[dict[str, object]]:
        """What the API needs for DNS: CoreDNS's read rights, and kube-dns pointing at it on the node."""
        rbac = "rbac.authorization.k8s.io/v1"
        return [
            {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
             "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces", "endpoints"],
                        "verbs": ["list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                        "verbs": ["list", "watch"]}]},
            {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
             "subjects": [{"kind": "User", "name": "system:coredns", "apiGroup": "rbac.authorization.k8s.io"}]},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
             "spec": {"clusterIP": self.network.dns_ip,
                      "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "kube-dns-node", "namespace": "kube-system",
                          "labels": {"kubernetes.io/service-name": "kube-dns",
                                     "endpointslice.kubernetes.io/managed-by": "modeldeploy.dev-localcluster"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [self.network.node_ip], "conditions": {"ready": True}}],
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                       {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
        ]

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise ClusterError(f"real node {self.name}: {name} exited with code {process.returncode}; "
                                   f"end of its log:\n{log}")

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (logs in {self.workdir})")

    # --- stop ----------------------------------------------------------------------------------

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def stop(self) -> None:
        stop_node(self.workdir, self.pids(), self.cgroup_name, self.containerd_socket, self.processes)
        self.processes.clear()


def _kill_cgroup_tree(cgroup_name: str) -> None:
    """SIGKILL every process left in the node's cgroups (the containers), then remove the cgroups."""
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / cgroup_name
        if not top.is_dir():
            continue
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        top = hierarchy / cgroup_name
        if not top.is_dir():
            continue
        children = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for path in [*children, top]:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)


def _shim_pids(socket: Path) -> list[int]:
    """The containerd shims serving this node's containerd (their command line names its socket)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in argv:
                found.append(int(proc.name))
    return found


def stop_node(workdir: Path, pids: dict[str, int], cgroup_name: str, socket: Path,
              children: dict[str, subprocess.Popen[bytes]] | None = None) -> None:
    """Stop a node completely: agents, containers, shims, containerd; then its mounts and cgroups."""
    agents = {name: pid for name, pid in pids.items() if name != "containerd"}
    stop_processes(agents, children, grace_s=5)
    _kill_cgroup_tree(cgroup_name)  # the containers
    if socket.exists() and "containerd" in pids and pid_alive(pids["containerd"]):
        listing = subprocess.run(["ctr", f"--address={socket}", "--namespace=k8s.io", "tasks", "ls", "-q"],
                                 capture_output=True, text=True, timeout=30, check=False)
        for task in listing.stdout.split():
            subprocess.run(["ctr", f"--address={socket}", "--namespace=k8s.io", "tasks", "rm", "-f", task],
                           capture_output=True, timeout=30, check=False)
    stop_processes({"containerd": pids["containerd"]} if "containerd" in pids else {}, children, grace_s=10)
    for pid in _shim_pids(socket):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _kill_cgroup_tree(cgroup_name)
    left = unmount_all(socket.parent) + unmount_all(workdir)
    if not left:
        shutil.rmtree(socket.parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            RUNTIME_ROOT.rmdir()  # only when no other node uses it
    if left:
        raise ClusterError(f"could not unmount {left[:5]}; not removing {workdir}")


def node_leftovers(workdir: Path, cgroup_name: str, socket: Path) -> list[str]:
    """Anything a stopped node left behind: mounts, cgroups, shims (empty when stop was complete)."""
    found = [f"mount {point}" for folder in (workdir, socket.parent) if folder.exists()
             for point in _mounts_under(folder)]
    found += [f"cgroup {h / cgroup_name}" for h in CGROUP_ROOT.iterdir() if (h / cgroup_name).exists()]
    found += [f"shim pid {pid}" for pid in _shim_pids(socket)]
    found += [f"socket folder {socket.parent}"] if socket.parent.exists() else []
    return found
