"""A real node starts beside the kwok nodes, runs a pod, and stops without leaving anything behind."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import localcluster
from localkube.processes import pid_alive


def node_status(cluster: localcluster.Cluster, name: str) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(cluster.kubectl("get", "node", name, "-o", "json").stdout)["status"]
    return status


def test_real_node_runs_a_pod_and_a_second_start_after_stop_works(real_node_allowed: None, tmp_path: Path) -> None:
    bin_dir = localcluster.ensure_binaries(with_node=True)
    for attempt in range(2):
        # pytest's long tmp path on purpose: the node's unix sockets must not live under it.
        plane = localcluster.LocalControlPlane(bin_dir, tmp_path / f"cluster-{attempt}", real_nodes=1)
        cluster = plane.start()
        try:
            node = cluster.real_nodes[0]
            status = node_status(cluster, node.name)
            assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
            addresses = {a["type"]: a["address"] for a in status["addresses"]}
            assert addresses["InternalIP"] == node.ip
            assert not ipaddress.ip_address(node.ip).is_loopback
            kwok = cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "name").stdout.split()
            assert len(kwok) == len(localcluster.CPU_NODES) + 1, "the kwok nodes stay beside the real one"
            pause = plane.nodes[0].pause_image
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "namespace": "default"},
                   "spec": {"nodeSelector": {"kubernetes.io/hostname": node.name},
                            "containers": [{"name": "pause", "image": pause, "imagePullPolicy": "Never"}]}}
            cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
            cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=90s")
            running = json.loads(cluster.kubectl("get", "pod", "sleeper", "-o", "json").stdout)
            assert ipaddress.ip_address(running["status"]["podIP"]) in ipaddress.ip_network(
                plane.network.pod_cidr if plane.network else "0.0.0.0/32")
        finally:
            pids = {name: p.pid for name, p in plane.processes.items()}
            for real in plane.nodes:
                pids.update({f"{real.name}/{name}": pid for name, pid in real.pids().items()})
            plane.stop()
        assert plane.leftovers() == []
        assert not {name: pid for name, pid in pids.items() if pid_alive(pid)}, "processes still running"
