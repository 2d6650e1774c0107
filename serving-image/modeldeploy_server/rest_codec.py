"""The REST body format of the Open Inference Protocol v2: JSON, or JSON + the binary tensor extension.

Bodies become ``dataplane`` requests and results become bodies without pydantic on the hot path: orjson
parses, ``codec`` builds the tensors, and orjson's numpy serializer writes the outputs.

Binary tensor data extension: when the ``Inference-Header-Content-Length`` header is present, that many
bytes of the body are the JSON header and the rest holds the tensors whose ``parameters`` carry
``binary_data_size``, in input order. Outputs are returned the same way when the request asks with
``binary_data_output`` (request parameters) or ``binary_data`` (per requested output); that choice is
the REST front's business and stays here (``OutputEncoding``), out of the dataplane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from modeldeploy_server.codec import (
    check_datatype,
    parse_shape,
    tensor_from_bytes,
    tensor_from_list,
    tensor_to_bytes,
    tensor_to_list,
)
from modeldeploy_server.dataplane import InferenceRequest, InferenceResponse, InputTensor
from modeldeploy_server.errors import JSON_TYPE, InvalidInputError, InvalidTensorError

HEADER_LENGTH = "inference-header-content-length"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class OutputEncoding:
    """Which outputs go back as binary data: the request's default, overridden per output."""

    binary_default: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, output: str) -> bool:
        return self.binary.get(output, self.binary_default)


def _field(obj: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidInputError(f"{where}: missing field {key!r}")
        return None
    if not isinstance(value, kind):
        raise InvalidInputError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part after it."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        split = int(header_length)
    except ValueError:
        raise InvalidInputError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not 0 < split <= len(body):
        raise InvalidInputError(f"Inference-Header-Content-Length {split} does not fit a body of {len(body)} bytes")
    return body[:split], memoryview(body)[split:]


def _input_tensor(index: int, raw: Any, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    """One entry of ``inputs`` and the offset of the next tensor's binary data."""
    if not isinstance(raw, dict):
        raise InvalidInputError(f"request: inputs[{index}] must be an object")
    name = _field(raw, "name", str, f"inputs[{index}]")
    where = f"input tensor {name!r}"
    datatype = _field(raw, "datatype", str, where)
    check_datatype(name, datatype)
    shape = parse_shape(name, datatype, _field(raw, "shape", list, where))
    parameters = _field(raw, "parameters", dict, where, required=False) or {}
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise InvalidTensorError(name, "missing field 'data' (or parameters.binary_data_size)")
        return InputTensor(name, datatype, shape, tensor_from_list(name, datatype, shape, raw["data"])), offset
    if type(size) is not int or size < 0:
        raise InvalidTensorError(name, f"binary_data_size must be a non-negative integer, got {size!r}")
    if "data" in raw:
        raise InvalidTensorError(name, "give either 'data' or binary_data_size, not both")
    if offset + size > len(binary):
        raise InvalidTensorError(name, f"binary_data_size {size} runs past the {len(binary)} bytes of binary data")
    array = tensor_from_bytes(name, datatype, shape, binary[offset : offset + size])
    return InputTensor(name, datatype, shape, array), offset + size


def _output_encoding(document: dict[str, Any], binary_default: bool) -> tuple[list[str] | None, OutputEncoding]:
    raw_outputs = _field(document, "outputs", list, "request", required=False)
    if raw_outputs is None:
        return None, OutputEncoding(binary_default)
    names: list[str] = []
    binary: dict[str, bool] = {}
    for index, raw in enumerate(raw_outputs):
        if not isinstance(raw, dict):
            raise InvalidInputError(f"request: outputs[{index}] must be an object")
        name = _field(raw, "name", str, f"outputs[{index}]")
        parameters = _field(raw, "parameters", dict, f"output {name!r}", required=False) or {}
        wants_binary = parameters.get("binary_data")
        if wants_binary is not None:
            if not isinstance(wants_binary, bool):
                raise InvalidInputError(f"output {name!r}: parameter 'binary_data' must be true or false")
            binary[name] = wants_binary
        names.append(name)
    return names, OutputEncoding(binary_default, binary)


def decode_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, OutputEncoding]:
    """Parse an infer request body (JSON, or JSON header + binary tensors)."""
    header, binary = _split_body(body, header_length)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {type(document).__name__}")
    request_id = _field(document, "id", str, "request", required=False)
    parameters = _field(document, "parameters", dict, "request", required=False) or {}
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidInputError("request: parameter 'binary_data_output' must be true or false")
    raw_inputs = _field(document, "inputs", list, "request")
    if not raw_inputs:
        raise InvalidInputError("request: 'inputs' must list at least one tensor")
    inputs: list[InputTensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _input_tensor(index, raw, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInputError(f"request: {len(binary) - offset} bytes of binary data belong to no input tensor")
    outputs, encoding = _output_encoding(document, binary_default)
    return InferenceRequest(inputs=inputs, id=request_id, outputs=outputs), encoding


def encode_response(response: InferenceResponse, encoding: OutputEncoding) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs follow the JSON header when asked for)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.data.shape)}
        if encoding.is_binary(tensor.name):
            raw = tensor_to_bytes(tensor.datatype, tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor_to_list(tensor.datatype, tensor.data)
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        document["id"] = response.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    return b"".join([header, *chunks]), {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
