"""Fuzzing against the live server: nothing a client sends may produce a 5xx, and the server keeps
answering correctly afterwards.

1. schemathesis generates valid and invalid requests for every operation of the server's own OpenAPI
   document (so the document is exercised too);
2. hypothesis builds near-miss inference requests (JSON and binary tensors) that a schema-driven
   generator rarely reaches: plausible names and datatypes, shapes and sizes that almost fit.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
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
