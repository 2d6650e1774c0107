"""Input drift: running summary statistics per input and a PSI score against a reference profile.

Reference profile format (JSON, by default ``<model stem>.profile.json`` next to the model, e.g.
``model.onnx`` -> ``model.profile.json``; or the path in ``DRIFT_PROFILE_PATH``)::

    {
      "format": "modeldeploy.profile/v1",
      "inputs": {
        "<input name>": {
          "bin_edges": [e0, e1, ..., eK],   # K >= 1 strictly increasing finite numbers
          "fractions": [f1, ..., fK]        # share of reference values in [e(i-1), e(i)); sums to 1
        }
      }
    }

A profile may also carry an ``"outputs"`` object of the same shape: its ``bin_edges`` then bin that
output's values for the statistics a rollout compares (see ``OutputMonitor``).

Every element of an input tensor counts as one value. Values below ``e0`` fall in the first bin and
values at or above ``eK`` in the last, so the bins cover the whole line. Inputs absent from the profile
get summary statistics but no drift score. ``profile_from_samples`` writes such a profile from
reference data (quantile bins).

The drift score is the Population Stability Index over the most recent ``window`` values
(approximately: the window advances in tenths): ``PSI = sum((a - r) * ln(a / r))`` with ``a`` the
observed and ``r`` the reference share per bin, both floored at 1e-4. Common reading: < 0.1 stable,
0.1-0.25 moderate shift, > 0.25 large shift.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROFILE_FORMAT = "modeldeploy.profile/v1"
_FLOOR = 1e-4
_SLICES = 10


class ProfileError(ValueError):
    """The reference profile file is not in the documented format."""


@dataclass(frozen=True)
class ReferenceBins:
    edges: np.ndarray  # K+1 increasing edges
    fractions: np.ndarray  # K shares


def parse_profile(document: Any, section: str = "inputs") -> dict[str, ReferenceBins]:
    """Validate a decoded profile document; raises ProfileError naming the offending input.

    ``section`` is ``"inputs"`` (required) or ``"outputs"`` (optional: absent means none).
    """
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise ProfileError(f'profile must be an object with "format": "{PROFILE_FORMAT}"')
    inputs = document.get(section, {} if section == "outputs" else None)
    if not isinstance(inputs, dict):
        raise ProfileError(f'profile needs an "{section}" object')
    parsed: dict[str, ReferenceBins] = {}
    for name, entry in inputs.items():
        try:
            edges = np.asarray(entry["bin_edges"], dtype=np.float64)
            fractions = np.asarray(entry["fractions"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"input {name!r}: needs numeric bin_edges and fractions") from exc
        if edges.ndim != 1 or edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
            raise ProfileError(f"input {name!r}: bin_edges must be >= 2 strictly increasing finite numbers")
        if fractions.shape != (edges.size - 1,) or np.any(fractions < 0) or not np.all(np.isfinite(fractions)):
            raise ProfileError(f"input {name!r}: fractions must be {edges.size - 1} non-negative numbers")
        total = float(fractions.sum())
        if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-3):
            raise ProfileError(f"input {name!r}: fractions sum to {total}, not 1")
        parsed[name] = ReferenceBins(edges=edges, fractions=fractions / total)
    return parsed


def read_profile(path: Path) -> Any:
    """The decoded profile document, read once for both of its sections (see ``parse_profile``)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read profile {str(path)!r}: {exc}") from exc


def profile_from_samples(samples: Mapping[str, np.ndarray], bins: int = 10) -> dict[str, Any]:
    """A profile document with quantile bins from reference data (one array per input)."""
    inputs: dict[str, Any] = {}
    for name, values in samples.items():
        flat = np.asarray(values, dtype=np.float64).ravel()
        flat = flat[np.isfinite(flat)]
        edges = np.unique(np.quantile(flat, np.linspace(0.0, 1.0, bins + 1)))
        if edges.size < 2:
            edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
        counts = np.bincount(_bin_index(edges, flat), minlength=edges.size - 1)
        inputs[name] = {"bin_edges": edges.tolist(), "fractions": (counts / counts.sum()).tolist()}
    return {"format": PROFILE_FORMAT, "inputs": inputs}


def _bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, edges.size - 2)


def psi(observed_counts: np.ndarray, reference: np.ndarray) -> float:
    """Population Stability Index of observed bin counts against reference shares."""
    total = observed_counts.sum()
    if total == 0:
        return 0.0
    actual = np.maximum(observed_counts / total, _FLOOR)
    expected = np.maximum(reference, _FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True)
class InputStats:
    count: int
    mean: float
    std: float
    minimum: float
    maximum: float
    psi: float | None


class InputMonitor:
    """Thread-safe running statistics of one input (all values) and its windowed drift score."""

    def __init__(self, reference: ReferenceBins | None, window: int) -> None:
        self._lock = threading.Lock()
        self._reference = reference
        self._count = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._slice_size = max(1, window // _SLICES)
        bins = 0 if reference is None else reference.fractions.size
        self._slices = np.zeros((_SLICES, bins), dtype=np.int64)
        self._slice = 0
        self._in_slice = 0
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._flush_at = min(8192, self._slice_size)

    def observe(self, values: np.ndarray) -> None:
        """Note values; they are folded in by the batch (a few thousand at a time), since the fixed
        cost of the numpy calls would otherwise rival a small model's run.

        What waits is a copy: ``values`` may be a view of a request's whole body, which must not
        outlive its response.
        """
        if values.dtype.kind not in "biuf" or values.size == 0:
            return
        if values.size >= self._flush_at:
            self._absorb([values])
            return
        kept = values.astype(np.float64).ravel()
        with self._lock:
            self._pending.append(kept)
            self._pending_size += kept.size
            if self._pending_size < self._flush_at:
                return
            pending, self._pending, self._pending_size = self._pending, [], 0
        self._absorb(pending)

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending, self._pending_size = self._pending, [], 0
        if pending:
            self._absorb(pending)

    def _absorb(self, arrays: list[np.ndarray]) -> None:
        flat = np.concatenate([array.ravel() for array in arrays]).astype(np.float64, copy=False)
        finite = flat[np.isfinite(flat)]
        if finite.size == 0:
            return
        total = float(finite.sum())
        total_sq = float(np.dot(finite, finite))
        low, high = float(finite.min()), float(finite.max())
        counts = None
        if self._reference is not None:
            counts = np.bincount(_bin_index(self._reference.edges, finite), minlength=self._slices.shape[1])
        with self._lock:
            self._count += finite.size
            self._sum += total
            self._sum_sq += total_sq
            self._min = min(self._min, low)
            self._max = max(self._max, high)
            if counts is not None:
                self._slices[self._slice] += counts
                self._in_slice += finite.size
                if self._in_slice >= self._slice_size:
                    self._slice = (self._slice + 1) % _SLICES
                    self._slices[self._slice] = 0
                    self._in_slice = 0

    def snapshot(self) -> InputStats:
        self._flush()
        with self._lock:
            count = self._count
            mean = self._sum / count if count else 0.0
            variance = max(0.0, self._sum_sq / count - mean * mean) if count else 0.0
            score = None
            if self._reference is not None:
                score = psi(self._slices.sum(axis=0), self._reference.fractions)
            return InputStats(
                count=count,
                mean=mean,
                std=math.sqrt(variance),
                minimum=self._min if count else 0.0,
                maximum=self._max if count else 0.0,
                psi=score,
            )


# Output bins when the profile has none for an output: symmetric about 0, finer near it, so both
# probabilities/scores in [0, 1] and unbounded regression values land in a useful bin. Values below the
# first edge count in the first bin, values at or above the last in the last (as for inputs).
DEFAULT_OUTPUT_EDGES = np.array(
    [-1000.0, -100.0, -10.0, -5.0, -2.0, -1.0, -0.7, -0.5, -0.3, -0.2, -0.1, -0.05, 0.0,
     0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0, 10.0, 100.0, 1000.0]
)
# Integer and boolean outputs are classes: one count per value; values beyond this many distinct ones
# are counted together under "other" so a misbehaving model cannot grow the metric without bound.
MAX_CLASSES = 64
OTHER_CLASS = "other"


class OutputMonitor:
    """Counts of one output's values since start: fixed bins for real numbers, per-value counts for
    integer (class) outputs. Cumulative counters, so a scraper takes differences over its window."""

    def __init__(self, datatype_kind: str, edges: np.ndarray | None = None) -> None:
        self._lock = threading.Lock()
        self.is_classes = datatype_kind in "biu"
        self.edges = DEFAULT_OUTPUT_EDGES if edges is None else edges
        self._bins = np.zeros(self.edges.size - 1, dtype=np.int64)
        self._classes: dict[str, int] = {}
        self._sum = 0.0
        self._pending: list[np.ndarray] = []
        self._pending_size = 0

    def observe(self, values: np.ndarray) -> None:
        """Note one response's values; folded in by the few thousand (see InputMonitor.observe)."""
        if values.dtype.kind not in "biuf" or values.size == 0:
            return
        kept = np.array(values, copy=True).ravel()
        with self._lock:
            self._pending.append(kept)
            self._pending_size += kept.size
            if self._pending_size < 4096:
                return
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending, self._pending_size = self._pending, [], 0
            if not pending:
                return
            flat = np.concatenate(pending)
            if self.is_classes:
                values, counts = np.unique(flat, return_counts=True)
                for value, count in zip(values.tolist(), counts.tolist(), strict=True):
                    key = str(int(value))
                    if key not in self._classes and len(self._classes) >= MAX_CLASSES:
                        key = OTHER_CLASS
                    self._classes[key] = self._classes.get(key, 0) + count
                return
            finite = flat.astype(np.float64)[np.isfinite(flat)]
            self._bins += np.bincount(_bin_index(self.edges, finite), minlength=self._bins.size)
            self._sum += float(finite.sum())

    def class_counts(self) -> dict[str, int]:
        self._flush()
        with self._lock:
            return dict(self._classes)

    def histogram(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets by upper edge (``+Inf`` last) and the sum, as a Prometheus histogram has them.

        Bucket ``le=e(i)`` counts the values in bins up to the one ending at ``e(i)``; the first bin also
        holds everything below ``e0`` and the last everything above ``eK`` (so ``le=eK`` is left out).
        """
        self._flush()
        with self._lock:
            cumulative = np.cumsum(self._bins)
            total = float(self._sum)
        upper = [f"{edge:g}" for edge in self.edges[1:-1]]
        buckets = [(bound, int(count)) for bound, count in zip(upper, cumulative[:-1].tolist(), strict=True)]
        return [*buckets, ("+Inf", int(cumulative[-1]))], total
