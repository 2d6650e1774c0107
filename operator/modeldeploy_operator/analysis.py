"""Pure: the canary's and the stable track's metrics over one window -> a verdict.

The rollout asks this every analysis interval. Nothing here does I/O or reads the clock: the caller
scrapes (or queries Prometheus), subtracts the window's start from its end (`window`), sums the pods of
each track, and hands over two `TrackSample`s.

Verdicts are three-valued, because an empty metric is not a bad one: too few requests on either track is
`Inconclusive` (the step holds), never `Fail` — the mistake Argo Rollouts makes on empty query results.

Gates, in the order they are judged (the first that fails names the verdict):

- **error rate**: the share of the canary's requests whose outcome is a server-side failure
  (`ERROR_OUTCOMES`; a caller's bad input is not the model's fault). It fails when even the one-sided
  95% Wilson *lower* bound of the canary's rate is above `max_error_rate`, so a handful of unlucky
  errors in a small window does not roll a good version back, while a version that errors on a real
  share of inputs fails as soon as the window holds enough requests to show it.
- **error rate increase**: canary's Wilson lower bound minus stable's Wilson upper bound above
  `max_error_rate_increase` (a difference that noise alone would rarely produce). Here every answer but
  `ok` counts: a request the canary refuses (say, onnxruntime rejecting a value the old model took, a
  400) while stable answers the same traffic is a regression, and callers' own bad requests reach both
  tracks alike, so they cancel out.
- **latency p95 ratio**: the p95 of each track, interpolated from the cumulative histogram buckets as
  PromQL's `histogram_quantile` does, each floored at `latency_floor_seconds` (below it, differences are
  scheduling noise). A p95 read from a few dozen requests is mostly its slowest two or three, so the
  gate compares bounds, as the error gates do: the number of requests below the true p95 is binomial,
  so its rank has Wilson bounds; the canary's p95 at the *lower* bound of its rank over stable's at the
  *upper* bound of its rank (`latencyP95RatioBeyondNoise`) must exceed `max_latency_p95_ratio` to
  fail. A p95 ratio above the maximum that noise could explain is inconclusive: the step holds and the
  failure count is neither raised nor reset. An identical model then does not fail on a noisy window,
  and a model several times slower is not passed on a window too small to show it.
- **output drift**: per output, the Population Stability Index between the two tracks' bin counts,
  ``PSI = sum((c - s) * ln(c / s))`` over bins with `c`, `s` the canary's and stable's shares, each floored
  at `PSI_EPSILON` (1e-4, as the server's input-drift score). Sparse bins make PSI swing on single values,
  so neighbouring bins are first merged until each holds `MIN_VALUES_PER_BIN` values of the two tracks
  together (as for a chi-square test). Two samples of the *same* distribution still give a positive PSI:
  ``PSI / (1/n_canary + 1/n_stable)`` is about chi-square with ``k - 1`` degrees of freedom for ``k``
  merged bins. Its 99.9% quantile, so scaled, is subtracted (floored at 0) before comparing with
  `max_output_psi`: a good version fails by chance in about one window in a thousand, whatever the window's
  size, while a shifted output stands far above it. An output with fewer than `min_requests` values on
  either track is not judged (inconclusive).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

K = TypeVar("K", str, float)
Result = Literal["Pass", "Fail", "Inconclusive"]
PASSED: Result = "Pass"
FAILED: Result = "Fail"
INCONCLUSIVE: Result = "Inconclusive"

# The server's request outcomes that are the server's fault (5xx); invalid input, unknown model and
# too-large bodies are the caller's.
ERROR_OUTCOMES = frozenset({"error", "unavailable", "queue_full", "not_ready"})
OK_OUTCOME = "ok"
PSI_EPSILON = 1e-4
MIN_VALUES_PER_BIN = 10  # both tracks' values together, after merging sparse neighbours
Z_999_ONE_SIDED = 3.090232306167813
Z_95_ONE_SIDED = 1.6448536269514722

GATE_ERROR_RATE = "errorRate"
GATE_ERROR_INCREASE = "errorRateIncrease"
GATE_LATENCY = "latencyP95Ratio"
GATE_DRIFT = "outputDrift"


@dataclass(frozen=True)
class TrackSample:
    """One track's increase over the window, summed over its pods.

    `latency_buckets`: cumulative counts by upper bound (`le`), `math.inf` included, as Prometheus exports
    them. `outputs`: per output, the count of values in each bin (keyed by the bin's label: an upper bound
    or a class index); the keys only need to agree between the two tracks.
    """

    requests: Mapping[str, float] = field(default_factory=dict)  # outcome -> count
    latency_buckets: Mapping[float, float] = field(default_factory=dict)
    outputs: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    @property
    def errors(self) -> float:
        return sum(count for outcome, count in self.requests.items() if outcome in ERROR_OUTCOMES)

    @property
    def failures(self) -> float:
        """Every request not answered: server errors and refusals alike."""
        return sum(count for outcome, count in self.requests.items() if outcome != OK_OUTCOME)


@dataclass(frozen=True)
class Gates:
    """Thresholds; None switches a gate off."""

    min_requests: int = 50
    max_error_rate: float | None = 0.05
    max_error_rate_increase: float | None = 0.02
    max_latency_p95_ratio: float | None = 1.5
    latency_floor_seconds: float = 0.005
    max_output_psi: float | None = 0.2


@dataclass(frozen=True)
class GateResult:
    gate: str
    result: Result
    measured: Mapping[str, float]
    message: str


@dataclass(frozen=True)
class Verdict:
    result: Result
    gate: str | None  # the gate that decided a Fail (or the first that could not judge)
    message: str
    gates: tuple[GateResult, ...]
    source: Literal["pods", "prometheus"] | None = None  # where the numbers came from: pods' /metrics, Prometheus

    def measured(self) -> dict[str, float]:
        """Every gate's numbers, flat, for status and events."""
        return {key: value for gate in self.gates for key, value in gate.measured.items()}


def _subtract(end: float, start: float) -> float:
    """A counter's increase; a drop means the process restarted, so the end value is all that is known."""
    return end - start if end >= start else end


def _increase(end: Mapping[K, float], start: Mapping[K, float]) -> dict[K, float]:
    return {key: _subtract(value, start.get(key, 0.0)) for key, value in end.items()}


def window(start: TrackSample, end: TrackSample) -> TrackSample:
    """The increase between two cumulative samples of the same track (counter resets handled)."""
    return TrackSample(
        requests=_increase(end.requests, start.requests),
        latency_buckets=_increase(end.latency_buckets, start.latency_buckets),
        outputs={name: _increase(bins, start.outputs.get(name, {})) for name, bins in end.outputs.items()},
    )


def combine(samples: Iterable[TrackSample]) -> TrackSample:
    """The sum of several pods' samples of one track."""
    requests: dict[str, float] = {}
    buckets: dict[float, float] = {}
    outputs: dict[str, dict[str, float]] = {}
    for sample in samples:
        for outcome, count in sample.requests.items():
            requests[outcome] = requests.get(outcome, 0.0) + count
        for bound, count in sample.latency_buckets.items():
            buckets[bound] = buckets.get(bound, 0.0) + count
        for name, bins in sample.outputs.items():
            into = outputs.setdefault(name, {})
            for key, count in bins.items():
                into[key] = into.get(key, 0.0) + count
    return TrackSample(requests, buckets, outputs)


def wilson_bounds(successes: float, trials: float, z: float = Z_95_ONE_SIDED) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) with no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's histogram_quantile on cumulative buckets; None without observations.

    Linear interpolation inside the bucket holding the rank, the lowest bucket starting at 0; a rank
    in the +Inf bucket answers the highest finite bound.
    """
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def quantile_bounds(q: float, buckets: Mapping[float, float]) -> tuple[float, float] | None:
    """Where the true `q`-quantile lies (one-sided 95% each way): the histogram's quantiles at the
    Wilson bounds of the rank; None without observations."""
    total = max(buckets.values(), default=0.0)
    if total <= 0:
        return None
    low_rank, high_rank = wilson_bounds(q * total, total)
    low, high = histogram_quantile(low_rank, buckets), histogram_quantile(high_rank, buckets)
    return (low, high) if low is not None and high is not None else None


def psi(canary: Mapping[str, float], stable: Mapping[str, float]) -> tuple[float, float]:
    """(PSI between the two bin counts, the PSI expected from sampling noise alone)."""
    n_canary, n_stable = sum(canary.values()), sum(stable.values())
    if n_canary <= 0 or n_stable <= 0:
        return 0.0, 0.0
    keys = set(canary) | set(stable)
    score = 0.0
    occupied = 0
    for key in keys:
        c, s = canary.get(key, 0.0), stable.get(key, 0.0)
        if c > 0 or s > 0:
            occupied += 1
        share_c = max(c / n_canary, PSI_EPSILON)
        share_s = max(s / n_stable, PSI_EPSILON)
        score += (share_c - share_s) * math.log(share_c / share_s)
    noise = max(0, occupied - 1) * (1 / n_canary + 1 / n_stable)
    return score, noise


def _bin_order(label: str) -> tuple[int, float, str]:
    """Bins in their natural order: numeric labels (upper bounds, class indices) by value, others by name."""
    try:
        return 0, float(label), ""
    except ValueError:
        return 1, 0.0, label


def merge_sparse_bins(canary: Mapping[str, float], stable: Mapping[str, float],
                      min_values: int = MIN_VALUES_PER_BIN) -> tuple[dict[str, float], dict[str, float]]:
    """Neighbouring bins merged until each holds `min_values` of the two tracks' values together (a short
    tail joins the last full group). Keys of the result are the first label of each group."""
    groups: list[tuple[str, float, float]] = []
    label, c_sum, s_sum = "", 0.0, 0.0
    for key in sorted(set(canary) | set(stable), key=_bin_order):
        c, s = canary.get(key, 0.0), stable.get(key, 0.0)
        if c <= 0 and s <= 0:
            continue
        label = label or key
        c_sum, s_sum = c_sum + c, s_sum + s
        if c_sum + s_sum >= min_values:
            groups.append((label, c_sum, s_sum))
            label, c_sum, s_sum = "", 0.0, 0.0
    if label:
        if groups:
            first, c_last, s_last = groups.pop()
            groups.append((first, c_last + c_sum, s_last + s_sum))
        else:
            groups.append((label, c_sum, s_sum))
    return {g: c for g, c, _ in groups}, {g: s for g, _, s in groups}


def chi_square_quantile(degrees: int, z: float = Z_999_ONE_SIDED) -> float:
    """The chi-square quantile at standard-normal score `z` (the Wilson-Hilferty approximation: at most 3%
    above the exact value, under 2% from 3 degrees of freedom up)."""
    if degrees <= 0:
        return 0.0
    ratio = 2 / (9 * degrees)
    return float(degrees * (1 - ratio + z * math.sqrt(ratio)) ** 3)


def psi_noise_bound(bins: int, n_canary: float, n_stable: float) -> float:
    """The PSI that two samples of one distribution over `bins` bins exceed only once in a thousand."""
    return chi_square_quantile(bins - 1) * (1 / n_canary + 1 / n_stable)


def _against(gate: str, value: float, limit: float, measured: Mapping[str, float], said: str,
             shown: str) -> GateResult:
    """A gate that fails when the value measured exceeds its limit; the message says where it stands."""
    failed = value > limit
    return GateResult(gate, FAILED if failed else PASSED, measured,
                      f"{said} {'above' if failed else 'within'} the maximum {shown}")


def _error_gates(canary: TrackSample, stable: TrackSample, gates: Gates) -> list[GateResult]:
    c_low, _ = wilson_bounds(canary.errors, canary.total)
    c_rate = canary.errors / canary.total
    results = []
    if gates.max_error_rate is not None:
        results.append(_against(
            GATE_ERROR_RATE, c_low, gates.max_error_rate,
            {"canaryErrorRate": round(c_rate, 4), "canaryErrorRateLowerBound": round(c_low, 4)},
            f"canary error rate {c_rate:.2%} ({canary.errors:.0f}/{canary.total:.0f}, 95% lower bound {c_low:.2%})",
            f"{gates.max_error_rate:.2%}",
        ))
    if gates.max_error_rate_increase is not None:
        c_fail_low, _ = wilson_bounds(canary.failures, canary.total)
        _, s_fail_high = wilson_bounds(stable.failures, stable.total)
        c_failed, s_failed = canary.failures / canary.total, stable.failures / stable.total
        increase = max(0.0, c_fail_low - s_fail_high)
        results.append(_against(
            GATE_ERROR_INCREASE, increase, gates.max_error_rate_increase,
            {"canaryFailedShare": round(c_failed, 4), "stableFailedShare": round(s_failed, 4),
             "failedShareIncrease": round(increase, 4)},
            f"canary failed {c_failed:.2%} of requests ({canary.failures:.0f}/{canary.total:.0f}) against "
            f"stable {s_failed:.2%}: increase {increase:.2%} beyond noise,",
            f"{gates.max_error_rate_increase:.2%}",
        ))
    return results


def _latency_gate(canary: TrackSample, stable: TrackSample, gates: Gates) -> GateResult | None:
    if gates.max_latency_p95_ratio is None:
        return None
    c_p95 = histogram_quantile(0.95, canary.latency_buckets)
    s_p95 = histogram_quantile(0.95, stable.latency_buckets)
    if c_p95 is None or s_p95 is None:
        return GateResult(GATE_LATENCY, INCONCLUSIVE, {}, "no latency histogram observations on a track")
    floor = gates.latency_floor_seconds
    ratio = max(c_p95, floor) / max(s_p95, floor)
    c_bounds, s_bounds = quantile_bounds(0.95, canary.latency_buckets), quantile_bounds(0.95, stable.latency_buckets)
    assert c_bounds is not None and s_bounds is not None  # both histograms have observations
    beyond_noise = max(c_bounds[0], floor) / max(s_bounds[1], floor)
    measured = {"canaryLatencyP95Seconds": round(c_p95, 6), "stableLatencyP95Seconds": round(s_p95, 6),
                "latencyP95Ratio": round(ratio, 3), "latencyP95RatioBeyondNoise": round(beyond_noise, 3)}
    limit = gates.max_latency_p95_ratio
    result = FAILED if beyond_noise > limit else INCONCLUSIVE if ratio > limit else PASSED
    verdict = {FAILED: "above", INCONCLUSIVE: "within noise of", PASSED: "within"}[result]
    return GateResult(
        GATE_LATENCY, result, measured,
        f"canary p95 {c_p95 * 1000:.1f} ms against stable {s_p95 * 1000:.1f} ms: ratio {ratio:.2f}; beyond "
        f"noise (canary's p95 at least {c_bounds[0] * 1000:.1f} ms, stable's at most {s_bounds[1] * 1000:.1f} ms) "
        f"{beyond_noise:.2f}, {verdict} the maximum {limit:g}",
    )


def _drift_gates(canary: TrackSample, stable: TrackSample, gates: Gates) -> list[GateResult]:
    if gates.max_output_psi is None:
        return []
    results = []
    for name in sorted(set(canary.outputs) & set(stable.outputs)):
        c_bins, s_bins = canary.outputs[name], stable.outputs[name]
        n_c, n_s = sum(c_bins.values()), sum(s_bins.values())
        if n_c < gates.min_requests or n_s < gates.min_requests:
            results.append(GateResult(
                GATE_DRIFT, INCONCLUSIVE, {},
                f"output {name!r}: {n_c:.0f} canary and {n_s:.0f} stable values, fewer than {gates.min_requests}",
            ))
            continue
        c_merged, s_merged = merge_sparse_bins(c_bins, s_bins)
        raw, _ = psi(c_merged, s_merged)
        noise = psi_noise_bound(len(c_merged), n_c, n_s)
        score = max(0.0, raw - noise)
        results.append(_against(
            GATE_DRIFT, score, gates.max_output_psi, {f"outputPsi[{name}]": round(score, 4)},
            f"output {name!r}: PSI {score:.3f} (raw {raw:.3f} over {len(c_merged)} bins, less sampling noise "
            f"{noise:.3f})",
            f"{gates.max_output_psi:g}",
        ))
    return results


def judge(canary: TrackSample, stable: TrackSample, gates: Gates) -> Verdict:
    """The verdict of one window: Fail names the first failing gate; too few requests is Inconclusive."""
    if canary.total < gates.min_requests or stable.total < gates.min_requests:
        message = (f"too few requests to judge: canary {canary.total:.0f}, stable {stable.total:.0f}, "
                   f"need {gates.min_requests} each")
        measured = {"canaryRequests": canary.total, "stableRequests": stable.total}
        return Verdict(INCONCLUSIVE, None, message, (GateResult("minRequests", INCONCLUSIVE, measured, message),))
    results = _error_gates(canary, stable, gates)
    latency = _latency_gate(canary, stable, gates)
    if latency is not None:
        results.append(latency)
    results.extend(_drift_gates(canary, stable, gates))
    counts = GateResult("minRequests", PASSED, {"canaryRequests": canary.total, "stableRequests": stable.total},
                        "enough requests on both tracks")
    every = (counts, *results)
    for result in results:
        if result.result == FAILED:
            return Verdict(FAILED, result.gate, result.message, every)
    for result in results:
        if result.result == INCONCLUSIVE:
            return Verdict(INCONCLUSIVE, result.gate, result.message, every)
    return Verdict(PASSED, None, "; ".join(r.message for r in results) or "no gate configured", every)
