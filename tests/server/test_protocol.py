"""Open Inference Protocol v2 over real HTTP: metadata, readiness, JSON and binary-tensor inference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


def reference(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def json_input(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}


def binary_body(inputs: list[tuple[str, str, np.ndarray]], extra: dict[str, Any]) -> tuple[bytes, int]:
    header = {
        **extra,
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": d, "parameters": {"binary_data_size": a.nbytes}}
            for n, d, a in inputs
        ],
    }
    head = json.dumps(header).encode()
    return head + b"".join(a.tobytes() for _, _, a in inputs), len(head)


def split_binary_response(content: bytes, header_length: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    header = json.loads(content[:header_length])
    blobs: dict[str, bytes] = {}
    offset = header_length
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = content[offset : offset + size]
            offset += size
    assert offset == len(content)
    return header, blobs


def test_server_metadata_and_health(mlp_server: Any) -> None:
    client = mlp_server.client
    metadata = client.get("/v2").json()
    assert metadata["name"] == "modeldeploy"
    assert "binary_tensor_data" in metadata["extensions"]
    assert isinstance(metadata["version"], str)
    for path in ("/v2/health/live", "/v2/health/ready", "/health/live", "/health/ready"):
        assert client.get(path).status_code == 200, path
    ready = client.get("/v2/models/mlp/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert client.get("/v2/models/mlp/versions/1/ready").status_code == 200


def test_model_metadata_reads_the_model(mlp_server: Any) -> None:
    metadata = mlp_server.client.get("/v2/models/mlp").json()
    assert metadata["name"] == "mlp"
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 8]}]
    assert metadata["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert metadata["parameters"]["max_batch_size"] == 64
    assert mlp_server.client.get("/v2/models/mlp/versions/1").json() == metadata
    assert "execution provider: CPUExecutionProvider" in mlp_server.log()


def test_two_input_metadata_has_fixed_shapes_and_no_batching(two_io_server: Any) -> None:
    metadata = two_io_server.client.get("/v2/models/two_io").json()
    assert metadata["inputs"] == [
        {"name": "a", "datatype": "FP32", "shape": [2, 3]},
        {"name": "b", "datatype": "INT64", "shape": [2, 3]},
    ]
    assert metadata["outputs"] == [
        {"name": "scaled", "datatype": "FP32", "shape": [2, 3]},
        {"name": "total", "datatype": "INT64", "shape": [2, 1]},
    ]
    assert metadata["parameters"]["max_batch_size"] == 0


def test_unknown_model_and_version_are_404(mlp_server: Any) -> None:
    client = mlp_server.client
    for response in (
        client.get("/v2/models/other"),
        client.get("/v2/models/other/ready"),
        client.get("/v2/models/mlp/versions/7"),
        client.post("/v2/models/other/infer", json={"inputs": []}),
    ):
        assert response.status_code == 404
        assert "not found" in response.json()["error"]


def test_json_infer_matches_onnxruntime(mlp_server: Any, model_dir: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    body = {"id": "req-1", "inputs": [json_input("input", x, "FP32")]}
    response = mlp_server.client.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["model_name"] == "mlp"
    assert document["model_version"] == "1"
    assert document["id"] == "req-1"
    [output] = document["outputs"]
    assert output["name"] == "output"
    assert output["datatype"] == "FP32"
    assert output["shape"] == [3, 8]
    got = np.asarray(output["data"], dtype=np.float32).reshape(3, 8)
    np.testing.assert_array_equal(got, reference(model_dir / "mlp.onnx", {"input": x})["output"])


def test_nested_json_data_is_accepted(mlp_server: Any) -> None:
    x = np.ones((2, 64), dtype=np.float32)
    body = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.tolist()}]}
    response = mlp_server.client.post("/v2/models/mlp/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    assert "id" not in response.json()


def test_binary_input_and_binary_output(mlp_server: Any, model_dir: Path) -> None:
    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    body, header_length = binary_body([("input", "FP32", x)], {"parameters": {"binary_data_output": True}})
    response = mlp_server.client.post(
        "/v2/models/mlp/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(header_length), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    header, blobs = split_binary_response(response.content, int(response.headers["inference-header-content-length"]))
    [output] = header["outputs"]
    assert output["shape"] == [4, 8]
    assert output["parameters"]["binary_data_size"] == 4 * 8 * 4
    assert "data" not in output
    got = np.frombuffer(blobs["output"], dtype="<f4").reshape(4, 8)
    np.testing.assert_array_equal(got, reference(model_dir / "mlp.onnx", {"input": x})["output"])


def test_binary_input_with_json_output(mlp_server: Any) -> None:
    x = np.zeros((1, 64), dtype=np.float32)
    body, header_length = binary_body([("input", "FP32", x)], {})
    response = mlp_server.client.post(
        "/v2/models/mlp/infer", content=body, headers={"Inference-Header-Content-Length": str(header_length)}
    )
    assert response.status_code == 200, response.text
    assert "inference-header-content-length" not in response.headers
    assert len(response.json()["outputs"][0]["data"]) == 8


def test_two_inputs_two_outputs_and_output_selection(two_io_server: Any, model_dir: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    b = np.arange(6, dtype=np.int64).reshape(2, 3) - 2
    expected = reference(model_dir / "two_io.onnx", {"a": a, "b": b})
    body = {"inputs": [json_input("b", b, "INT64"), json_input("a", a, "FP32")]}
    document = two_io_server.client.post("/v2/models/two_io/infer", json=body).json()
    outputs = {o["name"]: o for o in document["outputs"]}
    assert [o["name"] for o in document["outputs"]] == ["scaled", "total"]
    assert outputs["total"]["datatype"] == "INT64"
    assert outputs["total"]["shape"] == [2, 1]
    assert outputs["total"]["data"] == expected["total"].ravel().tolist()
    np.testing.assert_array_equal(np.asarray(outputs["scaled"]["data"], np.float32), expected["scaled"].ravel())

    # Only one output, returned as binary while the request itself is JSON.
    body["outputs"] = [{"name": "total", "parameters": {"binary_data": True}}]
    response = two_io_server.client.post("/v2/models/two_io/infer", json=body)
    header, blobs = split_binary_response(response.content, int(response.headers["inference-header-content-length"]))
    assert [o["name"] for o in header["outputs"]] == ["total"]
    np.testing.assert_array_equal(np.frombuffer(blobs["total"], "<i8").reshape(2, 1), expected["total"])


def test_mixed_binary_and_json_inputs(two_io_server: Any, model_dir: Path) -> None:
    a = np.full((2, 3), 0.5, dtype=np.float32)
    b = np.ones((2, 3), dtype=np.int64)
    head = json.dumps(
        {
            "inputs": [
                json_input("a", a, "FP32"),
                {"name": "b", "shape": [2, 3], "datatype": "INT64", "parameters": {"binary_data_size": b.nbytes}},
            ]
        }
    ).encode()
    response = two_io_server.client.post(
        "/v2/models/two_io/infer",
        content=head + b.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["total"] == [3, 3]
    assert outputs["scaled"] == [2.0] * 6


def test_dynamic_dimensions_and_bool_tensors(dynamic_server: Any, model_dir: Path) -> None:
    metadata = dynamic_server.client.get("/v2/models/dynamic").json()
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]},
    ]
    for rows, seq in ((1, 1), (2, 5), (7, 3)):
        x = np.random.default_rng(rows).standard_normal((rows, seq)).astype(np.float32)
        mask = x > 0
        body = {"inputs": [json_input("x", x, "FP32"), json_input("mask", mask, "BOOL")]}
        response = dynamic_server.client.post("/v2/models/dynamic/infer", json=body)
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        expected = reference(model_dir / "dynamic.onnx", {"x": x, "mask": mask})
        assert outputs["doubled"]["shape"] == [rows, seq]
        assert outputs["kept"]["shape"] == [rows]
        assert outputs["kept"]["data"] == expected["kept"].tolist()
        np.testing.assert_array_equal(np.asarray(outputs["mean"]["data"], np.float32), expected["mean"].ravel())


def test_binary_bool_input(dynamic_server: Any) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    mask = np.array([[True, False, True, True], [False, False, False, True]])
    body, header_length = binary_body([("x", "FP32", x), ("mask", "BOOL", mask)], {})
    response = dynamic_server.client.post(
        "/v2/models/dynamic/infer", content=body, headers={"Inference-Header-Content-Length": str(header_length)}
    )
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    assert outputs["kept"] == [3, 1]


def test_openapi_document_and_docs(mlp_server: Any) -> None:
    schema = mlp_server.client.get("/openapi.json").json()
    assert "/v2/models/{model_name}/infer" in schema["paths"]
    infer = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["inputs"]["items"]["properties"]["name"]["enum"] == ["input"]
    assert mlp_server.client.get("/docs").status_code == 200
