"""Process lifecycle: load failures end the process with a termination message; graceful SIGTERM;
configuration from the environment; running on a read-only root filesystem."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

MLP_BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.25] * 64}]}


def expect_load_failure(server: Any, *fragments: str, code: int = 1) -> str:
    assert server.wait_exit(timeout=60) == code, server.log()
    message: str = server.termination_path.read_text()
    for fragment in fragments:
        assert fragment in message, (fragment, message)
        assert fragment in server.log(), (fragment, server.log())
    return message


def test_sha256_mismatch_exits_with_termination_message(start_server: Callable[..., Any], model_dir: Path) -> None:
    wrong = "ab" * 32
    server = start_server(model_dir / "mlp.onnx", "--sha256", wrong, wait=False)
    message = expect_load_failure(server, "sha256 mismatch", wrong)
    assert str(model_dir / "mlp.onnx") in message


def test_sha256_match_loads_and_is_reported(mlp_server: Any, model_dir: Path) -> None:
    digest = hashlib.sha256((model_dir / "mlp.onnx").read_bytes()).hexdigest()
    assert mlp_server.client.get("/v2/models/mlp").json()["parameters"]["sha256"] == digest


def test_model_outside_the_root_is_refused(start_server: Callable[..., Any], model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = start_server(model_dir / "mlp.onnx", "--model-root", str(root), wait=False)
    expect_load_failure(server, "outside the model root")

    (root / "escape.onnx").symlink_to(model_dir / "mlp.onnx")
    via_link = start_server(root / "escape.onnx", "--model-root", str(root), wait=False)
    expect_load_failure(via_link, "outside the model root")

    traversal = start_server(root / ".." / ".." / model_dir.name / "mlp.onnx", "--model-root", str(root), wait=False)
    expect_load_failure(traversal, "outside the model root")


def test_missing_directory_and_garbage_models(start_server: Callable[..., Any], tmp_path: Path) -> None:
    expect_load_failure(start_server(tmp_path / "absent.onnx", wait=False), "does not exist")
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    expect_load_failure(start_server(folder, wait=False), "not a regular file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07definitely not onnx" * 10)
    expect_load_failure(start_server(garbage, wait=False), "onnxruntime cannot load")


def test_invalid_configuration_exits_2(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(model_dir / "mlp.onnx", "--sha256", "not-hex", wait=False)
    expect_load_failure(server, "invalid configuration", "model_sha256", code=2)
    bad_env = start_server(model_dir / "mlp.onnx", env={"EXECUTION_PROVIDERS": "cuda,tpu"}, wait=False)
    expect_load_failure(bad_env, "execution_providers", "tpu", code=2)


def test_settings_come_from_the_environment(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(
        None,
        env={
            "MODEL_PATH": str(model_dir / "mlp.onnx"),
            "MODEL_SHA256": "sha256:" + hashlib.sha256((model_dir / "mlp.onnx").read_bytes()).hexdigest().upper(),
            "MODEL_NAME": "renamed",
            "MAX_BATCH_SIZE": "4",
            "MODEL_ROOT": str(model_dir),
            "EXECUTION_PROVIDERS": "cuda,cpu",
            "INTRA_OP_THREADS": "1",
        },
    )
    metadata = server.client.get("/v2/models/renamed").json()
    assert metadata["parameters"]["max_batch_size"] == 4
    # No GPU here: CUDA was asked for and the server says plainly that it runs on CPU.
    assert metadata["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert "lacks it" in server.log() or "not usable" in server.log()
    assert server.client.post("/v2/models/renamed/infer", json=MLP_BODY).status_code == 200
    assert server.client.get("/v2/models/mlp").status_code == 404


def test_flags_win_over_the_environment(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(model_dir / "mlp.onnx", env={"MODEL_NAME": "from-env"}, name="from-flag")
    assert server.client.get("/v2/models/from-flag").status_code == 200


def test_sigterm_under_load_fails_no_request(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(model_dir / "mlp.onnx", env={"SHUTDOWN_DRAIN_SECONDS": "1.5"})
    stop = threading.Event()
    results: list[int | str] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            while not stop.is_set():
                try:
                    status: int | str = client.post("/v2/models/mlp/infer", json=MLP_BODY).status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                with lock:
                    results.append(status)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=server.url, timeout=5.0) as probe:
        assert probe.get("/health/ready").status_code == 503  # readiness turns false at once
        assert probe.get("/v2/health/ready").status_code == 503
        assert probe.get("/health/live").status_code == 200
    time.sleep(0.3)  # load keeps coming while endpoints would be catching up
    stop.set()
    for thread in threads:
        thread.join()
    assert server.wait_exit(timeout=30) == 0, server.log()
    failures = [r for r in results if r != 200]
    assert results and not failures, failures[:5]


def test_sigterm_lets_in_flight_requests_finish(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(
        model_dir / "slow.onnx",
        "--intra-op-threads",
        "1",
        "--max-batch-size",
        "1024",
        env={"SHUTDOWN_DRAIN_SECONDS": "0"},
    )
    rows = 1024
    body = {"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": [0.5] * (rows * 64)}]}
    outcome: dict[str, Any] = {}

    def long_request() -> None:
        with httpx.Client(base_url=server.url, timeout=60.0) as client:
            outcome["response"] = client.post("/v2/models/slow/infer", json=body)

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "response" not in outcome:
        if 'modeldeploy_requests_in_flight{model="slow",protocol="rest"} 1.0' in server.client.get("/metrics").text:
            break
        time.sleep(0.002)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert outcome["response"].status_code == 200
    assert outcome["response"].json()["outputs"][0]["shape"] == [rows, 8]
    assert server.wait_exit(timeout=30) == 0, server.log()


READ_ONLY_ROOT = (
    'mount --make-rprivate / && mount --bind "$SCRATCH" "$SCRATCH" && mount -o remount,bind,ro / '
    '&& if touch /.modeldeploy-write-probe 2>/dev/null; then echo "root is writable" >&2; exit 97; fi '
    '&& exec setpriv --bounding-set=-all --inh-caps=-all --no-new-privs "$@"'
)


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("setpriv") is None, reason="needs util-linux")
def test_runs_on_a_read_only_root_filesystem(start_server: Callable[..., Any], model_dir: Path, tmp_path: Path) -> None:
    """Everything read-only except one scratch folder (the pod's /tmp emptyDir), all capabilities dropped."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"mount namespaces are not permitted here: {probe.stderr.decode().strip()}")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = start_server(
        model_dir / "mlp.onnx",
        prefix=["unshare", "-m", "sh", "-c", READ_ONLY_ROOT, "sh"],
        env={
            "SCRATCH": str(scratch),
            "TMPDIR": str(scratch),
            "TERMINATION_MESSAGE_PATH": str(scratch / "termination-log"),
        },
    )
    assert server.client.post("/v2/models/mlp/infer", json=MLP_BODY).status_code == 200
    assert server.client.get("/metrics").status_code == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.wait_exit(timeout=30) == 0, server.log()
    assert "Read-only file system" not in server.log()
