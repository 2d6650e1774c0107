#!/usr/bin/env python3
"""Write a tiny ONNX classifier for trying modeldeploy out, and print a v2 inference request.

The model is a 4 -> 8 -> 2 MLP (Gemm, Relu, Gemm, Softmax) with a dynamic batch dimension and
fixed random weights, so every run writes the same file. Nothing is downloaded.

    python examples/make_tiny_model.py sentiment/v1/model.onnx > request.json
    python -m modeldeploy_server --model sentiment/v1/model.onnx --name sentiment &
    curl -s -H 'Content-Type: application/json' -d @request.json \\
        http://127.0.0.1:8080/v2/models/sentiment/infer

The request body (JSON, Open Inference Protocol v2) goes to stdout; notes go to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
FEATURES = 4
HIDDEN = 8
CLASSES = 2
# Opset and IR version old enough for every onnxruntime release of the last few years.
OPSET = 17
IR_VERSION = 8


def build_model(seed: int = 0) -> onnx.ModelProto:
    """Build the MLP with weights drawn from a seeded generator (same seed, same bytes)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32)
    b1 = rng.standard_normal(HIDDEN).astype(np.float32)
    w2 = rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32)
    b2 = rng.standard_normal(CLASSES).astype(np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("Gemm", [INPUT_NAME, "w1", "b1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
            helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
        ],
        name="tiny_sentiment",
        inputs=[helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", FEATURES])],
        outputs=[helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="modeldeploy-examples",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def sample_request(batch: int = 2) -> dict[str, object]:
    """An Open Inference Protocol v2 JSON request for the model (row-major, flattened data)."""
    data = [round(0.25 * (i + 1), 2) for i in range(batch * FEATURES)]
    return {
        "inputs": [
            {"name": INPUT_NAME, "shape": [batch, FEATURES], "datatype": "FP32", "data": data},
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("output", nargs="?", default="model.onnx", type=Path, help="where to write the model")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument("--batch", type=int, default=2, help="rows in the sample request (default 2)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    payload = build_model(args.seed).SerializeToString()
    args.output.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    print(f"wrote {args.output} ({len(payload)} bytes)", file=sys.stderr)
    print(f"sha256: {digest}  (put it in spec.model.sha256 to pin this exact file)", file=sys.stderr)
    json.dump(sample_request(args.batch), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
