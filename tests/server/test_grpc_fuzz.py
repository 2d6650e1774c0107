"""Fuzzing the gRPC front as test_fuzz.py fuzzes REST: whatever bytes arrive on a method's path, every
call ends with a status that is the client's (INVALID_ARGUMENT, NOT_FOUND) or OK - never INTERNAL,
UNKNOWN or a dropped connection - the server's memory stays bounded, and it answers correctly after.

1. raw bytes: random, and valid messages cut, flipped and spliced, straight onto the wire (no client
   serializer), including length prefixes that declare far more bytes than follow;
2. near-miss messages built with Triton's stubs: plausible names and datatypes, typed or raw contents
   whose size disagrees with the shape, contents in the wrong field, raw and typed mixed;
3. huge declared shapes of empty tensors, typed and raw, are INVALID_ARGUMENT naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from testsupport.fuzzing import FUZZ_SETTINGS

CLIENT_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
METHODS = ("ModelInfer", "ModelMetadata", "ModelReady", "ServerMetadata")
ROW = np.linspace(-1, 1, 64, dtype=np.float32)


def good_request() -> Any:
    request = service_pb2.ModelInferRequest(model_name="mlp", id="fuzz")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 64])
    request.raw_input_contents.append(ROW.tobytes())
    return request


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def raw_call(mlp_server: Any) -> Iterator[Any]:
    """Send bytes as they are to /inference.GRPCInferenceService/<method>; the status code and details."""
    channel = grpc.insecure_channel(mlp_server.grpc_target)
    callables: dict[str, Any] = {
        method: channel.unary_unary(f"/inference.GRPCInferenceService/{method}") for method in METHODS
    }

    def call(method: str, payload: bytes) -> tuple[grpc.StatusCode, str]:
        try:
            callables[method](payload, timeout=30)
        except grpc.RpcError as raised:
            error: Any = raised
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""

    yield call
    channel.close()


def assert_still_correct(server: Any, call: Any) -> None:
    code, details = call("ModelInfer", good_request().SerializeToString())
    assert code == grpc.StatusCode.OK, details
    answer = service_pb2.ModelInferResponse()
    with grpc.insecure_channel(server.grpc_target) as channel:
        answer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )(good_request(), timeout=30)
    assert list(answer.outputs[0].shape) == [1, 8] and len(answer.raw_output_contents[0]) == 32
    assert "Traceback" not in server.log()


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid message's bytes cut, with bytes flipped, spliced in or appended."""
    data = bytearray(good_request().SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
        else:
            data += draw(st.binary(min_size=1, max_size=40))
    return bytes(data)


# Length-delimited fields (inputs = 5, raw_input_contents = 7, model_name = 1) whose varint length
# declares up to 2**63 bytes, followed by only a few.
DECLARED = [bytes([tag]) + length + b"abc" for tag in (0x0A, 0x2A, 0x3A) for length in (
    b"\xff\xff\xff\xff\x07", b"\xff\xff\xff\xff\x0f", b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f", b"\x80\x80\x80\x80\x80"
)]


def test_raw_bytes_on_every_method_get_a_client_status(mlp_server: Any, raw_call: Any) -> None:
    before = rss_bytes(mlp_server.process.pid)
    seen: dict[grpc.StatusCode, int] = {}

    @FUZZ_SETTINGS
    @given(method=st.sampled_from(METHODS), payload=st.one_of(st.binary(max_size=400), mangled(),
                                                               st.sampled_from(DECLARED)))
    def call(method: str, payload: bytes) -> None:
        code, details = raw_call(method, payload)
        seen[code] = seen.get(code, 0) + 1
        assert code in CLIENT_CODES, (method, payload[:80], code, details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert details

    call()
    for payload in DECLARED:
        code, details = raw_call("ModelInfer", payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a valid inference.ModelInferRequest" in details
    print("statuses:", seen)
    assert grpc.StatusCode.INVALID_ARGUMENT in seen and grpc.StatusCode.OK in seen, seen
    assert_still_correct(mlp_server, raw_call)
    grown = rss_bytes(mlp_server.process.pid) - before
    assert grown < 64 * 2**20, f"server RSS grew by {grown / 2**20:.1f} MiB"


DATATYPES = ["FP32", "FP32", "FP64", "FP16", "INT64", "INT8", "UINT8", "BOOL", "BYTES", "fp32", "X", ""]
FIELDS = ["fp32_contents", "fp64_contents", "int_contents", "int64_contents", "uint_contents", "bool_contents",
          "bytes_contents"]
ITEMSIZE = {"FP32": 4, "FP64": 8, "FP16": 2, "INT64": 8, "INT8": 1, "UINT8": 1, "BOOL": 1}


def _values(field: str, count: int) -> list[Any]:
    value: Any = {"bool_contents": True, "bytes_contents": b"ab", "fp32_contents": 0.5, "fp64_contents": 0.5}.get(
        field, 1
    )
    return [value] * count


@st.composite
def near_miss(draw: st.DrawFn) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=draw(st.sampled_from(["mlp"] * 6 + ["MLP", ""])))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 2))):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.one_of(st.sampled_from([[1, 64], [2, 64], [0, 64]]),
                               st.lists(st.one_of(st.integers(-2, 70), st.sampled_from([2**31, 2**62])), max_size=4)))
        tensor = request.inputs.add(name=draw(st.sampled_from(["input", "input", "Input", "output", ""])),
                                    datatype=datatype, shape=shape)
        positive = [max(dim, 0) for dim in shape]
        count = math.prod(positive) if positive and math.prod(positive) <= 256 else draw(st.sampled_from([0, 1]))
        count = draw(st.sampled_from([count, count, max(count - 1, 0), count + 1]))
        if raw and draw(st.integers(0, 9)):  # now and then one raw entry too few
            size = count * ITEMSIZE.get(datatype, 4) + draw(st.sampled_from([0, 0, 0, -1, 1]))
            request.raw_input_contents.append(b"\x01" * max(size, 0))
        elif not raw:
            field = draw(st.sampled_from(FIELDS)) if draw(st.integers(0, 3)) == 0 else {
                "FP64": "fp64_contents", "INT64": "int64_contents", "INT8": "int_contents", "UINT8": "uint_contents",
                "BOOL": "bool_contents", "BYTES": "bytes_contents",
            }.get(datatype, "fp32_contents")
            getattr(tensor.contents, field).extend(_values(field, count))
    if draw(st.booleans()):
        request.outputs.add(name=draw(st.sampled_from(["output", "x"])))
    return bytes(request.SerializeToString())


def test_near_miss_messages_get_ok_or_invalid_argument(mlp_server: Any, raw_call: Any) -> None:
    seen: dict[grpc.StatusCode, int] = {}

    @FUZZ_SETTINGS
    @given(payload=near_miss())
    def call(payload: bytes) -> None:
        code, details = raw_call("ModelInfer", payload)
        seen[code] = seen.get(code, 0) + 1
        assert code in CLIENT_CODES, (payload[:200], code, details)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert details

    call()
    print("statuses:", seen)
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0 and seen.get(grpc.StatusCode.OK, 0) > 0, seen
    assert_still_correct(mlp_server, raw_call)


HUGE = [2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1]


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_huge_dimensions_of_an_empty_tensor_are_invalid_argument_naming_the_tensor(
    mlp_server: Any, raw_call: Any, raw: bool
) -> None:
    for datatype in ("FP32", "FP64", "INT8", "BOOL", "BYTES"):
        for shape in ([0, *HUGE[:2]], [HUGE[-1], 0], [0, HUGE[3], 2], [0, HUGE[2], HUGE[2]]):
            request = service_pb2.ModelInferRequest(model_name="mlp")
            request.inputs.add(name="input", datatype=datatype, shape=shape)
            if raw:
                request.raw_input_contents.append(b"")
            code, details = raw_call("ModelInfer", request.SerializeToString())
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (datatype, shape, code, details)
            assert "'input'" in details, (datatype, shape, details)
            if datatype == "FP32":  # the model's own datatype: the shape itself is what is refused
                assert "shape" in details, (shape, details)
    assert_still_correct(mlp_server, raw_call)
