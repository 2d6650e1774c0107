"""`kubectl modeldeploy upload` and `ls` on the real node: models onto a claim in one command.

The plugin runs as users run it (kubectl finds it on PATH) in a namespace enforcing Pod Security
"restricted", so the API server itself admits or refuses its pod. The file travels through the API server
and the kubelet into a real pod of the serving image, which writes it to a local-path claim; the test
reads the claim's folder on the host to see what was written, and counts the pods left in the namespace
after every command. One test walks every case on one operator and one claim.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from testsupport.onnx_models import write_large_model
from testsupport.realpods import NAME, Serving, model_deployment, tiny

PLUGIN_DIR = Path(sys.executable).parent
LARGE_BYTES = 256 << 20
RSS_CEILING_KIB = 128 << 10  # half the large file: it is streamed, never held
CHANGING_BYTES = 96 << 20  # long enough to be changed, or interrupted, while it travels
MEASURE_RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
               "sys.exit(done.returncode)")


def command(s: Serving, *args: str) -> list[str]:
    return [str(s.harness.cluster.bin_dir / "kubectl"), "modeldeploy", *args, "-n", s.harness.namespace,
            "--image", s.images["server"]]


def environment(s: Serving) -> dict[str, str]:
    env = s.harness.cluster.env
    return {**env, "PATH": f"{PLUGIN_DIR}{os.pathsep}{env['PATH']}"}


def plugin(s: Serving, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(s, *args), capture_output=True, text=True, env=environment(s), timeout=timeout,
                          check=False)


def leftover_pods(s: Serving) -> list[str]:
    """Pods in the namespace that are not the operator's serving pods: the plugin's, if any stayed."""
    pods = s.harness.get("pods")["items"]
    return [p["metadata"]["name"] for p in pods
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "modeldeploy"]


def refused(s: Serving, expected: str, *args: str) -> None:
    """One line on stderr matching EXPECTED (a regex), nothing on stdout, exit 1, no pod left."""
    done = plugin(s, *args)
    assert (done.returncode, done.stdout) == (1, ""), (args, done.returncode, done.stdout, done.stderr)
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert re.fullmatch(expected, done.stderr.strip()), (expected, done.stderr)
    assert leftover_pods(s) == [], (args, leftover_pods(s))


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.upload-*")]


def upload_interrupted(s: Serving, large: Path, path: str, interrupt: object) -> subprocess.CompletedProcess[str]:
    """An upload of the large file; INTERRUPT runs once its temporary file is growing on the claim."""
    process = subprocess.Popen(command(s, "upload", str(large), "--pvc", "models", "--path", path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(s))
    deadline = time.monotonic() + 180
    while not [p for p in temporary_files(s.models) if p.stat().st_size > 0]:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    assert callable(interrupt)
    interrupt(process)
    stdout, stderr = process.communicate(timeout=180)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_upload_round_trip_listing_and_every_refusal(serving: Serving, tmp_path: Path) -> None:
    try:
        walk_every_case(serving, tmp_path)
    finally:
        serving.harness.cluster.kubectl("delete", "pv", f"{serving.harness.namespace}-ro", "--ignore-not-found",
                                        "--wait=false", check=False)


def walk_every_case(s: Serving, tmp_path: Path) -> None:
    h = s.harness
    h.kubectl("label", "namespace", h.namespace, "pod-security.kubernetes.io/enforce=restricted")

    # Round trip: the digest printed is the file's, the claim holds the same bytes, and a ModelDeployment
    # made from the printed snippet becomes Ready on a real pod (the server verifies that digest first).
    models = {}
    for version, seed in (("v1", 0), ("v2", 1)):
        local = tmp_path / version / "model.onnx"
        local.parent.mkdir()
        local.write_bytes(tiny.build_model(seed).SerializeToString())
        done = plugin(s, "upload", str(local), "--pvc", "models", "--path", f"sentiment/{version}/model.onnx")
        assert done.returncode == 0, done.stderr
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        assert done.stdout == (f'model: {{pvc: models, path: sentiment/{version}/model.onnx, sha256: "{digest}"}}\n')
        assert (s.models / f"sentiment/{version}/model.onnx").read_bytes() == local.read_bytes()
        models[version] = (local, digest, yaml.safe_load(done.stdout)["model"])
        assert leftover_pods(s) == []
    manifest = model_deployment("unused")
    manifest["spec"]["model"] = models["v1"][2]
    h.apply_manifest(manifest)
    h.wait_condition(NAME, "Ready", "True", timeout=240)
    assert h.md()["spec"]["model"]["sha256"] == models["v1"][1]

    # The same file again sends nothing; another file at the same path needs --force.
    again = plugin(s, "upload", str(models["v1"][0]), "--pvc", "models", "--path", "sentiment/v1/model.onnx")
    assert again.returncode == 0 and "already on claim models with this sha256" in again.stderr
    refused(s, r"error: sentiment/v1/model\.onnx already exists on claim models with sha256 [0-9a-f]{64}; "
            r"--force replaces it", "upload", str(models["v2"][0]), "--pvc", "models", "--path",
            "sentiment/v1/model.onnx")

    # A file of hundreds of MB, streamed: the plugin's memory stays far below the file's size.
    large = write_large_model(tmp_path / "large.onnx", LARGE_BYTES)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", MEASURE_RSS, *command(s, "upload", str(large), "--pvc", "models",
                                                                        "--path", "large/model.onnx")],
                          capture_output=True, text=True, env=environment(s), timeout=600, check=False)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert (s.models / "large/model.onnx").stat().st_size == large.stat().st_size
    rss = int(re.findall(r"maxrss_kib (\d+)", done.stderr)[-1])
    print(f"uploaded {LARGE_BYTES >> 20} MiB in {seconds:.1f}s ({LARGE_BYTES / seconds / 2**20:.0f} MiB/s, "
          f"pod start and digests included); plugin max RSS {rss >> 10} MiB")
    assert rss < RSS_CEILING_KIB, rss

    # ls: every file with its size, .onnx files with their digest.
    listing = plugin(s, "ls", "--pvc", "models")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert rows == [["PATH", "SIZE", "SHA256"],
                    ["large/model.onnx", str(large.stat().st_size), hashlib.sha256(large.read_bytes()).hexdigest()],
                    *[[f"sentiment/{v}/model.onnx", str(models[v][0].stat().st_size), models[v][1]]
                      for v in ("v1", "v2")]]
    assert plugin(s, "ls", "--pvc", "models", "--path", "sentiment/v2").stdout.splitlines()[1].split()[0] == (
        "sentiment/v2/model.onnx")
    assert plugin(s, "ls", "--pvc", "models", "--path", "nothing").stdout == "no files under nothing on claim models\n"
    assert leftover_pods(s) == []

    # A file that changes during the upload: refused by the digest the pod computed, nothing written.
    changing = write_large_model(tmp_path / "changing.onnx", CHANGING_BYTES)

    def change_last_byte(process: subprocess.Popen[str]) -> None:
        with changing.open("r+b") as handle:
            handle.seek(-1, os.SEEK_END)
            last = handle.read(1)
            handle.seek(-1, os.SEEK_END)
            handle.write(bytes([last[0] ^ 0xFF]))

    changed = upload_interrupted(s, changing, "changed/model.onnx", change_last_byte)
    assert changed.returncode == 1 and changed.stdout == "", changed
    assert re.fullmatch(r"error: the file changed while it was uploaded: sha256 [0-9a-f]{64} before, [0-9a-f]{64} "
                        r"received; nothing was written to claim models", changed.stderr.strip()), changed.stderr
    assert not (s.models / "changed").exists() or not list((s.models / "changed").iterdir())
    assert leftover_pods(s) == []

    # Ctrl-C mid-upload: the pod is removed and so is the half-written file.
    stopped = upload_interrupted(s, changing, "stopped/model.onnx", lambda p: p.send_signal(signal.SIGINT))
    assert stopped.returncode == 1, stopped
    assert stopped.stderr.strip() == ("error: interrupted: the pod is removed, and an upload not confirmed writes "
                                      "nothing"), stopped.stderr
    assert temporary_files(s.models) == [] and not (s.models / "stopped/model.onnx").exists()
    assert leftover_pods(s) == []

    # Bad input: one line each, and nothing left behind.
    not_onnx = tmp_path / "model.pt"
    not_onnx.write_bytes(b"PK\x03\x04" + bytes(60))
    ns = re.escape(h.namespace)
    refused(s, rf'error: persistentvolumeclaim "nothere" not found in namespace "{ns}"',
            "upload", str(models["v1"][0]), "--pvc", "nothere", "--path", "a/model.onnx")
    refused(s, rf'error: persistentvolumeclaim "nothere" not found in namespace "{ns}"', "ls", "--pvc", "nothere")
    refused(s, r"error: --path 'sentiment/\.\./\.\./x\.onnx': must not contain '\.\.' segments",
            "upload", str(models["v1"][0]), "--pvc", "models", "--path", "sentiment/../../x.onnx")
    refused(s, r"error: --path '/x\.onnx': must be relative to the claim's root \(no leading '/'\)",
            "upload", str(models["v1"][0]), "--pvc", "models", "--path", "/x.onnx")
    refused(s, rf"error: {re.escape(str(not_onnx))} is not an ONNX model \(an onnx\.ModelProto\): it looks like a "
            r"zip archive \(a PyTorch checkpoint, a Keras file\?\)",
            "upload", str(not_onnx), "--pvc", "models", "--path", "a/model.onnx")
    read_only_claim(s, tmp_path / "read-only")
    refused(s, r"error: claim models-ro is bound to a ReadOnlyMany volume \(access modes: ReadOnlyMany\): no pod "
            r"can write to it; write to the volume's source, or upload to a ReadWriteOnce claim",
            "upload", str(models["v1"][0]), "--pvc", "models-ro", "--path", "a/model.onnx")
    never_bound_claim(s)
    refused(s, r"error: pod modeldeploy-files-\w+ did not start within 5s: not scheduled: 0/\d+ nodes are "
            r"available: .+",
            "upload", str(models["v1"][0]), "--pvc", "models-unbound", "--path", "a/model.onnx", "--timeout", "5")
    assert temporary_files(s.models) == []


def read_only_claim(s: Serving, folder: Path) -> None:
    """A claim bound to a ReadOnlyMany hostPath volume made for it."""
    h = s.harness
    volume = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": f"{h.namespace}-ro", "labels": {"test-namespace": h.namespace}},
              "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                       "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(folder)},
                       "claimRef": {"namespace": h.namespace, "name": "models-ro"}}}
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models-ro"},
             "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": f"{h.namespace}-ro",
                      "resources": {"requests": {"storage": "1Gi"}}}}
    h.cluster.kubectl("apply", "-f", "-", input=json.dumps(volume))
    h.kubectl("apply", "-f", "-", input=json.dumps(claim))
    h.eventually(lambda: h.get("pvc", "models-ro")["status"].get("phase") == "Bound", 60, "read-only claim bound")


def never_bound_claim(s: Serving) -> None:
    """A claim of a storage class nobody provisions: a pod mounting it is never scheduled."""
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models-unbound"},
             "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "nobody-provisions-this",
                      "resources": {"requests": {"storage": "1Gi"}}}}
    s.harness.kubectl("apply", "-f", "-", input=json.dumps(claim))
