"""The drift profile format and the PSI score (pure functions, no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from modeldeploy_server.drift import InputMonitor, ProfileError, parse_profile, profile_from_samples, psi


def test_profile_round_trip_and_identical_data_scores_zero() -> None:
    data = np.random.default_rng(0).standard_normal(10_000)
    document = profile_from_samples({"x": data}, bins=10)
    bins = parse_profile(document)["x"]
    assert bins.edges.size == 11
    np.testing.assert_allclose(bins.fractions, 0.1, atol=1e-3)
    monitor = InputMonitor(bins, window=10_000)
    monitor.observe(data.astype(np.float32))
    stats = monitor.snapshot()
    assert stats.psi is not None and stats.psi < 1e-3
    assert stats.count == data.size


def test_psi_grows_with_the_shift() -> None:
    reference = np.full(4, 0.25)
    assert psi(np.array([25, 25, 25, 25]), reference) == pytest.approx(0.0)
    small = psi(np.array([30, 25, 25, 20]), reference)
    large = psi(np.array([70, 10, 10, 10]), reference)
    assert 0 < small < large
    assert psi(np.zeros(4), reference) == 0.0


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({}, "format"),
        ({"format": "modeldeploy.profile/v1"}, "inputs"),
        ({"format": "modeldeploy.profile/v1", "inputs": {"x": {"bin_edges": [0, 1]}}}, "'x'"),
        ({"format": "modeldeploy.profile/v1", "inputs": {"x": {"bin_edges": [1, 0], "fractions": [1]}}}, "increasing"),
        ({"format": "modeldeploy.profile/v1", "inputs": {"x": {"bin_edges": [0, 1], "fractions": [0.4]}}}, "sum"),
        ({"format": "modeldeploy.profile/v1", "inputs": {"x": {"bin_edges": [0, 1, 2], "fractions": [1]}}}, "2"),
    ],
)
def test_bad_profiles_are_refused_with_the_reason(document: object, fragment: str) -> None:
    with pytest.raises(ProfileError, match=fragment):
        parse_profile(document)
