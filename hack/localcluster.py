"""A real, local Kubernetes cluster for tests, benchmarks and the demo (the code is in ``localkube/``).

etcd, kube-apiserver (certificate auth, Node and RBAC authorization, like controller-runtime's envtest),
kube-controller-manager, kube-scheduler and kwok (fake nodes that turn Pods Running without containers),
all built from source by ``hack/build-binaries.sh``; optionally a real node (containerd, kubelet,
kube-proxy, CoreDNS in its own network namespace) where pods run for real. Nothing is mocked.

Use it as a context manager (tests), or from the command line (people)::

    python hack/localcluster.py up [--real-node]   # starts detached, prints the KUBECONFIG to export
    python hack/localcluster.py down               # stops it and removes everything it made
    python hack/localcluster.py status
"""

from __future__ import annotations

import sys

from localkube.controlplane import (
    CLIENT_IDENTITIES,
    CPU_NODES,
    GPU_NODE,
    REAL_NODE_PREFIX,
    SERVICE_CIDR,
    Cluster,
    LocalControlPlane,
    NodeInfo,
    ensure_binaries,
    kwok_node,
)
from localkube.errors import ClusterError
from localkube.paths import BUILD_SCRIPT, DEFAULT_STATE_DIR, REPO_ROOT
from localkube.pki import KeyPair, Pki, kubeconfig_yaml
from localkube.processes import free_port, pid_alive, stop_processes, wait_for
from localkube.session import ClusterSession, cluster_from_state, local_cluster, main, register_process

_pid_alive = pid_alive  # the name older callers use

__all__ = [
    "BUILD_SCRIPT", "CLIENT_IDENTITIES", "CPU_NODES", "DEFAULT_STATE_DIR", "GPU_NODE", "REAL_NODE_PREFIX",
    "REPO_ROOT", "SERVICE_CIDR", "Cluster", "ClusterError", "ClusterSession", "KeyPair", "LocalControlPlane",
    "NodeInfo", "Pki", "cluster_from_state", "ensure_binaries", "free_port", "kubeconfig_yaml", "kwok_node",
    "local_cluster", "main", "register_process", "stop_processes", "wait_for",
]

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
