"""Open Inference Protocol v2 over REST: routes plus the JSON / binary-tensor codec.

The codec turns bytes into ``dataplane`` objects and back without pydantic on the hot path: bodies are
parsed by orjson, tensors built by numpy, and outputs written by orjson's numpy serializer. The pydantic
models below only describe the schema for the OpenAPI document.

Binary tensor data extension: when the ``Inference-Header-Content-Length`` header is present, that many
bytes of the body are the JSON header and the rest holds the tensors whose ``parameters`` carry
``binary_data_size``, in input order (little-endian, row-major; BYTES elements as 4-byte length +
bytes). Outputs are returned the same way when the request asks with ``binary_data_output`` (request
parameters) or ``binary_data`` (per requested output).
"""

import asyncio
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from modeldeploy_server.dataplane import (
    DataPlane,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
)
from modeldeploy_server.errors import InvalidInputError, PayloadTooLargeError, ServerError
from modeldeploy_server.model import DATATYPE_DTYPES

log = logging.getLogger(__name__)
HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
_OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are decoded/encoded off the event loop
_MAX_RANK = 32
_LENGTH = struct.Struct("<I")


# --- decoding ----------------------------------------------------------------------------------------


def _field(obj: dict[str, Any], key: str, kind: type, where: str, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise InvalidInputError(f"{where}: missing field {key!r}")
        return None
    if not isinstance(value, kind):
        raise InvalidInputError(f"{where}: field {key!r} must be {kind.__name__}, got {type(value).__name__}")
    return value


def _shape(raw: list[Any], where: str) -> tuple[int, ...]:
    if len(raw) > _MAX_RANK or not all(type(dim) is int and dim >= 0 for dim in raw):
        raise InvalidInputError(
            f"{where}: shape must be a list of at most {_MAX_RANK} non-negative integers, got {raw}"
        )
    return tuple(raw)


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    where = f"input tensor {name!r}"
    if not isinstance(data, list):
        raise InvalidInputError(f"{where}: 'data' must be a list, got {type(data).__name__}")
    dtype = DATATYPE_DTYPES[datatype]
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            if not all(isinstance(item, str) for item in flat):
                raise InvalidInputError(f"{where}: BYTES data must be strings")
            array = np.array(flat, dtype=np.object_)
        elif dtype.kind in "iu":
            array = np.array(data)
            if array.dtype.kind not in "iub":
                raise InvalidInputError(f"{where}: expected integers for {datatype}, got {_describe_kind(array)}")
            if array.size:
                info = np.iinfo(dtype)
                if array.min() < info.min or array.max() > info.max:
                    raise InvalidInputError(f"{where}: values out of range for {datatype} [{info.min}, {info.max}]")
            array = array.astype(dtype, copy=False)
        elif dtype.kind == "b":
            array = np.array(data)
            if array.size and array.dtype.kind != "b":
                raise InvalidInputError(f"{where}: expected true/false for BOOL, got {_describe_kind(array)}")
            array = array.astype(np.bool_, copy=False)
        else:
            array = np.array(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInputError(
            f"{where}: data does not fit datatype {datatype} and shape {list(shape)}: {exc}"
        ) from exc
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInputError(f"{where}: shape {list(shape)} needs {count} values, got {array.size}")
    return array.reshape(shape)


def _describe_kind(array: np.ndarray) -> str:
    return {
        "f": "floating-point numbers",
        "U": "strings",
        "O": "mixed or nested values",
        "b": "booleans",
    }.get(array.dtype.kind, str(array.dtype))


def _binary_tensor(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    where = f"input tensor {name!r}"
    count = math.prod(shape)
    if datatype == "BYTES":
        items: list[str] = []
        offset = 0
        try:
            while offset < len(raw):
                (length,) = _LENGTH.unpack_from(raw, offset)
                offset += 4
                if offset + length > len(raw):
                    raise InvalidInputError(f"{where}: BYTES element runs past binary_data_size")
                items.append(bytes(raw[offset : offset + length]).decode("utf-8"))
                offset += length
        except (struct.error, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{where}: malformed BYTES binary data: {exc}") from exc
        if len(items) != count:
            raise InvalidInputError(f"{where}: shape {list(shape)} needs {count} elements, got {len(items)}")
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype = DATATYPE_DTYPES[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"{where}: binary_data_size is {len(raw)} bytes, but shape {list(shape)} of {datatype} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    if dtype.itemsize > 1 and array.ctypes.data % dtype.itemsize:
        array = array.copy()
    return array.reshape(shape)


def decode_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """Parse an infer request body (JSON, or JSON header + binary tensors)."""
    binary = memoryview(b"")
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise InvalidInputError(
                f"Inference-Header-Content-Length must be an integer, got {header_length!r}"
            ) from None
        if not 0 < split <= len(body):
            raise InvalidInputError(f"Inference-Header-Content-Length {split} does not fit a body of {len(body)} bytes")
        binary = memoryview(body)[split:]
        body = body[:split]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {type(document).__name__}")
    request_id = _field(document, "id", str, "request", required=False)
    parameters = _field(document, "parameters", dict, "request", required=False) or {}
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInputError("request: parameter 'binary_data_output' must be true or false")
    raw_inputs = _field(document, "inputs", list, "request")
    if not raw_inputs:
        raise InvalidInputError("request: 'inputs' must list at least one tensor")
    inputs: list[InputTensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInputError(f"request: inputs[{index}] must be an object")
        name = _field(raw, "name", str, f"inputs[{index}]")
        where = f"input tensor {name!r}"
        datatype = _field(raw, "datatype", str, where)
        if datatype not in DATATYPE_DTYPES:
            raise InvalidInputError(
                f"{where}: unknown datatype {datatype!r}; expected one of {sorted(DATATYPE_DTYPES)}"
            )
        shape = _shape(_field(raw, "shape", list, where), where)
        tensor_parameters = _field(raw, "parameters", dict, where, required=False) or {}
        size = tensor_parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0:
                raise InvalidInputError(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if "data" in raw:
                raise InvalidInputError(f"{where}: give either 'data' or binary_data_size, not both")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"{where}: binary_data_size {size} runs past the {len(binary)} bytes of binary data"
                )
            array = _binary_tensor(name, datatype, shape, binary[offset : offset + size])
            offset += size
        else:
            if "data" not in raw:
                raise InvalidInputError(f"{where}: missing field 'data' (or parameters.binary_data_size)")
            array = _json_tensor(name, datatype, shape, raw["data"])
        inputs.append(InputTensor(name=name, datatype=datatype, shape=shape, data=array))
    if offset != len(binary):
        raise InvalidInputError(f"request: {len(binary) - offset} bytes of binary data belong to no input tensor")
    outputs = None
    raw_outputs = _field(document, "outputs", list, "request", required=False)
    if raw_outputs is not None:
        outputs = []
        for index, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict):
                raise InvalidInputError(f"request: outputs[{index}] must be an object")
            name = _field(raw, "name", str, f"outputs[{index}]")
            output_parameters = _field(raw, "parameters", dict, f"output {name!r}", required=False) or {}
            wants_binary = output_parameters.get("binary_data")
            if wants_binary is not None and not isinstance(wants_binary, bool):
                raise InvalidInputError(f"output {name!r}: parameter 'binary_data' must be true or false")
            outputs.append(RequestedOutput(name=name, binary=wants_binary))
    return InferenceRequest(
        inputs=inputs, id=request_id, outputs=outputs, binary_output=binary_output, parameters=parameters
    )


# --- encoding ----------------------------------------------------------------------------------------


def _bytes_elements(array: np.ndarray) -> list[bytes]:
    return [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.ravel()]


def encode_response(response: InferenceResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs follow the JSON header when asked for)."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if tensor.binary:
            if tensor.datatype == "BYTES":
                raw = b"".join(_LENGTH.pack(len(item)) + item for item in _bytes_elements(tensor.data))
            else:
                raw = np.ascontiguousarray(tensor.data, dtype=tensor.data.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif tensor.datatype == "BYTES":
            entry["data"] = [item.decode("utf-8", "replace") for item in _bytes_elements(tensor.data)]
        else:
            entry["data"] = np.ascontiguousarray(tensor.data).ravel()
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        document["id"] = response.id
    document["outputs"] = outputs
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": JSON_TYPE}
    return b"".join([header, *chunks]), {
        "content-type": BINARY_TYPE,
        "inference-header-content-length": str(len(header)),
    }


# --- schema for the OpenAPI document (not used to parse requests) -----------------------------------


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = Field(default_factory=dict)


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponseModel(BaseModel):
    model_config = {"protected_namespaces": ()}
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class ErrorResponse(BaseModel):
    error: str


def _infer_request_schema() -> dict[str, Any]:
    parameters = {"type": "object", "additionalProperties": True}
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": sorted(DATATYPE_DTYPES)},
            "parameters": parameters,
            "data": {"type": "array", "items": {}},
        },
    }
    output = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "parameters": parameters},
    }
    return {
        "required": True,
        "content": {
            JSON_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": parameters,
                        "inputs": {"type": "array", "items": tensor},
                        "outputs": {"type": "array", "items": output},
                    },
                }
            },
            BINARY_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The request does not fit the model; names the tensor."},
    404: {"model": ErrorResponse, "description": "No such model (or version)."},
    413: {"model": ErrorResponse, "description": "Body larger than MAX_REQUEST_BYTES."},
    503: {
        "model": ErrorResponse,
        "description": "Not ready, shutting down, or queue full (see Retry-After).",
    },
}


# --- routes ------------------------------------------------------------------------------------------


class InferHandler:
    """One inference request from body to response bytes, with its metrics; shared by the FastAPI
    route (documentation, fallback) and the raw ASGI fast path (``InferFastPath``)."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._counters: dict[str, Callable[[], None]] = {}
        self._latency = plane.metrics.latency.labels(plane.name)
        self._in_flight = plane.metrics.in_flight.labels(plane.name)

    def _count(self, outcome: str) -> None:
        increment = self._counters.get(outcome)
        if increment is None:
            increment = self.plane.metrics.requests.labels(self.plane.name, outcome).inc
            self._counters[outcome] = increment
        increment()

    async def respond(
        self,
        model_name: str,
        version: str | None,
        read_body: Callable[[], Awaitable[bytes]],
        header_length: str | None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body; client errors become 4xx/503 here, never exceptions."""
        started = time.perf_counter()
        outcome = "error"
        self._in_flight.inc()
        try:
            self.plane.get_model(model_name, version)  # 404 / 503 before reading the body
            body = await read_body()
            large = len(body) > _OFFLOAD_BYTES
            if large:
                decoded = await asyncio.to_thread(decode_request, body, header_length)
            else:
                decoded = decode_request(body, header_length)
            result = await self.plane.infer(model_name, decoded, version)
            if large:
                content, headers = await asyncio.to_thread(encode_response, result)
            else:
                content, headers = encode_response(result)
            outcome = "ok"
            return 200, headers, content
        except ServerError as exc:
            outcome = exc.outcome
            if exc.status_code >= 500 and exc.status_code != 503:
                log.error("%s", exc.message)
            return exc.status_code, {"content-type": JSON_TYPE, **exc.headers()}, error_body(exc)
        finally:
            self._in_flight.dec()
            self._count(outcome)
            self._latency.observe(time.perf_counter() - started)


def error_body(error: ServerError) -> bytes:
    return orjson.dumps({"error": error.message})


class InferFastPath:
    """Raw ASGI front for ``POST /v2/models/{name}[/versions/{v}]/infer``; everything else goes to the app.

    The hot path skips routing, dependency injection, Request objects and the middleware stack, which
    together cost more than reading, running and answering a small request; the FastAPI route with
    the same behaviour documents it in OpenAPI.
    """

    def __init__(self, app: ASGIApp, handler: InferHandler, max_request_bytes: int) -> None:
        self.app = app
        self.handler = handler
        self.limit = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = _infer_target(scope["path"])
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None) -> None:
        header_length = None
        declared = -1
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = int(value) if value.isdigit() else -1
            elif key == b"inference-header-content-length":
                header_length = value.decode("latin-1")
        limit = self.limit

        async def read_body() -> bytes:
            if declared > limit:
                raise PayloadTooLargeError(too_large_message(declared, limit))
            message = await receive()
            body: bytes = message.get("body", b"")
            if len(body) > limit:  # a chunked body may arrive whole in one message
                raise PayloadTooLargeError(too_large_message(len(body), limit))
            if not message.get("more_body", False):
                return body
            chunks = [body]
            size = len(body)
            while message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(too_large_message(size, limit))
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            status, headers, content = await self.handler.respond(name, version, read_body, header_length)
        except Exception:  # a server bug: answer 500 rather than dropping the connection
            log.exception("inference request failed")
            status, headers = 500, {"content-type": JSON_TYPE}
            content = orjson.dumps({"error": "internal server error"})
        raw_headers = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]
        raw_headers.append((b"content-length", str(len(content)).encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


def too_large_message(size: int, limit: int) -> str:
    return f"request body of {size} bytes exceeds the limit of {limit} bytes (MAX_REQUEST_BYTES)"


def _infer_target(path: str) -> tuple[str, str | None] | None:
    """(model, version) for an infer URL, else None."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


def build_router(plane: DataPlane, handler: InferHandler) -> APIRouter:
    """The /v2 routes; the served model's name appears as the only value of ``model_name``."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    model_name_param = Annotated[str, Path(description="The served model.", json_schema_extra={"enum": [plane.name]})]
    version_param = Annotated[str, Path(description='Model version; this server has "1".')]

    @router.get("", response_model=ServerMetadataResponse, summary="Server metadata")
    async def server_metadata() -> Response:
        return JSONResponse(plane.server_metadata())

    @router.get("/health/live", summary="Server liveness")
    async def server_live() -> Response:
        return JSONResponse({"live": True})

    @router.get("/health/ready", summary="Server readiness", responses={503: _ERRORS[503]})
    async def server_ready() -> Response:
        return JSONResponse({"ready": plane.ready}, status_code=200 if plane.ready else 503)

    @router.get(
        "/models/{model_name}",
        response_model=ModelMetadataResponse,
        summary="Model metadata",
        responses={404: _ERRORS[404], 503: _ERRORS[503]},
    )
    async def model_metadata(model_name: model_name_param) -> Response:
        return JSONResponse(plane.model_metadata(model_name))

    @router.get(
        "/models/{model_name}/versions/{version}",
        response_model=ModelMetadataResponse,
        summary="Model version metadata",
        responses={404: _ERRORS[404], 503: _ERRORS[503]},
    )
    async def model_version_metadata(model_name: model_name_param, version: version_param) -> Response:
        return JSONResponse(plane.model_metadata(model_name, version))

    @router.get(
        "/models/{model_name}/ready",
        summary="Model readiness",
        responses={404: _ERRORS[404], 503: _ERRORS[503]},
    )
    async def model_ready(model_name: model_name_param) -> Response:
        ready = plane.model_ready(model_name)
        return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)

    @router.get(
        "/models/{model_name}/versions/{version}/ready",
        summary="Model version readiness",
        responses={404: _ERRORS[404], 503: _ERRORS[503]},
    )
    async def model_version_ready(model_name: model_name_param, version: version_param) -> Response:
        ready = plane.model_ready(model_name, version)
        return JSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)

    async def run_infer(request: Request, model_name: str, version: str | None) -> Response:
        status, headers, content = await handler.respond(
            model_name, version, request.body, request.headers.get(HEADER_LENGTH)
        )
        return Response(content, status_code=status, headers=headers)

    infer_doc: dict[str, Any] = {
        "openapi_extra": {"requestBody": _infer_request_schema()},
        "response_model": InferenceResponseModel,
        "responses": _ERRORS,
    }

    @router.post("/models/{model_name}/infer", summary="Inference", **infer_doc)
    async def infer(model_name: model_name_param, request: Request) -> Response:
        return await run_infer(request, model_name, None)

    @router.post("/models/{model_name}/versions/{version}/infer", summary="Inference on a version", **infer_doc)
    async def infer_version(model_name: model_name_param, version: version_param, request: Request) -> Response:
        return await run_infer(request, model_name, version)

    return router
