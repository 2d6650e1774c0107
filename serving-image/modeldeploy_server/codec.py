"""The tensor codec: Open Inference Protocol datatypes, shapes and tensor contents <-> numpy arrays.

Pure (numpy only, no web framework), so every front shares it: the REST body format
(``rest_codec``) and any other transport carry tensors either as nested lists (JSON ``data``, gRPC
``contents``) or as raw little-endian row-major bytes (the binary tensor extension, gRPC
``raw_input_contents``; BYTES elements as a 4-byte length followed by the bytes). Every client
mistake becomes an ``InvalidTensorError`` naming the tensor.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from modeldeploy_server.errors import InvalidTensorError

DATATYPE_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
MAX_RANK = 32
_MAX_BYTES = int(np.iinfo(np.intp).max)  # numpy's limit on an array's extent, empty or not
_LENGTH = struct.Struct("<I")


def check_datatype(tensor: str, datatype: str) -> None:
    if datatype not in DATATYPE_DTYPES:
        raise InvalidTensorError(tensor, f"unknown datatype {datatype!r}; expected one of {sorted(DATATYPE_DTYPES)}")


def parse_shape(tensor: str, datatype: str, raw: list[Any]) -> tuple[int, ...]:
    """A shape any tensor of ``datatype`` can have.

    The element count cannot vouch for it: one zero dimension makes the count 0 whatever the others
    say, so the non-zero dimensions are bounded on their own (by what numpy, and so onnxruntime's
    Python binding, can represent).
    """
    if len(raw) > MAX_RANK or not all(type(dim) is int and dim >= 0 for dim in raw):
        raise InvalidTensorError(tensor, f"shape must be a list of at most {MAX_RANK} non-negative integers, got {raw}")
    itemsize = DATATYPE_DTYPES[datatype].itemsize
    if math.prod(dim for dim in raw if dim) > _MAX_BYTES // itemsize:
        raise InvalidTensorError(
            tensor,
            f"shape {raw} is too large for a {datatype} tensor: its non-zero dimensions multiply to more "
            f"than {_MAX_BYTES // itemsize} elements",
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


def _describe_kind(array: np.ndarray) -> str:
    return {
        "f": "floating-point numbers",
        "U": "strings",
        "O": "mixed or nested values",
        "b": "booleans",
    }.get(array.dtype.kind, str(array.dtype))


def tensor_from_list(tensor: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """A tensor from its values as a (possibly nested) list; BYTES values are strings."""
    if not isinstance(data, list):
        raise InvalidTensorError(tensor, f"'data' must be a list, got {type(data).__name__}")
    dtype = DATATYPE_DTYPES[datatype]
    try:
        if datatype == "BYTES":
            flat = _flatten(data)
            if not all(isinstance(item, str) for item in flat):
                raise InvalidTensorError(tensor, "BYTES data must be strings")
            array = np.array(flat, dtype=np.object_)
        elif dtype.kind in "iu":
            array = np.array(data)
            if array.dtype.kind not in "iub":
                raise InvalidTensorError(tensor, f"expected integers for {datatype}, got {_describe_kind(array)}")
            if array.size:
                info = np.iinfo(dtype)
                if array.min() < info.min or array.max() > info.max:
                    raise InvalidTensorError(tensor, f"values out of range for {datatype} [{info.min}, {info.max}]")
            array = array.astype(dtype, copy=False)
        elif dtype.kind == "b":
            array = np.array(data)
            if array.size and array.dtype.kind != "b":
                raise InvalidTensorError(tensor, f"expected true/false for BOOL, got {_describe_kind(array)}")
            array = array.astype(np.bool_, copy=False)
        else:
            # Converting straight to ``dtype`` would parse strings ("0.5") as numbers: look first.
            array = np.array(data)
            if array.dtype.kind in "US" or (
                array.dtype.kind == "O" and any(isinstance(item, str) for item in array.ravel())
            ):
                raise InvalidTensorError(tensor, f"expected numbers for {datatype}, got strings")
            array = array.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidTensorError(
            tensor, f"data does not fit datatype {datatype} and shape {list(shape)}: {exc}"
        ) from exc
    count = math.prod(shape)
    if array.size != count:
        raise InvalidTensorError(tensor, f"shape {list(shape)} needs {count} values, got {array.size}")
    return array.reshape(shape)


def tensor_from_bytes(
    tensor: str, datatype: str, shape: tuple[int, ...], raw: memoryview, source: str = "binary_data_size"
) -> np.ndarray:
    """A tensor from its raw bytes; numeric tensors are zero-copy views of ``raw`` when aligned.
    ``source`` names where the bytes came from in the front's own words, for the error messages."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items: list[str] = []
        offset = 0
        try:
            while offset < len(raw):
                (length,) = _LENGTH.unpack_from(raw, offset)
                offset += 4
                if offset + length > len(raw):
                    raise InvalidTensorError(tensor, f"BYTES element runs past {source}")
                items.append(bytes(raw[offset : offset + length]).decode("utf-8"))
                offset += length
        except (struct.error, UnicodeDecodeError) as exc:
            raise InvalidTensorError(tensor, f"malformed BYTES binary data: {exc}") from exc
        if len(items) != count:
            raise InvalidTensorError(tensor, f"shape {list(shape)} needs {count} elements, got {len(items)}")
        return np.array(items, dtype=np.object_).reshape(shape)
    dtype = DATATYPE_DTYPES[datatype].newbyteorder("<")
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidTensorError(
            tensor, f"{source} is {len(raw)} bytes, but shape {list(shape)} of {datatype} needs {expected}"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count)
    if dtype.itemsize > 1 and array.ctypes.data % dtype.itemsize:
        array = array.copy()
    return array.reshape(shape)


def bytes_elements(array: np.ndarray) -> list[bytes]:
    """A BYTES tensor's elements as bytes (strings encoded as UTF-8)."""
    return [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in array.ravel()]


def tensor_to_bytes(datatype: str, array: np.ndarray) -> bytes:
    """Raw little-endian row-major bytes (BYTES: 4-byte length + bytes per element)."""
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in bytes_elements(array))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def tensor_to_list(datatype: str, array: np.ndarray) -> list[str] | np.ndarray:
    """Flat values ready for a JSON serializer (numeric tensors stay numpy for orjson)."""
    if datatype == "BYTES":
        return [item.decode("utf-8", "replace") for item in bytes_elements(array)]
    return np.ascontiguousarray(array).ravel()
