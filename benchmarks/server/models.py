"""Benchmark models built locally with random weights (nothing is downloaded).

* ``mlp``: 64 -> 256 (ReLU) -> 8, input ``input`` FP32 [batch, 64], output ``output`` [batch, 8].
* ``encoder``: BERT-base shaped (hidden 768, 12 heads, FFN 3072, vocabulary 30522, sequence 128,
  post-LayerNorm, GELU), input ``input_ids`` INT64 [batch, 128], output ``logits`` FP32 [batch, 2] from
  the first token. Weights are random; the arithmetic is that of the real thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from testsupport.onnx_models import build_mlp

OPSET = [helper.make_opsetid("", 17)]
HIDDEN, HEADS, FFN, VOCAB, SEQ = 768, 12, 3072, 30522, 128


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="modeldeploy-bench")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class _Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.init: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.init.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, hint: str, shape: tuple[int, ...], scale: float = 0.02) -> str:
        return self.const(hint, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def linear(self, x: str, fan_in: int, fan_out: int, hint: str) -> str:
        product = self.op("MatMul", [x, self.weight(f"{hint}_w", (fan_in, fan_out))], f"{hint}_mm")
        return self.op("Add", [product, self.const(f"{hint}_b", np.zeros(fan_out, np.float32))], hint)

    def layer_norm(self, x: str, hint: str) -> str:
        gamma = self.const(f"{hint}_g", np.ones(HIDDEN, np.float32))
        beta = self.const(f"{hint}_b", np.zeros(HIDDEN, np.float32))
        return self.op("LayerNormalization", [x, gamma, beta], hint, axis=-1, epsilon=1e-12)

    def gelu(self, x: str) -> str:
        scaled = self.op("Mul", [x, self.const("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))], "gelu_s")
        erf = self.op("Erf", [scaled], "gelu_erf")
        plus = self.op("Add", [erf, self.const("one", np.array(1.0, np.float32))], "gelu_p")
        half = self.op("Mul", [x, self.const("half", np.array(0.5, np.float32))], "gelu_h")
        return self.op("Mul", [half, plus], "gelu")


def build_encoder(path: Path, layers: int) -> Path:
    g = _Graph(seed=layers)
    head_dim = HIDDEN // HEADS
    words = g.op("Gather", [g.weight("word_emb", (VOCAB, HIDDEN)), "input_ids"], "words", axis=0)
    x = g.op("Add", [words, g.weight("pos_emb", (SEQ, HIDDEN))], "emb")
    x = g.layer_norm(x, "emb_ln")
    split_heads = g.const("split_heads", np.array([0, SEQ, HEADS, head_dim], np.int64))
    merge_heads = g.const("merge_heads", np.array([0, SEQ, HIDDEN], np.int64))
    scale = g.const("scale", np.array(1 / np.sqrt(head_dim), np.float32))
    for index in range(layers):
        p = f"l{index}"
        q = g.op("Reshape", [g.linear(x, HIDDEN, HIDDEN, f"{p}_q"), split_heads], f"{p}_qr")
        k = g.op("Reshape", [g.linear(x, HIDDEN, HIDDEN, f"{p}_k"), split_heads], f"{p}_kr")
        v = g.op("Reshape", [g.linear(x, HIDDEN, HIDDEN, f"{p}_v"), split_heads], f"{p}_vr")
        q = g.op("Transpose", [q], f"{p}_qt", perm=[0, 2, 1, 3])
        k = g.op("Transpose", [k], f"{p}_kt", perm=[0, 2, 3, 1])
        v = g.op("Transpose", [v], f"{p}_vt", perm=[0, 2, 1, 3])
        scores = g.op("Mul", [g.op("MatMul", [q, k], f"{p}_qk"), scale], f"{p}_scores")
        probs = g.op("Softmax", [scores], f"{p}_probs", axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v], f"{p}_ctx")], f"{p}_ctxt", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, merge_heads], f"{p}_ctxr")
        x = g.layer_norm(g.op("Add", [x, g.linear(context, HIDDEN, HIDDEN, f"{p}_o")], f"{p}_res1"), f"{p}_ln1")
        hidden = g.gelu(g.linear(x, HIDDEN, FFN, f"{p}_ffn1"))
        x = g.layer_norm(g.op("Add", [x, g.linear(hidden, FFN, HIDDEN, f"{p}_ffn2")], f"{p}_res2"), f"{p}_ln2")
    first = g.op("Gather", [x, g.const("first", np.array(0, np.int64))], "cls", axis=1)
    pooled = g.op("Tanh", [g.linear(first, HIDDEN, HIDDEN, "pool")], "pooled")
    logits_mm = g.op("MatMul", [pooled, g.weight("cls_w", (HIDDEN, 2))], "cls_mm")
    g.nodes.append(helper.make_node("Add", [logits_mm, g.const("cls_b", np.zeros(2, np.float32))], ["logits"]))
    graph = helper.make_graph(
        g.nodes,
        f"encoder{layers}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", SEQ])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        initializer=g.init,
    )
    return _save(graph, path)


def ensure(folder: Path, name: str) -> Path:
    """Build the named model into ``folder`` unless it is already there."""
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    if name == "mlp":
        return build_mlp(path)
    if name.startswith("encoder"):
        return build_encoder(path, int(name.removeprefix("encoder")))
    raise ValueError(f"unknown benchmark model {name!r}")


def sample_input(name: str, batch: int = 1, seed: int = 0) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "mlp":
        return "input", rng.standard_normal((batch, 64)).astype(np.float32)
    return "input_ids", rng.integers(0, VOCAB, size=(batch, SEQ), dtype=np.int64)
