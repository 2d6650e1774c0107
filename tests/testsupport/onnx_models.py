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


def build_typed(path: Path) -> Path:
    """One input and one output of each wire family, open batch: ``f`` FP32 [batch, 3] -> ``f2`` = f * 2,
    ``i`` INT64 [batch, 3] -> ``i1`` = i + 1, ``b`` BOOL [batch, 3] -> ``nb`` = not b, ``s`` BYTES
    [batch, 2] -> ``se`` = s."""
    nodes = [
        helper.make_node("Mul", ["f", "two"], ["f2"]),
        helper.make_node("Add", ["i", "one"], ["i1"]),
        helper.make_node("Not", ["b"], ["nb"]),
        helper.make_node("Identity", ["s"], ["se"]),
    ]
    graph = helper.make_graph(
        nodes,
        "typed",
        [
            helper.make_tensor_value_info("f", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("b", TensorProto.BOOL, ["batch", 3]),
            helper.make_tensor_value_info("s", TensorProto.STRING, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("f2", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("i1", TensorProto.INT64, ["batch", 3]),
            helper.make_tensor_value_info("nb", TensorProto.BOOL, ["batch", 3]),
            helper.make_tensor_value_info("se", TensorProto.STRING, ["batch", 2]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"),
            numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
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


# Versions of a model for rollout tests: each is `build_mlp`'s model changed in one way, with the same
# input ``input`` FP32 [batch, 64] and output ``output`` FP32 [batch, 8].


def shifted(source: Path, path: Path, by: float) -> Path:
    """The same model with every output moved by `by` (its last bias `b2` changed)."""
    model = onnx.load(str(source))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "b2":
            moved = numpy_helper.to_array(tensor) + np.float32(by)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(moved.astype(np.float32), "b2"))
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _save_with_added_output(model: onnx.ModelProto, path: Path) -> Path:
    """`build_mlp`'s last Add now writes ``output_raw``; the nodes appended after it compute ``output``."""
    for node in model.graph.node:
        if node.op_type == "Add" and node.input[1] == "b2":
            node.output[0] = "output_raw"
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def failing_on_large_inputs(source: Path, path: Path) -> Path:
    """The same model, plus a Gather whose index is floor(max(input) / 1.25) into a table of 2: inputs
    with a value >= 2.5 (about a third of 64 standard normal values) make onnxruntime fail the run (index
    out of bounds); the others are answered as before."""
    model = onnx.load(str(source))
    graph = model.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.zeros(2, dtype=np.float32), "table"),
        numpy_helper.from_array(np.array(1.25, dtype=np.float32), "scale"),
    ])
    graph.node.extend([
        helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
        helper.make_node("Div", ["peak", "scale"], ["peak_scaled"]),
        helper.make_node("Floor", ["peak_scaled"], ["peak_floor"]),
        helper.make_node("Cast", ["peak_floor"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["zero"]),
        helper.make_node("Add", ["output_raw", "zero"], ["output"]),
    ])
    return _save_with_added_output(model, path)


def slowed(source: Path, path: Path, layers: int = 32, width: int = 2048) -> Path:
    """The same answers after `layers` extra matrix products on the input: one shared width x width
    matrix (a few MB, whatever `layers`), so the model is many times slower but no bigger in memory.
    The extra work is added to the output times zero, which onnxruntime does not fold away."""
    model = onnx.load(str(source))
    graph = model.graph
    rng = np.random.default_rng(11)
    graph.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((64, width)) / 8).astype(np.float32), "widen"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), "square"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "nothing"),
    ])
    nodes = [helper.make_node("MatMul", ["input", "widen"], ["work0"])]
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [f"work{index}", "square"], [f"mm{index}"]))
        nodes.append(helper.make_node("Tanh", [f"mm{index}"], [f"work{index + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"work{layers}"], ["work_sum"], keepdims=1),
        helper.make_node("Mul", ["work_sum", "nothing"], ["work_zero"]),
        helper.make_node("Add", ["output_raw", "work_zero"], ["output"]),
    ]
    graph.node.extend(nodes)
    return _save_with_added_output(model, path)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def write_large_model(path: Path, size: int) -> Path:
    """A valid ONNX model of about SIZE bytes, written in chunks (never whole in memory): the tiny MLP with
    one more, unused, UINT8 initializer of that many random bytes. Written as raw protobuf, since onnx
    would build the whole message in memory."""
    model = onnx.load(str(build_mlp(path.with_suffix(".small.onnx"))))
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    name = b"padding"
    tensor_head = (b"\x08" + _varint(size) + b"\x10" + _varint(TensorProto.UINT8)
                   + b"\x42" + _varint(len(name)) + name + b"\x4a" + _varint(size))
    tensor_length = len(tensor_head) + size
    initializer_head = b"\x2a" + _varint(tensor_length)
    graph_length = len(graph) + len(initializer_head) + tensor_length
    rng = np.random.default_rng(11)
    with path.open("wb") as out:
        out.write(model.SerializeToString() + b"\x3a" + _varint(graph_length) + graph + initializer_head
                  + tensor_head)
        left = size
        while left:
            chunk = min(left, 8 << 20)
            out.write(rng.integers(0, 256, chunk, dtype=np.uint8).tobytes())
            left -= chunk
    return path
