"""Hypothesis settings the fuzzing tests share: many examples, reproducible, no time limit per example."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings

FUZZ_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
