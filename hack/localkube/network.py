"""A network namespace per real node, so several clusters with real nodes can share one machine.

Each cluster claims a slot (0..15); the slot fixes every address it uses, so two clusters never
collide: the veth link 10.254.<slot>.0/30 (host side .1, where the API server listens; node side .2,
the node's address), the Service range 10.252.<16*slot>.0/20 and the pod range 10.253.<16*slot>.0/20.
The host routes the pod and Service ranges through the node, so tests on the host reach pod IPs
and ClusterIPs. kube-proxy's rules and the CNI bridge live inside the namespace: deleting it (and the
veth with it) removes everything the node added to the network.

A run killed before its teardown leaves its namespace behind. The claim records who took each slot, and a
later claim takes back a slot whose namespace runs nothing and whose claimer is gone, so leftovers of
killed runs never exhaust the slots.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localkube.errors import ClusterError
from localkube.processes import pid_alive

SLOTS = 16
NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "modeldeploy-"
CLAIMS_DIR = Path("/run/modeldeploy-netns")  # <slot>.pid: the process that claimed the slot


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class NodeNetwork:
    """The addresses of one cluster's real node, all derived from its slot."""

    slot: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.slot}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns

    @property
    def host_interface(self) -> str:
        return f"mdveth{self.slot}"

    @property
    def host_ip(self) -> str:
        return f"10.254.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"10.254.{self.slot}.2"

    @property
    def service_cidr(self) -> str:
        return f"10.252.{16 * self.slot}.0/20"

    @property
    def pod_cidr(self) -> str:
        return f"10.253.{16 * self.slot}.0/20"

    @property
    def node_pod_subnet(self) -> str:
        return f"10.253.{16 * self.slot}.0/24"

    @property
    def dns_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr).network_address + 10)

    def exec_prefix(self) -> list[str]:
        """Run a command inside the node's network namespace, sharing the host's mounts.

        `nsenter --net` rather than `ip netns exec`: the latter also unshares the mount namespace, and
        kubelet's volume mounts must be seen by containerd's runc.
        """
        return ["nsenter", f"--net={self.netns_path}", "--"]

    @property
    def claim_file(self) -> Path:
        return CLAIMS_DIR / f"{self.slot}.pid"

    def abandoned(self) -> bool:
        """Left by a killed run: no process in the namespace, and the process that claimed it is gone."""
        if ip("netns", "pids", self.netns, check=False).stdout.strip():
            return False
        try:
            claimer = int(self.claim_file.read_text())
        except (OSError, ValueError):
            return True
        return not pid_alive(claimer)

    @classmethod
    def claim(cls, slots: range = range(SLOTS)) -> NodeNetwork:
        """Take the first free (or abandoned) slot, under a lock so two claims never share one."""
        CLAIMS_DIR.mkdir(parents=True, exist_ok=True)
        with (CLAIMS_DIR / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for slot in slots:
                network = cls(slot)
                if network.netns_path.exists():
                    if not network.abandoned():
                        continue
                    network.delete()
                if ip("netns", "add", network.netns, check=False).returncode == 0:
                    network.claim_file.write_text(str(os.getpid()))
                    return network
        raise ClusterError(f"all {len(slots)} real-node network slots are taken (ip netns list: modeldeploy-*)")

    def create(self) -> None:
        """The veth pair, the addresses, forwarding in the namespace, and the host's routes to the node."""
        if not self.netns_path.exists():
            ip("netns", "add", self.netns)
        ip("link", "del", self.host_interface, check=False)  # a leftover of a killed run
        ip("link", "add", self.host_interface, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_interface)
        ip("link", "set", self.host_interface, "up")
        ip("-n", self.netns, "addr", "add", f"{self.node_ip}/30", "dev", "eth0")
        ip("-n", self.netns, "link", "set", "eth0", "up")
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip("-n", self.netns, "route", "add", "default", "via", self.host_ip)
        for cidr in (self.pod_cidr, self.service_cidr):
            ip("route", "replace", cidr, "via", self.node_ip, "dev", self.host_interface)
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            self.sysctl(key, "1")

    def sysctl(self, key: str, value: str) -> None:
        """Write a per-namespace sysctl from inside the namespace."""
        script = f"test ! -e /proc/sys/{key} || echo {value} > /proc/sys/{key}"
        done = subprocess.run([*self.exec_prefix(), "sh", "-c", script], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ClusterError(f"sysctl {key}={value} in {self.netns} failed: {done.stderr.strip()}")

    def delete(self) -> None:
        """Remove the namespace (its bridge, rules and veth ends go with it) and the host's side."""
        ip("netns", "del", self.netns, check=False)
        ip("link", "del", self.host_interface, check=False)
        for cidr in (self.pod_cidr, self.service_cidr):
            ip("route", "del", cidr, check=False)
        self.claim_file.unlink(missing_ok=True)

    def leftovers(self) -> list[str]:
        """What of this network still exists (empty after `delete`)."""
        found = []
        if self.netns_path.exists():
            found.append(f"netns {self.netns}")
        if ip("link", "show", self.host_interface, check=False).returncode == 0:
            found.append(f"link {self.host_interface}")
        routes = ip("route", "show", check=False).stdout
        found += [f"route {cidr}" for cidr in (self.pod_cidr, self.service_cidr) if cidr in routes]
        return found
