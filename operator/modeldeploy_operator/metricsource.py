"""Where a rollout's numbers come from: the serving pods' own /metrics (default) or Prometheus.

`parse_exposition` (pure) turns one pod's Prometheus text into a cumulative `analysis.TrackSample`.
`PodScraper` reads each ready pod of both tracks over HTTP and keeps, per ModelDeployment, the samples
at the start of the current window in memory; when a window ends it returns the two tracks' increases.
Kept in memory only: an operator restarted mid-window counts from its start-up to the end of the
window recorded in status (`status.rollout.analysisStartedAt`), so the verdicts keep their schedule.
`PrometheusQuery` asks Prometheus for the same increases over the window with `increase(...[window])`,
by the `track` label the chart's PodMonitor adds.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.parse
import urllib.request
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_operator.analysis import TrackSample, combine, window
from modeldeploy_operator.names import SERVER_HTTP_PORT
from modeldeploy_operator.views import PodView

log = logging.getLogger(__name__)

REQUESTS = "modeldeploy_requests"
LATENCY = "modeldeploy_request_duration_seconds"
OUTPUT_VALUES = "modeldeploy_output_value"
OUTPUT_CLASSES = "modeldeploy_output_class"
SCRAPE_TIMEOUT_SECONDS = 2.0


def parse_exposition(text: str) -> TrackSample:
    """Requests by outcome, latency buckets and output bins of one server (all its models summed)."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    outputs: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if family.name == REQUESTS and sample.name == f"{REQUESTS}_total":
                outcome = labels.get("outcome", "")
                requests[outcome] = requests.get(outcome, 0.0) + sample.value
            elif family.name == LATENCY and sample.name == f"{LATENCY}_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif family.name == OUTPUT_VALUES and sample.name == f"{OUTPUT_VALUES}_bucket":
                _add_cumulative_bucket(outputs.setdefault(labels["output"], {}), labels["le"], sample.value)
            elif family.name == OUTPUT_CLASSES and sample.name == f"{OUTPUT_CLASSES}_total":
                bins = outputs.setdefault(labels["output"], {})
                bins[labels["class"]] = bins.get(labels["class"], 0.0) + sample.value
    return TrackSample(requests, buckets, {name: _decumulate(bins) for name, bins in outputs.items()})


def _add_cumulative_bucket(bins: dict[str, float], le: str, count: float) -> None:
    bins[le] = bins.get(le, 0.0) + count


def _decumulate(bins: Mapping[str, float]) -> dict[str, float]:
    """Cumulative histogram buckets -> counts per bin (class counts, with no `+Inf`, pass through)."""
    if "+Inf" not in bins:
        return dict(bins)
    ordered = sorted(bins.items(), key=lambda item: math.inf if item[0] == "+Inf" else float(item[0]))
    out: dict[str, float] = {}
    below = 0.0
    for le, cumulative in ordered:
        out[le] = cumulative - below
        below = cumulative
    return out


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> TrackSample:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own pods' addresses
        return parse_exposition(response.read().decode())


@dataclass
class _Baseline:
    stable: dict[str, TrackSample]  # pod name -> cumulative sample
    canary: dict[str, TrackSample]


class PodScraper:
    """Windows of the two tracks' increases, read from the serving pods' /metrics."""

    def __init__(self, port: int = SERVER_HTTP_PORT) -> None:
        self.port = port
        self._baselines: dict[Hashable, _Baseline] = {}
        self._lock = threading.Lock()

    def url(self, pod: PodView) -> str:
        host = f"[{pod.ip}]" if ":" in pod.ip else pod.ip
        return f"http://{host}:{self.port}/metrics"

    def _read(self, pods: Iterable[PodView], track: str, before: Mapping[str, TrackSample]
              ) -> dict[str, TrackSample]:
        samples = {}
        for pod in pods:
            if pod.track != track or not pod.ip:
                continue
            try:
                samples[pod.name] = scrape(self.url(pod))
            except (OSError, ValueError) as error:
                # A pod going away, not listening yet or too slow to answer adds nothing to this window.
                # Its last reading stays its baseline: the next window it answers in counts what it served
                # since then, not its whole life.
                log.info("no metrics from pod %s (%s track) this window: %s", pod.name, track, error)
                if pod.name in before:
                    samples[pod.name] = before[pod.name]
        return samples

    def read(self, key: Hashable, pods: Iterable[PodView]) -> tuple[TrackSample, TrackSample] | None:
        """End the current window: (canary, stable) increases since the last call, or None the first time
        (the window starts now)."""
        pods = list(pods)
        with self._lock:
            before = self._baselines.get(key)
        last = before or _Baseline({}, {})
        now = _Baseline(self._read(pods, "stable", last.stable), self._read(pods, "canary", last.canary))
        with self._lock:
            self._baselines[key] = now
        if before is None:
            return None
        return _pods_increase(before.canary, now.canary), _pods_increase(before.stable, now.stable)

    def begin(self, key: Hashable, pods: Iterable[PodView]) -> None:
        """Start counting now when no window is open for `key` (a restarted operator, mid-window)."""
        with self._lock:
            if key in self._baselines:
                return
        self.read(key, pods)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._baselines.pop(key, None)


def _pods_increase(before: Mapping[str, TrackSample], now: Mapping[str, TrackSample]) -> TrackSample:
    """Per pod, the increase since the window began (a pod new since then counts from zero)."""
    return combine(window(before.get(name, TrackSample()), sample) for name, sample in now.items())


class PrometheusQuery:
    """The same windows from Prometheus: `increase()` over the window, by the `track` label."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def vector(self, query: str) -> list[tuple[dict[str, str], float]]:
        url = f"{self.base_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310 - the spec's URL
            document = json.loads(response.read().decode())
        if document.get("status") != "success":
            raise ValueError(f"Prometheus refused {query!r}: {document.get('error')}")
        return [(item["metric"], float(item["value"][1])) for item in document["data"]["result"]]

    def read(self, namespace: str, name: str, seconds: int) -> tuple[TrackSample, TrackSample]:
        """(canary, stable) increases over the last `seconds`."""
        selector = f'namespace="{namespace}",modeldeployment="{name}"'
        span = f"[{max(1, seconds)}s]"
        tracks: dict[str, dict[str, dict[str, float]]] = {"canary": {}, "stable": {}}
        requests: dict[str, dict[str, float]] = {"canary": {}, "stable": {}}
        buckets: dict[str, dict[float, float]] = {"canary": {}, "stable": {}}
        for labels, value in self.vector(f"sum by (track, outcome) (increase({REQUESTS}_total{{{selector}}}{span}))"):
            if labels.get("track") in requests:
                requests[labels["track"]][labels.get("outcome", "")] = value
        for labels, value in self.vector(f"sum by (track, le) (increase({LATENCY}_bucket{{{selector}}}{span}))"):
            if labels.get("track") in buckets:
                buckets[labels["track"]][float(labels["le"])] = value
        query = f"sum by (track, output, le) (increase({OUTPUT_VALUES}_bucket{{{selector}}}{span}))"
        for labels, value in self.vector(query):
            if labels.get("track") in tracks:
                tracks[labels["track"]].setdefault(labels["output"], {})[labels["le"]] = value
        query = f"sum by (track, output, class) (increase({OUTPUT_CLASSES}_total{{{selector}}}{span}))"
        for labels, value in self.vector(query):
            if labels.get("track") in tracks:
                tracks[labels["track"]].setdefault(labels["output"], {})[labels["class"]] = value
        samples = {
            track: TrackSample(requests[track], buckets[track],
                               {output: _decumulate(bins) for output, bins in tracks[track].items()})
            for track in ("canary", "stable")
        }
        return samples["canary"], samples["stable"]
