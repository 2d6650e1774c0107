"""Is this file an ONNX model? A structural check of its protobuf, without the `onnx` package.

An ONNX file is one serialized `onnx.ModelProto` (onnx/onnx.proto, field numbers below). The check walks
the protobuf's wire format through a memory map, so a model of gigabytes is never read into memory: only
the field headers are touched, and every length-delimited payload it does not need is skipped. It holds:

- the whole file is a well-formed sequence of protobuf fields ending exactly at its last byte, each field
  with a wire type protobuf defines (varint, 64-bit, length-delimited, 32-bit) and within the file;
- the fields ModelProto defines carry their declared wire type (unknown numbers are allowed, as protobuf
  allows them for newer versions);
- `ir_version` (1) is present and plausible (1 to 100);
- at least one `opset_import` (8), each a well-formed OperatorSetIdProto with a `version`;
- a `graph` (7), whose own fields are well-formed and of their declared wire types, with at least one
  `output` (12).

It does not check the graph's semantics (that operators exist, that shapes agree): onnxruntime does
that when the server loads the model, and reports it in the ModelDeployment's conditions.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
WIRE_SIZES = {FIXED64: 8, FIXED32: 4}
MAX_IR_VERSION = 100

# ModelProto: ir_version, producer_name, producer_version, domain, model_version, doc_string, graph,
# opset_import, metadata_props, training_info, functions, configuration.
MODEL_FIELDS = {1: VARINT, 2: LEN, 3: LEN, 4: LEN, 5: VARINT, 6: LEN, 7: LEN, 8: LEN, 14: LEN, 20: LEN,
                25: LEN, 26: LEN}
# GraphProto: node, name, initializer, doc_string, input, output, value_info, quantization_annotation,
# sparse_initializer, metadata_props.
GRAPH_FIELDS = {1: LEN, 2: LEN, 5: LEN, 10: LEN, 11: LEN, 12: LEN, 13: LEN, 14: LEN, 15: LEN, 16: LEN}
# OperatorSetIdProto: domain, version.
OPSET_FIELDS = {1: LEN, 2: VARINT}
IR_VERSION, GRAPH, OPSET_IMPORT, GRAPH_OUTPUT, OPSET_VERSION = 1, 7, 8, 12, 2


class NotOnnxError(ValueError):
    """The file is not an ONNX model; the message says what was found instead."""


@dataclass(frozen=True)
class Field:
    number: int
    wire_type: int
    start: int  # of the payload (a varint's first byte, or the bytes a length prefix announces)
    end: int
    value: int | None = None  # a varint's value


def read_varint(data: mmap.mmap | bytes, at: int, end: int) -> tuple[int, int]:
    """The varint at `at` and the offset after it."""
    value, shift = 0, 0
    while True:
        if at >= end or shift > 63:
            raise NotOnnxError(f"a truncated or overlong varint at byte {at}")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7


def fields(data: mmap.mmap | bytes, start: int, end: int, what: str) -> Iterator[Field]:
    """The fields of one message occupying data[start:end]."""
    at = start
    while at < end:
        key, after_key = read_varint(data, at, end)
        number, wire_type = key >> 3, key & 7
        if number == 0 or wire_type not in (VARINT, FIXED64, LEN, FIXED32):
            raise NotOnnxError(f"{what}: byte {at} starts no protobuf field (field {number}, wire type {wire_type})")
        at = after_key
        if wire_type == VARINT:
            value, after = read_varint(data, at, end)
            yield Field(number, wire_type, at, after, value)
            at = after
            continue
        if wire_type == LEN:
            size, at = read_varint(data, at, end)
        else:
            size = WIRE_SIZES[wire_type]
        if at + size > end:
            raise NotOnnxError(f"{what}: field {number} runs past the end ({at + size} > {end} bytes)")
        yield Field(number, wire_type, at, at + size)
        at += size


def checked(data: mmap.mmap | bytes, start: int, end: int, what: str, declared: Mapping[int, int]) -> list[Field]:
    found = list(fields(data, start, end, what))
    for field in found:
        wanted = declared.get(field.number)
        if wanted is not None and field.wire_type != wanted:
            raise NotOnnxError(f"{what}: field {field.number} has wire type {field.wire_type}, not {wanted}")
    return found


def check_model(data: mmap.mmap | bytes) -> int:
    """Raise NotOnnxError unless `data` has the structure above; returns the IR version."""
    top = checked(data, 0, len(data), "ModelProto", MODEL_FIELDS)
    ir = [f.value for f in top if f.number == IR_VERSION]
    if not ir or ir[-1] is None:
        raise NotOnnxError("no ir_version (field 1 of ModelProto)")
    if not 1 <= ir[-1] <= MAX_IR_VERSION:
        raise NotOnnxError(f"ir_version {ir[-1]} is not a plausible ONNX IR version")
    opsets = [f for f in top if f.number == OPSET_IMPORT]
    if not opsets:
        raise NotOnnxError("no opset_import (field 8 of ModelProto)")
    for opset in opsets:
        inner = checked(data, opset.start, opset.end, "OperatorSetIdProto", OPSET_FIELDS)
        if not any(f.number == OPSET_VERSION for f in inner):
            raise NotOnnxError("an opset_import without a version")
    graphs = [f for f in top if f.number == GRAPH]
    if not graphs:
        raise NotOnnxError("no graph (field 7 of ModelProto)")
    graph = checked(data, graphs[-1].start, graphs[-1].end, "GraphProto", GRAPH_FIELDS)
    if not any(f.number == GRAPH_OUTPUT for f in graph):
        raise NotOnnxError("its graph has no output")
    return ir[-1]


def looks_like(head: bytes) -> str | None:
    """A well-known format the first bytes give away, to say what the file is instead."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (a PyTorch checkpoint, a Keras file?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    if head[4:8] == b"ORTM":
        return "an ONNX Runtime ORT-format model (serve the .onnx it was converted from)"
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (a Keras model?)"
    return None


def check_file(path: Path) -> int:
    """Raise NotOnnxError (naming the file and the reason) unless PATH is an ONNX model; its IR version."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise NotOnnxError(f"{path} is not a regular file")
        if size == 0:
            raise NotOnnxError(f"{path} is not an ONNX model: it is empty")
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            kind = looks_like(bytes(data[:16]))
            try:
                return check_model(data)
            except NotOnnxError as error:
                reason = f"it looks like {kind}" if kind else str(error)
                raise NotOnnxError(f"{path} is not an ONNX model (an onnx.ModelProto): {reason}") from None
    except OSError as error:
        raise NotOnnxError(f"cannot read {path}: {error.strerror or error}") from error
