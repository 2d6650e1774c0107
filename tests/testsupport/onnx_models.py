"""ONNX models built from code for the tests and benchmarks (nothing is downloaded): small, seeded,
each with the input/output shape a test needs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="modeldeploy-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return save(graph, path)


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
    return save(graph, path)


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
    return save(graph, path)


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
    return save(graph, path)


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
    return save(graph, path)


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
    return save(graph, path)
