"""The gRPC message format of the Open Inference Protocol: ``ModelInferRequest`` -> dataplane request,
dataplane response -> ``ModelInferResponse``.

A tensor comes either as typed ``contents`` (one repeated field per family of datatypes) or as one
entry of ``raw_input_contents`` (little-endian row-major bytes; BYTES elements as a 4-byte length and
the bytes, as Triton's clients send them), never both in one request. Answers come back in the form
the request used: raw in, raw out (``raw_output_contents``, what Triton's and KServe's clients read
first); typed in, typed out - except that an FP16 output has no typed field, so a response with one is
raw throughout. Every mistake is an ``InvalidTensorError`` naming the tensor, as in ``rest_codec``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modeldeploy_server.codec import (
    DATATYPE_DTYPES,
    bytes_elements,
    check_datatype,
    parse_shape,
    tensor_from_bytes,
    tensor_to_bytes,
)
from modeldeploy_server.dataplane import InferenceRequest, InferenceResponse, InputTensor
from modeldeploy_server.errors import InvalidInputError, InvalidTensorError
from modeldeploy_server.protos import grpc_predict_v2_pb2 as pb

# datatype -> the InferTensorContents field carrying it, and the dtype of that field's values
CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(np.object_)),
}


def _typed_values(name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents) -> np.ndarray:
    if datatype not in CONTENTS:
        raise InvalidTensorError(name, f"{datatype} has no typed contents field; send it in raw_input_contents")
    field, carrier = CONTENTS[datatype]
    others = [described.name for described, _ in contents.ListFields() if described.name != field]
    if others:
        raise InvalidTensorError(name, f"{datatype} values go in contents.{field}, got {', '.join(others)}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidTensorError(name, f"shape {list(shape)} needs {count} values, got {len(values)} in {field}")
    if datatype == "BYTES":
        try:
            items = [value.decode("utf-8") for value in values]
        except UnicodeDecodeError as exc:
            raise InvalidTensorError(name, f"BYTES contents must be UTF-8: {exc}") from None
        return np.array(items, dtype=np.object_).reshape(shape)
    array = np.fromiter(values, dtype=carrier, count=count)
    dtype = DATATYPE_DTYPES[datatype]
    if dtype != carrier and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidTensorError(name, f"values out of range for {datatype} [{info.min}, {info.max}]")
    return array.astype(dtype, copy=False).reshape(shape)


def _input_tensor(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> InputTensor:
    name, datatype = tensor.name, tensor.datatype
    check_datatype(name, datatype)
    shape = parse_shape(name, datatype, list(tensor.shape))
    if raw is None:
        return InputTensor(name, datatype, shape, _typed_values(name, datatype, shape, tensor.contents))
    if tensor.HasField("contents"):
        raise InvalidTensorError(name, "has typed contents in a request with raw_input_contents; use one or the other")
    array = tensor_from_bytes(name, datatype, shape, memoryview(raw), "its raw_input_contents entry")
    return InputTensor(name, datatype, shape, array)


def decode_request(message: pb.ModelInferRequest) -> tuple[InferenceRequest, bool]:
    """The dataplane request, and whether the answer goes back raw (the request came raw)."""
    if not message.inputs:
        raise InvalidInputError("request: 'inputs' must list at least one tensor")
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInputError(
            f"request: raw_input_contents has {len(raw)} entries for {len(message.inputs)} input tensors; "
            "give one per input, in the order of 'inputs'"
        )
    inputs = [_input_tensor(tensor, raw[index] if raw else None) for index, tensor in enumerate(message.inputs)]
    outputs = [output.name for output in message.outputs] or None
    return InferenceRequest(inputs=inputs, id=message.id or None, outputs=outputs), bool(raw)


def _typed_contents(datatype: str, array: np.ndarray) -> pb.InferTensorContents:
    field, _ = CONTENTS[datatype]
    values: list[Any] = bytes_elements(array) if datatype == "BYTES" else array.ravel().tolist()
    return pb.InferTensorContents(**{field: values})


def encode_response(response: InferenceResponse, raw: bool) -> pb.ModelInferResponse:
    raw = raw or any(tensor.datatype not in CONTENTS for tensor in response.outputs)
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or ""
    )
    for tensor in response.outputs:
        shape = tensor.data.shape
        if raw:
            message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape)
            message.raw_output_contents.append(tensor_to_bytes(tensor.datatype, tensor.data))
        else:
            contents = _typed_contents(tensor.datatype, tensor.data)
            message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=shape, contents=contents)
    return message
