"""Stopping a local cluster whose real node cannot be stopped completely still stops everything else."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from localkube import controlplane
from localkube.controlplane import LocalControlPlane
from localkube.errors import ClusterError
from localkube.processes import spawn


def sleeper(workdir: Path) -> subprocess.Popen[bytes]:
    return spawn(["sleep", "300"], workdir / "sleeper.log", workdir, detach=False)


class StuckNode:
    """A real node whose stop fails the way an undetachable mount makes it fail."""

    def stop(self) -> None:
        raise ClusterError("could not unmount ['/run/modeldeploy/0-node/kubelet/pods/x']; not removing it")


def test_a_node_that_cannot_be_stopped_does_not_leave_the_control_plane_running(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    workdir.mkdir()
    plane = LocalControlPlane(tmp_path, workdir)
    process = sleeper(workdir)
    plane.processes["etcd"] = process
    plane.nodes = [StuckNode()]  # type: ignore[list-item]
    with pytest.raises(ClusterError, match="could not unmount"):
        plane.stop()
    assert process.poll() is not None
    assert workdir.exists()  # a folder with mounts left under it is never removed


def test_down_stops_the_control_plane_even_when_a_node_cannot_be_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stuck(*args: object) -> None:
        StuckNode().stop()

    monkeypatch.setattr(controlplane, "stop_node", stuck)  # no mount that cannot be detached exists here
    process = sleeper(tmp_path)
    state = {"pids": {"etcd": process.pid}, "network_slot": None,
             "real_nodes": [{"workdir": str(tmp_path / "node"), "pids": {}, "cgroup": "none",
                             "containerd_socket": str(tmp_path / "node" / "containerd.sock")}]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(ClusterError, match="could not unmount"):
        controlplane.stop_from_state(tmp_path)
    assert process.poll() is not None
