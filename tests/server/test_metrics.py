"""/metrics in the Prometheus text format, parsed by prometheus_client's own parser; input drift."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_server.drift import profile_from_samples


def parse(text: str) -> dict[str, Any]:
    """Family name -> family, after a strict parse of the whole exposition."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict[str, Any], family: str, sample: str, *, default: float | None = None, **labels: str) -> float:
    for item in families[family].samples:
        if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
            return float(item.value)
    if default is not None:
        return default
    raise KeyError((family, sample, labels))


def body(array: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}]
    }


def test_exposition_covers_requests_latency_batches_queue_load_and_info(mlp_server: Any) -> None:
    client = mlp_server.client
    before = parse(client.get("/metrics").text)
    ok_before = value(
        before, "modeldeploy_requests", "modeldeploy_requests_total", default=0.0, model="mlp", outcome="ok"
    )
    for _ in range(3):
        assert client.post("/v2/models/mlp/infer", json=body(np.zeros((2, 64), np.float32))).status_code == 200
    for _ in range(2):
        assert client.post("/v2/models/mlp/infer", json={"inputs": []}).status_code == 400
    assert client.post("/v2/models/nope/infer", json={}).status_code == 404

    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = parse(response.text)
    assert families["modeldeploy_requests"].type == "counter"
    count = value(families, "modeldeploy_requests", "modeldeploy_requests_total", model="mlp", outcome="ok")
    assert count == ok_before + 3
    assert (
        value(families, "modeldeploy_requests", "modeldeploy_requests_total", model="mlp", outcome="invalid_input") >= 2
    )
    assert value(families, "modeldeploy_requests", "modeldeploy_requests_total", model="mlp", outcome="not_found") >= 1

    assert families["modeldeploy_request_duration_seconds"].type == "histogram"
    latency_count = value(
        families, "modeldeploy_request_duration_seconds", "modeldeploy_request_duration_seconds_count", model="mlp"
    )
    assert latency_count >= 6
    assert (
        value(
            families,
            "modeldeploy_request_duration_seconds",
            "modeldeploy_request_duration_seconds_bucket",
            model="mlp",
            le="+Inf",
        )
        == latency_count
    )

    assert families["modeldeploy_batch_size"].type == "histogram"
    assert value(families, "modeldeploy_batch_size", "modeldeploy_batch_size_sum", model="mlp") >= 6
    assert families["modeldeploy_inference_duration_seconds"].type == "histogram"
    assert value(families, "modeldeploy_queue_depth", "modeldeploy_queue_depth", model="mlp") == 0
    assert value(families, "modeldeploy_requests_in_flight", "modeldeploy_requests_in_flight", model="mlp") == 0
    assert value(families, "modeldeploy_model_load_seconds", "modeldeploy_model_load_seconds", model="mlp") > 0
    assert value(families, "modeldeploy_ready", "modeldeploy_ready") == 1

    [info] = families["modeldeploy_model_info"].samples
    assert info.name == "modeldeploy_model_info"
    assert info.labels["name"] == "mlp"
    assert info.labels["execution_provider"] == "CPUExecutionProvider"
    assert info.labels["dynamic_batching"] == "true"
    assert len(info.labels["sha256"]) == 64


def test_input_statistics_and_drift_score(start_server: Callable[..., Any], model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(model_dir / "mlp.onnx", folder / "mlp.onnx")
    rng = np.random.default_rng(11)
    reference = rng.standard_normal((4000, 64))
    (folder / "mlp.profile.json").write_text(json.dumps(profile_from_samples({"input": reference}, bins=10)))
    server = start_server(folder / "mlp.onnx", env={"DRIFT_WINDOW": "5120"})
    assert "drift reference profile" in server.log()

    sent: list[np.ndarray] = []

    def send(batch: np.ndarray) -> dict[str, Any]:
        sent.append(batch)
        assert server.client.post("/v2/models/mlp/infer", json=body(batch)).status_code == 200
        # The worker notes a batch's inputs just after it answers, so the scrape may briefly lag the response.
        expected = sum(b.size for b in sent)
        deadline = time.monotonic() + 10
        while True:
            families = parse(server.client.get("/metrics").text)
            seen = value(families, "modeldeploy_input_values", "modeldeploy_input_values", model="mlp", input="input")
            if seen == expected or time.monotonic() > deadline:
                return families
            time.sleep(0.01)

    for _ in range(12):
        families = send(rng.standard_normal((8, 64)).astype(np.float32))
    stable = value(families, "modeldeploy_input_drift_psi", "modeldeploy_input_drift_psi", model="mlp", input="input")
    assert 0 <= stable < 0.1

    for _ in range(12):
        families = send((rng.standard_normal((8, 64)) + 2.0).astype(np.float32))
    shifted = value(families, "modeldeploy_input_drift_psi", "modeldeploy_input_drift_psi", model="mlp", input="input")
    assert shifted > 1.0

    everything = np.concatenate(sent).astype(np.float64)
    assert (
        value(families, "modeldeploy_input_values", "modeldeploy_input_values", model="mlp", input="input")
        == everything.size
    )
    np.testing.assert_allclose(
        value(families, "modeldeploy_input_mean", "modeldeploy_input_mean", model="mlp", input="input"),
        everything.mean(),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        value(families, "modeldeploy_input_std", "modeldeploy_input_std", model="mlp", input="input"),
        everything.std(),
        rtol=1e-6,
    )
    assert (
        value(families, "modeldeploy_input_min", "modeldeploy_input_min", model="mlp", input="input")
        == everything.min()
    )
    assert (
        value(families, "modeldeploy_input_max", "modeldeploy_input_max", model="mlp", input="input")
        == everything.max()
    )


def test_no_profile_means_statistics_without_a_drift_score(mlp_server: Any) -> None:
    families = parse(mlp_server.client.get("/metrics").text)
    assert not families["modeldeploy_input_drift_psi"].samples
    assert value(families, "modeldeploy_input_values", "modeldeploy_input_values", model="mlp", input="input") >= 0


def test_a_broken_profile_is_reported_and_serving_goes_on(
    start_server: Callable[..., Any], model_dir: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "broken.json"
    profile.write_text(
        json.dumps(
            {"format": "modeldeploy.profile/v1", "inputs": {"input": {"bin_edges": [0, 1], "fractions": [0.5, 0.5]}}}
        )
    )
    server = start_server(model_dir / "mlp.onnx", "--drift-profile", str(profile))
    assert "drift scores are off" in server.log() and "'input'" in server.log()
    assert server.client.post("/v2/models/mlp/infer", json=body(np.ones((1, 64), np.float32))).status_code == 200


def _two_io_body(a: list[list[float]], b: list[list[int]]) -> dict[str, Any]:
    return {"inputs": [
        {"name": "a", "shape": [2, 3], "datatype": "FP32", "data": [x for row in a for x in row]},
        {"name": "b", "shape": [2, 3], "datatype": "INT64", "data": [x for row in b for x in row]},
    ]}


def test_output_histograms_and_class_counts(start_server: Callable[..., Any], model_dir: Path) -> None:
    """Real-valued outputs in the default bins, integer outputs counted per value: what a rollout compares."""
    server = start_server(model_dir / "two_io.onnx")
    # scaled = a * 2 + 1 -> [1, 2, 3, -1, 5, 21]; total = row sums of b -> [6, 1]
    response = server.client.post("/v2/models/two_io/infer",
                                  json=_two_io_body([[0, 0.5, 1], [-1, 2, 10]], [[1, 2, 3], [0, 0, 1]]))
    assert response.status_code == 200
    families = parse(server.client.get("/metrics").text)
    histogram = families["modeldeploy_output_value"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples
               if s.name == "modeldeploy_output_value_bucket" and s.labels["output"] == "scaled"}
    # A bucket counts the values below its bound (the bins are [e(i-1), e(i)) as for input drift).
    assert {le: buckets[le] for le in ("0", "1", "2", "5", "10", "100", "+Inf")} == {
        "0": 1, "1": 1, "2": 2, "5": 4, "10": 5, "100": 6, "+Inf": 6}
    # The default bins start below 0, so (as the exposition format asks) no _sum or _count.
    assert "modeldeploy_output_value_sum" not in {s.name for s in histogram.samples}
    classes = {s.labels["class"]: s.value for s in families["modeldeploy_output_class"].samples
               if s.name == "modeldeploy_output_class_total" and s.labels["output"] == "total"}
    assert classes == {"1": 1, "6": 1}
    assert "total" not in {s.labels["output"] for s in histogram.samples}


def test_output_bins_come_from_the_profile(start_server: Callable[..., Any], model_dir: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "format": "modeldeploy.profile/v1",
        "inputs": {},
        "outputs": {"scaled": {"bin_edges": [0, 4, 8], "fractions": [0.5, 0.5]}},
    }))
    server = start_server(model_dir / "two_io.onnx", "--drift-profile", str(profile))
    server.client.post("/v2/models/two_io/infer", json=_two_io_body([[0, 0.5, 1], [-1, 2, 10]], [[0] * 3] * 2))
    families = parse(server.client.get("/metrics").text)
    buckets = {s.labels["le"]: s.value for s in families["modeldeploy_output_value"].samples
               if s.name == "modeldeploy_output_value_bucket" and s.labels["output"] == "scaled"}
    assert buckets == {"4": 4, "+Inf": 6}
    assert value(families, "modeldeploy_output_value", "modeldeploy_output_value_sum", model="two_io",
                 output="scaled") == 31
