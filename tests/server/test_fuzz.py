"""Fuzzing against the live server: nothing a client sends may produce a 5xx, and the server keeps
answering correctly afterwards.

1. schemathesis generates valid and invalid requests for every operation of the server's own OpenAPI
   document (so the document is exercised too);
2. hypothesis builds near-miss inference requests (JSON and binary tensors) that a schema-driven
   generator rarely reaches: plausible names and datatypes, shapes and sizes that almost fit;
3. shapes a model cannot take are the client's error (400 naming the tensor): an empty tensor may
   declare any dimensions, so the element count alone cannot vouch for a shape, and a model's metadata
   may leave open a dimension its graph constrains.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from testsupport.fuzzing import FUZZ_SETTINGS

GOOD = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64}]}


def assert_still_correct(server: Any) -> None:
    response = server.client.post("/v2/models/mlp/infer", json=GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 8]
    assert server.client.get("/health/ready").status_code == 200


def test_schema_driven_fuzzing_finds_no_server_error(mlp_server: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{mlp_server.url}/openapi.json")
    strategies = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an invalid operation fails the test here
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(operation.as_strategy(generation_mode=mode))
    assert len(strategies) >= 2 * 10
    seen: dict[int, int] = {}

    @FUZZ_SETTINGS
    @given(case=st.one_of(strategies))
    def call(case: Any) -> None:
        response = case.call(base_url=mlp_server.url, timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.method, case.formatted_path, case.body, response.text[:500])

    call()
    assert any(code >= 400 for code in seen), seen  # the fuzzer did reach the error paths
    assert_still_correct(mlp_server)
    assert "Traceback" not in mlp_server.log()


DATATYPES = ["FP32", "FP64", "FP16", "INT64", "INT32", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "X"]
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-(2**65), 2**65),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e40, max_value=1e40),
)


@st.composite
def near_miss_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    name = draw(st.sampled_from(["input", "input", "Input", "output", ""]))
    datatype = draw(st.one_of(st.just("FP32"), st.sampled_from(DATATYPES)))
    shape = draw(
        st.one_of(st.sampled_from([[1, 64], [2, 64], [3, 64]]), st.lists(st.integers(-1, 70), min_size=0, max_size=3))
    )
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    binary = draw(st.booleans())
    extra_headers: dict[str, str] = {}
    if binary:
        payload = draw(st.binary(max_size=600))
        size = draw(st.one_of(st.just(len(payload)), st.integers(-2, 700)))
        tensor["parameters"] = {"binary_data_size": size}
        head = json.dumps({"inputs": [tensor]}).encode()
        length = draw(st.one_of(st.just(len(head)), st.integers(-1, len(head) + 700).map(int)))
        extra_headers["Inference-Header-Content-Length"] = str(length)
        body = head + payload
    else:
        count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
        count = min(draw(st.sampled_from([count, count, max(count - 1, 0), count + 1])), 300)
        values = st.one_of(st.floats(-10, 10, width=32), NUMBERS) if datatype == "FP32" else NUMBERS
        tensor["data"] = draw(st.lists(values, min_size=count, max_size=count))
        document: dict[str, Any] = {"inputs": [tensor]}
        if draw(st.booleans()):
            document["outputs"] = [
                {
                    "name": draw(st.sampled_from(["output", "x"])),
                    "parameters": {"binary_data": draw(st.sampled_from([True, False, 1]))},
                }
            ]
        if draw(st.booleans()):
            document["parameters"] = {"binary_data_output": draw(st.sampled_from([True, False, "true"]))}
        body = json.dumps(document).encode()
    return body, extra_headers


def test_near_miss_inference_requests_get_4xx_or_200(mlp_server: Any) -> None:
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=mlp_server.url, timeout=30) as client:

        @FUZZ_SETTINGS
        @given(request=near_miss_requests())
        def call(request: tuple[bytes, dict[str, str]]) -> None:
            body, headers = request
            response = client.post("/v2/models/mlp/infer", content=body, headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 400), (body[:300], response.status_code, response.text)
            if response.status_code == 400:
                assert response.json()["error"]

        call()
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0, statuses
    assert_still_correct(mlp_server)


# --- shapes and sizes ---------------------------------------------------------------------------------

HUGE = [2**31 - 1, 2**31, 2**32, 2**40, 2**60, 2**62, 2**63 - 1, 2**64 - 1]
ITEMSIZE = {"FP32": 4, "FP64": 8, "FP16": 2, "INT8": 1, "INT64": 8, "BOOL": 1}


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
