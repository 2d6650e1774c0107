"""Shapes and sizes a model cannot take are the client's error (400 naming the tensor), never a 500:
an empty tensor may declare any dimensions, so the element count alone cannot vouch for a shape."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

HUGE = [2**31 - 1, 2**31, 2**32, 2**40, 2**60, 2**62, 2**63 - 1, 2**64 - 1]
ITEMSIZE = {"FP32": 4, "FP64": 8, "FP16": 2, "INT8": 1, "INT64": 8, "BOOL": 1}
FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def request_body(inputs: list[dict[str, Any]], payload: bytes | None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": inputs}).encode()
    if payload is None:
        return head, {}
    return head + payload, {"Inference-Header-Content-Length": str(len(head))}


def json_body(name: str, datatype: str, shape: list[int], data: list[Any]) -> tuple[bytes, dict[str, str]]:
    return request_body([{"name": name, "datatype": datatype, "shape": shape, "data": data}], None)


def binary_body(name: str, datatype: str, shape: list[int], payload: bytes) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(payload)}}
    return request_body([tensor], payload)


def bytes_payload(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


# The reported requests, and their relatives in every form the codec reads.
CASES = {
    "json FP32 [0, 2**63-1]": json_body("input", "FP32", [0, 2**63 - 1], []),
    "json FP32 [0, 2**32, 2**32]": json_body("input", "FP32", [0, 2**32, 2**32], []),
    "json FP32 [0, 2**64-1]": json_body("input", "FP32", [0, 2**64 - 1], []),
    "json FP64 [0, 2**61]": json_body("input", "FP64", [0, 2**61], []),
    "json BOOL [0, 2**32, 2**32]": json_body("input", "BOOL", [0, 2**32, 2**32], []),
    "json BYTES [0, 2**32, 2**32]": json_body("input", "BYTES", [0, 2**32, 2**32], []),
    "json BYTES [0, 2**63-1]": json_body("input", "BYTES", [0, 2**63 - 1], []),
    "binary FP32 [0, 2**63-1]": binary_body("input", "FP32", [0, 2**63 - 1], b""),
    "binary FP32 [2**32, 2**32, 0]": binary_body("input", "FP32", [2**32, 2**32, 0], b""),
    "binary INT8 [0, 2**63-1, 2]": binary_body("input", "INT8", [0, 2**63 - 1, 2], b""),
    "binary BYTES [0, 2**32, 2**32]": binary_body("input", "BYTES", [0, 2**32, 2**32], b""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_huge_dimensions_of_an_empty_tensor_are_a_400_naming_the_tensor(mlp_server: Any, case: str) -> None:
    body, headers = CASES[case]
    response = mlp_server.client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 400, (case, response.status_code, response.text)
    message = response.json()["error"]
    assert "'input'" in message and "shape" in message, (case, message)


@pytest.mark.parametrize(
    ("tensor", "datatype", "shape"),
    [("x", "FP32", [0, 2**40]), ("x", "FP32", [2**40, 0]), ("s", "BYTES", [0])],
)
def test_empty_tensors_the_model_can_take_are_served(
    open_server: Any, tensor: str, datatype: str, shape: list[int]
) -> None:
    """A model without a batch dimension takes empty tensors of any representable shape."""
    inputs = {
        "x": {"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.5]},
        "s": {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["a"]},
    }
    inputs[tensor] = {"name": tensor, "datatype": datatype, "shape": shape, "data": []}
    response = open_server.client.post("/v2/models/open/infer", json={"inputs": list(inputs.values())})
    assert response.status_code == 200, response.text


# Per model: each input's datatype and a valid tensor for it, sent alongside the fuzzed one.
MODELS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "mlp": {"input": ("FP32", {"shape": [1, 64], "data": [0.5] * 64})},
    "dynamic": {
        "x": ("FP32", {"shape": [1, 2], "data": [0.5, 1.5]}),
        "mask": ("BOOL", {"shape": [1, 2], "data": [True, False]}),
    },
    "constrained": {"x": ("FP32", {"shape": [1, 4], "data": [0.5] * 4})},
    "open": {
        "x": ("FP32", {"shape": [1, 1], "data": [1.5]}),
        "s": ("BYTES", {"shape": [1], "data": ["a"]}),
    },
}


@st.composite
def shaped_requests(draw: st.DrawFn, model: str) -> tuple[bytes, dict[str, str]]:
    """One tensor whose shape mixes small and huge dimensions, with data that matches it when it can,
    next to valid tensors for the model's other inputs."""
    inputs = MODELS[model]
    name = draw(st.sampled_from(sorted(inputs)))
    datatype = draw(st.one_of(st.just(inputs[name][0]), st.sampled_from([*ITEMSIZE, "BYTES"])))
    dims = st.one_of(st.integers(0, 3), st.sampled_from(HUGE))
    shape = draw(st.lists(dims, min_size=0, max_size=4))
    count = math.prod(shape)
    if count > 64:  # cannot be sent: an empty or short tensor claims the shape
        count = draw(st.sampled_from([0, 1]))
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    payload = None
    if draw(st.booleans()):
        if datatype == "BYTES":
            payload = bytes_payload([b"ab"] * count)
        else:
            payload = np.ones(count, dtype=np.uint8).repeat(ITEMSIZE[datatype]).tobytes()
        tensor["parameters"] = {"binary_data_size": len(payload)}
    else:
        values: dict[str, Any] = {"BYTES": "ab", "BOOL": True, "INT8": 1, "INT64": 1}
        tensor["data"] = [values.get(datatype, 0.5)] * count
    others = [{"name": other, "datatype": kind, **valid} for other, (kind, valid) in inputs.items() if other != name]
    return request_body([tensor, *others], payload)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_fuzzed_shapes_get_200_or_a_400_naming_the_problem(request: pytest.FixtureRequest, model: str) -> None:
    server = request.getfixturevalue(f"{model}_server")
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:

        @FUZZ_SETTINGS
        @given(sent=shaped_requests(model))
        def call(sent: tuple[bytes, dict[str, str]]) -> None:
            body, headers = sent
            response = client.post(f"/v2/models/{model}/infer", content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 400), (body[:300], response.status_code, response.text)
            if response.status_code == 400:
                assert response.json()["error"]

        call()
    assert statuses.get(400, 0) > 0, statuses
    assert "Traceback" not in server.log()


def test_a_shape_the_graph_cannot_take_is_a_400_naming_the_tensor(constrained_server: Any) -> None:
    """The metadata says [batch, n]; the graph runs n = 1 or 4 only, which onnxruntime finds out."""
    server = constrained_server
    fits = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0] * 4}]}
    assert server.client.post("/v2/models/constrained/infer", json=fits).status_code == 200
    wrong = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1.0] * 3}]}
    response = server.client.post("/v2/models/constrained/infer", json=wrong)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "'x'" in message and "[1, 3]" in message and "dimension" in message, message
