"""A rollout's analysis end to end over real HTTP: two real serving processes on loopback (stable and
canary), the operator's pod scraper reading their /metrics, the analysis engine's verdict.

The canary models are made here: the same model (passes), its outputs shifted (output drift), a much
slower model (latency), and one that fails on some inputs (error rate).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modeldeploy_operator import analysis
from modeldeploy_operator.metricsource import PodScraper
from modeldeploy_operator.views import PodView
from testsupport.onnx_models import build_slow, failing_on_large_inputs, shifted

DEFAULT_GATES = analysis.Gates()
PODS = (PodView("stable-0", "stable", True, ip="127.0.0.1"), PodView("canary-0", "canary", True, ip="127.0.0.1"))


class LoopbackScraper(PodScraper):
    """The operator's scraper, with each pod's address on loopback (the servers run as processes here)."""

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__()
        self.urls = urls

    def url(self, pod: PodView) -> str:
        return self.urls[pod.name]


def judge_pair(start_server: Callable[..., Any], stable_model: Path, canary_model: Path, requests: int,
               gates: analysis.Gates = DEFAULT_GATES) -> tuple[analysis.Verdict, int]:
    """Send the same `requests` inputs to both tracks (as mirroring does); the verdict of that window and
    how many requests the canary failed."""
    stable = start_server(stable_model, name="model")
    canary = start_server(canary_model, name="model")
    scraper = LoopbackScraper({"stable-0": f"{stable.url}/metrics", "canary-0": f"{canary.url}/metrics"})
    assert scraper.read(("ns", "md"), PODS) is None  # the window starts now
    rng = np.random.default_rng(3)
    failed = 0
    for _ in range(requests):
        batch = rng.standard_normal((1, 64)).astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": batch.ravel().tolist()}]}
        assert stable.client.post("/v2/models/model/infer", json=body).status_code == 200
        failed += canary.client.post("/v2/models/model/infer", json=body).status_code != 200
    window = scraper.read(("ns", "md"), PODS)
    assert window is not None
    canary_sample, stable_sample = window
    assert stable_sample.total == requests and canary_sample.total == requests
    return analysis.judge(canary_sample, stable_sample, gates), failed


def test_the_same_model_passes(start_server: Callable[..., Any], model_dir: Path, tmp_path: Path) -> None:
    # Latency is left out here: two processes on a shared machine are not equally fast, and tests assert
    # no timing. The gate's arithmetic is unit-tested; the slow model below is slower by a wide margin.
    gates = analysis.Gates(max_latency_p95_ratio=None)
    verdict, failed = judge_pair(start_server, model_dir / "mlp.onnx", shifted(model_dir / "mlp.onnx",
                                 tmp_path / "same.onnx", 0.0), 80, gates)
    assert (verdict.result, failed) == ("Pass", 0), verdict.message
    assert verdict.measured()["outputPsi[output]"] < 0.2


def test_shifted_outputs_fail_the_drift_gate(start_server: Callable[..., Any], model_dir: Path,
                                              tmp_path: Path) -> None:
    gates = analysis.Gates(max_latency_p95_ratio=None)
    verdict, failed = judge_pair(start_server, model_dir / "mlp.onnx",
                                 shifted(model_dir / "mlp.onnx", tmp_path / "shifted.onnx", 0.5), 80, gates)
    assert (verdict.result, verdict.gate, failed) == ("Fail", "outputDrift", 0), verdict.message
    assert verdict.measured()["outputPsi[output]"] > 0.2


def test_a_much_slower_model_fails_the_latency_gate(start_server: Callable[..., Any], model_dir: Path,
                                                    tmp_path: Path) -> None:
    slow = build_slow(tmp_path / "slower.onnx", layers=24, width=2048)
    gates = analysis.Gates(max_output_psi=None)  # a different model: its outputs differ too
    verdict, _ = judge_pair(start_server, model_dir / "mlp.onnx", slow, 60, gates)
    assert (verdict.result, verdict.gate) == ("Fail", "latencyP95Ratio"), verdict.message
    assert verdict.measured()["latencyP95Ratio"] > 1.5


def test_a_model_failing_on_some_inputs_fails_the_error_increase_gate(start_server: Callable[..., Any], model_dir: Path,
                                                             tmp_path: Path) -> None:
    failing = failing_on_large_inputs(model_dir / "mlp.onnx", tmp_path / "failing.onnx")
    verdict, failed = judge_pair(start_server, model_dir / "mlp.onnx", failing, 100)
    assert 0 < failed < 100  # some inputs, not all
    # onnxruntime refuses those inputs (a 400 from the server): stable answered every one of them.
    assert (verdict.result, verdict.gate) == ("Fail", "errorRateIncrease"), verdict.message
    assert verdict.measured()["canaryFailedShare"] == pytest.approx(failed / 100)


def test_no_traffic_is_inconclusive(start_server: Callable[..., Any], model_dir: Path) -> None:
    verdict, _ = judge_pair(start_server, model_dir / "mlp.onnx", model_dir / "mlp.onnx", 0)
    assert (verdict.result, verdict.gate) == ("Inconclusive", None)


def test_a_pod_missing_from_one_reading_counts_only_what_it_served_since_its_last(
    start_server: Callable[..., Any], model_dir: Path
) -> None:
    """A scrape that fails (a pod too busy to answer in time) must not make the next window count the
    pod's whole life: its last reading stays its baseline."""
    stable = start_server(model_dir / "mlp.onnx", name="model")
    canary = start_server(model_dir / "mlp.onnx", name="model")
    urls = {"stable-0": f"{stable.url}/metrics", "canary-0": f"{canary.url}/metrics"}
    scraper = LoopbackScraper(urls)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.1] * 64}]}

    def send(count: int) -> None:
        for _ in range(count):
            assert canary.client.post("/v2/models/model/infer", json=body).status_code == 200

    send(20)  # served before the rollout's first window
    assert scraper.read(("ns", "md"), PODS) is None
    send(10)
    urls["canary-0"] = "http://127.0.0.1:9/metrics"  # nothing listens: this reading misses the pod
    missed = scraper.read(("ns", "md"), PODS)
    assert missed is not None and missed[0].total == 0
    send(5)
    urls["canary-0"] = f"{canary.url}/metrics"
    window = scraper.read(("ns", "md"), PODS)
    assert window is not None and window[0].total == 15  # since the last reading, not 35
