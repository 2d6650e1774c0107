"""The gRPC front against real clients: Triton's ``tritonclient.grpc`` (and its stubs for typed contents),
grpcio's own health and reflection clients; the same numbers as in-process onnxruntime and the REST
front; each bad input's status and message; deadlines and cancellation; SIGTERM under gRPC load."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

SERVICE = "inference.GRPCInferenceService"


def metric(server: Any, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent), parsed by prometheus_client's own parser."""
    for family in text_string_to_metric_families(server.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.fixture
def triton() -> Iterator[Callable[[Any], triton_grpc.InferenceServerClient]]:
    clients: list[triton_grpc.InferenceServerClient] = []

    def connect(server: Any) -> triton_grpc.InferenceServerClient:
        client = triton_grpc.InferenceServerClient(server.grpc_target)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


@pytest.fixture
def stub() -> Iterator[Callable[[Any], service_pb2_grpc.GRPCInferenceServiceStub]]:
    """Triton's own generated stubs (its superset proto): for what tritonclient's helpers never send."""
    channels: list[grpc.Channel] = []

    def connect(server: Any) -> service_pb2_grpc.GRPCInferenceServiceStub:
        channel = grpc.insecure_channel(server.grpc_target)
        channels.append(channel)
        return service_pb2_grpc.GRPCInferenceServiceStub(channel)

    yield connect
    for channel in channels:
        channel.close()


def triton_input(name: str, array: np.ndarray, datatype: str) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


# The typed model's inputs: (datatype, a value, the output it feeds).
TYPED: dict[str, tuple[str, np.ndarray, str]] = {
    "f": ("FP32", np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -7.5]], dtype=np.float32), "f2"),
    "i": ("INT64", np.array([[1, -2, 2**40], [0, 7, -(2**40)]], dtype=np.int64), "i1"),
    "b": ("BOOL", np.array([[True, False, True], [False, False, True]]), "nb"),
    "s": ("BYTES", np.array([["grüße", ""], ["a", "zz"]], dtype=np.object_), "se"),
}


def in_process(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def test_metadata_and_readiness_match_the_rest_front(mlp_server: Any, triton: Any) -> None:
    client = triton(mlp_server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    server = client.get_server_metadata()
    assert (server.name, server.version) == ("modeldeploy", mlp_server.client.get("/v2").json()["version"])
    metadata = client.get_model_metadata("mlp", as_json=True)
    rest = mlp_server.client.get("/v2/models/mlp").json()
    assert metadata["name"] == "mlp" and metadata["versions"] == rest["versions"] == ["1"]
    assert metadata["platform"] == rest["platform"] == "onnxruntime_onnx"
    for side in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[side]] == [
            (t["name"], t["datatype"], t["shape"]) for t in rest[side]
        ]
    calls: list[Callable[[], Any]] = [
        lambda: client.get_model_metadata("nope"),
        lambda: client.is_model_ready("mlp", "2"),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == "StatusCode.NOT_FOUND" and "'mlp'" in caught.value.message()


def test_raw_and_typed_contents_give_the_numbers_of_onnxruntime_and_of_rest(
    typed_server: Any, model_dir: Path, triton: Any, stub: Any
) -> None:
    """FP32, INT64, BOOL and BYTES, both ways: tritonclient sends raw contents (and reads raw ones back);
    Triton's stubs send typed contents, which come back typed."""
    feeds = {name: value for name, (_, value, _) in TYPED.items()}
    expected = in_process(model_dir / "typed.onnx", feeds)

    raw = triton(typed_server).infer("typed", [triton_input(n, v, d) for n, (d, v, _) in TYPED.items()])
    assert len(raw.get_response().raw_output_contents) == 4

    rest_client = triton_http.InferenceServerClient(f"127.0.0.1:{typed_server.port}")
    rest_inputs = []
    for name, (datatype, value, _) in TYPED.items():
        tensor = triton_http.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        rest_inputs.append(tensor)
    rest = rest_client.infer("typed", rest_inputs)
    rest_client.close()

    request = service_pb2.ModelInferRequest(model_name="typed", id="typed-1")
    fields = {"FP32": "fp32_contents", "INT64": "int64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents"}
    for name, (datatype, value, _) in TYPED.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=value.shape)
        flat = [item.encode() for item in value.ravel()] if datatype == "BYTES" else value.ravel().tolist()
        getattr(tensor.contents, fields[datatype]).extend(flat)
    typed = stub(typed_server).ModelInfer(request, timeout=30)
    assert typed.id == "typed-1" and not typed.raw_output_contents
    typed_outputs = {output.name: output for output in typed.outputs}

    for name, (datatype, _, output) in TYPED.items():
        want = expected[output]
        got_typed = list(getattr(typed_outputs[output].contents, fields[datatype]))
        assert list(typed_outputs[output].shape) == list(want.shape)
        if datatype == "BYTES":
            want_bytes = [item.encode() for item in want.ravel()]
            assert list(raw.as_numpy(output).ravel()) == want_bytes, name
            assert list(rest.as_numpy(output).ravel()) == want_bytes, name
            assert got_typed == want_bytes, name
        else:
            np.testing.assert_array_equal(raw.as_numpy(output), want, err_msg=name)
            np.testing.assert_array_equal(rest.as_numpy(output), want, err_msg=name)
            np.testing.assert_array_equal(np.array(got_typed).reshape(want.shape), want, err_msg=name)
    assert metric(typed_server, "modeldeploy_requests_total", outcome="ok", protocol="grpc") >= 2
    assert metric(typed_server, "modeldeploy_requests_total", outcome="ok", protocol="rest") >= 1


def test_the_mlp_answers_over_grpc_as_in_process_and_over_rest(mlp_server: Any, model_dir: Path, triton: Any) -> None:
    batch = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    expected = in_process(model_dir / "mlp.onnx", {"input": batch})["output"]
    answer = triton(mlp_server).infer("mlp", [triton_input("input", batch, "FP32")], request_id="r-7")
    assert answer.get_response().id == "r-7" and answer.get_response().model_version == "1"
    np.testing.assert_allclose(answer.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    body = {"inputs": [{"name": "input", "shape": [5, 64], "datatype": "FP32", "data": batch.ravel().tolist()}]}
    rest = mlp_server.client.post("/v2/models/mlp/infer", json=body).json()["outputs"][0]
    np.testing.assert_allclose(np.array(rest["data"], dtype=np.float32).reshape(5, 8), expected, rtol=1e-5, atol=1e-6)


def typed_request(model: str, tensors: list[tuple[str, str, list[int], str, list[Any]]]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, field, values in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if field:
            getattr(tensor.contents, field).extend(values)
    return request


def raw_request(model: str, tensors: list[tuple[str, str, list[int], bytes]]) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, raw in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    return request


ROW = [0.5] * 64
BAD_MLP: dict[str, tuple[Any, grpc.StatusCode, tuple[str, ...]]] = {
    "shape": (typed_request("mlp", [("input", "FP32", [1, 63], "fp32_contents", ROW[:63])]),
              grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "expected shape [-1, 64], got [1, 63]")),
    "datatype": (typed_request("mlp", [("input", "FP64", [1, 64], "fp64_contents", ROW)]),
                 grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "expected datatype FP32, got FP64")),
    "unknown datatype": (typed_request("mlp", [("input", "FLOAT", [1, 64], "fp32_contents", ROW)]),
                         grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "unknown datatype 'FLOAT'")),
    "wrong contents field": (typed_request("mlp", [("input", "FP32", [1, 64], "int_contents", [1] * 64)]),
                             grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "fp32_contents", "int_contents")),
    "too few values": (typed_request("mlp", [("input", "FP32", [2, 64], "fp32_contents", ROW)]),
                       grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "needs 128 values, got 64")),
    "no values": (typed_request("mlp", [("input", "FP32", [1, 64], "", [])]),
                  grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "needs 64 values, got 0")),
    "not finite": (typed_request("mlp", [("input", "FP32", [1, 64], "fp32_contents", [float("nan")] * 64)]),
                   grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "finite")),
    "negative dimension": (typed_request("mlp", [("input", "FP32", [-1, 64], "fp32_contents", ROW)]),
                           grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "non-negative")),
    "huge empty shape": (typed_request("mlp", [("input", "FP32", [0, 2**62], "", [])]),
                         grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "too large")),
    "raw size": (raw_request("mlp", [("input", "FP32", [1, 64], b"\0" * 255)]),
                 grpc.StatusCode.INVALID_ARGUMENT, ("'input'", "raw_input_contents", "255 bytes", "needs 256")),
    "unknown input": (typed_request("mlp", [("inputs", "FP32", [1, 64], "fp32_contents", ROW)]),
                      grpc.StatusCode.INVALID_ARGUMENT, ("'inputs'", "the model's inputs are: input")),
    "no inputs": (service_pb2.ModelInferRequest(model_name="mlp"),
                  grpc.StatusCode.INVALID_ARGUMENT, ("at least one tensor",)),
    "unknown output": (
        service_pb2.ModelInferRequest(
            model_name="mlp",
            inputs=[service_pb2.ModelInferRequest.InferInputTensor(
                name="input", datatype="FP32", shape=[1, 64],
                contents=service_pb2.InferTensorContents(fp32_contents=ROW))],
            outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="logits")],
        ),
        grpc.StatusCode.INVALID_ARGUMENT, ("'logits'", "the model's outputs are: output"),
    ),
    "unknown model": (typed_request("nope", [("input", "FP32", [1, 64], "fp32_contents", ROW)]),
                      grpc.StatusCode.NOT_FOUND, ("'nope'", "serves 'mlp'")),
    "unknown version": (
        service_pb2.ModelInferRequest(model_name="mlp", model_version="9"),
        grpc.StatusCode.NOT_FOUND, ("'mlp'", "version '9'"),
    ),
}


def test_each_bad_input_gets_its_status_and_a_message_naming_the_tensor(mlp_server: Any, stub: Any) -> None:
    client = stub(mlp_server)
    for case, (request, code, fragments) in BAD_MLP.items():
        with pytest.raises(grpc.RpcError) as caught:
            client.ModelInfer(request, timeout=30)
        error: Any = caught.value
        assert error.code() == code, (case, error.code(), error.details())
        for fragment in fragments:
            assert fragment in error.details(), (case, fragment, error.details())
    assert metric(mlp_server, "modeldeploy_requests_total", outcome="invalid_input", protocol="grpc") >= 13
    assert metric(mlp_server, "modeldeploy_requests_total", outcome="not_found", protocol="grpc") >= 2
    assert "Traceback" not in mlp_server.log()


def test_raw_and_typed_contents_do_not_mix_and_raw_entries_match_the_inputs(two_io_server: Any, stub: Any) -> None:
    client = stub(two_io_server)
    mixed = raw_request("two_io", [("a", "FP32", [2, 3], np.ones(6, np.float32).tobytes())])
    mixed.inputs.add(name="b", datatype="INT64", shape=[2, 3]).contents.int64_contents.extend([1] * 6)
    mixed.raw_input_contents.append(np.ones(6, np.int64).tobytes())
    short = raw_request("two_io", [("a", "FP32", [2, 3], np.ones(6, np.float32).tobytes())])
    short.inputs.add(name="b", datatype="INT64", shape=[2, 3])
    out_of_range = typed_request("two_io", [("a", "FP32", [2, 3], "fp32_contents", [1.0] * 6),
                                            ("b", "INT64", [2, 3], "int64_contents", [1] * 6)])
    out_of_range.inputs[0].datatype = "INT8"
    out_of_range.inputs[0].contents.Clear()
    out_of_range.inputs[0].contents.int_contents.extend([300] * 6)
    for request, fragments in (
        (mixed, ("'b'", "raw_input_contents")),
        (short, ("raw_input_contents has 1 entries for 2 input tensors",)),
        (out_of_range, ("'a'", "out of range for INT8")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            client.ModelInfer(request, timeout=30)
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert all(fragment in error.details() for fragment in fragments), (fragments, error.details())


def test_a_message_over_the_size_limit_is_resource_exhausted(
    start_server: Callable[..., Any], model_dir: Path, triton: Any
) -> None:
    """MAX_REQUEST_BYTES bounds gRPC messages as it bounds REST bodies (413 there)."""
    server = start_server(model_dir / "mlp.onnx", "--max-request-bytes", "4096")
    client = triton(server)
    small = np.zeros((8, 64), np.float32)  # 2 KiB of raw contents
    assert client.infer("mlp", [triton_input("input", small, "FP32")]).as_numpy("output").shape == (8, 8)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("mlp", [triton_input("input", np.zeros((32, 64), np.float32), "FP32")])
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED", caught.value.message()
    assert "4096" in caught.value.message()
    rest = server.client.post("/v2/models/mlp/infer", content=b"x" * 5000)
    assert rest.status_code == 413


def test_a_full_queue_is_resource_exhausted(start_server: Callable[..., Any], model_dir: Path, stub: Any) -> None:
    server = start_server(
        model_dir / "slow.onnx", "--max-queue-size", "1", "--max-batch-size", "1", "--intra-op-threads", "1"
    )
    rows = np.ones((256, 64), np.float32).tobytes()
    channel = grpc.insecure_channel(server.grpc_target)
    client = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    calls = [client.ModelInfer.future(raw_request("slow", [("input", "FP32", [256, 64], rows)]), timeout=120)
             for _ in range(12)]
    codes = []
    for call in calls:
        try:
            call.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as raised:
            error: Any = raised
            codes.append(error.code())
            assert "queue is full" in error.details(), error.details()
            assert ("retry-after", "1") in tuple(error.trailing_metadata())
    channel.close()
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    rejected = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert metric(server, "modeldeploy_requests_total", outcome="queue_full", protocol="grpc") == rejected


def test_an_expired_or_cancelled_call_leaves_the_queue_and_never_runs(
    start_server: Callable[..., Any], model_dir: Path
) -> None:
    """One long run holds the only worker; a call behind it with a short deadline gets DEADLINE_EXCEEDED,
    another is cancelled by its client. The batch metrics prove neither ran, then or later: one run of
    exactly the long call's rows, and nothing more once the worker is free again."""
    server = start_server(model_dir / "slow.onnx", "--intra-op-threads", "1", "--max-batch-size", "8192")
    channel = grpc.insecure_channel(server.grpc_target)
    client = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    long_rows = 2048
    long_call = client.ModelInfer.future(
        raw_request("slow", [("input", "FP32", [long_rows, 64], np.ones((long_rows, 64), np.float32).tobytes())]),
        timeout=300,
    )
    deadline = time.monotonic() + 60
    while metric(server, "modeldeploy_queue_wait_seconds_count") < 1:  # taken by the worker: running
        assert time.monotonic() < deadline, "the long call never started"
        time.sleep(0.01)
    short = raw_request("slow", [("input", "FP32", [3, 64], np.ones((3, 64), np.float32).tobytes())])
    cancelled = client.ModelInfer.future(short, timeout=300)
    while metric(server, "modeldeploy_queue_depth") < 1:
        assert time.monotonic() < deadline, "the call to cancel never queued"
        time.sleep(0.005)
    with pytest.raises(grpc.RpcError) as caught:
        client.ModelInfer(short, timeout=0.05)
    expired: Any = caught.value
    assert expired.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert cancelled.cancel()
    while metric(server, "modeldeploy_requests_total", outcome="cancelled", protocol="grpc") < 2:
        assert time.monotonic() < deadline, "the server never noticed the expired and the cancelled call"
        time.sleep(0.01)
    assert metric(server, "modeldeploy_queue_depth") == 0  # both left the queue while the long run went on
    assert not long_call.done(), "the long run ended before the calls behind it gave up: make it longer"
    assert list(long_call.result().outputs[0].shape) == [long_rows, 8]
    ok = raw_request("slow", [("input", "FP32", [5, 64], np.ones((5, 64), np.float32).tobytes())])
    assert list(client.ModelInfer(ok, timeout=60).outputs[0].shape) == [5, 8]  # the worker is free again
    channel.close()
    while metric(server, "modeldeploy_batch_size_count") < 2:  # noted just after the answer is sent
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # One worker notes runs in queue order, and the two calls queued ahead of the last one: any run of
    # theirs would be noted before its, or share its batch (rows 3 + 5).
    assert metric(server, "modeldeploy_batch_size_count") == 2  # the long run and the last call, nothing else
    assert metric(server, "modeldeploy_batch_size_sum") == long_rows + 5
    assert metric(server, "modeldeploy_requests_total", outcome="ok", protocol="grpc") == 2


def test_health_checking_follows_readiness_and_reflection_lists_the_services(mlp_server: Any) -> None:
    with grpc.insecure_channel(mlp_server.grpc_target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="inference.Other"), timeout=10)
        unknown: Any = caught.value
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()

        database = ProtoReflectionDescriptorDatabase(channel)
        assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
            database.get_services()
        )
        described = DescriptorPool(database).FindServiceByName(SERVICE)
        assert [method.name for method in described.methods] == [
            "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        ]
        assert described.FindMethodByName("ModelInfer").input_type.full_name == "inference.ModelInferRequest"


MLP_RAW = np.full((1, 64), 0.25, np.float32)


def grpc_load(server: Any, stop: threading.Event, results: list[str], lock: threading.Lock) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        while not stop.is_set():
            try:
                answer = client.infer("mlp", [triton_input("input", MLP_RAW, "FP32")], client_timeout=30)
                outcome = "ok" if answer.as_numpy("output").shape == (1, 8) else "wrong shape"
            except InferenceServerException as exc:
                outcome = f"{exc.status()}: {exc.message()}"
            with lock:
                results.append(outcome)
    finally:
        client.close()


def test_sigterm_under_grpc_load_fails_no_call(start_server: Callable[..., Any], model_dir: Path) -> None:
    """As over HTTP: health and readiness turn false at once, calls keep being answered while endpoints
    catch up, then the process exits 0 with every call answered."""
    server = start_server(model_dir / "mlp.onnx", env={"SHUTDOWN_DRAIN_SECONDS": "1.5"})
    stop, lock = threading.Event(), threading.Lock()
    results: list[str] = []
    threads = [threading.Thread(target=grpc_load, args=(server, stop, results, lock)) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    with grpc.insecure_channel(server.grpc_target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 5
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "gRPC health still SERVING after SIGTERM"
            time.sleep(0.01)
        probe = triton_grpc.InferenceServerClient(server.grpc_target)
        assert probe.is_server_live() and not probe.is_server_ready()
        probe.close()
    assert server.client.get("/health/ready").status_code == 503
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert server.wait_exit(timeout=30) == 0, server.log()
    failures = [r for r in results if r != "ok"]
    assert results and not failures, failures[:5]


def test_sigterm_lets_an_in_flight_grpc_call_finish(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(
        model_dir / "slow.onnx", "--intra-op-threads", "1", "--max-batch-size", "2048",
        env={"SHUTDOWN_DRAIN_SECONDS": "0"},
    )
    rows = 1024
    outcome: dict[str, Any] = {}

    def long_call() -> None:
        client = triton_grpc.InferenceServerClient(server.grpc_target)
        batch = np.full((rows, 64), 0.5, np.float32)
        outcome["answer"] = client.infer("slow", [triton_input("input", batch, "FP32")], client_timeout=120)
        client.close()

    thread = threading.Thread(target=long_call)
    thread.start()
    deadline = time.monotonic() + 30
    while metric(server, "modeldeploy_requests_in_flight", protocol="grpc") < 1:
        assert time.monotonic() < deadline and thread.is_alive(), "the call never arrived"
        time.sleep(0.002)
    server.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert outcome["answer"].as_numpy("output").shape == (rows, 8)
    assert server.wait_exit(timeout=30) == 0, server.log()


def test_grpc_port_zero_turns_it_off_and_a_taken_port_is_a_termination_message(
    start_server: Callable[..., Any], model_dir: Path, mlp_server: Any
) -> None:
    off = start_server(model_dir / "mlp.onnx", "--grpc-port", "0")
    assert off.client.get("/health/ready").status_code == 200
    with grpc.insecure_channel(off.grpc_target) as channel, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=1)
    taken = start_server(model_dir / "mlp.onnx", "--grpc-port", str(mlp_server.grpc_port), wait=False)
    assert taken.wait_exit(timeout=60) == 1, taken.log()
    message = taken.termination_path.read_text()
    assert f"cannot serve gRPC on 127.0.0.1:{mlp_server.grpc_port}" in message and "GRPC_PORT" in message
