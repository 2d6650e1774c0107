"""Entry points: a cluster for a test session (context manager) and the up/down/status commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from localkube.controlplane import Cluster, LocalControlPlane, cluster_from_state, ensure_binaries, stop_from_state
from localkube.paths import DEFAULT_STATE_DIR
from localkube.processes import pid_alive


class ClusterSession:
    """Context manager for tests: a fresh local cluster, or the user's own with ``USE_EXISTING_CLUSTER=1``."""

    def __init__(self, workdir: Path | None = None, *, real_nodes: int = 0) -> None:
        self._workdir = workdir
        self._real_nodes = real_nodes
        self.plane: LocalControlPlane | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> Cluster:
        bin_dir = ensure_binaries(with_node=self._real_nodes > 0)
        if os.environ.get("USE_EXISTING_CLUSTER") == "1":
            kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")).split(os.pathsep)[0]
            self._tmp = Path(tempfile.mkdtemp(prefix="modeldeploy-existing-"))
            return Cluster(Path(kubeconfig), bin_dir, self._tmp)
        workdir = self._workdir or Path(tempfile.mkdtemp(prefix="modeldeploy-cluster-"))
        self.plane = LocalControlPlane(bin_dir, workdir, real_nodes=self._real_nodes)
        return self.plane.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.plane:
            self.plane.stop()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


@contextlib.contextmanager
def local_cluster(workdir: Path | None = None, *, real_nodes: int = 0) -> Iterator[Cluster]:
    with ClusterSession(workdir, real_nodes=real_nodes) as cluster:
        yield cluster


def register_process(state_dir: Path, name: str, pid: int) -> None:
    """Make ``down`` stop a process started next to a detached cluster (the demo's operator)."""
    state_file = state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["pids"][name] = pid
    state_file.write_text(json.dumps(state, indent=2) + "\n")


def _up(state_dir: Path, real_nodes: int) -> int:
    if (state_dir / "state.json").exists():
        print(f"a cluster is already running (state in {state_dir}); `make cluster-down` first", file=sys.stderr)
        return 1
    started = time.monotonic()
    plane = LocalControlPlane(ensure_binaries(with_node=real_nodes > 0), state_dir, detach=True, real_nodes=real_nodes)
    plane.start()
    print(f"cluster up in {time.monotonic() - started:.1f}s; logs in {state_dir}", file=sys.stderr)
    print(f"export KUBECONFIG={plane.kubeconfig}")
    print(f"export PATH={plane.bin_dir}:$PATH")
    return 0


def _down(state_dir: Path) -> int:
    if not (state_dir / "state.json").exists():
        print("no cluster is running", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)
        return 0
    stop_from_state(state_dir)
    shutil.rmtree(state_dir, ignore_errors=True)
    print("cluster stopped", file=sys.stderr)
    return 0


def _status(state_dir: Path) -> int:
    state_file = state_dir / "state.json"
    if not state_file.exists():
        print("no cluster is running")
        return 1
    state = json.loads(state_file.read_text())
    pids = dict(state["pids"])
    for node in state.get("real_nodes", []):
        pids.update({f"{node['name']}/{name}": pid for name, pid in node["pids"].items()})
    for name, pid in pids.items():
        print(f"{name:<32} pid {pid:<8} {'running' if pid_alive(pid) else 'GONE'}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "build"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--real-node", action="store_true",
                        help="also start a real node (kubelet, containerd) beside the kwok nodes; needs root")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(ensure_binaries(with_node=args.real_node))
        return 0
    state_dir = args.state_dir.resolve()
    if args.command == "up":
        return _up(state_dir, 1 if args.real_node else 0)
    return {"down": _down, "status": _status}[args.command](state_dir)


__all__ = ["ClusterSession", "cluster_from_state", "local_cluster", "main", "register_process"]
