"""Fixtures for the server tests: real ONNX models built here, and the real server as a subprocess.

Every test talks to ``python -m modeldeploy_server`` over HTTP on a free loopback port.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from localcluster import free_port

REPO = Path(__file__).resolve().parents[2]
OPSET = [helper.make_opsetid("", 17)]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="modeldeploy-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_mlp(path: Path, seed: int = 0) -> Path:
    """MLP 64 -> 256 (ReLU) -> 8 with an open batch dimension: input ``input`` FP32, output ``output``."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32) * 0.1, "w1"),
        numpy_helper.from_array(rng.standard_normal(256).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((256, 8)).astype(np.float32) * 0.1, "w2"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
        initializer=weights,
    )
    return _save(graph, path)


def build_slow(path: Path, layers: int = 6, width: int = 1024) -> Path:
    """A deep MLP (64 -> width x layers -> 8, open batch) whose runs take milliseconds, so that
    concurrent requests reliably meet in the queue."""
    rng = np.random.default_rng(7)
    sizes = [64, *([width] * layers), 8]
    nodes, weights = [], []
    current = "input"
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        matrix = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        weights.append(numpy_helper.from_array(matrix, f"w{index}"))
        last = index == len(sizes) - 2
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], ["output" if last else f"m{index}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"m{index}"], [f"r{index}"]))
            current = f"r{index}"
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8])],
        initializer=weights,
    )
    return _save(graph, path)


def build_two_io(path: Path) -> Path:
    """Fixed shapes (no batching): ``a`` FP32 [2,3], ``b`` INT64 [2,3] -> ``scaled`` = a*2+1 FP32 [2,3],
    ``total`` = row sums of b INT64 [2,1]."""
    nodes = [
        helper.make_node("Mul", ["a", "two"], ["a2"]),
        helper.make_node("Add", ["a2", "one"], ["scaled"]),
        helper.make_node("ReduceSum", ["b", "axes"], ["total"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("total", TensorProto.INT64, [2, 1]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    return _save(graph, path)


def build_dynamic(path: Path) -> Path:
    """Open batch and sequence dimensions: ``x`` FP32 [batch, seq] -> ``mean`` [batch, 1], ``doubled``
    [batch, seq]; ``mask`` BOOL [batch, seq] -> ``kept`` = count of true per row, INT64 [batch]."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Cast", ["mask"], ["mask_int"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["mask_int", "axes"], ["kept"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("kept", TensorProto.INT64, ["batch"]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    return _save(graph, path)


def build_open(path: Path) -> Path:
    """Open dimensions but no batch dimension (a scalar output), so any shape reaches onnxruntime:
    ``x`` FP32 [a, b] -> ``total`` = sum of x, FP32 []; ``s`` BYTES [n] -> ``echo`` = s, BYTES [n]."""
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Identity", ["s"], ["echo"]),
    ]
    graph = helper.make_graph(
        nodes,
        "open",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b"]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["n"]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["n"]),
        ],
    )
    return _save(graph, path)


def build_constrained(path: Path) -> Path:
    """Metadata leaves both dimensions open, the graph does not: ``x`` FP32 [batch, n] plus a [4] bias,
    so only n = 1 (broadcast) or n = 4 runs -> ``y`` FP32 [batch, 4]."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "constrained",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")],
    )
    return _save(graph, path)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    termination_path: Path
    model_name: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
    port = free_port()
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
    command += ["--port", str(port), *args]
    if name:
        command += ["--name", name]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=workdir)
    return RunningServer(process, port, log_path, termination, name or (model.stem if model else ""))


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    build_mlp(folder / "mlp.onnx")
    build_two_io(folder / "two_io.onnx")
    build_dynamic(folder / "dynamic.onnx")
    build_slow(folder / "slow.onnx")
    build_open(folder / "open.onnx")
    build_constrained(folder / "constrained.onnx")
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


@pytest.fixture(scope="module")
def two_io_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(model_dir / "two_io.onnx", tmp_path_factory.mktemp("two_io"))


@pytest.fixture(scope="module")
def dynamic_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(model_dir / "dynamic.onnx", tmp_path_factory.mktemp("dynamic"))


@pytest.fixture(scope="module")
def open_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(model_dir / "open.onnx", tmp_path_factory.mktemp("open"))


@pytest.fixture(scope="module")
def constrained_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _module_server(model_dir / "constrained.onnx", tmp_path_factory.mktemp("constrained"))
