"""Local-path storage for claims, the way kind's local-path-provisioner does it.

A default StorageClass ``local-path`` and a small provisioner process: every pending claim of that class
gets a hostPath PersistentVolume in the cluster's folder, pinned to the real node by node affinity (so
the pods that mount it are scheduled there), and a released volume's folder is deleted with it.

Run by the control plane when it has a real node: ``python -m localkube.storage KUBECONFIG ROOT NODE``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLASS_NAME = "local-path"
PROVISIONER = "modeldeploy.dev/local-path"
POLL_S = 0.5


def storage_class() -> dict[str, object]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": CLASS_NAME, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def volume_for(claim: dict[str, Any], root: Path, node: str) -> dict[str, Any]:
    """The PersistentVolume that satisfies one claim: a folder of its own under root, on the node."""
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
        "spec": {
            "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
            "accessModes": claim["spec"]["accessModes"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": CLASS_NAME,
            "hostPath": {"path": str(root / meta["namespace"] / meta["name"]), "type": "DirectoryOrCreate"},
            "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
        },
    }


def claim_folder(volume: dict[str, Any]) -> Path:
    return Path(volume["spec"]["hostPath"]["path"])


class Provisioner:
    def __init__(self, kubeconfig: Path, root: Path, node: str) -> None:
        self.kubeconfig = kubeconfig
        self.root = root
        self.node = node

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", "--request-timeout=10s", *args],
                              input=input, capture_output=True, text=True, check=False)

    def items(self, kind: str) -> list[dict[str, Any]]:
        done = self.kubectl("get", kind, "-A", "-o", "json")
        return list(json.loads(done.stdout)["items"]) if done.returncode == 0 else []

    def sync(self) -> None:
        for claim in self.items("persistentvolumeclaims"):
            spec, status = claim["spec"], claim.get("status", {})
            wanted = spec.get("storageClassName") == CLASS_NAME and not spec.get("volumeName")
            if wanted and status.get("phase") == "Pending":
                volume = volume_for(claim, self.root, self.node)
                folder = claim_folder(volume)
                folder.mkdir(parents=True, exist_ok=True)
                folder.chmod(0o777)  # as local-path-provisioner makes it: any pod's user may write
                self.kubectl("create", "-f", "-", input=json.dumps(volume))
        for volume in self.items("persistentvolumes"):
            annotations = volume["metadata"].get("annotations", {})
            if annotations.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and \
                    volume.get("status", {}).get("phase") == "Released":
                shutil.rmtree(claim_folder(volume), ignore_errors=True)
                self.kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false")

    def run(self) -> None:
        while True:
            self.sync()
            time.sleep(POLL_S)


if __name__ == "__main__":
    Provisioner(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]).run()
