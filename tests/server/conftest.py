"""Fixtures for the server tests: real ONNX models built here, and the real server as a subprocess.

Every test talks to ``python -m modeldeploy_server`` over HTTP (and gRPC) on free loopback ports.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from localcluster import free_port
from testsupport.onnx_models import (
    build_constrained,
    build_dynamic,
    build_mlp,
    build_open,
    build_slow,
    build_two_io,
    build_typed,
)

REPO = Path(__file__).resolve().parents[2]
def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log_path: Path
    termination_path: Path
    model_name: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.client.get("/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(
    model: Path | None,
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    name: str | None = None,
    prefix: Sequence[str] = (),
) -> RunningServer:
    """Start the server on a free loopback port (not waiting for readiness)."""
    port, grpc_port = free_port(), free_port()
    log_path = workdir / f"server-{port}.log"
    termination = workdir / f"termination-{port}.log"
    full_env = {
        **os.environ,
        "TERMINATION_MESSAGE_PATH": str(termination),
        "SHUTDOWN_DRAIN_SECONDS": "0.5",
        "LOG_LEVEL": "info",
        **(env or {}),
    }
    command = [*prefix, sys.executable, "-m", "modeldeploy_server", "--host", "127.0.0.1"]
    if model is not None:  # None: the model comes from MODEL_PATH in env
        command += ["--model", str(model)]
    command += ["--port", str(port), "--grpc-port", str(grpc_port), *args]
    if name:
        command += ["--name", name]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=workdir)
    return RunningServer(process, port, grpc_port, log_path, termination, name or (model.stem if model else ""))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_mlp(folder / "mlp.onnx")
    build_two_io(folder / "two_io.onnx")
    build_dynamic(folder / "dynamic.onnx")
    build_slow(folder / "slow.onnx")
    build_open(folder / "open.onnx")
    build_constrained(folder / "constrained.onnx")
    build_typed(folder / "typed.onnx")
    # The README's tiny model, made as the README says.
    subprocess.run([sys.executable, str(REPO / "examples" / "make_tiny_model.py"), str(folder / "sentiment.onnx")],
                   check=True, capture_output=True)
    return folder


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[object]:
    """Factory: ``start_server(model, *flags, env=..., wait=True)``; every server is stopped afterwards."""
    servers: list[RunningServer] = []

    def start(
        model: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        name: str | None = None,
        prefix: Sequence[str] = (),
    ) -> RunningServer:
        server = launch(model, tmp_path, *args, env=env, name=name, prefix=prefix)
        servers.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def _module_server(model: Path, workdir: Path, *args: str) -> Iterator[RunningServer]:
    server = launch(model, workdir, *args)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlp_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(
        model_dir / "mlp.onnx",
        tmp_path_factory.mktemp("mlp"),
        "--max-batch-size",
        "64",
        "--sha256",
        sha256_of(model_dir / "mlp.onnx"),
        "--model-root",
        str(model_dir),
    )


def _plain_module_server(model: str) -> Any:
    """A module-scoped fixture serving ``<model>.onnx`` with default settings."""

    @pytest.fixture(scope="module", name=f"{model}_server")
    def fixture(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
        yield from _module_server(model_dir / f"{model}.onnx", tmp_path_factory.mktemp(model))

    return fixture


two_io_server = _plain_module_server("two_io")
dynamic_server = _plain_module_server("dynamic")
open_server = _plain_module_server("open")
constrained_server = _plain_module_server("constrained")
typed_server = _plain_module_server("typed")
sentiment_server = _plain_module_server("sentiment")
