"""Bad input never hurts the server: each case gets a 4xx naming the tensor, expected and got."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest


def good_mlp_input() -> dict[str, Any]:
    return {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}


def two_io_inputs() -> list[dict[str, Any]]:
    return [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [1.0] * 6},
        {"name": "b", "shape": [2, 3], "datatype": "INT64", "data": [1] * 6},
    ]


# (request body, words the error message must contain)
MLP_CASES: dict[str, tuple[Any, list[str]]] = {
    "wrong tensor name": (
        {"inputs": [{**good_mlp_input(), "name": "pixels"}]},
        ["'pixels'", "input"],
    ),
    "wrong datatype": (
        {"inputs": [{**good_mlp_input(), "datatype": "FP64"}]},
        ["'input'", "FP32", "FP64"],
    ),
    "unknown datatype": (
        {"inputs": [{**good_mlp_input(), "datatype": "FLOAT"}]},
        ["'input'", "FLOAT", "FP32"],
    ),
    "wrong shape": (
        {"inputs": [{**good_mlp_input(), "shape": [2, 32]}]},
        ["'input'", "[-1, 64]", "[2, 32]"],
    ),
    "wrong rank": (
        {"inputs": [{**good_mlp_input(), "shape": [64]}]},
        ["'input'", "[-1, 64]", "[64]"],
    ),
    "data count differs from shape": (
        {"inputs": [{**good_mlp_input(), "data": [0.5] * 63}]},
        ["'input'", "64", "63"],
    ),
    "negative dimension": (
        {"inputs": [{**good_mlp_input(), "shape": [-1, 64]}]},
        ["'input'", "non-negative"],
    ),
    "empty batch": (
        {"inputs": [{**good_mlp_input(), "shape": [0, 64], "data": []}]},
        ["'input'", "batch"],
    ),
    "strings in a float tensor": (
        {"inputs": [{**good_mlp_input(), "data": ["x"] * 64}]},
        ["'input'", "FP32"],
    ),
    "numbers as strings in a float tensor": (
        {"inputs": [{**good_mlp_input(), "data": ["0.5"] * 64}]},
        ["'input'", "FP32", "strings"],
    ),
    "numbers as strings among nulls in a float tensor": (
        {"inputs": [{**good_mlp_input(), "data": [None, *(["0.5"] * 63)]}]},
        ["'input'", "FP32", "strings"],
    ),
    "null (non-finite) values": (
        {"inputs": [{**good_mlp_input(), "data": [None] * 64}]},
        ["'input'", "finite"],
    ),
    "overflowing float": (
        {"inputs": [{**good_mlp_input(), "data": [1e39] * 64}]},
        ["'input'", "finite"],
    ),
    "ragged nested data": (
        {"inputs": [{**good_mlp_input(), "shape": [2, 2], "data": [[1.0, 2.0], [3.0]]}]},
        ["'input'"],
    ),
    "data not a list": (
        {"inputs": [{**good_mlp_input(), "data": "0.5"}]},
        ["'input'", "list"],
    ),
    "missing data": (
        {"inputs": [{k: v for k, v in good_mlp_input().items() if k != "data"}]},
        ["'input'", "data"],
    ),
    "missing shape": (
        {"inputs": [{k: v for k, v in good_mlp_input().items() if k != "shape"}]},
        ["'input'", "shape"],
    ),
    "missing datatype": (
        {"inputs": [{k: v for k, v in good_mlp_input().items() if k != "datatype"}]},
        ["'input'", "datatype"],
    ),
    "missing name": (
        {"inputs": [{k: v for k, v in good_mlp_input().items() if k != "name"}]},
        ["inputs[0]", "name"],
    ),
    "missing inputs": ({"id": "x"}, ["inputs"]),
    "empty inputs": ({"inputs": []}, ["inputs"]),
    "inputs not a list": ({"inputs": {"name": "input"}}, ["inputs", "list"]),
    "input not an object": ({"inputs": [3]}, ["inputs[0]"]),
    "duplicate input": ({"inputs": [good_mlp_input(), good_mlp_input()]}, ["'input'", "more than once"]),
    "unknown output": (
        {"inputs": [good_mlp_input()], "outputs": [{"name": "logits"}]},
        ["'logits'", "output"],
    ),
    "id not a string": ({"id": 5, "inputs": [good_mlp_input()]}, ["id", "str"]),
    "body is a list": ([good_mlp_input()], ["object"]),
    "binary_data_output not a bool": (
        {"inputs": [good_mlp_input()], "parameters": {"binary_data_output": "yes"}},
        ["binary_data_output"],
    ),
}


@pytest.mark.parametrize("case", sorted(MLP_CASES))
def test_bad_mlp_request_is_rejected_with_a_clear_message(mlp_server: Any, case: str) -> None:
    body, words = MLP_CASES[case]
    response = mlp_server.client.post("/v2/models/mlp/infer", content=json.dumps(body))
    assert response.status_code == 400, (case, response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, (case, word, message)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", ["not valid JSON"]),
        (b"", ["not valid JSON"]),
        (b'{"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [NaN]}]}', ["JSON"]),
        (b"\xff\xfe\x00", ["JSON"]),
    ],
)
def test_malformed_json_is_400(mlp_server: Any, content: bytes, words: list[str]) -> None:
    response = mlp_server.client.post("/v2/models/mlp/infer", content=content)
    assert response.status_code == 400
    for word in words:
        assert word in response.json()["error"]


def test_two_input_model_errors_name_the_tensor(two_io_server: Any) -> None:
    client = two_io_server.client
    missing = client.post("/v2/models/two_io/infer", json={"inputs": two_io_inputs()[:1]})
    assert missing.status_code == 400
    assert "missing input tensor 'b'" in missing.json()["error"]
    assert "INT64 [2, 3]" in missing.json()["error"]

    inputs = two_io_inputs()
    inputs[1]["data"] = [1.5] * 6
    floats = client.post("/v2/models/two_io/infer", json={"inputs": inputs})
    assert floats.status_code == 400
    assert "'b'" in floats.json()["error"] and "integers" in floats.json()["error"]

    inputs = two_io_inputs()
    inputs[1]["data"] = [2**63] * 6
    too_big = client.post("/v2/models/two_io/infer", json={"inputs": inputs})
    assert too_big.status_code == 400
    assert "'b'" in too_big.json()["error"]

    inputs = two_io_inputs()
    inputs[0]["shape"] = [3, 2]
    shape = client.post("/v2/models/two_io/infer", json={"inputs": inputs})
    assert shape.status_code == 400
    assert "expected shape [2, 3], got [3, 2]" in shape.json()["error"]


def test_disagreeing_batch_dimensions(dynamic_server: Any) -> None:
    body = {
        "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0] * 4},
            {"name": "mask", "shape": [1, 2], "datatype": "BOOL", "data": [True, False]},
        ]
    }
    response = dynamic_server.client.post("/v2/models/dynamic/infer", json=body)
    assert response.status_code == 400
    assert "batch dimension" in response.json()["error"]
    body["inputs"][1] = {"name": "mask", "shape": [2, 2], "datatype": "BOOL", "data": [1, 0, 2, 0]}
    response = dynamic_server.client.post("/v2/models/dynamic/infer", json=body)
    assert response.status_code == 400
    assert "'mask'" in response.json()["error"] and "BOOL" in response.json()["error"]


def _binary_post(server: Any, header: dict[str, Any], payload: bytes, header_length: int | str | None = None) -> Any:
    head = json.dumps(header).encode()
    length = str(len(head)) if header_length is None else str(header_length)
    return server.client.post(
        "/v2/models/mlp/infer", content=head + payload, headers={"Inference-Header-Content-Length": length}
    )


def test_binary_size_mismatch_and_leftovers(mlp_server: Any) -> None:
    x = np.zeros((1, 64), dtype=np.float32)
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 255}}
    short = _binary_post(mlp_server, {"inputs": [tensor]}, x.tobytes()[:255])
    assert short.status_code == 400
    assert "'input'" in short.json()["error"] and "255" in short.json()["error"] and "256" in short.json()["error"]

    tensor["parameters"] = {"binary_data_size": 256}
    leftover = _binary_post(mlp_server, {"inputs": [tensor]}, x.tobytes() + b"1234")
    assert leftover.status_code == 400
    assert "4 bytes" in leftover.json()["error"]

    past_end = _binary_post(mlp_server, {"inputs": [tensor]}, x.tobytes()[:100])
    assert past_end.status_code == 400
    assert "runs past" in past_end.json()["error"]

    nan = np.full((1, 64), np.nan, dtype=np.float32)
    non_finite = _binary_post(mlp_server, {"inputs": [tensor]}, nan.tobytes())
    assert non_finite.status_code == 400
    assert "'input'" in non_finite.json()["error"] and "finite" in non_finite.json()["error"]

    both = _binary_post(mlp_server, {"inputs": [{**tensor, "data": [0.0] * 64}]}, x.tobytes())
    assert both.status_code == 400
    assert "not both" in both.json()["error"]

    for bad_length in ("abc", "-3", "999999"):
        response = _binary_post(mlp_server, {"inputs": [tensor]}, x.tobytes(), header_length=bad_length)
        assert response.status_code == 400, bad_length
        assert "Inference-Header-Content-Length" in response.json()["error"]


def test_body_over_the_limit_is_413(start_server: Any, model_dir: Any) -> None:
    server = start_server(model_dir / "mlp.onnx", "--max-request-bytes", "4096")
    big = {"inputs": [{"name": "input", "shape": [20, 64], "datatype": "FP32", "data": [0.5] * 1280}]}
    response = server.client.post("/v2/models/mlp/infer", json=big)
    assert response.status_code == 413
    assert "4096" in response.json()["error"]

    def chunks(pause: float) -> Any:  # no Content-Length: the limit applies while reading
        payload = json.dumps(big).encode()
        for start in range(0, len(payload), 1000):
            yield payload[start : start + 1000]
            time.sleep(pause)  # with a pause the server sees several body messages

    for pause in (0.0, 0.05):
        chunked = server.client.post("/v2/models/mlp/infer", content=chunks(pause))
        assert chunked.status_code == 413, pause
    small = {"inputs": [good_mlp_input()]}
    assert server.client.post("/v2/models/mlp/infer", json=small).status_code == 200
    metrics = server.client.get("/metrics").text
    assert 'modeldeploy_requests_total{model="mlp",outcome="too_large",protocol="rest"} 3.0' in metrics


def test_server_still_answers_after_bad_requests(mlp_server: Any) -> None:
    response = mlp_server.client.post("/v2/models/mlp/infer", json={"inputs": [good_mlp_input()]})
    assert response.status_code == 200
    assert len(response.json()["outputs"][0]["data"]) == 8
    assert "Traceback" not in mlp_server.log()
