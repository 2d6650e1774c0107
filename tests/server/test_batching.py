"""Dynamic batching over real HTTP: coalesced runs give exactly the unbatched results; bounded queue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families


def infer_body(name: str, array: np.ndarray, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}]
    }


def post_concurrently(url: str, path: str, bodies: Sequence[dict[str, Any]], workers: int) -> list[httpx.Response]:
    """Each worker thread keeps its own connection, like independent clients."""
    clients = [httpx.Client(base_url=url, timeout=60.0) for _ in range(workers)]

    def send(index: int) -> httpx.Response:
        return clients[index % workers].post(path, json=bodies[index])

    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(send, range(len(bodies))))
    finally:
        for client in clients:
            client.close()


def samples(metrics_text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def single(metrics_text: str, name: str, **labels: str) -> float:
    values = samples(metrics_text, name)
    return values[tuple(sorted(labels.items()))]


def output_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.fixture(params=["1", "2"], ids=["one-worker", "two-workers"])
def slow_server(start_server: Callable[..., Any], model_dir: Path, request: pytest.FixtureRequest) -> Any:
    """With two workers an idle one waits up to the batch delay while the other runs."""
    return start_server(
        model_dir / "slow.onnx",
        "--max-batch-size",
        "256",
        "--intra-op-threads",
        "1",
        "--max-batch-delay-ms",
        "2",
        "--inference-workers",
        request.param,
    )


def test_concurrent_results_equal_single_runs(slow_server: Any, model_dir: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((int(rng.integers(1, 9)), 64)).astype(np.float32) for _ in range(64)]
    bodies = [infer_body("input", array) for array in arrays]

    singles = [output_of(slow_server.client.post("/v2/models/slow/infer", json=body)) for body in bodies]
    before = slow_server.client.get("/metrics").text
    concurrent = [output_of(r) for r in post_concurrently(slow_server.url, "/v2/models/slow/infer", bodies, workers=16)]
    after = slow_server.client.get("/metrics").text

    session = ort.InferenceSession(str(model_dir / "slow.onnx"), providers=["CPUExecutionProvider"])
    for array, alone, together in zip(arrays, singles, concurrent, strict=True):
        np.testing.assert_array_equal(together, alone)
        np.testing.assert_array_equal(alone, session.run(["output"], {"input": array})[0])

    runs = single(after, "modeldeploy_batch_size_count", model="slow") - single(
        before, "modeldeploy_batch_size_count", model="slow"
    )
    rows = single(after, "modeldeploy_batch_size_sum", model="slow") - single(
        before, "modeldeploy_batch_size_sum", model="slow"
    )
    assert rows == sum(array.shape[0] for array in arrays)
    assert runs < len(arrays), "concurrent requests should share onnxruntime runs"
    # at least one run carried more rows than the largest single request (8)
    up_to_eight = single(after, "modeldeploy_batch_size_bucket", model="slow", le="8.0")
    assert single(after, "modeldeploy_batch_size_count", model="slow") > up_to_eight


def test_requests_of_different_lengths_are_kept_apart(dynamic_server: Any, model_dir: Path) -> None:
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((int(rng.integers(1, 4)), int(rng.integers(1, 6)))).astype(np.float32) for _ in range(40)]
    bodies = [
        {
            "inputs": [
                {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                {"name": "mask", "shape": list(x.shape), "datatype": "BOOL", "data": (x > 0).ravel().tolist()},
            ]
        }
        for x in xs
    ]
    responses = post_concurrently(dynamic_server.url, "/v2/models/dynamic/infer", bodies, workers=8)
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200, response.text
        outputs = {o["name"]: o for o in response.json()["outputs"]}
        assert outputs["doubled"]["shape"] == list(x.shape)
        np.testing.assert_array_equal(np.asarray(outputs["doubled"]["data"], np.float32), (x * 2).ravel())
        assert outputs["kept"]["data"] == (x > 0).sum(axis=1).tolist()


def test_full_queue_answers_503_with_retry_after(start_server: Callable[..., Any], model_dir: Path) -> None:
    server = start_server(
        model_dir / "slow.onnx", "--max-queue-size", "2", "--max-batch-size", "1024", "--intra-op-threads", "1"
    )
    heavy = np.ones((1024, 64), dtype=np.float32)
    responses = post_concurrently(server.url, "/v2/models/slow/infer", [infer_body("input", heavy)] * 16, workers=16)
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, "16 concurrent requests against a queue of 2 must overflow it"
    assert statuses.count(200) >= 3  # one running plus a full queue
    for response in rejected:
        assert response.headers["retry-after"] == "1"
        assert "queue is full" in response.json()["error"]
    metrics = server.client.get("/metrics").text
    rest = {"model": "slow", "protocol": "rest"}
    assert single(metrics, "modeldeploy_requests_total", outcome="queue_full", **rest) == len(rejected)
    assert output_of(server.client.post("/v2/models/slow/infer", json=infer_body("input", heavy[:2]))).shape == (2, 8)


def test_queue_wait_and_in_flight_are_the_autoscaling_signals(
    start_server: Callable[..., Any], model_dir: Path
) -> None:
    """One row per run and one worker: concurrent requests must wait their turn, and the scrape says so
    (a histogram of each request's wait, the in-flight gauge while they are being served)."""
    server = start_server(
        model_dir / "slow.onnx", "--max-batch-size", "1", "--inference-workers", "1", "--intra-op-threads", "1"
    )
    path = "/v2/models/slow/infer"
    rng = np.random.default_rng(5)
    bodies = [infer_body("input", rng.standard_normal((1, 64)).astype(np.float32)) for _ in range(24)]
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(post_concurrently, server.url, path, bodies, 8)
        in_flight_seen = 0.0
        while not load.done():
            scrape = server.client.get("/metrics").text
            in_flight = single(scrape, "modeldeploy_requests_in_flight", model="slow", protocol="rest")
            in_flight_seen = max(in_flight_seen, in_flight)
        responses = load.result()
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert in_flight_seen >= 2  # eight clients against one worker: several are inside at once

    families = {f.name: f for f in text_string_to_metric_families(server.client.get("/metrics").text)}
    wait = families["modeldeploy_queue_wait_seconds"]
    assert wait.type == "histogram"
    count = single(server.client.get("/metrics").text, "modeldeploy_queue_wait_seconds_count", model="slow")
    assert count == len(bodies)
    buckets = {s.labels["le"]: s.value for s in wait.samples if s.name.endswith("_bucket")}
    assert buckets["+Inf"] == count
    # Serialized runs: most requests waited longer than the smallest bucket (0.5 ms).
    assert buckets["0.0005"] < count / 2
    final = server.client.get("/metrics").text
    assert single(final, "modeldeploy_requests_in_flight", model="slow", protocol="rest") == 0
